//! The [`Client`]: one command's path through the pieces. Backlog place → retry budget
//! counts the request → per attempt: breaker check → pool checkout (gate, backoff) → send
//! with the time left → classify the outcome → report to breaker, gate and metrics → retry
//! only when [`crate::retry::may_retry`] and the budget allow and time is left.

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use moat_resilience::{Backoff, Breaker, Transition, Verdict};
use redis::aio::ConnectionLike;
use redis::{FromRedisValue, Value};

use crate::backlog::Backlog;
use crate::budget::RetryBudget;
use crate::commands::{Idempotency, classify, cmd_args};
use crate::config::Config;
use crate::error::{Applied, ClientError};
use crate::fallback::{Served, Source, StaleCache};
use crate::metrics::{Metrics, Stats, TransitionCallback};
use crate::pool::Pool;
use crate::retry::{classify_error, may_retry};

/// How often the pool's housekeeping runs (idle reaping, `min_idle`).
const MAINTAIN_EVERY: Duration = Duration::from_millis(500);

pub(crate) struct Inner {
    cfg: Config,
    pool: Pool,
    backlog: Backlog,
    breaker: Mutex<Breaker>,
    budget: Mutex<RetryBudget>,
    cache: Option<Mutex<StaleCache>>,
    metrics: Metrics,
    on_transition: Option<TransitionCallback>,
}

