//! A session's dedicated connection while it holds a lease: requests go to it in order,
//! every frame read from it belongs to this client alone, and the state follower decides
//! when the lease ends.

use std::io;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use moat_protocol::{ReplyFramer, Request, encode};

use super::{ClientState, Core, Step};
use crate::command::lowercase;
use crate::link::ClientLink;
use crate::pinned::{Disposition, LeaseTicket, PinState, PinnedConn, SubKind, Tag};

const BUF_SIZE: usize = 16 << 10;

/// What the session tells the follower a forwarded request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PinTag {
    Reply(Tag),
    Sub(SubKind, bool, usize),
}

impl PinTag {
    /// Whether Redis would queue this inside MULTI in a way moat could not follow
    /// (subscriptions, MONITOR, tracking): moat refuses those inside a transaction.
    fn unfollowable_in_multi(self) -> bool {
        matches!(
            self,
            PinTag::Sub(..) | PinTag::Reply(Tag::Monitor | Tag::TrackingOn | Tag::TrackingOff)
        )
    }
}

/// The tag of a request by its command name.
pub(super) fn tag_of(request: &Request<'_>) -> PinTag {
    let mut buf = [0u8; 64];
    let name = lowercase(request.arg(0).unwrap_or_default(), &mut buf).unwrap_or_default();
    let names = request.argc().saturating_sub(1);
    let sub = |kind, unsubscribe| PinTag::Sub(kind, unsubscribe, names);
    match name {
        b"multi" => PinTag::Reply(Tag::Multi),
        b"shutdown" => PinTag::Reply(Tag::Shutdown),
        b"script" | b"function"
            if request
                .arg(1)
                .is_some_and(|s| s.eq_ignore_ascii_case(b"KILL")) =>
        {
            PinTag::Reply(Tag::Control)
        }
        b"exec" => PinTag::Reply(Tag::Exec),
        b"discard" => PinTag::Reply(Tag::Discard),
        b"watch" => PinTag::Reply(Tag::Watch),
        b"unwatch" => PinTag::Reply(Tag::Unwatch),
        b"monitor" => PinTag::Reply(Tag::Monitor),
        b"subscribe" => sub(SubKind::Channel, false),
        b"unsubscribe" => sub(SubKind::Channel, true),
        b"psubscribe" => sub(SubKind::Pattern, false),
        b"punsubscribe" => sub(SubKind::Pattern, true),
        b"ssubscribe" => sub(SubKind::Shard, false),
        b"sunsubscribe" => sub(SubKind::Shard, true),
        b"client"
            if request
                .arg(1)
                .is_some_and(|s| s.eq_ignore_ascii_case(b"TRACKING")) =>
        {
            if request
                .arg(2)
                .is_some_and(|s| s.eq_ignore_ascii_case(b"ON"))
            {
                PinTag::Reply(Tag::TrackingOn)
            } else {
                PinTag::Reply(Tag::TrackingOff)
            }
        }
        _ => PinTag::Reply(Tag::Other),
    }
}

/// Refuses a command moat cannot follow inside MULTI, once earlier replies are out, and
/// marks the transaction failed so its EXEC returns EXECABORT, as Redis does.
fn refuse_in_multi(pin: &mut Pin, link: &ClientLink, request: &Request<'_>, settled: bool) -> Step {
    if !settled {
        return Step::Blocked;
    }
    pin.state.mark_dirty();
    let name = String::from_utf8_lossy(request.arg(0).unwrap_or_default()).to_ascii_uppercase();
    encode::error(
        &mut link.out(),
        format!("ERR moat: {name} inside MULTI is not supported"),
    );
    Step::Done
}

