//! Every option of the client, with its default and the reason for it. [`Config`] is plain
//! data; [`crate::ClientBuilder`] fills it and [`Config::validate`] rejects nonsense before
//! anything connects.

use std::time::Duration;

use moat_resilience::BreakerSettings;

use crate::error::ConfigError;

/// Pool settings: how many connections, how long they live, how fast new ones are opened.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// Most connections open at once (idle and in use). Default 8: each command holds a
    /// connection for one round trip, so a few serve thousands of requests per second, and a
    /// small number is what keeps a fleet of apps from filling Redis's `maxclients`.
    pub max_size: usize,
    /// Connections kept open while idle, so a burst does not pay for connects. Default 1.
    pub min_idle: usize,
    /// Time allowed to open a connection and get its first `PING` answered. Default 1 s:
    /// Redis on a LAN answers in well under a millisecond; a longer wait only queues work.
    pub connect_timeout: Duration,
    /// A connection is closed after this long, give or take `lifetime_jitter`, so connections
    /// move to a restarted or failed-over server. Default 30 min.
    pub max_lifetime: Duration,
    /// Share of `max_lifetime` taken off at random per connection (0.0-1.0), so connections
    /// opened together are not all replaced together. Default 0.2.
    pub lifetime_jitter: f64,
    /// An idle connection above `min_idle` is closed after this long. Default 5 min.
    pub idle_timeout: Duration,
    /// Longest a command waits for a free connection; past it the command fails with
    /// [`crate::ClientError::PoolTimeout`]. Default 250 ms (it also stays within the command
    /// timeout): a pool that stays exhausted longer is better answered with an error.
    pub wait_timeout: Duration,
    /// Most new connections opened per second, whatever the demand. Default 10: a restart or
    /// a full Redis must not turn into a connection storm (envoy#26400, StackExchange.Redis
    /// issue 2885).
    pub max_connects_per_sec: u32,
    /// First delay after a failed connect; doubles per failure, with full jitter. Default 50 ms.
    pub reconnect_base: Duration,
    /// Ceiling of the reconnect delay. Default 2 s: long enough that a fleet of apps
    /// spreads its attempts, short enough that an app is back soon after Redis is.
    pub reconnect_max: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_size: 8,
            min_idle: 1,
            connect_timeout: Duration::from_secs(1),
            max_lifetime: Duration::from_secs(30 * 60),
            lifetime_jitter: 0.2,
            idle_timeout: Duration::from_secs(5 * 60),
            wait_timeout: Duration::from_millis(250),
            max_connects_per_sec: 10,
            reconnect_base: Duration::from_millis(50),
            reconnect_max: Duration::from_secs(2),
        }
    }
}

/// Retry settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Retries after the first attempt (0 turns retries off). Default 3.
    pub max_retries: u32,
    /// First retry delay ceiling; doubles per retry, full jitter. Default 10 ms.
    pub base: Duration,
    /// Ceiling of a retry delay. Default 200 ms.
    pub max: Duration,
    /// Retries allowed as a share of requests over `budget_window`. Default 0.2 (Finagle's and
    /// Envoy's): when Redis is down, retries add at most a fifth to the load.
    pub budget_ratio: f64,
    /// Retries allowed per second whatever the traffic, so a quiet app can still retry.
    /// Default 10 (Finagle's floor).
    pub budget_min_per_sec: u32,
    /// Window the budget is counted over. Default 10 s.
    pub budget_window: Duration,
    /// Whether writes the command table marks idempotent (SET, DEL, HSET, EXPIRE...) are
    /// retried after an error that leaves it unknown whether they ran. Default true: running
    /// them twice leaves the same data, though the second reply may differ (DEL answers 0).
    pub retry_idempotent_writes: bool,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_retries: 3,
            base: Duration::from_millis(10),
            max: Duration::from_millis(200),
            budget_ratio: 0.2,
            budget_min_per_sec: 10,
            budget_window: Duration::from_secs(10),
            retry_idempotent_writes: true,
        }
    }
}

