//! The pinned pool: dedicated backend connections that one session holds while it is in a
//! stateful mode, with caps on the total, per client address and per user.

mod limits;
mod pool;
mod state;

pub(crate) use limits::{LeaseLimits, LeaseTicket};
pub(crate) use pool::{LeaseError, PinnedConn, PinnedPool};
pub(crate) use state::{Disposition, EXECABORT, PinState, SubKind, Tag};
