//! The relay process: its flags (shared by `run` and `demo`) and its run loop — catalog, HTTP
//! endpoints, coordinator — until a signal or a stop request.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::catalog::{self, schema};
use crate::coordinator::{Coordinator, CoordinatorOptions};
use crate::state::{default_worker_id, RelayState};
use crate::telemetry::LogFormat;

#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// PostgreSQL connection (URL or key=value string); `${ENV:NAME}` placeholders are expanded
    #[arg(long, env = "PGTRICKLE_RELAY_POSTGRES_URL", global = true, hide_env_values = true)]
    pub postgres_url: Option<String>,
    /// Address of the /metrics, /health, /livez and /readyz server
    #[arg(long, env = "PGTRICKLE_RELAY_METRICS_ADDR", default_value = "0.0.0.0:9090", global = true)]
    pub metrics_addr: SocketAddr,
    /// Log format on stderr
    #[arg(long, env = "PGTRICKLE_RELAY_LOG_FORMAT", value_enum, default_value = "text", global = true)]
    pub log_format: LogFormat,
    /// Log filter (`info`, `debug`, `relay_runtime=debug,warn`); RUST_LOG wins when set
    #[arg(long, env = "PGTRICKLE_RELAY_LOG_LEVEL", default_value = "info", global = true)]
    pub log_level: String,
    /// Relay group: instances of one group share the pipelines and their offsets
    #[arg(long, env = "PGTRICKLE_RELAY_GROUP_ID", default_value = "default", global = true)]
    pub relay_group_id: String,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// How often to look for pipelines to own (notifications trigger it sooner), e.g. 5s, 500ms
    #[arg(long, env = "PGTRICKLE_RELAY_DISCOVERY_INTERVAL", default_value = "5s", value_parser = parse_duration, global = true)]
    pub discovery_interval: Duration,
    /// How long a graceful stop may take to finish and commit in-flight batches
    #[arg(long, env = "PGTRICKLE_RELAY_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = parse_duration, global = true)]
    pub shutdown_timeout: Duration,
    /// Async runtime threads shared by all pipelines (0: one on machines with up to two cores, else one per core)
    #[arg(long, env = "PGTRICKLE_RELAY_WORKER_THREADS", default_value_t = 0, global = true)]
    pub worker_threads: usize,
    /// Do not install or upgrade the relay catalog at start (fail if it is missing or older)
    #[arg(long, env = "PGTRICKLE_RELAY_NO_MIGRATE", global = true)]
    pub no_migrate: bool,
    /// Database connections this instance may open in all, whatever the number of pipelines: the
    /// catalog (LISTEN) connection, the lock session, and a pool shared by every pipeline
    #[arg(long, env = "PGTRICKLE_RELAY_MAX_DB_CONNECTIONS", default_value_t = 10, global = true,
          value_parser = clap::value_parser!(u16).range(catalog::pool::MIN_DB_CONNECTIONS as i64..))]
    pub max_db_connections: u16,
    /// Send the relay's spans (one per outbox row published, with the ids of the messages'
    /// `traceparent`) to this OTLP/HTTP endpoint, e.g. http://otel-collector:4318 (off by default)
    #[arg(long, env = "PGTRICKLE_RELAY_OTLP_ENDPOINT", global = true)]
    pub otlp_endpoint: Option<String>,
}

/// `5s`, `500ms`, `2m`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num.parse().map_err(|_| format!("'{s}' is not a duration (use e.g. 5s, 500ms, 2m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("'{s}': unknown unit '{unit}' (use ms, s, m or h)")),
    };
    if !(secs.is_finite() && secs > 0.0) {
        return Err(format!("'{s}' must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Runs the relay until SIGINT/SIGTERM or `stop` fires.
pub async fn run(g: &GlobalArgs, r: &RunArgs, url: String, stop: CancellationToken) -> ExitCode {
    let shutdown = stop;
    spawn_signal_handler(shutdown.clone());
    let worker_id = default_worker_id();
    let mut state = match RelayState::new(&g.relay_group_id, &worker_id, &url, usize::from(r.max_db_connections)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot register metrics: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(endpoint) = r.otlp_endpoint.as_deref().filter(|e| !e.is_empty()) {
        match crate::otel::Spans::otlp(endpoint, &worker_id, &g.relay_group_id) {
            Ok(spans) => state.spans = spans,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let state = Arc::new(state);
    let (addr, server) = match crate::http::serve(state.clone(), g.metrics_addr, shutdown.clone()) {
        Ok(ok) => ok,
        Err(e) => {
            tracing::error!(error = %e, "startup failed");
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"), metrics_addr = %addr, relay_group_id = %g.relay_group_id,
        worker_id = %worker_id, postgres = %catalog::redact_url(&url), "pgtrickle-relay starting"
    );
    let Some(mut conn) = catalog::connect_with_retry(&url, "pgtrickle-relay", None, &shutdown).await else {
        return ExitCode::SUCCESS;
    };
    let checked =
        if r.no_migrate { schema::verify(&conn.client).await } else { schema::migrate(&mut conn.client).await };
    match checked {
        Ok(v) => tracing::info!(catalog_version = v, "relay catalog ready"),
        Err(e) => {
            tracing::error!(error = %e, "relay catalog unusable");
            eprintln!("error: {e}");
            shutdown.cancel();
            return ExitCode::FAILURE;
        }
    }
    drop(conn);
    let spans = state.clone();
    let coordinator = Coordinator::new(
        state,
        CoordinatorOptions {
            postgres_url: url,
            discovery_interval: r.discovery_interval,
            stop_timeout: r.shutdown_timeout,
        },
    );
    let clean = coordinator.run(shutdown.clone()).await;
    shutdown.cancel();
    let _ = server.await;
    // The batch processor's thread blocks while it sends what is left.
    let _ = tokio::task::spawn_blocking(move || spans.spans.shutdown()).await;
    if clean {
        tracing::info!("pgtrickle-relay stopped");
        ExitCode::SUCCESS
    } else {
        tracing::error!(timeout = ?r.shutdown_timeout, "some pipelines did not finish within --shutdown-timeout; their last batch will be relayed again");
        ExitCode::FAILURE
    }
}

fn spawn_signal_handler(shutdown: CancellationToken) {
    tokio::spawn(async move {
        tokio::select! {
            () = shutdown_requested() => {}
            _ = shutdown.cancelled() => return,
        }
        tracing::info!("shutdown requested; finishing in-flight batches");
        shutdown.cancel();
    });
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT). Shared with the operator binary.
pub async fn shutdown_requested() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
