//! Reverse mode: NATS JetStream and the HTTP webhook receiver into a pg_trickle inbox — acked
//! after the commit, exactly once across a SIGKILL, poison messages in the dead-letter table.

use std::time::Duration;

use async_nats::jetstream;
use futures::stream::{FuturesUnordered, StreamExt};
use relay_e2e::nats::NatsServer;
use relay_e2e::nats_inject::NatsInject;
use relay_e2e::*;
use serde_json::{json, Value};

/// An inbox in pg_trickle's `create_inbox` shape.
async fn create_inbox(c: &tokio_postgres::Client, name: &str) {
    create_inbox_table(c, &format!("pgtrickle.{name}")).await;
}

async fn count(c: &tokio_postgres::Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).await.unwrap().get(0)
}

/// Publishes `n` messages to `subject`, every other one with its own `Nats-Msg-Id`.
async fn publish(js: &jetstream::Context, subject: &str, from: usize, n: usize) {
    let mut acks = FuturesUnordered::new();
    for i in from..from + n {
        let body = json!({"order_id": i % 1000, "seq": i, "event_type": "OrderPlaced"}).to_string();
        let ack = if i % 2 == 0 {
            let mut h = async_nats::HeaderMap::new();
            h.insert("Nats-Msg-Id", format!("cmd-{i}").as_str());
            js.publish_with_headers(subject.to_owned(), h, body.into()).await.unwrap()
        } else {
            js.publish(subject.to_owned(), body.into()).await.unwrap()
        };
        acks.push(ack.into_future());
        while acks.len() >= 512 {
            acks.next().await.unwrap().unwrap();
        }
    }
    while let Some(a) = acks.next().await {
        a.unwrap();
    }
}

use std::future::IntoFuture;

/// Starts a relay, SIGKILLs it once a third of `expected` rows are in `inbox`, starts another,
/// waits until all of them are there, and checks that no event is there twice (distinct values of
/// the payload's `field`). Returns the second relay.
async fn kill_midway_and_finish(
    db: &TestDb,
    c: &tokio_postgres::Client,
    inbox: &str,
    expected: usize,
    field: &str,
) -> Relay {
    let total = format!("SELECT count(*) FROM pgtrickle.{inbox}");
    let mut relay = Relay::start(&db.url, "default", &[]);
    eventually(Duration::from_secs(90), "a third stored", || async {
        (count(c, &total).await >= (expected / 3) as i64).then_some(())
    })
    .await;
    relay.kill();
    let relay = Relay::start(&db.url, "default", &[]);
    eventually(Duration::from_secs(180), "everything stored", || async {
        (count(c, &total).await == expected as i64).then_some(())
    })
    .await;
    let distinct = format!("SELECT count(DISTINCT payload->>'{field}') FROM pgtrickle.{inbox}");
    assert_eq!(count(c, &distinct).await, expected as i64, "no event twice");
    relay
}

/// The raw body of the pipeline's one dead letter.
async fn dead_letter_body(c: &tokio_postgres::Client, pipeline: &str) -> String {
    c.query_one(
        "SELECT convert_from(payload, 'UTF8') FROM pgtrickle.relay_dead_letters WHERE pipeline = $1",
        &[&pipeline],
    )
    .await
    .unwrap()
    .get(0)
}

