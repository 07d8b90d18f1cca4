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
