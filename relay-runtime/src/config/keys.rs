//! The key catalog: every key a pipeline config may hold, per direction and backend type, read
//! from the typed config structs' JSON Schemas ([`crate::backend`], [`ForwardKeys`],
//! [`ReverseKeys`]). One catalog serves four readers:
//! - the relay's parser ([`super::PipelineRow::parse`]) refuses unknown keys (naming the nearest
//!   known one), wrong types, out-of-range values and missing required keys;
//! - `migrate` stores it in `pgtrickle.relay_config_keys`, where the triggers on the config tables
//!   check every write with the same rules and the same messages (`sql/v5_config_validation.sql`);
//! - `pgtrickle-relay config-schema` prints it as a JSON Schema;
//! - the README's key tables are generated from it (a test keeps them current).

use std::collections::{BTreeSet, HashSet};
use std::sync::LazyLock;

use schemars::generate::SchemaSettings;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::backend::fields::{misspelt_variable, Choice, Flag, Ignored, Int, List, TemplateText, Text};
use crate::backend::{file, kafka, nats, pg_inbox, rabbitmq, redis, sqs, webhook};

crate::choices!(
    /// See [`super::DeltaMode`].
    DeltaModeChoice "DeltaMode" { Diff = "diff", Snapshot = "snapshot" }
);
crate::choices!(
    /// See [`super::InitialSnapshot`].
    InitialSnapshotChoice "InitialSnapshot" { Emit = "emit", Skip = "skip" }
);
crate::choices!(
    /// See [`crate::message::DedupKeyFormat`].
    DedupKeyFormatChoice "DedupKeyFormat" { RowUid = "row_uid", Legacy = "legacy" }
);

crate::choices!(
    /// See [`crate::message::envelope::EnvelopeSpec`].
    EnvelopeChoice "Envelope" { Native = "native", CloudEvents = "cloudevents", Debezium = "debezium" }
);
crate::choices!(
    /// How CloudEvents travel: the whole event as the body, or attributes as headers.
    CloudEventsModeChoice "CloudEventsMode" { Structured = "structured", Binary = "binary" }
);

crate::choices!(
    /// See [`crate::source::envelope::InboundEnvelope`].
    InboundEnvelopeChoice "InboundEnvelope" {
        Auto = "auto", Native = "native", CloudEvents = "cloudevents", Debezium = "debezium"
    }
);

crate::choices!(
    /// What a CloudEvent's inbox `event_id` is made of.
    CloudEventsEventIdChoice "CloudEventsEventId" { Id = "id", SourceId = "source_id" }
);

/// The keys of a forward pipeline that are not its sink's. They may be written at the top
/// (flat form), or inside `source` / `sink` (pg_trickle's positional form stores only those).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForwardKeys {
    /// The pg_trickle stream table whose outbox to relay (its outbox is looked up in
    /// `pgtrickle.pgt_outbox_config`, else `pgtrickle.outbox_<stream_table>`).
    pub stream_table: Option<Text>,
    /// An outbox table name instead (a stream table name is accepted here too).
    #[serde(alias = "outbox")]
    #[schemars(extend("x-aliases" = ["outbox"]))]
    pub outbox_table: Option<Text>,
    /// pg_trickle's consumer group of the positional form (informational).
    pub group: Option<Text>,
    /// The message subject template (default `pgtrickle.{stream_table}.{op}`).
    #[serde(alias = "subject")]
    #[schemars(extend("x-aliases" = ["subject"]))]
    pub subject_template: Option<TemplateText>,
    /// Outbox rows read per batch (default 100).
    pub batch_size: Option<Int<1, 100_000>>,
    /// Fallback poll interval in milliseconds (default 1000).
    pub poll_interval_ms: Option<Int<10, 3_600_000>>,
    /// Columns identifying a row (a delete and an insert of one key become an update).
    pub key_columns: Option<List>,
    /// Keep pg_trickle's internal `__pgt_*` columns in payloads (default false).
    pub keep_internal_columns: Option<Flag>,
    /// Claim-check rows and diff events read per page (default 1000).
    pub claim_check_page_size: Option<Int<1, 1_000_000>>,
    /// `diff` (default) or `snapshot`.
    pub delta_mode: Option<Choice<DeltaModeChoice>>,
    /// With `diff`: `emit` (default) or `skip` the first snapshot.
    pub initial_snapshot: Option<Choice<InitialSnapshotChoice>>,
    /// `row_uid` (default) or `legacy`.
    pub dedup_key_format: Option<Choice<DedupKeyFormatChoice>>,
    /// What each message is: `native` (default, the relay's JSON), `cloudevents` (CloudEvents
    /// 1.0) or `debezium` (Debezium's change-event envelope).
    pub envelope: Option<Choice<EnvelopeChoice>>,
    /// With `envelope: cloudevents`: `structured` (default, the event is the body) or `binary`
    /// (the row is the body, attributes are headers; NATS, Kafka, webhook, RabbitMQ).
    pub cloudevents_mode: Option<Choice<CloudEventsModeChoice>>,
    /// With `envelope: cloudevents`: the `source` attribute (default
    /// `/pgtrickle/<database>/{stream_table}`).
    pub cloudevents_source: Option<TemplateText>,
    /// With `envelope: cloudevents`: the `type` attribute (default
    /// `io.pgtrickle.{stream_table}.{op}`).
    pub cloudevents_type: Option<TemplateText>,
    /// With `envelope: debezium`: `source.name` (default: the database name).
    pub debezium_name: Option<Text>,
    /// With `envelope: debezium`: Kafka Connect's `{"schema", "payload"}` wrapping of values and
    /// keys, the schema from the stream table's columns (default false).
    pub debezium_schemas: Option<Flag>,
    /// Written by pg_trickle's positional `set_relay_outbox`; not used by this relay.
    pub retention_hours: Option<Ignored>,
}

