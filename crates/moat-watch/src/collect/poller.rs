//! The monitoring connection: one persistent connection to Redis, named `moat-watch` and
//! exempt from client eviction where Redis supports it, so the monitor neither inflates
//! `total_connections_received` nor gets evicted while Redis is under memory pressure. Each
//! poll reads `INFO` (and, once per connection, `CONFIG GET maxclients tcp-backlog` where INFO
//! lacks them or CONFIG is allowed) and, when Redis runs on this host, the host's signals.
//!
//! When Redis cannot be reached the poll still returns a [`Sample`], marked unreachable:
//! a monitor that cannot connect is often looking at the attack itself. Reconnects back off
//! exponentially (doubling from `backoff_min` to `backoff_max`), so a dead or saturated Redis
//! is not hammered by its own monitor.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

use super::{host, info};
use crate::sample::{HostSignals, RedisSignals, Sample};

/// Why a poller could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PollerError {
    /// The URL is not a Redis URL (`redis://[user:pass@]host:port[/db]`).
    #[error("not a Redis URL: {0}")]
    Url(String),
}

/// How the poller connects and backs off.
#[derive(Debug, Clone)]
pub struct PollerConfig {
    /// `redis://[user:pass@]host:port`.
    pub url: String,
    /// Longest wait for a connection.
    pub connect_timeout: Duration,
    /// Longest wait for one reply (a Redis under attack answers slowly: that is a signal,
    /// not a reason to hang).
    pub response_timeout: Duration,
    /// First delay after a failed connection.
    pub backoff_min: Duration,
    /// Longest delay between connection attempts.
    pub backoff_max: Duration,
    /// Read the host's signals (`/proc`): on when Redis's address is on this host.
    pub local: bool,
    /// Take a `CLIENT LIST` (who holds the connections) every this many polls; 0 never.
    /// It costs Redis a walk over every client, so it is sampled, not taken every poll.
    pub clients_every: u32,
}

impl PollerConfig {
    /// Defaults for `url`: 2 s to connect, 2 s per reply, backoff 0.5 s to 30 s; host
    /// signals when the URL names a loopback address or `localhost`.
    pub fn new(url: &str) -> Self {
        let host = url
            .split("://")
            .nth(1)
            .map(|rest| rest.rsplit('@').next().unwrap_or(rest))
            .and_then(|hostport| hostport.split(['/', '?']).next())
            .map(|hp| hp.rsplit_once(':').map_or(hp, |(h, _)| h))
            .unwrap_or_default()
            .trim_matches(['[', ']']);
        let local = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
        Self {
            url: url.to_owned(),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            local,
            clients_every: 0,
        }
    }
}

/// A persistent monitoring connection and what it learnt about the server.
pub struct Poller {
    config: PollerConfig,
    client: redis::Client,
    conn: Option<MultiplexedConnection>,
    /// From `CONFIG GET`, for Redis versions whose INFO lacks them.
    maxclients: Option<u64>,
    tcp_backlog: Option<u64>,
    /// Last known process id and port, so the host's signals still come while Redis does
    /// not answer.
    process_id: Option<u32>,
    tcp_port: Option<u16>,
    failures: u32,
    next_attempt: Option<Instant>,
    /// Why Redis refuses the watch (login or INFO), while it does.
    refused: Option<String>,
    /// A `CLIENT LIST` was asked for at the next poll (see [`Poller::sample_clients_next`]).
    clients_requested: bool,
    /// The moat in front of Redis, read beside each poll.
    moat: Option<super::moat_view::MoatView>,
    connects: u64,
    attempts: u64,
    polls: u64,
}

impl std::fmt::Debug for Poller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Poller")
            .field("connected", &self.conn.is_some())
            .field("failures", &self.failures)
            .field("connects", &self.connects)
            .finish()
    }
}

