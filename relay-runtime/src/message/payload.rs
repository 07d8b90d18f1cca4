//! A row as JSON text, kept as PostgreSQL wrote it and parsed only when a field is asked for.
//!
//! The relay's hot path never builds a `serde_json::Value` per row: an outbox payload is split
//! into row texts, each row object is rewritten once without its `__pgt_*` keys (top-level keys
//! in their order, values copied as text), and sinks splice that text into the message JSON.
//! Numbers keep their exact text — a `numeric(30,20)` survives unrounded.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use super::scan::{self, ScanError};

/// pg_trickle's internal columns start with this (a key's text, quote included).
const INTERNAL_KEY: &[u8] = b"\"__pgt_";

/// Valid JSON text of one row (usually an object): a span of a buffer that the rows of one
/// outbox row share, so a row costs no allocation of its own and a clone is a reference count.
#[derive(Clone)]
pub struct Payload {
    buf: Arc<String>,
    start: usize,
    end: usize,
}

/// Appends `text[value]` to `out` as a row: an object compactly, without its `__pgt_*` keys
/// unless `keep_internal`; anything else as it is. Returns the value's end.
fn write_row(text: &[u8], at: usize, keep_internal: bool, out: &mut Vec<u8>) -> Result<usize, ScanError> {
    if text.get(at) != Some(&b'{') {
        let end = scan::value_end(text, at)?;
        out.extend_from_slice(&text[at..end]);
        return Ok(end);
    }
    out.push(b'{');
    let mut first = true;
    let end = scan::object_entries(text, at, |k, v| {
        if keep_internal || !text[k.clone()].starts_with(INTERNAL_KEY) {
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(&text[k]);
            out.push(b':');
            out.extend_from_slice(&text[v]);
        }
    })?;
    out.push(b'}');
    Ok(end)
}

/// The buffer of written rows as a string: only whole JSON texts were copied into it.
fn into_string(out: Vec<u8>) -> String {
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// The rows of a JSON array written by PostgreSQL (`json`/`jsonb` output), cleaned like
/// [`Payload::row`], in one pass over the text and one buffer for all of them.
pub fn split_rows(text: &str, keep_internal: bool) -> Result<Vec<Payload>, ScanError> {
    let b = text.as_bytes();
    let at = scan::skip_ws(b, 0);
    let mut out = Vec::with_capacity(text.len());
    let mut spans = Vec::new();
    let end = scan::array_elements(b, at, |i| {
        let start = out.len();
        let end = write_row(b, i, keep_internal, &mut out)?;
        spans.push((start, out.len()));
        Ok(end)
    })?;
    scan::nothing_after(b, end)?;
    let buf = Arc::new(into_string(out));
    Ok(spans.into_iter().map(|(start, end)| Payload { buf: buf.clone(), start, end }).collect())
}

impl Payload {
    fn whole(text: String) -> Self {
        Payload { end: text.len(), buf: Arc::new(text), start: 0 }
    }

    /// One row written by PostgreSQL: an object row compactly without its `__pgt_*` keys
    /// (unless `keep_internal`), keys in their order, values as their text; any other JSON as
    /// it is.
    pub fn row(text: &str, keep_internal: bool) -> Result<Self, ScanError> {
        let b = text.as_bytes();
        let at = scan::skip_ws(b, 0);
        let mut out = Vec::with_capacity(text.len());
        scan::nothing_after(b, write_row(b, at, keep_internal, &mut out)?)?;
        Ok(Self::whole(into_string(out)))
    }

    /// JSON text from anywhere (a broker message): validated, then kept as [`Payload::row`].
    pub fn parse(text: &str, keep_internal: bool) -> Result<Self, serde_json::Error> {
        let raw: &RawValue = serde_json::from_str(text)?;
        Self::row(raw.get(), keep_internal).map_err(<serde_json::Error as de::Error>::custom)
    }

    /// JSON text the relay wrote itself (an envelope), taken as it is.
    #[cfg(feature = "pg-inbox")]
    pub(crate) fn written(text: Vec<u8>) -> Self {
        Self::whole(into_string(text))
    }

    pub fn from_value(value: &Value) -> Self {
        Self::whole(value.to_string())
    }

    /// The JSON text.
    pub fn json(&self) -> &str {
        &self.buf[self.start..self.end]
    }

    pub fn to_value(&self) -> Value {
        serde_json::from_str(self.json()).unwrap_or(Value::Null)
    }

    /// A top-level field of an object payload; `None` when missing or not an object.
    pub fn field(&self, name: &str) -> Option<Value> {
        self.fields(std::slice::from_ref(&name)).pop().flatten()
    }

    /// Several top-level fields in one pass over the text, in the order asked.
    pub fn fields<S: AsRef<str>>(&self, names: &[S]) -> Vec<Option<Value>> {
        let mut found = vec![None; names.len()];
        if self.json().starts_with('{') {
            let mut de = serde_json::Deserializer::from_str(self.json());
            let _ = de.deserialize_map(PickFields { names, found: &mut found });
        }
        found
    }

    /// [`Payload::fields`] for names that may be absent (`None` in, `None` out).
    pub fn pick<const N: usize>(&self, names: [Option<&str>; N]) -> [Option<Value>; N] {
        let wanted: Vec<&str> = names.iter().flatten().copied().collect();
        let mut found = self.fields(&wanted).into_iter();
        names.map(|n| n.and_then(|_| found.next().flatten()))
    }
}

/// Through serde (slow path: the text is checked again); sinks write messages with
/// [`super::RelayMessage::write_json`], which copies the text.
impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error;
        let raw: &RawValue = serde_json::from_str(self.json()).map_err(S::Error::custom)?;
        raw.serialize(serializer)
    }
}

