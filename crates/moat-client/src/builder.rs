//! [`ClientBuilder`]: sets [`Config`] fields one by one, takes the application's metrics
//! registry and breaker callback, validates, and starts the client.

use std::sync::Arc;
use std::time::Duration;

use moat_resilience::{BreakerSettings, Transition};
use prometheus_client::registry::Registry;

use crate::client::Client;
use crate::config::{CacheConfig, Config};
use crate::error::ConfigError;
use crate::metrics::{Metrics, TransitionCallback};

/// Builds a [`Client`]; every setter documents its default in [`Config`].
///
/// ```no_run
/// # fn demo() -> Result<(), moat_client::ConfigError> {
/// use std::time::Duration;
/// let mut registry = prometheus_client::registry::Registry::default();
/// let client = moat_client::ClientBuilder::new("redis://127.0.0.1:6379/")
///     .max_size(16)
///     .min_idle(2)
///     .max_connects_per_sec(5)
///     .command_timeout(Duration::from_millis(300))
///     .stale_cache(10_000, Duration::from_secs(60))
///     .metrics(&mut registry)
///     .on_breaker_transition(|t| eprintln!("redis breaker: {t:?}"))
///     .build()?;
/// # drop(client); Ok(()) }
/// ```
pub struct ClientBuilder {
    cfg: Config,
    metrics: Metrics,
    on_transition: Option<TransitionCallback>,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// Every default, for `url` (`redis://host:port/db`, with a password if needed).
    pub fn new(url: impl Into<String>) -> Self {
        Self::from_config(Config::new(url))
    }

    /// Starts from a whole [`Config`].
    pub fn from_config(cfg: Config) -> Self {
        Self {
            cfg,
            metrics: Metrics::new(),
            on_transition: None,
        }
    }

    /// Most connections open at once ([`crate::PoolConfig::max_size`]).
    pub fn max_size(mut self, n: usize) -> Self {
        self.cfg.pool.max_size = n;
        self
    }

    /// Connections kept open while idle ([`crate::PoolConfig::min_idle`]).
    pub fn min_idle(mut self, n: usize) -> Self {
        self.cfg.pool.min_idle = n;
        self
    }

    /// Time to open a connection and have its `PING` answered.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.cfg.pool.connect_timeout = d;
        self
    }

    /// Total time per command, retries included ([`Config::command_timeout`]).
    pub fn command_timeout(mut self, d: Duration) -> Self {
        self.cfg.command_timeout = d;
        self
    }

    /// Connection lifetime, and the share of it taken off at random per connection.
    pub fn max_lifetime(mut self, d: Duration, jitter: f64) -> Self {
        self.cfg.pool.max_lifetime = d;
        self.cfg.pool.lifetime_jitter = jitter;
        self
    }

    /// Idle connections above `min_idle` are closed after this long.
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.cfg.pool.idle_timeout = d;
        self
    }

    /// Longest wait for a free connection ([`crate::PoolConfig::wait_timeout`]).
    pub fn pool_wait_timeout(mut self, d: Duration) -> Self {
        self.cfg.pool.wait_timeout = d;
        self
    }

    /// Most new connections per second ([`crate::PoolConfig::max_connects_per_sec`]).
    pub fn max_connects_per_sec(mut self, n: u32) -> Self {
        self.cfg.pool.max_connects_per_sec = n;
        self
    }

    /// Reconnect delay bounds (exponential between them, full jitter).
    pub fn reconnect_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.cfg.pool.reconnect_base = base;
        self.cfg.pool.reconnect_max = max;
        self
    }

    /// Commands that may wait for a connection beyond those running ([`Config::backlog`]).
    pub fn backlog(mut self, n: usize) -> Self {
        self.cfg.backlog = n;
        self
    }

    /// Retries after the first attempt, and their delay bounds.
    pub fn retries(mut self, max_retries: u32, base: Duration, max: Duration) -> Self {
        self.cfg.retry.max_retries = max_retries;
        self.cfg.retry.base = base;
        self.cfg.retry.max = max;
        self
    }

    /// The retry budget: `ratio` of requests plus `min_per_sec`.
    pub fn retry_budget(mut self, ratio: f64, min_per_sec: u32) -> Self {
        self.cfg.retry.budget_ratio = ratio;
        self.cfg.retry.budget_min_per_sec = min_per_sec;
        self
    }

    /// Whether idempotent writes are retried after an ambiguous error.
    pub fn retry_idempotent_writes(mut self, yes: bool) -> Self {
        self.cfg.retry.retry_idempotent_writes = yes;
        self
    }

    /// Circuit breaker settings.
    pub fn breaker(mut self, settings: BreakerSettings) -> Self {
        self.cfg.breaker = settings;
        self
    }

    /// Keeps last-known values for [`Client::get_or_fallback`].
    pub fn stale_cache(mut self, max_entries: usize, ttl: Duration) -> Self {
        self.cfg.cache = Some(CacheConfig { max_entries, ttl });
        self
    }

    /// Registers the client's series in the application's registry.
    pub fn metrics(self, registry: &mut Registry) -> Self {
        self.metrics.register(registry);
        self
    }

    /// Calls `f` on every breaker change of state (from the task whose command caused it:
    /// keep it short).
    pub fn on_breaker_transition(mut self, f: impl Fn(Transition) + Send + Sync + 'static) -> Self {
        self.on_transition = Some(Arc::new(f));
        self
    }

    /// The configuration as built so far.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Validates and starts the client; must run inside a tokio runtime (the pool's
    /// housekeeping is a task). Connects lazily: a Redis that is down does not fail this.
    pub fn build(self) -> Result<Client, ConfigError> {
        self.cfg.validate()?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ConfigError(
                "build the client inside a tokio runtime (its pool runs a housekeeping task)"
                    .to_owned(),
            ));
        }
        let redis = redis::Client::open(self.cfg.url.as_str())
            .map_err(|e| ConfigError(format!("url {:?}: {e}", self.cfg.url)))?;
        Ok(Client::start(
            self.cfg,
            redis,
            self.metrics,
            self.on_transition,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_and_a_missing_runtime_are_errors_not_panics() {
        let e = ClientBuilder::new("redis://127.0.0.1/")
            .max_size(0)
            .build()
            .expect_err("max_size 0");
        assert!(e.to_string().contains("max_size"), "{e}");
        let e = ClientBuilder::new("redis://127.0.0.1/")
            .build()
            .expect_err("no tokio runtime here");
        assert!(e.to_string().contains("tokio runtime"), "{e}");
    }
}
