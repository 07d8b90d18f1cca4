//! Decoding outbox payloads (contract §1.6, §1.7, §7.2, Appendix A and C) into messages.
//!
//! | payload                                  | meaning                                        |
//! |------------------------------------------|------------------------------------------------|
//! | SQL NULL, not claim-check                | nothing to relay (pg_trickle ≤ 0.35)           |
//! | SQL NULL, claim-check                    | rows live in the delta table (0.36–0.45)       |
//! | JSON array                               | full snapshot: every element an `insert`       |
//! | `{"v":1,"inserted":[…],"deleted":[…]}`   | the design envelope (maybe `claim_check`)      |
//! | `{"v":1,"inserted":N,"deleted":M}`       | pg_trickle ≥ 0.46 summary: one `summary` message |

use std::collections::HashMap;

use serde_json::Value;

use crate::message::{
    dedup_key, scan, split_rows, traceparent, Op, Payload, RelayMessage, RowStamp, Template, TemplateNames,
    TemplateVars,
};

/// What one outbox header row holds. Rows are JSON texts (cleaned of `__pgt_*` keys unless
/// asked to keep them), not parsed values.
#[derive(Debug, Clone)]
pub enum Decoded {
    /// Nothing to relay; the offset simply moves past the row.
    Empty,
    /// Rows carried inline.
    Rows { inserted: Vec<Payload>, deleted: Vec<Payload>, full_refresh: bool, refresh_id: Option<String> },
    /// Rows must be read from the claim-check delta table. `full_refresh` is `None` when the
    /// header does not say (pg_trickle 0.45 writes whole snapshots, all `INSERT`).
    ClaimCheck { full_refresh: Option<bool>, refresh_id: Option<String> },
    /// A counts-only summary row, relayed as one message carrying the object.
    Summary(Value),
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("unsupported outbox payload version {0} (this relay understands version 1)")]
    UnsupportedVersion(String),
    #[error("outbox payload is {0}; expected a JSON array, a {{\"v\":1,…}} object or NULL")]
    UnexpectedShape(&'static str),
    #[error("outbox payload key '{0}' must be an array of row objects")]
    BadArray(&'static str),
    #[error("outbox payload is not valid JSON: {0}")]
    Invalid(String),
}

fn invalid(e: impl std::fmt::Display) -> DecodeError {
    DecodeError::Invalid(e.to_string())
}

/// Decodes one header row's payload text (PostgreSQL's `json`/`jsonb` output). `row_refresh_id`
/// is the header's own `refresh_id` column (always NULL in pg_trickle ≤ 0.45, used when the
/// payload does not carry one). On error the caller still holds the payload to dead-letter.
pub fn decode(
    payload: Option<&str>,
    is_claim_check: bool,
    row_refresh_id: Option<&str>,
    keep_internal: bool,
) -> Result<Decoded, DecodeError> {
    let fallback_refresh = row_refresh_id.map(str::to_owned);
    let text = payload.map(str::trim_start).unwrap_or("null");
    match text.as_bytes().first() {
        Some(b'[') => {
            let rows = split_rows(text, keep_internal).map_err(invalid)?;
            Ok(if is_claim_check && rows.is_empty() {
                Decoded::ClaimCheck { full_refresh: Some(true), refresh_id: fallback_refresh }
            } else {
                Decoded::Rows { inserted: rows, deleted: Vec::new(), full_refresh: true, refresh_id: fallback_refresh }
            })
        }
        Some(b'{') => {
            // One pass over the envelope's entries; the row arrays are split afterwards.
            let mut obj = Envelope::new();
            let b = text.as_bytes();
            let end = scan::object_entries(b, 0, |k, v| {
                obj.insert(&text[k.start + 1..k.end - 1], &text[v]);
            })
            .map_err(invalid)?;
            scan::nothing_after(b, end).map_err(invalid)?;
            decode_object(text, &obj, is_claim_check, fallback_refresh, keep_internal)
        }
        Some(b'n') if text.trim_end() == "null" => Ok(if is_claim_check {
            Decoded::ClaimCheck { full_refresh: None, refresh_id: fallback_refresh }
        } else {
            Decoded::Empty
        }),
        Some(b't' | b'f') => Err(DecodeError::UnexpectedShape("a boolean")),
        Some(b'"') => Err(DecodeError::UnexpectedShape("a string")),
        Some(b'-' | b'0'..=b'9') => Err(DecodeError::UnexpectedShape("a number")),
        _ => Err(invalid(format!("unexpected text {:?}", text.chars().take(16).collect::<String>()))),
    }
}

/// An envelope's entries: key (as written, without quotes) → value text.
type Envelope<'a> = HashMap<&'a str, &'a str>;

/// A small value of the envelope (version, flags, ids), parsed.
fn small(obj: &Envelope<'_>, key: &str) -> Option<Value> {
    obj.get(key).and_then(|v| serde_json::from_str(v).ok())
}

/// What a key of the envelope holds, by its first character.
fn kind(obj: &Envelope<'_>, key: &str) -> Option<u8> {
    obj.get(key).and_then(|v| v.as_bytes().first().copied())
}

fn decode_object(
    text: &str,
    obj: &Envelope<'_>,
    is_claim_check: bool,
    fallback_refresh: Option<String>,
    keep_internal: bool,
) -> Result<Decoded, DecodeError> {
    match small(obj, "v") {
        // The docs' examples read `payload -> 'inserted'` without a version: accept that too.
        None if !obj.contains_key("v") => {}
        Some(Value::Number(n)) if n.as_i64() == Some(1) => {}
        other => return Err(DecodeError::UnsupportedVersion(other.unwrap_or(Value::Null).to_string())),
    }
    let is_number = |k| matches!(kind(obj, k), Some(b'-' | b'0'..=b'9'));
    // pg_trickle ≥ 0.46 writes counts where the envelope has arrays.
    if is_number("inserted") || is_number("deleted") {
        return Ok(Decoded::Summary(serde_json::from_str(text).map_err(invalid)?));
    }
    let refresh_id = ["refresh_id", "pgt_id"]
        .iter()
        .find_map(|k| small(obj, k).and_then(|v| v.as_str().map(str::to_owned)))
        .or(fallback_refresh);
    let full_refresh = small(obj, "full_refresh").and_then(|v| v.as_bool());
    if is_claim_check || small(obj, "claim_check").and_then(|v| v.as_bool()) == Some(true) {
        return Ok(Decoded::ClaimCheck { full_refresh, refresh_id });
    }
    if kind(obj, "inserted").is_none() && kind(obj, "deleted").is_none() {
        return Err(DecodeError::UnexpectedShape("an object without 'inserted'/'deleted'"));
    }
    let rows_of = |key: &'static str| -> Result<Vec<Payload>, DecodeError> {
        match obj.get(key) {
            None | Some(&"null") => Ok(Vec::new()),
            Some(rows) if rows.starts_with('[') => split_rows(rows, keep_internal).map_err(invalid),
            Some(_) => Err(DecodeError::BadArray(key)),
        }
    };
    Ok(Decoded::Rows {
        inserted: rows_of("inserted")?,
        deleted: rows_of("deleted")?,
        full_refresh: full_refresh.unwrap_or(false),
        refresh_id,
    })
}

