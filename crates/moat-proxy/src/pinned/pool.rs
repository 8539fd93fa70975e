//! One worker's dedicated connections: idle ones ready for the next lease, and a count of
//! all open ones that never exceeds the worker's share of `pinned.max_connections`.

use std::cell::{Cell, RefCell};
use std::net::IpAddr;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::limits::{LeaseLimits, LeaseTicket, LimitHit};
use crate::auth::Principal;
use crate::backend::handshake::Login;
use crate::backend::{Settings, handshake};
use crate::net::Stream;
use crate::stats::worker::WorkerStats;

/// Why a session got no dedicated connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LeaseError {
    /// Every dedicated connection is leased.
    Pool(usize),
    /// The client's address holds its share.
    PerIp(usize),
    /// The client's user holds its share.
    PerUser(usize),
    /// A new connection could not be opened.
    Backend(String),
}

impl LeaseError {
    /// The error line the client gets.
    pub(crate) fn line(&self) -> String {
        match self {
            LeaseError::Pool(n) => {
                format!("ERR moat: no dedicated connection available (limit {n})")
            }
            LeaseError::PerIp(n) => format!(
                "ERR moat: no dedicated connection available (limit {n} per client address)"
            ),
            LeaseError::PerUser(n) => {
                format!("ERR moat: no dedicated connection available (limit {n} per user)")
            }
            LeaseError::Backend(e) => format!("ERR moat: backend unavailable ({e})"),
        }
    }
}

/// What a look at the pool found for a lease already counted against its caps.
enum Acquired {
    Idle(PinnedConn, LeaseTicket),
    /// No idle connection, but room to open one.
    Room(LeaseTicket),
}

/// An open dedicated connection and what moat knows of its state.
#[derive(Debug)]
pub(crate) struct PinnedConn {
    pub(crate) stream: Stream,
    /// Database and protocol the connection is in (moat adjusts them per lease).
    pub(crate) db: u32,
    pub(crate) resp3: bool,
    /// Redis Cluster's READONLY mode is on (RESET ends it).
    pub(crate) readonly: bool,
    /// The Redis user it is logged in as (passthrough mode); none: moat's own login.
    principal: Option<Arc<Principal>>,
    /// The connection's client id on Redis (CLIENT UNBLOCK aims at it); it survives RESET.
    pub(crate) redis_id: Option<u64>,
    /// The followed primary's generation when opened: one of an older generation goes to a
    /// replaced primary and is not leased again.
    generation: u64,
    _slot: Slot,
}

impl PinnedConn {
    /// Whether the connection is logged in as `who`.
    fn serves(&self, who: Option<&Arc<Principal>>) -> bool {
        match (&self.principal, who) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

/// How a connection logged in as `who` logs in again.
fn login(who: Option<&Arc<Principal>>) -> Login<'_> {
    who.and_then(|p| p.credential())
        .map_or(Login::Moat, Login::As)
}

/// Counts one open connection against the pool; closing the connection frees the slot.
/// Weak: the pool holds its idle connections, so a strong reference back would be a cycle
/// that keeps the pool and those connections open after the worker has stopped.
#[derive(Debug)]
struct Slot(Weak<PinnedPool>);

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(pool) = self.0.upgrade() {
            pool.open.set(pool.open.get() - 1);
            pool.available.notify_waiters();
        }
    }
}

/// The dedicated connections of one worker.
#[derive(Debug)]
pub(crate) struct PinnedPool {
    settings: Settings,
    /// This worker's share of `pinned.max_connections` (a reload may change it).
    cap: Cell<usize>,
    open: Cell<usize>,
    idle: RefCell<Vec<PinnedConn>>,
    available: Notify,
    limits: Arc<LeaseLimits>,
    wait: Cell<Duration>,
    /// Connections being opened, and being RESET after a lease (neither idle nor leased).
    connecting: Cell<usize>,
    resetting: Cell<usize>,
    /// This worker's counters (lease waits).
    stats: Arc<WorkerStats>,
}

/// Takes one back from a count when dropped, however the future holding it ends.
struct Counting<'a>(&'a Cell<usize>);

