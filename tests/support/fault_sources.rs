//! The origins of the reverse fault scenarios: each starts its broker (a private one where the
//! scenario may take it away; the machine's RabbitMQ with per-test names), gives the inbox
//! pipeline's config, and publishes numbered messages (`{"k": k}`; every even one with an id of
//! its own, the odd ones identified by their broker coordinate). The inbox is counted by `k`.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use rdkafka::producer::FutureProducer;
use serde_json::{json, Value};
use tokio_postgres::Client;

use crate::fault_targets::{outage, Backend, DegradedWatch};
use crate::faults::{kill_owner_repeatedly, stats, until_count, Scale};
use crate::gate::Gate;
use crate::kafka::KafkaBroker;
use crate::nats::NatsServer;
use crate::private_pg::PrivatePostgres;
use crate::rabbitmq::{amqp_url, Rabbit};
use crate::redis_server::RedisServer;
use crate::sqs::SqsServer;
use crate::{connect, create_inbox_table, free_port, run_cli, Relay};

const INBOX: &str = "public.faults_inbox";
const TOPIC: &str = "rev";

enum Inner {
    Nats(NatsServer),
    /// tansu keeps its log in memory: its outages are cut connections (a [`Gate`]). The
    /// broker is held to keep it running.
    Kafka(#[allow(dead_code)] KafkaBroker, Gate, FutureProducer),
    Redis(RedisServer),
    /// moto keeps its queues in memory: its outages are cut connections (a [`Gate`]).
    Sqs(SqsServer, String, Gate),
    Rabbitmq(Box<Rabbit>, String),
    /// The relay's own HTTP receiver: senders retry until it answers 2xx.
    Webhook(u16, reqwest::Client),
}

/// A started origin of inbox messages.
pub struct Origin {
    pub backend: Backend,
    pub pipeline: String,
    inner: Inner,
}

impl Origin {
    pub async fn start(backend: Backend, pipeline: &str) -> Self {
        let inner = match backend {
            Backend::Nats => {
                let nats = NatsServer::start();
                nats.create_stream("REV", &["rev.>"]).await;
                Inner::Nats(nats)
            }
            Backend::Kafka => {
                let (kafka, gate) = Gate::kafka(TOPIC, 3).await;
                let producer = rdkafka::ClientConfig::new()
                    .set("bootstrap.servers", kafka.brokers())
                    .set("enable.idempotence", "true")
                    .set("linger.ms", "5")
                    .create()
                    .unwrap();
                Inner::Kafka(kafka, gate, producer)
            }
            Backend::Redis => Inner::Redis(RedisServer::start_durable()),
            Backend::Sqs => {
                let sqs = SqsServer::start();
                let url = sqs.create_queue("rev").await;
                let gate = Gate::start(0, sqs.port).await;
                Inner::Sqs(sqs, url, gate)
            }
            Backend::Rabbitmq => {
                let rabbit = Rabbit::connect().await;
                let queue = rabbit.name("rev");
                // Declared as the relay declares it (durable, no arguments), before anything
                // is published to it.
                rabbit
                    .channel()
                    .queue_declare(
                        queue.as_str().into(),
                        QueueDeclareOptions { durable: true, ..Default::default() },
                        FieldTable::default(),
                    )
                    .await
                    .unwrap();
                rabbit.forget_queue_later(&queue);
                Inner::Rabbitmq(Box::new(rabbit), queue)
            }
            Backend::Webhook => Inner::Webhook(free_port(), reqwest::Client::new()),
            Backend::PgInbox => panic!("pg-inbox is a forward target, not a source"),
        };
        Self { backend, pipeline: pipeline.to_owned(), inner }
    }

    /// The inbox pipeline's config.
    pub fn config(&self) -> Value {
        let mut c = match &self.inner {
            Inner::Nats(nats) => json!({"source_type": "nats", "nats_url": nats.url(), "nats_stream": "REV",
                                        "nats_consumer": "rev", "ack_wait_seconds": 5}),
            Inner::Kafka(_, gate, _) => {
                json!({"source_type": "kafka", "kafka_brokers": format!("127.0.0.1:{}", gate.port),
                                               "kafka_topic": TOPIC, "kafka_group_id": "inbox-writers",
                                               "kafka_session_timeout_ms": 6000})
            }
            Inner::Redis(redis) => json!({"source_type": "redis", "redis_url": redis.url(), "redis_stream_key": TOPIC}),
            Inner::Sqs(_, url, gate) => json!({"source_type": "sqs", "sqs_queue_url": url, "sqs_region": "us-east-1",
                                               "sqs_endpoint_url": format!("http://127.0.0.1:{}", gate.port),
                                               "sqs_access_key_id": "test", "sqs_secret_access_key": "test",
                                               "sqs_visibility_timeout": 2, "batch_size": 50}),
            Inner::Rabbitmq(_, queue) => json!({"source_type": "rabbitmq", "rabbitmq_url": amqp_url(),
                                                "rabbitmq_queue": queue}),
            Inner::Webhook(port, _) => json!({"source_type": "webhook", "webhook_bind": format!("127.0.0.1:{port}"),
                                              "webhook_path": "/events", "webhook_max_body_bytes": 1_048_576}),
        };
        c["inbox_table"] = json!(INBOX);
        c
    }

