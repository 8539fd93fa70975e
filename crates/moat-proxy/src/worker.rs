//! A worker: one thread running a single-threaded tokio runtime with its own accept loop and
//! its own share of the backend pool. Work-stealing runtimes cost more CPU per request here
//! and batch fewer requests per backend write, so moat scales with one worker per core.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use moat_protocol::Limits;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use crate::auth::Authority;
use crate::backend::verify::Verifier;
use crate::backend::{Backend, Settings};
use crate::config::Config;
use crate::net::Connector;
use crate::pinned::{LeaseLimits, PinnedPool};
use crate::stats::worker::{CONN_STATES, REFUSALS, WorkerStats};
use moat_guard::Guard;

/// What every session of a worker shares.
#[derive(Debug)]
pub(crate) struct WorkerCtx {
    pub(crate) backend: Rc<Backend>,
    /// Who checks credentials (moat's table, or Redis).
    pub(crate) authority: Arc<Authority>,
    /// Asks Redis about credentials in passthrough mode.
    pub(crate) verifier: Verifier,
    // The limits below are `Cell`s so a reload can change them (see `WorkerCtx::apply`):
    // sessions read them on the worker's own thread, with no lock and no shared atomic.
    pub(crate) limits: Cell<Limits>,
    pub(crate) max_inflight: Cell<usize>,
    pub(crate) max_output_bytes: Cell<usize>,
    pub(crate) max_output_bytes_hard: Cell<usize>,
    pub(crate) max_inflight_bytes: Cell<usize>,
    /// This worker's share of `limits.memory_budget`.
    pub(crate) budget: crate::budget::Budget,
    pub(crate) output_window: Cell<usize>,
    pub(crate) output_soft_limit: Cell<usize>,
    pub(crate) output_soft_time: Cell<Duration>,
    /// This worker's share of `limits.output_budget`.
    pub(crate) output_budget: crate::budget::OutputBudget,
    pub(crate) max_queue: Cell<usize>,
    pub(crate) max_reply_depth: Cell<usize>,
    /// The guard's per-session deadlines, copied here so a session's timer reads no lock.
    pub(crate) deadlines: Cell<Deadlines>,
    /// A drain is under way: sessions close once they owe nothing and hold no state.
    pub(crate) draining: Cell<bool>,
    pub(crate) listen: SocketAddr,
    pub(crate) pinned: Rc<PinnedPool>,
    pub(crate) metrics: Arc<crate::Metrics>,
    /// This worker's own counters (only this worker writes them).
    pub(crate) stats: Arc<WorkerStats>,
    /// This worker's sessions, for CLIENT LIST/KILL/UNBLOCK, and the shared pause.
    pub(crate) clients: crate::clients::WorkerClients,
    /// Connections shedding may close (silent, keep-alive-only), touched on admission, on
    /// a class change and at a session's end, never per request.
    pub(crate) hoard: std::cell::RefCell<crate::shed::Hoard>,
    /// Idle clients held without a task (see [`crate::dormant`]).
    pub(crate) dormant: crate::dormant::Dormant,
}

/// A worker's share of the pools: backend connections, dedicated ones, and the lease caps
/// all workers share.
#[derive(Debug)]
pub(crate) struct Shares {
    pub(crate) backend_cap: usize,
    pub(crate) pinned_cap: usize,
    pub(crate) leases: Arc<LeaseLimits>,
    /// The directory and pause all workers share.
    pub(crate) clients: Arc<crate::clients::Shared>,
    /// This worker's queue of questions from other workers (none when alone).
    pub(crate) queries: Option<tokio::sync::mpsc::Receiver<crate::clients::Query>>,
}

/// The guard's settings a session's timer needs (see `GuardConfig` for each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Deadlines {
    pub(crate) handshake: Duration,
    pub(crate) auth: Duration,
    pub(crate) request_read: Duration,
    pub(crate) request_min_rate: u32,
    pub(crate) idle_unauthenticated: Duration,
    pub(crate) idle_authenticated: Duration,
    pub(crate) idle_trusted: Duration,
}