/// A leased dedicated connection in use by one session.
#[derive(Debug)]
pub(crate) struct Pin {
    conn: PinnedConn,
    _ticket: LeaseTicket,
    pub(super) state: PinState,
    wbuf: BytesMut,
    rbuf: BytesMut,
    framer: ReplyFramer,
    /// Bytes of frames that answer no request (messages, pushes, monitor lines) delivered
    /// since the client's output was last empty, at most what is still unread: what a slow
    /// subscriber is disconnected for, as opposed to replies it asked for.
    unsolicited: usize,
    /// The client signed in as another user during the lease, and the connection with it:
    /// it may go back to the pool only through RESET, which logs it in as its own user again.
    relogged: bool,
    /// Counts this lease among the monitors while it lasts.
    monitoring: Option<MonitorGauge>,
    /// Commands sent since MULTI (CLIENT LIST's `multi=`), and whether one writes or may
    /// replicate (then CLIENT PAUSE WRITE holds the EXEC, as Redis does).
    queued: u32,
    queued_writes: bool,
    /// The moat id the client's CLIENT TRACKING ON redirects to (CLIENT GETREDIR).
    pub(super) redirect: Option<u64>,
}

/// One client in MONITOR mode, counted in [`crate::Metrics::monitors`] until its lease ends.
#[derive(Debug)]
struct MonitorGauge(std::sync::Arc<crate::Metrics>);

impl MonitorGauge {
    fn new(metrics: &std::sync::Arc<crate::Metrics>) -> Self {
        metrics
            .monitors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(metrics.clone())
    }
}

impl Drop for MonitorGauge {
    fn drop(&mut self) {
        self.0
            .monitors
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The dedicated connection is gone or out of step.
#[derive(Debug)]
pub(super) struct PinLost(pub(super) String);

impl Pin {
    pub(super) fn new(conn: PinnedConn, ticket: LeaseTicket, max_depth: usize) -> Self {
        let resp3 = conn.resp3;
        Self {
            conn,
            _ticket: ticket,
            state: PinState::new(resp3),
            wbuf: BytesMut::new(),
            rbuf: BytesMut::new(),
            framer: ReplyFramer::new(max_depth),
            unsolicited: 0,
            relogged: false,
            monitoring: None,
            queued: 0,
            queued_writes: false,
            redirect: None,
        }
    }

    /// Counts a request sent on the connection for the transaction's bookkeeping: MULTI
    /// starts it over, a command sent inside MULTI is queued there.
    pub(super) fn note_sent(&mut self, is_multi: bool, writes: bool) {
        if is_multi {
            self.queued = 0;
            self.queued_writes = false;
        } else if self.state.multi_open() {
            self.queued = self.queued.saturating_add(1);
            self.queued_writes |= writes;
        }
    }

    /// The open transaction queued a command that writes or may replicate.
    pub(super) fn queued_writes(&self) -> bool {
        self.state.multi_open() && self.queued_writes
    }

    /// Redis's client id of the connection, when the server has CLIENT ID.
    pub(super) fn redis_id(&self) -> Option<u64> {
        self.conn.redis_id
    }

    /// What CLIENT LIST shows of this connection.
    pub(super) fn summary(&self) -> crate::clients::PinSummary {
        let [channels, patterns, shards] = self
            .state
            .subscription_counts()
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX));
        crate::clients::PinSummary {
            channels,
            patterns,
            shards,
            multi: self.state.multi_open().then_some(self.queued),
            blocked: self.state.blocking_outstanding(),
            tracking: self.state.tracking(),
            monitor: self.state.monitor(),
            redis_id: self.conn.redis_id,
            redirect: self.redirect,
        }
    }

    /// Logs the connection in as the user the client has just signed in as (passthrough
    /// mode; Redis accepted the credential), so what the client sends next on it runs as
    /// that user, as on Redis. The `+OK` is moat's: the client already got its reply.
    pub(super) fn relogin(&mut self, user: &[u8], password: &[u8]) {
        encode::command(&mut self.wbuf, &[&b"AUTH"[..], user, password]);
        self.state.expect_swallow();
        self.relogged = true;
    }