/// Local cache of last-known values, served (marked stale) while Redis is unavailable.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    /// Most keys kept; the oldest entry goes first. Default 10,000.
    pub max_entries: usize,
    /// A value older than this is never served. Default 5 min: stale data beats an error for
    /// a while, not forever.
    pub ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_entries: 10_000,
            ttl: Duration::from_secs(5 * 60),
        }
    }
}

/// Everything the client needs; see each field.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Redis URL, e.g. `redis://127.0.0.1:6379/0`.
    pub url: String,
    /// Total time for one command, retries and waits included. Default 1 s.
    pub command_timeout: Duration,
    /// Commands that may wait for a connection at once, beyond those running (the backlog);
    /// more fail at once with [`crate::ClientError::BacklogFull`]. Default 64: a bounded
    /// queue, never a "spiral of death".
    pub backlog: usize,
    /// Pool settings.
    pub pool: PoolConfig,
    /// Retry settings.
    pub retry: RetryConfig,
    /// Breaker settings (moat-resilience's, the same code moat's proxy runs). Default: the
    /// proxy's (5 consecutive failures or half of 20 in 10 s; open 2 s; 3 probes), but open
    /// for 1 s: while open, the app is served stale values or errors at once, and a probe
    /// costs Redis one command.
    pub breaker: BreakerSettings,
    /// The stale-value cache; `None` (the default) keeps nothing.
    pub cache: Option<CacheConfig>,
}

impl Config {
    /// The defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            command_timeout: Duration::from_secs(1),
            backlog: 64,
            pool: PoolConfig::default(),
            retry: RetryConfig::default(),
            breaker: BreakerSettings {
                open_for: Duration::from_secs(1),
                ..BreakerSettings::default()
            },
            cache: None,
        }
    }

    /// Rejects values that cannot work, each with the reason.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |what: &str| Err(ConfigError(what.to_owned()));
        let p = &self.pool;
        if p.max_size == 0 {
            return bad("pool.max_size must be at least 1");
        }
        if p.min_idle > p.max_size {
            return bad("pool.min_idle must not exceed pool.max_size");
        }
        if p.max_connects_per_sec == 0 {
            return bad("pool.max_connects_per_sec must be at least 1");
        }
        if !(0.0..=1.0).contains(&p.lifetime_jitter) {
            return bad("pool.lifetime_jitter must be within 0.0..=1.0");
        }
        for (name, d) in [
            ("command_timeout", self.command_timeout),
            ("pool.connect_timeout", p.connect_timeout),
            ("pool.max_lifetime", p.max_lifetime),
            ("pool.idle_timeout", p.idle_timeout),
            ("pool.wait_timeout", p.wait_timeout),
            ("pool.reconnect_base", p.reconnect_base),
            ("retry.base", self.retry.base),
            ("retry.budget_window", self.retry.budget_window),
        ] {
            if d.is_zero() {
                return Err(ConfigError(format!("{name} must be above zero")));
            }
        }
        if p.reconnect_max < p.reconnect_base || self.retry.max < self.retry.base {
            return bad("a backoff maximum must not be below its base");
        }
        if !(0.0..=1.0).contains(&self.retry.budget_ratio) {
            return bad("retry.budget_ratio must be within 0.0..=1.0");
        }
        let b = &self.breaker;
        if b.consecutive_failures == 0 || b.probes == 0 || b.open_for.is_zero() {
            return bad("breaker: consecutive_failures, probes and open_for must be above zero");
        }
        if let Some(c) = &self.cache
            && (c.max_entries == 0 || c.ttl.is_zero())
        {
            return bad("cache: max_entries and ttl must be above zero");
        }
        redis::Client::open(self.url.as_str())
            .map_err(|e| ConfigError(format!("url {:?}: {e}", self.url)))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_nonsense_is_named() {
        assert_eq!(Config::new("redis://127.0.0.1/").validate(), Ok(()));
        let mut c = Config::new("redis://127.0.0.1/");
        c.pool.min_idle = 9;
        let e = c.validate().expect_err("min_idle above max_size");
        assert!(e.to_string().contains("min_idle"), "{e}");
        let e = Config::new("not a url").validate().expect_err("bad url");
        assert!(e.to_string().contains("not a url"), "{e}");
    }
}
