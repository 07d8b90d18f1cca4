//! CloudEvents 1.0: the structured event (JSON event format) and the binary attributes each
//! protocol binding carries as headers.

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
pub(super) fn default_source(database: &str, stream_table: &str) -> String {
    let mut s = String::from("/pgtrickle/");
    uri_segment(&mut s, database);
    s.push('/');
    uri_segment(&mut s, stream_table);
    s
}

fn uri_segment(out: &mut String, s: &str) {
    crate::percent::encode(out, s, |b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
}

/// The attributes binary mode sends, in the order of the name tables below.
#[derive(Debug, Clone, Copy)]
enum Attr {
    SpecVersion,
    Id,
    Source,
    Type,
    Subject,
    Time,
    DataContentType,
    PgtOp,
    PgtOutboxId,
    PgtRefreshId,
    PgtFullRefresh,
    PgtBefore,
    TraceParent,
}

/// Every attribute's header name with a binding's prefix, spelled out once (no name is built
/// per message).
macro_rules! prefixed {
    ($p:literal) => {
        [
            concat!($p, "specversion"),
            concat!($p, "id"),
            concat!($p, "source"),
            concat!($p, "type"),
            concat!($p, "subject"),
            concat!($p, "time"),
            concat!($p, "datacontenttype"),
            concat!($p, "pgtop"),
            concat!($p, "pgtoutboxid"),
            concat!($p, "pgtrefreshid"),
            concat!($p, "pgtfullrefresh"),
            concat!($p, "pgtbefore"),
            concat!($p, "traceparent"),
        ]
    };
}

const CE_DASH: [&str; 13] = prefixed!("ce-");
const CE_UNDERSCORE: [&str; 13] = prefixed!("ce_");
const CLOUD_EVENTS_COLON: [&str; 13] = prefixed!("cloudEvents:");

impl Binding {
    fn names(self) -> &'static [&'static str; 13] {
        match self {
            Binding::Http | Binding::Nats => &CE_DASH,
            Binding::Kafka => &CE_UNDERSCORE,
            Binding::Amqp => &CLOUD_EVENTS_COLON,
        }
    }
}

impl Envelope {
    /// Calls `f(name, value)` for each CloudEvents attribute that travels as a header in binary
    /// mode (nothing in any other mode). Names carry the binding's prefix; values are
    /// percent-encoded where the binding asks for it.
    pub fn attributes(&self, m: &RelayMessage, binding: Binding, mut f: impl FnMut(&'static str, &str)) {
        let Kind::CloudEvents(ce @ CloudEvents { binary: true, .. }) = &self.kind else { return };
        let names = binding.names();
        let mut encoded = String::new();
        let mut emit = |attr: Attr, value: &str| {
            let name = names[attr as usize];
            if binding.percent_encoded() && needs_percent_encoding(value) {
                encoded.clear();
                percent_encode(&mut encoded, value);
                f(name, &encoded);
            } else {
                f(name, value);
            }
        };
        emit(Attr::SpecVersion, "1.0");
        emit(Attr::Id, &m.dedup_key);
        emit(Attr::Source, &ce.source.get(m, &self.names));
        emit(Attr::Type, &ce.event_type.get(m, &self.names));
        if let Some(subject) = self.subject(m) {
            emit(Attr::Subject, &subject);
        }
        if let Some(us) = m.stamp.time_us {
            emit(Attr::Time, &rfc3339(us));
        }
        if binding == Binding::Nats {
            emit(Attr::DataContentType, JSON);
        }
        emit(Attr::PgtOp, m.op.as_str());
        if let Some(id) = m.outbox_id {
            emit(Attr::PgtOutboxId, itoa::Buffer::new().format(id));
        }
        if let Some(r) = &m.refresh_id {
            emit(Attr::PgtRefreshId, r);
        }
        if m.is_full_refresh {
            emit(Attr::PgtFullRefresh, "true");
        }
        if let Some(before) = &m.before {
            emit(Attr::PgtBefore, before.json());
        }
        emit(Attr::TraceParent, &m.traceparent);
    }

    pub(super) fn write_event(&self, ce: &CloudEvents, m: &RelayMessage, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"specversion\":\"1.0\",\"id\":");
        write_json_str(out, &m.dedup_key);
        out.extend_from_slice(b",\"source\":");
        write_json_str(out, &ce.source.get(m, &self.names));
        out.extend_from_slice(b",\"type\":");
        write_json_str(out, &ce.event_type.get(m, &self.names));
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
pub(super) fn percent_encode(out: &mut String, s: &str) {
    crate::percent::encode(out, s, |b| (0x21..=0x7e).contains(&b) && b != b'"' && b != b'%');
}