    /// Queues a client request, first moving the connection to the session's database,
    /// protocol and READONLY mode when they differ, and sending the session's ASKING right
    /// in front of it (see `session::cluster`).
    pub(super) fn forward(&mut self, request: &Request<'_>, st: &ClientState, tag: PinTag) {
        let (db, resp3) = (st.db, st.resp3);
        if self.conn.db != db {
            let index = db.to_string();
            encode::command(&mut self.wbuf, &[&b"SELECT"[..], index.as_bytes()]);
            self.state.expect_swallow();
            self.conn.db = db;
        }
        if self.conn.resp3 != resp3 {
            let proto: &[u8] = if resp3 { b"3" } else { b"2" };
            encode::command(&mut self.wbuf, &[&b"HELLO"[..], proto]);
            self.state.expect_hello(resp3);
            self.conn.resp3 = resp3;
        }
        if self.conn.readonly != st.readonly {
            let mode: &[u8] = if st.readonly {
                b"READONLY"
            } else {
                b"READWRITE"
            };
            encode::command(&mut self.wbuf, &[mode]);
            self.state.expect_swallow();
            self.conn.readonly = st.readonly;
        }
        if st.asking {
            // Swallowed: the client had its `+OK` from the session. Refused (an ACL without
            // ASKING), it ends the lease with a clear error rather than run the request
            // without the flag.
            encode::command(&mut self.wbuf, &[&b"ASKING"[..]]);
            self.state.expect_swallow();
        }
        match tag {
            PinTag::Reply(Tag::Exec) if self.state.multi_dirty() => {
                encode::command(&mut self.wbuf, &[&b"DISCARD"[..]]);
                self.state.expect(Tag::ExecAsDiscard);
                return;
            }
            PinTag::Reply(tag) => self.state.expect(tag),
            PinTag::Sub(kind, unsubscribe, names) => {
                self.state.expect_sub(kind, unsubscribe, names)
            }
        }
        request.write_resp(&mut self.wbuf);
    }

    /// Ends the open transaction (DISCARD) or, outside one, drops the watched keys
    /// (UNWATCH), with moat's own command whose reply the client never sees.
    pub(super) fn abort_transaction(&mut self) {
        let command: &[u8] = if self.state.multi_open() {
            b"DISCARD"
        } else if self.state.watching() {
            b"UNWATCH"
        } else {
            return;
        };
        encode::command(&mut self.wbuf, &[command]);
        self.state.expect(Tag::Abort);
    }

    /// Writes queued requests as far as the socket takes them.
    pub(super) fn flush(&mut self) -> io::Result<()> {
        while !self.wbuf.is_empty() {
            match self.conn.stream.try_write(&self.wbuf) {
                Ok(n) => self.wbuf.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Unread output that answers no request (see the field).
    pub(super) fn unsolicited(&self) -> usize {
        self.unsolicited
    }

    /// The client's output is down to `unread` bytes: no more of it can be unsolicited.
    pub(super) fn output_left(&mut self, unread: usize) {
        self.unsolicited = self.unsolicited.min(unread);
    }

    pub(super) fn has_unwritten(&self) -> bool {
        !self.wbuf.is_empty()
    }

    /// Request bytes queued and not yet written to the connection.
    pub(super) fn unwritten(&self) -> usize {
        self.wbuf.len()
    }

    pub(super) fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.conn.stream.poll_read_ready(cx)
    }

    pub(super) fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.conn.stream.poll_write_ready(cx)
    }

    /// Reads what the connection sent and hands the client its frames; true when
    /// anything arrived.
    pub(super) fn read(&mut self, link: &ClientLink) -> Result<bool, PinLost> {
        if self.rbuf.capacity() - self.rbuf.len() < BUF_SIZE / 4 {
            self.rbuf.reserve(BUF_SIZE);
        }
        let room = self.rbuf.capacity() - self.rbuf.len();
        match self.conn.stream.try_read_buf(&mut self.rbuf) {
            Ok(0) => return Err(PinLost("backend closed the connection".into())),
            Ok(n) => self.conn.stream.after_read(n, room),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(PinLost(e.to_string())),
        }
        let mut pos = 0;
        let mut out = link.out();
        loop {
            let frame = match self.framer.next_frame(&self.rbuf[pos..]) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => return Err(PinLost(e.to_string())),
            };
            let bytes = &self.rbuf[pos..pos + frame.len];
            pos += frame.len;
            match self.state.on_frame(bytes, frame.kind) {
                Ok(Disposition::Deliver) => out.extend_from_slice(bytes),
                Ok(Disposition::Unsolicited) => {
                    out.extend_from_slice(bytes);
                    self.unsolicited += bytes.len();
                }
                Ok(Disposition::Replace(with)) => out.extend_from_slice(with),
                Ok(Disposition::Swallow) => {}
                Err(e) => return Err(PinLost(e.to_string())),
            }
        }
        drop(out);
        self.rbuf.advance(pos);
        if self.rbuf.is_empty() && self.rbuf.capacity() > 4 * BUF_SIZE {
            self.rbuf = BytesMut::new();
        }
        Ok(true)
    }

