//! A RelayGroup deleted: everything the operator made for it goes — Deployment, relay pods,
//! Service, ServiceAccount, PodDisruptionBudget and the RelayPipeline mirrors — and the operator
//! never lacked a permission on the way.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams};
use pgtrickle_relay_crds::{RelayGroup, RelayPipeline, LABEL_RELAY_GROUP};
use relay_e2e::cluster::{operator_permission_denials, Scenario};
use relay_e2e::eventually_every;
use relay_e2e::kube_env::kubectl;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_group_removes_its_deployment_pods_service_and_mirrors() {
    let s = Scenario::start("gone", 2).await;
    let ns = s.ns.name.as_str();
    let child = format!("{}-relay", s.group);
    let groups: Api<RelayGroup> = Api::namespaced(s.client.clone(), ns);
    let deploys: Api<Deployment> = Api::namespaced(s.client.clone(), ns);
    let services: Api<Service> = Api::namespaced(s.client.clone(), ns);
    let accounts: Api<ServiceAccount> = Api::namespaced(s.client.clone(), ns);
    let mirrors: Api<RelayPipeline> = Api::namespaced(s.client.clone(), ns);
    let mirrors_of_group = ListParams::default().labels(&format!("{LABEL_RELAY_GROUP}={}", s.group));
    let pdbs = || kubectl(&["-n", ns, "get", "pdb", "-o", "name"]);
    // Everything is there first, the mirror of the SQL pipeline included.
    eventually_every(Duration::from_secs(15), Duration::from_millis(200), "the pipeline mirrored", || async {
        (!mirrors.list(&mirrors_of_group).await.unwrap().items.is_empty()).then_some(())
    })
    .await;
    assert!(services.get_opt(&child).await.unwrap().is_some() && accounts.get_opt(&child).await.unwrap().is_some());
    assert!(pdbs().contains(&child));

    let t = Instant::now();
    groups.delete(&s.group, &DeleteParams::default()).await.unwrap();
    // When each kind of object was last seen: what is slow to go is named on a timeout.
    let mut gone_after: BTreeMap<&str, Duration> = BTreeMap::new();
    loop {
        let present = [
            ("RelayGroup", groups.get_opt(&s.group).await.unwrap().is_some()),
            ("Deployment", deploys.get_opt(&child).await.unwrap().is_some()),
            ("pods", !s.pods().await.is_empty()),
            ("Service", services.get_opt(&child).await.unwrap().is_some()),
            ("ServiceAccount", accounts.get_opt(&child).await.unwrap().is_some()),
            ("PodDisruptionBudget", pdbs().contains(&child)),
            ("RelayPipelines", !mirrors.list(&mirrors_of_group).await.unwrap().items.is_empty()),
        ];
        for (what, there) in present {
            if there {
                gone_after.remove(what);
            } else {
                gone_after.entry(what).or_insert_with(|| t.elapsed());
            }
        }
        if gone_after.len() == present.len() {
            break;
        }
        let left: Vec<&str> = present.iter().filter(|(_, there)| *there).map(|(what, _)| *what).collect();
        assert!(t.elapsed() < Duration::from_secs(60), "60 s after the RelayGroup's deletion still there: {left:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("[cluster] RelayGroup deleted; gone after: {gone_after:.1?}");
    // All of it done by the operator in the cluster, within the permissions deploy/ grants it.
    let denials = operator_permission_denials();
    assert!(denials.is_empty(), "the operator was refused permissions it needs:\n{}", denials.join("\n"));
}
