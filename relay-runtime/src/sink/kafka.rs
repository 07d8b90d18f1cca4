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

use super::{BuildError, Published, Sink, SinkContext, SinkError};
use crate::backend::fields::Flag;
use crate::backend::kafka::{scrub, KafkaSinkConfig};

mod deliveries;
use crate::message::envelope::{Binding, Envelope};
use crate::message::{RelayMessage, Template, TemplateNames};
use deliveries::{Deliveries, Reports};

const BACKEND: &str = "kafka";

enum PartitionKey {
    Dedup,
    /// Debezium: the `key_columns` as a JSON object.
    Envelope,
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
    /// Names for the templates.
    names: TemplateNames,
    timeout: Duration,
    /// The value buffer, reused across messages.
    body: Vec<u8>,
    envelope: Envelope,
    /// A tombstone after each Debezium delete (`tombstones`, default true).
    tombstones: bool,
}

/// The librdkafka settings of a sink: ours first, then the `rdkafka` passthrough map.
fn client_config(cfg: &KafkaSinkConfig, pipeline: &str) -> ClientConfig {
    let mut c = cfg.client.base_config(pipeline);
    let flag = |f: Option<Flag>, default: bool| f.map_or(default, |f| f.0).to_string();
    let int = |n: Option<u64>, default: u64| n.unwrap_or(default).to_string();
    // A metadata lookup must not create the topic with the broker's defaults behind our back.
    c.set("allow.auto.create.topics", "false")
        .set("enable.idempotence", flag(cfg.idempotent, true))
        .set("acks", cfg.acks.map_or("all", |a| a.0.as_str()))
        .set("compression.type", cfg.compression.map_or("lz4", |a| a.0.as_str()))
        .set("linger.ms", int(cfg.linger_ms.map(|n| n.get()), 5))
        .set("batch.num.messages", int(cfg.batch_num_messages.map(|n| n.get()), 10_000))
        .set("message.timeout.ms", int(cfg.delivery_timeout_ms.map(|n| n.get()), 30_000))
        .set("queue.buffering.max.messages", int(cfg.queue_max_messages.map(|n| n.get()), 100_000));
    cfg.client.passthrough(&mut c);
    c
}

pub async fn build(cfg: &KafkaSinkConfig, ctx: &SinkContext<'_>) -> Result<Box<dyn Sink>, BuildError> {
    let config = client_config(cfg, ctx.pipeline);
    let topic = match &cfg.topic {
        Some(t) => t.0.clone(),
        None => Template::parse("pgtrickle.{stream_table}")
            .map_err(|e| BuildError::option(BACKEND, "topic", e.to_string()))?,
    };
    let key = match (&cfg.key_field, &cfg.key_template) {
        (Some(f), _) => PartitionKey::Field(f.0.clone()),
        (None, Some(t)) => PartitionKey::Template(t.0.clone()),
        (None, None) if ctx.envelope.is_debezium() => PartitionKey::Envelope,
        (None, None) => PartitionKey::Dedup,
    };
    let deliveries = Arc::new(Deliveries::new(cfg.max_in_flight.map_or(50_000, |n| n.get() as usize)));
    let producer: ThreadedProducer<Reports> = config.create_with_context(Reports(deliveries.clone())).map_err(|e| {
        BuildError::option(BACKEND, "rdkafka", scrub(format!("invalid producer setting: {e}"), &config))
    })?;
    let timeout = cfg.connect_timeout_ms.map_or(Duration::from_secs(10), |n| n.millis());
    let sink = KafkaSink {
        producer: Arc::new(producer),
        config: config.clone(),
        deliveries,
        fixed_topic: topic.is_static().then(|| Arc::from(topic.source())),
        topic,
        key,
        names: ctx.names.clone(),
        timeout,
        body: Vec::with_capacity(1024),
        envelope: ctx.envelope.clone(),
        tombstones: cfg.tombstones.is_none_or(|f| f.0),
    };
    // A fixed topic is checked (and created when asked) now; a templated one at its first message.
    let fixed = sink.fixed_topic.as_deref().map(str::to_owned);
    match sink.topic_exists(fixed.as_deref()).await {
        Ok(true) => {}
        Ok(false) => {
            let name = fixed.unwrap_or_default();
            if !cfg.create_topic.is_some_and(|f| f.0) {
                return Err(BuildError::open(
                    BACKEND,
                    format!("Kafka topic '{name}' does not exist; create it or set \"create_topic\": true"),
                ));
            }
            let partitions = cfg.partitions.map_or(3, |n| n.get() as i32);
            let replication = cfg.replication_factor.map_or(1, |n| n.get() as i32);
            create_topic(&config, &name, partitions, replication).await?;
        }
        Err(message) => return Err(BuildError::unreachable(BACKEND, scrub(message, &config))),
    }
    Ok(Box::new(sink))
}

