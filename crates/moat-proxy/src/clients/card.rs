//! What the directory knows of one session: a card in the session's [`ClientLink`], kept
//! current by the session itself, so that CLIENT LIST, KILL and UNBLOCK can be answered
//! without reaching into the session's task (its state is the task's own).
//!
//! The session writes it where its state changes: the command it runs (two bytes per
//! request), when the client last sent something, its database, protocol, user and names
//! (after the commands that change them), and a summary of its dedicated connection (after
//! each event while it holds one). Everything is `Cell`s on the worker's thread: no lock,
//! nothing shared across threads. Rarely set parts (names, a non-default user, the
//! dedicated connection) sit behind a `Box`, so an idle session's card stays small.
//!
//! [`ClientLink`]: crate::link::ClientLink

use std::cell::Cell;
use std::net::SocketAddr;
use std::time::Instant;

use crate::command::NO_COMMAND;

/// What never changes in a session: its id, addresses, file descriptor and start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Identity {
    /// Moat's client id (what CLIENT ID answers).
    pub(crate) id: u64,
    /// The client's address.
    pub(crate) peer: SocketAddr,
    /// Moat's address the client connected to.
    pub(crate) laddr: SocketAddr,
    /// The client socket's descriptor in moat's process (-1 without one).
    pub(crate) fd: i32,
    /// When the connection was accepted.
    pub(crate) created: Instant,
}

/// The state of a session's dedicated connection, as CLIENT LIST shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PinSummary {
    /// Channels subscribed to (SUBSCRIBE).
    pub(crate) channels: u32,
    /// Patterns subscribed to (PSUBSCRIBE).
    pub(crate) patterns: u32,
    /// Shard channels subscribed to (SSUBSCRIBE).
    pub(crate) shards: u32,
    /// Commands queued since MULTI (`None` outside a transaction).
    pub(crate) multi: Option<u32>,
    /// A blocking call waits for its reply.
    pub(crate) blocked: bool,
    /// CLIENT TRACKING is on.
    pub(crate) tracking: bool,
    /// In MONITOR mode.
    pub(crate) monitor: bool,
    /// The dedicated connection's own client id on Redis (for CLIENT UNBLOCK).
    pub(crate) redis_id: Option<u64>,
    /// The moat id tracking redirects to, if it does (CLIENT LIST's `redir=`).
    pub(crate) redirect: Option<u64>,
}

impl PinSummary {
    /// Subscribed to any channel, pattern or shard channel (Redis's `pubsub` type).
    pub(crate) fn subscribed(&self) -> bool {
        self.channels + self.patterns + self.shards > 0
    }
}

/// Names and a non-default user: absent for most sessions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Extras {
    /// The user, when not `default`.
    pub(crate) user: Option<Box<str>>,
    /// CLIENT SETNAME.
    pub(crate) name: Option<Box<[u8]>>,
    /// CLIENT SETINFO LIB-NAME.
    pub(crate) lib_name: Option<Box<[u8]>>,
    /// CLIENT SETINFO LIB-VER.
    pub(crate) lib_ver: Option<Box<[u8]>>,
}

impl Extras {
    fn is_empty(&self) -> bool {
        *self == Extras::default()
    }
}

/// The session's state a directory lookup needs.
pub(crate) struct Card {
    ident: Cell<Option<Identity>>,
    last_activity: Cell<Option<Instant>>,
    last_cmd: Cell<u16>,
    db: Cell<u32>,
    bits: Cell<u8>,
    extras: Cell<Option<Box<Extras>>>,
    pin: Cell<Option<Box<PinSummary>>>,
}

impl Default for Card {
    fn default() -> Self {
        Self {
            ident: Cell::new(None),
            last_activity: Cell::new(None),
            last_cmd: Cell::new(NO_COMMAND),
            db: Cell::new(0),
            bits: Cell::new(0),
            extras: Cell::new(None),
            pin: Cell::new(None),
        }
    }
}

