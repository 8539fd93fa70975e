//! Moat's RESP proxy: client sessions with handshake emulation, multiplexed onto a small,
//! bounded pool of shared backend connections.
//!
//! Start it with [`start`]; the returned [`RunningProxy`] reports the bound address and stops
//! the workers when asked or dropped.
//!
//! Modules, from the outside in:
//! - `listener`, `worker`: listening sockets (one per worker, `SO_REUSEPORT`) and the worker
//!   threads, each a single-threaded runtime with its accept loop and share of the pools;
//!   `tls`: TLS for clients (`proxy.tls_listen`) and to Redis (`[backend.tls]`).
//! - `session`: one client connection (parse, answer locally or forward, reply in order);
//!   `link`: what a session shares with the backend connections serving it; `dormant`: idle
//!   clients held without a task; `clients`: the directory behind CLIENT LIST/KILL/PAUSE.
//! - `command`: what moat knows of each Redis command; `auth`: who a client is.
//! - `backend`: the shared pool (multiplexed connections, breaker, backoff); `pinned`: the
//!   dedicated connections of stateful clients; `sentinel`: following a Sentinel-managed
//!   primary; `net`: the streams and connectors they use.
//! - `budget`, `shed`: memory bounds and shedding under pressure.
//! - `kernel_filter`, `nft_sync`: the guard's bans pushed into the kernel; `ban_share`,
//!   `crowdsec`: bans shared with other moats, `relayed` telling those apart.
//! - `config`, `control`, `metrics`, `stats`: configuration and reload, the operator's
//!   handle, counters and their snapshot; `harness` (feature): a whole worker in-process.

#![forbid(unsafe_code)]

mod auth;
mod backend;
mod ban_share;
mod budget;
mod clients;
mod command;
pub mod config;
pub mod control;
mod crowdsec;
mod dormant;
#[cfg(feature = "harness")]
pub mod harness;
mod kernel_filter;
mod link;
mod listener;
mod metrics;
mod net;
mod nft_sync;
mod pinned;
mod relayed;
mod sentinel;
mod session;
mod shed;
pub mod stats;
mod tls;
mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::watch;

pub use ban_share::BanShareConfig;
pub use config::{Config, ConfigError};
pub use control::Control;
pub use crowdsec::CrowdSecConfig;
pub use metrics::Metrics;
pub use nft_sync::nftables_spec;
pub use tls::{BackendTlsConfig, ClientTlsConfig};

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is not usable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A worker thread could not be started.
    #[error("cannot start worker thread: {0}")]
    Thread(std::io::Error),
}

/// A proxy serving clients on its worker threads.
#[derive(Debug)]
pub struct RunningProxy {
    addr: SocketAddr,
    /// The TLS listener's address (`proxy.tls_listen`).
    tls_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
    /// The thread keeping the kernel's socket filter in step with the bans.
    filter: Option<JoinHandle<()>>,
    guard: Arc<moat_guard::Guard>,
    metrics: Arc<Metrics>,
    control: Control,
    /// Moat's nftables table and its sync thread (`[kernel] nftables`).
    nft: Option<nft_sync::NftSync>,
    /// Bans shared with other moats through Redis (`[ban_share]`).
    ban_share: Option<ban_share::BanShare>,
    /// The thread following the Sentinels' primary (`backend.sentinels`).
    sentinel: Option<JoinHandle<()>>,
    /// Bans shared with a CrowdSec LAPI (`[crowdsec]`).
    crowdsec: Option<crowdsec::CrowdSec>,
}

impl RunningProxy {
    /// The operator's handle: stats, status, bans, clients, reload, drain.
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// Event counters (timeouts, breaker, reconnects, shedding...), summed over workers
    /// when read; [`Control::snapshot`] has every metric.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The admission guard, for the admin API and tests: bans, counts.
    pub fn guard(&self) -> &Arc<moat_guard::Guard> {
        &self.guard
    }

