//! Counters of what the proxy did, shared by all workers, for the metrics exporter.

use std::sync::atomic::{AtomicU64, Ordering};

/// Event counts since start. Cheap to bump from any worker (relaxed atomics).
#[derive(Debug, Default)]
pub struct Metrics {
    /// Backend connection attempts that failed.
    pub backend_connect_failures: AtomicU64,
    /// Backend connections lost after being established.
    pub backend_connections_lost: AtomicU64,
    /// Requests answered with the timeout error: no reply within `backend.request_timeout`.
    pub backend_timeouts: AtomicU64,
    /// Times a worker's circuit breaker opened.
    pub breaker_opened: AtomicU64,
    /// Requests refused at once because no backend connection could take them (breaker
    /// open, reconnecting, queue full).
    pub requests_refused: AtomicU64,
    /// Connections closed to shed load (oldest silent first).
    pub shed_clients: AtomicU64,
    /// Connections closed at a handshake, auth or idle deadline.
    pub deadline_closes: AtomicU64,
    /// Of those, connections closed for not finishing a request in time (slowloris).
    pub slow_requests: AtomicU64,
    /// Lease requests that got no dedicated connection.
    pub leases_refused: AtomicU64,
    /// Subscribers (or monitors) disconnected for not reading their messages.
    pub slow_subscribers: AtomicU64,
    /// AUTH and HELLO AUTH attempts refused (by Redis in passthrough mode, by moat's table).
    pub auth_refused: AtomicU64,
    /// Shared connections reconnected as another Redis user because every one served other
    /// users (passthrough mode): many do mean the pool is small for the users active at once.
    pub backend_takeovers: AtomicU64,
    /// Clients in MONITOR mode now (a gauge). While there are any, PING and ECHO go to
    /// Redis instead of being answered by moat, so monitors see them as they would on Redis.
    pub monitors: AtomicU64,
}

impl Metrics {
    /// Adds one to `counter`.
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A consistent-enough copy of every counter, by name.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            (
                "backend_connect_failures",
                get(&self.backend_connect_failures),
            ),
            (
                "backend_connections_lost",
                get(&self.backend_connections_lost),
            ),
            ("backend_timeouts", get(&self.backend_timeouts)),
            ("breaker_opened", get(&self.breaker_opened)),
            ("requests_refused", get(&self.requests_refused)),
            ("shed_clients", get(&self.shed_clients)),
            ("deadline_closes", get(&self.deadline_closes)),
            ("slow_requests", get(&self.slow_requests)),
            ("leases_refused", get(&self.leases_refused)),
            ("slow_subscribers", get(&self.slow_subscribers)),
            ("auth_refused", get(&self.auth_refused)),
            ("backend_takeovers", get(&self.backend_takeovers)),
            ("monitors", get(&self.monitors)),
        ]
    }

    /// One counter by name (tests, tools).
    pub fn get(&self, name: &str) -> Option<u64> {
        self.snapshot()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    }
}
