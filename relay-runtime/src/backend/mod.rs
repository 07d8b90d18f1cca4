//! The backends the relay speaks to, one module per broker: the typed settings of its sink and
//! its source (and what both share, such as how to connect). Sinks (`crate::sink`) and sources
//! (`crate::source`) are built from these; neither depends on the other.
//!
//! Every config struct denies unknown keys, and its JSON Schema (`schemars`) is what the key
//! catalog ([`crate::config::keys`]) reads: the relay's parser, the SQL-side validation that
//! `migrate` installs, `pgtrickle-relay config-schema` and the README's key tables all come from
//! these structs.

pub mod fields;

use crate::error::Cause;

pub mod file;
pub mod kafka;
pub mod nats;
pub mod pg_inbox;
pub mod rabbitmq;
pub mod redis;
pub mod sqs;
pub mod webhook;

/// Why a sink or a source could not be built from its config. What the backend's library
/// reported is kept as the `source()` (written out by [`crate::error::report`]).
#[derive(Debug, Clone, thiserror::Error)]
pub enum BuildError {
    #[error("backend '{0}' is not compiled into this binary; rebuild with `--features {0}`")]
    NotCompiled(&'static str),
    #[error("{backend}: key '{key}': {message}")]
    Option {
        backend: &'static str,
        key: String,
        message: String,
        #[source]
        cause: Option<Cause>,
    },
    #[error("{backend}: {message}")]
    Open {
        backend: &'static str,
        message: String,
        #[source]
        cause: Option<Cause>,
    },
    /// The target could not be reached; retried with backoff, the pipeline is `degraded`.
    #[error("{backend}: {message}")]
    Unreachable {
        backend: &'static str,
        message: String,
        #[source]
        cause: Option<Cause>,
    },
}

impl BuildError {
    /// A setting that cannot be used (a file that cannot be read, keys that go together).
    pub fn option(backend: &'static str, key: &str, message: impl Into<String>) -> Self {
        BuildError::Option { backend, key: key.to_owned(), message: message.into(), cause: None }
    }

    /// The target answered, but the pipeline cannot use it as configured.
    pub fn open(backend: &'static str, message: impl Into<String>) -> Self {
        BuildError::Open { backend, message: message.into(), cause: None }
    }

    /// The target could not be reached (retried with backoff).
    pub fn unreachable(backend: &'static str, message: impl Into<String>) -> Self {
        BuildError::Unreachable { backend, message: message.into(), cause: None }
    }

    /// The same error, with what the library reported as its cause.
    pub fn because(mut self, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        match &mut self {
            BuildError::NotCompiled(_) => {}
            BuildError::Option { cause, .. }
            | BuildError::Open { cause, .. }
            | BuildError::Unreachable { cause, .. } => {
                *cause = Some(std::sync::Arc::new(e));
            }
        }
        self
    }

    /// What the library reported, with its type (`downcast_ref`).
    pub fn cause(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        match self {
            BuildError::NotCompiled(_) => None,
            BuildError::Option { cause, .. }
            | BuildError::Open { cause, .. }
            | BuildError::Unreachable { cause, .. } => cause.as_deref(),
        }
    }

    /// Whether waiting (not a config change) can fix this.
    pub fn is_transient(&self) -> bool {
        matches!(self, BuildError::Unreachable { .. })
    }
}