/// Waits until the durable consumer has nothing pending and nothing unacknowledged. Messages a
/// SIGKILLed relay had pulled but not acked come back only after the consumer's ack wait (30 s by
/// default), so this allows more than that.
async fn all_acked(js: &jetstream::Context, stream: &str, consumer: &str) {
    let consumer: jetstream::consumer::PullConsumer =
        js.get_stream(stream).await.unwrap().get_consumer(consumer).await.unwrap();
    eventually(Duration::from_secs(75), "every message acknowledged", || {
        let mut consumer = consumer.clone();
        async move {
            let info = consumer.info().await.unwrap().clone();
            (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_nats_example_lands_100k_messages_exactly_once_across_a_sigkill() {
    let nats = NatsServer::start();
    let js = nats.jetstream().await;
    nats.create_stream("commands", &["commands.>"]).await;
    let db = TestDb::new().await;
    let c = db.client().await;
    assert!(run_cli(&db.url, &["migrate"]).0.success());
    create_inbox(&c, "orders_inbox").await;
    // The seed README's example as written, on this test's own nats-server.
    let config = json!({
        "source_type": "nats",
        "nats_url": nats.url(),
        "nats_stream": "commands",
        "nats_consumer": "relay-consumer",
        "inbox_table": "orders_inbox"
    });
    c.execute("SELECT pgtrickle.set_relay_inbox('nats-to-orders-inbox', config => $1::jsonb)", &[&config])
        .await
        .unwrap();
    c.execute("SELECT pgtrickle.enable_relay('nats-to-orders-inbox')", &[]).await.unwrap();

    const N: usize = 100_000;
    publish(&js, "commands.orders", 0, N).await;
    let mut relay = kill_midway_and_finish(&db, &c, "orders_inbox", N, "seq").await;
    // Nothing pending or unacknowledged, and nothing more arrives.
    all_acked(&js, "commands", "relay-consumer").await;
    assert_eq!(count(&c, "SELECT count(*) FROM pgtrickle.orders_inbox").await, N as i64);

    // Event ids: the publisher's own id, else the stream coordinate; the mapping of the columns.
    let row = c
        .query_one(
            "SELECT event_id, event_type, source, aggregate_id FROM pgtrickle.orders_inbox WHERE payload->>'seq' = '10'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "cmd-10");
    assert_eq!(row.get::<_, String>(1), "OrderPlaced");
    assert_eq!(row.get::<_, String>(2), "nats-to-orders-inbox");
    assert_eq!(row.get::<_, Option<String>>(3), None, "no aggregate_id_field configured");
    let odd: String = c
        .query_one("SELECT event_id FROM pgtrickle.orders_inbox WHERE payload->>'seq' = '11'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(odd.starts_with("nats:commands:"), "{odd}");
    let metrics = relay.get("/metrics").1;
    assert!(
        metrics.contains(
            r#"pgtrickle_relay_messages_consumed_total{direction="reverse",pipeline="nats-to-orders-inbox"}"#
        ),
        "{metrics}"
    );
    assert!(relay.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_is_dead_lettered_and_acked_while_its_neighbours_are_stored() {
    let nats = NatsServer::start();
    let js = nats.jetstream().await;
    nats.create_stream("events", &["events.>"]).await;
    let db = TestDb::new().await;
    let c = db.client().await;
    assert!(run_cli(&db.url, &["migrate"]).0.success());
    create_inbox(&c, "events_inbox").await;
    let config = json!({"source_type": "nats", "nats_url": nats.url(), "nats_stream": "events", "inbox_table": "events_inbox",
                        "aggregate_id_field": "order_id"});
    c.execute("SELECT pgtrickle.set_relay_inbox('events-in', config => $1::jsonb)", &[&config]).await.unwrap();
    let _relay = Relay::start(&db.url, "default", &[]);
    let mut h = async_nats::HeaderMap::new();
    h.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    js.publish_with_headers("events.a", h, r#"{"order_id": 1}"#.into()).await.unwrap().await.unwrap();
    js.publish("events.b", "this is not json".into()).await.unwrap().await.unwrap();
    js.publish("events.c", r#"{"order_id": 3}"#.into()).await.unwrap().await.unwrap();
    eventually(Duration::from_secs(15), "both good messages stored", || async {
        (count(&c, "SELECT count(*) FROM pgtrickle.events_inbox").await == 2).then_some(())
    })
    .await;
    let rows = c
        .query("SELECT event_type, aggregate_id, trace_id FROM pgtrickle.events_inbox ORDER BY aggregate_id", &[])
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, String>(0), "events.a", "no event_type field: the subject");
    assert_eq!(rows[0].get::<_, String>(1), "1");
    assert_eq!(rows[0].get::<_, Option<String>>(2).as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
    let dl = c
        .query_one(
            "SELECT direction, pipeline, source_ref, convert_from(payload, 'UTF8'), error FROM pgtrickle.relay_dead_letters",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(dl.get::<_, String>(0), "reverse");
    assert_eq!(dl.get::<_, String>(1), "events-in");
    assert_eq!(dl.get::<_, String>(2), "nats:events:2");
    assert_eq!(dl.get::<_, String>(3), "this is not json");
    assert!(dl.get::<_, String>(4).contains("not JSON"));
    // Acked: nothing is redelivered.
    all_acked(&js, "events", "events-in").await;

    // `dlq list` shows it; replaying it unchanged keeps it (still not JSON) …
    let (ok, out, _) = run_cli(&db.url, &["dlq", "list"]);
    assert!(ok.success());
    assert!(out.contains("nats:events:2") && out.contains("not JSON") && out.contains("1 dead letter(s)"), "{out}");
    let id: i64 = c.query_one("SELECT id FROM pgtrickle.relay_dead_letters", &[]).await.unwrap().get(0);
    let (ok, out, _) = run_cli(&db.url, &["dlq", "replay", &id.to_string()]);
    assert!(!ok.success() && out.contains("kept") && out.contains("not JSON"), "{out}");
    // … once fixed, it goes to the inbox under its original identity and subject.
    c.execute(
        "UPDATE pgtrickle.relay_dead_letters SET payload = convert_to('{\"order_id\": 2}', 'UTF8') WHERE id = $1",
        &[&id],
    )
    .await
    .unwrap();
    let (ok, out, _) = run_cli(&db.url, &["dlq", "replay", "--pipeline", "events-in"]);
    assert!(ok.success(), "{out}");
    let row = c
        .query_one("SELECT event_id, event_type FROM pgtrickle.events_inbox WHERE aggregate_id = '2'", &[])
        .await
        .unwrap();
    assert_eq!((row.get::<_, String>(0).as_str(), row.get::<_, String>(1).as_str()), ("nats:events:2", "events.b"));
    let (_, out, _) = run_cli(&db.url, &["dlq", "list"]);
    assert!(out.contains("0 dead letter(s)"), "{out}");
}

/// Guards the NATS source's lockstep of handed-out and pending messages (fixed in 302a4ca): when
/// a fetch yields messages and then an error status, those messages were kept pending although
/// the receive failed, so the next stored batch's ack acknowledged them too — never in the
/// inbox, never delivered again. A proxy adds a `409` status right after a delivered message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_that_ends_in_an_error_status_after_some_messages_loses_none_of_them() {
    let nats = NatsServer::start();
    let js = nats.jetstream().await;
    nats.create_stream("injected", &["injected.>"]).await;
    let proxy = NatsInject::start(nats.port).await;
    let db = TestDb::new().await;
    let c = db.client().await;
    assert!(run_cli(&db.url, &["migrate"]).0.success());
    create_inbox(&c, "injected_inbox").await;
    // Messages that were on their way to the failed fetch come back after the ack wait.
    let config = json!({"source_type": "nats", "nats_url": proxy.url(), "nats_stream": "injected",
                        "nats_consumer": "injected", "inbox_table": "injected_inbox", "ack_wait_seconds": 5});
    c.execute("SELECT pgtrickle.set_relay_inbox('injected-in', config => $1::jsonb)", &[&config]).await.unwrap();
    let _relay = Relay::start(&db.url, "default", &[]);

    const SET: usize = 20;
    publish(&js, "injected.orders", 0, SET).await;
    eventually(Duration::from_secs(15), "the first set stored", || async {
        (count(&c, "SELECT count(*) FROM pgtrickle.injected_inbox").await == SET as i64).then_some(())
    })
    .await;
    // The fetch that delivers the next message ends in an error right after it.
    proxy.arm();
    publish(&js, "injected.orders", SET, SET).await;
    eventually(Duration::from_secs(10), "a status injected into a fetch", || async {
        (proxy.injections() > 0).then_some(())
    })
    .await;
    // A later batch is stored and acknowledged (before the fix: with the failed fetch's messages).
    publish(&js, "injected.orders", 2 * SET, SET).await;

    // Once JetStream has every message acknowledged nothing more comes: each must be stored, once.
    all_acked(&js, "injected", "injected").await;
    let seqs: Vec<i64> = c
        .query("SELECT (payload->>'seq')::bigint FROM pgtrickle.injected_inbox ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let missing: Vec<i64> = (0..3 * SET as i64).filter(|i| seqs.binary_search(i).is_err()).collect();
    assert!(missing.is_empty(), "acknowledged but never stored in the inbox (lost): seq {missing:?}");
    assert_eq!(seqs.len(), 3 * SET, "every message exactly once");
    assert_eq!(proxy.injections(), 1);
}

fn webhook_config(port: u16) -> Value {
    json!({"source_type": "webhook", "webhook_bind": format!("127.0.0.1:{port}"), "webhook_path": "/events",
           "webhook_auth_token": "s3cret", "webhook_max_body_bytes": 2048, "inbox_table": "hooks_inbox",
           "aggregate_id_field": "id"})
}

/// Waits until the relay's webhook receiver accepts connections on `port`.
pub(crate) async fn wait_listening(port: u16) {
    eventually(Duration::from_secs(10), "the receiver listens", || async {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_receiver_answers_after_the_commit_and_checks_its_input() {
    let db = TestDb::new().await;
    let c = db.client().await;
    assert!(run_cli(&db.url, &["migrate"]).0.success());
    create_inbox(&c, "hooks_inbox").await;
    let port = free_port();
    c.execute("SELECT pgtrickle.set_relay_inbox('hooks', config => $1::jsonb)", &[&webhook_config(port)])
        .await
        .unwrap();
    let relay = Relay::start(&db.url, "default", &[]);
    wait_listening(port).await;
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/events");
    let post = |body: String, key: Option<&str>| {
        let mut r = http.post(&url).bearer_auth("s3cret").header("content-type", "application/json").body(body);
        if let Some(k) = key {
            r = r.header("Idempotency-Key", k);
        }
        r.send()
    };

    let r = post(json!({"id": 1, "event_type": "Paid"}).to_string(), Some("evt-1")).await.unwrap();
    assert_eq!(r.status(), 200);
    // Answered after the commit: the row is there now.
    assert_eq!(count(&c, "SELECT count(*) FROM pgtrickle.hooks_inbox WHERE event_id = 'evt-1'").await, 1);
    let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(body["stored"], 1);
    // A retried request is a duplicate, answered 200, stored once.
    let r = post(json!({"id": 1, "event_type": "Paid"}).to_string(), Some("evt-1")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(serde_json::from_slice::<Value>(&r.bytes().await.unwrap()).unwrap()["duplicates"], 1);
    // A JSON array is a batch: one event per element.
    let r = post(json!([{"id": 2}, {"id": 3}]).to_string(), Some("batch-9")).await.unwrap();
    assert_eq!(r.status(), 200);
    let ids: Vec<String> = c
        .query("SELECT event_id FROM pgtrickle.hooks_inbox WHERE event_id LIKE 'batch-9:%' ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, vec!["batch-9:0", "batch-9:1"]);

    // Refused before anything is queued.
    let no_auth = http.post(&url).header("content-type", "application/json").body("{}").send().await.unwrap();
    assert_eq!(no_auth.status(), 401);
    let wrong_type =
        http.post(&url).bearer_auth("s3cret").header("content-type", "text/plain").body("{}").send().await.unwrap();
    assert_eq!(wrong_type.status(), 415);
    let too_big = post(json!({"blob": "x".repeat(4096)}).to_string(), None).await.unwrap();
    assert_eq!(too_big.status(), 413);
    let wrong_path = http.post(format!("http://127.0.0.1:{port}/other")).bearer_auth("s3cret").send().await.unwrap();
    assert_eq!(wrong_path.status(), 404);
    // Not JSON: dead-lettered (kept, with its headers) and answered 422.
    let poison = post("{not json".to_owned(), Some("bad-1")).await.unwrap();
    assert_eq!(poison.status(), 422);
    let dl: String = c
        .query_one("SELECT source_ref FROM pgtrickle.relay_dead_letters WHERE pipeline = 'hooks'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(dl, "bad-1");
    assert_eq!(count(&c, "SELECT count(*) FROM pgtrickle.hooks_inbox").await, 3);
    drop(relay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_sender_never_gets_2xx_for_an_event_that_was_not_stored() {
    let db = TestDb::new().await;
    let c = db.client().await;
    assert!(run_cli(&db.url, &["migrate"]).0.success());
    create_inbox(&c, "hooks_inbox").await;
    let port = free_port();
    c.execute("SELECT pgtrickle.set_relay_inbox('hooks', config => $1::jsonb)", &[&webhook_config(port)])
        .await
        .unwrap();
    let mut relay = Relay::start(&db.url, "default", &[]);
    wait_listening(port).await;

    // The inbox is locked: the write waits, the sender waits for its answer.
    let locker = db.client().await;
    locker.batch_execute("BEGIN; LOCK TABLE pgtrickle.hooks_inbox IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let url = format!("http://127.0.0.1:{port}/events");
    let send = |url: String| async move {
        reqwest::Client::new()
            .post(url)
            .bearer_auth("s3cret")
            .header("content-type", "application/json")
            .header("Idempotency-Key", "evt-42")
            .body(json!({"id": 42}).to_string())
            .timeout(Duration::from_secs(30))
            .send()
            .await
    };
    let pending = tokio::spawn(send(url.clone()));
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!pending.is_finished(), "no answer before the commit");
    relay.kill();
    let answer = pending.await.unwrap();
    assert!(
        answer.as_ref().map_or(true, |r| !r.status().is_success()),
        "got {answer:?} for an event that was not stored"
    );
    locker.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(count(&c, "SELECT count(*) FROM pgtrickle.hooks_inbox").await, 0);

    // The sender retries against the next relay and the event is stored once.
    let _relay = Relay::start(&db.url, "default", &[]);
    wait_listening(port).await;
    let r = send(url).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(count(&c, "SELECT count(*) FROM pgtrickle.hooks_inbox WHERE event_id = 'evt-42'").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stream_entries_land_exactly_once_across_a_sigkill_and_poison_is_kept() {
    let redis_server = relay_e2e::redis_server::RedisServer::start();
    let client = redis::Client::open(redis_server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    const N: usize = 100_000;
    for chunk in (0..N).collect::<Vec<_>>().chunks(500) {
        let mut pipe = redis::pipe();
        for &i in chunk {
            let cmd = pipe.cmd("XADD").arg("orders.events").arg("*");
            if i == 5_000 {
                cmd.arg("payload").arg("{broken");
            } else {
                cmd.arg("payload").arg(json!({"order_id": i, "event_type": "OrderPlaced"}).to_string());
            }
            if i % 2 == 0 {
                cmd.arg("dedup_key").arg(format!("evt-{i}"));
            }
        }
        let _: Vec<String> = pipe.query_async(&mut conn).await.unwrap();
    }
    let db = TestDb::new().await;
    let c = db.client().await;
    assert!(run_cli(&db.url, &["migrate"]).0.success());
    create_inbox(&c, "redis_inbox").await;
    let config = json!({"source_type": "redis", "redis_url": redis_server.url(), "redis_stream_key": "orders.events",
                        "inbox_table": "redis_inbox", "batch_size": 200});
    c.execute("SELECT pgtrickle.set_relay_inbox('redis-in', config => $1::jsonb)", &[&config]).await.unwrap();
    let _relay = kill_midway_and_finish(&db, &c, "redis_inbox", N - 1, "order_id").await;
    let own: String = c
        .query_one("SELECT event_id FROM pgtrickle.redis_inbox WHERE payload->>'order_id' = '2'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(own, "evt-2", "the entry's dedup_key field");
    let coord: String = c
        .query_one("SELECT event_id FROM pgtrickle.redis_inbox WHERE payload->>'order_id' = '3'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(coord.starts_with("redis:orders.events:"), "{coord}");
    let dl = dead_letter_body(&c, "redis-in").await;
    assert_eq!(dl, "{broken");
    // Every entry acknowledged: nothing pending in the group.
    eventually(Duration::from_secs(10), "nothing pending", || {
        let mut conn = conn.clone();
        async move {
            // XPENDING's summary starts with the number of pending entries.
            let summary: Vec<redis::Value> = redis::cmd("XPENDING")
                .arg("orders.events")
                .arg("pgtrickle-relay")
                .query_async(&mut conn)
                .await
                .unwrap();
            (redis::from_redis_value::<i64>(summary[0].clone()).unwrap() == 0).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_queue_lands_100k_messages_exactly_once_across_a_sigkill() {
    let rabbit = relay_e2e::rabbitmq::Rabbit::connect().await;
    let queue = rabbit.name("cmds");
    rabbit.forget_queue_later(&queue);
    let db = TestDb::new().await;
    let c = db.client().await;
    assert!(run_cli(&db.url, &["migrate"]).0.success());
    create_inbox(&c, "amqp_inbox").await;
    let config = json!({"source_type": "rabbitmq", "rabbitmq_url": relay_e2e::rabbitmq::amqp_url(), "rabbitmq_queue": queue,
                        "inbox_table": "amqp_inbox", "aggregate_id_field": "order_id"});
    c.execute("SELECT pgtrickle.set_relay_inbox('amqp-in', config => $1::jsonb)", &[&config]).await.unwrap();
    // The relay declares the queue; start it first, stop it, then fill the queue.
    let mut relay = Relay::start(&db.url, "default", &[]);
    eventually(Duration::from_secs(15), "queue declared", || async {
        (relay.health()["pipelines"][0]["state"] == "running").then_some(())
    })
    .await;
    assert!(relay.terminate().success());
    const N: usize = 100_000;
    let bodies: Vec<String> =
        (0..N)
            .map(|i| {
                if i == 777 {
                    "not json at all".to_owned()
                } else {
                    json!({"order_id": i % 500, "seq": i}).to_string()
                }
            })
            .collect();
    let ids: Vec<Option<String>> = (0..N).map(|i| (i % 2 == 0).then(|| format!("msg-{i}"))).collect();
    rabbit.publish(&queue, &bodies, &ids).await;

    let relay = kill_midway_and_finish(&db, &c, "amqp_inbox", N - 1, "seq").await;
    let ids: Vec<String> = c
        .query(
            "SELECT event_id FROM pgtrickle.amqp_inbox WHERE payload->>'seq' IN ('10', '11') ORDER BY payload->>'seq'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids[0], "msg-10", "the message_id");
    assert!(ids[1].starts_with(&format!("amqp:{queue}:")), "{}", ids[1]);
    let dl = dead_letter_body(&c, "amqp-in").await;
    assert_eq!(dl, "not json at all");
    // Everything acknowledged: the queue is empty once the relay lets go of it.
    drop(relay);
    eventually(Duration::from_secs(10), "queue drained", || async { (rabbit.ready(&queue).await == 0).then_some(()) })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_topic_lands_100k_records_exactly_once_across_a_sigkill() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let kafka = relay_e2e::kafka::KafkaBroker::start();
    kafka.create_topic("cmds", 3).await;
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka.brokers())
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    const N: usize = 100_000;
    let mut acks = futures::stream::FuturesOrdered::new();
    for i in 0..N {
        let body = if i == 4242 { "{oops".to_owned() } else { json!({"order_id": i % 700, "seq": i}).to_string() };
        let key = (i % 700).to_string();
        let mut record = FutureRecord::to("cmds").key(&key).payload(&body);
        if i % 2 == 0 {
            let id = format!("rec-{i}");
            record =
                record.headers(OwnedHeaders::new().insert(Header { key: "pgtrickle-dedup-key", value: Some(&id) }));
        }
        acks.push_back(producer.send_result(record).map_err(|(e, _)| e).unwrap());
        while acks.len() >= 10_000 {
            acks.next().await.unwrap().unwrap().unwrap();
        }
    }
    while let Some(a) = acks.next().await {
        a.unwrap().unwrap();
    }
    let db = TestDb::new().await;
    let c = db.client().await;
    assert!(run_cli(&db.url, &["migrate"]).0.success());
    create_inbox(&c, "kafka_inbox").await;
    // tansu lets a new member join after about half of the session timeout.
    let config = json!({"source_type": "kafka", "kafka_brokers": kafka.brokers(), "kafka_topic": "cmds",
                        "kafka_group_id": "inbox-writers", "kafka_session_timeout_ms": 6000, "inbox_table": "kafka_inbox"});
    c.execute("SELECT pgtrickle.set_relay_inbox('kafka-in', config => $1::jsonb)", &[&config]).await.unwrap();
    let _relay = kill_midway_and_finish(&db, &c, "kafka_inbox", N - 1, "seq").await;
    let rows = c
        .query(
            "SELECT event_id, aggregate_id, event_type FROM pgtrickle.kafka_inbox WHERE payload->>'seq' IN ('10', '11') ORDER BY payload->>'seq'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, String>(0), "rec-10", "the pgtrickle-dedup-key header");
    assert!(rows[1].get::<_, String>(0).starts_with("kafka:cmds:"), "{}", rows[1].get::<_, String>(0));
    assert_eq!(rows[1].get::<_, String>(1), "11", "no aggregate field: the record key");
    assert_eq!(rows[1].get::<_, String>(2), "cmds", "no event_type: the topic");
    let dl = dead_letter_body(&c, "kafka-in").await;
    assert_eq!(dl, "{oops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_queue_lands_every_message_exactly_once_across_a_sigkill() {
    use aws_sdk_sqs::types::{MessageAttributeValue, QueueAttributeName, SendMessageBatchRequestEntry};
    let server = relay_e2e::sqs::SqsServer::start();
    let url = server.create_queue("inbox-src").await;
    let client = server.client();
    // moto slows down as a queue grows: a thousand messages, not a hundred thousand.
    const N: usize = 1_000;
    for chunk in (0..N).collect::<Vec<_>>().chunks(10) {
        let entries: Vec<_> = chunk
            .iter()
            .map(|&i| {
                let body =
                    if i == 321 { "<xml/>".to_owned() } else { json!({"order_id": i % 50, "seq": i}).to_string() };
                let mut e = SendMessageBatchRequestEntry::builder().id(i.to_string()).message_body(body);
                if i % 2 == 0 {
                    let v = MessageAttributeValue::builder()
                        .data_type("String")
                        .string_value(format!("sq-{i}"))
                        .build()
                        .unwrap();
                    e = e.message_attributes("pgtrickle-dedup-key", v);
                }
                e.build().unwrap()
            })
            .collect();
        client.send_message_batch().queue_url(&url).set_entries(Some(entries)).send().await.unwrap();
    }
    let db = TestDb::new().await;
    let c = db.client().await;
    assert!(run_cli(&db.url, &["migrate"]).0.success());
    create_inbox(&c, "sqs_inbox").await;
    let config = json!({"source_type": "sqs", "sqs_queue_url": url, "sqs_region": "us-east-1", "sqs_endpoint_url": server.endpoint(),
                        "sqs_access_key_id": "test", "sqs_secret_access_key": "test", "sqs_visibility_timeout": 2,
                        "inbox_table": "sqs_inbox", "batch_size": 50});
    c.execute("SELECT pgtrickle.set_relay_inbox('sqs-in', config => $1::jsonb)", &[&config]).await.unwrap();
    let _relay = kill_midway_and_finish(&db, &c, "sqs_inbox", N - 1, "seq").await;
    let rows = c
        .query(
            "SELECT event_id FROM pgtrickle.sqs_inbox WHERE payload->>'seq' IN ('10', '11') ORDER BY payload->>'seq'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, String>(0), "sq-10", "the pgtrickle-dedup-key attribute");
    assert!(rows[1].get::<_, String>(0).starts_with("sqs:"), "{}", rows[1].get::<_, String>(0));
    let dl = dead_letter_body(&c, "sqs-in").await;
    assert_eq!(dl, "<xml/>");
    // Every message deleted: none left, visible or in flight.
    eventually(Duration::from_secs(15), "queue empty", || async {
        let a = client
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .unwrap();
        a.attributes().unwrap().values().all(|v| v == "0").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_receiver_stores_100k_events_sent_concurrently_exactly_once() {
    let db = TestDb::new().await;
    let c = db.client().await;
    assert!(run_cli(&db.url, &["migrate"]).0.success());
    create_inbox(&c, "hooks_inbox").await;
    let port = free_port();
    let mut config = webhook_config(port);
    config["webhook_max_body_bytes"] = json!(1_048_576);
    c.execute("SELECT pgtrickle.set_relay_inbox('hooks', config => $1::jsonb)", &[&config]).await.unwrap();
    let _relay = Relay::start(&db.url, "default", &[]);
    wait_listening(port).await;
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/events");
    // 100 requests of 1,000 events, 4 senders at a time; every request is sent twice (a retry).
    let send = |r: usize| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let body = Value::Array((0..1000).map(|i| json!({"id": r * 1000 + i})).collect()).to_string();
            for _ in 0..2 {
                let resp = http
                    .post(&url)
                    .bearer_auth("s3cret")
                    .header("content-type", "application/json")
                    .header("Idempotency-Key", format!("req-{r}"))
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 200);
            }
        }
    };
    let mut pending = FuturesUnordered::new();
    for r in 0..100 {
        pending.push(send(r));
        if pending.len() >= 4 {
            pending.next().await;
        }
    }
    while pending.next().await.is_some() {}
    assert_eq!(count(&c, "SELECT count(*) FROM pgtrickle.hooks_inbox").await, 100_000);
    assert_eq!(count(&c, "SELECT count(DISTINCT payload->>'id') FROM pgtrickle.hooks_inbox").await, 100_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_receiver_over_https() {
    let certs = relay_e2e::redis_server::TestCerts::new();
    let db = TestDb::new().await;
    let c = db.client().await;
    assert!(run_cli(&db.url, &["migrate"]).0.success());
    create_inbox(&c, "hooks_inbox").await;
    let port = free_port();
    let mut config = webhook_config(port);
    config["webhook_tls_cert"] = json!(certs.path("server.crt"));
    config["webhook_tls_key"] = json!(certs.path("server.key"));
    c.execute("SELECT pgtrickle.set_relay_inbox('hooks', config => $1::jsonb)", &[&config]).await.unwrap();
    let _relay = Relay::start(&db.url, "default", &[]);
    wait_listening(port).await;
    let ca = reqwest::Certificate::from_pem(&std::fs::read(certs.path("ca.crt")).unwrap()).unwrap();
    let https = reqwest::Client::builder().add_root_certificate(ca).build().unwrap();
    let r = https
        .post(format!("https://127.0.0.1:{port}/events"))
        .bearer_auth("s3cret")
        .header("content-type", "application/json")
        .header("Idempotency-Key", "tls-1")
        .body(json!({"id": 7}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(count(&c, "SELECT count(*) FROM pgtrickle.hooks_inbox WHERE event_id = 'tls-1'").await, 1);
    // Plain HTTP is not answered on a TLS port.
    let plain = reqwest::Client::new().post(format!("http://127.0.0.1:{port}/events")).body("{}").send().await;
    assert!(plain.map_or(true, |r| !r.status().is_success()));
}
