//! What the forward sinks write under each envelope, read by the consumers' own libraries.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_over_http_structured_and_binary_parse_with_the_sdk() {
    let (structured, binary) = (WebhookServer::start().await, WebhookServer::start().await);
    let (db, c, outbox) = db_with_outbox("orders").await;
    for (name, server, mode) in [("ce-structured", &structured, "structured"), ("ce-binary", &binary, "binary")] {
        pipeline(
            &c,
            name,
            json!({"stream_table": "orders", "sink_type": "webhook", "webhook_url": server.url("/events"),
                   "envelope": "cloudevents", "cloudevents_mode": mode, "key_columns": ["id"]}),
        )
        .await;
    }
    let _relay = Relay::start(&db.url, "default", &[]);
    let last = three_refreshes(&c, &outbox).await;
    all_committed(&c, &["ce-structured", "ce-binary"], last).await;

    let events = |reqs: Vec<Recorded>| -> Vec<(Recorded, Event)> {
        reqs.into_iter()
            .map(|r| {
                let headers = http_headers(r.headers.clone());
                let e = cloudevents::binding::http::to_event(&headers, r.body.clone())
                    .unwrap_or_else(|err| panic!("not a CloudEvent: {err}: {r:?}"));
                (r, e)
            })
            .collect()
    };
    let structured = events(structured.accepted());
    let binary = events(binary.accepted());
    assert_eq!((structured.len(), binary.len()), (5, 5), "one event per request, each change once");
    for (events, is_binary) in [(&structured, false), (&binary, true)] {
        for ((r, e), change) in events.iter().zip(expected_changes()) {
            check_event(e, &change, &db.name, is_binary);
            assert_eq!(r.header("idempotency-key"), Some(e.id()), "the event id is the dedup key");
            assert_eq!(ext(e, "traceparent").as_deref(), r.header("traceparent"));
            if is_binary {
                assert_eq!(r.header("content-type"), Some("application/json"));
                assert_eq!(r.header("ce-specversion"), Some("1.0"));
                assert!(r.header("ce-datacontenttype").is_none(), "HTTP: Content-Type only (binding §3.1.1)");
                assert_eq!(serde_json::from_slice::<Value>(&r.body).unwrap(), change.1, "the body is the row");
            } else {
                assert_eq!(r.header("content-type"), Some("application/cloudevents+json; charset=utf-8"));
                assert!(r.header("ce-id").is_none());
            }
        }
    }
    // Both modes give the same events.
    let ids = |v: &[(Recorded, Event)]| v.iter().map(|(_, e)| e.id().to_owned()).collect::<Vec<_>>();
    assert_eq!(ids(&structured), ids(&binary));
}

/// A Kafka record as the CloudEvents Kafka protocol binding reads it: `ce_` headers and
/// `content-type` in binary mode, a `application/cloudevents` content type in structured mode.
/// The SDK's own `EventBuilder` builds and validates the event from what this hands it.
struct KafkaCe<'a>(&'a Record);

impl KafkaCe<'_> {
    fn content_type(&self) -> Option<&str> {
        self.0.headers.get("content-type").map(String::as_str)
    }
}

impl BinaryDeserializer for KafkaCe<'_> {
    fn deserialize_binary<R: Sized, V: BinarySerializer<R>>(self, mut v: V) -> cloudevents::message::Result<R> {
        let spec = self.0.headers.get("ce_specversion").map(String::as_str).unwrap_or_default();
        let spec = cloudevents::event::SpecVersion::try_from(spec)?;
        let attributes = spec.attribute_names();
        v = v.set_spec_version(spec)?;
        for (k, value) in &self.0.headers {
            let Some(name) = k.strip_prefix("ce_").filter(|n| *n != "specversion") else { continue };
            let value = MessageAttributeValue::String(value.clone());
            v = if attributes.contains(&name) { v.set_attribute(name, value)? } else { v.set_extension(name, value)? };
        }
        if let Some(ct) = self.content_type() {
            v = v.set_attribute("datacontenttype", MessageAttributeValue::String(ct.to_owned()))?;
        }
        match &self.0.payload {
            Some(p) => v.end_with_data(p.clone()),
            None => v.end(),
        }
    }
}

