//! CloudEvents 1.0: the structured event (JSON event format) and the binary attributes each
//! protocol binding carries as headers.

use std::fmt::Write as _;

use super::{rfc3339, Binding, Envelope, Kind, Rendered, JSON};
use crate::message::{write_json_str, RelayMessage};

#[derive(Debug, Clone)]
pub(super) struct CloudEvents {
    pub(super) binary: bool,
    pub(super) source: Rendered,
    pub(super) event_type: Rendered,
}

/// The default CloudEvents `source`: `/pgtrickle/<database>/<stream table>`, each segment
/// percent-encoded (a URI-reference).
pub fn default_source(database: &str, stream_table: &str) -> String {
    let mut s = String::from("/pgtrickle/");
    uri_segment(&mut s, database);
    s.push('/');
    uri_segment(&mut s, stream_table);
    s
}

fn uri_segment(out: &mut String, s: &str) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

impl Envelope {
    /// Calls `f(name, value)` for each CloudEvents attribute that travels as a header in binary
    /// mode (nothing in any other mode). Names carry the binding's prefix; values are
    /// percent-encoded where the binding asks for it.
    pub fn attributes(&self, m: &RelayMessage, binding: Binding, mut f: impl FnMut(&str, &str)) {
        let Kind::CloudEvents(ce @ CloudEvents { binary: true, .. }) = &self.kind else { return };
        let mut name = String::with_capacity(32);
        let mut encoded = String::new();
        let mut emit = |attr: &str, value: &str| {
            name.clear();
            name.push_str(binding.prefix());
            name.push_str(attr);
            if binding.percent_encoded() && needs_percent_encoding(value) {
                encoded.clear();
                percent_encode(&mut encoded, value);
                f(&name, &encoded);
            } else {
                f(&name, value);
            }
        };
        emit("specversion", "1.0");
        emit("id", &m.dedup_key);
        emit("source", &ce.source.get(m, &self.stream_table, &self.outbox_table));
        emit("type", &ce.event_type.get(m, &self.stream_table, &self.outbox_table));
        if let Some(subject) = self.subject(m) {
            emit("subject", &subject);
        }
        if let Some(us) = m.stamp.time_us {
            emit("time", &rfc3339(us));
        }
        if binding == Binding::Nats {
            emit("datacontenttype", JSON);
        }
        emit("pgtop", m.op.as_str());
        if let Some(id) = m.outbox_id {
            emit("pgtoutboxid", itoa::Buffer::new().format(id));
        }
        if let Some(r) = &m.refresh_id {
            emit("pgtrefreshid", r);
        }
        if m.is_full_refresh {
            emit("pgtfullrefresh", "true");
        }
        if let Some(before) = &m.before {
            emit("pgtbefore", before.json());
        }
        emit("traceparent", &m.traceparent);
    }

    pub(super) fn write_event(&self, ce: &CloudEvents, m: &RelayMessage, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"specversion\":\"1.0\",\"id\":");
        write_json_str(out, &m.dedup_key);
        out.extend_from_slice(b",\"source\":");
        write_json_str(out, &ce.source.get(m, &self.stream_table, &self.outbox_table));
        out.extend_from_slice(b",\"type\":");
        write_json_str(out, &ce.event_type.get(m, &self.stream_table, &self.outbox_table));
        if let Some(subject) = self.subject(m) {
            out.extend_from_slice(b",\"subject\":");
            write_json_str(out, &subject);
        }
        if let Some(us) = m.stamp.time_us {
            out.extend_from_slice(b",\"time\":\"");
            out.extend_from_slice(rfc3339(us).as_bytes());
            out.push(b'"');
        }
        out.extend_from_slice(b",\"datacontenttype\":\"application/json\",\"pgtop\":\"");
        out.extend_from_slice(m.op.as_str().as_bytes());
        out.push(b'"');
        if let Some(id) = m.outbox_id {
            out.extend_from_slice(b",\"pgtoutboxid\":\"");
            out.extend_from_slice(itoa::Buffer::new().format(id).as_bytes());
            out.push(b'"');
        }
        if let Some(r) = &m.refresh_id {
            out.extend_from_slice(b",\"pgtrefreshid\":");
            write_json_str(out, r);
        }
        if m.is_full_refresh {
            out.extend_from_slice(b",\"pgtfullrefresh\":true");
        }
        if let Some(before) = &m.before {
            out.extend_from_slice(b",\"pgtbefore\":");
            write_json_str(out, before.json());
        }
        out.extend_from_slice(b",\"traceparent\":");
        write_json_str(out, &m.traceparent);
        out.extend_from_slice(b",\"data\":");
        out.extend_from_slice(m.payload.json().as_bytes());
        out.push(b'}');
    }
}

/// Whether a header value must be percent-encoded (HTTP binding §3.1.3: space, `"`, `%` and
/// anything outside printable ASCII).
pub(super) fn needs_percent_encoding(s: &str) -> bool {
    s.bytes().any(|b| !(0x21..=0x7e).contains(&b) || b == b'"' || b == b'%')
}

/// Percent-encodes a header value: UTF-8 bytes of space, `"`, `%` and anything outside
/// U+0021–U+007E.
pub fn percent_encode(out: &mut String, s: &str) {
    for b in s.bytes() {
        if (0x21..=0x7e).contains(&b) && b != b'"' && b != b'%' {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}
