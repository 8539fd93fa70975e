//! A worker's memory budget for buffered client data (unsent replies, partial requests).
//! When the worker holds more than its budget, the clients holding more than their fair
//! share are shed first, so one greedy client cannot starve the rest.

use std::cell::Cell;

/// Bytes buffered by a worker's sessions, against a limit.
#[derive(Debug)]
pub(crate) struct Budget {
    limit: Cell<usize>,
    used: Cell<usize>,
    sessions: Cell<usize>,
}

impl Budget {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            limit: Cell::new(limit),
            used: Cell::new(0),
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
    pub(crate) fn leave(&self, held: usize) {
        self.sessions.set(self.sessions.get().saturating_sub(1));
        self.used.set(self.used.get().saturating_sub(held));
    }

    /// Moves a session's count from `before` to `now` bytes.
    pub(crate) fn update(&self, before: usize, now: usize) {
        self.used
            .set((self.used.get() + now).saturating_sub(before));
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
        b.update(0, 900);
        assert!(!b.should_shed(900), "under budget nobody is shed");
        b.update(0, 200);
        assert!(b.should_shed(900), "over budget, the greedy one goes");
        assert!(!b.should_shed(200), "a client within its share stays");
        b.leave(900);
        assert!(!b.should_shed(200));
    }
}
