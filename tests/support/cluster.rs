//! The real single-node Kubernetes of `scripts/cluster` (issue #17), for the `cluster` test
//! binary: relay pods actually run there, under the operator that runs there too (installed by
//! `kubectl apply -k deploy/local/` with `deploy/base/rbac.yaml`'s permissions, not started by
//! the tests). Pods reach this machine at `HOST_IP`: its PostgreSQL through the cluster's
//! forwarder on port 5432, and a test's own nats-server directly.
//!
//! The caller exports `KUBECONFIG` and `HOST_IP` (`eval "$(scripts/cluster up)"`;
//! `scripts/test-cluster` does everything). Without them, or without the operator Ready in the
//! cluster, every test fails with what to run; none skips.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::api::{Api, DeleteParams, EvictParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use pgtrickle_relay_crds::{RelayGroup, RelayPipeline};
use serde_json::{json, Value};
use tokio::task::JoinHandle;

use crate::nats::NatsServer;
use crate::{connect, db_with_outbox, eventually_every, row_refs, TestDb};

/// Where `deploy/` installs the operator.
pub const OPERATOR_NAMESPACE: &str = "pgtrickle-relay-system";
pub const OPERATOR_DEPLOYMENT: &str = "pgtrickle-relay-operator";
/// The SQL pipeline every scenario relays: outbox of stream table `orders` → JetStream.
pub const PIPELINE: &str = "orders-to-nats";
pub const STREAM_TABLE: &str = "orders";
pub const NATS_STREAM: &str = "ORDERS";
/// Pod label the operator puts on every relay pod: the RelayGroup's name.
const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";

/// The cluster under test: a client (cluster-admin, from `KUBECONFIG`) and the address at which
/// pods reach this machine.
pub struct Cluster {
    pub client: Client,
    pub host_ip: String,
}

/// Connects to the cluster and checks the operator runs in it.
pub async fn cluster() -> Cluster {
    const HOW: &str =
        "run `scripts/test-cluster`, or `eval \"$(scripts/cluster up)\" && kubectl apply -k deploy/local/`";
    let kubeconfig = std::env::var("KUBECONFIG").unwrap_or_default();
    assert!(
        !kubeconfig.is_empty() && std::path::Path::new(&kubeconfig).exists(),
        "KUBECONFIG is not set (or missing): these tests need the single-node cluster; {HOW}"
    );
    let host_ip = std::env::var("HOST_IP").unwrap_or_default();
    assert!(!host_ip.is_empty(), "HOST_IP is not set: the address at which pods reach this machine; {HOW}");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::try_default()
        .await
        .unwrap_or_else(|e| panic!("cannot load the Kubernetes client config from {kubeconfig}: {e}"));
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let operator = deploys
        .get_opt(OPERATOR_DEPLOYMENT)
        .await
        .unwrap_or_else(|e| panic!("cannot reach the Kubernetes API at {kubeconfig} (is the cluster up?): {e}; {HOW}"));
    let operator = operator.unwrap_or_else(|| panic!("the operator is not installed in the cluster; {HOW}"));
    let ready = operator.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0);
    assert!(ready >= 1, "the operator Deployment {OPERATOR_NAMESPACE}/{OPERATOR_DEPLOYMENT} has no ready pod; {HOW}");
    // deploy/local's operator: its own ServiceAccount (deploy/base/rbac.yaml), the local relay image.
    let pod = operator.spec.and_then(|s| s.template.spec).unwrap_or_default();
    assert_eq!(pod.service_account_name.as_deref(), Some(OPERATOR_DEPLOYMENT), "not deploy/'s operator; {HOW}");
    let args = pod.containers.first().and_then(|c| c.args.clone()).unwrap_or_default();
    assert!(
        args.iter().any(|a| a == "--relay-image=pgtrickle-relay:dev"),
        "the operator does not run relay pods from the local image (args {args:?}); {HOW}"
    );
    Cluster { client, host_ip }
}

/// Lines of the operator's log where the API server refused it something for lack of permission
/// (deploy/base/rbac.yaml too narrow): they name its ServiceAccount.
pub fn operator_permission_denials() -> Vec<String> {
    let log = crate::kube_env::kubectl(&["-n", OPERATOR_NAMESPACE, "logs", &format!("deploy/{OPERATOR_DEPLOYMENT}")]);
    let account = format!("system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_DEPLOYMENT}");
    log.lines().filter(|l| l.contains(&account)).map(str::to_owned).collect()
}