    /// Publishes messages `keys` (acknowledged by the broker before it returns; the webhook's
    /// sender retries each request until it is answered 2xx).
    pub async fn publish(&self, keys: Range<usize>) {
        let body = |k: usize| json!({"k": k, "pad": "x".repeat(40)}).to_string();
        let own_id = |k: usize| k.is_multiple_of(2).then(|| format!("k-{k}"));
        match &self.inner {
            Inner::Nats(nats) => {
                let js = nats.jetstream().await;
                let mut acks = Vec::new();
                for k in keys {
                    let mut headers = async_nats::HeaderMap::new();
                    if let Some(id) = own_id(k) {
                        headers.insert("Nats-Msg-Id", id.as_str());
                    }
                    acks.push(js.publish_with_headers("rev.cmd", headers, body(k).into()).await.unwrap());
                    if acks.len() >= 500 {
                        for a in acks.drain(..) {
                            a.await.unwrap();
                        }
                    }
                }
                for a in acks {
                    a.await.unwrap();
                }
            }
            Inner::Kafka(_, _, producer) => {
                use rdkafka::message::{Header, OwnedHeaders};
                use rdkafka::producer::FutureRecord;
                let mut acks = Vec::new();
                for k in keys {
                    let (b, key) = (body(k), (k % 97).to_string());
                    let mut record = FutureRecord::to(TOPIC).key(&key).payload(&b);
                    if let Some(id) = own_id(k) {
                        record = record.headers(
                            OwnedHeaders::new().insert(Header { key: "pgtrickle-dedup-key", value: Some(&id) }),
                        );
                    }
                    acks.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
                    if acks.len() >= 5_000 {
                        for a in acks.drain(..) {
                            a.await.unwrap().unwrap();
                        }
                    }
                }
                for a in acks {
                    a.await.unwrap().unwrap();
                }
            }
            Inner::Redis(redis) => {
                let mut conn = redis.client().get_multiplexed_async_connection().await.unwrap();
                for chunk in keys.collect::<Vec<_>>().chunks(500) {
                    let mut pipe = redis::pipe();
                    for &k in chunk {
                        let cmd = pipe.cmd("XADD").arg(TOPIC).arg("*").arg("payload").arg(body(k));
                        if let Some(id) = own_id(k) {
                            cmd.arg("dedup_key").arg(id);
                        }
                    }
                    let _: Vec<String> = pipe.query_async(&mut conn).await.unwrap();
                }
            }
            Inner::Sqs(sqs, url, _) => {
                use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
                let client = sqs.client();
                for chunk in keys.collect::<Vec<_>>().chunks(10) {
                    let entries: Vec<_> = chunk
                        .iter()
                        .map(|&k| {
                            let mut e = SendMessageBatchRequestEntry::builder().id(k.to_string()).message_body(body(k));
                            if let Some(id) = own_id(k) {
                                let v = MessageAttributeValue::builder()
                                    .data_type("String")
                                    .string_value(id)
                                    .build()
                                    .unwrap();
                                e = e.message_attributes("pgtrickle-dedup-key", v);
                            }
                            e.build().unwrap()
                        })
                        .collect();
                    let out =
                        client.send_message_batch().queue_url(url).set_entries(Some(entries)).send().await.unwrap();
                    assert!(out.failed().is_empty(), "{:?}", out.failed());
                }
            }
            Inner::Rabbitmq(rabbit, queue) => {
                let keys: Vec<usize> = keys.collect();
                let bodies: Vec<String> = keys.iter().map(|&k| body(k)).collect();
                let ids: Vec<Option<String>> = keys.iter().map(|&k| own_id(k)).collect();
                rabbit.publish(queue, &bodies, &ids).await;
            }
            Inner::Webhook(port, http) => {
                // Requests of up to 200 events; a request's events are `<Idempotency-Key>:<i>`.
                let url = format!("http://127.0.0.1:{port}/events");
                for chunk in keys.collect::<Vec<_>>().chunks(200) {
                    let events: Vec<Value> = chunk.iter().map(|&k| serde_json::from_str(&body(k)).unwrap()).collect();
                    let payload = Value::Array(events).to_string();
                    let key = format!("batch-{}", chunk[0]);
                    let started = Instant::now();
                    loop {
                        let sent = http
                            .post(&url)
                            .header("content-type", "application/json")
                            .header("Idempotency-Key", &key)
                            .body(payload.clone())
                            .timeout(Duration::from_secs(30))
                            .send()
                            .await;
                        if sent.is_ok_and(|r| r.status().is_success()) {
                            break;
                        }
                        assert!(started.elapsed() < Duration::from_secs(120), "the receiver never took {key}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
    }

    /// Takes the broker away for `down`, then brings it back; says how. (The webhook source has
    /// no broker: the relay is the receiver, and `sigkill_owner` is its outage.)
    pub async fn outage(&mut self, down: Duration) -> &'static str {
        match &mut self.inner {
            Inner::Nats(nats) => outage::nats(nats, down).await,
            Inner::Kafka(_, gate, _) | Inner::Sqs(_, _, gate) => outage::gate(gate, down).await,
            Inner::Redis(redis) => outage::redis(redis, down).await,
            Inner::Rabbitmq(..) => outage::rabbitmq(&self.pipeline, down).await,
            Inner::Webhook(..) => panic!("the webhook source has no broker to restart"),
        }
    }
}

/// The sources of the reverse scenarios (every backend but the pg inbox, which is a target).
pub const SOURCES: [Backend; 6] =
    [Backend::Nats, Backend::Kafka, Backend::Redis, Backend::Sqs, Backend::Rabbitmq, Backend::Webhook];

/// Messages per scenario: moto's queues slow down as they grow, so SQS gets at most 1,000.
fn messages(backend: Backend, scale: &Scale) -> usize {
    if backend == Backend::Sqs {
        scale.backend_rows.min(1_000)
    } else {
        scale.backend_rows
    }
}

/// Publishes `n` messages spread over `over`, in chunks.
fn spawn_publisher(origin: Arc<Origin>, n: usize, over: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let started = Instant::now();
        let chunk = (n / 50).clamp(10, 2_000);
        let mut k = 0;
        while k < n {
            let end = (k + chunk).min(n);
            origin.publish(k..end).await;
            k = end;
            let due = over.mul_f64(k as f64 / n as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
    })
}

/// `(rows, distinct k)` in the inbox.
async fn inbox_counts(c: &Client) -> (usize, usize) {
    c.query_one(&format!("SELECT count(*), count(DISTINCT payload->>'k') FROM {INBOX}"), &[])
        .await
        .map(|r| (r.get::<_, i64>(0) as usize, r.get::<_, i64>(1) as usize))
        .unwrap_or((0, 0))
}

/// Waits for every message, gives late copies a second, and tallies the inbox.
async fn tally_inbox(c: &Client, n: usize) -> (Value, u128) {
    let t = Instant::now();
    until_count(n, Duration::from_secs(180), || async { inbox_counts(c).await.1 }).await;
    let drained_ms = t.elapsed().as_millis();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rows, distinct) = inbox_counts(c).await;
    let dead: i64 =
        c.query_one("SELECT count(*) FROM pgtrickle.relay_dead_letters", &[]).await.map(|r| r.get(0)).unwrap_or(-1);
    (
        json!({"messages": n, "stored": rows, "lost": n.saturating_sub(distinct), "duplicates": rows - distinct,
               "unexpected": 0, "dead_letters": dead, "target_deduplicates": true}),
        drained_ms,
    )
}

async fn inbox_db(url: &str, origin: &Origin) -> Client {
    assert!(run_cli(url, &["migrate"]).0.success());
    let c = connect(url).await;
    create_inbox_table(&c, INBOX).await;
    c.execute("SELECT pgtrickle.set_relay_inbox($1, config => $2::jsonb)", &[&origin.pipeline, &origin.config()])
        .await
        .unwrap();
    c
}

fn merge(mut base: Value, extra: Value) -> Value {
    if let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) {
        b.extend(e);
    }
    base
}

/// `sigkill_owner` from `backend` into an inbox: two instances, the owner SIGKILLed
/// `scale.kills` times (and restarted) while messages are published.
pub async fn sigkill_owner_from(backend: Backend, scale: &Scale) -> Value {
    let n = messages(backend, scale);
    let origin = Arc::new(Origin::start(backend, &format!("sigkill-from-{}", backend.name())).await);
    let db = crate::TestDb::new().await;
    let c = inbox_db(&db.url, &origin).await;
    let mut relays = vec![Relay::start(&db.url, "default", &[]), Relay::start(&db.url, "default", &[])];
    let publisher = spawn_publisher(origin.clone(), n, scale.stream);
    let failovers = kill_owner_repeatedly(&c, &db.url, &mut relays, &origin.pipeline, scale).await;
    publisher.await.unwrap();
    let (counts, drained_ms) = tally_inbox(&c, n).await;
    drop(relays);
    merge(
        json!({"scenario": "sigkill_owner", "backend": backend.name(), "direction": "reverse",
               "instances": 2, "kills": scale.kills, "failover_ms": stats(&failovers),
               "drained_after_publisher_ms": drained_ms}),
        counts,
    )
}

/// `broker_restart` of `backend`'s broker while the relay drains it into an inbox: half the
/// messages published, the broker taken away once the relay is into them, brought back, the
/// other half published.
pub async fn broker_restart_from(backend: Backend, scale: &Scale) -> Value {
    let n = messages(backend, scale);
    let mut origin = Origin::start(backend, &format!("restart-from-{}", backend.name())).await;
    let db = crate::TestDb::new().await;
    let c = inbox_db(&db.url, &origin).await;
    let relay = Relay::start(&db.url, "default", &[]);
    origin.publish(0..n / 2).await;
    // Into the first half, not through it.
    until_count(n / 20, Duration::from_secs(60), || async { inbox_counts(&c).await.1 }).await;
    let at_outage = inbox_counts(&c).await.1;
    let degraded = DegradedWatch::start(relay.metrics_addr.clone());
    let went = Instant::now();
    let how = origin.outage(scale.restart_outage).await;
    let down_ms = went.elapsed().as_millis();
    let degraded_after_ms = degraded.stop();
    let back = Instant::now();
    let at_return = inbox_counts(&c).await.1;
    // Recovery: the inbox grows again, by itself — watched while the second half is published
    // (so that the publisher's own time is not counted as the relay's).
    let publish = async {
        origin.publish(n / 2..n).await;
        back.elapsed().as_millis()
    };
    let grow = async {
        let deadline = Instant::now() + Duration::from_secs(120);
        while inbox_counts(&c).await.1 <= at_return && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        back.elapsed().as_millis()
    };
    let (published_ms, recovery_ms) = tokio::join!(publish, grow);
    let (counts, drained_ms) = tally_inbox(&c, n).await;
    let state_after = relay.health()["pipelines"][0]["state"].clone();
    merge(
        json!({"scenario": "broker_restart", "backend": backend.name(), "direction": "reverse",
               "outage": how, "down_ms": down_ms, "stored_before_outage": at_outage,
               "degraded_after_ms": degraded_after_ms, "recovery_ms": recovery_ms,
               "second_half_published_ms": published_ms, "state_after": state_after, "drained_ms": drained_ms}),
        counts,
    )
}

/// `postgres_restart` under a reverse pipeline: the database holding the inbox (and the relay's
/// catalog) crashes (immediate stop) while messages are published, inbox writes failing
/// mid-batch, and starts again.
pub async fn postgres_restart_from(backend: Backend, scale: &Scale) -> Value {
    let n = messages(backend, scale);
    let origin = Arc::new(Origin::start(backend, &format!("pgrestart-from-{}", backend.name())).await);
    let pg = PrivatePostgres::start(100);
    let url = pg.url();
    let c = inbox_db(&url, &origin).await;
    let relay = Relay::start(&url, "default", &[]);
    let publisher = spawn_publisher(origin.clone(), n, scale.stream);
    // Mid-stream: once the relay is into the messages (a Kafka consumer's first assignment
    // takes a few seconds), not before.
    tokio::time::sleep(scale.stream / 3).await;
    until_count(n / 20, Duration::from_secs(60), || async { inbox_counts(&c).await.1 }).await;
    let before = inbox_counts(&c).await.1;
    drop(c);
    let down = tokio::task::block_in_place(|| pg.crash_restart(scale.pg_down));
    let back = Instant::now();
    let c = connect(&url).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while inbox_counts(&c).await.1 <= before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let recovery_ms = back.elapsed().as_millis();
    publisher.await.unwrap();
    let (counts, drained_ms) = tally_inbox(&c, n).await;
    let relay_alive = relay.try_get("/livez").is_ok();
    merge(
        json!({"scenario": "postgres_restart", "backend": backend.name(), "direction": "reverse",
               "stored_before_crash": before, "down_ms": down.as_millis(), "recovery_ms": recovery_ms, "relay_process_survived": relay_alive,
               "drained_after_publisher_ms": drained_ms}),
        counts,
    )
}