impl Deadlines {
    pub(crate) fn from_guard(g: &moat_guard::GuardConfig) -> Self {
        Self {
            handshake: g.handshake_timeout,
            auth: g.auth_timeout,
            request_read: g.request_read_timeout,
            request_min_rate: g.request_min_rate,
            idle_unauthenticated: g.idle_timeout_unauthenticated,
            idle_authenticated: g.idle_timeout_authenticated,
            idle_trusted: g.idle_timeout_trusted,
        }
    }
}

/// Worker `index`'s share of `total` over `workers`: the shares add up to `total`.
pub(crate) fn share(total: usize, workers: usize, index: usize) -> usize {
    let workers = workers.max(1);
    total / workers + usize::from(index < total % workers)
}

fn protocol_limits(l: &crate::config::LimitsConfig) -> Limits {
    Limits {
        max_args: l.max_args,
        max_bulk_len: l.max_bulk_len,
        max_request_bytes: l.max_request_bytes,
        max_inline_len: l.max_inline_len,
    }
}

impl WorkerCtx {
    /// Applies what a reload may change to this worker: limits, deadlines, and its share
    /// of the pools (growing opens more on demand; shrinking closes idle excess
    /// connections as they become idle, never one in use).
    pub(crate) fn apply(&self, config: &Config, index: usize) {
        let l = &config.limits;
        self.limits.set(protocol_limits(l));
        self.max_inflight.set(l.max_inflight);
        self.max_output_bytes.set(l.max_output_bytes);
        self.max_output_bytes_hard.set(l.max_output_bytes_hard);
        self.max_inflight_bytes.set(l.max_inflight_bytes);
        self.max_queue.set(config.backend.max_queue);
        self.max_reply_depth.set(l.max_reply_depth);
        self.budget
            .set_limit(l.memory_budget / config.proxy.workers.max(1));
        self.output_window.set(l.output_window);
        self.output_soft_limit.set(l.output_soft_limit);
        self.output_soft_time.set(l.output_soft_time);
        self.output_budget
            .set_limit(l.output_budget / config.proxy.workers.max(1));
        self.deadlines.set(Deadlines::from_guard(&config.guard));
        let workers = config.proxy.workers;
        self.backend
            .resize(share(config.backend.shared_connections, workers, index));
        self.pinned
            .resize(share(config.pinned.max_connections, workers, index));
        self.pinned.set_wait(config.pinned.wait);
    }

    /// Starts a drain on this worker: every session is woken to see whether it may close
    /// now; those still open after `timeout` are closed.
    fn start_drain(self: &Rc<Self>, index: usize, timeout: Duration) {
        self.draining.set(true);
        let open = self.clients.wake_all();
        tracing::info!(
            worker = index,
            clients = open,
            "draining: no longer accepting clients"
        );
        let ctx = Rc::downgrade(self);
        tokio::task::spawn_local(async move {
            tokio::time::sleep(timeout).await;
            let Some(ctx) = ctx.upgrade() else { return };
            let left = ctx.clients.kill_all();
            if left > 0 {
                tracing::info!(
                    worker = index,
                    clients = left,
                    "drain timeout: closing the clients still open"
                );
            }
        });
    }

