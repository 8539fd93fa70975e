//! A worker's memory budget for buffered client data (unsent replies, partial requests).
//! When the worker holds more than its budget, the clients holding more than their fair
//! share are shed first, so one greedy client cannot starve the rest.

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};

use crate::link::ClientLink;

/// What one session holds: unread reply bytes, and request bytes (partial, queued or in
/// flight). Each part saturates at 4 GiB, far above any configured limit; the same
/// saturated values are added and taken back, so the worker's totals stay exact.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Held {
    pub(crate) output: u32,
    pub(crate) requests: u32,
}

impl Held {
    pub(crate) fn new(output: usize, requests: usize) -> Self {
        Self {
            output: u32::try_from(output).unwrap_or(u32::MAX),
            requests: u32::try_from(requests).unwrap_or(u32::MAX),
        }
    }

    /// Both parts together.
    pub(crate) fn total(self) -> usize {
        self.output as usize + self.requests as usize
    }
}

/// Bytes buffered by a worker's sessions, against a limit.
#[derive(Debug)]
pub(crate) struct Budget {
    limit: Cell<usize>,
    used: Cell<usize>,
    /// Of `used`, unread replies (the rest is requests).
    output: Cell<usize>,
    sessions: Cell<usize>,
}

impl Budget {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            limit: Cell::new(limit),
            used: Cell::new(0),
            output: Cell::new(0),
            sessions: Cell::new(0),
        }
    }

    /// Changes the limit (a reload); sessions are measured against it from their next turn.
    pub(crate) fn set_limit(&self, limit: usize) {
        self.limit.set(limit);
    }

    /// A session started.
    pub(crate) fn join(&self) {
        self.sessions.set(self.sessions.get() + 1);
    }

    /// A session ended holding `held` bytes in the count.
    pub(crate) fn leave(&self, held: Held) {
        self.sessions.set(self.sessions.get().saturating_sub(1));
        self.update(held, Held::default());
    }

    /// Moves a session's count from `before` to `now`.
    pub(crate) fn update(&self, before: Held, now: Held) {
        self.used
            .set((self.used.get() + now.total()).saturating_sub(before.total()));
        self.output
            .set((self.output.get() + now.output as usize).saturating_sub(before.output as usize));
    }

    /// Bytes held now: unread replies, and requests.
    pub(crate) fn held(&self) -> (usize, usize) {
        let output = self.output.get();
        (output, self.used.get().saturating_sub(output))
    }

    /// Bytes counted and sessions joined: both zero once every session has ended.
    #[cfg(feature = "harness")]
    pub(crate) fn counts(&self) -> (usize, usize) {
        (self.used.get(), self.sessions.get())
    }

    /// Whether a session holding `held` bytes should be shed: the worker is over its
    /// budget and this session holds more than an equal share of it.
    pub(crate) fn should_shed(&self, held: usize) -> bool {
        let limit = self.limit.get();
        self.used.get() > limit && held > limit / self.sessions.get().max(1)
    }
}

/// Unread replies held for untrusted clients, against `limits.output_budget`: when it is
/// full, the heaviest clients that are not reading go first, never one that reads.
#[derive(Debug)]
pub(crate) struct OutputBudget {
    limit: Cell<usize>,
    used: Cell<usize>,
    /// Sessions holding unread replies now (`used` is shared among them).
    holders: Cell<usize>,
    /// Sessions that went over the soft output limit, the only ones heavy enough to be
    /// shed: while the budget is full, [`OutputBudget::sweep`] wakes them to weigh
    /// themselves, since a client that does not read has nothing else to wake it.
    heavy: RefCell<Vec<Weak<ClientLink>>>,
}

