//! Forward sinks: where relay messages go. One file per backend, each behind its Cargo feature.
//!
//! A sink publishes a batch and returns only when the target confirmed every message of it;
//! the runner commits the outbox offset after that and never before. Failures say whether
//! retrying can help ([`SinkError::Retryable`]) or the pipeline needs a change first
//! ([`SinkError::Permanent`]).

#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "pg-inbox")]
pub mod pg_inbox;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "sqs")]
pub mod sqs;
#[cfg(feature = "stdout")]
pub mod stdout;
#[cfg(feature = "webhook")]
pub mod webhook;
#[cfg(any(feature = "nats", feature = "kafka", feature = "rabbitmq"))]
pub mod window;

use futures::future::BoxFuture;

use crate::config::{SinkConfig, SinkKind, SinkSpec};
use crate::error::Cause;
use crate::message::envelope::Envelope;
use crate::message::RelayMessage;

/// What the backend's library reported is kept as the `source()` (written out by
/// [`crate::error::report`]).
#[derive(Debug, Clone, thiserror::Error)]
pub enum SinkError {
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

impl SinkError {
    /// Retrying can help (the target is down, busy, or answered with a transient error).
    pub fn retryable(backend: &'static str, message: impl Into<String>) -> Self {
        SinkError::Retryable { backend, message: message.into(), cause: None }
    }

    /// The pipeline needs a change first.
    pub fn permanent(backend: &'static str, message: impl Into<String>) -> Self {
        SinkError::Permanent { backend, message: message.into(), cause: None }
    }

    /// What the library reported, with its type (`downcast_ref`).
    pub fn cause(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        match self {
            SinkError::Retryable { cause, .. } | SinkError::Permanent { cause, .. } => cause.as_deref(),
        }
    }

    /// The same error, with what the library reported as its cause.
    pub fn because(mut self, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        match &mut self {
            SinkError::Retryable { cause, .. } | SinkError::Permanent { cause, .. } => {
                *cause = Some(std::sync::Arc::new(e))
            }
        }
        self
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, SinkError::Retryable { .. })
    }

    /// A stable, low-cardinality label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkError::Retryable { .. } => "retryable",
            SinkError::Permanent { .. } => "permanent",
        }
    }
}

pub trait Sink: Send {
    /// The backend name used in logs, metrics and status (`stdout`, `file`, `nats`, …).
    fn name(&self) -> &'static str;

    /// Publishes a batch. `Ok` means the target confirmed every message of it — or, for a
    /// [pipelined](Sink::pipelined) sink, that it was sent and every message of *earlier* calls
    /// was confirmed. After an error nothing unconfirmed may be assumed delivered.
    fn publish<'a>(&'a mut self, batch: &'a [RelayMessage]) -> BoxFuture<'a, Result<Published, SinkError>>;

    /// Whether `publish` may return before its own messages are confirmed. The runner then
    /// commits a batch once a later `publish` or a [`flush`](Sink::flush) succeeded.
    fn pipelined(&self) -> bool {
        false
    }

    /// Waits until every message sent so far is confirmed.
    fn flush(&mut self) -> BoxFuture<'_, Result<Published, SinkError>> {
        Box::pin(async { Ok(Published::default()) })
    }

    /// Forgets unconfirmed sends after an error; the runner sends them again.
    fn reset(&mut self) {}

    /// Checks the target while the pipeline is idle, so that an outage shows as `degraded`
    /// before the next message needs it.
    fn health(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async { Ok(()) })
    }

    /// Flushes and releases the target.
    fn close(&mut self) -> BoxFuture<'_, Result<(), SinkError>>;
}

/// What the target reported for a confirmed batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Published {
    /// Messages newly confirmed by this call.
    pub confirmed: u64,
    /// Messages the target recognised as already delivered (JetStream duplicate window, inbox
    /// `ON CONFLICT`) and did not store again.
    pub duplicates: u64,
}

pub use crate::backend::BuildError;

/// What a sink may need to know about its pipeline.
#[derive(Debug, Clone, Copy)]
pub struct SinkContext<'a> {
    pub pipeline: &'a str,
    pub subject_template: &'a str,
    /// The relay's own database, the default target of the `pg-inbox` sink.
    pub postgres_url: &'a str,
    /// The names sink-side templates (topics, stream keys, routing keys, message groups) use.
    pub names: &'a crate::message::TemplateNames,
    /// The pipeline's outbox epoch scope (a uuid, `outbox::epoch`): names sink-side dedup
    /// state so that another epoch, database or relay group never suppresses new messages.
    pub dedup_scope: &'a str,
    /// The instance's pool for sinks that write into the relay's own database (`pg-inbox`),
    /// so that they count within `--max-db-connections`.
    pub own_database: Option<&'a crate::catalog::pool::WorkPool>,
    /// What each message is on the wire: every sink writes bodies (and, in CloudEvents binary
    /// mode, headers) through it.
    pub envelope: &'a Envelope,
}

/// Builds the sink a pipeline asks for.
pub async fn build(spec: &SinkSpec, ctx: &SinkContext<'_>) -> Result<Box<dyn Sink>, BuildError> {
    let _ = ctx; // unused when only stdout is compiled in
    match &spec.config {
        #[cfg(feature = "nats")]
        SinkConfig::Nats(c) => nats::build(c, ctx).await,
        #[cfg(feature = "pg-inbox")]
        SinkConfig::PgInbox(c) => pg_inbox::build(c, ctx).await,
        #[cfg(feature = "webhook")]
        SinkConfig::Webhook(c) => webhook::build(c, ctx).await,
        #[cfg(feature = "redis")]
        SinkConfig::Redis(c) => redis::build(c, ctx).await,
        #[cfg(feature = "kafka")]
        SinkConfig::Kafka(c) => kafka::build(c, ctx).await,
        #[cfg(feature = "rabbitmq")]
        SinkConfig::Rabbitmq(c) => rabbitmq::build(c, ctx).await,
        #[cfg(feature = "sqs")]
        SinkConfig::Sqs(c) => sqs::build(c, ctx).await,
        #[cfg(feature = "stdout")]
        SinkConfig::Stdout(_) | SinkConfig::File(_) => stdout::build(&spec.config, ctx).await,
        // Reached only for backends left out of this build.
        #[allow(unreachable_patterns)]
        _ => Err(BuildError::NotCompiled(match spec.kind {
            SinkKind::PgInbox => "pg-inbox",
            SinkKind::Stdout | SinkKind::File => "stdout",
            k => k.as_str(),
        })),
    }
}
