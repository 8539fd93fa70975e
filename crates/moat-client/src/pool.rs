//! A bounded pool of redis-rs `MultiplexedConnection`s, each lent to one command at a time.
//!
//! A thin pool of our own rather than bb8: bb8 opens connections whenever a checkout finds
//! none idle and replenishes `min_idle` on its own, with no way to cap how many it opens per
//! second or to hold attempts back after failures; that cap and that backoff are the point
//! here (a full Redis must not see a connection storm). Each connection is lent exclusively
//! although it could multiplex, because an exclusive lease is what makes "all connections
//! busy" a real, bounded condition with a clear error ([`ClientError::PoolTimeout`]), and a
//! timed-out command then spoils only its own connection.
//!
//! The pool never holds more than `max_size` connections: every open reserves a place in
//! the `live` count first. New connections pass the [`ConnectGate`] (rate cap and backoff)
//! and are only handed out after Redis answered their first `PING`, so a Redis that accepts
//! and then refuses (`max number of clients reached`) fails the connect, never a command.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use rand::Rng;
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::config::PoolConfig;
use crate::error::ClientError;
use crate::gate::{ConnectGate, GateVerdict};
use crate::metrics::Metrics;
use crate::retry::connect_error;

/// How long a checkout that found every place reserved by an opening connection waits
/// before it looks again.
const RESERVED_POLL: Duration = Duration::from_millis(5);

struct Pooled {
    conn: MultiplexedConnection,
    expires: Instant,
    idle_since: Instant,
}

/// The pool.
pub(crate) struct Pool {
    client: redis::Client,
    cfg: PoolConfig,
    conn_cfg: AsyncConnectionConfig,
    idle: Mutex<VecDeque<Pooled>>,
    live: AtomicUsize,
    slots: Semaphore,
    gate: Mutex<ConnectGate>,
    metrics: Metrics,
}

/// A connection lent to one command; it goes back to the pool when dropped unless
/// [`Lease::discard`] was called.
pub(crate) struct Lease<'a> {
    pool: &'a Pool,
    conn: Option<Pooled>,
    _slot: SemaphorePermit<'a>,
}

impl Lease<'_> {
    /// The connection.
    pub(crate) fn conn(&mut self) -> Option<&mut MultiplexedConnection> {
        self.conn.as_mut().map(|p| &mut p.conn)
    }

    /// Closes the connection instead of returning it (it broke or timed out).
    pub(crate) fn discard(&mut self) {
        if self.conn.take().is_some() {
            self.pool.closed();
        }
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(mut p) = self.conn.take() {
            let now = Instant::now();
            if now >= p.expires {
                self.pool.closed();
            } else {
                p.idle_since = now;
                self.pool.lock_idle().push_back(p);
            }
        }
    }
}

impl Pool {
    pub(crate) fn new(client: redis::Client, cfg: PoolConfig, metrics: Metrics) -> Self {
        // The connect deadline is ours (it covers the PING too); responses are timed by the
        // command loop, which knows each command's remaining time.
        let conn_cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(cfg.connect_timeout))
            .set_response_timeout(None);
        let gate = ConnectGate::new(
            cfg.max_connects_per_sec,
            cfg.reconnect_base,
            cfg.reconnect_max,
            Instant::now(),
        );
        Self {
            client,
            slots: Semaphore::new(cfg.max_size),
            cfg,
            conn_cfg,
            idle: Mutex::new(VecDeque::new()),
            live: AtomicUsize::new(0),
            gate: Mutex::new(gate),
            metrics,
        }
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, VecDeque<Pooled>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_gate(&self) -> std::sync::MutexGuard<'_, ConnectGate> {
        self.gate.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn closed(&self) {
        self.live.fetch_sub(1, Ordering::AcqRel);
        self.metrics.connections.dec();
    }

