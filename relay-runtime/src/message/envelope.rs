//! What each forward message is on the wire (the pipeline key `envelope`): the relay's own JSON
//! (`native`), a CloudEvents 1.0 event (`cloudevents`, structured or binary) or a Debezium change
//! event (`debezium`).
//!
//! One [`Envelope`] per pipeline, built once when the sink starts ([`Envelope::new`]); sinks ask it
//! for a message's body, content type and, in CloudEvents binary mode, its attributes as protocol
//! headers ([`Binding`]). Bodies are written into the caller's buffer from the row's JSON text:
//! no `serde_json::Value` is built except for `key_columns` values. Invariants:
//! - `native` writes exactly [`RelayMessage::write_json`] (nothing changes for existing users);
//! - an event's `id` is the message's dedup key, so a redelivered row is the same event;
//! - every extension attribute name is `[a-z0-9]{1,20}` (CloudEvents naming rules), and values
//!   that are not strings in the spec's type system travel as strings (`pgtoutboxid`: the
//!   spec's Integer is 32-bit; `pgtbefore`: there is no object type).

mod cloudevents;
mod debezium;
mod schema;

use cloudevents::{default_source, CloudEvents};
use debezium::Debezium;

use super::{scan, write_json_str, Op, RelayMessage, Template, TemplateNames, TemplateVars};

/// The content type of the relay's own JSON, CloudEvents binary data and Debezium values.
pub const JSON: &str = "application/json";
/// A structured CloudEvent (JSON event format).
pub const CLOUDEVENTS_JSON: &str = "application/cloudevents+json; charset=utf-8";
/// An array of structured CloudEvents (webhook batches).
pub const CLOUDEVENTS_BATCH_JSON: &str = "application/cloudevents-batch+json; charset=utf-8";

/// The `envelope` keys of a pipeline, validated (see `config::parse_forward`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum EnvelopeSpec {
    #[default]
    Native,
    CloudEvents {
        /// Attributes as protocol headers and the row as the body (`cloudevents_mode: binary`).
        binary: bool,
        /// `cloudevents_source` (default `/pgtrickle/<database>/{stream_table}`).
        source: Option<Template>,
        /// `cloudevents_type` (default `io.pgtrickle.{stream_table}.{op}`).
        event_type: Option<Template>,
    },
    Debezium {
        /// `debezium_name`: `source.name` (default: the database name).
        name: Option<String>,
        /// `debezium_schemas`: Kafka Connect's `{"schema", "payload"}` wrapping.
        schemas: bool,
    },
}

impl EnvelopeSpec {
    pub fn is_debezium(&self) -> bool {
        matches!(self, EnvelopeSpec::Debezium { .. })
    }
}

/// What the envelope needs to know about the pipeline's tables, read once at start.
#[derive(Debug, Clone, Copy)]
pub struct EnvelopeFacts<'a> {
    /// The database, the stream table's schema and bare name, the outbox table (templates).
    pub names: &'a TemplateNames,
    pub key_columns: &'a [String],
    /// The stream table's columns (read only for `debezium_schemas`).
    pub columns: &'a [Column],
}

/// A column of the stream table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// Its type as `regtype` text (`integer`, `numeric`, `jsonb`, `text[]`, …).
    pub pg_type: String,
    pub not_null: bool,
}

/// Where CloudEvents binary attributes go, each protocol binding with its own header names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// `ce-<name>`, percent-encoded; `datacontenttype` is the `Content-Type` header only.
    Http,
    /// `ce-<name>`, percent-encoded, `ce-datacontenttype` included (the binding's 1.0.3 text).
    Nats,
    /// `ce_<name>`, raw UTF-8; `datacontenttype` is the `content-type` header.
    Kafka,
    /// `cloudEvents:<name>` application properties (RabbitMQ headers); `datacontenttype` is the
    /// `content_type` property.
    Amqp,
}

impl Binding {
    fn percent_encoded(self) -> bool {
        matches!(self, Binding::Http | Binding::Nats)
    }
}

