//! The pipeline mirror: one task per RelayGroup, connected to the group's database, keeps one
//! RelayPipeline per SQL pipeline (created, updated, deleted from `list_relay_configs()` on
//! `LISTEN pgtrickle_relay_config` plus a periodic resync), reverts edits of mirrored specs with
//! a Warning Event, and writes the relay's live status back to each RelayPipeline.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use pgtrickle_relay_crds::{
    Phase, PipelineDirection, RelayGroup, RelayPipeline, RelayPipelineSpec, RelayPipelineStatus,
    ANNOTATION_PIPELINE_NAME, LABEL_DIRECTION, LABEL_RELAY_GROUP,
};
use relay_runtime::catalog::status::StatusRow;
use relay_runtime::catalog::{self, redact_url};
use relay_runtime::config::{redact::redact_config, Direction, PipelineRow};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::naming::pipeline_object_name;
use crate::status::pipeline_status;

pub const FIELD_MANAGER: &str = "pgtrickle-relay-operator";
/// Annotation holding the hash of the spec the operator last applied; a spec that no longer
/// matches it was edited by someone else.
pub const ANNOTATION_SPEC_HASH: &str = "relay.pgtrickle.io/spec-hash";

/// How often the mirror re-reads everything and writes status.
#[derive(Debug, Clone, Copy)]
pub struct MirrorTiming {
    pub resync: Duration,
    pub status: Duration,
}

/// What the mirror knows about its group, read by the RelayGroup controller for the group status.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MirrorSummary {
    pub pipelines: i32,
    pub enabled: i32,
    /// Owner worker id → pipelines it owns.
    pub owners: BTreeMap<String, i32>,
    pub last_sync: Option<Timestamp>,
    /// Why the last sync failed (secrets redacted); None when it succeeded.
    pub error: Option<String>,
    /// Pipelines in phase Degraded or Failed.
    pub unhealthy: Vec<String>,
}

/// A running mirror task.
pub struct MirrorHandle {
    pub cancel: CancellationToken,
    /// Identifies what the task was started with (URL hash + group id); a change restarts it.
    pub fingerprint: String,
    pub summary: Arc<Mutex<MirrorSummary>>,
}

impl Drop for MirrorHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Where the mirror lives and whom it tells.
#[derive(Clone)]
pub struct MirrorEnv {
    pub client: kube::Client,
    pub recorder: Arc<Recorder>,
    pub metrics: Arc<Metrics>,
    pub timing: MirrorTiming,
    /// Asks the RelayGroup controller to reconcile the group (its status shows the summary).
    pub group_changed: mpsc::UnboundedSender<ObjectRef<RelayGroup>>,
}

pub fn fingerprint(url: &str, group_id: &str) -> String {
    hex::encode(Sha256::digest(format!("{group_id}\n{url}").as_bytes()))
}

/// Starts the mirror task of `group`, reading pipelines from `url`.
pub fn spawn(env: MirrorEnv, group: &RelayGroup, group_id: String, url: String) -> MirrorHandle {
    let cancel = CancellationToken::new();
    let summary = Arc::new(Mutex::new(MirrorSummary::default()));
    let handle =
        MirrorHandle { cancel: cancel.clone(), fingerprint: fingerprint(&url, &group_id), summary: summary.clone() };
    let mirror = Mirror {
        api: Api::namespaced(env.client.clone(), &group.namespace().unwrap_or_default()),
        group_name: group.name_any(),
        group_ref: ObjectRef::from_obj(group),
        owner: group.controller_owner_ref(&()),
        group_id,
        env,
        summary,
        known: HashMap::new(),
    };
    tokio::spawn(mirror.run(url, cancel));
    handle
}

/// One mirrored pipeline as last written.
struct Known {
    direction: Direction,
    sql_name: String,
    enabled: bool,
    generation: Option<i64>,
    status: Option<RelayPipelineStatus>,
    object: RelayPipeline,
}

