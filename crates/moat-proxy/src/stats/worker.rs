//! One worker's own counters, gauges and histograms.
//!
//! Only the worker's thread writes them, with a relaxed load and store (no read-modify-write,
//! so no bus lock and no contended cache line per request); the scraper reads every worker's
//! values with relaxed loads and sums them. Each worker's block is aligned to its own cache
//! lines, so one worker's writes never invalidate another's. A write from another thread
//! would at worst lose an update, never corrupt one: every bump happens on the worker's own
//! tasks (its sessions, its backend and pinned pools, its accept loop).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A monotonic count written by one thread.
#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    /// Adds `n` (single writer: a load and a store, no atomic read-modify-write).
    #[inline]
    pub(crate) fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    /// Adds one.
    #[inline]
    pub(crate) fn incr(&self) {
        self.add(1);
    }

    /// The current value.
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A level written by one thread. Each worker's value is never negative (what a worker
/// counts up it counts down itself), so sums over workers are plain additions.
#[derive(Debug, Default)]
pub(crate) struct Gauge(AtomicU64);

impl Gauge {
    /// Adds one.
    #[inline]
    pub(crate) fn incr(&self) {
        self.set(self.get().wrapping_add(1));
    }

    /// Takes one away.
    #[inline]
    pub(crate) fn decr(&self) {
        self.set(self.get().wrapping_sub(1));
    }

    /// Sets the level.
    #[inline]
    pub(crate) fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// The current level.
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bounds of the latency buckets, in nanoseconds: 50µs to 10s, roughly 1-2.5-5 per
/// decade. Fixed, so workers' buckets add up bucket by bucket.
pub(crate) const LATENCY_BOUNDS_NS: [u64; 17] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// A latency histogram over [`LATENCY_BOUNDS_NS`], plus an overflow bucket.
#[derive(Debug, Default)]
pub(crate) struct Latency {
    /// Observations per bucket (not cumulative); the last is above every bound.
    buckets: [Counter; LATENCY_BOUNDS_NS.len() + 1],
    sum_ns: Counter,
}

impl Latency {
    /// Records one observation.
    #[inline]
    pub(crate) fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = LATENCY_BOUNDS_NS.partition_point(|&b| b < ns);
        if let Some(b) = self.buckets.get(i) {
            b.incr();
        }
        self.sum_ns.add(ns);
    }

    /// Adds this histogram's buckets to `into` (non-cumulative counts, bucket by bucket) and
    /// returns its sum in nanoseconds.
    pub(crate) fn add_to(&self, into: &mut [u64; LATENCY_BOUNDS_NS.len() + 1]) -> u64 {
        for (acc, b) in into.iter_mut().zip(&self.buckets) {
            *acc = acc.wrapping_add(b.get());
        }
        self.sum_ns.get()
    }
}

/// The class of a connected client, for `moat_clients{class}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientClass {
    /// From a trusted network.
    Trusted,
    /// Signed in (or needing no password).
    Authenticated,
    /// Not signed in yet while a password is required.
    Unauthenticated,
}

impl ClientClass {
    /// Labels, in index order.
    pub(crate) const LABELS: [&'static str; 3] = ["trusted", "authenticated", "unauthenticated"];
}

/// Why moat closed a client, for `moat_clients_closed_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Closed {
    Shed,
    HandshakeDeadline,
    AuthDeadline,
    IdleDeadline,
    SlowRequest,
    SlowSubscriber,
    OutputLimit,
    MemoryBudget,
    /// Unread replies held above `limits.output_soft_limit` for `output_soft_time`.
    OutputSoftLimit,
    /// A heavy non-reader while unread replies filled `limits.output_budget`.
    OutputBudget,
    ProtocolError,
    Killed,
    /// Closed by a drain (the drain's author bumps it).
    #[allow(dead_code)]
    Drain,
}

impl Closed {
    /// Labels, in index order.
    pub(crate) const LABELS: [&'static str; 13] = [
        "shed",
        "handshake_deadline",
        "auth_deadline",
        "idle_deadline",
        "slow_request",
        "slow_subscriber",
        "output_limit",
        "memory_budget",
        "output_soft_limit",
        "output_budget",
        "protocol_error",
        "killed",
        "drain",
    ];
}

/// How moat ran a command, for `moat_commands_total{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CommandKind {
    /// Sent over a shared backend connection.
    Forwarded,
    /// Answered by moat itself (connection state, errors it raises).
    Local,
    /// Run on a dedicated connection (transactions, pub/sub, blocking calls...).
    Pinned,
}

