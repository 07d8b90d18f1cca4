//! Reverse sources: where inbox messages come from. One file per backend, behind its feature.
//!
//! A source hands out a batch, and acknowledges it only when the runner says every message of it
//! was durably written to the inbox (or to the dead-letter table) — never before. A batch that
//! was not stored is given back for redelivery. Every message carries a deterministic identity:
//! its own id when it has one, else a broker coordinate that is the same on every redelivery.

pub mod envelope;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "sqs")]
pub mod sqs;
#[cfg(feature = "webhook")]
pub mod webhook;

use std::time::Duration;

use futures::future::BoxFuture;

use crate::backend::BuildError;
use crate::config::{ReverseSpec, SourceConfig};
use crate::error::Cause;

/// One message as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    /// The message's own id (`Nats-Msg-Id`, `Idempotency-Key`, AMQP `message_id`), if any.
    pub id: Option<String>,
    /// A broker coordinate stable across redelivery (`nats:<stream>:<seq>`, …).
    pub coordinate: String,
    /// Subject, topic or routing key.
    pub subject: Option<String>,
    /// A message key (Kafka), used as the aggregate id when no payload field is configured.
    pub key: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The message has no value at all — a Kafka record with a null value, a tombstone — as
    /// opposed to an empty one.
    pub null_body: bool,
}

impl Incoming {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// What became of one message of a batch, for sources that answer a sender (HTTP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Stored,
    Duplicate,
    /// Nothing to store (a Kafka tombstone): acknowledged, counted neither stored nor dead.
    Skipped,
    DeadLettered(String),
}

/// What the backend's library reported is kept as the `source()` (written out by
/// [`crate::error::report`]).
#[derive(Debug, Clone, thiserror::Error)]
pub enum SourceError {
    #[error("{backend}: {message} (will retry)")]
    Retryable {
        backend: &'static str,
        message: String,
        #[source]
        cause: Option<Cause>,
    },
    #[error("{backend}: {message}")]
    Permanent {
        backend: &'static str,
        message: String,
        #[source]
        cause: Option<Cause>,
    },
}

impl SourceError {
    /// Retrying can help (the target is down, busy, or answered with a transient error).
    pub fn retryable(backend: &'static str, message: impl Into<String>) -> Self {
        SourceError::Retryable { backend, message: message.into(), cause: None }
    }

    /// The pipeline needs a change first.
    pub fn permanent(backend: &'static str, message: impl Into<String>) -> Self {
        SourceError::Permanent { backend, message: message.into(), cause: None }
    }

    /// What the library reported, with its type (`downcast_ref`).
    pub fn cause(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        match self {
            SourceError::Retryable { cause, .. } | SourceError::Permanent { cause, .. } => cause.as_deref(),
        }
    }

    /// The same error, with what the library reported as its cause.
    pub fn because(mut self, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        match &mut self {
            SourceError::Retryable { cause, .. } | SourceError::Permanent { cause, .. } => {
                *cause = Some(std::sync::Arc::new(e))
            }
        }
        self
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, SourceError::Retryable { .. })
    }

    pub fn kind(&self) -> &'static str {
        match self {
            SourceError::Retryable { .. } => "retryable",
            SourceError::Permanent { .. } => "permanent",
        }
    }
}

pub trait Source: Send {
    fn name(&self) -> &'static str;

    /// Waits up to `wait` for messages and returns up to `max` of them (none on a quiet source).
    /// The previous batch must have been acked or nacked.
    fn receive(&mut self, max: usize, wait: Duration) -> BoxFuture<'_, Result<Vec<Incoming>, SourceError>>;

    /// Every message of the last batch is durably stored or dead-lettered (`outcomes`, in batch
    /// order): acknowledge all of them.
    fn ack<'a>(&'a mut self, outcomes: &'a [Outcome]) -> BoxFuture<'a, Result<(), SourceError>>;

    /// The last batch was not stored: let the broker (or sender) deliver it again.
    fn nack<'a>(&'a mut self, reason: &'a str) -> BoxFuture<'a, ()>;

    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// What a source may need to know about its pipeline.
#[derive(Debug, Clone, Copy)]
pub struct SourceContext<'a> {
    pub pipeline: &'a str,
}

/// Builds the source a reverse pipeline asks for.
pub async fn build(spec: &ReverseSpec, ctx: &SourceContext<'_>) -> Result<Box<dyn Source>, BuildError> {
    let _ = ctx;
    let source: &SourceConfig = &spec.source;
    match source {
        #[cfg(feature = "nats")]
        SourceConfig::Nats(c) => nats::build(c, ctx).await,
        #[cfg(feature = "webhook")]
        SourceConfig::Webhook(c) => webhook::build(c, ctx).await,
        #[cfg(feature = "redis")]
        SourceConfig::Redis(c) => redis::build(c, ctx).await,
        #[cfg(feature = "rabbitmq")]
        SourceConfig::Rabbitmq(c) => rabbitmq::build(c, ctx).await,
        #[cfg(feature = "kafka")]
        SourceConfig::Kafka(c) => kafka::build(c, ctx).await,
        #[cfg(feature = "sqs")]
        SourceConfig::Sqs(c) => sqs::build(c, ctx).await,
        // Reached only for backends left out of this build.
        #[allow(unreachable_patterns)]
        _ => Err(BuildError::NotCompiled(spec.source_type)),
    }
}
