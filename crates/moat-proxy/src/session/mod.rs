//! One client connection: reads requests, answers connection-state commands itself, forwards
//! the rest onto a shared backend connection, and writes replies back in request order.
//!
//! Ordering: a session's forwarded requests stay on one backend connection until answered,
//! and a request the session answers itself waits until everything before it was answered
//! (a barrier), so replies always come back in the order the client sent its requests.

mod classify;
mod local;

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use moat_protocol::{Limits, RequestParser, encode};
use tokio::net::TcpStream;

use crate::backend::BackendConn;
use crate::link::ClientLink;
use crate::worker::WorkerCtx;
use classify::Action;

/// Size of the per-thread buffer every session reads into. Sessions keep bytes of their own
/// only for a partial request, so an idle connection costs no read buffer.
const SCRATCH_SIZE: usize = 64 << 10;
/// A session's own input buffer is released once empty if it grew past this.
const KEEP_INBUF: usize = 16 << 10;
/// An output buffer is released once flushed if it grew past this.
const KEEP_OUTBUF: usize = 16 << 10;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH_SIZE]);
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
    /// The authenticated user (`None` until AUTH when authentication is required).
    pub(crate) user: Option<std::sync::Arc<crate::auth::User>>,
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
    /// Parser limits to apply before the next request (after AUTH or RESET).
    new_limits: Option<Limits>,
    /// A complete request waits in the input buffer (barrier or backpressure).
    blocked_inbuf: bool,
}

/// A client connection being served.
pub(crate) struct Session {
    parser: RequestParser,
    inbuf: BytesMut,
    core: Core,
}

/// Serves one accepted client connection until it closes.
pub(crate) async fn serve(stream: TcpStream, peer: SocketAddr, worker: Rc<WorkerCtx>) {
    let user = if worker.users.auth_required() {
        None
    } else {
        worker.users.default_user()
    };
    let limits = if user.is_some() {
        worker.limits
    } else {
        unauthenticated_limits(worker.limits)
    };
    let mut session = Session {
        parser: RequestParser::new(limits),
        inbuf: BytesMut::new(),
        core: Core {
            link: Rc::new(ClientLink::default()),
            state: ClientState {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                peer,
                created: Instant::now(),
                db: 0,
                user,
                names: None,
            },
            worker,
            sticky: None,
            closing: false,
            final_error: None,
            new_limits: None,
            blocked_inbuf: false,
        },
    };
    if let Err(e) = session.run(&stream).await {
        tracing::debug!(peer = %peer, error = %e, "client connection ended with an error");
    }
    session.core.link.close();
}

impl Session {
    async fn run(&mut self, stream: &TcpStream) -> io::Result<()> {
        loop {
            self.process_inbuf();
            let core = &mut self.core;
            if core.link.inflight() == 0
                && let Some(line) = core.final_error.take()
            {
                encode::error(&mut core.link.out(), &line);
            }
            core.flush(stream)?;
            let owed = core.link.inflight() > 0 || core.link.out_len() > 0;
            if core.closing && !owed {
                return Ok(());
            }
            if core.blocked_inbuf && !owed && !core.backpressured() {
                // Held back only by output that has just been written out: nothing else
                // will wake the session, so go on with the buffered requests now.
                continue;
            }
            let want_read = !core.closing && !core.backpressured() && !self.blocked_on_barrier();
            let want_write = self.core.link.out_len() > 0;
            let link = &self.core.link;
            // Polled by hand rather than with select! over readiness futures: an idle
            // session then waits with no sub-futures stored, which keeps its task small.
            let event = std::future::poll_fn(|cx| {
                if link.poll_delivered(cx) {
                    return Poll::Ready(Ok(Event::Delivered));
                }
                if want_read && let Poll::Ready(r) = stream.poll_read_ready(cx) {
                    return Poll::Ready(r.map(|()| Event::Readable));
                }
                if want_write && let Poll::Ready(r) = stream.poll_write_ready(cx) {
                    return Poll::Ready(r.map(|()| Event::Writable));
                }
                Poll::Pending
            })
            .await?;
            if event == Event::Readable {
                self.read(stream)?;
            }
        }
    }

    /// True while a complete request waits in the input buffer for earlier replies: more
    /// input would only queue behind it, so reading stops until it runs.
    fn blocked_on_barrier(&self) -> bool {
        self.core.blocked_inbuf && !self.inbuf.is_empty()
    }

    fn read(&mut self, stream: &TcpStream) -> io::Result<()> {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            match stream.try_read(&mut scratch[..]) {
                Ok(0) => {
                    // Half-closed: answer what was sent, then close.
                    self.core.closing = true;
                    Ok(())
                }
                Ok(n) => {
                    crate::readiness::after_read(stream, n, scratch.len());
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
        while !self.core.closing && pos < buf.len() {
            if let Some(limits) = self.core.new_limits.take() {
                self.parser.set_limits(limits);
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
            match self.core.handle(&request) {
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
        pos
    }
}

impl Core {
    /// True while the client has as much in flight or unread as it may.
    fn backpressured(&self) -> bool {
        self.link.inflight() >= self.worker.max_inflight
            || self.link.out_len() >= self.worker.max_output_bytes
    }

    /// Writes as much pending output as the socket takes now.
    fn flush(&mut self, stream: &TcpStream) -> io::Result<()> {
        let mut out = self.link.out();
        while !out.is_empty() {
            match stream.try_write(&out) {
                Ok(n) => out.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        if out.capacity() > KEEP_OUTBUF {
            *out = BytesMut::new();
        }
        Ok(())
    }

    fn handle(&mut self, request: &moat_protocol::Request<'_>) -> Step {
        let facts = self.worker.backend.facts();
        let action = classify::classify(&self.state, &facts, request);
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
            Action::Local(cmd) => self.local(cmd, request, &facts),
        }
    }

    fn forward(&mut self, request: &moat_protocol::Request<'_>) -> Step {
        let conn = match &self.sticky {
            Some(conn) if self.link.inflight() > 0 => conn.clone(),
            _ => match self.worker.backend.pick(self.state.db) {
                Ok(conn) => conn,
                Err(_) => {
                    encode::error(
                        &mut self.link.out(),
                        "ERR moat: backend unavailable (reconnecting)",
                    );
                    return Step::Done;
                }
            },
        };
        if conn.pending_len() >= self.worker.max_queue {
            if self.link.inflight() > 0 {
                return Step::Blocked;
            }
            encode::error(
                &mut self.link.out(),
                format!(
                    "ERR moat: backend queue full (limit {} requests)",
                    self.worker.max_queue
                ),
            );
            return Step::Done;
        }
        conn.enqueue(&self.link, request, self.state.db);
        self.sticky = Some(conn);
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
    /// unnoticed (it was 1,056 bytes before sessions waited through a hand-written poll).
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
            let ctx = Rc::new(WorkerCtx {
                backend: Backend::new(Settings::from_config(&config, 0), 1),
                users: Arc::new(crate::auth::Users::from_config(&[])),
                limits: moat_protocol::Limits::default(),
                max_inflight: 1,
                max_output_bytes: 1,
                max_queue: 1,
                listen: addr,
            });
            let session = super::serve(stream, addr, ctx);
            let size = std::mem::size_of_val(&session);
            assert!(size <= 640, "a session's future grew to {size} bytes");
        });
    }
}
