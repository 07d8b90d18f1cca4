//! `pgtrickle.relay_pipeline_status`: what each owned pipeline is doing, written by its worker
//! (and by the coordinator for pipelines that cannot start), read by the CLI and the operator.

use serde::Serialize;
use tokio_postgres::Client;

use crate::config::Direction;

/// Lifecycle of an owned pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PipelineState {
    /// Lock acquired, resolving the outbox and building the sink.
    Starting,
    /// Relaying (or caught up and waiting for new rows).
    Running,
    /// Running but the last attempt failed; retrying by itself.
    Degraded,
    /// Cannot run until its config (or the database) changes; the error says why.
    Failed,
    /// Released (disabled, deleted, or the relay is shutting down).
    Stopped,
}

impl PipelineState {
    pub const ALL: [PipelineState; 5] = [
        PipelineState::Starting,
        PipelineState::Running,
        PipelineState::Degraded,
        PipelineState::Failed,
        PipelineState::Stopped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PipelineState::Starting => "starting",
            PipelineState::Running => "running",
            PipelineState::Degraded => "degraded",
            PipelineState::Failed => "failed",
            PipelineState::Stopped => "stopped",
        }
    }
}

/// What one owned pipeline reports. Never holds config values (they may carry secrets).
#[derive(Debug, Clone, Serialize)]
pub struct PipelineStatus {
    pub name: String,
    pub direction: Direction,
    pub state: PipelineState,
    pub owner: Option<String>,
    pub sink: Option<String>,
    pub committed_offset: Option<i64>,
    pub lag_rows: Option<i64>,
    pub lag_seconds: Option<f64>,
    pub messages_total: i64,
    pub errors_total: i64,
    pub last_error: Option<String>,
    /// Forward: the outbox epoch (1 for the first outbox, +1 each time it was recreated).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbox_epoch: Option<i32>,
}

impl Serialize for Direction {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl PipelineStatus {
    pub fn new(name: &str, direction: Direction, owner: &str) -> Self {
        Self {
            name: name.to_owned(),
            direction,
            state: PipelineState::Starting,
            owner: Some(owner.to_owned()),
            sink: None,
            committed_offset: None,
            lag_rows: None,
            lag_seconds: None,
            messages_total: 0,
            errors_total: 0,
            last_error: None,
            outbox_epoch: None,
        }
    }
}

/// Writes a pipeline's status row. Counters are added as deltas since the last write, so the
/// table keeps totals across restarts and owners.
pub async fn upsert(
    client: &Client,
    group: &str,
    s: &PipelineStatus,
    messages_delta: i64,
    errors_delta: i64,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO pgtrickle.relay_pipeline_status AS s
                 (relay_group_id, direction, name, state, owner, committed_offset, lag_rows, lag_seconds,
                  messages_total, errors_total, last_error, last_error_at, started_at, heartbeat_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11,
                     CASE WHEN $11::text IS NULL THEN NULL ELSE now() END, now(), now())
             ON CONFLICT (relay_group_id, direction, name) DO UPDATE SET
                 state = EXCLUDED.state,
                 owner = EXCLUDED.owner,
                 committed_offset = coalesce(EXCLUDED.committed_offset, s.committed_offset),
                 lag_rows = EXCLUDED.lag_rows,
                 lag_seconds = EXCLUDED.lag_seconds,
                 messages_total = s.messages_total + EXCLUDED.messages_total,
                 errors_total = s.errors_total + EXCLUDED.errors_total,
                 last_error = EXCLUDED.last_error,
                 last_error_at = CASE WHEN EXCLUDED.last_error IS NULL THEN s.last_error_at
                                      WHEN EXCLUDED.last_error IS DISTINCT FROM s.last_error THEN now()
                                      ELSE s.last_error_at END,
                 started_at = CASE WHEN s.owner IS DISTINCT FROM EXCLUDED.owner THEN now() ELSE s.started_at END,
                 heartbeat_at = now()",
            &[
                &group,
                &s.direction.as_str(),
                &s.name,
                &s.state.as_str(),
                &s.owner,
                &s.committed_offset,
                &s.lag_rows,
                &s.lag_seconds,
                &messages_delta,
                &errors_delta,
                &s.last_error,
            ],
        )
        .await
        .map(|_| ())
}

/// Removes status rows of pipelines that no longer exist in the catalog.
pub async fn prune(client: &Client, group: &str) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "DELETE FROM pgtrickle.relay_pipeline_status s
              WHERE s.relay_group_id = $1
                AND NOT EXISTS (SELECT 1 FROM pgtrickle.list_relay_configs() c
                                 WHERE c.name = s.name AND c.direction = s.direction)",
            &[&group],
        )
        .await
}

/// One row of the status table, as shown by `pipelines list`.
#[derive(Debug, Clone)]
pub struct StatusRow {
    pub direction: Direction,
    pub name: String,
    pub state: String,
    pub owner: Option<String>,
    pub committed_offset: Option<i64>,
    pub lag_rows: Option<i64>,
    pub messages_total: i64,
    pub errors_total: i64,
    pub last_error: Option<String>,
    pub heartbeat_age_seconds: f64,
    /// When the owner last wrote the row, in seconds since the Unix epoch.
    pub heartbeat_at: f64,
}

pub async fn read(client: &Client, group: &str) -> Result<Vec<StatusRow>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT direction, name, state, owner, committed_offset, lag_rows, messages_total, errors_total,
                    last_error, extract(epoch FROM now() - heartbeat_at)::float8, extract(epoch FROM heartbeat_at)::float8
               FROM pgtrickle.relay_pipeline_status WHERE relay_group_id = $1 ORDER BY name, direction",
            &[&group],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| StatusRow {
            direction: Direction::parse(r.get::<_, &str>(0)).unwrap_or(Direction::Forward),
            name: r.get(1),
            state: r.get(2),
            owner: r.get(3),
            committed_offset: r.get(4),
            lag_rows: r.get(5),
            messages_total: r.get(6),
            errors_total: r.get(7),
            last_error: r.get(8),
            heartbeat_age_seconds: r.get(9),
            heartbeat_at: r.get(10),
        })
        .collect())
}