/// Per-pipeline facts needed to turn rows into messages.
#[derive(Debug, Clone)]
pub struct MessageContext<'a> {
    pub names: &'a TemplateNames,
    pub subject: &'a Template,
    pub key_columns: &'a [String],
    pub keep_internal_columns: bool,
    /// The outbox row being relayed.
    pub stamp: RowStamp,
}

/// One delta: rows of one outbox row (or one page of its claim-check rows), as JSON texts.
#[derive(Debug, Clone)]
pub struct Delta<'a> {
    pub outbox_id: i64,
    /// The outbox row's part of the dedup keys ([`crate::message::outbox_row_ref`]).
    pub row_ref: &'a str,
    pub inserted: Vec<Payload>,
    pub deleted: Vec<Payload>,
    pub full_refresh: bool,
    pub refresh_id: Option<&'a str>,
    /// Row index of the first inserted row (non-zero for later claim-check pages).
    pub first_index: usize,
    /// Row index of the first deleted row; `None` means right after the inserted rows.
    pub first_deleted_index: Option<usize>,
}

/// Turns a delta into messages: inserted rows first (indexes `first_index…`), then deleted
/// rows, continuing the index. With key columns, a deleted and an inserted row of the same
/// key become one `update` message (at the insert's index, the old row in `before`).
pub fn build_messages(ctx: &MessageContext<'_>, delta: Delta<'_>, out: &mut Vec<RelayMessage>) {
    let Delta { outbox_id, row_ref, inserted, deleted, full_refresh, refresh_id, first_index, first_deleted_index } =
        delta;
    let deleted_base = first_deleted_index.unwrap_or(first_index + inserted.len());
    let trace = traceparent(row_ref);
    let mut deleted: Vec<Option<Payload>> = deleted.into_iter().map(Some).collect();

    // Index the deleted rows by key so pairing is linear, not quadratic.
    let mut by_key: std::collections::HashMap<String, Vec<usize>> = std::collections::HashMap::new();
    if !ctx.key_columns.is_empty() {
        for (i, row) in deleted.iter().enumerate() {
            if let Some(k) = row.as_ref().and_then(|r| row_key(r, ctx.key_columns)) {
                by_key.entry(k).or_default().push(i);
            }
        }
    }
    let vars = |op: Op| TemplateVars { names: ctx.names, op, outbox_id, refresh_id };
    for (i, row) in inserted.into_iter().enumerate() {
        let before = row_key(&row, ctx.key_columns)
            .and_then(|k| by_key.get_mut(&k).and_then(|v| if v.is_empty() { None } else { Some(v.remove(0)) }))
            .and_then(|di| deleted[di].take());
        let op = if before.is_some() { Op::Update } else { Op::Insert };
        out.push(RelayMessage {
            dedup_key: dedup_key(row_ref, first_index + i),
            subject: ctx.subject.render(&vars(op)),
            payload: row,
            op,
            is_full_refresh: full_refresh && op == Op::Insert,
            outbox_id: Some(outbox_id),
            refresh_id: refresh_id.map(str::to_owned),
            before,
            traceparent: trace.clone(),
            stamp: ctx.stamp,
        });
    }
    for (i, row) in deleted.into_iter().enumerate() {
        let Some(row) = row else { continue };
        out.push(RelayMessage {
            dedup_key: dedup_key(row_ref, deleted_base + i),
            subject: ctx.subject.render(&vars(Op::Delete)),
            payload: row,
            op: Op::Delete,
            is_full_refresh: false,
            outbox_id: Some(outbox_id),
            refresh_id: refresh_id.map(str::to_owned),
            before: None,
            traceparent: trace.clone(),
            stamp: ctx.stamp,
        });
    }
}

