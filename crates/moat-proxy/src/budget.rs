//! A worker's memory budget for buffered client data (unsent replies, partial requests).
//! When the worker holds more than its budget, the clients holding more than their fair
//! share are shed first, so one greedy client cannot starve the rest.

use std::cell::Cell;

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

#[cfg(test)]
mod tests {
    use super::*;

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
