//! A window of outstanding broker acknowledgements that spans `publish` calls.
//!
//! Pipelined sinks (NATS JetStream acks, Kafka delivery reports, AMQP publisher confirms) send a
//! message, push its acknowledgement here and go on; the window blocks only when `limit` acks are
//! outstanding. A `publish` call returns once every message of *earlier* calls is confirmed, so the
//! runner can commit those batches while the current one is still in flight.

use std::collections::VecDeque;

use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::StreamExt;

use super::{Published, SinkError};

/// What one acknowledgement reported: `true` when the broker recognised a duplicate.
pub type Ack = BoxFuture<'static, Result<bool, SinkError>>;

pub struct AckWindow {
    acks: FuturesOrdered<Ack>,
    /// The `publish` call each outstanding ack belongs to (same order as `acks`).
    calls: VecDeque<u64>,
    next_call: u64,
    limit: usize,
}

impl AckWindow {
    pub fn new(limit: usize) -> Self {
        Self { acks: FuturesOrdered::new(), calls: VecDeque::new(), next_call: 0, limit: limit.max(1) }
    }

    /// Starts a `publish` call; the returned id tags the acks pushed until the next call.
    pub fn begin(&mut self) -> u64 {
        self.next_call += 1;
        self.next_call
    }

    pub fn len(&self) -> usize {
        self.acks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.acks.is_empty()
    }

    /// Adds the acknowledgement of a message just sent, then waits while the window is full.
    pub async fn push(&mut self, call: u64, ack: Ack, done: &mut Published) -> Result<(), SinkError> {
        self.acks.push_back(ack);
        self.calls.push_back(call);
        while self.acks.len() >= self.limit {
            self.next(done).await?;
        }
        Ok(())
    }

    /// Waits for the oldest outstanding acknowledgement.
    pub async fn next(&mut self, done: &mut Published) -> Result<(), SinkError> {
        if let Some(r) = self.acks.next().await {
            self.calls.pop_front();
            let duplicate = r?;
            done.confirmed += 1;
            done.duplicates += u64::from(duplicate);
        }
        Ok(())
    }

    /// Waits until every message sent by calls before `call` is confirmed.
    pub async fn settle_before(&mut self, call: u64, done: &mut Published) -> Result<(), SinkError> {
        while self.calls.front().is_some_and(|c| *c < call) {
            self.next(done).await?;
        }
        Ok(())
    }

    /// Waits until every message sent so far is confirmed.
    pub async fn flush(&mut self) -> Result<Published, SinkError> {
        let mut done = Published::default();
        while !self.calls.is_empty() {
            self.next(&mut done).await?;
        }
        Ok(done)
    }

    /// Forgets every outstanding acknowledgement (the runner sends those messages again).
    pub fn reset(&mut self) {
        self.acks = FuturesOrdered::new();
        self.calls.clear();
    }
}
