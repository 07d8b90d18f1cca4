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
use crate::http::WebhookServer;
use crate::kafka::KafkaBroker;
use crate::nats::NatsServer;
use crate::rabbitmq::{amqp_url, Rabbit};
use crate::redis_server::RedisServer;
use crate::sqs::SqsServer;
use crate::{create_inbox_table, db_with_outbox, Relay};

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
    Kafka(KafkaBroker),
    Redis(RedisServer),
    Sqs(SqsServer, String),
    Rabbitmq(Box<Rabbit>, String, String),
    Webhook(WebhookServer),
    PgInbox,
}

/// A started destination.
pub struct Target {
    pub backend: Backend,
    inner: Inner,
}

const TOPIC: &str = "faults";
const INBOX: &str = "public.faults_inbox";

impl Target {
    pub async fn start(backend: Backend, c: &Client) -> Self {
        let inner = match backend {
            Backend::Nats => {
                let nats = NatsServer::start();
                nats.create_stream("FAULTS", &["faults.>"]).await;
                Inner::Nats(nats)
            }
            Backend::Kafka => {
                let kafka = KafkaBroker::start();
                kafka.create_topic(TOPIC, 1).await;
                Inner::Kafka(kafka)
            }
            Backend::Redis => Inner::Redis(RedisServer::start()),
            Backend::Sqs => {
                let sqs = SqsServer::start();
                let url = sqs.create_queue("faults.fifo").await;
                Inner::Sqs(sqs, url)
            }
            Backend::Rabbitmq => {
                let rabbit = Rabbit::connect().await;
                let (exchange, queue) = (rabbit.name("faults-x"), rabbit.name("faults"));
                rabbit.bind_queue(&exchange, ExchangeKind::Topic, &queue, "#").await;
                Inner::Rabbitmq(Box::new(rabbit), exchange, queue)
            }
            Backend::Webhook => Inner::Webhook(WebhookServer::start().await),
            Backend::PgInbox => {
                create_inbox_table(c, INBOX).await;
                Inner::PgInbox
            }
        };
        Self { backend, inner }
    }

    /// The forward pipeline's config: one message per row (`snapshot`), small batches so that
    /// every SIGKILL interrupts some.
    pub fn config(&self, stream_table: &str) -> Value {
        let mut c = match &self.inner {
            Inner::Nats(nats) => json!({"sink_type": "nats", "nats_url": nats.url(), "subject_template": "faults.{op}",
                                        "ack_timeout_ms": 2000}),
            Inner::Kafka(kafka) => json!({"sink_type": "kafka", "kafka_brokers": kafka.brokers(), "kafka_topic": TOPIC,
                                          "kafka_delivery_timeout_ms": 5000}),
            Inner::Redis(redis) => json!({"sink_type": "redis", "redis_url": redis.url(), "redis_stream_key": TOPIC}),
            Inner::Sqs(sqs, url) => json!({"sink_type": "sqs", "sqs_queue_url": url, "sqs_region": "us-east-1",
                                           "sqs_endpoint_url": sqs.endpoint(), "sqs_access_key_id": "test",
                                           "sqs_secret_access_key": "moto-secret-key-4711"}),
            Inner::Rabbitmq(_, exchange, _) => json!({"sink_type": "rabbitmq", "rabbitmq_url": amqp_url(),
                                                      "rabbitmq_exchange": exchange,
                                                      "rabbitmq_routing_key_template": "{stream_table}.{op}"}),
            Inner::Webhook(server) => json!({"sink_type": "webhook", "webhook_url": server.url("/events"),
                                             "webhook_max_batch_messages": 50}),
            Inner::PgInbox => json!({"sink_type": "pg-inbox", "inbox_table": INBOX}),
        };
        c["stream_table"] = json!(stream_table);
        c["delta_mode"] = json!("snapshot");
        c["batch_size"] = json!(20);
        c
    }

    /// How many messages the target holds (cheap, read without consuming).
    pub async fn count(&self, c: &Client) -> usize {
        match &self.inner {
            Inner::Nats(nats) => nats.stream_count("FAULTS").await as usize,
            Inner::Kafka(kafka) => kafka.count(TOPIC).await.0,
            Inner::Redis(redis) => {
                let mut conn = redis.client().get_multiplexed_async_connection().await.unwrap();
                redis::cmd("XLEN").arg(TOPIC).query_async::<usize>(&mut conn).await.unwrap_or(0)
            }
            Inner::Sqs(sqs, url) => sqs.approximate_count(url).await,
            Inner::Rabbitmq(rabbit, _, queue) => rabbit.ready(queue).await as usize,
            Inner::Webhook(server) => webhook_ids(server).len(),
            Inner::PgInbox => c
                .query_one(&format!("SELECT count(*) FROM {INBOX}"), &[])
                .await
                .map(|r| r.get::<_, i64>(0) as usize)
                .unwrap_or(0),
        }
    }

    /// The dedup id of every message the target holds, read once at the end (RabbitMQ's and
    /// SQS's are taken off the queue).
    pub async fn dedup_ids(&self, c: &Client) -> Vec<String> {
        match &self.inner {
            Inner::Nats(nats) => nats.stream_msg_ids("FAULTS").await,
            Inner::Kafka(kafka) => kafka
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
            Inner::Sqs(sqs, url) => sqs
                .drain(url)
                .await
                .into_iter()
                .filter_map(|m| m.attributes.get("pgtrickle-dedup-key").cloned())
                .collect(),
            Inner::Rabbitmq(rabbit, _, queue) => {
                rabbit.drain(queue).await.into_iter().filter_map(|m| m.message_id).collect()
            }
            Inner::Webhook(server) => webhook_ids(server),
            Inner::PgInbox => {
                c.query(&format!("SELECT event_id FROM {INBOX}"), &[]).await.unwrap().iter().map(|r| r.get(0)).collect()
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

/// `sigkill_owner` towards `backend`: two instances, the owner of the pipeline SIGKILLed
/// `scale.kills` times while rows stream (and restarted); then every message is counted at the
/// target by its dedup id.
pub async fn sigkill_owner_to(backend: Backend, scale: &Scale) -> Value {
    // A FIFO queue takes one SendMessageBatch (10 messages) at a time, and moto's FIFO queue
    // slows down as it fills (each send is checked against every message it holds): 500 rows
    // keep the scenario's length in line with the others (the kills are the same).
    let mut scale = scale.clone();
    if backend == Backend::Sqs {
        scale.rows = scale.rows.min(500);
        scale.per_refresh = (scale.per_refresh / 10).max(1);
    }
    let scale = &scale;
    let (db, c, outbox) = db_with_outbox("faults").await;
    let target = Target::start(backend, &c).await;
    register(&c, "to-target", target.config("faults")).await;
    let mut relays = vec![Relay::start(&db.url, "default", &[]), Relay::start(&db.url, "default", &[])];
    let writer = spawn_writer(db.url.clone(), outbox.clone(), scale.refreshes(), scale.per_refresh, scale.stream);
    let failovers = kill_owner_repeatedly(&c, &db.url, &mut relays, "to-target", scale).await;
    writer.await.unwrap();
    let writer_done = Instant::now();
    let expected: HashSet<String> = expected_keys(&c, &outbox).await;
    let n = expected.len();
    until_count(n, Duration::from_secs(180), || target.count(&c)).await;
    let drained_ms = writer_done.elapsed().as_millis();
    // Late copies of a batch sent again would arrive now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ids = target.dedup_ids(&c).await;
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
