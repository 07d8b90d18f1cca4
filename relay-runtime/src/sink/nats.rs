//! NATS JetStream sink.
//!
//! Publishes asynchronously with a window of outstanding acknowledgements (`max_in_flight`,
//! default 1024) instead of awaiting each ack — the difference is ~30× on one connection — and
//! confirms a batch only when JetStream acknowledged every message of it. Each message carries
//! `Nats-Msg-Id` = its dedup key, so a batch published again after a crash or a retry is
//! dropped by JetStream's duplicate window instead of being stored twice.
//!
//! A duplicate is confirmed only once the stored original is on the message's own subject (a
//! redelivery always is): another pipeline from the same outbox into the same stream uses the
//! same ids on other subjects, and JetStream would drop its messages while acknowledging them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::header::{HeaderMap, HeaderName, NATS_MESSAGE_ID};
use async_nats::jetstream::context::{CreateStreamErrorKind, GetStreamErrorKind, PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::stream::RawMessageErrorKind;
use async_nats::jetstream::{self, stream};
use async_nats::Subject;
use futures::future::BoxFuture;

use super::window::AckWindow;
use super::{BuildError, Published, Sink, SinkContext, SinkError};
use crate::backend::nats::{MsgId, NatsSinkConfig};
use crate::message::envelope::{Binding, Envelope};
use crate::message::RelayMessage;

const BACKEND: &str = "nats";

pub struct NatsSink {
    client: async_nats::Client,
    /// Outstanding acknowledgements across `publish` calls: the next batch is sent while the
    /// previous one is still being acknowledged.
    window: AckWindow,
    envelope: Envelope,
    /// `<pipeline>/` when `msg_id` is `pipeline`: prefixed to every `Nats-Msg-Id`.
    msg_id_prefix: Option<String>,
    /// The JetStream context, shared with the ack futures (which read the original of a message
    /// acknowledged as a duplicate).
    originals: Arc<Originals>,
}

/// What the sink publishes with and [`check_duplicate`] reads originals with.
struct Originals {
    js: jetstream::Context,
    pipeline: String,
    /// An original could not be read once (logged once per sink).
    unreadable_logged: AtomicBool,
}

pub async fn build(cfg: &NatsSinkConfig, ctx: &SinkContext<'_>) -> Result<Box<dyn Sink>, BuildError> {
    let window = cfg.max_in_flight.map_or(1024, |n| n.get() as usize);
    let ack_timeout = cfg.ack_timeout_ms.map_or(Duration::from_secs(10), |n| n.millis());
    let client = cfg.connection.connect(format!("pgtrickle-relay {}", ctx.pipeline)).await?;
    let js = jetstream::ContextBuilder::new().timeout(ack_timeout).max_ack_inflight(window).build(client.clone());

    if let Some(name) = &cfg.stream {
        ensure_stream(&js, cfg, name.as_str(), ctx).await?;
    }
    let msg_id_prefix = match cfg.msg_id.map(|c| c.0) {
        Some(MsgId::Pipeline) => Some(format!("{}/", ctx.pipeline)),
        Some(MsgId::DedupKey) | None => None,
    };
    Ok(Box::new(NatsSink {
        client,
        originals: Arc::new(Originals {
            js,
            pipeline: ctx.pipeline.to_owned(),
            unreadable_logged: AtomicBool::new(false),
        }),
        window: AckWindow::new(window),
        envelope: ctx.envelope.clone(),
        msg_id_prefix,
    }))
}

/// Checks that the configured stream exists, or creates it when `create_stream` is true.
async fn ensure_stream(
    js: &jetstream::Context,
    cfg: &NatsSinkConfig,
    name: &str,
    ctx: &SinkContext<'_>,
) -> Result<(), BuildError> {
    match js.get_stream(name).await {
        Ok(_) => Ok(()),
        Err(e) => {
            let missing = matches!(e.kind(), GetStreamErrorKind::JetStream(ref j) if j.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND);
            if !missing {
                return Err(BuildError::unreachable(BACKEND, format!("cannot look up stream '{name}'")).because(e));
            }
            if !cfg.create_stream.is_some_and(|f| f.0) {
                return Err(BuildError::open(BACKEND, format!(
                        "JetStream stream '{name}' does not exist; create it (subjects covering '{}') or set \"create_stream\": true",
                        ctx.subject_template
                    )));
            }
            let subjects = cfg
                .stream_subjects
                .as_ref()
                .map_or_else(|| vec![subject_filter(ctx.subject_template)], |l| l.0.clone());
            let config = stream::Config {
                name: name.to_owned(),
                subjects: subjects.clone(),
                duplicate_window: Duration::from_secs(cfg.duplicate_window_seconds.map_or(120, |n| n.get())),
                ..Default::default()
            };
            match js.create_stream(config).await {
                Ok(_) => {
                    tracing::info!(stream = name, ?subjects, "created JetStream stream");
                    Ok(())
                }
                // Another relay created it at the same moment.
                Err(e) if matches!(e.kind(), CreateStreamErrorKind::JetStream(ref j) if j.error_code() == async_nats::jetstream::ErrorCode::STREAM_NAME_EXIST) => {
                    Ok(())
                }
                Err(e) => {
                    Err(BuildError::open(BACKEND, format!("cannot create stream '{name}' with subjects {subjects:?}"))
                        .because(e))
                }
            }
        }
    }
}

/// The subject filter a template can produce: every token holding a variable becomes `*`
/// (`pgtrickle.{stream_table}.{op}` → `pgtrickle.*.*`).
pub fn subject_filter(template: &str) -> String {
    template.split('.').map(|t| if t.contains('{') { "*" } else { t }).collect::<Vec<_>>().join(".")
}

fn classify(e: &async_nats::jetstream::context::PublishError, subject: &str) -> SinkError {
    match e.kind() {
        PublishErrorKind::StreamNotFound => SinkError::permanent(BACKEND, format!("no JetStream stream captures subject '{subject}'; create one whose subjects include it, or set \"nats_stream\" and \"create_stream\": true")),
        PublishErrorKind::WrongLastMessageId | PublishErrorKind::WrongLastSequence => {
            SinkError::permanent(BACKEND, format!("publish to '{subject}' rejected: {e}"))
        }
        _ => SinkError::retryable(BACKEND, format!("publish to '{subject}' failed: {e}")),
    }
}

/// Waits for a message's acknowledgement; `true` when JetStream reported a duplicate, which is
/// confirmed only after [`check_duplicate`].
async fn confirm(ack: PublishAckFuture, subject: Subject, originals: Arc<Originals>) -> Result<bool, SinkError> {
    let ack =
        ack.await.map_err(|e| SinkError::retryable(BACKEND, "JetStream did not acknowledge a message").because(e))?;
    if ack.duplicate {
        check_duplicate(&originals, &ack.stream, ack.sequence, &subject).await?;
    }
    Ok(ack.duplicate)
}

/// JetStream acknowledges a message whose `Nats-Msg-Id` it saw within the duplicate window as a
/// duplicate, with the sequence of the stored original, and does not store it. A redelivery
/// (after a crash, a retry, a failover) goes to the subject of its original. An original on
/// another subject was published by someone else with the same id — typically another pipeline
/// from the same outbox into this stream — so this message was dropped: confirming it would
/// commit past a message no consumer will ever see. An original that is gone (a work-queue
/// consumer took it, limits removed it) cannot be compared and is taken as a redelivery; so is
/// one that cannot be read (a user without `$JS.API.STREAM.MSG.GET` permission, a timeout),
/// said once in the log: such collisions repeat on every message, so the next check finds them.
async fn check_duplicate(
    originals: &Originals,
    stream: &str,
    sequence: u64,
    subject: &Subject,
) -> Result<(), SinkError> {
    let original = match originals.js.get_stream_no_info(stream).await {
        Ok(s) => s
            .get_raw_message(sequence)
            .await
            .map_err(|e| (e.kind() == RawMessageErrorKind::NoMessageFound, e.to_string())),
        Err(e) => Err((false, e.to_string())),
    };
    match original {
        Ok(original) if original.subject == *subject => Ok(()),
        Ok(original) => {
            let id = original.headers.get(NATS_MESSAGE_ID).map_or("", |v| v.as_str());
            Err(SinkError::permanent(BACKEND, format!(
                "JetStream stream '{stream}' dropped a message for '{subject}' as a duplicate of its message {sequence} on '{}' \
                 (the same Nats-Msg-Id '{id}'): another publisher, such as another pipeline from this outbox, uses this \
                 stream with the same ids. Nothing is committed past the dropped message. Give each pipeline its own \
                 stream, or set \"nats_msg_id\": \"pipeline\" on the pipelines that share it",
                original.subject
            )))
        }
        Err((true, _)) => Ok(()),
        Err((false, error)) => {
            if !originals.unreadable_logged.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    pipeline = %originals.pipeline, stream, sequence, %error,
                    "cannot read the original of a message JetStream reported as a duplicate, so cannot tell a redelivery from another publisher's message with the same Nats-Msg-Id; taken as a redelivery (allow this user $JS.API.STREAM.MSG.GET.{stream})"
                );
            }
            Ok(())
        }
    }
}

