//! Typed pipeline specs, parsed from the JSON stored in `pgtrickle.relay_*_config`.
//!
//! Two stored shapes exist and both are first-class (contract §3.4, §4.13):
//! - the **nested** shape written by pg_trickle's positional `set_relay_outbox(...)`:
//!   `{"source_type":"outbox","source":{"outbox":…,"group":…},"sink_type":…,"sink":{"type":…,…}}`;
//! - the **flat** shape of the seed README's `set_relay_outbox(name, config => …)`:
//!   `{"stream_table":…,"sink_type":"nats","nats_url":…,"subject_template":…}`.
//!
//! Flat backend keys are normalised into the backend's options by dropping the backend prefix
//! (`nats_url` → `url`), so every backend reads one option map whatever the shape.
//! Secret references are resolved before parsing ([`secrets`]).

pub mod keys;
pub mod redact;
pub mod schema_doc;
pub mod secrets;

use std::time::Duration;

use serde_json::{Map, Value};

use crate::backend;
use crate::message::envelope::EnvelopeSpec;
use crate::message::{DedupKeyFormat, Template};
use keys::json_type;

/// Which catalog table a pipeline comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// `relay_outbox_config`: outbox → sink.
    Forward,
    /// `relay_inbox_config`: source → inbox.
    Reverse,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Forward => "forward",
            Direction::Reverse => "reverse",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "forward" => Some(Direction::Forward),
            "reverse" => Some(Direction::Reverse),
            _ => None,
        }
    }
}

/// One row of `pgtrickle.list_relay_configs()`.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineRow {
    pub name: String,
    pub direction: Direction,
    pub enabled: bool,
    pub config: Value,
}

/// A pipeline config that cannot be used, with the key at fault.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("pipeline '{pipeline}': {message}")]
pub struct ConfigError {
    pub pipeline: String,
    /// Every problem, joined by "; ".
    pub message: String,
    /// Every problem found, one per key at fault.
    pub problems: Vec<String>,
}

impl ConfigError {
    fn new(pipeline: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        Self { pipeline: pipeline.to_owned(), problems: vec![message.clone()], message }
    }

    fn all(pipeline: &str, problems: Vec<String>) -> Self {
        Self { pipeline: pipeline.to_owned(), message: problems.join("; "), problems }
    }
}

/// The sink backends the relay knows by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkKind {
    Stdout,
    File,
    Nats,
    Webhook,
    Kafka,
    Redis,
    Sqs,
    Rabbitmq,
    PgInbox,
}

impl SinkKind {
    const ALL: [SinkKind; 9] = [
        SinkKind::Stdout,
        SinkKind::File,
        SinkKind::Nats,
        SinkKind::Webhook,
        SinkKind::Kafka,
        SinkKind::Redis,
        SinkKind::Sqs,
        SinkKind::Rabbitmq,
        SinkKind::PgInbox,
    ];

    /// Accepts every spelling of a sink type the key catalog knows (`http`, `jetstream`, …).
    pub fn parse(s: &str) -> Option<Self> {
        let name = keys::CATALOG.forward.type_named(s)?.name;
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SinkKind::Stdout => "stdout",
            SinkKind::File => "file",
            SinkKind::Nats => "nats",
            SinkKind::Webhook => "webhook",
            SinkKind::Kafka => "kafka",
            SinkKind::Redis => "redis",
            SinkKind::Sqs => "sqs",
            SinkKind::Rabbitmq => "rabbitmq",
            SinkKind::PgInbox => "pg-inbox",
        }
    }
}

/// Where a forward pipeline reads from, as written by the user; resolved against the database
/// by [`crate::outbox::OutboxTable::resolve`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxRef {
    /// The seed's `stream_table`: look the outbox up in `pgt_outbox_config`, else `outbox_<name>`.
    StreamTable(String),
    /// pg_trickle's `p_outbox` / an explicit `outbox_table`: an outbox table name, or (as the
    /// docs' examples do) a stream table name; both are tried.
    Outbox(String),
}

/// A sink's typed settings ([`crate::backend`]).
#[derive(Debug, Clone)]
pub enum SinkConfig {
    Stdout(backend::file::StdoutSinkConfig),
    File(backend::file::FileSinkConfig),
    Nats(backend::nats::NatsSinkConfig),
    Webhook(backend::webhook::WebhookSinkConfig),
    Kafka(backend::kafka::KafkaSinkConfig),
    Redis(backend::redis::RedisSinkConfig),
    Sqs(backend::sqs::SqsSinkConfig),
    Rabbitmq(backend::rabbitmq::RabbitmqSinkConfig),
    PgInbox(backend::pg_inbox::PgInboxSinkConfig),
}