    /// Ends the lease: the connection goes back to the pool (RESET first when the server
    /// has it) if nothing is owed, else it is closed.
    pub(super) fn end(self, core: &Core) {
        if core.link.card.unblock_sent() {
            // A CLIENT UNBLOCK aimed at this connection may still be on its way to Redis;
            // on another lease it could end another client's call. Closed instead.
            core.link.card.set_unblock_sent(false);
            return;
        }
        if core.link.card.redirect_target() {
            // Another client's invalidations are sent to this connection while it lives.
            core.link.card.set_redirect_target(false);
            return;
        }
        let pool = &core.worker.pinned;
        if self.state.outstanding() == 0 && self.wbuf.is_empty() && self.rbuf.is_empty() {
            let reset = core.worker.backend.facts().supports_reset();
            // Without RESET, nothing would end a READONLY mode before the next lease.
            if reset || (!self.state.holds_state() && !self.relogged && !self.conn.readonly) {
                pool.give_back(self.conn, reset);
            }
        }
    }
}

impl Core {
    /// Handles a request while the session holds a dedicated connection.
    pub(super) fn handle_pinned(
        &mut self,
        request: &Request<'_>,
        action: super::classify::Action,
        facts: &crate::backend::BackendFacts,
    ) -> Step {
        use super::classify::Action;
        use crate::command::Local;
        let Some(pin) = self.pin.as_deref_mut() else {
            return Step::Blocked;
        };
        if pin.state.reset_pending() {
            // The lease ends with that RESET; what follows goes elsewhere.
            return Step::Blocked;
        }
        let settled = pin.state.outstanding() == 0;
        let multi = pin.state.multi_open();
        let resp2_pubsub = pin.state.subscribed() && !self.state.resp3;
        match action {
            Action::Forward | Action::Dedicated => {
                let mut tag = tag_of(request);
                if matches!(action, Action::Dedicated) && tag == PinTag::Reply(Tag::Other) && !multi
                {
                    // Dedicated for no state of its own: a call that blocks (inside MULTI
                    // it would only be queued).
                    tag = PinTag::Reply(Tag::Blocking);
                }
                if multi && tag.unfollowable_in_multi() {
                    return refuse_in_multi(pin, &self.link, request, settled);
                }
                if let Some(at) = Core::redirect_at(request) {
                    return self.client_tracking_redirect(request, at);
                }
                if tag == PinTag::Reply(Tag::TrackingOn) {
                    pin.redirect = None;
                }
                if tag == PinTag::Reply(Tag::Monitor) && pin.monitoring.is_none() {
                    pin.monitoring = Some(MonitorGauge::new(&self.worker.metrics));
                }
                pin.forward(request, &self.state, tag);
                Step::Done
            }
            Action::Error(line) => {
                if !settled && !pin.state.monitor() {
                    return Step::Blocked;
                }
                // Redis fails the whole transaction when it rejects a queued command.
                pin.state.mark_dirty();
                encode::error(&mut self.link.out(), line);
                let exec = request
                    .arg(0)
                    .is_some_and(|n| n.eq_ignore_ascii_case(b"EXEC"));
                if exec && !resp2_pubsub {
                    // A rejected EXEC ends the transaction and unwatches in Redis (its
                    // EXECABORT discards): the dedicated connection follows, so a later EXEC
                    // gets `EXEC without MULTI` as from Redis.
                    pin.abort_transaction();
                }
                Step::Done
            }
            Action::Local(
                Local::Ping | Local::Echo | Local::Exec | Local::Discard | Local::Unwatch,
            ) => {
                pin.forward(request, &self.state, tag_of(request));
                Step::Done
            }
            Action::Local(Local::Reset) => {
                // RESET runs on the dedicated connection and the client gets Redis's own
                // `+RESET` once it did: after that reply no message of an old subscription
                // may arrive. The session's own state is reset now, for what follows.
                pin.forward(request, &self.state, PinTag::Reply(Tag::Reset));
                self.reset();
                Step::Done
            }
            Action::Local(cmd @ (Local::Quit | Local::CrossProtocol)) => {
                if !settled && !pin.state.monitor() {
                    return Step::Blocked;
                }
                self.local(cmd, request, facts)
            }
            Action::Local(Local::Client)
                if request.arg(1).is_some_and(|s| {
                    s.eq_ignore_ascii_case(b"TRACKING") || s.eq_ignore_ascii_case(b"CACHING")
                }) =>
            {
                // Tracking lives on the dedicated connection: let it answer.
                if let Some(at) = Core::redirect_at(request) {
                    return self.client_tracking_redirect(request, at);
                }
                pin.forward(request, &self.state, tag_of(request));
                Step::Done
            }
            Action::Local(cmd) => {
                if multi {
                    return refuse_in_multi(pin, &self.link, request, settled);
                }
                if resp2_pubsub {
                    if !settled {
                        // Whether Redis is in pub/sub mode when this arrives depends on
                        // confirmations still to come (an unsubscribe may end it, a
                        // subscribe may be refused): wait for them, so a HELLO that Redis
                        // would run is not sent on as one it would refuse.
                        return Step::Blocked;
                    }
                    // Redis answers with its own "only (P|S)SUBSCRIBE ... allowed" error.
                    pin.forward(request, &self.state, PinTag::Reply(Tag::Other));
                    return Step::Done;
                }
                if !settled && !pin.state.monitor() {
                    return Step::Blocked;
                }
                self.local(cmd, request, facts)
            }
        }
    }

