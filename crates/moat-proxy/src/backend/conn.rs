//! One shared backend connection: requests from many sessions are appended to one write
//! buffer, and replies are matched to them in FIFO order.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use moat_protocol::{FrameKind, ReplyFramer, Request, encode};
use tokio::sync::Notify;

use super::BackendError;
use super::breaker::Breaker;
use crate::auth::Principal;
use crate::link::ClientLink;
use crate::net::Stream;
use crate::stats::worker::WorkerStats;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnState {
    /// Connecting or in its handshake: requests queue and go out once it is ready.
    Connecting,
    /// Serving.
    Ready,
    /// Lost, waiting out its reconnect delay: takes no requests.
    Down,
}

/// Who is waiting for the next reply on the connection.
#[derive(Debug)]
enum Pending {
    /// A client's request, its size in bytes, and when it was queued (its request timeout
    /// runs from then).
    Client(Rc<ClientLink>, usize, Instant),
    /// A `SELECT`, `HELLO`, `READONLY` or `READWRITE` moat inserted to move the connection
    /// to the database, protocol or cluster mode of the next request.
    Internal,
    /// The `ASKING` moat sent right in front of a client's request (see
    /// `session::cluster`): `+OK` is dropped; an error becomes that request's reply.
    Asking,
    /// A client's request whose `ASKING` was refused: the client gets the refusal (the
    /// last field) as its reply, and Redis's own reply to the request is dropped.
    Refused(Rc<ClientLink>, usize, Instant, Box<[u8]>),
    /// A health-check `PING`.
    Ping,
    /// A client's request already answered with the timeout error: Redis's reply, when it
    /// comes, is dropped.
    TimedOut,
}

/// The line a client gets for a request that waited `request_timeout` without a reply.
pub(crate) const TIMED_OUT: &str =
    "ERR moat: backend timed out (no reply in time; the request was not retried)";

/// A connection that owes replies and has made no progress for this long is probably
/// behind a slow command (a busy script, `DEBUG SLEEP`, a big `KEYS`): a client with
/// nothing in flight is given another connection when there is one, so it is not queued
/// behind that command (with Redis answering others, it gets Redis's own answer, `-BUSY`
/// during a script, at once). Short, because replies flow every few microseconds on a
/// connection that is not stuck; the cost of a wrong guess is only a spread of clients.
const STUCK_AFTER: Duration = Duration::from_millis(100);

/// Evidence that Redis answered anyone: set whenever any backend connection of the worker
/// (shared or dedicated) reads a reply. A health check unanswered while this moves on is
/// proof that the one connection is dead, not that Redis is slow.
pub(crate) type Liveness = Cell<Instant>;

/// How a connection is looked after while it serves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Upkeep {
    pub(crate) max_depth: usize,
    pub(crate) request_timeout: Option<Duration>,
    /// This connection's lifetime (already jittered).
    pub(crate) lifetime: Option<Duration>,
    pub(crate) health_check: Option<Duration>,
}

/// Initial capacity of the read and write buffers; both grow under load and shrink back.
const BUF_SIZE: usize = 16 << 10;
/// Buffers larger than this are released once empty, so one burst does not pin memory.
const KEEP_BUF: usize = 256 << 10;
/// Entries of the queue of requests awaiting replies kept once it drains (40 bytes each).
const KEEP_PENDING: usize = 4096;

