//! Diff mode (the default for snapshot payloads): consecutive pg_trickle 0.45 snapshots —
//! inline arrays and claim-check rows, with `__pgt_row_id` — become true insert, update and
//! delete events, each transition exactly once across restarts and replays.

use std::time::Duration;

use relay_e2e::*;
use serde_json::{json, Value};

fn row(id: i64, name: &str, total: Value) -> Value {
    json!({"name": name, "total": total, "__pgt_row_id": 1000 + id, "__pgt_count": 1})
}

/// (op, payload, before) of each message, in order.
fn events(msgs: &[Value]) -> Vec<(String, Value, Value)> {
    msgs.iter().map(|m| (m["op"].as_str().unwrap().to_owned(), m["payload"].clone(), m["before"].clone())).collect()
}

async fn committed_to(c: &tokio_postgres::Client, pipeline: &str, id: i64) {
    eventually(Duration::from_secs(15), "offset committed", || async {
        (committed_offset(c, "default", pipeline).await == Some(id)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_snapshots_in_both_forms_become_insert_update_delete_exactly_once() {
    let (db, c, outbox) = db_with_outbox("totals").await;
    c.execute(
        "SELECT pgtrickle.set_relay_outbox('diff', config => $1::jsonb)",
        &[&json!({"stream_table": "totals", "sink_type": "stdout", "claim_check_page_size": 2})],
    )
    .await
    .unwrap();
    let mut relay = Relay::start(&db.url, "default", &[]);

    // Snapshot 1 (inline): a, b, c — the first snapshot: every row an insert, a full refresh.
    let s1 = write_inline(
        &c,
        &outbox,
        Some(json!([row(1, "a", json!(175.0)), row(2, "b", json!(1)), row(3, "c", json!(2))])),
    )
    .await;
    let msgs = relay.wait_for_messages(3, Duration::from_secs(10)).await;
    assert_eq!(
        events(&msgs),
        vec![
            ("insert".into(), json!({"name": "a", "total": 175.0}), Value::Null),
            ("insert".into(), json!({"name": "b", "total": 1}), Value::Null),
            ("insert".into(), json!({"name": "c", "total": 2}), Value::Null),
        ]
    );
    assert!(msgs.iter().all(|m| m["is_full_refresh"] == true));
    committed_to(&c, "diff", s1).await;

    // Snapshot 2 (claim-check, numbers rendered as claim-check keeps them: 175.00 = 175.0):
    // a unchanged, b changed, c gone, d new.
    let s2 = write_claim_check(
        &c,
        &outbox,
        "totals",
        &[(false, row(1, "a", json!(175.00))), (false, row(2, "b", json!(10))), (false, row(4, "d", json!(4)))],
    )
    .await;
    let msgs = relay.wait_for_messages(6, Duration::from_secs(10)).await;
    assert_eq!(
        events(&msgs[3..]),
        vec![
            ("update".into(), json!({"name": "b", "total": 10}), json!({"name": "b", "total": 1})),
            ("insert".into(), json!({"name": "d", "total": 4}), Value::Null),
            ("delete".into(), json!({"name": "c", "total": 2}), Value::Null),
        ]
    );
    assert!(msgs[3..].iter().all(|m| m["is_full_refresh"] == false));
    assert_eq!(msgs[3]["dedup_key"], format!("{}:0", row_refs(&c, &outbox).await[&s2]));
    assert_eq!(msgs[3]["subject"], "pgtrickle.totals.update");
    committed_to(&c, "diff", s2).await;

    // Snapshot 3 (inline) identical to 2, keys in another order: no event at all.
    let s3 = write_inline(
        &c,
        &outbox,
        Some(json!([row(4, "d", json!(4)), row(2, "b", json!(10.0)), row(1, "a", json!(175))])),
    )
    .await;
    committed_to(&c, "diff", s3).await;
    // Snapshot 4: a deleted, e inserted.
    let s4 =
        write_inline(&c, &outbox, Some(json!([row(2, "b", json!(10)), row(4, "d", json!(4)), row(5, "e", json!(5))])))
            .await;
    let msgs = relay.wait_for_messages(8, Duration::from_secs(10)).await;
    assert_eq!(
        events(&msgs[6..]),
        vec![
            ("insert".into(), json!({"name": "e", "total": 5}), Value::Null),
            ("delete".into(), json!({"name": "a", "total": 175.0}), Value::Null),
        ]
    );
    committed_to(&c, "diff", s4).await;
    assert_eq!(relay.messages().len(), 8, "identical snapshots emit nothing");

    // SIGKILL between two snapshots, then a replacement relay: nothing is emitted again and
    // the next transition exactly once.
    relay.kill();
    let s5 =
        write_inline(&c, &outbox, Some(json!([row(2, "b", json!(10)), row(4, "d", json!(40)), row(5, "e", json!(5))])))
            .await;
    let relay2 = Relay::start(&db.url, "default", &[]);
    let msgs2 = relay2.wait_for_messages(1, Duration::from_secs(10)).await;
    committed_to(&c, "diff", s5).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(relay2.messages().len(), 1, "{msgs2:?}");
    assert_eq!(
        events(&msgs2)[0],
        ("update".into(), json!({"name": "d", "total": 40}), json!({"name": "d", "total": 4}))
    );

    // The kept state is the last snapshot, internal columns included.
    let kept: i64 = c
        .query_one("SELECT row_count FROM pgtrickle.relay_snapshot_baseline WHERE pipeline = 'diff'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_before_commit_emits_the_same_transitions_with_the_same_keys() {
    let (db, c, outbox) = db_with_outbox("replay").await;
    c.execute(
        "SELECT pgtrickle.set_relay_outbox('replay', config => $1::jsonb)",
        &[&json!({"stream_table": "replay", "sink_type": "stdout"})],
    )
    .await
    .unwrap();
    let mut relay = Relay::start(&db.url, "default", &[]);
    let s1 = write_inline(&c, &outbox, Some(json!([row(1, "a", json!(1)), row(2, "b", json!(2))]))).await;
    relay.wait_for_messages(2, Duration::from_secs(10)).await;
    committed_to(&c, "replay", s1).await;
    // Keep the state as it was before snapshot 2, to put it back afterwards.
    c.batch_execute(
        "CREATE TABLE saved_state AS SELECT * FROM pgtrickle.relay_snapshot_state;
         CREATE TABLE saved_baseline AS SELECT * FROM pgtrickle.relay_snapshot_baseline",
    )
    .await
    .unwrap();
    let s2 = write_inline(&c, &outbox, Some(json!([row(2, "b", json!(20)), row(3, "c", json!(3))]))).await;
    let first = relay.wait_for_messages(5, Duration::from_secs(10)).await[2..].to_vec();
    committed_to(&c, "replay", s2).await;
    assert!(relay.terminate().success());

    // As if the relay had died after publishing snapshot 2's events but before its commit:
    // state and offset are both where they were (they only ever change together).
    c.batch_execute(&format!(
        "DELETE FROM pgtrickle.relay_snapshot_state; INSERT INTO pgtrickle.relay_snapshot_state SELECT * FROM saved_state;
         DELETE FROM pgtrickle.relay_snapshot_baseline; INSERT INTO pgtrickle.relay_snapshot_baseline SELECT * FROM saved_baseline;
         UPDATE pgtrickle.relay_consumer_offsets SET last_change_id = {s1} WHERE pipeline_id = 'replay';"
    ))
    .await
    .unwrap();
    let relay2 = Relay::start(&db.url, "default", &[]);
    let replayed = relay2.wait_for_messages(3, Duration::from_secs(10)).await;
    committed_to(&c, "replay", s2).await;
    assert_eq!(replayed, first, "the same events with the same dedup keys, so consumers drop the repeat");
    let ops: Vec<String> = first.iter().map(|m| m["op"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ops, vec!["update", "insert", "delete"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_snapshot_skip_key_columns_and_reset_state() {
    let (db, c, outbox) = db_with_outbox("keyed").await;
    // pg_trickle's positional form: pipeline keys go inside the sink object.
    c.execute(
        "SELECT pgtrickle.set_relay_outbox('keyed', 'outbox_keyed', NULL, $1::jsonb)",
        &[&json!({"type": "stdout", "key_columns": ["sku"], "initial_snapshot": "skip"})],
    )
    .await
    .unwrap();
    let relay = Relay::start(&db.url, "default", &[]);
    let s1 = write_inline(&c, &outbox, Some(json!([{"sku": "x", "qty": 1}, {"sku": "y", "qty": 2}]))).await;
    committed_to(&c, "keyed", s1).await;
    assert!(relay.messages().is_empty(), "the first snapshot is only recorded");
    write_inline(&c, &outbox, Some(json!([{"sku": "x", "qty": 5}, {"sku": "y", "qty": 2}]))).await;
    let msgs = relay.wait_for_messages(1, Duration::from_secs(10)).await;
    assert_eq!(events(&msgs), vec![("update".into(), json!({"sku": "x", "qty": 5}), json!({"sku": "x", "qty": 1}))]);

    // reset-state: the next snapshot counts as a first one again (and is skipped again).
    let (status, out, err) = run_cli(&db.url, &["pipelines", "reset-state", "keyed"]);
    assert!(status.success(), "{err}");
    assert!(out.contains("forgot 2 kept row(s)"), "{out}");
    let s3 = write_inline(&c, &outbox, Some(json!([{"sku": "z", "qty": 9}]))).await;
    committed_to(&c, "keyed", s3).await;
    let s4 = write_inline(&c, &outbox, Some(json!([{"sku": "z", "qty": 9}, {"sku": "w", "qty": 1}]))).await;
    committed_to(&c, "keyed", s4).await;
    let msgs = relay.wait_for_messages(2, Duration::from_secs(10)).await;
    assert_eq!(events(&msgs[1..]), vec![("insert".into(), json!({"sku": "w", "qty": 1}), Value::Null)]);
}
