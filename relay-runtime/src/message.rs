//! The relay message (the wire JSON of contract §4.8), dedup keys and subject templates.

pub mod envelope;
mod payload;
pub(crate) mod scan;

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

pub use payload::{split_rows, Payload};
pub use scan::ScanError;

/// What happened to a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Insert,
    Update,
    Delete,
    /// A pg_trickle ≥ 0.46 summary outbox row (counts only, no rows).
    Summary,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Summary => "summary",
        }
    }
}

/// One message per changed row. Field names and meaning follow contract §4.8; `before` is
/// added for `update` messages (the row's previous values).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RelayMessage {
    /// `<outbox_table>:<pgt_id>:<row_index>` (see [`DedupKeyFormat`]): stable across
    /// redelivery, never repeated by another outbox row; the key every deduplicating target uses.
    pub dedup_key: String,
    pub subject: String,
    pub payload: Payload,
    pub op: Op,
    pub is_full_refresh: bool,
    pub outbox_id: Option<i64>,
    pub refresh_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<Payload>,
    /// The W3C trace context of the outbox row's relay span ([`traceparent`]): in a header
    /// where the target has headers, a field where it has not. Shared by the row's messages.
    #[serde(skip)]
    pub traceparent: Arc<str>,
    /// Facts of the outbox row the message came from (for envelopes).
    #[serde(skip)]
    pub stamp: RowStamp,
}

/// Facts of an outbox row that its messages share, used by the CloudEvents and Debezium
/// envelopes: when and in which transaction the refresh wrote the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RowStamp {
    /// The outbox row's `created_at`, in microseconds since the epoch.
    pub time_us: Option<i64>,
    /// The outbox row's `xmin`: the refresh transaction that wrote it.
    pub txid: Option<i64>,
}

/// The W3C `traceparent` of an outbox row's relay span: `00-<trace id>-<span id>-01`, both
/// derived from the row's reference (SHA-256), so a row relayed again carries the same
/// context and every message of the row shares it.
pub fn traceparent(row_ref: &str) -> Arc<str> {
    use sha2::Digest;
    use std::fmt::Write;
    let digest = sha2::Sha256::digest(format!("pgtrickle-relay trace {row_ref}").as_bytes());
    let mut ids = [0u8; 24];
    ids.copy_from_slice(&digest[..24]);
    // All-zero ids are invalid; a digest makes them vanishingly rare, and never here.
    ids[0] |= 1;
    ids[16] |= 1;
    let mut out = String::with_capacity(55);
    out.push_str("00-");
    for b in &ids[..16] {
        let _ = write!(out, "{b:02x}");
    }
    out.push('-');
    for b in &ids[16..] {
        let _ = write!(out, "{b:02x}");
    }
    out.push_str("-01");
    out.into()
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), in lower case; none
/// when it is malformed or all zeros.
pub fn trace_id(traceparent: &str) -> Option<String> {
    let mut parts = traceparent.trim().split('-');
    let (_version, trace) = (parts.next()?, parts.next()?);
    (trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit()) && trace != "0".repeat(32))
        .then(|| trace.to_ascii_lowercase())
}

impl RelayMessage {
    /// Appends the wire JSON of this message (the same text as serializing it with serde_json,
    /// without re-checking the row text): what every sink sends.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"dedup_key\":");
        write_json_str(out, &self.dedup_key);
        out.extend_from_slice(b",\"subject\":");
        write_json_str(out, &self.subject);
        out.extend_from_slice(b",\"payload\":");
        out.extend_from_slice(self.payload.json().as_bytes());
        out.extend_from_slice(b",\"op\":\"");
        out.extend_from_slice(self.op.as_str().as_bytes());
        out.extend_from_slice(if self.is_full_refresh {
            b"\",\"is_full_refresh\":true,\"outbox_id\":"
        } else {
            b"\",\"is_full_refresh\":false,\"outbox_id\":"
        });
        match self.outbox_id {
            Some(id) => out.extend_from_slice(itoa::Buffer::new().format(id).as_bytes()),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"refresh_id\":");
        match &self.refresh_id {
            Some(r) => write_json_str(out, r),
            None => out.extend_from_slice(b"null"),
        }
        if let Some(before) = &self.before {
            out.extend_from_slice(b",\"before\":");
            out.extend_from_slice(before.json().as_bytes());
        }
        out.push(b'}');
    }

    /// [`RelayMessage::write_json`] into a new buffer.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.payload.json().len() + self.dedup_key.len() + self.subject.len() + 128);
        self.write_json(&mut out);
        out
    }

    /// The template variables of this message, for sink-side templates (topics, stream keys,
    /// routing keys, message groups).
    pub fn vars<'a>(&'a self, names: &'a TemplateNames) -> TemplateVars<'a> {
        TemplateVars {
            names,
            op: self.op,
            outbox_id: self.outbox_id.unwrap_or(0),
            refresh_id: self.refresh_id.as_deref(),
        }
    }

    /// A payload field as text, for partition keys and aggregate ids (see [`value_text`]).
    pub fn field_text(&self, field: &str) -> Option<String> {
        value_text(self.payload.field(field)?)
    }
}

