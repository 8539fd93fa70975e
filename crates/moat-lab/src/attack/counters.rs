//! Live counters of a running attack: atomics behind an `Arc`, so a lab (or a progress line)
//! can sample them every second while the attack runs, and the final summary is one more
//! sample.

use std::collections::BTreeMap;
use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::{Deserialize, Serialize};

/// Distinct reply or error kinds kept apart; beyond this they are lumped together, so a
/// target that echoes varying text cannot grow the map without bound.
const MAX_KINDS: usize = 64;
/// Words of a reply line that name its kind: enough to tell moat's refusal reasons apart.
const KIND_WORDS: usize = 10;
/// Characters of a reply line that name its kind.
const KIND_CHARS: usize = 80;
/// The key under which kinds beyond [`MAX_KINDS`] are counted.
const OTHER_KIND: &str = "(other)";

/// What an attack has done so far. Every field only grows, except the gauges `held` and
/// `stalled`.
#[derive(Debug, Default)]
pub struct Counters {
    attempts: AtomicU64,
    connected: AtomicU64,
    refused: AtomicU64,
    reset: AtomicU64,
    timeouts: AtomicU64,
    other_errors: AtomicU64,
    closed_by_target: AtomicU64,
    silent: AtomicU64,
    held: AtomicU64,
    peak_held: AtomicU64,
    held_at_end: AtomicU64,
    stalled: AtomicU64,
    commands_sent: AtomicU64,
    bytes_requested: AtomicU64,
    replies: Mutex<BTreeMap<String, u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
}

/// A copy of [`Counters`] at one instant; serializable for reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterSnapshot {
    /// Connection attempts started.
    pub attempts: u64,
    /// Attempts whose TCP handshake completed.
    pub connected: u64,
    /// Attempts refused by the target's kernel (`ECONNREFUSED`: nobody listening, or a full
    /// backlog answered with a reset).
    pub refused: u64,
    /// Connections or attempts reset by the target.
    pub reset: u64,
    /// Connects that did not complete within the connect timeout (e.g. SYNs dropped).
    pub timeouts: u64,
    /// Other connect or I/O errors, by kind in `errors`.
    pub other_errors: u64,
    /// Connections the target closed while the attack still wanted them.
    pub closed_by_target: u64,
    /// Connections that got no reply within the reply timeout (where one was awaited).
    pub silent: u64,
    /// Connections held open right now.
    pub held: u64,
    /// The most connections held at once.
    pub peak_held: u64,
    /// Connections still held when the attack ended (its duration, or a stop): what the
    /// target was left holding until the attack let go.
    pub held_at_end: u64,
    /// Connections whose send buffer stopped accepting requests (slow-reader), right now.
    pub stalled: u64,
    /// Commands written (PING, AUTH, GET, BLPOP...).
    pub commands_sent: u64,
    /// Reply bytes requested and never read (slow-reader).
    pub bytes_requested: u64,
    /// Replies read, by their first words (`ERR max number of clients reached`,
    /// `WRONGPASS invalid username-password pair...`, `ERR moat: banned for`).
    pub replies: BTreeMap<String, u64>,
    /// `other_errors` by I/O error kind.
    pub errors: BTreeMap<String, u64>,
}

impl CounterSnapshot {
    /// Adds `other` (another process's share of the same attack) into this one. Peaks are
    /// summed, which can overstate the peak if the shares peaked at different times.
    pub fn merge(&mut self, other: &CounterSnapshot) {
        self.attempts += other.attempts;
        self.connected += other.connected;
        self.refused += other.refused;
        self.reset += other.reset;
        self.timeouts += other.timeouts;
        self.other_errors += other.other_errors;
        self.closed_by_target += other.closed_by_target;
        self.silent += other.silent;
        self.held += other.held;
        self.peak_held += other.peak_held;
        self.held_at_end += other.held_at_end;
        self.stalled += other.stalled;
        self.commands_sent += other.commands_sent;
        self.bytes_requested += other.bytes_requested;
        for (kind, n) in &other.replies {
            *self.replies.entry(kind.clone()).or_default() += n;
        }
        for (kind, n) in &other.errors {
            *self.errors.entry(kind.clone()).or_default() += n;
        }
    }
}

impl Counters {
    /// Fresh counters, all zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Copies every counter.
    pub fn snapshot(&self) -> CounterSnapshot {
        CounterSnapshot {
            attempts: self.attempts.load(Relaxed),
            connected: self.connected.load(Relaxed),
            refused: self.refused.load(Relaxed),
            reset: self.reset.load(Relaxed),
            timeouts: self.timeouts.load(Relaxed),
            other_errors: self.other_errors.load(Relaxed),
            closed_by_target: self.closed_by_target.load(Relaxed),
            silent: self.silent.load(Relaxed),
            held: self.held.load(Relaxed),
            peak_held: self.peak_held.load(Relaxed),
            held_at_end: self.held_at_end.load(Relaxed),
            stalled: self.stalled.load(Relaxed),
            commands_sent: self.commands_sent.load(Relaxed),
            bytes_requested: self.bytes_requested.load(Relaxed),
            replies: lock(&self.replies).clone(),
            errors: lock(&self.errors).clone(),
        }
    }

    pub(crate) fn attempt(&self) {
        self.attempts.fetch_add(1, Relaxed);
    }

