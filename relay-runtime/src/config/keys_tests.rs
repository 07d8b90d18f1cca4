use proptest::prelude::*;
use serde_json::{json, Map, Value};

use super::*;
use crate::config::{Direction, PipelineRow, PipelineSpec};

fn parse(direction: Direction, config: Value) -> Result<PipelineSpec, String> {
    PipelineRow { name: "p".into(), direction, enabled: true, config }.parse().map_err(|e| e.message)
}

/// A value `kind` accepts.
fn valid(kind: &Kind) -> Value {
    match kind {
        Kind::Int { min, .. } => json!(min),
        Kind::Flag => json!(true),
        Kind::Text | Kind::Secret => json!("x"),
        Kind::String => json!(""),
        Kind::Template => json!("a.{op}"),
        Kind::List => json!(["a", "b"]),
        Kind::Settings => json!({"a": "b", "n": 1}),
        Kind::Choice(words) => json!(words[0]),
        Kind::Ignored => json!(1),
    }
}

/// A config holding every required key of `t`, flat or nested.
fn minimal(direction: Direction, t: &TypeKeys) -> Map<String, Value> {
    let mut backend = Map::new();
    for r in t.keys.keys.iter().filter(|r| r.required) {
        backend.insert(r.name.clone(), valid(&r.kind));
    }
    let mut c = Map::new();
    match direction {
        Direction::Forward => {
            backend.insert("type".into(), json!(t.name));
            c.insert("stream_table".into(), json!("s"));
            c.insert("sink".into(), Value::Object(backend));
        }
        Direction::Reverse => {
            backend.insert("type".into(), json!(t.name));
            c.insert("inbox_table".into(), json!("inbox"));
            c.insert("source".into(), Value::Object(backend));
        }
    }
    c
}

fn all_types() -> Vec<(Direction, &'static TypeKeys)> {
    let f = CATALOG.forward.types.iter().map(|t| (Direction::Forward, t));
    f.chain(CATALOG.reverse.types.iter().map(|t| (Direction::Reverse, t))).collect()
}

#[test]
fn the_issue_typo_is_refused_naming_the_keys_and_what_was_meant() {
    let e = parse(
        Direction::Forward,
        json!({"stream_table": "demo_orders", "sink_type": "nats", "nats_url": "nats://127.0.0.1:4222",
               "subjekt_template": "x.{op}", "batch_sise": 5}),
    )
    .unwrap_err();
    assert!(e.contains("unknown key 'subjekt_template' for a nats sink; did you mean 'subject_template'?"), "{e}");
    assert!(e.contains("unknown key 'batch_sise' for a nats sink; did you mean 'batch_size'?"), "{e}");
}

#[test]
fn nested_typos_wrong_types_and_missing_keys_say_where() {
    let e = parse(
        Direction::Forward,
        json!({"stream_table": "s", "sink": {"type": "kafka", "brokers": "k", "topik": "t"}}),
    )
    .unwrap_err();
    assert_eq!(e, "unknown key 'sink.topik' for a kafka sink; did you mean 'topic'?");
    let e = parse(Direction::Forward, json!({"stream_table": "s", "sink": {"type": "kafka"}})).unwrap_err();
    assert_eq!(e, "missing key 'sink.brokers' for a kafka sink");
    let e = parse(Direction::Forward, json!({"stream_table": "s", "sink_type": "kafka"})).unwrap_err();
    assert_eq!(e, "missing key 'kafka_brokers' for a kafka sink");
    let e = parse(
        Direction::Forward,
        json!({"stream_table": "s", "sink_type": "nats", "nats_url": "n", "nats_max_in_flight": "lots"}),
    )
    .unwrap_err();
    assert_eq!(e, "key 'nats_max_in_flight': expected an integer between 1 and 65536, got \"lots\"");
    let e = parse(Direction::Forward, json!({"stream_table": "s", "sink_type": "natz"})).unwrap_err();
    assert!(e.starts_with("key 'sink_type': unknown sink type 'natz' (known: "), "{e}");
    assert!(e.ends_with("; did you mean 'nats'?"), "{e}");
    let e = parse(
        Direction::Forward,
        json!({"stream_table": "s", "sink_type": "nats", "nats_url": "n",
                                             "subject_template": "t.{stream_tabel}"}),
    )
    .unwrap_err();
    assert_eq!(e, "key 'subject_template': unknown template variable '{stream_tabel}'; did you mean '{stream_table}'?");
    let e = parse(
        Direction::Reverse,
        json!({"source_type": "redis", "redis_url": "r", "redis_stream_key": "k",
                                             "inbox_table": "i", "sink": {"inbox": "i", "max_retrys": 3}}),
    )
    .unwrap_err();
    assert_eq!(e, "unknown key 'sink.max_retrys' for 'sink' of a reverse pipeline; did you mean 'max_retries'?");
    // A secret's value is never quoted back.
    let e = parse(
        Direction::Forward,
        json!({"stream_table": "s", "sink_type": "nats", "nats_url": "n", "nats_password": 12345678}),
    )
    .unwrap_err();
    assert_eq!(e, "key 'nats_password': expected a string, got a number");
}

