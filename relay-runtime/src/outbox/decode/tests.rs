use serde_json::json;

use super::*;

fn raw(text: &str) -> Payload {
    Payload::row(text, false).unwrap()
}

fn names() -> &'static TemplateNames {
    static NAMES: std::sync::OnceLock<TemplateNames> = std::sync::OnceLock::new();
    NAMES.get_or_init(|| TemplateNames {
        stream_table: "orders".into(),
        outbox_table: "outbox_orders".into(),
        ..Default::default()
    })
}

fn ctx<'a>(subject: &'a Template, keys: &'a [String]) -> MessageContext<'a> {
    MessageContext {
        names: names(),
        subject,
        key_columns: keys,
        keep_internal_columns: false,
        stamp: Default::default(),
    }
}

fn messages(decoded: Decoded, keys: &[String]) -> Vec<RelayMessage> {
    let subject = Template::parse("pgtrickle.{stream_table}.{op}").unwrap();
    let c = ctx(&subject, keys);
    let mut out = Vec::new();
    match decoded {
        Decoded::Rows { inserted, deleted, full_refresh, refresh_id } => build_messages(
            &c,
            Delta {
                outbox_id: 7,
                row_ref: "outbox_orders:7",
                inserted,
                deleted,
                full_refresh,
                refresh_id: refresh_id.as_deref(),
                first_index: 0,
                first_deleted_index: None,
            },
            &mut out,
        ),
        Decoded::Summary(s) => out.push(summary_message(&c, 7, "outbox_orders:7", s)),
        other => panic!("unexpected {other:?}"),
    }
    out
}

#[test]
fn null_payload_is_empty_or_claim_check() {
    assert!(matches!(decode(None, false, None, false).unwrap(), Decoded::Empty));
    assert!(matches!(decode(Some("null"), false, None, false).unwrap(), Decoded::Empty));
    assert!(matches!(
        decode(None, true, Some("r1"), false).unwrap(),
        Decoded::ClaimCheck { full_refresh: None, refresh_id: Some(r) } if r == "r1"
    ));
}

#[test]
fn pg_trickle_045_snapshot_array_becomes_full_refresh_inserts_without_internal_columns() {
    let payload = json!([
        {"total": 175.0, "__pgt_count": 1, "customer_id": 10, "order_count": 1, "__pgt_row_id": 3007003519974542822_i64},
        {"id": 4, "amount": 220.0, "status": "new", "customer_id": 30, "__pgt_row_id": 4424324931843186853_i64}
    ]);
    let msgs = messages(decode(Some(&payload.to_string()), false, None, false).unwrap(), &[]);
    assert_eq!(msgs.len(), 2);
    assert!(msgs.iter().all(|m| m.op == Op::Insert && m.is_full_refresh));
    assert_eq!(msgs[0].payload, json!({"total": 175.0, "customer_id": 10, "order_count": 1}));
    assert_eq!(msgs[1].dedup_key, "outbox_orders:7:1");
    assert_eq!(msgs[1].subject, "pgtrickle.orders.insert");
    assert_eq!(msgs[0].outbox_id, Some(7));
}