/// The keys of a reverse pipeline that are not its source's: the inbox and how messages map
/// onto its rows. They may be written at the top, inside `sink` (pg_trickle's positional
/// `set_relay_inbox` stores the inbox there) or inside `source`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReverseKeys {
    /// The inbox: `schema.table`, or bare in `schema`.
    #[serde(alias = "inbox")]
    #[schemars(extend("x-aliases" = ["inbox"]))]
    pub inbox_table: Option<Text>,
    /// Schema of a bare `inbox_table` (default `pgtrickle`).
    #[serde(alias = "inbox_schema")]
    #[schemars(extend("x-aliases" = ["inbox_schema"]))]
    pub schema: Option<Text>,
    /// Create a missing inbox in pg_trickle's `create_inbox` shape (default false).
    pub create_inbox: Option<Flag>,
    /// Messages per transaction at most (default 1000).
    pub batch_size: Option<Int<1, 100_000>>,
    /// A payload field holding the event id (default: the message's id, else its coordinate).
    #[serde(alias = "dedup_key_field")]
    #[schemars(extend("x-aliases" = ["dedup_key_field"]))]
    pub event_id_field: Option<Text>,
    /// Payload field for `event_type` (default `event_type`).
    pub event_type_field: Option<Text>,
    /// `event_type` when neither the payload nor the headers give one (default: the source type).
    #[serde(alias = "default_event_type")]
    #[schemars(extend("x-aliases" = ["default_event_type"]))]
    pub event_type: Option<Text>,
    /// Payload field for `aggregate_id` (default: the Kafka record key).
    pub aggregate_id_field: Option<Text>,
    /// Written to the `source` column (default the pipeline name).
    pub source_name: Option<Text>,
    /// Larger messages are poison (default 1048576).
    pub max_message_bytes: Option<Int<1, 268_435_456>>,
    /// How messages are read: `auto` (default: CloudEvents and Debezium events are recognised,
    /// anything else mapped as it is), `native`, `cloudevents` or `debezium` (required).
    pub envelope: Option<Choice<InboundEnvelopeChoice>>,
    /// A CloudEvent's `event_id`: `id` (default) or `source_id` (`<source> <id>`, for senders
    /// whose ids repeat across sources, as CloudEvents allows).
    pub cloudevents_event_id: Option<Choice<CloudEventsEventIdChoice>>,
    /// Written by pg_trickle's positional `set_relay_inbox`; not used by this relay.
    pub max_retries: Option<Ignored>,
    /// Written by pg_trickle's positional `set_relay_inbox`; not used by this relay.
    pub schedule: Option<Ignored>,
    /// Written by pg_trickle's positional `set_relay_inbox`; not used by this relay.
    pub with_dead_letter: Option<Ignored>,
    /// Written by pg_trickle's positional `set_relay_inbox`; not used by this relay.
    pub retention_hours: Option<Ignored>,
}