impl PartialEq for Payload {
    /// JSON equality (whitespace and number spelling aside), for tests and comparisons.
    fn eq(&self, other: &Self) -> bool {
        self.json() == other.json() || self.to_value() == other.to_value()
    }
}

impl PartialEq<Value> for Payload {
    fn eq(&self, other: &Value) -> bool {
        self.to_value() == *other
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.json())
    }
}

impl fmt::Display for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.json())
    }
}

impl From<Value> for Payload {
    fn from(value: Value) -> Self {
        Payload::from_value(&value)
    }
}
/// Sent as `json`/`jsonb` text as it is (jsonb's binary form is a version byte and the text).
impl tokio_postgres::types::ToSql for Payload {
    fn to_sql(
        &self,
        ty: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        if *ty == tokio_postgres::types::Type::JSONB {
            out.extend_from_slice(&[1]);
        }
        out.extend_from_slice(self.json().as_bytes());
        Ok(tokio_postgres::types::IsNull::No)
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        matches!(*ty, tokio_postgres::types::Type::JSON | tokio_postgres::types::Type::JSONB)
    }

    tokio_postgres::types::to_sql_checked!();
}

/// A key as written (borrowed when it has no escapes).
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// Collects the values of some keys, skipping every other value unparsed.
struct PickFields<'n, S> {
    names: &'n [S],
    found: &'n mut Vec<Option<Value>>,
}

impl<'de, S: AsRef<str>> Visitor<'de> for PickFields<'_, S> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<(), A::Error> {
        while let Some(key) = entries.next_key::<Key<'de>>()? {
            match self.names.iter().position(|n| n.as_ref() == key.0) {
                Some(i) => self.found[i] = Some(entries.next_value()?),
                None => {
                    entries.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(text: &str, keep: bool) -> String {
        Payload::parse(text, keep).unwrap().json().to_owned()
    }

    #[test]
    fn internal_keys_removed_order_and_exact_numbers_kept() {
        let text = r#"{"id": 4, "__pgt_count": 1, "total": 0.10000000000000000000001, "big": 1e400, "note": "a\"b\u00e9", "__pgt_row_id": 3007003519974542822, "nested": {"__pgt_x": [1, 2]}}"#;
        assert_eq!(
            row(text, false),
            r#"{"id":4,"total":0.10000000000000000000001,"big":1e400,"note":"a\"b\u00e9","nested":{"__pgt_x": [1, 2]}}"#
        );
        let kept = row(text, true);
        assert!(kept.contains(r#""__pgt_row_id":3007003519974542822"#) && kept.contains(r#""__pgt_count":1"#));
    }

    #[test]
    fn escaped_keys_and_non_objects() {
        assert_eq!(row(r#"{"a\nb": 1, "__pgt_\u0078": 2}"#, false), r#"{"a\nb":1}"#);
        assert_eq!(row("[1, 2]", false), "[1, 2]");
        assert_eq!(row(" \"text\" ", false), "\"text\"");
        assert!(Payload::parse("{\"a\": ", false).is_err());
    }

    #[test]
    fn fields_are_read_lazily_and_serialization_splices_the_text() {
        let p = Payload::parse(r#"{"id": 7, "name": "x", "tags": ["a"], "none": null}"#, false).unwrap();
        assert_eq!(p.field("id"), Some(json!(7)));
        assert_eq!(p.field("missing"), None);
        assert_eq!(p.field("none"), Some(Value::Null));
        assert_eq!(p.fields(&["tags", "id"]), vec![Some(json!(["a"])), Some(json!(7))]);
        assert_eq!(serde_json::to_string(&json!({"x": 1})).unwrap(), r#"{"x":1}"#);
        #[derive(Serialize)]
        struct Wrap<'a> {
            payload: &'a Payload,
        }
        assert_eq!(serde_json::to_string(&Wrap { payload: &p }).unwrap(), format!(r#"{{"payload":{}}}"#, p.json()));
        assert_eq!(p, json!({"id": 7, "name": "x", "tags": ["a"], "none": null}));
        assert_eq!(Payload::from(json!([1])).json(), "[1]");
    }

    #[test]
    fn rows_of_an_array_share_one_buffer() {
        let rows = split_rows(r#" [{"a": 1, "__pgt_count": 2}, 2, "x", {}, [ 1 ]] "#, false).unwrap();
        let texts: Vec<&str> = rows.iter().map(Payload::json).collect();
        assert_eq!(texts, vec![r#"{"a":1}"#, "2", r#""x""#, "{}", "[ 1 ]"]);
        assert!(Arc::ptr_eq(&rows[0].buf, &rows[4].buf));
        assert_eq!(split_rows(r#"[{"__pgt_row_id": 1}]"#, true).unwrap()[0].json(), r#"{"__pgt_row_id":1}"#);
        assert!(split_rows("[]", false).unwrap().is_empty());
        assert!(split_rows("[1,", false).is_err());
        assert!(split_rows("[1] x", false).is_err());
        assert!(Payload::row("{} {}", false).is_err());
    }
}
