//! The Redis Streams sink: entry fields, templated stream keys (every template variable),
//! approximate trimming.

use std::time::Duration;

use relay_e2e::redis_server::RedisServer;
use relay_e2e::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_carry_the_message_fields_under_templated_keys() {
    let redis = RedisServer::start();
    let (db, c, outbox) = db_with_outbox("orders").await;
    c.execute(
        "SELECT pgtrickle.set_relay_outbox('to-redis', config => $1::jsonb)",
        &[&json!({"stream_table": "orders", "sink_type": "redis", "redis_url": redis.url(),
                  "redis_stream_key": "app:{database}:{schema}.{stream_table}:{op}", "redis_maxlen": 1000,
                  "subject_template": "{pipeline}.{schema}.{stream_table}.{op}"})],
    )
    .await
    .unwrap();
    let database: String = c.query_one("SELECT current_database()", &[]).await.unwrap().get(0);
    let key = |op: &str| format!("app:{database}:public.orders:{op}");
    let _relay = Relay::start(&db.url, "default", &[]);
    let s1 = write_inline(
        &c,
        &outbox,
        Some(json!([{"id": 1, "v": "a", "__pgt_row_id": 1}, {"id": 2, "v": "b", "__pgt_row_id": 2}])),
    )
    .await;
    eventually(Duration::from_secs(10), "two inserts", || async {
        (redis.entries(&key("insert")).await.len() == 2).then_some(())
    })
    .await;
    let s2 = write_inline(&c, &outbox, Some(json!([{"id": 2, "v": "b2", "__pgt_row_id": 2}]))).await;
    eventually(Duration::from_secs(10), "offset past the second snapshot", || async {
        (committed_offset(&c, "default", "to-redis").await == Some(s2)).then_some(())
    })
    .await;
    let inserts = redis.entries(&key("insert")).await;
    assert_eq!(inserts[0].1["dedup_key"], format!("{}:0", row_refs(&c, &outbox).await[&s1]));
    assert_eq!(inserts[0].1["subject"], "to-redis.public.orders.insert");
    assert_eq!(inserts[0].1["op"], "insert");
    assert_eq!(serde_json::from_str::<Value>(&inserts[0].1["payload"]).unwrap(), json!({"id": 1, "v": "a"}));
    assert_eq!(inserts[0].1["outbox_id"], s1.to_string());
    let updates = redis.entries(&key("update")).await;
    assert_eq!(updates.len(), 1);
    assert_eq!(serde_json::from_str::<Value>(&updates[0].1["payload"]).unwrap(), json!({"id": 2, "v": "b2"}));
    assert_eq!(serde_json::from_str::<Value>(&updates[0].1["before"]).unwrap(), json!({"id": 2, "v": "b"}));
    let deletes = redis.entries(&key("delete")).await;
    assert_eq!(deletes.len(), 1);
    assert_eq!(serde_json::from_str::<Value>(&deletes[0].1["payload"]).unwrap(), json!({"id": 1, "v": "a"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca() {
    let certs = relay_e2e::redis_server::TestCerts::new();
    let redis = RedisServer::start_tls(&certs);
    let (db, c, outbox) = db_with_outbox("orders").await;
    c.execute(
        "SELECT pgtrickle.set_relay_outbox('to-rediss', config => $1::jsonb)",
        &[&json!({"stream_table": "orders", "sink_type": "redis", "redis_url": redis.url(),
                  "redis_tls_ca": certs.path("ca.crt"), "delta_mode": "snapshot"})],
    )
    .await
    .unwrap();
    let _relay = Relay::start(&db.url, "default", &[]);
    let id = write_inline(&c, &outbox, Some(json!([{"id": 1}, {"id": 2}]))).await;
    eventually(Duration::from_secs(10), "committed over TLS", || async {
        (committed_offset(&c, "default", "to-rediss").await == Some(id)).then_some(())
    })
    .await;
    let entries = redis.entries("pgtrickle.orders").await;
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[1].1["dedup_key"], format!("{}:1", row_refs(&c, &outbox).await[&id]));
}

/// The append-once script on a real server: entries at or below the pipeline's mark are skipped
/// (redelivery), and a call that names an earlier entry the mark has not reached is refused
/// (`PGTRICKLE_GAP`) instead of appending past a batch that failed — what makes pipelining the
/// sink's batches safe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_append_once_script_skips_redelivery_and_refuses_to_skip_a_gap() {
    let redis = RedisServer::start();
    let mut conn = redis.client().get_multiplexed_async_connection().await.unwrap();
    let script = redis::Script::new(relay_runtime::sink::redis::APPEND_ONCE);
    let call = |expected: &str, entries: &[(i64, i64)]| {
        let mut inv = script.key("s");
        inv.key("s:pgtrickle-marks").arg("p").arg("").arg(expected);
        for (o, x) in entries {
            inv.arg(*o).arg(*x).arg(2).arg("k").arg(format!("{o}:{x}"));
        }
        inv
    };
    let len = |conn: &mut redis::aio::MultiplexedConnection| {
        let mut conn = conn.clone();
        async move { redis::cmd("XLEN").arg("s").query_async::<i64>(&mut conn).await.unwrap() }
    };
    let dup: i64 = call("", &[(1, 0), (1, 1)]).invoke_async(&mut conn).await.unwrap();
    assert_eq!((dup, len(&mut conn).await), (0, 2));
    // A batch that says "after 1:5" while the stream only reached 1:1: refused, nothing appended.
    let gap: redis::RedisResult<i64> = call("1:5", &[(1, 6), (2, 0)]).invoke_async(&mut conn).await;
    let err = gap.expect_err("a gap must be refused").to_string();
    assert!(err.contains("PGTRICKLE_GAP"), "{err}");
    assert_eq!(len(&mut conn).await, 2);
    // The in-order continuation is appended.
    let dup: i64 = call("1:1", &[(1, 2), (2, 0)]).invoke_async(&mut conn).await.unwrap();
    assert_eq!((dup, len(&mut conn).await), (0, 4));
    // Redelivery of everything (a restarted relay, no expectation): all skipped.
    let dup: i64 = call("", &[(1, 0), (1, 1), (1, 2), (2, 0)]).invoke_async(&mut conn).await.unwrap();
    assert_eq!((dup, len(&mut conn).await), (4, 4));
    // A continuation the mark already passed (an earlier call was redelivered) is fine.
    let dup: i64 = call("1:2", &[(2, 0), (2, 1)]).invoke_async(&mut conn).await.unwrap();
    assert_eq!((dup, len(&mut conn).await), (1, 5));
}
