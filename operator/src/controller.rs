//! The RelayGroup controller: runs each group as relay pods (Deployment, Service, ServiceAccount,
//! PodDisruptionBudget, applied server-side with one field manager and owned by the group), keeps
//! one pipeline-mirror task per group, and writes the group's status.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::Recorder;
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::ResourceExt;
use pgtrickle_relay_crds::{RelayGroup, RelayGroupStatus, RelayPipeline, LABEL_RELAY_GROUP};
use serde_json::json;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::children::{self, ChildDefaults};
use crate::metrics::Metrics;
use crate::mirror::{self, MirrorEnv, MirrorHandle, MirrorSummary, MirrorTiming, FIELD_MANAGER};
use crate::status::set_condition;

pub const FINALIZER: &str = "relay.pgtrickle.io/cleanup";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The RelayGroup (or the Secret it names) is wrong; retrying cannot help until it changes.
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Finalizer(Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// `invalid_spec` (waits for a change) or `transient` (backs off and retries).
    pub fn category(&self) -> &'static str {
        use kube::runtime::finalizer::Error as F;
        match self {
            Error::InvalidSpec(_) => "invalid_spec",
            Error::Finalizer(f) => match f.as_ref() {
                F::ApplyFailed(e) | F::CleanupFailed(e) => e.category(),
                F::UnnamedObject | F::InvalidFinalizer => "invalid_spec",
                _ => "transient",
            },
            Error::Kube(_) => "transient",
        }
    }
}

pub struct Context {
    pub client: kube::Client,
    pub recorder: Arc<Recorder>,
    pub metrics: Arc<Metrics>,
    pub defaults: ChildDefaults,
    pub timing: MirrorTiming,
    /// `policy/v1`, or `policy/v1beta1` on clusters older than 1.21.
    pub pdb_api_version: String,
    mirrors: Mutex<HashMap<ObjectRef<RelayGroup>, MirrorHandle>>,
    failures: Mutex<HashMap<ObjectRef<RelayGroup>, u32>>,
    group_changed: mpsc::UnboundedSender<ObjectRef<RelayGroup>>,
}

impl Context {
    pub fn new(
        client: kube::Client,
        recorder: Arc<Recorder>,
        metrics: Arc<Metrics>,
        defaults: ChildDefaults,
        timing: MirrorTiming,
        pdb_api_version: String,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<ObjectRef<RelayGroup>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let ctx = Self {
            client,
            recorder,
            metrics,
            defaults,
            timing,
            pdb_api_version,
            mirrors: Mutex::default(),
            failures: Mutex::default(),
            group_changed: tx,
        };
        (Arc::new(ctx), rx)
    }

    fn mirror_env(&self) -> MirrorEnv {
        MirrorEnv {
            client: self.client.clone(),
            recorder: self.recorder.clone(),
            metrics: self.metrics.clone(),
            timing: self.timing,
            group_changed: self.group_changed.clone(),
        }
    }
}

/// `policy/v1` when the cluster serves PodDisruptionBudgets there, else `policy/v1beta1`.
pub async fn pdb_api_version(client: &kube::Client) -> String {
    match client.list_api_group_resources("policy/v1").await {
        Ok(list) if list.resources.iter().any(|r| r.name == "poddisruptionbudgets") => "policy/v1".into(),
        _ => "policy/v1beta1".into(),
    }
}

/// Runs the controller until shutdown (SIGTERM/Ctrl-C) or `stop`.
pub async fn run(
    ctx: Arc<Context>,
    rx: mpsc::UnboundedReceiver<ObjectRef<RelayGroup>>,
    namespace: Option<String>,
    stop: tokio_util::sync::CancellationToken,
) {
    let (groups, deployments): (Api<RelayGroup>, Api<Deployment>) = match &namespace {
        Some(ns) => (Api::namespaced(ctx.client.clone(), ns), Api::namespaced(ctx.client.clone(), ns)),
        None => (Api::all(ctx.client.clone()), Api::all(ctx.client.clone())),
    };
    let triggers = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
    let managed = watcher::Config::default().labels("app.kubernetes.io/managed-by=pgtrickle-relay-operator");
    Controller::new(groups, watcher::Config::default())
        .owns(deployments, managed)
        .reconcile_on(triggers)
        .graceful_shutdown_on(async move { stop.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!("reconcile: {e}");
            }
        })
        .await;
}