/// One row of a snapshot diff as read from SQL (rows already cleaned).
#[derive(Debug, Clone, PartialEq)]
pub struct DiffEvent {
    pub op: Op,
    pub new: Option<Payload>,
    pub old: Option<Payload>,
}

/// One event of a snapshot diff ([`crate::outbox::diff`]): `insert` and `update` carry the new
/// row (`update` the old one in `before`), `delete` the last known row. `first` marks the events
/// of a pipeline's first snapshot, which are the whole table.
pub fn diff_message(
    ctx: &MessageContext<'_>,
    outbox_id: i64,
    row_ref: &str,
    index: usize,
    event: DiffEvent,
    first: bool,
    refresh_id: Option<&str>,
) -> RelayMessage {
    let DiffEvent { op, new, old } = event;
    let (payload, before) = match op {
        Op::Delete => (old, None),
        Op::Update => (new, old),
        _ => (new, None),
    };
    let vars = TemplateVars { names: ctx.names, op, outbox_id, refresh_id };
    RelayMessage {
        dedup_key: dedup_key(row_ref, index),
        subject: ctx.subject.render(&vars),
        payload: payload.unwrap_or_else(|| Payload::from_value(&Value::Null)),
        op,
        is_full_refresh: first && op == Op::Insert,
        outbox_id: Some(outbox_id),
        refresh_id: refresh_id.map(str::to_owned),
        before,
        traceparent: traceparent(row_ref),
        stamp: ctx.stamp,
    }
}

/// The one message of a summary row.
pub fn summary_message(ctx: &MessageContext<'_>, outbox_id: i64, row_ref: &str, summary: Value) -> RelayMessage {
    let refresh_id = summary.get("refresh_id").and_then(Value::as_str).map(str::to_owned);
    let subject = ctx.subject.render(&TemplateVars {
        names: ctx.names,
        op: Op::Summary,
        outbox_id,
        refresh_id: refresh_id.as_deref(),
    });
    RelayMessage {
        dedup_key: dedup_key(row_ref, 0),
        subject,
        payload: Payload::from_value(&summary),
        op: Op::Summary,
        is_full_refresh: false,
        outbox_id: Some(outbox_id),
        refresh_id,
        before: None,
        traceparent: traceparent(row_ref),
        stamp: ctx.stamp,
    }
}

/// A canonical text of a row's key columns; numbers compare by value (`175.0` = `175`).
fn row_key(row: &Payload, key_columns: &[String]) -> Option<String> {
    if key_columns.is_empty() {
        return None;
    }
    let mut key = String::new();
    for v in row.fields(key_columns) {
        match v? {
            // Integers keep full 64-bit precision (`__pgt_row_id`); other numbers compare by value.
            Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(i), _, _) => key.push_str(&format!("n{i}")),
                (_, Some(u), _) => key.push_str(&format!("n{u}")),
                (_, _, Some(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => key.push_str(&format!("n{}", f as i64)),
                (_, _, Some(f)) => key.push_str(&format!("n{f:?}")),
                _ => key.push_str(&format!("n{n}")),
            },
            other => key.push_str(&other.to_string()),
        }
        key.push('\u{1f}');
    }
    Some(key)
}

#[cfg(test)]
mod tests;
