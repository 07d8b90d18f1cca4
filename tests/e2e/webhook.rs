//! The webhook sink against a real HTTP server: headers, idempotency keys, HMAC signatures,
//! retries honouring Retry-After, permanent 4xx errors, keep-alive.

use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use relay_e2e::http::WebhookServer;
use relay_e2e::*;
use serde_json::json;
use sha2::Sha256;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_message_mode_signs_retries_and_reuses_connections() {
    let server = WebhookServer::start().await;
    let (db, c, outbox) = db_with_outbox("orders").await;
    c.execute(
        "SELECT pgtrickle.set_relay_outbox('hook', config => $1::jsonb)",
        &[&json!({"stream_table": "orders", "sink_type": "http", "webhook_url": server.url("/events"), "method": "PUT",
                  "batch_mode": false, "webhook_headers": {"X-Team": "data", "Authorization": "Bearer t0k3n"},
                  "signing_secret": "s3cret-for-hmac", "timeout_ms": 2000, "delta_mode": "snapshot"})],
    )
    .await
    .unwrap();
    // First attempt: 503; second: 429 with Retry-After 1; then 200.
    server.respond_first(&[(503, None), (429, Some(1))]);
    let relay = Relay::start(&db.url, "default", &[]);
    let id = write_inline(&c, &outbox, Some(json!([{"id": 1}]))).await;
    eventually(Duration::from_secs(15), "first message accepted", || async {
        (server.accepted().len() == 1).then_some(())
    })
    .await;
    let all = server.all();
    assert_eq!(all.iter().map(|r| r.status).collect::<Vec<_>>(), vec![503, 429, 200]);
    // Retry-After was honoured between the 429 and the success.
    let accepted = &server.accepted()[0];
    assert_eq!(accepted.method, "PUT");
    assert_eq!(accepted.header("idempotency-key"), Some(format!("{}:0", row_refs(&c, &outbox).await[&id]).as_str()));
    assert_eq!(accepted.header("pgtrickle-op"), Some("insert"));
    assert_eq!(accepted.header("pgtrickle-full-refresh"), Some("true"));
    assert_eq!(accepted.header("x-team"), Some("data"));
    assert_eq!(accepted.header("authorization"), Some("Bearer t0k3n"));
    assert_eq!(accepted.header("content-type"), Some("application/json"));
    let mut mac = Hmac::<Sha256>::new_from_slice(b"s3cret-for-hmac").unwrap();
    mac.update(&accepted.body);
    let expected_sig = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(accepted.header("x-pgtrickle-signature"), Some(expected_sig.as_str()));
    assert_eq!(accepted.json()["payload"], json!({"id": 1}));
    assert!(
        all.iter().all(|r| r.header("idempotency-key") == accepted.header("idempotency-key")),
        "retries keep the key"
    );

    // Many messages reuse a kept-alive connection instead of one connection each.
    for i in 0..20 {
        write_inline(&c, &outbox, Some(json!([{"id": 100 + i}]))).await;
    }
    eventually(Duration::from_secs(15), "21 accepted", || async { (server.accepted().len() == 21).then_some(()) })
        .await;
    let conns = server.connections.lock().unwrap().len();
    assert!(conns <= 3, "{conns} connections for 23 requests");
    let ids: Vec<i64> = server.accepted().iter().map(|r| r.json()["payload"]["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, std::iter::once(1).chain(100..120).collect::<Vec<_>>(), "in outbox order");
    // Secrets stay out of status and health.
    let health = relay.get("/health").1;
    assert!(!health.contains("s3cret-for-hmac") && !health.contains("t0k3n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_are_permanent_and_nothing_is_skipped() {
    let server = WebhookServer::start().await;
    let (db, c, outbox) = db_with_outbox("orders").await;
    c.execute(
        "SELECT pgtrickle.set_relay_outbox('hook', config => $1::jsonb)",
        &[&json!({"stream_table": "orders", "sink_type": "webhook", "webhook_url": server.url("/x")})],
    )
    .await
    .unwrap();
    server.respond_first(&[(400, None)]);
    let relay = Relay::start(&db.url, "default", &[]);
    let id = write_inline(&c, &outbox, Some(json!([{"id": 1}]))).await;
    let err = eventually(Duration::from_secs(10), "failed with the 400", || async {
        let p = relay.health()["pipelines"][0].clone();
        (p["state"] == "failed").then(|| p["last_error"].as_str().unwrap().to_owned())
    })
    .await;
    assert!(err.contains("400"), "{err}");
    assert_eq!(server.all().len(), 1, "a 4xx is not retried at once");
    assert_eq!(
        committed_offset(&c, "default", "hook").await.unwrap_or(0),
        0,
        "nothing committed past the rejected batch"
    );
    // A config change (here: the same endpoint, now accepting) retries the kept batch.
    let t = Instant::now();
    c.execute(
        "SELECT pgtrickle.set_relay_outbox('hook', config => $1::jsonb)",
        &[&json!({"stream_table": "orders", "sink_type": "webhook", "webhook_url": server.url("/x"), "timeout_ms": 5000})],
    )
    .await
    .unwrap();
    eventually(Duration::from_secs(10), "delivered after the fix", || async {
        (committed_offset(&c, "default", "hook").await == Some(id)).then_some(())
    })
    .await;
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(server.accepted().len(), 1);
}
