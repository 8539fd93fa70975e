//! What state a dedicated connection holds, followed from the requests a session sends on
//! it and the replies that come back, so moat knows when the state has ended and the lease
//! can be returned, and which frames are replies and which are pushed messages.
//!
//! Pure logic: no I/O, driven by tests with byte strings.

use std::collections::VecDeque;

use moat_protocol::FrameKind;
use rustc_hash::FxHashSet;

/// What a forwarded request does to the connection's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tag {
    Other,
    /// A call that may block (BLPOP, WAIT, XREAD BLOCK...): its reply may never come.
    Blocking,
    /// SCRIPT KILL or FUNCTION KILL, leased for the one request so it is not queued behind
    /// the busy script it is meant to stop.
    Control,
    /// SHUTDOWN, leased likewise: when it succeeds Redis closes the connection without a
    /// reply, and the client's connection is closed the same way.
    Shutdown,
    Multi,
    Exec,
    /// The client's EXEC, sent as DISCARD because moat refused a command inside the
    /// transaction; the reply becomes Redis's EXECABORT.
    ExecAsDiscard,
    /// A DISCARD (inside MULTI) or UNWATCH (outside) moat sends after answering a rejected
    /// EXEC itself: Redis ends the transaction and drops the watched keys when it rejects
    /// an EXEC, so the connection must too. Moat's own: the reply is not the client's.
    Abort,
    Discard,
    Watch,
    Unwatch,
    Monitor,
    TrackingOn,
    TrackingOff,
    /// RESET: every state ends with its `+RESET`.
    Reset,
}

/// The three subscription families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SubKind {
    Channel,
    Pattern,
    Shard,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// One reply frame.
    Reply(Tag),
    /// One reply frame to a command moat inserted (SELECT): not the client's.
    Swallow,
    /// The reply to a HELLO moat inserted: the connection speaks RESP3 (or RESP2) from that
    /// reply on, not before, so frames still in flight are read in the old protocol.
    Hello(bool),
    /// Confirmation frames of a (un)subscribe command: one per name, or for an
    /// unsubscribe-all, one per current subscription of that family (at least one).
    Sub {
        kind: SubKind,
        unsubscribe: bool,
        remaining: Option<usize>,
    },
}

/// What to do with a frame read from the dedicated connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Disposition {
    /// Pass it to the client: a reply.
    Deliver,
    /// Pass it to the client: a frame that answers no request (a message, a push, a
    /// monitor line), which counts toward the slow-subscriber limit.
    Unsolicited,
    /// Send the client this instead.
    Replace(&'static [u8]),
    /// Moat's own; drop it.
    Swallow,
}

/// The dedicated connection no longer matches what moat expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum StateError {
    #[error("reply with no request waiting for it")]
    Unexpected,
    #[error("backend refused moat's own command: {0}")]
    Refused(String),
    /// RESP2 connections never send push frames: the connection is not in the protocol
    /// moat believes, and nothing after this frame can be matched safely.
    #[error("push frame on a connection followed as RESP2")]
    PushOnResp2,
}

/// The EXECABORT Redis sends for a transaction with a refused command.
pub(crate) const EXECABORT: &[u8] =
    b"-EXECABORT Transaction discarded because of previous errors.\r\n";

/// Followed state of one dedicated connection.
#[derive(Debug, Default)]
pub(crate) struct PinState {
    fifo: VecDeque<Expect>,
    /// (Un)subscribe commands still owed confirmations.
    subs_pending: usize,
    resp3: bool,
    /// MULTI sent and not yet ended by EXEC or DISCARD.
    multi_open: bool,
    /// Moat refused a command inside the open transaction: EXEC must fail.
    multi_dirty: bool,
    watching: bool,
    monitor: bool,
    /// Replies owed for commands sent while monitoring: they cannot be told from monitor
    /// lines, but this many frames are counted as replies, not as unasked-for output.
    monitor_replies: usize,
    /// A RESET was sent while in MONITOR mode; its `+RESET` ends the mode.
    resetting: bool,
    tracking: bool,
    channels: FxHashSet<Vec<u8>>,
    patterns: FxHashSet<Vec<u8>>,
    shards: FxHashSet<Vec<u8>>,
}

impl PinState {
    pub(crate) fn new(resp3: bool) -> Self {
        Self {
            resp3,
            ..Self::default()
        }
    }

