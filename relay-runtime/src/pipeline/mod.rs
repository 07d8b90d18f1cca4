//! Pipeline workers: one per owned pipeline, running on the connection that holds the
//! pipeline's advisory lock (so every offset commit is fenced by that lock).

pub mod forward;
pub mod reverse;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::catalog::{status, DbConnection};
use crate::config::{PipelineRow, PipelineSpec};
use crate::state::{PipelineState, PipelineStatus, RelayState};

/// What the coordinator shares with a running worker.
#[derive(Clone)]
pub struct WorkerLink {
    /// Set by a forward worker once its outbox table is known, to route
    /// `pgtrickle_outbox_new` notifications (payload: the bare outbox table name).
    pub outbox_table: Arc<OnceLock<String>>,
    /// Woken on a matching notification.
    pub wake: Arc<Notify>,
    pub cancel: CancellationToken,
}

impl WorkerLink {
    pub fn new(cancel: CancellationToken) -> Self {
        Self { outbox_table: Arc::new(OnceLock::new()), wake: Arc::new(Notify::new()), cancel }
    }
}

/// How long a worker that cannot start waits before trying again by itself (a config change
/// or a notification restarts it sooner).
pub const START_RETRY: Duration = Duration::from_secs(10);

/// The cap of the jittered exponential backoff after retryable failures: a broker or database
/// that comes back is used again within about this long (measured by the fault suite).
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Runs a pipeline until cancelled or until its lock connection breaks.
pub async fn run_worker(ctx: Arc<RelayState>, row: PipelineRow, conn: DbConnection, link: WorkerLink) {
    let mut st = PipelineStatus::new(&row.name, row.direction, &ctx.worker_id);
    let spec = match row.parse() {
        Ok(spec) => spec,
        Err(e) => {
            tracing::error!(pipeline = %row.name, direction = row.direction.as_str(), error = %e, "invalid pipeline config; the pipeline is not started until its config changes");
            st.state = PipelineState::Failed;
            st.last_error = Some(e.to_string());
            st.errors_total = 1;
            report(&ctx, &conn, &st, 0, 1).await;
            hold_until_cancelled(&conn, &link).await;
            return finish(&ctx, &conn, st).await;
        }
    };
    match spec {
        PipelineSpec::Forward(spec) => {
            st.sink = Some(spec.sink.kind.as_str().to_owned());
            forward::run(ctx.clone(), spec, &conn, &link, &mut st).await;
        }
        PipelineSpec::Reverse(spec) => {
            st.sink = Some(format!("{} -> inbox", spec.source_type));
            reverse::run(ctx.clone(), spec, &conn, &link, &mut st).await;
        }
    }
    finish(&ctx, &conn, st).await;
}

/// Keeps the lock (so exactly one instance reports this pipeline) until told to stop.
async fn hold_until_cancelled(conn: &DbConnection, link: &WorkerLink) {
    tokio::select! {
        _ = link.cancel.cancelled() => {}
        _ = conn.closed.cancelled() => {}
    }
}

async fn finish(ctx: &RelayState, conn: &DbConnection, mut st: PipelineStatus) {
    if !conn.closed.is_cancelled() {
        st.state = PipelineState::Stopped;
        st.owner = None;
        st.lag_rows = None;
        st.lag_seconds = None;
        // A failed pipeline's error stays visible after release.
        report_db(ctx, conn, &st, 0, 0).await;
        // Release the lock explicitly: dropping the connection releases it too, but only once
        // the server has noticed, and a restarted worker (config change) must get it at once.
        if let Err(e) = conn
            .client
            .execute("SELECT pg_advisory_unlock(hashtext($1), hashtext($2))", &[&ctx.group_id, &st.name])
            .await
        {
            tracing::debug!(pipeline = %st.name, error = %e, "cannot release the pipeline lock explicitly");
        }
    }
    ctx.remove(&st.name, st.direction);
}

/// Publishes a status to `/health`, metrics and the status table.
pub async fn report(
    ctx: &RelayState,
    conn: &DbConnection,
    st: &PipelineStatus,
    messages_delta: i64,
    errors_delta: i64,
) {
    ctx.update(st);
    report_db(ctx, conn, st, messages_delta, errors_delta).await;
}

async fn report_db(ctx: &RelayState, conn: &DbConnection, st: &PipelineStatus, messages_delta: i64, errors_delta: i64) {
    if let Err(e) = status::upsert(&conn.client, &ctx.group_id, st, messages_delta, errors_delta).await {
        tracing::warn!(pipeline = %st.name, error = %e, "cannot write pipeline status");
    }
}
