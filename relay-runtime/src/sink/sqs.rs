//! AWS SQS sink (`aws-sdk-sqs`), for SQS and SQS-compatible servers (`endpoint_url`).
//!
//! A batch goes out as `SendMessageBatch` calls of up to 10 entries, several in flight on
//! standard queues; on FIFO queues (`….fifo`) one at a time so each message group keeps outbox
//! order. Entries that failed inside a successful call are sent again on their own (only those),
//! a sender fault is a permanent error naming the message. FIFO messages carry
//! `MessageDeduplicationId` = the dedup key (SQS drops a repeat within 5 minutes) and
//! `MessageGroupId` from a template (default the stream table). Every message carries the
//! attributes `pgtrickle-op`, `pgtrickle-dedup-key`, `pgtrickle-outbox-id` and
//! `pgtrickle-full-refresh`; one over SQS's 256 KiB limit is a permanent error.

use std::time::Duration;

use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use sha2::{Digest, Sha256};

use super::{BuildError, Published, Sink, SinkContext, SinkError};
use crate::backend::sqs::{check_queue, SqsSinkConfig};
use crate::backoff::Backoff;
use crate::error::report;
use crate::message::envelope::Envelope;
use crate::message::{RelayMessage, Template, TemplateNames};

const BACKEND: &str = "sqs";
/// SQS's limit for a message: body plus attribute names, types and values.
pub const MAX_MESSAGE_BYTES: usize = 262_144;
const ENTRIES_PER_CALL: usize = 10;
/// Attempts for entries that failed inside a successful `SendMessageBatch`.
const ENTRY_ATTEMPTS: u32 = 5;

pub struct SqsSink {
    client: aws_sdk_sqs::Client,
    queue_url: String,
    fifo: bool,
    group: Template,
    /// Names for the templates.
    names: TemplateNames,
    calls_in_flight: usize,
    envelope: Envelope,
}

pub async fn build(cfg: &SqsSinkConfig, ctx: &SinkContext<'_>) -> Result<Box<dyn Sink>, BuildError> {
    let (client, queue_url) = cfg.client.client().await?;
    let fifo = queue_url.ends_with(".fifo");
    let default_inflight = if fifo { 1 } else { 10 };
    let sink = SqsSink {
        envelope: ctx.envelope.clone(),
        client,
        fifo,
        group: match &cfg.message_group_id {
            Some(t) => t.0.clone(),
            None => Template::parse("{stream_table}")
                .map_err(|e| BuildError::option(BACKEND, "message_group_id", e.to_string()))?,
        },
        names: ctx.names.clone(),
        calls_in_flight: cfg.max_in_flight.map_or(default_inflight, |n| n.get() as usize),
        queue_url,
    };
    if sink.fifo && sink.calls_in_flight > 1 {
        return Err(BuildError::option(
            BACKEND,
            "max_in_flight",
            "a FIFO queue takes one SendMessageBatch at a time (ordering)",
        ));
    }
    check_queue(&sink.client, &sink.queue_url).await?;
    Ok(Box::new(sink))
}

/// A FIFO deduplication id: the dedup key, or its SHA-256 when longer than SQS's 128 characters.
fn deduplication_id(key: &str) -> String {
    if key.len() <= 128 {
        key.to_owned()
    } else {
        hex::encode(Sha256::digest(key.as_bytes()))
    }
}

fn attribute(value: &str) -> Result<MessageAttributeValue, SinkError> {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .map_err(|e| SinkError::permanent(BACKEND, "cannot build an attribute").because(e))
}

impl SqsSink {
    fn entry(&self, index: usize, m: &RelayMessage) -> Result<SendMessageBatchRequestEntry, SinkError> {
        // Only JSON text was written.
        let body = String::from_utf8(self.envelope.body(m))
            .map_err(|_| SinkError::permanent(BACKEND, format!("message {} is not UTF-8", m.dedup_key)))?;
        // The relay's own JSON keeps its five attributes; an envelope says what the body is
        // (SQS has no CloudEvents binding: events are structured).
        let content_type = (!self.envelope.is_native()).then(|| self.envelope.content_type());
        let outbox_id = m.outbox_id.unwrap_or(0).to_string();
        let attrs = [
            ("pgtrickle-op", m.op.as_str()),
            ("pgtrickle-dedup-key", m.dedup_key.as_str()),
            ("pgtrickle-outbox-id", outbox_id.as_str()),
            ("pgtrickle-full-refresh", if m.is_full_refresh { "true" } else { "false" }),
            ("traceparent", &*m.traceparent),
        ];
        let size = body.len()
            + attrs.iter().map(|(k, v)| k.len() + "String".len() + v.len()).sum::<usize>()
            + content_type.map_or(0, |c| "content-type".len() + "String".len() + c.len());
        if size > MAX_MESSAGE_BYTES {
            return Err(SinkError::permanent(BACKEND, format!(
                    "message {} is {size} bytes, over SQS's limit of {MAX_MESSAGE_BYTES} (256 KiB); shrink the row or relay this stream table to another sink",
                    m.dedup_key
                )));
        }
        let mut e = SendMessageBatchRequestEntry::builder().id(index.to_string()).message_body(body);
        for (k, v) in attrs {
            e = e.message_attributes(k, attribute(v)?);
        }
        if let Some(c) = content_type {
            e = e.message_attributes("content-type", attribute(c)?);
        }
        if self.fifo {
            e = e
                .message_group_id(self.group.render(&m.vars(&self.names)))
                .message_deduplication_id(deduplication_id(&m.dedup_key));
        }
        e.build().map_err(|e| SinkError::permanent(BACKEND, "cannot build a message").because(e))
    }
}