impl CommandKind {
    /// Labels, in index order.
    pub(crate) const LABELS: [&'static str; 3] = ["forwarded", "local", "pinned"];
}

/// The state a breaker entered, for `moat_breaker_transitions_total{to}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BreakerTo {
    Open,
    HalfOpen,
    Closed,
}

impl BreakerTo {
    /// Labels, in index order.
    pub(crate) const LABELS: [&'static str; 3] = ["open", "half_open", "closed"];
}

/// Backend connection states, for `moat_backend_connections{state}`.
pub(crate) const CONN_STATES: [&str; 4] = ["idle", "busy", "connecting", "down"];

/// Connection refusal reasons at accept, in the guard's labels, for the per-worker log
/// summaries.
pub(crate) const REFUSALS: [&str; 8] = [
    "denied",
    "banned",
    "ip_rate",
    "subnet_rate",
    "ip_concurrency",
    "subnet_concurrency",
    "full",
    "shed",
];

/// Everything one worker counts. Aligned to 128 bytes (two cache lines, as adjacent-line
/// prefetch pairs them) so workers' blocks never share a line.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct WorkerStats {
    pub(crate) clients: [Gauge; 3],
    pub(crate) closed: [Counter; 13],
    pub(crate) commands: [Counter; 3],
    /// Time in moat of sampled requests (see [`crate::stats::Snapshot::proxy_latency`]).
    pub(crate) proxy_latency: Latency,
    pub(crate) backend_latency: Latency,
    /// 1 while this worker's breaker is open.
    pub(crate) breaker_open: Gauge,
    pub(crate) breaker_transitions: [Counter; 3],
    pub(crate) backend_reconnects: Counter,
    pub(crate) backend_connect_failures: Counter,
    pub(crate) backend_connections_lost: Counter,
    pub(crate) backend_timeouts: Counter,
    pub(crate) backend_takeovers: Counter,
    pub(crate) requests_refused: Counter,
    pub(crate) pool_waits: Counter,
    pub(crate) lease_waits: Counter,
    pub(crate) lease_refusals: Counter,
    pub(crate) auth_refused: Counter,
    /// Refused connections by [`REFUSALS`] index (the guard keeps the exported totals).
    pub(crate) refused: [Counter; 8],
    /// Shared (0) and pinned (1) connections by [`CONN_STATES`], refreshed every second.
    pub(crate) backend_connections: [[Gauge; 4]; 2],
    /// Dedicated connections leased now, refreshed with the connections.
    pub(crate) pinned_leases: Gauge,
    /// Unread reply bytes and buffered request bytes, refreshed every second.
    pub(crate) output_bytes: Gauge,
    pub(crate) request_bytes: Gauge,
    /// Idle clients held without a task (dormant).
    pub(crate) dormant_clients: Gauge,
}

impl WorkerStats {
    /// Counts a client closed for `why`.
    #[inline]
    pub(crate) fn closed(&self, why: Closed) {
        self.closed[why as usize].incr();
    }

    /// Counts a command run as `kind`.
    #[inline]
    pub(crate) fn command(&self, kind: CommandKind) {
        self.commands[kind as usize].incr();
    }

    /// Counts a client entering (`+`) or leaving (`-`) `class`.
    pub(crate) fn client(&self, class: ClientClass, entering: bool) {
        let g = &self.clients[class as usize];
        if entering { g.incr() } else { g.decr() }
    }

    /// Counts a refusal at accept by its guard label; returns the refusal's index.
    pub(crate) fn refused(&self, label: &str) -> Option<usize> {
        let i = REFUSALS.iter().position(|l| *l == label)?;
        self.refused[i].incr();
        Some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_land_in_the_first_bucket_at_or_above_them() {
        let h = Latency::default();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_micros(51));
        h.observe(Duration::from_secs(60));
        let mut b = [0; LATENCY_BOUNDS_NS.len() + 1];
        let sum = h.add_to(&mut b);
        assert_eq!(b[0], 1, "a value equal to a bound is in its bucket");
        assert_eq!(b[1], 1);
        assert_eq!(
            b[LATENCY_BOUNDS_NS.len()],
            1,
            "above every bound: +Inf only"
        );
        assert_eq!(sum, 50_000 + 51_000 + 60_000_000_000);
    }

    #[test]
    fn a_block_per_worker_spans_whole_cache_line_pairs() {
        assert_eq!(std::mem::align_of::<WorkerStats>(), 128);
        assert_eq!(std::mem::size_of::<WorkerStats>() % 128, 0);
    }
}
