//! Kafka source: a consumer group member with manual commits.
//!
//! Auto-commit and auto offset store are off. After the inbox commit, the next offset of every
//! partition in the batch is committed (synchronously) — for partitions still assigned: after a
//! rebalance a revoked partition's offsets are left to its new owner, which reads from the last
//! commit (and the event ids absorb the repeat). A batch that was not stored is given back by
//! seeking each of its partitions to the batch's first offset. Event ids: the
//! `pgtrickle-dedup-key` (what the Kafka sink writes), `idempotency-key` or `message-id` header,
//! else `kafka:<topic>:<partition>:<offset>`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::{Incoming, Outcome, Source, SourceContext, SourceError};
use crate::backend::fields::Text;
use crate::backend::kafka::{scrub, KafkaSourceConfig};
use crate::backend::BuildError;

const BACKEND: &str = "kafka";

/// Counts revocations, so a batch knows whether its partitions may have moved; notes when
/// librdkafka reports every broker down (a consumer then only waits, which would look like an
/// idle topic).
#[derive(Default)]
pub struct RebalanceGuard {
    revocations: AtomicU64,
    brokers_down: AtomicBool,
}

impl ClientContext for RebalanceGuard {
    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(error.rdkafka_error_code(), Some(RDKafkaErrorCode::AllBrokersDown)) {
            self.brokers_down.store(true, Ordering::SeqCst);
        }
        tracing::warn!(%error, reason, "librdkafka reported an error");
    }
}

impl ConsumerContext for RebalanceGuard {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            self.revocations.fetch_add(1, Ordering::SeqCst);
            tracing::info!(partitions = tpl.count(), "Kafka partitions revoked");
        }
    }
}

pub struct KafkaSource {
    consumer: Arc<StreamConsumer<RebalanceGuard>>,
    /// Per (topic, partition) of the current batch: first and last offset.
    pending: BTreeMap<(String, i32), (i64, i64)>,
    revocations_at_receive: u64,
    timeout: Duration,
}

fn retryable(message: String) -> SourceError {
    SourceError::retryable(BACKEND, message)
}

pub async fn build(cfg: &KafkaSourceConfig, ctx: &SourceContext<'_>) -> Result<Box<dyn Source>, BuildError> {
    let topics = cfg.topic.0.clone();
    if topics.is_empty() {
        return Err(BuildError::option(BACKEND, "topic", "names no topic"));
    }
    let mut config = cfg.client.base_config(ctx.pipeline);
    config
        .set("group.id", cfg.group_id.as_ref().map_or(ctx.pipeline, Text::as_str))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", cfg.auto_offset_reset.map_or("earliest", |c| c.0.as_str()))
        .set("session.timeout.ms", cfg.session_timeout_ms.map_or(10_000, |n| n.get()).to_string());
    cfg.client.passthrough(&mut config);
    let consumer: StreamConsumer<RebalanceGuard> =
        config.create_with_context(RebalanceGuard::default()).map_err(|e| {
            BuildError::option(BACKEND, "rdkafka", scrub(format!("invalid consumer setting: {e}"), &config))
        })?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&names)
        .map_err(|e| BuildError::open(BACKEND, scrub(format!("cannot subscribe to {topics:?}: {e}"), &config)))?;
    Ok(Box::new(KafkaSource {
        consumer: Arc::new(consumer),
        pending: BTreeMap::new(),
        revocations_at_receive: 0,
        timeout: Duration::from_secs(10),
    }))
}

fn incoming(m: &rdkafka::message::BorrowedMessage<'_>) -> Incoming {
    let mut headers = Vec::new();
    if let Some(h) = m.headers() {
        for h in h.iter() {
            headers.push((h.key.to_owned(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned()));
        }
    }
    let id = ["pgtrickle-dedup-key", "idempotency-key", "message-id"]
        .iter()
        .find_map(|n| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(n)).map(|(_, v)| v.clone()));
    Incoming {
        id,
        coordinate: format!("kafka:{}:{}:{}", m.topic(), m.partition(), m.offset()),
        subject: Some(m.topic().to_owned()),
        key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        headers,
        body: m.payload().unwrap_or_default().to_vec(),
        null_body: m.payload().is_none(),
    }
}

/// An error about reaching the brokers (not about a message or the group).
fn is_transport(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::Resolve
                | RDKafkaErrorCode::NetworkException
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::OperationTimedOut
        )
    )
}

