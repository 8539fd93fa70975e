//! One shared backend connection: requests from many sessions are appended to one write
//! buffer, and replies are matched to them in FIFO order.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use moat_protocol::{FrameKind, ReplyFramer, Request, encode};
use tokio::sync::Notify;

use super::BackendError;
use super::breaker::Breaker;
use crate::auth::Principal;
use crate::link::ClientLink;
use crate::net::Stream;

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
    /// A client's request, and its size in bytes.
    Client(Rc<ClientLink>, usize),
    /// A `SELECT` or `HELLO` moat inserted to move the connection to the database or
    /// protocol of the next request.
    Internal,
}

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
    wake_writer: Notify,
    /// Set while a wake-up of the writer is pending, so a burst of requests from many
    /// sessions costs one wake-up.
    writer_woken: Cell<bool>,
    /// When the connection last made progress: a reply arrived, or work arrived while it
    /// owed nothing. A connection owing replies with no progress for the request timeout is
    /// stalled (a paused or overloaded server).
    progress: Cell<std::time::Instant>,
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
    /// Sessions waiting for a connection to become free, woken when this one owes nothing.
    idle_waiters: Rc<RefCell<Vec<Weak<ClientLink>>>>,
}

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
            idle_waiters,
            slot,
            state: Cell::new(ConnState::Connecting),
            wbuf: RefCell::new(BytesMut::new()),
            pending: RefCell::new(VecDeque::new()),
            db: Cell::new(0),
            resp3: Cell::new(false),
            wake_writer: Notify::new(),
            writer_woken: Cell::new(false),
            progress: Cell::new(std::time::Instant::now()),
            retiring: Cell::new(false),
        }
    }

    pub(crate) fn state(&self) -> ConnState {
        self.state.get()
    }

    pub(crate) fn set_state(&self, state: ConnState) {
        self.state.set(state);
        if state == ConnState::Connecting {
            self.retiring.set(false);
        }
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
        // A fresh connection starts in database 0 and RESP2.
        self.db.set(0);
        self.resp3.set(false);
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

    /// When the connection last made progress (the least recently used one is taken over).
    pub(crate) fn last_progress(&self) -> std::time::Instant {
        self.progress.get()
    }

    /// Replies the connection still owes.
    pub(crate) fn pending_len(&self) -> usize {
        self.pending.borrow().len()
    }

    /// The database and protocol requests queued now will run in.
    pub(crate) fn group(&self) -> (u32, bool) {
        (self.db.get(), self.resp3.get())
    }

    /// Queues a client's request to run in database `db` with protocol RESP3 or not; its
    /// reply will be delivered to `link` after the replies to everything queued before it.
    pub(crate) fn enqueue(
        &self,
        link: &Rc<ClientLink>,
        request: &Request<'_>,
        db: u32,
        resp3: bool,
    ) {
        let mut wbuf = self.wbuf.borrow_mut();
        let mut pending = self.pending.borrow_mut();
        if pending.is_empty() {
            self.progress.set(std::time::Instant::now());
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
        let before = wbuf.len();
        request.write_resp(&mut wbuf);
        let bytes = wbuf.len() - before;
        pending.push_back(Pending::Client(link.clone(), bytes));
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
        for p in owed {
            if let Pending::Client(link, bytes) = p {
                link.deliver_error(line, bytes);
            }
        }
        self.became_idle();
    }

    /// Serves the connection until it fails; returns why.
    pub(crate) async fn run(
        &self,
        stream: Stream,
        upkeep: &Upkeep,
        breaker: &RefCell<Breaker>,
    ) -> BackendError {
        tokio::select! {
            e = self.rebound() => e,
            e = self.write_loop(&stream) => e,
            e = self.read_loop(&stream, upkeep.max_depth, breaker) => e,
            e = self.watchdog(upkeep.request_timeout) => e,
            e = self.retire(upkeep.lifetime) => e,
            e = self.health_checks(upkeep.health_check) => e,
        }
    }

    /// Ends the connection when another user takes it over.
    async fn rebound(&self) -> BackendError {
        loop {
            if self.rebinding.get() {
                return BackendError::Retired;
            }
            self.rebind.notified().await;
        }
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
                self.progress.set(std::time::Instant::now());
                encode::command(&mut self.wbuf.borrow_mut(), &[&b"PING"[..]]);
                self.pending.borrow_mut().push_back(Pending::Internal);
                if !self.writer_woken.replace(true) {
                    self.wake_writer.notify_one();
                }
            }
        }
    }

    /// Ends a connection that owes replies and has made no progress for `timeout`. Its
    /// requests cannot be withdrawn from the pipeline, so the connection is closed and
    /// everything it owed is answered with an error; nothing is re-sent.
    async fn watchdog(&self, timeout: Option<Duration>) -> BackendError {
        let Some(timeout) = timeout else {
            return std::future::pending().await;
        };
        loop {
            let due = self.progress.get() + timeout;
            tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
            let stalled =
                !self.pending.borrow().is_empty() && self.progress.get().elapsed() >= timeout;
            if stalled {
                return BackendError::Stalled(timeout);
            }
            if self.pending.borrow().is_empty() {
                // Nothing owed: check again a full timeout after the next progress.
                self.progress.set(std::time::Instant::now());
            }
        }
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
            let mut pos = 0;
            loop {
                let frame = match framer.next_frame(&buf[pos..]) {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(e) => return e.into(),
                };
                let reply = &buf[pos..pos + frame.len];
                pos += frame.len;
                if let Err(e) = self.route(reply, frame.kind) {
                    return e;
                }
            }
            if pos > 0 {
                let now = std::time::Instant::now();
                self.progress.set(now);
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
            link.nudge();
        }
    }

    /// Hands one reply to whoever waits for it.
    fn route(&self, reply: &[u8], kind: FrameKind) -> Result<(), BackendError> {
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
            (next, pending.is_empty())
        };
        if idle {
            self.became_idle();
        }
        match next {
            Some(Pending::Client(link, bytes)) => {
                link.deliver(reply, bytes);
                Ok(())
            }
            // A connection that never sent AUTH while the default user needs a password
            // answers moat's own PING or SELECT with NOAUTH: its clients get the same.
            Some(Pending::Internal)
                if kind == FrameKind::Error && reply.starts_with(b"-NOAUTH") =>
            {
                Ok(())
            }
            Some(Pending::Internal) if kind == FrameKind::Error => {
                Err(BackendError::Protocol(format!(
                    "SELECT/HELLO refused: {}",
                    String::from_utf8_lossy(reply).trim_end()
                )))
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
