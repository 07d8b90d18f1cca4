//! The one retry rule of the relay: jittered exponential backoff. Every loop that waits before
//! trying again (a connection, a broker, a batch) uses [`Backoff`].

use std::time::Duration;

/// The cap of the backoff after retryable failures: a broker or database that comes back is
/// used again within about this long (measured by the fault suite).
pub const MAX: Duration = Duration::from_secs(5);

/// `d` ± 20 %, so that many retries do not arrive at once.
pub fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.8 + fastrand::f64() * 0.4)
}

/// Waits that start at `first` and double up to `max`, each jittered.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub const fn new(first: Duration, max: Duration) -> Self {
        Self { first, max, current: first }
    }

    /// The next wait; the one after it is twice as long (up to `max`).
    pub fn next_wait(&mut self) -> Duration {
        let wait = jitter(self.current);
        self.current = (self.current * 2).min(self.max);
        wait
    }

    /// Something worked: the next failure waits `first` again.
    pub fn reset(&mut self) {
        self.current = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_twenty_percent() {
        for _ in 0..1000 {
            let j = jitter(Duration::from_millis(1000)).as_millis();
            assert!((800..=1200).contains(&j), "{j}");
        }
    }

    #[test]
    fn waits_double_up_to_the_cap_and_reset() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let waits: Vec<u128> = (0..6).map(|_| b.next_wait().as_millis()).collect();
        for (w, nominal) in waits.iter().zip([100, 200, 400, 800, 1000, 1000]) {
            assert!((nominal * 8 / 10..=nominal * 12 / 10).contains(w), "{waits:?}");
        }
        b.reset();
        assert!(b.next_wait() <= Duration::from_millis(120));
    }
}