    /// Records a HELLO moat inserted to switch the connection to RESP3 (or back).
    pub(crate) fn expect_hello(&mut self, resp3: bool) {
        if self.monitor {
            // Nothing is matched while monitoring; the stream is read as the new protocol.
            self.resp3 = resp3;
        } else {
            self.fifo.push_back(Expect::Hello(resp3));
        }
    }

    /// Records a forwarded request.
    pub(crate) fn expect(&mut self, tag: Tag) {
        if self.monitor {
            // Replies interleave with the monitor stream; nothing is matched any more, but
            // RESET's exact `+RESET` is recognised to end it.
            self.resetting |= tag == Tag::Reset;
            self.monitor_replies += 1;
            return;
        }
        let tag = match tag {
            Tag::Multi => {
                self.multi_open = true;
                tag
            }
            // Outside a transaction EXEC and DISCARD only fail: the watch stays, as in Redis.
            Tag::Exec | Tag::Discard if !self.multi_open => Tag::Other,
            // The transaction being queued ends here, and with it its failure: the next
            // MULTI, possibly pipelined before this reply arrives, starts clean.
            Tag::Exec | Tag::ExecAsDiscard | Tag::Discard | Tag::Reset | Tag::Abort => {
                self.multi_open = false;
                self.multi_dirty = false;
                tag
            }
            _ => tag,
        };
        self.fifo.push_back(Expect::Reply(tag));
    }

    /// Records a forwarded (un)subscribe command naming `names` channels (0: all of them).
    pub(crate) fn expect_sub(&mut self, kind: SubKind, unsubscribe: bool, names: usize) {
        if self.monitor {
            return;
        }
        let remaining = (names > 0).then_some(names);
        self.fifo.push_back(Expect::Sub {
            kind,
            unsubscribe,
            remaining,
        });
        self.subs_pending += 1;
    }

    /// Records a command moat inserted (its reply is dropped).
    pub(crate) fn expect_swallow(&mut self) {
        if !self.monitor {
            self.fifo.push_back(Expect::Swallow);
        }
    }

    /// Marks the open transaction as failed: moat refused a command in it.
    pub(crate) fn mark_dirty(&mut self) {
        if self.multi_open {
            self.multi_dirty = true;
        }
    }

    /// A RESET was sent and not yet answered: the connection is signed out by it, so
    /// nothing more may follow on it.
    pub(crate) fn reset_pending(&self) -> bool {
        self.resetting || self.fifo.contains(&Expect::Reply(Tag::Reset))
    }

    /// Replies the client still waits for (moat's own inserted commands excluded).
    pub(crate) fn owed_to_client(&self) -> usize {
        self.fifo
            .iter()
            .filter(|e| {
                !matches!(
                    e,
                    Expect::Swallow | Expect::Hello(_) | Expect::Reply(Tag::Abort)
                )
            })
            .count()
    }

    /// With a SHUTDOWN waiting for its reply: the replies the client waits for before it.
    /// A connection that closes then was shut down with Redis, whose client gets nothing
    /// more either.
    pub(crate) fn owed_before_shutdown(&self) -> Option<usize> {
        let at = self
            .fifo
            .iter()
            .position(|e| *e == Expect::Reply(Tag::Shutdown))?;
        Some(
            self.fifo
                .iter()
                .take(at)
                .filter(|e| {
                    !matches!(
                        e,
                        Expect::Swallow | Expect::Hello(_) | Expect::Reply(Tag::Abort)
                    )
                })
                .count(),
        )
    }

    /// Keys are watched (WATCH answered, not yet ended by EXEC, DISCARD or UNWATCH).
    pub(crate) fn watching(&self) -> bool {
        self.watching
    }

    /// Replies still owed.
    pub(crate) fn outstanding(&self) -> usize {
        self.fifo.len()
    }

    /// A blocking call is waiting for its reply.
    pub(crate) fn blocking_outstanding(&self) -> bool {
        self.fifo.contains(&Expect::Reply(Tag::Blocking))
    }

    pub(crate) fn multi_open(&self) -> bool {
        self.multi_open
    }

    pub(crate) fn multi_dirty(&self) -> bool {
        self.multi_dirty
    }

    pub(crate) fn monitor(&self) -> bool {
        self.monitor
    }