/// The sink part of a forward pipeline.
#[derive(Debug, Clone)]
pub struct SinkSpec {
    pub kind: SinkKind,
    pub config: SinkConfig,
}

/// A fully validated forward (outbox → sink) pipeline.
#[derive(Debug, Clone)]
pub struct ForwardSpec {
    pub name: String,
    pub outbox: OutboxRef,
    /// pg_trickle consumer group named in the positional form (`p_group`); informational.
    pub group: Option<String>,
    pub sink: SinkSpec,
    pub subject_template: Template,
    /// Outbox rows read per batch (the upstream `batch_size`, default 100).
    pub batch_size: i64,
    /// Fallback poll interval when no `pgtrickle_outbox_new` notification arrives.
    pub poll_interval: Duration,
    /// Columns identifying a row; a delete+insert of the same key in one delta becomes `update`.
    pub key_columns: Vec<String>,
    /// Keep pg_trickle's internal `__pgt_*` columns in message payloads.
    pub keep_internal_columns: bool,
    /// Claim-check delta rows fetched per page.
    pub claim_check_page_size: i64,
    /// `diff` (default): turn consecutive full snapshots into insert/update/delete events
    /// against the state kept in the catalog; `snapshot`: relay every snapshot row as an insert.
    pub delta_mode: DeltaMode,
    /// With `diff`: whether the first snapshot is relayed (`emit`) or only recorded (`skip`).
    pub initial_snapshot: InitialSnapshot,
    /// `row_uid` (default) or `legacy` (see [`DedupKeyFormat`]).
    pub dedup_key_format: DedupKeyFormat,
    /// What each message is on the wire (the keys `envelope`, `cloudevents_*`, `debezium_*`).
    pub envelope: EnvelopeSpec,
    /// Keys that contradict each other (an envelope key without its envelope, binary CloudEvents
    /// on a target without headers). The database checks each key alone and stores such a
    /// config; the pipeline refuses to start with these messages.
    pub conflicts: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeltaMode {
    Diff,
    Snapshot,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitialSnapshot {
    Emit,
    Skip,
}

/// A source's typed settings ([`crate::backend`]).
#[derive(Debug, Clone)]
pub enum SourceConfig {
    Nats(backend::nats::NatsSourceConfig),
    Webhook(backend::webhook::WebhookSourceConfig),
    Kafka(backend::kafka::KafkaSourceConfig),
    Redis(backend::redis::RedisSourceConfig),
    Sqs(backend::sqs::SqsSourceConfig),
    Rabbitmq(backend::rabbitmq::RabbitmqSourceConfig),
}

/// A fully validated reverse (source → inbox) pipeline.
#[derive(Debug, Clone)]
pub struct ReverseSpec {
    pub name: String,
    /// The source type's canonical name (`nats`, `webhook`, …).
    pub source_type: &'static str,
    pub inbox_table: String,
    /// The inbox and the message → row mapping.
    pub keys: keys::ReverseKeys,
    pub source: SourceConfig,
}

#[derive(Debug, Clone)]
pub enum PipelineSpec {
    Forward(ForwardSpec),
    Reverse(ReverseSpec),
}

const DEFAULT_SUBJECT: &str = "pgtrickle.{stream_table}.{op}";

impl PipelineRow {
    /// Resolves secrets and parses the row into a typed spec.
    pub fn parse(&self) -> Result<PipelineSpec, ConfigError> {
        let mut config = self.config.clone();
        secrets::resolve_secrets(&mut config).map_err(|e| ConfigError::new(&self.name, e.to_string()))?;
        let Value::Object(obj) = config else {
            return Err(ConfigError::new(&self.name, "config must be a JSON object"));
        };
        match self.direction {
            Direction::Forward => parse_forward(&self.name, &obj).map(PipelineSpec::Forward),
            Direction::Reverse => parse_reverse(&self.name, &obj).map(PipelineSpec::Reverse),
        }
    }
}

/// The keys of one config sorted into the pipeline's own and its backend's, each under its
/// primary name, with the path it was written at (for messages) — and every problem found.
#[derive(Default)]
struct Sorted {
    pipeline: Map<String, Value>,
    backend: Map<String, Value>,
    paths: std::collections::HashMap<(bool, String), String>,
    problems: Vec<String>,
    /// Whether a backend key sorted later replaces one sorted before (a pipeline key always does).
    backend_overwrites: bool,
}

impl Sorted {
    fn put(&mut self, backend: bool, key: String, value: Value, path: String) {
        if backend && !self.backend_overwrites && self.backend.contains_key(&key) {
            return;
        }
        self.paths.insert((backend, key.clone()), path);
        if backend {
            self.backend.insert(key, value);
        } else {
            self.pipeline.insert(key, value);
        }
    }

    fn path(&self, backend: bool, key: &str) -> String {
        self.paths.get(&(backend, key.to_owned())).cloned().unwrap_or_else(|| key.to_owned())
    }

    /// Checks every value against its rule and every required backend key's presence.
    fn check(&mut self, dir: &keys::DirectionKeys, ty: &keys::TypeKeys, nested: bool) {
        for (backend, map, set) in [(false, &self.pipeline, &dir.pipeline), (true, &self.backend, &ty.keys)] {
            for (k, v) in map {
                if let Some(rule) = set.get(k) {
                    if let Err(e) = keys::check_value(&rule.kind, v) {
                        self.problems.push(format!("key '{}': {e}", self.path(backend, k)));
                    }
                }
            }
        }
        for rule in ty.keys.keys.iter().filter(|r| r.required) {
            if self.backend.get(&rule.name).is_none_or(Value::is_null) {
                let written = match (nested, ty.prefixes.first()) {
                    (true, _) | (false, None) => format!("{}.{}", dir.role, rule.name),
                    (false, Some(p)) => format!("{p}{}", rule.name),
                };
                self.problems.push(format!("missing key '{written}' for a {} {}", ty.name, dir.role));
            }
        }
    }
}

/// An object-valued structural key (`source`, `sink`), or an empty one.
fn object_at(obj: &Map<String, Value>, key: &str, problems: &mut Vec<String>) -> Map<String, Value> {
    match obj.get(key) {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(other) => {
            problems.push(format!("key '{key}': expected an object, got {}", json_type(other)));
            Map::new()
        }
    }
}

/// A string-valued structural key (`sink_type`, `source.type`).
fn type_at<'a>(obj: &'a Map<String, Value>, key: &str, path: &str, problems: &mut Vec<String>) -> Option<&'a str> {
    match obj.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s),
        Some(Value::String(_)) => {
            problems.push(format!("key '{path}': must not be empty"));
            None
        }
        Some(other) => {
            problems.push(format!("key '{path}': expected a string, got {}", json_type(other)));
            None
        }
    }
}

