use serde_json::{json, Value};

use super::cloudevents::{default_source, percent_encode};
use super::*;
use crate::message::{traceparent, Payload, RowStamp};

const DB: &str = "shop";

fn names() -> &'static TemplateNames {
    static NAMES: std::sync::OnceLock<TemplateNames> = std::sync::OnceLock::new();
    NAMES.get_or_init(|| TemplateNames {
        pipeline: "orders-out".into(),
        database: DB.into(),
        schema: "public".into(),
        stream_table: "orders".into(),
        outbox_table: "outbox_orders".into(),
    })
}

fn facts(keys: &[String]) -> EnvelopeFacts<'_> {
    EnvelopeFacts { names: names(), key_columns: keys, columns: &[] }
}

fn msg(op: Op, row: Value, before: Option<Value>) -> RelayMessage {
    RelayMessage {
        dedup_key: "outbox_orders:5f0c:0".into(),
        subject: format!("pgtrickle.orders.{}", op.as_str()),
        payload: Payload::from_value(&row),
        op,
        is_full_refresh: false,
        outbox_id: Some(42),
        refresh_id: None,
        before: before.map(|b| Payload::from_value(&b)),
        traceparent: traceparent("outbox_orders:5f0c"),
        // 2026-05-04T10:15:30.123456Z
        stamp: RowStamp { time_us: Some(1_777_889_730_123_456), txid: Some(48213) },
    }
}

fn cloudevents(binary: bool) -> EnvelopeSpec {
    EnvelopeSpec::CloudEvents { binary, source: None, event_type: None }
}

fn keys() -> Vec<String> {
    vec!["id".to_owned()]
}

#[test]
fn structured_event_is_a_valid_cloudevent_with_every_attribute() {
    let keys = keys();
    let env = Envelope::new(&cloudevents(false), &facts(&keys));
    let m = msg(Op::Update, json!({"id": 2, "total": 50.0}), Some(json!({"id": 2, "total": 42.5})));
    let body = env.body(&m);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        v,
        json!({"specversion":"1.0","id":"outbox_orders:5f0c:0","source":"/pgtrickle/shop/orders",
               "type":"io.pgtrickle.orders.update","subject":"2","time":"2026-05-04T10:15:30.123456Z",
               "datacontenttype":"application/json","pgtop":"update","pgtoutboxid":"42",
               "pgtbefore":"{\"id\":2,\"total\":42.5}","traceparent":&*m.traceparent,
               "data":{"id":2,"total":50.0}})
    );
    assert_eq!(env.content_type(), "application/cloudevents+json; charset=utf-8");
    // The CloudEvents SDK reads it as an event: attributes, extensions and JSON data.
    let event: ::cloudevents::Event = serde_json::from_slice(&body).unwrap();
    use ::cloudevents::AttributesReader;
    assert_eq!(event.id(), "outbox_orders:5f0c:0");
    assert_eq!(event.ty(), "io.pgtrickle.orders.update");
    assert_eq!(event.subject(), Some("2"));
    assert_eq!(event.time().map(|t| t.timestamp_micros()), Some(1_777_889_730_123_456));
    assert_eq!(event.extension("pgtoutboxid").map(|e| e.to_string()), Some("42".into()));
    assert_eq!(event.data(), Some(&::cloudevents::Data::Json(json!({"id": 2, "total": 50.0}))));
    // Extension names follow the spec's naming rule.
    for (name, _) in v.as_object().unwrap() {
        let valid = name.len() <= 20 && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        assert!(valid, "{name}");
    }
}

