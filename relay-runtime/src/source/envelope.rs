//! Incoming envelopes (the reverse key `envelope`): which messages are CloudEvents 1.0 events
//! (binary or structured) or Debezium change events, and what of them goes into the inbox.
//!
//! Detection (`auto`, the default), first match wins:
//! 1. a `ce-specversion` (HTTP, NATS), `ce_specversion` (Kafka) or `cloudEvents:specversion` /
//!    `cloudEvents_specversion` (AMQP) header: a binary CloudEvent;
//! 2. a content type `application/cloudevents…` (a structured event, or one element of a
//!    `cloudevents-batch`): a structured CloudEvent;
//! 3. a keyed Kafka record with a null value: a tombstone — acknowledged, nothing stored (an
//!    empty value is no tombstone: it is read like any other body);
//! 4. a body object with string `specversion`, `id`, `source` and `type`: a structured CloudEvent;
//! 5. a body object with a row-change `op` of Debezium's (`c u d r`), an object `source` and both
//!    `before` and `after`, or Kafka Connect's `{"schema": …, "payload": that}`: Debezium;
//! 6. anything else: the relay's own mapping (unchanged).
//!
//! The rules cannot match a native relay message (its `op` is a word, it has no `specversion`
//! and no `source` object). `native` turns detection off; `cloudevents` and `debezium` require
//! their kind and dead-letter anything else, saying why.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::Incoming;
use crate::message::Payload;

/// The reverse key `envelope`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InboundEnvelope {
    #[default]
    Auto,
    Native,
    CloudEvents,
    Debezium,
}

/// What an envelope says about the inbox row; `None` fields fall back to the pipeline's mapping.
#[derive(Debug, Clone, PartialEq)]
pub struct Unwrapped {
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    pub source: Option<String>,
    pub aggregate_id: Option<String>,
    pub payload: Payload,
    pub traceparent: Option<String>,
}

/// A message, seen through its envelope.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// The relay's own mapping applies.
    Native,
    /// A CloudEvent or a Debezium event.
    Unwrapped(Unwrapped),
    /// A Kafka tombstone: nothing to store.
    Tombstone,
}

const CE_BINARY_MARKERS: [&str; 4] =
    ["ce-specversion", "ce_specversion", "cloudEvents:specversion", "cloudEvents_specversion"];

/// Looks at a message through `mode`; `Err` says why it is poison.
pub fn inbound(m: &Incoming, mode: InboundEnvelope) -> Result<Inbound, String> {
    if mode == InboundEnvelope::Native {
        return Ok(Inbound::Native);
    }
    let ce_wanted = matches!(mode, InboundEnvelope::Auto | InboundEnvelope::CloudEvents);
    let dbz_wanted = matches!(mode, InboundEnvelope::Auto | InboundEnvelope::Debezium);
    if ce_wanted && CE_BINARY_MARKERS.iter().any(|h| m.header(h).is_some()) {
        return binary_event(m).map(Inbound::Unwrapped);
    }
    let content_type = m.header("content-type").unwrap_or_default().trim_start();
    if ce_wanted && strip_prefix_ci(content_type, "application/cloudevents").is_some() {
        return structured_event(m).map(Inbound::Unwrapped);
    }
    if dbz_wanted && m.null_body && m.key.is_some() {
        return Ok(Inbound::Tombstone);
    }
    let text = std::str::from_utf8(&m.body).map_err(|e| format!("message is not UTF-8: {e}"))?;
    // Most messages are neither: a substring search spares them a second parse.
    let maybe = (ce_wanted && text.contains("\"specversion\""))
        || (dbz_wanted && text.contains("\"after\"") && text.contains("\"source\""));
    let shape = if maybe { Shape::of(text) } else { Shape::default() };
    if ce_wanted && shape.cloudevent {
        return structured_event(m).map(Inbound::Unwrapped);
    }
    if dbz_wanted && (shape.debezium || shape.connect_wrapped) {
        return debezium(m, text, !shape.debezium).map(Inbound::Unwrapped);
    }
    match mode {
        InboundEnvelope::CloudEvents => Err("expected a CloudEvent (a ce-specversion header, an application/cloudevents content type, or a body with specversion, id, source and type) (the pipeline's envelope is 'cloudevents')".into()),
        InboundEnvelope::Debezium => Err("expected a Debezium change event (an object with op, source, before and after) (the pipeline's envelope is 'debezium')".into()),
        _ => Ok(Inbound::Native),
    }
}

/// The top-level keys of a body that decide its kind (no values are built but `op`).
#[derive(Debug, Default)]
struct Shape {
    cloudevent: bool,
    debezium: bool,
    connect_wrapped: bool,
}

