//! The shared backend pool of one worker: a fixed number of connection slots, each driven
//! by a task that connects, serves and reconnects with backoff. Redis never sees more
//! connections from the pool than its slots, whatever the clients do.

mod breaker;
mod conn;
pub(crate) mod handshake;
pub(crate) mod verify;

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;

use tokio::sync::Notify;

pub(crate) use conn::{BackendConn, ConnState};
use conn::{Liveness, Upkeep};

use crate::auth::{Authority, Principal};
use crate::command::CommandTable;
use crate::config::Config;
use crate::link::ClientLink;
use crate::stats::worker::WorkerStats;
use breaker::{Breaker, BreakerSettings, Verdict};
use handshake::Login;
use moat_resilience::Backoff;

/// A connection with this many replies owed is busy enough to open another slot for the
/// same database, when the pool has one free. Below it, concentrating clients on one
/// connection batches more requests per write, which is what saves Redis work: measured
/// with redis-benchmark `-P 16 -c 50`, one connection served 1.2M GET/s where spilling at
/// 256 owed replies onto a second served 0.64-1.0M.
const SPILL_AT: usize = 4096;

/// A connection that stayed up this long resets the reconnect delays.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);

/// Why a backend connection failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BackendError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("connect and handshake took longer than {0:?}")]
    Timeout(Duration),
    /// Connected, but Redis did not answer the handshake in time: stopped, sleeping, or
    /// in the first moments of a busy script (before `busy-reply-threshold` it answers no
    /// one), or not Redis at all.
    #[error("connected, but no answer to the handshake within {0:?}")]
    Unanswered(Duration),
    #[error("backend refused moat's credentials: {0}")]
    Auth(String),
    #[error("backend closed the connection")]
    Closed,
    #[error("backend protocol error: {0}")]
    Protocol(String),
    #[error("no reply to a health check for {0:?} while other connections were answered")]
    Stalled(Duration),
    /// Redis refused a `SELECT`/`HELLO` moat inserted because it is busy (a script):
    /// Redis is alive, so this is no failure for the breaker. Holds Redis's error line.
    #[error("backend busy: {0}")]
    Busy(String),
    #[error("retired after its lifetime")]
    Retired,
    /// A server found through Sentinels whose `ROLE` says it is no primary (holds the role).
    #[error("the server named primary says it is {0}, not master")]
    NotPrimary(String),
    /// The primary changed (Sentinel failover): the connection moves to the new one.
    #[error("the primary changed")]
    Moved,
}

impl From<moat_protocol::FrameError> for BackendError {
    fn from(e: moat_protocol::FrameError) -> Self {
        BackendError::Protocol(e.to_string())
    }
}

/// How to reach the backend, from the config.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) connector: crate::net::Connector,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) connect_timeout: Duration,
    pub(crate) databases: Option<u32>,
    pub(crate) max_reply_depth: usize,
    pub(crate) connection_name: String,
    pub(crate) breaker: BreakerSettings,
    /// Longest wait for progress on a connection that owes replies (none: no limit).
    pub(crate) request_timeout: Option<Duration>,
    /// Connections opened at start and kept open.
    pub(crate) min_idle: usize,
    /// Age at which a connection is replaced (none: never).
    pub(crate) max_lifetime: Option<Duration>,
    /// PING interval on a connection that owes nothing (none: no checks).
    pub(crate) health_check: Option<Duration>,
}

impl Settings {
    pub(crate) fn from_config(config: &Config, worker: usize) -> Self {
        Self::named(config, format!("moat-shared-w{worker}"))
    }

