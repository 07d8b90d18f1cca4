//! RabbitMQ for the tests: the machine's broker (scripts/test starts one when none answers),
//! with per-test exchange and queue names so tests never see each other's messages.

use std::collections::BTreeMap;

use lapin::options::{BasicGetOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};

pub fn amqp_url() -> String {
    std::env::var("PGTRICKLE_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// One message as a consumer sees it.
#[derive(Debug, Clone)]
pub struct Received {
    pub routing_key: String,
    pub message_id: Option<String>,
    pub persistent: bool,
    pub headers: BTreeMap<String, String>,
    pub body: serde_json::Value,
}

pub struct Rabbit {
    _conn: Connection,
    channel: Channel,
    /// A prefix unique to this test run, for exchange and queue names.
    pub prefix: String,
    /// Exchanges and queues to delete when the test ends.
    declared: std::sync::Mutex<(Vec<String>, Vec<String>)>,
}

/// The exchanges and queues of a test are deleted when it ends, so the machine's broker does not
/// collect them (a queue also expires after 10 idle minutes should the test process be killed).
impl Drop for Rabbit {
    fn drop(&mut self) {
        let (exchanges, queues) = std::mem::take(&mut *self.declared.lock().unwrap_or_else(|e| e.into_inner()));
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async move {
                let Ok(conn) = Connection::connect(&amqp_url(), ConnectionProperties::default()).await else { return };
                let Ok(ch) = conn.create_channel().await else { return };
                for q in queues {
                    let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
                }
                for x in exchanges {
                    let _ = ch.exchange_delete(x.as_str().into(), Default::default()).await;
                }
                let _ = conn.close(200, "done".into()).await;
            });
        })
        .join();
    }
}

impl Rabbit {
    pub async fn connect() -> Self {
        let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("RabbitMQ not reachable at {} ({e}): scripts/test starts one", amqp_url()));
        let channel = conn.create_channel().await.unwrap();
        let prefix = format!("relay-test-{}-{}", std::process::id(), fastrand::u32(..));
        Self { _conn: conn, channel, prefix, declared: Default::default() }
    }

    /// A per-test name.
    pub fn name(&self, what: &str) -> String {
        format!("{}-{what}", self.prefix)
    }

    /// Declares `exchange` (durable, as the relay declares it) and a queue bound to it with
    /// `pattern`; both are deleted when the test ends.
    pub async fn bind_queue(&self, exchange: &str, kind: ExchangeKind, queue: &str, pattern: &str) {
        {
            let mut d = self.declared.lock().unwrap();
            d.0.push(exchange.to_owned());
            d.1.push(queue.to_owned());
        }
        self.channel
            .exchange_declare(
                exchange.into(),
                kind,
                ExchangeDeclareOptions { durable: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut args = FieldTable::default();
        args.insert("x-expires".into(), AMQPValue::LongInt(600_000));
        self.channel.queue_declare(queue.into(), QueueDeclareOptions::default(), args).await.unwrap();
        self.channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                pattern.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }

    /// Purges `queue`, returning how many messages it held and the first of them.
    pub async fn drain_count(&self, queue: &str) -> (u32, Option<Received>) {
        let first = self.channel.basic_get(queue.into(), BasicGetOptions { no_ack: true }).await.unwrap();
        let Some(first) = first else { return (0, None) };
        let body = serde_json::from_slice(&first.delivery.data).unwrap();
        let purged = self.channel.queue_purge(queue.into(), Default::default()).await.unwrap();
        let received = Received {
            routing_key: first.delivery.routing_key.to_string(),
            message_id: first.delivery.properties.message_id().as_ref().map(|s| s.to_string()),
            persistent: *first.delivery.properties.delivery_mode() == Some(2),
            headers: BTreeMap::new(),
            body,
        };
        (purged + 1, Some(received))
    }

    /// The test's channel (in publisher-confirm mode after [`Rabbit::confirm`]).
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Marks a queue the relay declares for deletion when the test ends.
    pub fn forget_queue_later(&self, queue: &str) {
        self.declared.lock().unwrap().1.push(queue.to_owned());
    }

    /// Publishes `bodies` to `queue` through the default exchange, persistent, with publisher
    /// confirms; `ids[i]`, when set, becomes the `message_id`.
    pub async fn publish(&self, queue: &str, bodies: &[String], ids: &[Option<String>]) {
        use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
        let ch = self._conn.create_channel().await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
        let mut confirms = futures::stream::FuturesOrdered::new();
        for (body, id) in bodies.iter().zip(ids) {
            let mut props = lapin::BasicProperties::default().with_delivery_mode(2);
            if let Some(id) = id {
                props = props.with_message_id(id.as_str().into());
            }
            let c = ch
                .basic_publish("".into(), queue.into(), BasicPublishOptions::default(), body.as_bytes(), props)
                .await
                .unwrap();
            confirms.push_back(c);
            while confirms.len() >= 1024 {
                assert!(futures::StreamExt::next(&mut confirms).await.unwrap().unwrap().is_ack());
            }
        }
        while let Some(c) = futures::StreamExt::next(&mut confirms).await {
            assert!(c.unwrap().is_ack());
        }
    }

    /// How many messages `queue` holds (ready, not unacknowledged).
    pub async fn ready(&self, queue: &str) -> u32 {
        let q = self
            .channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions { passive: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .unwrap();
        q.message_count()
    }

    /// Takes every message now in `queue`, in queue order (acknowledged as they are taken).
    pub async fn drain(&self, queue: &str) -> Vec<Received> {
        let mut out = Vec::new();
        while let Some(m) = self.channel.basic_get(queue.into(), BasicGetOptions { no_ack: true }).await.unwrap() {
            let p = &m.delivery.properties;
            let mut headers = BTreeMap::new();
            if let Some(h) = p.headers() {
                for (k, v) in h.inner() {
                    let text = match v {
                        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                        AMQPValue::Boolean(b) => b.to_string(),
                        AMQPValue::LongLongInt(i) => i.to_string(),
                        other => format!("{other:?}"),
                    };
                    headers.insert(k.to_string(), text);
                }
            }
            out.push(Received {
                routing_key: m.delivery.routing_key.to_string(),
                message_id: p.message_id().as_ref().map(|s| s.to_string()),
                persistent: *p.delivery_mode() == Some(2),
                headers,
                body: serde_json::from_slice(&m.delivery.data).unwrap(),
            });
        }
        out
    }
}

/// Closes every connection of the machine's broker named `pgtrickle-relay <pipeline>` (the
/// name the relay gives its connections) with `rabbitmqctl close_connection`, as an operator
/// closing them would; returns how many it closed.
pub fn close_relay_connections(pipeline: &str) -> usize {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["list_connections", "-q", "--no-table-headers", "pid", "client_properties"])
        .output()
        .expect("rabbitmqctl not found: scripts/test installs rabbitmq-server");
    let wanted = format!("\"pgtrickle-relay {pipeline}\"");
    let mut closed = 0;
    for line in String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains(&wanted)) {
        let Some(pid) = line.split_whitespace().next() else { continue };
        let ok = std::process::Command::new("rabbitmqctl")
            .args(["close_connection", pid, "fault suite: broker_restart"])
            .output()
            .is_ok_and(|o| o.status.success());
        closed += usize::from(ok);
    }
    closed
}
