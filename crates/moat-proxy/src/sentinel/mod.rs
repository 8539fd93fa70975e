//! Sentinel-managed primaries (`backend.sentinels`, `backend.master_name`): moat asks the
//! Sentinels which server is the primary, checks that server's own `ROLE` before using it,
//! and follows failovers.
//!
//! - `primary`: the address every worker connects to, shared, with a generation that counts
//!   switches (connections opened under an older one move to the new primary).
//! - `answer`: reading the Sentinels' and the servers' replies (pure).
//! - `follow`: the thread that asks, verifies, listens for `+switch-master` and re-asks
//!   periodically, with backoff while the Sentinels are unreachable. During a failover it
//!   moves to the replica being promoted as soon as that server's own `ROLE` says master,
//!   before the Sentinels name it, so fewer writes go to the old primary and are lost.
//!
//! A Sentinel is trusted only as far as the server it names agrees: an address whose `ROLE`
//! is not `master` is refused, so a stale or lying Sentinel cannot send clients to a replica.

mod answer;
mod follow;
mod primary;

pub(crate) use follow::start;
pub(crate) use primary::Primary;

/// The line a client gets for a request still owed by the old primary when moat moved to
/// the new one (Sentinel failover): Redis may or may not have run it.
pub(crate) const SWITCHED: &str = "ERR moat: the primary changed (Sentinel failover) before the reply; the request may or may not have run";

/// For a `ROLE` reply on a backend connection: what the server is when it is not the
/// primary (none: it is, or it would not say).
pub(crate) fn role_of_reply(reply: &moat_protocol::Value) -> Option<String> {
    match answer::role(reply) {
        answer::Role::Other(role) => Some(role),
        answer::Role::Master | answer::Role::Unknown(_) => None,
    }
}
