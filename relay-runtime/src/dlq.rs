//! `pgtrickle-relay dlq list|replay`: the dead-letter table, read and brought back.
//!
//! A reverse dead letter holds the message as received (raw bytes, headers, the id or broker
//! coordinate it had); replaying runs it through the pipeline's current mapping into its inbox
//! (`ON CONFLICT (event_id) DO NOTHING`) and marks it replayed. A payload that is still not
//! valid stays where it is, with the reason printed; fix it first with
//! `UPDATE pgtrickle.relay_dead_letters SET payload = convert_to('…', 'UTF8') WHERE id = …`.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::Value;
use tokio_postgres::Client;

use crate::catalog::pipelines;
use crate::config::PipelineSpec;
use crate::inbox;
use crate::pipeline::reverse::Mapping;
use crate::source::Incoming;

use crate::catalog::dead_letters::SUBJECT_HEADER;

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters not yet replayed (newest last)
    List {
        /// Only this pipeline
        #[arg(long)]
        pipeline: Option<String>,
        /// Include replayed ones
        #[arg(long)]
        all: bool,
        /// Print JSON lines instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Write reverse dead letters into their pipeline's inbox and mark them replayed
    Replay {
        /// Dead-letter ids (from `dlq list`)
        ids: Vec<i64>,
        /// Every unreplayed reverse dead letter of this pipeline
        #[arg(long)]
        pipeline: Option<String>,
    },
}

struct DeadLetter {
    id: i64,
    direction: String,
    pipeline: String,
    source_ref: Option<String>,
    payload: Option<Vec<u8>>,
    headers: Option<Value>,
    error: String,
    created_at: String,
    replayed_at: Option<String>,
}

async fn load(
    client: &Client,
    group: &str,
    filter: &str,
    args: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> anyhow::Result<Vec<DeadLetter>> {
    let sql = format!(
        "SELECT id, direction, pipeline, source_ref, payload, headers, error,
                to_char(created_at, 'YYYY-MM-DD HH24:MI:SS'), to_char(replayed_at, 'YYYY-MM-DD HH24:MI:SS')
           FROM pgtrickle.relay_dead_letters WHERE relay_group_id = $1 AND {filter} ORDER BY id"
    );
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&group];
    params.extend_from_slice(args);
    Ok(client
        .query(&sql, &params)
        .await?
        .iter()
        .map(|r| DeadLetter {
            id: r.get(0),
            direction: r.get(1),
            pipeline: r.get(2),
            source_ref: r.get(3),
            payload: r.get(4),
            headers: r.get(5),
            error: r.get(6),
            created_at: r.get(7),
            replayed_at: r.get(8),
        })
        .collect())
}

pub async fn run(client: &Client, group: &str, cmd: DlqCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DlqCommand::List { pipeline, all, json } => {
            let filter = match (&pipeline, all) {
                (Some(_), true) => "pipeline = $2",
                (Some(_), false) => "pipeline = $2 AND replayed_at IS NULL",
                (None, true) => "true",
                (None, false) => "replayed_at IS NULL",
            };
            let rows = match &pipeline {
                Some(p) => load(client, group, filter, &[p]).await?,
                None => load(client, group, filter, &[]).await?,
            };
            for d in &rows {
                let size = d.payload.as_ref().map_or(0, Vec::len);
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"id": d.id, "pipeline": d.pipeline, "direction": d.direction,
                                           "source_ref": d.source_ref, "bytes": size, "error": d.error,
                                           "created_at": d.created_at, "replayed_at": d.replayed_at})
                    );
                } else {
                    println!(
                        "{:>6}  {:<24} {:<8} {:<32} {:>7} B  {}{}",
                        d.id,
                        d.pipeline,
                        d.direction,
                        d.source_ref.as_deref().unwrap_or("-"),
                        size,
                        d.error,
                        d.replayed_at.as_ref().map(|t| format!("  (replayed {t})")).unwrap_or_default()
                    );
                }
            }
            if !json {
                println!("{} dead letter(s) (relay group '{group}')", rows.len());
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Replay { ids, pipeline } => {
            let rows = match (&pipeline, ids.is_empty()) {
                (Some(p), _) => load(client, group, "pipeline = $2 AND replayed_at IS NULL", &[p]).await?,
                (None, false) => load(client, group, "id = ANY($2) AND replayed_at IS NULL", &[&ids]).await?,
                (None, true) => {
                    anyhow::bail!("name dead-letter ids or --pipeline NAME (see `pgtrickle-relay dlq list`)")
                }
            };
            let configs = pipelines::list(client).await?;
            let (mut replayed, mut failed) = (0, 0);
            for d in &rows {
                match replay_one(client, &configs, d).await {
                    Ok(outcome) => {
                        replayed += 1;
                        println!("replayed {} ({}): {outcome}", d.id, d.pipeline);
                    }
                    Err(e) => {
                        failed += 1;
                        println!("kept     {} ({}): {e}", d.id, d.pipeline);
                    }
                }
            }
            println!("{replayed} replayed, {failed} kept");
            Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
    }
}

async fn replay_one(client: &Client, configs: &[crate::config::PipelineRow], d: &DeadLetter) -> Result<String, String> {
    if d.direction != "reverse" {
        return Err("a forward dead letter is an outbox row kept for inspection; it has no inbox to go to".into());
    }
    let row = configs
        .iter()
        .find(|r| r.name == d.pipeline && r.direction == crate::config::Direction::Reverse)
        .ok_or_else(|| format!("reverse pipeline '{}' no longer exists", d.pipeline))?;
    let spec = match row.parse().map_err(|e| e.to_string())? {
        PipelineSpec::Reverse(s) => s,
        PipelineSpec::Forward(_) => return Err("not a reverse pipeline".into()),
    };
    let mapping = Mapping::of(&spec);
    let table = crate::pipeline::reverse::inbox_table(&spec);
    let mut headers: Vec<(String, String)> = match &d.headers {
        Some(Value::Object(m)) => {
            m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect()
        }
        _ => Vec::new(),
    };
    let subject = headers.iter().position(|(k, _)| k == SUBJECT_HEADER).map(|i| headers.remove(i).1);
    let id = d.source_ref.clone().unwrap_or_else(|| format!("dlq:{}", d.id));
    let incoming = Incoming {
        id: Some(id.clone()),
        coordinate: id,
        subject,
        key: None,
        headers,
        body: d.payload.clone().unwrap_or_default(),
        null_body: false,
    };
    let inbox_row = mapping.row(&incoming)?.ok_or("the message is a tombstone: nothing to store")?;
    let new =
        inbox::write(client, &table.insert_sql(), std::slice::from_ref(&inbox_row)).await.map_err(|e| e.to_string())?;
    client
        .execute("UPDATE pgtrickle.relay_dead_letters SET replayed_at = now() WHERE id = $1", &[&d.id])
        .await
        .map_err(|e| e.to_string())?;
    Ok(if new.is_empty() {
        format!("event {} was already in {}", inbox_row.event_id, table.qualified())
    } else {
        format!("event {} written to {}", inbox_row.event_id, table.qualified())
    })
}