/// What a key holds, as the `x-kind` annotation of its schema says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Int { min: u64, max: u64 },
    Flag,
    Text,
    String,
    Secret,
    Template,
    List,
    Settings,
    Choice(Vec<String>),
    Ignored,
}

/// One key: its name, aliases, kind and documentation.
#[derive(Debug, Clone)]
pub struct KeyRule {
    pub name: String,
    pub aliases: Vec<String>,
    pub kind: Kind,
    pub required: bool,
    pub description: String,
    /// The key's JSON Schema (without the `null` an optional key also accepts).
    pub schema: Value,
}

/// The keys of one struct.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    pub keys: Vec<KeyRule>,
}

impl KeySet {
    fn of<T: JsonSchema>() -> Self {
        let schema = schema_of::<T>();
        let required: HashSet<&str> =
            schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        let mut keys = Vec::new();
        for (name, prop) in schema["properties"].as_object().into_iter().flatten() {
            let kind = kind_of(prop)
                .unwrap_or_else(|| panic!("key '{name}' has no x-kind: give it a type of backend::fields"));
            keys.push(KeyRule {
                name: name.clone(),
                aliases: prop["x-aliases"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect(),
                kind,
                required: required.contains(name.as_str()),
                description: prop["description"].as_str().unwrap_or_default().replace('\n', " "),
                schema: without_null(prop),
            });
        }
        Self { keys }
    }

    /// The rule of `key`, by its name or an alias.
    pub fn get(&self, key: &str) -> Option<&KeyRule> {
        self.keys.iter().find(|r| r.name == key || r.aliases.iter().any(|a| a == key))
    }

    /// Every name and alias.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().flat_map(|r| std::iter::once(r.name.as_str()).chain(r.aliases.iter().map(String::as_str)))
    }
}

/// A sink type (forward) or source type (reverse) with its keys.
#[derive(Debug, Clone)]
pub struct TypeKeys {
    /// The canonical type name (`nats`, `pg-inbox`, …).
    pub name: &'static str,
    /// Every accepted spelling of the type, the name first.
    pub spellings: &'static [&'static str],
    /// Prefixes a flat key of this type may carry (`nats_url` → `url`).
    pub prefixes: &'static [&'static str],
    pub keys: KeySet,
    pub description: String,
}

/// The keys of one direction: the pipeline's own and each backend type's.
#[derive(Debug, Clone)]
pub struct DirectionKeys {
    /// `sink` (forward) or `source` (reverse): what the backend is called in messages.
    pub role: &'static str,
    pub pipeline: KeySet,
    pub types: Vec<TypeKeys>,
}

impl DirectionKeys {
    /// The backend type spelt `s` (case-insensitive).
    pub fn type_named(&self, s: &str) -> Option<&TypeKeys> {
        let lower = s.to_ascii_lowercase();
        self.types.iter().find(|t| t.spellings.contains(&lower.as_str()))
    }

