//! The destinations of the per-backend fault scenarios: each starts its broker (a private one
//! where the scenario may stop it; the machine's RabbitMQ with per-test names), gives the
//! forward pipeline's config, and reads back the dedup id of every message it holds — counted
//! by a consumer independent of the relay.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use lapin::ExchangeKind;
use serde_json::{json, Value};
use tokio_postgres::Client;

use crate::faults::{expected_keys, kill_owner_repeatedly, register, spawn_writer, stats, tally, until_count, Scale};
use crate::gate::Gate;
use crate::http::WebhookServer;
use crate::kafka::KafkaBroker;
use crate::nats::NatsServer;
use crate::private_pg::PrivatePostgres;
use crate::rabbitmq::{amqp_url, Rabbit};
use crate::redis_server::RedisServer;
use crate::sqs::SqsServer;
use crate::{committed_offset, connect, create_inbox_table, db_with_outbox, Relay};

/// A forward target of the fault suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Nats,
    Kafka,
    Redis,
    Sqs,
    Rabbitmq,
    Webhook,
    PgInbox,
}

impl Backend {
    pub const ALL: [Backend; 7] = [
        Backend::Nats,
        Backend::Kafka,
        Backend::Redis,
        Backend::Sqs,
        Backend::Rabbitmq,
        Backend::Webhook,
        Backend::PgInbox,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Backend::Nats => "nats",
            Backend::Kafka => "kafka",
            Backend::Redis => "redis",
            Backend::Sqs => "sqs",
            Backend::Rabbitmq => "rabbitmq",
            Backend::Webhook => "webhook",
            Backend::PgInbox => "pg-inbox",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.name() == s || (s == "inbox" && *b == Backend::PgInbox))
    }

    /// Whether the target itself drops a message sent again, so a relayed batch sent twice
    /// (after a SIGKILL) leaves no duplicate: JetStream's `Nats-Msg-Id` window, the Redis
    /// sink's high-water mark, SQS FIFO's deduplication id, the inbox's primary key. Kafka (a
    /// new producer after a restart), RabbitMQ and webhooks keep both copies; each carries the
    /// dedup id of its original, so a consumer can drop it.
    pub fn deduplicates(self) -> bool {
        matches!(self, Backend::Nats | Backend::Redis | Backend::Sqs | Backend::PgInbox)
    }
}

enum Inner {
    Nats(NatsServer),
    /// tansu keeps its log in memory: its outages are cut connections (a [`Gate`]).
    Kafka(KafkaBroker, Gate),
    Redis(RedisServer),
    /// moto keeps its queues in memory: its outages are cut connections (a [`Gate`]).
    Sqs(SqsServer, String, Gate),
    Rabbitmq(Box<Rabbit>, String, String),
    Webhook(WebhookServer),
    /// The inbox in a PostgreSQL of its own (the sink's `postgres_url`), so that it can crash
    /// while the relay's own database stays up.
    PgInbox(PrivatePostgres, Client),
}

/// A started destination.
pub struct Target {
    pub backend: Backend,
    /// The pipeline's name (RabbitMQ's connections are found by it).
    pub pipeline: String,
    inner: Inner,
}

const TOPIC: &str = "faults";
const INBOX: &str = "public.faults_inbox";

impl Target {
    pub async fn start(backend: Backend, pipeline: &str) -> Self {
        let inner = match backend {
            Backend::Nats => {
                let nats = NatsServer::start();
                nats.create_stream("FAULTS", &["faults.>"]).await;
                Inner::Nats(nats)
            }
            Backend::Kafka => {
                let (kafka, gate) = Gate::kafka(TOPIC, 1).await;
                Inner::Kafka(kafka, gate)
            }
            Backend::Redis => Inner::Redis(RedisServer::start_durable()),
            Backend::Sqs => {
                let sqs = SqsServer::start();
                let url = sqs.create_queue("faults.fifo").await;
                let gate = Gate::start(0, sqs.port).await;
                Inner::Sqs(sqs, url, gate)
            }
            Backend::Rabbitmq => {
                let rabbit = Rabbit::connect().await;
                let (exchange, queue) = (rabbit.name("faults-x"), rabbit.name("faults"));
                rabbit.bind_queue(&exchange, ExchangeKind::Topic, &queue, "#").await;
                Inner::Rabbitmq(Box::new(rabbit), exchange, queue)
            }
            Backend::Webhook => Inner::Webhook(WebhookServer::start().await),
            Backend::PgInbox => {
                let pg = PrivatePostgres::start(50);
                let c = connect(&pg.url()).await;
                create_inbox_table(&c, INBOX).await;
                Inner::PgInbox(pg, c)
            }
        };
        Self { backend, pipeline: pipeline.to_owned(), inner }
    }