    pub(crate) fn connected(&self) {
        self.connected.fetch_add(1, Relaxed);
    }

    pub(crate) fn closed_by_target(&self) {
        self.closed_by_target.fetch_add(1, Relaxed);
    }

    pub(crate) fn silent(&self) {
        self.silent.fetch_add(1, Relaxed);
    }

    pub(crate) fn commands(&self, n: u64) {
        self.commands_sent.fetch_add(n, Relaxed);
    }

    pub(crate) fn bytes_requested(&self, n: u64) {
        self.bytes_requested.fetch_add(n, Relaxed);
    }

    pub(crate) fn hold_started(&self) {
        let now = self.held.fetch_add(1, Relaxed) + 1;
        self.peak_held.fetch_max(now, Relaxed);
    }

    pub(crate) fn hold_ended(&self) {
        self.held.fetch_sub(1, Relaxed);
    }

    /// A connection let go because the attack ended, not because the target closed it.
    pub(crate) fn held_until_the_end(&self) {
        self.held_at_end.fetch_add(1, Relaxed);
    }

    pub(crate) fn stall_started(&self) {
        self.stalled.fetch_add(1, Relaxed);
    }

    pub(crate) fn stall_ended(&self) {
        self.stalled.fetch_sub(1, Relaxed);
    }

    /// Counts a failed connect or a failed read or write, by what the kernel said.
    pub(crate) fn io_error(&self, e: &io::Error) {
        match e.kind() {
            io::ErrorKind::ConnectionRefused => self.refused.fetch_add(1, Relaxed),
            io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => {
                self.reset.fetch_add(1, Relaxed)
            }
            io::ErrorKind::TimedOut => self.timeouts.fetch_add(1, Relaxed),
            kind => {
                bump(&self.errors, format!("{kind:?}"));
                self.other_errors.fetch_add(1, Relaxed)
            }
        };
    }

    /// Counts one reply line (with or without its `-`/`+` and CRLF) by its first words.
    pub(crate) fn reply(&self, line: &[u8]) {
        bump(&self.replies, reply_kind(line));
    }
}

fn lock(map: &Mutex<BTreeMap<String, u64>>) -> std::sync::MutexGuard<'_, BTreeMap<String, u64>> {
    // A panic elsewhere while holding the lock leaves a map of plain counts: still usable.
    map.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn bump(map: &Mutex<BTreeMap<String, u64>>, kind: String) {
    let mut map = lock(map);
    if map.len() >= MAX_KINDS && !map.contains_key(&kind) {
        *map.entry(OTHER_KIND.to_owned()).or_default() += 1;
    } else {
        *map.entry(kind).or_default() += 1;
    }
}

/// The kind of a reply line: its first words, up to the first word holding a digit or a
/// parenthesis, so `ERR moat: banned for 37s` and `... for 12s` count as one kind.
pub fn reply_kind(line: &[u8]) -> String {
    let line = line
        .strip_prefix(b"-")
        .or_else(|| line.strip_prefix(b"+"))
        .unwrap_or(line);
    let text = String::from_utf8_lossy(line);
    let mut kind = String::new();
    for word in text.split_whitespace().take(KIND_WORDS) {
        if word.contains(|c: char| c.is_ascii_digit() || c == '(') {
            break;
        }
        if kind.len() + word.len() + 1 > KIND_CHARS {
            break;
        }
        if !kind.is_empty() {
            kind.push(' ');
        }
        kind.extend(word.chars().filter(|c| !c.is_control()));
    }
    if kind.is_empty() {
        kind.push_str("(empty)");
    }
    kind
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_kinds_are_first_words() {
        assert_eq!(
            reply_kind(b"-ERR moat: too many new connections from your address (rate limit)\r\n"),
            "ERR moat: too many new connections from your address"
        );
        assert_eq!(
            reply_kind(b"-ERR moat: banned for 37s"),
            "ERR moat: banned for"
        );
        assert_eq!(
            reply_kind(b"-ERR max number of clients reached\r\n"),
            "ERR max number of clients reached"
        );
        assert_eq!(reply_kind(b"+OK\r\n"), "OK");
        assert_eq!(reply_kind(b"\r\n"), "(empty)");
        assert_eq!(reply_kind(&[0xff, b' ', 0xfe]).chars().count(), 3);
    }

    #[test]
    fn kinds_are_bounded_and_io_errors_sorted() {
        let c = Counters::new();
        for i in 0..200 {
            c.reply(
                format!(
                    "-ERR kind{} x",
                    char::from(b'a' + (i % 26) as u8)
                        .to_string()
                        .repeat(i as usize / 26 + 1)
                )
                .as_bytes(),
            );
        }
        let s = c.snapshot();
        assert!(s.replies.len() <= MAX_KINDS + 1);
        assert_eq!(s.replies.values().sum::<u64>(), 200);
        c.io_error(&io::Error::from(io::ErrorKind::ConnectionRefused));
        c.io_error(&io::Error::from(io::ErrorKind::AddrNotAvailable));
        c.hold_started();
        c.hold_started();
        c.hold_ended();
        let s = c.snapshot();
        assert_eq!(
            (s.refused, s.other_errors, s.held, s.peak_held),
            (1, 1, 1, 2)
        );
        assert_eq!(s.errors.get("AddrNotAvailable"), Some(&1));
    }
}