/// A shared connection, used by sessions of one worker.
#[derive(Debug)]
pub(crate) struct BackendConn {
    /// Index in the worker's pool, for logs.
    pub(crate) slot: usize,
    state: Cell<ConnState>,
    /// Requests not yet written, in the order their replies are expected.
    wbuf: RefCell<BytesMut>,
    pending: RefCell<VecDeque<Pending>>,
    /// The database the connection will be in once everything queued has run.
    db: Cell<u32>,
    /// Likewise for the protocol (RESP3 after `HELLO 3`).
    resp3: Cell<bool>,
    /// Likewise for Redis Cluster's READONLY mode.
    readonly: Cell<bool>,
    wake_writer: Notify,
    /// Set while a wake-up of the writer is pending, so a burst of requests from many
    /// sessions costs one wake-up.
    writer_woken: Cell<bool>,
    /// When the connection last made progress: a reply arrived, or work arrived while it
    /// owed nothing. A connection owing replies with no progress for a while is stuck
    /// behind a slow command (see [`STUCK_AFTER`]).
    progress: Cell<Instant>,
    /// Entries at the front of `pending` the watchdog has already passed (moat's own, or
    /// timed out), so it does not walk them again on every wake-up.
    checked: Cell<usize>,
    /// When the health-check `PING` now at the head of the queue was sent.
    ping_sent: Cell<Option<Instant>>,
    /// Past its lifetime: takes new work only when nothing else can, and is replaced at its
    /// first idle moment.
    retiring: Cell<bool>,
    /// The Redis user the connection is logged in as (passthrough mode); none: moat's own
    /// login. Fixed for a connection's life: a connection changes user only by reconnecting,
    /// never by an AUTH pipelined among requests (had that AUTH failed, the requests behind
    /// it would have run as the previous user).
    principal: RefCell<Option<Arc<Principal>>>,
    /// Taken over for another user: nothing more is written on the current connection, which
    /// is replaced by one logged in as the new user.
    rebinding: Cell<bool>,
    rebind: Notify,
    /// Asked to finish what it owes so another user can take it over: takes no new work.
    draining: Cell<bool>,
    /// The pool was made smaller and this connection is the excess: it takes no new work
    /// and closes for good at its first moment owing nothing.
    removed: Cell<bool>,
    /// Sessions waiting for a connection to become free, woken when this one owes nothing.
    idle_waiters: Rc<RefCell<Vec<Weak<ClientLink>>>>,
    /// The primary moved (Sentinel failover): takes no new work, gets what it owes within
    /// [`SWITCH_GRACE`], then reconnects to the new primary.
    moved: Cell<bool>,
    /// Signalled when Redis answered a client with `READONLY`: the server may have been
    /// demoted, which the Sentinel follower is asked to check.
    demoted: Notify,
}

/// How long a connection to a replaced primary waits for the replies it owes before those
/// still missing are answered with [`crate::sentinel::SWITCHED`]: a primary demoted by a
/// failover still answers what it received before; a dead one never will.
const SWITCH_GRACE: Duration = Duration::from_secs(1);

impl BackendConn {
    pub(crate) fn new(
        slot: usize,
        principal: Option<Arc<Principal>>,
        idle_waiters: Rc<RefCell<Vec<Weak<ClientLink>>>>,
    ) -> Self {
        Self {
            principal: RefCell::new(principal),
            rebinding: Cell::new(false),
            rebind: Notify::new(),
            draining: Cell::new(false),
            removed: Cell::new(false),
            idle_waiters,
            slot,
            state: Cell::new(ConnState::Connecting),
            wbuf: RefCell::new(BytesMut::new()),
            pending: RefCell::new(VecDeque::new()),
            db: Cell::new(0),
            resp3: Cell::new(false),
            readonly: Cell::new(false),
            wake_writer: Notify::new(),
            writer_woken: Cell::new(false),
            progress: Cell::new(Instant::now()),
            checked: Cell::new(0),
            ping_sent: Cell::new(None),
            retiring: Cell::new(false),
            moved: Cell::new(false),
            demoted: Notify::new(),
        }
    }

    pub(crate) fn state(&self) -> ConnState {
        self.state.get()
    }

    pub(crate) fn set_state(&self, state: ConnState) {
        self.state.set(state);
        if state == ConnState::Connecting {
            self.retiring.set(false);
            self.moved.set(false);
        }
    }

    /// Whether the connection goes to a replaced primary and takes no new work.
    pub(crate) fn moved(&self) -> bool {
        self.moved.get()
    }

    /// Whether the connection is past its lifetime, waiting to be replaced.
    pub(crate) fn retiring(&self) -> bool {
        self.retiring.get()
    }

