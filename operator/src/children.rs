//! Pure builders of the objects a RelayGroup owns: the relay Deployment, its metrics Service,
//! ServiceAccount and PodDisruptionBudget. Applied with server-side apply by the controller.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SecretKeySelector, SecurityContext, Service, ServiceAccount,
    ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use pgtrickle_relay_crds::{LogFormat, RelayGroup};
use serde_json::{json, Value};

pub const DEFAULT_METRICS_PORT: i32 = 9090;
/// Grace period of a relay pod: the relay's own shutdown timeout (30 s) plus a margin.
const TERMINATION_GRACE_SECONDS: i64 = 40;

/// Settings of the operator that shape every group's children.
#[derive(Debug, Clone)]
pub struct ChildDefaults {
    /// Relay image when the RelayGroup names none.
    pub relay_image: String,
}

/// Labels shared by every object of a group; the pod selector is a subset of them.
pub fn selector_labels(group: &RelayGroup) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "pgtrickle-relay".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), group.name_any()),
    ])
}

pub fn labels(group: &RelayGroup) -> BTreeMap<String, String> {
    let mut l = selector_labels(group);
    l.insert("app.kubernetes.io/component".into(), "relay".into());
    l.insert("app.kubernetes.io/managed-by".into(), "pgtrickle-relay-operator".into());
    l
}

/// Name of every child object: `<group>-relay`.
pub fn child_name(group: &RelayGroup) -> String {
    format!("{}-relay", group.name_any())
}

/// The relay group id the pods run with.
pub fn group_id(group: &RelayGroup) -> String {
    group.spec.group_id.clone().unwrap_or_else(|| group.name_any())
}

fn owner(group: &RelayGroup) -> Option<OwnerReference> {
    group.controller_owner_ref(&())
}

fn meta(group: &RelayGroup) -> ObjectMeta {
    ObjectMeta {
        name: Some(child_name(group)),
        namespace: group.namespace(),
        labels: Some(labels(group)),
        owner_references: owner(group).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), value_from: None }
}

pub fn metrics_port(group: &RelayGroup) -> i32 {
    group.spec.metrics_port.unwrap_or(DEFAULT_METRICS_PORT)
}

/// Pod-template annotation holding a hash of the database URL: when the Secret's URL changes
/// (credential rotation), the template changes and the Deployment rolls the relay pods, which
/// read the URL only at start. The hash reveals nothing about the URL.
pub const ANNOTATION_URL_HASH: &str = "relay.pgtrickle.io/postgres-url-hash";

/// A short, non-reversible fingerprint of `url` for [`ANNOTATION_URL_HASH`].
pub fn url_hash(url: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(format!("pgtrickle-relay-url\n{url}").as_bytes())[..8])
}

