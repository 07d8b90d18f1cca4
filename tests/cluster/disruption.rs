//! Relay pods replaced on purpose: a rotated database URL rolls them (a new ReplicaSet, never
//! fewer than the wanted Ready pods) and relaying goes on; `kubectl drain`-style evictions stop at
//! the PodDisruptionBudget.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use relay_e2e::cluster::{pod_database_url, Scenario, PIPELINE};
use relay_e2e::eventually_every;
use relay_e2e::lock_holder;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_database_url_rolls_the_pods_and_relaying_continues() {
    let s = Scenario::start("rotate", 2).await;
    let old_pods: BTreeSet<String> = s.ready_pods().await.into_iter().collect();
    let old_sets: BTreeSet<String> = s.replica_sets().await.into_iter().map(|(name, _)| name).collect();
    assert_eq!(old_sets.len(), 1, "{old_sets:?}");
    s.write_rows(500).await;
    s.expect_every_row_once(Duration::from_secs(30)).await;

    // An equivalent URL with another parameter, as a credential rotation would write it; the
    // operator re-reads the Secret at its next reconcile (it may only `get` Secrets: no watch).
    let rotated = format!("{}?application_name=relay-rotated", pod_database_url(&s.db, &s.host_ip));
    let secrets: Api<Secret> = Api::namespaced(s.client.clone(), &s.ns.name);
    secrets.patch("db", &PatchParams::default(), &Patch::Merge(json!({"stringData": {"url": rotated}}))).await.unwrap();
    let rotated_at = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = s.spawn_writer(u32::MAX, 10, Duration::from_millis(250), stop.clone());

    // A new ReplicaSet replaces the old one, one pod at a time (maxSurge 1, maxUnavailable 0).
    let mut fewest_ready = usize::MAX;
    let mut rolled_after = None;
    let new_pods = loop {
        let ready = s.ready_pods().await;
        fewest_ready = fewest_ready.min(ready.len());
        let sets = s.replica_sets().await;
        if rolled_after.is_none() && sets.iter().any(|(name, _)| !old_sets.contains(name)) {
            rolled_after = Some(rotated_at.elapsed());
        }
        let done = ready.len() == 2
            && s.pods().await.len() == 2
            && ready.iter().all(|p| !old_pods.contains(p))
            && sets.iter().all(|(name, n)| old_sets.contains(name) == (*n == 0));
        if done {
            break ready;
        }
        assert!(rotated_at.elapsed() < Duration::from_secs(120), "the pods did not roll: {ready:?}, {sets:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let rolled_after = rolled_after.unwrap();
    eprintln!(
        "[cluster] Secret rotated: new ReplicaSet after {rolled_after:.1?}, roll done after {:.1?}: {old_pods:?} → {new_pods:?}",
        rotated_at.elapsed()
    );
    assert!(fewest_ready >= 2, "the roll left only {fewest_ready} Ready relay pods (maxUnavailable is 0)");

    // Relaying went on across the roll, by a pod that connected with the rotated URL.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let during = writer.finish().await;
    s.write_rows(500).await;
    s.expect_every_row_once(Duration::from_secs(60)).await;
    let owner = eventually_every(Duration::from_secs(15), Duration::from_millis(200), "ownerPod a new pod", || async {
        s.owner_pod().await.filter(|p| new_pods.contains(p))
    })
    .await;
    let backend = lock_holder(&s.sql, &s.group, PIPELINE).await.unwrap();
    let app: String = s
        .sql
        .query_one("SELECT application_name FROM pg_stat_activity WHERE pid = $1", &[&backend])
        .await
        .unwrap()
        .get(0);
    assert_eq!(app, "relay-rotated", "the owner pod {owner} does not use the rotated URL");
    eprintln!("[cluster] {} rows relayed once across the roll ({during} written during it)", 1000 + during);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evictions_respect_the_pod_disruption_budget() {
    let s = Scenario::start("evict", 2).await;
    let pods = s.ready_pods().await;
    assert_eq!(s.pdb()["spec"]["maxUnavailable"], 1);
    eventually_every(Duration::from_secs(30), Duration::from_millis(200), "PDB allows 1 disruption", || async {
        (s.pdb()["status"]["disruptionsAllowed"] == 1).then_some(())
    })
    .await;

    // As `kubectl drain` does: evict one pod (allowed), then the other while the first is down.
    s.evict(&pods[0]).await.unwrap_or_else(|e| panic!("first eviction refused: {e}"));
    match s.evict(&pods[1]).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 429, "{status:?}");
            assert!(status.message.contains("disruption budget"), "{}", status.message);
        }
        other => panic!("the second eviction must be refused while one pod is down: {other:?}"),
    }
    assert!(s.pods().await.iter().any(|p| p.metadata.name.as_ref() == Some(&pods[1])), "the refused pod stays");

    // Once the replacement is Ready, the budget allows the next eviction (drain retries until then).
    let t = Instant::now();
    eventually_every(Duration::from_secs(60), Duration::from_millis(250), "second eviction", || async {
        match s.evict(&pods[1]).await {
            Ok(()) => Some(()),
            Err(kube::Error::Api(status)) if status.code == 429 => None,
            Err(e) => panic!("eviction failed: {e}"),
        }
    })
    .await;
    eprintln!("[cluster] second eviction allowed {:.1?} after the first", t.elapsed());
    let after = s.wait_ready_pods(2, Duration::from_secs(60)).await;
    assert!(after.iter().all(|p| !pods.contains(p)), "both pods replaced: {pods:?} → {after:?}");

    // Relaying still works after the drain.
    s.write_rows(200).await;
    s.expect_every_row_once(Duration::from_secs(30)).await;
}