    /// Whether the connection is logged in as `who` (none: moat's own login).
    pub(crate) fn serves(&self, who: Option<&Arc<Principal>>) -> bool {
        match (self.principal.borrow().as_ref(), who) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// The user the connection logs in as.
    pub(crate) fn principal(&self) -> Option<Arc<Principal>> {
        self.principal.borrow().clone()
    }

    /// Hands an idle connection to another user: it reconnects logged in as `who`, and
    /// requests queued meanwhile go out on the new connection only.
    pub(crate) fn rebind(&self, who: Option<Arc<Principal>>) {
        debug_assert!(self.pending.borrow().is_empty());
        *self.principal.borrow_mut() = who;
        self.draining.set(false);
        self.rebinding.set(true);
        self.state.set(ConnState::Connecting);
        // A fresh connection starts in database 0 and RESP2, not READONLY.
        self.db.set(0);
        self.resp3.set(false);
        self.readonly.set(false);
        self.rebind.notify_one();
    }

    /// Clears the take-over mark when the replacement connection is opened.
    pub(crate) fn take_rebinding(&self) -> bool {
        self.rebinding.replace(false)
    }

    /// Whether a take-over was asked for since the replacement connection started opening.
    pub(crate) fn rebinding(&self) -> bool {
        self.rebinding.get()
    }

    /// Whether the connection finishes its work for another user and takes no more.
    pub(crate) fn draining(&self) -> bool {
        self.draining.get()
    }

    /// Asks the connection to finish what it owes and take no new work.
    pub(crate) fn drain(&self) {
        self.draining.set(true);
    }

    /// Marks the connection as excess (a smaller pool): see `removed`.
    pub(crate) fn remove(&self) {
        self.removed.set(true);
        self.draining.set(true);
        self.rebind.notify_one();
    }

    /// Whether the connection is excess and closes once it owes nothing.
    pub(crate) fn removed(&self) -> bool {
        self.removed.get()
    }

    /// When the connection last made progress (the least recently used one is taken over).
    pub(crate) fn last_progress(&self) -> std::time::Instant {
        self.progress.get()
    }

    /// Replies the connection still owes.
    pub(crate) fn pending_len(&self) -> usize {
        self.pending.borrow().len()
    }

    /// Owes replies and has made no progress for [`STUCK_AFTER`] at `now`.
    pub(crate) fn stuck(&self, now: Instant) -> bool {
        !self.pending.borrow().is_empty()
            && now.saturating_duration_since(self.progress.get()) >= STUCK_AFTER
    }

    /// The database, protocol and READONLY mode requests queued now will run in.
    pub(crate) fn group(&self) -> (u32, bool, bool) {
        (self.db.get(), self.resp3.get(), self.readonly.get())
    }

    /// Queues a client's request to run in database `db` with protocol RESP3 or not, in
    /// Redis Cluster's READONLY mode or not, and right behind an `ASKING` when `asking`
    /// (in the same write: no other request can come between them). Its reply will be
    /// delivered to `link` after the replies to everything queued before it.
    pub(crate) fn enqueue(
        &self,
        link: &Rc<ClientLink>,
        request: &Request<'_>,
        db: u32,
        resp3: bool,
        readonly: bool,
        asking: bool,
    ) {
        let mut wbuf = self.wbuf.borrow_mut();
        let mut pending = self.pending.borrow_mut();
        let now = Instant::now();
        if pending.is_empty() {
            self.progress.set(now);
        }
        if self.db.get() != db {
            // Rare (a database switch on a shared connection), so a small allocation is fine.
            let index = db.to_string();
            encode::command(&mut wbuf, &[&b"SELECT"[..], index.as_bytes()]);
            pending.push_back(Pending::Internal);
            self.db.set(db);
        }
        if self.resp3.get() != resp3 {
            let proto: &[u8] = if resp3 { b"3" } else { b"2" };
            encode::command(&mut wbuf, &[&b"HELLO"[..], proto]);
            pending.push_back(Pending::Internal);
            self.resp3.set(resp3);
        }
        if self.readonly.get() != readonly {
            let mode: &[u8] = if readonly { b"READONLY" } else { b"READWRITE" };
            encode::command(&mut wbuf, &[mode]);
            pending.push_back(Pending::Internal);
            self.readonly.set(readonly);
        }
        if asking {
            // Last before the request: any command in between would consume the flag.
            encode::command(&mut wbuf, &[&b"ASKING"[..]]);
            pending.push_back(Pending::Asking);
        }
        let before = wbuf.len();
        request.write_resp(&mut wbuf);
        let bytes = wbuf.len() - before;
        pending.push_back(Pending::Client(link.clone(), bytes, now));
        link.request_queued(bytes);
        drop((wbuf, pending));
        if !self.writer_woken.replace(true) {
            self.wake_writer.notify_one();
        }
    }

    /// Answers every request still owed with `line` and forgets queued bytes: the connection
    /// is gone and a new one starts in database 0.
    pub(crate) fn fail_all(&self, line: &str) {
        let owed = std::mem::take(&mut *self.pending.borrow_mut());
        *self.wbuf.borrow_mut() = BytesMut::new();
        self.db.set(0);
        self.resp3.set(false);
        self.readonly.set(false);
        self.checked.set(0);
        self.ping_sent.set(None);
        for p in owed {
            if let Pending::Client(link, bytes, _) | Pending::Refused(link, bytes, _, _) = p {
                link.deliver_error(line, bytes);
            }
        }
        self.became_idle();
    }

    /// Serves the connection until it fails; returns why. `stats` counts requests
    /// answered with the timeout error and times replies; `liveness` is the worker's evidence that Redis
    /// answers (see [`Liveness`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn run(
        &self,
        stream: Stream,
        upkeep: &Upkeep,
        breaker: &RefCell<Breaker>,
        liveness: &Liveness,
        stats: &WorkerStats,
        connector: &crate::net::Connector,
        generation: u64,
    ) -> BackendError {
        tokio::select! {
            e = self.follow(connector, generation) => e,
            e = self.rebound() => e,
            e = self.write_loop(&stream) => e,
            e = self.read_loop(&stream, upkeep.max_depth, breaker, liveness, stats) => e,
            e = self.watchdog(upkeep.request_timeout, liveness, stats) => e,
            e = self.retire(upkeep.lifetime) => e,
            e = self.health_checks(upkeep.health_check) => e,
        }
    }

