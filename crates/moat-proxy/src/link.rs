//! The meeting point between a client session and the backend connections serving it.
//!
//! Backend readers append replies to the client's output buffer in the order its requests
//! were queued; the session task owns the socket and writes the buffer out. Everything lives
//! on one worker thread, so `Rc` and `Cell` are enough.

use std::cell::{Cell, RefCell};
use std::task::{Context, Waker};

use bytes::BytesMut;

/// What a client's first reply is assumed to weigh until one is seen: with the default
/// 1 MiB `limits.output_window`, 16 requests go out before any reply is back, enough for
/// the pipelines real clients send, while a client pipelining GETs of large values it never
/// reads gets 16 of them, not a thousand.
pub(crate) const FIRST_REPLY_ESTIMATE: u32 = 64 << 10;

/// What a client has done so far, which decides whether shedding may close it. Only moves
/// forward: silent, then keep-alive-only, then real.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    /// No command yet.
    #[default]
    Silent,
    /// Only commands moat answers itself or connection setup (PING, ECHO, AUTH, HELLO,
    /// SELECT, CLIENT SETNAME...), or ones refused: none reached Redis's data.
    KeepAlive,
    /// Sent at least one command forwarded to Redis: never shed.
    Real,
}

/// Output and bookkeeping one session shares with the backend connections.
#[derive(Debug, Default)]
pub(crate) struct ClientLink {
    /// Reply bytes not yet written to the client, in request order.
    out: RefCell<BytesMut>,
    /// Requests forwarded and not yet answered.
    inflight: Cell<usize>,
    /// Their size in bytes (queued on a backend connection or on the wire), so a client
    /// pipelining large requests to a stalled Redis is bounded by bytes, not only by count.
    inflight_bytes: Cell<usize>,
    /// The size expected of this client's next reply (0: nothing seen yet, see
    /// [`ClientLink::reply_estimate`]): a maximum that decays, so a client asking for large
    /// values cannot get many of them in flight at once.
    reply_estimate: Cell<u32>,
    /// Set when the session ended: late replies are dropped.
    closed: Cell<bool>,
    /// Set when something was delivered since the session last looked.
    woken: Cell<bool>,
    /// What the client has done so far, for shedding (see [`Kind`]).
    kind: Cell<Kind>,
    /// The worker asked the session to close (shedding).
    evicted: Cell<bool>,
    /// Where the session stands for the dormancy sweep.
    rest: Cell<crate::dormant::Rest>,
    /// The session task, while it waits. A plain waker slot rather than a `Notify`: it
    /// keeps each idle session's future small and needs no lock.
    waker: RefCell<Option<Waker>>,
    /// What the directory of sessions knows of this one (CLIENT LIST, KILL, UNBLOCK,
    /// PAUSE), kept current by the session.
    pub(crate) card: crate::clients::Card,
}

impl ClientLink {
    /// Counts a request of `bytes` queued on a backend connection.
    pub(crate) fn request_queued(&self, bytes: usize) {
        self.inflight.set(self.inflight.get() + 1);
        self.inflight_bytes.set(self.inflight_bytes.get() + bytes);
    }

    fn answered(&self, bytes: usize) {
        self.inflight.set(self.inflight.get().saturating_sub(1));
        self.inflight_bytes
            .set(self.inflight_bytes.get().saturating_sub(bytes));
    }

    /// Bytes of requests forwarded and not yet answered.
    pub(crate) fn inflight_bytes(&self) -> usize {
        self.inflight_bytes.get()
    }

    /// Delivers the reply to this client's oldest unanswered request (of `bytes`).
    pub(crate) fn deliver(&self, reply: &[u8], bytes: usize) {
        self.answered(bytes);
        self.note_reply(reply.len());
        if !self.closed.get() {
            self.out.borrow_mut().extend_from_slice(reply);
        }
        self.wake();
    }

    /// Answers the oldest unanswered request (of `bytes`) with a moat error line.
    pub(crate) fn deliver_error(&self, line: &str, bytes: usize) {
        self.answered(bytes);
        if !self.closed.get() {
            moat_protocol::encode::error(&mut self.out.borrow_mut(), line);
        }
        self.wake();
    }

    /// Wakes the session task so it looks at its state again.
    pub(crate) fn wake(&self) {
        self.woken.set(true);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    /// True once something was delivered since the last call; otherwise registers the
    /// session's task to be woken when something is.
    pub(crate) fn poll_delivered(&self, cx: &mut Context<'_>) -> bool {
        if self.woken.replace(false) {
            return true;
        }
        let mut slot = self.waker.borrow_mut();
        match &*slot {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => *slot = Some(cx.waker().clone()),
        }
        false
    }

    /// What the client has done so far.
    pub(crate) fn kind(&self) -> Kind {
        self.kind.get()
    }

    /// Records what the client has done (see [`Kind`]: it only moves forward).
    pub(crate) fn set_kind(&self, kind: Kind) {
        self.kind.set(kind);
    }

    /// Whether the session has ended.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.get()
    }

