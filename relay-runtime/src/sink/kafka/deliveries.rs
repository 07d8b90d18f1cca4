//! Kafka delivery reports counted per `publish` call, without a future per message.
//!
//! Every record carries its call number as librdkafka's per-message opaque; the producer's
//! polling thread counts each report against its call. A call is confirmed once it is sealed
//! (every record of it enqueued) and every record of it was acknowledged; a failed report fails
//! its call. `publish` returns once every *earlier* call is confirmed (as the `AckWindow`
//! does for the other pipelined sinks), so batches overlap while commits stay in order.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use rdkafka::client::ClientContext;
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::ProducerContext;
use tokio::sync::Notify;

use super::classify;
use crate::sink::{Published, SinkError};

struct Call {
    id: u64,
    sent: u64,
    /// Records of `sent` that are no message of the batch (Debezium tombstones): confirmed
    /// with the call, not counted.
    extra: u64,
    reported: u64,
    sealed: bool,
    error: Option<SinkError>,
}

impl Call {
    fn complete(&self) -> bool {
        self.sealed && self.reported == self.sent
    }
}

#[derive(Default)]
struct State {
    /// Calls not yet settled, oldest first.
    calls: VecDeque<Call>,
    next_call: u64,
    /// Records sent and not yet reported.
    outstanding: u64,
    /// Wake the publishing task once `outstanding` drops below this.
    wake_below: Option<u64>,
}

pub struct Deliveries {
    state: Mutex<State>,
    wake: Notify,
    limit: u64,
    /// A report said the producer's identity is no longer accepted (fenced, unknown id, out of
    /// sequence): only a new producer can send again.
    stale_producer: std::sync::atomic::AtomicBool,
}