async fn create_topic(config: &ClientConfig, name: &str, partitions: i32, replication: i32) -> Result<(), BuildError> {
    let open = |message: String| BuildError::open(BACKEND, scrub(message, config));
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
        Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => SinkError::permanent(
            BACKEND,
            format!("Kafka topic '{topic}' does not exist; create it (or set \"create_topic\" for a fixed topic)"),
        ),
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize) => SinkError::permanent(
            BACKEND,
            format!("a message to '{topic}' is larger than the broker accepts (message.max.bytes)"),
        )
        .because(e.clone()),
        Some(RDKafkaErrorCode::TopicAuthorizationFailed | RDKafkaErrorCode::InvalidTopic) => {
            SinkError::permanent(BACKEND, format!("cannot write to topic '{topic}'")).because(e.clone())
        }
        _ => SinkError::retryable(BACKEND, format!("delivery to '{topic}' failed")).because(e.clone()),
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

    /// The record key; none for a Debezium pipeline without `key_columns` (as Debezium does
    /// for a table without a primary key).
    fn key_of<'m>(&self, m: &'m RelayMessage) -> Option<Cow<'m, [u8]>> {
        Some(match &self.key {
            PartitionKey::Dedup => Cow::Borrowed(m.dedup_key.as_bytes()),
            PartitionKey::Envelope => Cow::Owned(self.envelope.record_key(m)?),
            PartitionKey::Field(f) => {
                m.field_text(f).map_or(Cow::Borrowed(m.dedup_key.as_bytes()), |t| Cow::Owned(t.into_bytes()))
            }
            PartitionKey::Template(t) => Cow::Owned(t.render(&m.vars(&self.names)).into_bytes()),
        })
    }
}

fn headers(m: &RelayMessage, envelope: &Envelope) -> OwnedHeaders {
    let outbox_id = m.outbox_id.map(|i| i.to_string());
    let mut h = OwnedHeaders::new_with_capacity(if envelope.is_binary() { 18 } else { 6 })
        .insert(Header { key: "pgtrickle-op", value: Some(m.op.as_str()) })
        .insert(Header { key: "pgtrickle-dedup-key", value: Some(m.dedup_key.as_str()) })
        .insert(Header { key: "pgtrickle-full-refresh", value: Some(if m.is_full_refresh { "true" } else { "false" }) })
        .insert(Header { key: "content-type", value: Some(envelope.content_type()) })
        .insert(Header { key: "traceparent", value: Some(&*m.traceparent) });
    if let Some(id) = &outbox_id {
        h = h.insert(Header { key: "pgtrickle-outbox-id", value: Some(id.as_str()) });
    }
    if envelope.is_binary() {
        // `OwnedHeaders::insert` takes the list by value: gather first, then chain.
        let mut attributes: Vec<(&'static str, String)> = Vec::with_capacity(12);
        envelope.attributes(m, Binding::Kafka, |k, v| attributes.push((k, v.to_owned())));
        for (k, v) in &attributes {
            h = h.insert(Header { key: k, value: Some(v.as_str()) });
        }
    }
    h
}

/// The headers of the tombstone after a Debezium delete: what it is, and its delete's ids.
fn tombstone_headers(m: &RelayMessage) -> OwnedHeaders {
    OwnedHeaders::new_with_capacity(3)
        .insert(Header { key: "pgtrickle-op", value: Some("tombstone") })
        .insert(Header { key: "pgtrickle-dedup-key", value: Some(m.dedup_key.as_str()) })
        .insert(Header { key: "traceparent", value: Some(&*m.traceparent) })
}

impl KafkaSink {
    /// Enqueues every message of a batch, waiting only while the window (or librdkafka's
    /// queue) is full.
    async fn produce(&self, call: u64, batch: &[RelayMessage], body: &mut Vec<u8>) -> Result<(), SinkError> {
        for m in batch {
            body.clear();
            self.envelope.write_body(m, body);
            let key = self.key_of(m);
            let topic: Cow<'_, str> = match &self.fixed_topic {
                Some(t) => Cow::Borrowed(t),
                None => Cow::Owned(self.topic.render(&m.vars(&self.names))),
            };
            let record = BaseRecord::with_opaque_to(&topic, call as usize)
                .payload(body.as_slice())
                .headers(headers(m, &self.envelope));
            let record = match &key {
                Some(k) => record.key(k.as_ref()),
                None => record,
            };
            self.send(call, record, false, &topic).await?;
            if self.tombstones && self.envelope.tombstone_after(m) {
                if let Some(k) = &key {
                    let tombstone = BaseRecord::<[u8], [u8], usize>::with_opaque_to(&topic, call as usize)
                        .key(k.as_ref())
                        .headers(tombstone_headers(m));
                    self.send(call, tombstone, true, &topic).await?;
                }
            }
        }
        Ok(())
    }

    /// Hands one record to librdkafka, waiting while the window (or its queue) is full. An
    /// `extra` record (a tombstone) is confirmed with its call but not counted as a message.
    async fn send(
        &self,
        call: u64,
        mut record: BaseRecord<'_, [u8], [u8], usize>,
        extra: bool,
        topic: &str,
    ) -> Result<(), SinkError> {
        loop {
            let full = self.deliveries.sending(call, extra);
            match self.producer.send(record) {
                Ok(()) if full => {
                    self.deliveries.wait_for_space().await;
                    break;
                }
                Ok(()) => break,
                // librdkafka's queue is full: wait for reports, then retry.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    self.deliveries.not_sent(call, extra);
                    record = r;
                    if !self.deliveries.wait_for_space().await {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                Err((e, _)) => {
                    self.deliveries.not_sent(call, extra);
                    if deliveries::needs_new_producer(&e) {
                        self.deliveries.mark_stale_producer();
                    }
                    return Err(classify(&e, topic));
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
        Box::pin(async move { lookup.await.map(|_| ()).map_err(|message| SinkError::retryable(BACKEND, message)) })
    }

    fn close(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            let producer = self.producer.clone();
            let timeout = self.timeout;
            tokio::task::spawn_blocking(move || producer.flush(timeout))
                .await
                .map_err(|e| SinkError::retryable(BACKEND, "flush failed").because(e))?
                .map_err(|e| SinkError::retryable(BACKEND, "flush failed").because(e))
        })
    }
}