impl std::fmt::Debug for Card {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Card")
            .field("ident", &self.ident.get())
            .field("last_cmd", &self.last_cmd.get())
            .field("db", &self.db.get())
            .field("bits", &self.bits.get())
            .field("pin", &self.pin())
            .finish_non_exhaustive()
    }
}

const RESP3: u8 = 1;
const NO_EVICT: u8 = 1 << 1;
const NO_TOUCH: u8 = 1 << 2;
const KILLED: u8 = 1 << 3;
const PARKED: u8 = 1 << 4;
const UNBLOCK_SENT: u8 = 1 << 5;
const REDIRECT_TARGET: u8 = 1 << 6;

impl Card {
    fn bit(&self, bit: u8) -> bool {
        self.bits.get() & bit != 0
    }

    fn set_bit(&self, bit: u8, on: bool) {
        let bits = self.bits.get();
        self.bits.set(if on { bits | bit } else { bits & !bit });
    }

    /// Fills in the session's identity when it starts.
    pub(crate) fn init(&self, ident: Identity) {
        self.ident.set(Some(ident));
        self.last_activity.set(Some(ident.created));
    }

    /// The session's identity (none before [`Card::init`]).
    pub(crate) fn identity(&self) -> Option<Identity> {
        self.ident.get()
    }

    /// Records that the client sent something at `now`.
    pub(crate) fn touch(&self, now: Instant) {
        self.last_activity.set(Some(now));
    }

    /// When the client last sent something (its start until then).
    pub(crate) fn last_activity(&self) -> Option<Instant> {
        self.last_activity.get()
    }

    /// Records the command the session is running ([`crate::command::CommandInfo::id`]).
    pub(crate) fn set_command(&self, id: u16) {
        self.last_cmd.set(id);
    }

    /// The id of the command the session last ran ([`NO_COMMAND`] before the first).
    pub(crate) fn command(&self) -> u16 {
        self.last_cmd.get()
    }

    /// Publishes the database and protocol.
    pub(crate) fn set_db_resp(&self, db: u32, resp3: bool) {
        self.db.set(db);
        self.set_bit(RESP3, resp3);
    }

    /// The session's database.
    pub(crate) fn db(&self) -> u32 {
        self.db.get()
    }

    /// The session speaks RESP3.
    pub(crate) fn resp3(&self) -> bool {
        self.bit(RESP3)
    }

    /// Publishes the user and names, replacing the stored ones only when they changed.
    pub(crate) fn set_extras(&self, extras: Extras) {
        let old = self.extras.take();
        let same = match &old {
            Some(old) => **old == extras,
            None => extras.is_empty(),
        };
        if same {
            self.extras.set(old);
        } else if !extras.is_empty() {
            self.extras.set(Some(Box::new(extras)));
        }
    }

    /// Runs `f` on the user and names (empty ones for most sessions).
    pub(crate) fn with_extras<R>(&self, f: impl FnOnce(&Extras) -> R) -> R {
        let extras = self.extras.take();
        let r = match &extras {
            Some(e) => f(e),
            None => f(&Extras::default()),
        };
        self.extras.set(extras);
        r
    }

    /// Publishes the dedicated connection's state (`None`: the session holds none).
    pub(crate) fn set_pin(&self, summary: Option<PinSummary>) {
        match (self.pin.take(), summary) {
            (_, None) => {}
            (Some(mut boxed), Some(s)) => {
                *boxed = s;
                self.pin.set(Some(boxed));
            }
            (None, Some(s)) => self.pin.set(Some(Box::new(s))),
        }
    }

    /// The dedicated connection's state, if the session holds one.
    pub(crate) fn pin(&self) -> Option<PinSummary> {
        let pin = self.pin.take();
        let copy = pin.as_deref().copied();
        self.pin.set(pin);
        copy
    }

    /// Whether the session holds a dedicated connection.
    pub(crate) fn has_pin(&self) -> bool {
        let pin = self.pin.take();
        let has = pin.is_some();
        self.pin.set(pin);
        has
    }