    /// Builds a worker's context and opens its first backend connections (waiting for the
    /// first attempt to end, so early clients do not all find the pool connecting). Runs
    /// inside the worker's `LocalSet`: it starts the worker's local tasks (the directory's
    /// question answerer and pause waker).
    pub(crate) async fn build(
        config: &Config,
        index: usize,
        listen: SocketAddr,
        connector: Connector,
        authority: Arc<Authority>,
        shares: Shares,
        metrics: Arc<crate::Metrics>,
    ) -> Rc<Self> {
        let mut settings = Settings::from_config(config, index);
        settings.connector = connector.clone();
        let stats = metrics.worker(index);
        let backend = Backend::new(
            settings,
            shares.backend_cap,
            stats.clone(),
            authority.clone(),
        );
        backend.start().await;
        let mut settings = Settings::named(config, format!("moat-auth-w{index}"));
        settings.connector = connector.clone();
        let verifier = Verifier::new(settings);
        let mut settings = Settings::named(config, format!("moat-pinned-w{index}"));
        settings.connector = connector;
        let pinned = PinnedPool::new(
            settings,
            shares.pinned_cap,
            shares.leases,
            config.pinned.wait,
            stats.clone(),
        );
        let l = &config.limits;
        let ctx = Rc::new(WorkerCtx {
            backend,
            authority,
            verifier,
            limits: Cell::new(protocol_limits(l)),
            max_inflight: Cell::new(l.max_inflight),
            max_output_bytes: Cell::new(l.max_output_bytes),
            max_output_bytes_hard: Cell::new(l.max_output_bytes_hard),
            max_inflight_bytes: Cell::new(l.max_inflight_bytes),
            budget: crate::budget::Budget::new(l.memory_budget / config.proxy.workers.max(1)),
            output_window: Cell::new(l.output_window),
            output_soft_limit: Cell::new(l.output_soft_limit),
            output_soft_time: Cell::new(l.output_soft_time),
            output_budget: crate::budget::OutputBudget::new(
                l.output_budget / config.proxy.workers.max(1),
            ),
            max_queue: Cell::new(config.backend.max_queue),
            max_reply_depth: Cell::new(l.max_reply_depth),
            deadlines: Cell::new(Deadlines::from_guard(&config.guard)),
            draining: Cell::new(false),
            listen,
            pinned,
            metrics,
            stats,
            clients: crate::clients::WorkerClients::new(index, shares.clients),
            hoard: std::cell::RefCell::default(),
            dormant: crate::dormant::Dormant::new(),
        });
        crate::clients::WorkerClients::start(&ctx, shares.queries);
        crate::dormant::Dormant::start(&ctx);
        tokio::task::spawn_local(refresh_gauges(Rc::downgrade(&ctx)));
        tokio::task::spawn_local(sweep_output_budget(Rc::downgrade(&ctx)));
        if index == 0 && ctx.authority.redis().is_some() {
            tokio::task::spawn_local(watch_default_user(Rc::downgrade(&ctx)));
        }
        ctx
    }
}

/// How often a worker copies the levels it keeps in its own structures (connections by
/// state, leases, buffered bytes) into its stats, for the exporter to read.
const GAUGE_REFRESH: Duration = Duration::from_secs(1);

/// Copies the worker's levels into its stats every [`GAUGE_REFRESH`]: they change with
/// every request, and reading them once a second costs less than tracking each change.
async fn refresh_gauges(ctx: std::rc::Weak<WorkerCtx>) {
    loop {
        {
            let Some(ctx) = ctx.upgrade() else { return };
            let stats = &ctx.stats;
            let shared = ctx.backend.connections_by_state();
            let (pinned, leased) = ctx.pinned.connections_by_state();
            for (i, _) in CONN_STATES.iter().enumerate() {
                stats.backend_connections[0][i].set(shared[i]);
                stats.backend_connections[1][i].set(pinned[i]);
            }
            stats.pinned_leases.set(leased);
            let (output, requests) = ctx.budget.held();
            stats.output_bytes.set(output as u64);
            stats.request_bytes.set(requests as u64);
            stats.dormant_clients.set(ctx.dormant.len() as u64);
        }
        tokio::time::sleep(GAUGE_REFRESH).await;
    }
}

/// How often a worker whose output budget is full wakes its heavy sessions to see whether
/// they read (see `OutputBudget::sweep`).
const OUTPUT_SWEEP: Duration = Duration::from_millis(250);