impl StructuredDeserializer for KafkaCe<'_> {
    fn deserialize_structured<R: Sized, V: StructuredSerializer<R>>(self, v: V) -> cloudevents::message::Result<R> {
        v.set_structured_event(self.0.payload.clone().unwrap_or_default())
    }
}

impl MessageDeserializer for KafkaCe<'_> {
    fn encoding(&self) -> Encoding {
        if self.content_type().is_some_and(|c| c.starts_with("application/cloudevents")) {
            Encoding::STRUCTURED
        } else if self.0.headers.contains_key("ce_specversion") {
            Encoding::BINARY
        } else {
            Encoding::UNKNOWN
        }
    }
}

/// Every message of a JetStream stream, in order: (headers, body).
async fn nats_messages(nats: &NatsServer, stream: &str) -> Vec<(Vec<(String, String)>, Vec<u8>)> {
    let js = nats.jetstream().await;
    let mut s = js.get_stream(stream).await.unwrap();
    let n = s.info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=n {
        let m = s.get_raw_message(seq).await.unwrap();
        let headers =
            m.headers.iter().flat_map(|(k, vs)| vs.iter().map(move |v| (k.to_string(), v.to_string()))).collect();
        out.push((headers, m.payload.to_vec()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_over_nats_and_kafka_parse_with_the_sdk() {
    let nats = NatsServer::start();
    // One stream each: both pipelines give a row the same `Nats-Msg-Id` (its dedup key).
    nats.create_stream("CE_STRUCTURED", &["ce.structured.>"]).await;
    nats.create_stream("CE_BINARY", &["ce.binary.>"]).await;
    let kafka = KafkaBroker::start();
    kafka.create_topic("ce-structured", 1).await;
    kafka.create_topic("ce-binary", 1).await;
    let (db, c, outbox) = db_with_outbox("orders").await;
    let common = json!({"stream_table": "orders", "envelope": "cloudevents", "key_columns": ["id"]});
    let with = |extra: Value| {
        let mut v = common.clone();
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        v
    };
    for mode in ["structured", "binary"] {
        pipeline(
            &c,
            &format!("nats-{mode}"),
            with(json!({"sink_type": "nats", "nats_url": nats.url(), "cloudevents_mode": mode,
                        "subject_template": format!("ce.{mode}.{{op}}")})),
        )
        .await;
        pipeline(
            &c,
            &format!("kafka-{mode}"),
            with(json!({"sink_type": "kafka", "kafka_brokers": kafka.brokers(), "cloudevents_mode": mode,
                        "kafka_topic": format!("ce-{mode}")})),
        )
        .await;
    }
    let _relay = Relay::start(&db.url, "default", &[]);
    let last = three_refreshes(&c, &outbox).await;
    all_committed(&c, &["nats-structured", "nats-binary", "kafka-structured", "kafka-binary"], last).await;

    // NATS: structured events are the body (what the SDK's NATS binding reads); binary events
    // carry `ce-` headers, read with the SDK's header deserializer.
    let (mut structured, mut binary) = (Vec::new(), Vec::new());
    let mut all = nats_messages(&nats, "CE_STRUCTURED").await;
    all.extend(nats_messages(&nats, "CE_BINARY").await);
    for (headers, body) in all {
        let ct = headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("content-type")).map(|(_, v)| v.clone());
        if ct.as_deref() == Some("application/cloudevents+json; charset=utf-8") {
            structured.push(serde_json::from_slice::<Event>(&body).unwrap());
        } else {
            assert!(headers.iter().any(|(k, v)| k == "ce-datacontenttype" && v == "application/json"), "{headers:?}");
            let lower = headers.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v));
            binary.push(cloudevents::binding::http::to_event(&http_headers(lower), body).unwrap());
        }
    }
    assert_eq!((structured.len(), binary.len()), (5, 5));
    for (events, encoded) in [(&structured, false), (&binary, true)] {
        for (e, change) in events.iter().zip(expected_changes()) {
            check_event(e, &change, &db.name, encoded);
        }
    }

    // Kafka: the same, with the Kafka binding's `ce_` headers.
    for (topic, want) in [("ce-structured", Encoding::STRUCTURED), ("ce-binary", Encoding::BINARY)] {
        let records = kafka.records(topic).await;
        assert_eq!(records.len(), 5, "{topic}");
        for (r, change) in records.iter().zip(expected_changes()) {
            assert_eq!(KafkaCe(r).encoding(), want, "{topic}: {r:?}");
            if want == Encoding::BINARY {
                assert!(!r.headers.contains_key("ce_datacontenttype"), "Kafka: content-type only");
                assert_eq!(r.value, change.1, "the value is the row");
            }
            let e = MessageDeserializer::into_event(KafkaCe(r)).unwrap_or_else(|err| panic!("{topic}: {err}: {r:?}"));
            check_event(&e, &change, &db.name, false);
            assert_eq!(r.key.as_deref(), Some(e.id()), "the record key stays the dedup key");
        }
    }
}

fn published(relay: &Relay, pipeline: &str) -> u64 {
    let metrics = relay.get("/metrics").1;
    let series = format!(r#"pgtrickle_relay_messages_published_total{{direction="forward",pipeline="{pipeline}"}} "#);
    metrics.lines().find_map(|l| l.strip_prefix(series.as_str())).map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debezium_on_kafka_is_keyed_by_the_key_columns_with_a_tombstone_after_each_delete() {
    let kafka = KafkaBroker::start();
    kafka.create_topic("dbz", 3).await;
    kafka.create_topic("dbz-no-tombstones", 3).await;
    kafka.create_topic("dbz-schemas", 1).await;
    let (db, c, outbox) = db_with_outbox("orders").await;
    // The stream table itself, whose columns the Connect schemas describe.
    c.batch_execute("CREATE TABLE public.orders (id int4 PRIMARY KEY, total numeric(10,2), __pgt_row_id int8)")
        .await
        .unwrap();
    for (name, topic, extra) in [
        ("dbz", "dbz", json!({})),
        ("dbz-nt", "dbz-no-tombstones", json!({"kafka_tombstones": false})),
        ("dbz-schemas", "dbz-schemas", json!({"debezium_schemas": true, "debezium_name": "shop-app"})),
    ] {
        let mut config = json!({"stream_table": "orders", "sink_type": "kafka", "kafka_brokers": kafka.brokers(),
                                "kafka_topic": topic, "envelope": "debezium", "key_columns": ["id"]});
        config.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        pipeline(&c, name, config).await;
    }
    let relay = Relay::start(&db.url, "default", &[]);
    three_refreshes(&c, &outbox).await;
    // A counts-only row (pg_trickle >= 0.46) has no Debezium event: skipped, and counted.
    let summary = json!({"v": 1, "refresh_id": null, "inserted": 3, "deleted": 0, "source": "public.orders"});
    let last = write_inline(&c, &outbox, Some(summary)).await;
    all_committed(&c, &["dbz", "dbz-nt", "dbz-schemas"], last).await;
    // Tombstones are records, not messages: five changes were published by each pipeline.
    assert_eq!((published(&relay, "dbz"), published(&relay, "dbz-nt")), (5, 5));
    let metrics = relay.get("/metrics").1;
    let skipped = r#"pgtrickle_relay_messages_skipped_total{direction="forward",pipeline="dbz",reason="summary"} 1"#;
    assert!(metrics.lines().any(|l| l == skipped), "{metrics}");

    let records = kafka.records("dbz").await;
    assert_eq!(records.len(), 6, "five change events and one tombstone: {records:#?}");
    // Per key, in partition order: the key's events (then its tombstone).
    let mut per_key: BTreeMap<String, Vec<&Record>> = BTreeMap::new();
    for r in &records {
        per_key.entry(r.key.clone().expect("every record is keyed")).or_default().push(r);
    }
    assert_eq!(per_key.keys().collect::<Vec<_>>(), [r#"{"id":1}"#, r#"{"id":2}"#, r#"{"id":3}"#]);
    let ops = |k: &str| per_key[k].iter().map(|r| r.value["op"].as_str().unwrap_or("tombstone")).collect::<Vec<_>>();
    assert_eq!(ops(r#"{"id":1}"#), ["r"]);
    assert_eq!(ops(r#"{"id":2}"#), ["r", "u"]);
    assert_eq!(ops(r#"{"id":3}"#), ["r", "d", "tombstone"]);
    for rs in per_key.values() {
        assert!(rs.iter().all(|r| r.partition == rs[0].partition), "a key stays on one partition");
    }

    // Field by field against Debezium's envelope (PostgreSQL connector, JSON converter without
    // schemas): an update is one event with before and after; a delete has `after: null`.
    let update = per_key[r#"{"id":2}"#][1];
    assert_eq!(update.value["before"], json!({"id": 2, "total": 20}));
    assert_eq!(update.value["after"], json!({"id": 2, "total": 25}));
    let delete = per_key[r#"{"id":3}"#][1];
    assert_eq!((&delete.value["before"], &delete.value["after"]), (&json!({"id": 3, "total": 30}), &Value::Null));
    let first = per_key[r#"{"id":1}"#][0];
    assert_eq!((&first.value["before"], &first.value["after"]), (&Value::Null, &json!({"id": 1, "total": 10})));
    for r in records.iter().filter(|r| r.payload.is_some()) {
        let v = &r.value;
        let s = &v["source"];
        assert_eq!(s["connector"], "pgtrickle-relay");
        assert_eq!((&s["name"], &s["db"]), (&json!(db.name), &json!(db.name)));
        assert_eq!((&s["schema"], &s["table"]), (&json!("public"), &json!("orders")));
        assert_eq!(s["snapshot"], if v["op"] == "r" { "true" } else { "false" });
        assert!(s["txId"].as_i64().is_some_and(|x| x > 0), "the refresh transaction: {s}");
        assert!(s["pgt_outbox_id"].as_i64().is_some() && s["pgt_dedup_key"].is_string(), "{s}");
        assert_eq!(s["pgt_dedup_key"].as_str(), r.headers.get("pgtrickle-dedup-key").map(String::as_str));
        let (written, processed) = (s["ts_ms"].as_i64().unwrap(), v["ts_ms"].as_i64().unwrap());
        assert!(written <= processed && processed - written < 300_000, "{written} {processed}");
        assert_eq!(v["ts_us"].as_i64().unwrap() / 1000, processed);
        assert_eq!(v["transaction"], Value::Null);
        assert_eq!(r.headers["content-type"], "application/json");
    }
    // The tombstone: the delete's key, no value, and what it is in a header.
    let tombstone = per_key[r#"{"id":3}"#][2];
    assert_eq!(tombstone.payload, None);
    assert_eq!(tombstone.headers["pgtrickle-op"], "tombstone");
    assert_eq!(tombstone.headers["pgtrickle-dedup-key"], delete.headers["pgtrickle-dedup-key"]);

    let records = kafka.records("dbz-no-tombstones").await;
    assert_eq!(records.len(), 5, "tombstones: false");
    assert!(records.iter().all(|r| r.payload.is_some()));

    // Kafka Connect's JSON converter with schemas: {"schema", "payload"} values and keys, the
    // schema from the table's columns (numeric as a string, as decimal.handling.mode=string).
    let records = kafka.records("dbz-schemas").await;
    assert_eq!(records.len(), 6);
    let update = records.iter().find(|r| r.value["payload"]["op"] == "u").unwrap();
    assert_eq!(update.value["payload"]["after"], json!({"id": 2, "total": "25"}));
    assert_eq!(update.value["payload"]["before"], json!({"id": 2, "total": "20"}));
    let schema = &update.value["schema"];
    assert_eq!(schema["name"], "shop_app.public.orders.Envelope");
    assert_eq!(
        schema["fields"][1]["fields"],
        json!([{"type": "int32", "optional": false, "field": "id"}, {"type": "string", "optional": true, "field": "total"}]),
        "after: the table's columns without pg_trickle's internal ones"
    );
    let key: Value = serde_json::from_str(update.key.as_deref().unwrap()).unwrap();
    assert_eq!((&key["payload"], &key["schema"]["name"]), (&json!({"id": 2}), &json!("shop_app.public.orders.Key")));
    let tombstone = records.iter().find(|r| r.payload.is_none()).unwrap();
    assert_eq!(serde_json::from_str::<Value>(tombstone.key.as_deref().unwrap()).unwrap()["payload"], json!({"id": 3}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_other_target_carries_the_envelope() {
    let rabbit = relay_e2e::rabbitmq::Rabbit::connect().await;
    let (exchange, queue) = (rabbit.name("ce-exchange"), rabbit.name("ce-queue"));
    rabbit.bind_queue(&exchange, lapin::ExchangeKind::Topic, &queue, "#").await;
    let redis = relay_e2e::redis_server::RedisServer::start();
    let sqs = relay_e2e::sqs::SqsServer::start();
    let sqs_queue = sqs.create_queue("debezium-events").await;
    let file = temp_path("debezium.jsonl");
    let (db, c, outbox) = db_with_outbox("orders").await;
    create_inbox_table(&c, "public.ce_inbox").await;
    let keyed = |mut v: Value| {
        v["stream_table"] = json!("orders");
        v["key_columns"] = json!(["id"]);
        v
    };
    pipeline(
        &c,
        "rabbit-binary",
        keyed(json!({"sink_type": "rabbitmq", "rabbitmq_url": relay_e2e::rabbitmq::amqp_url(),
                     "rabbitmq_exchange": exchange, "envelope": "cloudevents", "cloudevents_mode": "binary"})),
    )
    .await;
    pipeline(
        &c,
        "redis-ce",
        keyed(json!({"sink_type": "redis", "redis_url": redis.url(), "redis_stream_key": "ce-events",
                     "envelope": "cloudevents"})),
    )
    .await;
    pipeline(
        &c,
        "file-dbz",
        keyed(json!({"sink_type": "file", "path": file.to_str().unwrap(), "envelope": "debezium"})),
    )
    .await;
    pipeline(
        &c,
        "inbox-ce",
        keyed(json!({"sink_type": "pg-inbox", "inbox_table": "public.ce_inbox", "envelope": "cloudevents"})),
    )
    .await;
    pipeline(
        &c,
        "sqs-dbz",
        keyed(json!({"sink_type": "sqs", "sqs_queue_url": sqs_queue, "sqs_region": "us-east-1",
                     "sqs_endpoint_url": sqs.endpoint(), "sqs_access_key_id": "test",
                     "sqs_secret_access_key": "moto-secret-key-4711", "envelope": "debezium"})),
    )
    .await;
    let _relay = Relay::start(&db.url, "default", &[]);
    let last = three_refreshes(&c, &outbox).await;
    all_committed(&c, &["rabbit-binary", "redis-ce", "file-dbz", "inbox-ce", "sqs-dbz"], last).await;
    let changes = expected_changes();

    // RabbitMQ, binary: the row is the body, the attributes `cloudEvents:*` headers.
    let received = rabbit.drain(&queue).await;
    assert_eq!(received.len(), 5);
    for (m, (op, row, before)) in received.iter().zip(&changes) {
        assert_eq!(&m.body, row);
        assert_eq!(m.headers.get("cloudEvents:specversion").map(String::as_str), Some("1.0"));
        assert_eq!(m.headers.get("cloudEvents:type"), Some(&format!("io.pgtrickle.orders.{op}")));
        assert_eq!(m.headers.get("cloudEvents:id"), m.message_id.as_ref());
        assert_eq!(m.headers.get("cloudEvents:subject"), Some(&row["id"].to_string()));
        let before_text = m.headers.get("cloudEvents:pgtbefore");
        assert_eq!(before_text.map(|b| serde_json::from_str::<Value>(b).unwrap()), *before, "AMQP values are raw");
    }

    // Redis: `payload` is the structured event.
    let entries = redis.entries("ce-events").await;
    assert_eq!(entries.len(), 5);
    for ((_, fields), change) in entries.iter().zip(&changes) {
        let field = |k: &str| fields.get(k).cloned();
        assert_eq!(field("content-type").as_deref(), Some("application/cloudevents+json; charset=utf-8"));
        let e: Event = serde_json::from_str(&field("payload").unwrap()).unwrap();
        check_event(&e, change, &db.name, false);
    }

    // File: one Debezium value per line.
    let lines: Vec<Value> =
        std::fs::read_to_string(&file).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let ops: Vec<&str> = lines.iter().map(|v| v["op"].as_str().unwrap()).collect();
    assert_eq!(ops, ["r", "r", "r", "u", "d"]);
    assert!(lines.iter().all(|v| v["source"]["pgt_traceparent"].as_str().is_some_and(|t| t.starts_with("00-"))));

    // SQS: the Debezium value is the body, its content type an attribute beside the relay's own.
    let mut received = sqs.drain(&sqs_queue).await;
    assert_eq!(received.len(), 5);
    received.sort_by_key(|m| (m.body["source"]["pgt_outbox_id"].as_i64(), m.body["op"].as_str().map(str::to_owned)));
    let ops: Vec<&str> = received.iter().map(|m| m.body["op"].as_str().unwrap()).collect();
    assert_eq!(ops, ["r", "r", "r", "u", "d"]);
    for m in &received {
        assert_eq!(m.attributes.get("content-type").map(String::as_str), Some("application/json"));
        assert_eq!(
            m.attributes.get("pgtrickle-dedup-key"),
            m.body["source"]["pgt_dedup_key"].as_str().map(str::to_owned).as_ref()
        );
    }

    // pg inbox: the event is the payload; event ids stay the dedup keys.
    let rows = c
        .query("SELECT event_id, payload FROM public.ce_inbox ORDER BY (payload->>'pgtoutboxid')::int8, event_id", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 5);
    for r in &rows {
        let (id, payload): (String, Value) = (r.get(0), r.get(1));
        let e: Event = serde_json::from_value(payload).unwrap();
        assert_eq!(e.id(), id);
        assert_eq!(e.ty().rsplit('.').next(), ext(&e, "pgtop").as_deref());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contradicting_envelope_key_fails_only_its_pipeline() {
    let (db, c, outbox) = db_with_outbox("orders").await;
    let (good, bad) = (temp_path("good.jsonl"), temp_path("bad.jsonl"));
    pipeline(
        &c,
        "good",
        json!({"stream_table": "orders", "sink_type": "file", "path": good.to_str().unwrap(),
                                "envelope": "cloudevents"}),
    )
    .await;
    pipeline(
        &c,
        "bad",
        json!({"stream_table": "orders", "sink_type": "file", "path": bad.to_str().unwrap(),
                               "envelope": "cloudevents", "cloudevents_mode": "binary"}),
    )
    .await;
    // The stream table does not exist here: nothing to build a Connect schema from.
    pipeline(
        &c,
        "no-table",
        json!({"stream_table": "orders", "sink_type": "stdout", "envelope": "debezium",
                                    "debezium_schemas": true}),
    )
    .await;
    let relay = Relay::start(&db.url, "default", &[]);
    let last = write_inline(&c, &outbox, Some(json!([{"id": 1}]))).await;
    all_committed(&c, &["good"], last).await;
    let error = eventually(Duration::from_secs(15), "the no-table pipeline says why", || async {
        let h = relay.health();
        let p = h["pipelines"].as_array()?.iter().find(|p| p["name"] == "no-table")?.clone();
        (p["state"] == "failed").then(|| p["last_error"].as_str().unwrap_or_default().to_owned())
    })
    .await;
    assert!(error.contains("'debezium_schemas': no table public.orders"), "{error}");
    let error = eventually(Duration::from_secs(15), "the bad pipeline says why", || async {
        let h = relay.health();
        let p = h["pipelines"].as_array()?.iter().find(|p| p["name"] == "bad")?.clone();
        (p["state"] == "failed").then(|| p["last_error"].as_str().unwrap_or_default().to_owned())
    })
    .await;
    assert!(error.contains("'binary' needs a target with message headers") && error.contains("file"), "{error}");
    assert_eq!(committed_offset(&c, "default", "bad").await.unwrap_or(0), 0, "nothing of it was relayed");
    assert_eq!(read_jsonl(&good).len(), 1);
    assert!(!bad.exists(), "the bad pipeline never opened its file");
}