    /// Settings for connections with their own name (dedicated ones show as `moat-pinned`).
    pub(crate) fn named(config: &Config, connection_name: String) -> Self {
        let b = &config.backend;
        Self {
            connector: crate::net::Connector::Tcp(b.address),
            username: b.username.clone(),
            password: b.password.clone(),
            connect_timeout: b.connect_timeout,
            databases: b.databases,
            max_reply_depth: config.limits.max_reply_depth,
            connection_name,
            breaker: BreakerSettings {
                consecutive_failures: b.breaker.consecutive_failures,
                failure_ratio: b.breaker.failure_ratio,
                min_requests: b.breaker.min_requests,
                window: b.breaker.window,
                open_for: b.breaker.open_for,
                probes: b.breaker.probes,
            },
            request_timeout: Some(b.request_timeout).filter(|t| !t.is_zero()),
            min_idle: b.min_idle,
            max_lifetime: Some(b.max_lifetime).filter(|t| !t.is_zero()),
            health_check: Some(b.health_check_interval).filter(|t| !t.is_zero()),
        }
    }
}

/// What the server told moat about itself, so sessions answer like it would.
#[derive(Debug, Clone)]
pub(crate) struct BackendFacts {
    pub(crate) version: String,
    pub(crate) role: String,
    pub(crate) databases: u32,
    /// The server runs in Redis Cluster mode (`redis_mode:cluster`): database 0 only, and
    /// ASKING/READONLY/READWRITE mean something.
    pub(crate) cluster: bool,
    pub(crate) table: CommandTable,
}

impl BackendFacts {
    /// Whether the server has RESET (Redis 6.2 and later), used to clean dedicated
    /// connections between leases.
    pub(crate) fn supports_reset(&self) -> bool {
        let mut parts = self
            .version
            .split('.')
            .map(|p| p.parse::<u32>().unwrap_or(0));
        let major = parts.next().unwrap_or(0);
        let minor = parts.next().unwrap_or(0);
        (major, minor) >= (6, 2)
    }
}

/// Why no backend connection could take a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PickError {
    /// Every slot is down, waiting to reconnect.
    Unavailable,
    /// The circuit breaker is open: the backend failed repeatedly.
    CircuitOpen(Duration),
    /// Every connection is busy serving other users; one was asked to finish and the
    /// session waits for it.
    Busy,
    /// Redis no longer accepts the client's user (deleted, or its password refused).
    UserGone,
    /// The Sentinels named no verified primary (yet, or any more).
    NoPrimary,
}

impl PickError {
    /// The error line a client gets.
    pub(crate) fn line(&self) -> String {
        match self {
            PickError::Unavailable => "ERR moat: backend unavailable (reconnecting)".into(),
            PickError::CircuitOpen(retry_in) => format!(
                "ERR moat: backend unavailable (circuit open, retry in {}s)",
                retry_in.as_secs_f64().ceil().max(1.0)
            ),
            PickError::Busy => "ERR moat: every backend connection is busy".into(),
            PickError::UserGone => {
                "ERR moat: Redis no longer accepts this connection's user".into()
            }
            PickError::NoPrimary => "ERR moat: backend unavailable (no primary known: no \
                                     Sentinel named a verified one)"
                .into(),
        }
    }
}

/// One worker's shared pool.
#[derive(Debug)]
pub(crate) struct Backend {
    settings: Settings,
    /// This worker's share of `backend.shared_connections` (a reload may change it).
    cap: Cell<usize>,
    conns: RefCell<Vec<Rc<BackendConn>>>,
    facts: RefCell<Rc<BackendFacts>>,
    /// Set at start and whenever a connection was lost: the next handshake re-reads the
    /// server's facts (it may have restarted as another version).
    facts_stale: Cell<bool>,
    /// Signalled after each connection attempt, so the worker can wait for the first.
    attempted: Notify,
    /// Fails requests at once while the backend keeps failing.
    pub(crate) breaker: RefCell<Breaker>,
    /// When any connection of this worker, shared or dedicated, last read a reply: what
    /// tells a dead connection from a slow Redis (see `BackendConn::watchdog`).
    liveness: Liveness,
    /// This worker's counters.
    stats: Arc<WorkerStats>,
    /// Who checks credentials; in passthrough mode, each connection logs in as a user.
    authority: Arc<Authority>,
    /// Sessions waiting for a connection to become free (every one busy with other users).
    idle_waiters: Rc<RefCell<Vec<Weak<ClientLink>>>>,
}

