//! Dormant clients: idle connections held as a socket and the few fields their session needs
//! to resume, without a task, a tokio registration or buffers.
//!
//! A hoard is exactly many idle connections, and an application's pool keeps many more. A
//! session task costs about 1.3 KB while it waits (its future, tokio's task header and the
//! socket's readiness slot); a dormant client costs its record here and the kernel's epoll
//! entry. The worker's sweep asks sessions that have been quiet for a while to go dormant
//! (see [`Rest`]); the watcher task resumes one as a new session task when its socket has
//! something to read (a request, EOF or an error), when something wakes its link (CLIENT
//! KILL, eviction, a drain) or when its next deadline is due.
//!
//! Why an epoll set of our own (mio's `Poll`) rather than tokio's: tokio gives each socket
//! it watches a readiness slot and, to wake anything, a task; the kernel's epoll entry is
//! all a dormant socket needs. The set's own descriptor is registered with tokio once.

use std::cell::{Cell, RefCell};
use std::io;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::task::{Wake, Waker};
use std::time::{Duration, Instant};

use slab::Slab;
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

use crate::link::ClientLink;
use crate::session::Kept;
use crate::worker::WorkerCtx;

/// How often the worker looks for quiet sessions: one quiet over two looks (0.5-1 s) is
/// asked to go dormant. A client then pays the resume (three epoll calls and a task spawn,
/// a few µs) at most once a second, and busy clients never.
const SWEEP_EVERY: Duration = Duration::from_millis(500);

/// Events taken from the set per call.
const EVENTS: usize = 256;

/// Where a session stands for the dormancy sweep, kept in its link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Rest {
    /// Doing something, or waiting in a state only its task can wait in.
    #[default]
    Busy,
    /// Waiting with nothing in progress: it could go dormant.
    Quiet,
    /// Seen quiet by one sweep and not active since.
    QuietSeen,
    /// Asked to go dormant at its next wait.
    Asked,
    /// Dormant.
    Dormant,
}

/// A dormant client: its socket and what its session keeps.
#[derive(Debug)]
pub(crate) struct DormantClient {
    stream: mio::net::TcpStream,
    kept: Kept,
    /// When the session's next deadline is due (handshake, authentication, idle).
    wake_at: Option<Instant>,
}

impl DormantClient {
    /// A client going dormant on `stream` (taken from tokio), due again at `wake_at`.
    pub(crate) fn new(stream: std::net::TcpStream, kept: Kept, wake_at: Option<Instant>) -> Self {
        Self {
            stream: mio::net::TcpStream::from_std(stream),
            kept,
            wake_at,
        }
    }

    /// The socket back in tokio's hands, and the session's state.
    pub(crate) fn into_parts(self) -> (io::Result<tokio::net::TcpStream>, Kept) {
        let stream = std::net::TcpStream::from(self.stream);
        (tokio::net::TcpStream::from_std(stream), self.kept)
    }

    /// The client's link.
    pub(crate) fn link(&self) -> &ClientLink {
        self.kept.link()
    }
}

/// Wakes the watcher when a dormant client's link is woken: one shared waker, installed in
/// every dormant link's slot, so going dormant allocates nothing for it.
#[derive(Debug, Default)]
struct LinkWake(Notify);

impl Wake for LinkWake {
    fn wake(self: Arc<Self>) {
        self.0.notify_one();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.notify_one();
    }
}

/// One worker's dormant clients.
#[derive(Debug)]
pub(crate) struct Dormant {
    /// Registers sockets in the set; `None` if the set could not be created (then no
    /// session goes dormant).
    registry: Option<mio::Registry>,
    /// The set itself, until the watcher takes it.
    poll: RefCell<Option<mio::Poll>>,
    /// Boxed: a slab grows by doubling, and empty slots of a boxed slab cost 8 bytes.
    clients: RefCell<Slab<Box<DormantClient>>>,
    wake: Arc<LinkWake>,
    /// The earliest `wake_at` of the set (or later, never earlier).
    next_due: Cell<Option<Instant>>,
    /// The watcher runs: without it nothing would resume a dormant client.
    watched: Cell<bool>,
}