    /// In RESP2 pub/sub mode: only (un)subscribe commands, PING, QUIT and RESET are allowed.
    pub(crate) fn subscribed(&self) -> bool {
        self.subs_pending > 0
            || !self.channels.is_empty()
            || !self.patterns.is_empty()
            || !self.shards.is_empty()
    }

    /// Whether frames arrive that no request asked for (messages, MONITOR, invalidations),
    /// so backpressure on requests cannot bound them.
    pub(crate) fn streams_unsolicited(&self) -> bool {
        self.monitor || self.tracking || self.subscribed()
    }

    /// Whether the connection carries client state that outlives the replies owed.
    pub(crate) fn holds_state(&self) -> bool {
        self.multi_open || self.watching || self.monitor || self.tracking || self.subscribed()
    }

    /// True when nothing is owed and nothing is held: the lease can end.
    pub(crate) fn is_idle(&self) -> bool {
        self.fifo.is_empty() && !self.holds_state()
    }

    /// Subscriptions held (channels, patterns, shard channels).
    #[cfg(test)]
    pub(crate) fn subscriptions(&self) -> usize {
        self.channels.len() + self.patterns.len() + self.shards.len()
    }

    /// Classifies one complete frame read from the connection.
    pub(crate) fn on_frame(
        &mut self,
        frame: &[u8],
        kind: FrameKind,
    ) -> Result<Disposition, StateError> {
        if self.monitor {
            if self.resetting && frame == b"+RESET\r\n" {
                self.clear();
                return Ok(Disposition::Deliver);
            }
            // Replies and monitor lines interleave and cannot be told apart: as many frames
            // as replies are owed count as replies.
            if self.monitor_replies > 0 {
                self.monitor_replies -= 1;
                return Ok(Disposition::Deliver);
            }
            return Ok(Disposition::Unsolicited);
        }
        if kind == FrameKind::Push && !self.resp3 {
            return Err(StateError::PushOnResp2);
        }
        let pubsub_shaped = if self.resp3 {
            kind == FrameKind::Push
        } else {
            kind == FrameKind::Array && self.subscribed()
        };
        if pubsub_shaped {
            if let Some((verb, name)) = first_two_bulks(frame) {
                match verb {
                    b"message" | b"pmessage" | b"smessage" => {
                        return Ok(Disposition::Unsolicited);
                    }
                    _ => {
                        if let Some((family, unsubscribe)) = sub_verb(verb)
                            && self.confirm_sub(family, unsubscribe, name)
                        {
                            return Ok(Disposition::Deliver);
                        }
                    }
                }
            }
            if kind == FrameKind::Push {
                // Other pushes (invalidations) belong to the client, matching no request.
                return Ok(Disposition::Unsolicited);
            }
        }
        let is_error = matches!(kind, FrameKind::Error | FrameKind::BlobError);
        match self.fifo.pop_front() {
            Some(Expect::Reply(tag)) => Ok(self.apply(tag, is_error)),
            Some(Expect::Swallow | Expect::Hello(_)) if is_error => Err(StateError::Refused(
                String::from_utf8_lossy(frame).trim_end().to_string(),
            )),
            Some(Expect::Swallow) => Ok(Disposition::Swallow),
            Some(Expect::Hello(resp3)) => {
                self.resp3 = resp3;
                Ok(Disposition::Swallow)
            }
            Some(Expect::Sub { .. }) => {
                // A (un)subscribe command answered with an ordinary reply (an error).
                self.subs_pending -= 1;
                Ok(Disposition::Deliver)
            }
            None => Err(StateError::Unexpected),
        }
    }

    fn apply(&mut self, tag: Tag, is_error: bool) -> Disposition {
        match tag {
            Tag::Other | Tag::Blocking | Tag::Multi | Tag::Control | Tag::Shutdown => {}
            Tag::Exec => self.watching = false,
            Tag::ExecAsDiscard => {
                self.watching = false;
                return Disposition::Replace(EXECABORT);
            }
            Tag::Abort => {
                self.watching = false;
                return Disposition::Swallow;
            }
            Tag::Discard if !is_error => self.watching = false,
            Tag::Discard => {}
            Tag::Watch if !is_error => self.watching = true,
            Tag::Watch => {}
            Tag::Unwatch => self.watching = false,
            Tag::Monitor if !is_error => {
                self.monitor = true;
                // Requests sent behind MONITOR are answered among monitor lines from now on.
                self.monitor_replies = self.fifo.len();
                self.fifo.clear();
                self.subs_pending = 0;
            }
            Tag::Monitor => {}
            Tag::TrackingOn if !is_error => self.tracking = true,
            Tag::TrackingOff if !is_error => self.tracking = false,
            Tag::TrackingOn | Tag::TrackingOff => {}
            Tag::Reset if !is_error => self.clear(),
            Tag::Reset => {}
        }
        Disposition::Deliver
    }