/// The test database's URL as pods see it: this machine's PostgreSQL at `HOST_IP` (the cluster
/// forwards port 5432 there).
pub fn pod_database_url(db: &TestDb, host_ip: &str) -> String {
    let url = db.url.replacen("@127.0.0.1:5432/", &format!("@{host_ip}:5432/"), 1).replacen(
        "@localhost:5432/",
        &format!("@{host_ip}:5432/"),
        1,
    );
    assert!(
        url.contains(host_ip),
        "the test database {} is not on 127.0.0.1:5432, the only PostgreSQL the cluster forwards to pods",
        db.name
    );
    url
}

static NS_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A namespace of its own for one scenario. Deleted afterwards as a user would: the operator,
/// alive in the cluster, finalizes the RelayGroups in it (no finalizer is stripped).
pub struct ClusterNamespace {
    pub name: String,
    client: Client,
}

impl ClusterNamespace {
    pub async fn new(client: &Client) -> Self {
        let name = format!("relay-cluster-{}-{}", std::process::id(), NS_COUNTER.fetch_add(1, Ordering::SeqCst));
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.unwrap();
        Self { name, client: client.clone() }
    }

    /// A Secret holding `value` under `key`.
    pub async fn secret(&self, name: &str, key: &str, value: &str) {
        let s: Secret =
            serde_json::from_value(json!({"metadata": {"name": name}, "stringData": {key: value}})).unwrap();
        Api::<Secret>::namespaced(self.client.clone(), &self.name).create(&PostParams::default(), &s).await.unwrap();
    }
}

impl Drop for ClusterNamespace {
    fn drop(&mut self) {
        let (name, client) = (self.name.clone(), self.client.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let _ = Api::<Namespace>::all(client).delete(&name, &DeleteParams::default()).await;
            });
        })
        .join();
    }
}

/// One relay group in a namespace of its own, running 2 relay pods that relay [`PIPELINE`] of
/// a fresh database to a JetStream stream of this test's nats-server.
pub struct Scenario {
    /// First, so that what went wrong is printed before the namespace goes.
    _report: FailureReport,
    pub client: Client,
    pub host_ip: String,
    pub ns: ClusterNamespace,
    /// The RelayGroup's name, also its relay group id.
    pub group: String,
    pub db: TestDb,
    pub sql: tokio_postgres::Client,
    pub outbox: String,
    pub nats: NatsServer,
}

impl Scenario {
    /// Database, stream, pipeline, Secret `db` (key `url`) and RelayGroup `group` with `replicas`
    /// relay pods; returns once they all are Ready.
    pub async fn start(group: &str, replicas: usize) -> Self {
        let Cluster { client, host_ip } = cluster().await;
        // Listens on every address, HOST_IP included: the helpers connect at 127.0.0.1, pods at HOST_IP.
        let nats = NatsServer::start_with(&["-a", "0.0.0.0"]);
        nats.jetstream()
            .await
            .create_stream(jetstream::stream::Config {
                name: NATS_STREAM.into(),
                subjects: vec!["orders.>".into()],
                // Longer than any scenario: a message published twice is stored once.
                duplicate_window: Duration::from_secs(600),
                ..Default::default()
            })
            .await
            .unwrap();
        let (db, sql, outbox) = db_with_outbox(STREAM_TABLE).await;
        let config = json!({
            "stream_table": STREAM_TABLE,
            "sink_type": "nats",
            "nats_url": format!("nats://{host_ip}:{}", nats.port),
            "nats_stream": NATS_STREAM,
            "subject_template": "orders.{op}",
        });
        sql.execute("SELECT pgtrickle.set_relay_outbox($1, config => $2::jsonb)", &[&PIPELINE, &config]).await.unwrap();
        let ns = ClusterNamespace::new(&client).await;
        ns.secret("db", "url", &pod_database_url(&db, &host_ip)).await;
        let groups: Api<RelayGroup> = Api::namespaced(client.clone(), &ns.name);
        let g: RelayGroup = serde_json::from_value(json!({
            "apiVersion": "relay.pgtrickle.io/v1alpha1",
            "kind": "RelayGroup",
            "metadata": {"name": group},
            "spec": {
                "postgresUrlSecret": {"name": "db", "key": "url"},
                "replicas": replicas,
                // Only the images imported into the cluster exist: never pull.
                "imagePullPolicy": "Never",
                // A released pipeline is taken by another pod within a second.
                "discoveryInterval": "1s",
            },
        }))
        .unwrap();
        groups.create(&PostParams::default(), &g).await.unwrap();
        let s = Self {
            _report: FailureReport { ns: ns.name.clone(), group: group.to_owned() },
            client,
            host_ip,
            ns,
            group: group.to_owned(),
            db,
            sql,
            outbox,
            nats,
        };
        let t = Instant::now();
        s.wait_ready_pods(replicas, Duration::from_secs(90)).await;
        eprintln!("[cluster] RelayGroup {group}: {replicas} relay pods Ready {:.1?} after its creation", t.elapsed());
        s
    }