    /// Takes a place for a new connection if the pool has one.
    fn reserve(&self) -> bool {
        self.live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.cfg.max_size).then_some(n + 1)
            })
            .is_ok()
    }

    /// Connections open now (idle and lent).
    pub(crate) fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// Closes every idle connection: one broke, and the others reach the same server.
    pub(crate) fn flush_idle(&self) {
        let flushed: Vec<_> = self.lock_idle().drain(..).collect();
        for p in flushed {
            drop(p);
            self.closed();
        }
    }

    /// A command succeeded: connection opening may start over from the shortest delay.
    pub(crate) fn command_succeeded(&self) {
        self.lock_gate().command_succeeded();
    }

    /// An idle connection still within its lifetime and idle timeout, if any.
    fn take_idle(&self, now: Instant) -> Option<Pooled> {
        let mut idle = self.lock_idle();
        while let Some(p) = idle.pop_back() {
            let stale = now >= p.expires
                || now.saturating_duration_since(p.idle_since) >= self.cfg.idle_timeout;
            if stale {
                drop(p);
                self.closed();
                continue;
            }
            return Some(p);
        }
        None
    }

    /// Lends a connection: waits for a free place at most the pool wait timeout (and never
    /// past `deadline`), then reuses an idle connection or opens one through the gate.
    pub(crate) async fn checkout(&self, deadline: Instant) -> Result<Lease<'_>, ClientError> {
        let started = Instant::now();
        let wait = self
            .cfg
            .wait_timeout
            .min(deadline.saturating_duration_since(started));
        let slot = match tokio::time::timeout(wait, self.slots.acquire()).await {
            Ok(Ok(slot)) => slot,
            // Timed out, or the semaphore closed (it never is): the pool had no place.
            _ => {
                return Err(ClientError::PoolTimeout {
                    max_size: self.cfg.max_size,
                    waited: started.elapsed(),
                });
            }
        };
        // Bounded by the deadline: every pass sleeps until the gate or a place frees up.
        loop {
            let now = Instant::now();
            if let Some(p) = self.take_idle(now) {
                return Ok(self.lease(p, slot));
            }
            let verdict = self.lock_gate().try_start(now);
            let wait = match verdict {
                GateVerdict::Go if self.reserve() => {
                    let opened = self.open(deadline).await;
                    let p = opened?;
                    return Ok(self.lease(p, slot));
                }
                GateVerdict::Go => {
                    // Every place is taken by connections being opened or closed; give the
                    // attempt back.
                    self.lock_gate().finished(now, None, &mut rand::rng());
                    RESERVED_POLL
                }
                GateVerdict::Wait(d) => d,
            };
            let left = deadline.saturating_duration_since(now);
            if wait >= left {
                let reason = self.lock_gate().reason();
                return Err(ClientError::ConnectBackoff {
                    retry_in: wait,
                    reason,
                });
            }
            tokio::time::sleep(wait).await;
        }
    }

    fn lease<'a>(&'a self, p: Pooled, slot: SemaphorePermit<'a>) -> Lease<'a> {
        Lease {
            pool: self,
            conn: Some(p),
            _slot: slot,
        }
    }

    /// Opens one connection in a place already reserved, and has Redis answer `PING` on it.
    async fn open(&self, deadline: Instant) -> Result<Pooled, ClientError> {
        let limit = self
            .cfg
            .connect_timeout
            .min(deadline.saturating_duration_since(Instant::now()));
        let attempt = async {
            let mut conn = self
                .client
                .get_multiplexed_async_connection_with_config(&self.conn_cfg)
                .await?;
            redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .map(|_| conn)
        };
        let result = match tokio::time::timeout(limit, attempt).await {
            Ok(r) => r,
            Err(_) => Err(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("connect and PING took over {limit:?}"),
            ))),
        };
        let now = Instant::now();
        match result {
            Ok(conn) => {
                self.lock_gate().finished(now, None, &mut rand::rng());
                Metrics::count(&self.metrics.connects, "result", "ok");
                self.metrics.connections.inc();
                Ok(Pooled {
                    conn,
                    expires: now + self.jittered_lifetime(),
                    idle_since: now,
                })
            }
            Err(e) => {
                self.live.fetch_sub(1, Ordering::AcqRel);
                self.lock_gate()
                    .finished(now, Some(e.to_string()), &mut rand::rng());
                Metrics::count(&self.metrics.connects, "result", "failed");
                Err(connect_error(e))
            }
        }
    }

    fn jittered_lifetime(&self) -> Duration {
        let cut: f64 = rand::rng().random_range(0.0..=self.cfg.lifetime_jitter);
        self.cfg.max_lifetime.mul_f64(1.0 - cut)
    }

    /// Housekeeping, run now and then: closes idle connections past their lifetime or
    /// (above `min_idle`) their idle timeout, and opens one connection if fewer than
    /// `min_idle` are idle and the gate allows it now (never waits for it).
    pub(crate) async fn maintain(&self) {
        let now = Instant::now();
        {
            let mut idle = self.lock_idle();
            let mut keep = VecDeque::with_capacity(idle.len());
            let mut closed = 0;
            while let Some(p) = idle.pop_front() {
                let idle_too_long = now.saturating_duration_since(p.idle_since)
                    >= self.cfg.idle_timeout
                    && keep.len() + idle.len() >= self.cfg.min_idle;
                if now >= p.expires || idle_too_long {
                    closed += 1;
                } else {
                    keep.push_back(p);
                }
            }
            *idle = keep;
            drop(idle);
            for _ in 0..closed {
                self.closed();
            }
        }
        if self.lock_idle().len() >= self.cfg.min_idle {
            return;
        }
        if self.lock_gate().try_start(now) != GateVerdict::Go {
            return;
        }
        if !self.reserve() {
            self.lock_gate().finished(now, None, &mut rand::rng());
            return;
        }
        if let Ok(p) = self.open(now + self.cfg.connect_timeout).await {
            self.lock_idle().push_back(p);
        }
    }
}