/// Runs the output budget's sweep every [`OUTPUT_SWEEP`] for the life of the worker.
async fn sweep_output_budget(ctx: std::rc::Weak<WorkerCtx>) {
    loop {
        tokio::time::sleep(OUTPUT_SWEEP).await;
        let Some(ctx) = ctx.upgrade() else { return };
        ctx.output_budget.sweep(ctx.output_soft_limit.get());
    }
}

/// How often moat asks Redis whether new clients need a password, to follow changes made
/// straight on Redis (those made through moat are followed at once). Each recheck may open
/// a connection, which is closed again unless clients are signing in.
const DEFAULT_USER_RECHECK: Duration = Duration::from_secs(30);

/// Follows Redis's default user for the life of the worker (passthrough mode).
async fn watch_default_user(ctx: std::rc::Weak<WorkerCtx>) {
    loop {
        tokio::time::sleep(DEFAULT_USER_RECHECK).await;
        let Some(ctx) = ctx.upgrade() else { return };
        let Some(users) = ctx.authority.redis() else {
            return;
        };
        match ctx.verifier.default_requires_auth().await {
            Ok(required) => users.set_default_requires_auth(required),
            Err(e) => tracing::debug!(error = %e, "cannot ask Redis about its default user"),
        }
        ctx.verifier.close_if_unused();
    }
}

/// What one worker thread is started with.
#[derive(Debug)]
pub(crate) struct WorkerSetup {
    pub(crate) index: usize,
    pub(crate) listener: std::net::TcpListener,
    pub(crate) config: Arc<Config>,
    pub(crate) authority: Arc<Authority>,
    /// This worker's share of the shared and pinned pools.
    pub(crate) backend_cap: usize,
    pub(crate) pinned_cap: usize,
    pub(crate) leases: Arc<LeaseLimits>,
    pub(crate) guard: Arc<Guard>,
    pub(crate) metrics: Arc<crate::Metrics>,
    /// The directory and pause all workers share.
    pub(crate) clients: Arc<crate::clients::Shared>,
    /// This worker's queue of questions from the others about its sessions.
    pub(crate) queries: Option<tokio::sync::mpsc::Receiver<crate::clients::Query>>,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Turns true when a drain starts.
    pub(crate) drain: watch::Receiver<bool>,
    /// The configuration in force; a reload sends the new one.
    pub(crate) live: watch::Receiver<Arc<Config>>,
    /// The primary the Sentinels name (`backend.sentinels`); none: `backend.address`.
    pub(crate) primary: Option<Arc<crate::sentinel::Primary>>,
    /// This worker's TLS listening socket (`proxy.tls_listen`) and the certificates for it.
    pub(crate) tls_listener: Option<std::net::TcpListener>,
    pub(crate) server_tls: Option<Arc<crate::tls::accept::ServerTls>>,
    /// TLS to Redis (`[backend.tls]`).
    pub(crate) backend_tls: Option<Arc<crate::tls::connect::BackendTls>>,
}

/// Connections accepted per turn of the accept task before it yields to the sessions.
/// Measured under a flood from 1,024 addresses (`moat attack flood` with `moat attack
/// legit` alongside): 16 kept every legit operation served, where 64 lost some rounds.
const ACCEPT_BATCH: usize = 16;

/// How often, at most, a worker logs its refusals of one reason.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(1);

/// Refusals at accept not yet logged, by reason: a flood of refused sockets makes one
/// warning per reason per second per worker, never a line per socket.
#[derive(Debug)]
struct RefusalLog {
    worker: usize,
    unlogged: [u64; REFUSALS.len()],
    last: [Option<std::time::Instant>; REFUSALS.len()],
}

impl RefusalLog {
    fn new(worker: usize) -> Self {
        Self {
            worker,
            unlogged: [0; REFUSALS.len()],
            last: [None; REFUSALS.len()],
        }
    }

