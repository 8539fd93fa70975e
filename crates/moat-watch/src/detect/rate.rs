//! Cumulative counters turned into increases and rates.
//!
//! - [`Counter`]: the increase since the previous reading; a counter that went down (Redis
//!   restarted, a counter reset) starts over and reports nothing, never a negative or huge
//!   rate.
//! - [`WindowCount`]: the sum of increases over a sliding time window (events per minute),
//!   with bounded memory.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// One increase of a counter between two readings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Delta {
    /// How much the counter grew.
    pub increase: u64,
    /// Over how long.
    pub elapsed: Duration,
}

impl Delta {
    /// The increase per second (0 if no time passed).
    pub fn per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.increase as f64 / secs
        } else {
            0.0
        }
    }
}

/// The last reading of a cumulative counter.
#[derive(Debug, Clone, Default)]
pub struct Counter {
    last: Option<(Instant, u64)>,
    resets: u64,
}

impl Counter {
    /// Takes a reading; returns the increase since the previous one. `None` on the first
    /// reading, a missing value (the previous reading is kept, so a gap averages over it),
    /// a reading not later than the previous one, and a counter that went down (a restart:
    /// the new value becomes the reference).
    pub fn update(&mut self, at: Instant, value: Option<u64>) -> Option<Delta> {
        let value = value?;
        let Some((prev_at, prev)) = self.last else {
            self.last = Some((at, value));
            return None;
        };
        if at <= prev_at {
            return None;
        }
        self.last = Some((at, value));
        if value < prev {
            self.resets = self.resets.saturating_add(1);
            return None;
        }
        Some(Delta {
            increase: value - prev,
            elapsed: at.saturating_duration_since(prev_at),
        })
    }
}

impl Counter {
    /// How many times the counter went down (Redis restarts, `CONFIG RESETSTAT`).
    pub fn resets(&self) -> u64 {
        self.resets
    }
}

/// Increases summed over a sliding window; at most `cap` entries are kept (the oldest are
/// merged into their neighbour when polls come faster than expected).
#[derive(Debug, Clone)]
pub struct WindowCount {
    window: Duration,
    cap: usize,
    entries: VecDeque<(Instant, u64)>,
    sum: u64,
}

impl WindowCount {
    /// A window of `window`, keeping at most `cap` (at least 2) entries.
    pub fn new(window: Duration, cap: usize) -> Self {
        Self {
            window,
            cap: cap.max(2),
            entries: VecDeque::new(),
            sum: 0,
        }
    }

    /// Records `increase` at `at` and drops what fell out of the window.
    pub fn push(&mut self, at: Instant, increase: u64) {
        if increase > 0 {
            if self.entries.len() >= self.cap {
                // Merge the two oldest: the count stays exact, only its age gets younger.
                if let (Some((_, a)), Some((_, b))) =
                    (self.entries.pop_front(), self.entries.front_mut())
                {
                    *b = b.saturating_add(a);
                }
            }
            self.entries.push_back((at, increase));
            self.sum = self.sum.saturating_add(increase);
        }
        self.expire(at);
    }

    /// Drops entries older than the window at `now`.
    pub fn expire(&mut self, now: Instant) {
        while let Some(&(at, n)) = self.entries.front() {
            if now.saturating_duration_since(at) < self.window {
                break;
            }
            self.entries.pop_front();
            self.sum = self.sum.saturating_sub(n);
        }
    }

    /// The sum of increases in the window.
    pub fn sum(&self) -> u64 {
        self.sum
    }

    /// The window's length.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Entries held (for memory bounds in tests).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the window holds no increase.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_rates_and_resets() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut c = Counter::default();
        assert_eq!(c.update(at(0), Some(100)), None);
        assert_eq!(c.update(at(2), Some(120)).unwrap().per_sec(), 10.0);
        assert_eq!(c.update(at(3), None), None);
        // A gap averages over it.
        assert_eq!(c.update(at(4), Some(140)).unwrap().per_sec(), 10.0);
        // Restart: down to 3, nothing reported, then rates from the new reference.
        assert_eq!(c.update(at(5), Some(3)), None);
        assert_eq!(c.resets(), 1);
        assert_eq!(c.update(at(6), Some(8)).unwrap().increase, 5);
        // Time going backwards or standing still reports nothing.
        assert_eq!(c.update(at(6), Some(9)), None);
        assert_eq!(c.update(at(1), Some(9)), None);
    }

    #[test]
    fn window_sums_expire_and_stay_bounded() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut w = WindowCount::new(Duration::from_secs(60), 4);
        w.push(at(0), 1);
        w.push(at(30), 2);
        assert_eq!(w.sum(), 3);
        w.push(at(60), 0);
        assert_eq!(w.sum(), 2);
        w.push(at(91), 0);
        assert_eq!(w.sum(), 0);
        assert!(w.is_empty());
        for s in 100..200 {
            w.push(at(s) - Duration::from_secs(0), 1);
            assert!(w.len() <= 4);
        }
    }
}
