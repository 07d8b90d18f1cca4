//! In-process state shared by the coordinator, the workers and the HTTP server: who this
//! instance is, what each owned pipeline is doing, readiness, and the metrics.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use serde::Serialize;

use crate::catalog::pool::{pool_sizes, WorkPool};
use crate::config::Direction;
use crate::metrics::Metrics;

pub use crate::catalog::status::{PipelineState, PipelineStatus};

/// How often "the database refused a connection" may be logged as a warning.
const REFUSAL_WARNING_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

pub struct RelayState {
    pub group_id: String,
    /// `<hostname>:<pid>`, the `worker_id` of contract §4.9 and the status table's owner.
    pub worker_id: String,
    /// The relay's database (may hold a password: never logged or reported as is).
    pub postgres_url: String,
    pub started: Instant,
    pub metrics: Metrics,
    /// The OTLP span exporter (`--otlp-endpoint`; disabled by default).
    pub spans: crate::otel::Spans,
    /// The work connections every pipeline borrows from (`--max-db-connections` bounds them
    /// with the catalog connection and the lock session).
    pub pool: WorkPool,
    /// Connections of the `pg-inbox` sinks writing into this same database.
    pub sink_pool: WorkPool,
    /// The bounded share of the work pool that long read transactions may hold at once
    /// (claim-check and diff cursors, paged and published in one transaction): half of it, at
    /// least one; the rest stays for every other pipeline's batches.
    pub cursor_share: std::sync::Arc<tokio::sync::Semaphore>,
    /// Enabled pipelines of this group no live instance owns, as of the last discovery, and
    /// how many discoveries in a row saw some (`/health` is degraded after two).
    unowned: std::sync::atomic::AtomicUsize,
    unowned_rounds: std::sync::atomic::AtomicUsize,
    /// When the last "database refused a connection" warning was logged (one per interval for
    /// the whole instance, however many pipelines wait).
    last_refusal_warning: Mutex<Option<Instant>>,
    ready: AtomicBool,
    catalog_connected: AtomicBool,
    pipelines: Mutex<BTreeMap<(String, Direction), PipelineStatus>>,
}

/// The `/health` body: the seed's three keys plus a per-pipeline list.
#[derive(Debug, Serialize)]
pub struct HealthReport {
    pub status: &'static str,
    pub pipelines_owned: usize,
    /// Enabled pipelines of this relay group that no live instance owns.
    pub pipelines_unowned: usize,
    pub uptime_seconds: u64,
    pub relay_group_id: String,
    pub worker_id: String,
    pub catalog_connected: bool,
    pub pipelines: Vec<PipelineStatus>,
}

/// How many long cursor transactions a work pool of `work` connections serves at once.
pub fn cursor_share(work: usize) -> usize {
    (work / 2).max(1)
}

impl RelayState {
    pub fn new(
        group_id: &str,
        worker_id: &str,
        postgres_url: &str,
        max_db_connections: usize,
    ) -> Result<Self, prometheus::Error> {
        let (work, sinks) = pool_sizes(max_db_connections);
        Ok(Self {
            group_id: group_id.to_owned(),
            worker_id: worker_id.to_owned(),
            postgres_url: postgres_url.to_owned(),
            started: Instant::now(),
            metrics: Metrics::new()?,
            spans: crate::otel::Spans::disabled(),
            pool: WorkPool::new(postgres_url, work, "pgtrickle-relay work"),
            sink_pool: WorkPool::new(postgres_url, sinks, "pgtrickle-relay inbox"),
            cursor_share: std::sync::Arc::new(tokio::sync::Semaphore::new(cursor_share(work))),
            unowned: Default::default(),
            unowned_rounds: Default::default(),
            last_refusal_warning: Mutex::new(None),
            ready: AtomicBool::new(false),
            catalog_connected: AtomicBool::new(false),
            pipelines: Mutex::new(BTreeMap::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<(String, Direction), PipelineStatus>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts).
        self.pipelines.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub fn set_catalog_connected(&self, ok: bool) {
        self.catalog_connected.store(ok, Ordering::SeqCst);
    }

    /// Records a pipeline's status and mirrors it into the health, state and owner gauges.
    pub fn update(&self, status: &PipelineStatus) {
        let healthy = matches!(status.state, PipelineState::Running | PipelineState::Starting);
        let direction = status.direction.as_str();
        self.metrics.pipeline_healthy.with_label_values(&[&status.name, direction]).set(i64::from(healthy));
        self.metrics.set_pipeline_state(&status.name, direction, status.state, status.owner.as_deref());
        let mut map = self.lock();
        map.insert((status.name.clone(), status.direction), status.clone());
        self.metrics.pipelines_owned.set(map.len() as i64);
    }

    pub fn remove(&self, name: &str, direction: Direction) {
        let mut map = self.lock();
        map.remove(&(name.to_owned(), direction));
        self.metrics.pipelines_owned.set(map.len() as i64);
        self.metrics.forget_pipeline(name, direction.as_str(), &self.worker_id);
    }

    /// What the last discovery saw: `unowned` enabled pipelines of the group have no owner.
    pub fn set_unowned(&self, unowned: usize) {
        self.unowned.store(unowned, Ordering::SeqCst);
        let rounds = if unowned == 0 { 0 } else { self.unowned_rounds.load(Ordering::SeqCst) + 1 };
        self.unowned_rounds.store(rounds, Ordering::SeqCst);
        self.metrics.pipelines_unowned.set(unowned as i64);
    }

    /// A work connection could not be opened (`53300 too many clients`, `57P03`, auth, network):
    /// one warning per [`REFUSAL_WARNING_EVERY`] for the instance, the rest at debug level.
    pub fn database_refused(&self, e: &crate::catalog::pool::PoolError) {
        let mut last = self.last_refusal_warning.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= REFUSAL_WARNING_EVERY) {
            *last = Some(Instant::now());
            tracing::warn!(error = %e, "the database refused a work connection; pipelines wait and retry with backoff");
        } else {
            tracing::debug!(error = %e, "the database refused a work connection");
        }
    }

    /// Refreshes the connection gauges (after a borrow, at discovery).
    pub fn observe_pool(&self) {
        let (busy, idle) = self.pool.usage();
        self.metrics.db_connections.with_label_values(&["busy"]).set(busy as i64);
        self.metrics.db_connections.with_label_values(&["idle"]).set(idle as i64);
    }

    pub fn health(&self) -> HealthReport {
        let pipelines: Vec<PipelineStatus> = self.lock().values().cloned().collect();
        let connected = self.catalog_connected.load(Ordering::SeqCst);
        let status = if !connected {
            "unhealthy"
        } else if pipelines.iter().any(|p| matches!(p.state, PipelineState::Degraded | PipelineState::Failed))
            || self.unowned_rounds.load(Ordering::SeqCst) >= 2
        {
            "degraded"
        } else {
            "healthy"
        };
        HealthReport {
            status,
            pipelines_owned: pipelines.len(),
            pipelines_unowned: self.unowned.load(Ordering::SeqCst),
            uptime_seconds: self.started.elapsed().as_secs(),
            relay_group_id: self.group_id.clone(),
            worker_id: self.worker_id.clone(),
            catalog_connected: connected,
            pipelines,
        }
    }
}

/// `<hostname>:<pid>`, as the upstream relay formed its worker id.
pub fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_owned()))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "relay".to_owned());
    format!("{host}:{}", std::process::id())
}
