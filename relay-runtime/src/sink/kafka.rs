//! Kafka sink (librdkafka through `rdkafka`).
//!
//! An idempotent producer (`enable.idempotence=true`, `acks=all`): librdkafka's own retries
//! never duplicate or reorder a partition. Messages are enqueued without waiting and their
//! delivery reports are counted per batch on librdkafka's polling thread ([`deliveries`]) — no
//! future or channel per message; a batch is confirmed when the broker acknowledged every
//! message of it, while later batches are already in flight. The value is the relay message JSON, the
//! key the dedup key (or `key_field` / `key_template`), the headers `pgtrickle-op`,
//! `pgtrickle-dedup-key`, `pgtrickle-full-refresh`, `pgtrickle-outbox-id`. Kafka has no
//! server-side dedup for a batch produced again after a crash: consumers that need exactly once
//! skip repeated `pgtrickle-dedup-key` values.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};

use super::options::Options;
use super::{BuildError, Published, Sink, SinkContext, SinkError};

mod deliveries;
use crate::message::{RelayMessage, Template};
use deliveries::{Deliveries, Reports};

const BACKEND: &str = "kafka";

/// Settings that may carry secrets: never echoed in errors or logs.
const SECRET_SETTINGS: &[&str] =
    &["sasl.password", "ssl.key.password", "ssl.keystore.password", "sasl.oauthbearer.client.secret"];

enum PartitionKey {
    Dedup,
    Field(String),
    Template(Template),
}

pub struct KafkaSink {
    producer: Arc<ThreadedProducer<Reports>>,
    /// The producer's settings, to replace a producer that hit a fatal error.
    config: ClientConfig,
    deliveries: Arc<Deliveries>,
    topic: Template,
    /// The topic when the template has no variables (rendered once, shared by every record).
    fixed_topic: Option<Arc<str>>,
    key: PartitionKey,
    stream_table: String,
    outbox_table: String,
    timeout: Duration,
    /// The value buffer, reused across messages.
    body: Vec<u8>,
}

/// The librdkafka settings of a sink spec: ours first, then the `rdkafka` passthrough map.
fn client_config(o: &Options<'_>, pipeline: &str) -> Result<ClientConfig, BuildError> {
    let mut c = base_config(o, pipeline)?;
    // A metadata lookup must not create the topic with the broker's defaults behind our back.
    c.set("allow.auto.create.topics", "false")
        .set("enable.idempotence", o.bool("idempotent", true)?.to_string())
        .set("acks", o.choice("acks", &["all", "1", "0", "-1"], "all")?)
        .set("compression.type", o.choice("compression", &["none", "gzip", "snappy", "lz4", "zstd"], "lz4")?)
        .set("linger.ms", o.u64("linger_ms", 5, 0, 900_000)?.to_string())
        .set("batch.num.messages", o.u64("batch_num_messages", 10_000, 1, 1_000_000)?.to_string())
        .set("message.timeout.ms", o.u64("delivery_timeout_ms", 30_000, 1_000, 3_600_000)?.to_string())
        .set("queue.buffering.max.messages", o.u64("queue_max_messages", 100_000, 1, 10_000_000)?.to_string());
    passthrough(o, &mut c)?;
    Ok(c)
}

/// Brokers, client id and security settings, shared by the Kafka sink and source.
pub fn base_config(o: &Options<'_>, pipeline: &str) -> Result<ClientConfig, BuildError> {
    let brokers = match o.str_list("brokers")? {
        Some(b) if !b.is_empty() => b.join(","),
        _ => o.required_str(&["brokers", "bootstrap_servers"])?.to_owned(),
    };
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers).set("client.id", format!("pgtrickle-relay-{pipeline}"));
    if let Some(v) = o.str(&["security_protocol"])? {
        c.set("security.protocol", v);
    }
    if let Some(v) = o.str(&["sasl_mechanism", "sasl_mechanisms"])? {
        c.set("sasl.mechanism", v);
    }
    if let Some(v) = o.str(&["sasl_username"])? {
        c.set("sasl.username", v);
    }
    if let Some(v) = o.str(&["sasl_password"])? {
        c.set("sasl.password", v);
    }
    if let Some(v) = o.str(&["tls_ca", "ssl_ca_location"])? {
        c.set("ssl.ca.location", v);
    }
    if let Some(v) = o.str(&["tls_cert", "ssl_certificate_location"])? {
        c.set("ssl.certificate.location", v);
    }
    if let Some(v) = o.str(&["tls_key", "ssl_key_location"])? {
        c.set("ssl.key.location", v);
    }
    Ok(c)
}

