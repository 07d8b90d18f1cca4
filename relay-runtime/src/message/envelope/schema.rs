//! Kafka Connect's JSON converter with schemas (`debezium_schemas: true`): every Debezium value
//! and key becomes `{"schema": …, "payload": …}`, the schema describing the stream table's
//! columns in Connect types. The schemas are built once per pipeline from the columns read at
//! start; per row, values of columns described as strings that are not JSON strings (`numeric`,
//! `json`/`jsonb`, composites, other types) are rewritten to strings of their JSON text — as
//! Debezium's `decimal.handling.mode=string` and its `io.debezium.data.Json` type do — in one
//! pass over the row text, so every value fits its schema.

use std::collections::HashMap;

use super::{json_str, Column};
use crate::message::scan;
use crate::message::write_json_str;

/// How a column's value is written in schemas mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rewrite {
    /// A value that is not a JSON string becomes a JSON string of its text (`numeric`, and
    /// any type the schema describes as a plain string).
    Text,
    /// Any JSON becomes a JSON string holding it (`json`, `jsonb`).
    Json,
}

/// The Connect schemas of one pipeline's values and keys.
#[derive(Debug, Clone)]
pub(super) struct ConnectSchema {
    /// `{"schema":<value schema>,"payload":` — a value is written after it, then `}`.
    value_head: String,
    /// The same for keys.
    key_head: String,
    rewrites: HashMap<String, Rewrite>,
}

/// The Connect type of a PostgreSQL type (`regtype` text), its schema name, and how values are
/// rewritten.
fn connect_type(pg: &str) -> (&'static str, Option<&'static str>, Option<Rewrite>) {
    match pg {
        "smallint" => ("int16", None, None),
        "integer" => ("int32", None, None),
        "bigint" => ("int64", None, None),
        "real" => ("float", None, None),
        "double precision" => ("double", None, None),
        "boolean" => ("boolean", None, None),
        "numeric" => ("string", None, Some(Rewrite::Text)),
        "json" | "jsonb" => ("string", Some("io.debezium.data.Json"), Some(Rewrite::Json)),
        "uuid" => ("string", Some("io.debezium.data.Uuid"), None),
        // Text, temporal, enum, inet… are JSON strings already; anything else (composites,
        // hstore, oid, unknown types) is sent as its JSON text, so the value fits the schema.
        _ => ("string", None, Some(Rewrite::Text)),
    }
}

/// Types whose values PostgreSQL's JSON always writes as strings.
fn writes_json_strings(pg: &str) -> bool {
    matches!(
        pg,
        "text"
            | "character varying"
            | "character"
            | "name"
            | "uuid"
            | "date"
            | "time without time zone"
            | "time with time zone"
            | "timestamp without time zone"
            | "timestamp with time zone"
            | "interval"
            | "inet"
            | "cidr"
            | "macaddr"
            | "bytea"
            | "money"
    )
}

/// One field of a struct schema.
fn field(out: &mut String, c: &Column) -> Option<Rewrite> {
    out.push_str("{\"type\":");
    let (rewrite, name) = match c.pg_type.strip_suffix("[]") {
        Some(element) => match connect_type(element) {
            (ty, None, None) => {
                // An array of numbers or booleans (one level: PostgreSQL's JSON of a
                // multi-dimensional array nests, which this schema does not describe).
                out.push_str("\"array\",\"items\":{\"type\":\"");
                out.push_str(ty);
                out.push_str("\",\"optional\":true}");
                (None, None)
            }
            _ if writes_json_strings(element) => {
                out.push_str("\"array\",\"items\":{\"type\":\"string\",\"optional\":true}");
                (None, None)
            }
            // Arrays of other types (numeric, json, composites) travel as JSON text.
            _ => {
                out.push_str("\"string\"");
                (Some(Rewrite::Json), Some("io.debezium.data.Json"))
            }
        },
        None => {
            let (ty, name, rewrite) = connect_type(&c.pg_type);
            out.push('"');
            out.push_str(ty);
            out.push('"');
            (rewrite, name)
        }
    };
    out.push_str(if c.not_null { ",\"optional\":false" } else { ",\"optional\":true" });
    if let Some(n) = name {
        out.push_str(",\"name\":\"");
        out.push_str(n);
        out.push('"');
    }
    out.push_str(",\"field\":");
    json_str(out, &c.name);
    out.push('}');
    rewrite
}

/// A struct schema of `columns` named `name`.
fn structure(out: &mut String, columns: &[&Column], name: &str, optional: bool, field_name: Option<&str>) {
    out.push_str("{\"type\":\"struct\",\"fields\":[");
    for (i, c) in columns.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        field(out, c);
    }
    out.push_str(if optional { "],\"optional\":true,\"name\":" } else { "],\"optional\":false,\"name\":" });
    json_str(out, name);
    if let Some(f) = field_name {
        out.push_str(",\"field\":");
        json_str(out, f);
    }
    out.push('}');
}