impl Deliveries {
    pub fn new(limit: usize) -> Self {
        Self {
            state: Mutex::default(),
            wake: Notify::new(),
            limit: limit.max(1) as u64,
            stale_producer: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the counters half-updated in a way that
        // matters more than losing them; keep going with the data.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a `publish` call; records sent for it carry the returned id.
    pub fn begin(&self) -> u64 {
        let mut st = self.lock();
        st.next_call += 1;
        let id = st.next_call;
        st.calls.push_back(Call { id, sent: 0, extra: 0, reported: 0, sealed: false, error: None });
        id
    }

    /// Counts a record about to be handed to librdkafka (before, so its report always finds it);
    /// `extra`: a record that is not one of the batch's messages. Returns whether the window is
    /// full.
    pub fn sending(&self, call: u64, extra: bool) -> bool {
        let mut st = self.lock();
        if let Some(c) = st.calls.iter_mut().rev().find(|c| c.id == call) {
            c.sent += 1;
            c.extra += u64::from(extra);
            st.outstanding += 1;
        }
        st.outstanding >= self.limit
    }

    /// Takes back a record librdkafka refused.
    pub fn not_sent(&self, call: u64, extra: bool) {
        let mut st = self.lock();
        if let Some(c) = st.calls.iter_mut().rev().find(|c| c.id == call) {
            c.sent -= 1;
            c.extra -= u64::from(extra);
            st.outstanding -= 1;
        }
    }

    /// No more records for `call`.
    pub fn seal(&self, call: u64) {
        let mut st = self.lock();
        if let Some(c) = st.calls.iter_mut().rev().find(|c| c.id == call) {
            c.sealed = true;
        }
    }

    /// One delivery report (from librdkafka's polling thread).
    fn report(&self, call: u64, error: Option<SinkError>) {
        let mut st = self.lock();
        let Some(c) = st.calls.iter_mut().find(|c| c.id == call) else {
            return; // a record of a call forgotten by `reset`
        };
        c.reported += 1;
        let mut wake = c.complete();
        if let Some(e) = error {
            wake = true;
            c.error.get_or_insert(e);
        }
        st.outstanding -= 1;
        if st.wake_below.is_some_and(|b| st.outstanding < b) {
            st.wake_below = None;
            wake = true;
        }
        drop(st);
        if wake {
            self.wake.notify_one();
        }
    }

    /// Waits until fewer records are outstanding than now (at least a quarter of the window
    /// free when it is full). `false` when nothing is outstanding (librdkafka's own queue is
    /// full of records this window no longer tracks).
    pub async fn wait_for_space(&self) -> bool {
        let below = {
            let mut st = self.lock();
            if st.outstanding == 0 {
                return false;
            }
            let below = if st.outstanding >= self.limit { self.limit - self.limit / 4 } else { st.outstanding };
            st.wake_below = Some(below.max(1));
            below.max(1)
        };
        loop {
            if self.lock().outstanding < below {
                return true;
            }
            self.wake.notified().await;
        }
    }

    /// Waits until every call before `call` is confirmed, counting them into `done`; the first
    /// failed report among them is the error.
    pub async fn settle_before(&self, call: u64, done: &mut Published) -> Result<(), SinkError> {
        loop {
            {
                let mut st = self.lock();
                while let Some(c) = st.calls.front().filter(|c| c.id < call) {
                    if let Some(e) = &c.error {
                        return Err(e.clone());
                    }
                    if !c.complete() {
                        break;
                    }
                    done.confirmed += c.sent - c.extra;
                    st.calls.pop_front();
                }
                if st.calls.front().is_none_or(|c| c.id >= call) {
                    return Ok(());
                }
            }
            self.wake.notified().await;
        }
    }

    /// Waits until everything sent so far is confirmed.
    pub async fn flush(&self) -> Result<Published, SinkError> {
        let mut done = Published::default();
        self.settle_before(u64::MAX, &mut done).await?;
        Ok(done)
    }

    pub fn mark_stale_producer(&self) {
        self.stale_producer.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether a report asked for a new producer since the last call (clears the flag).
    pub fn take_stale_producer(&self) -> bool {
        self.stale_producer.swap(false, std::sync::atomic::Ordering::AcqRel)
    }

    /// Forgets every unsettled call (the runner sends those records again); their late reports
    /// are ignored.
    pub fn reset(&self) {
        let mut st = self.lock();
        st.calls.clear();
        st.outstanding = 0;
        st.wake_below = None;
    }
}

/// Errors after which the broker no longer accepts this producer's id, epoch or sequence
/// (typically after a hung broker timed out requests in flight).
pub fn needs_new_producer(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::error::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::ProducerFenced
                | C::InvalidProducerEpoch
                | C::UnknownProducerId
                | C::OutOfOrderSequenceNumber
                | C::InvalidProducerIdMapping
                | C::Fatal
        )
    )
}

/// The producer's context: routes each delivery report to its call.
pub struct Reports(pub std::sync::Arc<Deliveries>);

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, call: usize) {
        let error = match result {
            Ok(_) => None,
            Err((e, m)) => {
                if needs_new_producer(e) {
                    self.0.mark_stale_producer();
                }
                Some(classify(e, m.topic()))
            }
        };
        self.0.report(call as u64, error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_confirm_in_order_and_errors_fail_their_call() {
        let d = Deliveries::new(10);
        let a = d.begin();
        assert!(!d.sending(a, false));
        assert!(!d.sending(a, false));
        d.seal(a);
        let b = d.begin();
        d.sending(b, false);
        d.seal(b);
        // b's report first: a is not complete, so nothing settles before b.
        d.report(b, None);
        d.report(a, None);
        let mut done = Published::default();
        {
            let waiting = d.settle_before(b, &mut done);
            tokio::pin!(waiting);
            assert!(futures::poll!(waiting.as_mut()).is_pending());
            d.report(a, None);
            waiting.await.unwrap();
        }
        assert_eq!(done.confirmed, 2);
        assert_eq!(d.flush().await.unwrap().confirmed, 1);

        // A tombstone is confirmed with its call and not counted as a message.
        let t = d.begin();
        d.sending(t, false);
        d.sending(t, true);
        d.seal(t);
        d.report(t, None);
        d.report(t, None);
        assert_eq!(d.flush().await.unwrap().confirmed, 1);

        let c = d.begin();
        d.sending(c, false);
        d.sending(c, false);
        d.seal(c);
        d.report(c, Some(SinkError::retryable("kafka", "broker down")));
        let err = d.flush().await.unwrap_err();
        assert!(err.to_string().contains("broker down"));
        // After a reset the late report of the forgotten call changes nothing.
        d.reset();
        d.report(c, None);
        assert_eq!(d.flush().await.unwrap(), Published::default());
    }

    #[tokio::test]
    async fn a_full_window_waits_for_a_quarter_of_it() {
        let d = Deliveries::new(4);
        let a = d.begin();
        for _ in 0..3 {
            assert!(!d.sending(a, false));
        }
        assert!(d.sending(a, false), "the fourth record fills the window");
        let waiting = d.wait_for_space();
        tokio::pin!(waiting);
        assert!(futures::poll!(waiting.as_mut()).is_pending());
        d.report(a, None);
        assert!(futures::poll!(waiting.as_mut()).is_pending(), "3 of 4 still out");
        d.report(a, None);
        assert!(waiting.await);
        d.reset();
        assert!(!d.wait_for_space().await, "nothing outstanding: nothing to wait for");
    }
}