impl<'a> Counting<'a> {
    fn new(count: &'a Cell<usize>) -> Self {
        count.set(count.get() + 1);
        Self(count)
    }
}

impl Drop for Counting<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

impl PinnedPool {
    pub(crate) fn new(
        settings: Settings,
        cap: usize,
        limits: Arc<LeaseLimits>,
        wait: Duration,
        stats: Arc<WorkerStats>,
    ) -> Rc<Self> {
        Rc::new(Self {
            connecting: Cell::new(0),
            resetting: Cell::new(0),
            stats,
            settings,
            cap: Cell::new(cap),
            open: Cell::new(0),
            idle: RefCell::new(Vec::new()),
            available: Notify::new(),
            limits,
            wait: Cell::new(wait),
        })
    }

    /// Changes this worker's share (a reload). A larger one opens more on demand; past a
    /// smaller one, idle connections are closed now and leased ones when their lease ends,
    /// so no transaction or subscription is cut.
    pub(crate) fn resize(&self, cap: usize) {
        self.cap.set(cap);
        self.trim();
        self.available.notify_waiters();
    }

    /// Changes how long a session waits for a lease.
    pub(crate) fn set_wait(&self, wait: Duration) {
        self.wait.set(wait);
    }

    /// Closes idle connections while more are open than the cap allows.
    fn trim(&self) {
        let mut idle = self.idle.borrow_mut();
        // Each closed connection frees its slot on drop (lowering `open`).
        while self.open.get() > self.cap.get() && !idle.is_empty() {
            drop(idle.remove(0));
        }
    }