/// A JSON value as text (strings as they are); `None` for null.
pub fn value_text(v: Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s),
        v => Some(v.to_string()),
    }
}

/// How forward dedup keys name an outbox row (the pipeline key `dedup_key_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DedupKeyFormat {
    /// `<outbox_table>:<pgt_id>:<row_index>`: pg_trickle gives every outbox row a random uuid,
    /// so keys never repeat across recreated outboxes, reset ids or databases, and stay the
    /// same when the same outbox row is relayed again. Outboxes without `pgt_id` use
    /// `<outbox_table>:<epoch scope>.<outbox_id>:<row_index>`.
    #[default]
    RowUid,
    /// `<outbox_table>:<outbox_id>:<row_index>` (contract §4.8): repeats once an outbox is
    /// recreated or its ids reset, and deduplicating targets then drop the new rows.
    Legacy,
}

impl DedupKeyFormat {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "row_uid" => Some(Self::RowUid),
            "legacy" => Some(Self::Legacy),
            _ => None,
        }
    }
}

/// The part of the dedup keys of one outbox row's messages before the row index.
pub fn outbox_row_ref(
    format: DedupKeyFormat,
    outbox_table: &str,
    outbox_id: i64,
    uid: Option<&str>,
    epoch_scope: &str,
) -> String {
    match (format, uid) {
        (DedupKeyFormat::Legacy, _) => format!("{outbox_table}:{outbox_id}"),
        (DedupKeyFormat::RowUid, Some(uid)) => format!("{outbox_table}:{uid}"),
        (DedupKeyFormat::RowUid, None) => format!("{outbox_table}:{epoch_scope}.{outbox_id}"),
    }
}

/// A forward dedup key: `<row ref>:<row_index>` (see [`outbox_row_ref`]).
pub fn dedup_key(row_ref: &str, row_index: usize) -> String {
    let mut index = itoa::Buffer::new();
    let index = index.format(row_index);
    let mut key = String::with_capacity(row_ref.len() + index.len() + 1);
    key.push_str(row_ref);
    key.push(':');
    key.push_str(index);
    key
}

/// Appends `s` as a JSON string.
fn write_json_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|c| c >= 0x20 && c != b'"' && c != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing a string into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// What a pipeline's templates can name that is the same for all of its messages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateNames {
    pub pipeline: String,
    /// `current_database()`.
    pub database: String,
    /// The stream table's schema.
    pub schema: String,
    pub stream_table: String,
    pub outbox_table: String,
}

/// Values a template can refer to.
#[derive(Debug, Clone, Copy)]
pub struct TemplateVars<'a> {
    pub names: &'a TemplateNames,
    pub op: Op,
    pub outbox_id: i64,
    pub refresh_id: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Pipeline,
    Database,
    Schema,
    StreamTable,
    OutboxTable,
    Op,
    OutboxId,
    RefreshId,
}

/// A subject/topic template, parsed once: `{pipeline}`, `{database}`, `{schema}`,
/// `{stream_table}`, `{outbox_table}`, `{op}`, `{outbox_id}`, `{refresh_id}`. Any other text —
/// other braces included — is literal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("template is empty")]
    Empty,
}

const VARIABLES: &[(&str, Segment)] = &[
    ("{pipeline}", Segment::Pipeline),
    ("{database}", Segment::Database),
    ("{schema}", Segment::Schema),
    ("{stream_table}", Segment::StreamTable),
    ("{outbox_table}", Segment::OutboxTable),
    ("{op}", Segment::Op),
    ("{outbox_id}", Segment::OutboxId),
    ("{refresh_id}", Segment::RefreshId),
];

impl Template {
    pub fn parse(source: &str) -> Result<Self, TemplateError> {
        if source.is_empty() {
            return Err(TemplateError::Empty);
        }
        Ok(Self::from_text(source))
    }

    /// A template of text the relay chose itself (a default): never empty.
    pub(crate) fn from_text(source: &str) -> Self {
        let mut segments = Vec::new();
        let mut literal = String::new();
        let mut rest = source;
        'outer: while !rest.is_empty() {
            if rest.starts_with('{') {
                for (token, seg) in VARIABLES {
                    if let Some(after) = rest.strip_prefix(token) {
                        if !literal.is_empty() {
                            segments.push(Segment::Literal(std::mem::take(&mut literal)));
                        }
                        segments.push(seg.clone());
                        rest = after;
                        continue 'outer;
                    }
                }
            }
            let mut chars = rest.chars();
            if let Some(c) = chars.next() {
                literal.push(c);
            }
            rest = chars.as_str();
        }
        if !literal.is_empty() {
            segments.push(Segment::Literal(literal));
        }
        Self { source: source.to_owned(), segments }
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the template renders differently for two messages of the same op
    /// (`{outbox_id}`, `{refresh_id}`).
    pub fn per_outbox_row(&self) -> bool {
        self.segments.iter().any(|s| matches!(s, Segment::OutboxId | Segment::RefreshId))
    }