pub fn deployment(group: &RelayGroup, defaults: &ChildDefaults, url_hash: &str) -> Deployment {
    let spec = &group.spec;
    let port = metrics_port(group);
    let mut env_vars = vec![
        EnvVar {
            name: "PGTRICKLE_RELAY_POSTGRES_URL".into(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: spec.postgres_url_secret.name.clone(),
                    key: spec.postgres_url_secret.key.clone(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
        },
        env("PGTRICKLE_RELAY_LOG_FORMAT", spec.log_format.unwrap_or(LogFormat::Json).as_str()),
        env("PGTRICKLE_RELAY_LOG_LEVEL", spec.log_level.clone().unwrap_or_else(|| "info".into())),
    ];
    if let Some(d) = &spec.discovery_interval {
        env_vars.push(env("PGTRICKLE_RELAY_DISCOVERY_INTERVAL", d.clone()));
    }
    if let Some(n) = spec.max_db_connections {
        env_vars.push(env("PGTRICKLE_RELAY_MAX_DB_CONNECTIONS", n.to_string()));
    }
    env_vars.extend(spec.env.iter().flatten().cloned());
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("metrics".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(3),
        ..Probe::default()
    };
    let container = Container {
        name: "relay".into(),
        image: Some(spec.image.clone().unwrap_or_else(|| defaults.relay_image.clone())),
        image_pull_policy: spec.image_pull_policy.clone(),
        args: Some(vec![
            "--relay-group-id".into(),
            group_id(group),
            "--metrics-addr".into(),
            format!("0.0.0.0:{port}"),
            "run".into(),
        ]),
        env: Some(env_vars),
        env_from: spec.env_from.clone(),
        ports: Some(vec![ContainerPort {
            name: Some("metrics".into()),
            container_port: port,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(probe("/readyz", 5, 3)),
        liveness_probe: Some(probe("/livez", 10, 6)),
        resources: Some(spec.resources.clone().unwrap_or_else(default_resources)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), add: None }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    let mut pod_labels = labels(group);
    pod_labels.insert("relay.pgtrickle.io/group-id".into(), dns_safe_label_value(&group_id(group)));
    Deployment {
        metadata: meta(group),
        spec: Some(DeploymentSpec {
            replicas: Some(spec.replicas),
            selector: LabelSelector { match_labels: Some(selector_labels(group)), match_expressions: None },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some({
                        let mut a = spec.pod_annotations.clone().unwrap_or_default();
                        a.insert(ANNOTATION_URL_HASH.to_owned(), url_hash.to_owned());
                        a
                    }),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(child_name(group)),
                    automount_service_account_token: Some(false),
                    termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(65532),
                        ..PodSecurityContext::default()
                    }),
                    containers: vec![container],
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity("100m".into())),
            ("memory".to_owned(), Quantity("64Mi".into())),
        ])),
        limits: Some(BTreeMap::from([("memory".to_owned(), Quantity("512Mi".into()))])),
        ..ResourceRequirements::default()
    }
}

/// A label value (≤ 63 characters of `[A-Za-z0-9-_.]`, alphanumeric at both ends).
fn dns_safe_label_value(s: &str) -> String {
    let v: String = s
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '-' })
        .take(63)
        .collect();
    v.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_owned()
}

