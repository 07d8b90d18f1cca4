//! Command line: the seed README's flags and environment variables, plus subcommands.
//! Every flag is global, so `pgtrickle-relay --postgres-url … run` and
//! `pgtrickle-relay run --postgres-url …` both work; no subcommand means `run`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::catalog::{self, pipelines, schema, status};
use crate::config::redact::redact_config;
use crate::config::{secrets, Direction, PipelineSpec};
use crate::error::report;
use crate::outbox::OutboxTable;
use crate::runner::{run, GlobalArgs, RunArgs};
use crate::telemetry;

#[derive(Debug, Parser)]
#[command(
    name = "pgtrickle-relay",
    version,
    about = "Relay between pg_trickle outbox/inbox tables and message brokers",
    propagate_version = true,
    args_override_self = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(flatten)]
    pub run: RunArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay (the default)
    Run,
    /// Install or upgrade the relay catalog in schema pgtrickle, then exit
    Migrate,
    /// Validate every pipeline in the catalog; exit 1 if any is invalid
    Check,
    /// Print the JSON Schema (draft 2020-12) of pipeline configs: every key of every sink and
    /// source type (no database needed)
    #[command(name = "config-schema")]
    ConfigSchema,
    /// Inspect and manage pipelines
    #[command(subcommand)]
    Pipelines(PipelinesCommand),
    /// List and replay dead letters (poison messages, undecodable outbox rows)
    #[command(subcommand)]
    Dlq(crate::dlq::DlqCommand),
    /// Run the relay on a demo pipeline (a pg_trickle-shaped outbox → stdout)
    Demo(crate::demo::DemoArgs),
}

#[derive(Debug, Subcommand)]
pub enum PipelinesCommand {
    /// List pipelines with their status
    List {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Show one pipeline: config (secrets redacted) and status
    Show { name: String },
    /// Enable a pipeline (pgtrickle.enable_relay)
    Enable { name: String },
    /// Disable a pipeline (pgtrickle.disable_relay)
    Disable { name: String },
    /// Delete a pipeline (pgtrickle.delete_relay)
    Delete { name: String },
    /// Forget a diff-mode pipeline's kept state: its next snapshot is relayed as a first one
    #[command(name = "reset-state")]
    ResetState { name: String },
}

/// Threads of the async runtime: `0` means one on machines with up to two cores (where the
/// broker and PostgreSQL need the other core, and cross-thread hand-offs cost more than they
/// give: +15–30 % NATS throughput in scripts/bench), else one per core.
fn worker_threads(requested: usize) -> usize {
    if requested > 0 {
        return requested;
    }
    match std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) {
        n if n <= 2 => 1,
        n => n,
    }
}

/// Entry point used by `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.global.log_format, &cli.global.log_level);
    let threads = worker_threads(cli.run.worker_threads);
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Several TLS stacks share rustls (NATS, Redis, AMQP, webhooks), and the backends bring
    // both of its crypto providers: pick one for the process, or the first TLS connection panics.
    let _ = rustls::crypto::ring::default_provider().install_default();
    runtime.block_on(dispatch(cli))
}

