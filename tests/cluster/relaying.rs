//! Relay pods at work: a RelayGroup of 2 replicas runs 2 pods, Ready by their `/readyz`; one of
//! them relays a SQL pipeline to JetStream (every row exactly once) and is named the pipeline's
//! `ownerPod`; deleted mid-stream, the other pod takes over without losing or doubling a row.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::api::DeleteParams;
use relay_e2e::cluster::Scenario;
use relay_e2e::eventually_every;
use relay_e2e::http_get;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relay_pods_get_ready_relay_every_row_once_and_fail_over() {
    let s = Scenario::start("orders", 2).await;
    let pods = s.wait_ready_pods(2, Duration::from_secs(5)).await;

    // Readiness is the relay's own /readyz: the probe asks it, and each pod answers 200 there,
    // running under the Dockerfile's contract (uid 65532, read-only root filesystem).
    for pod in s.pods().await {
        let spec = pod.spec.as_ref().unwrap();
        let c = &spec.containers[0];
        assert_eq!(spec.security_context.as_ref().and_then(|sc| sc.run_as_user), Some(65532));
        assert_eq!(c.security_context.as_ref().and_then(|sc| sc.read_only_root_filesystem), Some(true));
        let probe = c.readiness_probe.as_ref().and_then(|p| p.http_get.as_ref()).unwrap();
        assert_eq!(probe.path.as_deref(), Some("/readyz"));
        assert_eq!(c.image.as_deref(), Some("pgtrickle-relay:dev"), "the operator's --relay-image from deploy/local");
        let ip = pod.status.as_ref().and_then(|st| st.pod_ip.clone()).unwrap();
        let (code, body) = http_get(&format!("{ip}:9090"), "/readyz").unwrap();
        assert_eq!(code, 200, "{}: /readyz answered {code}: {body}", pod.metadata.name.as_deref().unwrap_or(""));
    }

    // Rows relayed by one of the pods, each exactly once; the mirror names that pod.
    s.write_rows(1000).await;
    s.expect_every_row_once(Duration::from_secs(30)).await;
    let owner = eventually_every(Duration::from_secs(15), Duration::from_millis(200), "ownerPod set", || async {
        s.owner_pod().await
    })
    .await;
    assert!(pods.contains(&owner), "ownerPod {owner} is not one of the group's pods {pods:?}");
    let survivor = pods.iter().find(|p| **p != owner).unwrap().clone();

    // The owner pod is deleted while rows keep coming: the other pod takes over.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = s.spawn_writer(u32::MAX, 50, Duration::from_millis(50), stop.clone());
    eventually_every(Duration::from_secs(30), Duration::from_millis(50), "the stream under way", || async {
        (s.stored().await >= 1000 + 300).then_some(())
    })
    .await;
    s.pods_api().delete(&owner, &DeleteParams::default()).await.unwrap();
    let deleted_at = Instant::now();
    let at_delete = writer.written();
    let new_owner =
        eventually_every(Duration::from_secs(30), Duration::from_millis(100), "ownerPod changes", || async {
            s.owner_pod().await.filter(|p| *p != owner)
        })
        .await;
    let took = deleted_at.elapsed();
    // The surviving pod usually takes over; the Deployment's replacement pod may start and win
    // the lock first when the owner's graceful stop released it. Either is a pod of the group.
    let group_pods: Vec<String> = s.pods().await.iter().filter_map(|p| p.metadata.name.clone()).collect();
    assert!(group_pods.contains(&new_owner), "new owner {new_owner} is not a pod of the group {group_pods:?}");
    // Some more rows for the new owner, then the writer stops.
    eventually_every(
        Duration::from_secs(30),
        Duration::from_millis(50),
        "rows written after the take-over",
        || async { (writer.written() >= at_delete + 500).then_some(()) },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let written = writer.finish().await;
    s.expect_every_row_once(Duration::from_secs(60)).await;
    let who = if new_owner == survivor { "the surviving pod" } else { "the replacement pod" };
    eprintln!(
        "[cluster] owner pod deleted: {new_owner} ({who}) took over in {took:.1?}; {} rows relayed once",
        1000 + written
    );

    // The Deployment replaces the deleted pod; the pipeline stays where it is.
    let after = s.wait_ready_pods(2, Duration::from_secs(60)).await;
    assert!(!after.contains(&owner) && after.contains(&survivor), "pods after the delete: {after:?}");
    assert_eq!(s.owner_pod().await.as_deref(), Some(new_owner.as_str()));
}