struct Mirror {
    api: Api<RelayPipeline>,
    group_name: String,
    group_ref: ObjectRef<RelayGroup>,
    owner: Option<OwnerReference>,
    group_id: String,
    env: MirrorEnv,
    summary: Arc<Mutex<MirrorSummary>>,
    known: HashMap<String, Known>,
}

#[derive(Debug, thiserror::Error)]
enum SyncError {
    #[error("reading the database: {0}")]
    Db(String),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

impl Mirror {
    async fn run(mut self, url: String, cancel: CancellationToken) {
        let selector = format!("{LABEL_RELAY_GROUP}={}", self.group_name);
        let mut edits = watcher(self.api.clone(), watcher::Config::default().labels(&selector)).boxed();
        let mut delay = Duration::from_millis(200);
        let (tx, mut notes) = mpsc::unbounded_channel();
        loop {
            let conn = tokio::select! {
                () = cancel.cancelled() => return,
                c = catalog::connect(&url, "pgtrickle-relay-operator", Some(tx.clone())) => c,
            };
            let conn = match conn {
                Ok(c) => c,
                Err(e) => {
                    let msg = format!("cannot connect to PostgreSQL ({}): {e}", redact_url(&url));
                    self.sync_failed(msg).await;
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(relay_runtime::backoff::jitter(delay)) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(30));
                    continue;
                }
            };
            if let Err(e) = conn.client.batch_execute("LISTEN pgtrickle_relay_config").await {
                self.sync_failed(format!("LISTEN pgtrickle_relay_config failed: {}", catalog::connect::error_text(&e)))
                    .await;
                continue;
            }
            delay = Duration::from_millis(200);
            info!(relay_group = %self.group_name, "pipeline mirror connected");
            let mut resync = tokio::time::interval(self.env.timing.resync);
            let mut status_tick = tokio::time::interval(self.env.timing.status);
            status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = conn.closed.cancelled() => {
                        self.sync_failed("connection to PostgreSQL lost; reconnecting".to_owned()).await;
                        break;
                    }
                    Some(_) = notes.recv() => {
                        while notes.try_recv().is_ok() {}
                        self.sync(&conn.client).await;
                    }
                    _ = resync.tick() => self.sync(&conn.client).await,
                    Some(ev) = edits.next() => {
                        if self.needs_sync(ev) {
                            self.sync(&conn.client).await;
                        }
                    }
                    _ = status_tick.tick() => self.write_status(&conn.client).await,
                }
            }
        }
    }

    /// A watch event that calls for a sync: a mirrored object deleted or edited by someone else.
    fn needs_sync(&self, ev: Result<watcher::Event<RelayPipeline>, watcher::Error>) -> bool {
        match ev {
            Ok(watcher::Event::Delete(obj)) => self.known.contains_key(&obj.name_any()),
            Ok(watcher::Event::Apply(obj)) => {
                let stamped = obj.annotations().get(ANNOTATION_SPEC_HASH).cloned();
                stamped.as_deref() != Some(spec_hash(&obj.spec).as_str())
            }
            Ok(_) => false,
            Err(e) => {
                debug!(relay_group = %self.group_name, "RelayPipeline watch: {e}");
                false
            }
        }
    }

    async fn sync(&mut self, db: &tokio_postgres::Client) {
        match self.try_sync(db).await {
            Ok(()) => {
                self.env.metrics.mirror_syncs.with_label_values(&[&self.group_name, "ok"]).inc();
                // The group status shows counts and errors; a new sync time alone is not a change.
                let changed = match self.summary.lock() {
                    Ok(mut s) => {
                        let before = (s.pipelines, s.enabled, s.error.take(), s.last_sync.is_some());
                        s.pipelines = self.known.len() as i32;
                        s.enabled = self.known.values().filter(|k| k.enabled).count() as i32;
                        s.last_sync = Some(Timestamp::now());
                        before != (s.pipelines, s.enabled, None, true)
                    }
                    Err(_) => false,
                };
                self.env.metrics.mirrored_pipelines.with_label_values(&[&self.group_name]).set(self.known.len() as i64);
                if changed {
                    let _ = self.env.group_changed.send(self.group_ref.clone());
                }
            }
            Err(e) => self.sync_failed(e.to_string()).await,
        }
    }

    async fn sync_failed(&self, message: String) {
        warn!(relay_group = %self.group_name, "pipeline mirror: {message}");
        self.env.metrics.mirror_syncs.with_label_values(&[&self.group_name, "error"]).inc();
        let changed = match self.summary.lock() {
            Ok(mut s) => {
                let changed = s.error.as_deref() != Some(message.as_str());
                s.error = Some(message);
                changed
            }
            Err(_) => false,
        };
        if changed {
            let _ = self.env.group_changed.send(self.group_ref.clone());
        }
    }

    async fn try_sync(&mut self, db: &tokio_postgres::Client) -> Result<(), SyncError> {
        let rows = catalog::pipelines::list(db).await.map_err(|e| SyncError::Db(catalog::connect::error_text(&e)))?;
        let selector = format!("{LABEL_RELAY_GROUP}={}", self.group_name);
        let existing = self.api.list(&ListParams::default().labels(&selector)).await?;
        let mut existing: HashMap<String, RelayPipeline> =
            existing.items.into_iter().map(|o| (o.name_any(), o)).collect();
        let mut known = HashMap::new();
        for row in &rows {
            let desired = desired_pipeline(&self.group_name, self.owner.clone(), row);
            let name = desired.name_any();
            let current = existing.remove(&name);
            let up_to_date = current.as_ref().is_some_and(|c| same_mirror(c, &desired));
            let object = if up_to_date {
                current.clone().unwrap_or(desired)
            } else {
                let applied = self.apply(&name, &desired).await?;
                self.announce(current.as_ref(), &applied, row).await;
                applied
            };
            let previous = self.known.remove(&name);
            known.insert(
                name,
                Known {
                    direction: row.direction,
                    sql_name: row.name.clone(),
                    enabled: row.enabled,
                    generation: object.metadata.generation,
                    status: previous.and_then(|p| p.status).or_else(|| object.status.clone()),
                    object,
                },
            );
        }
        for (name, gone) in existing {
            match self.api.delete(&name, &DeleteParams::default()).await {
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
                Ok(_) => {}
            }
            let sql_name = gone.spec.pipeline_name.clone();
            info!(relay_group = %self.group_name, pipeline = %sql_name, "RelayPipeline {name} deleted: the SQL pipeline is gone");
            self.publish_on_group(
                EventType::Normal,
                "PipelineDeleted",
                format!("{name}: pipeline '{sql_name}' was deleted in SQL"),
            )
            .await;
        }
        self.known = known;
        Ok(())
    }

    async fn apply(&self, name: &str, desired: &RelayPipeline) -> Result<RelayPipeline, kube::Error> {
        let params = PatchParams::apply(FIELD_MANAGER).force();
        self.api.patch(name, &params, &Patch::Apply(desired)).await
    }

    /// Events for a created, changed or reverted mirror.
    async fn announce(&self, before: Option<&RelayPipeline>, after: &RelayPipeline, row: &PipelineRow) {
        let (type_, reason, note) = match before {
            None => (EventType::Normal, "Mirrored", format!("mirrors SQL pipeline '{}' ({})", row.name, row.direction.as_str())),
            Some(b) if b.annotations().get(ANNOTATION_SPEC_HASH).map(String::as_str) != Some(spec_hash(&b.spec).as_str()) => (
                EventType::Warning,
                "SpecReverted",
                format!(
                    "the spec was edited, but SQL is the source of truth: reverted to pgtrickle.get_relay_config('{}'); change pipelines with set_relay_outbox/set_relay_inbox, enable_relay, disable_relay or delete_relay",
                    row.name
                ),
            ),
            Some(_) => (EventType::Normal, "Updated", format!("SQL pipeline '{}' changed", row.name)),
        };
        info!(relay_group = %self.group_name, pipeline = %row.name, "{reason}: {note}");
        self.publish(after, type_, reason, note).await;
    }

    async fn publish(&self, obj: &RelayPipeline, type_: EventType, reason: &str, note: String) {
        self.publish_on(&obj.object_ref(&()), type_, reason, note).await;
    }

    async fn publish_on_group(&self, type_: EventType, reason: &str, note: String) {
        let reference = k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some(RelayGroup::api_version(&()).into_owned()),
            kind: Some("RelayGroup".into()),
            name: Some(self.group_name.clone()),
            namespace: self.group_ref.namespace.clone(),
            uid: self.owner.as_ref().map(|o| o.uid.clone()),
            ..Default::default()
        };
        self.publish_on(&reference, type_, reason, note).await;
    }

    async fn publish_on(
        &self,
        reference: &k8s_openapi::api::core::v1::ObjectReference,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let ev = KubeEvent {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: "Mirror".to_owned(),
            secondary: None,
        };
        if let Err(e) = self.env.recorder.publish(&ev, reference).await {
            debug!("cannot publish event: {e}");
        }
    }

    /// Writes each RelayPipeline's status from the relay's status table, where it changed.
    async fn write_status(&mut self, db: &tokio_postgres::Client) {
        if self.known.is_empty() {
            return;
        }
        let rows = match catalog::status::read(db, &self.group_id).await {
            Ok(r) => r,
            Err(e) => {
                debug!(relay_group = %self.group_name, "status read failed: {}", catalog::connect::error_text(&e));
                return;
            }
        };
        let by_key: HashMap<(Direction, &str), &StatusRow> =
            rows.iter().map(|r| ((r.direction, r.name.as_str()), r)).collect();
        let now = Timestamp::now();
        let mut owners = BTreeMap::new();
        let mut unhealthy = Vec::new();
        let names: Vec<String> = self.known.keys().cloned().collect();
        for name in names {
            let Some(k) = self.known.get(&name) else { continue };
            let row = by_key.get(&(k.direction, k.sql_name.as_str())).copied();
            let new = pipeline_status(k.enabled, row, k.generation, k.status.as_ref(), now);
            if let Some(o) = &new.owner {
                *owners.entry(o.clone()).or_insert(0) += 1;
            }
            if matches!(new.phase, Some(Phase::Degraded | Phase::Failed)) {
                unhealthy.push(k.sql_name.clone());
            }
            if k.status.as_ref() == Some(&new) {
                continue;
            }
            let patch = json!({ "status": status_patch(k.status.as_ref(), &new) });
            match self.api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => {
                    let old_phase = k.status.as_ref().and_then(|s| s.phase);
                    let object = k.object.clone();
                    if old_phase != new.phase {
                        self.phase_event(&object, old_phase, &new).await;
                    }
                    if let Some(k) = self.known.get_mut(&name) {
                        k.status = Some(new);
                    }
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {} // recreated by the next sync
                Err(e) => debug!(relay_group = %self.group_name, "status patch of {name} failed: {e}"),
            }
        }
        let changed = match self.summary.lock() {
            Ok(mut s) => {
                let changed = s.owners != owners || s.unhealthy != unhealthy;
                s.owners = owners;
                s.unhealthy = unhealthy;
                changed
            }
            Err(_) => false,
        };
        if changed {
            let _ = self.env.group_changed.send(self.group_ref.clone());
        }
    }

    async fn phase_event(&self, obj: &RelayPipeline, old: Option<Phase>, new: &RelayPipelineStatus) {
        let Some(phase) = new.phase else { return };
        let type_ =
            if matches!(phase, Phase::Degraded | Phase::Failed) { EventType::Warning } else { EventType::Normal };
        let from = old.map_or("(none)", Phase::as_str);
        let detail = match (phase, &new.owner_pod, &new.last_error) {
            (Phase::Degraded | Phase::Failed, _, Some(err)) => format!(": {err}"),
            (Phase::Running, Some(pod), _) => format!(" on {pod}"),
            _ => String::new(),
        };
        self.publish(obj, type_, phase.as_str(), format!("phase {from} → {}{detail}", phase.as_str())).await;
    }
}

