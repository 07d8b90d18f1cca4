//! The shared sink conformance harness: every sink runs the same scenario against its real
//! target — every message delivered (in order where the target keeps order), nothing committed
//! before the target confirmed it, a forced redelivery visible only where the target cannot
//! deduplicate, and the metrics moved accordingly.

use std::collections::BTreeSet;
use std::time::Duration;

use relay_e2e::http::WebhookServer;
use relay_e2e::kafka::KafkaBroker;
use relay_e2e::nats::NatsServer;
use relay_e2e::rabbitmq::Rabbit;
use relay_e2e::redis_server::RedisServer;
use relay_e2e::sqs::SqsServer;
use relay_e2e::*;
use serde_json::{json, Value};

/// What one target received: dedup keys in the order the target keeps them.
type Delivered = Vec<String>;

enum Target {
    File(std::path::PathBuf),
    Nats(NatsServer),
    Inbox,
    Webhook(WebhookServer),
    Redis(RedisServer),
    Kafka(KafkaBroker),
    /// The broker, and what was taken from its queue so far (taking is destructive).
    Rabbit(Box<Rabbit>, std::sync::Mutex<Vec<String>>),
    /// A FIFO queue (ordered, deduplicated): the server, the queue URL, what was taken so far.
    Sqs(SqsServer, String, std::sync::Mutex<Vec<String>>),
}

impl Target {
    fn sink_config(&self) -> Value {
        match self {
            Target::File(path) => json!({"sink_type": "file", "path": path.to_str().unwrap()}),
            Target::Nats(n) => {
                json!({"sink_type": "nats", "nats_url": n.url(), "nats_stream": "conf", "create_stream": true,
                                      "subject_template": "conf.{stream_table}.{op}"})
            }
            Target::Inbox => json!({"sink_type": "pg-inbox", "inbox_table": "conf_inbox", "create_inbox": true,
                                    "aggregate_id_field": "id", "event_type": "op"}),
            Target::Webhook(w) => json!({"sink_type": "webhook", "webhook_url": w.url("/hook")}),
            Target::Redis(r) => {
                json!({"sink_type": "redis", "redis_url": r.url(), "redis_stream_key": "conf.{stream_table}"})
            }
            // One partition: the harness reads the topic back in the order it was produced.
            Target::Kafka(k) => json!({"sink_type": "kafka", "kafka_brokers": k.brokers(), "kafka_topic": "conf-topic",
                                       "create_topic": true, "partitions": 1}),
            Target::Rabbit(r, _) => json!({"sink_type": "rabbitmq", "rabbitmq_url": relay_e2e::rabbitmq::amqp_url(),
                                           "rabbitmq_exchange": r.name("conf")}),
            Target::Sqs(server, url, _) => json!({"sink_type": "sqs", "sqs_queue_url": url, "sqs_region": "us-east-1",
                                                  "sqs_endpoint_url": server.endpoint(),
                                                  "sqs_access_key_id": "test", "sqs_secret_access_key": "test",
                                                  // A group per outbox row: the harness reads without deleting, and
                                                  // FIFO hands out nothing more of a group with messages in flight.
                                                  "sqs_message_group_id": "{stream_table}-{outbox_id}"}),
        }
    }

    /// Whether a redelivered message stays invisible to consumers of this target.
    fn dedups(&self) -> bool {
        // A webhook receiver dedups only if it honours Idempotency-Key; this one does not.
        // Kafka keeps both copies; its consumers see the same `pgtrickle-dedup-key` twice.
        // So does RabbitMQ; its consumers see the same `message_id` twice.
        !matches!(self, Target::File(_) | Target::Webhook(_) | Target::Kafka(_) | Target::Rabbit(..))
    }

    /// Whether the target tells the relay which messages it dropped as duplicates (SQS FIFO
    /// drops them silently).
    fn reports_duplicates(&self) -> bool {
        !matches!(self, Target::Sqs(..))
    }