const STRUCTURAL: &[&str] = &["source_type", "source", "sink_type", "sink"];

/// The backend type a config names, or the problem.
fn backend_type<'c>(
    dir: &'c keys::DirectionKeys,
    written: Option<(&str, &str)>,
    problems: &mut Vec<String>,
    missing: &str,
) -> Option<&'c keys::TypeKeys> {
    let Some((path, t)) = written else {
        problems.push(format!("{missing} (known: {})", dir.known_types()));
        return None;
    };
    let found = dir.type_named(t);
    if found.is_none() {
        let spellings = dir.types.iter().flat_map(|t| t.spellings.iter().copied());
        problems.push(format!(
            "key '{path}': unknown {} type '{t}' (known: {}){}",
            dir.role,
            dir.known_types(),
            keys::did_you_mean(t, spellings)
        ));
    }
    found
}

/// Sorts the top-level keys of `obj` (a flat config) into pipeline and backend keys.
fn sort_top(sorted: &mut Sorted, dir: &keys::DirectionKeys, ty: &keys::TypeKeys, obj: &Map<String, Value>) {
    for (k, v) in obj {
        if STRUCTURAL.contains(&k.as_str()) {
            continue;
        }
        if let Some(rule) = dir.pipeline.get(k) {
            sorted.put(false, rule.name.clone(), v.clone(), k.clone());
            continue;
        }
        let bare = ty.prefixes.iter().find_map(|p| k.strip_prefix(p)).unwrap_or(k);
        match ty.keys.get(bare) {
            Some(rule) => sorted.put(true, rule.name.clone(), v.clone(), k.clone()),
            None => {
                let prefixed: Vec<String> = match ty.prefixes.first() {
                    Some(p) => ty.keys.names().map(|n| format!("{p}{n}")).collect(),
                    None => Vec::new(),
                };
                let known = dir.pipeline.names().chain(ty.keys.names()).chain(prefixed.iter().map(String::as_str));
                sorted.problems.push(format!(
                    "unknown key '{k}' for a {} {}{}",
                    ty.name,
                    dir.role,
                    keys::did_you_mean(k, known)
                ));
            }
        }
    }
}