    /// Notes a refusal of reason `i` at `now`; returns the count to log now, if it is time.
    fn note(&mut self, i: usize, now: std::time::Instant) -> Option<u64> {
        self.unlogged[i] += 1;
        let due =
            self.last[i].is_none_or(|t| now.saturating_duration_since(t) >= REFUSAL_LOG_EVERY);
        if !due {
            return None;
        }
        self.last[i] = Some(now);
        Some(std::mem::take(&mut self.unlogged[i]))
    }

    /// Counts left unlogged whose second has passed at `now`, taken (logged by the caller).
    fn overdue(&mut self, now: std::time::Instant) -> impl Iterator<Item = (usize, u64)> + '_ {
        (0..REFUSALS.len()).filter_map(move |i| {
            let due =
                self.last[i].is_some_and(|t| now.saturating_duration_since(t) >= REFUSAL_LOG_EVERY);
            if self.unlogged[i] == 0 || !due {
                return None;
            }
            self.last[i] = Some(now);
            Some((i, std::mem::take(&mut self.unlogged[i])))
        })
    }
}

fn log_refusals(worker: usize, reason: usize, count: u64) {
    tracing::warn!(
        worker,
        reason = REFUSALS[reason],
        count,
        "connections refused at accept"
    );
}

/// Applies the guard to one accepted socket: refused ones get one error line (unless
/// configured silent) and are closed at once; admitted ones get a session.
fn admit(
    ctx: &Rc<WorkerCtx>,
    guard: &Arc<Guard>,
    refusals: &mut RefusalLog,
    stream: std::net::TcpStream,
    peer: SocketAddr,
    tls: Option<&Rc<crate::tls::accept::Acceptor>>,
) {
    let now = std::time::Instant::now();
    // Refused only for capacity: a hoarder's connection makes room (see `shed`).
    let mut make_room = || ctx.hoard.borrow_mut().evict().is_some();
    let ticket = match guard.admit_making_room(peer.ip(), now, &mut make_room) {
        Ok(ticket) => ticket,
        Err(reject) => {
            if let Some(i) = ctx.stats.refused(reject.label())
                && let Some(count) = refusals.note(i, now)
            {
                log_refusals(refusals.worker, i, count);
            }
            if guard.config().reject_reply {
                let line = format!("-{}\r\n", reject.line());
                // A fresh socket's send buffer is empty: this never blocks.
                let _ = std::io::Write::write(&mut &stream, line.as_bytes());
            }
            return;
        }
    };
    if stream.set_nonblocking(true).is_err() {
        return;
    }
    let Ok(stream) = tokio::net::TcpStream::from_std(stream) else {
        return;
    };
    let _ = stream.set_nodelay(true);
    // Above the high-water mark, each admission closes a connection doing no real work
    // (see `shed` for which). The shed session counts itself as closed when it ends.
    let mut hoard = ctx.hoard.borrow_mut();
    if ticket.over_high_water() {
        hoard.evict();
    }
    let link = Rc::new(crate::link::ClientLink::default());
    if !ticket.trusted() {
        hoard.admitted(ticket.ip(), &link);
    }
    drop(hoard);
    // The guard has judged the address: only now does a TLS client cost a handshake.
    if let Some(tls) = tls {
        tls.start(ctx, stream, peer, ticket, link);
        return;
    }
    tokio::task::spawn_local(crate::session::serve(
        stream.into(),
        peer,
        ctx.clone(),
        ticket,
        link,
    ));
}

/// `EMFILE` and `ENFILE` (Linux): the process or the system is out of file descriptors.
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;

/// Failed accepts not yet logged: at most one line a second, not one per 10 ms pause.
#[derive(Debug, Default)]
struct AcceptFailures {
    last: Option<std::time::Instant>,
    unlogged: u64,
    freed: usize,
}