    pub fn known_types(&self) -> String {
        self.types
            .iter()
            .map(|t| match t.spellings.get(1) {
                Some(alias) if t.spellings.len() == 2 || t.name == "pg-inbox" => format!("{} ({alias})", t.name),
                _ => t.name.to_owned(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

pub struct Catalog {
    pub forward: DirectionKeys,
    pub reverse: DirectionKeys,
}

fn entry<T: JsonSchema>(
    name: &'static str,
    spellings: &'static [&'static str],
    prefixes: &'static [&'static str],
) -> TypeKeys {
    let schema = schema_of::<T>();
    TypeKeys {
        name,
        spellings,
        prefixes,
        keys: KeySet::of::<T>(),
        description: schema["description"].as_str().unwrap_or_default().replace('\n', " "),
    }
}

/// The catalog of this relay version.
pub static CATALOG: LazyLock<Catalog> = LazyLock::new(|| Catalog {
    forward: DirectionKeys {
        role: "sink",
        pipeline: KeySet::of::<ForwardKeys>(),
        types: vec![
            entry::<file::StdoutSinkConfig>("stdout", &["stdout"], &["stdout_", "file_"]),
            entry::<file::FileSinkConfig>("file", &["file"], &["file_", "stdout_"]),
            entry::<nats::NatsSinkConfig>("nats", &["nats", "jetstream"], &["nats_"]),
            entry::<webhook::WebhookSinkConfig>("webhook", &["webhook", "http"], &["webhook_", "http_"]),
            entry::<kafka::KafkaSinkConfig>("kafka", &["kafka"], &["kafka_"]),
            entry::<redis::RedisSinkConfig>("redis", &["redis"], &["redis_"]),
            entry::<sqs::SqsSinkConfig>("sqs", &["sqs"], &["sqs_"]),
            entry::<rabbitmq::RabbitmqSinkConfig>("rabbitmq", &["rabbitmq", "amqp"], &["rabbitmq_", "amqp_"]),
            entry::<pg_inbox::PgInboxSinkConfig>(
                "pg-inbox",
                &["pg-inbox", "pg_inbox", "inbox"],
                &["pg_inbox_", "inbox_"],
            ),
        ],
    },
    reverse: DirectionKeys {
        role: "source",
        pipeline: KeySet::of::<ReverseKeys>(),
        types: vec![
            entry::<nats::NatsSourceConfig>("nats", &["nats"], &["nats_"]),
            entry::<webhook::WebhookSourceConfig>("webhook", &["webhook", "http"], &["webhook_", "http_"]),
            entry::<kafka::KafkaSourceConfig>("kafka", &["kafka"], &["kafka_"]),
            entry::<redis::RedisSourceConfig>("redis", &["redis"], &["redis_"]),
            entry::<sqs::SqsSourceConfig>("sqs", &["sqs"], &["sqs_"]),
            entry::<rabbitmq::RabbitmqSourceConfig>("rabbitmq", &["rabbitmq"], &["rabbitmq_", "amqp_"]),
        ],
    },
});

/// The JSON Schema (draft 2020-12) of `T`, every subschema inline.
pub fn schema_of<T: JsonSchema>() -> Value {
    let mut settings = SchemaSettings::draft2020_12();
    settings.inline_subschemas = true;
    settings.into_generator().into_root_schema_for::<T>().to_value()
}

fn kind_of(prop: &Value) -> Option<Kind> {
    // An optional key's schema may wrap its type's in an `anyOf` with `null`.
    let tagged = find_kind(prop)?;
    let kind = tagged["x-kind"].as_str()?;
    Some(match kind {
        "int" => Kind::Int { min: tagged["x-min"].as_u64()?, max: tagged["x-max"].as_u64()? },
        "flag" => Kind::Flag,
        "text" => Kind::Text,
        "string" => Kind::String,
        "secret" => Kind::Secret,
        "template" => Kind::Template,
        "list" => Kind::List,
        "settings" => Kind::Settings,
        "choice" => {
            Kind::Choice(tagged["enum"].as_array()?.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        }
        "ignored" => Kind::Ignored,
        _ => return None,
    })
}

fn find_kind(v: &Value) -> Option<&Value> {
    if v.get("x-kind").is_some() {
        return Some(v);
    }
    match v {
        Value::Object(m) => m.values().find_map(find_kind),
        Value::Array(items) => items.iter().find_map(find_kind),
        _ => None,
    }
}

/// The schema of a key as written (an absent key and `null` are the same to the relay, so the
/// published schema allows `null` too, but shows the type itself).
fn without_null(prop: &Value) -> Value {
    let mut v = find_kind(prop).cloned().unwrap_or_else(|| prop.clone());
    if let (Some(obj), Some(desc)) = (v.as_object_mut(), prop.get("description")) {
        obj.insert("description".into(), desc.clone());
    }
    if let (Some(obj), Some(aliases)) = (v.as_object_mut(), prop.get("x-aliases")) {
        obj.insert("x-aliases".into(), aliases.clone());
    }
    v
}

/// A value as it may be quoted in an error (never a secret's): strings, booleans and integers
/// as written (up to 60 characters), anything else by its type — the SQL side quotes alike.
fn shown(v: &Value) -> String {
    let s = match v {
        Value::String(_) | Value::Bool(_) => v.to_string(),
        Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
        other => return json_type(other).to_owned(),
    };
    if s.chars().count() > 60 {
        format!("{}…", s.chars().take(60).collect::<String>())
    } else {
        s
    }
}

/// How a JSON value's type is named in messages ("a string", "an object").
pub fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Whether `v` fits `kind`; else what was expected. The SQL function
/// `pgtrickle.relay_config_check_value` is the same rule, word for word.
pub fn check_value(kind: &Kind, v: &Value) -> Result<(), String> {
    let got = |v: &Value| match kind {
        Kind::Secret => json_type(v).to_owned(),
        _ => shown(v),
    };
    match (kind, v) {
        (_, Value::Null) | (Kind::Ignored, _) => Ok(()),
        (Kind::Int { min, max }, _) => {
            let n = match v {
                Value::Number(n) => n.as_u64(),
                Value::String(s) => {
                    let t = s.trim();
                    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
                        Some(t.parse::<u64>().unwrap_or(u64::MAX))
                    } else {
                        None
                    }
                }
                _ => None,
            };
            match n {
                Some(n) if (*min..=*max).contains(&n) => Ok(()),
                _ => Err(format!("expected an integer between {min} and {max}, got {}", got(v))),
            }
        }
        (Kind::Flag, Value::Bool(_)) => Ok(()),
        (Kind::Flag, Value::String(s)) if s == "true" || s == "false" => Ok(()),
        (Kind::Flag, _) => Err(format!("expected true or false, got {}", got(v))),
        (Kind::String, Value::String(_)) => Ok(()),
        (Kind::Text | Kind::Secret | Kind::Template, Value::String(s)) if s.trim().is_empty() => {
            Err("must not be empty".to_owned())
        }
        (Kind::Template, Value::String(s)) => match misspelt_variable(s) {
            Some((word, meant)) => Err(format!("unknown template variable '{{{word}}}'; did you mean '{{{meant}}}'?")),
            None => Ok(()),
        },
        (Kind::Text | Kind::Secret, Value::String(_)) => Ok(()),
        (Kind::Text | Kind::Secret | Kind::Template | Kind::String, _) => {
            Err(format!("expected a string, got {}", json_type(v)))
        }
        (Kind::List, Value::String(_)) => Ok(()),
        (Kind::List, Value::Array(items)) if items.iter().all(|i| i.as_str().is_some_and(|s| !s.trim().is_empty())) => {
            Ok(())
        }
        (Kind::List, _) => Err(format!("expected an array of strings or a comma-separated string, got {}", got(v))),
        (Kind::Settings, Value::Object(m)) => {
            match m.iter().find(|(_, x)| !matches!(x, Value::String(_) | Value::Number(_) | Value::Bool(_))) {
                Some((k, x)) => Err(format!("'{k}': expected a string, number or boolean, got {}", json_type(x))),
                None => Ok(()),
            }
        }
        (Kind::Settings, _) => Err(format!("expected an object of names to strings, got {}", json_type(v))),
        (Kind::Choice(words), Value::String(s)) if words.iter().any(|w| w.eq_ignore_ascii_case(s)) => Ok(()),
        (Kind::Choice(words), _) => Err(format!("{} is not one of {}", got(v), words.join(", "))),
    }
}

/// The known key nearest to `key`, if one is near enough to be a typo (ties: the shorter, then
/// the first in byte order — `pgtrickle.relay_config_nearest` decides the same way).
pub fn nearest<'a>(key: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = key.to_ascii_lowercase();
    let limit = (key.chars().count() / 3).max(2);
    known
        .into_iter()
        .map(|k| (strsim::levenshtein(&lower, k), k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, k)| (*d, k.len(), *k))
        .map(|(_, k)| k)
}

/// "; did you mean 'x'?" or nothing.
pub fn did_you_mean<'a>(key: &str, known: impl IntoIterator<Item = &'a str>) -> String {
    nearest(key, known).map(|k| format!("; did you mean '{k}'?")).unwrap_or_default()
}

/// Every key name, alias and flat-prefixed form whose value is a secret, in any backend.
pub static SECRET_KEYS: LazyLock<BTreeSet<String>> = LazyLock::new(|| {
    let mut out = BTreeSet::new();
    for dir in [&CATALOG.forward, &CATALOG.reverse] {
        let sets = std::iter::once((&dir.pipeline, &[][..])).chain(dir.types.iter().map(|t| (&t.keys, t.prefixes)));
        for (set, prefixes) in sets {
            for rule in set.keys.iter().filter(|r| r.kind == Kind::Secret) {
                for name in std::iter::once(&rule.name).chain(&rule.aliases) {
                    out.insert(name.clone());
                    for p in prefixes {
                        out.insert(format!("{p}{name}"));
                    }
                }
            }
        }
    }
    out
});

/// Every key name the catalog knows in any position (to tell a known non-secret key from an
/// unknown one when redacting an old config).
pub static ALL_KEYS: LazyLock<HashSet<String>> = LazyLock::new(|| {
    let mut out: HashSet<String> =
        ["source_type", "source", "sink_type", "sink", "type"].iter().map(|s| (*s).to_owned()).collect();
    for dir in [&CATALOG.forward, &CATALOG.reverse] {
        out.extend(dir.pipeline.names().map(str::to_owned));
        for t in &dir.types {
            for name in t.keys.names() {
                out.insert(name.to_owned());
                out.extend(t.prefixes.iter().map(|p| format!("{p}{name}")));
            }
        }
    }
    out
});

fn rules_json(set: &KeySet) -> Value {
    let mut keys = Map::new();
    for r in &set.keys {
        let mut k = Map::new();
        let (kind, extra) = match &r.kind {
            Kind::Int { min, max } => ("int", json!({"min": min, "max": max})),
            Kind::Flag => ("flag", json!({})),
            Kind::Text => ("text", json!({})),
            Kind::String => ("string", json!({})),
            Kind::Secret => ("secret", json!({})),
            Kind::Template => ("template", json!({})),
            Kind::List => ("list", json!({})),
            Kind::Settings => ("settings", json!({})),
            Kind::Choice(words) => ("choice", json!({"choices": words})),
            Kind::Ignored => ("ignored", json!({})),
        };
        k.insert("kind".into(), kind.into());
        if let Value::Object(extra) = extra {
            k.extend(extra);
        }
        if r.required {
            k.insert("required".into(), true.into());
        }
        k.insert("aliases".into(), json!(r.aliases));
        keys.insert(r.name.clone(), Value::Object(k));
    }
    Value::Object(keys)
}

impl Catalog {
    /// The catalog as stored in `pgtrickle.relay_config_keys` for the SQL-side validation:
    /// `{"forward": {"role", "pipeline": {key: rule}, "types": [{"name", "spellings",
    /// "prefixes", "keys": {key: rule}}]}, "reverse": …, "template_variables": […]}` where a
    /// rule is `{"kind", "min", "max", "choices", "required", "aliases"}`.
    pub fn to_sql_json(&self) -> Value {
        let index = |set: &KeySet| {
            let mut m = Map::new();
            for r in &set.keys {
                for n in std::iter::once(&r.name).chain(&r.aliases) {
                    m.insert(n.clone(), json!(r.name));
                }
            }
            Value::Object(m)
        };
        let dir = |d: &DirectionKeys| {
            json!({
                "role": d.role,
                "known_types": d.known_types(),
                "spellings": d.types.iter().flat_map(|t| t.spellings.iter().copied()).collect::<Vec<_>>(),
                "pipeline": rules_json(&d.pipeline),
                "pipeline_index": index(&d.pipeline),
                "types": d.types.iter().map(|t| json!({
                    "name": t.name,
                    "spellings": t.spellings,
                    "prefixes": t.prefixes,
                    "keys": rules_json(&t.keys),
                    "index": index(&t.keys),
                    "flat_names": t.prefixes.first().map(|p| t.keys.names().map(|n| format!("{p}{n}")).collect::<Vec<_>>()).unwrap_or_default(),
                })).collect::<Vec<_>>(),
            })
        };
        json!({
            "forward": dir(&self.forward),
            "reverse": dir(&self.reverse),
            "template_variables": crate::backend::fields::TEMPLATE_VARIABLES,
        })
    }
}

#[cfg(test)]
#[path = "keys_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "keys_sql_tests.rs"]
mod sql_tests;
