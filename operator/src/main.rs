//! `pgtrickle-relay-operator`: the Kubernetes operator binary.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use kube::runtime::events::{Recorder, Reporter};
use relay_operator::children::ChildDefaults;
use relay_operator::controller::{self, Context};
use relay_operator::leader::{self, LeaderConfig};
use relay_operator::metrics::{self, Metrics};
use relay_operator::mirror::MirrorTiming;
use relay_runtime::runner::{parse_duration, shutdown_requested};
use relay_runtime::telemetry::{self, LogFormat};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// Kubernetes operator for pgtrickle-relay: RelayGroup → relay pods; SQL pipelines → RelayPipelines with live status.
#[derive(Debug, Parser)]
#[command(name = "pgtrickle-relay-operator", version)]
struct Cli {
    /// Watch RelayGroups in this namespace only (default: all namespaces)
    #[arg(long, env = "PGTRICKLE_RELAY_OPERATOR_NAMESPACE")]
    namespace: Option<String>,
    /// Address of the /metrics, /healthz and /readyz server
    #[arg(long, env = "PGTRICKLE_RELAY_OPERATOR_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Relay image for RelayGroups that name none
    #[arg(long, env = "PGTRICKLE_RELAY_OPERATOR_RELAY_IMAGE", default_value = concat!("ghcr.io/pgtrickle/pgtrickle-relay:", env!("CARGO_PKG_VERSION")))]
    relay_image: String,
    /// Full re-read of every group's SQL pipelines (notifications make changes appear at once)
    #[arg(long, env = "PGTRICKLE_RELAY_OPERATOR_RESYNC_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    resync_interval: Duration,
    /// How often RelayPipeline status is refreshed from the relay's status table
    #[arg(long, env = "PGTRICKLE_RELAY_OPERATOR_STATUS_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    status_interval: Duration,
    /// Run only while holding a Lease (for more than one operator replica)
    #[arg(long, env = "PGTRICKLE_RELAY_OPERATOR_LEADER_ELECT")]
    leader_elect: bool,
    /// Namespace of the leader-election Lease (default: the pod's namespace, else `default`)
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    leader_election_namespace: String,
    /// Name of the leader-election Lease
    #[arg(long, default_value = "pgtrickle-relay-operator")]
    leader_election_id: String,
    /// How long a leader's Lease lasts without renewal
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    lease_duration: Duration,
    #[arg(long, env = "PGTRICKLE_RELAY_OPERATOR_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    #[arg(long, env = "PGTRICKLE_RELAY_OPERATOR_LOG_LEVEL", default_value = "info")]
    log_level: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format, &cli.log_level);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the Kubernetes API (in-cluster config or KUBECONFIG): {e}"))?;
    // The CRDs must be installed before anything else makes sense: say so plainly.
    let probe: kube::Api<pgtrickle_relay_crds::RelayGroup> = match &cli.namespace {
        Some(ns) => kube::Api::namespaced(client.clone(), ns),
        None => kube::Api::all(client.clone()),
    };
    match probe.list(&kube::api::ListParams::default().limit(1)).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => anyhow::bail!(
            "the RelayGroup/RelayPipeline CRDs are not installed in this cluster: `kubectl apply -k deploy/` (or `kubectl apply -k crds/`)"
        ),
        Err(kube::Error::Api(s)) if s.code == 403 => anyhow::bail!(
            "not allowed to list RelayGroups{}: {} (apply deploy/base/rbac.yaml, or check --namespace)",
            cli.namespace.as_deref().map(|n| format!(" in namespace {n}")).unwrap_or_default(),
            s.message
        ),
        Err(e) => anyhow::bail!("cannot reach the Kubernetes API: {e}"),
    }
    let metrics = Arc::new(Metrics::new()?);
    let ready = Arc::new(AtomicBool::new(false));
    let stop = CancellationToken::new();
    let (bound, server) = metrics::serve(metrics.clone(), ready.clone(), cli.metrics_addr, stop.clone())
        .map_err(|e| anyhow::anyhow!(e))?;
    info!(metrics = %bound, namespace = cli.namespace.as_deref().unwrap_or("(all)"), "pgtrickle-relay-operator starting");

    let identity = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .map(|h| format!("{h}:{}", std::process::id()))
        .unwrap_or_else(|_| relay_runtime::state::default_worker_id());
    let lost = CancellationToken::new();
    if cli.leader_elect {
        let cfg = LeaderConfig {
            namespace: cli.leader_election_namespace.clone(),
            lease_name: cli.leader_election_id.clone(),
            identity: identity.clone(),
            lease_duration: cli.lease_duration,
        };
        let waiting = leader::lead(client.clone(), cfg, lost.clone());
        tokio::select! {
            r = waiting => r?,
            () = shutdown_requested() => {
                stop.cancel();
                return Ok(());
            }
        }
    }
    metrics.leader.set(1);

    let reporter = Reporter { controller: "pgtrickle-relay-operator".into(), instance: Some(identity) };
    let recorder = Arc::new(Recorder::new(client.clone(), reporter));
    let pdb = controller::pdb_api_version(&client).await;
    let timing = MirrorTiming { resync: cli.resync_interval, status: cli.status_interval };
    let defaults = ChildDefaults { relay_image: cli.relay_image.clone() };
    let (ctx, rx) = Context::new(client, recorder, metrics.clone(), defaults, timing, pdb);
    ready.store(true, Ordering::Relaxed);

    let controller_stop = CancellationToken::new();
    let signal_stop = controller_stop.clone();
    let lost_watch = lost.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = shutdown_requested() => info!("shutting down"),
            () = lost_watch.cancelled() => error!("leadership lost; stopping so another replica can lead"),
        }
        signal_stop.cancel();
    });
    controller::run(ctx, rx, cli.namespace.clone(), controller_stop).await;
    ready.store(false, Ordering::Relaxed);
    metrics.leader.set(0);
    stop.cancel();
    let _ = server.await;
    if lost.is_cancelled() {
        anyhow::bail!("leadership lost");
    }
    Ok(())
}
