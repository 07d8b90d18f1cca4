//! Decoding outbox payloads (contract §1.6, §1.7, §7.2, Appendix A and C) into messages.
//!
//! | payload                                  | meaning                                        |
//! |------------------------------------------|------------------------------------------------|
//! | SQL NULL, not claim-check                | nothing to relay (pg_trickle ≤ 0.35)           |
//! | SQL NULL, claim-check                    | rows live in the delta table (0.36–0.45)       |
//! | JSON array                               | full snapshot: every element an `insert`       |
//! | `{"v":1,"inserted":[…],"deleted":[…]}`   | the design envelope (maybe `claim_check`)      |
//! | `{"v":1,"inserted":N,"deleted":M}`       | pg_trickle ≥ 0.46 summary: one `summary` message |

use serde_json::{Map, Value};

use crate::message::{dedup_key, Op, RelayMessage, Template, TemplateVars};

/// What one outbox header row holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// Nothing to relay; the offset simply moves past the row.
    Empty,
    /// Rows carried inline.
    Rows { inserted: Vec<Value>, deleted: Vec<Value>, full_refresh: bool, refresh_id: Option<String> },
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
}

/// A payload that cannot be decoded, handed back whole so it can be dead-lettered.
#[derive(Debug, Clone, PartialEq)]
pub struct Undecodable {
    pub error: DecodeError,
    pub payload: Value,
}

/// Decodes one header row's payload, taking ownership so rows are moved, not copied.
/// `row_refresh_id` is the header's own `refresh_id` column (always NULL in pg_trickle
/// ≤ 0.45, used when the payload does not carry one).
pub fn decode(
    payload: Option<Value>,
    is_claim_check: bool,
    row_refresh_id: Option<&str>,
) -> Result<Decoded, Undecodable> {
    let fallback_refresh = row_refresh_id.map(str::to_owned);
    let Some(payload) = payload.filter(|p| !p.is_null()) else {
        return Ok(if is_claim_check {
            Decoded::ClaimCheck { full_refresh: None, refresh_id: fallback_refresh }
        } else {
            Decoded::Empty
        });
    };
    let shape = match &payload {
        Value::Array(_) => None,
        Value::Object(obj) => check_object(obj).err(),
        Value::Bool(_) => Some(DecodeError::UnexpectedShape("a boolean")),
        Value::Number(_) => Some(DecodeError::UnexpectedShape("a number")),
        Value::String(_) => Some(DecodeError::UnexpectedShape("a string")),
        Value::Null => None,
    };
    if let Some(error) = shape {
        return Err(Undecodable { error, payload });
    }
    Ok(match payload {
        Value::Array(rows) if is_claim_check && rows.is_empty() => {
            Decoded::ClaimCheck { full_refresh: Some(true), refresh_id: fallback_refresh }
        }
        Value::Array(rows) => {
            Decoded::Rows { inserted: rows, deleted: Vec::new(), full_refresh: true, refresh_id: fallback_refresh }
        }
        Value::Object(obj) => decode_object(obj, is_claim_check, fallback_refresh),
        _ => Decoded::Empty,
    })
}

/// Everything that can be wrong with an object payload, checked before it is taken apart.
fn check_object(obj: &Map<String, Value>) -> Result<(), DecodeError> {
    match obj.get("v") {
        // The docs' examples read `payload -> 'inserted'` without a version: accept that too.
        None => {}
        Some(Value::Number(n)) if n.as_i64() == Some(1) => {}
        Some(other) => return Err(DecodeError::UnsupportedVersion(other.to_string())),
    }
    if is_summary(obj) || obj.get("claim_check").and_then(Value::as_bool) == Some(true) {
        return Ok(());
    }
    if !obj.contains_key("inserted") && !obj.contains_key("deleted") {
        return Err(DecodeError::UnexpectedShape("an object without 'inserted'/'deleted'"));
    }
    for key in ["inserted", "deleted"] {
        if !matches!(obj.get(key), None | Some(Value::Null) | Some(Value::Array(_))) {
            return Err(DecodeError::BadArray(key));
        }
    }
    Ok(())
}

/// pg_trickle ≥ 0.46 writes counts where the envelope has arrays.
fn is_summary(obj: &Map<String, Value>) -> bool {
    obj.get("inserted").is_some_and(Value::is_number) || obj.get("deleted").is_some_and(Value::is_number)
}

fn decode_object(mut obj: Map<String, Value>, is_claim_check: bool, fallback_refresh: Option<String>) -> Decoded {
    let refresh_id = ["refresh_id", "pgt_id"]
        .iter()
        .find_map(|k| obj.get(*k).and_then(Value::as_str).map(str::to_owned))
        .or(fallback_refresh);
    let full_refresh = obj.get("full_refresh").and_then(Value::as_bool);
    if is_summary(&obj) {
        return Decoded::Summary(Value::Object(obj));
    }
    if is_claim_check || obj.get("claim_check").and_then(Value::as_bool) == Some(true) {
        return Decoded::ClaimCheck { full_refresh, refresh_id };
    }
    let mut rows_of = |key: &str| match obj.remove(key) {
        Some(Value::Array(rows)) => rows,
        _ => Vec::new(),
    };
    Decoded::Rows {
        inserted: rows_of("inserted"),
        deleted: rows_of("deleted"),
        full_refresh: full_refresh.unwrap_or(false),
        refresh_id,
    }
}