    pub fn pods_api(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }

    /// Every pod of the group, terminating ones included, by name.
    pub async fn pods(&self) -> Vec<Pod> {
        let lp = ListParams::default().labels(&format!("{INSTANCE_LABEL}={}", self.group));
        let mut pods = self.pods_api().list(&lp).await.unwrap().items;
        pods.sort_by_key(|p| p.name_any());
        pods
    }

    /// Names of the group's pods that are Running and Ready and not terminating.
    pub async fn ready_pods(&self) -> Vec<String> {
        self.pods().await.iter().filter(|p| is_ready(p)).map(|p| p.name_any()).collect()
    }

    /// Waits until the group runs exactly `n` pods, each Ready (none terminating); their names.
    pub async fn wait_ready_pods(&self, n: usize, timeout: Duration) -> Vec<String> {
        let what = format!("exactly {n} relay pods of {}, all Running and Ready", self.group);
        eventually_every(timeout, Duration::from_millis(200), &what, || async {
            let pods = self.pods().await;
            (pods.len() == n && pods.iter().all(is_ready)).then(|| pods.iter().map(|p| p.name_any()).collect())
        })
        .await
    }

    /// The group's ReplicaSets: (name, ready replicas).
    pub async fn replica_sets(&self) -> Vec<(String, i32)> {
        let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &self.ns.name);
        let lp = ListParams::default().labels(&format!("{INSTANCE_LABEL}={}", self.group));
        api.list(&lp)
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|rs| {
                let ready = rs.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0);
                (rs.name_any(), ready)
            })
            .collect()
    }

    /// The pod the RelayPipeline mirror of [`PIPELINE`] names as its owner (`status.ownerPod`).
    pub async fn owner_pod(&self) -> Option<String> {
        let api: Api<RelayPipeline> = Api::namespaced(self.client.clone(), &self.ns.name);
        let list = api.list(&ListParams::default()).await.unwrap().items;
        let p =
            list.into_iter().find(|p| p.spec.pipeline_name == PIPELINE && p.spec.direction.as_str() == "forward")?;
        p.status?.owner_pod
    }

    /// Evicts a pod through the Eviction API (what `kubectl drain` does), so the group's
    /// PodDisruptionBudget applies.
    pub async fn evict(&self, pod: &str) -> Result<(), kube::Error> {
        // kube's client retries a 429 by default: here the refusal is the answer under test.
        let mut config = kube::Config::infer().await.unwrap();
        config.default_retry = false;
        let pods: Api<Pod> = Api::namespaced(Client::try_from(config).unwrap(), &self.ns.name);
        pods.evict(pod, &EvictParams::default()).await.map(|_| ())
    }

    /// The group's PodDisruptionBudget as the API server serves it (policy/v1beta1 on 1.20).
    pub fn pdb(&self) -> Value {
        let out = crate::kube_env::kubectl(&[
            "-n",
            &self.ns.name,
            "get",
            "pdb",
            &format!("{}-relay", self.group),
            "-o",
            "json",
        ]);
        serde_json::from_str(&out).unwrap()
    }

    /// Writes `n` outbox rows in one transaction (one message each) and wakes the relay.
    pub async fn write_rows(&self, n: i64) {
        write_rows(&self.sql, &self.outbox, n).await;
    }

    /// Writes `batches` × `rows` outbox rows from a task of its own, `pause` apart, on a
    /// connection of its own, until done or `stop`; the task returns the rows written.
    pub fn spawn_writer(&self, batches: u32, rows: i64, pause: Duration, stop: Arc<AtomicBool>) -> Writer {
        let (url, outbox) = (self.db.url.clone(), self.outbox.clone());
        let written = Arc::new(AtomicU64::new(0));
        let count = written.clone();
        let task = tokio::spawn(async move {
            let c = connect(&url).await;
            for _ in 0..batches {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                write_rows(&c, &outbox, rows).await;
                count.fetch_add(rows as u64, Ordering::Relaxed);
                tokio::time::sleep(pause).await;
            }
            count.load(Ordering::Relaxed)
        });
        Writer { task, written }
    }

    /// Messages stored in the JetStream stream (read from its state).
    pub async fn stored(&self) -> u64 {
        self.nats.stream_count(NATS_STREAM).await
    }

    /// Waits until JetStream holds one message per outbox row written so far, then checks that
    /// each row's dedup key (`Nats-Msg-Id`) is there exactly once: nothing lost, nothing doubled.
    pub async fn expect_every_row_once(&self, timeout: Duration) {
        let refs = row_refs(&self.sql, &self.outbox).await;
        let mut expected: Vec<String> = refs.values().map(|r| format!("{r}:0")).collect();
        expected.sort();
        let want = expected.len() as u64;
        let js = self.nats.jetstream().await;
        let what = format!("{want} messages in JetStream");
        eventually_every(timeout, Duration::from_millis(100), &what, || async {
            let mut s = js.get_stream(NATS_STREAM).await.ok()?;
            let n = s.info().await.ok()?.state.messages;
            (n >= want).then_some(())
        })
        .await;
        let mut ids = self.nats.stream_msg_ids(NATS_STREAM).await;
        ids.sort();
        let distinct: BTreeSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len(), "a row was stored twice in JetStream");
        let missing: Vec<&String> = expected.iter().filter(|k| !distinct.contains(k)).take(5).collect();
        assert!(missing.is_empty(), "rows never reached JetStream, e.g. {missing:?}");
        assert_eq!(ids, expected, "JetStream holds messages for rows that were never written");
    }
}