async fn dispatch(cli: Cli) -> ExitCode {
    if let Some(Command::ConfigSchema) = cli.command {
        match serde_json::to_string_pretty(&crate::config::keys::CATALOG.json_schema()) {
            Ok(text) => {
                println!("{text}");
                return ExitCode::SUCCESS;
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let url = match postgres_url(&cli.global) {
        Ok(url) => url,
        Err(msg) => {
            eprintln!("error: {msg}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        None | Some(Command::Run) => return run(&cli.global, &cli.run, url, CancellationToken::new()).await,
        Some(Command::Migrate) => migrate_cmd(&url).await,
        Some(Command::Check) => check_cmd(&url).await,
        Some(Command::ConfigSchema) => Ok(ExitCode::SUCCESS),
        Some(Command::Pipelines(cmd)) => pipelines_cmd(&url, &cli.global.relay_group_id, cmd).await,
        Some(Command::Dlq(cmd)) => match connect_once(&url).await {
            Ok(conn) => crate::dlq::run(&conn.client, &cli.global.relay_group_id, cmd).await,
            Err(e) => Err(e),
        },
        Some(Command::Demo(args)) => return crate::demo::run(&cli.global, &cli.run, url, args).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn postgres_url(g: &GlobalArgs) -> Result<String, String> {
    let raw = g
        .postgres_url
        .as_deref()
        .filter(|u| !u.trim().is_empty())
        .ok_or_else(|| "--postgres-url is required (or set PGTRICKLE_RELAY_POSTGRES_URL)".to_owned())?;
    secrets::resolve_str(raw, "--postgres-url").map_err(|e| e.to_string())
}

async fn connect_once(url: &str) -> anyhow::Result<catalog::DbConnection> {
    catalog::connect(url, "pgtrickle-relay-cli", None)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to PostgreSQL at {}: {e}", catalog::redact_url(url)))
}

async fn migrate_cmd(url: &str) -> anyhow::Result<ExitCode> {
    let mut conn = connect_once(url).await?;
    let v = schema::migrate(&mut conn.client).await?;
    println!("relay catalog installed (version {v})");
    Ok(ExitCode::SUCCESS)
}

async fn check_cmd(url: &str) -> anyhow::Result<ExitCode> {
    let conn = connect_once(url).await?;
    schema::verify(&conn.client).await?;
    let rows = pipelines::list(&conn.client).await?;
    let mut bad = 0;
    for row in &rows {
        let verdict = match row.parse() {
            Err(e) => Err(e.to_string()),
            Ok(PipelineSpec::Forward(spec)) if !spec.conflicts.is_empty() => Err(spec.conflicts.join("; ")),
            Ok(PipelineSpec::Forward(spec)) => match OutboxTable::resolve(&conn.client, &spec.outbox).await {
                Ok(t) => {
                    let shared = if row.enabled {
                        crate::pipeline::forward::shared_fifo_queue(&conn.client, &spec, &t).await
                    } else {
                        None
                    };
                    let names = crate::pipeline::forward::template_names(&spec, &t);
                    let envelope = crate::pipeline::forward::envelope_of(&spec, &names, &[]);
                    let sink_ctx = crate::sink::SinkContext {
                        pipeline: &spec.name,
                        subject_template: spec.subject_template.source(),
                        postgres_url: url,
                        names: &names,
                        // A check only builds the sink; it never writes.
                        dedup_scope: "check",
                        own_database: None,
                        envelope: &envelope,
                    };
                    match shared {
                        Some(conflict) => Err(conflict),
                        None => match crate::sink::build(&spec.sink, &sink_ctx).await {
                            Ok(_) => Ok(format!("{} -> {}", t.qualified(), spec.sink.kind.as_str())),
                            Err(e) => Err(report(&e)),
                        },
                    }
                }
                Err(e) => Err(report(&e)),
            },
            // The source is not contacted (that would bind a receiver or create consumers).
            Ok(PipelineSpec::Reverse(spec)) => {
                use crate::pipeline::reverse::inbox_table;
                let table = inbox_table(&spec);
                match table.ensure(&conn.client, false).await {
                    Err(e) => Err(e.to_string()),
                    Ok(()) => Ok(format!("{} -> {}", spec.source_type, table.qualified())),
                }
            }
        };
        let enabled = if row.enabled { "enabled" } else { "disabled" };
        match verdict {
            Ok(what) => println!("ok     {} ({}, {enabled}): {what}", row.name, row.direction.as_str()),
            Err(e) => {
                bad += 1;
                println!("ERROR  {} ({}, {enabled}): {e}", row.name, row.direction.as_str());
            }
        }
    }
    println!("{} pipeline(s) checked, {bad} invalid", rows.len());
    Ok(if bad == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

async fn pipelines_cmd(url: &str, group: &str, cmd: PipelinesCommand) -> anyhow::Result<ExitCode> {
    let conn = connect_once(url).await?;
    match cmd {
        PipelinesCommand::List { json } => {
            let rows = pipelines::list(&conn.client).await?;
            let statuses = status::read(&conn.client, group).await.unwrap_or_default();
            let mut out = Vec::new();
            for row in &rows {
                let st = statuses.iter().find(|s| s.name == row.name && s.direction == row.direction);
                let target = match row.parse() {
                    Ok(PipelineSpec::Forward(f)) => f.sink.kind.as_str().to_owned(),
                    Ok(PipelineSpec::Reverse(r)) => r.source_type.to_owned(),
                    Err(_) => "?".to_owned(),
                };
                out.push(serde_json::json!({
                    "name": row.name,
                    "direction": row.direction.as_str(),
                    "enabled": row.enabled,
                    "backend": target,
                    "state": st.map(|s| s.state.clone()).unwrap_or_else(|| if row.enabled { "unowned".into() } else { "disabled".into() }),
                    "owner": st.and_then(|s| s.owner.clone()),
                    "committed_offset": st.and_then(|s| s.committed_offset),
                    "lag_rows": st.and_then(|s| s.lag_rows),
                    "messages_total": st.map(|s| s.messages_total).unwrap_or(0),
                    "errors_total": st.map(|s| s.errors_total).unwrap_or(0),
                    "last_error": st.and_then(|s| s.last_error.clone()),
                    "heartbeat_age_seconds": st.map(|s| s.heartbeat_age_seconds),
                }));
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                print_table(&out);
            }
        }
        PipelinesCommand::Show { name } => {
            let rows: Vec<_> = pipelines::list(&conn.client).await?.into_iter().filter(|r| r.name == name).collect();
            if rows.is_empty() {
                anyhow::bail!("pipeline '{name}' not found");
            }
            let statuses = status::read(&conn.client, group).await.unwrap_or_default();
            for row in rows {
                let st = statuses.iter().find(|s| s.name == row.name && s.direction == row.direction);
                let outbox = match row.direction {
                    Direction::Forward => {
                        crate::outbox::epoch::describe(&conn.client, group, &row.name).await.ok().flatten()
                    }
                    Direction::Reverse => None,
                };
                let validation = match row.parse() {
                    Ok(_) => serde_json::Value::String("ok".into()),
                    Err(e) => serde_json::Value::String(e.to_string()),
                };
                let v = serde_json::json!({
                    "name": row.name,
                    "direction": row.direction.as_str(),
                    "enabled": row.enabled,
                    "config": redact_config(&row.config),
                    "validation": validation,
                    "status": st.map(|s| serde_json::json!({
                        "state": s.state, "owner": s.owner, "committed_offset": s.committed_offset,
                        "lag_rows": s.lag_rows, "messages_total": s.messages_total, "errors_total": s.errors_total,
                        "last_error": s.last_error, "heartbeat_age_seconds": s.heartbeat_age_seconds,
                    })),
                    "outbox": outbox,
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
            }
        }
        PipelinesCommand::Enable { name } => {
            pipelines::set_state(&conn.client, &name, pipelines::PipelineAction::Enable).await?;
            println!("pipeline '{name}' enabled");
        }
        PipelinesCommand::Disable { name } => {
            pipelines::set_state(&conn.client, &name, pipelines::PipelineAction::Disable).await?;
            println!("pipeline '{name}' disabled");
        }
        PipelinesCommand::ResetState { name } => {
            let rows = conn
                .client
                .execute(
                    "WITH b AS (DELETE FROM pgtrickle.relay_snapshot_baseline WHERE relay_group_id = $1 AND pipeline = $2)
                     DELETE FROM pgtrickle.relay_snapshot_state WHERE relay_group_id = $1 AND pipeline = $2",
                    &[&group, &name],
                )
                .await?;
            println!(
                "pipeline '{name}' (relay group '{group}'): forgot {rows} kept row(s); its next snapshot is relayed as a first one"
            );
        }
        PipelinesCommand::Delete { name } => {
            pipelines::set_state(&conn.client, &name, pipelines::PipelineAction::Delete).await?;
            println!("pipeline '{name}' deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(rows: &[serde_json::Value]) {
    let cols = [
        "name",
        "direction",
        "enabled",
        "backend",
        "state",
        "owner",
        "committed_offset",
        "lag_rows",
        "messages_total",
        "last_error",
    ];
    let cell = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "-".to_owned(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut widths: Vec<usize> = cols.iter().map(|c| c.len()).collect();
    for r in rows {
        for (i, c) in cols.iter().enumerate() {
            widths[i] = widths[i].max(cell(&r[*c]).chars().count().min(60));
        }
    }
    let line = |vals: Vec<String>| {
        vals.iter()
            .enumerate()
            .map(|(i, v)| format!("{:w$}", v.chars().take(60).collect::<String>(), w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
    };
    println!("{}", line(cols.iter().map(|c| c.to_uppercase()).collect()).trim_end());
    for r in rows {
        println!("{}", line(cols.iter().map(|c| cell(&r[*c])).collect()).trim_end());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::parse_duration;
    use crate::telemetry::LogFormat;
    use clap::CommandFactory;
    use std::time::Duration;

    #[test]
    fn cli_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn seed_flags_parse_with_defaults() {
        let cli = Cli::try_parse_from(["pgtrickle-relay", "--postgres-url", "postgres://x@h/db"]).unwrap();
        assert_eq!(cli.global.metrics_addr.to_string(), "0.0.0.0:9090");
        assert_eq!(cli.global.log_format, LogFormat::Text);
        assert_eq!(cli.global.log_level, "info");
        assert_eq!(cli.global.relay_group_id, "default");
        assert!(cli.command.is_none());
        let cli = Cli::try_parse_from([
            "pgtrickle-relay",
            "--postgres-url",
            "postgres://relay:password@localhost:5432/mydb",
            "--metrics-addr",
            "0.0.0.0:9191",
            "--log-format",
            "json",
            "--relay-group-id",
            "dc1-relay",
        ])
        .unwrap();
        assert_eq!(cli.global.log_format, LogFormat::Json);
        assert_eq!(cli.global.relay_group_id, "dc1-relay");
        let cli = Cli::try_parse_from(["pgtrickle-relay", "pipelines", "list", "--relay-group-id", "g"]).unwrap();
        assert_eq!(cli.global.relay_group_id, "g");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }
}