/// The RelayPipeline that mirrors one SQL pipeline.
pub fn desired_pipeline(group_name: &str, owner: Option<OwnerReference>, row: &PipelineRow) -> RelayPipeline {
    let direction = match row.direction {
        Direction::Forward => PipelineDirection::Forward,
        Direction::Reverse => PipelineDirection::Reverse,
    };
    let (source, sink) = describe(row);
    let spec = RelayPipelineSpec {
        relay_group: group_name.to_owned(),
        pipeline_name: row.name.clone(),
        direction,
        enabled: row.enabled,
        source,
        sink,
        config: redact_config(&row.config),
    };
    let name = pipeline_object_name(group_name, direction, &row.name);
    RelayPipeline {
        metadata: ObjectMeta {
            name: Some(name),
            labels: Some(BTreeMap::from([
                (LABEL_RELAY_GROUP.to_owned(), group_name.to_owned()),
                (LABEL_DIRECTION.to_owned(), direction.as_str().to_owned()),
                ("app.kubernetes.io/managed-by".to_owned(), "pgtrickle-relay-operator".to_owned()),
            ])),
            annotations: Some(BTreeMap::from([
                (ANNOTATION_PIPELINE_NAME.to_owned(), row.name.clone()),
                (ANNOTATION_SPEC_HASH.to_owned(), spec_hash(&spec)),
            ])),
            owner_references: owner.map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec,
        status: None,
    }
}

/// Whether `current` already is the mirror `desired` describes (spec, our labels and annotations).
fn same_mirror(current: &RelayPipeline, desired: &RelayPipeline) -> bool {
    let contains = |have: &BTreeMap<String, String>, want: &Option<BTreeMap<String, String>>| {
        want.iter().flatten().all(|(k, v)| have.get(k) == Some(v))
    };
    current.spec == desired.spec
        && contains(current.labels(), &desired.metadata.labels)
        && contains(current.annotations(), &desired.metadata.annotations)
        && current.metadata.owner_references == desired.metadata.owner_references
}

/// `(source, sink)` as shown in `kubectl get relaypipelines`, read from the config as written
/// (secret references stay unresolved: the operator does not need the relay's secrets).
pub fn describe(row: &PipelineRow) -> (String, String) {
    let c = &row.config;
    let text = |v: &Value| v.as_str().filter(|s| !s.trim().is_empty()).map(str::to_owned);
    let pick = |paths: &[&[&str]]| {
        paths.iter().find_map(|path| {
            let mut v = c;
            for key in *path {
                v = v.get(key)?;
            }
            text(v)
        })
    };
    match row.direction {
        Direction::Forward => {
            let outbox = pick(&[&["stream_table"], &["outbox_table"], &["outbox"], &["source", "outbox"]])
                .unwrap_or_else(|| "?".to_owned());
            let sink = pick(&[&["sink_type"], &["sink", "type"]]).unwrap_or_else(|| "?".to_owned());
            (format!("outbox:{outbox}"), sink)
        }
        Direction::Reverse => {
            let source = pick(&[&["source", "type"], &["source_type"]]).unwrap_or_else(|| "?".to_owned());
            let inbox = pick(&[&["sink", "inbox"], &["sink", "inbox_table"], &["inbox_table"], &["inbox"]])
                .unwrap_or_else(|| "?".to_owned());
            (source, format!("inbox:{inbox}"))
        }
    }
}

/// Hash of a spec, independent of key order (the API server may reorder object keys).
pub fn spec_hash(spec: &RelayPipelineSpec) -> String {
    let value = serde_json::to_value(spec).unwrap_or(Value::Null);
    let mut out = String::new();
    canonical(&value, &mut out);
    hex::encode(&Sha256::digest(out.as_bytes())[..12])
}

fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for k in keys {
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(&map[k], out);
                out.push(',');
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for i in items {
                canonical(i, out);
                out.push(',');
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// A JSON merge patch body for the status: the new status, with `null` for every field the
/// previous one had and the new one has not (so a cleared `lastError` disappears).
fn status_patch(previous: Option<&RelayPipelineStatus>, new: &RelayPipelineStatus) -> Value {
    let mut body = serde_json::to_value(new).unwrap_or_else(|_| json!({}));
    let old = previous.and_then(|p| serde_json::to_value(p).ok());
    if let (Some(Value::Object(old)), Value::Object(body)) = (old, &mut body) {
        for key in old.keys() {
            if !body.contains_key(key) {
                body.insert(key.clone(), Value::Null);
            }
        }
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(direction: Direction, name: &str, config: Value) -> PipelineRow {
        PipelineRow { name: name.into(), direction, enabled: true, config }
    }

    #[test]
    fn a_forward_pipeline_mirrors_with_redacted_config() {
        let r = row(
            Direction::Forward,
            "orders-to-nats",
            json!({"stream_table": "orders", "sink_type": "nats", "nats_url": "nats://u:hunter2@nats:4222", "nats_password": "hunter2"}),
        );
        let p = desired_pipeline("prod", None, &r);
        assert_eq!(p.name_any(), "prod-orders-to-nats");
        assert_eq!((p.spec.source.as_str(), p.spec.sink.as_str()), ("outbox:orders", "nats"));
        let text = serde_json::to_string(&p).unwrap_or_default();
        assert!(!text.contains("hunter2"), "secret leaked: {text}");
        assert_eq!(p.labels().get(LABEL_RELAY_GROUP).map(String::as_str), Some("prod"));
        assert_eq!(p.annotations().get(ANNOTATION_PIPELINE_NAME).map(String::as_str), Some("orders-to-nats"));
        assert_eq!(p.annotations().get(ANNOTATION_SPEC_HASH), Some(&spec_hash(&p.spec)));
    }

    #[test]
    fn nested_and_reverse_configs_are_described() {
        let fwd = row(
            Direction::Forward,
            "p",
            json!({"source": {"outbox": "outbox_orders", "group": null}, "sink": {"type": "kafka", "brokers": "k:9092"}}),
        );
        assert_eq!(describe(&fwd), ("outbox:outbox_orders".into(), "kafka".into()));
        let rev = row(Direction::Reverse, "p", json!({"source_type": "nats", "inbox_table": "orders_inbox"}));
        assert_eq!(describe(&rev), ("nats".into(), "inbox:orders_inbox".into()));
        let odd = row(Direction::Forward, "p", json!({"nothing": 1}));
        assert_eq!(describe(&odd), ("outbox:?".into(), "?".into()));
    }

    #[test]
    fn spec_hash_ignores_key_order_but_not_values() {
        let a = desired_pipeline("g", None, &row(Direction::Forward, "p", json!({"a": 1, "b": {"c": 2, "d": 3}})));
        let b = desired_pipeline("g", None, &row(Direction::Forward, "p", json!({"b": {"d": 3, "c": 2}, "a": 1})));
        let c = desired_pipeline("g", None, &row(Direction::Forward, "p", json!({"a": 2, "b": {"c": 2, "d": 3}})));
        assert_eq!(spec_hash(&a.spec), spec_hash(&b.spec));
        assert_ne!(spec_hash(&a.spec), spec_hash(&c.spec));
    }

    #[test]
    fn an_edited_spec_is_not_the_same_mirror() {
        let desired = desired_pipeline("g", None, &row(Direction::Forward, "p", json!({"sink_type": "nats"})));
        let mut edited = desired.clone();
        edited.spec.enabled = false;
        assert!(same_mirror(&desired, &desired));
        assert!(!same_mirror(&edited, &desired));
    }

    #[test]
    fn status_patch_nulls_cleared_fields() {
        let old =
            RelayPipelineStatus { last_error: Some("boom".into()), phase: Some(Phase::Degraded), ..Default::default() };
        let new = RelayPipelineStatus { phase: Some(Phase::Running), ..Default::default() };
        let p = status_patch(Some(&old), &new);
        assert_eq!(p["lastError"], Value::Null);
        assert!(p.as_object().is_some_and(|o| o.contains_key("lastError")));
        assert_eq!(p["phase"], "Running");
    }
}