pub fn service(group: &RelayGroup) -> Service {
    Service {
        metadata: meta(group),
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(group)),
            ports: Some(vec![ServicePort {
                name: Some("metrics".into()),
                port: metrics_port(group),
                target_port: Some(IntOrString::String("metrics".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

pub fn service_account(group: &RelayGroup) -> ServiceAccount {
    ServiceAccount { metadata: meta(group), automount_service_account_token: Some(false), ..ServiceAccount::default() }
}

/// The PodDisruptionBudget as JSON, applied as `policy/v1` or, on clusters older than 1.21,
/// `policy/v1beta1` (same spec fields).
pub fn pod_disruption_budget(group: &RelayGroup, api_version: &str) -> Value {
    json!({
        "apiVersion": api_version,
        "kind": "PodDisruptionBudget",
        "metadata": meta(group),
        "spec": {
            "maxUnavailable": group.spec.max_unavailable.unwrap_or(1),
            "selector": { "matchLabels": selector_labels(group) },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgtrickle_relay_crds::RelayGroupSpec;

    fn group() -> RelayGroup {
        let spec: RelayGroupSpec = serde_json::from_value(json!({
            "groupId": "prod",
            "postgresUrlSecret": {"name": "db", "key": "dsn"},
            "replicas": 3,
            "logLevel": "debug",
            "maxDbConnections": 6,
            "env": [{"name": "NATS_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "nats", "key": "pw"}}}],
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let mut g = RelayGroup::new("orders", spec);
        g.metadata.namespace = Some("apps".into());
        g.metadata.uid = Some("uid-1".into());
        g
    }

    fn defaults() -> ChildDefaults {
        ChildDefaults { relay_image: "example/relay:1".into() }
    }

    #[test]
    fn deployment_runs_the_relay_with_the_secret_url_and_probes() {
        let g = group();
        let d = deployment(&g, &defaults(), &url_hash("postgres://a"));
        assert_eq!(d.metadata.name.as_deref(), Some("orders-relay"));
        assert_eq!(d.metadata.namespace.as_deref(), Some("apps"));
        let owner = d.metadata.owner_references.as_ref().and_then(|o| o.first()).cloned();
        let owner = owner.unwrap_or_else(|| panic!("no owner reference"));
        assert_eq!((owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()), ("RelayGroup", "orders", "uid-1"));
        assert_eq!(owner.controller, Some(true));
        let spec = d.spec.unwrap_or_default();
        assert_eq!(spec.replicas, Some(3));
        let pod = spec.template.spec.unwrap_or_default();
        assert_eq!(pod.service_account_name.as_deref(), Some("orders-relay"));
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("example/relay:1"));
        assert_eq!(
            c.args.clone().unwrap_or_default(),
            ["--relay-group-id", "prod", "--metrics-addr", "0.0.0.0:9090", "run"]
        );
        let env = c.env.clone().unwrap_or_default();
        let url = env.iter().find(|e| e.name == "PGTRICKLE_RELAY_POSTGRES_URL").cloned();
        let key_ref = url.and_then(|e| e.value_from).and_then(|v| v.secret_key_ref);
        assert_eq!(key_ref.map(|k| (k.name, k.key)), Some(("db".into(), "dsn".into())));
        assert!(env.iter().any(|e| e.name == "PGTRICKLE_RELAY_LOG_LEVEL" && e.value.as_deref() == Some("debug")));
        assert!(env.iter().any(|e| e.name == "PGTRICKLE_RELAY_MAX_DB_CONNECTIONS" && e.value.as_deref() == Some("6")));
        assert!(env.iter().any(|e| e.name == "NATS_PASSWORD"), "extra env is passed through");
        assert!(env.iter().all(|e| e.value.as_deref().is_none_or(|v| !v.contains("postgres://"))), "no URL inline");
        let path = |p: &Option<Probe>| p.as_ref().and_then(|p| p.http_get.as_ref()).and_then(|h| h.path.clone());
        assert_eq!(path(&c.readiness_probe).as_deref(), Some("/readyz"));
        assert_eq!(path(&c.liveness_probe).as_deref(), Some("/livez"));
        assert_eq!(spec.selector.match_labels, Some(selector_labels(&g)));
        let annotations = spec.template.metadata.and_then(|m| m.annotations).unwrap_or_default();
        assert_eq!(annotations.get(ANNOTATION_URL_HASH), Some(&url_hash("postgres://a")));
    }

    #[test]
    fn a_new_database_url_changes_the_pod_template() {
        let g = group();
        let a = deployment(&g, &defaults(), &url_hash("postgres://u:old@db/app"));
        let b = deployment(&g, &defaults(), &url_hash("postgres://u:new@db/app"));
        assert_ne!(a.spec.map(|s| s.template), b.spec.map(|s| s.template), "a rotated password must roll the pods");
        assert!(!url_hash("postgres://u:old@db/app").contains("old"));
    }

    #[test]
    fn group_id_defaults_to_the_name_and_image_to_the_operator_default() {
        let mut g = group();
        g.spec.group_id = None;
        g.spec.image = Some("mine:2".into());
        let d = deployment(&g, &defaults(), &url_hash("postgres://a"));
        let c = d.spec.and_then(|s| s.template.spec).map(|p| p.containers[0].clone()).unwrap_or_default();
        assert_eq!(c.args.unwrap_or_default()[1], "orders");
        assert_eq!(c.image.as_deref(), Some("mine:2"));
    }

    #[test]
    fn service_and_pdb_select_the_relay_pods() {
        let g = group();
        let s = service(&g).spec.unwrap_or_default();
        assert_eq!(s.selector, Some(selector_labels(&g)));
        assert_eq!(s.ports.unwrap_or_default()[0].port, 9090);
        let pdb = pod_disruption_budget(&g, "policy/v1");
        assert_eq!(pdb["spec"]["maxUnavailable"], 1);
        assert_eq!(pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"], "orders");
        assert_eq!(pdb["metadata"]["ownerReferences"][0]["name"], "orders");
    }
}
