//! A circuit breaker in front of a backend: after repeated failures the owner stops sending
//! work for a while and answers at once, then lets a few probes through to see whether the
//! backend is back.
//!
//! Hand-written rather than taken from a crate: the breaker crates read the system clock
//! themselves, while this one takes `now` as an argument so tests drive a fake clock and the
//! owners use tokio's. It counts and logs nothing itself: each method that may change the
//! state returns the [`Transition`] it made, and the proxy counts it in its metrics while
//! moat-client hands it to the application's callback.

use std::time::{Duration, Instant};

/// Breaker settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerSettings {
    /// Consecutive failures that open the breaker.
    pub consecutive_failures: u32,
    /// Failure ratio over `window` that opens it, once `min_requests` were seen.
    pub failure_ratio: f64,
    /// Requests in the window before the ratio counts.
    pub min_requests: u32,
    /// The window the ratio is counted over.
    pub window: Duration,
    /// How long it stays open before letting probes through.
    pub open_for: Duration,
    /// Requests let through while half-open; all must succeed to close it.
    pub probes: u32,
}

impl Default for BreakerSettings {
    /// Moat's proxy defaults (`[backend.breaker]`): 5 consecutive failures, or half of at
    /// least 20 requests in 10 s; open 2 s; 3 probes.
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_ratio: 0.5,
            min_requests: 20,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(2),
            probes: 3,
        }
    }
}

/// Where the breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Requests flow.
    Closed,
    /// Requests are refused until `until`.
    Open {
        /// When probes may go through.
        until: Instant,
    },
    /// A few probes go through; their outcome closes or reopens it.
    HalfOpen {
        /// Probes let through so far.
        admitted: u32,
        /// Probes that succeeded so far.
        succeeded: u32,
    },
}

/// A change of state, for the owner to count, log or report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Opened: requests are refused from now.
    Opened,
    /// Half-open: probes go through.
    HalfOpened,
    /// Closed: the backend is back.
    Closed,
}

/// The breaker's verdict on a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send it.
    Allow,
    /// Refuse it; the breaker may let requests through again after this long.
    Refuse {
        /// Until the breaker lets probes through (zero when half-open and full).
        retry_in: Duration,
    },
}

/// A closed / open / half-open breaker over one backend.
#[derive(Debug, Clone)]
pub struct Breaker {
    settings: BreakerSettings,
    state: BreakerState,
    consecutive: u32,
    window_start: Option<Instant>,
    requests: u32,
    failures: u32,
    opened: u64,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            settings,
            state: BreakerState::Closed,
            consecutive: 0,
            window_start: None,
            requests: 0,
            failures: 0,
            opened: 0,
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &BreakerSettings {
        &self.settings
    }

    /// Where it stands now.
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Times it opened so far.
    pub fn opened(&self) -> u64 {
        self.opened
    }

    fn enter(&mut self, to: BreakerState) -> Transition {
        self.state = to;
        match to {
            BreakerState::Open { .. } => {
                self.opened += 1;
                Transition::Opened
            }
            BreakerState::HalfOpen { .. } => Transition::HalfOpened,
            BreakerState::Closed => Transition::Closed,
        }
    }

    /// Whether a request may go to the backend at `now`; an open breaker whose time is up
    /// turns half-open here (the transition is returned).
    pub fn check(&mut self, now: Instant) -> (Verdict, Option<Transition>) {
        match self.state {
            BreakerState::Closed => (Verdict::Allow, None),
            BreakerState::Open { until } if now < until => (
                Verdict::Refuse {
                    retry_in: until - now,
                },
                None,
            ),
            BreakerState::Open { .. } => {
                let t = self.enter(BreakerState::HalfOpen {
                    admitted: 1,
                    succeeded: 0,
                });
                (Verdict::Allow, Some(t))
            }
            BreakerState::HalfOpen {
                admitted,
                succeeded,
            } if admitted < self.settings.probes => {
                self.state = BreakerState::HalfOpen {
                    admitted: admitted + 1,
                    succeeded,
                };
                (Verdict::Allow, None)
            }
            BreakerState::HalfOpen { .. } => (
                Verdict::Refuse {
                    retry_in: Duration::ZERO,
                },
                None,
            ),
        }
    }