#[test]
fn every_type_accepts_its_minimal_config_and_each_key_and_alias() {
    for (direction, t) in all_types() {
        let base = minimal(direction, t);
        parse(direction, Value::Object(base.clone()))
            .unwrap_or_else(|e| panic!("{} {}: {e}", t.name, direction.as_str()));
        for rule in &t.keys.keys {
            for name in std::iter::once(&rule.name).chain(&rule.aliases) {
                let mut c = base.clone();
                let nested = if direction == Direction::Forward { "sink" } else { "source" };
                let obj = c[nested].as_object_mut().unwrap();
                obj.remove(&rule.name);
                obj.insert(name.clone(), valid(&rule.kind));
                parse(direction, Value::Object(c))
                    .unwrap_or_else(|e| panic!("{} {} key '{name}': {e}", t.name, direction.as_str()));
                // The flat form with the type's prefix.
                if let Some(p) = t.prefixes.first() {
                    let mut flat = base.clone();
                    let inner = flat.remove(nested).unwrap();
                    for (k, v) in inner.as_object().unwrap() {
                        let key = if k == "type" { format!("{nested}_type") } else { format!("{p}{k}") };
                        if k != &rule.name {
                            flat.insert(key, v.clone());
                        }
                    }
                    flat.insert(format!("{p}{name}"), valid(&rule.kind));
                    parse(direction, Value::Object(flat))
                        .unwrap_or_else(|e| panic!("{} {} flat key '{p}{name}': {e}", t.name, direction.as_str()));
                }
            }
        }
    }
}

#[test]
fn every_key_is_documented_and_every_type_has_its_own_schema() {
    for (direction, t) in all_types() {
        assert!(!t.description.is_empty(), "{} {}", t.name, direction.as_str());
        for rule in &t.keys.keys {
            assert!(
                !rule.description.is_empty(),
                "{} {}: key '{}' has no doc comment",
                t.name,
                direction.as_str(),
                rule.name
            );
        }
    }
    for rule in CATALOG.forward.pipeline.keys.iter().chain(&CATALOG.reverse.pipeline.keys) {
        assert!(!rule.description.is_empty(), "pipeline key '{}' has no doc comment", rule.name);
    }
}

#[test]
fn secrets_are_known_by_their_type() {
    for k in [
        "password",
        "nats_password",
        "token",
        "sasl_password",
        "kafka_sasl_password",
        "signing_secret",
        "hmac_secret",
        "auth_value",
        "secret_access_key",
        "session_token",
        "nkey",
        "nkey_seed",
        "auth_token",
    ] {
        assert!(SECRET_KEYS.contains(k), "{k}");
    }
    for k in ["url", "stream", "user", "tls_key", "queue_url"] {
        assert!(!SECRET_KEYS.contains(k), "{k}");
    }
}

