//! A worker: one thread running a single-threaded tokio runtime with its own accept loop and
//! its own share of the backend pool. Work-stealing runtimes cost more CPU per request here
//! and batch fewer requests per backend write, so moat scales with one worker per core.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use moat_protocol::Limits;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::auth::Users;
use crate::backend::{Backend, Settings};
use crate::config::Config;
use crate::pinned::{LeaseLimits, PinnedPool};

/// What every session of a worker shares.
#[derive(Debug)]
pub(crate) struct WorkerCtx {
    pub(crate) backend: Rc<Backend>,
    pub(crate) users: Arc<Users>,
    pub(crate) limits: Limits,
    pub(crate) max_inflight: usize,
    pub(crate) max_output_bytes: usize,
    pub(crate) max_queue: usize,
    pub(crate) max_reply_depth: usize,
    pub(crate) listen: SocketAddr,
    pub(crate) pinned: Rc<PinnedPool>,
}

/// What one worker thread is started with.
#[derive(Debug)]
pub(crate) struct WorkerSetup {
    pub(crate) index: usize,
    pub(crate) listener: std::net::TcpListener,
    pub(crate) config: Arc<Config>,
    pub(crate) users: Arc<Users>,
    /// This worker's share of the shared and pinned pools.
    pub(crate) backend_cap: usize,
    pub(crate) pinned_cap: usize,
    pub(crate) leases: Arc<LeaseLimits>,
    pub(crate) shutdown: watch::Receiver<bool>,
}

/// Runs one worker until `shutdown` turns true.
pub(crate) fn run(setup: WorkerSetup) -> std::io::Result<()> {
    let WorkerSetup {
        index,
        listener,
        config,
        users,
        backend_cap,
        pinned_cap,
        leases,
        mut shutdown,
    } = setup;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let listener = TcpListener::from_std(listener)?;
        let listen = listener.local_addr()?;
        let backend = Backend::new(Settings::from_config(&config, index), backend_cap);
        backend.start().await;
        let pinned = PinnedPool::new(
            Settings::named(&config, format!("moat-pinned-w{index}")),
            pinned_cap,
            leases,
            config.pinned.wait,
        );
        let l = &config.limits;
        let ctx = Rc::new(WorkerCtx {
            backend,
            users,
            limits: Limits {
                max_args: l.max_args,
                max_bulk_len: l.max_bulk_len,
                max_request_bytes: l.max_request_bytes,
                max_inline_len: l.max_inline_len,
            },
            max_inflight: l.max_inflight,
            max_output_bytes: l.max_output_bytes,
            max_queue: config.backend.max_queue,
            max_reply_depth: l.max_reply_depth,
            listen,
            pinned,
        });
        tracing::info!(worker = index, %listen, "accepting clients");
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        tokio::task::spawn_local(crate::session::serve(stream, peer, ctx.clone()));
                    }
                    Err(e) => {
                        // Out of file descriptors or memory: pause instead of spinning, and
                        // let connections wait in the kernel's accept queue.
                        tracing::warn!(worker = index, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                _ = shutdown.changed() => break,
            }
        }
        Ok(())
    })
}