#[derive(Deserialize)]
struct Keys<'a> {
    #[serde(borrow)]
    specversion: Option<&'a RawValue>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow, rename = "type")]
    ty: Option<&'a RawValue>,
    #[serde(borrow)]
    source: Option<&'a RawValue>,
    #[serde(borrow)]
    op: Option<&'a RawValue>,
    /// Present, `null` included (an `Option` would read `null` as absent).
    #[serde(default, deserialize_with = "present")]
    before: bool,
    #[serde(default, deserialize_with = "present")]
    after: bool,
    #[serde(borrow)]
    schema: Option<&'a RawValue>,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
}

impl Shape {
    fn of(text: &str) -> Self {
        let Ok(k) = serde_json::from_str::<Keys<'_>>(text) else { return Self::default() };
        let is_string = |v: Option<&RawValue>| v.is_some_and(|v| v.get().starts_with('"'));
        let is_object = |v: Option<&RawValue>| v.is_some_and(|v| v.get().starts_with('{'));
        let debezium_op =
            k.op.and_then(|v| serde_json::from_str::<&str>(v.get()).ok())
                .is_some_and(|op| matches!(op, "c" | "u" | "d" | "r"));
        let cloudevent = is_string(k.specversion) && is_string(k.id) && is_string(k.source) && is_string(k.ty);
        let debezium = debezium_op && is_object(k.source) && k.before && k.after;
        let connect_wrapped = is_object(k.schema)
            && k.payload.is_some_and(|p| Shape::of(p.get()).debezium)
            && k.specversion.is_none()
            && k.op.is_none();
        Self { cloudevent, debezium, connect_wrapped }
    }
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(d).map(|_| true)
}

/// A structured CloudEvent (JSON event format).
#[derive(Deserialize)]
struct Structured<'a> {
    #[serde(borrow)]
    specversion: Cow<'a, str>,
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    source: Cow<'a, str>,
    #[serde(borrow, rename = "type")]
    ty: Cow<'a, str>,
    #[serde(borrow, default)]
    subject: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    datacontenttype: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    traceparent: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    data_base64: Option<String>,
}

fn structured_event(m: &Incoming) -> Result<Unwrapped, String> {
    let text = std::str::from_utf8(&m.body).map_err(|e| format!("CloudEvent is not UTF-8: {e}"))?;
    let e: Structured<'_> =
        serde_json::from_str(text).map_err(|e| format!("not a structured CloudEvent (JSON event format): {e}"))?;
    check_specversion(&e.specversion)?;
    let payload = match (e.data, e.data_base64) {
        (Some(d), _) => Payload::parse(d.get(), true).map_err(|err| format!("CloudEvent data: {err}"))?,
        (None, Some(b64)) => {
            use base64::Engine;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|err| format!("CloudEvent data_base64 is not base64: {err}"))?;
            json_data(&bytes, e.datacontenttype.as_deref())?
        }
        (None, None) => Payload::from_value(&serde_json::Value::Null),
    };
    Ok(Unwrapped {
        event_id: Some(e.id.into_owned()),
        event_type: Some(e.ty.into_owned()),
        source: Some(e.source.into_owned()),
        aggregate_id: e.subject.map(Cow::into_owned),
        payload,
        traceparent: m.header("traceparent").map(str::to_owned).or(e.traceparent.map(Cow::into_owned)),
    })
}

fn check_specversion(v: &str) -> Result<(), String> {
    if v == "1.0" {
        Ok(())
    } else {
        Err(format!("CloudEvents specversion '{v}' is not supported (1.0 is)"))
    }
}

/// Event data for a jsonb payload: JSON text, whatever content type names it.
fn json_data(bytes: &[u8], content_type: Option<&str>) -> Result<Payload, String> {
    let text = std::str::from_utf8(bytes).ok();
    text.and_then(|t| Payload::parse(t, true).ok()).ok_or_else(|| {
        format!(
            "CloudEvent data ({}) is not JSON; the inbox payload is jsonb",
            content_type.unwrap_or("no datacontenttype")
        )
    })
}

