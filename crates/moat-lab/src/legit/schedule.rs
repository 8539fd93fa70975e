//! The open-loop schedule: operation `i` of a client is due at `start + i / rate`, whatever
//! happened to the ones before it. Latency is measured from that intended time, so a slow
//! target cannot hide behind a client that sends less (coordinated omission).
//!
//! Pure: every decision takes `now`, so tests drive it with a fake clock.
//!
//! Timers wake a little after the instant asked for (tokio's wheel ticks every
//! millisecond), which would add up to a millisecond of the load generator's own delay to
//! every latency. So an operation is handed out up to `early` before it is due; the
//! client measures from whichever comes first, the intended time or the actual send.

use std::time::Duration;

use tokio::time::Instant;

/// What a client should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Nothing is due before this instant: sleep until then.
    Wait(Instant),
    /// Operation `index` was due at `intended` (maybe a little earlier than now): send it
    /// and measure its latency from `intended`.
    Due {
        /// The operation's number in the schedule.
        index: u64,
        /// When it should have been sent.
        intended: Instant,
    },
    /// Operation `index` is already older than the deadline: it is a timeout, not sent.
    /// This bounds how far behind a client may run.
    Expired {
        /// The operation's number in the schedule.
        index: u64,
        /// When it should have been sent.
        intended: Instant,
    },
    /// Every operation of the schedule has been handed out.
    Done,
}

/// A fixed-rate schedule of `count` operations.
#[derive(Debug, Clone)]
pub struct Schedule {
    start: Instant,
    interval: Duration,
    count: u64,
    next: u64,
    max_lateness: Duration,
    early: Duration,
}

impl Schedule {
    /// `count` operations every `interval` from `start`; an operation more than
    /// `max_lateness` behind its intended time when its turn comes is [`Slot::Expired`].
    pub fn new(start: Instant, interval: Duration, count: u64, max_lateness: Duration) -> Self {
        Self {
            start,
            interval,
            count,
            next: 0,
            max_lateness,
            early: Duration::ZERO,
        }
    }

    /// Hands operations out up to `early` before they are due, to make up for timers that
    /// wake late (see the module's documentation).
    pub fn with_early(mut self, early: Duration) -> Self {
        self.early = early;
        self
    }

    /// The schedule of `rate` operations per second for `duration` from `start`.
    pub fn at_rate(start: Instant, rate: f64, duration: Duration, max_lateness: Duration) -> Self {
        let count = super::spec::ops_in(rate, duration);
        let interval = if rate > 0.0 {
            Duration::from_secs_f64(1.0 / rate)
        } else {
            duration
        };
        Self::new(start, interval, count, max_lateness)
    }

    /// When operation `index` is due.
    pub fn intended(&self, index: u64) -> Instant {
        // Multiplying in nanoseconds keeps the schedule exact over long runs (no drift from
        // summing rounded intervals); saturating so a huge index cannot panic.
        let nanos = self.interval.as_nanos().saturating_mul(u128::from(index));
        let offset = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        self.start.checked_add(offset).unwrap_or(self.start)
    }

    /// Operations handed out so far (due or expired).
    pub fn issued(&self) -> u64 {
        self.next
    }

    /// What to do at `now`; hands out each operation exactly once, in order.
    pub fn poll(&mut self, now: Instant) -> Slot {
        if self.next >= self.count {
            return Slot::Done;
        }
        let index = self.next;
        let intended = self.intended(index);
        if intended > now + self.early {
            return Slot::Wait(intended.checked_sub(self.early).unwrap_or(intended));
        }
        self.next += 1;
        if now.saturating_duration_since(intended) > self.max_lateness {
            Slot::Expired { index, intended }
        } else {
            Slot::Due { index, intended }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn operations_come_due_on_a_fixed_schedule() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0, 20 * MS, 3, 1000 * MS);
        assert_eq!(
            s.poll(t0),
            Slot::Due {
                index: 0,
                intended: t0
            }
        );
        // Early: wait for the next slot, do not send it.
        assert_eq!(s.poll(t0 + 5 * MS), Slot::Wait(t0 + 20 * MS));
        assert_eq!(s.poll(t0 + 5 * MS), Slot::Wait(t0 + 20 * MS));
        assert_eq!(
            s.poll(t0 + 20 * MS),
            Slot::Due {
                index: 1,
                intended: t0 + 20 * MS
            }
        );
        assert_eq!(
            s.poll(t0 + 40 * MS),
            Slot::Due {
                index: 2,
                intended: t0 + 40 * MS
            }
        );
        assert_eq!(s.poll(t0 + 10_000 * MS), Slot::Done);
        assert_eq!(s.issued(), 3);
    }

    #[test]
    fn a_late_client_keeps_the_schedule_and_its_lateness_shows() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0, 10 * MS, 100, 1000 * MS);
        assert!(matches!(s.poll(t0), Slot::Due { index: 0, .. }));
        // The first operation took 35 ms: the next three are due at once, each with its
        // own intended time, so the latency measured from it includes the wait.
        let now = t0 + 35 * MS;
        for i in 1..=3u64 {
            match s.poll(now) {
                Slot::Due { index, intended } => {
                    assert_eq!(index, i);
                    assert_eq!(intended, t0 + 10 * MS * i as u32);
                    assert_eq!(now - intended, 35 * MS - 10 * MS * i as u32);
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(s.poll(now), Slot::Wait(t0 + 40 * MS));
    }

    #[test]
    fn the_backlog_is_bounded_by_the_deadline() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0, 10 * MS, 1000, 100 * MS);
        assert!(matches!(s.poll(t0), Slot::Due { index: 0, .. }));
        // Stalled 500 ms: operations older than 100 ms expire (timeouts), the rest are due.
        let now = t0 + 500 * MS;
        let mut expired = 0;
        let mut due = Vec::new();
        loop {
            match s.poll(now) {
                Slot::Expired { intended, .. } => {
                    assert!(now - intended > 100 * MS);
                    expired += 1;
                }
                Slot::Due { index, intended } => {
                    assert!(now - intended <= 100 * MS);
                    due.push(index);
                }
                Slot::Wait(_) | Slot::Done => break,
            }
        }
        // Slots 1..=39 are more than 100 ms old; 40..=50 are within the bound.
        assert_eq!(expired, 39);
        assert_eq!(due, (40..=50).collect::<Vec<_>>());
        assert_eq!(s.issued(), 51);
    }

    #[test]
    fn operations_may_go_out_slightly_early() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0 + 10 * MS, 10 * MS, 2, 1000 * MS).with_early(MS);
        assert_eq!(s.poll(t0), Slot::Wait(t0 + 9 * MS));
        assert_eq!(
            s.poll(t0 + 9 * MS),
            Slot::Due {
                index: 0,
                intended: t0 + 10 * MS
            }
        );
        assert_eq!(s.poll(t0 + 10 * MS), Slot::Wait(t0 + 19 * MS));
    }

    #[test]
    fn rate_and_duration_make_the_count() {
        let t0 = Instant::now();
        let s = Schedule::at_rate(t0, 50.0, Duration::from_secs(2), Duration::from_secs(1));
        assert_eq!(s.count, 100);
        assert_eq!(s.intended(50), t0 + Duration::from_secs(1));
        let none = Schedule::at_rate(t0, 0.0, Duration::from_secs(2), Duration::from_secs(1));
        assert_eq!(none.clone().poll(t0), Slot::Done);
    }
}
