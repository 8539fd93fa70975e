//! The bounded backlog: commands that wait for a connection (while all are busy, or while
//! the client reconnects) queue here, each for at most its own timeout, and once the queue
//! is full a new command fails at once with [`ClientError::BacklogFull`]. StackExchange.Redis
//! bounds its backlog only by each command's timeout, and its docs warn of the
//! "spiral of death" that follows; a fixed bound is what prevents it.

use tokio::sync::{Semaphore, SemaphorePermit};

use crate::error::ClientError;

/// Admission to the queue in front of the pool.
#[derive(Debug)]
pub(crate) struct Backlog {
    places: Semaphore,
    capacity: usize,
}

impl Backlog {
    /// Room for `running` commands on connections plus `waiting` in the queue.
    pub(crate) fn new(running: usize, waiting: usize) -> Self {
        Self {
            places: Semaphore::new(running + waiting),
            capacity: waiting,
        }
    }

    /// A place for one command, held until it finishes; never waits.
    pub(crate) fn enter(&self) -> Result<SemaphorePermit<'_>, ClientError> {
        self.places
            .try_acquire()
            .map_err(|_| ClientError::BacklogFull {
                capacity: self.capacity,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_is_bounded() {
        let b = Backlog::new(2, 3);
        let held: Vec<_> = (0..5).map(|_| b.enter()).collect();
        assert!(held.iter().all(Result::is_ok));
        assert!(matches!(
            b.enter(),
            Err(ClientError::BacklogFull { capacity: 3 })
        ));
        drop(held);
        assert!(b.enter().is_ok());
    }
}