impl Backend {
    /// A pool of at most `cap` connections; none is opened until [`Backend::start`].
    pub(crate) fn new(
        settings: Settings,
        cap: usize,
        stats: Arc<WorkerStats>,
        authority: Arc<Authority>,
    ) -> Rc<Self> {
        let facts = BackendFacts::fallback(settings.databases);
        let mut breaker = Breaker::new(settings.breaker);
        breaker.stats = Some(stats.clone());
        let breaker = RefCell::new(breaker);
        Rc::new(Self {
            breaker,
            liveness: Cell::new(Instant::now()),
            stats,
            authority,
            idle_waiters: Rc::default(),
            settings,
            cap: Cell::new(cap.max(1)),
            conns: RefCell::new(Vec::new()),
            facts: RefCell::new(Rc::new(facts)),
            facts_stale: Cell::new(true),
            attempted: Notify::new(),
        })
    }

    /// Opens `min_idle` connections (at least one) and waits for the first attempt to end
    /// (either way), so the first clients are routed with the server's own command table.
    pub(crate) async fn start(self: &Rc<Self>) {
        let waiting = self.attempted.notified();
        // Until clients sign in, connections serve clients that never send AUTH.
        let who = self.authority.initial_login();
        for _ in 0..self.settings.min_idle.clamp(1, self.cap.get()) {
            self.open_slot(who.clone());
        }
        waiting.await;
    }

    /// The server's facts as last learned.
    /// Replies the pool's connections still owe.
    #[cfg(feature = "harness")]
    pub(crate) fn owed(&self) -> usize {
        self.conns.borrow().iter().map(|c| c.pending_len()).sum()
    }

    pub(crate) fn facts(&self) -> Rc<BackendFacts> {
        self.facts.borrow().clone()
    }

    /// A dedicated connection read a reply: Redis is answering.
    pub(crate) fn note_progress(&self) {
        self.liveness.set(Instant::now());
    }