/// Sorts the keys of a nested object (`sink`, `source`) written at `at`: pipeline keys, else
/// backend keys when `backend_here`, else unknown.
fn sort_nested(
    sorted: &mut Sorted,
    dir: &keys::DirectionKeys,
    ty: &keys::TypeKeys,
    at: &str,
    nested: &Map<String, Value>,
    backend_here: bool,
) {
    for (k, v) in nested {
        if k == "type" && backend_here {
            continue;
        }
        let path = format!("{at}.{k}");
        if let Some(rule) = dir.pipeline.get(k) {
            sorted.put(false, rule.name.clone(), v.clone(), path);
        } else if let Some(rule) = ty.keys.get(k).filter(|_| backend_here) {
            sorted.put(true, rule.name.clone(), v.clone(), path);
        } else {
            let whose = if backend_here {
                format!("a {} {}", ty.name, dir.role)
            } else {
                format!("'{at}' of a {} pipeline", if dir.role == "sink" { "forward" } else { "reverse" })
            };
            let backend_names = ty.keys.names().filter(|_| backend_here);
            let known = dir.pipeline.names().chain(backend_names);
            sorted.problems.push(format!("unknown key '{path}' for {whose}{}", keys::did_you_mean(k, known)));
        }
    }
}

/// Deserialises a checked key map into its typed struct (the checks above make this succeed;
/// a failure here is reported like any other problem).
fn typed<T: serde::de::DeserializeOwned>(pipeline: &str, map: Map<String, Value>) -> Result<T, ConfigError> {
    serde_json::from_value(Value::Object(map)).map_err(|e| ConfigError::new(pipeline, e.to_string()))
}

