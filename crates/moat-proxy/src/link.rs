//! The meeting point between a client session and the backend connections serving it.
//!
//! Backend readers append replies to the client's output buffer in the order its requests
//! were queued; the session task owns the socket and writes the buffer out. Everything lives
//! on one worker thread, so `Rc` and `Cell` are enough.

use std::cell::{Cell, RefCell};

use bytes::BytesMut;
use tokio::sync::Notify;

/// Output and bookkeeping one session shares with the backend connections.
#[derive(Debug, Default)]
pub(crate) struct ClientLink {
    /// Reply bytes not yet written to the client, in request order.
    out: RefCell<BytesMut>,
    /// Requests forwarded and not yet answered.
    inflight: Cell<usize>,
    /// Set when the session ended: late replies are dropped.
    closed: Cell<bool>,
    /// Set while a wake-up is pending, so a burst of replies wakes the session once.
    woken: Cell<bool>,
    notify: Notify,
}

impl ClientLink {
    /// Counts a request queued on a backend connection.
    pub(crate) fn request_queued(&self) {
        self.inflight.set(self.inflight.get() + 1);
    }

    /// Delivers the reply to this client's oldest unanswered request.
    pub(crate) fn deliver(&self, reply: &[u8]) {
        self.inflight.set(self.inflight.get().saturating_sub(1));
        if !self.closed.get() {
            self.out.borrow_mut().extend_from_slice(reply);
        }
        self.wake();
    }

    /// Answers the oldest unanswered request with a moat error line.
    pub(crate) fn deliver_error(&self, line: &str) {
        self.inflight.set(self.inflight.get().saturating_sub(1));
        if !self.closed.get() {
            moat_protocol::encode::error(&mut self.out.borrow_mut(), line);
        }
        self.wake();
    }

    fn wake(&self) {
        if !self.woken.replace(true) {
            self.notify.notify_one();
        }
    }

    /// Waits until a backend connection delivered something.
    pub(crate) async fn delivered(&self) {
        self.notify.notified().await;
        self.woken.set(false);
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
    fn replies_accumulate_in_order_and_count_down() {
        let link = ClientLink::default();
        link.request_queued();
        link.request_queued();
        link.deliver(b"+OK\r\n");
        link.deliver_error("ERR moat: backend connection lost");
        assert_eq!(link.inflight(), 0);
        assert_eq!(
            &link.out()[..],
            b"+OK\r\n-ERR moat: backend connection lost\r\n"
        );
    }

    #[test]
    fn closed_links_drop_late_replies() {
        let link = ClientLink::default();
        link.request_queued();
        link.close();
        link.deliver(b"$1\r\nx\r\n");
        assert_eq!(link.out_len(), 0);
        assert_eq!(link.inflight(), 0);
    }
}