/// A template rendered once per op when it does not depend on the outbox row.
#[derive(Debug, Clone)]
enum Rendered {
    PerOp([String; 4]),
    PerMessage(Template),
}

impl Rendered {
    fn new(t: &Template, names: &TemplateNames) -> Self {
        if t.per_outbox_row() {
            return Rendered::PerMessage(t.clone());
        }
        let op = |op| t.render(&TemplateVars { names, op, outbox_id: 0, refresh_id: None });
        Rendered::PerOp([op(Op::Insert), op(Op::Update), op(Op::Delete), op(Op::Summary)])
    }

    fn get<'a>(&'a self, m: &RelayMessage, names: &TemplateNames) -> std::borrow::Cow<'a, str> {
        match self {
            Rendered::PerOp(by_op) => std::borrow::Cow::Borrowed(
                &by_op[match m.op {
                    Op::Insert => 0,
                    Op::Update => 1,
                    Op::Delete => 2,
                    Op::Summary => 3,
                }],
            ),
            Rendered::PerMessage(t) => std::borrow::Cow::Owned(t.render(&m.vars(names))),
        }
    }
}

#[derive(Debug, Clone)]
enum Kind {
    Native,
    CloudEvents(CloudEvents),
    Debezium(Debezium),
}

/// A pipeline's envelope, ready to encode messages.
#[derive(Debug, Clone)]
pub struct Envelope {
    kind: Kind,
    key_columns: Vec<String>,
    names: TemplateNames,
}

impl Envelope {
    /// The relay's own JSON (what a sink built without a pipeline writes, in tests).
    #[cfg(test)]
    pub fn native() -> Self {
        Self { kind: Kind::Native, key_columns: Vec::new(), names: TemplateNames::default() }
    }

    pub fn new(spec: &EnvelopeSpec, facts: &EnvelopeFacts<'_>) -> Self {
        let names = facts.names;
        let (database, st) = (names.database.as_str(), names.stream_table.as_str());
        let kind = match spec {
            EnvelopeSpec::Native => Kind::Native,
            EnvelopeSpec::CloudEvents { binary, source, event_type } => {
                // Percent-encoded segments hold no braces: the source is a literal.
                let default_source = || Template::from_text(&default_source(database, st));
                let default_type = || Template::from_text(DEFAULT_TYPE);
                Kind::CloudEvents(CloudEvents {
                    binary: *binary,
                    source: Rendered::new(&source.clone().unwrap_or_else(default_source), names),
                    event_type: Rendered::new(&event_type.clone().unwrap_or_else(default_type), names),
                })
            }
            EnvelopeSpec::Debezium { name, schemas } => {
                let mut head = String::from("{\"version\":");
                json_str(&mut head, env!("CARGO_PKG_VERSION"));
                head.push_str(",\"connector\":\"pgtrickle-relay\",\"name\":");
                json_str(&mut head, name.as_deref().unwrap_or(database));
                head.push(',');
                let mut table = String::from(",\"db\":");
                json_str(&mut table, database);
                table.push_str(",\"sequence\":null,\"schema\":");
                json_str(&mut table, &names.schema);
                table.push_str(",\"table\":");
                json_str(&mut table, st);
                let name = name.as_deref().unwrap_or(database);
                let connect = schemas
                    .then(|| schema::ConnectSchema::new(name, &names.schema, st, facts.columns, facts.key_columns));
                Kind::Debezium(Debezium { source_head: head, source_table: table, connect })
            }
        };
        Self { kind, key_columns: facts.key_columns.to_vec(), names: names.clone() }
    }

    pub fn is_native(&self) -> bool {
        matches!(self.kind, Kind::Native)
    }

    /// CloudEvents binary mode: the body is the row, the attributes are headers.
    pub fn is_binary(&self) -> bool {
        matches!(self.kind, Kind::CloudEvents(CloudEvents { binary: true, .. }))
    }

    pub fn is_cloudevents(&self) -> bool {
        matches!(self.kind, Kind::CloudEvents(_))
    }

