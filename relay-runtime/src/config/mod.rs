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

pub mod redact;
pub mod secrets;

use std::time::Duration;

use serde_json::{Map, Value};

use crate::message::{DedupKeyFormat, Template};

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
    pub message: String,
}

impl ConfigError {
    fn new(pipeline: &str, message: impl Into<String>) -> Self {
        Self { pipeline: pipeline.to_owned(), message: message.into() }
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
    /// Accepts the type strings used by pg_trickle's functions and by the user docs.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "stdout" => SinkKind::Stdout,
            "file" => SinkKind::File,
            "nats" | "jetstream" => SinkKind::Nats,
            "webhook" | "http" => SinkKind::Webhook,
            "kafka" => SinkKind::Kafka,
            "redis" => SinkKind::Redis,
            "sqs" => SinkKind::Sqs,
            "rabbitmq" | "amqp" => SinkKind::Rabbitmq,
            "pg-inbox" | "pg_inbox" | "inbox" => SinkKind::PgInbox,
            _ => return None,
        })
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

    /// Prefixes of the flat config keys that belong to this backend (`nats_url` → `url`).
    fn flat_prefixes(self) -> &'static [&'static str] {
        match self {
            SinkKind::Stdout | SinkKind::File => &["stdout_", "file_"],
            SinkKind::Nats => &["nats_"],
            SinkKind::Webhook => &["webhook_", "http_"],
            SinkKind::Kafka => &["kafka_"],
            SinkKind::Redis => &["redis_"],
            SinkKind::Sqs => &["sqs_"],
            SinkKind::Rabbitmq => &["rabbitmq_", "amqp_"],
            SinkKind::PgInbox => &["pg_inbox_", "inbox_"],
        }
    }
}

pub const KNOWN_SINKS: &str = "stdout, file, nats, webhook (http), kafka, redis, sqs, rabbitmq, pg-inbox";

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

/// The sink part of a forward pipeline: its kind plus its normalised option map.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkSpec {
    pub kind: SinkKind,
    pub options: Map<String, Value>,
}

/// A fully validated forward (outbox → sink) pipeline.
#[derive(Debug, Clone, PartialEq)]
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

/// A reverse (source → inbox) pipeline; its backends land with the reverse-mode issue.
#[derive(Debug, Clone, PartialEq)]
pub struct ReverseSpec {
    pub name: String,
    pub source_type: String,
    pub inbox_table: String,
    pub options: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PipelineSpec {
    Forward(ForwardSpec),
    Reverse(ReverseSpec),
}

const DEFAULT_SUBJECT: &str = "pgtrickle.{stream_table}.{op}";

/// Keys that tune the pipeline rather than its sink, wherever they are written.
const PIPELINE_LEVEL_KEYS: &[&str] = &[
    "batch_size",
    "poll_interval_ms",
    "key_columns",
    "keep_internal_columns",
    "claim_check_page_size",
    "delta_mode",
    "initial_snapshot",
    "dedup_key_format",
];

/// Keys of the flat forward shape that are pipeline-level, not backend options.
const FORWARD_PIPELINE_KEYS: &[&str] = &[
    "stream_table",
    "outbox_table",
    "outbox",
    "source_type",
    "source",
    "sink_type",
    "sink",
    "batch_size",
    "poll_interval_ms",
    "key_columns",
    "keep_internal_columns",
    "claim_check_page_size",
    "group",
    "delta_mode",
    "initial_snapshot",
    "dedup_key_format",
];

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

fn get_str<'a>(
    pipeline: &str,
    obj: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<&'a str>, ConfigError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => {
            Err(ConfigError::new(pipeline, format!("key '{path}': must not be empty")))
        }
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => {
            Err(ConfigError::new(pipeline, format!("key '{path}': expected a string, got {}", json_type(other))))
        }
    }
}

fn get_int(
    pipeline: &str,
    obj: &Map<String, Value>,
    key: &str,
    path: &str,
    min: i64,
    max: i64,
) -> Result<Option<i64>, ConfigError> {
    let v = match obj.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_i64(),
        // Numbers written as strings ("batch_size": "500") are common in hand-written JSON.
        Some(Value::String(s)) => s.trim().parse::<i64>().ok(),
        Some(_) => None,
    };
    match v {
        Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
        _ => Err(ConfigError::new(pipeline, format!("key '{path}': expected an integer between {min} and {max}"))),
    }
}

