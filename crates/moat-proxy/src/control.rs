//! The operator's handle on a running proxy: the stats snapshot for the exporter, status,
//! bans (through the guard), the heaviest clients, reload and drain.
//!
//! Cheap to clone and `Send + Sync`: the admin listener's thread holds one. Nothing here is
//! on the data path; questions about sessions go to the workers over the directory's
//! channels (see `crate::clients`), so a worker answers between its own tasks.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Instant, SystemTime};

use serde::Serialize;
use tokio::sync::watch;

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
    authority: Arc<crate::auth::Authority>,
    leases: Arc<crate::pinned::LeaseLimits>,
    clients: Arc<crate::clients::Shared>,
    /// Each worker follows the configuration in force through this.
    live: watch::Sender<Arc<Config>>,
    /// Turns true once, when a drain starts.
    drain: watch::Sender<bool>,
    draining: AtomicBool,
    /// One reload at a time: two at once could leave parts applied from different files.
    reloading: Mutex<()>,
    reloads_applied: AtomicU64,
    reloads_rejected: AtomicU64,
    /// Unix time of the last applied reload (the start before any).
    last_reload_unix: AtomicU64,
    /// The TLS listener's certificates, read again on every reload.
    tls: Option<Arc<crate::tls::accept::ServerTls>>,
}

/// What [`Control`] is made of (see `crate::start`).
#[derive(Debug)]
pub(crate) struct Parts {
    pub(crate) guard: Arc<moat_guard::Guard>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) config: Arc<Config>,
    pub(crate) authority: Arc<crate::auth::Authority>,
    pub(crate) leases: Arc<crate::pinned::LeaseLimits>,
    pub(crate) clients: Arc<crate::clients::Shared>,
    pub(crate) live: watch::Sender<Arc<Config>>,
    pub(crate) drain: watch::Sender<bool>,
    pub(crate) tls: Option<Arc<crate::tls::accept::ServerTls>>,
}

/// Settings a running proxy cannot change: a reload reports them and keeps the running
/// value. A key here covers the keys below it (`backend.breaker` covers its fields).
const NEEDS_RESTART: &[&str] = &[
    "proxy.listen",
    "proxy.workers",
    "proxy.backlog",
    "proxy.tls_listen",
    "backend.address",
    "backend.sentinels",
    "backend.master_name",
    "backend.sentinel_username",
    "backend.sentinel_password",
    "backend.sentinel_refresh",
    "backend.username",
    "backend.password",
    "backend.connect_timeout",
    "backend.databases",
    "backend.request_timeout",
    "backend.min_idle",
    "backend.max_lifetime",
    "backend.health_check_interval",
    "backend.breaker",
    "backend.tls",
    "auth.mode",
    "guard.table_capacity",
    "guard.ban_capacity",
    "limits.max_reply_depth",
    "admin",
    "kernel.nftables",
    "kernel.nftables_table",
    "crowdsec",
    "ban_share",
];

fn unix_secs(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
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
    /// Redis as moat sees it: health and pool usage.
    pub backend: BackendStatus,
}

/// How moat's connections to Redis are doing (`/status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendStatus {
    /// `up` (every worker has a working shared connection), `degraded` (some do not, or
    /// a breaker is open) or `down` (none has).
    pub health: &'static str,
    /// The shared pool.
    pub shared: PoolUsage,
    /// The dedicated (pinned) pool.
    pub pinned: PoolUsage,
    /// Dedicated connections leased to clients now.
    pub leases_in_use: u64,
}

/// One pool's connections by state, against its cap.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PoolUsage {
    /// Open and waiting for work.
    pub idle: u64,
    /// Open with requests in flight (shared) or leased (pinned).
    pub busy: u64,
    /// Being opened.
    pub connecting: u64,
    /// Slots without a connection after a failure, waiting to reconnect.
    pub down: u64,
    /// The configured cap.
    pub max: u64,
}

