//! Pipeline workers: one task per owned pipeline. Its lock lives on the instance's lock
//! session; its reads, writes and commits borrow connections from the shared pool, one at a
//! time, and every commit is fenced by the lock session still holding the pipeline's lock.

pub mod forward;
pub mod reverse;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::catalog::pool::{LockSession, Work};
use crate::catalog::status;
use crate::config::{PipelineRow, PipelineSpec};
use crate::state::{PipelineState, PipelineStatus, RelayState};

/// What the coordinator shares with a running worker.
#[derive(Clone)]
pub struct WorkerLink {
    /// Set by a forward worker once its outbox table is known, to route
    /// `pgtrickle_outbox_new` notifications (payload: the bare outbox table name).
    pub outbox_table: Arc<OnceLock<String>>,
    /// Woken on a matching notification, or when the coordinator saw the outbox's id
    /// sequence move.
    pub wake: Arc<Notify>,
    /// Set by a forward worker whose outbox has a readable id sequence: the coordinator watches
    /// it for the whole instance (one query per second), so the idle worker need not poll.
    pub watched_sequence: Arc<std::sync::Mutex<Option<String>>>,
    pub cancel: CancellationToken,
    /// The session holding the pipeline's lock.
    pub lock: Arc<LockSession>,
    /// Fires when that session closes: the lock is gone, the worker must stop.
    pub lost: CancellationToken,
}

impl WorkerLink {
    pub fn new(cancel: CancellationToken, lock: Arc<LockSession>) -> Self {
        Self {
            outbox_table: Arc::new(OnceLock::new()),
            wake: Arc::new(Notify::new()),
            watched_sequence: Arc::default(),
            cancel,
            lost: lock.conn.closed.clone(),
            lock,
        }
    }
}

impl WorkerLink {
    /// Asks the coordinator to watch (or stop watching) this worker's id sequence.
    pub fn watch_sequence(&self, sequence: Option<String>) {
        *self.watched_sequence.lock().unwrap_or_else(|p| p.into_inner()) = sequence;
    }

    pub fn watched(&self) -> Option<String> {
        self.watched_sequence.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl LockSession {
    /// What a commit checks: this session's (pid, start time).
    pub fn fence(&self) -> (i32, i64) {
        (self.pid, self.started_us)
    }
}

/// Borrows a work connection, waiting (fairly) while the pool is busy and backing off while the
/// database refuses connections; `None` once the worker is cancelled or its lock is gone.
pub async fn borrow(ctx: &RelayState, link: &WorkerLink) -> Option<Work> {
    borrow_until(ctx, link, &link.cancel).await
}

/// [`borrow`] for a stopping worker's last flush and status write: ignores the cancel, not the
/// loss of the lock.
pub async fn borrow_to_finish(ctx: &RelayState, link: &WorkerLink) -> Option<Work> {
    borrow_until(ctx, link, &CancellationToken::new()).await
}

async fn borrow_until(ctx: &RelayState, link: &WorkerLink, cancel: &CancellationToken) -> Option<Work> {
    let mut backoff = Backoff::new(Duration::from_millis(250), crate::backoff::MAX);
    loop {
        let got = tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = link.lost.cancelled() => return None,
            r = ctx.pool.get() => r,
        };
        match got {
            Ok(work) => {
                ctx.metrics.db_pool_wait.observe(work.waited.as_secs_f64());
                ctx.observe_pool();
                return Some(work);
            }
            Err(e) => {
                ctx.database_refused(&e);
                tokio::select! {
                    _ = cancel.cancelled() => return None,
                    _ = link.lost.cancelled() => return None,
                    _ = tokio::time::sleep(backoff.next_wait()) => {}
                }
            }
        }
    }
}

/// How long a worker that cannot start waits before trying again by itself (a config change
/// or a notification restarts it sooner).
pub const START_RETRY: Duration = Duration::from_secs(10);

/// Runs a pipeline until cancelled or until its lock session closes.
pub async fn run_worker(ctx: Arc<RelayState>, row: PipelineRow, link: WorkerLink) {
    let mut st = PipelineStatus::new(&row.name, row.direction, &ctx.worker_id);
    // Owned from now on (`starting` until it has a connection and its outbox or source).
    ctx.metrics.init_pipeline(&row.name, row.direction.as_str());
    ctx.update(&st);
    let spec = match row.parse() {
        Ok(spec) => spec,
        Err(e) => {
            tracing::error!(pipeline = %row.name, direction = row.direction.as_str(), error = %e, "invalid pipeline config; the pipeline is not started until its config changes");
            ctx.metrics.start_errors.with_label_values(&[&row.name, row.direction.as_str(), "permanent"]).inc();
            st.state = PipelineState::Failed;
            st.last_error = Some(e.to_string());
            st.errors_total = 1;
            match borrow(&ctx, &link).await {
                Some(work) => report(&ctx, &work, &st, 0, 1).await,
                None => ctx.update(&st),
            }
            // Keep the lock (so exactly one instance reports this pipeline) until told to stop.
            tokio::select! {
                _ = link.cancel.cancelled() => {}
                _ = link.lost.cancelled() => {}
            }
            return finish(&ctx, &link, st).await;
        }
    };
    match spec {
        PipelineSpec::Forward(spec) => {
            st.sink = Some(spec.sink.kind.as_str().to_owned());
            forward::run(ctx.clone(), spec, &link, &mut st).await;
        }
        PipelineSpec::Reverse(spec) => {
            st.sink = Some(format!("{} -> inbox", spec.source_type));
            reverse::run(ctx.clone(), spec, &link, &mut st).await;
        }
    }
    finish(&ctx, &link, st).await;
}

async fn finish(ctx: &RelayState, link: &WorkerLink, mut st: PipelineStatus) {
    if !link.lost.is_cancelled() {
        st.state = PipelineState::Stopped;
        st.owner = None;
        st.lag_rows = None;
        st.lag_seconds = None;
        // A failed pipeline's error stays visible after release.
        if let Some(work) = borrow_to_finish(ctx, link).await {
            report_db(ctx, &work, &st, 0, 0).await;
        }
        // Release the lock at once: a restarted worker (config change) must get it again.
        if let Err(e) = link.lock.unlock(&ctx.group_id, &st.name).await {
            tracing::debug!(pipeline = %st.name, error = %e, "cannot release the pipeline lock explicitly");
        }
    }
    ctx.remove(&st.name, st.direction);
}

/// Publishes a status to `/health`, metrics and the status table.
pub async fn report(ctx: &RelayState, client: &Client, st: &PipelineStatus, messages_delta: i64, errors_delta: i64) {
    ctx.update(st);
    report_db(ctx, client, st, messages_delta, errors_delta).await;
}

async fn report_db(ctx: &RelayState, client: &Client, st: &PipelineStatus, messages_delta: i64, errors_delta: i64) {
    if let Err(e) = status::upsert(client, &ctx.group_id, st, messages_delta, errors_delta).await {
        tracing::warn!(pipeline = %st.name, error = %e, "cannot write pipeline status");
    }
}