fn get_bool(pipeline: &str, obj: &Map<String, Value>, key: &str, path: &str) -> Result<Option<bool>, ConfigError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => {
            Err(ConfigError::new(pipeline, format!("key '{path}': expected true or false, got {}", json_type(other))))
        }
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn parse_forward(name: &str, obj: &Map<String, Value>) -> Result<ForwardSpec, ConfigError> {
    let source = match obj.get("source") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(other) => {
            return Err(ConfigError::new(name, format!("key 'source': expected an object, got {}", json_type(other))))
        }
    };
    if let Some(st) = get_str(name, obj, "source_type", "source_type")? {
        if st != "outbox" {
            return Err(ConfigError::new(
                name,
                format!("key 'source_type': a forward pipeline reads an outbox, got '{st}'"),
            ));
        }
    }

    // Where to read: explicit outbox table wins, then the seed's stream_table.
    let outbox = if let Some(o) = get_str(name, &source, "outbox", "source.outbox")? {
        OutboxRef::Outbox(o.to_owned())
    } else if let Some(o) = get_str(name, obj, "outbox_table", "outbox_table")? {
        OutboxRef::Outbox(o.to_owned())
    } else if let Some(o) = get_str(name, obj, "outbox", "outbox")? {
        OutboxRef::Outbox(o.to_owned())
    } else if let Some(st) = get_str(name, obj, "stream_table", "stream_table")? {
        OutboxRef::StreamTable(st.to_owned())
    } else if let Some(st) = get_str(name, &source, "stream_table", "source.stream_table")? {
        OutboxRef::StreamTable(st.to_owned())
    } else {
        return Err(ConfigError::new(
            name,
            "missing key 'stream_table' (or 'source.outbox'): which outbox should this pipeline read?",
        ));
    };
    let group = match get_str(name, &source, "group", "source.group")? {
        Some(g) => Some(g.to_owned()),
        None => get_str(name, obj, "group", "group")?.map(str::to_owned),
    };

    let (sink_obj, sink_path) = match obj.get("sink") {
        None | Some(Value::Null) => (Map::new(), "sink_type"),
        Some(Value::Object(m)) => (m.clone(), "sink.type"),
        Some(other) => {
            return Err(ConfigError::new(name, format!("key 'sink': expected an object, got {}", json_type(other))))
        }
    };
    let type_str = match get_str(name, &sink_obj, "type", "sink.type")? {
        Some(t) => t,
        None => get_str(name, obj, "sink_type", "sink_type")?.ok_or_else(|| {
            ConfigError::new(name, "missing key 'sink_type' (or 'sink.type'): where should messages go?")
        })?,
    };
    let kind = SinkKind::parse(type_str).ok_or_else(|| {
        ConfigError::new(name, format!("key '{sink_path}': unknown sink type '{type_str}' (known: {KNOWN_SINKS})"))
    })?;

    // Options: flat top-level keys first (prefix stripped), then the nested sink object wins.
    let mut options = Map::new();
    for (k, v) in obj {
        if FORWARD_PIPELINE_KEYS.contains(&k.as_str()) {
            continue;
        }
        let key = kind.flat_prefixes().iter().find_map(|p| k.strip_prefix(p)).unwrap_or(k.as_str());
        options.insert(key.to_owned(), v.clone());
    }
    for (k, v) in &sink_obj {
        if k != "type" {
            options.insert(k.clone(), v.clone());
        }
    }
    // `max_inflight` is accepted for `max_in_flight` (messages awaiting the broker's ack).
    if let Some(v) = options.remove("max_inflight") {
        options.entry("max_in_flight").or_insert(v);
    }

    let template_src = match options.get("subject_template").or_else(|| options.get("subject")) {
        None | Some(Value::Null) => DEFAULT_SUBJECT.to_owned(),
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(_) => return Err(ConfigError::new(name, "key 'subject_template': expected a non-empty string")),
    };
    let subject_template =
        Template::parse(&template_src).map_err(|e| ConfigError::new(name, format!("key 'subject_template': {e}")))?;

    // Pipeline-level keys may sit at the top (flat form) or, for pg_trickle's positional form
    // (which only stores `source` and `sink` objects), inside `sink` or `source`.
    let mut pl = Map::new();
    for m in [&sink_obj, &source, obj] {
        for k in PIPELINE_LEVEL_KEYS {
            if let Some(v) = m.get(*k) {
                pl.insert((*k).to_owned(), v.clone());
            }
        }
    }
    for k in PIPELINE_LEVEL_KEYS {
        options.remove(*k);
    }
    let obj = &pl;
    let key_columns = match obj.get("key_columns") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => s.split(',').map(|c| c.trim().to_owned()).filter(|c| !c.is_empty()).collect(),
        Some(Value::Array(items)) => {
            let mut cols = Vec::with_capacity(items.len());
            for item in items {
                match item.as_str() {
                    Some(c) if !c.is_empty() => cols.push(c.to_owned()),
                    _ => return Err(ConfigError::new(name, "key 'key_columns': expected an array of column names")),
                }
            }
            cols
        }
        Some(_) => return Err(ConfigError::new(name, "key 'key_columns': expected an array of column names")),
    };

    let batch_size = get_int(name, obj, "batch_size", "batch_size", 1, 100_000)?.unwrap_or(100);
    let poll_ms = get_int(name, obj, "poll_interval_ms", "poll_interval_ms", 10, 3_600_000)?.unwrap_or(1000);
    let claim_check_page_size =
        get_int(name, obj, "claim_check_page_size", "claim_check_page_size", 1, 1_000_000)?.unwrap_or(1000);
    let keep_internal_columns = get_bool(name, obj, "keep_internal_columns", "keep_internal_columns")?.unwrap_or(false);
    let delta_mode = match get_str(name, obj, "delta_mode", "delta_mode")? {
        None | Some("diff") => DeltaMode::Diff,
        Some("snapshot") => DeltaMode::Snapshot,
        Some(other) => {
            return Err(ConfigError::new(name, format!("key 'delta_mode': '{other}' is not one of diff, snapshot")))
        }
    };
    let initial_snapshot = match get_str(name, obj, "initial_snapshot", "initial_snapshot")? {
        None | Some("emit") => InitialSnapshot::Emit,
        Some("skip") => InitialSnapshot::Skip,
        Some(other) => {
            return Err(ConfigError::new(name, format!("key 'initial_snapshot': '{other}' is not one of emit, skip")))
        }
    };

    let dedup_key_format = match get_str(name, obj, "dedup_key_format", "dedup_key_format")? {
        None => DedupKeyFormat::default(),
        Some(s) => DedupKeyFormat::parse(s).ok_or_else(|| {
            ConfigError::new(name, format!("key 'dedup_key_format': '{s}' is not one of row_uid, legacy"))
        })?,
    };

    Ok(ForwardSpec {
        name: name.to_owned(),
        outbox,
        group,
        sink: SinkSpec { kind, options },
        subject_template,
        batch_size,
        poll_interval: Duration::from_millis(poll_ms as u64),
        key_columns,
        keep_internal_columns,
        claim_check_page_size,
        delta_mode,
        initial_snapshot,
        dedup_key_format,
    })
}

