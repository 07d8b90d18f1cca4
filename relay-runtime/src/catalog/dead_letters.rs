//! Writes to `pgtrickle.relay_dead_letters`: what a pipeline cannot relay (an outbox row that
//! cannot be decoded, a poison message) is kept there once per pipeline and source reference,
//! until it is replayed (`pgtrickle-relay dlq`).

use serde_json::Value;
use tokio_postgres::GenericClient;

use crate::config::Direction;

/// The pseudo-header that keeps a message's subject (topic, routing key) in its dead letter.
pub const SUBJECT_HEADER: &str = "Pgtrickle-Subject";

/// One thing a pipeline could not relay.
pub struct DeadLetter<'a> {
    pub group: &'a str,
    pub direction: Direction,
    pub pipeline: &'a str,
    /// What it was: `<outbox>:<id>:<pgt_id>`, a message id or broker coordinate.
    pub source_ref: &'a str,
    pub payload: Option<&'a [u8]>,
    pub headers: &'a Value,
    pub error: &'a str,
}

/// Keeps `d` unless the same one is already kept and not yet replayed (a poison message that
/// came again because the relay died before acknowledging it is kept once).
pub async fn keep(client: &impl GenericClient, d: &DeadLetter<'_>) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO pgtrickle.relay_dead_letters (relay_group_id, direction, pipeline, source_ref, payload, headers, error)
             SELECT $1, $2, $3, $4, $5, $6, $7
              WHERE NOT EXISTS (SELECT 1 FROM pgtrickle.relay_dead_letters
                                 WHERE relay_group_id = $1 AND pipeline = $3 AND source_ref = $4 AND replayed_at IS NULL)",
            &[&d.group, &d.direction.as_str(), &d.pipeline, &d.source_ref, &d.payload, d.headers, &d.error],
        )
        .await
}