    /// Whether the template has no variables (it renders to its source text).
    pub fn is_static(&self) -> bool {
        self.segments.iter().all(|s| matches!(s, Segment::Literal(_)))
    }

    pub fn render(&self, vars: &TemplateVars<'_>) -> String {
        let mut out = String::with_capacity(self.source.len() + 16);
        for seg in &self.segments {
            match seg {
                Segment::Literal(s) => out.push_str(s),
                Segment::Pipeline => out.push_str(&vars.names.pipeline),
                Segment::Database => out.push_str(&vars.names.database),
                Segment::Schema => out.push_str(&vars.names.schema),
                Segment::StreamTable => out.push_str(&vars.names.stream_table),
                Segment::OutboxTable => out.push_str(&vars.names.outbox_table),
                Segment::Op => out.push_str(vars.op.as_str()),
                Segment::OutboxId => out.push_str(itoa::Buffer::new().format(vars.outbox_id)),
                Segment::RefreshId => out.push_str(vars.refresh_id.unwrap_or("")),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn names() -> &'static TemplateNames {
        static NAMES: std::sync::OnceLock<TemplateNames> = std::sync::OnceLock::new();
        NAMES.get_or_init(|| TemplateNames {
            pipeline: "orders-out".into(),
            database: "shop".into(),
            schema: "sales".into(),
            stream_table: "orders".into(),
            outbox_table: "outbox_orders".into(),
        })
    }

    fn vars(op: Op) -> TemplateVars<'static> {
        TemplateVars { names: names(), op, outbox_id: 42, refresh_id: Some("0b5f6c2e-1111-4c4c-8888-000000000001") }
    }

    #[test]
    fn seed_example_renders_stream_table_name() {
        let t = Template::parse("pgtrickle.{stream_table}.{op}").unwrap();
        assert_eq!(t.render(&vars(Op::Insert)), "pgtrickle.orders.insert");
    }

    #[test]
    fn every_variable_renders_and_unknown_braces_stay() {
        let t = Template::parse("{outbox_table}/{outbox_id}/{refresh_id}/{op}/{nope}/{").unwrap();
        assert_eq!(
            t.render(&vars(Op::Delete)),
            "outbox_orders/42/0b5f6c2e-1111-4c4c-8888-000000000001/delete/{nope}/{"
        );
        let no_refresh = TemplateVars { refresh_id: None, ..vars(Op::Update) };
        let t = Template::parse("dbserver.{database}.{schema}.{stream_table}/{pipeline}").unwrap();
        assert_eq!(t.render(&vars(Op::Insert)), "dbserver.shop.sales.orders/orders-out");
        assert_eq!(Template::parse("a.{refresh_id}.{op}").unwrap().render(&no_refresh), "a..update");
    }

    #[test]
    fn template_without_variables_and_multibyte_text() {
        let t = Template::parse("fixed.subjekt.ü").unwrap();
        assert_eq!(t.render(&vars(Op::Insert)), "fixed.subjekt.ü");
        assert_eq!(Template::parse(""), Err(TemplateError::Empty));
    }

    #[test]
    fn traceparent_is_w3c_stable_per_row_and_distinct_between_rows() {
        let a = traceparent("outbox_orders:10");
        assert_eq!(a, traceparent("outbox_orders:10"), "the same row gives the same context");
        assert_ne!(a, traceparent("outbox_orders:11"));
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!((parts.len(), parts[0], parts[3]), (4, "00", "01"), "{a}");
        assert_eq!((parts[1].len(), parts[2].len()), (32, 16), "{a}");
        assert!(a.bytes().all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{a}");
        assert_ne!(parts[1], "0".repeat(32));
        assert_eq!(trace_id(&a).as_deref(), Some(parts[1]));
    }

    #[test]
    fn dedup_key_format_and_wire_json() {
        let uid = "0b8f4e1c-3f61-4f0e-9a35-6d1c2b7e9a10";
        let row = |format, uid| outbox_row_ref(format, "outbox_orders", 10, uid, "scope");
        assert_eq!(dedup_key(&row(DedupKeyFormat::RowUid, Some(uid)), 3), format!("outbox_orders:{uid}:3"));
        assert_eq!(dedup_key(&row(DedupKeyFormat::RowUid, None), 3), "outbox_orders:scope.10:3");
        assert_eq!(dedup_key(&row(DedupKeyFormat::Legacy, Some(uid)), 3), "outbox_orders:10:3");
        let m = RelayMessage {
            dedup_key: dedup_key(&row(DedupKeyFormat::Legacy, None), 0),
            subject: "pgtrickle.orders.insert".into(),
            payload: json!({"id": 1}).into(),
            op: Op::Insert,
            is_full_refresh: true,
            outbox_id: Some(10),
            refresh_id: None,
            before: None,
            traceparent: traceparent("outbox_orders:10"),
            stamp: RowStamp::default(),
        };
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(
            v,
            json!({"dedup_key":"outbox_orders:10:0","subject":"pgtrickle.orders.insert","payload":{"id":1},
                   "op":"insert","is_full_refresh":true,"outbox_id":10,"refresh_id":null})
        );
    }
}
