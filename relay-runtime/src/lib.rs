//! pgtrickle-relay runtime: moves data between pg_trickle outbox/inbox tables and message brokers.
//!
//! SQL is the source of truth: pipelines live in the `pgtrickle.relay_*_config` tables, the
//! relay installs and migrates its catalog itself ([`catalog`]), discovers and owns pipelines
//! through advisory locks ([`coordinator`]) and runs one worker per owned pipeline ([`pipeline`]).

pub mod backend;
pub mod backoff;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod coordinator;
pub mod demo;
pub mod dlq;
pub mod error;
pub mod http;
pub mod inbox;
pub mod message;
pub mod metrics;
pub mod otel;
pub mod outbox;
pub mod percent;
pub mod pipeline;
pub mod redact;
pub mod runner;
pub mod sink;
pub mod source;
pub mod state;
pub mod telemetry;

#[cfg(test)]
mod layering;
#[cfg(test)]
mod proptests;