impl OutputBudget {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            limit: Cell::new(limit),
            used: Cell::new(0),
            holders: Cell::new(0),
            heavy: RefCell::new(Vec::new()),
        }
    }

    /// Notes a session that went over the soft output limit.
    pub(crate) fn note_heavy(&self, link: &Rc<ClientLink>) {
        self.heavy.borrow_mut().push(Rc::downgrade(link));
    }

    /// Forgets sessions that ended or hold less than `soft_limit` unread bytes, and while
    /// the budget is full, wakes the others to weigh themselves against it.
    pub(crate) fn sweep(&self, soft_limit: usize) {
        let full = self.used.get() > self.limit.get();
        self.heavy.borrow_mut().retain(|w| match w.upgrade() {
            Some(link) if link.out_len() >= soft_limit => {
                if full {
                    link.wake();
                }
                true
            }
            _ => false,
        });
    }

    /// Changes the limit (a reload).
    pub(crate) fn set_limit(&self, limit: usize) {
        self.limit.set(limit);
    }

    /// Moves a session's unread bytes from `before` to `now` (0 when it ends).
    pub(crate) fn update(&self, before: usize, now: usize) {
        self.used
            .set((self.used.get() + now).saturating_sub(before));
        match (before > 0, now > 0) {
            (false, true) => self.holders.set(self.holders.get() + 1),
            (true, false) => self.holders.set(self.holders.get().saturating_sub(1)),
            _ => {}
        }
    }

    /// Whether a session holding `held` unread bytes should be disconnected: the budget is
    /// full, the session is not reading, and it holds at least the average of the holders
    /// (so the heaviest go first, and shedding stops once the budget has room again).
    pub(crate) fn should_shed(&self, held: usize, reading: bool) -> bool {
        let used = self.used.get();
        !reading
            && held > 0
            && used > self.limit.get()
            && held.saturating_mul(self.holders.get()) >= used
    }

    /// Bytes held and holders: both zero once every session has ended.
    #[cfg(feature = "harness")]
    pub(crate) fn counts(&self) -> (usize, usize) {
        (self.used.get(), self.holders.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heaviest_non_readers_go_first_and_readers_never() {
        let b = OutputBudget::new(1000);
        b.update(0, 600);
        b.update(0, 300);
        assert!(!b.should_shed(600, false), "under budget nobody goes");
        b.update(0, 200);
        // 1,100 held by 3: the average is 367.
        assert!(b.should_shed(600, false), "the heaviest non-reader goes");
        assert!(!b.should_shed(600, true), "a client that reads stays");
        assert!(!b.should_shed(300, false), "a light one stays");
        b.update(600, 0);
        assert!(!b.should_shed(300, false), "room again: shedding stops");
        b.update(300, 0);
        b.update(200, 0);
        assert_eq!((b.used.get(), b.holders.get()), (0, 0));
    }

    #[test]
    fn the_sweep_wakes_heavy_sessions_only_while_full_and_forgets_light_ones() {
        let b = OutputBudget::new(100);
        let heavy = Rc::new(ClientLink::default());
        let light = Rc::new(ClientLink::default());
        heavy.out().extend_from_slice(&[0; 200]);
        light.out().extend_from_slice(&[0; 10]);
        b.note_heavy(&heavy);
        b.note_heavy(&light);
        b.update(0, 210);
        let woken = |l: &ClientLink| {
            let waker = std::task::Waker::noop();
            l.poll_delivered(&mut std::task::Context::from_waker(waker))
        };
        b.sweep(50);
        assert!(woken(&heavy), "over budget: the heavy session is woken");
        assert!(!woken(&light));
        assert_eq!(b.heavy.borrow().len(), 1, "the light one is forgotten");
        b.update(210, 0);
        b.sweep(50);
        assert!(!woken(&heavy), "under budget: nobody is woken");
        drop(heavy);
        b.sweep(50);
        assert!(b.heavy.borrow().is_empty());
    }

    #[test]
    fn only_clients_over_their_share_are_shed_and_only_when_over_budget() {
        let b = Budget::new(1000);
        for _ in 0..4 {
            b.join();
        }
        let none = Held::default();
        b.update(none, Held::new(900, 0));
        assert!(!b.should_shed(900), "under budget nobody is shed");
        b.update(none, Held::new(100, 100));
        assert!(b.should_shed(900), "over budget, the greedy one goes");
        assert!(!b.should_shed(200), "a client within its share stays");
        assert_eq!(b.held(), (1000, 100));
        b.leave(Held::new(900, 0));
        assert!(!b.should_shed(200));
        assert_eq!(b.held(), (100, 100));
    }
}
