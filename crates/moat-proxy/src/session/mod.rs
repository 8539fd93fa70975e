//! One client connection: reads requests, answers connection-state commands itself, forwards
//! the rest onto a shared backend connection, and writes replies back in request order.
//!
//! Ordering: a session's forwarded requests stay on one backend connection until answered,
//! and a request the session answers itself waits until everything before it was answered
//! (a barrier), so replies always come back in the order the client sent its requests.

mod classify;
mod client;
mod cluster;
mod dormancy;
mod local;
mod login;
mod pinned;

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use moat_protocol::{Limits, RequestParser, encode};

use moat_guard::{Event as GuardEvent, Ticket};
use tokio::time::Sleep;

use crate::auth::Principal;
use crate::backend::verify::Verdict;
use crate::backend::{BackendConn, PickError};
use crate::link::{ClientLink, Kind as LinkKind};
use crate::net::Stream;
use crate::stats::worker::{ClientClass, Closed, CommandKind};
use crate::worker::WorkerCtx;
use classify::Action;
pub(crate) use dormancy::{Kept, resume};

/// Size of the per-thread buffer every session reads into. Sessions keep bytes of their own
/// only for a partial request, so an idle connection costs no read buffer.
const SCRATCH_SIZE: usize = 64 << 10;
/// A session's own input buffer is released once empty if it grew past this.
const KEEP_INBUF: usize = 16 << 10;
/// A client that took some of its output this recently is reading: the output budget
/// never disconnects it.
const READING_WITHIN: Duration = Duration::from_secs(1);

/// Outputs at least this large note when the client took them, and clients holding at least
/// this much unread (or the soft limit, if lower) are weighed by the output limits.
const LARGE_OUTPUT: usize = 64 << 10;

/// What the output limits know of a client that has had a large output.
#[derive(Debug, Default)]
struct OutputWatch {
    /// Unread reply bytes last reported to the worker's output budget.
    budgeted: usize,
    /// Since when the client has held more unread replies than `limits.output_soft_limit`
    /// (cleared once it drops below).
    over_soft_since: Option<Instant>,
    /// When the client last took part of a large output: a client that took something
    /// within [`READING_WITHIN`] is reading, and the output budget never disconnects it.
    took: Option<Instant>,
}

/// An output buffer is released once flushed if it grew past this.
const KEEP_OUTBUF: usize = 16 << 10;

/// One client read in this many is timed for `moat_request_duration_seconds{stage="proxy"}`:
/// reading the clock costs about as much as handling a small request.
const SAMPLE_EVERY: u32 = 16;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH_SIZE]);
    /// Reads since the last timed one, on this worker.
    static READS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Whether this read is one of the timed ones.
fn sample_this_read() -> bool {
    READS.with(|r| {
        let n = r.get().wrapping_add(1);
        r.set(n);
        n % SAMPLE_EVERY == 0
    })
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Limits Redis applies to clients that have not authenticated yet; moat applies the same
/// before AUTH so an anonymous client cannot make it buffer large requests.
fn unauthenticated_limits(full: Limits) -> Limits {
    Limits {
        max_args: full.max_args.min(10),
        max_bulk_len: full.max_bulk_len.min(16 << 10),
        max_request_bytes: full.max_request_bytes.min(64 << 10),
        max_inline_len: full.max_inline_len,
    }
}

/// What woke a waiting session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Delivered,
    Readable,
    Writable,
    PinReadable,
    Timer,
}

/// What the request at the front of the input waits for, which the run loop gets before
/// handling it again: a dedicated connection, or Redis's verdict on a credential.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Wait {
    None,
    /// It needs a lease.
    Lease,
    /// Getting one failed; the request is answered with this line.
    LeaseFailed(Box<str>),
    /// AUTH or HELLO AUTH, in passthrough mode: Redis must judge the credential.
    Verify(Box<local::AuthAttempt>),
    /// Redis's verdict on that credential, or why it could not be asked.
    Verified(Box<(local::AuthAttempt, Result<Verdict, String>)>),
    /// A CLIENT subcommand moat runs over its own sessions (LIST, KILL, PAUSE...), in
    /// passthrough mode: Redis must say whether the client's user may run it.
    Permit(Box<[u8]>),
    /// Redis's refusal line if any (or why it could not be asked), for that subcommand; kept
    /// until the request is done, since CLIENT LIST/KILL may wait again for other workers.
    Permitted(Box<login::Permission>),
    /// MULTI got no dedicated connection (answered with the reason): the client still
    /// thinks its next commands are queued, so none of them may run; they are refused
    /// until its EXEC (EXECABORT) or DISCARD, as in a transaction Redis aborted.
    NoTransaction,
}

/// What processing one request led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Handled; go on with the next request.
    Done,
    /// Cannot be handled yet (barrier or backpressure); retry once replies arrive.
    Blocked,
    /// The session ends once everything owed is written.
    Close,
}

/// Per-client state that the session emulates instead of changing a shared connection.
#[derive(Debug)]
pub(crate) struct ClientState {
    pub(crate) id: u64,
    pub(crate) peer: SocketAddr,
    pub(crate) created: Instant,
    pub(crate) db: u32,
    /// The session speaks RESP3 (after HELLO 3).
    pub(crate) resp3: bool,
    /// Redis Cluster's READONLY is on (reads may be served by a replica): see `cluster.rs`.
    pub(crate) readonly: bool,
    /// The client sent ASKING: its next command goes out right behind an ASKING of moat's.
    pub(crate) asking: bool,
    /// The authenticated user (`None` until AUTH when authentication is required).
    pub(crate) user: Option<std::sync::Arc<Principal>>,
    /// Names the client gave itself; boxed because most clients never set one, and every
    /// idle connection pays for the fields it carries inline.
    pub(crate) names: Option<Box<ClientNames>>,
}

/// CLIENT SETNAME and CLIENT SETINFO values.
#[derive(Debug, Default)]
pub(crate) struct ClientNames {
    pub(crate) name: Option<Vec<u8>>,
    pub(crate) lib_name: Option<Vec<u8>>,
    pub(crate) lib_ver: Option<Vec<u8>>,
}

