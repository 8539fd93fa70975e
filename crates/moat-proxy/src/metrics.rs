//! The proxy's counters: one [`WorkerStats`] block per worker, written only by its worker,
//! summed when read. See [`crate::stats`] for the full snapshot the exporter uses.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::stats::worker::{BreakerTo, Closed, WorkerStats};

/// Every worker's counters, plus the few gauges the data path reads across workers.
#[derive(Debug)]
pub struct Metrics {
    /// One block per worker, by worker index.
    workers: Box<[Arc<WorkerStats>]>,
    /// Clients in MONITOR mode now, on any worker (a gauge). While there are any, PING and
    /// ECHO go to Redis instead of being answered by moat, so monitors see them as they
    /// would on Redis: every worker reads it, so it is one shared atomic, written only when
    /// a MONITOR starts or ends.
    pub(crate) monitors: AtomicU64,
    /// Elements of moat's nftables ban sets (a gauge, written by the nft sync thread).
    pub(crate) nft_elements: AtomicU64,
    /// Failed nft operations (a counter, written by the nft sync thread).
    pub(crate) nft_failures: AtomicU64,
    /// Networks in the socket filter attached now (a gauge; see `kernel_filter.rs`).
    pub(crate) kernel_filter_rules: AtomicU64,
    /// Networks the last filter build left out for lack of room (a gauge).
    pub(crate) kernel_filter_left_out: AtomicU64,
    /// Socket filters built and attached.
    pub(crate) kernel_filter_rebuilds: AtomicU64,
    /// Bans this moat published to its peers (`[ban_share]`).
    pub(crate) ban_share_published: AtomicU64,
    /// Bans applied from peers.
    pub(crate) ban_share_applied: AtomicU64,
    /// Peer messages dropped, by [`crate::ban_share::Rejected`] (its index).
    pub(crate) ban_share_rejected: [AtomicU64; 7],
    /// Lost or failed connections of the ban-share thread to Redis.
    pub(crate) ban_share_errors: AtomicU64,
    /// The primary in use (`backend.sentinels`), as last verified.
    pub(crate) sentinel_primary: std::sync::RwLock<Option<std::net::SocketAddr>>,
    /// Primary switches followed.
    pub(crate) sentinel_switches: AtomicU64,
    /// Sentinels that failed to answer, named a server that is no primary, or dropped
    /// the `+switch-master` subscription.
    pub(crate) sentinel_errors: AtomicU64,
    /// Client TLS handshakes by `crate::tls::accept::Outcome` (its index). Shared atomics:
    /// a handshake costs far more than one.
    pub(crate) tls_handshakes: [AtomicU64; 4],
    /// Backend TLS handshakes that failed (certificate refused, not TLS...).
    pub(crate) backend_tls_failures: AtomicU64,
    /// `[crowdsec]` counters, by [`crate::crowdsec::Counter`] (its index).
    pub(crate) crowdsec: [AtomicU64; crate::crowdsec::Counter::ALL.len()],
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(1)
    }
}

impl Metrics {
    /// Counters for `workers` workers.
    pub(crate) fn new(workers: usize) -> Self {
        Self {
            workers: (0..workers.max(1))
                .map(|_| Arc::new(WorkerStats::default()))
                .collect(),
            monitors: AtomicU64::new(0),
            nft_elements: AtomicU64::new(0),
            nft_failures: AtomicU64::new(0),
            kernel_filter_rules: AtomicU64::new(0),
            kernel_filter_left_out: AtomicU64::new(0),
            kernel_filter_rebuilds: AtomicU64::new(0),
            ban_share_published: AtomicU64::new(0),
            ban_share_applied: AtomicU64::new(0),
            ban_share_rejected: Default::default(),
            ban_share_errors: AtomicU64::new(0),
            sentinel_primary: std::sync::RwLock::new(None),
            sentinel_switches: AtomicU64::new(0),
            sentinel_errors: AtomicU64::new(0),
            tls_handshakes: Default::default(),
            backend_tls_failures: AtomicU64::new(0),
            crowdsec: Default::default(),
        }
    }

    /// Worker `index`'s own block (the last one for an index out of range).
    pub(crate) fn worker(&self, index: usize) -> Arc<WorkerStats> {
        let i = index.min(self.workers.len() - 1);
        self.workers[i].clone()
    }

    /// Every worker's block.
    pub(crate) fn workers(&self) -> &[Arc<WorkerStats>] {
        &self.workers
    }

    /// Sums `pick` over workers.
    pub(crate) fn sum(&self, pick: impl Fn(&WorkerStats) -> u64) -> u64 {
        self.workers
            .iter()
            .fold(0u64, |acc, w| acc.wrapping_add(pick(w)))
    }

    /// The event counters by their historical names, summed over workers (tests and tools;
    /// the exporter uses [`crate::Control::snapshot`]).
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let closed = |why: Closed| self.sum(|w| w.closed[why as usize].get());
        vec![
            (
                "backend_connect_failures",
                self.sum(|w| w.backend_connect_failures.get()),
            ),
            (
                "backend_connections_lost",
                self.sum(|w| w.backend_connections_lost.get()),
            ),
            ("backend_timeouts", self.sum(|w| w.backend_timeouts.get())),
            (
                "breaker_opened",
                self.sum(|w| w.breaker_transitions[BreakerTo::Open as usize].get()),
            ),
            ("requests_refused", self.sum(|w| w.requests_refused.get())),
            (
                "shed_clients",
                closed(Closed::Shed) + closed(Closed::OutputLimit) + closed(Closed::MemoryBudget),
            ),
            (
                "deadline_closes",
                closed(Closed::HandshakeDeadline)
                    + closed(Closed::AuthDeadline)
                    + closed(Closed::IdleDeadline)
                    + closed(Closed::SlowRequest),
            ),
            ("slow_requests", closed(Closed::SlowRequest)),
            ("leases_refused", self.sum(|w| w.lease_refusals.get())),
            ("slow_subscribers", closed(Closed::SlowSubscriber)),
            ("auth_refused", self.sum(|w| w.auth_refused.get())),
            ("backend_takeovers", self.sum(|w| w.backend_takeovers.get())),
            ("monitors", self.monitors.load(Ordering::Relaxed)),
        ]
    }

    /// One counter by its historical name (tests, tools).
    pub fn get(&self, name: &str) -> Option<u64> {
        self.snapshot()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    }
}
