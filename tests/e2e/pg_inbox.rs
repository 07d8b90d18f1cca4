//! The pg-inbox sink: pg_trickle's inbox columns filled from each message, in another
//! database, and a clear error when the inbox is missing.

use std::time::Duration;

use relay_e2e::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_inbox_rows_into_a_remote_database_and_reports_a_missing_inbox() {
    let db = TestDb::new().await;
    let remote = TestDb::new().await;
    let c = db.client().await;
    let r = remote.client().await;
    assert!(run_cli(&db.url, &["migrate"]).0.success());
    let outbox = enable_outbox(&c, "orders", None).await;
    // pg_trickle's create_inbox shape, made by hand in the remote database.
    r.batch_execute(
        "CREATE SCHEMA app;
         CREATE TABLE app.orders_inbox (event_id text PRIMARY KEY, event_type text, source text, aggregate_id text,
             payload jsonb, received_at timestamptz NOT NULL DEFAULT now(), processed_at timestamptz, error text,
             retry_count int NOT NULL DEFAULT 0, trace_id text)",
    )
    .await
    .unwrap();
    c.execute(
        "SELECT pgtrickle.set_relay_outbox('to-inbox', 'outbox_orders', NULL, $1::jsonb)",
        &[&json!({"type": "pg-inbox", "postgres_url": remote.url, "inbox_table": "app.orders_inbox",
                  "aggregate_id_field": "customer"})],
    )
    .await
    .unwrap();
    c.execute(
        "SELECT pgtrickle.set_relay_outbox('missing-inbox', config => $1::jsonb)",
        &[&json!({"stream_table": "orders", "sink_type": "pg-inbox", "inbox_table": "nope_inbox"})],
    )
    .await
    .unwrap();
    let relay = Relay::start(&db.url, "default", &[]);
    let id =
        write_inline(&c, &outbox, Some(json!([{"order": 1, "customer": "ada"}, {"order": 2, "customer": 7}]))).await;
    let rows = eventually(Duration::from_secs(10), "two inbox rows", || async {
        let rows = r
            .query(
                "SELECT event_id, event_type, source, aggregate_id, payload FROM app.orders_inbox ORDER BY event_id",
                &[],
            )
            .await
            .unwrap();
        (rows.len() == 2).then_some(rows)
    })
    .await;
    assert_eq!(rows[0].get::<_, String>(0), format!("{}:0", row_refs(&c, &outbox).await[&id]));
    assert_eq!(rows[0].get::<_, String>(1), "pgtrickle.orders.insert");
    assert_eq!(rows[0].get::<_, String>(2), "to-inbox");
    assert_eq!(rows[0].get::<_, Option<String>>(3).as_deref(), Some("ada"));
    assert_eq!(rows[1].get::<_, Option<String>>(3).as_deref(), Some("7"));
    assert_eq!(rows[0].get::<_, serde_json::Value>(4), json!({"order": 1, "customer": "ada"}));

    let err = eventually(Duration::from_secs(10), "missing inbox reported", || async {
        let h = relay.health();
        let p = h["pipelines"].as_array().unwrap().iter().find(|p| p["name"] == "missing-inbox").cloned()?;
        (p["state"] == "failed").then(|| p["last_error"].as_str().unwrap().to_owned())
    })
    .await;
    assert!(
        err.contains("inbox table \"pgtrickle\".\"nope_inbox\" does not exist") && err.contains("create_inbox"),
        "{err}"
    );
    // The remote URL never shows up in status or health.
    assert!(!relay.get("/health").1.contains(&remote.url));
}