impl ClientState {
    /// The client's names, created on first use.
    pub(crate) fn names_mut(&mut self) -> &mut ClientNames {
        self.names.get_or_insert_with(Box::default)
    }

    /// The name set with CLIENT SETNAME or HELLO SETNAME.
    pub(crate) fn name(&self) -> Option<&[u8]> {
        self.names.as_ref()?.name.as_deref()
    }

    /// The user name, as ACL WHOAMI and CLIENT LIST show it.
    pub(crate) fn user_name(&self) -> &str {
        self.user.as_deref().map_or("default", Principal::name)
    }

    /// The Redis user backend connections serving this client log in as (passthrough
    /// mode); none in table mode, where they all use moat's own credential.
    pub(crate) fn backend_login(&self) -> Option<&std::sync::Arc<Principal>> {
        self.user.as_ref().filter(|p| p.credential().is_some())
    }
}

/// Everything a session needs besides its parser and input buffer (kept apart so a parsed
/// request can borrow the parser while the rest is mutated).
struct Core {
    worker: Rc<WorkerCtx>,
    link: Rc<ClientLink>,
    state: ClientState,
    /// The connection holding this session's in-flight requests.
    sticky: Option<Rc<BackendConn>>,
    /// Set when the session must end once everything owed is written.
    closing: bool,
    /// A final error line to send once earlier replies are out (protocol error).
    final_error: Option<String>,
    /// The user changed (AUTH, RESET): the parser's limits follow before the next request.
    limits_changed: bool,
    /// A complete request waits in the input buffer (barrier or backpressure).
    blocked_inbuf: bool,
    /// The dedicated connection held while in a stateful mode (boxed: most sessions never
    /// take one, and every idle session pays for what it carries inline).
    pin: Option<Box<pinned::Pin>>,
    /// What the request at the front of the input waits for.
    wait: Wait,
    /// After a command that may change Redis's users (CONFIG SET, ACL SETUSER/DELUSER/
    /// LOAD), what moat asks Redis once it has answered, before the reply goes out: whether
    /// new clients need a password now, and whether the users named still exist.
    recheck: Option<Box<local::Recheck>>,
    /// A request waits for a backend connection busy with other users to become free.
    pool_wait: bool,
    /// The client's place in the guard's counts, given back when the session ends.
    ticket: Ticket,
    /// Commands received (handshake deadline, strikes for silent connections).
    commands: u64,
    /// The guard has heard of this client's first command as an authenticated client.
    reported_success: bool,
    /// The request the client is part way through sending: since when (its start, or the
    /// completion of the request before it) and its bytes so far (slow-request deadline).
    partial: Option<(Instant, u32)>,
    /// Fires at the next deadline (handshake, auth, slow request, idle); boxed and created only while a
    /// deadline applies.
    timer: Option<Pin<Box<Sleep>>>,
    /// Bytes this session last reported to the worker's memory budget.
    budgeted: crate::budget::Held,
    /// What the output limits watch, from the client's first large output on (boxed: most
    /// clients never have one, and every idle session pays for what it carries inline).
    output: Option<Box<OutputWatch>>,
    /// The class this client is counted in (`moat_clients{class}`), once published.
    counted_as: std::cell::Cell<Option<ClientClass>>,
    /// A CLIENT LIST/KILL/UNBLOCK waiting for the other workers' answers (boxed and
    /// rare, like the lease wait).
    asking: Option<Box<client::Asking>>,
}

/// A client connection being served.
pub(crate) struct Session {
    parser: RequestParser,
    inbuf: BytesMut,
    core: Core,
}

/// How a session's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    /// The connection is done with.
    Closed,
    /// Asked to go dormant, and quiet: the session may leave its task.
    Dormant,
}

/// Serves one accepted client connection until it closes (or goes dormant). Not `async`
/// itself: the future is [`drive`]'s alone, with nothing of the setup kept in it.
pub(crate) fn serve(
    stream: Stream,
    peer: SocketAddr,
    worker: Rc<WorkerCtx>,
    ticket: Ticket,
    link: Rc<ClientLink>,
) -> impl std::future::Future<Output = ()> {
    let state = ClientState {
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        peer,
        created: Instant::now(),
        db: 0,
        resp3: false,
        readonly: false,
        asking: false,
        user: worker.authority.initial_principal(),
        names: None,
    };
    let session = Session::new(worker, state, link, ticket);
    session.core.worker.budget.join();
    session.core.enter_directory(&stream);
    drive(session, stream)
}

/// Runs a session until it ends, then cleans up after it; or until it goes dormant, when
/// the worker's dormant set takes it.
///
/// Not an `async fn`: its arguments would be stored twice in the future (once as
/// arguments, once as the body's locals), and every idle session would pay for it.
#[allow(clippy::manual_async_fn)]
fn drive(mut session: Session, stream: Stream) -> impl std::future::Future<Output = ()> {
    async move {
        let exit = session.run(&stream).await;
        // Synchronous, so that nothing of it is kept in every session's future.
        session.after_run(stream, exit);
    }
}

impl Session {
    /// A run ended: hands the session to the dormant set, or cleans up after it.
    fn after_run(self, stream: Stream, exit: io::Result<Exit>) {
        match exit {
            Ok(Exit::Dormant) => {}
            Ok(Exit::Closed) => return self.finish(),
            Err(e) => {
                tracing::debug!(peer = %self.core.state.peer, error = %e, "client connection ended with an error");
                return self.finish();
            }
        }
        let worker = self.core.worker.clone();
        let Some(client) = self.into_dormant(stream) else {
            return;
        };
        if let Err(client) = worker.dormant.admit(client) {
            // Not watched: the session goes on in a task.
            client.link().set_rest(crate::dormant::Rest::Busy);
            resume(worker, *client);
        }
    }
}