fn parse_forward(name: &str, obj: &Map<String, Value>) -> Result<ForwardSpec, ConfigError> {
    let dir = &keys::CATALOG.forward;
    let mut problems = Vec::new();
    let source = object_at(obj, "source", &mut problems);
    let sink_obj = object_at(obj, "sink", &mut problems);
    if let Some(st) = type_at(obj, "source_type", "source_type", &mut problems) {
        if st != "outbox" {
            problems.push(format!("key 'source_type': a forward pipeline reads an outbox, got '{st}'"));
        }
    }
    let written = match type_at(&sink_obj, "type", "sink.type", &mut problems) {
        Some(t) => Some(("sink.type", t)),
        None => type_at(obj, "sink_type", "sink_type", &mut problems).map(|t| ("sink_type", t)),
    };
    let ty = backend_type(
        dir,
        written,
        &mut problems,
        "missing key 'sink_type' (or 'sink.type'): where should messages go?",
    );
    let Some(ty) = ty else {
        return Err(ConfigError::all(name, problems));
    };
    let mut sorted = Sorted { problems, backend_overwrites: true, ..Sorted::default() };
    // A pipeline key at the top wins over one in `source` or `sink`; a backend key in `sink`
    // wins over its flat form at the top.
    sort_nested(&mut sorted, dir, ty, "source", &source, false);
    sort_nested(&mut sorted, dir, ty, "sink", &sink_obj, true);
    sorted.backend_overwrites = false;
    sort_top(&mut sorted, dir, ty, obj);
    sorted.check(dir, ty, obj.contains_key("sink"));
    let set = |k: &str| sorted.pipeline.get(k).is_some_and(|v| !v.is_null());
    if !set("outbox_table") && !set("stream_table") {
        sorted
            .problems
            .push("missing key 'stream_table' (or 'source.outbox'): which outbox should this pipeline read?".into());
    }
    if !sorted.problems.is_empty() {
        return Err(ConfigError::all(name, sorted.problems));
    }
    let k: keys::ForwardKeys = typed(name, sorted.pipeline)?;
    let kind = SinkKind::parse(ty.name).ok_or_else(|| ConfigError::new(name, format!("sink '{}'", ty.name)))?;
    let b = sorted.backend;
    let config = match kind {
        SinkKind::Stdout => SinkConfig::Stdout(typed(name, b)?),
        SinkKind::File => SinkConfig::File(typed(name, b)?),
        SinkKind::Nats => SinkConfig::Nats(typed(name, b)?),
        SinkKind::Webhook => SinkConfig::Webhook(typed(name, b)?),
        SinkKind::Kafka => SinkConfig::Kafka(typed(name, b)?),
        SinkKind::Redis => SinkConfig::Redis(typed(name, b)?),
        SinkKind::Sqs => SinkConfig::Sqs(typed(name, b)?),
        SinkKind::Rabbitmq => SinkConfig::Rabbitmq(typed(name, b)?),
        SinkKind::PgInbox => SinkConfig::PgInbox(typed(name, b)?),
    };
    let outbox = match (&k.outbox_table, &k.stream_table) {
        (Some(o), _) => OutboxRef::Outbox(o.0.clone()),
        (None, Some(st)) => OutboxRef::StreamTable(st.0.clone()),
        (None, None) => return Err(ConfigError::new(name, "missing key 'stream_table'")),
    };
    let (envelope, conflicts) = envelope_spec(&k, &config);
    let subject_template = match &k.subject_template {
        Some(t) => t.0.clone(),
        None => Template::parse(DEFAULT_SUBJECT).map_err(|e| ConfigError::new(name, e.to_string()))?,
    };
    Ok(ForwardSpec {
        name: name.to_owned(),
        outbox,
        group: k.group.map(|g| g.0),
        sink: SinkSpec { kind, config },
        subject_template,
        batch_size: k.batch_size.map_or(100, |n| n.get() as i64),
        poll_interval: Duration::from_millis(k.poll_interval_ms.map_or(1000, |n| n.get())),
        key_columns: k.key_columns.map(|l| l.0).unwrap_or_default(),
        keep_internal_columns: k.keep_internal_columns.is_some_and(|f| f.0),
        claim_check_page_size: k.claim_check_page_size.map_or(1000, |n| n.get() as i64),
        delta_mode: match k.delta_mode.map(|c| c.0) {
            None | Some(keys::DeltaModeChoice::Diff) => DeltaMode::Diff,
            Some(keys::DeltaModeChoice::Snapshot) => DeltaMode::Snapshot,
        },
        initial_snapshot: match k.initial_snapshot.map(|c| c.0) {
            None | Some(keys::InitialSnapshotChoice::Emit) => InitialSnapshot::Emit,
            Some(keys::InitialSnapshotChoice::Skip) => InitialSnapshot::Skip,
        },
        dedup_key_format: match k.dedup_key_format.map(|c| c.0) {
            None | Some(keys::DedupKeyFormatChoice::RowUid) => DedupKeyFormat::RowUid,
            Some(keys::DedupKeyFormatChoice::Legacy) => DedupKeyFormat::Legacy,
        },
        envelope,
        conflicts,
    })
}

/// The envelope keys, and what contradicts among them and the sink (each key's own type and
/// range were checked with the catalog).
fn envelope_spec(k: &keys::ForwardKeys, sink: &SinkConfig) -> (EnvelopeSpec, Vec<String>) {
    use keys::{CloudEventsModeChoice as Mode, EnvelopeChoice as E};
    let mut problems = Vec::new();
    let chosen = k.envelope.map_or(E::Native, |c| c.0);
    let mut only_with = |set: bool, key: &str, envelope: E| {
        if set && chosen != envelope {
            problems.push(format!(
                "key '{key}' applies only with \"envelope\": \"{}\" (this pipeline's envelope is '{}')",
                envelope.as_str(),
                chosen.as_str()
            ));
        }
    };
    only_with(k.cloudevents_mode.is_some(), "cloudevents_mode", E::CloudEvents);
    only_with(k.cloudevents_source.is_some(), "cloudevents_source", E::CloudEvents);
    only_with(k.cloudevents_type.is_some(), "cloudevents_type", E::CloudEvents);
    only_with(k.debezium_name.is_some(), "debezium_name", E::Debezium);
    only_with(k.debezium_schemas.is_some(), "debezium_schemas", E::Debezium);
    if let SinkConfig::Kafka(c) = sink {
        only_with(c.tombstones.is_some(), "tombstones", E::Debezium);
    }
    let binary = k.cloudevents_mode.is_some_and(|m| m.0 == Mode::Binary);
    if binary && chosen == E::CloudEvents {
        let headerless = match sink {
            SinkConfig::Stdout(_) => Some("stdout"),
            SinkConfig::File(_) => Some("file"),
            SinkConfig::Redis(_) => Some("redis"),
            SinkConfig::Sqs(_) => Some("sqs"),
            SinkConfig::PgInbox(_) => Some("pg-inbox"),
            _ => None,
        };
        if let Some(sink) = headerless {
            problems.push(format!(
                "key 'cloudevents_mode': 'binary' needs a target with message headers (nats, kafka, webhook, rabbitmq); the {sink} sink writes structured events only"
            ));
        }
        if let SinkConfig::Webhook(c) = sink {
            if c.batch_mode.is_some_and(|f| f.0) {
                problems.push("key 'cloudevents_mode': 'binary' sends one event per request; it cannot be combined with \"batch_mode\": true".into());
            }
        }
    }
    let spec = match chosen {
        E::Native => EnvelopeSpec::Native,
        E::CloudEvents => EnvelopeSpec::CloudEvents {
            binary,
            source: k.cloudevents_source.as_ref().map(|t| t.0.clone()),
            event_type: k.cloudevents_type.as_ref().map(|t| t.0.clone()),
        },
        E::Debezium => EnvelopeSpec::Debezium {
            name: k.debezium_name.as_ref().map(|t| t.0.clone()),
            schemas: k.debezium_schemas.is_some_and(|f| f.0),
        },
    };
    (spec, problems)
}

