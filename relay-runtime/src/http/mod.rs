//! The admin HTTP server on `--metrics-addr`: `/metrics` (Prometheus), `/health` (JSON),
//! `/livez` (the process answers) and `/readyz` (catalog checked and pipelines discovered).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use warp::http::StatusCode;
use warp::Filter;

use crate::state::RelayState;

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} for /metrics and /health: {reason}; choose another --metrics-addr")]
pub struct BindError {
    pub addr: SocketAddr,
    pub reason: String,
}

/// Binds the server and returns its address and the task serving it until `shutdown`.
pub fn serve(
    state: Arc<RelayState>,
    addr: SocketAddr,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), BindError> {
    let with_state = warp::any().map(move || state.clone());
    let metrics = warp::path("metrics").and(warp::path::end()).and(with_state.clone()).map(|s: Arc<RelayState>| {
        warp::reply::with_header(s.metrics.render(), "content-type", "text/plain; version=0.0.4; charset=utf-8")
    });
    let health = warp::path("health").and(warp::path::end()).and(with_state.clone()).map(|s: Arc<RelayState>| {
        let report = s.health();
        let code = if report.status == "unhealthy" { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
        warp::reply::with_status(warp::reply::json(&report), code)
    });
    let livez = warp::path("livez").and(warp::path::end()).map(|| "ok");
    let readyz = warp::path("readyz").and(warp::path::end()).and(with_state).map(|s: Arc<RelayState>| {
        if s.is_ready() {
            warp::reply::with_status("ready", StatusCode::OK)
        } else {
            warp::reply::with_status("not ready", StatusCode::SERVICE_UNAVAILABLE)
        }
    });
    let routes = warp::get().and(metrics.or(health).or(livez).or(readyz));
    let (bound, server) = warp::serve(routes)
        .try_bind_with_graceful_shutdown(addr, async move { shutdown.cancelled().await })
        .map_err(|e| BindError { addr, reason: e.to_string() })?;
    Ok((bound, tokio::spawn(server)))
}