    /// Chooses the connection for a request of a client signed in as `who` (none in table
    /// mode), in database `db`, protocol `resp3` and READONLY mode `readonly`, from a client
    /// with nothing in flight (a
    /// client with requests in flight stays on their connection).
    ///
    /// Connections are grouped by (user, db, protocol): one already in the group is
    /// preferred; a new slot is opened while the pool has room; when it is full, the
    /// least busy connection of the user moves to the db and protocol (moat inserts
    /// SELECT/HELLO); failing that, the least recently used idle connection of another
    /// user is taken over (it reconnects as this user); and when every connection is busy
    /// with other users, the least busy is asked to finish and the session waits.
    /// Connections stuck behind a slow command come last in each choice.
    pub(crate) fn pick(
        self: &Rc<Self>,
        who: Option<&Arc<Principal>>,
        db: u32,
        resp3: bool,
        readonly: bool,
    ) -> Result<Rc<BackendConn>, PickError> {
        if who
            .and_then(|p| p.credential())
            .is_some_and(|c| !c.is_valid())
        {
            return Err(PickError::UserGone);
        }
        let now = Instant::now();
        if let Verdict::Refuse { retry_in } = self.breaker.borrow_mut().check(now) {
            self.stats.requests_refused.incr();
            return Err(PickError::CircuitOpen(retry_in));
        }
        let group = (db, resp3, readonly);
        let conns = self.conns.borrow();
        let up = || {
            conns
                .iter()
                .filter(|c| c.state() != ConnState::Down && !c.removed() && !c.moved())
        };
        let mine = || up().filter(|c| !c.retiring() && !c.draining() && c.serves(who));
        // A connection stuck behind a slow command is passed over while another can take
        // the request: Redis may well answer it there (a `-BUSY` during a script, or the
        // reply once the command behind which it would have waited is done).
        let free = || mine().filter(|c| !c.stuck(now));
        if let Some(c) = free().find(|c| c.group() == group && c.pending_len() < SPILL_AT) {
            return Ok(c.clone());
        }
        if conns.len() < self.cap.get() {
            drop(conns);
            return Ok(self.open_slot(who.cloned()));
        }
        let least = |it: &mut dyn Iterator<Item = &Rc<BackendConn>>| {
            it.min_by_key(|c| c.pending_len()).cloned()
        };
        let found =
            least(&mut free().filter(|c| c.group() == group))
                .or_else(|| least(&mut free()))
                .or_else(|| least(&mut mine().filter(|c| c.group() == group)))
                .or_else(|| least(&mut mine()))
                .or_else(|| {
                    // Only retiring connections are left: they still serve until replaced.
                    least(&mut conns.iter().filter(|c| {
                        c.state() == ConnState::Ready && !c.draining() && c.serves(who)
                    }))
                });
        if let Some(c) = found {
            return Ok(c);
        }
        // No connection of this user: take over the least recently used idle one.
        let idle = up()
            .filter(|c| c.pending_len() == 0 && !c.serves(who))
            .min_by_key(|c| c.last_progress())
            .cloned();
        if let Some(c) = idle {
            tracing::debug!(
                slot = c.slot,
                "backend connection taken over for another user"
            );
            self.stats.backend_takeovers.incr();
            c.rebind(who.cloned());
            return Ok(c);
        }
        let busiest_first = least(&mut up().filter(|c| !c.serves(who)));
        self.breaker.borrow_mut().unadmit();
        match busiest_first {
            Some(c) => {
                c.drain();
                Err(PickError::Busy)
            }
            // Connections moving to a new primary (Sentinel failover) come back within
            // moments: the session waits for them (each wakes waiters as it reconnects).
            None if conns.iter().any(|c| c.moved()) => Err(PickError::Busy),
            None if self
                .settings
                .connector
                .primary()
                .is_some_and(|p| p.current().addr.is_none()) =>
            {
                self.stats.requests_refused.incr();
                Err(PickError::NoPrimary)
            }
            None => {
                self.stats.requests_refused.incr();
                Err(PickError::Unavailable)
            }
        }
    }

    /// Changes this worker's share of the pool (a reload). A larger one opens connections on
    /// demand; for a smaller one the excess connections (idle ones first) take no new work
    /// and close once they owe nothing, so no request in flight is cut.
    pub(crate) fn resize(&self, cap: usize) {
        let cap = cap.max(1);
        self.cap.set(cap);
        let conns = self.conns.borrow();
        let mut kept: Vec<&Rc<BackendConn>> = conns.iter().filter(|c| !c.removed()).collect();
        if kept.len() <= cap {
            return;
        }
        // The busiest stay; among equals, the newest go first.
        kept.sort_by_key(|c| (std::cmp::Reverse(c.pending_len()), c.slot));
        for conn in &kept[cap..] {
            tracing::debug!(
                slot = conn.slot,
                "backend connection closing: pool made smaller"
            );
            conn.remove();
        }
    }

    /// Forgets a connection that closed for good (the pool was made smaller).
    fn forget(&self, conn: &Rc<BackendConn>) {
        self.conns.borrow_mut().retain(|c| !Rc::ptr_eq(c, conn));
    }

    /// Wakes `link` when a connection next owes nothing (after [`PickError::Busy`]).
    pub(crate) fn wait_for_idle(&self, link: &Rc<ClientLink>) {
        let mut waiters = self.idle_waiters.borrow_mut();
        // Sessions that left are dropped here, so the list stays as long as the waiting.
        waiters.retain(|w| w.strong_count() > 0 && !std::ptr::eq(w.as_ptr(), Rc::as_ptr(link)));
        waiters.push(Rc::downgrade(link));
    }

