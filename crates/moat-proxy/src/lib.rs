//! Moat's RESP proxy: client sessions with handshake emulation, multiplexed onto a small,
//! bounded pool of shared backend connections.
//!
//! Start it with [`start`]; the returned [`RunningProxy`] reports the bound address and stops
//! the workers when asked or dropped.

#![forbid(unsafe_code)]

mod auth;
mod backend;
mod budget;
mod clients;
mod command;
pub mod config;
pub mod control;
#[cfg(feature = "harness")]
pub mod harness;
mod link;
mod listener;
mod metrics;
mod net;
mod pinned;
mod session;
mod shed;
pub mod stats;
mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::watch;

pub use config::{Config, ConfigError};
pub use control::Control;
pub use metrics::Metrics;

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
    shutdown: watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
    guard: Arc<moat_guard::Guard>,
    metrics: Arc<Metrics>,
    control: Control,
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
        Stopper(self.shutdown.clone())
    }

    fn stop(&mut self) {
        let _ = self.shutdown.send(true);
        for worker in self.workers.drain(..) {
            let _ = worker.join();
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
pub struct Stopper(watch::Sender<bool>);

impl Stopper {
    /// Asks every worker to stop.
    pub fn stop(&self) {
        let _ = self.0.send(true);
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
    let authority = Arc::new(auth::Authority::from_config(&config));
    let (tx, rx) = watch::channel(false);
    let total = config.backend.shared_connections;
    let pinned_total = config.pinned.max_connections;
    let leases = pinned::LeaseLimits::new(config.pinned.max_per_ip, config.pinned.max_per_user);
    let guard = moat_guard::Guard::new(config.guard.clone());
    // One block of counters per worker, written only by it; `Control` sums them.
    let metrics = Arc::new(Metrics::new(workers));
    let (clients, queries) = clients::Shared::new(workers);
    let mut queries = queries.into_iter();
    let mut handles = Vec::with_capacity(workers);
    for (index, listener) in listeners.into_iter().enumerate() {
        // Split the backend cap so the sum over workers never exceeds it.
        let cap = total / workers + usize::from(index < total % workers);
        let pinned_cap = pinned_total / workers + usize::from(index < pinned_total % workers);
        let (config, authority, rx) = (config.clone(), authority.clone(), rx.clone());
        let leases = leases.clone();
        let guard = guard.clone();
        let metrics = metrics.clone();
        let clients = clients.clone();
        // Each worker answers its own queue of questions about its sessions (by index).
        let queries = queries.next();
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
                };
                if let Err(e) = worker::run(setup) {
                    tracing::error!(worker = index, error = %e, "worker failed");
                }
            })
            .map_err(StartError::Thread)?;
        handles.push(handle);
    }
    let control = Control::new(guard.clone(), metrics.clone(), config);
    Ok(RunningProxy {
        addr,
        shutdown: tx,
        workers: handles,
        guard,
        metrics,
        control,
    })
}
