//! A real Kubernetes API server for the operator tests: the cluster `KUBECONFIG` points at
//! (`scripts/test` starts a private kube-apiserver + etcd and exports it; any other cluster works
//! too). Each test gets its own namespace and its own operator process watching only it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DeleteParams, PostParams};
use kube::Client;
use serde_json::json;
use tokio::sync::OnceCell;

use crate::free_port;

static CRDS: OnceCell<()> = OnceCell::const_new();
static NS_COUNTER: AtomicU32 = AtomicU32::new(0);

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `kubectl` against the test cluster; panics with its output when it fails.
pub fn kubectl(args: &[&str]) -> String {
    let out = Command::new("kubectl").args(args).output().unwrap_or_else(|e| panic!("cannot run kubectl: {e}"));
    assert!(
        out.status.success(),
        "kubectl {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A client for the test cluster, with the generated CRDs applied (once per test binary).
pub async fn cluster() -> Client {
    let kubeconfig = std::env::var("KUBECONFIG").unwrap_or_default();
    assert!(
        !kubeconfig.is_empty() && std::path::Path::new(&kubeconfig).exists(),
        "KUBECONFIG is not set (or missing): the operator tests need a Kubernetes API server; \
         scripts/test starts one (kube-apiserver + etcd) and exports KUBECONFIG"
    );
    let _ = rustls::crypto::ring::default_provider().install_default();
    CRDS.get_or_init(|| async {
        let crds = repo_root().join("crds");
        kubectl(&["apply", "-k", crds.to_str().unwrap()]);
        kubectl(&[
            "wait",
            "--for",
            "condition=established",
            "--timeout=60s",
            "crd/relaygroups.relay.pgtrickle.io",
            "crd/relaypipelines.relay.pgtrickle.io",
        ]);
    })
    .await;
    Client::try_default().await.unwrap_or_else(|e| panic!("cannot reach the Kubernetes API at {kubeconfig}: {e}"))
}

/// A namespace of its own for one test, deleted afterwards.
pub struct TestNamespace {
    pub name: String,
    client: Client,
}

impl TestNamespace {
    pub async fn new(client: &Client) -> Self {
        let name = format!("relay-e2e-{}-{}", std::process::id(), NS_COUNTER.fetch_add(1, Ordering::SeqCst));
        let api: Api<Namespace> = Api::all(client.clone());
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        api.create(&PostParams::default(), &ns).await.unwrap();
        Self { name, client: client.clone() }
    }

    /// A Secret holding `url` under key `key`.
    pub async fn secret(&self, name: &str, key: &str, url: &str) {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.name);
        let s: Secret = serde_json::from_value(json!({"metadata": {"name": name}, "stringData": {key: url}})).unwrap();
        api.create(&PostParams::default(), &s).await.unwrap();
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let name = self.name.clone();
        let client = self.client.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                // The test's operator is gone: release its finalizers, or the groups (and with
                // them the namespace and the CRDs) could never be deleted.
                let groups: Api<pgtrickle_relay_crds::RelayGroup> = Api::namespaced(client.clone(), &name);
                if let Ok(list) = groups.list(&kube::api::ListParams::default()).await {
                    let patch = kube::api::Patch::Merge(json!({"metadata": {"finalizers": null}}));
                    for g in list.items {
                        let g_name = g.metadata.name.unwrap_or_default();
                        let _ = groups.patch(&g_name, &kube::api::PatchParams::default(), &patch).await;
                    }
                }
                let api: Api<Namespace> = Api::all(client);
                let _ = api.delete(&name, &DeleteParams::default()).await;
            });
        })
        .join();
    }
}

/// The operator binary built next to the relay (`cargo build -p pgtrickle-relay-operator`).
pub fn operator_bin() -> PathBuf {
    if let Ok(p) = std::env::var("PGTRICKLE_RELAY_OPERATOR_BIN") {
        return PathBuf::from(p);
    }
    let relay = crate::relay_bin();
    let bin = relay.with_file_name("pgtrickle-relay-operator");
    assert!(
        bin.exists(),
        "{} not found: build it with `cargo build -p pgtrickle-relay-operator` (scripts/test does)",
        bin.display()
    );
    bin
}

/// A running operator process watching one namespace.
pub struct Operator {
    child: Child,
    pub metrics_addr: String,
    log: PathBuf,
}

impl Operator {
    /// Starts the operator for `namespace` with fast resync/status intervals and waits for `/readyz`.
    pub fn start(namespace: &str, extra: &[&str]) -> Self {
        Self::start_with_env(namespace, extra, &[])
    }

    /// Like [`Operator::start`], with extra environment (e.g. another `KUBECONFIG`).
    pub fn start_with_env(namespace: &str, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let op = Self::spawn_with_env(namespace, extra, env);
        op.wait_ready(Duration::from_secs(30));
        op
    }

    /// Starts without waiting for `/readyz` (a standby replica is never ready).
    pub fn spawn(namespace: &str, extra: &[&str]) -> Self {
        Self::spawn_with_env(namespace, extra, &[])
    }

    fn spawn_with_env(namespace: &str, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let metrics_addr = format!("127.0.0.1:{port}");
        let log = std::env::temp_dir().join(format!("pgtrickle-relay-operator-e2e-{}-{port}.log", std::process::id()));
        let child = Command::new(operator_bin())
            .args(["--namespace", namespace, "--metrics-addr", &metrics_addr])
            .args(["--resync-interval", "3s", "--status-interval", "500ms", "--log-level", "info,relay_operator=debug"])
            .args(extra)
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .unwrap();
        Self { child, metrics_addr, log }
    }

    pub fn is_ready(&self) -> bool {
        matches!(crate::http_get(&self.metrics_addr, "/readyz"), Ok((200, _)))
    }

    pub fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.is_ready() {
            assert!(Instant::now() < deadline, "operator did not become ready:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn full_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    pub fn metrics(&self) -> String {
        crate::http_get(&self.metrics_addr, "/metrics").map(|(_, b)| b).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- operator log ---\n{}", self.log());
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A kubeconfig for the same cluster that authenticates with `token` instead (written to a temp file).
pub fn kubeconfig_with_token(token: &str, name: &str) -> PathBuf {
    let view: serde_json::Value =
        serde_json::from_str(&kubectl(&["config", "view", "--raw", "--minify", "-o", "json"])).unwrap();
    let cluster = view["clusters"][0]["cluster"].clone();
    let config = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "ctx",
    });
    let path = std::env::temp_dir().join(format!("pgtrickle-relay-kubeconfig-{}-{name}.json", std::process::id()));
    std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
    path
}