    /// The address clients connect to (the real port when the config asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address TLS clients connect to (`proxy.tls_listen`, with the real port), if any.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// Stops accepting, drops every session and waits for the workers to exit.
    pub fn shutdown(mut self) {
        self.stop();
    }

    /// Blocks until every worker has exited (they exit on [`RunningProxy::shutdown`] or if
    /// their runtime fails).
    pub fn wait(mut self) {
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }

    /// A handle that can stop the proxy from another thread (a signal handler).
    pub fn stopper(&self) -> Stopper {
        Stopper {
            shutdown: self.shutdown.clone(),
            control: self.control.clone(),
        }
    }

    /// Graceful shutdown: drains (see [`Control::drain`]), waits until no client remains
    /// or `proxy.drain_timeout` has passed (and the workers closed the rest), then stops.
    /// Blocks the calling thread; a [`Stopper`] can still stop at once meanwhile.
    pub fn shutdown_gracefully(mut self) {
        self.stopper().drain_then_stop();
        self.stop();
    }

    fn stop(&mut self) {
        let _ = self.shutdown.send(true);
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
        if let Some(mut share) = self.ban_share.take() {
            share.stop();
        }
        if let Some(mut cs) = self.crowdsec.take() {
            cs.stop();
        }
        // Moat's nftables table goes with it.
        if let Some(mut nft) = self.nft.take() {
            nft.stop();
        }
        if let Some(filter) = self.filter.take() {
            let _ = filter.join();
        }
        if let Some(sentinel) = self.sentinel.take() {
            let _ = sentinel.join();
        }
    }
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Stops a [`RunningProxy`] from anywhere.
#[derive(Debug, Clone)]
pub struct Stopper {
    shutdown: watch::Sender<bool>,
    control: Control,
}

/// How often a graceful shutdown looks whether clients remain.
const SHUTDOWN_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// Time past the drain timeout a graceful shutdown allows the workers to close the
/// clients still open before it stops them outright.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

impl Stopper {
    /// Asks every worker to stop at once: sessions are dropped.
    pub fn stop(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Whether the workers were asked to stop.
    pub fn stopped(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Graceful shutdown from another thread: drains, blocks until no client remains or the
    /// drain timeout (plus a little) has passed, or [`Stopper::stop`] was called meanwhile,
    /// then asks the workers to stop. No reply Redis already sent is lost: a session closes
    /// by drain only once it has written everything it owes.
    pub fn drain_then_stop(&self) {
        self.control.drain();
        let deadline =
            std::time::Instant::now() + self.control.config().proxy.drain_timeout + SHUTDOWN_GRACE;
        while self.control.guard().clients() > 0
            && std::time::Instant::now() < deadline
            && !self.stopped()
        {
            std::thread::sleep(SHUTDOWN_POLL);
        }
        self.stop();
    }
}

/// Validates the config, binds the listener and starts the workers. Returns once every
/// worker is listening; backend connections are opened in the background.
pub fn start(config: Config) -> Result<RunningProxy, StartError> {
    config.validate()?;
    let config = Arc::new(config);
    let workers = config.proxy.workers;
    let listeners = listener::bind(config.proxy.listen, workers, config.proxy.backlog)?;
    let addr = listeners
        .first()
        .and_then(|l| l.local_addr().ok())
        .unwrap_or(config.proxy.listen);
    // TLS files are read before anything starts, so a bad certificate fails the start
    // with the key and file named.
    let server_tls = match &config.proxy.tls {
        Some(tls) if config.proxy.tls_listen.is_some() => Some(Arc::new(
            tls::accept::ServerTls::new(tls::accept::ServerSide::load(tls)?),
        )),
        _ => None,
    };
    let mut tls_listeners: Vec<Option<std::net::TcpListener>> = match config.proxy.tls_listen {
        Some(at) => listener::bind(at, workers, config.proxy.backlog)?
            .into_iter()
            .map(Some)
            .collect(),
        None => (0..workers).map(|_| None).collect(),
    };
    let tls_addr = tls_listeners
        .first()
        .and_then(|l| l.as_ref())
        .and_then(|l| l.local_addr().ok());
    let authority = Arc::new(auth::Authority::from_config(&config));
    let (tx, rx) = watch::channel(false);
    let (drain_tx, drain_rx) = watch::channel(false);
    // Metrics first: the Sentinel follower counts into them.
    let metrics = Arc::new(Metrics::new(workers));
    let follower =
        sentinel::start(&config, metrics.clone(), rx.clone()).map_err(StartError::Thread)?;
    let primary = follower.as_ref().map(|f| f.primary.clone());
    let (live_tx, live_rx) = watch::channel(config.clone());
    let total = config.backend.shared_connections;
    let pinned_total = config.pinned.max_connections;
    let leases = pinned::LeaseLimits::new(config.pinned.max_per_ip, config.pinned.max_per_user);
    let guard = moat_guard::Guard::new(config.guard.clone());
    // One block of counters per worker, written only by it; `Control` sums them (made
    // above).
    let backend_tls = tls::connect::BackendTls::load(&config, metrics.clone())?;
    let (clients, queries) = clients::Shared::new(workers);
    let mut queries = queries.into_iter();
    // The same sockets, for the socket filter's thread (a duplicate is the same socket).
    let filtered: Vec<_> = listeners
        .iter()
        .chain(tls_listeners.iter().flatten())
        .filter_map(|l| l.try_clone().ok())
        .collect();
    let mut handles = Vec::with_capacity(workers);
    for (index, listener) in listeners.into_iter().enumerate() {
        // Split the backend cap so the sum over workers never exceeds it.
        let cap = worker::share(total, workers, index);
        let pinned_cap = worker::share(pinned_total, workers, index);
        let (config, authority, rx) = (config.clone(), authority.clone(), rx.clone());
        let (drain, live) = (drain_rx.clone(), live_rx.clone());
        let leases = leases.clone();
        let guard = guard.clone();
        let metrics = metrics.clone();
        let clients = clients.clone();
        let primary = primary.clone();
        // Each worker answers its own queue of questions about its sessions (by index).
        let queries = queries.next();
        let tls_listener = tls_listeners.get_mut(index).and_then(Option::take);
        let (server_tls, backend_tls) = (server_tls.clone(), backend_tls.clone());
        let handle = std::thread::Builder::new()
            .name(format!("moat-worker-{index}"))
            .spawn(move || {
                let setup = worker::WorkerSetup {
                    index,
                    listener,
                    config,
                    authority,
                    backend_cap: cap,
                    pinned_cap,
                    leases,
                    guard,
                    metrics,
                    clients,
                    queries,
                    shutdown: rx,
                    drain,
                    live,
                    primary,
                    tls_listener,
                    server_tls,
                    backend_tls,
                };
                if let Err(e) = worker::run(setup) {
                    tracing::error!(worker = index, error = %e, "worker failed");
                }
            })
            .map_err(StartError::Thread)?;
        handles.push(handle);
    }
    let nft = nft_sync::NftSync::start(&config, addr.port(), guard.clone(), metrics.clone());
    let ban_share =
        ban_share::BanShare::start(&config, guard.clone(), metrics.clone(), primary.clone());
    let crowdsec = crowdsec::CrowdSec::start(&config, guard.clone(), metrics.clone());
    let filter = kernel_filter::spawn(kernel_filter::Parts {
        listeners: filtered,
        guard: guard.clone(),
        metrics: metrics.clone(),
        live: live_rx.clone(),
        drain: drain_rx.clone(),
        shutdown: rx.clone(),
    });
    let control = Control::new(control::Parts {
        guard: guard.clone(),
        metrics: metrics.clone(),
        config,
        authority,
        leases,
        clients,
        live: live_tx,
        drain: drain_tx,
        tls: server_tls,
    });
    Ok(RunningProxy {
        addr,
        tls_addr,
        shutdown: tx,
        workers: handles,
        filter,
        guard,
        metrics,
        control,
        nft,
        ban_share,
        sentinel: follower.map(|f| f.thread),
        crowdsec,
    })
}
