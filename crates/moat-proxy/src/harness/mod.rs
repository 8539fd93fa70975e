//! An in-process harness (feature `harness`): one worker's machinery on the calling thread,
//! with client and backend connections as in-memory pipes and a Redis double behind them.
//!
//! Sessions run exactly the code that serves TCP clients (the session loop, classification,
//! the shared and dedicated backend paths, the guard's ticket), minus the kernel: the
//! session fuzz target runs thousands of sessions a second on it, and the tests replay the
//! fuzz corpus through it. Not for production builds.

mod case;
mod fake_redis;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

pub use crate::net::memory::{Pipe, pair};
pub use case::{check_input, fuzz_config};

use crate::auth::Authority;
use crate::config::{Config, ConfigError};
use crate::link::ClientLink;
use crate::net::{Connector, Stream};
use crate::pinned::LeaseLimits;
use crate::worker::{Shares, WorkerCtx};

/// Bytes each direction of a backend pipe buffers (a socket buffer's worth).
const BACKEND_PIPE: usize = 256 << 10;

/// Why a harness could not be built.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The configuration is not usable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The runtime could not be created.
    #[error("cannot build the runtime: {0}")]
    Runtime(#[from] std::io::Error),
}

/// What a client saw of one session.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Everything moat wrote to the client, in order.
    pub output: Vec<u8>,
    /// Moat closed the connection within the time limit.
    pub closed: bool,
    /// The guard refused the connection: its reason line.
    pub refused: Option<String>,
}

/// One worker and its Redis double, driven on the calling thread.
pub struct Harness {
    runtime: tokio::runtime::Runtime,
    local: tokio::task::LocalSet,
    ctx: Rc<WorkerCtx>,
    guard: Arc<moat_guard::Guard>,
    faults: Rc<fake_redis::Faults>,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness").finish_non_exhaustive()
    }
}

impl Harness {
    /// A worker configured by `config` (its listen address is only reported, never bound)
    /// with every backend connection served by the in-memory Redis double.
    pub fn new(config: Config) -> Result<Self, HarnessError> {
        config.validate()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let local = tokio::task::LocalSet::new();
        let authority = Arc::new(Authority::from_config(&config));
        let guard = moat_guard::Guard::new(config.guard.clone());
        let faults = Rc::new(fake_redis::Faults::default());
        let for_connector = faults.clone();
        let connector = Connector::Memory(Rc::new(move || {
            let (moat, redis) = pair(BACKEND_PIPE);
            tokio::task::spawn_local(fake_redis::serve(redis, for_connector.clone()));
            moat
        }));
        let shares = Shares {
            backend_cap: config.backend.shared_connections,
            pinned_cap: config.pinned.max_connections,
            leases: LeaseLimits::new(config.pinned.max_per_ip, config.pinned.max_per_user),
            clients: crate::clients::Shared::new(1).0,
            queries: None,
        };
        let metrics = Arc::new(crate::Metrics::default());
        let build = WorkerCtx::build(
            &config,
            0,
            config.proxy.listen,
            connector,
            authority,
            shares,
            metrics,
        );
        let ctx = local.block_on(&runtime, build);
        Ok(Self {
            runtime,
            local,
            ctx,
            guard,
            faults,
        })
    }

    /// Makes the backend drop a dedicated connection when it is about to answer the `n`-th
    /// request on one from now on (0: the next), as a crashed server would; `None` disarms.
    /// Shared connections are never dropped: their reconnect waits a real backoff delay.
    pub fn drop_dedicated_at(&self, n: Option<u32>) {
        self.faults.drop_dedicated_at(n);
    }

    /// The worker's event counters.
    pub fn metrics(&self) -> &Arc<crate::Metrics> {
        &self.ctx.metrics
    }