impl Dormant {
    /// An empty set. On failure to create the epoll set, sessions just never go dormant.
    pub(crate) fn new() -> Self {
        let (registry, poll) = match mio::Poll::new()
            .and_then(|p| Ok((p.registry().try_clone()?, p)))
        {
            Ok((registry, poll)) => (Some(registry), Some(poll)),
            Err(e) => {
                tracing::warn!(error = %e, "no epoll set for idle clients: they keep their tasks");
                (None, None)
            }
        };
        Self {
            registry,
            poll: RefCell::new(poll),
            clients: RefCell::new(Slab::new()),
            wake: Arc::default(),
            next_due: Cell::new(None),
            watched: Cell::new(false),
        }
    }

    /// True when sessions may go dormant.
    pub(crate) fn enabled(&self) -> bool {
        self.watched.get()
    }

    /// Dormant clients now.
    pub(crate) fn len(&self) -> usize {
        self.clients.borrow().len()
    }

    /// Takes `client` in; hands it back if its socket cannot be watched.
    pub(crate) fn admit(&self, client: DormantClient) -> Result<(), Box<DormantClient>> {
        let mut client = Box::new(client);
        let Some(registry) = self.registry.as_ref().filter(|_| self.watched.get()) else {
            return Err(client);
        };
        let mut clients = self.clients.borrow_mut();
        let entry = clients.vacant_entry();
        let token = mio::Token(entry.key());
        if let Err(e) = registry.register(&mut client.stream, token, mio::Interest::READABLE) {
            tracing::debug!(error = %e, "idle client not made dormant");
            return Err(client);
        }
        let link = client.link();
        link.set_rest(Rest::Dormant);
        link.set_waker(Waker::from(self.wake.clone()));
        if let Some(at) = client.wake_at {
            // The watcher sees it at its next sweep at the latest (deadlines of dormant
            // clients are kept to within `SWEEP_EVERY`); waking it here would cost a pass
            // over the set for every client going dormant.
            let due = self.next_due.get().map_or(at, |d| d.min(at));
            self.next_due.set(Some(due));
        }
        entry.insert(client);
        Ok(())
    }

    /// Takes client `key` out of the set (no longer watched).
    fn take(&self, key: usize) -> Option<Box<DormantClient>> {
        let mut client = self.clients.borrow_mut().try_remove(key)?;
        if let Some(registry) = &self.registry {
            // A failure leaves a closed entry in the kernel's set at worst: the socket
            // leaves it when it is closed.
            let _ = registry.deregister(&mut client.stream);
        }
        client.link().set_rest(Rest::Busy);
        Some(client)
    }

    /// The keys of the clients matching `pick`.
    fn keys(&self, mut pick: impl FnMut(&DormantClient) -> bool) -> Vec<usize> {
        self.clients
            .borrow()
            .iter()
            .filter(|(_, c)| pick(c))
            .map(|(k, _)| k)
            .collect()
    }

    /// Resumes the clients whose links were woken.
    fn resume_woken(&self, ctx: &Rc<WorkerCtx>) {
        for key in self.keys(|c| c.link().woken()) {
            self.resume(ctx, key);
        }
    }

    /// Resumes the clients whose deadline is due at `now`.
    fn resume_due(&self, ctx: &Rc<WorkerCtx>, now: Instant) {
        if self.next_due.get().is_none_or(|d| d > now) {
            return;
        }
        for key in self.keys(|c| c.wake_at.is_some_and(|at| at <= now)) {
            self.resume(ctx, key);
        }
        let next = self
            .clients
            .borrow()
            .iter()
            .filter_map(|(_, c)| c.wake_at)
            .min();
        self.next_due.set(next);
    }

    fn resume(&self, ctx: &Rc<WorkerCtx>, key: usize) {
        if let Some(client) = self.take(key) {
            crate::session::resume(ctx.clone(), *client);
        }
    }