async fn reconcile(group: Arc<RelayGroup>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let ns = group.namespace().unwrap_or_default();
    let api: Api<RelayGroup> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, group.clone(), |event| async {
        match event {
            Finalizer::Apply(g) => apply(g, ctx.clone()).await,
            Finalizer::Cleanup(g) => cleanup(g, ctx.clone()).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.category(),
    };
    ctx.metrics.reconciliations.with_label_values(&["relaygroup", outcome]).inc();
    ctx.metrics.reconcile_seconds.with_label_values(&["relaygroup"]).observe(started.elapsed().as_secs_f64());
    if result.is_ok() {
        if let Ok(mut f) = ctx.failures.lock() {
            f.remove(&ObjectRef::from_obj(group.as_ref()));
        }
    }
    result
}

fn error_policy(group: Arc<RelayGroup>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = ObjectRef::from_obj(group.as_ref());
    warn!(relay_group = %group.name_any(), category = error.category(), "reconcile failed: {error}");
    if error.category() == "invalid_spec" {
        // Waits for a change of the RelayGroup; a missing Secret is looked for again now and then,
        // since creating it does not change the group.
        return Action::requeue(Duration::from_secs(60));
    }
    let attempt = ctx
        .failures
        .lock()
        .map(|mut f| {
            let n = f.entry(key).or_insert(0);
            *n = n.saturating_add(1);
            *n
        })
        .unwrap_or(1);
    let secs = 2u64.saturating_pow(attempt.min(9)).min(300);
    Action::requeue(relay_runtime::backoff::jitter(Duration::from_secs(secs)))
}

/// Reads the PostgreSQL URL from the group's Secret.
async fn postgres_url(group: &RelayGroup, client: &kube::Client) -> Result<String, Error> {
    let sel = &group.spec.postgres_url_secret;
    let ns = group.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let secret = secrets
        .get_opt(&sel.name)
        .await?
        .ok_or_else(|| Error::InvalidSpec(format!("Secret '{}' not found in namespace '{ns}'", sel.name)))?;
    let from_data = secret.data.as_ref().and_then(|d| d.get(&sel.key)).map(|b| String::from_utf8(b.0.clone()));
    let from_string = secret.string_data.as_ref().and_then(|d| d.get(&sel.key)).cloned();
    match (from_data, from_string) {
        (Some(Ok(url)), _) | (None, Some(url)) if !url.trim().is_empty() => Ok(url.trim().to_owned()),
        (Some(Err(_)), _) => {
            Err(Error::InvalidSpec(format!("key '{}' of Secret '{}' is not UTF-8 text", sel.key, sel.name)))
        }
        _ => Err(Error::InvalidSpec(format!("Secret '{}' has no (or an empty) key '{}'", sel.name, sel.key))),
    }
}

async fn apply(group: Arc<RelayGroup>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = group.namespace().unwrap_or_default();
    let name = group.name_any();
    let key = ObjectRef::from_obj(group.as_ref());
    let url = match postgres_url(&group, &ctx.client).await {
        Ok(u) => u,
        Err(e) => {
            let mut status = group.status.clone().unwrap_or_default();
            let msg = e.to_string();
            set_condition(
                &mut status.conditions,
                "Ready",
                false,
                "InvalidSpec",
                &msg,
                group.metadata.generation,
                Timestamp::now(),
            );
            set_condition(
                &mut status.conditions,
                "Synced",
                false,
                "InvalidSpec",
                &msg,
                group.metadata.generation,
                Timestamp::now(),
            );
            status.observed_generation = group.metadata.generation;
            write_status(&ctx, &group, status).await?;
            return Err(e);
        }
    };

    let params = PatchParams::apply(FIELD_MANAGER).force();
    let child = children::child_name(&group);
    let sa: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &ns);
    sa.patch(&child, &params, &Patch::Apply(&children::service_account(&group))).await?;
    let svc: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    svc.patch(&child, &params, &Patch::Apply(&children::service(&group))).await?;
    let deploys: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let deployment = deploys
        .patch(&child, &params, &Patch::Apply(&children::deployment(&group, &ctx.defaults, &children::url_hash(&url))))
        .await?;
    let pdbs = pdb_api(&ctx, &ns);
    pdbs.patch(&child, &params, &Patch::Apply(&children::pod_disruption_budget(&group, &ctx.pdb_api_version))).await?;

    // One mirror task per group; restarted when the database URL or group id changes.
    let group_id = children::group_id(&group);
    let fp = mirror::fingerprint(&url, &group_id);
    let summary = {
        let mut mirrors = ctx.mirrors.lock().map_err(|_| Error::InvalidSpec("internal lock poisoned".into()))?;
        let current = mirrors.get(&key).filter(|h| h.fingerprint == fp).map(|h| h.summary.clone());
        match current {
            Some(s) => s,
            None => {
                info!(relay_group = %name, group_id = %group_id, "starting the pipeline mirror");
                let handle = mirror::spawn(ctx.mirror_env(), &group, group_id, url);
                let s = handle.summary.clone();
                mirrors.insert(key, handle);
                s
            }
        }
    };
    let summary = summary.lock().map(|s| s.clone()).unwrap_or_default();
    let status = group_status(&group, &deployment, &summary, Timestamp::now());
    write_status(&ctx, &group, status).await?;
    Ok(Action::requeue(Duration::from_secs(60)))
}

