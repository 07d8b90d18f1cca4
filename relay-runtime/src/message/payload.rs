//! A row as JSON text, kept as PostgreSQL wrote it and parsed only when a field is asked for.
//!
//! The relay's hot path never builds a `serde_json::Value` per row: an outbox payload is split
//! into row texts, each row object is rewritten once without its `__pgt_*` keys (top-level keys
//! in their order, values copied as text), and sinks splice that text into the message JSON.
//! Numbers keep their exact text — a `numeric(30,20)` survives unrounded.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

/// pg_trickle's internal columns start with this.
const INTERNAL_PREFIX: &str = "__pgt_";

/// Valid JSON text of one row (usually an object).
#[derive(Clone)]
pub struct Payload(Box<RawValue>);

impl Payload {
    /// One row of an outbox payload. An object row is written compactly without its
    /// `__pgt_*` keys (unless `keep_internal`); any other JSON is kept as it is.
    pub fn row(raw: &RawValue, keep_internal: bool) -> Self {
        let text = raw.get();
        if !text.trim_start().starts_with('{') {
            return Payload(raw.to_owned());
        }
        // Serializing into a string is how serde_json builds a RawValue without validating
        // the text a second time; the text came from a parse, so it cannot fail.
        match serde_json::value::to_raw_value(&CleanObject { text, keep_internal }) {
            Ok(raw) => Payload(raw),
            Err(_) => Payload(raw.to_owned()),
        }
    }

    /// JSON text (validated), cleaned like [`Payload::row`].
    pub fn parse(text: &str, keep_internal: bool) -> Result<Self, serde_json::Error> {
        let raw: &RawValue = serde_json::from_str(text)?;
        Ok(Self::row(raw, keep_internal))
    }

    pub fn from_value(value: &Value) -> Self {
        match serde_json::value::to_raw_value(value) {
            Ok(raw) => Payload(raw),
            // A Value always serializes; keep the type total anyway.
            Err(_) => Payload(RawValue::NULL.to_owned()),
        }
    }

    /// The JSON text.
    pub fn json(&self) -> &str {
        self.0.get()
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
        if self.json().trim_start().starts_with('{') {
            let mut de = serde_json::Deserializer::from_str(self.json());
            let _ = de.deserialize_map(PickFields { names, found: &mut found });
        }
        found
    }
}

impl Payload {
    /// [`Payload::fields`] for names that may be absent (`None` in, `None` out).
    pub fn pick<const N: usize>(&self, names: [Option<&str>; N]) -> [Option<Value>; N] {
        let wanted: Vec<&str> = names.iter().flatten().copied().collect();
        let mut found = self.fields(&wanted).into_iter();
        names.map(|n| n.and_then(|_| found.next().flatten()))
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
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

/// An object's text re-serialized entry by entry, values copied as raw text.
struct CleanObject<'a> {
    text: &'a str,
    keep_internal: bool,
}

impl Serialize for CleanObject<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error;
        let map = serializer.serialize_map(None)?;
        let mut de = serde_json::Deserializer::from_str(self.text);
        de.deserialize_map(CopyEntries { map, keep_internal: self.keep_internal }).map_err(S::Error::custom)
    }
}

struct CopyEntries<M> {
    map: M,
    keep_internal: bool,
}

impl<'de, M: SerializeMap> Visitor<'de> for CopyEntries<M> {
    type Value = M::Ok;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut entries: A) -> Result<Self::Value, A::Error> {
        use serde::de::Error;
        while let Some(key) = entries.next_key::<Key<'de>>()? {
            let value: &'de RawValue = entries.next_value()?;
            if self.keep_internal || !key.0.starts_with(INTERNAL_PREFIX) {
                self.map.serialize_entry(key.0.as_ref(), value).map_err(A::Error::custom)?;
            }
        }
        self.map.end().map_err(A::Error::custom)
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

/// Splits a JSON array's text into its elements' texts without parsing them into values.
pub fn split_array(text: &str) -> Result<Vec<&RawValue>, serde_json::Error> {
    serde_json::from_str(text)
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
        let parts = split_array(r#"[{"a": 1}, 2, "x"]"#).unwrap();
        assert_eq!(parts.iter().map(|r| r.get()).collect::<Vec<_>>(), vec![r#"{"a": 1}"#, "2", r#""x""#]);
    }
}