/// A background writer of outbox rows (see [`Scenario::spawn_writer`]).
pub struct Writer {
    pub task: JoinHandle<u64>,
    written: Arc<AtomicU64>,
}

impl Writer {
    /// Rows written so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    pub async fn finish(self) -> u64 {
        self.task.await.unwrap()
    }
}

/// Running, Ready and not being deleted.
pub fn is_ready(p: &Pod) -> bool {
    let status = p.status.as_ref();
    p.metadata.deletion_timestamp.is_none()
        && status.and_then(|s| s.phase.as_deref()) == Some("Running")
        && status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// `n` outbox rows in one transaction, each the delta of a refresh that inserted one row
/// (`{"v":1,"inserted":[{"n":k}],"deleted":[]}`: one message, dedup key `<outbox>:<pgt_id>:0`),
/// then the NOTIFY of a pg_trickle refresh.
pub async fn write_rows(c: &tokio_postgres::Client, outbox: &str, n: i64) {
    c.execute(
        &format!(
            "INSERT INTO pgtrickle.\"{outbox}\" (inserted_count, payload)
             SELECT 1, jsonb_build_object('v', 1, 'inserted', jsonb_build_array(jsonb_build_object('n', k)),
                                          'deleted', '[]'::jsonb)
               FROM generate_series(1, $1::int8) AS k"
        ),
        &[&n],
    )
    .await
    .unwrap();
    c.execute("SELECT pg_notify('pgtrickle_outbox_new', $1)", &[&outbox]).await.unwrap();
}

/// Prints what the cluster shows about a group when its test fails: objects, events, the relay
/// pods' and the operator's logs.
struct FailureReport {
    ns: String,
    group: String,
}

impl Drop for FailureReport {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let selector = format!("{INSTANCE_LABEL}={}", self.group);
        let ns = self.ns.as_str();
        let runs: [&[&str]; 4] = [
            &["-n", ns, "get", "relaygroups,relaypipelines,deployments,replicasets,pods,pdb,services", "-o", "wide"],
            &["-n", ns, "get", "events", "--sort-by=.lastTimestamp"],
            &["-n", ns, "logs", "-l", &selector, "--prefix", "--tail=30", "--max-log-requests=10"],
            &["-n", OPERATOR_NAMESPACE, "logs", &format!("deploy/{OPERATOR_DEPLOYMENT}"), "--tail=40"],
        ];
        for args in runs {
            if let Ok(out) = Command::new("kubectl").args(args).output() {
                eprintln!(
                    "--- kubectl {} ---\n{}{}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
}
