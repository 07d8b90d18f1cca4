//! `pgtrickle-relay demo`: a self-contained tour against a local PostgreSQL.
//!
//! pg_trickle itself cannot be installed everywhere, so the demo creates an outbox of exactly
//! pg_trickle 0.45's shape (`pgtrickle.outbox_demo_orders` + its claim-check table), registers a
//! pipeline with the seed README's SQL, starts the relay in-process and writes refreshes in
//! every payload form. Messages appear on stdout; the narration goes to stderr. With the real
//! extension you would call `pgtrickle.enable_outbox('demo_orders')` instead of creating the
//! tables, and the relay would find the outbox through `pgtrickle.pgt_outbox_config`.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::catalog::{self, schema};
use crate::cli::{GlobalArgs, RunArgs};

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Keep the relay running after the demo rows were relayed (insert more rows yourself)
    #[arg(long)]
    pub follow: bool,
}

const PIPELINE: &str = "demo-orders-to-stdout";

const SETUP: &str = r#"
DROP TABLE IF EXISTS pgtrickle.outbox_demo_orders, pgtrickle.outbox_delta_rows_demo_orders;
CREATE TABLE pgtrickle.outbox_demo_orders (
    id             bigserial   PRIMARY KEY,
    pgt_id         uuid        NOT NULL DEFAULT gen_random_uuid(),
    refresh_id     uuid,
    created_at     timestamptz NOT NULL DEFAULT now(),
    inserted_count bigint      NOT NULL DEFAULT 0,
    deleted_count  bigint      NOT NULL DEFAULT 0,
    is_claim_check boolean     NOT NULL DEFAULT false,
    payload        jsonb
);
CREATE TABLE pgtrickle.outbox_delta_rows_demo_orders (
    outbox_id bigint NOT NULL,
    row_num   bigint NOT NULL,
    row_op    text   NOT NULL CHECK (row_op IN ('INSERT', 'DELETE')),
    row_data  jsonb  NOT NULL,
    PRIMARY KEY (outbox_id, row_num)
);
"#;

/// The seed README's registration SQL, for this demo's stream table and the stdout sink.
const REGISTER: &str = r#"
SELECT pgtrickle.set_relay_outbox(
    'demo-orders-to-stdout',
    config => '{
        "stream_table": "demo_orders",
        "sink_type": "stdout",
        "subject_template": "pgtrickle.{stream_table}.{op}",
        "key_columns": ["order_id"]
    }'::jsonb
);
SELECT pgtrickle.enable_relay('demo-orders-to-stdout');
"#;

/// Refreshes as pg_trickle writes them, each with a line of narration.
const REFRESHES: &[(&str, &str)] = &[
    (
        "a pg_trickle 0.45 refresh: the whole stream table as a JSON array, with internal __pgt_* columns (stripped on the way out)",
        r#"INSERT INTO pgtrickle.outbox_demo_orders (inserted_count, payload) VALUES (2,
           '[{"order_id": 1, "customer": "ada", "total": 175.0, "__pgt_row_id": 3007003519974542822, "__pgt_count": 1},
             {"order_id": 2, "customer": "grace", "total": 42.5, "__pgt_row_id": 4424324931843186853, "__pgt_count": 1}]')"#,
    ),
    (
        "a differential delta ({\"v\":1,…}): order 2 changed (delete+insert of one key = update) and order 1 was deleted",
        r#"INSERT INTO pgtrickle.outbox_demo_orders (inserted_count, deleted_count, payload) VALUES (1, 2,
           '{"v": 1, "inserted": [{"order_id": 2, "customer": "grace", "total": 50.0}],
                     "deleted":  [{"order_id": 2, "customer": "grace", "total": 42.5},
                                  {"order_id": 1, "customer": "ada", "total": 175.0}]}')"#,
    ),
    (
        "a large refresh stored claim-check style: payload NULL, rows in pgtrickle.outbox_delta_rows_demo_orders",
        r#"WITH h AS (INSERT INTO pgtrickle.outbox_demo_orders (inserted_count, is_claim_check, payload)
                      VALUES (3, true, NULL) RETURNING id)
           INSERT INTO pgtrickle.outbox_delta_rows_demo_orders (outbox_id, row_num, row_op, row_data)
           SELECT h.id, g, 'INSERT', jsonb_build_object('order_id', 100 + g, 'customer', 'bulk', 'total', g * 10.0)
             FROM h, generate_series(1, 3) g"#,
    ),
];