/// Debezium's `source` block, as this relay writes it.
const SOURCE_FIELDS: &str = concat!(
    r#"{"type":"struct","fields":["#,
    r#"{"type":"string","optional":false,"field":"version"},"#,
    r#"{"type":"string","optional":false,"field":"connector"},"#,
    r#"{"type":"string","optional":false,"field":"name"},"#,
    r#"{"type":"int64","optional":false,"field":"ts_ms"},"#,
    r#"{"type":"int64","optional":true,"field":"ts_us"},"#,
    r#"{"type":"int64","optional":true,"field":"ts_ns"},"#,
    r#"{"type":"string","optional":true,"name":"io.debezium.data.Enum","version":1,"parameters":{"allowed":"true,false"},"default":"false","field":"snapshot"},"#,
    r#"{"type":"string","optional":false,"field":"db"},"#,
    r#"{"type":"string","optional":true,"field":"sequence"},"#,
    r#"{"type":"string","optional":false,"field":"schema"},"#,
    r#"{"type":"string","optional":false,"field":"table"},"#,
    r#"{"type":"int64","optional":true,"field":"txId"},"#,
    r#"{"type":"int64","optional":true,"field":"lsn"},"#,
    r#"{"type":"int64","optional":true,"field":"xmin"},"#,
    r#"{"type":"int64","optional":true,"field":"pgt_outbox_id"},"#,
    r#"{"type":"string","optional":true,"field":"pgt_refresh_id"},"#,
    r#"{"type":"string","optional":false,"field":"pgt_dedup_key"},"#,
    r#"{"type":"string","optional":true,"field":"pgt_traceparent"}"#,
    r#"],"optional":false,"name":"io.pgtrickle.relay.Source","field":"source"}"#
);

const TAIL_FIELDS: &str = concat!(
    r#"{"type":"string","optional":false,"field":"op"},"#,
    r#"{"type":"int64","optional":true,"field":"ts_ms"},"#,
    r#"{"type":"int64","optional":true,"field":"ts_us"},"#,
    r#"{"type":"int64","optional":true,"field":"ts_ns"},"#,
    r#"{"type":"struct","fields":[{"type":"string","optional":false,"field":"id"},"#,
    r#"{"type":"int64","optional":false,"field":"total_order"},"#,
    r#"{"type":"int64","optional":false,"field":"data_collection_order"}],"#,
    r#""optional":true,"name":"event.block","version":1,"field":"transaction"}"#
);

/// Debezium's rule for schema names: characters outside `[A-Za-z0-9_]` become `_`.
fn schema_name_part(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect()
}

impl ConnectSchema {
    pub(super) fn new(name: &str, schema: &str, table: &str, columns: &[Column], key_columns: &[String]) -> Self {
        let prefix = format!("{}.{}.{}", schema_name_part(name), schema_name_part(schema), schema_name_part(table));
        let all: Vec<&Column> = columns.iter().collect();
        let mut value = String::from("{\"schema\":{\"type\":\"struct\",\"fields\":[");
        structure(&mut value, &all, &format!("{prefix}.Value"), true, Some("before"));
        value.push(',');
        structure(&mut value, &all, &format!("{prefix}.Value"), true, Some("after"));
        value.push(',');
        value.push_str(SOURCE_FIELDS);
        value.push(',');
        value.push_str(TAIL_FIELDS);
        value.push_str("],\"optional\":false,\"name\":");
        json_str(&mut value, &format!("{prefix}.Envelope"));
        value.push_str(",\"version\":1},\"payload\":");

        // Key columns in their order; a key column the table lacks is an optional string.
        let keys: Vec<Column> = key_columns
            .iter()
            .map(|k| {
                columns.iter().find(|c| &c.name == k).cloned().unwrap_or(Column {
                    name: k.clone(),
                    pg_type: "text".into(),
                    not_null: false,
                })
            })
            .collect();
        let mut key = String::from("{\"schema\":");
        structure(&mut key, &keys.iter().collect::<Vec<_>>(), &format!("{prefix}.Key"), false, None);
        key.push_str(",\"payload\":");

        let mut rewrites = HashMap::new();
        for c in columns {
            let mut scratch = String::new();
            if let Some(r) = field(&mut scratch, c) {
                rewrites.insert(c.name.clone(), r);
            }
        }
        Self { value_head: value, key_head: key, rewrites }
    }

    pub(super) fn value_head(&self) -> &str {
        &self.value_head
    }

    pub(super) fn key_head(&self) -> &str {
        &self.key_head
    }

    /// Appends a row (an object's JSON text), its `numeric` and `json` values as strings.
    pub(super) fn write_row(&self, row: &str, out: &mut Vec<u8>) {
        let b = row.as_bytes();
        if self.rewrites.is_empty() || b.first() != Some(&b'{') {
            out.extend_from_slice(b);
            return;
        }
        let start = out.len();
        out.push(b'{');
        let mut first = true;
        let scanned = scan::object_entries(b, 0, |k, v| {
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(&b[k.clone()]);
            out.push(b':');
            let value = &row[v];
            // Keys are PostgreSQL's column names, quoted; escaped names are never rewritten.
            let name = &row[k.start + 1..k.end - 1];
            match self.rewrites.get(name) {
                Some(Rewrite::Text) if !value.starts_with('"') && value != "null" => write_json_str(out, value),
                Some(Rewrite::Json) if value != "null" => write_json_str(out, value),
                _ => out.extend_from_slice(value.as_bytes()),
            }
        });
        if scanned.is_ok() {
            out.push(b'}');
        } else {
            // Not an object the scanner understands: as it is (rows come from PostgreSQL).
            out.truncate(start);
            out.extend_from_slice(b);
        }
    }
}
