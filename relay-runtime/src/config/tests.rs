use serde_json::json;

use super::*;

fn row(direction: Direction, config: Value) -> PipelineRow {
    PipelineRow { name: "p1".into(), direction, enabled: true, config }
}

fn forward(config: Value) -> Result<ForwardSpec, ConfigError> {
    match row(Direction::Forward, config).parse()? {
        PipelineSpec::Forward(f) => Ok(f),
        PipelineSpec::Reverse(_) => panic!("expected forward"),
    }
}

#[test]
fn seed_flat_shape_parses_with_prefix_stripped_options() {
    let f = forward(json!({
        "stream_table": "orders_stream",
        "sink_type": "nats",
        "nats_url": "nats://localhost:4222",
        "nats_stream": "pgtrickle",
        "subject_template": "pgtrickle.{stream_table}.{op}"
    }))
    .unwrap();
    assert_eq!(f.outbox, OutboxRef::StreamTable("orders_stream".into()));
    assert_eq!(f.sink.kind, SinkKind::Nats);
    let SinkConfig::Nats(c) = &f.sink.config else { panic!("nats") };
    assert_eq!(c.connection.url.as_str(), "nats://localhost:4222");
    assert_eq!(c.stream.as_ref().map(|s| s.as_str()), Some("pgtrickle"));
    assert_eq!(f.subject_template.source(), "pgtrickle.{stream_table}.{op}");
    assert_eq!(f.batch_size, 100);
    assert_eq!(f.poll_interval, Duration::from_millis(1000));
    assert!(!f.keep_internal_columns);
}

#[test]
fn positional_nested_shape_parses() {
    // Exactly what pg_trickle 0.45's set_relay_outbox stores (contract Appendix C.9).
    let f = forward(json!({
        "sink": {"type": "stdout"},
        "source": {"group": "g1", "outbox": "outbox_big_orders", "retention_hours": 24},
        "sink_type": "stdout",
        "source_type": "outbox"
    }))
    .unwrap();
    assert_eq!(f.outbox, OutboxRef::Outbox("outbox_big_orders".into()));
    assert_eq!(f.group.as_deref(), Some("g1"));
    assert_eq!(f.sink.kind, SinkKind::Stdout);
    assert_eq!(f.subject_template.source(), "pgtrickle.{stream_table}.{op}");
}

#[test]
fn nested_sink_keys_win_over_flat_and_aliases_resolve() {
    let f = forward(json!({
        "stream_table": "s",
        "sink_type": "http",
        "webhook_url": "http://flat",
        "webhook_timeout_ms": 5,
        "sink": {"type": "webhook", "url": "http://nested", "subject": "x.{op}"},
        "key_columns": ["id", "region"],
        "batch_size": "500",
        "poll_interval_ms": 50
    }))
    .unwrap();
    assert_eq!(f.sink.kind, SinkKind::Webhook);
    let SinkConfig::Webhook(c) = &f.sink.config else { panic!("webhook") };
    assert_eq!(c.url.as_str(), "http://nested");
    assert_eq!(f.subject_template.source(), "x.{op}");
    assert_eq!(f.key_columns, vec!["id".to_owned(), "region".to_owned()]);
    assert_eq!(f.batch_size, 500);
    assert_eq!(f.poll_interval, Duration::from_millis(50));
    for (alias, kind) in [
        ("http", SinkKind::Webhook),
        ("pg-inbox", SinkKind::PgInbox),
        ("pg_inbox", SinkKind::PgInbox),
        ("file", SinkKind::File),
    ] {
        assert_eq!(SinkKind::parse(alias), Some(kind));
    }
}

#[test]
fn errors_name_the_pipeline_and_key() {
    let e = forward(json!({"stream_table": "s"})).unwrap_err();
    assert_eq!(e.pipeline, "p1");
    assert!(e.message.contains("sink_type"), "{e}");

    let e = forward(json!({"stream_table": "s", "sink_type": "carrier-pigeon"})).unwrap_err();
    assert!(e.to_string().contains("unknown sink type 'carrier-pigeon'"), "{e}");
    assert!(e.to_string().starts_with("pipeline 'p1': key 'sink_type'"), "{e}");

    let e = forward(json!({"sink_type": "stdout"})).unwrap_err();
    assert!(e.message.contains("stream_table"), "{e}");

    let e = forward(json!({"stream_table": "s", "sink_type": "stdout", "batch_size": 0})).unwrap_err();
    assert!(e.message.contains("'batch_size'"), "{e}");

    let e = forward(json!({"stream_table": 5, "sink_type": "stdout"})).unwrap_err();
    assert!(e.message.contains("key 'stream_table': expected a string, got a number"), "{e}");

    let e = forward(json!({"stream_table": "s", "sink": {"type": "stdout"}, "source_type": "kafka"})).unwrap_err();
    assert!(e.message.contains("source_type"), "{e}");

    let e = row(Direction::Forward, json!([1, 2])).parse().unwrap_err();
    assert!(e.message.contains("JSON object"), "{e}");
}