    /// CLIENT NO-EVICT.
    pub(crate) fn set_no_evict(&self, on: bool) {
        self.set_bit(NO_EVICT, on);
    }

    /// CLIENT NO-EVICT is on.
    pub(crate) fn no_evict(&self) -> bool {
        self.bit(NO_EVICT)
    }

    /// CLIENT NO-TOUCH.
    pub(crate) fn set_no_touch(&self, on: bool) {
        self.set_bit(NO_TOUCH, on);
    }

    /// CLIENT NO-TOUCH is on.
    pub(crate) fn no_touch(&self) -> bool {
        self.bit(NO_TOUCH)
    }

    /// Marks the session killed (CLIENT KILL); the session ends when it notices.
    pub(crate) fn mark_killed(&self) {
        self.set_bit(KILLED, true);
    }

    /// CLIENT KILL named this session.
    pub(crate) fn killed(&self) -> bool {
        self.bit(KILLED)
    }

    /// Marks the session held by a CLIENT PAUSE (or no longer).
    pub(crate) fn set_parked(&self, on: bool) {
        self.set_bit(PARKED, on);
    }

    /// The session's next request is held by CLIENT PAUSE.
    pub(crate) fn parked(&self) -> bool {
        self.bit(PARKED)
    }

    /// Marks that a CLIENT UNBLOCK was sent to Redis for this session's dedicated
    /// connection: that connection must not serve another lease (the UNBLOCK could reach
    /// Redis after the call ended and hit another client's call), so the lease closes it.
    pub(crate) fn set_unblock_sent(&self, on: bool) {
        self.set_bit(UNBLOCK_SENT, on);
    }

    /// A CLIENT UNBLOCK went to Redis for the session's dedicated connection.
    pub(crate) fn unblock_sent(&self) -> bool {
        self.bit(UNBLOCK_SENT)
    }

    /// Marks that another session's CLIENT TRACKING REDIRECT names this session's
    /// dedicated connection: Redis sends that session's invalidations to it for as long as
    /// it lives, so the lease closes it rather than hand it to another client.
    pub(crate) fn set_redirect_target(&self, on: bool) {
        self.set_bit(REDIRECT_TARGET, on);
    }

    /// The session's dedicated connection was named as a tracking redirect target.
    pub(crate) fn redirect_target(&self) -> bool {
        self.bit(REDIRECT_TARGET)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_card_is_small() {
        // Every connection carries one: keep it from growing unnoticed.
        // 136 bytes when written (the link holding it: 224).
        assert!(
            std::mem::size_of::<Card>() <= 136,
            "{}",
            std::mem::size_of::<Card>()
        );
    }

    #[test]
    fn extras_and_pin_are_stored_only_when_set() {
        let card = Card::default();
        card.set_extras(Extras::default());
        assert!(card.with_extras(Extras::is_empty));
        let named = Extras {
            name: Some(b"w1".to_vec().into()),
            ..Extras::default()
        };
        card.set_extras(named.clone());
        assert_eq!(card.with_extras(Clone::clone), named);
        card.set_extras(Extras::default());
        assert!(card.with_extras(Extras::is_empty));

        assert_eq!(card.pin(), None);
        let s = PinSummary {
            channels: 1,
            ..PinSummary::default()
        };
        card.set_pin(Some(s));
        assert_eq!(card.pin(), Some(s));
        assert!(card.has_pin() && s.subscribed());
        card.set_pin(None);
        assert!(!card.has_pin());
    }

    #[test]
    fn bits_are_independent() {
        let card = Card::default();
        card.set_db_resp(3, true);
        card.set_no_evict(true);
        card.set_parked(true);
        card.set_parked(false);
        assert!(card.resp3() && card.no_evict() && !card.no_touch() && !card.parked());
        assert_eq!(card.db(), 3);
        assert_eq!(card.command(), NO_COMMAND);
    }
}
