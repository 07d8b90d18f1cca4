//! A huge claim-check row holds a read transaction (and its connection) while every page is
//! published. Several of them at once must not take the whole work pool: they stream within a
//! bounded share of it, and the other pipelines' batches go on meanwhile.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use relay_e2e::http::WebhookServer;
use relay_e2e::*;
use serde_json::{json, Value};

const BIG: usize = 3;
const SMALL: usize = 3;
const ROWS: usize = 1_000;
const PAGE: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_claim_checks_to_a_slow_target_leave_connections_for_the_other_pipelines() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let (status, _, err) = run_cli(&db.url, &["migrate"]);
    assert!(status.success(), "migrate failed: {err}");
    let server = WebhookServer::start().await;
    // Each page of 50 rows is one request, answered after 100 ms: a big pipeline streams for
    // about 2 s; the small ones relay one row each.
    server.delay_ms.store(100, std::sync::atomic::Ordering::SeqCst);
    let mut big = Vec::new();
    for i in 0..BIG {
        let st = format!("big{i}");
        let outbox = enable_outbox(&c, &st, None).await;
        c.execute(
            "SELECT pgtrickle.set_relay_outbox($1::text, config => $2::jsonb)",
            &[
                &format!("big-{i}"),
                &json!({"stream_table": st, "sink_type": "webhook", "webhook_url": server.url(&format!("/big{i}")),
                        "delta_mode": "snapshot", "claim_check_page_size": PAGE}),
            ],
        )
        .await
        .unwrap();
        big.push((st, outbox));
    }
    let mut small = Vec::new();
    for i in 0..SMALL {
        let st = format!("small{i}");
        let outbox = enable_outbox(&c, &st, None).await;
        let path = temp_path(&format!("small{i}.jsonl"));
        c.execute(
            "SELECT pgtrickle.set_relay_outbox($1::text, config => $2::jsonb)",
            &[
                &format!("small-{i}"),
                &json!({"stream_table": st, "sink_type": "file", "path": path.to_str().unwrap(), "delta_mode": "snapshot"}),
            ],
        )
        .await
        .unwrap();
        small.push((format!("small-{i}"), outbox, path));
    }
    // 6 connections: the catalog, the lock session, one for pg-inbox sinks and 3 work
    // connections — of which claim-check cursors may hold at most one at a time.
    let relay = Relay::start(&db.url, "default", &["--max-db-connections", "6"]);
    eventually(Duration::from_secs(20), "all six pipelines running", || async {
        let h = relay.health();
        let running = h["pipelines"].as_array().unwrap().iter().filter(|p| p["state"] == "running").count();
        (running == BIG + SMALL).then_some(())
    })
    .await;

    for (st, outbox) in &big {
        let rows: Vec<(bool, Value)> = (0..ROWS).map(|r| (false, json!({"id": r, "table": st}))).collect();
        write_claim_check(&c, outbox, st, &rows).await;
    }
    let total_requests = BIG * ROWS / PAGE;
    eventually(Duration::from_secs(20), "the big pipelines streaming", || async {
        (server.all().len() >= 2).then_some(())
    })
    .await;

    // While they stream, a row for each small pipeline.
    let started = Instant::now();
    let mut last = Vec::new();
    for (name, outbox, _) in &small {
        last.push((name.clone(), write_inline(&c, outbox, Some(json!([{"small": name}]))).await));
    }
    for (name, id) in &last {
        eventually(Duration::from_secs(30), &format!("{name} committed"), || async {
            (committed_offset(&c, "default", name).await.unwrap_or(0) >= *id).then_some(())
        })
        .await;
    }
    let sent_meanwhile = server.all().len();
    eprintln!(
        "small pipelines relayed after {:?}, when the target had {sent_meanwhile} of {total_requests} big requests",
        started.elapsed()
    );
    assert!(
        sent_meanwhile < total_requests / 2,
        "the small pipelines waited for the big ones: {sent_meanwhile} of {total_requests} requests were in when they got through\n{}",
        relay.stderr()
    );

    // The big ones finish, every row exactly once.
    eventually(Duration::from_secs(60), "every big row delivered", || async {
        (server.accepted().len() >= total_requests).then_some(())
    })
    .await;
    let mut seen = HashSet::new();
    let mut delivered = 0;
    for r in server.accepted() {
        for m in r.json().as_array().cloned().unwrap_or_else(|| vec![r.json()]) {
            delivered += 1;
            seen.insert((m["payload"]["table"].as_str().unwrap().to_owned(), m["payload"]["id"].as_i64().unwrap()));
        }
    }
    assert_eq!(delivered, BIG * ROWS, "each big row once");
    assert_eq!(seen.len(), BIG * ROWS, "each big row once");
    for (name, _, path) in &small {
        let lines = read_jsonl(path);
        assert_eq!(lines.len(), 1, "{name}");
        let _ = std::fs::remove_file(path);
    }
}
