//! The SQS sink on an SQS-compatible server (moto): standard queues with message attributes,
//! the 256 KiB limit as a clear error that holds the stream back, and a missing queue.

use std::time::Duration;

use relay_e2e::sqs::SqsServer;
use relay_e2e::*;
use serde_json::{json, Value};

fn sqs_config(server: &SqsServer, queue_url: &str, stream_table: &str) -> Value {
    json!({"stream_table": stream_table, "sink_type": "sqs", "sqs_queue_url": queue_url, "sqs_region": "us-east-1",
           "sqs_endpoint_url": server.endpoint(), "sqs_access_key_id": "test", "sqs_secret_access_key": "moto-secret-key-4711",
           "delta_mode": "snapshot"})
}

fn pipeline_error(relay: &Relay, name: &str) -> Option<String> {
    let h = relay.health();
    let p = h["pipelines"].as_array()?.iter().find(|p| p["name"] == name)?.clone();
    p["last_error"].as_str().map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_queue_attributes_and_the_size_limit() {
    let server = SqsServer::start();
    let url = server.create_queue("events").await;
    let (db, c, outbox) = db_with_outbox("events").await;
    c.execute(
        "SELECT pgtrickle.set_relay_outbox('to-sqs', config => $1::jsonb)",
        &[&sqs_config(&server, &url, "events")],
    )
    .await
    .unwrap();
    let relay = Relay::start(&db.url, "default", &[]);
    // 25 rows: three SendMessageBatch calls (10 + 10 + 5), sent concurrently.
    let rows: Vec<Value> = (0..25).map(|i| json!({"id": i})).collect();
    let s1 = write_inline(&c, &outbox, Some(Value::Array(rows))).await;
    eventually(Duration::from_secs(10), "first row committed", || async {
        (committed_offset(&c, "default", "to-sqs").await == Some(s1)).then_some(())
    })
    .await;
    let mut got = server.drain(&url).await;
    assert_eq!(got.len(), 25, "every message exactly once");
    got.sort_by_key(|m| m.body["payload"]["id"].as_i64());
    let s1_ref = &row_refs(&c, &outbox).await[&s1];
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.body["payload"], json!({"id": i}));
        assert_eq!(m.attributes["pgtrickle-op"], "insert");
        assert_eq!(m.attributes["pgtrickle-dedup-key"], format!("{s1_ref}:{i}"));
        assert_eq!(m.attributes["pgtrickle-outbox-id"], s1.to_string());
        assert_eq!(m.attributes["pgtrickle-full-refresh"], "true");
        assert_eq!(m.group_id, None, "standard queues have no message groups");
    }

    // A row over 256 KiB is refused with an error naming it; nothing is committed past it.
    let big = write_inline(&c, &outbox, Some(json!([{"id": 100, "blob": "x".repeat(300 * 1024)}]))).await;
    let error = eventually(Duration::from_secs(10), "the oversized message is reported", || async {
        pipeline_error(&relay, "to-sqs").filter(|e| e.contains("256 KiB"))
    })
    .await;
    assert!(error.contains(&format!("{}:0", row_refs(&c, &outbox).await[&big])), "{error}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(committed_offset(&c, "default", "to-sqs").await, Some(s1), "held back, not skipped");
    assert!(server.drain(&url).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_queue_is_reported_by_name() {
    let server = SqsServer::start();
    let (db, c, _outbox) = db_with_outbox("gone").await;
    let url = format!("{}/123456789012/no-such-queue", server.endpoint());
    c.execute(
        "SELECT pgtrickle.set_relay_outbox('gone-sqs', config => $1::jsonb)",
        &[&sqs_config(&server, &url, "gone")],
    )
    .await
    .unwrap();
    let relay = Relay::start(&db.url, "default", &[]);
    let error = eventually(Duration::from_secs(15), "the missing queue is reported", || async {
        pipeline_error(&relay, "gone-sqs")
    })
    .await;
    assert!(error.contains("no-such-queue") && error.contains("does not exist"), "{error}");
    assert!(!relay.full_stderr().contains("moto-secret-key-4711"), "no credentials in the log");
    assert!(!relay.get("/health").1.contains("moto-secret-key-4711"), "no credentials in /health");
}

/// Two pipelines from one outbox into one FIFO queue would give each row the same
/// `MessageDeduplicationId`, and SQS drops the second copy while reporting it sent: each pipeline
/// would lose the rows the other sent first. Both stop, naming each other, and send nothing;
/// `check` says so; with one disabled, the other delivers every row once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pipelines_from_one_outbox_never_share_a_fifo_queue() {
    let server = SqsServer::start();
    let url = server.create_queue("shared.fifo").await;
    let (db, c, outbox) = db_with_outbox("events").await;
    for name in ["fifo-a", "fifo-b"] {
        c.execute(
            "SELECT pgtrickle.set_relay_outbox($1, config => $2::jsonb)",
            &[&name, &sqs_config(&server, &url, "events")],
        )
        .await
        .unwrap();
    }
    let relay = Relay::start(&db.url, "default", &[]);
    let rows: Vec<Value> = (0..5).map(|i| json!({"id": i})).collect();
    write_inline(&c, &outbox, Some(Value::Array(rows))).await;
    for (name, other) in [("fifo-a", "fifo-b"), ("fifo-b", "fifo-a")] {
        let error = eventually(Duration::from_secs(10), "both pipelines refuse the shared queue", || async {
            pipeline_error(&relay, name).filter(|e| e.contains("same SQS FIFO queue"))
        })
        .await;
        assert!(error.contains(&format!("pipeline '{other}'")), "{error}");
    }
    let (status, out, _) = run_cli(&db.url, &["check"]);
    assert!(!status.success() && out.matches("same SQS FIFO queue").count() == 2, "{out}");
    assert_eq!(server.approximate_count(&url).await, 0, "nothing was sent");

    // One disabled: the other starts again when its outbox is written to, and delivers every row.
    c.execute("SELECT pgtrickle.disable_relay('fifo-b')", &[]).await.unwrap();
    let last = write_inline(&c, &outbox, Some(json!([{"id": 5}]))).await;
    eventually(Duration::from_secs(30), "fifo-a committed every row", || async {
        (committed_offset(&c, "default", "fifo-a").await == Some(last)).then_some(())
    })
    .await;
    let got = server.drain(&url).await;
    let mut ids: Vec<i64> = got.iter().map(|m| m.body["payload"]["id"].as_i64().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, (0..6).collect::<Vec<_>>(), "every row once");
}