#[test]
fn optional_attributes_are_left_out_and_templates_render() {
    let spec = EnvelopeSpec::CloudEvents {
        binary: false,
        source: Some(Template::parse("urn:shop:{outbox_table}").unwrap()),
        event_type: Some(Template::parse("com.example.{op}.{outbox_id}").unwrap()),
    };
    let env = Envelope::new(&spec, &facts(&[]));
    let mut m = msg(Op::Insert, json!({"id": 1}), None);
    m.stamp = RowStamp::default();
    m.is_full_refresh = true;
    m.refresh_id = Some("r-1".into());
    let v: Value = serde_json::from_slice(&env.body(&m)).unwrap();
    let o = v.as_object().unwrap();
    assert!(!o.contains_key("subject") && !o.contains_key("time") && !o.contains_key("pgtbefore"), "{v}");
    assert_eq!((&v["source"], &v["type"]), (&json!("urn:shop:outbox_orders"), &json!("com.example.insert.42")));
    assert_eq!((&v["pgtfullrefresh"], &v["pgtrefreshid"]), (&json!(true), &json!("r-1")));
    // Several key columns: `col/value/col/value`.
    let keys = vec!["region".to_owned(), "id".to_owned()];
    let env = Envelope::new(&cloudevents(false), &facts(&keys));
    let m = msg(Op::Delete, json!({"id": 7, "region": "eu west"}), None);
    assert_eq!(env.subject(&m).as_deref(), Some("region/eu west/id/7"));
    // A database name that needs encoding stays a valid URI reference.
    assert_eq!(default_source("my db", "Ordérs"), "/pgtrickle/my%20db/Ord%C3%A9rs");
}

