//! Wire envelopes read by their consumers' own libraries: CloudEvents 1.0 events parsed by the
//! CloudEvents SDK (structured and binary) from a webhook receiver, NATS JetStream and Kafka;
//! Debezium change events checked field by field against Debezium's envelope, with record keys
//! and tombstones read back from Kafka by an rdkafka consumer; and the other targets carrying
//! an envelope as their body.

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

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// Checks a CloudEvent the SDK built against the change it stands for. `binary_http`: the
/// attributes came as percent-encoded headers (the SDK does not decode them).
fn check_event(e: &Event, change: &(&str, Value, Option<Value>), db: &str, encoded: bool) {
    let (op, row, before) = change;
    let text = |v: Option<String>| v.map(|s| if encoded { percent_decode(&s) } else { s });
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_over_http_structured_and_binary_parse_with_the_sdk() {
    let (structured, binary) = (WebhookServer::start().await, WebhookServer::start().await);
    let (db, c, outbox) = db_with_outbox("orders").await;
    for (name, server, mode) in [("ce-structured", &structured, "structured"), ("ce-binary", &binary, "binary")] {
        pipeline(
            &c,
            name,
            json!({"stream_table": "orders", "sink_type": "webhook", "webhook_url": server.url("/events"),
                   "envelope": "cloudevents", "cloudevents_mode": mode, "key_columns": ["id"]}),
        )
        .await;
    }
    let _relay = Relay::start(&db.url, "default", &[]);
    let last = three_refreshes(&c, &outbox).await;
    all_committed(&c, &["ce-structured", "ce-binary"], last).await;

    let events = |reqs: Vec<Recorded>| -> Vec<(Recorded, Event)> {
        reqs.into_iter()
            .map(|r| {
                let headers = http_headers(r.headers.clone());
                let e = cloudevents::binding::http::to_event(&headers, r.body.clone())
                    .unwrap_or_else(|err| panic!("not a CloudEvent: {err}: {r:?}"));
                (r, e)
            })
            .collect()
    };
    let structured = events(structured.accepted());
    let binary = events(binary.accepted());
    assert_eq!((structured.len(), binary.len()), (5, 5), "one event per request, each change once");
    for (events, is_binary) in [(&structured, false), (&binary, true)] {
        for ((r, e), change) in events.iter().zip(expected_changes()) {
            check_event(e, &change, &db.name, is_binary);
            assert_eq!(r.header("idempotency-key"), Some(e.id()), "the event id is the dedup key");
            assert_eq!(ext(e, "traceparent").as_deref(), r.header("traceparent"));
            if is_binary {
                assert_eq!(r.header("content-type"), Some("application/json"));
                assert_eq!(r.header("ce-specversion"), Some("1.0"));
                assert!(r.header("ce-datacontenttype").is_none(), "HTTP: Content-Type only (binding §3.1.1)");
                assert_eq!(serde_json::from_slice::<Value>(&r.body).unwrap(), change.1, "the body is the row");
            } else {
                assert_eq!(r.header("content-type"), Some("application/cloudevents+json; charset=utf-8"));
                assert!(r.header("ce-id").is_none());
            }
        }
    }
    // Both modes give the same events.
    let ids = |v: &[(Recorded, Event)]| v.iter().map(|(_, e)| e.id().to_owned()).collect::<Vec<_>>();
    assert_eq!(ids(&structured), ids(&binary));
}

/// A Kafka record as the CloudEvents Kafka protocol binding reads it: `ce_` headers and
/// `content-type` in binary mode, a `application/cloudevents` content type in structured mode.
/// The SDK's own `EventBuilder` builds and validates the event from what this hands it.
struct KafkaCe<'a>(&'a Record);

impl KafkaCe<'_> {
    fn content_type(&self) -> Option<&str> {
        self.0.headers.get("content-type").map(String::as_str)
    }
}

impl BinaryDeserializer for KafkaCe<'_> {
    fn deserialize_binary<R: Sized, V: BinarySerializer<R>>(self, mut v: V) -> cloudevents::message::Result<R> {
        let spec = self.0.headers.get("ce_specversion").map(String::as_str).unwrap_or_default();
        let spec = cloudevents::event::SpecVersion::try_from(spec)?;
        let attributes = spec.attribute_names();
        v = v.set_spec_version(spec)?;
        for (k, value) in &self.0.headers {
            let Some(name) = k.strip_prefix("ce_").filter(|n| *n != "specversion") else { continue };
            let value = MessageAttributeValue::String(value.clone());
            v = if attributes.contains(&name) { v.set_attribute(name, value)? } else { v.set_extension(name, value)? };
        }
        if let Some(ct) = self.content_type() {
            v = v.set_attribute("datacontenttype", MessageAttributeValue::String(ct.to_owned()))?;
        }
        match &self.0.payload {
            Some(p) => v.end_with_data(p.clone()),
            None => v.end(),
        }
    }
}