/// A binary CloudEvent: attributes in headers (with the binding's prefix), data in the body.
fn binary_event(m: &Incoming) -> Result<Unwrapped, String> {
    let attr = |name: &str| -> Option<String> {
        m.headers.iter().find_map(|(k, v)| {
            // HTTP and NATS values are percent-encoded; Kafka and AMQP values are not.
            let (rest, decode) = if let Some(r) = strip_prefix_ci(k, "ce-") {
                (r, true)
            } else if let Some(r) = strip_prefix_ci(k, "ce_") {
                (r, false)
            } else if let Some(r) = strip_prefix_ci(k, "cloudevents:").or_else(|| strip_prefix_ci(k, "cloudevents_")) {
                (r, false)
            } else {
                return None;
            };
            rest.eq_ignore_ascii_case(name).then(|| if decode { percent_decode(v) } else { v.clone() })
        })
    };
    let missing = |a: &str| format!("binary CloudEvent without its required '{a}' attribute");
    check_specversion(&attr("specversion").ok_or_else(|| missing("specversion"))?)?;
    let id = attr("id").ok_or_else(|| missing("id"))?;
    let ty = attr("type").ok_or_else(|| missing("type"))?;
    let source = attr("source").ok_or_else(|| missing("source"))?;
    let content_type = m.header("content-type").map(str::to_owned).or_else(|| attr("datacontenttype"));
    let payload = if m.body.is_empty() {
        Payload::from_value(&serde_json::Value::Null)
    } else {
        json_data(&m.body, content_type.as_deref())?
    };
    Ok(Unwrapped {
        event_id: Some(id),
        event_type: Some(ty),
        source: Some(source),
        aggregate_id: attr("subject"),
        payload,
        traceparent: m.header("traceparent").map(str::to_owned).or_else(|| attr("traceparent")),
    })
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    s.get(..prefix.len()).filter(|p| p.eq_ignore_ascii_case(prefix)).map(|_| &s[prefix.len()..])
}

/// An HTTP/NATS binding header value, percent-decoded; text that does not decode to UTF-8 is
/// kept as it came.
fn percent_decode(s: &str) -> String {
    crate::percent::decode(s).unwrap_or_else(|_| s.to_owned())
}

#[derive(Deserialize)]
struct Change<'a> {
    #[serde(borrow)]
    op: Cow<'a, str>,
    #[serde(borrow, default)]
    before: Option<&'a RawValue>,
    #[serde(borrow, default)]
    after: Option<&'a RawValue>,
    #[serde(borrow, default)]
    source: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Wrapped<'a> {
    #[serde(borrow)]
    payload: &'a RawValue,
}

#[derive(Deserialize)]
struct DedupKey {
    #[serde(default)]
    pgt_dedup_key: Option<String>,
}

/// A Debezium change event (schema-wrapped or not).
/// `wrapped`: the event is inside Kafka Connect's `{"schema", "payload"}`.
fn debezium(m: &Incoming, text: &str, wrapped: bool) -> Result<Unwrapped, String> {
    let inner = match serde_json::from_str::<Wrapped<'_>>(text) {
        Ok(w) if wrapped => w.payload.get(),
        _ => text,
    };
    let c: Change<'_> = serde_json::from_str(inner).map_err(|e| format!("not a Debezium change event: {e}"))?;
    fn pick(v: Option<&RawValue>) -> Option<&str> {
        v.map(RawValue::get).filter(|v| *v != "null")
    }
    let data = match c.op.as_ref() {
        "d" => pick(c.before),
        _ => pick(c.after),
    };
    let payload = match data {
        Some(d) => Payload::parse(d, true).map_err(|e| format!("Debezium event row: {e}"))?,
        None => Payload::from_value(&serde_json::Value::Null),
    };
    // An event this relay wrote names its dedup key; it identifies the change everywhere.
    let own_key = c.source.and_then(|s| serde_json::from_str::<DedupKey>(s.get()).ok()).and_then(|k| k.pgt_dedup_key);
    Ok(Unwrapped {
        event_id: own_key,
        event_type: Some(c.op.into_owned()),
        source: None,
        aggregate_id: m.key.as_deref().map(key_text),
        payload,
        traceparent: m.header("traceparent").map(str::to_owned),
    })
}

/// The aggregate id of a Debezium record key: a one-field object's value as text
/// (`{"id":2}` → `2`), any other key as its compact JSON; Kafka Connect's schema wrapping is
/// taken off first.
fn key_text(key: &str) -> String {
    let Ok(mut v) = serde_json::from_str::<serde_json::Value>(key) else { return key.to_owned() };
    if v.get("schema").is_some_and(serde_json::Value::is_object) {
        if let Some(p) = v.get_mut("payload") {
            v = p.take();
        }
    }
    match &v {
        serde_json::Value::Object(o) if o.len() == 1 => {
            crate::message::value_text(o.values().next().cloned().unwrap_or_default()).unwrap_or_default()
        }
        serde_json::Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

#[cfg(test)]
mod tests;
