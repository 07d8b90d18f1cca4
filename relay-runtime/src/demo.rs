//! `pgtrickle-relay demo`: a self-contained tour against a local PostgreSQL.
//!
//! pg_trickle itself cannot be installed everywhere, so the demo creates an outbox of exactly
//! pg_trickle 0.45's shape (`pgtrickle.outbox_demo_orders` + its claim-check table), registers a
//! pipeline with the seed README's SQL, starts the relay in-process and writes three refreshes
//! as pg_trickle 0.45 does — whole-table snapshots, inline and claim-check — which the relay
//! turns into insert/update/delete events. Messages appear on stdout; the narration on stderr. With the real
//! extension you would call `pgtrickle.enable_outbox('demo_orders')` instead of creating the
//! tables, and the relay would find the outbox through `pgtrickle.pgt_outbox_config`.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::catalog::{self, schema};
use crate::runner::{GlobalArgs, RunArgs};

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
        "subject_template": "pgtrickle.{stream_table}.{op}"
    }'::jsonb
);
SELECT pgtrickle.enable_relay('demo-orders-to-stdout');
"#;

/// Refreshes as pg_trickle 0.45 writes them — always the whole stream table, with its
/// internal `__pgt_row_id` (the stable row identity) — each with a line of narration.
const REFRESHES: &[(&str, &str)] = &[
    (
        "refresh 1: the stream table as a JSON array (the first snapshot: every row an insert)",
        r#"INSERT INTO pgtrickle.outbox_demo_orders (inserted_count, payload) VALUES (2,
           '[{"order_id": 1, "customer": "ada", "total": 175.0, "__pgt_row_id": 3007003519974542822, "__pgt_count": 1},
             {"order_id": 2, "customer": "grace", "total": 42.5, "__pgt_row_id": 4424324931843186853, "__pgt_count": 1}]')"#,
    ),
    (
        "refresh 2: the whole table again; the relay diffs it against refresh 1 (order 2 updated, 3 new, 1 gone)",
        r#"INSERT INTO pgtrickle.outbox_demo_orders (inserted_count, payload) VALUES (3,
           '[{"order_id": 2, "customer": "grace", "total": 50.0, "__pgt_row_id": 4424324931843186853, "__pgt_count": 1},
             {"order_id": 3, "customer": "linus", "total": 10.0, "__pgt_row_id": 1152921504606846976, "__pgt_count": 1}]')"#,
    ),
    (
        "refresh 3: a large refresh stored claim-check style (payload NULL, rows in the delta table): only the 3 new orders are events",
        r#"WITH h AS (INSERT INTO pgtrickle.outbox_demo_orders (inserted_count, is_claim_check, payload)
                      VALUES (5, true, NULL) RETURNING id)
           INSERT INTO pgtrickle.outbox_delta_rows_demo_orders (outbox_id, row_num, row_op, row_data)
           SELECT h.id, r.n, 'INSERT', r.data FROM h, (VALUES
               (1, '{"order_id": 2, "customer": "grace", "total": 50.00, "__pgt_row_id": 4424324931843186853}'::jsonb),
               (2, '{"order_id": 3, "customer": "linus", "total": 10.00, "__pgt_row_id": 1152921504606846976}'::jsonb),
               (3, '{"order_id": 101, "customer": "bulk", "total": 10.0, "__pgt_row_id": 101}'::jsonb),
               (4, '{"order_id": 102, "customer": "bulk", "total": 20.0, "__pgt_row_id": 102}'::jsonb),
               (5, '{"order_id": 103, "customer": "bulk", "total": 30.0, "__pgt_row_id": 103}'::jsonb)) AS r(n, data)"#,
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
        tokio::spawn(async move { crate::runner::run(&g, &r, url, stop).await })
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
    for table in ["relay_consumer_offsets", "relay_snapshot_state", "relay_snapshot_baseline"] {
        let column = if table == "relay_consumer_offsets" { "pipeline_id" } else { "pipeline" };
        conn.client
            .execute(&format!("DELETE FROM pgtrickle.{table} WHERE {column} = $1"), &[&PIPELINE])
            .await
            .map_err(|e| e.to_string())?;
    }
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