impl Control {
    pub(crate) fn new(parts: Parts) -> Self {
        let started_at = SystemTime::now();
        Self {
            inner: Arc::new(Inner {
                guard: parts.guard,
                metrics: parts.metrics,
                config: RwLock::new(parts.config),
                started: Instant::now(),
                started_at,
                authority: parts.authority,
                leases: parts.leases,
                clients: parts.clients,
                live: parts.live,
                drain: parts.drain,
                draining: AtomicBool::new(false),
                reloading: Mutex::new(()),
                reloads_applied: AtomicU64::new(0),
                reloads_rejected: AtomicU64::new(0),
                last_reload_unix: AtomicU64::new(unix_secs(started_at)),
                tls: parts.tls,
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

    /// Every metric, summed over workers, at this moment.
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
                (
                    "kernel_nft_failures",
                    m.nft_failures.load(std::sync::atomic::Ordering::Relaxed),
                ),
                (
                    "kernel_filter_rebuilds",
                    m.kernel_filter_rebuilds.load(Ordering::Relaxed),
                ),
                (
                    "ban_share_published",
                    m.ban_share_published.load(Ordering::Relaxed),
                ),
                (
                    "ban_share_applied",
                    m.ban_share_applied.load(Ordering::Relaxed),
                ),
                (
                    "ban_share_errors",
                    m.ban_share_errors.load(Ordering::Relaxed),
                ),
                (
                    "sentinel_switches",
                    m.sentinel_switches.load(Ordering::Relaxed),
                ),
                ("sentinel_errors", m.sentinel_errors.load(Ordering::Relaxed)),
                (
                    "backend_tls_failures",
                    m.backend_tls_failures.load(Ordering::Relaxed),
                ),
            ]
            .into_iter()
            .chain(
                crate::crowdsec::Counter::ALL
                    .iter()
                    .map(|c| (c.name(), m.crowdsec[*c as usize].load(Ordering::Relaxed))),
            )
            .collect(),
            sentinel_primary: m
                .sentinel_primary
                .read()
                .ok()
                .and_then(|p| p.map(|a| a.to_string())),
            tls_handshakes: crate::tls::accept::Outcome::ALL
                .iter()
                .map(|o| {
                    (
                        o.label(),
                        m.tls_handshakes[*o as usize].load(Ordering::Relaxed),
                    )
                })
                .collect(),
            ban_share_rejected: crate::ban_share::Rejected::ALL
                .iter()
                .map(|r| {
                    (
                        r.label(),
                        m.ban_share_rejected[*r as usize].load(Ordering::Relaxed),
                    )
                })
                .collect(),
            gauges: vec![
                ("clients_max", u64::from(config.guard.max_clients)),
                ("pinned_leases", sum(&|w| w.pinned_leases.get())),
                (
                    "monitors",
                    m.monitors.load(std::sync::atomic::Ordering::Relaxed),
                ),
                ("client_output_bytes", sum(&|w| w.output_bytes.get())),
                ("request_buffer_bytes", sum(&|w| w.request_bytes.get())),
                ("clients_dormant", sum(&|w| w.dormant_clients.get())),
                ("memory_budget_bytes", config.limits.memory_budget as u64),
                (
                    "kernel_nft_elements",
                    m.nft_elements.load(std::sync::atomic::Ordering::Relaxed),
                ),
                (
                    "kernel_filter_rules",
                    m.kernel_filter_rules.load(Ordering::Relaxed),
                ),
                (
                    "kernel_filter_left_out",
                    m.kernel_filter_left_out.load(Ordering::Relaxed),
                ),
            ],
            commands: by_index(&CommandKind::LABELS, &|w, i| w.commands[i].get()),
            proxy_latency: histogram(m, |w| &w.proxy_latency),
            backend_latency: histogram(m, |w| &w.backend_latency),
            breaker_open: sum(&|w| w.breaker_open.get()),
            breaker_transitions: by_index(&BreakerTo::LABELS, &|w, i| {
                w.breaker_transitions[i].get()
            }),
            reloads: vec![
                (
                    "applied",
                    self.inner.reloads_applied.load(Ordering::Relaxed),
                ),
                (
                    "rejected",
                    self.inner.reloads_rejected.load(Ordering::Relaxed),
                ),
            ],
            draining: self.draining(),
            last_reload_success_seconds: self.inner.last_reload_unix.load(Ordering::Relaxed) as f64,
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
            backend: backend_status(&snap, self.config().proxy.workers as u64),
        }
    }

    /// The `n` heaviest clients (most unread output, then most in flight, then oldest),
    /// from every worker.
    ///
    /// Each worker answers between its own tasks; one that does not answer within a couple
    /// of seconds is left out. Call from a tokio runtime with timers enabled.
    pub async fn top_clients(&self, n: usize) -> Vec<ClientSummary> {
        let answers = self
            .inner
            .clients
            .ask_all(|reply| crate::clients::Query::Summaries { reply })
            .await;
        let mut all: Vec<ClientSummary> = answers.into_iter().flatten().collect();
        all.sort_by(|a, b| {
            (b.unread_output, b.in_flight, b.age_secs, a.id).cmp(&(
                a.unread_output,
                a.in_flight,
                a.age_secs,
                b.id,
            ))
        });
        all.truncate(n);
        all
    }

    /// Validates `config` and applies what can change live; the rest is reported as
    /// needing a restart. On error nothing changes.
    ///
    /// Applied live, without dropping a client: the guard's lists, rates, caps and deadlines
    /// (connections held stay; a lowered cap refuses new ones), table mode's users (clients
    /// signed in stay signed in; new AUTHs meet the new table), limits, pool sizes (a
    /// smaller pool closes its excess connections once idle, a leased one when its lease
    /// ends), the lease caps and wait, and the drain timeout. The settings in
    /// `NEEDS_RESTART` keep their running value. The outcome is logged.
    pub fn reload(&self, config: Config) -> Result<ReloadReport, ReloadError> {
        let inner = &self.inner;
        let _one = inner
            .reloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let outcome = self.try_reload(config);
        match &outcome {
            Ok(report) => {
                inner.reloads_applied.fetch_add(1, Ordering::Relaxed);
                inner
                    .last_reload_unix
                    .store(unix_secs(SystemTime::now()), Ordering::Relaxed);
                if report.applied.is_empty() && report.needs_restart.is_empty() {
                    tracing::info!("configuration reloaded: nothing changed");
                } else {
                    tracing::info!(
                        applied = %report.applied.join(","),
                        needs_restart = %report.needs_restart.join(","),
                        "configuration reloaded"
                    );
                }
                if !report.needs_restart.is_empty() {
                    tracing::warn!(
                        keys = %report.needs_restart.join(","),
                        "settings changed that take effect only after a restart; their \
                         running values stay"
                    );
                }
            }
            Err(e) => self.reload_rejected(e),
        }
        outcome
    }

    /// Counts and logs a reload refused before it reached [`Control::reload`] (the file
    /// could not be read or parsed); the running configuration stays.
    pub fn reload_rejected(&self, error: &dyn std::fmt::Display) {
        self.inner.reloads_rejected.fetch_add(1, Ordering::Relaxed);
        tracing::error!(error = %error, "configuration reload rejected; nothing changed");
    }

    fn try_reload(&self, config: Config) -> Result<ReloadReport, ReloadError> {
        config.validate()?;
        let old = self.config();
        let report = plan(&old, &config)?;
        let effective = keep_running(&old, config);
        // Checked again with the running values kept (proxy.workers bounds the pools).
        effective.validate()?;
        // Certificate files are read on every reload, changed config or not: rotating a
        // certificate in place is the usual case. A file that does not load refuses the
        // whole reload.
        if let (Some(tls), Some(section)) = (&self.inner.tls, &effective.proxy.tls) {
            tls.replace(crate::tls::accept::ServerSide::load(section)?);
            tracing::info!("TLS certificates reloaded");
        }
        if report.applied.is_empty() {
            return Ok(report);
        }
        let inner = &self.inner;
        inner.guard.reconfigure(effective.guard.clone());
        if report.applied.iter().any(|k| k == "users") {
            inner.authority.replace_users(&effective);
        }
        let p = &effective.pinned;
        inner.leases.set(p.max_per_ip, p.max_per_user);
        let effective = Arc::new(effective);
        *inner.config.write().unwrap_or_else(PoisonError::into_inner) = effective.clone();
        // Each worker applies limits, deadlines and its pool shares on its own thread.
        inner.live.send_replace(effective);
        Ok(report)
    }

    /// Stops accepting clients and lets the connected ones finish: each closes once it has
    /// its replies and no transaction, subscription or blocking call, or at the drain
    /// timeout. The process keeps running (rolling restarts behind a load balancer).
    ///
    /// Every worker closes its listening socket, so the kernel refuses new connections.
    /// Idle clients, and subscribers once the messages already read are written, close at
    /// once. A drain cannot be undone; calling this again does nothing.
    pub fn drain(&self) {
        if self.inner.draining.swap(true, Ordering::Relaxed) {
            return;
        }
        tracing::info!(
            clients = self.inner.guard.clients(),
            timeout = ?self.config().proxy.drain_timeout,
            "drain started"
        );
        self.inner.drain.send_replace(true);
    }

    /// Whether a drain (or shutdown) is under way.
    pub fn draining(&self) -> bool {
        self.inner.draining.load(Ordering::Relaxed)
    }
}

/// Which changed keys a reload applies and which need a restart.
fn plan(old: &Config, config: &Config) -> Result<ReloadReport, ReloadError> {
    let mut report = ReloadReport::default();
    for key in changed_keys(old, config)? {
        let restart = NEEDS_RESTART.iter().any(|r| {
            key == *r
                || key
                    .strip_prefix(r)
                    .is_some_and(|rest| rest.starts_with('.'))
        });
        if restart {
            report.needs_restart.push(key);
        } else {
            report.applied.push(key);
        }
    }
    // The mode follows from the users when it is not set: a change of mode needs a
    // restart, and so then do the users.
    if old.auth_mode() != config.auth_mode() {
        if !report.needs_restart.iter().any(|k| k == "auth.mode") {
            report.needs_restart.push("auth.mode".into());
        }
        if let Some(at) = report.applied.iter().position(|k| k == "users") {
            report.applied.remove(at);
            report.needs_restart.push("users".into());
        }
    }
    Ok(report)
}

/// The dotted keys whose values differ between `old` and `new` (arrays and the users
/// table compare whole: `guard.trusted`, `users`).
fn changed_keys(old: &Config, new: &Config) -> Result<Vec<String>, ReloadError> {
    let value = |c: &Config| {
        toml::Value::try_from(c).map_err(|e| ReloadError::Refused(format!("cannot compare: {e}")))
    };
    let (old, new) = (value(old)?, value(new)?);
    let mut changed = Vec::new();
    diff("", Some(&old), Some(&new), &mut changed);
    Ok(changed)
}

fn diff(key: &str, old: Option<&toml::Value>, new: Option<&toml::Value>, out: &mut Vec<String>) {
    match (old, new) {
        (Some(toml::Value::Table(a)), Some(toml::Value::Table(b))) => {
            let mut names: Vec<&String> = a.keys().chain(b.keys()).collect();
            names.sort();
            names.dedup();
            for name in names {
                let sub = if key.is_empty() {
                    name.clone()
                } else {
                    format!("{key}.{name}")
                };
                diff(&sub, a.get(name), b.get(name), out);
            }
        }
        (a, b) if a != b => out.push(key.to_owned()),
        _ => {}
    }
}

/// `new`, with the settings a running proxy cannot change kept at their running values.
fn keep_running(old: &Config, mut new: Config) -> Config {
    new.proxy.listen = old.proxy.listen;
    new.proxy.workers = old.proxy.workers;
    new.proxy.backlog = old.proxy.backlog;
    let (b, o) = (&mut new.backend, &old.backend);
    b.address = o.address;
    b.sentinels.clone_from(&o.sentinels);
    b.master_name.clone_from(&o.master_name);
    b.sentinel_username.clone_from(&o.sentinel_username);
    b.sentinel_password.clone_from(&o.sentinel_password);
    b.sentinel_refresh = o.sentinel_refresh;
    b.username.clone_from(&o.username);
    b.password.clone_from(&o.password);
    b.connect_timeout = o.connect_timeout;
    b.databases = o.databases;
    b.request_timeout = o.request_timeout;
    b.min_idle = o.min_idle;
    b.max_lifetime = o.max_lifetime;
    b.health_check_interval = o.health_check_interval;
    b.breaker = o.breaker.clone();
    b.tls.clone_from(&o.tls);
    new.proxy.tls_listen = old.proxy.tls_listen;
    new.guard.table_capacity = old.guard.table_capacity;
    new.guard.ban_capacity = old.guard.ban_capacity;
    new.limits.max_reply_depth = old.limits.max_reply_depth;
    if old.auth_mode() != new.auth_mode() {
        new.users.clone_from(&old.users);
    }
    new.auth = old.auth.clone();
    // The admin listener was bound and its token read at start.
    new.admin = old.admin.clone();
    new
}

/// `/status`'s backend part, from the snapshot's levels (refreshed about once a second).
fn backend_status(snap: &Snapshot, workers: u64) -> BackendStatus {
    let pool = |group: &str| {
        let mut usage = PoolUsage::default();
        for (g, state, n) in &snap.backend_connections {
            if *g != group {
                continue;
            }
            match *state {
                "idle" => usage.idle += n,
                "busy" => usage.busy += n,
                "connecting" => usage.connecting += n,
                _ => usage.down += n,
            }
        }
        usage.max = Snapshot::labelled(&snap.backend_connections_max, group);
        usage
    };
    let shared = pool("shared");
    let working = shared.idle + shared.busy;
    let health = if working == 0 {
        "down"
    } else if snap.breaker_open > 0 || working < workers.min(shared.max) {
        "degraded"
    } else {
        "up"
    };
    BackendStatus {
        health,
        shared,
        pinned: pool("pinned"),
        leases_in_use: snap.gauge("pinned_leases"),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_sorts_changes_into_live_and_restart() {
        let old = Config::default();
        let mut new = old.clone();
        new.guard.max_per_ip = 3;
        new.guard.deny = vec!["10.0.0.0/8".parse().expect("net")];
        new.backend.breaker.probes = 9;
        new.proxy.workers = 2;
        new.proxy.drain_timeout = std::time::Duration::from_secs(1);
        let report = plan(&old, &new).expect("comparable");
        assert_eq!(
            report.applied,
            ["guard.deny", "guard.max_per_ip", "proxy.drain_timeout"]
        );
        assert_eq!(
            report.needs_restart,
            ["backend.breaker.probes", "proxy.workers"]
        );
        let kept = keep_running(&old, new);
        assert_eq!(kept.proxy.workers, 1);
        assert_eq!(kept.backend.breaker.probes, old.backend.breaker.probes);
        assert_eq!(kept.guard.max_per_ip, 3);
        assert!(plan(&old, &old).expect("same").applied.is_empty());
    }

    #[test]
    fn sentinel_keys_need_a_restart() {
        let old = Config::default();
        let mut new = old.clone();
        new.backend.sentinels = vec!["127.0.0.1:26379".parse().expect("addr")];
        new.backend.master_name = Some("m".into());
        new.backend.sentinel_refresh = std::time::Duration::from_secs(5);
        let report = plan(&old, &new).expect("comparable");
        assert!(report.applied.is_empty(), "{report:?}");
        assert_eq!(
            report.needs_restart,
            [
                "backend.master_name",
                "backend.sentinel_refresh",
                "backend.sentinels"
            ]
        );
        let kept = keep_running(&old, new);
        assert!(kept.backend.sentinels.is_empty());
        assert_eq!(kept.backend.master_name, None);
    }

    #[test]
    fn a_change_of_auth_mode_keeps_the_users() {
        let old = Config::default();
        let mut new = old.clone();
        new.users = vec![crate::config::UserConfig {
            name: "app".into(),
            password: Some("pw".into()),
            password_sha256: None,
            deny_commands: Vec::new(),
        }];
        let report = plan(&old, &new).expect("comparable");
        assert!(report.applied.is_empty(), "{report:?}");
        assert_eq!(report.needs_restart, ["auth.mode", "users"]);
        assert!(keep_running(&old, new).users.is_empty());
    }
}