    /// A backend connection was (re)established and passed its handshake: the backend is
    /// back, whatever probes were or were not let through, so the breaker closes.
    pub fn connected(&mut self, now: Instant) -> Option<Transition> {
        self.consecutive = 0;
        let t = (self.state != BreakerState::Closed).then(|| self.enter(BreakerState::Closed));
        self.reset_window(now);
        t
    }

    /// A request admitted by [`Breaker::check`] found no connection to run on: it was no
    /// probe, so it gives its half-open slot back.
    pub fn unadmit(&mut self) {
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
    pub fn success(&mut self, now: Instant) -> Option<Transition> {
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
                return Some(self.enter(BreakerState::Closed));
            }
            self.state = BreakerState::HalfOpen {
                admitted,
                succeeded,
            };
        }
        None
    }

    /// A request (or connection attempt) failed.
    pub fn failure(&mut self, now: Instant) -> Option<Transition> {
        self.consecutive = self.consecutive.saturating_add(1);
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
        if !trip {
            return None;
        }
        let t = self.enter(BreakerState::Open {
            until: now + self.settings.open_for,
        });
        self.reset_window(now);
        Some(t)
    }

    fn count(&mut self, now: Instant, failed: bool) {
        let expired = self
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) > self.settings.window);
        if expired {
            self.reset_window(now);
        }
        self.requests = self.requests.saturating_add(1);
        self.failures = self.failures.saturating_add(u32::from(failed));
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

    impl Breaker {
        /// The verdict alone.
        fn check_only(&mut self, now: Instant) -> Verdict {
            self.check(now).0
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
            assert_eq!(b.check_only(at(t0, i)), Verdict::Allow);
        }
        b.failure(at(t0, 2));
        assert_eq!(
            b.check_only(at(t0, 1002)),
            Verdict::Refuse {
                retry_in: Duration::from_secs(4)
            }
        );
        assert_eq!(b.opened(), 1);
    }

    #[test]
    fn half_open_probes_close_it_or_open_it_again() {
        let t0 = Instant::now();
        let mut b = Breaker::new(settings());
        for i in 0..3 {
            b.failure(at(t0, i));
        }
        // After open_for: two probes pass, a third waits.
        assert_eq!(b.check_only(at(t0, 5_100)), Verdict::Allow);
        assert_eq!(b.check_only(at(t0, 5_101)), Verdict::Allow);
        assert!(matches!(
            b.check_only(at(t0, 5_102)),
            Verdict::Refuse { .. }
        ));
        b.success(at(t0, 5_200));
        b.success(at(t0, 5_201));
        assert_eq!(b.state(), BreakerState::Closed);
        // A failed probe opens it again at once.
        for i in 0..3 {
            b.failure(at(t0, 6_000 + i));
        }
        assert_eq!(b.check_only(at(t0, 11_100)), Verdict::Allow);
        b.failure(at(t0, 11_150));
        assert!(matches!(
            b.check_only(at(t0, 11_160)),
            Verdict::Refuse { .. }
        ));
        assert_eq!(b.opened(), 3);
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
        assert!(matches!(b.check_only(at(t0, 20)), Verdict::Refuse { .. }));
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
            if b.check_only(at(t0, 5_100)) == Verdict::Allow {
                b.unadmit();
            }
        }
        assert_eq!(
            b.check_only(at(t0, 5_200)),
            Verdict::Allow,
            "probes were handed back"
        );
        b.connected(at(t0, 5_300));
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.check_only(at(t0, 5_301)), Verdict::Allow);
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

#[cfg(test)]
mod transition_tests {
    use super::*;

    #[test]
    fn each_change_of_state_is_reported_once() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut b = Breaker::new(BreakerSettings {
            consecutive_failures: 2,
            probes: 1,
            ..BreakerSettings::default()
        });
        assert_eq!(b.failure(ms(0)), None);
        assert_eq!(b.failure(ms(1)), Some(Transition::Opened));
        assert_eq!(b.failure(ms(2)), None, "already open");
        assert_eq!(b.check(ms(100)).1, None);
        let (verdict, t) = b.check(ms(5_001));
        assert_eq!((verdict, t), (Verdict::Allow, Some(Transition::HalfOpened)));
        assert_eq!(b.success(ms(5_002)), Some(Transition::Closed));
        assert_eq!(b.connected(ms(5_003)), None, "already closed");
        assert_eq!(b.opened(), 1);
    }
}
