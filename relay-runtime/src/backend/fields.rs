//! The value types of pipeline config keys. Each knows how it is written in JSON (what it
//! accepts, with an error that says what was expected) and how it is described in the JSON
//! Schema; the schema's `x-kind` annotation is what the catalog's SQL validation reads, so the
//! relay and the database refuse the same values.
//!
//! Every type also accepts a string holding a secret reference (`${env:…}`, `${file:…}`) where
//! the database sees the config: the relay resolves references before it parses.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::message::Template;

/// A string pattern the schema gives every scalar type besides its own: a secret reference.
const REFERENCE: &str = r"\$\{";

/// An integer setting between `MIN` and `MAX`; a string of digits is accepted too
/// (`"batch_size": "500"` is common in hand-written JSON).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Int<const MIN: u64, const MAX: u64>(pub u64);

impl<const MIN: u64, const MAX: u64> Int<MIN, MAX> {
    pub fn get(self) -> u64 {
        self.0
    }

    pub fn millis(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.0)
    }
}

impl<const MIN: u64, const MAX: u64> fmt::Debug for Int<MIN, MAX> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de, const MIN: u64, const MAX: u64> Deserialize<'de> for Int<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<const MIN: u64, const MAX: u64>;
        impl<const MIN: u64, const MAX: u64> V<MIN, MAX> {
            fn check<E: de::Error>(n: Option<u64>, shown: &dyn fmt::Display) -> Result<Int<MIN, MAX>, E> {
                match n {
                    Some(n) if (MIN..=MAX).contains(&n) => Ok(Int(n)),
                    _ => Err(E::custom(format!("expected an integer between {MIN} and {MAX}, got {shown}"))),
                }
            }
        }
        impl<'de, const MIN: u64, const MAX: u64> Visitor<'de> for V<MIN, MAX> {
            type Value = Int<MIN, MAX>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "an integer between {MIN} and {MAX}")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Self::check(Some(v), &v)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Self::check(u64::try_from(v).ok(), &v)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Self::check(None, &v)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Self::check(v.trim().parse().ok(), &format_args!("'{v}'"))
            }
        }
        d.deserialize_any(V::<MIN, MAX>)
    }
}

impl<const MIN: u64, const MAX: u64> JsonSchema for Int<MIN, MAX> {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        format!("Int_{MIN}_{MAX}").into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "anyOf": [
                {"type": "integer", "minimum": MIN, "maximum": MAX},
                {"type": "string", "pattern": format!(r"^\s*[0-9]+\s*$|{REFERENCE}")}
            ],
            "x-kind": "int", "x-min": MIN, "x-max": MAX
        })
    }
}

/// `true` or `false` (the strings `"true"` and `"false"` too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flag(pub bool);

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Flag;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true or false")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Flag, E> {
                Ok(Flag(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Flag, E> {
                match v {
                    "true" => Ok(Flag(true)),
                    "false" => Ok(Flag(false)),
                    _ => Err(E::custom(format!("expected true or false, got '{v}'"))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for Flag {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "Flag".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "anyOf": [{"type": "boolean"}, {"type": "string", "enum": ["true", "false"]}],
            "x-kind": "flag"
        })
    }
}

/// Reads a string that must hold something besides white space.
fn non_empty_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a non-empty string")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
            if v.trim().is_empty() {
                Err(E::custom("must not be empty"))
            } else {
                Ok(v.to_owned())
            }
        }
    }
    d.deserialize_str(V)
}

/// A non-empty string.
#[derive(Clone, PartialEq, Eq)]
pub struct Text(pub String);

impl Text {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        non_empty_string(d).map(Text)
    }
}

impl JsonSchema for Text {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "Text".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "string", "pattern": r"\S", "x-kind": "text"})
    }
}

/// A string that may be empty (RabbitMQ's default exchange is `""`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnyText(pub String);

impl<'de> Deserialize<'de> for AnyText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(AnyText)
    }
}

impl JsonSchema for AnyText {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "AnyText".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "string", "x-kind": "string"})
    }
}

/// A secret (password, token, key): never shown in logs, status, metrics or custom resources.
/// `redact_config` hides every key of this type, whatever its name.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        non_empty_string(d).map(Secret)
    }
}

impl JsonSchema for Secret {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "Secret".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "string", "pattern": r"\S", "writeOnly": true, "x-kind": "secret"})
    }
}

/// A subject/topic/key template (see the README's template variables). A `{word}` one or two
/// letters away from a variable is refused as a typo (`{stream_tabel}`); other braces are text
/// (Redis cluster hash tags such as `{orders}` stay possible).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateText(pub Template);

pub const TEMPLATE_VARIABLES: &[&str] = &["stream_table", "outbox_table", "op", "outbox_id", "refresh_id"];