    /// Starts the worker's watcher of its dormant clients (and the sweep asking quiet
    /// sessions to go dormant).
    pub(crate) fn start(ctx: &Rc<WorkerCtx>) {
        let Some(poll) = ctx.dormant.poll.borrow_mut().take() else {
            return;
        };
        // Deprecated because a `T` could close its fd while tokio watches it; a mio `Poll`
        // owns its epoll fd for as long as the `AsyncFd` owns the `Poll`, and the successor
        // is `unsafe`, which this crate forbids.
        #[allow(deprecated)]
        let poll = AsyncFd::with_interest(poll, tokio::io::Interest::READABLE);
        match poll {
            Ok(poll) => {
                ctx.dormant.watched.set(true);
                tokio::task::spawn_local(watch(Rc::downgrade(ctx), poll, ctx.dormant.wake.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "idle clients' epoll set not watched: they keep their tasks");
            }
        }
    }
}

/// What woke the watcher.
enum Woke {
    Sockets,
    Links,
    Tick,
}

/// The watcher: resumes dormant clients and sweeps quiet sessions, for the worker's life.
async fn watch(ctx: Weak<WorkerCtx>, mut poll: AsyncFd<mio::Poll>, wake: Arc<LinkWake>) {
    let mut events = mio::Events::with_capacity(EVENTS);
    let mut next_sweep = tokio::time::Instant::now() + SWEEP_EVERY;
    loop {
        let due = match ctx.upgrade() {
            Some(ctx) => ctx.dormant.next_due.get(),
            None => return,
        };
        let until = due.map_or(next_sweep, |d| {
            next_sweep.min(tokio::time::Instant::from_std(d))
        });
        let woke = tokio::select! {
            ready = poll.readable_mut() => match ready {
                Ok(mut guard) => {
                    match guard.get_inner_mut().poll(&mut events, Some(Duration::ZERO)) {
                        Ok(()) => {
                            if events.iter().count() < EVENTS {
                                guard.clear_ready();
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "idle clients' epoll set failed");
                            return stop(&ctx);
                        }
                    }
                    Woke::Sockets
                }
                Err(e) => {
                    tracing::warn!(error = %e, "idle clients' epoll set failed");
                    return stop(&ctx);
                }
            },
            () = wake.0.notified() => Woke::Links,
            () = tokio::time::sleep_until(until) => Woke::Tick,
        };
        let Some(ctx) = ctx.upgrade() else { return };
        let dormant = &ctx.dormant;
        match woke {
            Woke::Sockets => {
                for event in events.iter() {
                    dormant.resume(&ctx, event.token().0);
                }
            }
            Woke::Links => dormant.resume_woken(&ctx),
            Woke::Tick => {
                let now = tokio::time::Instant::now();
                dormant.resume_due(&ctx, now.into_std());
                if now >= next_sweep {
                    ctx.clients.sweep_quiet();
                    next_sweep = now + SWEEP_EVERY;
                }
            }
        }
    }
}

/// The set failed: every dormant client resumes, and none goes dormant again.
fn stop(ctx: &Weak<WorkerCtx>) {
    let Some(ctx) = ctx.upgrade() else { return };
    let dormant = &ctx.dormant;
    dormant.watched.set(false);
    for key in dormant.keys(|_| true) {
        dormant.resume(&ctx, key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a dormant client costs in moat's memory, beside the kernel's epoll entry: its
    /// record here and its link (shared with the directory). Keeps both from creeping up
    /// unnoticed (192 and 232 bytes, plus the link's `Rc` counts; the card in the link is 136
    /// of them, and repeats the id, address and creation time the record also holds).
    #[test]
    fn a_dormant_client_stays_small() {
        let record = std::mem::size_of::<DormantClient>();
        let link = std::mem::size_of::<ClientLink>();
        assert!(
            record <= 192,
            "a dormant client's record grew to {record} bytes"
        );
        assert!(link <= 232, "a client's link grew to {link} bytes");
    }
}