    /// Reads from the dedicated connection; a lost connection answers what it owed.
    pub(super) fn pin_read(&mut self) {
        let Some(pin) = self.pin.as_deref_mut() else {
            return;
        };
        match pin.read(&self.link) {
            // Redis answering a dedicated connection is evidence for the shared ones'
            // watchdogs that it is alive.
            Ok(true) => self.worker.backend.note_progress(),
            Ok(false) => {}
            Err(lost) => self.lose_pin(&lost.0),
        }
    }

    /// Writes queued requests to the dedicated connection.
    pub(super) fn pin_flush(&mut self) {
        let Some(pin) = self.pin.as_deref_mut() else {
            return;
        };
        if let Err(e) = pin.flush() {
            self.lose_pin(&e.to_string());
        }
    }

    /// Ends the lease once the state it was taken for is over.
    pub(super) fn pin_maybe_release(&mut self) {
        if self
            .pin
            .as_deref()
            .is_some_and(|p| p.state.is_idle() && !p.has_unwritten())
        {
            self.end_pin();
        }
    }

    /// Gives the dedicated connection back (or closes it).
    pub(super) fn end_pin(&mut self) {
        if let Some(pin) = self.pin.take() {
            pin.end(self);
        }
    }

    /// The dedicated connection failed: every reply it owed becomes an error, and a client
    /// whose state lived on it (a transaction, subscriptions) is disconnected, since that
    /// state cannot be restored behind its back.
    fn lose_pin(&mut self, why: &str) {
        let Some(pin) = self.pin.take() else { return };
        tracing::debug!(
            client = self.state.id,
            error = why,
            "dedicated connection lost"
        );
        let shutdown = pin.state.owed_before_shutdown();
        let mut out = self.link.out();
        for _ in 0..shutdown.unwrap_or_else(|| pin.state.owed_to_client()) {
            encode::error(&mut out, "ERR moat: dedicated backend connection lost");
        }
        drop(out);
        // After a SHUTDOWN the client's connection closes without a reply, as Redis's does.
        if pin.state.holds_state() || shutdown.is_some() {
            self.closing = true;
        }
    }
}
