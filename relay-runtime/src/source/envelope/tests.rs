use serde_json::{json, Value};

use super::*;

fn msg(headers: &[(&str, &str)], body: &str) -> Incoming {
    Incoming {
        id: Some("transport-id".into()),
        coordinate: "kafka:t:0:7".into(),
        subject: Some("t".into()),
        key: None,
        headers: headers.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        body: body.as_bytes().to_vec(),
        null_body: false,
    }
}

fn unwrapped(m: &Incoming, mode: InboundEnvelope) -> Unwrapped {
    match inbound(m, mode).unwrap() {
        Inbound::Unwrapped(u) => u,
        other => panic!("{other:?}"),
    }
}

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[test]
fn structured_cloudevents_map_their_attributes() {
    let body = json!({"specversion": "1.0", "id": "e-1", "source": "/shop", "type": "order.created",
                      "subject": "ORD-7", "traceparent": TP, "data": {"total": 5, "items": [1, 2]}})
    .to_string();
    let u = unwrapped(&msg(&[], &body), InboundEnvelope::Auto);
    assert_eq!(u.event_id.as_deref(), Some("e-1"));
    assert_eq!(u.event_type.as_deref(), Some("order.created"));
    assert_eq!(u.source.as_deref(), Some("/shop"));
    assert_eq!(u.aggregate_id.as_deref(), Some("ORD-7"));
    assert_eq!(u.payload, json!({"total": 5, "items": [1, 2]}));
    assert_eq!(u.traceparent.as_deref(), Some(TP));
    // The content type alone says structured; data_base64 holding JSON is decoded.
    let b64 = json!({"specversion": "1.0", "id": "e-2", "source": "s", "type": "t", "data_base64": "eyJhIjoxfQ=="});
    let u =
        unwrapped(&msg(&[("content-type", "application/cloudevents+json")], &b64.to_string()), InboundEnvelope::Auto);
    assert_eq!(u.payload, json!({"a": 1}));
    // No data: a JSON null payload.
    let none = json!({"specversion": "1.0", "id": "e-3", "source": "s", "type": "t"}).to_string();
    assert_eq!(unwrapped(&msg(&[], &none), InboundEnvelope::CloudEvents).payload, Value::Null);
}