fn pdb_api(ctx: &Context, ns: &str) -> Api<DynamicObject> {
    let (group, version) = ctx.pdb_api_version.split_once('/').unwrap_or(("policy", "v1"));
    let ar = ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: ctx.pdb_api_version.clone(),
        kind: "PodDisruptionBudget".into(),
        plural: "poddisruptionbudgets".into(),
    };
    Api::namespaced_with(ctx.client.clone(), ns, &ar)
}

async fn write_status(ctx: &Context, group: &RelayGroup, status: RelayGroupStatus) -> Result<(), Error> {
    if group.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let api: Api<RelayGroup> = Api::namespaced(ctx.client.clone(), &group.namespace().unwrap_or_default());
    let patch = json!({ "status": status });
    api.patch_status(&group.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

/// The group status from its Deployment and its pipeline mirror.
pub fn group_status(
    group: &RelayGroup,
    deployment: &Deployment,
    summary: &MirrorSummary,
    now: Timestamp,
) -> RelayGroupStatus {
    let generation = group.metadata.generation;
    let mut status = group.status.clone().unwrap_or_default();
    let ds = deployment.status.clone().unwrap_or_default();
    let want = group.spec.replicas;
    let ready = ds.ready_replicas.unwrap_or(0);
    status.replicas = Some(ds.replicas.unwrap_or(0));
    status.ready_replicas = Some(ready);
    let (ok, reason, msg) = if want == 0 {
        (true, "ScaledToZero", "replicas is 0: no relay pods run".to_owned())
    } else if ready >= want {
        (true, "PodsReady", format!("{ready}/{want} relay pods ready"))
    } else {
        (false, "PodsNotReady", format!("{ready}/{want} relay pods ready"))
    };
    set_condition(&mut status.conditions, "Ready", ok, reason, &msg, generation, now);
    match (&summary.error, summary.last_sync) {
        (Some(err), _) => set_condition(&mut status.conditions, "Synced", false, "SyncFailed", err, generation, now),
        (None, Some(_)) => set_condition(
            &mut status.conditions,
            "Synced",
            true,
            "MirrorSynced",
            &format!("{} SQL pipelines mirrored ({} enabled)", summary.pipelines, summary.enabled),
            generation,
            now,
        ),
        (None, None) => set_condition(
            &mut status.conditions,
            "Synced",
            false,
            "Connecting",
            "connecting to the database",
            generation,
            now,
        ),
    }
    if summary.last_sync.is_some() {
        status.pipelines = Some(summary.pipelines);
        status.enabled_pipelines = Some(summary.enabled);
        status.owners = Some(summary.owners.iter().map(|(k, v)| (k.clone(), *v)).collect());
        status.last_sync_time =
            summary.last_sync.map(|t| Time(jiff::Timestamp::from_second(t.as_second()).unwrap_or(t)));
    }
    let degraded = !summary.unhealthy.is_empty();
    let msg = if degraded {
        format!("degraded or failed: {}", summary.unhealthy.join(", "))
    } else {
        "every pipeline runs without error (or is disabled or pending)".to_owned()
    };
    set_condition(
        &mut status.conditions,
        "Degraded",
        degraded,
        if degraded { "PipelinesUnhealthy" } else { "Healthy" },
        &msg,
        generation,
        now,
    );
    status.observed_generation = generation;
    status
}

async fn cleanup(group: Arc<RelayGroup>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = group.namespace().unwrap_or_default();
    let name = group.name_any();
    if let Ok(mut m) = ctx.mirrors.lock() {
        m.remove(&ObjectRef::from_obj(group.as_ref()));
    }
    // Owner references let the garbage collector remove these; deleting them here as well makes
    // removal immediate and works where no garbage collector runs.
    let pipelines: Api<RelayPipeline> = Api::namespaced(ctx.client.clone(), &ns);
    pipelines
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels(&format!("{LABEL_RELAY_GROUP}={name}")),
        )
        .await?;
    let child = children::child_name(&group);
    ignore_missing(
        Api::<Deployment>::namespaced(ctx.client.clone(), &ns).delete(&child, &DeleteParams::default()).await,
    )?;
    ignore_missing(Api::<Service>::namespaced(ctx.client.clone(), &ns).delete(&child, &DeleteParams::default()).await)?;
    ignore_missing(
        Api::<ServiceAccount>::namespaced(ctx.client.clone(), &ns).delete(&child, &DeleteParams::default()).await,
    )?;
    ignore_missing(pdb_api(&ctx, &ns).delete(&child, &DeleteParams::default()).await)?;
    ctx.metrics.mirrored_pipelines.with_label_values(&[&name]).set(0);
    info!(relay_group = %name, "RelayGroup deleted: mirror stopped, pipelines and relay pods removed");
    Ok(Action::await_change())
}

fn ignore_missing<T>(r: Result<T, kube::Error>) -> Result<(), kube::Error> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::DeploymentStatus;
    use pgtrickle_relay_crds::RelayGroupSpec;

    fn group(replicas: i32) -> RelayGroup {
        let spec: RelayGroupSpec =
            serde_json::from_value(json!({"postgresUrlSecret": {"name": "db"}, "replicas": replicas}))
                .unwrap_or_else(|e| panic!("{e}"));
        let mut g = RelayGroup::new("g", spec);
        g.metadata.generation = Some(2);
        g
    }

    fn deployment(ready: i32) -> Deployment {
        Deployment {
            status: Some(DeploymentStatus { replicas: Some(2), ready_replicas: Some(ready), ..Default::default() }),
            ..Default::default()
        }
    }

    fn cond<'a>(s: &'a RelayGroupStatus, t: &str) -> (&'a str, &'a str) {
        s.conditions
            .iter()
            .find(|c| c.type_ == t)
            .map(|c| (c.status.as_str(), c.reason.as_str()))
            .unwrap_or(("missing", ""))
    }

    #[test]
    fn group_status_reports_pods_mirror_and_health() {
        let now = Timestamp::now();
        let summary = MirrorSummary {
            pipelines: 3,
            enabled: 2,
            owners: [("relay-0:1".to_owned(), 2)].into(),
            last_sync: Some(now),
            error: None,
            unhealthy: vec!["orders".into()],
        };
        let s = group_status(&group(2), &deployment(1), &summary, now);
        assert_eq!(
            (s.replicas, s.ready_replicas, s.pipelines, s.enabled_pipelines),
            (Some(2), Some(1), Some(3), Some(2))
        );
        assert_eq!(cond(&s, "Ready"), ("False", "PodsNotReady"));
        assert_eq!(cond(&s, "Synced"), ("True", "MirrorSynced"));
        assert_eq!(cond(&s, "Degraded"), ("True", "PipelinesUnhealthy"));
        assert_eq!(s.observed_generation, Some(2));

        let failing = MirrorSummary { error: Some("cannot connect".into()), ..MirrorSummary::default() };
        let s = group_status(&group(2), &deployment(2), &failing, now);
        assert_eq!(cond(&s, "Ready"), ("True", "PodsReady"));
        assert_eq!(cond(&s, "Synced"), ("False", "SyncFailed"));
        assert_eq!(s.pipelines, None, "unknown until the first sync");
    }

    #[test]
    fn invalid_spec_waits_transient_backs_off() {
        assert_eq!(Error::InvalidSpec("x".into()).category(), "invalid_spec");
        let wrapped =
            Error::Finalizer(Box::new(kube::runtime::finalizer::Error::ApplyFailed(Error::InvalidSpec("x".into()))));
        assert_eq!(wrapped.category(), "invalid_spec");
    }
}
