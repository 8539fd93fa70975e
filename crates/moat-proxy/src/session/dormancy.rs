//! A quiet session going dormant, and coming back (see [`crate::dormant`]).
//!
//! A session may go dormant only when nothing is in progress: nothing owed, unread or
//! buffered, no dedicated connection, no wait, no CLIENT PAUSE. Everything it drops is then
//! at its starting value, so [`Kept`] holds only what differs: who the client is, its place
//! in the guard's and the worker's counts, and what it has done.

use std::rc::Rc;

use moat_guard::Ticket;

use super::{ClientState, Core, Session, Wait};
use crate::dormant::{DormantClient, Rest};
use crate::link::ClientLink;
use crate::net::Stream;
use crate::stats::worker::ClientClass;
use crate::worker::WorkerCtx;

/// What a dormant session keeps.
#[derive(Debug)]
pub(crate) struct Kept {
    state: ClientState,
    link: Rc<ClientLink>,
    ticket: Ticket,
    commands: u64,
    reported_success: bool,
    counted_as: Option<ClientClass>,
    budgeted: crate::budget::Held,
}

impl Kept {
    /// The dormant session's link (its directory card, and the slot that wakes it).
    pub(crate) fn link(&self) -> &ClientLink {
        &self.link
    }
}

impl Core {
    /// Nothing is in progress: the session could be dropped and rebuilt from [`Kept`].
    fn quiescent(&self) -> bool {
        self.pin.is_none()
            && self.owed() == 0
            && self.link.out_len() == 0
            && self.link.inflight_bytes() == 0
            && !self.closing
            && self.final_error.is_none()
            && !self.blocked_inbuf
            && matches!(self.wait, Wait::None)
            && self.recheck.is_none()
            && !self.pool_wait
            && self.partial.is_none()
            && self.asking.is_none()
            && self
                .output
                .as_deref()
                .is_none_or(|w| w.budgeted == 0 && w.over_soft_since.is_none())
            && !self.link.card.parked()
            && !self.link.card.killed()
            && !self.link.evicted()
            && !self.worker.draining.get()
    }
}

impl Session {
    /// At the wait: records whether the session is quiet for the dormancy sweep, and says
    /// whether it was asked to go dormant and may.
    pub(super) fn rest(&self, stream: &Stream, want_read: bool, want_write: bool) -> bool {
        let core = &self.core;
        let quiet = want_read
            && !want_write
            && self.inbuf.is_empty()
            && stream.may_go_dormant()
            && core.worker.dormant.enabled()
            && core.quiescent();
        let link = &core.link;
        match (quiet, link.rest()) {
            (false, _) => link.set_rest(Rest::Busy),
            (true, Rest::Asked) => return !link.woken(),
            (true, Rest::Busy) => link.set_rest(Rest::Quiet),
            (true, _) => {}
        }
        false
    }

    /// The session as a dormant client on `stream`; if the stream cannot leave tokio, it is
    /// gone, and the session ends.
    pub(super) fn into_dormant(self, stream: Stream) -> Option<DormantClient> {
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "socket could not leave tokio");
                self.finish();
                return None;
            }
        };
        let wake_at = self.core.deadline();
        let core = self.core;
        // Nothing is unread (quiescent): the buffer's memory goes back.
        core.link.release_output();
        let kept = Kept {
            state: core.state,
            link: core.link,
            ticket: core.ticket,
            commands: core.commands,
            reported_success: core.reported_success,
            counted_as: core.counted_as.into_inner(),
            budgeted: core.budgeted,
        };
        Some(DormantClient::new(stream, kept, wake_at))
    }

    /// A session resumed from what it kept.
    pub(super) fn from_kept(worker: Rc<WorkerCtx>, kept: Kept) -> Self {
        let mut session = Session::new(worker, kept.state, kept.link, kept.ticket);
        let core = &mut session.core;
        core.commands = kept.commands;
        core.reported_success = kept.reported_success;
        core.counted_as.set(kept.counted_as);
        core.budgeted = kept.budgeted;
        session
    }
}

/// Resumes a dormant client as a session task (or ends it, if its socket cannot go back to
/// tokio).
pub(crate) fn resume(worker: Rc<WorkerCtx>, client: DormantClient) {
    let (stream, kept) = client.into_parts();
    let session = Session::from_kept(worker, kept);
    match stream {
        Ok(stream) => {
            tokio::task::spawn_local(super::drive(session, stream.into()));
        }
        Err(e) => {
            tracing::debug!(error = %e, "dormant client could not resume");
            session.finish();
        }
    }
}
