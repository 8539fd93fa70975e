//! What the client counts, registered into the application's own
//! `prometheus_client::registry::Registry` under the `moat_client` prefix (no global
//! registry, so two clients in one process are two sets of series when registered under
//! different prefixes or labels by the app). Without a registry the counters still run, and
//! [`crate::Client::stats`] reads them.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

/// The client's series.
#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    pub(crate) requests: Family<Labels, Counter>,
    pub(crate) retries: Counter,
    pub(crate) retries_denied: Counter,
    pub(crate) connects: Family<Labels, Counter>,
    pub(crate) breaker_transitions: Family<Labels, Counter>,
    pub(crate) served: Family<Labels, Counter>,
    pub(crate) duration: Histogram,
    pub(crate) connections: Gauge,
    pub(crate) backlog: Gauge,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        Self {
            requests: Family::default(),
            retries: Counter::default(),
            retries_denied: Counter::default(),
            connects: Family::default(),
            breaker_transitions: Family::default(),
            served: Family::default(),
            // 100 µs to ~3 s.
            duration: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            connections: Gauge::default(),
            backlog: Gauge::default(),
        }
    }

    pub(crate) fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("moat_client");
        r.register(
            "requests",
            "Commands finished, by outcome (ok, or the error kind)",
            self.requests.clone(),
        );
        r.register(
            "retries",
            "Commands sent again after an error that proved them not applied, or for idempotent commands",
            self.retries.clone(),
        );
        r.register(
            "retries_denied_by_budget",
            "Retries not made because the retry budget was spent",
            self.retries_denied.clone(),
        );
        r.register(
            "connects",
            "Connection attempts by result (ok, failed)",
            self.connects.clone(),
        );
        r.register(
            "breaker_transitions",
            "Circuit breaker changes of state, by the state entered",
            self.breaker_transitions.clone(),
        );
        r.register(
            "served",
            "get_or_fallback answers by source (redis, stale, fallback)",
            self.served.clone(),
        );
        r.register(
            "command_duration_seconds",
            "Time per command, retries and waits included, whatever the outcome",
            self.duration.clone(),
        );
        r.register(
            "connections",
            "Connections open (idle and in use)",
            self.connections.clone(),
        );
        r.register(
            "backlog",
            "Commands waiting for a connection",
            self.backlog.clone(),
        );
    }

    pub(crate) fn count(family: &Family<Labels, Counter>, key: &'static str, value: &'static str) {
        family.get_or_create(&vec![(key, value)]).inc();
    }

    fn get(family: &Family<Labels, Counter>, key: &'static str, value: &'static str) -> u64 {
        family.get_or_create(&vec![(key, value)]).get()
    }

    pub(crate) fn stats(&self) -> Stats {
        Stats {
            ok: Self::get(&self.requests, "outcome", "ok"),
            errors: ERROR_KINDS
                .iter()
                .map(|k| Self::get(&self.requests, "outcome", k))
                .sum(),
            retries: self.retries.get(),
            retries_denied: self.retries_denied.get(),
            connects_ok: Self::get(&self.connects, "result", "ok"),
            connects_failed: Self::get(&self.connects, "result", "failed"),
            breaker_opened: Self::get(&self.breaker_transitions, "to", "open"),
            served_stale: Self::get(&self.served, "source", "stale"),
            served_fallback: Self::get(&self.served, "source", "fallback"),
            connections: u64::try_from(self.connections.get()).unwrap_or(0),
        }
    }
}

/// The error kinds the `requests` family is labelled with.
pub(crate) const ERROR_KINDS: &[&str] = &[
    "circuit_open",
    "backlog_full",
    "pool_timeout",
    "connect_backoff",
    "connect",
    "refused",
    "timeout",
    "connection",
    "server",
    "reply",
];

/// A snapshot of the client's counters since it was built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Commands that succeeded.
    pub ok: u64,
    /// Commands that failed, for any reason.
    pub errors: u64,
    /// Retries made.
    pub retries: u64,
    /// Retries refused by the budget.
    pub retries_denied: u64,
    /// Connections opened (handshake answered).
    pub connects_ok: u64,
    /// Connection attempts that failed.
    pub connects_failed: u64,
    /// Times the breaker opened.
    pub breaker_opened: u64,
    /// Stale cached values served.
    pub served_stale: u64,
    /// Caller fallbacks served.
    pub served_fallback: u64,
    /// Connections open now.
    pub connections: u64,
}

/// A callback the application gives for breaker changes (log, alert, flip a feature flag).
pub type TransitionCallback = Arc<dyn Fn(moat_resilience::Transition) + Send + Sync>;
