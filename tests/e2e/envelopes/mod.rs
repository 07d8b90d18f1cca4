//! Wire envelopes read by their consumers' own libraries: CloudEvents 1.0 events parsed by the
//! CloudEvents SDK (structured and binary) from a webhook receiver, NATS JetStream and Kafka;
//! Debezium change events checked field by field against Debezium's envelope, with record keys
//! and tombstones read back from Kafka by an rdkafka consumer; the other targets carrying an
//! envelope as their body ([`forward`]); and sources unwrapping both formats into the inbox
//! ([`reverse`]).

use std::collections::BTreeMap;
use std::time::Duration;

use cloudevents::message::{
    BinaryDeserializer, BinarySerializer, Encoding, MessageAttributeValue, MessageDeserializer, StructuredDeserializer,
    StructuredSerializer,
};
use cloudevents::{AttributesReader, Data, Event, EventBuilder};
use relay_e2e::http::{Recorded, WebhookServer};
use relay_e2e::kafka::{KafkaBroker, Record};
use relay_e2e::nats::NatsServer;
use relay_e2e::*;
use serde_json::{json, Value};
use tokio_postgres::Client;

/// Three refreshes of `orders` (diff mode, `key_columns: ["id"]`): the first snapshot (three
/// inserts), order 2's total changed (an update), order 3 gone (a delete). Returns the last
/// outbox id.
async fn three_refreshes(c: &Client, outbox: &str) -> i64 {
    let rows = |rows: &[(i64, i64)]| {
        json!(rows.iter().map(|(id, total)| json!({"id": id, "total": total, "__pgt_row_id": id})).collect::<Vec<_>>())
    };
    write_inline(c, outbox, Some(rows(&[(1, 10), (2, 20), (3, 30)]))).await;
    write_inline(c, outbox, Some(rows(&[(1, 10), (2, 25), (3, 30)]))).await;
    write_inline(c, outbox, Some(rows(&[(1, 10), (2, 25)]))).await
}

async fn all_committed(c: &Client, pipelines: &[&str], last: i64) {
    for p in pipelines {
        eventually(Duration::from_secs(30), &format!("{p} relayed every refresh"), || async {
            (committed_offset(c, "default", p).await == Some(last)).then_some(())
        })
        .await;
    }
}

async fn pipeline(c: &Client, name: &str, config: Value) {
    c.execute("SELECT pgtrickle.set_relay_outbox($1, config => $2::jsonb)", &[&name, &config]).await.unwrap();
}

/// What the three refreshes must give, in order: (op, row, row before).
fn expected_changes() -> Vec<(&'static str, Value, Option<Value>)> {
    vec![
        ("insert", json!({"id": 1, "total": 10}), None),
        ("insert", json!({"id": 2, "total": 20}), None),
        ("insert", json!({"id": 3, "total": 30}), None),
        ("update", json!({"id": 2, "total": 25}), Some(json!({"id": 2, "total": 20}))),
        ("delete", json!({"id": 3, "total": 30}), None),
    ]
}

fn ext(e: &Event, name: &str) -> Option<String> {
    e.extension(name).map(|v| v.to_string())
}

/// Checks a CloudEvent the SDK built against the change it stands for. `encoded`: the
/// attributes came as percent-encoded headers (the SDK does not decode them).
fn check_event(e: &Event, change: &(&str, Value, Option<Value>), db: &str, encoded: bool) {
    let (op, row, before) = change;
    let text = |v: Option<String>| v.map(|s| if encoded { relay_runtime::percent::decode(&s).unwrap() } else { s });
    assert_eq!(e.ty(), format!("io.pgtrickle.orders.{op}"));
    assert_eq!(e.source().to_string(), format!("/pgtrickle/{db}/orders"));
    assert_eq!(e.subject(), Some(row["id"].to_string().as_str()), "subject = the key");
    assert!(e.id().starts_with("outbox_orders:"), "id = the dedup key: {}", e.id());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let written = e.time().expect("time = the outbox row's created_at").timestamp();
    assert!((now - written).abs() < 300, "time {:?}", e.time());
    // Binary mode hands the SDK bytes of a JSON content type; structured mode a JSON value.
    let data = match e.data() {
        Some(Data::Json(v)) => v.clone(),
        Some(Data::Binary(b)) => serde_json::from_slice(b).unwrap(),
        other => panic!("data {other:?}"),
    };
    assert_eq!(e.datacontenttype(), Some("application/json"));
    assert_eq!(&data, row, "data = the row");
    assert_eq!(ext(e, "pgtop").as_deref(), Some(*op));
    assert!(ext(e, "pgtoutboxid").is_some_and(|id| id.parse::<i64>().is_ok()));
    let before_text = text(ext(e, "pgtbefore"));
    assert_eq!(before_text.map(|b| serde_json::from_str::<Value>(&b).unwrap()), *before);
    let full = ext(e, "pgtfullrefresh");
    assert_eq!(full.as_deref() == Some("true"), *op == "insert", "the first snapshot's rows: {full:?}");
    assert!(ext(e, "traceparent").is_some_and(|t| t.starts_with("00-")));
}

fn http_headers(pairs: impl IntoIterator<Item = (String, String)>) -> ::http::HeaderMap {
    let mut map = ::http::HeaderMap::new();
    for (k, v) in pairs {
        map.append(::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), ::http::HeaderValue::from_str(&v).unwrap());
    }
    map
}

mod forward;
mod reverse;