#[test]
fn internal_columns_kept_on_request() {
    let subject = Template::parse("s").unwrap();
    let mut c = ctx(&subject, &[]);
    c.keep_internal_columns = true;
    let mut out = Vec::new();
    let delta = Delta {
        outbox_id: 1,
        row_ref: "outbox_orders:1",
        inserted: vec![Payload::row(r#"{"a": 1, "__pgt_row_id": 5}"#, true).unwrap()],
        deleted: vec![],
        full_refresh: true,
        refresh_id: None,
        first_index: 0,
        first_deleted_index: None,
    };
    build_messages(&c, delta, &mut out);
    assert_eq!(out[0].payload, json!({"a": 1, "__pgt_row_id": 5}));
}

#[test]
fn v1_envelope_inserts_first_then_deletes_with_continuous_index() {
    let payload = json!({"v": 1, "inserted": [{"id": 1}, {"id": 2}], "deleted": [{"id": 3}], "pgt_id": "0b5f6c2e-1111-4c4c-8888-000000000001"});
    let msgs = messages(decode(Some(&payload.to_string()), false, None, false).unwrap(), &[]);
    let summary: Vec<(&str, Op, bool)> = msgs.iter().map(|m| (m.dedup_key.as_str(), m.op, m.is_full_refresh)).collect();
    assert_eq!(
        summary,
        vec![
            ("outbox_orders:7:0", Op::Insert, false),
            ("outbox_orders:7:1", Op::Insert, false),
            ("outbox_orders:7:2", Op::Delete, false)
        ]
    );
    assert_eq!(msgs[2].subject, "pgtrickle.orders.delete");
    assert_eq!(msgs[0].refresh_id.as_deref(), Some("0b5f6c2e-1111-4c4c-8888-000000000001"));
}

#[test]
fn v1_full_refresh_flag_marks_inserts_only() {
    let payload = json!({"v": 1, "full_refresh": true, "inserted": [{"id": 1}], "deleted": [{"id": 2}]});
    let msgs = messages(decode(Some(&payload.to_string()), false, None, false).unwrap(), &[]);
    assert!(msgs[0].is_full_refresh);
    assert!(!msgs[1].is_full_refresh);
}

#[test]
fn key_columns_turn_delete_insert_pairs_into_updates() {
    let payload = json!({"v": 1,
        "inserted": [{"id": 2, "total": 50.0}, {"id": 9, "total": 1}],
        "deleted": [{"id": 1, "total": 175.0}, {"id": 2.0, "total": 42.5}]});
    let keys = vec!["id".to_owned()];
    let msgs = messages(decode(Some(&payload.to_string()), false, None, false).unwrap(), &keys);
    let ops: Vec<(Op, &str)> = msgs.iter().map(|m| (m.op, m.dedup_key.as_str())).collect();
    assert_eq!(
        ops,
        vec![(Op::Update, "outbox_orders:7:0"), (Op::Insert, "outbox_orders:7:1"), (Op::Delete, "outbox_orders:7:2")]
    );
    assert_eq!(msgs[0].before, Some(json!({"id": 2.0, "total": 42.5}).into()));
    assert_eq!(msgs[0].subject, "pgtrickle.orders.update");
    assert_eq!(msgs[2].payload, json!({"id": 1, "total": 175.0}));
    // Without key columns the same delta stays insert/delete.
    let plain = messages(decode(Some(&payload.to_string()), false, None, false).unwrap(), &[]);
    assert_eq!(plain.iter().filter(|m| m.op == Op::Update).count(), 0);
    assert_eq!(plain.len(), 4);
}

#[test]
fn large_integer_keys_do_not_collide() {
    let payload = json!({"v": 1,
        "inserted": [{"k": 3007003519974542822_i64, "v": "new"}],
        "deleted": [{"k": 3007003519974542823_i64, "v": "old"}]});
    let keys = vec!["k".to_owned()];
    let msgs = messages(decode(Some(&payload.to_string()), false, None, false).unwrap(), &keys);
    assert_eq!(msgs.iter().filter(|m| m.op == Op::Update).count(), 0);
}

#[test]
fn v046_summary_is_one_summary_message() {
    let payload = json!({"v": 1, "refresh_id": "r-9", "inserted": 3, "deleted": 1, "source": "public.orders"});
    let msgs = messages(decode(Some(&payload.to_string()), false, None, false).unwrap(), &[]);
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].op, Op::Summary);
    assert_eq!(msgs[0].payload, payload);
    assert_eq!(msgs[0].refresh_id.as_deref(), Some("r-9"));
    assert_eq!(msgs[0].subject, "pgtrickle.orders.summary");
}

#[test]
fn claim_check_header_envelope() {
    let payload = json!({"v": 1, "claim_check": true, "inserted_count": 5, "deleted_count": 0, "full_refresh": true});
    assert!(matches!(
        decode(Some(&payload.to_string()), true, None, false).unwrap(),
        Decoded::ClaimCheck { full_refresh: Some(true), refresh_id: None }
    ));
}

#[test]
fn bad_payloads_are_errors_not_panics() {
    let err = |p: Value| decode(Some(&p.to_string()), false, None, false).unwrap_err();
    assert_eq!(err(json!({"v": 99})), DecodeError::UnsupportedVersion("99".into()));
    assert_eq!(err(json!({"v": null})), DecodeError::UnsupportedVersion("null".into()));
    assert!(matches!(err(json!("text")), DecodeError::UnexpectedShape("a string")));
    assert!(matches!(err(json!(12)), DecodeError::UnexpectedShape("a number")));
    assert!(matches!(err(json!(false)), DecodeError::UnexpectedShape("a boolean")));
    assert!(matches!(err(json!({"other": 1})), DecodeError::UnexpectedShape(_)));
    assert_eq!(err(json!({"v": 1, "inserted": "x", "deleted": [{"a": 1}]})), DecodeError::BadArray("inserted"));
    // Text that is not JSON at all (a `json` column can hold only valid JSON, but say so).
    assert!(matches!(decode(Some("[1, "), false, None, false).unwrap_err(), DecodeError::Invalid(_)));
    assert!(matches!(decode(Some(""), false, None, false).unwrap_err(), DecodeError::Invalid(_)));
}

#[test]
fn empty_arrays_produce_no_messages() {
    assert!(messages(decode(Some("[]"), false, None, false).unwrap(), &[]).is_empty());
    assert!(messages(decode(Some(r#"{"v": 1, "inserted": [], "deleted": null}"#), false, None, false).unwrap(), &[])
        .is_empty());
}

#[test]
fn claim_check_pages_continue_the_index() {
    let subject = Template::parse("s.{op}").unwrap();
    let c = ctx(&subject, &[]);
    let mut out = Vec::new();
    let delta = Delta {
        outbox_id: 3,
        row_ref: "outbox_orders:3",
        inserted: vec![raw(r#"{"a": 1}"#)],
        deleted: vec![raw(r#"{"a": 2}"#)],
        full_refresh: true,
        refresh_id: None,
        first_index: 1000,
        first_deleted_index: None,
    };
    build_messages(&c, delta, &mut out);
    assert_eq!(out[0].dedup_key, "outbox_orders:3:1000");
    assert_eq!(out[1].dedup_key, "outbox_orders:3:1001");
}