/// The `rdkafka` object, applied last: it can override anything.
pub fn passthrough(o: &Options<'_>, c: &mut ClientConfig) -> Result<(), BuildError> {
    for (k, v) in o.string_map("rdkafka")? {
        c.set(k, v);
    }
    Ok(())
}

/// A librdkafka error with any secret setting's value removed.
pub fn scrub(message: String, config: &ClientConfig) -> String {
    SECRET_SETTINGS
        .iter()
        .filter_map(|k| config.get(k))
        .filter(|v| !v.is_empty())
        .fold(message, |m, v| m.replace(v, "****"))
}

pub async fn build(
    options: &serde_json::Map<String, serde_json::Value>,
    ctx: &SinkContext<'_>,
) -> Result<Box<dyn Sink>, BuildError> {
    let o = Options::new(BACKEND, options);
    let config = client_config(&o, ctx.pipeline)?;
    let topic = o.template(&["topic", "topic_template"], "pgtrickle.{stream_table}")?;
    let key = match (o.str(&["key_field"])?, o.str(&["key_template"])?) {
        (Some(f), _) => PartitionKey::Field(f.to_owned()),
        (None, Some(t)) => PartitionKey::Template(o.template(&["key_template"], t)?),
        (None, None) => PartitionKey::Dedup,
    };
    let deliveries = Arc::new(Deliveries::new(o.u64("max_in_flight", 50_000, 1, 1_000_000)? as usize));
    let producer: ThreadedProducer<Reports> =
        config.create_with_context(Reports(deliveries.clone())).map_err(|e| BuildError::Option {
            backend: BACKEND,
            key: "rdkafka".into(),
            message: scrub(format!("invalid producer setting: {e}"), &config),
        })?;
    let timeout = o.millis("connect_timeout_ms", 10_000)?;
    let sink = KafkaSink {
        producer: Arc::new(producer),
        config: config.clone(),
        deliveries,
        fixed_topic: topic.is_static().then(|| Arc::from(topic.source())),
        topic,
        key,
        stream_table: ctx.stream_table.to_owned(),
        outbox_table: ctx.outbox_table.to_owned(),
        timeout,
        body: Vec::with_capacity(1024),
    };
    // A fixed topic is checked (and created when asked) now; a templated one at its first message.
    let fixed = sink.fixed_topic.as_deref().map(str::to_owned);
    match sink.topic_exists(fixed.as_deref()).await {
        Ok(true) => {}
        Ok(false) => {
            let name = fixed.unwrap_or_default();
            if !o.bool("create_topic", false)? {
                return Err(BuildError::Open {
                    backend: BACKEND,
                    message: format!("Kafka topic '{name}' does not exist; create it or set \"create_topic\": true"),
                });
            }
            let partitions = o.u64("partitions", 3, 1, 100_000)? as i32;
            let replication = o.u64("replication_factor", 1, 1, 100)? as i32;
            create_topic(&config, &name, partitions, replication).await?;
        }
        Err(message) => return Err(BuildError::Unreachable { backend: BACKEND, message: scrub(message, &config) }),
    }
    Ok(Box::new(sink))
}