impl NatsSink {
    fn headers(&self, m: &RelayMessage) -> HeaderMap {
        // Static names: a name given as `&str` is copied into every message's map.
        const OP: HeaderName = HeaderName::from_static("Pgtrickle-Op");
        const FULL_REFRESH: HeaderName = HeaderName::from_static("Pgtrickle-Full-Refresh");
        const OUTBOX_ID: HeaderName = HeaderName::from_static("Pgtrickle-Outbox-Id");
        const CONTENT_TYPE: HeaderName = HeaderName::from_static("Content-Type");
        const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
        let mut h = HeaderMap::new();
        match &self.msg_id_prefix {
            None => h.insert(NATS_MESSAGE_ID, m.dedup_key.as_str()),
            Some(prefix) => h.insert(NATS_MESSAGE_ID, [prefix.as_str(), &m.dedup_key].concat()),
        }
        h.insert(OP, m.op.as_str());
        if m.is_full_refresh {
            h.insert(FULL_REFRESH, "true");
        }
        if let Some(id) = m.outbox_id {
            h.insert(OUTBOX_ID, itoa::Buffer::new().format(id));
        }
        h.insert(CONTENT_TYPE, self.envelope.content_type());
        h.insert(TRACEPARENT, &*m.traceparent);
        self.envelope.attributes(m, Binding::Nats, |k, v| h.insert(HeaderName::from_static(k), v));
        h
    }
}

