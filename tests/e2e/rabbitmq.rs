//! The RabbitMQ sink on the machine's broker: routing keys from templates, persistent messages
//! with `message_id` and headers, publisher confirms, and unroutable messages held back (not lost).

use std::time::Duration;

use lapin::ExchangeKind;
use relay_e2e::rabbitmq::{amqp_url, Rabbit};
use relay_e2e::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_keys_headers_and_unroutable_messages_held_back() {
    let rabbit = Rabbit::connect().await;
    let exchange = rabbit.name("x");
    let (inserts, deletes) = (rabbit.name("inserts"), rabbit.name("deletes"));
    rabbit.bind_queue(&exchange, ExchangeKind::Topic, &inserts, "orders.insert").await;

    let (db, c, outbox) = db_with_outbox("orders").await;
    let config = json!({"stream_table": "orders", "sink_type": "rabbitmq", "rabbitmq_url": amqp_url(),
                        "rabbitmq_exchange": exchange, "rabbitmq_routing_key_template": "{stream_table}.{op}"});
    c.execute("SELECT pgtrickle.set_relay_outbox('to-rabbit', config => $1::jsonb)", &[&config]).await.unwrap();
    let relay = Relay::start(&db.url, "default", &[]);
    let s1 = write_inline(&c, &outbox, Some(json!([{"id": 1, "__pgt_row_id": 1}, {"id": 2, "__pgt_row_id": 2}]))).await;
    eventually(Duration::from_secs(10), "first snapshot committed", || async {
        (committed_offset(&c, "default", "to-rabbit").await == Some(s1)).then_some(())
    })
    .await;
    let got = rabbit.drain(&inserts).await;
    assert_eq!(got.len(), 2);
    let s1_ref = &row_refs(&c, &outbox).await[&s1];
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.routing_key, "orders.insert");
        assert!(m.persistent);
        assert_eq!(m.message_id.as_deref(), Some(format!("{s1_ref}:{i}").as_str()));
        assert_eq!(m.headers["pgtrickle-op"], "insert");
        assert_eq!(m.headers["pgtrickle-full-refresh"], "true");
        assert_eq!(m.headers["pgtrickle-outbox-id"], s1.to_string());
        assert_eq!(m.body["payload"], json!({"id": i + 1}));
    }

    // Row 2 disappears: its delete has no queue bound. Mandatory publishing brings it back as
    // an error naming the exchange and routing key; nothing is committed past it.
    let s2 = write_inline(&c, &outbox, Some(json!([{"id": 1, "__pgt_row_id": 1}]))).await;
    let error = eventually(Duration::from_secs(10), "the unroutable delete is reported", || async {
        let h = relay.health();
        let p = h["pipelines"].as_array()?.iter().find(|p| p["name"] == "to-rabbit")?.clone();
        p["last_error"].as_str().filter(|e| e.contains("orders.delete")).map(str::to_owned)
    })
    .await;
    assert!(error.contains(&exchange) && error.contains("no queue is bound"), "{error}");
    assert_eq!(committed_offset(&c, "default", "to-rabbit").await, Some(s1));

    // Bind a queue for it; a config change restarts the pipeline at once and the delete arrives.
    rabbit.bind_queue(&exchange, ExchangeKind::Topic, &deletes, "orders.delete").await;
    let mut changed = config.clone();
    changed["rabbitmq_max_in_flight"] = json!(64);
    c.execute("SELECT pgtrickle.set_relay_outbox('to-rabbit', config => $1::jsonb)", &[&changed]).await.unwrap();
    eventually(Duration::from_secs(10), "second snapshot committed", || async {
        (committed_offset(&c, "default", "to-rabbit").await == Some(s2)).then_some(())
    })
    .await;
    let got = rabbit.drain(&deletes).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].headers["pgtrickle-op"], "delete");
    assert_eq!(got[0].body["payload"], json!({"id": 2}));
    assert!(rabbit.drain(&inserts).await.is_empty(), "nothing new for the insert queue");
}

/// `"exchange": ""` is RabbitMQ's default exchange: the routing key names the queue, and every
/// message lands in it (the relay used to refuse the empty name).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_exchange_publishes_straight_to_a_queue() {
    let rabbit = Rabbit::connect().await;
    let queue = rabbit.name("direct");
    let mut args = lapin::types::FieldTable::default();
    args.insert("x-expires".into(), lapin::types::AMQPValue::LongInt(600_000));
    rabbit
        .channel()
        .queue_declare(queue.as_str().into(), lapin::options::QueueDeclareOptions::default(), args)
        .await
        .unwrap();
    rabbit.forget_queue_later(&queue);

    let (db, c, outbox) = db_with_outbox("orders").await;
    let config = json!({"stream_table": "orders", "sink": {"type": "rabbitmq", "url": amqp_url(), "exchange": "",
                        "routing_key": queue}});
    c.execute("SELECT pgtrickle.set_relay_outbox('to-queue', config => $1::jsonb)", &[&config]).await.unwrap();
    let _relay = Relay::start(&db.url, "default", &[]);
    let rows: Vec<serde_json::Value> = (1..=50).map(|i| json!({"id": i, "__pgt_row_id": i})).collect();
    let id = write_inline(&c, &outbox, Some(json!(rows))).await;
    eventually(Duration::from_secs(10), "the snapshot committed", || async {
        (committed_offset(&c, "default", "to-queue").await == Some(id)).then_some(())
    })
    .await;
    let got = rabbit.drain(&queue).await;
    assert_eq!(got.len(), 50, "every message in the queue");
    let ids: std::collections::BTreeSet<u64> = got.iter().map(|m| m.body["payload"]["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, (1..=50).collect());
    assert!(got.iter().all(|m| m.routing_key == queue));
}
