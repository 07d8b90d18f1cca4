//! Commit-order torture: many concurrent writers whose transactions commit out of id order
//! (and some roll back). A reader that hands out `id > offset` loses rows here; ours must not.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use relay_e2e::*;
use serde_json::json;

const WRITERS: usize = 64;
const TX_PER_WRITER: usize = 15;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn out_of_order_commits_from_many_writers_lose_nothing() {
    let (db, c, outbox) = db_with_outbox("torture").await;
    let path = temp_path("torture.jsonl");
    c.execute(
        "SELECT pgtrickle.set_relay_outbox('torture', config => $1::jsonb)",
        &[&json!({"stream_table": "torture", "sink_type": "file", "path": path.to_str().unwrap(), "poll_interval_ms": 10, "batch_size": 7, "delta_mode": "snapshot"})],
    )
    .await
    .unwrap();
    let relay = Relay::start(&db.url, "default", &[]);

    let committed = Arc::new(Mutex::new(BTreeSet::new()));
    let rolled_back = Arc::new(Mutex::new(BTreeSet::new()));
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let (url, outbox, committed, rolled_back) =
            (db.url.clone(), outbox.clone(), committed.clone(), rolled_back.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = connect(&url).await;
            for t in 0..TX_PER_WRITER {
                let tx = client.transaction().await.unwrap();
                let id: i64 = tx
                    .query_one(
                        &format!(
                            "INSERT INTO pgtrickle.\"{outbox}\" (inserted_count, payload) VALUES (1, $1) RETURNING id"
                        ),
                        &[&json!([{"w": w, "t": t}])],
                    )
                    .await
                    .unwrap()
                    .get(0);
                tx.execute("SELECT pg_notify('pgtrickle_outbox_new', $1)", &[&outbox]).await.unwrap();
                // Hold the id uncommitted for a while so later ids commit first.
                tokio::time::sleep(Duration::from_millis(fastrand::u64(0..40))).await;
                if fastrand::u8(0..10) == 0 {
                    tx.rollback().await.unwrap();
                    rolled_back.lock().unwrap().insert(id);
                } else {
                    tx.commit().await.unwrap();
                    committed.lock().unwrap().insert(id);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let committed = committed.lock().unwrap().clone();
    let rolled_back = rolled_back.lock().unwrap().clone();
    let max_id = *committed.iter().max().unwrap();
    eventually(Duration::from_secs(30), "relay caught up", || async {
        (committed_offset(&c, "default", "torture").await.unwrap_or(0) >= max_id).then_some(())
    })
    .await;
    let lines = read_jsonl(&path);
    let delivered: BTreeSet<i64> = lines.iter().map(|m| m["outbox_id"].as_i64().unwrap()).collect();
    let missing: Vec<&i64> = committed.difference(&delivered).collect();
    assert!(missing.is_empty(), "lost {} committed rows: {missing:?}\n{}", missing.len(), relay.stderr());
    assert!(delivered.is_disjoint(&rolled_back), "relayed a rolled-back row");
    assert_eq!(lines.len(), committed.len(), "each committed row exactly once");
    // Delivered in outbox order.
    let order: Vec<i64> = lines.iter().map(|m| m["outbox_id"].as_i64().unwrap()).collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "not in outbox id order");
    assert!(committed.len() >= WRITERS * TX_PER_WRITER / 2);
    let _ = std::fs::remove_file(&path);
}

/// The coordinator's sequence watch wakes an idle pipeline as soon as an id is taken — before
/// the writing transaction commits, so the woken pipeline finds nothing yet. The commit itself
/// moves no sequence and (here) sends no notification: the pipeline must look again while that
/// writer is open, not only at its minute-long safety poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_committed_after_the_watch_woke_the_pipeline_is_not_left_for_the_safety_poll() {
    let (db, c, outbox) = db_with_outbox("late_commit").await;
    let path = temp_path("late_commit.jsonl");
    c.execute(
        "SELECT pgtrickle.set_relay_outbox('late_commit', config => $1::jsonb)",
        &[&json!({"stream_table": "late_commit", "sink_type": "file", "path": path.to_str().unwrap(), "delta_mode": "snapshot"})],
    )
    .await
    .unwrap();
    let relay = Relay::start(&db.url, "default", &[]);
    let insert = format!("INSERT INTO pgtrickle.\"{outbox}\" (inserted_count, payload) VALUES (1, $1) RETURNING id");
    let first: i64 = c.query_one(&insert, &[&json!([{"n": 1}])]).await.unwrap().get(0);
    eventually(Duration::from_secs(15), "the first row relayed", || async {
        (committed_offset(&c, "default", "late_commit").await.unwrap_or(0) >= first).then_some(())
    })
    .await;

    let mut writer = connect(&db.url).await;
    let tx = writer.transaction().await.unwrap();
    let second: i64 = tx.query_one(&insert, &[&json!([{"n": 2}])]).await.unwrap().get(0);
    // Long enough for the watch (once a second) to see the sequence move and wake the pipeline.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    tx.commit().await.unwrap();
    let committed = std::time::Instant::now();
    eventually(Duration::from_secs(10), "the late-committed row relayed", || async {
        (committed_offset(&c, "default", "late_commit").await.unwrap_or(0) >= second).then_some(())
    })
    .await;
    let lines = read_jsonl(&path);
    let ids: Vec<i64> = lines.iter().map(|m| m["outbox_id"].as_i64().unwrap()).collect();
    assert_eq!(ids, vec![first, second], "{}", relay.stderr());
    eprintln!("late-committed row relayed {:.2} s after its commit", committed.elapsed().as_secs_f64());
    let _ = std::fs::remove_file(&path);
}