/// Values of every JSON type and some edge cases a key may be given.
fn any_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (0u64..200_000).prop_map(|n| json!(n)),
        (-5i64..0).prop_map(|n| json!(n)),
        Just(json!(1.5)),
        Just(json!("")),
        Just(json!("   ")),
        Just(json!("true")),
        Just(json!(" 42 ")),
        Just(json!("all")),
        Just(json!("x.{op}")),
        Just(json!("{stream_tabel}")),
        "[a-z,]{1,6}".prop_map(Value::String),
        Just(json!(["a"])),
        Just(json!([1])),
        Just(json!([""])),
        Just(json!({"a": "b"})),
        Just(json!({"a": [1]})),
    ]
}

/// Whether the typed struct of a type accepts `backend` (its keys under their primary names).
fn serde_accepts(direction: Direction, name: &str, backend: Map<String, Value>) -> Result<(), String> {
    fn de<T: serde::de::DeserializeOwned>(v: Value) -> Result<(), String> {
        serde_json::from_value::<T>(v).map(|_| ()).map_err(|e| e.to_string())
    }
    let v = Value::Object(backend);
    match (direction, name) {
        (Direction::Forward, "stdout") => de::<file::StdoutSinkConfig>(v),
        (Direction::Forward, "file") => de::<file::FileSinkConfig>(v),
        (Direction::Forward, "nats") => de::<nats::NatsSinkConfig>(v),
        (Direction::Forward, "webhook") => de::<webhook::WebhookSinkConfig>(v),
        (Direction::Forward, "kafka") => de::<kafka::KafkaSinkConfig>(v),
        (Direction::Forward, "redis") => de::<redis::RedisSinkConfig>(v),
        (Direction::Forward, "sqs") => de::<sqs::SqsSinkConfig>(v),
        (Direction::Forward, "rabbitmq") => de::<rabbitmq::RabbitmqSinkConfig>(v),
        (Direction::Forward, "pg-inbox") => de::<pg_inbox::PgInboxSinkConfig>(v),
        (Direction::Reverse, "nats") => de::<nats::NatsSourceConfig>(v),
        (Direction::Reverse, "webhook") => de::<webhook::WebhookSourceConfig>(v),
        (Direction::Reverse, "kafka") => de::<kafka::KafkaSourceConfig>(v),
        (Direction::Reverse, "redis") => de::<redis::RedisSourceConfig>(v),
        (Direction::Reverse, "sqs") => de::<sqs::SqsSourceConfig>(v),
        (Direction::Reverse, "rabbitmq") => de::<rabbitmq::RabbitmqSourceConfig>(v),
        other => Err(format!("no struct for {other:?}")),
    }
}

proptest! {
    /// The catalog's rules (what SQL enforces) and the typed structs (what the relay runs with)
    /// accept exactly the same values: a value the rules pass always deserialises, and one they
    /// refuse never does.
    #[test]
    fn the_rules_and_the_typed_structs_agree(idx in 0usize..1000, key_idx in 0usize..1000, v in any_value()) {
        let types = all_types();
        let (direction, t) = types[idx % types.len()];
        let rule = &t.keys.keys[key_idx % t.keys.keys.len()];
        let mut c = minimal(direction, t);
        let nested = if direction == Direction::Forward { "sink" } else { "source" };
        c[nested].as_object_mut().unwrap().insert(rule.name.clone(), v.clone());
        let by_rule = check_value(&rule.kind, &v).is_ok() && !(rule.required && v.is_null());
        let parsed = parse(direction, Value::Object(c.clone()));
        prop_assert_eq!(by_rule, parsed.is_ok(), "{} {} {}={} → {:?}", t.name, direction.as_str(), rule.name, v, parsed.err());
        let mut backend = c[nested].as_object().unwrap().clone();
        backend.remove("type");
        let typed = serde_accepts(direction, t.name, backend);
        prop_assert_eq!(by_rule, typed.is_ok(), "{} {} {}={} → {:?}", t.name, direction.as_str(), rule.name, v, typed.err());
    }
}
