//! CloudEvents and Debezium events from sources, unwrapped into the inbox exactly once.

use super::*;

/// A request as the CloudEvents SDK's HTTP binding writes it (binary mode): headers and body.
#[derive(Default)]
struct HttpRequest(Vec<(String, String)>);

impl cloudevents::binding::http::Builder<(Vec<(String, String)>, Vec<u8>)> for HttpRequest {
    fn header(&mut self, key: &str, value: ::http::HeaderValue) {
        self.0.push((key.to_owned(), value.to_str().unwrap().to_owned()));
    }

    fn body(&mut self, bytes: Vec<u8>) -> cloudevents::message::Result<(Vec<(String, String)>, Vec<u8>)> {
        Ok((std::mem::take(&mut self.0), bytes))
    }

    fn finish(&mut self) -> cloudevents::message::Result<(Vec<(String, String)>, Vec<u8>)> {
        self.body(Vec::new())
    }
}

/// Waits until a reverse pipeline has consumed `n` messages (stored, skipped or dead).
async fn consumed(relay: &Relay, pipeline: &str, n: u64, what: &str) {
    let series = format!(r#"pgtrickle_relay_messages_consumed_total{{direction="reverse",pipeline="{pipeline}"}} {n}"#);
    eventually(Duration::from_secs(60), what, || async {
        relay.get("/metrics").1.lines().any(|l| l == series).then_some(())
    })
    .await;
}

async fn inbox_rows(c: &Client, table: &str) -> Vec<(String, String, String, Option<String>, Value, Option<String>)> {
    c.query(
        &format!("SELECT event_id, event_type, source, aggregate_id, payload, trace_id FROM {table} ORDER BY received_at, event_id"),
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_posted_to_the_webhook_receiver_land_in_the_inbox_once() {
    let db = TestDb::new().await;
    let c = db.client().await;
    assert!(run_cli(&db.url, &["migrate"]).0.success());
    create_inbox_table(&c, "public.ce_in").await;
    let port = free_port();
    let config = json!({"source_type": "webhook", "webhook_bind": format!("127.0.0.1:{port}"),
                        "webhook_path": "/events", "inbox_table": "ce_in", "schema": "public"});
    c.execute("SELECT pgtrickle.set_relay_inbox('ce-in', config => $1::jsonb)", &[&config]).await.unwrap();
    let _relay = Relay::start(&db.url, "default", &[]);
    let url = format!("http://127.0.0.1:{port}/events");
    crate::reverse::wait_listening(port).await;
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    // Built and sent by the CloudEvents SDK's own HTTP binding (binary mode): `ce-` headers.
    let binary = cloudevents::EventBuilderV10::new()
        .id("evt-binary-1")
        .source("/shop/orders")
        .ty("com.shop.order.paid")
        .subject("ORD 7")
        .extension("traceparent", tp)
        .data("application/json", json!({"order": 7, "lines": [1, 2]}))
        .build()
        .unwrap();
    let structured = cloudevents::EventBuilderV10::new()
        .id("evt-structured-1")
        .source("/shop/orders")
        .ty("com.shop.order.shipped")
        .subject("ORD-8")
        .data("application/json", json!({"order": 8}))
        .build()
        .unwrap();
    let http = reqwest::Client::new();
    let (headers, body) = BinaryDeserializer::deserialize_binary(
        binary,
        cloudevents::binding::http::Serializer::new(HttpRequest::default()),
    )
    .unwrap();
    for attempt in 0..2 {
        let mut post = http.post(&url).body(body.clone());
        for (k, v) in &headers {
            post = post.header(k.as_str(), v.as_str());
        }
        let r = post.send().await.unwrap();
        assert_eq!(r.status(), 200);
        let answer: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        assert_eq!((&answer["stored"], &answer["duplicates"]), (&json!(1 - attempt), &json!(attempt)), "{answer}");
        let r = http
            .post(&url)
            .header("content-type", "application/cloudevents+json")
            .body(serde_json::to_vec(&structured).unwrap())
            .send()
            .await
            .unwrap();
        let answer: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        assert_eq!((&answer["stored"], &answer["duplicates"]), (&json!(1 - attempt), &json!(attempt)), "{answer}");
    }
    // A CloudEvents batch (JSON batch format): one event per element.
    let batch = json!([
        {"specversion": "1.0", "id": "evt-batch-1", "source": "/shop/orders", "type": "com.shop.order.paid", "data": {"order": 9}},
        {"specversion": "1.0", "id": "evt-batch-2", "source": "/shop/orders", "type": "com.shop.order.paid", "data": {"order": 10}}
    ]);
    let r = http
        .post(&url)
        .header("content-type", "application/cloudevents-batch+json")
        .body(batch.to_string())
        .send()
        .await
        .unwrap();
    let answer: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(answer["stored"], 2, "{answer}");
    let batch_rows: Vec<(String, Value)> = c
        .query("SELECT event_id, payload FROM public.ce_in WHERE event_id LIKE 'evt-batch-%' ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        batch_rows,
        [("evt-batch-1".to_owned(), json!({"order": 9})), ("evt-batch-2".to_owned(), json!({"order": 10}))]
    );
    c.execute("DELETE FROM public.ce_in WHERE event_id LIKE 'evt-batch-%'", &[]).await.unwrap();

    let rows = inbox_rows(&c, "public.ce_in").await;
    assert_eq!(rows.len(), 2, "each event once: {rows:?}");
    let (id, ty, source, aggregate, payload, trace) = &rows[0];
    assert_eq!((id.as_str(), ty.as_str(), source.as_str()), ("evt-binary-1", "com.shop.order.paid", "/shop/orders"));
    assert_eq!(aggregate.as_deref(), Some("ORD 7"), "percent-decoded subject");
    assert_eq!(payload, &json!({"order": 7, "lines": [1, 2]}), "the data, an array inside kept whole");
    assert_eq!(trace.as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
    let (id, ty, _, aggregate, payload, _) = &rows[1];
    assert_eq!(
        (id.as_str(), ty.as_str(), aggregate.as_deref()),
        ("evt-structured-1", "com.shop.order.shipped", Some("ORD-8"))
    );
    assert_eq!(payload, &json!({"order": 8}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debezium_events_from_kafka_land_in_the_inbox_once_and_tombstones_are_skipped() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let kafka = KafkaBroker::start();
    kafka.create_topic("changes", 1).await;
    // The relay's own Debezium events (forward pipeline, with tombstones) …
    let (db, c, outbox) = db_with_outbox("orders").await;
    pipeline(
        &c,
        "dbz-out",
        json!({"stream_table": "orders", "sink_type": "kafka", "kafka_brokers": kafka.brokers(), "kafka_topic": "changes",
               "envelope": "debezium", "key_columns": ["id"]}),
    )
    .await;
    // … and one written by Debezium with Kafka Connect's schemas, keyed by a composite key.
    let producer: FutureProducer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", kafka.brokers()).create().unwrap();
    let foreign = json!({"schema": {"type": "struct", "name": "shop.public.items.Envelope"},
                         "payload": {"before": null, "after": {"sku": "A-1", "qty": 3}, "op": "c", "ts_ms": 1,
                                     "source": {"connector": "postgresql", "db": "shop", "table": "items"}}});
    let key = json!({"schema": {"type": "struct"}, "payload": {"sku": "A-1", "wh": 2}}).to_string();
    producer
        .send(FutureRecord::to("changes").key(&key).payload(&foreign.to_string()), Duration::from_secs(10))
        .await
        .unwrap();
    create_inbox_table(&c, "public.changes_in").await;
    let reverse = json!({"source_type": "kafka", "kafka_brokers": kafka.brokers(), "kafka_topic": "changes",
                         "kafka_group_id": "changes-in", "kafka_session_timeout_ms": 6000,
                         "inbox_table": "changes_in", "schema": "public", "envelope": "debezium"});
    c.execute("SELECT pgtrickle.set_relay_inbox('changes-in', config => $1::jsonb)", &[&reverse]).await.unwrap();
    let relay = Relay::start(&db.url, "default", &[]);
    let last = three_refreshes(&c, &outbox).await;
    all_committed(&c, &["dbz-out"], last).await;
    let count = || async { c.query_one("SELECT count(*) FROM public.changes_in", &[]).await.unwrap().get::<_, i64>(0) };
    eventually(Duration::from_secs(60), "six change events in the inbox", || async {
        (count().await == 6).then_some(())
    })
    .await;
    // Every record (tombstone included) was consumed before the next check.
    consumed(&relay, "changes-in", 7, "every record consumed").await;
    let metrics = relay.get("/metrics").1;
    let skipped =
        r#"pgtrickle_relay_messages_skipped_total{direction="reverse",pipeline="changes-in",reason="tombstone"} 1"#;
    assert!(metrics.lines().any(|l| l == skipped), "{metrics}");
    let rows = inbox_rows(&c, "public.changes_in").await;
    let by_type: Vec<(&str, Option<&str>, &Value)> =
        rows.iter().map(|(_, t, _, a, p, _)| (t.as_str(), a.as_deref(), p)).collect();
    for want in [
        ("c", Some(r#"{"sku":"A-1","wh":2}"#), json!({"sku": "A-1", "qty": 3})),
        ("r", Some("1"), json!({"id": 1, "total": 10})),
        ("u", Some("2"), json!({"id": 2, "total": 25})),
        ("d", Some("3"), json!({"id": 3, "total": 30})),
    ] {
        assert!(by_type.iter().any(|(t, a, p)| (*t, *a, *p) == (want.0, want.1, &want.2)), "{want:?} in {by_type:?}");
    }
    // The relay's events keep their dedup keys as event ids; nothing was dead-lettered.
    let own: Vec<&String> = rows.iter().map(|r| &r.0).filter(|id| id.starts_with("outbox_orders:")).collect();
    assert_eq!(own.len(), 5, "{rows:?}");
    let dead: i64 = c
        .query_one("SELECT count(*) FROM pgtrickle.relay_dead_letters WHERE pipeline = 'changes-in'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(dead, 0, "the tombstone is skipped, not dead-lettered");

    // Consumed again from the start (a new group): still six rows.
    drop(relay);
    let again = json!({"kafka_group_id": "changes-in-again"});
    c.execute(
        "UPDATE pgtrickle.relay_inbox_config SET config = config || $1::jsonb WHERE name = 'changes-in'",
        &[&again],
    )
    .await
    .unwrap();
    let relay = Relay::start(&db.url, "default", &[]);
    consumed(&relay, "changes-in", 7, "the topic consumed again").await;
    assert_eq!(count().await, 6, "redelivered events are duplicates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_round_trip_through_rabbitmq_into_the_inbox() {
    use lapin::options::BasicPublishOptions;
    let rabbit = relay_e2e::rabbitmq::Rabbit::connect().await;
    let (exchange, queue) = (rabbit.name("ce-rt"), rabbit.name("ce-rt-in"));
    rabbit.bind_queue(&exchange, lapin::ExchangeKind::Topic, &queue, "#").await;
    let (db, c, outbox) = db_with_outbox("orders").await;
    create_inbox_table(&c, "public.amqp_ce_in").await;
    // The relay's binary events (`cloudEvents:*` headers) go out to the exchange …
    pipeline(
        &c,
        "ce-to-amqp",
        json!({"stream_table": "orders", "sink_type": "rabbitmq", "rabbitmq_url": relay_e2e::rabbitmq::amqp_url(),
               "rabbitmq_exchange": exchange, "envelope": "cloudevents", "cloudevents_mode": "binary",
               "key_columns": ["id"]}),
    )
    .await;
    // … and come back from the queue into an inbox that requires CloudEvents.
    let reverse = json!({"source_type": "rabbitmq", "rabbitmq_url": relay_e2e::rabbitmq::amqp_url(),
                         "rabbitmq_queue": queue, "rabbitmq_declare_queue": false, "inbox_table": "amqp_ce_in", "schema": "public",
                         "envelope": "cloudevents"});
    c.execute("SELECT pgtrickle.set_relay_inbox('amqp-ce-in', config => $1::jsonb)", &[&reverse]).await.unwrap();
    // A structured event from another producer: its content type says what it is.
    let structured = json!({"specversion": "1.0", "id": "evt-amqp-1", "source": "/billing", "type": "invoice.sent",
                            "subject": "INV-3", "data": {"invoice": 3}});
    let props = lapin::BasicProperties::default().with_content_type("application/cloudevents+json".into());
    rabbit
        .channel()
        .basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            structured.to_string().as_bytes(),
            props,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let _relay = Relay::start(&db.url, "default", &[]);
    let last = three_refreshes(&c, &outbox).await;
    all_committed(&c, &["ce-to-amqp"], last).await;
    let count = || async { c.query_one("SELECT count(*) FROM public.amqp_ce_in", &[]).await.unwrap().get::<_, i64>(0) };
    eventually(Duration::from_secs(30), "six events in the inbox", || async { (count().await == 6).then_some(()) })
        .await;
    let rows = inbox_rows(&c, "public.amqp_ce_in").await;
    let find = |ty: &str| rows.iter().find(|r| r.1 == ty).unwrap_or_else(|| panic!("{ty} in {rows:?}"));
    let update = find("io.pgtrickle.orders.update");
    assert!(update.0.starts_with("outbox_orders:"), "the event id is the relay's dedup key: {update:?}");
    assert_eq!(
        (update.2.as_str(), update.3.as_deref()),
        (format!("/pgtrickle/{}/orders", db.name).as_str(), Some("2"))
    );
    assert_eq!(update.4, json!({"id": 2, "total": 25}));
    assert!(update.5.is_some(), "the trace id came along");
    let invoice = find("invoice.sent");
    assert_eq!(
        (invoice.0.as_str(), invoice.2.as_str(), invoice.3.as_deref()),
        ("evt-amqp-1", "/billing", Some("INV-3"))
    );
    assert_eq!(invoice.4, json!({"invoice": 3}));
    let dead: i64 = c
        .query_one("SELECT count(*) FROM pgtrickle.relay_dead_letters WHERE pipeline = 'amqp-ce-in'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(dead, 0);
}

/// CloudEvents ids are unique only within their source: two senders that both number their events
/// 1, 2, 3 … send different events under the same ids. The inbox keys on `id`, so an id already
/// stored from another source is dead-lettered, saying why — never skipped as a duplicate — and
/// `cloudevents_event_id: source_id` plus a replay put every event in the inbox once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_of_two_sources_with_the_same_ids_are_never_dropped_as_duplicates() {
    const N: i64 = 5;
    let db = TestDb::new().await;
    let c = db.client().await;
    assert!(run_cli(&db.url, &["migrate"]).0.success());
    create_inbox_table(&c, "public.ce_ids").await;
    let port = free_port();
    let config = |event_id: &str| {
        json!({"source_type": "webhook", "webhook_bind": format!("127.0.0.1:{port}"), "webhook_path": "/events",
               "inbox_table": "ce_ids", "schema": "public", "cloudevents_event_id": event_id})
    };
    c.execute("SELECT pgtrickle.set_relay_inbox('ce-ids', config => $1::jsonb)", &[&config("id")]).await.unwrap();
    let relay = Relay::start(&db.url, "default", &[]);
    crate::reverse::wait_listening(port).await;
    let http = reqwest::Client::new();
    let post = |source: &'static str| {
        let events: Vec<Value> = (1..=N)
            .map(|n| {
                json!({"specversion": "1.0", "id": n.to_string(), "source": source, "type": "com.shop.counted",
                             "data": {"from": source, "n": n}})
            })
            .collect();
        let request = http
            .post(format!("http://127.0.0.1:{port}/events"))
            .header("content-type", "application/cloudevents-batch+json")
            .body(Value::Array(events).to_string());
        async move {
            let r = request.send().await.unwrap();
            let status = r.status().as_u16();
            (status, serde_json::from_slice::<Value>(&r.bytes().await.unwrap()).unwrap())
        }
    };
    let (status, answer) = post("/shop/a").await;
    assert_eq!((status, &answer["stored"]), (200, &json!(N)), "{answer}");
    // The same ids from another source: other events.
    let (status, answer) = post("/shop/b").await;
    assert_eq!((status, &answer["dead_lettered"], &answer["duplicates"]), (422, &json!(N), &json!(0)), "{answer}");
    let error = answer["error"].as_str().unwrap();
    assert!(
        error.contains("from source '/shop/b' is already in the inbox from source '/shop/a'")
            && error.contains("\"cloudevents_event_id\": \"source_id\""),
        "{error}"
    );
    // A real redelivery is still a duplicate.
    let (status, answer) = post("/shop/a").await;
    assert_eq!((status, &answer["duplicates"]), (200, &json!(N)), "{answer}");

    // Every event is in the inbox or in the dead letters, never nowhere.
    let inbox = counted_events(&c).await;
    let dead: Vec<Value> = c
        .query(
            "SELECT payload FROM pgtrickle.relay_dead_letters WHERE pipeline = 'ce-ids' AND replayed_at IS NULL",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| serde_json::from_slice(r.get::<_, &[u8]>(0)).unwrap())
        .collect();
    assert_eq!(inbox, (1..=N).map(|n| (("/shop/a".to_owned(), n), 1)).collect(), "the first source's events once");
    let mut dead_events: Vec<(String, i64)> = dead
        .iter()
        .map(|e| (e["data"]["from"].as_str().unwrap().to_owned(), e["data"]["n"].as_i64().unwrap()))
        .collect();
    dead_events.sort();
    assert_eq!(dead_events, (1..=N).map(|n| ("/shop/b".to_owned(), n)).collect::<Vec<_>>(), "the other's, kept");

    // Keyed on source and id, the dead letters replay into the inbox; nothing twice.
    c.execute("SELECT pgtrickle.set_relay_inbox('ce-ids', config => $1::jsonb)", &[&config("source_id")])
        .await
        .unwrap();
    let (ok, out, err) = run_cli(&db.url, &["dlq", "replay", "--pipeline", "ce-ids"]);
    assert!(ok.success(), "{out}{err}");
    let inbox = counted_events(&c).await;
    let expected: std::collections::BTreeMap<(String, i64), usize> =
        ["/shop/a", "/shop/b"].iter().flat_map(|s| (1..=N).map(move |n| ((s.to_string(), n), 1))).collect();
    assert_eq!(inbox, expected, "every event of both sources once");
    let b_ids: Vec<String> = c
        .query("SELECT event_id FROM public.ce_ids WHERE source = '/shop/b' ORDER BY event_id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(b_ids, (1..=N).map(|n| format!("/shop/b {n}")).collect::<Vec<_>>());
    // The pipeline restarted with the new key: the second source's redelivery is a duplicate.
    eventually(Duration::from_secs(10), "the receiver keyed on source and id", || async {
        let (status, answer) = post("/shop/b").await;
        (status == 200 && answer["duplicates"] == N).then_some(())
    })
    .await;
    assert_eq!(counted_events(&c).await, expected);
    drop(relay);
}

/// How many times each (sender, n) of the counted events is in the inbox.
async fn counted_events(c: &Client) -> std::collections::BTreeMap<(String, i64), usize> {
    let mut counts = std::collections::BTreeMap::new();
    for r in c.query("SELECT payload FROM public.ce_ids", &[]).await.unwrap() {
        let p: Value = r.get(0);
        *counts.entry((p["from"].as_str().unwrap().to_owned(), p["n"].as_i64().unwrap())).or_insert(0) += 1;
    }
    counts
}