/// Sends entries with `SendMessageBatch`; entries that failed inside a successful call are sent
/// again (only those), a sender fault is permanent.
async fn send_call(
    client: aws_sdk_sqs::Client,
    queue_url: String,
    mut entries: Vec<SendMessageBatchRequestEntry>,
    keys: Vec<String>,
) -> Result<u64, SinkError> {
    let total = entries.len() as u64;
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(1600));
    for attempt in 1..=ENTRY_ATTEMPTS {
        let out =
            client.send_message_batch().queue_url(&queue_url).set_entries(Some(entries.clone())).send().await.map_err(
                |e| {
                    let text = DisplayErrorContext(&e).to_string();
                    match e.as_service_error() {
                        Some(s) if s.is_batch_request_too_long() => SinkError::permanent(
                            BACKEND,
                            format!("a SendMessageBatch to {queue_url} is over SQS's 256 KiB limit: {text}"),
                        ),
                        _ => SinkError::retryable(BACKEND, format!("SendMessageBatch to {queue_url} failed: {text}")),
                    }
                },
            )?;
        if out.failed().is_empty() {
            return Ok(total);
        }
        if let Some(f) = out.failed().iter().find(|f| f.sender_fault()) {
            let key = f.id().parse::<usize>().ok().and_then(|i| keys.get(i)).map_or("?", String::as_str);
            return Err(SinkError::permanent(
                BACKEND,
                format!("SQS rejected message {key}: {} {}", f.code(), f.message().unwrap_or_default()),
            ));
        }
        let failed: std::collections::HashSet<&str> = out.failed().iter().map(|f| f.id()).collect();
        tracing::debug!(queue = %queue_url, failed = failed.len(), attempt, "SendMessageBatch entries failed; sending those again");
        entries.retain(|e| failed.contains(e.id()));
        tokio::time::sleep(backoff.next_wait()).await;
    }
    Err(SinkError::retryable(
        BACKEND,
        format!("{} entries of a SendMessageBatch to {queue_url} kept failing", entries.len()),
    ))
}

impl Sink for SqsSink {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn publish<'a>(&'a mut self, batch: &'a [RelayMessage]) -> BoxFuture<'a, Result<Published, SinkError>> {
        Box::pin(async move {
            let mut done = Published::default();
            let mut calls = FuturesUnordered::new();
            for chunk in batch.chunks(ENTRIES_PER_CALL) {
                let entries = chunk.iter().enumerate().map(|(i, m)| self.entry(i, m)).collect::<Result<Vec<_>, _>>()?;
                let keys = chunk.iter().map(|m| m.dedup_key.clone()).collect();
                calls.push(send_call(self.client.clone(), self.queue_url.clone(), entries, keys));
                while calls.len() >= self.calls_in_flight {
                    if let Some(r) = calls.next().await {
                        done.confirmed += r?;
                    }
                }
            }
            while let Some(r) = calls.next().await {
                done.confirmed += r?;
            }
            Ok(done)
        })
    }

    fn health(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            check_queue(&self.client, &self.queue_url).await.map_err(|e| SinkError::retryable(BACKEND, report(&e)))
        })
    }

    fn close(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::deduplication_id;

    #[test]
    fn long_dedup_keys_are_hashed_to_fit_sqs() {
        assert_eq!(deduplication_id("outbox_orders:1:0"), "outbox_orders:1:0");
        let long = format!("{}:1:0", "t".repeat(200));
        let id = deduplication_id(&long);
        assert_eq!(id.len(), 64);
        assert_eq!(id, deduplication_id(&long), "stable across redelivery");
    }
}