#[test]
fn binary_attributes_follow_each_binding() {
    let keys = keys();
    let env = Envelope::new(&cloudevents(true), &facts(&keys));
    let m = msg(Op::Update, json!({"id": 2, "note": "a b"}), Some(json!({"id": 2, "note": "x"})));
    assert_eq!(env.body(&m), br#"{"id":2,"note":"a b"}"#.to_vec(), "binary: the body is the row");
    assert_eq!(env.content_type(), "application/json");
    let attrs = |b| {
        let mut out = Vec::new();
        env.attributes(&m, b, |k, v| out.push((k.to_owned(), v.to_owned())));
        out
    };
    let http = attrs(Binding::Http);
    let names: Vec<&str> = http.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "ce-specversion",
            "ce-id",
            "ce-source",
            "ce-type",
            "ce-subject",
            "ce-time",
            "ce-pgtop",
            "ce-pgtoutboxid",
            "ce-pgtbefore",
            "ce-traceparent"
        ]
    );
    let get = |list: &[(String, String)], k: &str| list.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(get(&http, "ce-pgtbefore").as_deref(), Some("{%22id%22:2,%22note%22:%22x%22}"));
    let nats = attrs(Binding::Nats);
    assert_eq!(get(&nats, "ce-datacontenttype").as_deref(), Some("application/json"), "the NATS binding names it");
    let kafka = attrs(Binding::Kafka);
    assert_eq!(get(&kafka, "ce_pgtbefore").as_deref(), Some(r#"{"id":2,"note":"x"}"#), "Kafka values are raw");
    assert!(get(&kafka, "ce_datacontenttype").is_none());
    let amqp = attrs(Binding::Amqp);
    assert_eq!(get(&amqp, "cloudEvents:id").as_deref(), Some("outbox_orders:5f0c:0"));
    // Structured mode and other envelopes have no header attributes.
    let mut n = 0;
    Envelope::new(&cloudevents(false), &facts(&keys)).attributes(&m, Binding::Http, |_, _| n += 1);
    assert_eq!(n, 0);
}

#[test]
fn percent_encoding_is_the_http_bindings() {
    let mut s = String::new();
    percent_encode(&mut s, "Euro € 😀");
    assert_eq!(s, "Euro%20%E2%82%AC%20%F0%9F%98%80", "the binding's own example");
    s.clear();
    percent_encode(&mut s, "100% \"sure\"");
    assert_eq!(s, "100%25%20%22sure%22");
    assert!(!cloudevents::needs_percent_encoding("outbox_orders:5f0c:0"));
}

#[test]
fn debezium_values_follow_debeziums_envelope() {
    let keys = keys();
    let env = Envelope::new(&EnvelopeSpec::Debezium { name: None, schemas: false }, &facts(&keys));
    let value = |m: &RelayMessage| -> Value { serde_json::from_slice(&env.body(m)).unwrap() };

    let u = value(&msg(Op::Update, json!({"id": 2, "total": 50.0}), Some(json!({"id": 2, "total": 42.5}))));
    assert_eq!(
        (&u["op"], &u["before"], &u["after"]),
        (&json!("u"), &json!({"id":2,"total":42.5}), &json!({"id":2,"total":50.0}))
    );
    let source = u["source"].as_object().unwrap();
    for (k, want) in [
        ("connector", json!("pgtrickle-relay")),
        ("name", json!(DB)),
        ("db", json!(DB)),
        ("schema", json!("public")),
        ("table", json!("orders")),
        ("snapshot", json!("false")),
        ("ts_ms", json!(1_777_889_730_123i64)),
        ("ts_us", json!(1_777_889_730_123_456i64)),
        ("txId", json!(48213)),
        ("lsn", Value::Null),
        ("pgt_outbox_id", json!(42)),
        ("pgt_dedup_key", json!("outbox_orders:5f0c:0")),
    ] {
        assert_eq!(source.get(k), Some(&want), "source.{k} in {u}");
    }
    assert_eq!(source["ts_ns"], json!(1_777_889_730_123_456_000i64));
    assert!(u["ts_ms"].as_i64().unwrap() >= source["ts_ms"].as_i64().unwrap(), "processed after written");
    assert_eq!(u["transaction"], Value::Null);

    let c = value(&msg(Op::Insert, json!({"id": 3}), None));
    assert_eq!((&c["op"], &c["before"], &c["after"]), (&json!("c"), &Value::Null, &json!({"id": 3})));
    let mut first = msg(Op::Insert, json!({"id": 3}), None);
    first.is_full_refresh = true;
    let r = value(&first);
    assert_eq!((&r["op"], &r["source"]["snapshot"]), (&json!("r"), &json!("true")));
    let delete = msg(Op::Delete, json!({"id": 4, "total": 1}), None);
    let d = value(&delete);
    assert_eq!((&d["op"], &d["before"], &d["after"]), (&json!("d"), &json!({"id": 4, "total": 1}), &Value::Null));
    assert!(env.tombstone_after(&delete));
    assert_eq!(env.record_key(&delete), Some(br#"{"id":4}"#.to_vec()));
    assert!(!env.tombstone_after(&msg(Op::Update, json!({"id": 4}), None)));
    // Without key columns: no key, so no tombstone (as Debezium for keyless tables).
    let keyless = Envelope::new(&EnvelopeSpec::Debezium { name: Some("prod".into()), schemas: false }, &facts(&[]));
    assert_eq!((keyless.record_key(&delete), keyless.tombstone_after(&delete)), (None, false));
    assert_eq!(serde_json::from_slice::<Value>(&keyless.body(&delete)).unwrap()["source"]["name"], json!("prod"));
}

#[test]
fn key_objects_keep_key_column_order_and_native_is_unchanged() {
    let keys = vec!["region".to_owned(), "id".to_owned()];
    let env = Envelope::new(&EnvelopeSpec::Debezium { name: None, schemas: false }, &facts(&keys));
    let m = msg(Op::Insert, json!({"id": 7, "region": "eu"}), None);
    assert_eq!(env.record_key(&m), Some(br#"{"region":"eu","id":7}"#.to_vec()));
    let native = Envelope::native();
    assert_eq!(native.body(&m), m.to_json());
    assert_eq!(native.content_type(), "application/json");
    assert_eq!(native.record_key(&m), None);
}

#[test]
fn connect_schemas_wrap_values_and_keys_and_rewrite_numeric_and_json() {
    let col = |name: &str, pg_type: &str, not_null| Column { name: name.into(), pg_type: pg_type.into(), not_null };
    let columns = vec![
        col("id", "integer", true),
        col("total", "numeric", false),
        col("meta", "jsonb", false),
        col("tags", "text[]", false),
        col("ref", "uuid", false),
    ];
    let keys = keys();
    let facts = EnvelopeFacts { columns: &columns, ..facts(&keys) };
    let env = Envelope::new(&EnvelopeSpec::Debezium { name: Some("my-app".into()), schemas: true }, &facts);
    let m = msg(
        Op::Update,
        json!({"id": 2, "total": 50.10, "meta": {"a": [1]}, "tags": ["x"], "ref": null}),
        Some(json!({"id": 2, "total": 42, "meta": null, "tags": [], "ref": null})),
    );
    let v: Value = serde_json::from_slice(&env.body(&m)).unwrap();
    let p = &v["payload"];
    assert_eq!(p["op"], "u");
    assert_eq!(p["after"], json!({"id": 2, "total": "50.1", "meta": "{\"a\":[1]}", "tags": ["x"], "ref": null}));
    assert_eq!(p["before"], json!({"id": 2, "total": "42", "meta": null, "tags": [], "ref": null}));
    let s = &v["schema"];
    assert_eq!(
        (&s["type"], &s["name"], &s["optional"]),
        (&json!("struct"), &json!("my_app.public.orders.Envelope"), &json!(false))
    );
    let fields: Vec<&str> = s["fields"].as_array().unwrap().iter().map(|f| f["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["before", "after", "source", "op", "ts_ms", "ts_us", "ts_ns", "transaction"]);
    let after = &s["fields"][1];
    assert_eq!(after["name"], "my_app.public.orders.Value");
    assert_eq!(
        after["fields"],
        json!([{"type": "int32", "optional": false, "field": "id"},
               {"type": "string", "optional": true, "field": "total"},
               {"type": "string", "optional": true, "name": "io.debezium.data.Json", "field": "meta"},
               {"type": "array", "items": {"type": "string", "optional": true}, "optional": true, "field": "tags"},
               {"type": "string", "optional": true, "name": "io.debezium.data.Uuid", "field": "ref"}])
    );
    // Every source field the value carries is described.
    let described: Vec<&str> =
        s["fields"][2]["fields"].as_array().unwrap().iter().map(|f| f["field"].as_str().unwrap()).collect();
    let written: Vec<&str> = p["source"].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(described, written);
    // The key: the key columns' schema and values.
    let key: Value = serde_json::from_slice(&env.record_key(&m).unwrap()).unwrap();
    assert_eq!(key["payload"], json!({"id": 2}));
    assert_eq!(key["schema"]["name"], "my_app.public.orders.Key");
    assert_eq!(key["schema"]["fields"], json!([{"type": "int32", "optional": false, "field": "id"}]));
}

#[test]
fn keys_and_subjects_keep_the_values_text() {
    let keys = vec!["sku".to_owned(), "amount".to_owned()];
    let env = Envelope::new(&EnvelopeSpec::Debezium { name: None, schemas: false }, &facts(&keys));
    let mut m = msg(Op::Insert, json!({}), None);
    m.payload =
        crate::message::Payload::row(r#"{"amount":1.10,"sku":"A \"1\"","n":12345678901234567890}"#, false).unwrap();
    assert_eq!(env.record_key(&m), Some(br#"{"sku":"A \"1\"","amount":1.10}"#.to_vec()));
    let ce = Envelope::new(&cloudevents(false), &facts(&keys));
    assert_eq!(ce.subject(&m).as_deref(), Some("sku/A \"1\"/amount/1.10"));
    let one = vec!["n".to_owned()];
    let ce = Envelope::new(&cloudevents(false), &facts(&one));
    assert_eq!(ce.subject(&m).as_deref(), Some("12345678901234567890"), "no float rounding");
}
