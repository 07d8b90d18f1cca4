//! Property tests (the fuzz targets of the outbox decoder, the config parser, the template
//! renderer and the reverse mapping): arbitrary input never panics, and what is accepted keeps
//! its invariants. `PROPTEST_CASES` raises the number of cases for a longer run (CI runs the
//! default 256 per property).

use proptest::prelude::*;
use serde_json::{json, Map, Value};

use crate::config::{Direction, PipelineRow, PipelineSpec};
use crate::message::{Op, Template, TemplateNames, TemplateVars};
use crate::outbox::decode::{build_messages, decode, Decoded, Delta, MessageContext};

/// Arbitrary JSON, biased towards the shapes the decoder looks at (keys `v`, `inserted`,
/// `deleted`, `__pgt_row_id`, …).
fn json_value() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("v".to_owned()),
        Just("inserted".to_owned()),
        Just("deleted".to_owned()),
        Just("full_refresh".to_owned()),
        Just("pgt_id".to_owned()),
        Just("__pgt_row_id".to_owned()),
        Just("__pgt_count".to_owned()),
        Just("id".to_owned()),
        "[a-z_]{1,8}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        (-1e9f64..1e9).prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

proptest! {
    #[test]
    fn the_decoder_never_panics_and_rows_become_messages(payload in json_value(), claim in any::<bool>(), pretty in any::<bool>()) {
        // PostgreSQL writes `{"a": 1, "b": 2}`; any JSON spelling must decode the same.
        let text = if pretty { serde_json::to_string_pretty(&payload) } else { serde_json::to_string(&payload) }
            .unwrap_or_else(|_| unreachable!());
        match decode(Some(&text), claim, None, false) {
            Err(e) => prop_assert!(!e.to_string().is_empty()),
            Ok(Decoded::Rows { inserted, deleted, full_refresh, refresh_id }) => {
                let subject = Template::parse("pgtrickle.{stream_table}.{op}").unwrap_or_else(|_| unreachable!());
                let key_columns = vec!["id".to_owned()];
                let names = TemplateNames { stream_table: "s".into(), outbox_table: "outbox_s".into(), ..Default::default() };
                let ctx = MessageContext { names: &names, subject: &subject,
                                           key_columns: &key_columns, keep_internal_columns: false,
                                           stamp: Default::default() };
                let rows = inserted.len() + deleted.len();
                let mut out = Vec::new();
                build_messages(&ctx, Delta { outbox_id: 7, row_ref: "outbox_s:7", inserted, deleted, full_refresh,
                                             refresh_id: refresh_id.as_deref(), first_index: 0,
                                             first_deleted_index: None }, &mut out);
                // A delete and an insert of one key fold into one update: never more messages than rows.
                prop_assert!(out.len() <= rows);
                let mut keys: Vec<&str> = out.iter().map(|m| m.dedup_key.as_str()).collect();
                keys.sort_unstable();
                keys.dedup();
                prop_assert_eq!(keys.len(), out.len(), "dedup keys are unique within an outbox row");
                for m in &out {
                    // The hand-written wire JSON is exactly what serde_json makes of the message.
                    let wire = String::from_utf8(m.to_json()).unwrap_or_default();
                    prop_assert_eq!(&wire, &serde_json::to_string(m).unwrap_or_default());
                    prop_assert!(serde_json::from_str::<Value>(&wire).is_ok());
                    prop_assert!(m.dedup_key.starts_with("outbox_s:7:"));
                    if let Value::Object(p) = m.payload.to_value() {
                        prop_assert!(!p.keys().any(|k| k.starts_with("__pgt_")), "internal columns stripped");
                    }
                }
            }
            Ok(_) => {}
        }
    }

    #[test]
    fn rows_are_split_and_cleaned_like_a_parse_would(rows in prop::collection::vec(json_value(), 0..8), pretty in any::<bool>(), keep in any::<bool>()) {
        let array = Value::Array(rows.clone());
        let text = if pretty { serde_json::to_string_pretty(&array) } else { serde_json::to_string(&array) }
            .unwrap_or_else(|_| unreachable!());
        let split = crate::message::split_rows(&text, keep).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(split.len(), rows.len());
        for (payload, row) in split.iter().zip(rows) {
            let expected = match row {
                Value::Object(m) if !keep => Value::Object(m.into_iter().filter(|(k, _)| !k.starts_with("__pgt_")).collect()),
                other => other,
            };
            // Compared as parsed from text on both sides (serde_json's float parsing is not exact).
            let expected: Value = serde_json::from_str(&expected.to_string()).unwrap_or_default();
            prop_assert_eq!(payload.to_value(), expected);
        }
    }

    #[test]
    fn the_config_parser_never_panics(config in json_value(), reverse in any::<bool>(), flat_keys in prop::collection::vec(
        (prop_oneof![Just("sink_type"), Just("source_type"), Just("stream_table"), Just("nats_url"), Just("batch_size"),
                     Just("subject_template"), Just("key_columns"), Just("delta_mode"), Just("inbox_table")],
         json_value()), 0..6)) {
        let mut config = config;
        if let Value::Object(m) = &mut config {
            for (k, v) in flat_keys {
                m.insert(k.to_owned(), v);
            }
        }
        let row = PipelineRow { name: "p".into(), direction: if reverse { Direction::Reverse } else { Direction::Forward },
                                enabled: true, config };
        match row.parse() {
            Ok(PipelineSpec::Forward(f)) => prop_assert!(!reverse && f.batch_size >= 1),
            Ok(PipelineSpec::Reverse(r)) => prop_assert!(reverse && !r.inbox_table.is_empty()),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn templates_render_any_text(source in ".{0,40}", table in "[a-z_]{0,10}", id in any::<i64>()) {
        match Template::parse(&source) {
            Err(_) => prop_assert!(source.is_empty()),
            Ok(t) => {
                let names = TemplateNames { stream_table: table.clone(), outbox_table: "o".into(), ..Default::default() };
                let vars = TemplateVars { names: &names, op: Op::Update, outbox_id: id, refresh_id: None };
                let out = t.render(&vars);
                if !source.contains('{') {
                    prop_assert_eq!(out, source, "text without variables renders as written");
                }
            }
        }
    }

    #[test]
    fn the_reverse_mapping_never_panics(body in prop::collection::vec(any::<u8>(), 0..200), id in proptest::option::of("[a-z0-9-]{1,12}")) {
        let m = crate::pipeline::reverse::Mapping {
            source_name: "p".into(), event_id_field: Some("id".into()), event_type_field: "event_type".into(),
            default_event_type: "nats".into(), aggregate_id_field: Some("k".into()), max_message_bytes: 150,
            source_name_set: false, envelope: crate::source::envelope::InboundEnvelope::Auto,
            cloudevents_source_id: false,
        };
        let incoming = crate::source::Incoming { id, coordinate: "nats:s:1".into(), subject: None, key: None,
                                                 headers: vec![], body, null_body: false };
        match m.row(&incoming) {
            Ok(Some(r)) => prop_assert!(!r.event_id.is_empty() && incoming.body.len() <= 150),
            Ok(None) => prop_assert!(false, "no key: never a tombstone"),
            Err(e) => prop_assert!(!e.is_empty()),
        }
    }
}