    pub fn is_debezium(&self) -> bool {
        matches!(self.kind, Kind::Debezium(_))
    }

    /// The content type of a body written by [`Envelope::write_body`].
    pub fn content_type(&self) -> &'static str {
        match self.kind {
            Kind::CloudEvents(CloudEvents { binary: false, .. }) => CLOUDEVENTS_JSON,
            _ => JSON,
        }
    }

    /// Whether a Kafka tombstone (same key, no value) follows this message: after each Debezium
    /// delete of a keyed row, so that log compaction can drop the key.
    pub fn tombstone_after(&self, m: &RelayMessage) -> bool {
        self.is_debezium() && m.op == Op::Delete && !self.key_columns.is_empty()
    }

    /// Appends the message's body.
    pub fn write_body(&self, m: &RelayMessage, out: &mut Vec<u8>) {
        match &self.kind {
            Kind::Native => m.write_json(out),
            Kind::CloudEvents(ce) if ce.binary => out.extend_from_slice(m.payload.json().as_bytes()),
            Kind::CloudEvents(ce) => self.write_event(ce, m, out),
            Kind::Debezium(d) => self.write_debezium(d, m, out),
        }
    }

    /// The body in a new buffer.
    pub fn body(&self, m: &RelayMessage) -> Vec<u8> {
        let mut out = Vec::with_capacity(m.payload.json().len() + m.dedup_key.len() + 320);
        self.write_body(m, &mut out);
        out
    }

    /// The CloudEvents `subject`: the row's `key_columns` values (one column: its value as text;
    /// several: `col/value/col/value`). None without key columns.
    fn subject(&self, m: &RelayMessage) -> Option<String> {
        // A value as text: a string unquoted, anything else as PostgreSQL wrote it (so a
        // `numeric` key keeps its digits).
        let text = |raw: Option<&str>| match raw {
            None | Some("null") => String::new(),
            Some(r) if r.starts_with('"') => serde_json::from_str::<String>(r).unwrap_or_else(|_| r.to_owned()),
            Some(r) => r.to_owned(),
        };
        match self.key_columns.as_slice() {
            [] => None,
            [_] => Some(text(self.key_values(m)[0])).filter(|s| !s.is_empty()),
            cols => {
                let mut s = String::new();
                for (c, raw) in cols.iter().zip(self.key_values(m)) {
                    if !s.is_empty() {
                        s.push('/');
                    }
                    s.push_str(c);
                    s.push('/');
                    s.push_str(&text(raw));
                }
                Some(s)
            }
        }
    }

    /// The JSON text of each key column's value in the row, in `key_columns` order.
    fn key_values<'m>(&self, m: &'m RelayMessage) -> Vec<Option<&'m str>> {
        let row = m.payload.json();
        let mut found = vec![None; self.key_columns.len()];
        // Rows come from PostgreSQL's JSON: keys are plain quoted names unless they need escapes.
        let _ = scan::object_entries(row.as_bytes(), 0, |k, v| {
            let name = &row[k.start + 1..k.end - 1];
            if let Some(i) = self.key_columns.iter().position(|c| c == name) {
                found[i].get_or_insert(&row[v]);
            }
        });
        found
    }
}

/// The default CloudEvents `type`.
const DEFAULT_TYPE: &str = "io.pgtrickle.{stream_table}.{op}";

/// RFC 3339 in UTC with microseconds (`2026-05-04T10:15:30.123456Z`).
fn rfc3339(us: i64) -> String {
    match jiff::Timestamp::from_microsecond(us) {
        Ok(t) => format!("{t:.6}"),
        Err(_) => "1970-01-01T00:00:00.000000Z".to_owned(),
    }
}

fn json_str(out: &mut String, s: &str) {
    let mut v = Vec::with_capacity(s.len() + 2);
    write_json_str(&mut v, s);
    out.push_str(std::str::from_utf8(&v).unwrap_or("\"\""));
}

#[cfg(test)]
mod tests;