impl Session {
    /// A session for `state`, everything else at its start.
    fn new(
        worker: Rc<WorkerCtx>,
        state: ClientState,
        link: Rc<ClientLink>,
        ticket: Ticket,
    ) -> Self {
        Session {
            parser: RequestParser::new(worker.limits.get()),
            inbuf: BytesMut::new(),
            core: Core {
                link,
                ticket,
                commands: 0,
                reported_success: false,
                partial: None,
                timer: None,
                budgeted: crate::budget::Held::default(),
                output: None,
                counted_as: std::cell::Cell::new(None),
                state,
                worker,
                sticky: None,
                closing: false,
                final_error: None,
                limits_changed: true,
                blocked_inbuf: false,
                pin: None,
                wait: Wait::None,
                recheck: None,
                pool_wait: false,
                asking: None,
            },
        }
    }

    /// Cleans up after a session that ended: its place in the worker's and the guard's
    /// counts, its directory entry, its dedicated connection.
    fn finish(mut self) {
        self.core.worker.clients.unregister(self.core.state.id);
        self.core.worker.budget.leave(self.core.budgeted);
        if let Some(watch) = &self.core.output {
            self.core.worker.output_budget.update(watch.budgeted, 0);
        }
        if let Some(class) = self.core.counted_as.take() {
            self.core.worker.stats.client(class, false);
        }
        // A client gone mid-state leaves its dedicated connection cleaned or closed.
        self.core.end_pin();
        self.core.link.close();
        let core = &self.core;
        if !core.ticket.trusted() {
            core.worker
                .hoard
                .borrow_mut()
                .ended(core.ticket.ip(), &core.link, core.link.kind());
        }
        let commands = core.commands;
        // An evicted connection strikes even if it sent keep-alives (once: not also as silent).
        let event = if core.link.evicted() {
            GuardEvent::Evicted
        } else {
            GuardEvent::Closed { commands }
        };
        core.ticket
            .guard()
            .record(core.ticket.ip(), event, Instant::now());
    }
}