async fn create_topic(config: &ClientConfig, name: &str, partitions: i32, replication: i32) -> Result<(), BuildError> {
    let open = |message: String| BuildError::Open { backend: BACKEND, message: scrub(message, config) };
    let admin: AdminClient<DefaultClientContext> =
        config.create().map_err(|e| open(format!("cannot create an admin client: {e}")))?;
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(replication));
    let results = admin
        .create_topics([&topic], &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))))
        .await
        .map_err(|e| open(format!("cannot create topic '{name}': {e}")))?;
    for r in results {
        match r {
            Ok(_) => tracing::info!(topic = name, partitions, "created Kafka topic"),
            // Another relay created it at the same moment.
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(open(format!("cannot create topic '{name}': {code}"))),
        }
    }
    Ok(())
}

/// Whether an error needs a change (topic, size, rights) rather than time.
fn classify(e: &KafkaError, topic: &str) -> SinkError {
    let code = e.rdkafka_error_code();
    match code {
        Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => SinkError::Permanent {
            backend: BACKEND,
            message: format!(
                "Kafka topic '{topic}' does not exist; create it (or set \"create_topic\" for a fixed topic)"
            ),
        },
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize) => SinkError::Permanent {
            backend: BACKEND,
            message: format!("a message to '{topic}' is larger than the broker accepts (message.max.bytes): {e}"),
        },
        Some(RDKafkaErrorCode::TopicAuthorizationFailed | RDKafkaErrorCode::InvalidTopic) => {
            SinkError::Permanent { backend: BACKEND, message: format!("cannot write to topic '{topic}': {e}") }
        }
        _ => SinkError::Retryable { backend: BACKEND, message: format!("delivery to '{topic}' failed: {e}") },
    }
}

impl KafkaSink {
    /// `Ok(true)` when `topic` exists, or when no topic is given and the cluster answers.
    fn topic_exists(
        &self,
        topic: Option<&str>,
    ) -> impl std::future::Future<Output = Result<bool, String>> + Send + 'static {
        let producer = self.producer.clone();
        let timeout = self.timeout;
        let topic = topic.map(str::to_owned);
        let lookup = tokio::task::spawn_blocking(move || {
            let md = producer.client().fetch_metadata(topic.as_deref(), timeout);
            md.map(|md| {
                topic.is_none()
                    || md.topics().iter().any(|t| {
                        Some(t.name()) == topic.as_deref() && t.error().is_none() && !t.partitions().is_empty()
                    })
            })
        });
        async move {
            lookup
                .await
                .map_err(|e| format!("metadata lookup failed: {e}"))?
                .map_err(|e| format!("cannot reach the Kafka brokers: {e}"))
        }
    }

    fn key_of<'m>(&self, m: &'m RelayMessage) -> Cow<'m, str> {
        match &self.key {
            PartitionKey::Dedup => Cow::Borrowed(&m.dedup_key),
            PartitionKey::Field(f) => m.field_text(f).map_or(Cow::Borrowed(m.dedup_key.as_str()), Cow::Owned),
            PartitionKey::Template(t) => Cow::Owned(t.render(&m.vars(&self.stream_table, &self.outbox_table))),
        }
    }
}

fn headers(m: &RelayMessage) -> OwnedHeaders {
    let outbox_id = m.outbox_id.map(|i| i.to_string());
    let mut h = OwnedHeaders::new_with_capacity(5)
        .insert(Header { key: "pgtrickle-op", value: Some(m.op.as_str()) })
        .insert(Header { key: "pgtrickle-dedup-key", value: Some(m.dedup_key.as_str()) })
        .insert(Header { key: "pgtrickle-full-refresh", value: Some(if m.is_full_refresh { "true" } else { "false" }) })
        .insert(Header { key: "content-type", value: Some("application/json") });
    if let Some(id) = &outbox_id {
        h = h.insert(Header { key: "pgtrickle-outbox-id", value: Some(id.as_str()) });
    }
    h
}