pub async fn run(g: &GlobalArgs, r: &RunArgs, url: String, args: DemoArgs) -> ExitCode {
    match prepare(&url).await {
        Ok(()) => {}
        Err(e) => {
            eprintln!("demo: {e}");
            return ExitCode::FAILURE;
        }
    }
    let stop = CancellationToken::new();
    let relay = {
        let (g, r, url, stop) = (g.clone(), r.clone(), url.clone(), stop.clone());
        tokio::spawn(async move { crate::cli::run(&g, &r, url, stop).await })
    };
    match write_and_wait(&url, &stop).await {
        Ok(last) => {
            eprintln!("demo: all outbox rows up to id {last} relayed (messages above, on stdout).");
            if args.follow {
                eprintln!("demo: relay keeps running (Ctrl-C to stop). Try: psql -c \"SELECT pgtrickle.disable_relay('{PIPELINE}')\"");
            } else {
                stop.cancel();
            }
        }
        Err(e) => {
            eprintln!("demo: {e}");
            stop.cancel();
            let _ = relay.await;
            return ExitCode::FAILURE;
        }
    }
    relay.await.unwrap_or(ExitCode::FAILURE)
}

async fn prepare(url: &str) -> Result<(), String> {
    let mut conn = catalog::connect(url, "pgtrickle-relay-demo", None)
        .await
        .map_err(|e| format!("cannot connect to PostgreSQL at {}: {e}", catalog::redact_url(url)))?;
    schema::migrate(&mut conn.client).await.map_err(|e| e.to_string())?;
    conn.client.batch_execute(SETUP).await.map_err(|e| format!("cannot create the demo outbox: {e}"))?;
    conn.client
        .execute("DELETE FROM pgtrickle.relay_consumer_offsets WHERE pipeline_id = $1", &[&PIPELINE])
        .await
        .map_err(|e| e.to_string())?;
    eprintln!("demo: created pgtrickle.outbox_demo_orders (pg_trickle 0.45 outbox shape) and its claim-check table");
    conn.client.batch_execute(REGISTER).await.map_err(|e| format!("cannot register the demo pipeline: {e}"))?;
    eprintln!("demo: registered pipeline '{PIPELINE}' with the seed README's SQL:{REGISTER}");
    Ok(())
}

async fn write_and_wait(url: &str, stop: &CancellationToken) -> Result<i64, String> {
    let conn = catalog::connect(url, "pgtrickle-relay-demo", None).await.map_err(|e| e.to_string())?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (what, sql) in REFRESHES {
        eprintln!("demo: writing {what}");
        conn.client.batch_execute(sql).await.map_err(|e| format!("cannot write demo outbox row: {e}"))?;
        conn.client
            .batch_execute("NOTIFY pgtrickle_outbox_new, 'outbox_demo_orders'")
            .await
            .map_err(|e| e.to_string())?;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let last: i64 = conn
        .client
        .query_one("SELECT max(id) FROM pgtrickle.outbox_demo_orders", &[])
        .await
        .map_err(|e| e.to_string())?
        .get(0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let done: Option<i64> = conn
            .client
            .query_opt(
                "SELECT last_change_id FROM pgtrickle.relay_consumer_offsets WHERE pipeline_id = $1",
                &[&PIPELINE],
            )
            .await
            .map_err(|e| e.to_string())?
            .map(|r| r.get(0));
        if done.is_some_and(|d| d >= last) {
            return Ok(last);
        }
        if stop.is_cancelled() || tokio::time::Instant::now() > deadline {
            return Err("the relay did not relay the demo rows within 30 s; see the log above".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
