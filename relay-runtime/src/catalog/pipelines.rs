//! Reading and changing pipelines through pg_trickle's catalog functions (contract §3.3), so the
//! relay works under the function-only grants of the upgrade path as well as for owners.

use serde_json::Value;
use tokio_postgres::Client;

use crate::config::{Direction, PipelineRow};

/// Every pipeline of both directions, ordered by name.
pub async fn list(client: &Client) -> Result<Vec<PipelineRow>, tokio_postgres::Error> {
    let rows = client.query("SELECT name, direction, enabled, config FROM pgtrickle.list_relay_configs()", &[]).await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let direction: String = r.get(1);
            Some(PipelineRow {
                name: r.get(0),
                direction: Direction::parse(&direction)?,
                enabled: r.get(2),
                config: r.get::<_, Value>(3),
            })
        })
        .collect())
}

/// Calls `enable_relay`, `disable_relay` or `delete_relay`.
pub async fn set_state(client: &Client, name: &str, action: PipelineAction) -> Result<(), tokio_postgres::Error> {
    let sql = match action {
        PipelineAction::Enable => "SELECT pgtrickle.enable_relay($1)",
        PipelineAction::Disable => "SELECT pgtrickle.disable_relay($1)",
        PipelineAction::Delete => "SELECT pgtrickle.delete_relay($1)",
    };
    client.execute(sql, &[&name]).await.map(|_| ())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipelineAction {
    Enable,
    Disable,
    Delete,
}
