//! Several relays of one group: every pipeline owned by exactly one; a killed owner is
//! replaced within the discovery interval; messages are neither lost nor doubled.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use relay_e2e::*;
use serde_json::{json, Value};

/// A migrated database with one stdout pipeline (and its outbox) per name; returns the outboxes.
async fn stdout_pipelines(names: &[&str]) -> (TestDb, tokio_postgres::Client, Vec<String>) {
    let db = TestDb::new().await;
    let c = db.client().await;
    assert!(run_cli(&db.url, &["migrate"]).0.success());
    let mut outboxes = Vec::new();
    for n in names {
        let st = n.replace('-', "_");
        outboxes.push(enable_outbox(&c, &st, None).await);
        let config =
            json!({"stream_table": st, "sink_type": "stdout", "poll_interval_ms": 100, "delta_mode": "snapshot"});
        c.execute("SELECT pgtrickle.set_relay_outbox($1, config => $2::jsonb)", &[n, &config]).await.unwrap();
    }
    (db, c, outboxes)
}

/// Waits until every pipeline of `names` (each on `outbox_<name>`) committed its outbox's last row.
async fn all_relayed(c: &tokio_postgres::Client, group: &str, names: &[&str], wait: Duration) {
    for n in names {
        let last: i64 = c
            .query_one(&format!("SELECT max(id) FROM pgtrickle.\"outbox_{}\"", n.replace('-', "_")), &[])
            .await
            .unwrap()
            .get(0);
        eventually(wait, "every outbox relayed", || async {
            (committed_offset(c, group, n).await == Some(last)).then_some(())
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_share_pipelines_and_fail_over_without_loss() {
    let names = ["ha-a", "ha-b", "ha-c", "ha-d"];
    let (db, c, outboxes) = stdout_pipelines(&names).await;
    let mut r1 = Relay::start(&db.url, "ha-group", &[]);
    let r2 = Relay::start(&db.url, "ha-group", &[]);
    // Give both a chance to discover; then each pipeline must have exactly one holder.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut owners = BTreeMap::new();
    for n in names {
        let holders: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2 AND granted
                   AND classid::int8 = (hashtext('ha-group')::int8 & 4294967295) AND objid::int8 = (hashtext($1)::int8 & 4294967295)",
                &[&n],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(holders, 1, "pipeline {n} must have exactly one owner");
        owners.insert(n, lock_holder(&c, "ha-group", n).await.unwrap());
    }
    let owned_by = |relay: &Relay| relay.health()["pipelines_owned"].as_u64().unwrap();
    assert_eq!(owned_by(&r1) + owned_by(&r2), 4);

    // Stream rows, kill relay 1 (SIGKILL) halfway, keep streaming.
    let mut written = 0;
    let ha_a_holder_before = owners["ha-a"];
    for round in 0..40 {
        for o in &outboxes {
            write_inline(&c, o, Some(json!([{"round": round}]))).await;
            written += 1;
        }
        if round == 20 {
            let killed_owned = owned_by(&r1);
            r1.kill();
            let t = Instant::now();
            if killed_owned > 0 {
                // Every pipeline must be held again (by relay 2) within discovery (500 ms) + 1 s.
                eventually(Duration::from_secs(10), "all pipelines re-owned", || async {
                    let mut all = true;
                    for n in names {
                        all &= lock_holder(&c, "ha-group", n).await.is_some();
                    }
                    all.then_some(())
                })
                .await;
                let failover = t.elapsed();
                assert!(failover <= Duration::from_millis(1500), "failover took {failover:?}");
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = ha_a_holder_before;
    eventually(Duration::from_secs(20), "relay 2 owns everything", || async { (owned_by(&r2) == 4).then_some(()) })
        .await;
    all_relayed(&c, "ha-group", &names, Duration::from_secs(20)).await;
    let all: Vec<Value> = r1.messages().into_iter().chain(r2.messages()).collect();
    let keys: BTreeSet<String> = all.iter().map(|m| m["dedup_key"].as_str().unwrap().to_owned()).collect();
    assert_eq!(keys.len(), written, "every row relayed (no loss)");
    // Duplicates are possible only for batches relay 1 published but had not committed.
    let dups = all.len() - keys.len();
    assert!(dups <= 4 * 100, "too many duplicates: {dups}");
    // Before the kill nothing was relayed by both relays.
    let r1_keys: BTreeSet<String> = r1.messages().iter().map(|m| m["dedup_key"].as_str().unwrap().to_owned()).collect();
    let r2_early: BTreeSet<String> = r2
        .messages()
        .iter()
        .filter(|m| m["payload"]["round"].as_i64().unwrap() < 15)
        .map(|m| m["dedup_key"].as_str().unwrap().to_owned())
        .collect();
    assert!(r1_keys.is_disjoint(&r2_early), "two relays relayed the same rows while both were alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_takes_its_fair_share_and_gives_it_back_when_it_dies() {
    let names = ["fair-a", "fair-b", "fair-c", "fair-d"];
    let (db, c, outboxes) = stdout_pipelines(&names).await;
    let owned_by = |relay: &Relay| relay.health()["pipelines_owned"].as_u64().unwrap_or(0);
    let r1 = Relay::start(&db.url, "fair", &[]);
    eventually(Duration::from_secs(10), "the only instance owns everything", || async {
        (owned_by(&r1) == 4).then_some(())
    })
    .await;
    let mut r2 = Relay::start(&db.url, "fair", &[]);
    eventually(Duration::from_secs(15), "two instances own two each", || async {
        (owned_by(&r1) == 2 && owned_by(&r2) == 2).then_some(())
    })
    .await;
    // Visible in SQL (written at the end of each instance's discovery): both instances, each at
    // its fair share; every pipeline has one owner.
    eventually(Duration::from_secs(5), "relay_instances shows two instances at their share", || async {
        let rows = c
            .query("SELECT pipelines, fair_share FROM pgtrickle.relay_instances WHERE relay_group_id = 'fair'", &[])
            .await
            .unwrap();
        (rows.len() == 2 && rows.iter().all(|r| r.get::<_, i32>(0) == 2 && r.get::<_, i32>(1) == 2)).then_some(())
    })
    .await;
    for n in names {
        assert!(lock_holder(&c, "fair", n).await.is_some(), "{n} is owned");
    }
    let owners: i64 = eventually(Duration::from_secs(10), "the status table shows both owners", || async {
        let n: i64 = c
            .query_one(
                "SELECT count(DISTINCT owner) FROM pgtrickle.relay_pipeline_status
                  WHERE relay_group_id = 'fair' AND state = 'running'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        (n == 2).then_some(n)
    })
    .await;
    assert_eq!(owners, 2);

    // Rows written meanwhile are relayed exactly once across the hand-over.
    for o in &outboxes {
        write_inline(&c, o, Some(json!([{"x": 1}]))).await;
    }
    r2.kill();
    let t = Instant::now();
    eventually(Duration::from_secs(10), "the survivor owns everything again", || async {
        (owned_by(&r1) == 4).then_some(())
    })
    .await;
    assert!(t.elapsed() <= Duration::from_millis(1500), "take-over took {:?}", t.elapsed());
    all_relayed(&c, "fair", &names, Duration::from_secs(10)).await;
}

/// With a discovery interval far longer than the test, only the handover notifications can move
/// pipelines: an instance that joins gets its fair share at once, and one stopped with SIGTERM (a
/// rolling update, a scale-down) hands every pipeline to the survivor at once. Every hand-over
/// is graceful (the batch in flight is committed first), so each row arrives exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_and_stopping_instances_hand_pipelines_over_at_once() {
    let names = ["hand-a", "hand-b", "hand-c", "hand-d"];
    let (db, c, outboxes) = stdout_pipelines(&names).await;
    let owned_by = |relay: &Relay| relay.health()["pipelines_owned"].as_u64().unwrap_or(0);
    let slow_discovery = ["--discovery-interval", "300s"];
    let mut r1 = Relay::start(&db.url, "hand", &slow_discovery);
    eventually(Duration::from_secs(10), "the only instance owns everything", || async {
        (owned_by(&r1) == 4).then_some(())
    })
    .await;
    let mut written = 0;
    let mut write_round = |round: i32| {
        let (c, outboxes) = (&c, &outboxes);
        written += outboxes.len();
        async move {
            for o in outboxes {
                write_inline(c, o, Some(json!([{"round": round}]))).await;
            }
        }
    };
    write_round(0).await;

    let t = Instant::now();
    let r2 = Relay::start(&db.url, "hand", &slow_discovery);
    eventually(Duration::from_secs(10), "the newcomer gets its fair share", || async {
        (owned_by(&r1) == 2 && owned_by(&r2) == 2).then_some(())
    })
    .await;
    eprintln!("a joining instance had its fair share {:?} after it was started", t.elapsed());
    write_round(1).await;

    let t = Instant::now();
    assert!(r1.terminate().success(), "{}", r1.stderr());
    let stopped = t.elapsed();
    eventually(Duration::from_secs(10), "the survivor owns everything", || async {
        (owned_by(&r2) == 4).then_some(())
    })
    .await;
    eprintln!(
        "SIGTERM: the instance exited after {stopped:?}; the survivor owned everything {:?} after the signal",
        t.elapsed()
    );
    write_round(2).await;

    all_relayed(&c, "hand", &names, Duration::from_secs(10)).await;
    let all: Vec<Value> = r1.messages().into_iter().chain(r2.messages()).collect();
    let keys: BTreeSet<String> = all.iter().map(|m| m["dedup_key"].as_str().unwrap().to_owned()).collect();
    assert_eq!(keys.len(), written, "every row relayed");
    assert_eq!(all.len(), written, "graceful hand-overs relay no row twice");
}
