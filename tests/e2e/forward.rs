//! Outbox → stdout/file, every payload form, in order, exactly once across a clean restart.

use std::time::Duration;

use relay_e2e::*;
use serde_json::{json, Value};

fn summary(m: &[Value]) -> Vec<(String, String, String)> {
    m.iter()
        .map(|m| {
            (
                m["dedup_key"].as_str().unwrap().to_owned(),
                m["op"].as_str().unwrap().to_owned(),
                m["subject"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_sql_pipeline_relays_every_payload_form_in_order_exactly_once_across_restart() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let (status, _, err) = run_cli(&db.url, &["migrate"]);
    assert!(status.success(), "{err}");
    // A collision-suffixed outbox name that only pg_trickle's catalog reveals.
    let outbox = enable_outbox(&c, "orders", Some("outbox_orders_5f3e2a1")).await;

    // The seed README's exact call form.
    c.batch_execute(
        r#"SELECT pgtrickle.set_relay_outbox(
            'orders-to-stdout',
            config => '{
                "stream_table": "orders",
                "sink_type": "stdout",
                "subject_template": "pgtrickle.{stream_table}.{op}",
                "key_columns": ["id"],
                "claim_check_page_size": 2,
                "delta_mode": "snapshot"
            }'::jsonb
        );
        SELECT pgtrickle.enable_relay('orders-to-stdout');"#,
    )
    .await
    .unwrap();

    let o1 = write_inline(
        &c,
        &outbox,
        Some(json!([
            {"id": 1, "v": "a", "__pgt_row_id": 3007003519974542822_i64, "__pgt_count": 1},
            {"id": 2, "v": "b", "__pgt_row_id": 4424324931843186853_i64, "__pgt_count": 1}
        ])),
    )
    .await;
    let _o2 = write_inline(&c, &outbox, None).await; // pg_trickle ≤ 0.35: nothing to relay
    let o3 = write_inline(
        &c,
        &outbox,
        Some(
            json!({"v": 1, "inserted": [{"id": 2, "v": "b2"}], "deleted": [{"id": 2, "v": "b"}, {"id": 1, "v": "a"}]}),
        ),
    )
    .await;
    let o4 = write_inline(
        &c,
        &outbox,
        Some(json!({"v": 1, "refresh_id": null, "inserted": 3, "deleted": 0, "source": "public.orders"})),
    )
    .await;
    let o5 = write_claim_check(
        &c,
        &outbox,
        "orders",
        &[
            (false, json!({"id": 10})),
            (true, json!({"id": 2, "v": "b2"})),
            (false, json!({"id": 11})),
            (false, json!({"id": 12})),
            (false, json!({"id": 13})),
        ],
    )
    .await;
    let o6 = write_inline(&c, &outbox, Some(json!("not a payload"))).await; // poison row
    let o7 = write_inline(&c, &outbox, Some(json!([{"id": 9}]))).await;

    let mut relay = Relay::start(&db.url, "default", &[]);
    let msgs = relay.wait_for_messages(11, Duration::from_secs(20)).await;
    let refs = row_refs(&c, &outbox).await;
    let k = |id: i64, i: usize| format!("{}:{i}", refs[&id]);
    let s = |op: &str| format!("pgtrickle.orders.{op}");
    let expected = vec![
        (k(o1, 0), "insert".into(), s("insert")),
        (k(o1, 1), "insert".into(), s("insert")),
        (k(o3, 0), "update".into(), s("update")),
        (k(o3, 2), "delete".into(), s("delete")),
        (k(o4, 0), "summary".into(), s("summary")),
        (k(o5, 0), "insert".into(), s("insert")),
        (k(o5, 1), "insert".into(), s("insert")),
        (k(o5, 2), "insert".into(), s("insert")),
        (k(o5, 3), "insert".into(), s("insert")),
        (k(o5, 4), "delete".into(), s("delete")),
        (k(o7, 0), "insert".into(), s("insert")),
    ];
    assert_eq!(summary(&msgs), expected);
    // Internal columns stripped; snapshot rows flagged as full refresh; update carries before.
    assert_eq!(msgs[0]["payload"], json!({"id": 1, "v": "a"}));
    assert_eq!(msgs[0]["is_full_refresh"], true);
    assert_eq!(msgs[0]["outbox_id"], o1);
    assert_eq!(msgs[2]["payload"], json!({"id": 2, "v": "b2"}));
    assert_eq!(msgs[2]["before"], json!({"id": 2, "v": "b"}));
    assert_eq!(msgs[4]["payload"]["inserted"], 3);
    assert_eq!(msgs[9]["payload"], json!({"id": 2, "v": "b2"}));

    // The poison row is kept, with its error, and did not block the rows after it.
    let dl = c
        .query_one("SELECT source_ref, error, convert_from(payload, 'UTF8') FROM pgtrickle.relay_dead_letters WHERE pipeline = 'orders-to-stdout'", &[])
        .await
        .unwrap();
    let pgt_id = refs[&o6].strip_prefix(&format!("{outbox}:")).unwrap();
    assert_eq!(dl.get::<_, String>(0), format!("{outbox}:{o6}:{pgt_id}"));
    assert!(dl.get::<_, String>(1).contains("a string"), "{}", dl.get::<_, String>(1));
    assert_eq!(dl.get::<_, String>(2), "\"not a payload\"");

    eventually(Duration::from_secs(5), "offset committed to the last row", || async {
        (committed_offset(&c, "default", "orders-to-stdout").await == Some(o7)).then_some(())
    })
    .await;

    // Clean restart: nothing is relayed twice, new rows continue.
    assert!(relay.terminate().success(), "{}", relay.stderr());
    let before = relay.messages().len();
    assert_eq!(before, 11, "no extra messages after shutdown");
    let o8 = write_inline(&c, &outbox, Some(json!([{"id": 20}]))).await;
    let relay2 = Relay::start(&db.url, "default", &[]);
    let msgs2 = relay2.wait_for_messages(1, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let msgs2_final = relay2.messages();
    let o8_key = format!("{}:0", row_refs(&c, &outbox).await[&o8]);
    assert_eq!(summary(&msgs2_final), vec![(o8_key, "insert".into(), s("insert"))], "{msgs2:?}");

    // Status row tells what happened.
    let st = c
        .query_one("SELECT state, committed_offset, messages_total, errors_total, owner FROM pgtrickle.relay_pipeline_status WHERE name = 'orders-to-stdout'", &[])
        .await
        .unwrap();
    assert_eq!(st.get::<_, String>(0), "running");
    assert_eq!(st.get::<_, Option<i64>>(1), Some(o8));
    assert_eq!(st.get::<_, i64>(2), 12);
    assert!(st.get::<_, i64>(3) >= 1);
    assert!(st.get::<_, Option<String>>(4).unwrap().ends_with(&format!(":{}", relay2.pid)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positional_form_with_file_sink_appends_fsynced_jsonl() {
    let (db, c, outbox) = db_with_outbox("big_orders").await;
    let path = temp_path("sink.jsonl");
    std::fs::write(&path, "").unwrap();
    // pg_trickle 0.45's positional form, exactly as its function signature has it.
    c.execute(
        "SELECT pgtrickle.set_relay_outbox('big-orders-file', 'outbox_big_orders', 'g1', $1::jsonb)",
        &[&json!({"type": "file", "path": path.to_str().unwrap(), "subject_template": "{outbox_table}/{outbox_id}/{op}", "delta_mode": "snapshot"})],
    )
    .await
    .unwrap();
    let stored: Value = c
        .query_one("SELECT config FROM pgtrickle.relay_outbox_config WHERE name = 'big-orders-file'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored["source"], json!({"outbox": "outbox_big_orders", "group": "g1", "retention_hours": 24}));
    assert_eq!(stored["sink_type"], "file");

    let relay = Relay::start(&db.url, "default", &[]);
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(write_inline(&c, &outbox, Some(json!([{"n": i}, {"n": i + 1000}]))).await);
    }
    eventually(Duration::from_secs(20), "40 lines in the file", || async {
        (read_jsonl(&path).len() >= 40).then_some(())
    })
    .await;
    let lines = read_jsonl(&path);
    assert_eq!(lines.len(), 40, "{}", relay.stderr());
    for (j, id) in ids.iter().enumerate() {
        assert_eq!(lines[2 * j]["subject"], format!("outbox_big_orders/{id}/insert"));
        assert_eq!(lines[2 * j]["payload"]["n"], j);
        assert_eq!(lines[2 * j + 1]["payload"]["n"], j + 1000);
    }
    assert!(relay.messages().is_empty(), "the file sink writes nothing to stdout");
    let _ = std::fs::remove_file(&path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_resumes_from_committed_offset_without_loss() {
    let (db, c, outbox) = db_with_outbox("kills").await;
    let path = temp_path("kills.jsonl");
    c.execute(
        "SELECT pgtrickle.set_relay_outbox('kills', config => $1::jsonb)",
        &[&json!({"stream_table": "kills", "sink_type": "file", "path": path.to_str().unwrap(), "batch_size": 5, "delta_mode": "snapshot"})],
    )
    .await
    .unwrap();
    // 3,000 outbox rows × 4 messages.
    c.batch_execute(&format!(
        "INSERT INTO pgtrickle.\"{outbox}\" (inserted_count, payload)
         SELECT 4, jsonb_build_array(jsonb_build_object('k', g, 'i', 0), jsonb_build_object('k', g, 'i', 1),
                                     jsonb_build_object('k', g, 'i', 2), jsonb_build_object('k', g, 'i', 3))
           FROM generate_series(1, 3000) g"
    ))
    .await
    .unwrap();
    let mut relay = Relay::start(&db.url, "default", &[]);
    eventually(Duration::from_secs(30), "some progress before the kill", || async {
        (read_jsonl(&path).len() >= 400).then_some(())
    })
    .await;
    relay.kill();
    let at_kill = read_jsonl(&path).len();
    assert!(at_kill < 12_000, "the kill must land mid-stream (had {at_kill})");
    let committed = committed_offset(&c, "default", "kills").await.unwrap_or(0);

    let _relay2 = Relay::start(&db.url, "default", &[]);
    eventually(Duration::from_secs(60), "the whole backlog relayed", || async {
        (committed_offset(&c, "default", "kills").await == Some(3000)).then_some(())
    })
    .await;
    let lines = read_jsonl(&path);
    let keys: Vec<String> = lines.iter().map(|m| m["dedup_key"].as_str().unwrap().to_owned()).collect();
    let unique: std::collections::BTreeSet<&String> = keys.iter().collect();
    assert_eq!(unique.len(), 12_000, "every message delivered at least once");
    // Replays are bounded by what was not yet committed when the relay died.
    let replayed = keys.len() - unique.len();
    assert!(
        replayed <= at_kill - (committed as usize) * 4 + 20,
        "replayed {replayed}, committed {committed}, at kill {at_kill}"
    );
    // Resumed from the committed offset: the first message of the second run is right after it.
    let second_start = &lines[at_kill.min(lines.len() - 1)];
    assert!(second_start["outbox_id"].as_i64().unwrap() <= committed + 1, "{second_start} vs committed {committed}");
    // Order holds within each run: outbox ids never go backwards except at the restart point.
    let ids: Vec<i64> = lines.iter().map(|m| m["outbox_id"].as_i64().unwrap()).collect();
    let backwards = ids.windows(2).filter(|w| w[1] < w[0]).count();
    assert!(backwards <= 1, "outbox order broken {backwards} times");
    let _ = std::fs::remove_file(&path);
}