impl AcceptFailures {
    fn note(&mut self, worker: usize, error: &std::io::Error, freed: usize) {
        self.unlogged += 1;
        self.freed += freed;
        let now = std::time::Instant::now();
        if self
            .last
            .is_some_and(|t| now.saturating_duration_since(t) < REFUSAL_LOG_EVERY)
        {
            return;
        }
        self.last = Some(now);
        tracing::warn!(
            worker,
            %error,
            failures = std::mem::take(&mut self.unlogged),
            evicted = std::mem::take(&mut self.freed),
            "accept failed"
        );
    }
}

/// Accepts and admits connections until the listener fails, as a task of its own: after
/// each batch it yields, so every session task ready to run gets a turn before the next
/// batch (established clients first under an accept storm).
async fn accept_loop(
    index: usize,
    ctx: Rc<WorkerCtx>,
    guard: Arc<Guard>,
    listener: AsyncFd<std::net::TcpListener>,
    tls: Option<Rc<crate::tls::accept::Acceptor>>,
) -> std::io::Result<()> {
    let mut refusals = RefusalLog::new(index);
    let mut failures = AcceptFailures::default();
    // Refusals left unlogged when a flood stops are logged at the next tick.
    let mut log_tick = tokio::time::interval(REFUSAL_LOG_EVERY);
    log_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = log_tick.tick() => {
                for (i, count) in refusals.overdue(std::time::Instant::now()) {
                    log_refusals(index, i, count);
                }
            }
            ready = listener.readable() => {
                let mut ready = ready?;
                for _ in 0..ACCEPT_BATCH {
                    match ready.get_inner().accept() {
                        Ok((stream, peer)) => {
                            admit(&ctx, &guard, &mut refusals, stream, peer, tls.as_ref());
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            ready.clear_ready();
                            break;
                        }
                        Err(e) => {
                            // Out of file descriptors (a hoard beyond the fd limit): close
                            // a batch of connections doing no real work, so the queue
                            // behind them moves (each eviction strikes its source), and
                            // pause instead of spinning. Bounded work per second either way.
                            let freed = if matches!(e.raw_os_error(), Some(EMFILE | ENFILE)) {
                                let mut hoard = ctx.hoard.borrow_mut();
                                (0..ACCEPT_BATCH).take_while(|_| hoard.evict().is_some()).count()
                            } else {
                                0
                            };
                            failures.note(index, &e, freed);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            break;
                        }
                    }
                }
                drop(ready);
                tokio::task::yield_now().await;
            }
        }
    }
}