/// Per-pipeline facts needed to turn rows into messages.
#[derive(Debug, Clone)]
pub struct MessageContext<'a> {
    pub stream_table: &'a str,
    pub outbox_table: &'a str,
    pub subject: &'a Template,
    pub key_columns: &'a [String],
    pub keep_internal_columns: bool,
}

/// One delta: rows of one outbox row (or one page of its claim-check rows).
#[derive(Debug, Clone)]
pub struct Delta<'a> {
    pub outbox_id: i64,
    pub inserted: Vec<Value>,
    pub deleted: Vec<Value>,
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
    let Delta { outbox_id, inserted, deleted, full_refresh, refresh_id, first_index, first_deleted_index } = delta;
    let deleted_base = first_deleted_index.unwrap_or(first_index + inserted.len());
    let mut deleted: Vec<Option<Value>> =
        deleted.into_iter().map(|r| Some(clean(r, ctx.keep_internal_columns))).collect();

    // Index the deleted rows by key so pairing is linear, not quadratic.
    let mut by_key: std::collections::HashMap<String, Vec<usize>> = std::collections::HashMap::new();
    if !ctx.key_columns.is_empty() {
        for (i, row) in deleted.iter().enumerate() {
            if let Some(k) = row.as_ref().and_then(|r| row_key(r, ctx.key_columns)) {
                by_key.entry(k).or_default().push(i);
            }
        }
    }
    let vars = |op: Op| TemplateVars {
        stream_table: ctx.stream_table,
        outbox_table: ctx.outbox_table,
        op,
        outbox_id,
        refresh_id,
    };
    for (i, row) in inserted.into_iter().enumerate() {
        let row = clean(row, ctx.keep_internal_columns);
        let before = row_key(&row, ctx.key_columns)
            .and_then(|k| by_key.get_mut(&k).and_then(|v| if v.is_empty() { None } else { Some(v.remove(0)) }))
            .and_then(|di| deleted[di].take());
        let op = if before.is_some() { Op::Update } else { Op::Insert };
        out.push(RelayMessage {
            dedup_key: dedup_key(ctx.outbox_table, outbox_id, first_index + i),
            subject: ctx.subject.render(&vars(op)),
            payload: row,
            op,
            is_full_refresh: full_refresh && op == Op::Insert,
            outbox_id: Some(outbox_id),
            refresh_id: refresh_id.map(str::to_owned),
            before,
        });
    }
    for (i, row) in deleted.into_iter().enumerate() {
        let Some(row) = row else { continue };
        out.push(RelayMessage {
            dedup_key: dedup_key(ctx.outbox_table, outbox_id, deleted_base + i),
            subject: ctx.subject.render(&vars(Op::Delete)),
            payload: row,
            op: Op::Delete,
            is_full_refresh: false,
            outbox_id: Some(outbox_id),
            refresh_id: refresh_id.map(str::to_owned),
            before: None,
        });
    }
}

/// One row of a snapshot diff as read from SQL.
#[derive(Debug, Clone, PartialEq)]
pub struct DiffEvent {
    pub op: Op,
    pub new: Option<Value>,
    pub old: Option<Value>,
}

/// One event of a snapshot diff ([`crate::outbox::diff`]): `insert` and `update` carry the new
/// row (`update` the old one in `before`), `delete` the last known row. `first` marks the events
/// of a pipeline's first snapshot, which are the whole table.
pub fn diff_message(
    ctx: &MessageContext<'_>,
    outbox_id: i64,
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
    let vars =
        TemplateVars { stream_table: ctx.stream_table, outbox_table: ctx.outbox_table, op, outbox_id, refresh_id };
    RelayMessage {
        dedup_key: dedup_key(ctx.outbox_table, outbox_id, index),
        subject: ctx.subject.render(&vars),
        payload: clean(payload.unwrap_or(Value::Null), ctx.keep_internal_columns),
        op,
        is_full_refresh: first && op == Op::Insert,
        outbox_id: Some(outbox_id),
        refresh_id: refresh_id.map(str::to_owned),
        before: before.map(|b| clean(b, ctx.keep_internal_columns)),
    }
}

/// The one message of a summary row.
pub fn summary_message(ctx: &MessageContext<'_>, outbox_id: i64, summary: Value) -> RelayMessage {
    let refresh_id = summary.get("refresh_id").and_then(Value::as_str).map(str::to_owned);
    let subject = ctx.subject.render(&TemplateVars {
        stream_table: ctx.stream_table,
        outbox_table: ctx.outbox_table,
        op: Op::Summary,
        outbox_id,
        refresh_id: refresh_id.as_deref(),
    });
    RelayMessage {
        dedup_key: dedup_key(ctx.outbox_table, outbox_id, 0),
        subject,
        payload: summary,
        op: Op::Summary,
        is_full_refresh: false,
        outbox_id: Some(outbox_id),
        refresh_id,
        before: None,
    }
}

/// Removes pg_trickle's internal `__pgt_*` columns unless asked to keep them.
fn clean(row: Value, keep_internal: bool) -> Value {
    match row {
        Value::Object(mut m) if !keep_internal => {
            m.retain(|k, _| !k.starts_with("__pgt_"));
            Value::Object(m)
        }
        other => other,
    }
}

/// A canonical text of a row's key columns; numbers compare by value (`175.0` = `175`).
fn row_key(row: &Value, key_columns: &[String]) -> Option<String> {
    if key_columns.is_empty() {
        return None;
    }
    let obj = row.as_object()?;
    let mut key = String::new();
    for col in key_columns {
        let v = obj.get(col)?;
        match v {
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