    /// Ends the connection when another user takes it over.
    async fn rebound(&self) -> BackendError {
        loop {
            if self.rebinding.get() || (self.removed.get() && self.pending.borrow().is_empty()) {
                return BackendError::Retired;
            }
            if self.removed.get() {
                // Excess: looked at again shortly, until what it owes is answered.
                tokio::time::sleep(Duration::from_millis(20)).await;
            } else {
                self.rebind.notified().await;
            }
        }
    }

    /// With a primary found through Sentinels: once it is replaced, takes no new work, waits
    /// up to [`SWITCH_GRACE`] for the replies owed, and ends so the slot reconnects to the
    /// new primary. A `READONLY` reply meanwhile asks the follower to check the primary.
    async fn follow(&self, connector: &crate::net::Connector, generation: u64) -> BackendError {
        let Some(primary) = connector.primary() else {
            return std::future::pending().await;
        };
        loop {
            tokio::select! {
                () = primary.moved_from(generation) => break,
                () = self.demoted.notified() => primary.doubt(),
            }
        }
        self.moved.set(true);
        let deadline = tokio::time::Instant::now() + SWITCH_GRACE;
        while !self.pending.borrow().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        BackendError::Moved
    }

    /// After `lifetime`, stops taking new work (when others can) and ends at the first
    /// moment the connection owes nothing, so it is replaced without failing a request.
    async fn retire(&self, lifetime: Option<Duration>) -> BackendError {
        let Some(lifetime) = lifetime else {
            return std::future::pending().await;
        };
        tokio::time::sleep(lifetime).await;
        self.retiring.set(true);
        loop {
            if self.pending.borrow().is_empty() {
                return BackendError::Retired;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends PING on a connection that owes nothing, every `interval`: a connection the
    /// network or the server dropped silently is found before a client's request is.
    async fn health_checks(&self, interval: Option<Duration>) -> BackendError {
        let Some(interval) = interval else {
            return std::future::pending().await;
        };
        loop {
            tokio::time::sleep(interval).await;
            if self.pending.borrow().is_empty() {
                let now = Instant::now();
                self.progress.set(now);
                self.ping_sent.set(Some(now));
                encode::command(&mut self.wbuf.borrow_mut(), &[&b"PING"[..]]);
                self.pending.borrow_mut().push_back(Pending::Ping);
                if !self.writer_woken.replace(true) {
                    self.wake_writer.notify_one();
                }
            }
        }
    }

    /// Bounds every client's wait, and finds connections that are dead rather than slow.
    ///
    /// A request that has waited `timeout` for its reply is answered with the timeout
    /// error; its place in the pipeline stays (a request cannot be withdrawn from it), and
    /// Redis's late reply is dropped when it comes. The connection itself stays open: Redis
    /// being slow (a long script, `DEBUG SLEEP`, a server stopped with SIGSTOP) is not the
    /// connection failing, and closing it would neither stop the slow command nor help
    /// anyone: the replacement would queue behind the same command, the reconnects would
    /// trip the breaker and clients would get "backend unavailable" long after Redis is
    /// back. Redis answers again where it left off, without a reconnect.
    ///
    /// A connection is ended as dead only on proof: a health-check `PING` sent while it
    /// owed nothing (Redis answers one at once, even mid-script, with `-BUSY`) is still
    /// unanswered after `timeout` while some other connection of the worker got a reply
    /// since (`liveness`). When nothing anywhere answers, Redis itself is stopped or
    /// sleeping, and the connection is kept for when it wakes. Network failures show as
    /// read and write errors.
    async fn watchdog(
        &self,
        timeout: Option<Duration>,
        liveness: &Liveness,
        stats: &WorkerStats,
    ) -> BackendError {
        let Some(timeout) = timeout else {
            return std::future::pending().await;
        };
        loop {
            let now = Instant::now();
            if let Some(sent) = self.ping_sent.get()
                && now.saturating_duration_since(sent) >= timeout
                && liveness.get() > sent
            {
                return BackendError::Stalled(timeout);
            }
            let (expired, next) = self.expire(now, timeout);
            if expired > 0 {
                stats.backend_timeouts.add(expired);
            }
            // With nothing to time out, a full timeout from now is early enough for any
            // request queued meanwhile (its own deadline is later).
            let mut wake = next.unwrap_or(now + timeout);
            if let Some(sent) = self.ping_sent.get() {
                let due = sent + timeout;
                // Overdue but Redis silent everywhere: look again later, not in a spin.
                wake = wake.min(if due > now { due } else { now + timeout });
            }
            tokio::time::sleep_until(tokio::time::Instant::from_std(wake)).await;
        }
    }

    /// Answers, with the timeout error, every client request queued `timeout` or more
    /// before `now`; returns how many, and when the next one is due.
    fn expire(&self, now: Instant, timeout: Duration) -> (u64, Option<Instant>) {
        let mut pending = self.pending.borrow_mut();
        let mut expired = 0;
        let mut i = self.checked.get();
        let mut next = None;
        while let Some(entry) = pending.get_mut(i) {
            if let Pending::Client(_, _, queued) | Pending::Refused(_, _, queued, _) = entry {
                let due = *queued + timeout;
                if due > now {
                    // Queued in order: every later request is due later still.
                    next = Some(due);
                    break;
                }
                if let Pending::Client(link, bytes, _) | Pending::Refused(link, bytes, _, _) =
                    std::mem::replace(entry, Pending::TimedOut)
                {
                    link.deliver_error(TIMED_OUT, bytes);
                    expired += 1;
                }
            }
            i += 1;
        }
        self.checked.set(i);
        (expired, next)
    }

    /// Writes whatever sessions queued, in one write per wake-up: requests of every client
    /// that ran since the last write go out together, which is what saves Redis work.
    async fn write_loop(&self, stream: &Stream) -> BackendError {
        let mut spare = BytesMut::with_capacity(BUF_SIZE);
        loop {
            // Cleared before waiting and before taking the buffer, so any request queued
            // after this point wakes the writer again.
            self.writer_woken.set(false);
            // Requests queued for the user taking the connection over never go out on it.
            if self.wbuf.borrow().is_empty() || self.rebinding.get() {
                self.wake_writer.notified().await;
                continue;
            }
            std::mem::swap(&mut *self.wbuf.borrow_mut(), &mut spare);
            if let Err(e) = stream.write_all(&spare).await {
                return e.into();
            }
            spare.clear();
            if spare.capacity() > KEEP_BUF {
                spare = BytesMut::with_capacity(BUF_SIZE);
            }
        }
    }

    async fn read_loop(
        &self,
        stream: &Stream,
        max_depth: usize,
        breaker: &RefCell<Breaker>,
        liveness: &Liveness,
        stats: &WorkerStats,
    ) -> BackendError {
        let mut buf = BytesMut::with_capacity(BUF_SIZE);
        let mut framer = ReplyFramer::new(max_depth);
        loop {
            if buf.is_empty() && buf.capacity() > KEEP_BUF {
                buf = BytesMut::with_capacity(BUF_SIZE);
            }
            if buf.capacity() - buf.len() < BUF_SIZE / 4 {
                buf.reserve(BUF_SIZE);
            }
            if let Err(e) = stream.readable().await {
                return e.into();
            }
            let room = buf.capacity() - buf.len();
            match stream.try_read_buf(&mut buf) {
                Ok(0) => return BackendError::Closed,
                Ok(n) => stream.after_read(n, room),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return e.into(),
            }
            // One clock read per read: it times every reply the read brought, and marks
            // the connection's progress.
            let now = Instant::now();
            let mut pos = 0;
            loop {
                let frame = match framer.next_frame(&buf[pos..]) {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(e) => return e.into(),
                };
                let reply = &buf[pos..pos + frame.len];
                pos += frame.len;
                if let Err(e) = self.route(reply, frame.kind, now, stats) {
                    return e;
                }
            }
            if pos > 0 {
                self.progress.set(now);
                liveness.set(now);
                // The first reply after a health check is its answer (it was sent with
                // nothing owed): the connection is alive.
                self.ping_sent.set(None);
                // Replies flowing is what tells a half-open breaker the backend is back.
                breaker.borrow_mut().success(now);
            }
            buf.advance(pos);
        }
    }

    /// Owes nothing any more: it may be taken over, so waiting sessions look again.
    fn became_idle(&self) {
        self.draining.set(false);
        if self.idle_waiters.borrow().is_empty() {
            return;
        }
        let waiters = std::mem::take(&mut *self.idle_waiters.borrow_mut());
        for link in waiters.iter().filter_map(Weak::upgrade) {
            link.wake();
        }
    }

    /// Hands one reply to whoever waits for it.
    fn route(
        &self,
        reply: &[u8],
        kind: FrameKind,
        now: Instant,
        stats: &WorkerStats,
    ) -> Result<(), BackendError> {
        if kind == FrameKind::Push {
            // Out-of-band data answers no request. Nothing moat forwards on a shared
            // connection subscribes or tracks, so it has no owner either: drop it rather
            // than let it shift every later reply onto the wrong client.
            tracing::debug!(
                slot = self.slot,
                "dropping a push frame on a shared connection"
            );
            return Ok(());
        }
        let (next, idle) = {
            let mut pending = self.pending.borrow_mut();
            let next = pending.pop_front();
            if matches!(next, Some(Pending::Asking)) && kind == FrameKind::Error {
                // ASKING refused: that is the answer to the request sent behind it (which
                // ran without the flag, so its own reply is not what the client asked for).
                if let Some(entry) = pending.front_mut()
                    && let Pending::Client(..) = entry
                    && let Pending::Client(link, bytes, queued) =
                        std::mem::replace(entry, Pending::TimedOut)
                {
                    *entry = Pending::Refused(link, bytes, queued, reply.into());
                }
            }
            let idle = pending.is_empty();
            // A burst of pipelines (thousands of clients × 100 requests) grows the queue to
            // hundreds of thousands of entries; it gives that memory back once drained.
            if idle && pending.capacity() > KEEP_PENDING {
                *pending = VecDeque::new();
            }
            (next, idle)
        };
        self.checked.set(self.checked.get().saturating_sub(1));
        if idle {
            self.became_idle();
        }
        match next {
            Some(Pending::Client(link, bytes, queued)) => {
                if kind == FrameKind::Error && reply.starts_with(b"-READONLY") {
                    self.demoted.notify_one();
                }
                stats
                    .backend_latency
                    .observe(now.saturating_duration_since(queued));
                link.deliver(reply, bytes);
                Ok(())
            }
            Some(Pending::Refused(link, bytes, queued, refusal)) => {
                stats
                    .backend_latency
                    .observe(now.saturating_duration_since(queued));
                link.deliver(&refusal, bytes);
                Ok(())
            }
            // Moat's own ASKING: `+OK` is no one's (an error was handed on above).
            Some(Pending::Asking) => Ok(()),
            // Answered with the timeout error already; a reply that is an error is dropped
            // too: a late `-BUSY` or failure is no one's now.
            Some(Pending::TimedOut) => Ok(()),
            // A connection that never sent AUTH while the default user needs a password
            // answers moat's own PING or SELECT with NOAUTH: alive, and its clients get the
            // same answer to their own requests.
            Some(Pending::Internal | Pending::Ping)
                if kind == FrameKind::Error && reply.starts_with(b"-NOAUTH") =>
            {
                Ok(())
            }
            // Redis in a busy script answers PING with `-BUSY`: alive, which is all a
            // health check asks.
            Some(Pending::Ping) if kind == FrameKind::Error && !reply.starts_with(b"-BUSY") => {
                Err(BackendError::Protocol(format!(
                    "health check refused: {}",
                    String::from_utf8_lossy(reply).trim_end()
                )))
            }
            Some(Pending::Ping) => Ok(()),
            // The connection is not in the database or protocol the requests queued behind
            // were sent for: their replies cannot be trusted, so the connection ends.
            Some(Pending::Internal) if kind == FrameKind::Error => {
                let line = String::from_utf8_lossy(reply).trim_end().to_string();
                if let Some(busy) = line.strip_prefix('-').filter(|l| l.starts_with("BUSY")) {
                    Err(BackendError::Busy(busy.to_string()))
                } else {
                    Err(BackendError::Protocol(format!(
                        "SELECT/HELLO refused: {line}"
                    )))
                }
            }
            Some(Pending::Internal) => Ok(()),
            // A reply nobody asked for means the stream is out of step: trusting any later
            // reply could hand it to the wrong client.
            None => Err(BackendError::Protocol(
                "unexpected reply from backend".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moat_protocol::{Limits, RequestParser};

    fn stats() -> WorkerStats {
        WorkerStats::default()
    }

    fn ping() -> Vec<u8> {
        b"*1\r\n$4\r\nPING\r\n".to_vec()
    }

    /// Queues one PING for `link` on `conn`.
    fn enqueue(conn: &BackendConn, link: &Rc<ClientLink>) {
        let bytes = ping();
        let mut parser = RequestParser::new(Limits::default());
        let request = parser.parse(&bytes).unwrap().unwrap();
        conn.enqueue(link, &request, 0, false, false, false);
    }

    #[test]
    fn a_timed_out_request_keeps_its_place_and_its_late_reply_reaches_no_one() {
        let stats = stats();
        let conn = BackendConn::new(0, None, Rc::default());
        let (a, b) = (
            Rc::new(ClientLink::default()),
            Rc::new(ClientLink::default()),
        );
        enqueue(&conn, &a);
        let timeout = Duration::from_secs(1);
        let later = Instant::now() + timeout;
        // Queued after A's deadline is computed: B's own deadline is later.
        let (expired, next) = conn.expire(later, timeout);
        assert_eq!(expired, 1);
        assert!(next.is_none());
        assert_eq!(&a.out()[..], format!("-{TIMED_OUT}\r\n").as_bytes());
        assert_eq!(a.inflight(), 0);
        enqueue(&conn, &b);
        assert_eq!(conn.pending_len(), 2, "A's place stays in the pipeline");
        let (expired, next) = conn.expire(later, timeout);
        assert_eq!(expired, 0, "B has not waited its timeout yet");
        assert!(next.is_some_and(|n| n > later - Duration::from_millis(1)));
        // Redis answers A late, then B: A's reply is dropped, B gets its own.
        conn.route(b"+LATE\r\n", FrameKind::Simple, Instant::now(), &stats)
            .unwrap();
        conn.route(b"+PONG\r\n", FrameKind::Simple, Instant::now(), &stats)
            .unwrap();
        assert_eq!(&a.out()[..], format!("-{TIMED_OUT}\r\n").as_bytes());
        assert_eq!(&b.out()[..], b"+PONG\r\n");
        assert_eq!(conn.pending_len(), 0);
    }

    /// Queues `args` for `link`, behind an ASKING of moat's when `asking`.
    fn enqueue_args(conn: &BackendConn, link: &Rc<ClientLink>, args: &[&[u8]], asking: bool) {
        let mut bytes = BytesMut::new();
        encode::command(&mut bytes, args);
        let mut parser = RequestParser::new(Limits::default());
        let request = parser.parse(&bytes).unwrap().unwrap();
        conn.enqueue(link, &request, 0, false, false, asking);
    }

    #[test]
    fn asking_goes_out_right_before_its_request_and_its_ok_reaches_no_one() {
        let stats = stats();
        let conn = BackendConn::new(0, None, Rc::default());
        let (a, b) = (
            Rc::new(ClientLink::default()),
            Rc::new(ClientLink::default()),
        );
        enqueue_args(&conn, &b, &[b"GET", b"k"], false);
        enqueue_args(&conn, &a, &[b"GET", b"k"], true);
        enqueue_args(&conn, &b, &[b"GET", b"k"], false);
        let wire = conn.wbuf.borrow().clone();
        let get = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
        let asking = b"*1\r\n$6\r\nASKING\r\n";
        let want: Vec<u8> = [&get[..], asking, get, get].concat();
        assert_eq!(&wire[..], &want[..], "ASKING immediately before A's GET");
        assert_eq!(conn.pending_len(), 4);
        for reply in [
            &b"-MOVED 1 x:1\r\n"[..],
            b"+OK\r\n",
            b"$1\r\nv\r\n",
            b"-MOVED 1 x:1\r\n",
        ] {
            let kind = if reply[0] == b'-' {
                FrameKind::Error
            } else {
                FrameKind::Simple
            };
            conn.route(reply, kind, Instant::now(), &stats).unwrap();
        }
        assert_eq!(&a.out()[..], b"$1\r\nv\r\n");
        assert_eq!(&b.out()[..], b"-MOVED 1 x:1\r\n-MOVED 1 x:1\r\n");
        assert_eq!((a.inflight(), b.inflight(), conn.pending_len()), (0, 0, 0));
    }

    #[test]
    fn a_refused_asking_is_the_reply_to_its_request() {
        let stats = stats();
        let conn = BackendConn::new(0, None, Rc::default());
        let a = Rc::new(ClientLink::default());
        enqueue_args(&conn, &a, &[b"GET", b"k"], true);
        enqueue_args(&conn, &a, &[b"GET", b"k"], false);
        let noperm = b"-NOPERM no ASKING for you\r\n";
        conn.route(noperm, FrameKind::Error, Instant::now(), &stats)
            .unwrap();
        conn.route(
            b"-MOVED 1 x:1\r\n",
            FrameKind::Error,
            Instant::now(),
            &stats,
        )
        .unwrap();
        conn.route(b"$1\r\nv\r\n", FrameKind::Bulk, Instant::now(), &stats)
            .unwrap();
        assert_eq!(&a.out()[..], &[&noperm[..], b"$1\r\nv\r\n"].concat()[..]);
        assert_eq!(a.inflight(), 0);
        // A refused request still times out and fails like any other.
        enqueue_args(&conn, &a, &[b"GET", b"k"], true);
        conn.route(noperm, FrameKind::Error, Instant::now(), &stats)
            .unwrap();
        conn.fail_all("ERR moat: gone");
        assert_eq!(a.inflight(), 0);
        assert!(a.out().ends_with(b"-ERR moat: gone\r\n"));
    }

    #[test]
    fn stuck_means_owing_replies_without_progress() {
        let stats = stats();
        let conn = BackendConn::new(0, None, Rc::default());
        let now = Instant::now();
        assert!(!conn.stuck(now + STUCK_AFTER), "owes nothing");
        enqueue(&conn, &Rc::new(ClientLink::default()));
        assert!(!conn.stuck(Instant::now()));
        assert!(conn.stuck(Instant::now() + STUCK_AFTER));
        conn.route(b"+PONG\r\n", FrameKind::Simple, Instant::now(), &stats)
            .unwrap();
        assert!(!conn.stuck(Instant::now() + STUCK_AFTER));
    }

    #[test]
    fn a_busy_reply_to_a_health_check_is_an_answer() {
        let stats = stats();
        let conn = BackendConn::new(0, None, Rc::default());
        conn.pending.borrow_mut().push_back(Pending::Ping);
        let busy = b"-BUSY Redis is busy running a script.\r\n";
        assert!(
            conn.route(busy, FrameKind::Error, Instant::now(), &stats)
                .is_ok()
        );
        conn.pending.borrow_mut().push_back(Pending::Internal);
        assert!(matches!(
            conn.route(busy, FrameKind::Error, Instant::now(), &stats),
            Err(BackendError::Busy(_))
        ));
    }
}