impl Poller {
    /// A poller for `config.url`; it connects at its first poll.
    pub fn new(config: PollerConfig) -> Result<Self, PollerError> {
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| PollerError::Url(format!("{}: {e}", redact(&config.url))))?;
        Ok(Self {
            config,
            client,
            conn: None,
            maxclients: None,
            tcp_backlog: None,
            process_id: None,
            tcp_port: None,
            failures: 0,
            next_attempt: None,
            clients_requested: false,
            refused: None,
            moat: None,
            connects: 0,
            attempts: 0,
            polls: 0,
        })
    }

    /// Also reads this moat's admin API at each poll (`Sample::moat`), beside Redis.
    pub fn with_moat(mut self, view: super::moat_view::MoatView) -> Self {
        self.moat = Some(view);
        self
    }

    /// Takes a `CLIENT LIST` at the next poll whatever the schedule (when `clients_every`
    /// is on): the detectors want to name who fills Redis before they raise.
    pub fn sample_clients_next(&mut self) {
        self.clients_requested = true;
    }

    /// Connections opened so far (one while Redis stays up).
    pub fn connects(&self) -> u64 {
        self.connects
    }

    /// Connection attempts so far, failed ones included.
    pub fn attempts(&self) -> u64 {
        self.attempts
    }

    /// Polls once at `now`: INFO over the monitoring connection (connecting first if needed
    /// and the backoff allows), then the host's signals.
    pub async fn poll(&mut self, now: Instant) -> Sample {
        // Beside the Redis poll, on the blocking pool: a slow admin API delays neither.
        let moat = self
            .moat
            .clone()
            .map(|view| tokio::task::spawn_blocking(move || view.read()));
        let (redis, refused) = match self.redis_signals(now).await {
            Polled::Signals(mut r) => {
                r.maxclients = r.maxclients.or(self.maxclients);
                self.process_id = r.process_id.or(self.process_id);
                self.tcp_port = r.tcp_port.or(self.tcp_port);
                (Some(r), None)
            }
            Polled::Refused(why) => (None, Some(why)),
            Polled::Unreachable => (None, None),
        };
        let every = u64::from(self.config.clients_every);
        let due = self.polls.is_multiple_of(every) || self.clients_requested;
        let clients = if redis.is_some() && every > 0 && due {
            self.clients_requested = false;
            self.client_list().await
        } else {
            None
        };
        self.polls += 1;
        let host = if self.config.local {
            host::read(self.process_id, self.tcp_port, self.tcp_backlog)
        } else {
            HostSignals::default()
        };
        Sample {
            at: now,
            // Redis that refused the watch still answered: it is reachable.
            redis_reachable: redis.is_some() || refused.is_some(),
            redis: redis.unwrap_or_default(),
            redis_refused: refused,
            host,
            clients,
            moat: match moat {
                Some(task) => Some(task.await.unwrap_or_default()),
                None => None,
            },
        }
    }

    /// `CLIENT LIST`, summarised; `None` when denied or failed (the watch goes on).
    async fn client_list(&mut self) -> Option<crate::sample::ClientsSummary> {
        let conn = self.conn.as_mut()?;
        let text: redis::RedisResult<String> =
            redis::cmd("CLIENT").arg("LIST").query_async(conn).await;
        text.ok().map(|t| super::client_list::summarise(&t))
    }

    async fn redis_signals(&mut self, now: Instant) -> Polled {
        if self.conn.is_none() {
            if self.next_attempt.is_some_and(|at| now < at) {
                return match &self.refused {
                    Some(why) => Polled::Refused(why.clone()),
                    None => Polled::Unreachable,
                };
            }
            match self.connect().await {
                Ok(conn) => {
                    self.conn = Some(conn);
                    self.failures = 0;
                    self.next_attempt = None;
                }
                Err(e) => {
                    self.failed(now);
                    self.refused = refusal(&e);
                    return match &self.refused {
                        Some(why) => Polled::Refused(why.clone()),
                        None => Polled::Unreachable,
                    };
                }
            }
        }
        let Some(conn) = self.conn.as_mut() else {
            return Polled::Unreachable;
        };
        let text: redis::RedisResult<String> =
            redis::cmd("INFO").arg("everything").query_async(conn).await;
        match text {
            Ok(text) => {
                self.refused = None;
                Polled::Signals(info::parse(&text))
            }
            Err(e) => match refusal(&e) {
                // Redis answered: keep the connection (reconnecting would only inflate the
                // connection rate) and ask again next poll, in case the ACL changes.
                Some(why) => {
                    self.refused = Some(why.clone());
                    Polled::Refused(why)
                }
                None => {
                    // The connection's state is unknown: start afresh (with backoff).
                    self.conn = None;
                    self.failed(now);
                    Polled::Unreachable
                }
            },
        }
    }

    fn failed(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        let delay = backoff(
            self.config.backoff_min,
            self.config.backoff_max,
            self.failures,
        );
        self.next_attempt = Some(now + delay);
    }

    /// Opens and prepares the monitoring connection.
    async fn connect(&mut self) -> redis::RedisResult<MultiplexedConnection> {
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.config.connect_timeout))
            .set_response_timeout(Some(self.config.response_timeout));
        self.attempts += 1;
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await?;
        self.connects += 1;
        // Each may be refused (an old Redis, an ACL): the monitor works without them.
        let _: redis::RedisResult<()> = redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg("moat-watch")
            .query_async(&mut conn)
            .await;
        let _: redis::RedisResult<()> = redis::cmd("CLIENT")
            .arg("NO-EVICT")
            .arg("ON")
            .query_async(&mut conn)
            .await;
        for (name, slot) in [
            ("maxclients", &mut self.maxclients),
            ("tcp-backlog", &mut self.tcp_backlog),
        ] {
            let reply: redis::RedisResult<Vec<String>> = redis::cmd("CONFIG")
                .arg("GET")
                .arg(name)
                .query_async(&mut conn)
                .await;
            if let Ok(reply) = reply {
                *slot = info::config_get_u64(&reply, name).or(*slot);
            }
        }
        Ok(conn)
    }
}