    /// Serves one client from `peer`: its `writes` go in one at a time, each read by moat
    /// before the next is made (so moat sees the same splits), then the client half-closes
    /// and reads until moat closes, or until `limit` passes. Each direction buffers at most
    /// `window` bytes, as a socket does; the client reads everything moat writes.
    pub fn session(
        &self,
        peer: SocketAddr,
        writes: &[&[u8]],
        window: usize,
        limit: Duration,
    ) -> Outcome {
        let outcome = self.local.block_on(&self.runtime, async {
            let ticket = match self.guard.admit(peer.ip(), Instant::now()) {
                Ok(ticket) => ticket,
                Err(reject) => {
                    return Outcome {
                        refused: Some(reject.line()),
                        closed: true,
                        ..Outcome::default()
                    };
                }
            };
            let (client, server) = pair(window);
            let link = Rc::new(ClientLink::default());
            let task = tokio::task::spawn_local(crate::session::serve(
                Stream::Memory(server),
                peer,
                self.ctx.clone(),
                ticket,
                link,
            ));
            let mut output = Vec::new();
            let run = run_client(&client, writes, &mut output);
            let closed = tokio::time::timeout(limit, run).await.is_ok();
            if closed {
                let _ = task.await;
            } else {
                task.abort();
            }
            Outcome {
                output,
                closed,
                refused: None,
            }
        });
        self.settle();
        outcome
    }

    /// Lets work a session left behind finish (replies still owed to it, dedicated
    /// connections being RESET before they go back to the pool), so the next session starts
    /// from a quiet worker.
    fn settle(&self) {
        self.local.block_on(&self.runtime, async {
            for _ in 0..10_000 {
                if self.ctx.pinned.is_quiet() && self.ctx.backend.owed() == 0 {
                    break;
                }
                tokio::task::yield_now().await;
            }
        });
    }

    /// What sessions that have all ended still hold: memory counted against the worker's
    /// budget, guard admissions, replies owed, dedicated connections not back in the pool.
    /// Empty when every count went back to zero; anything else would build up over time.
    pub fn leftovers(&self) -> Vec<String> {
        let mut found = Vec::new();
        let (bytes, sessions) = self.ctx.budget.counts();
        if bytes != 0 || sessions != 0 {
            found.push(format!(
                "memory budget still counts {bytes} bytes of {sessions} sessions"
            ));
        }
        let (bytes, holders) = self.ctx.output_budget.counts();
        if bytes != 0 || holders != 0 {
            found.push(format!(
                "output budget still counts {bytes} bytes of {holders} sessions"
            ));
        }
        let clients = self.guard.stats().clients;
        if clients != 0 {
            found.push(format!("the guard still counts {clients} clients"));
        }
        let owed = self.ctx.backend.owed();
        if owed != 0 {
            found.push(format!("shared connections still owe {owed} replies"));
        }
        if !self.ctx.pinned.is_quiet() {
            found.push("a dedicated connection is still leased or resetting".into());
        }
        found
    }
}

/// A client: writes each piece once moat has read the previous one, half-closes, and reads
/// everything until moat closes.
async fn run_client(client: &Pipe, writes: &[&[u8]], output: &mut Vec<u8>) {
    let mut pending = writes.iter().copied().filter(|w| !w.is_empty());
    let mut current = pending.next();
    let mut shut = false;
    let mut buf = [0u8; 4 << 10];
    loop {
        loop {
            match client.try_read(&mut buf) {
                Ok(0) => return,
                Ok(n) => output.extend_from_slice(&buf[..n]),
                Err(_) => break,
            }
        }
        if let Some(data) = current
            && client.drained()
        {
            match client.try_write(data) {
                Ok(n) if n == data.len() => current = pending.next(),
                Ok(n) => current = Some(&data[n..]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                // Moat closed: what it wrote is still there to read.
                Err(_) => current = None,
            }
        }
        if current.is_none() && !shut {
            client.shutdown_write();
            shut = true;
        }
        std::future::poll_fn(|cx| {
            if client.poll_read_ready(cx).is_ready() {
                return Poll::Ready(());
            }
            if current.is_some() && client.poll_drained(cx).is_ready() {
                return Poll::Ready(());
            }
            Poll::Pending
        })
        .await;
    }
}