    /// Leases a connection for a client at `ip` acting as `user` (logged in as `who`: its
    /// Redis user in passthrough mode), waiting up to the configured time for one to free up.
    pub(crate) async fn acquire(
        self: &Rc<Self>,
        ip: IpAddr,
        user: &Arc<str>,
        who: Option<&Arc<Principal>>,
    ) -> Result<(PinnedConn, LeaseTicket), LeaseError> {
        if who
            .and_then(|p| p.credential())
            .is_some_and(|c| !c.is_valid())
        {
            return Err(LeaseError::Backend(
                "Redis no longer accepts this connection's user".into(),
            ));
        }
        let deadline = Instant::now() + self.wait.get();
        let mut waited = false;
        loop {
            // Registered before looking, so a release between the look and the wait is seen.
            let released = self.limits.released.notified();
            let available = self.available.notified();
            tokio::pin!(released, available);
            released.as_mut().enable();
            available.as_mut().enable();
            let refused = match self.try_acquire(ip, user, who) {
                Ok(Acquired::Idle(conn, ticket)) => return Ok((conn, ticket)),
                Ok(Acquired::Room(ticket)) => return self.connect(ticket, who).await,
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(refused);
            }
            if !std::mem::replace(&mut waited, true) {
                self.stats.lease_waits.incr();
            }
            tokio::select! {
                _ = released => {}
                _ = available => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// An idle connection or room to open one, with the lease counted; or why not.
    fn try_acquire(
        &self,
        ip: IpAddr,
        user: &Arc<str>,
        who: Option<&Arc<Principal>>,
    ) -> Result<Acquired, LeaseError> {
        // Pool room first: taking a ticket and giving it back would wake every waiter.
        self.drop_dead_idle();
        let has_idle = !self.idle.borrow().is_empty();
        let cap = self.cap.get();
        if !has_idle && self.open.get() >= cap {
            return Err(LeaseError::Pool(cap));
        }
        let ticket = self.limits.try_take(ip, user).map_err(|hit| match hit {
            LimitHit::PerIp(n) => LeaseError::PerIp(n),
            LimitHit::PerUser(n) => LeaseError::PerUser(n),
        })?;
        let mut idle = self.idle.borrow_mut();
        if let Some(at) = idle.iter().rposition(|c| c.serves(who)) {
            return Ok(Acquired::Idle(idle.swap_remove(at), ticket));
        }
        if self.open.get() >= cap {
            // Only other users' connections are idle: close the oldest to make room (its
            // slot is freed when it drops, before the new one is counted).
            drop(idle.remove(0));
        }
        Ok(Acquired::Room(ticket))
    }

    /// Opens a new dedicated connection for a lease already counted (the pool had room).
    async fn connect(
        self: &Rc<Self>,
        ticket: LeaseTicket,
        who: Option<&Arc<Principal>>,
    ) -> Result<(PinnedConn, LeaseTicket), LeaseError> {
        self.open.set(self.open.get() + 1);
        let slot = Slot(Rc::downgrade(self));
        let _connecting = Counting::new(&self.connecting);
        let opened = handshake::open(&self.settings, login(who), false)
            .await
            .map_err(|e| LeaseError::Backend(e.to_string()))?;
        let generation = opened.generation;
        let stream = opened.stream;
        // A reply that came after the wait would be taken for the client's: on any failure
        // the connection is not used.
        let id = handshake::client_id(&stream, &self.settings);
        let redis_id = match tokio::time::timeout(self.settings.connect_timeout, id).await {
            Ok(Ok(id)) => id,
            Ok(Err(e)) => return Err(LeaseError::Backend(e.to_string())),
            Err(_) => return Err(LeaseError::Backend("no reply to CLIENT ID".into())),
        };
        Ok((
            PinnedConn {
                stream,
                db: 0,
                resp3: false,
                readonly: false,
                principal: who.cloned(),
                redis_id,
                generation,
                _slot: slot,
            },
            ticket,
        ))
    }

    /// Idle connections the server closed (timeout, restart) are dropped before a lease.
    fn drop_dead_idle(&self) {
        let current = self.settings.connector.generation();
        self.idle.borrow_mut().retain(|conn| {
            // One opened before the primary changed goes to the old one.
            if conn.generation != current {
                return false;
            }
            let mut probe = [0u8; 1];
            matches!(conn.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        });
    }

    /// Open connections by state (idle, busy: leased or being reset, connecting, down:
    /// never, a lost one is closed) and the leases held now.
    pub(crate) fn connections_by_state(&self) -> ([u64; 4], u64) {
        let open = self.open.get() as u64;
        let idle = self.idle.borrow().len() as u64;
        let connecting = self.connecting.get() as u64;
        let busy = open.saturating_sub(idle + connecting);
        let leased = busy.saturating_sub(self.resetting.get() as u64);
        ([idle, busy, connecting, 0], leased)
    }

    /// True when no connection is leased or being reset: every open one is idle.
    #[cfg(feature = "harness")]
    pub(crate) fn is_quiet(&self) -> bool {
        self.idle.borrow().len() == self.open.get()
    }

    /// Takes back a connection whose lease ended with its state cleared. With `reset`, it is
    /// RESET (and re-authenticated) first, in the background; a connection that fails that
    /// is closed.
    pub(crate) fn give_back(self: &Rc<Self>, mut conn: PinnedConn, reset: bool) {
        if self.open.get() > self.cap.get()
            || conn.generation != self.settings.connector.generation()
        {
            // The pool was made smaller: this connection is the excess.
            drop(conn);
            return;
        }
        if !reset {
            self.idle.borrow_mut().push(conn);
            self.available.notify_waiters();
            return;
        }
        let pool = self.clone();
        tokio::task::spawn_local(async move {
            let resetting = Counting::new(&pool.resetting);
            let work =
                handshake::reset(&conn.stream, &pool.settings, login(conn.principal.as_ref()));
            let done = tokio::time::timeout(pool.settings.connect_timeout, work).await;
            drop(resetting);
            match done {
                Ok(Ok(())) => {
                    conn.db = 0;
                    conn.resp3 = false;
                    conn.readonly = false;
                    pool.idle.borrow_mut().push(conn);
                    pool.trim();
                    pool.available.notify_waiters();
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "closing a dedicated connection that failed RESET")
                }
                Err(_) => {
                    tracing::debug!("closing a dedicated connection that did not answer RESET")
                }
            }
        });
    }
}
