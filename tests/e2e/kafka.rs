//! The Kafka sink on a real Kafka-protocol broker (tansu): keys, partitions, headers, templated
//! topics, a missing topic reported without losing anything, and a hung broker (failed
//! delivery reports) survived without losing anything.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use relay_e2e::kafka::KafkaBroker;
use relay_e2e::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_keyed_by_field_ordered_per_key_and_carry_headers() {
    let kafka = KafkaBroker::start();
    kafka.create_topic("orders-events", 3).await;
    let (db, c, outbox) = db_with_outbox("orders").await;
    c.execute(
        "SELECT pgtrickle.set_relay_outbox('to-kafka', config => $1::jsonb)",
        &[&json!({"stream_table": "orders", "sink_type": "kafka", "kafka_brokers": [kafka.brokers()],
                  "kafka_topic_template": "{stream_table}-events", "kafka_key_field": "id"})],
    )
    .await
    .unwrap();
    let _relay = Relay::start(&db.url, "default", &[]);
    // Three snapshots of 20 rows: all inserted, then every row updated, then half deleted.
    let rows = |v: i64, n: i64| json!((0..n).map(|i| json!({"id": i, "v": v, "__pgt_row_id": i})).collect::<Vec<_>>());
    write_inline(&c, &outbox, Some(rows(1, 20))).await;
    write_inline(&c, &outbox, Some(rows(2, 20))).await;
    let last = write_inline(&c, &outbox, Some(rows(2, 10))).await;
    eventually(Duration::from_secs(20), "all three snapshots committed", || async {
        (committed_offset(&c, "default", "to-kafka").await == Some(last)).then_some(())
    })
    .await;

    let records = kafka.records("orders-events").await;
    assert_eq!(records.len(), 20 + 20 + 10, "every event exactly once");
    let keys: BTreeSet<_> = records.iter().map(|r| r.value["dedup_key"].as_str().unwrap().to_owned()).collect();
    assert_eq!(keys.len(), records.len(), "no dedup key twice");
    assert!(records.iter().map(|r| r.partition).collect::<BTreeSet<_>>().len() > 1, "keys spread over partitions");

    // Per key: one partition, and insert → update (→ delete) in that order.
    let mut per_key: BTreeMap<String, Vec<&relay_e2e::kafka::Record>> = BTreeMap::new();
    for r in &records {
        per_key.entry(r.key.clone().unwrap()).or_default().push(r);
    }
    assert_eq!(per_key.len(), 20);
    for (key, rs) in &per_key {
        let id: i64 = key.parse().unwrap();
        assert!(rs.iter().all(|r| r.partition == rs[0].partition), "key {key} stays on one partition");
        let ops: Vec<_> = rs.iter().map(|r| r.headers["pgtrickle-op"].as_str()).collect();
        let expected = if id < 10 { vec!["insert", "update"] } else { vec!["insert", "update", "delete"] };
        assert_eq!(ops, expected, "key {key}");
        for r in rs {
            assert_eq!(r.headers["pgtrickle-op"], r.value["op"].as_str().unwrap());
            assert_eq!(r.headers["pgtrickle-dedup-key"], r.value["dedup_key"].as_str().unwrap());
            assert_eq!(r.headers["pgtrickle-outbox-id"], r.value["outbox_id"].to_string());
            assert_eq!(r.headers["pgtrickle-full-refresh"], r.value["is_full_refresh"].to_string());
            assert_eq!(r.headers["content-type"], "application/json");
            assert_eq!(r.value["payload"]["id"], id);
        }
        assert_eq!(rs[1].value["before"], json!({"id": id, "v": 1}));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_is_reported_and_nothing_is_lost() {
    let kafka = KafkaBroker::start();
    let (db, c, outbox) = db_with_outbox("items").await;
    let config = json!({"stream_table": "items", "sink_type": "kafka", "kafka_brokers": kafka.brokers(),
                        "kafka_topic": "items-topic", "delta_mode": "snapshot"});
    c.execute("SELECT pgtrickle.set_relay_outbox('items-kafka', config => $1::jsonb)", &[&config]).await.unwrap();
    let id = write_inline(&c, &outbox, Some(json!([{"id": 1}, {"id": 2}]))).await;
    let relay = Relay::start(&db.url, "default", &[]);
    let error = eventually(Duration::from_secs(10), "the pipeline reports the missing topic", || async {
        let h = relay.health();
        let p = h["pipelines"].as_array()?.iter().find(|p| p["name"] == "items-kafka")?.clone();
        p["last_error"].as_str().map(str::to_owned)
    })
    .await;
    assert!(error.contains("items-topic") && error.contains("create_topic"), "{error}");
    assert_eq!(committed_offset(&c, "default", "items-kafka").await.unwrap_or(0), 0, "nothing committed");

    // The fix is a config change; the pipeline starts without a restart and relays everything.
    let mut fixed = config.clone();
    fixed["create_topic"] = json!(true);
    c.execute("SELECT pgtrickle.set_relay_outbox('items-kafka', config => $1::jsonb)", &[&fixed]).await.unwrap();
    eventually(Duration::from_secs(10), "relayed after the fix", || async {
        (committed_offset(&c, "default", "items-kafka").await == Some(id)).then_some(())
    })
    .await;
    // Created with the default 3 partitions: compare without order.
    let mut ids: Vec<i64> =
        kafka.records("items-topic").await.iter().map(|r| r.value["payload"]["id"].as_i64().unwrap()).collect();
    ids.sort_unstable();
    assert_eq!(ids, vec![1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_broker_fails_deliveries_without_losing_or_committing_them() {
    let kafka = KafkaBroker::start();
    kafka.create_topic("hung", 1).await;
    let (db, c, outbox) = db_with_outbox("items").await;
    let config = json!({"stream_table": "items", "sink_type": "kafka", "kafka_brokers": kafka.brokers(),
                        "kafka_topic": "hung", "delta_mode": "snapshot", "delivery_timeout_ms": 2000,
                        "rdkafka": {"request.timeout.ms": "1500", "socket.timeout.ms": "2000"}});
    c.execute("SELECT pgtrickle.set_relay_outbox('items-kafka', config => $1::jsonb)", &[&config]).await.unwrap();
    let first = write_inline(&c, &outbox, Some(json!([{"id": 1}, {"id": 2}]))).await;
    let relay = Relay::start(&db.url, "default", &[]);
    eventually(Duration::from_secs(15), "the first row relayed", || async {
        (committed_offset(&c, "default", "items-kafka").await == Some(first)).then_some(())
    })
    .await;

    // The broker hangs: the next row's delivery reports fail; nothing past the first row commits.
    kafka.pause();
    let second = write_inline(&c, &outbox, Some(json!([{"id": 3}, {"id": 4}, {"id": 5}]))).await;
    let error = eventually(Duration::from_secs(30), "the failed deliveries are reported", || async {
        let h = relay.health();
        let p = h["pipelines"].as_array()?.iter().find(|p| p["name"] == "items-kafka")?.clone();
        p["last_error"].as_str().filter(|e| e.contains("hung")).map(str::to_owned)
    })
    .await;
    assert_eq!(committed_offset(&c, "default", "items-kafka").await, Some(first), "{error}");

    // Back: everything is relayed (at least once — Kafka keeps what a retried batch repeats).
    kafka.resume();
    eventually(Duration::from_secs(60), "relayed after the broker came back", || async {
        (committed_offset(&c, "default", "items-kafka").await == Some(second)).then_some(())
    })
    .await;
    let ids: BTreeSet<i64> =
        kafka.records("hung").await.iter().map(|r| r.value["payload"]["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, (1..=5).collect::<BTreeSet<i64>>(), "every row delivered");
}