fn parse_reverse(name: &str, obj: &Map<String, Value>) -> Result<ReverseSpec, ConfigError> {
    let source = match obj.get("source") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(ConfigError::new(name, "key 'source': expected an object")),
    };
    let sink = match obj.get("sink") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(ConfigError::new(name, "key 'sink': expected an object")),
    };
    let source_type = match get_str(name, &source, "type", "source.type")? {
        Some(t) => t.to_owned(),
        None => get_str(name, obj, "source_type", "source_type")?
            .ok_or_else(|| ConfigError::new(name, "missing key 'source_type' (or 'source.type')"))?
            .to_owned(),
    };
    let inbox_table = [
        get_str(name, &sink, "inbox", "sink.inbox")?,
        get_str(name, &sink, "inbox_table", "sink.inbox_table")?,
        get_str(name, obj, "inbox_table", "inbox_table")?,
        get_str(name, obj, "inbox", "inbox")?,
    ]
    .into_iter()
    .flatten()
    .next()
    .ok_or_else(|| {
        ConfigError::new(name, "missing key 'inbox_table' (or 'sink.inbox'): which inbox should receive messages?")
    })?
    .to_owned();
    // Flat keys lose their backend prefix (`nats_stream` → `stream`); nested `source` keys win.
    let prefixes = SinkKind::parse(&source_type).map(SinkKind::flat_prefixes).unwrap_or(&[]);
    let mut options = Map::new();
    for (k, v) in obj {
        if !matches!(k.as_str(), "source" | "sink" | "source_type" | "inbox_table" | "inbox") {
            let key = prefixes.iter().find_map(|p| k.strip_prefix(p)).unwrap_or(k.as_str());
            options.insert(key.to_owned(), v.clone());
        }
    }
    for (k, v) in &source {
        if k != "type" {
            options.insert(k.clone(), v.clone());
        }
    }
    Ok(ReverseSpec { name: name.to_owned(), source_type, inbox_table, options })
}

#[cfg(test)]
mod tests;
