//! Redis Cluster's per-connection modes, emulated per session so shared backend connections
//! stay clean.
//!
//! - `ASKING` is a one-shot flag for the connection's next command. On a shared connection
//!   another client's command could consume it (and read a key of a migrating slot that it
//!   should have been redirected for). The session answers `+OK` itself and remembers it;
//!   its next forwarded command goes out with moat's own `ASKING` right in front of it, in the
//!   same write to the same connection, so no other request can come between them. Redis's
//!   reply to that `ASKING` is not the client's, unless it is an error: then it is the
//!   client's reply to the command, whose own reply is dropped (see `backend::conn`).
//! - `READONLY` (reads served by a replica node) lasts until `READWRITE` or `RESET`. It is
//!   emulated like `SELECT`: a per-session mode, with shared connections grouped by it and
//!   moat inserting `READONLY`/`READWRITE` when a connection changes mode. Pinning such
//!   clients to dedicated connections would also be correct, but would spend a lease per
//!   replica-reading client for as long as it lives, and the pinned pool is small on purpose.
//!
//! When the node is down, cluster clients are disconnected with `CLUSTERDOWN` (see
//! [`node_down`]) so they look for the node's replacement.
//!
//! A server not in cluster mode refuses all three; the session answers with Redis's own
//! error instead of sending them, so a shared connection never sees one refused.

use super::{Core, Step};
use crate::backend::{BackendFacts, PickError};
use crate::command::Local;
use moat_protocol::encode;

/// When moat's node cannot be reached, in cluster mode: the line for the client, which is
/// then disconnected. Cluster clients refresh their slot map on a lost connection or a
/// `CLUSTERDOWN` (not on an ordinary error), and so find the replica promoted in the node's
/// place, behind its own moat; answered with a plain `-ERR` on an open connection, they would
/// keep sending that slot's requests here.
pub(super) fn node_down(facts: &BackendFacts, e: PickError) -> Option<String> {
    match e {
        PickError::Unavailable | PickError::CircuitOpen(_) if facts.cluster => {
            let line = e.line();
            let why = line.strip_prefix("ERR ").unwrap_or(&line);
            Some(format!("CLUSTERDOWN {why}"))
        }
        _ => None,
    }
}

/// What Redis answers ASKING, READONLY and READWRITE with when cluster mode is off.
const NOT_CLUSTER: &str = "ERR This instance has cluster support disabled";

impl Core {
    /// ASKING, READONLY or READWRITE (the session has nothing in flight: replies stay in order).
    pub(super) fn cluster_mode(&mut self, cmd: Local, facts: &BackendFacts) {
        if !facts.cluster {
            self.error(NOT_CLUSTER);
            return;
        }
        match cmd {
            Local::Asking => self.state.asking = true,
            Local::ReadOnly => self.state.readonly = true,
            Local::ReadWrite => self.state.readonly = false,
            _ => {}
        }
        encode::simple(&mut self.link.out(), "OK");
    }

    /// After a command was handled: Redis clears the ASKING flag once any command other
    /// than ASKING itself has run (a forwarded command has taken it with it by now).
    pub(super) fn asking_used(&mut self, cmd: Option<Local>, step: Step) {
        if self.state.asking && step != Step::Blocked && cmd != Some(Local::Asking) {
            self.state.asking = false;
        }
    }
}