    /// The forward pipeline's config: one message per row (`snapshot`), small batches so that
    /// every SIGKILL interrupts some.
    pub fn config(&self, stream_table: &str) -> Value {
        let mut c = match &self.inner {
            Inner::Nats(nats) => json!({"sink_type": "nats", "nats_url": nats.url(), "subject_template": "faults.{op}",
                                        "ack_timeout_ms": 2000}),
            Inner::Kafka(_, gate) => json!({"sink_type": "kafka", "kafka_brokers": format!("127.0.0.1:{}", gate.port),
                                            "kafka_topic": TOPIC, "kafka_delivery_timeout_ms": 5000}),
            Inner::Redis(redis) => json!({"sink_type": "redis", "redis_url": redis.url(), "redis_stream_key": TOPIC}),
            Inner::Sqs(_, url, gate) => json!({"sink_type": "sqs", "sqs_queue_url": url, "sqs_region": "us-east-1",
                                               "sqs_endpoint_url": format!("http://127.0.0.1:{}", gate.port),
                                               "sqs_access_key_id": "test",
                                               "sqs_secret_access_key": "moto-secret-key-4711"}),
            Inner::Rabbitmq(_, exchange, _) => json!({"sink_type": "rabbitmq", "rabbitmq_url": amqp_url(),
                                                      "rabbitmq_exchange": exchange,
                                                      "rabbitmq_routing_key_template": "{stream_table}.{op}"}),
            Inner::Webhook(server) => json!({"sink_type": "webhook", "webhook_url": server.url("/events"),
                                             "webhook_max_batch_messages": 50}),
            Inner::PgInbox(pg, _) => json!({"sink_type": "pg-inbox", "inbox_table": INBOX, "postgres_url": pg.url()}),
        };
        c["stream_table"] = json!(stream_table);
        c["delta_mode"] = json!("snapshot");
        c["batch_size"] = json!(20);
        c
    }

    /// How many messages the target holds (cheap, read without consuming).
    pub async fn count(&self) -> usize {
        match &self.inner {
            Inner::Nats(nats) => nats.stream_count("FAULTS").await as usize,
            Inner::Kafka(kafka, _) => kafka.count(TOPIC).await.0,
            Inner::Redis(redis) => {
                let Ok(mut conn) = redis.client().get_multiplexed_async_connection().await else { return 0 };
                redis::cmd("XLEN").arg(TOPIC).query_async::<usize>(&mut conn).await.unwrap_or(0)
            }
            Inner::Sqs(sqs, url, _) => sqs.approximate_count(url).await,
            Inner::Rabbitmq(rabbit, _, queue) => rabbit.ready(queue).await as usize,
            Inner::Webhook(server) => webhook_ids(server).len(),
            Inner::PgInbox(_, c) => c
                .query_one(&format!("SELECT count(*) FROM {INBOX}"), &[])
                .await
                .map(|r| r.get::<_, i64>(0) as usize)
                .unwrap_or(0),
        }
    }

    /// The dedup id of every message the target holds, read once at the end (RabbitMQ's and
    /// SQS's are taken off the queue).
    pub async fn dedup_ids(&self) -> Vec<String> {
        match &self.inner {
            Inner::Nats(nats) => nats.stream_msg_ids("FAULTS").await,
            Inner::Kafka(kafka, _) => kafka
                .records(TOPIC)
                .await
                .into_iter()
                .filter_map(|r| r.headers.get("pgtrickle-dedup-key").cloned())
                .collect(),
            Inner::Redis(redis) => {
                redis.entries(TOPIC).await.into_iter().filter_map(|(_, f)| f.get("dedup_key").cloned()).collect()
            }
            // Received and deleted: a FIFO queue hands out nothing more of a message group
            // while some of it is received and not deleted. Read after every copy arrived.
            Inner::Sqs(sqs, url, _) => sqs
                .drain(url)
                .await
                .into_iter()
                .filter_map(|m| m.attributes.get("pgtrickle-dedup-key").cloned())
                .collect(),
            Inner::Rabbitmq(rabbit, _, queue) => {
                rabbit.drain(queue).await.into_iter().filter_map(|m| m.message_id).collect()
            }
            Inner::Webhook(server) => webhook_ids(server),
            Inner::PgInbox(_, c) => {
                c.query(&format!("SELECT event_id FROM {INBOX}"), &[]).await.unwrap().iter().map(|r| r.get(0)).collect()
            }
        }
    }

