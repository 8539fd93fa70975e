//! The circuit breaker in front of this worker's backend: the shared state machine of
//! `moat-resilience` (the same one moat-client uses), plus what the proxy does with its
//! transitions: count them (`moat_breaker_transitions_total`, the worker's open flag) and
//! log them (opening at warn: requests are refused from then on).

use std::sync::Arc;
use std::time::Instant;

use moat_resilience::breaker::{Breaker as Machine, Transition};
pub(crate) use moat_resilience::breaker::{BreakerSettings, Verdict};

use crate::stats::worker::{BreakerTo, WorkerStats};

/// The worker's breaker: the shared machine and where its transitions are counted.
#[derive(Debug)]
pub(crate) struct Breaker {
    machine: Machine,
    /// None in tests of the backend alone.
    pub(crate) stats: Option<Arc<WorkerStats>>,
}

impl Breaker {
    pub(crate) fn new(settings: BreakerSettings) -> Self {
        Self {
            machine: Machine::new(settings),
            stats: None,
        }
    }

    /// Whether a request may go to the backend at `now`.
    pub(crate) fn check(&mut self, now: Instant) -> Verdict {
        let (verdict, t) = self.machine.check(now);
        self.record(t);
        verdict
    }

    /// A backend connection was (re)established and passed its handshake.
    pub(crate) fn connected(&mut self, now: Instant) {
        let t = self.machine.connected(now);
        self.record(t);
    }

    /// A request admitted by [`Breaker::check`] found no connection to run on.
    pub(crate) fn unadmit(&mut self) {
        self.machine.unadmit();
    }

    /// A request (or connection attempt) succeeded.
    pub(crate) fn success(&mut self, now: Instant) {
        let t = self.machine.success(now);
        self.record(t);
    }

    /// A request (or connection attempt) failed.
    pub(crate) fn failure(&mut self, now: Instant) {
        let t = self.machine.failure(now);
        self.record(t);
    }

    fn record(&self, t: Option<Transition>) {
        let Some(t) = t else { return };
        let label = match t {
            Transition::Opened => {
                tracing::warn!(
                    open_for = ?self.machine.settings().open_for,
                    "backend circuit breaker open: requests are refused at once"
                );
                BreakerTo::Open
            }
            Transition::HalfOpened => {
                tracing::info!("backend circuit breaker half-open: letting probes through");
                BreakerTo::HalfOpen
            }
            Transition::Closed => {
                tracing::info!("backend circuit breaker closed");
                BreakerTo::Closed
            }
        };
        if let Some(stats) = &self.stats {
            stats.breaker_transitions[label as usize].incr();
            stats.breaker_open.set(u64::from(label == BreakerTo::Open));
        }
    }
}
