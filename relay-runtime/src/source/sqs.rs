//! AWS SQS source: long polling, and `DeleteMessageBatch` of every stored message.
//!
//! A batch is gathered with `ReceiveMessage` calls of up to 10 (long polling up to the runner's
//! wait for the first, then only what is there), stays invisible for `visibility_timeout`
//! seconds while it is written, and is deleted (10 per call, failed entries retried) after the
//! inbox commit. A batch that was not stored is made visible again at once
//! (`ChangeMessageVisibilityBatch` to 0). Event ids: the `pgtrickle-dedup-key` message attribute
//! (what the SQS sink writes), else `sqs:<MessageId>` (stable across redelivery).

use std::time::Duration;

use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, MessageSystemAttributeName,
};
use futures::future::BoxFuture;

use super::{Incoming, Outcome, Source, SourceContext, SourceError};
use crate::backend::sqs::{check_queue, SqsSourceConfig};
use crate::backend::BuildError;

const BACKEND: &str = "sqs";

pub struct SqsSource {
    client: aws_sdk_sqs::Client,
    queue_url: String,
    visibility_timeout: i32,
    /// Receipt handles of the current batch.
    pending: Vec<String>,
}

fn retryable(message: String) -> SourceError {
    SourceError::retryable(BACKEND, message)
}

pub async fn build(cfg: &SqsSourceConfig, ctx: &SourceContext<'_>) -> Result<Box<dyn Source>, BuildError> {
    let _ = ctx;
    let (client, queue_url) = cfg.client.client().await?;
    check_queue(&client, &queue_url).await?;
    Ok(Box::new(SqsSource {
        client,
        queue_url,
        visibility_timeout: cfg.visibility_timeout.map_or(30, |n| n.get() as i32),
        pending: Vec::new(),
    }))
}

impl Source for SqsSource {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn receive(&mut self, max: usize, wait: Duration) -> BoxFuture<'_, Result<Vec<Incoming>, SourceError>> {
        Box::pin(async move {
            self.pending.clear();
            let mut out = Vec::new();
            let started = tokio::time::Instant::now();
            // Gather at most `wait` past the first poll: a batch is what arrived by then.
            while out.len() < max && (out.is_empty() || started.elapsed() < wait) {
                // Long poll for the first messages only; then take what is already there.
                let wait_s = if out.is_empty() { wait.as_secs().clamp(1, 20) as i32 } else { 0 };
                let r = self
                    .client
                    .receive_message()
                    .queue_url(&self.queue_url)
                    .max_number_of_messages((max - out.len()).min(10) as i32)
                    .wait_time_seconds(wait_s)
                    .visibility_timeout(self.visibility_timeout)
                    .message_attribute_names("All")
                    .message_system_attribute_names(MessageSystemAttributeName::All)
                    .send()
                    .await
                    .map_err(|e| {
                        retryable(format!("ReceiveMessage from {} failed: {}", self.queue_url, DisplayErrorContext(&e)))
                    })?;
                let msgs = r.messages();
                if msgs.is_empty() {
                    break;
                }
                for m in msgs {
                    let mut headers: Vec<(String, String)> = m
                        .message_attributes()
                        .map(|a| {
                            a.iter().filter_map(|(k, v)| v.string_value().map(|s| (k.clone(), s.to_owned()))).collect()
                        })
                        .unwrap_or_default();
                    if let Some(group) = m.attributes().and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId))
                    {
                        headers.push(("sqs-message-group-id".to_owned(), group.clone()));
                    }
                    let id = headers
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case("pgtrickle-dedup-key"))
                        .map(|(_, v)| v.clone());
                    out.push(Incoming {
                        id,
                        coordinate: format!("sqs:{}", m.message_id().unwrap_or_default()),
                        subject: None,
                        key: None,
                        headers,
                        body: m.body().unwrap_or_default().as_bytes().to_vec(),
                        null_body: false,
                    });
                    if let Some(h) = m.receipt_handle() {
                        self.pending.push(h.to_owned());
                    }
                }
            }
            Ok(out)
        })
    }

    fn ack<'a>(&'a mut self, _outcomes: &'a [Outcome]) -> BoxFuture<'a, Result<(), SourceError>> {
        Box::pin(async move {
            let handles = std::mem::take(&mut self.pending);
            for chunk in handles.chunks(10) {
                let mut entries: Vec<DeleteMessageBatchRequestEntry> = chunk
                    .iter()
                    .enumerate()
                    .filter_map(|(i, h)| {
                        DeleteMessageBatchRequestEntry::builder().id(i.to_string()).receipt_handle(h).build().ok()
                    })
                    .collect();
                for _attempt in 0..3 {
                    let r = self
                        .client
                        .delete_message_batch()
                        .queue_url(&self.queue_url)
                        .set_entries(Some(entries.clone()))
                        .send()
                        .await
                        .map_err(|e| retryable(format!("DeleteMessageBatch failed: {}", DisplayErrorContext(&e))))?;
                    if r.failed().is_empty() {
                        break;
                    }
                    let failed: std::collections::HashSet<&str> = r.failed().iter().map(|f| f.id()).collect();
                    entries.retain(|e| failed.contains(e.id()));
                }
            }
            Ok(())
        })
    }

    fn nack<'a>(&'a mut self, _reason: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let handles = std::mem::take(&mut self.pending);
            for chunk in handles.chunks(10) {
                let entries: Vec<ChangeMessageVisibilityBatchRequestEntry> = chunk
                    .iter()
                    .enumerate()
                    .filter_map(|(i, h)| {
                        ChangeMessageVisibilityBatchRequestEntry::builder()
                            .id(i.to_string())
                            .receipt_handle(h)
                            .visibility_timeout(0)
                            .build()
                            .ok()
                    })
                    .collect();
                // Failing this only delays redelivery until the visibility timeout ends.
                let _ = self
                    .client
                    .change_message_visibility_batch()
                    .queue_url(&self.queue_url)
                    .set_entries(Some(entries))
                    .send()
                    .await;
            }
        })
    }
}