impl KafkaSource {
    /// Asks the cluster for its metadata: `Ok` when a broker answers, which also ends the
    /// "every broker down" state.
    async fn probe(&self, wait: Duration) -> Result<(), SourceError> {
        let consumer = Arc::clone(&self.consumer);
        let probe = wait.clamp(Duration::from_millis(200), Duration::from_secs(2));
        let answered = tokio::task::spawn_blocking(move || consumer.fetch_metadata(None, probe))
            .await
            .map_err(|e| retryable(format!("broker probe failed: {e}")))?;
        if let Err(e) = answered {
            return Err(retryable(format!("no Kafka broker reachable ({e})")));
        }
        self.consumer.context().brokers_down.store(false, Ordering::SeqCst);
        Ok(())
    }
}

impl Source for KafkaSource {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn receive(&mut self, max: usize, wait: Duration) -> BoxFuture<'_, Result<Vec<Incoming>, SourceError>> {
        Box::pin(async move {
            self.pending.clear();
            if self.consumer.context().brokers_down.load(Ordering::SeqCst) {
                // Down until a broker answers again: one metadata request per receive.
                self.probe(wait).await?;
            }
            self.revocations_at_receive = self.consumer.context().revocations.load(Ordering::SeqCst);
            let mut out = Vec::new();
            let deadline = tokio::time::Instant::now() + wait;
            // A broker answered within this receive: connection errors still queued are stale.
            let mut answered = false;
            while out.len() < max {
                // After the first message, take only what arrives within a few milliseconds.
                let until =
                    if out.is_empty() { deadline } else { tokio::time::Instant::now() + Duration::from_millis(5) };
                let m = match tokio::time::timeout_at(until, self.consumer.recv()).await {
                    Err(_) => break,
                    Ok(Err(e)) => {
                        // librdkafka queues an error for each failed connection attempt and
                        // reconnects by itself: after an outage, the queue still holds the
                        // outage's errors. Backing off for each of them kept a recovered
                        // consumer idle for 40 s; those that a broker answering now contradicts
                        // are stale and skipped (until this receive's wait is over).
                        if is_transport(&e) {
                            answered = answered || self.probe(wait).await.is_ok();
                            if answered {
                                tracing::debug!(error = %e, "skipped a connection error queued during an outage (a broker answers)");
                                continue;
                            }
                        }
                        if out.is_empty() {
                            return Err(retryable(format!("receive failed: {e}")));
                        }
                        break;
                    }
                    Ok(Ok(m)) => m,
                };
                let e = self.pending.entry((m.topic().to_owned(), m.partition())).or_insert((m.offset(), m.offset()));
                e.1 = m.offset();
                out.push(incoming(&m));
            }
            Ok(out)
        })
    }

    fn ack<'a>(&'a mut self, _outcomes: &'a [Outcome]) -> BoxFuture<'a, Result<(), SourceError>> {
        Box::pin(async move {
            if self.pending.is_empty() {
                return Ok(());
            }
            let moved = self.consumer.context().revocations.load(Ordering::SeqCst) != self.revocations_at_receive;
            let assigned = if moved { self.consumer.assignment().ok() } else { None };
            let mut tpl = TopicPartitionList::new();
            for ((topic, partition), (_, last)) in std::mem::take(&mut self.pending) {
                if let Some(a) = &assigned {
                    if a.find_partition(&topic, partition).is_none() {
                        continue; // revoked meanwhile: its new owner reads it again
                    }
                }
                tpl.add_partition_offset(&topic, partition, Offset::Offset(last + 1))
                    .map_err(|e| retryable(format!("bad offset: {e}")))?;
            }
            if tpl.count() == 0 {
                return Ok(());
            }
            let consumer = Arc::clone(&self.consumer);
            tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync))
                .await
                .map_err(|e| retryable(format!("commit failed: {e}")))?
                .map_err(|e| retryable(format!("offset commit failed: {e}")))
        })
    }

    fn nack<'a>(&'a mut self, _reason: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let mut tpl = TopicPartitionList::new();
            for ((topic, partition), (first, _)) in std::mem::take(&mut self.pending) {
                let _ = tpl.add_partition_offset(&topic, partition, Offset::Offset(first));
            }
            if tpl.count() == 0 {
                return;
            }
            let consumer = Arc::clone(&self.consumer);
            let timeout = self.timeout;
            let r = tokio::task::spawn_blocking(move || consumer.seek_partitions(tpl, timeout)).await;
            if !matches!(r, Ok(Ok(_))) {
                tracing::warn!(
                    "could not rewind Kafka partitions; the batch comes back after the next rebalance or restart"
                );
            }
        })
    }
}
