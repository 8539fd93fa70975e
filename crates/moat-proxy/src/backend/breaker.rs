//! The circuit breaker in front of the backend: after repeated failures moat stops sending
//! work to Redis for a while and answers at once, then lets a few probes through to see
//! whether it is back.
//!
//! Hand-written rather than taken from a crate: the breaker crates read the system clock
//! themselves, while moat's breaker takes `now` as an argument so tests drive a fake clock
//! and the proxy uses tokio's. The state machine is small.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::stats::worker::{BreakerTo, WorkerStats};

/// Breaker settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct BreakerSettings {
    /// Consecutive failures that open the breaker.
    pub(crate) consecutive_failures: u32,
    /// Failure ratio over `window` that opens it, once `min_requests` were seen.
    pub(crate) failure_ratio: f64,
    pub(crate) min_requests: u32,
    pub(crate) window: Duration,
    /// How long it stays open before letting probes through.
    pub(crate) open_for: Duration,
    /// Requests let through while half-open; all must succeed to close it.
    pub(crate) probes: u32,
}

/// Where the breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BreakerState {
    Closed,
    Open { until: Instant },
    HalfOpen { admitted: u32, succeeded: u32 },
}

/// The breaker's verdict on a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Send it.
    Allow,
    /// Refuse it; the breaker may let requests through again after this long.
    Refuse { retry_in: Duration },
}

/// A closed / open / half-open breaker over one backend.
#[derive(Debug)]
pub(crate) struct Breaker {
    settings: BreakerSettings,
    state: BreakerState,
    consecutive: u32,
    window_start: Option<Instant>,
    requests: u32,
    failures: u32,
    /// Times the breaker opened (read by its tests; the exporter counts in `stats`).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) opened: u64,
    /// Where transitions are counted (`moat_breaker_transitions_total`, and the worker's
    /// open flag); none in tests of the state machine alone.
    pub(crate) stats: Option<Arc<WorkerStats>>,
}

impl Breaker {
    pub(crate) fn new(settings: BreakerSettings) -> Self {
        Self {
            settings,
            state: BreakerState::Closed,
            consecutive: 0,
            window_start: None,
            requests: 0,
            failures: 0,
            opened: 0,
            stats: None,
        }
    }

    /// Enters `to`: counted, and logged (opening at warn: requests are refused from now).
    fn enter(&mut self, to: BreakerState) {
        let label = match to {
            BreakerState::Open { .. } => BreakerTo::Open,
            BreakerState::HalfOpen { .. } => BreakerTo::HalfOpen,
            BreakerState::Closed => BreakerTo::Closed,
        };
        self.state = to;
        match label {
            BreakerTo::Open => {
                self.opened += 1;
                tracing::warn!(
                    open_for = ?self.settings.open_for,
                    "backend circuit breaker open: requests are refused at once"
                );
            }
            BreakerTo::HalfOpen => {
                tracing::info!("backend circuit breaker half-open: letting probes through");
            }
            BreakerTo::Closed => tracing::info!("backend circuit breaker closed"),
        }
        if let Some(stats) = &self.stats {
            stats.breaker_transitions[label as usize].incr();
            stats.breaker_open.set(u64::from(label == BreakerTo::Open));
        }
    }

    #[cfg(test)]
    pub(crate) fn state(&self) -> BreakerState {
        self.state
    }

    /// Whether a request may go to the backend at `now`.
    pub(crate) fn check(&mut self, now: Instant) -> Verdict {
        match self.state {
            BreakerState::Closed => Verdict::Allow,
            BreakerState::Open { until } if now < until => Verdict::Refuse {
                retry_in: until - now,
            },
            BreakerState::Open { .. } => {
                self.enter(BreakerState::HalfOpen {
                    admitted: 1,
                    succeeded: 0,
                });
                Verdict::Allow
            }
            BreakerState::HalfOpen {
                admitted,
                succeeded,
            } if admitted < self.settings.probes => {
                self.state = BreakerState::HalfOpen {
                    admitted: admitted + 1,
                    succeeded,
                };
                Verdict::Allow
            }
            BreakerState::HalfOpen { .. } => Verdict::Refuse {
                retry_in: Duration::ZERO,
            },
        }
    }

    /// A backend connection was (re)established and passed its handshake: the backend is
    /// back, whatever probes were or were not let through, so the breaker closes.
    pub(crate) fn connected(&mut self, now: Instant) {
        self.consecutive = 0;
        if self.state != BreakerState::Closed {
            self.enter(BreakerState::Closed);
        }
        self.reset_window(now);
    }

    /// A request admitted by [`Breaker::check`] found no connection to run on: it was no
    /// probe, so it gives its half-open slot back.
    pub(crate) fn unadmit(&mut self) {
        if let BreakerState::HalfOpen {
            admitted,
            succeeded,
        } = self.state
        {
            self.state = BreakerState::HalfOpen {
                admitted: admitted.saturating_sub(1),
                succeeded,
            };
        }
    }

