//! Black-box end-to-end tests: the built `pgtrickle-relay` binary against a real PostgreSQL.

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod catalog;
mod conformance;
mod cursor_share;
mod diff;
mod envelopes;
mod faults;
mod forward;
mod ha;
mod hot_reload;
mod kafka;
mod lifecycle;
mod many_pipelines;
mod nats;
mod observability;
mod operator;
mod pg_inbox;
mod pg_tls;
mod rabbitmq;
mod redis;
mod reverse;
mod sqs;
mod torture;
mod webhook;
