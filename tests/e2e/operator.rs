//! The Kubernetes operator against a real kube-apiserver (and real PostgreSQL): RelayGroup →
//! Deployment/Service/ServiceAccount/PDB with owner references; SQL pipelines mirrored into
//! RelayPipelines within 2 s of each change; status written back from a running relay; edits of a
//! mirrored spec reverted with a Warning Event; a bad RelayGroup reported without disturbing a
//! good one; Lease leader election.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Service, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use pgtrickle_relay_crds::{Phase, RelayGroup, RelayPipeline};
use relay_e2e::kube_env::{cluster, kubectl, Operator, TestNamespace};
use relay_e2e::*;
use serde_json::{json, Value};

/// A test's cluster client, namespace and migrated database, with the database URL in Secret
/// `db` (key `url`), plus a client of that database.
async fn setup() -> (Client, TestNamespace, TestDb, tokio_postgres::Client) {
    let client = cluster().await;
    let ns = TestNamespace::new(&client).await;
    let db = TestDb::new().await;
    assert!(run_cli(&db.url, &["migrate"]).0.success());
    let c = db.client().await;
    ns.secret("db", "url", &db.url).await;
    (client, ns, db, c)
}

async fn create_group(client: &Client, ns: &str, name: &str, spec: Value) -> RelayGroup {
    let api: Api<RelayGroup> = Api::namespaced(client.clone(), ns);
    let g: RelayGroup = serde_json::from_value(json!({
        "apiVersion": "relay.pgtrickle.io/v1alpha1",
        "kind": "RelayGroup",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap();
    api.create(&PostParams::default(), &g).await.unwrap()
}

async fn pipelines(client: &Client, ns: &str) -> Vec<RelayPipeline> {
    let api: Api<RelayPipeline> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default()).await.unwrap().items
}

fn condition<'a>(
    conds: &'a [k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    t: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    conds.iter().find(|c| c.type_ == t)
}

/// Waits until `check` holds for the mirrored forward pipeline `sql_name` (None: there is none)
/// and returns how long that took.
async fn time_until<F>(client: &Client, ns: &str, sql_name: &str, what: &str, check: F) -> Duration
where
    F: Fn(Option<&RelayPipeline>) -> bool,
{
    let t = Instant::now();
    loop {
        let p = forward(client, ns, sql_name).await;
        if check(p.as_ref()) {
            return t.elapsed();
        }
        assert!(t.elapsed() < Duration::from_secs(15), "{what}: never happened; last seen {p:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_group_runs_as_owned_deployment_service_account_and_pdb() {
    let client = cluster().await;
    let ns = TestNamespace::new(&client).await;
    let db = TestDb::new().await;
    assert!(run_cli(&db.url, &["migrate"]).0.success());
    ns.secret("orders-db", "dsn", &db.url).await;
    let _op = Operator::start(&ns.name, &["--relay-image", "example.test/relay:e2e"]);
    let group = create_group(
        &client,
        &ns.name,
        "orders",
        json!({
            "groupId": "orders-prod",
            "postgresUrlSecret": {"name": "orders-db", "key": "dsn"},
            "replicas": 2,
            "metricsPort": 9191,
            "env": [{"name": "NATS_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "nats", "key": "pw"}}}],
        }),
    )
    .await;
    let uid = group.uid().unwrap();

    let deploys: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let d = eventually(Duration::from_secs(10), "Deployment orders-relay", || async {
        deploys.get_opt("orders-relay").await.unwrap()
    })
    .await;
    let owner = &d.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()), ("RelayGroup", "orders", uid.as_str()));
    assert_eq!(owner.controller, Some(true));
    let spec = d.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.as_ref().unwrap();
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some("example.test/relay:e2e"));
    assert_eq!(c.args.as_ref().unwrap(), &["--relay-group-id", "orders-prod", "--metrics-addr", "0.0.0.0:9191", "run"]);
    let env = c.env.as_ref().unwrap();
    let url_ref = env.iter().find(|e| e.name == "PGTRICKLE_RELAY_POSTGRES_URL").unwrap();
    let key_ref = url_ref.value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap();
    assert_eq!((key_ref.name.as_str(), key_ref.key.as_str()), ("orders-db", "dsn"));
    assert!(env.iter().any(|e| e.name == "NATS_PASSWORD"));
    let d_json = serde_json::to_string(&d).unwrap();
    assert!(!d_json.contains(&db.url), "the database URL must stay in the Secret");
    let probe_path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref().unwrap().http_get.as_ref().unwrap().path.clone().unwrap()
    };
    assert_eq!(probe_path(&c.readiness_probe), "/readyz");
    assert_eq!(probe_path(&c.liveness_probe), "/livez");
    assert_eq!(pod.service_account_name.as_deref(), Some("orders-relay"));

    let svc: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let s = svc.get("orders-relay").await.unwrap();
    assert_eq!(s.owner_references()[0].uid, uid);
    assert_eq!(s.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port, 9191);
    assert_eq!(s.spec.as_ref().unwrap().selector, spec.selector.match_labels);
    let sa: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns.name);
    assert_eq!(sa.get("orders-relay").await.unwrap().owner_references()[0].uid, uid);
    // The PodDisruptionBudget, in whichever policy version the cluster serves.
    let pdb: Value =
        serde_json::from_str(&kubectl(&["-n", &ns.name, "get", "pdb", "orders-relay", "-o", "json"])).unwrap();
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert_eq!(pdb["metadata"]["ownerReferences"][0]["uid"], uid.as_str());

    // Status: Synced from the database (no pipelines yet), Ready false (no pods run here).
    let groups: Api<RelayGroup> = Api::namespaced(client.clone(), &ns.name);
    let st = eventually(Duration::from_secs(10), "RelayGroup status Synced", || async {
        let g = groups.get("orders").await.unwrap();
        let st = g.status.clone()?;
        (condition(&st.conditions, "Synced")?.status == "True").then_some(st)
    })
    .await;
    assert_eq!(st.pipelines, Some(0));
    assert_eq!(condition(&st.conditions, "Ready").unwrap().reason, "PodsNotReady");
    assert_eq!(st.observed_generation, group.metadata.generation);

    // A spec change is applied to the Deployment.
    groups
        .patch("orders", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 3, "logLevel": "debug"}})))
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "Deployment scaled to 3", || async {
        let d = deploys.get("orders-relay").await.unwrap();
        (d.spec.unwrap().replicas == Some(3)).then_some(())
    })
    .await;

    // Credential rotation: a new URL in the Secret changes the pod template (pods roll) at the
    // next reconcile (every minute, or at once when the group changes, as here).
    let url_hash = |d: &Deployment| {
        d.spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.clone())
            .unwrap_or_default()["relay.pgtrickle.io/postgres-url-hash"]
            .clone()
    };
    let before = url_hash(&deploys.get("orders-relay").await.unwrap());
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns.name);
    let rotated = format!("{}?application_name=rotated", db.url);
    secrets
        .patch("orders-db", &PatchParams::default(), &Patch::Merge(json!({"stringData": {"dsn": rotated}})))
        .await
        .unwrap();
    groups
        .patch("orders", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"annotations": {"touch": "1"}}})))
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "pod template follows the rotated URL", || async {
        let after = url_hash(&deploys.get("orders-relay").await.unwrap());
        (after != before).then_some(())
    })
    .await;
    let d_json = serde_json::to_string(&deploys.get("orders-relay").await.unwrap()).unwrap();
    assert!(!d_json.contains("rotated"), "the URL itself must stay in the Secret");

    // Deleting the group removes what it owns, then the group itself (finalizer released).
    groups.delete("orders", &DeleteParams::default()).await.unwrap();
    eventually(Duration::from_secs(15), "RelayGroup and its children gone", || async {
        let gone = groups.get_opt("orders").await.unwrap().is_none()
            && deploys.get_opt("orders-relay").await.unwrap().is_none()
            && svc.get_opt("orders-relay").await.unwrap().is_none()
            && sa.get_opt("orders-relay").await.unwrap().is_none();
        gone.then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_pipelines_are_mirrored_within_two_seconds() {
    let (client, ns, _db, c) = setup().await;
    let _op = Operator::start(&ns.name, &[]);
    create_group(&client, &ns.name, "shop", json!({"postgresUrlSecret": {"name": "db"}})).await;
    // The mirror is up once the group reports its first sync.
    let groups: Api<RelayGroup> = Api::namespaced(client.clone(), &ns.name);
    eventually(Duration::from_secs(10), "first sync", || async {
        let st = groups.get("shop").await.unwrap().status?;
        (condition(&st.conditions, "Synced")?.status == "True").then_some(())
    })
    .await;

    // Register: appears, with secrets redacted and the SQL name kept.
    let t = Instant::now();
    c.batch_execute(
        r#"SELECT pgtrickle.set_relay_outbox('orders-to-nats', config => '{"stream_table": "orders", "sink_type": "nats", "nats_url": "nats://app:hunter2@nats:4222", "nats_password": "hunter2", "subject_template": "shop.{op}"}'::jsonb)"#,
    )
    .await
    .unwrap();
    let took = t.elapsed() + time_until(&client, &ns.name, "orders-to-nats", "created", |p| p.is_some()).await;
    assert!(took < Duration::from_secs(2), "register → RelayPipeline took {took:?}");
    let p = forward(&client, &ns.name, "orders-to-nats").await.unwrap();
    assert_eq!(p.name_any(), "shop-orders-to-nats");
    assert_eq!((p.spec.source.as_str(), p.spec.sink.as_str(), p.spec.enabled), ("outbox:orders", "nats", true));
    assert_eq!(p.annotations()["relay.pgtrickle.io/pipeline-name"], "orders-to-nats");
    assert_eq!(p.labels()["relay.pgtrickle.io/relay-group"], "shop");
    assert_eq!(p.owner_references()[0].name, "shop");
    let text = serde_json::to_string(&p).unwrap();
    assert!(!text.contains("hunter2"), "a secret reached the custom resource: {text}");
    assert_eq!(p.spec.config["subject_template"], "shop.{op}");

    // A reverse pipeline with the same SQL name gets its own object.
    c.batch_execute(
        r#"SELECT pgtrickle.set_relay_inbox('orders-to-nats', config => '{"source_type": "nats", "inbox_table": "orders_inbox", "nats_url": "nats://127.0.0.1:4222", "nats_stream": "ORDERS"}'::jsonb)"#,
    )
    .await
    .unwrap();
    eventually(Duration::from_secs(5), "reverse pipeline mirrored", || async {
        let ps = pipelines(&client, &ns.name).await;
        ps.iter().find(|p| p.spec.direction.as_str() == "reverse").map(|p| (p.spec.source.clone(), p.spec.sink.clone()))
    })
    .await;

    // Change: the spec follows.
    let t = Instant::now();
    c.batch_execute(
        r#"SELECT pgtrickle.set_relay_outbox('orders-to-nats', config => '{"stream_table": "orders", "sink_type": "nats", "nats_url": "nats://nats:4222", "subject_template": "shop.v2.{op}"}'::jsonb)"#,
    )
    .await
    .unwrap();
    let took = t.elapsed()
        + time_until(&client, &ns.name, "orders-to-nats", "changed", |p| {
            p.is_some_and(|p| p.spec.config["subject_template"] == "shop.v2.{op}")
        })
        .await;
    assert!(took < Duration::from_secs(2), "config change took {took:?}");

    // Disable: enabled false and phase Disabled.
    let t = Instant::now();
    c.execute("SELECT pgtrickle.disable_relay('orders-to-nats')", &[]).await.unwrap();
    let took = t.elapsed()
        + time_until(&client, &ns.name, "orders-to-nats", "disabled", |p| p.is_some_and(|p| !p.spec.enabled)).await;
    assert!(took < Duration::from_secs(2), "disable took {took:?}");
    eventually(Duration::from_secs(5), "phase Disabled", || async {
        let p = forward(&client, &ns.name, "orders-to-nats").await?;
        (p.status?.phase == Some(Phase::Disabled)).then_some(())
    })
    .await;

    // kubectl shows the columns.
    let table = kubectl(&["-n", &ns.name, "get", "relaypipelines"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "DIRECTION", "SOURCE", "SINK", "ENABLED", "PHASE", "OWNER", "LAG", "AGE"], "{table}");
    assert!(table.contains("shop-orders-to-nats") && table.contains("Disabled"), "{table}");

    // Delete: the object goes.
    let t = Instant::now();
    c.execute("SELECT pgtrickle.delete_relay('orders-to-nats')", &[]).await.unwrap();
    let took = t.elapsed() + time_until(&client, &ns.name, "orders-to-nats", "deleted", |p| p.is_none()).await;
    assert!(took < Duration::from_secs(2), "delete took {took:?}");
    // delete_relay removes the name from both directions (contract §3.3): so do the mirrors.
    eventually(Duration::from_secs(2), "reverse mirror deleted too", || async {
        pipelines(&client, &ns.name).await.is_empty().then_some(())
    })
    .await;
}

async fn forward(client: &Client, ns: &str, sql_name: &str) -> Option<RelayPipeline> {
    pipelines(client, ns)
        .await
        .into_iter()
        .find(|p| p.spec.pipeline_name == sql_name && p.spec.direction.as_str() == "forward")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_follows_the_relay_that_owns_the_pipeline() {
    let client = cluster().await;
    let ns = TestNamespace::new(&client).await;
    let (db, c, outbox) = db_with_outbox("orders").await;
    c.batch_execute(
        r#"SELECT pgtrickle.set_relay_outbox('orders-out', config => '{"stream_table": "orders", "sink_type": "stdout", "delta_mode": "snapshot"}'::jsonb)"#,
    )
    .await
    .unwrap();
    ns.secret("db", "url", &db.url).await;
    let op = Operator::start(&ns.name, &[]);
    create_group(&client, &ns.name, "orders", json!({"groupId": "orders-g", "postgresUrlSecret": {"name": "db"}}))
        .await;
    let p = eventually(Duration::from_secs(10), "Pending before any relay runs", || async {
        let p = forward(&client, &ns.name, "orders-out").await?;
        (p.status.as_ref()?.phase == Some(Phase::Pending)).then_some(p)
    })
    .await;
    let st = p.status.unwrap();
    assert_eq!(condition(&st.conditions, "Ready").unwrap().status, "False");

    // A relay of the group, run here as the "pod" relay-pod-0.
    let relay = Relay::start_with_env(&db.url, "orders-g", &[], &[("HOSTNAME", "relay-pod-0")]);
    let first = write_inline(&c, &outbox, Some(json!([{"id": 1}, {"id": 2}]))).await;
    let st = eventually(Duration::from_secs(10), "Running on relay-pod-0 at the first offset", || async {
        let st = forward(&client, &ns.name, "orders-out").await?.status?;
        (st.phase == Some(Phase::Running) && st.committed_offset == Some(first)).then_some(st)
    })
    .await;
    assert_eq!(st.owner_pod.as_deref(), Some("relay-pod-0"));
    assert!(st.owner.as_deref().unwrap().starts_with("relay-pod-0:"));
    assert_eq!(st.lag_rows, Some(0));
    assert!(st.last_heartbeat.is_some());
    let ready = condition(&st.conditions, "Ready").unwrap();
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("True", "Running"));

    // The offset moves with the stream; messages are counted.
    let mut last = first;
    for n in 0..5 {
        last = write_inline(&c, &outbox, Some(json!([{"id": 10 + n}]))).await;
    }
    let st = eventually(Duration::from_secs(10), "offset follows", || async {
        let st = forward(&client, &ns.name, "orders-out").await?.status?;
        (st.committed_offset == Some(last)).then_some(st)
    })
    .await;
    assert!(last > first);
    assert_eq!(st.messages_total, Some(7), "2 + 5 rows relayed");
    relay.wait_for_messages(7, Duration::from_secs(5)).await;

    // The group status counts owners; Events tell the phase story.
    let groups: Api<RelayGroup> = Api::namespaced(client.clone(), &ns.name);
    eventually(Duration::from_secs(10), "group owners", || async {
        let st = groups.get("orders").await.unwrap().status?;
        let owners = st.owners?;
        (owners.len() == 1 && owners.keys().all(|k| k.starts_with("relay-pod-0:"))).then_some(())
    })
    .await;
    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    let evs = events.list(&ListParams::default()).await.unwrap().items;
    assert!(
        evs.iter()
            .any(|e| e.reason.as_deref() == Some("Running")
                && e.message.as_deref().unwrap_or("").contains("relay-pod-0")),
        "no phase event: {:?}",
        evs.iter().map(|e| (e.reason.clone(), e.message.clone())).collect::<Vec<_>>()
    );
    assert!(op.metrics().contains("pgtrickle_relay_operator_reconciliations_total"), "{}", op.metrics());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_mirror_is_reverted_with_a_warning_event() {
    let (client, ns, _db, c) = setup().await;
    c.batch_execute(
        r#"SELECT pgtrickle.set_relay_outbox('audit', config => '{"stream_table": "audit", "sink_type": "stdout"}'::jsonb)"#,
    )
    .await
    .unwrap();
    let _op = Operator::start(&ns.name, &[]);
    create_group(&client, &ns.name, "g", json!({"postgresUrlSecret": {"name": "db"}})).await;
    let p =
        eventually(Duration::from_secs(10), "mirrored", || async { forward(&client, &ns.name, "audit").await }).await;

    // Someone edits the mirror instead of SQL.
    kubectl(&[
        "-n",
        &ns.name,
        "patch",
        "relaypipeline",
        &p.name_any(),
        "--type=merge",
        "-p",
        r#"{"spec": {"enabled": false, "sink": "kafka", "config": {"sink_type": "kafka"}}}"#,
    ]);
    let t = Instant::now();
    eventually(Duration::from_secs(10), "edit reverted", || async {
        let p = forward(&client, &ns.name, "audit").await?;
        (p.spec.enabled
            && p.spec.sink == "stdout"
            && p.spec.config == json!({"stream_table": "audit", "sink_type": "stdout"}))
        .then_some(())
    })
    .await;
    assert!(t.elapsed() < Duration::from_secs(5), "revert took {:?}", t.elapsed());
    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    let warning = eventually(Duration::from_secs(5), "SpecReverted event", || async {
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("SpecReverted"))
    })
    .await;
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    assert!(warning.message.unwrap_or_default().contains("SQL is the source of truth"));
    // SQL still says enabled; nothing was written back to the database.
    let enabled: bool = c
        .query_one("SELECT enabled FROM pgtrickle.list_relay_configs() WHERE name = 'audit'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(enabled);

    // A mirrored object deleted by hand comes back.
    let api: Api<RelayPipeline> = Api::namespaced(client.clone(), &ns.name);
    api.delete(&p.name_any(), &DeleteParams::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    eventually(Duration::from_secs(10), "recreated", || async { forward(&client, &ns.name, "audit").await }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_relay_group_is_reported_and_a_good_one_is_unaffected() {
    let (client, ns, _db, c) = setup().await;
    c.batch_execute(
        r#"SELECT pgtrickle.set_relay_outbox('p1', config => '{"stream_table": "t", "sink_type": "stdout"}'::jsonb)"#,
    )
    .await
    .unwrap();
    ns.secret("unreachable", "url", "postgres://relay:s3cret-pw@127.0.0.1:1/nowhere").await;
    let _op = Operator::start(&ns.name, &[]);
    create_group(&client, &ns.name, "missing", json!({"postgresUrlSecret": {"name": "no-such-secret"}})).await;
    create_group(&client, &ns.name, "down", json!({"postgresUrlSecret": {"name": "unreachable"}})).await;
    create_group(&client, &ns.name, "good", json!({"postgresUrlSecret": {"name": "db"}})).await;
    let groups: Api<RelayGroup> = Api::namespaced(client.clone(), &ns.name);

    let cond_of = |name: &'static str, t: &'static str| {
        let groups = groups.clone();
        async move {
            let st = groups.get(name).await.unwrap().status?;
            condition(&st.conditions, t).cloned()
        }
    };
    let missing = eventually(Duration::from_secs(10), "missing secret reported", || async {
        cond_of("missing", "Ready").await.filter(|c| c.reason == "InvalidSpec")
    })
    .await;
    assert!(missing.message.contains("Secret 'no-such-secret' not found"), "{}", missing.message);
    let down = eventually(Duration::from_secs(15), "unreachable database reported", || async {
        cond_of("down", "Synced").await.filter(|c| c.status == "False" && c.reason == "SyncFailed")
    })
    .await;
    assert!(down.message.contains("cannot connect"), "{}", down.message);
    assert!(!down.message.contains("s3cret-pw"), "password leaked into status: {}", down.message);
    // The good group mirrors its pipeline regardless.
    eventually(Duration::from_secs(10), "good group mirrors", || async {
        let ps = pipelines(&client, &ns.name).await;
        ps.iter().any(|p| p.spec.relay_group == "good" && p.spec.pipeline_name == "p1").then_some(())
    })
    .await;
    assert!(pipelines(&client, &ns.name).await.iter().all(|p| p.spec.relay_group == "good"));
    let everything = kubectl(&["-n", &ns.name, "get", "relaygroups,relaypipelines,deployments", "-o", "json"]);
    assert!(!everything.contains("s3cret-pw"), "a secret reached a custom resource or Deployment");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_acts_and_a_standby_takes_over() {
    let (client, ns, _db, c) = setup().await;
    let lease_args = ["--leader-elect", "--leader-election-namespace", &ns.name, "--lease-duration", "3s"];
    let mut first = Operator::start(&ns.name, &lease_args);
    let second = Operator::spawn(&ns.name, &lease_args);
    create_group(&client, &ns.name, "g", json!({"postgresUrlSecret": {"name": "db"}})).await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns.name);
    let holder = |l: Lease| l.spec.and_then(|s| s.holder_identity).unwrap_or_default();
    let h1 = holder(leases.get("pgtrickle-relay-operator").await.unwrap());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!second.is_ready(), "the standby must not act while the leader lives");
    assert!(second.metrics().contains("pgtrickle_relay_operator_leader 0"), "{}", second.metrics());

    // The leader dies; the standby takes the lease after it expires and mirrors new pipelines.
    first.kill();
    let t = Instant::now();
    second.wait_ready(Duration::from_secs(15));
    let took = t.elapsed();
    assert!(took < Duration::from_secs(8), "takeover took {took:?} (lease 3 s)");
    let h2 = holder(leases.get("pgtrickle-relay-operator").await.unwrap());
    assert_ne!(h1, h2);
    c.batch_execute(r#"SELECT pgtrickle.set_relay_outbox('after', config => '{"stream_table": "t", "sink_type": "stdout"}'::jsonb)"#)
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "new leader mirrors", || async { forward(&client, &ns.name, "after").await })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_manifests_and_example_are_accepted_by_the_api_server() {
    let client = cluster().await;
    let ns = TestNamespace::new(&client).await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let deploy = root.join("deploy");
    let rendered = kubectl(&["kustomize", deploy.to_str().unwrap()]);
    for kind in
        ["CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding", "ServiceAccount", "Deployment", "Namespace"]
    {
        assert!(rendered.contains(&format!("kind: {kind}\n")), "deploy/ renders no {kind}");
    }
    // The namespace for real (harmless), everything else as a server-side dry run: validated by
    // the API server (schemas, RBAC objects) without installing a second operator.
    kubectl(&["apply", "-f", deploy.join("base/namespace.yaml").to_str().unwrap()]);
    kubectl(&["apply", "--dry-run=server", "-k", deploy.to_str().unwrap()]);
    let out = kubectl(&["-n", &ns.name, "apply", "--dry-run=server", "-k", deploy.join("examples").to_str().unwrap()]);
    assert!(out.contains("relaygroup.relay.pgtrickle.io/orders created"), "{out}");
    // The CRD schema rejects a RelayGroup without its database Secret.
    let bad = std::process::Command::new("kubectl")
        .args(["-n", &ns.name, "create", "--dry-run=server", "-f", "-", "--validate=false"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(
                br#"{"apiVersion":"relay.pgtrickle.io/v1alpha1","kind":"RelayGroup","metadata":{"name":"bad"},"spec":{"replicas":1}}"#,
            )?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("postgresUrlSecret"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_works_with_only_the_permissions_deploy_grants_it() {
    let (client, ns, _db, c) = setup().await;
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    // The operator's ServiceAccount and roles exactly as `kubectl apply -k deploy/` installs them.
    kubectl(&["apply", "-f", deploy.join("base/namespace.yaml").to_str().unwrap()]);
    kubectl(&["apply", "-n", "pgtrickle-relay-system", "-f", deploy.join("base/rbac.yaml").to_str().unwrap()]);
    let token =
        kubectl(&["-n", "pgtrickle-relay-system", "create", "token", "pgtrickle-relay-operator", "--duration=1h"]);
    let config = relay_e2e::kube_env::kubeconfig_with_token(token.trim(), &ns.name);
    let config = config.to_str().unwrap();
    let can_i = |verb: &str, what: &str| {
        std::process::Command::new("kubectl")
            .args(["--kubeconfig", config, "auth", "can-i", verb, what, "-n", &ns.name])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "yes")
            .unwrap()
    };
    // This test means something only where RBAC is enforced (scripts/test's server enforces it).
    assert!(
        !can_i("list", "secrets"),
        "the cluster does not enforce RBAC (or deploy/base/rbac.yaml grants listing Secrets)"
    );
    assert!(!can_i("create", "pods"));
    assert!(can_i("get", "secrets") && can_i("create", "relaypipelines.relay.pgtrickle.io"));

    c.batch_execute(r#"SELECT pgtrickle.set_relay_outbox('rbac-p', config => '{"stream_table": "t", "sink_type": "stdout"}'::jsonb)"#)
        .await
        .unwrap();
    let lease_id = format!("lease-{}", ns.name);
    let op = Operator::start_with_env(
        &ns.name,
        &[
            "--leader-elect",
            "--leader-election-namespace",
            "pgtrickle-relay-system",
            "--leader-election-id",
            &lease_id,
            "--lease-duration",
            "5s",
        ],
        &[("KUBECONFIG", config)],
    );
    create_group(&client, &ns.name, "g", json!({"postgresUrlSecret": {"name": "db"}, "replicas": 2})).await;
    let groups: Api<RelayGroup> = Api::namespaced(client.clone(), &ns.name);
    eventually(Duration::from_secs(15), "synced under least privilege", || async {
        let st = groups.get("g").await.unwrap().status?;
        (condition(&st.conditions, "Synced")?.status == "True" && st.pipelines == Some(1)).then_some(())
    })
    .await;
    eventually(Duration::from_secs(10), "mirror with status Pending", || async {
        let p = forward(&client, &ns.name, "rbac-p").await?;
        (p.status?.phase == Some(Phase::Pending)).then_some(())
    })
    .await;
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    assert!(deploys.get_opt("g-relay").await.unwrap().is_some());
    kubectl(&["-n", &ns.name, "get", "pdb", "g-relay"]);
    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    eventually(Duration::from_secs(5), "events published", || async {
        (!events.list(&ListParams::default()).await.unwrap().items.is_empty()).then_some(())
    })
    .await;
    let log = op.full_log();
    assert!(!log.to_lowercase().contains("forbidden"), "the operator hit a permission it lacks:\n{log}");
}