    /// A request (or connection attempt) succeeded.
    pub(crate) fn success(&mut self, now: Instant) {
        self.consecutive = 0;
        self.count(now, false);
        if let BreakerState::HalfOpen {
            admitted,
            succeeded,
        } = self.state
        {
            let succeeded = succeeded + 1;
            if succeeded >= self.settings.probes {
                self.reset_window(now);
                self.enter(BreakerState::Closed);
            } else {
                self.state = BreakerState::HalfOpen {
                    admitted,
                    succeeded,
                };
            }
        }
    }

    /// A request (or connection attempt) failed.
    pub(crate) fn failure(&mut self, now: Instant) {
        self.consecutive += 1;
        self.count(now, true);
        let trip = match self.state {
            BreakerState::HalfOpen { .. } => true,
            BreakerState::Open { .. } => false,
            BreakerState::Closed => {
                self.consecutive >= self.settings.consecutive_failures
                    || (self.requests >= self.settings.min_requests
                        && f64::from(self.failures)
                            >= self.settings.failure_ratio * f64::from(self.requests))
            }
        };
        if trip {
            self.enter(BreakerState::Open {
                until: now + self.settings.open_for,
            });
            self.reset_window(now);
        }
    }

    fn count(&mut self, now: Instant, failed: bool) {
        let expired = self
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) > self.settings.window);
        if expired {
            self.reset_window(now);
        }
        self.requests += 1;
        self.failures += u32::from(failed);
    }

    fn reset_window(&mut self, now: Instant) {
        self.window_start = Some(now);
        self.requests = 0;
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BreakerSettings {
        BreakerSettings {
            consecutive_failures: 3,
            failure_ratio: 0.5,
            min_requests: 10,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(5),
            probes: 2,
        }
    }

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn opens_after_consecutive_failures_and_refuses_until_the_time_is_up() {
        let t0 = Instant::now();
        let mut b = Breaker::new(settings());
        for i in 0..2 {
            b.failure(at(t0, i));
            assert_eq!(b.check(at(t0, i)), Verdict::Allow);
        }
        b.failure(at(t0, 2));
        assert_eq!(
            b.check(at(t0, 1002)),
            Verdict::Refuse {
                retry_in: Duration::from_secs(4)
            }
        );
        assert_eq!(b.opened, 1);
    }

    #[test]
    fn half_open_probes_close_it_or_open_it_again() {
        let t0 = Instant::now();
        let mut b = Breaker::new(settings());
        for i in 0..3 {
            b.failure(at(t0, i));
        }
        // After open_for: two probes pass, a third waits.
        assert_eq!(b.check(at(t0, 5_100)), Verdict::Allow);
        assert_eq!(b.check(at(t0, 5_101)), Verdict::Allow);
        assert!(matches!(b.check(at(t0, 5_102)), Verdict::Refuse { .. }));
        b.success(at(t0, 5_200));
        b.success(at(t0, 5_201));
        assert_eq!(b.state(), BreakerState::Closed);
        // A failed probe opens it again at once.
        for i in 0..3 {
            b.failure(at(t0, 6_000 + i));
        }
        assert_eq!(b.check(at(t0, 11_100)), Verdict::Allow);
        b.failure(at(t0, 11_150));
        assert!(matches!(b.check(at(t0, 11_160)), Verdict::Refuse { .. }));
        assert_eq!(b.opened, 3);
    }

    #[test]
    fn failure_ratio_opens_it_despite_interleaved_successes() {
        let t0 = Instant::now();
        let mut b = Breaker::new(settings());
        for i in 0..12 {
            if i % 2 == 0 {
                b.failure(at(t0, i));
            } else {
                b.success(at(t0, i));
            }
        }
        assert!(matches!(b.check(at(t0, 20)), Verdict::Refuse { .. }));
    }

    #[test]
    fn a_reconnect_closes_it_and_unanswered_probes_are_given_back() {
        let t0 = Instant::now();
        let mut b = Breaker::new(settings());
        for i in 0..3 {
            b.failure(at(t0, i));
        }
        for _ in 0..10 {
            // Admitted after open_for, but no connection took them.
            if b.check(at(t0, 5_100)) == Verdict::Allow {
                b.unadmit();
            }
        }
        assert_eq!(
            b.check(at(t0, 5_200)),
            Verdict::Allow,
            "probes were handed back"
        );
        b.connected(at(t0, 5_300));
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.check(at(t0, 5_301)), Verdict::Allow);
    }

    #[test]
    fn successes_keep_it_closed() {
        let t0 = Instant::now();
        let mut b = Breaker::new(settings());
        for i in 0..1000 {
            b.success(at(t0, i));
            if i % 100 == 0 {
                b.failure(at(t0, i));
            }
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
