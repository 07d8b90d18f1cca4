//! The operator's own metrics (`/metrics`) and health endpoints (`/healthz`, `/readyz`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio_util::sync::CancellationToken;
use warp::http::StatusCode;
use warp::Filter;

pub struct Metrics {
    registry: Registry,
    /// Reconciliations by controller and result (`ok`, `invalid_spec`, `transient`).
    pub reconciliations: IntCounterVec,
    pub reconcile_seconds: HistogramVec,
    /// Pipeline-mirror syncs by relay group and result.
    pub mirror_syncs: IntCounterVec,
    /// RelayPipelines kept per relay group.
    pub mirrored_pipelines: IntGaugeVec,
    /// 1 while this replica leads (or leader election is off).
    pub leader: IntGauge,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let reconciliations = IntCounterVec::new(
            Opts::new("pgtrickle_relay_operator_reconciliations_total", "Reconciliations by controller and result."),
            &["controller", "result"],
        )?;
        let reconcile_seconds = HistogramVec::new(
            HistogramOpts::new("pgtrickle_relay_operator_reconcile_duration_seconds", "Time spent per reconciliation."),
            &["controller"],
        )?;
        let mirror_syncs = IntCounterVec::new(
            Opts::new(
                "pgtrickle_relay_operator_mirror_syncs_total",
                "Pipeline-mirror syncs by relay group and result.",
            ),
            &["relay_group", "result"],
        )?;
        let mirrored_pipelines = IntGaugeVec::new(
            Opts::new(
                "pgtrickle_relay_operator_mirrored_pipelines",
                "RelayPipelines mirrored from SQL per relay group.",
            ),
            &["relay_group"],
        )?;
        let leader = IntGauge::new("pgtrickle_relay_operator_leader", "1 while this replica is the active leader.")?;
        registry.register(Box::new(reconciliations.clone()))?;
        registry.register(Box::new(reconcile_seconds.clone()))?;
        registry.register(Box::new(mirror_syncs.clone()))?;
        registry.register(Box::new(mirrored_pipelines.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        Ok(Self { registry, reconciliations, reconcile_seconds, mirror_syncs, mirrored_pipelines, leader })
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if TextEncoder::new().encode(&self.registry.gather(), &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Binds `/metrics`, `/healthz` (the process answers) and `/readyz` (the controllers run).
pub fn serve(
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    addr: SocketAddr,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), String> {
    let m = warp::path("metrics").and(warp::path::end()).map(move || {
        warp::reply::with_header(metrics.render(), "content-type", "text/plain; version=0.0.4; charset=utf-8")
    });
    let healthz = warp::path("healthz").and(warp::path::end()).map(|| "ok");
    let readyz = warp::path("readyz").and(warp::path::end()).map(move || {
        if ready.load(Ordering::Relaxed) {
            warp::reply::with_status("ready", StatusCode::OK)
        } else {
            warp::reply::with_status("not ready", StatusCode::SERVICE_UNAVAILABLE)
        }
    });
    let routes = warp::get().and(m.or(healthz).or(readyz));
    let (bound, server) = warp::serve(routes)
        .try_bind_with_graceful_shutdown(addr, async move { shutdown.cancelled().await })
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    Ok((bound, tokio::spawn(server)))
}