#[test]
fn binary_cloudevents_read_each_bindings_headers() {
    let http = msg(
        &[
            ("ce-specversion", "1.0"),
            ("ce-id", "e%201"),
            ("ce-source", "/shop"),
            ("ce-type", "order.created"),
            ("ce-subject", "Euro%20%E2%82%AC"),
            ("content-type", "application/json"),
            ("traceparent", TP),
        ],
        r#"[1,2]"#,
    );
    let u = unwrapped(&http, InboundEnvelope::Auto);
    assert_eq!((u.event_id.as_deref(), u.aggregate_id.as_deref()), (Some("e 1"), Some("Euro €")), "percent-decoded");
    assert_eq!(u.payload, json!([1, 2]), "an array is the event's data");
    assert_eq!(u.traceparent.as_deref(), Some(TP));
    let kafka =
        msg(&[("ce_specversion", "1.0"), ("ce_id", "e%201"), ("ce_source", "s"), ("ce_type", "t")], r#"{"x":1}"#);
    assert_eq!(unwrapped(&kafka, InboundEnvelope::Auto).event_id.as_deref(), Some("e%201"), "Kafka values are raw");
    let amqp = msg(
        &[
            ("cloudEvents:specversion", "1.0"),
            ("cloudEvents:id", "a"),
            ("cloudEvents_source", "s"),
            ("cloudEvents:type", "t"),
        ],
        r#"{"x":1}"#,
    );
    assert_eq!(unwrapped(&amqp, InboundEnvelope::Auto).source.as_deref(), Some("s"));
    // What cannot be stored is said.
    let no_id = msg(&[("ce-specversion", "1.0"), ("ce-source", "s"), ("ce-type", "t")], "{}");
    assert!(inbound(&no_id, InboundEnvelope::Auto).unwrap_err().contains("'id'"));
    let text = msg(
        &[
            ("ce-specversion", "1.0"),
            ("ce-id", "i"),
            ("ce-source", "s"),
            ("ce-type", "t"),
            ("content-type", "text/plain"),
        ],
        "hello",
    );
    assert!(inbound(&text, InboundEnvelope::Auto).unwrap_err().contains("text/plain) is not JSON"));
    let v03 = msg(&[("ce-specversion", "0.3"), ("ce-id", "i"), ("ce-source", "s"), ("ce-type", "t")], "{}");
    assert!(inbound(&v03, InboundEnvelope::Auto).unwrap_err().contains("'0.3' is not supported"));
}

#[test]
fn debezium_events_map_op_row_and_key() {
    let d = json!({"before": {"id": 3, "total": 30}, "after": null, "op": "d", "ts_ms": 1,
                   "source": {"connector": "postgresql", "db": "shop", "table": "orders"}});
    let mut m = msg(&[("traceparent", TP)], &d.to_string());
    m.key = Some(r#"{"id":3}"#.into());
    let u = unwrapped(&m, InboundEnvelope::Auto);
    assert_eq!(u.event_type.as_deref(), Some("d"));
    assert_eq!(u.payload, json!({"id": 3, "total": 30}), "a delete stores the row before");
    assert_eq!(u.aggregate_id.as_deref(), Some("3"), "a one-field key's value");
    assert_eq!(u.event_id, None, "a foreign event: the message's own id or coordinate");
    // Schema-wrapped (Kafka Connect JSON converter with schemas), relay-written (its dedup key).
    let c = json!({"schema": {"type": "struct"}, "payload": {"before": null, "after": {"id": 1}, "op": "c",
                   "source": {"pgt_dedup_key": "outbox_orders:u:0"}}});
    let mut m = msg(&[], &c.to_string());
    m.key = Some(json!({"schema": {"type": "struct"}, "payload": {"id": 1, "region": "eu"}}).to_string());
    let u = unwrapped(&m, InboundEnvelope::Debezium);
    assert_eq!((u.event_type.as_deref(), u.event_id.as_deref()), (Some("c"), Some("outbox_orders:u:0")));
    assert_eq!(u.payload, json!({"id": 1}));
    assert_eq!(u.aggregate_id.as_deref(), Some(r#"{"id":1,"region":"eu"}"#), "a composite key's JSON");
    // A tombstone: a keyed record without a value.
    let mut t = msg(&[], "");
    t.key = Some(r#"{"id":3}"#.into());
    assert_eq!(inbound(&t, InboundEnvelope::Auto).unwrap(), Inbound::Native, "an empty value is no tombstone");
    t.null_body = true;
    assert_eq!(inbound(&t, InboundEnvelope::Auto).unwrap(), Inbound::Tombstone);
    assert!(inbound(&t, InboundEnvelope::Native).is_ok_and(|i| i == Inbound::Native));
}

#[test]
fn native_messages_stay_native_and_required_kinds_are_enforced() {
    // The relay's own message, a user payload with an `op`, and one with a `source` field.
    let native = [
        json!({"dedup_key": "o:1:0", "subject": "s", "payload": {"id": 1}, "op": "insert", "is_full_refresh": false,
               "outbox_id": 1, "refresh_id": null, "before": {"id": 0}}),
        json!({"op": "c", "before": null, "after": {"id": 1}, "source": "a string, not an object"}),
        json!({"specversion": "1.0", "id": 5, "source": "s", "type": "t"}),
        json!([{"op": "c", "before": null, "after": {}, "source": {}}]),
    ];
    for v in native {
        assert_eq!(inbound(&msg(&[], &v.to_string()), InboundEnvelope::Auto).unwrap(), Inbound::Native, "{v}");
    }
    let plain = msg(&[], r#"{"order_id": 7}"#);
    assert!(inbound(&plain, InboundEnvelope::CloudEvents).unwrap_err().contains("expected a CloudEvent"));
    assert!(inbound(&plain, InboundEnvelope::Debezium).unwrap_err().contains("expected a Debezium change event"));
    // `native` never looks.
    let ce = json!({"specversion": "1.0", "id": "e", "source": "s", "type": "t"}).to_string();
    assert_eq!(inbound(&msg(&[], &ce), InboundEnvelope::Native).unwrap(), Inbound::Native);
}
