//! TLS for clients: the server configuration all workers share (replaced on reload), and
//! each worker's acceptor, which runs the handshake of a connection the guard already
//! admitted, under a deadline and a cap on handshakes in progress, before the session
//! starts.
//!
//! Order matters against a handshake flood: the guard judges the address first (bans,
//! rates, concurrency: a refused connection never costs a handshake), then the cap bounds
//! the handshakes one worker runs at once, and the deadline bounds how long each may hold a
//! slot. A failed handshake (plain text on the TLS port, a bad certificate) strikes its
//! source as a protocol error; a timed-out one as a silent connection.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use moat_guard::{Event, Ticket};
use tokio::net::TcpStream;

use super::config::ClientTlsConfig;
use super::stream::TlsStream;
use crate::config::ConfigError;
use crate::link::ClientLink;
use crate::net::Stream;
use crate::worker::WorkerCtx;

/// How a client's handshake ended (`moat_tls_handshakes_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Done: the session runs.
    Ok,
    /// Refused by rustls or cut by the client (not TLS, bad certificate, no common
    /// version...).
    Failed,
    /// Not done within `proxy.tls.handshake_timeout`.
    Timeout,
    /// Closed at once: the worker had `proxy.tls.max_handshakes` in progress.
    Busy,
}

impl Outcome {
    /// Every outcome, in the order of `Metrics::tls_handshakes`.
    pub(crate) const ALL: [Outcome; 4] = [
        Outcome::Ok,
        Outcome::Failed,
        Outcome::Timeout,
        Outcome::Busy,
    ];

    /// The metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Timeout => "timeout",
            Outcome::Busy => "busy",
        }
    }
}

/// What a handshake needs from `[proxy.tls]`, loaded from its files.
#[derive(Debug)]
pub(crate) struct ServerSide {
    config: Arc<rustls::ServerConfig>,
    timeout: Duration,
    max_handshakes: usize,
}

impl ServerSide {
    /// Reads `[proxy.tls]`'s files (at start and on every reload).
    pub(crate) fn load(tls: &ClientTlsConfig) -> Result<Self, ConfigError> {
        Ok(Self {
            config: tls.load()?,
            timeout: tls.handshake_timeout,
            max_handshakes: tls.max_handshakes,
        })
    }
}

/// The server side all workers use; a reload replaces it (new connections see it, open
/// ones keep theirs). Read once per accepted TLS connection, written once per reload.
#[derive(Debug)]
pub(crate) struct ServerTls {
    current: RwLock<Arc<ServerSide>>,
}

impl ServerTls {
    pub(crate) fn new(side: ServerSide) -> Self {
        Self {
            current: RwLock::new(Arc::new(side)),
        }
    }

    fn current(&self) -> Arc<ServerSide> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Puts a newly loaded configuration in force.
    pub(crate) fn replace(&self, side: ServerSide) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(side);
    }
}

/// One worker's TLS accepting.
#[derive(Debug)]
pub(crate) struct Acceptor {
    shared: Arc<ServerTls>,
    in_progress: Cell<usize>,
}

/// Counts a handshake in progress for as long as it lives (the task may be dropped at
/// shutdown).
struct InProgress(Rc<Acceptor>);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0
            .in_progress
            .set(self.0.in_progress.get().saturating_sub(1));
    }
}

impl Acceptor {
    pub(crate) fn new(shared: Arc<ServerTls>) -> Rc<Self> {
        Rc::new(Self {
            shared,
            in_progress: Cell::new(0),
        })
    }

    /// Runs the handshake of an admitted connection in a task of its own, then serves it.
    pub(crate) fn start(
        self: &Rc<Self>,
        ctx: &Rc<WorkerCtx>,
        tcp: TcpStream,
        peer: SocketAddr,
        ticket: Ticket,
        link: Rc<ClientLink>,
    ) {
        let side = self.shared.current();
        let count = |outcome: Outcome| {
            ctx.metrics.tls_handshakes[outcome as usize].fetch_add(1, Ordering::Relaxed);
        };
        let conn = if self.in_progress.get() >= side.max_handshakes {
            None
        } else {
            match rustls::ServerConnection::new(side.config.clone()) {
                Ok(conn) => Some(conn),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start a TLS connection");
                    None
                }
            }
        };
        let Some(conn) = conn else {
            count(Outcome::Busy);
            forget(ctx, &ticket, &link);
            return;
        };
        self.in_progress.set(self.in_progress.get() + 1);
        let progress = InProgress(self.clone());
        let ctx = ctx.clone();
        tokio::task::spawn_local(async move {
            let mut conn = rustls::Connection::Server(conn);
            let done =
                tokio::time::timeout(side.timeout, super::handshake::run(&tcp, &mut conn)).await;
            drop(progress);
            let count = |outcome: Outcome| {
                ctx.metrics.tls_handshakes[outcome as usize].fetch_add(1, Ordering::Relaxed);
            };
            let event = match done {
                Ok(Ok(())) if !link.evicted() => {
                    count(Outcome::Ok);
                    let stream = Stream::Tls(Box::new(TlsStream::new(tcp, conn)));
                    crate::session::serve(stream, peer, ctx, ticket, link).await;
                    return;
                }
                Ok(Ok(())) => Event::Evicted,
                Ok(Err(e)) => {
                    count(Outcome::Failed);
                    tracing::debug!(%peer, error = %e, "client TLS handshake failed");
                    Event::ProtocolError
                }
                Err(_) => {
                    count(Outcome::Timeout);
                    Event::Closed { commands: 0 }
                }
            };
            forget(&ctx, &ticket, &link);
            ticket.guard().record(ticket.ip(), event, Instant::now());
        });
    }
}

/// Undoes what admission registered for a connection that never became a session.
fn forget(ctx: &WorkerCtx, ticket: &Ticket, link: &ClientLink) {
    link.close();
    if !ticket.trusted() {
        ctx.hoard.borrow_mut().ended(ticket.ip(), link, link.kind());
    }
}