    /// Feeds a failure to the breaker (which counts its transitions).
    fn failure(&self) {
        self.breaker.borrow_mut().failure(Instant::now());
    }

    /// Shared connections by state: idle, busy (owing replies), connecting, down (see
    /// [`crate::stats::worker::CONN_STATES`]).
    pub(crate) fn connections_by_state(&self) -> [u64; 4] {
        let mut by = [0; 4];
        for c in self.conns.borrow().iter() {
            let i = match c.state() {
                ConnState::Ready if c.pending_len() == 0 => 0,
                ConnState::Ready => 1,
                ConnState::Connecting => 2,
                ConnState::Down => 3,
            };
            by[i] += 1;
        }
        by
    }

    fn open_slot(self: &Rc<Self>, who: Option<Arc<Principal>>) -> Rc<BackendConn> {
        let mut conns = self.conns.borrow_mut();
        let conn = Rc::new(BackendConn::new(
            conns.len(),
            who,
            self.idle_waiters.clone(),
        ));
        conns.push(conn.clone());
        tokio::task::spawn_local(drive(conn.clone(), self.clone()));
        conn
    }
}

/// Keeps one slot connected for the life of the worker: connect, serve, and after a failure
/// answer everything owed with an error, wait with backoff and jitter, and reconnect.
async fn drive(conn: Rc<BackendConn>, backend: Rc<Backend>) {
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
    // Set once a connection of this slot was lost or failed to open: the next one opened
    // is a reconnect.
    let mut lost_before = false;
    loop {
        if conn.removed() && conn.pending_len() == 0 {
            conn.set_state(ConnState::Down);
            backend.forget(&conn);
            return;
        }
        conn.set_state(ConnState::Connecting);
        conn.take_rebinding();
        let who = conn.principal();
        let credential = who.as_deref().and_then(Principal::credential);
        let login = credential.map_or(Login::Moat, Login::As);
        let fetch = backend.facts_stale.get();
        let attempt_started = Instant::now();
        let generation = backend.settings.connector.generation();
        let lost = match handshake::open(&backend.settings, login, fetch).await {
            Ok(_) if conn.rebinding() => continue,
            Ok(opened) => {
                let stream = opened.stream;
                if let (Some(users), Some(needs)) = (backend.authority.redis(), opened.needs_auth) {
                    users.set_default_requires_auth(needs);
                }
                if let Some(facts) = opened.facts {
                    tracing::info!(
                        version = %facts.version,
                        commands = facts.table.len(),
                        "learned backend facts"
                    );
                    *backend.facts.borrow_mut() = Rc::new(facts);
                    backend.facts_stale.set(false);
                }
                conn.set_state(ConnState::Ready);
                if std::mem::take(&mut lost_before) {
                    backend.stats.backend_reconnects.incr();
                }
                backend.attempted.notify_waiters();
                backend.breaker.borrow_mut().connected(Instant::now());
                tracing::debug!(slot = conn.slot, "backend connection ready");
                let healthy_since = Instant::now();
                let upkeep = Upkeep {
                    max_depth: backend.settings.max_reply_depth,
                    request_timeout: backend.settings.request_timeout,
                    // Spread by up to ±10%, so connections opened together do not all
                    // recycle at the same moment.
                    lifetime: backend
                        .settings
                        .max_lifetime
                        .map(|l| l.mul_f64(rand::rng().random_range(0.9..1.1))),
                    health_check: backend.settings.health_check,
                };
                let e = conn
                    .run(
                        stream,
                        &upkeep,
                        &backend.breaker,
                        &backend.liveness,
                        &backend.stats,
                        &backend.settings.connector,
                        opened.generation,
                    )
                    .await;
                if matches!(e, BackendError::Moved) {
                    // Not a failure: the Sentinels named a new primary. What the old one
                    // did not answer within the grace gets a clear error, and the slot
                    // reconnects at once (to the new primary, whose facts are read again).
                    tracing::debug!(
                        slot = conn.slot,
                        "backend connection moving to the new primary"
                    );
                    conn.fail_all(crate::sentinel::SWITCHED);
                    backend.facts_stale.set(true);
                    backoff.reset();
                    continue;
                }
                if matches!(e, BackendError::Retired) {
                    tracing::debug!(slot = conn.slot, "backend connection retired");
                    conn.set_state(ConnState::Down);
                    continue;
                }
                backend.stats.backend_connections_lost.incr();
                lost_before = true;
                // The delays start over only after a healthy stretch: a server that accepts
                // and drops connections at once must not be hammered at the base delay.
                if healthy_since.elapsed() >= HEALTHY_AFTER {
                    backoff.reset();
                }
                tracing::warn!(slot = conn.slot, error = %e, "backend connection lost");
                if let BackendError::Busy(line) = e {
                    // Redis answered, busy: what it owed gets Redis's own `-BUSY`, and the
                    // breaker hears nothing (the backend is not failing).
                    Cow::Owned(line)
                } else {
                    backend.failure();
                    Cow::Borrowed("ERR moat: backend connection lost before the reply")
                }
            }
            Err(BackendError::Auth(e))
                if let (Some(users), Some(c)) = (
                    backend.authority.redis(),
                    credential.filter(|c| c.auth_args().is_some()),
                ) =>
            {
                // Redis no longer accepts a client's user (deleted, password changed): not
                // a backend failure. Its clients are signed out, as Redis disconnects them,
                // and the slot goes back to serving clients without AUTH.
                backend.attempted.notify_waiters();
                tracing::info!(
                    slot = conn.slot,
                    user = c.name(),
                    error = %e,
                    "Redis refused a user's credential; signing its clients out"
                );
                users.refused(c);
                conn.fail_all(&format!(
                    "ERR moat: Redis no longer accepts user '{}' ({e})",
                    c.name()
                ));
                conn.rebind(backend.authority.initial_login());
                continue;
            }
            Err(e) => {
                backend.attempted.notify_waiters();
                // Redis silent on this new connection and on every other one since the
                // attempt began is Redis stopped or sleeping, not failing: like a request
                // that times out, it does not count for the breaker, which would otherwise
                // refuse requests after Redis is back (the open connections serve again
                // the moment it wakes). Silence here while others were answered counts.
                let silent_everywhere = matches!(e, BackendError::Unanswered(_))
                    && backend.liveness.get() <= attempt_started;
                // No primary known yet, or the one named is none: moat waits for the
                // Sentinels, the backend is not failing.
                let no_primary = matches!(&e, BackendError::NotPrimary(_))
                    || matches!(&e, BackendError::Io(io) if io.kind() == std::io::ErrorKind::NotConnected);
                if !silent_everywhere && !no_primary {
                    backend.failure();
                }
                backend.stats.backend_connect_failures.incr();
                lost_before = true;
                tracing::warn!(slot = conn.slot, error = %e, backend = %backend.settings.connector, "cannot connect to backend");
                if matches!(e, BackendError::Auth(_)) || no_primary {
                    // Moat's own credential stopped working (a password changed under it):
                    // say so, and keep retrying with backoff until it works again.
                    Cow::Owned(format!("ERR moat: backend unavailable ({e})"))
                } else {
                    Cow::Borrowed("ERR moat: backend unavailable")
                }
            }
        };
        conn.set_state(ConnState::Down);
        backend.facts_stale.set(true);
        conn.fail_all(&lost);
        let delay = backoff.next_delay(&mut rand::rng());
        // A new primary (Sentinel failover) is worth trying at once.
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = backend.settings.connector.moved_from(generation) => backoff.reset(),
        }
    }
}