impl Session {
    async fn run(&mut self, stream: &Stream) -> io::Result<Exit> {
        loop {
            self.process_inbuf();
            // Before any wait below: another session may look at this one meanwhile.
            self.core.publish_pin();
            if self.core.recheck.is_some() && self.core.link.inflight() == 0 {
                // Before the command's reply goes out, so a client told `+OK` and then
                // connecting again meets Redis's new rules.
                Box::pin(self.core.recheck()).await;
                continue;
            }
            match self.core.wait {
                // Boxed: the waits are rare, and inline they would grow every idle session.
                Wait::Lease => {
                    Box::pin(self.lease(stream)).await?;
                    continue;
                }
                Wait::Verify(_) => {
                    Box::pin(self.core.verify(stream)).await?;
                    continue;
                }
                Wait::Permit(_) => {
                    Box::pin(self.core.permit(stream)).await?;
                    continue;
                }
                _ => {}
            }
            if self.core.wants_answer() {
                // Boxed for the same reason: only CLIENT LIST/KILL/UNBLOCK with several
                // workers wait here.
                Box::pin(self.core.ask_directory(stream)).await?;
                continue;
            }
            let core = &mut self.core;
            if core.link.evicted() {
                core.worker.stats.closed(Closed::Shed);
                tracing::debug!(client = core.state.id, "closed to shed load");
                return Ok(Exit::Closed);
            }
            if core.link.card.killed() {
                // Killed by CLIENT KILL, or by the drain's timeout.
                core.worker.stats.closed(if core.worker.draining.get() {
                    Closed::Drain
                } else {
                    Closed::Killed
                });
                tracing::debug!(
                    client = core.state.id,
                    "closed by CLIENT KILL or drain timeout"
                );
                return Ok(Exit::Closed);
            }
            core.pin_flush();
            core.pin_maybe_release();
            core.publish_pin();
            if core.unsolicited_overflow() {
                core.worker.stats.closed(Closed::SlowSubscriber);
                // Like Redis's own pub/sub output limit: a client that cannot keep up with
                // messages it did not ask for one by one is disconnected, not buffered for.
                tracing::debug!(client = core.state.id, "slow subscriber disconnected");
                return Ok(Exit::Closed);
            }
            if core.owed() == 0
                && let Some(line) = core.final_error.take()
            {
                encode::error(&mut core.link.out(), &line);
            }
            core.flush(stream)?;
            // Memory bounds: a client far past its output limit, or over its share while the
            // worker is over budget, is disconnected (like Redis's client-output-buffer-limit).
            let held = crate::budget::Held::new(
                core.link.out_len(),
                self.inbuf.len() + core.request_bytes_held(),
            );
            core.worker.budget.update(core.budgeted, held);
            core.budgeted = held;
            let over_hard = core.link.out_len() > core.worker.max_output_bytes_hard.get();
            let held = held.total();
            if over_hard || core.worker.budget.should_shed(held) {
                core.worker.stats.closed(if over_hard {
                    Closed::OutputLimit
                } else {
                    Closed::MemoryBudget
                });
                if over_hard {
                    core.report(GuardEvent::SlowReader);
                }
                tracing::debug!(
                    client = core.state.id,
                    held,
                    "client over its memory bound disconnected"
                );
                return Ok(Exit::Closed);
            }
            if let Some(why) = core.output_verdict() {
                core.worker.stats.closed(why);
                core.report(GuardEvent::SlowReader);
                tracing::debug!(
                    client = core.state.id,
                    unread = core.link.out_len(),
                    "slow reader disconnected"
                );
                return Ok(Exit::Closed);
            }
            let owed = core.owed() > 0 || core.link.out_len() > 0;
            if core.closing && !owed {
                return Ok(Exit::Closed);
            }
            if !owed && core.worker.draining.get() && core.drain_done() {
                core.worker.stats.closed(Closed::Drain);
                tracing::debug!(client = core.state.id, "closed by drain");
                return Ok(Exit::Closed);
            }
            if core.blocked_inbuf
                && !owed
                && !core.backpressured()
                && !core.pin_pending()
                && !core.pool_wait
                && !core.link.card.parked()
            {
                // Held back only by output that has just been written out: nothing else
                // will wake the session, so go on with the buffered requests now.
                continue;
            }
            let want_read = !core.closing && !core.backpressured() && !self.blocked_on_barrier();
            let want_write = self.core.link.out_len() > 0;
            if self.rest(stream, want_read, want_write) {
                return Ok(Exit::Dormant);
            }
            let mut timer = self.core.arm_timer();
            let core = &self.core;
            let pin = core.pin.as_deref();
            // A slow reader of replies stops being read from its dedicated connection too
            // (its requests are bounded); a stream of messages is read on, so the overflow
            // check above can end a subscriber that does not keep up.
            let want_pin_read = pin.is_some_and(|p| {
                core.link.out_len() < core.worker.max_output_bytes.get()
                    || p.state.streams_unsolicited()
            });
            let want_pin_write = pin.is_some_and(|p| p.has_unwritten());
            let link = &core.link;
            // Polled by hand rather than with select! over readiness futures: an idle
            // session then waits with no sub-futures stored, which keeps its task small.
            let event = std::future::poll_fn(|cx| {
                if link.poll_delivered(cx) {
                    return Poll::Ready(Ok(Event::Delivered));
                }
                if let Some(timer) = timer.as_mut()
                    && timer.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(Ok(Event::Timer));
                }
                if let Some(pin) = pin {
                    if want_pin_read && let Poll::Ready(r) = pin.poll_read_ready(cx) {
                        return Poll::Ready(r.map(|()| Event::PinReadable));
                    }
                    if want_pin_write && let Poll::Ready(r) = pin.poll_write_ready(cx) {
                        return Poll::Ready(r.map(|()| Event::Writable));
                    }
                }
                if want_read && let Poll::Ready(r) = stream.poll_read_ready(cx) {
                    return Poll::Ready(r.map(|()| Event::Readable));
                }
                if want_write && let Poll::Ready(r) = stream.poll_write_ready(cx) {
                    return Poll::Ready(r.map(|()| Event::Writable));
                }
                Poll::Pending
            })
            .await;
            self.core.timer = timer;
            match event {
                Ok(Event::Timer) => {
                    if self.core.timer_expired() {
                        return Ok(Exit::Closed);
                    }
                }
                Ok(Event::Readable) => {
                    self.core.link.set_rest(crate::dormant::Rest::Busy);
                    self.core.link.card.touch(Instant::now());
                    self.read(stream)?;
                }
                Ok(Event::PinReadable) => self.core.pin_read(),
                Ok(_) => {}
                Err(e) if self.core.pin.is_some() && want_pin_read => {
                    // Readiness errors on the dedicated side end the lease, not the client.
                    self.core.pin_read();
                    tracing::debug!(error = %e, "dedicated connection readiness failed");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits for a dedicated connection for the request at the front of the input; on
    /// failure that request is answered with the reason.
    async fn lease(&mut self, stream: &Stream) -> io::Result<()> {
        let core = &mut self.core;
        core.wait = Wait::None;
        // Replies already produced go out before the wait.
        core.flush(stream)?;
        let user: std::sync::Arc<str> = core.state.user_name().into();
        let pool = core.worker.pinned.clone();
        let who = core.state.backend_login().cloned();
        match pool
            .acquire(core.state.peer.ip(), &user, who.as_ref())
            .await
        {
            Ok((conn, ticket)) => {
                let depth = core.worker.max_reply_depth.get();
                core.pin = Some(Box::new(pinned::Pin::new(conn, ticket, depth)));
            }
            Err(e) => {
                if !matches!(e, crate::pinned::LeaseError::Backend(_)) {
                    core.worker.stats.lease_refusals.incr();
                }
                core.wait = Wait::LeaseFailed(e.line().into());
            }
        }
        Ok(())
    }

    /// True while a complete request waits in the input buffer for earlier replies: more
    /// input would only queue behind it, so reading stops until it runs. A request held by
    /// CLIENT PAUSE still lets a little more be read, so a client that leaves meanwhile is
    /// noticed (as Redis frees a paused client at its EOF) instead of held to the pause's end.
    fn blocked_on_barrier(&self) -> bool {
        self.core.blocked_inbuf
            && !self.inbuf.is_empty()
            && !(self.core.link.card.parked() && self.inbuf.len() < KEEP_INBUF)
    }

    fn read(&mut self, stream: &Stream) -> io::Result<()> {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            match stream.try_read(&mut scratch[..]) {
                Ok(0) => {
                    // Half-closed: answer what was sent, then close, as Redis does (it writes
                    // the replies of what it read before it sees the EOF). A blocking call
                    // ends at once instead: Redis frees a blocked client at its EOF, and a
                    // call of a client that left must not live on.
                    self.core.closing = true;
                    if self
                        .core
                        .pin
                        .as_deref()
                        .is_some_and(|p| p.state.blocking_outstanding())
                    {
                        self.core.end_pin();
                    }
                    Ok(())
                }
                Ok(n) => {
                    let started = sample_this_read().then(Instant::now);
                    stream.after_read(n, scratch.len());
                    let data = &scratch[..n];
                    if self.inbuf.is_empty() {
                        let used = self.process(data);
                        if used < data.len() {
                            self.inbuf.extend_from_slice(&data[used..]);
                        }
                    } else {
                        self.inbuf.extend_from_slice(data);
                        self.process_inbuf();
                    }
                    if let Some(started) = started {
                        let stats = &self.core.worker.stats;
                        stats.proxy_latency.observe(started.elapsed());
                    }
                    Ok(())
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
                Err(e) => Err(e),
            }
        })
    }

    fn process_inbuf(&mut self) {
        if self.inbuf.is_empty() {
            return;
        }
        let buf = std::mem::take(&mut self.inbuf);
        let used = self.process(&buf);
        self.inbuf = buf;
        self.inbuf.advance(used);
        if self.inbuf.is_empty() && self.inbuf.capacity() > KEEP_INBUF {
            self.inbuf = BytesMut::new();
        }
    }

    /// Handles complete requests at the front of `buf`; returns the bytes consumed.
    fn process(&mut self, buf: &[u8]) -> usize {
        let mut pos = 0;
        self.core.blocked_inbuf = false;
        self.core.pool_wait = false;
        while !self.core.closing && pos < buf.len() {
            if std::mem::take(&mut self.core.limits_changed) {
                self.parser.set_limits(self.core.parser_limits());
            }
            if self.core.backpressured() {
                self.core.blocked_inbuf = true;
                break;
            }
            let request = match self.parser.parse(&buf[pos..]) {
                Ok(Some(request)) => request,
                Ok(None) => break,
                Err(e) => {
                    // The stream cannot be resynchronised: answer, then close.
                    self.core.report(GuardEvent::ProtocolError);
                    self.core.worker.stats.closed(Closed::ProtocolError);
                    self.core.final_error = Some(e.to_string());
                    self.core.closing = true;
                    pos = buf.len();
                    break;
                }
            };
            if request.argc() == 0 {
                pos += request.len();
                continue;
            }
            let len = request.len();
            let step = self.core.handle(&request);
            if step != Step::Blocked {
                self.core.note_command();
            }
            match step {
                Step::Done => pos += len,
                Step::Blocked => {
                    self.parser.reset();
                    self.core.blocked_inbuf = true;
                    break;
                }
                Step::Close => {
                    pos += len;
                    self.core.closing = true;
                }
            }
        }
        self.core.track_partial(buf.len() - pos, pos > 0);
        pos
    }
}

impl Core {
    /// Moves the client up to `kind` (shedding spares real clients), telling the worker's
    /// hoard: a branch per request, a table update at most twice per connection.
    fn note_kind(&self, kind: LinkKind) {
        let from = self.link.kind();
        if kind <= from {
            return;
        }
        self.link.set_kind(kind);
        if !self.ticket.trusted() {
            self.worker
                .hoard
                .borrow_mut()
                .reclassed(self.ticket.ip(), &self.link, from);
        }
    }

    /// Tells the guard what this client did.
    pub(super) fn report(&self, event: GuardEvent) {
        self.ticket
            .guard()
            .record(self.ticket.ip(), event, Instant::now());
    }

    /// Counts a handled command; the first real one (reaching Redis's data) as an
    /// authenticated client marks the source as legitimate. Keep-alives do not: a hoard that
    /// PINGs must not earn the leniency the guard shows known sources.
    fn note_command(&mut self) {
        self.commands += 1;
        if !self.reported_success && self.state.user.is_some() && self.link.kind() == LinkKind::Real
        {
            self.reported_success = true;
            self.report(GuardEvent::Command);
        }
    }

    /// Notes what a pass over the input left: `leftover` bytes not yet a request, after
    /// completing some (`progressed`) or not. The slow-request clock runs from the end of
    /// the last complete request, and only while moat reads (not while the client's own
    /// requests wait, which is not the client's fault).
    fn track_partial(&mut self, leftover: usize, progressed: bool) {
        if leftover == 0 || self.blocked_inbuf || self.closing {
            self.partial = None;
            return;
        }
        let bytes = u32::try_from(leftover).unwrap_or(u32::MAX);
        match &mut self.partial {
            Some((_, held)) if !progressed => *held = bytes,
            _ => self.partial = Some((Instant::now(), bytes)),
        }
    }

    /// When the request being received must be complete (none for trusted clients).
    fn slow_request_deadline(&self) -> Option<Instant> {
        let (since, bytes) = self.partial?;
        let g = self.worker.deadlines.get();
        if g.request_read.is_zero() || self.ticket.trusted() {
            return None;
        }
        let grace = u64::from(bytes) / u64::from(g.request_min_rate.max(1));
        Some(since + g.request_read + Duration::from_secs(grace))
    }

    /// The earliest deadline that applies now: the first command, authentication, a request
    /// being received, idle.
    fn deadline(&self) -> Option<Instant> {
        let g = self.worker.deadlines.get();
        let auth_required = self.worker.authority.auth_required();
        let mut deadline: Option<Instant> = None;
        let mut earliest = |at: Instant| {
            deadline = Some(deadline.map_or(at, |d| d.min(at)));
        };
        // A first command held by CLIENT PAUSE was sent: the client is not silent.
        if self.commands == 0 && !self.link.card.parked() {
            earliest(self.state.created + g.handshake);
        }
        let authenticated = self.state.user.is_some();
        if auth_required && !authenticated {
            earliest(self.state.created + g.auth);
        }
        if let Some(at) = self.slow_request_deadline() {
            earliest(at);
        }
        if let Some(since) = self.output.as_ref().and_then(|w| w.over_soft_since) {
            earliest(since + self.worker.output_soft_time.get());
        }
        // Waiting on Redis (a blocking call, a subscription) or on CLIENT PAUSE is not
        // idleness.
        if self.owed() == 0 && self.pin.is_none() && !self.link.card.parked() {
            let idle = if self.ticket.trusted() {
                g.idle_trusted
            } else if (auth_required && authenticated) || (!auth_required && self.commands > 0) {
                g.idle_authenticated
            } else {
                g.idle_unauthenticated
            };
            if !idle.is_zero() {
                let since = self.link.card.last_activity().unwrap_or(self.state.created);
                earliest(since + idle);
            }
        }
        deadline
    }

    /// Which deadline `at` (from [`Core::deadline`]) is, checked in the order a tie would
    /// be reported: a slow request first (it strikes), then the handshake, then
    /// authentication; anything else is the idle deadline.
    fn deadline_passed(&self, at: Instant) -> Closed {
        let g = self.ticket.guard().config();
        if self.slow_request_deadline() == Some(at) {
            Closed::SlowRequest
        } else if self
            .output
            .as_ref()
            .and_then(|w| w.over_soft_since)
            .is_some_and(|since| since + self.worker.output_soft_time.get() == at)
        {
            Closed::OutputSoftLimit
        } else if self.commands == 0
            && !self.link.card.parked()
            && at == self.state.created + g.handshake_timeout
        {
            Closed::HandshakeDeadline
        } else if self.worker.authority.auth_required()
            && self.state.user.is_none()
            && at == self.state.created + g.auth_timeout
        {
            Closed::AuthDeadline
        } else {
            Closed::IdleDeadline
        }
    }

    /// The client's class for `moat_clients{class}` now.
    fn class(&self) -> ClientClass {
        if self.ticket.trusted() {
            ClientClass::Trusted
        } else if self.state.user.is_some() {
            ClientClass::Authenticated
        } else {
            ClientClass::Unauthenticated
        }
    }

    /// The timer for the current deadline: created, moved earlier, or dropped. A timer
    /// later than the deadline is left alone: when it fires, the deadline is checked again.
    fn arm_timer(&mut self) -> Option<Pin<Box<Sleep>>> {
        let mut timer = self.timer.take();
        match self.deadline() {
            None => return None,
            Some(at) => {
                let at = tokio::time::Instant::from_std(at);
                match timer.as_mut() {
                    Some(t) if t.deadline() <= at => {}
                    Some(t) => t.as_mut().reset(at),
                    None => timer = Some(Box::pin(tokio::time::sleep_until(at))),
                }
            }
        }
        timer
    }

    /// The timer fired: true if a deadline has really passed (the session closes).
    fn timer_expired(&mut self) -> bool {
        match self.deadline() {
            Some(at) if at <= Instant::now() => {
                let why = self.deadline_passed(at);
                self.worker.stats.closed(why);
                match why {
                    Closed::SlowRequest => self.report(GuardEvent::SlowRequest),
                    Closed::OutputSoftLimit => self.report(GuardEvent::SlowReader),
                    _ => {}
                }
                tracing::debug!(
                    client = self.state.id,
                    commands = self.commands,
                    "deadline passed"
                );
                true
            }
            Some(at) => {
                if let Some(t) = self.timer.as_mut() {
                    t.as_mut().reset(tokio::time::Instant::from_std(at));
                }
                false
            }
            None => {
                self.timer = None;
                false
            }
        }
    }

    /// Request limits for the session's state: Redis's tight ones until it authenticates.
    fn parser_limits(&self) -> Limits {
        if self.state.user.is_some() {
            self.worker.limits.get()
        } else {
            unauthenticated_limits(self.worker.limits.get())
        }
    }

    /// During a drain: nothing in progress would be cut by closing now. A transaction, a
    /// WATCH or a request waiting for a dedicated connection or Redis's verdict is let
    /// finish; subscriptions, MONITOR and tracking never finish, so they do not hold it.
    fn drain_done(&self) -> bool {
        matches!(self.wait, Wait::None)
            && self.pin.as_deref().is_none_or(|p| {
                !p.state.multi_open()
                    && !p.state.watching()
                    && p.state.outstanding() == 0
                    && !p.has_unwritten()
            })
    }

    /// Replies the client waits for, on shared and dedicated connections.
    fn owed(&self) -> usize {
        let pinned = self
            .pin
            .as_deref()
            .filter(|p| !p.state.monitor())
            .map_or(0, |p| p.state.outstanding());
        self.link.inflight() + pinned
    }

    /// The dedicated connection owes something that a request may be waiting for: a reply,
    /// or (while monitoring, when replies are not counted) the `+RESET` that ends it. Such
    /// a wait ends when the connection is read, never by going round the loop again.
    fn pin_pending(&self) -> bool {
        self.pin
            .as_deref()
            .is_some_and(|p| p.state.outstanding() > 0 || p.state.reset_pending())
    }

    /// A subscriber, monitor or tracking client has more unread output than it may.
    fn unsolicited_overflow(&self) -> bool {
        // Unsolicited bytes only: a subscriber's own pipelined requests stop being read at
        // the output limit instead, and a big reply it asked for is not falling behind.
        self.pin
            .as_deref()
            .is_some_and(|p| p.unsolicited() > self.worker.max_output_bytes.get())
    }

    /// Bytes of this client's requests moat holds for the backend: queued or in flight on
    /// shared connections, and not yet written to its dedicated one.
    fn request_bytes_held(&self) -> usize {
        self.link.inflight_bytes() + self.pin.as_deref().map_or(0, pinned::Pin::unwritten)
    }

    /// True while the client has as much in flight or unread as it may.
    fn backpressured(&self) -> bool {
        self.owed() >= self.worker.max_inflight.get()
            || self.request_bytes_held() >= self.worker.max_inflight_bytes.get()
            || self.link.out_len() >= self.worker.max_output_bytes.get()
            || self.link.expected_output() >= self.worker.output_window.get()
    }

    /// Weighs the client's unread replies against the soft limit and the output budget
    /// (untrusted clients only): the reason to disconnect it now, if any. Also starts and
    /// stops the soft limit's clock, whose deadline the timer enforces.
    fn output_verdict(&mut self) -> Option<Closed> {
        if self.ticket.trusted() {
            return None;
        }
        let unread = self.link.out_len();
        let soft_limit = self.worker.output_soft_limit.get();
        if self.output.is_none() && unread < soft_limit.min(LARGE_OUTPUT) {
            // Too light to weigh: not counted against the budget either.
            return None;
        }
        let streaming = self
            .pin
            .as_deref()
            .is_some_and(|p| p.state.streams_unsolicited());
        let budget = &self.worker.output_budget;
        let watch = self.output.get_or_insert_with(Box::default);
        budget.update(watch.budgeted, unread);
        watch.budgeted = unread;
        // Messages a subscriber did not ask for one by one have their own limit.
        if unread >= soft_limit && !streaming {
            if watch.over_soft_since.is_none() {
                watch.over_soft_since = Some(Instant::now());
                budget.note_heavy(&self.link);
            }
        } else {
            watch.over_soft_since = None;
        }
        // The clock is read only for a client already heavy while the budget is full.
        if budget.should_shed(unread, false)
            && watch.took.is_none_or(|t| t.elapsed() >= READING_WITHIN)
        {
            return Some(Closed::OutputBudget);
        }
        None
    }

    /// Writes as much pending output as the socket takes now.
    fn flush(&mut self, stream: &Stream) -> io::Result<()> {
        let written = self.write_out(stream);
        let unread = self.link.out_len();
        if let Some(pin) = self.pin.as_deref_mut() {
            pin.output_left(unread);
        }
        written
    }

    fn write_out(&mut self, stream: &Stream) -> io::Result<()> {
        let mut out = self.link.out();
        let before = out.len();
        while !out.is_empty() {
            match stream.try_write(&out) {
                Ok(n) => out.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Only large outputs are timed: a small one is no weight for the
                    // output budget, and a clock read per reply would cost every client.
                    if out.len() < before && before >= LARGE_OUTPUT {
                        self.output.get_or_insert_with(Box::default).took = Some(Instant::now());
                    }
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        if before >= LARGE_OUTPUT {
            self.output.get_or_insert_with(Box::default).took = Some(Instant::now());
        }
        if out.capacity() > KEEP_OUTBUF {
            *out = BytesMut::new();
        }
        Ok(())
    }

    fn handle(&mut self, request: &moat_protocol::Request<'_>) -> Step {
        let facts = self.worker.backend.facts();
        let (action, seen) = classify::classify(&self.state, &facts, request);
        // CLIENT LIST's `cmd=`: Redis records the command before any check.
        self.link.card.set_command(seen.id);
        if !matches!(action, Action::Error(_)) && self.held_by_pause(request, seen.flags) {
            return Step::Blocked;
        }
        let changes_state = matches!(
            action,
            Action::Local(
                crate::command::Local::Select
                    | crate::command::Local::Auth
                    | crate::command::Local::Hello
                    | crate::command::Local::Reset
                    | crate::command::Local::Client
            )
        );
        let sent = matches!(
            action,
            Action::Forward
                | Action::Dedicated
                | Action::Local(crate::command::Local::Ping | crate::command::Local::Echo)
        );
        let kind = match action {
            _ if self.pin.is_some() => CommandKind::Pinned,
            Action::Forward => CommandKind::Forwarded,
            Action::Dedicated => CommandKind::Pinned,
            Action::Local(_) | Action::Error(_) => CommandKind::Local,
        };
        let local = match action {
            Action::Local(l) => Some(l),
            _ => None,
        };
        let step = self.dispatch(request, action, &facts);
        self.asking_used(local, step);
        if step != Step::Blocked {
            self.worker.stats.command(kind);
            self.note_kind(if kind == CommandKind::Local {
                LinkKind::KeepAlive
            } else {
                LinkKind::Real
            });
        }
        if changes_state {
            self.publish_state();
        }
        if sent && step == Step::Done {
            self.note_sent(request, seen.flags);
        }
        step
    }

    /// Runs a classified request: on the dedicated connection while the session holds one,
    /// else forwarded, answered locally, or leased for.
    fn dispatch(
        &mut self,
        request: &moat_protocol::Request<'_>,
        action: Action,
        facts: &crate::backend::BackendFacts,
    ) -> Step {
        if self.pin.is_some() {
            return self.handle_pinned(request, action, facts);
        }
        if self.wait == Wait::NoTransaction {
            return self.refuse_in_failed_multi(request, action, facts);
        }
        if !matches!(action, Action::Forward) && self.link.inflight() > 0 {
            // Answering now would overtake replies still owed for earlier requests.
            return Step::Blocked;
        }
        match action {
            Action::Forward => self.forward(request),
            Action::Error(line) => {
                encode::error(&mut self.link.out(), line);
                Step::Done
            }
            Action::Local(crate::command::Local::Ping | crate::command::Local::Echo)
                if self.worker.metrics.monitors.load(Ordering::Relaxed) > 0 =>
            {
                // Someone is monitoring: Redis answers, so the monitor sees the command.
                self.forward(request)
            }
            Action::Local(cmd) => self.local(cmd, request, facts),
            Action::Dedicated => match std::mem::replace(&mut self.wait, Wait::None) {
                Wait::LeaseFailed(_)
                    if classify::interrupts_busy(request.arg(0).unwrap_or_default(), request) =>
                {
                    // No dedicated connection (the pool is taken, or disabled): a shared one
                    // not stuck behind the busy script may still reach Redis, which is
                    // better than refusing the one command that ends it.
                    self.forward(request)
                }
                Wait::LeaseFailed(line) => {
                    encode::error(&mut self.link.out(), line.as_bytes());
                    if request
                        .arg(0)
                        .is_some_and(|n| n.eq_ignore_ascii_case(b"MULTI"))
                    {
                        // Commands pipelined behind this MULTI must not run as if it had
                        // opened a transaction.
                        self.wait = Wait::NoTransaction;
                    }
                    Step::Done
                }
                _ => {
                    self.wait = Wait::Lease;
                    Step::Blocked
                }
            },
        }
    }

    /// A request after a MULTI that got no dedicated connection: nothing runs until the
    /// client's EXEC or DISCARD, which end the failed transaction the way Redis ends one
    /// it aborted. QUIT and RESET act as usual (RESET ends the transaction too).
    fn refuse_in_failed_multi(
        &mut self,
        request: &moat_protocol::Request<'_>,
        action: Action,
        facts: &crate::backend::BackendFacts,
    ) -> Step {
        use crate::command::Local;
        let name = request.arg(0).unwrap_or_default();
        let line: &[u8] = match action {
            Action::Local(cmd @ (Local::Quit | Local::CrossProtocol)) => {
                return self.local(cmd, request, facts);
            }
            Action::Local(Local::Reset) => {
                self.wait = Wait::None;
                return self.local(Local::Reset, request, facts);
            }
            Action::Local(Local::Exec) => {
                self.wait = Wait::None;
                crate::pinned::EXECABORT
                    .strip_prefix(b"-")
                    .and_then(|l| l.strip_suffix(b"\r\n"))
                    .unwrap_or_default()
            }
            Action::Local(Local::Discard) => {
                self.wait = Wait::None;
                encode::simple(&mut self.link.out(), "OK");
                return Step::Done;
            }
            // Redis's own rejections (arity, unknown command...) stay what they are; a
            // rejected EXEC ends the transaction, as in Redis.
            Action::Error(ref line) => {
                if name.eq_ignore_ascii_case(b"EXEC") {
                    self.wait = Wait::None;
                }
                line
            }
            _ if name.eq_ignore_ascii_case(b"MULTI") => b"ERR MULTI calls can not be nested",
            _ if name.eq_ignore_ascii_case(b"WATCH") => b"ERR WATCH inside MULTI is not allowed",
            _ => b"ERR moat: not queued: the transaction got no dedicated connection (see MULTI's error)",
        };
        encode::error(&mut self.link.out(), line);
        Step::Done
    }

    fn forward(&mut self, request: &moat_protocol::Request<'_>) -> Step {
        let conn = match &self.sticky {
            // Its requests in flight stay on their connection; one moving to a new primary
            // takes none after them: the session waits for their replies (or errors).
            Some(conn) if self.link.inflight() > 0 && conn.moved() => return Step::Blocked,
            Some(conn) if self.link.inflight() > 0 => conn.clone(),
            _ => match self.worker.backend.pick(
                self.state.backend_login(),
                self.state.db,
                self.state.resp3,
                self.state.readonly,
            ) {
                Ok(conn) => conn,
                Err(PickError::Busy) => {
                    if !self.pool_wait {
                        self.worker.stats.pool_waits.incr();
                    }
                    self.worker.backend.wait_for_idle(&self.link);
                    self.pool_wait = true;
                    return Step::Blocked;
                }
                Err(e @ PickError::UserGone) => {
                    // Redis disconnects the clients of a user it deleted; so does moat.
                    encode::error(&mut self.link.out(), e.line());
                    return Step::Close;
                }
                Err(e) => {
                    if let Some(line) = cluster::node_down(&self.worker.backend.facts(), e) {
                        encode::error(&mut self.link.out(), line);
                        return Step::Close;
                    }
                    encode::error(&mut self.link.out(), e.line());
                    return Step::Done;
                }
            },
        };
        if conn.pending_len() >= self.worker.max_queue.get() {
            if self.link.inflight() > 0 {
                return Step::Blocked;
            }
            self.worker.stats.requests_refused.incr();
            encode::error(
                &mut self.link.out(),
                format!(
                    "ERR moat: backend queue full (limit {} requests)",
                    self.worker.max_queue.get()
                ),
            );
            return Step::Done;
        }
        conn.enqueue(
            &self.link,
            request,
            self.state.db,
            self.state.resp3,
            self.state.readonly,
            self.state.asking,
        );
        self.sticky = Some(conn);
        if self.worker.authority.redis().is_some() {
            self.note_user_change(request);
        }
        Step::Done
    }
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;
    use std::sync::Arc;

    use crate::backend::{Backend, Settings};
    use crate::config::Config;
    use crate::worker::WorkerCtx;

    /// Every idle client costs its session's task; this keeps that cost from creeping up
    /// unnoticed (1,056 bytes before sessions waited through a hand-written poll, 584 after;
    /// 760 with the guard's ticket, deadlines and the pinned-lease state; 792 with the
    /// slow-request clock; 784 once the idle clock moved to the directory card in the link;
    /// 624 once `serve` stopped being an `async fn` whose arguments were stored twice).
    /// An idle client that stays quiet goes dormant and drops even that (`crate::dormant`).
    #[test]
    fn an_idle_session_stays_small() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let config = Config::default();
            let stats = crate::Metrics::default().worker(0);
            let ctx = Rc::new(WorkerCtx {
                backend: Backend::new(
                    Settings::from_config(&config, 0),
                    1,
                    stats.clone(),
                    Arc::new(crate::auth::Authority::from_config(&config)),
                ),
                authority: Arc::new(crate::auth::Authority::from_config(&config)),
                verifier: crate::backend::verify::Verifier::new(Settings::from_config(&config, 0)),
                limits: std::cell::Cell::new(moat_protocol::Limits::default()),
                max_inflight: std::cell::Cell::new(1),
                max_output_bytes: std::cell::Cell::new(1),
                max_output_bytes_hard: std::cell::Cell::new(1),
                max_inflight_bytes: std::cell::Cell::new(1),
                budget: crate::budget::Budget::new(1),
                output_window: std::cell::Cell::new(1),
                output_soft_limit: std::cell::Cell::new(1),
                output_soft_time: std::cell::Cell::new(std::time::Duration::from_secs(1)),
                output_budget: crate::budget::OutputBudget::new(1),
                max_queue: std::cell::Cell::new(1),
                max_reply_depth: std::cell::Cell::new(8),
                deadlines: std::cell::Cell::new(crate::worker::Deadlines::from_guard(
                    &config.guard,
                )),
                draining: std::cell::Cell::new(false),
                listen: addr,
                clients: crate::clients::WorkerClients::new(0, crate::clients::Shared::new(1).0),
                hoard: std::cell::RefCell::default(),
                pinned: crate::pinned::PinnedPool::new(
                    Settings::from_config(&config, 0),
                    1,
                    crate::pinned::LeaseLimits::new(1, 1),
                    std::time::Duration::from_secs(1),
                    stats.clone(),
                ),
                metrics: Arc::new(crate::Metrics::default()),
                stats,
                dormant: crate::dormant::Dormant::new(),
            });
            let guard = moat_guard::Guard::new(moat_guard::GuardConfig::default());
            let ticket = guard.admit(addr.ip(), std::time::Instant::now()).unwrap();
            let link = Rc::new(crate::link::ClientLink::default());
            let session = super::serve(stream.into(), addr, ctx, ticket, link);
            let size = std::mem::size_of_val(&session);
            assert!(size <= 640, "a session's future grew to {size} bytes");
        });
    }
}
