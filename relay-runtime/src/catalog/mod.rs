//! The relay's SQL catalog: connections, schema migrations, pipeline loading, offsets, status.

pub mod connect;
pub mod dead_letters;
pub mod offsets;
pub mod pipelines;
pub mod pool;
pub mod schema;
pub mod status;
#[cfg(test)]
pub mod test_db;
pub mod tls;

pub use crate::redact::redact_url;
pub use connect::{connect, connect_with_retry, DbConnection};
