//! Forward pipelines to a real NATS JetStream: the seed's example as written, exactly one
//! stored copy after redelivery, clear errors for a missing stream, recovery from a broker
//! outage without loss.

use std::time::Duration;

use relay_e2e::nats::NatsServer;
use relay_e2e::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_nats_example_publishes_every_row_once_even_after_redelivery() {
    let nats = NatsServer::start();
    nats.create_stream("pgtrickle", &["pgtrickle.>"]).await;
    let (db, c, outbox) = db_with_outbox("orders_stream").await;
    // The seed README's SQL, pointed at this test's server.
    c.batch_execute(&format!(
        r#"SELECT pgtrickle.set_relay_outbox(
            'orders-to-nats',
            config => '{{
                "stream_table": "orders_stream",
                "sink_type": "nats",
                "nats_url": "{}",
                "nats_stream": "pgtrickle",
                "subject_template": "pgtrickle.{{stream_table}}.{{op}}"
            }}'::jsonb
        );
        SELECT pgtrickle.enable_relay('orders-to-nats');"#,
        nats.url()
    ))
    .await
    .unwrap();
    let mut relay = Relay::start(&db.url, "default", &[]);
    let a = write_inline(&c, &outbox, Some(json!([{"id": 1, "__pgt_row_id": 7}, {"id": 2, "__pgt_row_id": 8}]))).await;
    let b = write_inline(&c, &outbox, Some(json!({"v": 1, "inserted": [{"id": 3}], "deleted": [{"id": 1}]}))).await;
    eventually(Duration::from_secs(10), "4 messages in JetStream", || async {
        (nats.stream_messages("pgtrickle").await.len() >= 4).then_some(())
    })
    .await;
    let stored = nats.stream_messages("pgtrickle").await;
    let got: Vec<(&str, Option<&str>, Option<&str>)> =
        stored.iter().map(|m| (m.subject.as_str(), m.msg_id.as_deref(), m.op_header.as_deref())).collect();
    let refs = row_refs(&c, &outbox).await;
    let key = |id: i64, i: usize| format!("{}:{i}", refs[&id]);
    let (ka, kb, kc, kd) = (key(a, 0), key(a, 1), key(b, 0), key(b, 1));
    assert_eq!(
        got,
        vec![
            ("pgtrickle.orders_stream.insert", Some(ka.as_str()), Some("insert")),
            ("pgtrickle.orders_stream.insert", Some(kb.as_str()), Some("insert")),
            ("pgtrickle.orders_stream.insert", Some(kc.as_str()), Some("insert")),
            ("pgtrickle.orders_stream.delete", Some(kd.as_str()), Some("delete")),
        ]
    );
    assert_eq!(stored[0].body["payload"], json!({"id": 1}));
    assert_eq!(stored[0].body["dedup_key"], ka.as_str());
    assert_eq!(stored[0].full_refresh_header.as_deref(), Some("true"));
    assert_eq!(stored[2].full_refresh_header, None);

    // A crash between publish and commit means the next owner publishes again: simulate it by
    // rewinding the committed offset while the relay is down. JetStream keeps one copy.
    assert!(relay.terminate().success());
    c.execute(
        "UPDATE pgtrickle.relay_consumer_offsets SET last_change_id = 0 WHERE pipeline_id = 'orders-to-nats'",
        &[],
    )
    .await
    .unwrap();
    let _relay = Relay::start(&db.url, "default", &[]);
    eventually(Duration::from_secs(10), "offset re-committed", || async {
        (committed_offset(&c, "default", "orders-to-nats").await == Some(b)).then_some(())
    })
    .await;
    let stored = nats.stream_messages("pgtrickle").await;
    assert_eq!(stored.len(), 4, "redelivered messages must be dropped by the duplicate window: {stored:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_stream_is_a_clear_error_and_create_stream_fixes_it() {
    let nats = NatsServer::start();
    let (db, c, outbox) = db_with_outbox("orders").await;
    let config = |create: bool| {
        json!({"stream_table": "orders", "sink_type": "nats", "nats_url": nats.url(), "nats_stream": "relay_orders",
               "subject_template": "relay.{stream_table}.{op}", "create_stream": create})
    };
    c.execute("SELECT pgtrickle.set_relay_outbox('p', config => $1::jsonb)", &[&config(false)]).await.unwrap();
    let relay = Relay::start(&db.url, "default", &[]);
    let err = eventually(Duration::from_secs(10), "failed state", || async {
        let h = relay.health();
        let p = h["pipelines"].as_array().unwrap().first().cloned()?;
        (p["state"] == "failed").then(|| p["last_error"].as_str().unwrap().to_owned())
    })
    .await;
    assert!(err.contains("stream 'relay_orders' does not exist") && err.contains("create_stream"), "{err}");

    write_inline(&c, &outbox, Some(json!([{"id": 1}]))).await;
    c.execute("SELECT pgtrickle.set_relay_outbox('p', config => $1::jsonb)", &[&config(true)]).await.unwrap();
    eventually(Duration::from_secs(10), "message stored in the created stream", || async {
        let s = nats.stream_messages("relay_orders").await;
        (s.len() == 1 && s[0].subject == "relay.orders.insert").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_degrades_then_resumes_without_loss_or_duplicates() {
    let mut nats = NatsServer::start();
    nats.create_stream("events", &["ev.>"]).await;
    let (db, c, outbox) = db_with_outbox("ev").await;
    c.execute(
        "SELECT pgtrickle.set_relay_outbox('ev', config => $1::jsonb)",
        &[&json!({"stream_table": "ev", "sink_type": "nats", "nats_url": nats.url(), "subject_template": "ev.{op}", "ack_timeout_ms": 1000, "delta_mode": "snapshot"})],
    )
    .await
    .unwrap();
    let relay = Relay::start(&db.url, "default", &[]);
    for i in 0..50 {
        write_inline(&c, &outbox, Some(json!([{"i": i}]))).await;
    }
    eventually(Duration::from_secs(10), "first 50 stored", || async {
        (nats.stream_messages("events").await.len() == 50).then_some(())
    })
    .await;
    nats.stop();
    for i in 50..100 {
        write_inline(&c, &outbox, Some(json!([{"i": i}]))).await;
    }
    let state = eventually(Duration::from_secs(20), "pipeline degraded while NATS is down", || async {
        let h = relay.health();
        let p = h["pipelines"].as_array().unwrap().first().cloned()?;
        (p["state"] == "degraded").then(|| h["status"].clone())
    })
    .await;
    assert_eq!(state, "degraded");
    nats.restart();
    eventually(Duration::from_secs(30), "all 100 stored after the broker came back", || async {
        (nats.stream_messages("events").await.len() >= 100).then_some(())
    })
    .await;
    let stored = nats.stream_messages("events").await;
    let mut seen: Vec<i64> = stored.iter().map(|m| m.body["payload"]["i"].as_i64().unwrap()).collect();
    assert_eq!(stored.len(), 100, "no duplicates stored");
    seen.sort();
    assert_eq!(seen, (0..100).collect::<Vec<_>>());
    eventually(Duration::from_secs(10), "running again", || async {
        (relay.health()["pipelines"][0]["state"] == "running").then_some(())
    })
    .await;
}

/// SIGKILL while a backlog streams to JetStream and to an inbox: after a restart each target
/// holds exactly one copy of every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_publish_and_commit_leaves_one_copy_in_jetstream_and_the_inbox() {
    let nats = NatsServer::start();
    nats.create_stream("kill", &["kill.>"]).await;
    let (db, c, outbox) = db_with_outbox("kill").await;
    c.execute(
        "SELECT pgtrickle.set_relay_outbox('kill-nats', config => $1::jsonb)",
        &[&json!({"stream_table": "kill", "sink_type": "nats", "nats_url": nats.url(), "subject_template": "kill.{op}", "batch_size": 20, "delta_mode": "snapshot"})],
    )
    .await
    .unwrap();
    c.execute(
        "SELECT pgtrickle.set_relay_outbox('kill-inbox', config => $1::jsonb)",
        &[&json!({"stream_table": "kill", "sink_type": "pg-inbox", "inbox_table": "kill_inbox", "create_inbox": true, "batch_size": 20, "delta_mode": "snapshot"})],
    )
    .await
    .unwrap();
    c.batch_execute(&format!(
        "INSERT INTO pgtrickle.\"{outbox}\" (inserted_count, payload)
         SELECT 50, (SELECT jsonb_agg(jsonb_build_object('o', o, 'r', r)) FROM generate_series(1, 50) r)
           FROM generate_series(1, 400) o"
    ))
    .await
    .unwrap();
    let total = 400 * 50;
    let js = nats.jetstream().await;
    let stored = || async {
        match js.get_stream("kill").await {
            Ok(s) => s.get_info().await.unwrap().state.messages,
            Err(_) => 0,
        }
    };
    let mut relay = Relay::start(&db.url, "default", &[]);
    eventually(Duration::from_secs(30), "part of the backlog stored", || async {
        (stored().await >= 2000).then_some(())
    })
    .await;
    relay.kill();
    let at_kill = stored().await;
    assert!(at_kill < total as u64, "the kill must land mid-stream");
    let _relay = Relay::start(&db.url, "default", &[]);
    for p in ["kill-nats", "kill-inbox"] {
        eventually(Duration::from_secs(60), "backlog committed", || async {
            (committed_offset(&c, "default", p).await == Some(400)).then_some(())
        })
        .await;
    }
    assert_eq!(stored().await, total as u64, "exactly one copy of each message in JetStream");
    let inbox: i64 = c.query_one("SELECT count(*) FROM pgtrickle.kill_inbox", &[]).await.unwrap().get(0);
    assert_eq!(inbox, total, "exactly one row per message in the inbox");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_from_a_secret_reference_authenticate_and_never_leak() {
    const PASSWORD: &str = "pw-from-env-9f3c";
    let nats = NatsServer::start_with(&["--user", "relay", "--pass", PASSWORD]);
    let client = async_nats::ConnectOptions::with_user_and_password("relay".into(), PASSWORD.into())
        .connect(nats.url())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "auth".into(),
        subjects: vec!["auth.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    // The relay process inherits this variable; the catalog only holds the reference.
    std::env::set_var("PGT_E2E_NATS_PASSWORD", PASSWORD);
    let (db, c, outbox) = db_with_outbox("auth").await;
    let config = |name: &str, password: &str| {
        json!({"stream_table": "auth", "sink_type": "nats", "nats_url": nats.url(), "nats_user": "relay",
               "nats_password": password, "subject_template": format!("auth.{name}.{{op}}")})
    };
    c.execute(
        "SELECT pgtrickle.set_relay_outbox('good', config => $1::jsonb)",
        &[&config("good", "${env:PGT_E2E_NATS_PASSWORD}")],
    )
    .await
    .unwrap();
    c.execute("SELECT pgtrickle.set_relay_outbox('bad', config => $1::jsonb)", &[&config("bad", "wrong-password")])
        .await
        .unwrap();
    let relay = Relay::start(&db.url, "default", &[]);
    write_inline(&c, &outbox, Some(json!([{"id": 1}]))).await;
    eventually(Duration::from_secs(10), "the authenticated pipeline delivered", || async {
        let s = js.get_stream("auth").await.ok()?;
        (s.get_info().await.ok()?.state.messages == 1).then_some(())
    })
    .await;
    let err = eventually(Duration::from_secs(10), "the bad password reported", || async {
        let h = relay.health();
        let p = h["pipelines"].as_array().unwrap().iter().find(|p| p["name"] == "bad").cloned()?;
        (p["state"] == "degraded").then(|| p["last_error"].as_str().unwrap().to_owned())
    })
    .await;
    assert!(err.contains("cannot connect"), "{err}");
    let (_, shown, _) = run_cli(&db.url, &["pipelines", "show", "bad"]);
    let everything = format!("{}{}{}{}", relay.get("/health").1, relay.get("/metrics").1, relay.full_stderr(), shown);
    assert!(!everything.contains(PASSWORD) && !everything.contains("wrong-password"), "a secret leaked");
}

/// Two pipelines from one outbox, each on its own subjects, into one stream that captures both:
/// both give a row the same `Nats-Msg-Id` (its dedup key), so JetStream stores whichever copy
/// comes first and acknowledges the other as a duplicate without storing it. Neither pipeline may
/// commit past a message JetStream dropped: one that meets the other's copy stops, `failed`, and
/// says why; with `nats_msg_id: "pipeline"` both relay every row onto their own subjects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_sharing_a_stream_never_commit_past_a_message_jetstream_dropped() {
    const ROWS: usize = 40;
    const LANES: [&str; 2] = ["a", "b"];
    const WAIT: Duration = Duration::from_secs(30);
    let nats = NatsServer::start();
    nats.create_stream("fan", &["fan.>"]).await;
    let (db, c, outbox) = db_with_outbox("fan").await;
    let name = |lane: &str| format!("fan-{lane}");
    let register = |lane: &'static str, msg_id: Option<&'static str>| {
        let mut config = json!({"stream_table": "fan", "sink_type": "nats", "nats_url": nats.url(),
                                "subject_template": format!("fan.{lane}.{{op}}"), "delta_mode": "snapshot"});
        if let Some(m) = msg_id {
            config["nats_msg_id"] = json!(m);
        }
        let c = &c;
        async move {
            c.execute("SELECT pgtrickle.set_relay_outbox($1, config => $2::jsonb)", &[&format!("fan-{lane}"), &config])
                .await
                .unwrap();
        }
    };
    for lane in LANES {
        register(lane, None).await;
    }
    let relay = Relay::start(&db.url, "default", &[]);
    let pipeline = |lane: &str| -> Value {
        let h = relay.health();
        h["pipelines"].as_array().unwrap().iter().find(|p| p["name"] == name(lane)).cloned().unwrap_or(Value::Null)
    };
    eventually(WAIT, "both pipelines running", || async {
        LANES.iter().all(|l| pipeline(l)["state"] == "running").then_some(())
    })
    .await;
    let mut ids = Vec::new();
    for i in 0..ROWS {
        ids.push(write_inline(&c, &outbox, Some(json!([{"i": i}]))).await);
    }
    let last = *ids.last().unwrap();
    let refs = row_refs(&c, &outbox).await;
    let key = |id: &i64| format!("{}:0", refs[id]);

    // Each pipeline either commits every row or stops; then count what each lane holds.
    eventually(WAIT, "each pipeline committed every row or stopped", || async {
        for lane in LANES {
            let done = committed_offset(&c, "default", &name(lane)).await == Some(last);
            if !done && pipeline(lane)["state"] != "failed" {
                return None;
            }
        }
        Some(())
    })
    .await;
    let stored = nats.stream_messages("fan").await;
    let mut failed = Vec::new();
    for lane in LANES {
        let committed = committed_offset(&c, "default", &name(lane)).await.unwrap_or(0);
        let copies = copies_on_lane(&stored, lane);
        let lost: Vec<i64> =
            ids.iter().filter(|id| **id <= committed && !copies.contains_key(&key(id))).copied().collect();
        eprintln!(
            "{}: committed up to outbox id {committed} of {last}; {} rows on its subjects",
            name(lane),
            copies.len()
        );
        assert!(
            lost.is_empty(),
            "{} committed up to outbox id {committed}, but JetStream never stored outbox ids {lost:?} on its subjects: \
             they were dropped as duplicates of the other pipeline's copies",
            name(lane)
        );
        assert!(copies.values().all(|ids| ids.len() == 1), "{}: a row stored twice: {copies:?}", name(lane));
        let p = pipeline(lane);
        if p["state"] == "failed" {
            failed.push((name(lane), p["last_error"].as_str().unwrap_or_default().to_owned()));
        }
    }
    assert!(!failed.is_empty(), "both pipelines published every row, so at least one met the other's copy");
    for (p, error) in &failed {
        eprintln!("{p} failed: {error}");
        assert!(
            error.contains("as a duplicate of its message") && error.contains("\"nats_msg_id\": \"pipeline\""),
            "{p}: {error}"
        );
    }

    // Ids scoped by pipeline: both relay every row. A row a stopped pipeline had published under
    // the old id beyond its committed offset comes again under the new one (at most twice).
    for lane in LANES {
        register(lane, Some("pipeline")).await;
    }
    eventually(WAIT, "both pipelines committed every row", || async {
        for lane in LANES {
            if committed_offset(&c, "default", &name(lane)).await != Some(last) {
                return None;
            }
        }
        Some(())
    })
    .await;
    let stored = nats.stream_messages("fan").await;
    for lane in LANES {
        let copies = copies_on_lane(&stored, lane);
        let lost: Vec<i64> = ids.iter().filter(|id| !copies.contains_key(&key(id))).copied().collect();
        assert!(lost.is_empty(), "{}: outbox ids {lost:?} never reached its subjects", name(lane));
        assert_eq!(copies.len(), ROWS, "{}: unexpected rows {copies:?}", name(lane));
        let scoped = format!("{}/", name(lane));
        for (k, msg_ids) in &copies {
            let ok = match msg_ids.as_slice() {
                [one] => *one == *k || *one == format!("{scoped}{k}"),
                [a, b] => *a == *k && *b == format!("{scoped}{k}"),
                _ => false,
            };
            assert!(ok, "{}: row {k} stored as {msg_ids:?}", name(lane));
        }
        let again = copies.values().filter(|v| v.len() == 2).count();
        eprintln!(
            "{}: all {ROWS} rows on its subjects, {again} of them again under the pipeline-scoped id",
            name(lane)
        );
        assert!(pipeline(lane)["state"] == "running", "{}: {}", name(lane), pipeline(lane));
    }
}

/// For each dedup key stored on `fan.<lane>.*`, the `Nats-Msg-Id`s of its copies in stream order.
fn copies_on_lane(
    stored: &[relay_e2e::nats::StoredMessage],
    lane: &str,
) -> std::collections::HashMap<String, Vec<String>> {
    let prefix = format!("fan.{lane}.");
    let mut copies: std::collections::HashMap<String, Vec<String>> = Default::default();
    for m in stored.iter().filter(|m| m.subject.starts_with(&prefix)) {
        let key = m.body["dedup_key"].as_str().unwrap().to_owned();
        copies.entry(key).or_default().push(m.msg_id.clone().unwrap_or_default());
    }
    copies
}