/// The first `{word}` of `source` (`word` of ASCII letters, digits and `_`) that looks like a
/// misspelt variable, with the variable meant.
pub fn misspelt_variable(source: &str) -> Option<(String, &'static str)> {
    let bytes = source.as_bytes();
    for (open, _) in source.match_indices('{') {
        let len = bytes[open + 1..].iter().take_while(|b| b.is_ascii_alphanumeric() || **b == b'_').count();
        if len == 0 || bytes.get(open + 1 + len) != Some(&b'}') {
            continue;
        }
        let word = &source[open + 1..open + 1 + len];
        if TEMPLATE_VARIABLES.contains(&word) {
            continue;
        }
        let lower = word.to_ascii_lowercase();
        if let Some(v) = TEMPLATE_VARIABLES.iter().find(|v| strsim::levenshtein(&lower, v) <= 2) {
            return Some((word.to_owned(), v));
        }
    }
    None
}

impl<'de> Deserialize<'de> for TemplateText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = non_empty_string(d)?;
        if let Some((word, meant)) = misspelt_variable(&s) {
            return Err(de::Error::custom(format!(
                "unknown template variable '{{{word}}}'; did you mean '{{{meant}}}'?"
            )));
        }
        Template::parse(&s).map(TemplateText).map_err(de::Error::custom)
    }
}

impl JsonSchema for TemplateText {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "Template".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string", "pattern": r"\S", "x-kind": "template",
            "x-variables": TEMPLATE_VARIABLES
        })
    }
}

/// A list of non-empty strings: a JSON array, or one comma-separated string.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct List(pub Vec<String>);

impl<'de> Deserialize<'de> for List {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = List;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of strings or a comma-separated string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<List, E> {
                Ok(List(v.split(',').map(|x| x.trim().to_owned()).filter(|x| !x.is_empty()).collect()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<List, A::Error> {
                let mut out = Vec::new();
                while let Some(item) = seq.next_element::<Text>()? {
                    out.push(item.0);
                }
                Ok(List(out))
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for List {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "List".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "anyOf": [{"type": "array", "items": {"type": "string", "pattern": r"\S"}}, {"type": "string"}],
            "x-kind": "list"
        })
    }
}

/// An object of settings whose values are strings (numbers and booleans are written as text):
/// `headers`, librdkafka's `rdkafka` properties.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Settings(pub Vec<(String, String)>);

impl<'de> Deserialize<'de> for Settings {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Settings;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of names to strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Settings, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, serde_json::Value>()? {
                    let v = match v {
                        serde_json::Value::String(s) => s,
                        serde_json::Value::Number(_) | serde_json::Value::Bool(_) => v.to_string(),
                        _ => return Err(de::Error::custom(format!("'{k}': expected a string, number or boolean"))),
                    };
                    out.push((k, v));
                }
                Ok(Settings(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl JsonSchema for Settings {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "Settings".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "object",
            "additionalProperties": {"type": ["string", "number", "boolean"]},
            "x-kind": "settings"
        })
    }
}

/// A key that is accepted and ignored: pg_trickle's positional functions store it for their own
/// relay (`retention_hours`, `max_retries`, …); any JSON value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ignored;

impl<'de> Deserialize<'de> for Ignored {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de::IgnoredAny::deserialize(d).map(|_| Ignored)
    }
}

impl JsonSchema for Ignored {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "Ignored".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"x-kind": "ignored"})
    }
}

/// One of a fixed set of words, case-insensitive; `T` lists them.
pub trait Choices: Sized + Copy + 'static {
    const ALL: &'static [(&'static str, Self)];
    const NAME: &'static str;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice<T: Choices>(pub T);

impl<'de, T: Choices> Deserialize<'de> for Choice<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<T: Choices> Visitor<'_> for V<T> {
            type Value = Choice<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("one of ")?;
                f.write_str(&words::<T>())
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Choice<T>, E> {
                T::ALL
                    .iter()
                    .find(|(w, _)| w.eq_ignore_ascii_case(v))
                    .map(|(_, c)| Choice(*c))
                    .ok_or_else(|| E::custom(format!("'{v}' is not one of {}", words::<T>())))
            }
        }
        d.deserialize_str(V::<T>(PhantomData))
    }
}

fn words<T: Choices>() -> String {
    T::ALL.iter().map(|(w, _)| *w).collect::<Vec<_>>().join(", ")
}

impl<T: Choices> JsonSchema for Choice<T> {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        T::NAME.into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let all: Vec<&str> = T::ALL.iter().map(|(w, _)| *w).collect();
        json_schema!({"type": "string", "enum": all, "x-kind": "choice"})
    }
}

/// Declares a [`Choices`] enum: `choices!(Acks "acks" { All = "all", One = "1" })`.
#[macro_export]
macro_rules! choices {
    ($(#[$m:meta])* $name:ident $label:literal { $($variant:ident = $word:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($variant),+ }
        impl $crate::backend::fields::Choices for $name {
            const ALL: &'static [(&'static str, Self)] = &[$(($word, $name::$variant)),+];
            const NAME: &'static str = $label;
        }
        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $word),+ }
            }
        }
    };
}