fn parse_reverse(name: &str, obj: &Map<String, Value>) -> Result<ReverseSpec, ConfigError> {
    let dir = &keys::CATALOG.reverse;
    let mut problems = Vec::new();
    let source = object_at(obj, "source", &mut problems);
    let mut sink = object_at(obj, "sink", &mut problems);
    let sink_types = [
        ("sink_type", type_at(obj, "sink_type", "sink_type", &mut problems)),
        ("sink.type", type_at(&sink, "type", "sink.type", &mut problems)),
    ];
    for (path, st) in sink_types {
        if let Some(st) = st.filter(|st| keys::CATALOG.forward.type_named(st).is_none_or(|t| t.name != "pg-inbox")) {
            problems.push(format!("key '{path}': a reverse pipeline writes into an inbox ('pg-inbox'), got '{st}'"));
        }
    }
    sink.remove("type");
    let written = match type_at(&source, "type", "source.type", &mut problems) {
        Some(t) => Some(("source.type", t)),
        None => type_at(obj, "source_type", "source_type", &mut problems).map(|t| ("source_type", t)),
    };
    let ty = backend_type(
        dir,
        written,
        &mut problems,
        "missing key 'source_type' (or 'source.type'): where do messages come from?",
    );
    let Some(ty) = ty else {
        return Err(ConfigError::all(name, problems));
    };
    let mut sorted = Sorted { problems, backend_overwrites: true, ..Sorted::default() };
    // Later wins: the flat top level, then `source`, then `sink` (where pg_trickle's positional
    // form keeps the inbox).
    sort_top(&mut sorted, dir, ty, obj);
    sort_nested(&mut sorted, dir, ty, "source", &source, true);
    sort_nested(&mut sorted, dir, ty, "sink", &sink, false);
    sorted.check(dir, ty, obj.contains_key("source"));
    if sorted.pipeline.get("inbox_table").is_none_or(Value::is_null) {
        sorted
            .problems
            .push("missing key 'inbox_table' (or 'sink.inbox'): which inbox should receive messages?".into());
    }
    if !sorted.problems.is_empty() {
        return Err(ConfigError::all(name, sorted.problems));
    }
    let k: keys::ReverseKeys = typed(name, sorted.pipeline)?;
    let b = sorted.backend;
    let source = match ty.name {
        "nats" => SourceConfig::Nats(typed(name, b)?),
        "webhook" => SourceConfig::Webhook(typed(name, b)?),
        "kafka" => SourceConfig::Kafka(typed(name, b)?),
        "redis" => SourceConfig::Redis(typed(name, b)?),
        "sqs" => SourceConfig::Sqs(typed(name, b)?),
        "rabbitmq" => SourceConfig::Rabbitmq(typed(name, b)?),
        other => return Err(ConfigError::new(name, format!("source type '{other}' has no config"))),
    };
    let inbox_table = k.inbox_table.as_ref().map(|t| t.0.clone()).unwrap_or_default();
    Ok(ReverseSpec { name: name.to_owned(), source_type: ty.name, inbox_table, keys: k, source })
}

#[cfg(test)]
mod docs_tests;
#[cfg(test)]
mod tests;
