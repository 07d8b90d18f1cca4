//! Debezium change events: the value (`before`, `after`, `source`, `op`, `ts_*`), the record key
//! and, with `debezium_schemas`, Kafka Connect's wrapping ([`super::schema`]).

use super::{schema, Envelope, Kind};
use crate::message::{write_json_str, Op, RelayMessage};

#[derive(Debug, Clone)]
pub(super) struct Debezium {
    /// `{"version":…,"connector":…,"name":…,` — the part of `source` before the timestamps.
    pub(super) source_head: String,
    /// `,"db":…,"sequence":null,"schema":…,"table":…` — after `snapshot`.
    pub(super) source_table: String,
    /// `debezium_schemas`.
    pub(super) connect: Option<schema::ConnectSchema>,
}

impl Envelope {
    /// The Debezium record key: the `key_columns` as a JSON object in their order (`{"id":2}`).
    /// None for other envelopes or without key columns.
    pub fn record_key(&self, m: &RelayMessage) -> Option<Vec<u8>> {
        let Kind::Debezium(d) = &self.kind else { return None };
        if self.key_columns.is_empty() {
            return None;
        }
        let mut out = Vec::with_capacity(16 * self.key_columns.len());
        out.push(b'{');
        // The values' own text: a `numeric` key keeps its digits, so the key stays the same.
        for (i, (c, raw)) in self.key_columns.iter().zip(self.key_values(m)).enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_json_str(&mut out, c);
            out.push(b':');
            out.extend_from_slice(raw.unwrap_or("null").as_bytes());
        }
        out.push(b'}');
        if let Some(connect) = &d.connect {
            let mut wrapped = Vec::with_capacity(connect.key_head().len() + out.len() + 1);
            wrapped.extend_from_slice(connect.key_head().as_bytes());
            // Only JSON text was written.
            connect.write_row(std::str::from_utf8(&out).unwrap_or("null"), &mut wrapped);
            wrapped.push(b'}');
            return Some(wrapped);
        }
        Some(out)
    }

    pub(super) fn write_debezium(&self, d: &Debezium, m: &RelayMessage, out: &mut Vec<u8>) {
        let (op, before, after) = match m.op {
            Op::Insert if m.is_full_refresh => ("r", None, Some(&m.payload)),
            // A summary never reaches here: the forward runner drops it under Debezium.
            Op::Insert | Op::Summary => ("c", None, Some(&m.payload)),
            Op::Update => ("u", m.before.as_ref(), Some(&m.payload)),
            Op::Delete => ("d", Some(&m.payload), None),
        };
        let now_us = now_us();
        let row = |p: Option<&crate::message::Payload>, out: &mut Vec<u8>| match (p, &d.connect) {
            (None, _) => out.extend_from_slice(b"null"),
            (Some(p), None) => out.extend_from_slice(p.json().as_bytes()),
            (Some(p), Some(connect)) => connect.write_row(p.json(), out),
        };
        if let Some(connect) = &d.connect {
            out.extend_from_slice(connect.value_head().as_bytes());
        }
        out.extend_from_slice(b"{\"before\":");
        row(before, out);
        out.extend_from_slice(b",\"after\":");
        row(after, out);
        out.extend_from_slice(b",\"source\":");
        out.extend_from_slice(d.source_head.as_bytes());
        write_ts(out, m.stamp.time_us.unwrap_or(now_us));
        out.extend_from_slice(if op == "r" { b",\"snapshot\":\"true\"" } else { b",\"snapshot\":\"false\"" });
        out.extend_from_slice(d.source_table.as_bytes());
        out.extend_from_slice(b",\"txId\":");
        match m.stamp.txid {
            Some(x) => out.extend_from_slice(itoa::Buffer::new().format(x).as_bytes()),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"lsn\":null,\"xmin\":null,\"pgt_outbox_id\":");
        match m.outbox_id {
            Some(id) => out.extend_from_slice(itoa::Buffer::new().format(id).as_bytes()),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"pgt_refresh_id\":");
        match &m.refresh_id {
            Some(r) => write_json_str(out, r),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"pgt_dedup_key\":");
        write_json_str(out, &m.dedup_key);
        out.extend_from_slice(b",\"pgt_traceparent\":");
        write_json_str(out, &m.traceparent);
        out.extend_from_slice(b"},\"op\":\"");
        out.extend_from_slice(op.as_bytes());
        out.extend_from_slice(b"\",");
        write_ts(out, now_us);
        out.extend_from_slice(b",\"transaction\":null}");
        if d.connect.is_some() {
            out.push(b'}');
        }
    }
}

/// `"ts_ms":…,"ts_us":…,"ts_ns":…` of a time in microseconds since the epoch.
fn write_ts(out: &mut Vec<u8>, us: i64) {
    let mut b = itoa::Buffer::new();
    out.extend_from_slice(b"\"ts_ms\":");
    out.extend_from_slice(b.format(us.div_euclid(1000)).as_bytes());
    out.extend_from_slice(b",\"ts_us\":");
    out.extend_from_slice(b.format(us).as_bytes());
    out.extend_from_slice(b",\"ts_ns\":");
    out.extend_from_slice(b.format(i128::from(us) * 1000).as_bytes());
}

fn now_us() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}
