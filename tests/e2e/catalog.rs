//! The relay catalog: idempotent, concurrent-safe migration; pg_trickle's positional functions
//! and the seed's `config =>` forms; the NOTIFY payload; errors with pg_trickle's SQLSTATEs.

use std::time::Duration;

use futures::StreamExt;
use relay_e2e::*;
use serde_json::{json, Value};
use tokio_postgres::{AsyncMessage, NoTls};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_is_idempotent_and_safe_to_race() {
    let db = TestDb::new().await;
    let url = db.url.clone();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || run_cli(&url, &["migrate"]))
        })
        .collect();
    for h in handles {
        let (status, out, err) = h.join().unwrap();
        assert!(status.success(), "{out}{err}");
        assert!(out.contains("relay catalog installed (version 5)"), "{out}");
    }
    let c = db.client().await;
    let versions: i64 = c.query_one("SELECT count(*) FROM pgtrickle.relay_schema_version", &[]).await.unwrap().get(0);
    assert_eq!(versions, 5, "each migration recorded once");
    for f in [
        "pgtrickle.set_relay_outbox(text,text,text,jsonb,integer,boolean)",
        "pgtrickle.set_relay_inbox(text,text,jsonb,integer,text,boolean,integer,boolean)",
        "pgtrickle.set_relay_outbox(text,jsonb,boolean)",
        "pgtrickle.set_relay_inbox(text,jsonb,boolean)",
        "pgtrickle.enable_relay(text)",
        "pgtrickle.disable_relay(text)",
        "pgtrickle.delete_relay(text)",
        "pgtrickle.get_relay_config(text)",
        "pgtrickle.list_relay_configs()",
    ] {
        let exists: bool = c.query_one("SELECT to_regprocedure($1) IS NOT NULL", &[&f]).await.unwrap().get(0);
        assert!(exists, "{f} missing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_call_forms_store_the_contract_shapes_and_notify() {
    let db = TestDb::new().await;
    assert!(run_cli(&db.url, &["migrate"]).0.success());
    let c = db.client().await;
    let (listener, mut conn) = tokio_postgres::connect(&db.url, NoTls).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut s = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = s.next().await {
            if let AsyncMessage::Notification(n) = m {
                let _ = tx.send((n.channel().to_owned(), n.payload().to_owned()));
            }
        }
    });
    listener.batch_execute("LISTEN pgtrickle_relay_config").await.unwrap();

    c.execute(
        "SELECT pgtrickle.set_relay_outbox('orders-to-nats', 'outbox_big_orders', 'g1', '{\"type\": \"stdout\"}'::jsonb)",
        &[],
    )
    .await
    .unwrap();
    let (chan, payload) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
    assert_eq!(chan, "pgtrickle_relay_config");
    // pg_trickle's exact text, spaces around the colons included (contract §3.2).
    assert_eq!(
        payload,
        r#"{"direction" : "relay_outbox_config", "event" : "INSERT", "name" : "orders-to-nats", "enabled" : true}"#
    );
    let cfg: Value =
        c.query_one("SELECT config FROM pgtrickle.get_relay_config('orders-to-nats')", &[]).await.unwrap().get(0);
    assert_eq!(
        cfg,
        json!({"sink": {"type": "stdout"}, "source": {"group": "g1", "outbox": "outbox_big_orders", "retention_hours": 24}, "sink_type": "stdout", "source_type": "outbox"})
    );

    // The seed's forms, a reverse pipeline under the same name (allowed: one per table).
    c.batch_execute(
        r#"SELECT pgtrickle.set_relay_outbox('orders-to-nats', config => '{"stream_table": "orders_stream", "sink_type": "nats", "nats_url": "nats://localhost:4222", "nats_stream": "pgtrickle", "subject_template": "pgtrickle.{stream_table}.{op}"}'::jsonb);
           SELECT pgtrickle.set_relay_inbox('orders-to-nats', config => '{"source_type": "nats", "nats_url": "nats://localhost:4222", "nats_stream": "commands", "nats_consumer": "relay-consumer", "inbox_table": "orders_inbox"}'::jsonb);"#,
    )
    .await
    .unwrap();
    let (_, p2) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
    assert!(p2.contains(r#""event" : "UPDATE""#), "{p2}");
    let rows = c
        .query("SELECT name, direction, enabled FROM pgtrickle.get_relay_config('orders-to-nats')", &[])
        .await
        .unwrap();
    let dirs: Vec<String> = rows.iter().map(|r| r.get(1)).collect();
    assert_eq!(dirs, vec!["forward", "reverse"]);

    c.execute("SELECT pgtrickle.disable_relay('orders-to-nats')", &[]).await.unwrap();
    let all = c.query("SELECT name, direction, enabled FROM pgtrickle.list_relay_configs()", &[]).await.unwrap();
    assert!(all.iter().all(|r| !r.get::<_, bool>(2)), "disable acts on both directions");

    // Errors keep pg_trickle's SQLSTATEs and texts.
    let e = c.execute("SELECT pgtrickle.enable_relay('nope')", &[]).await.unwrap_err();
    let db_err = e.as_db_error().unwrap();
    assert_eq!(db_err.code().code(), "P0002");
    assert_eq!(db_err.message(), r#"relay: pipeline "nope" not found"#);
    let e = c.execute("SELECT pgtrickle.set_relay_outbox('x', 'outbox_x', NULL, '{}'::jsonb)", &[]).await.unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "P0001");
    assert!(e
        .as_db_error()
        .unwrap()
        .message()
        .starts_with("relay.invalid_config: sink JSONB must contain a \"type\" key"));
    let e = c
        .execute("SELECT pgtrickle.set_relay_outbox('x', config => '{\"stream_table\": \"s\"}'::jsonb)", &[])
        .await
        .unwrap_err();
    assert!(e.as_db_error().unwrap().message().contains("sink_type"));

    c.execute("SELECT pgtrickle.delete_relay('orders-to-nats')", &[]).await.unwrap();
    let n: i64 = c.query_one("SELECT count(*) FROM pgtrickle.list_relay_configs()", &[]).await.unwrap().get(0);
    assert_eq!(n, 0);
}