impl KafkaSink {
    /// Enqueues every message of a batch, waiting only while the window (or librdkafka's
    /// queue) is full.
    async fn produce(&self, call: u64, batch: &[RelayMessage], body: &mut Vec<u8>) -> Result<(), SinkError> {
        for m in batch {
            body.clear();
            m.write_json(body);
            let key = self.key_of(m);
            let topic: Cow<'_, str> = match &self.fixed_topic {
                Some(t) => Cow::Borrowed(t),
                None => Cow::Owned(self.topic.render(&m.vars(&self.stream_table, &self.outbox_table))),
            };
            let mut record = BaseRecord::with_opaque_to(&topic, call as usize)
                .payload(body.as_slice())
                .key(key.as_ref())
                .headers(headers(m));
            loop {
                let full = self.deliveries.sending(call);
                match self.producer.send(record) {
                    Ok(()) if full => {
                        self.deliveries.wait_for_space().await;
                        break;
                    }
                    Ok(()) => break,
                    // librdkafka's queue is full: wait for reports, then retry.
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        self.deliveries.not_sent(call);
                        record = r;
                        if !self.deliveries.wait_for_space().await {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                    Err((e, _)) => {
                        self.deliveries.not_sent(call);
                        if deliveries::needs_new_producer(&e) {
                            self.deliveries.mark_stale_producer();
                        }
                        return Err(classify(&e, &topic));
                    }
                }
            }
        }
        Ok(())
    }
}

impl Sink for KafkaSink {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn publish<'a>(&'a mut self, batch: &'a [RelayMessage]) -> BoxFuture<'a, Result<Published, SinkError>> {
        Box::pin(async move {
            let call = self.deliveries.begin();
            // librdkafka copies key and value: one buffer serves every message.
            let mut body = std::mem::take(&mut self.body);
            let sent = self.produce(call, batch, &mut body).await;
            self.body = body;
            self.deliveries.seal(call);
            sent?;
            let mut done = Published::default();
            self.deliveries.settle_before(call, &mut done).await?;
            Ok(done)
        })
    }

    fn pipelined(&self) -> bool {
        true
    }

    fn flush(&mut self) -> BoxFuture<'_, Result<Published, SinkError>> {
        Box::pin(self.deliveries.flush())
    }

    fn reset(&mut self) {
        self.deliveries.reset();
        // An idempotent producer that hit a fatal error, or whose id the broker fenced (after a
        // hung broker timed out requests in flight, say), refuses every record from then on:
        // replace it, so the batch is sent again by a fresh one (with a new producer id).
        let fatal = self.producer.client().fatal_error().map(|(code, reason)| format!("{code}: {reason}"));
        let stale = self.deliveries.take_stale_producer();
        if fatal.is_some() || stale {
            let why = fatal.unwrap_or_else(|| "the broker no longer accepts its producer id".to_owned());
            match self.config.create_with_context(Reports(self.deliveries.clone())) {
                Ok(fresh) => {
                    tracing::warn!(reason = %scrub(why, &self.config), "Kafka producer replaced");
                    let old = std::mem::replace(&mut self.producer, Arc::new(fresh));
                    // Destroying a producer waits for its threads: not on the runtime's thread.
                    tokio::task::spawn_blocking(move || drop(old));
                }
                Err(e) => {
                    tracing::warn!(error = %scrub(e.to_string(), &self.config), "cannot replace the Kafka producer")
                }
            }
        }
    }

    fn health(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        let lookup = self.topic_exists(None);
        Box::pin(async move {
            lookup.await.map(|_| ()).map_err(|message| SinkError::Retryable { backend: BACKEND, message })
        })
    }

    fn close(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            let producer = self.producer.clone();
            let timeout = self.timeout;
            tokio::task::spawn_blocking(move || producer.flush(timeout))
                .await
                .map_err(|e| SinkError::Retryable { backend: BACKEND, message: format!("flush failed: {e}") })?
                .map_err(|e| SinkError::Retryable { backend: BACKEND, message: format!("flush failed: {e}") })
        })
    }
}