    /// Everything RESET ends: transaction, watch, subscriptions, MONITOR, tracking.
    fn clear(&mut self) {
        self.multi_open = false;
        self.multi_dirty = false;
        self.watching = false;
        self.monitor = false;
        self.monitor_replies = 0;
        self.resetting = false;
        self.tracking = false;
        self.channels.clear();
        self.patterns.clear();
        self.shards.clear();
    }

    /// Counts one confirmation against the (un)subscribe command at the head of the queue.
    fn confirm_sub(&mut self, family: SubKind, unsubscribe: bool, name: Option<&[u8]>) -> bool {
        let set_len = self.set(family).len();
        let Some(Expect::Sub { remaining, .. }) = self.fifo.front_mut() else {
            return false;
        };
        // An unsubscribe-all confirms each current subscription of its family, or once if
        // there is none; by now every earlier reply was seen, so the set is Redis's own.
        let left = remaining.get_or_insert(set_len.max(1));
        *left = left.saturating_sub(1);
        let done = *left == 0;
        if done {
            self.fifo.pop_front();
            self.subs_pending -= 1;
        }
        if let Some(name) = name {
            let set = self.set_mut(family);
            if unsubscribe {
                set.remove(name);
            } else {
                set.insert(name.to_vec());
            }
        }
        true
    }

    fn set(&self, family: SubKind) -> &FxHashSet<Vec<u8>> {
        match family {
            SubKind::Channel => &self.channels,
            SubKind::Pattern => &self.patterns,
            SubKind::Shard => &self.shards,
        }
    }

    fn set_mut(&mut self, family: SubKind) -> &mut FxHashSet<Vec<u8>> {
        match family {
            SubKind::Channel => &mut self.channels,
            SubKind::Pattern => &mut self.patterns,
            SubKind::Shard => &mut self.shards,
        }
    }
}

/// What CLIENT LIST shows of a dedicated connection's state.
impl PinState {
    /// Channels, patterns and shard channels subscribed to, as Redis counts them.
    pub(crate) fn subscription_counts(&self) -> [usize; 3] {
        [self.channels.len(), self.patterns.len(), self.shards.len()]
    }

    /// CLIENT TRACKING is on.
    pub(crate) fn tracking(&self) -> bool {
        self.tracking
    }
}

/// The family and direction of a confirmation verb.
fn sub_verb(verb: &[u8]) -> Option<(SubKind, bool)> {
    Some(match verb {
        b"subscribe" => (SubKind::Channel, false),
        b"unsubscribe" => (SubKind::Channel, true),
        b"psubscribe" => (SubKind::Pattern, false),
        b"punsubscribe" => (SubKind::Pattern, true),
        b"ssubscribe" => (SubKind::Shard, false),
        b"sunsubscribe" => (SubKind::Shard, true),
        _ => return None,
    })
}

/// The first two elements of an array or push frame when they are bulk strings (the second
/// may be null): enough to recognise pub/sub frames without decoding them.
fn first_two_bulks(frame: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    let rest = frame
        .strip_prefix(b"*")
        .or_else(|| frame.strip_prefix(b">"))?;
    let (_, rest) = split_line(rest)?;
    let (first, rest) = bulk(rest)?;
    let second = match rest.first() {
        Some(b'$') => bulk(rest).and_then(|(b, _)| b),
        _ => None,
    };
    Some((first?, second))
}

fn split_line(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = buf.windows(2).position(|w| w == b"\r\n")?;
    Some((&buf[..end], &buf[end + 2..]))
}