/// Runs one worker until `shutdown` turns true.
pub(crate) fn run(setup: WorkerSetup) -> std::io::Result<()> {
    let WorkerSetup {
        index,
        listener,
        config,
        authority,
        backend_cap,
        pinned_cap,
        leases,
        guard,
        metrics,
        clients,
        queries,
        mut shutdown,
        mut drain,
        mut live,
        primary,
        tls_listener,
        server_tls,
        backend_tls,
    } = setup;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let listen = listener.local_addr()?;
        // Accepted sockets stay plain until admitted: a refused connection costs accept,
        // one write and close, and is never registered with the runtime.
        // Deprecated for I/O safety (registering an fd its owner may close); here the
        // AsyncFd owns the listener for its whole life, so that cannot happen, and the safe
        // alternative (`register`) is `unsafe`, which this crate forbids.
        #[allow(deprecated)]
        let mut listener = Some(AsyncFd::new(listener)?);
        // The same reasoning for the TLS listener (`proxy.tls_listen`).
        #[allow(deprecated)]
        let tls_listener = match tls_listener {
            Some(l) => Some(AsyncFd::new(l)?),
            None => None,
        };
        // `backend.sentinels` with `[backend.tls]` is refused when the config is loaded.
        let connector = match (primary, backend_tls) {
            (Some(primary), _) => Connector::Sentinel(primary),
            (None, Some(tls)) => Connector::Tls(tls),
            (None, None) => Connector::Tcp(config.backend.address),
        };
        let shares = Shares {
            backend_cap,
            pinned_cap,
            leases,
            clients,
            queries,
        };
        let ctx = WorkerCtx::build(
            &config, index, listen, connector, authority, shares, metrics,
        );
        let ctx = ctx.await;
        tracing::info!(worker = index, %listen, "accepting clients");
        let (mut drain_open, mut live_open) = (true, true);
        // A reload may have come while the worker was starting.
        let current = live.borrow_and_update().clone();
        if !Arc::ptr_eq(&current, &config) {
            ctx.apply(&current, index);
        }
        if *drain.borrow_and_update() {
            listener = None;
            ctx.start_drain(index, live.borrow().proxy.drain_timeout);
        }
        // Accepting is a task of its own, not part of this future: `LocalSet::block_on`
        // polls this future before each round of session tasks, and a still-ready listener
        // would be re-polled here until tokio's coop budget ran out (up to 128 batches),
        // starving admitted clients under an accept storm.
        let mut acceptor = listener.map(|l| {
            tokio::task::spawn_local(accept_loop(index, ctx.clone(), guard.clone(), l, None))
        });
        // The TLS listener's loop, beside it: a failure there is logged and leaves the
        // plain listener serving.
        let mut tls_acceptor = match (tls_listener, server_tls) {
            (Some(l), Some(tls)) if acceptor.is_some() => {
                let tls = crate::tls::accept::Acceptor::new(tls);
                let (ctx, guard) = (ctx.clone(), guard.clone());
                tracing::info!(worker = index, listen = ?l.get_ref().local_addr().ok(), "accepting TLS clients");
                Some(tokio::task::spawn_local(async move {
                    if let Err(e) = accept_loop(index, ctx, guard, l, Some(tls)).await {
                        tracing::error!(worker = index, error = %e, "TLS accept loop ended");
                    }
                }))
            }
            _ => None,
        };
        loop {
            let accepting = async {
                match &mut acceptor {
                    Some(task) => task.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ended = accepting => {
                    acceptor = None;
                    match ended {
                        Ok(result) => result?,
                        Err(e) => tracing::error!(worker = index, error = %e, "accept loop ended"),
                    }
                }
                changed = drain.changed(), if drain_open => {
                    if changed.is_err() {
                        drain_open = false;
                    } else if *drain.borrow_and_update()
                        && let Some(task) = acceptor.take()
                    {
                        // Closing the listening socket (not just ignoring it) makes the
                        // kernel refuse new connections, which a load balancer sees: the
                        // aborted task drops it.
                        task.abort();
                        if let Some(tls) = tls_acceptor.take() {
                            tls.abort();
                        }
                        ctx.start_drain(index, live.borrow().proxy.drain_timeout);
                    }
                }
                changed = live.changed(), if live_open => {
                    if changed.is_err() {
                        live_open = false;
                    } else {
                        let config = live.borrow_and_update().clone();
                        ctx.apply(&config, index);
                    }
                }
                _ = shutdown.changed() => break,
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn refusals_make_one_line_per_reason_per_second() {
        let mut log = RefusalLog::new(0);
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        // The first refusal of a reason is logged at once; the rest of its second wait.
        assert_eq!(log.note(2, at(0)), Some(1));
        for ms in 1..500 {
            assert_eq!(log.note(2, at(ms)), None);
        }
        // Another reason has its own second.
        assert_eq!(log.note(0, at(10)), Some(1));
        assert_eq!(log.overdue(at(999)).count(), 0, "not a second yet");
        // The flood stopped: the tick logs what is left, once.
        assert_eq!(log.overdue(at(1000)).collect::<Vec<_>>(), vec![(2, 499)]);
        assert_eq!(log.overdue(at(5000)).count(), 0);
        // A refusal long after is logged at once again.
        assert_eq!(log.note(2, at(9000)), Some(1));
    }
}