/// A resilient Redis client: cheap to clone (clones share the pool, breaker and budget).
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let client = moat_client::Client::builder("redis://127.0.0.1:6379/")
///     .max_size(4)
///     .command_timeout(std::time::Duration::from_millis(500))
///     .build()?;
/// let n: i64 = client.query(redis::cmd("INCR").arg("hits")).await?;
/// println!("{n}");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.inner.cfg.url)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Client {
    /// A builder with every default (see [`Config`]).
    pub fn builder(url: impl Into<String>) -> crate::ClientBuilder {
        crate::ClientBuilder::new(url)
    }

    pub(crate) fn start(
        cfg: Config,
        redis: redis::Client,
        metrics: Metrics,
        on_transition: Option<TransitionCallback>,
    ) -> Self {
        let inner = Arc::new(Inner {
            pool: Pool::new(redis, cfg.pool.clone(), metrics.clone()),
            backlog: Backlog::new(cfg.pool.max_size, cfg.backlog),
            breaker: Mutex::new(Breaker::new(cfg.breaker)),
            budget: Mutex::new(RetryBudget::new(
                cfg.retry.budget_ratio,
                cfg.retry.budget_min_per_sec,
                cfg.retry.budget_window,
            )),
            cache: cfg.cache.clone().map(|c| Mutex::new(StaleCache::new(c))),
            metrics,
            on_transition,
            cfg,
        });
        tokio::spawn(maintain(Arc::downgrade(&inner)));
        Self { inner }
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.inner.cfg
    }

    /// The counters since the client was built.
    pub fn stats(&self) -> Stats {
        self.inner.metrics.stats()
    }

    /// Connections open now, idle and in use.
    pub fn connections(&self) -> usize {
        self.inner.pool.live()
    }

    /// Runs `cmd`, retrying only where safe (see [`crate::retry`]), within the command
    /// timeout. Whether a command may be repeated comes from the command table.
    pub async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, ClientError> {
        self.query_with(cmd, Idempotency::FromTable).await
    }

    /// [`Client::query`] with the caller's word on whether `cmd` may run twice.
    pub async fn query_with<T: FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
        idempotency: Idempotency,
    ) -> Result<T, ClientError> {
        let value = self.value(cmd, idempotency).await?;
        convert(value)
    }

    /// The raw reply, with metrics.
    async fn value(
        &self,
        cmd: &redis::Cmd,
        idempotency: Idempotency,
    ) -> Result<Value, ClientError> {
        let started = Instant::now();
        let result = self.run(cmd, idempotency, started).await;
        let m = &self.inner.metrics;
        m.duration.observe(started.elapsed().as_secs_f64());
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.kind_label(),
        };
        Metrics::count(&m.requests, "outcome", outcome);
        result
    }

    async fn run(
        &self,
        cmd: &redis::Cmd,
        idempotency: Idempotency,
        started: Instant,
    ) -> Result<Value, ClientError> {
        let inner = &self.inner;
        let deadline = started + inner.cfg.command_timeout;
        let args = cmd_args(cmd);
        let class = classify(&args);
        let name = args
            .first()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .unwrap_or_default();
        let _place = inner.backlog.enter()?;
        lock(&inner.budget).request(started);
        let retry = &inner.cfg.retry;
        let mut backoff = Backoff::new(retry.base, retry.max);
        // Bounded by max_retries and by the deadline.
        let mut retries = 0;
        // What Redis last did to this command, for when a retry ends in one of the client's
        // own refusals: "connection refused" says more than "breaker open" after it.
        let mut cause: Option<ClientError> = None;
        loop {
            let err = match self.attempt(cmd, &name, started, deadline).await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_local_refusal() => return Err(cause.unwrap_or(e)),
                Err(e) => e,
            };
            if retries >= retry.max_retries
                || !may_retry(&err, class, idempotency, retry.retry_idempotent_writes)
            {
                return Err(err);
            }
            let delay = backoff.next_delay(&mut rand::rng());
            let now = Instant::now();
            if now + delay >= deadline {
                return Err(err);
            }
            if !lock(&inner.budget).try_withdraw(now) {
                inner.metrics.retries_denied.inc();
                return Err(err);
            }
            retries += 1;
            inner.metrics.retries.inc();
            tracing::debug!(command = %name, retries, error = %err, "retrying");
            cause = Some(err);
            tokio::time::sleep(delay).await;
        }
    }

    /// Hands a breaker change to the metrics and the application's callback (outside the
    /// breaker's lock).
    fn report(&self, t: Option<Transition>) {
        let Some(t) = t else { return };
        let to = match t {
            Transition::Opened => "open",
            Transition::HalfOpened => "half_open",
            Transition::Closed => "closed",
        };
        Metrics::count(&self.inner.metrics.breaker_transitions, "to", to);
        tracing::info!(breaker = to, "moat-client circuit breaker");
        if let Some(cb) = &self.inner.on_transition {
            cb(t);
        }
    }

    fn breaker_outcome(&self, failed: bool) {
        let now = Instant::now();
        let t = {
            let mut b = lock(&self.inner.breaker);
            if failed {
                b.failure(now)
            } else {
                b.success(now)
            }
        };
        self.report(t);
    }

    async fn attempt(
        &self,
        cmd: &redis::Cmd,
        name: &str,
        started: Instant,
        deadline: Instant,
    ) -> Result<Value, ClientError> {
        let inner = &self.inner;
        let (verdict, t) = lock(&inner.breaker).check(Instant::now());
        self.report(t);
        if let Verdict::Refuse { retry_in } = verdict {
            return Err(ClientError::CircuitOpen { retry_in });
        }
        inner.metrics.backlog.inc();
        let lease = inner.pool.checkout(deadline).await;
        inner.metrics.backlog.dec();
        let mut lease = match lease {
            Ok(l) => l,
            Err(e) => {
                if matches!(e, ClientError::Connect { .. }) {
                    self.breaker_outcome(true);
                } else {
                    // Not a probe: no connection was tried.
                    lock(&inner.breaker).unadmit();
                }
                return Err(e);
            }
        };
        let Some(conn) = lease.conn() else {
            lock(&inner.breaker).unadmit();
            return Err(ClientError::ConnectBackoff {
                retry_in: Duration::ZERO,
                reason: "lease without a connection".to_owned(),
            });
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            // Checked here because a zero timeout still polls (and sends) once.
            lock(&inner.breaker).unadmit();
            return Err(ClientError::Timeout {
                after: started.elapsed(),
                applied: Applied::No,
            });
        }
        let sent = tokio::time::timeout(left, conn.req_packed_command(cmd)).await;
        let result = match sent {
            Err(_) => Err(ClientError::Timeout {
                after: started.elapsed(),
                applied: Applied::Maybe,
            }),
            Ok(Ok(v)) => v
                .extract_error()
                .map_err(|e| classify_error(e, name, started.elapsed())),
            Ok(Err(e)) => Err(classify_error(e, name, started.elapsed())),
        };
        match &result {
            Ok(_) | Err(ClientError::Server { .. }) => {
                // Redis answered: it serves us, whatever the answer says.
                inner.pool.command_succeeded();
                self.breaker_outcome(false);
            }
            Err(e) => {
                // A timed-out or broken connection is not lent again (a late reply would meet
                // the next command), nor one Redis refused for lack of room (it closes it);
                // one that answered LOADING or BUSY is sound.
                let sound = matches!(e, ClientError::Refused { source }
                    if !source.detail().is_some_and(|d| d.starts_with("max number of clients")));
                if !sound {
                    lease.discard();
                }
                if matches!(e, ClientError::Connection { .. }) {
                    inner.pool.flush_idle();
                }
                if e.is_unavailable() {
                    self.breaker_outcome(true);
                }
            }
        }
        result
    }

    /// `GET key`, and when Redis is unavailable (not when it answers an error), the last
    /// value Redis gave for `key` if the cache holds one younger than its TTL (marked
    /// [`Source::Stale`]), else `fallback()` (marked [`Source::Fallback`]).
    ///
    /// ```no_run
    /// # async fn demo(client: moat_client::Client) -> Result<(), moat_client::ClientError> {
    /// let served = client
    ///     .get_or_fallback("price:42", || Some("9.99".to_owned()))
    ///     .await?;
    /// if served.is_degraded() {
    ///     println!("showing a possibly old price: {:?}", served.value);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn get_or_fallback<T: FromRedisValue>(
        &self,
        key: &str,
        fallback: impl FnOnce() -> T,
    ) -> Result<Served<T>, ClientError> {
        let m = &self.inner.metrics;
        let mut cmd = redis::cmd("GET");
        cmd.arg(key);
        match self.value(&cmd, Idempotency::FromTable).await {
            Ok(v) => {
                if let Some(cache) = &self.inner.cache {
                    lock(cache).put(key, v.clone(), Instant::now());
                }
                Metrics::count(&m.served, "source", "redis");
                Ok(Served {
                    value: convert(v)?,
                    source: Source::Redis,
                })
            }
            Err(e) if e.is_unavailable() => {
                let cached = self
                    .inner
                    .cache
                    .as_ref()
                    .and_then(|c| lock(c).get(key, Instant::now()));
                if let Some((v, age)) = cached
                    && let Ok(value) = convert(v)
                {
                    Metrics::count(&m.served, "source", "stale");
                    return Ok(Served {
                        value,
                        source: Source::Stale { age },
                    });
                }
                Metrics::count(&m.served, "source", "fallback");
                Ok(Served {
                    value: fallback(),
                    source: Source::Fallback,
                })
            }
            Err(e) => Err(e),
        }
    }
}

fn convert<T: FromRedisValue>(v: Value) -> Result<T, ClientError> {
    redis::from_redis_value(v).map_err(|e| ClientError::Reply { source: e.into() })
}

/// The pool's housekeeping, until the last clone of the client is dropped.
async fn maintain(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(MAINTAIN_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let open = matches!(
            lock(&inner.breaker).state(),
            moat_resilience::BreakerState::Open { .. }
        );
        if !open {
            inner.pool.maintain().await;
        }
    }
}