    /// Takes the target away for `down`, then brings it back; says how.
    pub async fn outage(&mut self, down: Duration) -> &'static str {
        match &mut self.inner {
            Inner::Nats(nats) => outage::nats(nats, down).await,
            Inner::Kafka(_, gate) | Inner::Sqs(_, _, gate) => outage::gate(gate, down).await,
            Inner::Redis(redis) => outage::redis(redis, down).await,
            Inner::Rabbitmq(..) => outage::rabbitmq(&self.pipeline, down).await,
            Inner::Webhook(server) => {
                server.outage(down / 2, down / 2).await;
                "503 with Retry-After: 1, then connections dropped unanswered, then 200 again"
            }
            Inner::PgInbox(pg, c) => {
                let pg: &PrivatePostgres = pg;
                let down_for = down;
                tokio::task::block_in_place(|| pg.crash_restart(down_for));
                *c = connect(&pg.url()).await;
                "the inbox's PostgreSQL stopped (immediate), started again"
            }
        }
    }
}

/// Every message the webhook receiver accepted (a batch request is a JSON array).
fn webhook_ids(server: &WebhookServer) -> Vec<String> {
    let mut ids = Vec::new();
    for r in server.accepted() {
        match r.json() {
            Value::Array(items) => ids.extend(items.iter().filter_map(|m| m["dedup_key"].as_str().map(str::to_owned))),
            m => ids.extend(m["dedup_key"].as_str().map(str::to_owned)),
        }
    }
    ids
}

/// The scale of a per-backend scenario: `backend_rows` rows; a FIFO queue takes one
/// SendMessageBatch (10 messages) at a time, and moto's FIFO queue slows down as it fills (each
/// send is checked against every message it holds): 500 rows keep SQS's scenarios in line with
/// the others (the kills and outages are the same).
fn backend_scale(backend: Backend, scale: &Scale) -> Scale {
    let mut scale = scale.clone();
    scale.rows = scale.backend_rows;
    if backend == Backend::Sqs {
        scale.rows = scale.rows.min(500);
        scale.per_refresh = (scale.per_refresh / 10).max(1);
    }
    scale
}

/// Counts at the target once the writer is done: waits for every expected message, gives late
/// copies a second, then tallies by dedup id.
async fn count_at(target: &Target, c: &Client, outbox: &str) -> (usize, Vec<String>, HashSet<String>, u128) {
    let done = Instant::now();
    let expected: HashSet<String> = expected_keys(c, outbox).await;
    let n = expected.len();
    until_count(n, Duration::from_secs(180), || target.count()).await;
    let drained_ms = done.elapsed().as_millis();
    // Late copies of a batch sent again would arrive now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    (n, target.dedup_ids().await, expected, drained_ms)
}

/// `sigkill_owner` towards `backend`: two instances, the owner of the pipeline SIGKILLed
/// `scale.kills` times while rows stream (and restarted); then every message is counted at the
/// target by its dedup id.
pub async fn sigkill_owner_to(backend: Backend, scale: &Scale) -> Value {
    let scale = &backend_scale(backend, scale);
    let (db, c, outbox) = db_with_outbox("faults").await;
    let pipeline = format!("sigkill-to-{}", backend.name());
    let target = Target::start(backend, &pipeline).await;
    register(&c, &pipeline, target.config("faults")).await;
    let mut relays = vec![Relay::start(&db.url, "default", &[]), Relay::start(&db.url, "default", &[])];
    let writer = spawn_writer(db.url.clone(), outbox.clone(), scale.refreshes(), scale.per_refresh, scale.stream);
    let failovers = kill_owner_repeatedly(&c, &db.url, &mut relays, &pipeline, scale).await;
    writer.await.unwrap();
    let (n, ids, expected, drained_ms) = count_at(&target, &c, &outbox).await;
    let (lost, duplicates, unexpected) = tally(&expected, &ids);
    drop(relays);
    json!({
        "scenario": "sigkill_owner", "backend": backend.name(), "direction": "forward",
        "rows": n, "instances": 2, "kills": scale.kills,
        "stored": ids.len(), "lost": lost, "duplicates": duplicates, "unexpected": unexpected,
        "target_deduplicates": backend.deduplicates(),
        "failover_ms": stats(&failovers), "drained_after_writer_ms": drained_ms,
    })
}

