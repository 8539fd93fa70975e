//! CLIENT PAUSE held at moat: one pause state shared by every worker, read by each session
//! before it runs a request.
//!
//! The state is a single `AtomicU64` (the mode in the top two bits, the end in milliseconds
//! since moat's start below them), so a session reads one word per request, with no lock and
//! no clock while no pause was ever set (the word is 0); it is written only by CLIENT PAUSE
//! and UNPAUSE. Sessions held by a pause do not poll: each worker runs a task that sleeps
//! until the pause ends or changes ([`Pause::changed`]) and then wakes them.
//!
//! Redis's rules, checked against Redis 7.0.15: ALL holds every command, WRITE holds the
//! commands flagged `write` or `may_replicate` (EVAL, PUBLISH, PFCOUNT... and EXEC of a
//! transaction that queued one); a request Redis would refuse (unknown command, wrong
//! arity, NOAUTH) is answered at once; the pausing client is held like any other. A second
//! pause keeps the longer end and the stricter mode. One deliberate difference: CLIENT
//! UNPAUSE is never held, even under ALL (Redis holds it too, which makes a long ALL pause
//! impossible to lift without a restart).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moat_protocol::parse_i64;
use tokio::sync::Notify;

/// What a pause holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum PauseMode {
    /// Commands that write or may replicate.
    Write = 1,
    /// Every command.
    All = 2,
}

/// CLIENT PAUSE arguments Redis refuses, with its exact error lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PauseError {
    /// A mode other than WRITE or ALL.
    #[error("ERR CLIENT PAUSE mode must be WRITE or ALL")]
    Mode,
    /// A timeout that is not an integer.
    #[error("ERR timeout is not an integer or out of range")]
    NotInteger,
    /// A negative timeout.
    #[error("ERR timeout is negative")]
    Negative,
    /// The end would not fit Redis's clock in milliseconds (newer Redis versions say so;
    /// 7.0 overflows silently).
    #[error("ERR timeout is out of range")]
    OutOfRange,
}

/// Parses the arguments after `CLIENT PAUSE`: `timeout [WRITE|ALL]`, the mode checked
/// before the timeout, as Redis does. `unix_now_ms` is the wall clock in milliseconds, for
/// the range check only. Returns the timeout in milliseconds and the mode (ALL by default).
pub(crate) fn parse_pause(
    args: &[&[u8]],
    unix_now_ms: i64,
) -> Result<(u64, PauseMode), PauseError> {
    let mode = match args.get(1) {
        None => PauseMode::All,
        Some(m) if m.eq_ignore_ascii_case(b"WRITE") => PauseMode::Write,
        Some(m) if m.eq_ignore_ascii_case(b"ALL") => PauseMode::All,
        Some(_) => return Err(PauseError::Mode),
    };
    let timeout = args
        .first()
        .and_then(|t| parse_i64(t))
        .ok_or(PauseError::NotInteger)?;
    let timeout = u64::try_from(timeout).map_err(|_| PauseError::Negative)?;
    if timeout > 0 && timeout > u64::try_from(i64::MAX - unix_now_ms.max(0)).unwrap_or(0) {
        return Err(PauseError::OutOfRange);
    }
    Ok((timeout, mode))
}

/// Whether a request is held: everything under ALL; under WRITE, what `writes` (its flags
/// say `write` or `may_replicate`, or it is the EXEC of a transaction that queued such a
/// command). `exempt` requests (CLIENT UNPAUSE) always go on.
pub(crate) fn must_hold(mode: PauseMode, writes: bool, exempt: bool) -> bool {
    !exempt && (mode == PauseMode::All || writes)
}

const MODE_SHIFT: u32 = 62;
/// Largest end moat stores: about 146 million years after its start.
const UNTIL_MAX: u64 = (1 << MODE_SHIFT) - 1;

fn pack(mode: PauseMode, until_ms: u64) -> u64 {
    ((mode as u64) << MODE_SHIFT) | until_ms.min(UNTIL_MAX)
}

/// The pause a state word describes, active or not: its mode and end.
fn unpack(word: u64) -> Option<(PauseMode, u64)> {
    let mode = match word >> MODE_SHIFT {
        1 => PauseMode::Write,
        2 => PauseMode::All,
        _ => return None,
    };
    Some((mode, word & UNTIL_MAX))
}

/// The mode of the pause in force at `now_ms` (none once its end has passed).
fn active(word: u64, now_ms: u64) -> Option<PauseMode> {
    unpack(word)
        .filter(|&(_, until)| now_ms < until)
        .map(|(mode, _)| mode)
}

/// The state after a CLIENT PAUSE of `timeout_ms` in `mode` at `now_ms`: a pause still in
/// force keeps the later end and the stricter mode, as Redis does.
fn merge(word: u64, now_ms: u64, timeout_ms: u64, mode: PauseMode) -> u64 {
    let until = now_ms.saturating_add(timeout_ms).min(UNTIL_MAX);
    match unpack(word).filter(|&(_, old_until)| now_ms < old_until) {
        Some((old_mode, old_until)) => pack(old_mode.max(mode), old_until.max(until)),
        None => pack(mode, until),
    }
}

/// The pause state all workers share.
#[derive(Debug)]
pub(crate) struct Pause {
    /// 0, or the packed mode and end (see the module doc).
    word: AtomicU64,
    /// Where the end's milliseconds count from.
    epoch: Instant,
    /// Signalled when a pause starts, changes or is lifted.
    changed: Notify,
}

impl Default for Pause {
    fn default() -> Self {
        Self {
            word: AtomicU64::new(0),
            epoch: Instant::now(),
            changed: Notify::new(),
        }
    }
}