/// One bulk string (`None` for a null bulk) and what follows it.
fn bulk(buf: &[u8]) -> Option<(Option<&[u8]>, &[u8])> {
    let (header, rest) = split_line(buf.strip_prefix(b"$")?)?;
    if header == b"-1" {
        return Some((None, rest));
    }
    let len: usize = std::str::from_utf8(header).ok()?.parse().ok()?;
    let data = rest.get(..len)?;
    Some((Some(data), rest.get(len + 2..)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use FrameKind::{Array, Error, Push, Simple};

    fn arr(items: &[Option<&str>], count: i64) -> Vec<u8> {
        let mut out = format!("*{}\r\n", items.len() + 1).into_bytes();
        for item in items {
            match item {
                Some(s) => out.extend_from_slice(format!("${}\r\n{s}\r\n", s.len()).as_bytes()),
                None => out.extend_from_slice(b"$-1\r\n"),
            }
        }
        out.extend_from_slice(format!(":{count}\r\n").as_bytes());
        out
    }

    #[test]
    fn transaction_holds_until_exec() {
        let mut s = PinState::new(false);
        s.expect(Tag::Multi);
        s.expect(Tag::Other);
        s.expect(Tag::Exec);
        assert!(!s.multi_open());
        assert!(!s.is_idle());
        assert_eq!(s.on_frame(b"+OK\r\n", Simple), Ok(Disposition::Deliver));
        assert_eq!(s.on_frame(b"+QUEUED\r\n", Simple), Ok(Disposition::Deliver));
        assert!(!s.is_idle());
        assert_eq!(
            s.on_frame(b"*1\r\n+OK\r\n", Array),
            Ok(Disposition::Deliver)
        );
        assert!(s.is_idle());
    }

    #[test]
    fn watch_holds_until_unwatch_or_exec() {
        let mut s = PinState::new(false);
        s.expect(Tag::Watch);
        s.on_frame(b"+OK\r\n", Simple).unwrap();
        assert!(!s.is_idle(), "WATCH state outlives its reply");
        s.expect(Tag::Other);
        s.on_frame(b"$1\r\nx\r\n", FrameKind::Bulk).unwrap();
        assert!(!s.is_idle());
        s.expect(Tag::Unwatch);
        s.on_frame(b"+OK\r\n", Simple).unwrap();
        assert!(s.is_idle());
    }

    #[test]
    fn exec_without_multi_keeps_the_watch() {
        let mut s = PinState::new(false);
        s.expect(Tag::Watch);
        s.on_frame(b"+OK\r\n", Simple).unwrap();
        s.expect(Tag::Exec);
        s.on_frame(b"-ERR EXEC without MULTI\r\n", Error).unwrap();
        assert!(!s.is_idle(), "the watch is still there");
        s.expect(Tag::Discard);
        s.on_frame(b"-ERR DISCARD without MULTI\r\n", Error)
            .unwrap();
        assert!(!s.is_idle());
    }

    #[test]
    fn reset_ends_every_state_once_answered() {
        let mut s = PinState::new(false);
        s.expect_sub(SubKind::Channel, false, 1);
        s.on_frame(&arr(&[Some("subscribe"), Some("a")], 1), Array)
            .unwrap();
        s.expect(Tag::Reset);
        assert!(!s.is_idle(), "subscribed until +RESET arrives");
        let msg = b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$2\r\nhi\r\n";
        assert_eq!(s.on_frame(msg, Array), Ok(Disposition::Unsolicited));
        s.on_frame(b"+RESET\r\n", Simple).unwrap();
        assert!(s.is_idle());

        let mut m = PinState::new(false);
        m.expect(Tag::Monitor);
        m.on_frame(b"+OK\r\n", Simple).unwrap();
        m.expect(Tag::Reset);
        m.on_frame(b"+1.5 [0 127.0.0.1:1] \"RESET\"\r\n", Simple)
            .unwrap();
        assert!(!m.is_idle());
        m.on_frame(b"+RESET\r\n", Simple).unwrap();
        assert!(m.is_idle());
    }

    #[test]
    fn failed_watch_holds_nothing() {
        let mut s = PinState::new(false);
        s.expect(Tag::Watch);
        s.on_frame(b"-ERR wrong number of arguments\r\n", Error)
            .unwrap();
        assert!(s.is_idle());
    }

    #[test]
    fn refused_command_turns_exec_into_execabort() {
        let mut s = PinState::new(false);
        s.expect(Tag::Multi);
        s.mark_dirty();
        assert!(s.multi_dirty());
        s.expect(Tag::ExecAsDiscard);
        s.on_frame(b"+OK\r\n", Simple).unwrap();
        assert_eq!(
            s.on_frame(b"+OK\r\n", Simple),
            Ok(Disposition::Replace(EXECABORT))
        );
        assert!(s.is_idle());
    }

    #[test]
    fn a_failed_transaction_does_not_fail_the_next_one_pipelined_behind_it() {
        // MULTI, a refused command, EXEC (sent as DISCARD), then a second transaction, all
        // sent before any reply: the second one's EXEC is a real EXEC.
        let mut s = PinState::new(false);
        s.expect(Tag::Multi);
        s.mark_dirty();
        assert!(s.multi_dirty());
        s.expect(Tag::ExecAsDiscard);
        assert!(!s.multi_dirty(), "the failure ends with its transaction");
        s.expect(Tag::Multi);
        assert!(!s.multi_dirty());
        s.expect(Tag::Exec);
        s.on_frame(b"+OK\r\n", Simple).unwrap();
        assert_eq!(
            s.on_frame(b"+OK\r\n", Simple),
            Ok(Disposition::Replace(EXECABORT))
        );
        s.on_frame(b"+OK\r\n", Simple).unwrap();
        assert_eq!(
            s.on_frame(b"*0\r\n", Array),
            Ok(Disposition::Deliver),
            "the second EXEC's own reply"
        );
        assert!(s.is_idle());
    }

    #[test]
    fn moats_own_abort_is_swallowed_and_ends_the_watch() {
        let mut s = PinState::new(false);
        s.expect(Tag::Watch);
        s.on_frame(b"+OK\r\n", Simple).unwrap();
        assert!(s.watching());
        s.expect(Tag::Abort);
        assert_eq!(s.owed_to_client(), 0, "not a reply the client waits for");
        assert_eq!(s.on_frame(b"+OK\r\n", Simple), Ok(Disposition::Swallow));
        assert!(s.is_idle());
    }

    #[test]
    fn subscriptions_are_counted_from_confirmations() {
        let mut s = PinState::new(false);
        s.expect_sub(SubKind::Channel, false, 2);
        assert!(s.subscribed());
        let d = s.on_frame(&arr(&[Some("subscribe"), Some("a")], 1), Array);
        assert_eq!(d, Ok(Disposition::Deliver));
        s.on_frame(&arr(&[Some("subscribe"), Some("b")], 2), Array)
            .unwrap();
        assert_eq!(s.outstanding(), 0);
        assert_eq!(s.subscriptions(), 2);
        // Messages match no request.
        let msg = b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$2\r\nhi\r\n";
        assert_eq!(s.on_frame(msg, Array), Ok(Disposition::Unsolicited));
        // PING in RESP2 pub/sub mode answers with an array: it is the PING's reply.
        s.expect(Tag::Other);
        s.on_frame(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n", Array)
            .unwrap();
        assert_eq!(s.outstanding(), 0);
        // Unsubscribe-all confirms each channel.
        s.expect_sub(SubKind::Channel, true, 0);
        s.on_frame(&arr(&[Some("unsubscribe"), Some("a")], 1), Array)
            .unwrap();
        assert!(!s.is_idle());
        s.on_frame(&arr(&[Some("unsubscribe"), Some("b")], 0), Array)
            .unwrap();
        assert!(s.is_idle());
    }

    #[test]
    fn unsubscribe_all_without_subscriptions_confirms_once() {
        let mut s = PinState::new(false);
        s.expect_sub(SubKind::Pattern, true, 0);
        s.on_frame(&arr(&[Some("punsubscribe"), None], 0), Array)
            .unwrap();
        assert!(s.is_idle());
    }

    #[test]
    fn pattern_subscriptions_and_resp3_pushes() {
        let mut s = PinState::new(true);
        s.expect_sub(SubKind::Pattern, false, 1);
        let mut confirm = arr(&[Some("psubscribe"), Some("news.*")], 1);
        confirm[0] = b'>';
        s.on_frame(&confirm, Push).unwrap();
        assert_eq!(s.subscriptions(), 1);
        // In RESP3 any command may run while subscribed; its array reply is a reply.
        s.expect(Tag::Other);
        let lookalike = arr(&[Some("message"), Some("x")], 1);
        assert_eq!(s.on_frame(&lookalike, Array), Ok(Disposition::Deliver));
        assert_eq!(s.outstanding(), 0);
        let pmessage = b">4\r\n$8\r\npmessage\r\n$6\r\nnews.*\r\n$6\r\nnews.a\r\n$1\r\nx\r\n";
        assert_eq!(s.on_frame(pmessage, Push), Ok(Disposition::Unsolicited));
        assert!(!s.is_idle());
    }

    #[test]
    fn an_array_reply_is_not_a_message_outside_pubsub() {
        let mut s = PinState::new(false);
        s.expect(Tag::Other);
        let lookalike = arr(&[Some("message"), Some("x")], 1);
        assert_eq!(s.on_frame(&lookalike, Array), Ok(Disposition::Deliver));
        assert!(s.is_idle());
    }

    #[test]
    fn the_protocol_switches_at_hellos_reply_not_before() {
        // A RESP3 subscriber switching back to RESP2: a message pushed before HELLO 2 ran
        // is still a push; after the reply, messages are arrays again.
        let mut s = PinState::new(true);
        s.expect_sub(SubKind::Channel, false, 1);
        let confirm = b">3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n";
        assert_eq!(s.on_frame(confirm, Push), Ok(Disposition::Deliver));
        s.expect_hello(false);
        let pushed = b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$1\r\nx\r\n";
        assert_eq!(s.on_frame(pushed, Push), Ok(Disposition::Unsolicited));
        let hello = b"*2\r\n$5\r\nproto\r\n:2\r\n";
        assert_eq!(s.on_frame(hello, Array), Ok(Disposition::Swallow));
        let message = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$1\r\ny\r\n";
        assert_eq!(s.on_frame(message, Array), Ok(Disposition::Unsolicited));
        assert_eq!(s.outstanding(), 0);
        // A push on a connection followed as RESP2 means moat lost track of it.
        assert_eq!(s.on_frame(pushed, Push), Err(StateError::PushOnResp2));
    }

    #[test]
    fn swallowed_replies_and_surprises() {
        let mut s = PinState::new(false);
        s.expect_swallow();
        assert_eq!(s.on_frame(b"+OK\r\n", Simple), Ok(Disposition::Swallow));
        s.expect_swallow();
        assert!(matches!(
            s.on_frame(b"-ERR no\r\n", Error),
            Err(StateError::Refused(_))
        ));
        assert_eq!(s.on_frame(b"+OK\r\n", Simple), Err(StateError::Unexpected));
    }

    #[test]
    fn monitor_delivers_everything_for_the_rest_of_the_lease() {
        let mut s = PinState::new(false);
        s.expect(Tag::Monitor);
        s.on_frame(b"+OK\r\n", Simple).unwrap();
        s.expect(Tag::Other);
        // As many frames as replies are owed count as replies (which ones cannot be told),
        // the rest as monitor lines.
        assert_eq!(s.on_frame(b"+PONG\r\n", Simple), Ok(Disposition::Deliver));
        assert_eq!(
            s.on_frame(b"+1 [0 x] \"PING\"\r\n", Simple),
            Ok(Disposition::Unsolicited)
        );
        assert!(s.holds_state() && !s.is_idle());

        // A request pipelined behind MONITOR, before its `+OK`, is counted the same way.
        let mut s = PinState::new(false);
        s.expect(Tag::Monitor);
        s.expect(Tag::Other);
        assert_eq!(s.on_frame(b"+OK\r\n", Simple), Ok(Disposition::Deliver));
        assert_eq!(s.on_frame(b"+PONG\r\n", Simple), Ok(Disposition::Deliver));
        assert_eq!(
            s.on_frame(b"+1 [0 x] \"GET\" \"k\"\r\n", Simple),
            Ok(Disposition::Unsolicited)
        );
    }

    #[test]
    fn tracking_holds_the_lease() {
        let mut s = PinState::new(true);
        s.expect(Tag::TrackingOn);
        s.on_frame(b"+OK\r\n", Simple).unwrap();
        assert!(!s.is_idle());
        let invalidate = b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n";
        assert_eq!(s.on_frame(invalidate, Push), Ok(Disposition::Unsolicited));
        s.expect(Tag::TrackingOff);
        s.on_frame(b"+OK\r\n", Simple).unwrap();
        assert!(s.is_idle());
    }
}