/// `broker_restart` towards `backend`: the target goes away for `scale.restart_outage` while
/// rows stream, then comes back ([`Target::outage`] says how, per backend). The pipeline shows
/// `degraded` meanwhile and resumes by itself, with nothing lost.
pub async fn broker_restart_to(backend: Backend, scale: &Scale) -> Value {
    let scale = &backend_scale(backend, scale);
    let (db, c, outbox) = db_with_outbox("faults").await;
    let pipeline = format!("restart-to-{}", backend.name());
    let mut target = Target::start(backend, &pipeline).await;
    register(&c, &pipeline, target.config("faults")).await;
    let relay = Relay::start(&db.url, "default", &[]);
    let stream = scale.stream + scale.restart_outage;
    let writer = spawn_writer(db.url.clone(), outbox.clone(), scale.refreshes(), scale.per_refresh, stream);
    tokio::time::sleep(scale.stream / 3).await;
    let degraded = DegradedWatch::start(relay.metrics_addr.clone());
    let went = Instant::now();
    let how = target.outage(scale.restart_outage).await;
    let down_ms = went.elapsed().as_millis();
    let back = Instant::now();
    let degraded_after_ms = degraded.stop();
    // Recovery: the relay commits past where it was stuck, by itself.
    let offset_at_restart = committed_offset(&c, "default", &pipeline).await.unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(120);
    while committed_offset(&c, "default", &pipeline).await.unwrap_or(0) <= offset_at_restart
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let recovery_ms = back.elapsed().as_millis();
    writer.await.unwrap();
    let (n, ids, expected, drained_ms) = count_at(&target, &c, &outbox).await;
    let (lost, duplicates, unexpected) = tally(&expected, &ids);
    let state_after = relay.health()["pipelines"][0]["state"].clone();
    json!({
        "scenario": "broker_restart", "backend": backend.name(), "direction": "forward",
        "rows": n, "outage": how, "down_ms": down_ms,
        "stored": ids.len(), "lost": lost, "duplicates": duplicates, "unexpected": unexpected,
        "target_deduplicates": backend.deduplicates(),
        "degraded_after_ms": degraded_after_ms, "recovery_ms": recovery_ms, "state_after": state_after,
        "drained_after_writer_ms": drained_ms,
    })
}

/// Polls a relay's `/health` until some pipeline shows `degraded`, noting how long that took.
pub struct DegradedWatch {
    seen: std::sync::Arc<std::sync::Mutex<Option<u128>>>,
    poll: tokio::task::JoinHandle<()>,
}

impl DegradedWatch {
    pub fn start(metrics_addr: String) -> Self {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
        let s = seen.clone();
        let poll = tokio::spawn(async move {
            let t = Instant::now();
            loop {
                let addr = metrics_addr.clone();
                let health = tokio::task::spawn_blocking(move || crate::http_get(&addr, "/health")).await.unwrap();
                let degraded = health
                    .ok()
                    .and_then(|(_, b)| serde_json::from_str::<Value>(&b).ok())
                    .is_some_and(|h| h["pipelines"].as_array().into_iter().flatten().any(|p| p["state"] == "degraded"));
                if degraded {
                    *s.lock().unwrap() = Some(t.elapsed().as_millis());
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Self { seen, poll }
    }

    /// Milliseconds from the start to the first `degraded`, if it was seen.
    pub fn stop(self) -> Option<u128> {
        self.poll.abort();
        let seen = *self.seen.lock().unwrap();
        seen
    }
}

/// The broker outages both directions use; each says what it did.
pub mod outage {
    use std::time::{Duration, Instant};

    use crate::gate::Gate;
    use crate::nats::NatsServer;
    use crate::rabbitmq::close_relay_connections;
    use crate::redis_server::RedisServer;

    pub async fn nats(nats: &mut NatsServer, down: Duration) -> &'static str {
        nats.stop();
        tokio::time::sleep(down).await;
        nats.restart();
        "nats-server killed, started again on its JetStream store"
    }

    /// For brokers that keep their data in memory only (tansu, moto).
    pub async fn gate(gate: &Gate, down: Duration) -> &'static str {
        gate.close();
        tokio::time::sleep(down).await;
        gate.open();
        "every connection cut and new ones reset (the broker keeps its data in memory only)"
    }

    pub async fn redis(redis: &mut RedisServer, down: Duration) -> &'static str {
        redis.kill();
        tokio::time::sleep(down).await;
        redis.restart();
        "redis-server SIGKILLed, started again on its append-only file"
    }

    /// The machine's node serves other tests: the relay's connections are closed instead, again
    /// as soon as it has reconnected.
    pub async fn rabbitmq(pipeline: &str, down: Duration) -> &'static str {
        let until = Instant::now() + down;
        while Instant::now() < until {
            let pipeline = pipeline.to_owned();
            tokio::task::spawn_blocking(move || close_relay_connections(&pipeline)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        "the relay's connections closed with rabbitmqctl close_connection, again on every reconnect"
    }
}