    /// Asks the session to close (it is woken to notice).
    pub(crate) fn evict(&self) {
        self.evicted.set(true);
        self.wake();
    }

    pub(crate) fn evicted(&self) -> bool {
        self.evicted.get()
    }

    /// CLIENT KILL: the session ends as soon as it notices (it is woken to), dropping
    /// replies not yet written, as Redis frees a killed client.
    pub(crate) fn kill(&self) {
        self.card.mark_killed();
        self.wake();
    }

    /// What this client's next reply is expected to weigh: the largest of its recent
    /// replies, decaying by 1/16 with each smaller one; before any reply, a pessimistic
    /// [`FIRST_REPLY_ESTIMATE`].
    pub(crate) fn reply_estimate(&self) -> usize {
        match self.reply_estimate.get() {
            0 => FIRST_REPLY_ESTIMATE as usize,
            e => e as usize,
        }
    }

    fn note_reply(&self, len: usize) {
        let current = self.reply_estimate() as u32;
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        self.reply_estimate
            .set(len.max(current - current / 16).max(1));
    }

    /// Unread replies plus the replies expected for the requests in flight.
    pub(crate) fn expected_output(&self) -> usize {
        self.out_len()
            .saturating_add(self.inflight().saturating_mul(self.reply_estimate()))
    }

    /// Requests forwarded and not yet answered.
    pub(crate) fn inflight(&self) -> usize {
        self.inflight.get()
    }

    /// The output buffer, for the session to append local replies and write out.
    pub(crate) fn out(&self) -> std::cell::RefMut<'_, BytesMut> {
        self.out.borrow_mut()
    }

    /// Bytes waiting to be written to the client.
    pub(crate) fn out_len(&self) -> usize {
        self.out.borrow().len()
    }

    /// True if something woke the session since it last looked (the flag stays set).
    pub(crate) fn woken(&self) -> bool {
        self.woken.get()
    }

    /// Puts `waker` in the slot [`ClientLink::wake`] wakes (a dormant client's watcher).
    pub(crate) fn set_waker(&self, waker: Waker) {
        *self.waker.borrow_mut() = Some(waker);
    }

    /// Where the session stands for the dormancy sweep.
    pub(crate) fn rest(&self) -> crate::dormant::Rest {
        self.rest.get()
    }

    /// Records where the session stands for the dormancy sweep.
    pub(crate) fn set_rest(&self, rest: crate::dormant::Rest) {
        self.rest.set(rest);
    }

    /// Gives back the output buffer's memory (a session going dormant has nothing unread).
    pub(crate) fn release_output(&self) {
        if self.out.borrow().is_empty() {
            *self.out.borrow_mut() = BytesMut::new();
        }
    }

    /// Marks the session gone; replies still in flight are discarded on arrival.
    pub(crate) fn close(&self) {
        self.closed.set(true);
        *self.out.borrow_mut() = BytesMut::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reply_estimate_follows_large_replies_and_decays_slowly() {
        let link = ClientLink::default();
        assert_eq!(link.reply_estimate(), FIRST_REPLY_ESTIMATE as usize);
        // Small replies bring it down within a few dozen.
        for _ in 0..64 {
            link.request_queued(1);
            link.deliver(b"+OK\r\n", 1);
        }
        assert!(link.reply_estimate() < 2048, "{}", link.reply_estimate());
        // One large reply sets it at once; a few small ones barely move it.
        let big = vec![b'x'; 100_000];
        link.request_queued(1);
        link.deliver(&big, 1);
        assert_eq!(link.reply_estimate(), 100_000);
        for _ in 0..4 {
            link.request_queued(1);
            link.deliver(b"+OK\r\n", 1);
        }
        assert!(link.reply_estimate() > 75_000);
        // What a client may still get: its unread bytes plus the expected replies.
        link.request_queued(1);
        link.request_queued(1);
        assert_eq!(
            link.expected_output(),
            link.out_len() + 2 * link.reply_estimate()
        );
    }

    #[test]
    fn replies_accumulate_in_order_and_count_down() {
        let link = ClientLink::default();
        link.request_queued(10);
        link.request_queued(20);
        assert_eq!(link.inflight_bytes(), 30);
        link.deliver(b"+OK\r\n", 10);
        link.deliver_error("ERR moat: backend connection lost", 20);
        assert_eq!(link.inflight(), 0);
        assert_eq!(link.inflight_bytes(), 0);
        assert_eq!(
            &link.out()[..],
            b"+OK\r\n-ERR moat: backend connection lost\r\n"
        );
    }

    #[test]
    fn closed_links_drop_late_replies() {
        let link = ClientLink::default();
        link.request_queued(5);
        link.close();
        link.deliver(b"$1\r\nx\r\n", 5);
        assert_eq!(link.out_len(), 0);
        assert_eq!(link.inflight(), 0);
    }
}