impl Pause {
    fn ms_at(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// Pauses clients for `timeout_ms` from `now` in `mode` (merged with a pause in force).
    pub(crate) fn pause(&self, timeout_ms: u64, mode: PauseMode, now: Instant) {
        let now_ms = self.ms_at(now);
        let _ = self
            .word
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
                Some(merge(word, now_ms, timeout_ms, mode))
            });
        self.changed.notify_waiters();
    }

    /// Lifts any pause.
    pub(crate) fn unpause(&self) {
        self.word.store(0, Ordering::Release);
        self.changed.notify_waiters();
    }

    /// The mode of the pause in force now, if any. One atomic load while no pause is set;
    /// a pause found over is cleared, so the next call is that single load again.
    pub(crate) fn mode(&self) -> Option<PauseMode> {
        let word = self.word.load(Ordering::Acquire);
        if word == 0 {
            return None;
        }
        let mode = active(word, self.ms_at(Instant::now()));
        if mode.is_none() {
            // Only if nobody paused again meanwhile.
            let _ = self
                .word
                .compare_exchange(word, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
        mode
    }

    /// When the pause in force ends (none if no pause is in force). An end too far to
    /// express as an `Instant` is reported as a day from now; the waiter then looks again.
    pub(crate) fn until(&self, now: Instant) -> Option<Instant> {
        let (_, until) = unpack(self.word.load(Ordering::Acquire))
            .filter(|&(_, until)| self.ms_at(now) < until)?;
        let far = now + Duration::from_secs(86_400);
        Some(
            self.epoch
                .checked_add(Duration::from_millis(until))
                .map_or(far, |at| at.min(far)),
        )
    }

    /// Signalled whenever a pause starts, changes or is lifted.
    pub(crate) fn changed(&self) -> &Notify {
        &self.changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<(u64, PauseMode), PauseError> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        parse_pause(&args, 1_700_000_000_000)
    }

    #[test]
    fn arguments_as_redis_checks_them() {
        assert_eq!(parse(&["100"]), Ok((100, PauseMode::All)));
        assert_eq!(parse(&["100", "write"]), Ok((100, PauseMode::Write)));
        assert_eq!(parse(&["0", "ALL"]), Ok((0, PauseMode::All)));
        assert_eq!(parse(&["x"]), Err(PauseError::NotInteger));
        assert_eq!(parse(&["1.5"]), Err(PauseError::NotInteger));
        assert_eq!(
            parse(&["99999999999999999999"]),
            Err(PauseError::NotInteger)
        );
        assert_eq!(parse(&["-1"]), Err(PauseError::Negative));
        // The mode is checked first.
        assert_eq!(parse(&["x", "foo"]), Err(PauseError::Mode));
        assert_eq!(parse(&["9223372036854775807"]), Err(PauseError::OutOfRange));
        assert_eq!(parse(&["999999999"]), Ok((999_999_999, PauseMode::All)));
        assert_eq!(
            PauseError::Mode.to_string(),
            "ERR CLIENT PAUSE mode must be WRITE or ALL"
        );
    }

    #[test]
    fn what_each_mode_holds() {
        assert!(must_hold(PauseMode::All, false, false));
        assert!(must_hold(PauseMode::Write, true, false));
        assert!(!must_hold(PauseMode::Write, false, false));
        assert!(!must_hold(PauseMode::All, true, true), "UNPAUSE goes on");
    }

    #[test]
    fn a_pause_ends_at_its_deadline() {
        let word = merge(0, 1_000, 500, PauseMode::Write);
        assert_eq!(active(word, 1_000), Some(PauseMode::Write));
        assert_eq!(active(word, 1_499), Some(PauseMode::Write));
        assert_eq!(active(word, 1_500), None);
        assert_eq!(active(0, 0), None);
        // A zero timeout pauses nothing.
        assert_eq!(active(merge(0, 1_000, 0, PauseMode::All), 1_000), None);
    }

    #[test]
    fn pauses_merge_to_the_longer_and_stricter() {
        let all = merge(0, 0, 200, PauseMode::All);
        let both = merge(all, 10, 20, PauseMode::Write);
        assert_eq!(active(both, 100), Some(PauseMode::All));
        assert_eq!(active(both, 199), Some(PauseMode::All));
        assert_eq!(active(both, 200), None);
        let longer = merge(all, 10, 1_000, PauseMode::Write);
        assert_eq!(active(longer, 500), Some(PauseMode::All));
        assert_eq!(active(longer, 1_009), Some(PauseMode::All));
        // A pause that has ended is replaced, not merged.
        let later = merge(all, 300, 100, PauseMode::Write);
        assert_eq!(active(later, 350), Some(PauseMode::Write));
    }

    #[test]
    fn huge_timeouts_saturate() {
        let word = merge(0, u64::MAX - 5, u64::MAX, PauseMode::All);
        assert_eq!(unpack(word), Some((PauseMode::All, UNTIL_MAX)));
        let pause = Pause::default();
        let now = Instant::now();
        pause.pause(999_999_999, PauseMode::All, now);
        assert_eq!(pause.mode(), Some(PauseMode::All));
        let until = pause.until(now).expect("in force");
        assert!(until <= now + Duration::from_secs(86_400));
        pause.unpause();
        assert_eq!(pause.mode(), None);
        assert_eq!(pause.until(now), None);
        pause.pause(u64::MAX, PauseMode::Write, now);
        assert_eq!(pause.mode(), Some(PauseMode::Write));
        assert!(pause.until(now).is_some());
    }
}
