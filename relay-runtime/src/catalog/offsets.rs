//! Committed positions of forward pipelines in `pgtrickle.relay_consumer_offsets`
//! (contract §3.1): keyed by relay group and pipeline name, `last_change_id` = the last outbox
//! id whose messages were all confirmed by the sink.

use tokio_postgres::Client;

pub async fn load(client: &Client, group: &str, pipeline: &str) -> Result<i64, tokio_postgres::Error> {
    Ok(client
        .query_opt(
            "SELECT last_change_id FROM pgtrickle.relay_consumer_offsets WHERE relay_group_id = $1 AND pipeline_id = $2",
            &[&group, &pipeline],
        )
        .await?
        .map(|r| r.get(0))
        .unwrap_or(0))
}

/// Commits an offset. Must run on the connection holding the pipeline's advisory lock: if that
/// connection is gone the lock is gone too, and this fails instead of committing for a worker
/// that no longer owns the pipeline (fencing).
pub async fn commit(
    client: &Client,
    group: &str,
    pipeline: &str,
    offset: i64,
    worker_id: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO pgtrickle.relay_consumer_offsets AS o (relay_group_id, pipeline_id, last_change_id, worker_id, updated_at)
             VALUES ($1, $2, $3, $4, now())
             ON CONFLICT (relay_group_id, pipeline_id)
             DO UPDATE SET last_change_id = EXCLUDED.last_change_id, worker_id = EXCLUDED.worker_id, updated_at = now()",
            &[&group, &pipeline, &offset, &worker_id],
        )
        .await
        .map(|_| ())
}