impl Sink for NatsSink {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn publish<'a>(&'a mut self, batch: &'a [RelayMessage]) -> BoxFuture<'a, Result<Published, SinkError>> {
        Box::pin(async move {
            let call = self.window.begin();
            let mut done = Published::default();
            for m in batch {
                let body = self.envelope.body(m);
                let subject = Subject::from(m.subject.clone());
                let ack = self
                    .originals
                    .js
                    .publish_with_headers(subject.clone(), self.headers(m), body.into())
                    .await
                    .map_err(|e| classify(&e, &m.subject))?;
                let ack = Box::pin(confirm(ack, subject, self.originals.clone()));
                self.window.push(call, ack, &mut done).await?;
            }
            // Everything sent by earlier calls must be confirmed before this call returns.
            self.window.settle_before(call, &mut done).await?;
            Ok(done)
        })
    }

    fn pipelined(&self) -> bool {
        true
    }

    fn flush(&mut self) -> BoxFuture<'_, Result<Published, SinkError>> {
        Box::pin(self.window.flush())
    }

    fn reset(&mut self) {
        self.window.reset();
    }

    fn health(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            match self.client.connection_state() {
                async_nats::connection::State::Connected => Ok(()),
                state => Err(SinkError::retryable(BACKEND, format!("not connected to NATS ({state})"))),
            }
        })
    }

    fn close(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            self.client.flush().await.map_err(|e| SinkError::retryable(BACKEND, "flush failed").because(e))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::subject_filter;

    #[test]
    fn subject_filters_replace_variable_tokens() {
        assert_eq!(subject_filter("pgtrickle.{stream_table}.{op}"), "pgtrickle.*.*");
        assert_eq!(subject_filter("orders.fixed"), "orders.fixed");
        assert_eq!(subject_filter("a.x{op}y"), "a.*");
    }
}