impl StructuredDeserializer for KafkaCe<'_> {
    fn deserialize_structured<R: Sized, V: StructuredSerializer<R>>(self, v: V) -> cloudevents::message::Result<R> {
        v.set_structured_event(self.0.payload.clone().unwrap_or_default())
    }
}

impl MessageDeserializer for KafkaCe<'_> {
    fn encoding(&self) -> Encoding {
        if self.content_type().is_some_and(|c| c.starts_with("application/cloudevents")) {
            Encoding::STRUCTURED
        } else if self.0.headers.contains_key("ce_specversion") {
            Encoding::BINARY
        } else {
            Encoding::UNKNOWN
        }
    }
}

/// Every message of a JetStream stream, in order: (headers, body).
async fn nats_messages(nats: &NatsServer, stream: &str) -> Vec<(Vec<(String, String)>, Vec<u8>)> {
    let js = nats.jetstream().await;
    let mut s = js.get_stream(stream).await.unwrap();
    let n = s.info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=n {
        let m = s.get_raw_message(seq).await.unwrap();
        let headers =
            m.headers.iter().flat_map(|(k, vs)| vs.iter().map(move |v| (k.to_string(), v.to_string()))).collect();
        out.push((headers, m.payload.to_vec()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_over_nats_and_kafka_parse_with_the_sdk() {
    let nats = NatsServer::start();
    // One stream each: both pipelines give a row the same `Nats-Msg-Id` (its dedup key).
    nats.create_stream("CE_STRUCTURED", &["ce.structured.>"]).await;
    nats.create_stream("CE_BINARY", &["ce.binary.>"]).await;
    let kafka = KafkaBroker::start();
    kafka.create_topic("ce-structured", 1).await;
    kafka.create_topic("ce-binary", 1).await;
    let (db, c, outbox) = db_with_outbox("orders").await;
    let common = json!({"stream_table": "orders", "envelope": "cloudevents", "key_columns": ["id"]});
    let with = |extra: Value| {
        let mut v = common.clone();
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        v
    };
    for mode in ["structured", "binary"] {
        pipeline(
            &c,
            &format!("nats-{mode}"),
            with(json!({"sink_type": "nats", "nats_url": nats.url(), "cloudevents_mode": mode,
                        "subject_template": format!("ce.{mode}.{{op}}")})),
        )
        .await;
        pipeline(
            &c,
            &format!("kafka-{mode}"),
            with(json!({"sink_type": "kafka", "kafka_brokers": kafka.brokers(), "cloudevents_mode": mode,
                        "kafka_topic": format!("ce-{mode}")})),
        )
        .await;
    }
    let _relay = Relay::start(&db.url, "default", &[]);
    let last = three_refreshes(&c, &outbox).await;
    all_committed(&c, &["nats-structured", "nats-binary", "kafka-structured", "kafka-binary"], last).await;

    // NATS: structured events are the body (what the SDK's NATS binding reads); binary events
    // carry `ce-` headers, read with the SDK's header deserializer.
    let (mut structured, mut binary) = (Vec::new(), Vec::new());
    let mut all = nats_messages(&nats, "CE_STRUCTURED").await;
    all.extend(nats_messages(&nats, "CE_BINARY").await);
    for (headers, body) in all {
        let ct = headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("content-type")).map(|(_, v)| v.clone());
        if ct.as_deref() == Some("application/cloudevents+json; charset=utf-8") {
            structured.push(serde_json::from_slice::<Event>(&body).unwrap());
        } else {
            assert!(headers.iter().any(|(k, v)| k == "ce-datacontenttype" && v == "application/json"), "{headers:?}");
            let lower = headers.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v));
            binary.push(cloudevents::binding::http::to_event(&http_headers(lower), body).unwrap());
        }
    }
    assert_eq!((structured.len(), binary.len()), (5, 5));
    for (events, encoded) in [(&structured, false), (&binary, true)] {
        for (e, change) in events.iter().zip(expected_changes()) {
            check_event(e, &change, &db.name, encoded);
        }
    }

    // Kafka: the same, with the Kafka binding's `ce_` headers.
    for (topic, want) in [("ce-structured", Encoding::STRUCTURED), ("ce-binary", Encoding::BINARY)] {
        let records = kafka.records(topic).await;
        assert_eq!(records.len(), 5, "{topic}");
        for (r, change) in records.iter().zip(expected_changes()) {
            assert_eq!(KafkaCe(r).encoding(), want, "{topic}: {r:?}");
            if want == Encoding::BINARY {
                assert!(!r.headers.contains_key("ce_datacontenttype"), "Kafka: content-type only");
                assert_eq!(r.value, change.1, "the value is the row");
            }
            let e = MessageDeserializer::into_event(KafkaCe(r)).unwrap_or_else(|err| panic!("{topic}: {err}: {r:?}"));
            check_event(&e, &change, &db.name, false);
            assert_eq!(r.key.as_deref(), Some(e.id()), "the record key stays the dedup key");
        }
    }
}

fn published(relay: &Relay, pipeline: &str) -> u64 {
    let metrics = relay.get("/metrics").1;
    let series = format!(r#"pgtrickle_relay_messages_published_total{{direction="forward",pipeline="{pipeline}"}} "#);
    metrics.lines().find_map(|l| l.strip_prefix(series.as_str())).map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debezium_on_kafka_is_keyed_by_the_key_columns_with_a_tombstone_after_each_delete() {
    let kafka = KafkaBroker::start();
    kafka.create_topic("dbz", 3).await;
    kafka.create_topic("dbz-no-tombstones", 3).await;
    kafka.create_topic("dbz-schemas", 1).await;
    let (db, c, outbox) = db_with_outbox("orders").await;
    // The stream table itself, whose columns the Connect schemas describe.
    c.batch_execute("CREATE TABLE public.orders (id int4 PRIMARY KEY, total numeric(10,2), __pgt_row_id int8)")
        .await
        .unwrap();
    for (name, topic, extra) in [
        ("dbz", "dbz", json!({})),
        ("dbz-nt", "dbz-no-tombstones", json!({"kafka_tombstones": false})),
        ("dbz-schemas", "dbz-schemas", json!({"debezium_schemas": true, "debezium_name": "shop-app"})),
    ] {
        let mut config = json!({"stream_table": "orders", "sink_type": "kafka", "kafka_brokers": kafka.brokers(),
                                "kafka_topic": topic, "envelope": "debezium", "key_columns": ["id"]});
        config.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        pipeline(&c, name, config).await;
    }
    let relay = Relay::start(&db.url, "default", &[]);
    let last = three_refreshes(&c, &outbox).await;
    all_committed(&c, &["dbz", "dbz-nt", "dbz-schemas"], last).await;
    // Tombstones are records, not messages: five changes were published by each pipeline.
    assert_eq!((published(&relay, "dbz"), published(&relay, "dbz-nt")), (5, 5));

    let records = kafka.records("dbz").await;
    assert_eq!(records.len(), 6, "five change events and one tombstone: {records:#?}");
    // Per key, in partition order: the key's events (then its tombstone).
    let mut per_key: BTreeMap<String, Vec<&Record>> = BTreeMap::new();
    for r in &records {
        per_key.entry(r.key.clone().expect("every record is keyed")).or_default().push(r);
    }
    assert_eq!(per_key.keys().collect::<Vec<_>>(), [r#"{"id":1}"#, r#"{"id":2}"#, r#"{"id":3}"#]);
    let ops = |k: &str| per_key[k].iter().map(|r| r.value["op"].as_str().unwrap_or("tombstone")).collect::<Vec<_>>();
    assert_eq!(ops(r#"{"id":1}"#), ["r"]);
    assert_eq!(ops(r#"{"id":2}"#), ["r", "u"]);
    assert_eq!(ops(r#"{"id":3}"#), ["r", "d", "tombstone"]);
    for rs in per_key.values() {
        assert!(rs.iter().all(|r| r.partition == rs[0].partition), "a key stays on one partition");
    }

    // Field by field against Debezium's envelope (PostgreSQL connector, JSON converter without
    // schemas): an update is one event with before and after; a delete has `after: null`.
    let update = per_key[r#"{"id":2}"#][1];
    assert_eq!(update.value["before"], json!({"id": 2, "total": 20}));
    assert_eq!(update.value["after"], json!({"id": 2, "total": 25}));
    let delete = per_key[r#"{"id":3}"#][1];
    assert_eq!((&delete.value["before"], &delete.value["after"]), (&json!({"id": 3, "total": 30}), &Value::Null));
    let first = per_key[r#"{"id":1}"#][0];
    assert_eq!((&first.value["before"], &first.value["after"]), (&Value::Null, &json!({"id": 1, "total": 10})));
    for r in records.iter().filter(|r| r.payload.is_some()) {
        let v = &r.value;
        let s = &v["source"];
        assert_eq!(s["connector"], "pgtrickle-relay");
        assert_eq!((&s["name"], &s["db"]), (&json!(db.name), &json!(db.name)));
        assert_eq!((&s["schema"], &s["table"]), (&json!("public"), &json!("orders")));
        assert_eq!(s["snapshot"], if v["op"] == "r" { "true" } else { "false" });
        assert!(s["txId"].as_i64().is_some_and(|x| x > 0), "the refresh transaction: {s}");
        assert!(s["pgt_outbox_id"].as_i64().is_some() && s["pgt_dedup_key"].is_string(), "{s}");
        assert_eq!(s["pgt_dedup_key"].as_str(), r.headers.get("pgtrickle-dedup-key").map(String::as_str));
        let (written, processed) = (s["ts_ms"].as_i64().unwrap(), v["ts_ms"].as_i64().unwrap());
        assert!(written <= processed && processed - written < 300_000, "{written} {processed}");
        assert_eq!(v["ts_us"].as_i64().unwrap() / 1000, processed);
        assert_eq!(v["transaction"], Value::Null);
        assert_eq!(r.headers["content-type"], "application/json");
    }
    // The tombstone: the delete's key, no value, and what it is in a header.
    let tombstone = per_key[r#"{"id":3}"#][2];
    assert_eq!(tombstone.payload, None);
    assert_eq!(tombstone.headers["pgtrickle-op"], "tombstone");
    assert_eq!(tombstone.headers["pgtrickle-dedup-key"], delete.headers["pgtrickle-dedup-key"]);

    let records = kafka.records("dbz-no-tombstones").await;
    assert_eq!(records.len(), 5, "tombstones: false");
    assert!(records.iter().all(|r| r.payload.is_some()));

    // Kafka Connect's JSON converter with schemas: {"schema", "payload"} values and keys, the
    // schema from the table's columns (numeric as a string, as decimal.handling.mode=string).
    let records = kafka.records("dbz-schemas").await;
    assert_eq!(records.len(), 6);
    let update = records.iter().find(|r| r.value["payload"]["op"] == "u").unwrap();
    assert_eq!(update.value["payload"]["after"], json!({"id": 2, "total": "25"}));
    assert_eq!(update.value["payload"]["before"], json!({"id": 2, "total": "20"}));
    let schema = &update.value["schema"];
    assert_eq!(schema["name"], "shop_app.public.orders.Envelope");
    assert_eq!(
        schema["fields"][1]["fields"],
        json!([{"type": "int32", "optional": false, "field": "id"}, {"type": "string", "optional": true, "field": "total"}]),
        "after: the table's columns without pg_trickle's internal ones"
    );
    let key: Value = serde_json::from_str(update.key.as_deref().unwrap()).unwrap();
    assert_eq!((&key["payload"], &key["schema"]["name"]), (&json!({"id": 2}), &json!("shop_app.public.orders.Key")));
    let tombstone = records.iter().find(|r| r.payload.is_none()).unwrap();
    assert_eq!(serde_json::from_str::<Value>(tombstone.key.as_deref().unwrap()).unwrap()["payload"], json!({"id": 3}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_other_target_carries_the_envelope() {
    let rabbit = relay_e2e::rabbitmq::Rabbit::connect().await;
    let (exchange, queue) = (rabbit.name("ce-exchange"), rabbit.name("ce-queue"));
    rabbit.bind_queue(&exchange, lapin::ExchangeKind::Topic, &queue, "#").await;
    let redis = relay_e2e::redis_server::RedisServer::start();
    let sqs = relay_e2e::sqs::SqsServer::start();
    let sqs_queue = sqs.create_queue("debezium-events").await;
    let file = temp_path("debezium.jsonl");
    let (db, c, outbox) = db_with_outbox("orders").await;
    create_inbox_table(&c, "public.ce_inbox").await;
    let keyed = |mut v: Value| {
        v["stream_table"] = json!("orders");
        v["key_columns"] = json!(["id"]);
        v
    };
    pipeline(
        &c,
        "rabbit-binary",
        keyed(json!({"sink_type": "rabbitmq", "rabbitmq_url": relay_e2e::rabbitmq::amqp_url(),
                     "rabbitmq_exchange": exchange, "envelope": "cloudevents", "cloudevents_mode": "binary"})),
    )
    .await;
    pipeline(
        &c,
        "redis-ce",
        keyed(json!({"sink_type": "redis", "redis_url": redis.url(), "redis_stream_key": "ce-events",
                     "envelope": "cloudevents"})),
    )
    .await;
    pipeline(
        &c,
        "file-dbz",
        keyed(json!({"sink_type": "file", "path": file.to_str().unwrap(), "envelope": "debezium"})),
    )
    .await;
    pipeline(
        &c,
        "inbox-ce",
        keyed(json!({"sink_type": "pg-inbox", "inbox_table": "public.ce_inbox", "envelope": "cloudevents"})),
    )
    .await;
    pipeline(
        &c,
        "sqs-dbz",
        keyed(json!({"sink_type": "sqs", "sqs_queue_url": sqs_queue, "sqs_region": "us-east-1",
                     "sqs_endpoint_url": sqs.endpoint(), "sqs_access_key_id": "test",
                     "sqs_secret_access_key": "moto-secret-key-4711", "envelope": "debezium"})),
    )
    .await;
    let _relay = Relay::start(&db.url, "default", &[]);
    let last = three_refreshes(&c, &outbox).await;
    all_committed(&c, &["rabbit-binary", "redis-ce", "file-dbz", "inbox-ce", "sqs-dbz"], last).await;
    let changes = expected_changes();

    // RabbitMQ, binary: the row is the body, the attributes `cloudEvents:*` headers.
    let received = rabbit.drain(&queue).await;
    assert_eq!(received.len(), 5);
    for (m, (op, row, before)) in received.iter().zip(&changes) {
        assert_eq!(&m.body, row);
        assert_eq!(m.headers.get("cloudEvents:specversion").map(String::as_str), Some("1.0"));
        assert_eq!(m.headers.get("cloudEvents:type"), Some(&format!("io.pgtrickle.orders.{op}")));
        assert_eq!(m.headers.get("cloudEvents:id"), m.message_id.as_ref());
        assert_eq!(m.headers.get("cloudEvents:subject"), Some(&row["id"].to_string()));
        let before_text = m.headers.get("cloudEvents:pgtbefore");
        assert_eq!(before_text.map(|b| serde_json::from_str::<Value>(b).unwrap()), *before, "AMQP values are raw");
    }

    // Redis: `payload` is the structured event.
    let entries = redis.entries("ce-events").await;
    assert_eq!(entries.len(), 5);
    for ((_, fields), change) in entries.iter().zip(&changes) {
        let field = |k: &str| fields.get(k).cloned();
        assert_eq!(field("content-type").as_deref(), Some("application/cloudevents+json; charset=utf-8"));
        let e: Event = serde_json::from_str(&field("payload").unwrap()).unwrap();
        check_event(&e, change, &db.name, false);
    }

    // File: one Debezium value per line.
    let lines: Vec<Value> =
        std::fs::read_to_string(&file).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let ops: Vec<&str> = lines.iter().map(|v| v["op"].as_str().unwrap()).collect();
    assert_eq!(ops, ["r", "r", "r", "u", "d"]);
    assert!(lines.iter().all(|v| v["source"]["pgt_traceparent"].as_str().is_some_and(|t| t.starts_with("00-"))));

    // SQS: the Debezium value is the body, its content type an attribute beside the relay's own.
    let mut received = sqs.drain(&sqs_queue).await;
    assert_eq!(received.len(), 5);
    received.sort_by_key(|m| (m.body["source"]["pgt_outbox_id"].as_i64(), m.body["op"].as_str().map(str::to_owned)));
    let ops: Vec<&str> = received.iter().map(|m| m.body["op"].as_str().unwrap()).collect();
    assert_eq!(ops, ["r", "r", "r", "u", "d"]);
    for m in &received {
        assert_eq!(m.attributes.get("content-type").map(String::as_str), Some("application/json"));
        assert_eq!(
            m.attributes.get("pgtrickle-dedup-key"),
            m.body["source"]["pgt_dedup_key"].as_str().map(str::to_owned).as_ref()
        );
    }

    // pg inbox: the event is the payload; event ids stay the dedup keys.
    let rows = c
        .query("SELECT event_id, payload FROM public.ce_inbox ORDER BY (payload->>'pgtoutboxid')::int8, event_id", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 5);
    for r in &rows {
        let (id, payload): (String, Value) = (r.get(0), r.get(1));
        let e: Event = serde_json::from_value(payload).unwrap();
        assert_eq!(e.id(), id);
        assert_eq!(e.ty().rsplit('.').next(), ext(&e, "pgtop").as_deref());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contradicting_envelope_key_fails_only_its_pipeline() {
    let (db, c, outbox) = db_with_outbox("orders").await;
    let (good, bad) = (temp_path("good.jsonl"), temp_path("bad.jsonl"));
    pipeline(
        &c,
        "good",
        json!({"stream_table": "orders", "sink_type": "file", "path": good.to_str().unwrap(),
                                "envelope": "cloudevents"}),
    )
    .await;
    pipeline(
        &c,
        "bad",
        json!({"stream_table": "orders", "sink_type": "file", "path": bad.to_str().unwrap(),
                               "envelope": "cloudevents", "cloudevents_mode": "binary"}),
    )
    .await;
    // The stream table does not exist here: nothing to build a Connect schema from.
    pipeline(
        &c,
        "no-table",
        json!({"stream_table": "orders", "sink_type": "stdout", "envelope": "debezium",
                                    "debezium_schemas": true}),
    )
    .await;
    let relay = Relay::start(&db.url, "default", &[]);
    let last = write_inline(&c, &outbox, Some(json!([{"id": 1}]))).await;
    all_committed(&c, &["good"], last).await;
    let error = eventually(Duration::from_secs(15), "the no-table pipeline says why", || async {
        let h = relay.health();
        let p = h["pipelines"].as_array()?.iter().find(|p| p["name"] == "no-table")?.clone();
        (p["state"] == "failed").then(|| p["last_error"].as_str().unwrap_or_default().to_owned())
    })
    .await;
    assert!(error.contains("'debezium_schemas': no table public.orders"), "{error}");
    let error = eventually(Duration::from_secs(15), "the bad pipeline says why", || async {
        let h = relay.health();
        let p = h["pipelines"].as_array()?.iter().find(|p| p["name"] == "bad")?.clone();
        (p["state"] == "failed").then(|| p["last_error"].as_str().unwrap_or_default().to_owned())
    })
    .await;
    assert!(error.contains("'binary' needs a target with message headers") && error.contains("file"), "{error}");
    assert_eq!(committed_offset(&c, "default", "bad").await.unwrap_or(0), 0, "nothing of it was relayed");
    assert_eq!(read_jsonl(&good).len(), 1);
    assert!(!bad.exists(), "the bad pipeline never opened its file");
}

/// A request as the CloudEvents SDK's HTTP binding writes it (binary mode): headers and body.
#[derive(Default)]
struct HttpRequest(Vec<(String, String)>);

impl cloudevents::binding::http::Builder<(Vec<(String, String)>, Vec<u8>)> for HttpRequest {
    fn header(&mut self, key: &str, value: ::http::HeaderValue) {
        self.0.push((key.to_owned(), value.to_str().unwrap().to_owned()));
    }

    fn body(&mut self, bytes: Vec<u8>) -> cloudevents::message::Result<(Vec<(String, String)>, Vec<u8>)> {
        Ok((std::mem::take(&mut self.0), bytes))
    }

    fn finish(&mut self) -> cloudevents::message::Result<(Vec<(String, String)>, Vec<u8>)> {
        self.body(Vec::new())
    }
}

async fn inbox_rows(c: &Client, table: &str) -> Vec<(String, String, String, Option<String>, Value, Option<String>)> {
    c.query(
        &format!("SELECT event_id, event_type, source, aggregate_id, payload, trace_id FROM {table} ORDER BY received_at, event_id"),
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_posted_to_the_webhook_receiver_land_in_the_inbox_once() {
    let db = TestDb::new().await;
    let c = db.client().await;
    assert!(run_cli(&db.url, &["migrate"]).0.success());
    create_inbox_table(&c, "public.ce_in").await;
    let port = free_port();
    let config = json!({"source_type": "webhook", "webhook_bind": format!("127.0.0.1:{port}"),
                        "webhook_path": "/events", "inbox_table": "ce_in", "schema": "public"});
    c.execute("SELECT pgtrickle.set_relay_inbox('ce-in', config => $1::jsonb)", &[&config]).await.unwrap();
    let _relay = Relay::start(&db.url, "default", &[]);
    let url = format!("http://127.0.0.1:{port}/events");
    eventually(Duration::from_secs(10), "the receiver listens", || async {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
    })
    .await;
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    // Built and sent by the CloudEvents SDK's own HTTP binding (binary mode): `ce-` headers.
    let binary = cloudevents::EventBuilderV10::new()
        .id("evt-binary-1")
        .source("/shop/orders")
        .ty("com.shop.order.paid")
        .subject("ORD 7")
        .extension("traceparent", tp)
        .data("application/json", json!({"order": 7, "lines": [1, 2]}))
        .build()
        .unwrap();
    let structured = cloudevents::EventBuilderV10::new()
        .id("evt-structured-1")
        .source("/shop/orders")
        .ty("com.shop.order.shipped")
        .subject("ORD-8")
        .data("application/json", json!({"order": 8}))
        .build()
        .unwrap();
    let http = reqwest::Client::new();
    let (headers, body) = BinaryDeserializer::deserialize_binary(
        binary,
        cloudevents::binding::http::Serializer::new(HttpRequest::default()),
    )
    .unwrap();
    for attempt in 0..2 {
        let mut post = http.post(&url).body(body.clone());
        for (k, v) in &headers {
            post = post.header(k.as_str(), v.as_str());
        }
        let r = post.send().await.unwrap();
        assert_eq!(r.status(), 200);
        let answer: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        assert_eq!((&answer["stored"], &answer["duplicates"]), (&json!(1 - attempt), &json!(attempt)), "{answer}");
        let r = http
            .post(&url)
            .header("content-type", "application/cloudevents+json")
            .body(serde_json::to_vec(&structured).unwrap())
            .send()
            .await
            .unwrap();
        let answer: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        assert_eq!((&answer["stored"], &answer["duplicates"]), (&json!(1 - attempt), &json!(attempt)), "{answer}");
    }
    // A CloudEvents batch (JSON batch format): one event per element.
    let batch = json!([
        {"specversion": "1.0", "id": "evt-batch-1", "source": "/shop/orders", "type": "com.shop.order.paid", "data": {"order": 9}},
        {"specversion": "1.0", "id": "evt-batch-2", "source": "/shop/orders", "type": "com.shop.order.paid", "data": {"order": 10}}
    ]);
    let r = http
        .post(&url)
        .header("content-type", "application/cloudevents-batch+json")
        .body(batch.to_string())
        .send()
        .await
        .unwrap();
    let answer: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(answer["stored"], 2, "{answer}");
    let batch_rows: Vec<(String, Value)> = c
        .query("SELECT event_id, payload FROM public.ce_in WHERE event_id LIKE 'evt-batch-%' ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        batch_rows,
        [("evt-batch-1".to_owned(), json!({"order": 9})), ("evt-batch-2".to_owned(), json!({"order": 10}))]
    );
    c.execute("DELETE FROM public.ce_in WHERE event_id LIKE 'evt-batch-%'", &[]).await.unwrap();

    let rows = inbox_rows(&c, "public.ce_in").await;
    assert_eq!(rows.len(), 2, "each event once: {rows:?}");
    let (id, ty, source, aggregate, payload, trace) = &rows[0];
    assert_eq!((id.as_str(), ty.as_str(), source.as_str()), ("evt-binary-1", "com.shop.order.paid", "/shop/orders"));
    assert_eq!(aggregate.as_deref(), Some("ORD 7"), "percent-decoded subject");
    assert_eq!(payload, &json!({"order": 7, "lines": [1, 2]}), "the data, an array inside kept whole");
    assert_eq!(trace.as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
    let (id, ty, _, aggregate, payload, _) = &rows[1];
    assert_eq!(
        (id.as_str(), ty.as_str(), aggregate.as_deref()),
        ("evt-structured-1", "com.shop.order.shipped", Some("ORD-8"))
    );
    assert_eq!(payload, &json!({"order": 8}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debezium_events_from_kafka_land_in_the_inbox_once_and_tombstones_are_skipped() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let kafka = KafkaBroker::start();
    kafka.create_topic("changes", 1).await;
    // The relay's own Debezium events (forward pipeline, with tombstones) …
    let (db, c, outbox) = db_with_outbox("orders").await;
    pipeline(
        &c,
        "dbz-out",
        json!({"stream_table": "orders", "sink_type": "kafka", "kafka_brokers": kafka.brokers(), "kafka_topic": "changes",
               "envelope": "debezium", "key_columns": ["id"]}),
    )
    .await;
    // … and one written by Debezium with Kafka Connect's schemas, keyed by a composite key.
    let producer: FutureProducer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", kafka.brokers()).create().unwrap();
    let foreign = json!({"schema": {"type": "struct", "name": "shop.public.items.Envelope"},
                         "payload": {"before": null, "after": {"sku": "A-1", "qty": 3}, "op": "c", "ts_ms": 1,
                                     "source": {"connector": "postgresql", "db": "shop", "table": "items"}}});
    let key = json!({"schema": {"type": "struct"}, "payload": {"sku": "A-1", "wh": 2}}).to_string();
    producer
        .send(FutureRecord::to("changes").key(&key).payload(&foreign.to_string()), Duration::from_secs(10))
        .await
        .unwrap();
    create_inbox_table(&c, "public.changes_in").await;
    let reverse = json!({"source_type": "kafka", "kafka_brokers": kafka.brokers(), "kafka_topic": "changes",
                         "kafka_group_id": "changes-in", "kafka_session_timeout_ms": 6000,
                         "inbox_table": "changes_in", "schema": "public", "envelope": "debezium"});
    c.execute("SELECT pgtrickle.set_relay_inbox('changes-in', config => $1::jsonb)", &[&reverse]).await.unwrap();
    let relay = Relay::start(&db.url, "default", &[]);
    let last = three_refreshes(&c, &outbox).await;
    all_committed(&c, &["dbz-out"], last).await;
    let count = || async { c.query_one("SELECT count(*) FROM public.changes_in", &[]).await.unwrap().get::<_, i64>(0) };
    eventually(Duration::from_secs(60), "six change events in the inbox", || async {
        (count().await == 6).then_some(())
    })
    .await;
    // Every record (tombstone included) was consumed before the next check.
    eventually(Duration::from_secs(30), "every record consumed", || async {
        let m = relay.get("/metrics").1;
        m.lines()
            .any(|l| {
                l.starts_with(r#"pgtrickle_relay_messages_consumed_total{direction="reverse",pipeline="changes-in"} 7"#)
            })
            .then_some(())
    })
    .await;
    let rows = inbox_rows(&c, "public.changes_in").await;
    let by_type: Vec<(&str, Option<&str>, &Value)> =
        rows.iter().map(|(_, t, _, a, p, _)| (t.as_str(), a.as_deref(), p)).collect();
    for want in [
        ("c", Some(r#"{"sku":"A-1","wh":2}"#), json!({"sku": "A-1", "qty": 3})),
        ("r", Some("1"), json!({"id": 1, "total": 10})),
        ("u", Some("2"), json!({"id": 2, "total": 25})),
        ("d", Some("3"), json!({"id": 3, "total": 30})),
    ] {
        assert!(by_type.iter().any(|(t, a, p)| (*t, *a, *p) == (want.0, want.1, &want.2)), "{want:?} in {by_type:?}");
    }
    // The relay's events keep their dedup keys as event ids; nothing was dead-lettered.
    let own: Vec<&String> = rows.iter().map(|r| &r.0).filter(|id| id.starts_with("outbox_orders:")).collect();
    assert_eq!(own.len(), 5, "{rows:?}");
    let dead: i64 = c
        .query_one("SELECT count(*) FROM pgtrickle.relay_dead_letters WHERE pipeline = 'changes-in'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(dead, 0, "the tombstone is skipped, not dead-lettered");

    // Consumed again from the start (a new group): still six rows.
    drop(relay);
    let again = json!({"kafka_group_id": "changes-in-again"});
    c.execute(
        "UPDATE pgtrickle.relay_inbox_config SET config = config || $1::jsonb WHERE name = 'changes-in'",
        &[&again],
    )
    .await
    .unwrap();
    let relay = Relay::start(&db.url, "default", &[]);
    eventually(Duration::from_secs(60), "the topic consumed again", || async {
        let m = relay.get("/metrics").1;
        m.lines()
            .any(|l| {
                l.starts_with(r#"pgtrickle_relay_messages_consumed_total{direction="reverse",pipeline="changes-in"} 7"#)
            })
            .then_some(())
    })
    .await;
    assert_eq!(count().await, 6, "redelivered events are duplicates");
}