    /// Whether the target keeps delivery order observable.
    fn ordered(&self) -> bool {
        !matches!(self, Target::Inbox)
    }

    async fn delivered(&self, c: &tokio_postgres::Client) -> Delivered {
        match self {
            Target::File(path) => {
                read_jsonl(path).iter().map(|m| m["dedup_key"].as_str().unwrap().to_owned()).collect()
            }
            Target::Nats(n) => n.stream_messages("conf").await.iter().map(|m| m.msg_id.clone().unwrap()).collect(),
            Target::Redis(r) => r.entries("conf.conf").await.into_iter().map(|(_, f)| f["dedup_key"].clone()).collect(),
            Target::Kafka(k) => k
                .records("conf-topic")
                .await
                .into_iter()
                .map(|r| {
                    assert_eq!(r.key.as_deref(), r.value["dedup_key"].as_str(), "key = dedup key");
                    assert_eq!(r.headers["pgtrickle-dedup-key"], r.value["dedup_key"].as_str().unwrap());
                    r.headers["pgtrickle-dedup-key"].clone()
                })
                .collect(),
            Target::Rabbit(r, taken) => {
                let new = r.drain(&r.name("conf-q")).await;
                let mut taken = taken.lock().unwrap();
                for m in new {
                    assert!(m.persistent, "persistent delivery mode");
                    assert_eq!(m.message_id.as_deref(), m.body["dedup_key"].as_str(), "message_id = dedup key");
                    assert_eq!(m.routing_key, m.body["subject"].as_str().unwrap(), "routing key = subject");
                    taken.push(m.message_id.unwrap());
                }
                taken.clone()
            }
            Target::Sqs(server, url, taken) => {
                let new = server.take_invisible(url).await;
                let mut taken = taken.lock().unwrap();
                for m in new {
                    assert_eq!(m.attributes["pgtrickle-dedup-key"], m.body["dedup_key"].as_str().unwrap());
                    let group = format!("conf-{}", m.body["outbox_id"]);
                    assert_eq!(m.group_id.as_deref(), Some(group.as_str()), "message group from the template");
                    taken.push(m.attributes["pgtrickle-dedup-key"].clone());
                }
                taken.clone()
            }
            Target::Webhook(w) => w
                .accepted()
                .iter()
                .flat_map(|r| r.json().as_array().unwrap().clone())
                .map(|m| m["dedup_key"].as_str().unwrap().to_owned())
                .collect(),
            Target::Inbox => {
                let exists: bool =
                    c.query_one("SELECT to_regclass('pgtrickle.conf_inbox') IS NOT NULL", &[]).await.unwrap().get(0);
                if !exists {
                    return Vec::new();
                }
                c.query("SELECT event_id FROM pgtrickle.conf_inbox ORDER BY event_id", &[])
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| r.get(0))
                    .collect()
            }
        }
    }
}