#[test]
fn secrets_resolve_inside_pipeline_config_and_missing_ones_fail() {
    std::env::set_var("PGT_CFG_TEST_TOKEN", "tok-123");
    let f = forward(json!({"stream_table": "s", "sink_type": "nats", "nats_url": "nats://x",
                           "nats_token": "${env:PGT_CFG_TEST_TOKEN}"}))
    .unwrap();
    let SinkConfig::Nats(c) = &f.sink.config else { panic!("nats") };
    assert_eq!(c.connection.token.as_ref().map(|t| t.expose()), Some("tok-123"));
    let e = forward(json!({"stream_table": "s", "sink_type": "nats", "nats_token": "${env:PGT_CFG_TEST_UNSET}"}))
        .unwrap_err();
    assert!(e.message.contains("nats_token") && e.message.contains("PGT_CFG_TEST_UNSET"), "{e}");
    assert!(!e.message.contains("tok-123"));
}

#[test]
fn reverse_shapes_parse_with_inbox_aliases() {
    let nested = row(
        Direction::Reverse,
        json!({"source_type": "nats", "source": {"type": "nats", "url": "nats://x", "stream": "commands"}, "sink_type": "pg-inbox",
               "sink": {"inbox": "orders_inbox", "max_retries": 3}}),
    );
    let flat = row(
        Direction::Reverse,
        json!({"source_type": "nats", "nats_url": "nats://x", "nats_stream": "commands",
               "nats_consumer": "relay-consumer", "inbox_table": "orders_inbox"}),
    );
    for r in [nested, flat] {
        match r.parse().unwrap() {
            PipelineSpec::Reverse(spec) => {
                assert_eq!(spec.source_type, "nats");
                assert_eq!(spec.inbox_table, "orders_inbox");
                // Flat keys lose the backend prefix, like the nested ones are written.
                let SourceConfig::Nats(c) = &spec.source else { panic!("nats") };
                assert_eq!(c.connection.url.as_str(), "nats://x");
            }
            PipelineSpec::Forward(_) => panic!("expected reverse"),
        }
    }
    let e = row(Direction::Reverse, json!({"source_type": "nats", "nats_url": "nats://x", "nats_stream": "s"}))
        .parse()
        .unwrap_err();
    assert!(e.message.contains("inbox_table"), "{e}");
}

#[test]
fn max_inflight_is_an_alias_of_max_in_flight() {
    let f =
        forward(json!({"stream_table": "t", "sink_type": "nats", "nats_url": "nats://x", "max_inflight": 64})).unwrap();
    let SinkConfig::Nats(c) = &f.sink.config else { panic!("nats") };
    assert_eq!(c.max_in_flight.map(|n| n.get()), Some(64));
    let nested = forward(json!({"stream_table": "t",
        "sink": {"type": "kafka", "brokers": "k:9092", "max_inflight": 8, "max_in_flight": 9}}))
    .unwrap();
    let SinkConfig::Kafka(c) = &nested.sink.config else { panic!("kafka") };
    assert_eq!(c.max_in_flight.map(|n| n.get()), Some(9), "the later key wins");
}

#[test]
fn envelope_keys_parse_and_contradictions_are_named() {
    let f =
        forward(json!({"stream_table": "s", "sink_type": "nats", "nats_url": "nats://h", "envelope": "cloudevents",
                           "cloudevents_mode": "binary", "cloudevents_type": "com.shop.{op}"}))
        .unwrap();
    assert!(f.conflicts.is_empty(), "{:?}", f.conflicts);
    let EnvelopeSpec::CloudEvents { binary: true, event_type: Some(t), source: None } = &f.envelope else {
        panic!("{:?}", f.envelope)
    };
    assert_eq!(t.source(), "com.shop.{op}");
    let f = forward(json!({"stream_table": "s", "sink_type": "stdout"})).unwrap();
    assert_eq!((f.envelope, f.conflicts.len()), (EnvelopeSpec::Native, 0));

    // Each contradiction is named; the pipeline refuses to start with them.
    let conflicts = |config: Value| forward(config).unwrap().conflicts;
    let c = conflicts(json!({"stream_table": "s", "sink_type": "kafka", "kafka_brokers": "b", "kafka_topic": "t",
                             "debezium_name": "x", "kafka_tombstones": false}));
    assert_eq!(c.len(), 2, "{c:?}");
    assert!(c[0].contains("'debezium_name' applies only with \"envelope\": \"debezium\""), "{c:?}");
    assert!(c[1].contains("'tombstones'"), "{c:?}");
    let c = conflicts(json!({"stream_table": "s", "sink_type": "redis", "redis_url": "redis://h",
                             "envelope": "cloudevents", "cloudevents_mode": "binary"}));
    assert!(c[0].contains("the redis sink writes structured events only"), "{c:?}");
    let c = conflicts(json!({"stream_table": "s", "sink_type": "webhook", "webhook_url": "http://h",
                             "envelope": "cloudevents", "cloudevents_mode": "binary", "webhook_batch_mode": true}));
    assert!(c[0].contains("cannot be combined with \"batch_mode\": true"), "{c:?}");
    let c = conflicts(json!({"stream_table": "s", "sink_type": "stdout", "envelope": "debezium",
                             "cloudevents_source": "/x"}));
    assert!(c[0].contains("this pipeline's envelope is 'debezium'"), "{c:?}");
}
