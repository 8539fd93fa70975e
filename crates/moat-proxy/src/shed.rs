//! Shedding under pressure: above the guard's high-water mark, each new admission closes
//! the oldest connection of this worker that never sent a command (a slowloris hoard goes
//! before any client that is actually talking).

use std::collections::VecDeque;
use std::rc::{Rc, Weak};

use crate::link::ClientLink;

/// This worker's connections in accept order, as weak links; entries that ended or sent a
/// command are dropped as they reach the front, so the queue only spans connections
/// accepted since the oldest silent one (bounded by the handshake deadline).
#[derive(Debug, Default)]
pub(crate) struct Unhandshaken {
    queue: VecDeque<Weak<ClientLink>>,
}

impl Unhandshaken {
    pub(crate) fn push(&mut self, link: &Rc<ClientLink>) {
        self.trim();
        self.queue.push_back(Rc::downgrade(link));
    }

    /// Closes the oldest connection that has not sent a command; false if there is none.
    pub(crate) fn shed_oldest(&mut self) -> bool {
        self.trim();
        match self.queue.pop_front().and_then(|w| w.upgrade()) {
            Some(link) => {
                link.evict();
                true
            }
            None => false,
        }
    }

    fn trim(&mut self) {
        while let Some(front) = self.queue.front() {
            match front.upgrade() {
                Some(link) if !link.handshaken() => break,
                _ => {
                    self.queue.pop_front();
                }
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_silent_connection_goes_first() {
        let mut q = Unhandshaken::default();
        let talking = Rc::new(ClientLink::default());
        let silent_old = Rc::new(ClientLink::default());
        let silent_new = Rc::new(ClientLink::default());
        q.push(&talking);
        q.push(&silent_old);
        q.push(&silent_new);
        talking.mark_handshaken();
        assert!(q.shed_oldest());
        assert!(silent_old.evicted() && !silent_new.evicted() && !talking.evicted());
        drop(silent_new);
        assert!(!q.shed_oldest(), "nothing silent is left");
        assert_eq!(q.len(), 0);
    }
}