async fn run_conformance(target: Target) {
    let (db, c, outbox) = db_with_outbox("conf").await;
    let mut config = target.sink_config();
    config["stream_table"] = json!("conf");
    config["key_columns"] = json!(["id"]);
    config["batch_size"] = json!(3);
    // Transport conformance: every snapshot row is a message (diff mode has its own tests).
    config["delta_mode"] = json!("snapshot");
    c.execute("SELECT pgtrickle.set_relay_outbox('conf', config => $1::jsonb)", &[&config]).await.unwrap();

    // 12 outbox rows in every inline form; expected keys (outbox id, row index) in outbox order.
    let mut expected_rows = Vec::new();
    for i in 0..4i64 {
        let id = write_inline(&c, &outbox, Some(json!([{"id": i * 10, "__pgt_row_id": i}, {"id": i * 10 + 1}]))).await;
        expected_rows.extend([(id, 0), (id, 1)]);
        let id = write_inline(
            &c,
            &outbox,
            Some(
                json!({"v": 1, "inserted": [{"id": i * 10, "v": 2}], "deleted": [{"id": i * 10}, {"id": i * 10 + 1}]}),
            ),
        )
        .await;
        // update (index 0) and delete (index 2); the paired delete at index 1 is folded in.
        expected_rows.extend([(id, 0), (id, 2)]);
        let id = write_inline(&c, &outbox, None).await;
        let _ = id;
    }
    let refs = row_refs(&c, &outbox).await;
    let expected: Vec<String> = expected_rows.iter().map(|(id, i)| format!("{}:{i}", refs[id])).collect();
    let last: i64 = c.query_one(&format!("SELECT max(id) FROM pgtrickle.\"{outbox}\""), &[]).await.unwrap().get(0);

    let mut relay = Relay::start(&db.url, "default", &[]);
    eventually(Duration::from_secs(20), "everything committed", || async {
        (committed_offset(&c, "default", "conf").await == Some(last)).then_some(())
    })
    .await;
    // Committed implies confirmed: the target already holds every message.
    let first = target.delivered(&c).await;
    if target.ordered() {
        assert_eq!(first, expected, "every message, in outbox order");
    } else {
        assert_eq!(first.iter().collect::<BTreeSet<_>>(), expected.iter().collect::<BTreeSet<_>>());
    }
    let metrics = relay.get("/metrics").1;
    assert!(
        metrics.contains(&format!(
            r#"pgtrickle_relay_messages_published_total{{direction="forward",pipeline="conf"}} {}"#,
            expected.len()
        )),
        "{metrics}"
    );

    // Forced redelivery: the relay stops, the offset is rewound as if it had died before
    // committing, and the next run publishes everything again.
    assert!(relay.terminate().success());
    c.execute("UPDATE pgtrickle.relay_consumer_offsets SET last_change_id = 0 WHERE pipeline_id = 'conf'", &[])
        .await
        .unwrap();
    let relay = Relay::start(&db.url, "default", &[]);
    eventually(Duration::from_secs(20), "everything committed again", || async {
        (committed_offset(&c, "default", "conf").await == Some(last)).then_some(())
    })
    .await;
    let second = target.delivered(&c).await;
    let metrics = relay.get("/metrics").1;
    if target.dedups() {
        assert_eq!(second.len(), expected.len(), "a redelivered message must not be visible twice");
        assert!(
            !target.reports_duplicates()
                || metrics
                    .contains(&format!(r#"pgtrickle_relay_dedup_skipped_total{{pipeline="conf"}} {}"#, expected.len())),
            "{metrics}"
        );
    } else {
        assert_eq!(second.len(), 2 * expected.len(), "this target cannot deduplicate; the redelivery shows");
        assert_eq!(second[expected.len()..], expected[..]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_sink_conforms() {
    let path = temp_path("conformance.jsonl");
    run_conformance(Target::File(path.clone())).await;
    let _ = std::fs::remove_file(path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_sink_conforms() {
    run_conformance(Target::Nats(NatsServer::start())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_inbox_sink_conforms() {
    run_conformance(Target::Inbox).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_sink_conforms() {
    run_conformance(Target::Webhook(WebhookServer::start().await)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sink_conforms() {
    run_conformance(Target::Redis(RedisServer::start())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_sink_conforms() {
    run_conformance(Target::Kafka(KafkaBroker::start())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_sink_conforms() {
    let rabbit = Rabbit::connect().await;
    let (exchange, queue) = (rabbit.name("conf"), rabbit.name("conf-q"));
    rabbit.bind_queue(&exchange, lapin::ExchangeKind::Topic, &queue, "#").await;
    run_conformance(Target::Rabbit(Box::new(rabbit), Default::default())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_fifo_sink_conforms() {
    let server = SqsServer::start();
    let url = server.create_queue("conf.fifo").await;
    run_conformance(Target::Sqs(server, url, Default::default())).await;
}
