//! The primary moat follows, shared by the follower thread (which sets it) and every
//! worker (which connects to it and watches it change).

use std::net::SocketAddr;

use tokio::sync::{Notify, watch};

/// Where the primary is, as last verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Target {
    /// None until the Sentinels named a primary that confirmed its role, and again after the
    /// one in use said it is no primary any more.
    pub(crate) addr: Option<SocketAddr>,
    /// Counts changes of `addr`: a connection remembers the generation it was opened under.
    pub(crate) generation: u64,
}

/// The followed primary: its address, and a way for workers to say they doubt it.
#[derive(Debug)]
pub(crate) struct Primary {
    target: watch::Sender<Target>,
    /// Signalled by a worker that met evidence the primary moved (a `READONLY` reply, a
    /// new connection whose `ROLE` is not master): the follower asks the Sentinels at once.
    doubt: Notify,
    /// The name the Sentinels know it by, for messages.
    pub(crate) master_name: String,
}

impl Primary {
    /// No primary known yet.
    pub(crate) fn new(master_name: String) -> Self {
        Self {
            target: watch::Sender::new(Target {
                addr: None,
                generation: 0,
            }),
            doubt: Notify::new(),
            master_name,
        }
    }

    /// The address and generation now.
    pub(crate) fn current(&self) -> Target {
        *self.target.borrow()
    }

    /// Sets the address; returns whether it changed (the generation then moved on).
    pub(crate) fn set(&self, addr: Option<SocketAddr>) -> bool {
        self.target.send_if_modified(|t| {
            if t.addr == addr {
                return false;
            }
            t.addr = addr;
            t.generation += 1;
            true
        })
    }

    /// Resolves once the generation is no longer `generation`.
    pub(crate) async fn moved_from(&self, generation: u64) {
        let mut rx = self.target.subscribe();
        // The sender lives as long as `self`: an error cannot happen while we are borrowed.
        let _ = rx.wait_for(|t| t.generation != generation).await;
    }

    /// A worker doubts the primary (see `doubt`).
    pub(crate) fn doubt(&self) {
        self.doubt.notify_one();
    }

    /// Resolves at the next doubt (or at once for one raised since the last wait).
    pub(crate) async fn doubted(&self) {
        self.doubt.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generation_moves_only_with_the_address() {
        let p = Primary::new("m".into());
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        assert_eq!(p.current().generation, 0);
        assert!(p.set(Some(a)));
        assert!(!p.set(Some(a)), "the same address is no switch");
        assert!(p.set(Some(b)));
        assert!(p.set(None));
        assert_eq!(
            p.current(),
            Target {
                addr: None,
                generation: 3
            }
        );
    }
}