/// What one poll of Redis got.
#[allow(clippy::large_enum_variant)] // one per poll, on the stack: no need to box
enum Polled {
    /// INFO, parsed.
    Signals(RedisSignals),
    /// Redis answered but refused the watch (why, in Redis's words).
    Refused(String),
    /// No answer: refused connection, timeout, dropped connection, Redis full.
    Unreachable,
}

/// Why Redis refused the watch, when `e` is Redis saying no to the login or to INFO (a
/// wrong password, an ACL, a renamed command): a configuration problem to report, not an
/// outage. Redis turning the connection away at `maxclients`, or while loading, is not a
/// refusal of the watch but Redis unable to serve: reported as unreachable.
pub fn refusal(e: &redis::RedisError) -> Option<String> {
    let code = e.code().unwrap_or_default();
    let detail = e.detail().unwrap_or_default();
    let refused = e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(code, "NOAUTH" | "WRONGPASS" | "NOPERM")
        || (code == "ERR" && detail.contains("unknown command"));
    refused.then(|| {
        let text = e.to_string();
        // Bounded: the line goes to the terminal and to webhooks.
        text.chars().take(200).collect()
    })
}

/// The delay after `failures` consecutive failures: doubling from `min`, at most `max`.
pub fn backoff(min: Duration, max: Duration, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(31);
    min.saturating_mul(1u32 << doublings).min(max)
}

/// The URL with any credentials replaced, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let (min, max) = (Duration::from_millis(500), Duration::from_secs(30));
        assert_eq!(backoff(min, max, 1), min);
        assert_eq!(backoff(min, max, 2), Duration::from_secs(1));
        assert_eq!(backoff(min, max, 4), Duration::from_secs(4));
        assert_eq!(backoff(min, max, 10), max);
        assert_eq!(backoff(min, max, u32::MAX), max);
    }

    #[test]
    fn local_means_a_loopback_host() {
        assert!(PollerConfig::new("redis://127.0.0.1:6379").local);
        assert!(PollerConfig::new("redis://user:p@ss@localhost:6379/0").local);
        assert!(PollerConfig::new("redis://[::1]:6379").local);
        assert!(!PollerConfig::new("redis://10.0.0.5:6379").local);
        assert!(!PollerConfig::new("redis://cache.example:6379").local);
    }

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(redact("redis://u:secret@h:1"), "redis://***@h:1");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
        let err = Poller::new(PollerConfig::new("nonsense://x")).unwrap_err();
        assert!(!err.to_string().contains("secret"));
    }
}
