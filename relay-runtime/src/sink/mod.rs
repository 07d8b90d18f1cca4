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
pub mod options;
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

use crate::config::{SinkKind, SinkSpec};
use crate::message::RelayMessage;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SinkError {
    #[error("{backend}: {message} (will retry)")]
    Retryable { backend: &'static str, message: String },
    #[error("{backend}: {message}")]
    Permanent { backend: &'static str, message: String },
}

impl SinkError {
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

/// Why a sink could not be built from its spec.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum BuildError {
    #[error("sink type '{0}' is not compiled into this binary; rebuild with `--features {0}`")]
    NotCompiled(&'static str),
    #[error("sink type '{0}' is not available in this version of pgtrickle-relay yet (available: stdout, file, nats, webhook, pg-inbox, redis, kafka, rabbitmq, sqs)")]
    NotYetAvailable(&'static str),
    #[error("{backend}: key '{key}': {message}")]
    Option { backend: &'static str, key: String, message: String },
    #[error("{backend}: {message}")]
    Open { backend: &'static str, message: String },
    /// The target could not be reached; retried with backoff, the pipeline is `degraded`.
    #[error("{backend}: {message}")]
    Unreachable { backend: &'static str, message: String },
}

impl BuildError {
    /// Whether waiting (not a config change) can fix this.
    pub fn is_transient(&self) -> bool {
        matches!(self, BuildError::Unreachable { .. })
    }
}

/// What a sink may need to know about its pipeline.
#[derive(Debug, Clone, Copy)]
pub struct SinkContext<'a> {
    pub pipeline: &'a str,
    pub subject_template: &'a str,
    /// The relay's own database, the default target of the `pg-inbox` sink.
    pub postgres_url: &'a str,
    /// The resolved stream and outbox table names, for sink-side templates (Redis keys).
    pub stream_table: &'a str,
    pub outbox_table: &'a str,
    /// The pipeline's outbox epoch scope (a uuid, `outbox::epoch`): names sink-side dedup
    /// state so that another epoch, database or relay group never suppresses new messages.
    pub dedup_scope: &'a str,
    /// The instance's pool for sinks that write into the relay's own database (`pg-inbox`),
    /// so that they count within `--max-db-connections`.
    pub own_database: Option<&'a crate::catalog::pool::WorkPool>,
}

/// Builds the sink a pipeline asks for.
pub async fn build(spec: &SinkSpec, ctx: &SinkContext<'_>) -> Result<Box<dyn Sink>, BuildError> {
    let _ = ctx; // unused when only stdout is compiled in
    match spec.kind {
        #[cfg(feature = "nats")]
        SinkKind::Nats => nats::build(&spec.options, ctx).await,
        #[cfg(feature = "pg-inbox")]
        SinkKind::PgInbox => pg_inbox::build(&spec.options, ctx).await,
        #[cfg(feature = "webhook")]
        SinkKind::Webhook => webhook::build(&spec.options, ctx).await,
        #[cfg(feature = "redis")]
        SinkKind::Redis => redis::build(&spec.options, ctx).await,
        #[cfg(feature = "kafka")]
        SinkKind::Kafka => kafka::build(&spec.options, ctx).await,
        #[cfg(feature = "rabbitmq")]
        SinkKind::Rabbitmq => rabbitmq::build(&spec.options, ctx).await,
        #[cfg(feature = "sqs")]
        SinkKind::Sqs => sqs::build(&spec.options, ctx).await,
        #[cfg(feature = "stdout")]
        SinkKind::Stdout | SinkKind::File => stdout::build(spec).await,
        #[cfg(not(feature = "stdout"))]
        SinkKind::Stdout | SinkKind::File => Err(BuildError::NotCompiled("stdout")),
        // Reached only for backends left out of this build.
        #[allow(unreachable_patterns)]
        other => {
            let compiled = match other {
                SinkKind::Nats => cfg!(feature = "nats"),
                SinkKind::Webhook => cfg!(feature = "webhook"),
                SinkKind::Kafka => cfg!(feature = "kafka"),
                SinkKind::Redis => cfg!(feature = "redis"),
                SinkKind::Sqs => cfg!(feature = "sqs"),
                SinkKind::Rabbitmq => cfg!(feature = "rabbitmq"),
                SinkKind::PgInbox => cfg!(feature = "pg-inbox"),
                SinkKind::Stdout | SinkKind::File => true,
            };
            let feature = match other {
                SinkKind::PgInbox => "pg-inbox",
                k => k.as_str(),
            };
            if compiled {
                Err(BuildError::NotYetAvailable(feature))
            } else {
                Err(BuildError::NotCompiled(feature))
            }
        }
    }
}
