//! Measurements: latency histograms (HdrHistogram, microseconds) and error counts by kind,
//! per phase and group for the summary and per second for the charts; and live counters
//! for a progress line.
//!
//! Histograms hold every operation that succeeded or timed out (a timeout at the time
//! waited): fast failures such as a refused connection are counted by kind and left out,
//! so they cannot make latency look better than what clients got.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;

use super::phase::PhaseHandle;
use super::report::{GroupStats, Latency, SecondRow};
use super::spec::LegitGroup;

/// The highest latency a histogram tells apart, in microseconds (longer ones count as it).
const MAX_LATENCY_US: u64 = 300_000_000;

/// Error kinds (report keys) the workload tells apart, besides error replies.
pub mod kind {
    /// The target refused the connection (nothing listens, or a firewall rejects).
    pub const REFUSED: &str = "refused";
    /// The connection was reset or broken mid-operation.
    pub const RESET: &str = "reset";
    /// No reply (or no connection) within the operation's deadline.
    pub const TIMEOUT: &str = "timeout";
    /// The target closed the connection before replying.
    pub const CLOSED: &str = "closed";
    /// A reply that is not what the command must get (e.g. another key's value).
    pub const WRONG_REPLY: &str = "wrong_reply";
    /// Bytes that are not RESP.
    pub const PROTOCOL: &str = "protocol";
    /// No local address or port to connect from (the load generator's own limit).
    pub const LOCAL: &str = "local_addr";
    /// This process (or the system) ran out of file descriptors: the load generator's own
    /// limit, not the target's.
    pub const FD_LIMIT: &str = "fd_limit";
    /// Any other socket error.
    pub const IO: &str = "io";
}

/// The report key of a failed socket call.
pub(crate) fn io_kind(e: &io::Error) -> &'static str {
    use io::ErrorKind as K;
    // EMFILE and ENFILE on Linux: std has no stable kind for them.
    if matches!(e.raw_os_error(), Some(23 | 24)) {
        return kind::FD_LIMIT;
    }
    match e.kind() {
        K::ConnectionRefused => kind::REFUSED,
        K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => kind::RESET,
        K::TimedOut => kind::TIMEOUT,
        K::UnexpectedEof => kind::CLOSED,
        K::AddrNotAvailable | K::AddrInUse => kind::LOCAL,
        _ => kind::IO,
    }
}

/// The report key of an error reply (without its leading `-`): the refusals that matter
/// for connection exhaustion get names of their own, the rest their first word.
pub fn reply_kind(line: &str) -> String {
    if line.starts_with("ERR max number of clients") {
        return "max_clients".into();
    }
    if let Some(rest) = line.strip_prefix("ERR moat: ") {
        // Moat's admission refusals (one line, then the connection closes) against its
        // errors while serving.
        return if rest.starts_with("backend") {
            "moat_backend".into()
        } else if rest.starts_with("too many")
            || rest.starts_with("banned")
            || rest.starts_with("max number of clients")
            || rest.starts_with("server busy")
            || rest.starts_with("connections from your address")
        {
            "moat_refused".into()
        } else {
            "moat_error".into()
        };
    }
    let word: String = line
        .split_whitespace()
        .next()
        .unwrap_or("error")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(32)
        .collect::<String>()
        .to_ascii_lowercase();
    if word.is_empty() {
        "error".into()
    } else {
        word
    }
}

/// How one operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The right reply arrived.
    Ok,
    /// It failed, for this reason (a report key).
    Failed(String),
}

impl Outcome {
    fn goes_in_histogram(&self) -> bool {
        match self {
            Outcome::Ok => true,
            Outcome::Failed(k) => k == kind::TIMEOUT,
        }
    }
}

fn histogram(sigfig: u8) -> Histogram<u64> {
    // Bounds and precision are constants known to be valid.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, sigfig)
        .unwrap_or_else(|_| unreachable!("valid histogram bounds"))
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Counts and latencies of one group in one phase (or one second).
#[derive(Debug, Clone)]
pub(crate) struct Acc {
    pub(crate) ok: u64,
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) hist: Histogram<u64>,
}

impl Acc {
    fn new(sigfig: u8) -> Self {
        Self {
            ok: 0,
            errors: BTreeMap::new(),
            hist: histogram(sigfig),
        }
    }

    /// Nothing recorded (a group that never finished an operation).
    pub(crate) fn empty() -> Self {
        Self::new(3)
    }

    fn record(&mut self, outcome: &Outcome, latency_us: u64) {
        match outcome {
            Outcome::Ok => self.ok += 1,
            Outcome::Failed(k) => *self.errors.entry(k.clone()).or_default() += 1,
        }
        if outcome.goes_in_histogram() {
            self.hist.saturating_record(latency_us);
        }
    }

    fn merge(&mut self, other: &Acc) {
        self.ok += other.ok;
        for (k, n) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += n;
        }
        // Same bounds on both sides: adding cannot fail.
        let _ = self.hist.add(&other.hist);
    }

    fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    pub(crate) fn stats(&self, group: LegitGroup, clients: u32, sources: String) -> GroupStats {
        let errors = self.error_count();
        let done = self.ok + errors;
        GroupStats {
            group,
            clients,
            sources,
            ok: self.ok,
            errors,
            success_rate: if done == 0 {
                0.0
            } else {
                self.ok as f64 / done as f64
            },
            errors_by_kind: self.errors.clone(),
            latency_us: latency(&self.hist),
        }
    }
}

fn latency(h: &Histogram<u64>) -> Latency {
    let q = |q: f64| {
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(q)
        }
    };
    Latency {
        count: h.len(),
        p50: q(0.5),
        p90: q(0.9),
        p99: q(0.99),
        p999: q(0.999),
        max: if h.is_empty() { 0 } else { h.max() },
        mean: if h.is_empty() { 0.0 } else { h.mean() },
    }
}

/// Live totals per group, for a progress line while the run goes on.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    inner: Arc<[[AtomicU64; 2]; 4]>,
}

/// Totals at one moment: (ok, errors) per group, in [`LegitGroup::ALL`] order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProgressSnapshot {
    /// Operations that succeeded, per group.
    pub ok: [u64; 4],
    /// Operations that failed, per group.
    pub errors: [u64; 4],
}

impl Progress {
    /// The totals now.
    pub fn snapshot(&self) -> ProgressSnapshot {
        let mut s = ProgressSnapshot::default();
        for (i, [ok, err]) in self.inner.iter().enumerate() {
            s.ok[i] = ok.load(Ordering::Relaxed);
            s.errors[i] = err.load(Ordering::Relaxed);
        }
        s
    }

    fn note(&self, group: LegitGroup, ok: bool) {
        let [o, e] = &self.inner[group.index()];
        if ok { o } else { e }.fetch_add(1, Ordering::Relaxed);
    }
}

/// Where the clients record their operations.
#[derive(Debug)]
pub(crate) struct Recorder {
    start: Instant,
    phases: PhaseHandle,
    progress: Progress,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    totals: BTreeMap<(usize, LegitGroup), Acc>,
    /// Seconds still receiving records, by (second, phase, group).
    open: BTreeMap<(u64, usize, LegitGroup), Acc>,
    /// Seconds below this are closed: late records go to the oldest open one.
    closed_before: u64,
    rows: Vec<SecondRow>,
}

/// Seconds a per-second row stays open for records from tasks that took the time just
/// before taking the lock.
const OPEN_SECONDS: u64 = 2;

impl Recorder {
    pub(crate) fn new(start: Instant, phases: PhaseHandle, progress: Progress) -> Self {
        Self {
            start,
            phases,
            progress,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Records one operation that ended at `now` and was due at `intended`.
    pub(crate) fn record(
        &self,
        group: LegitGroup,
        outcome: Outcome,
        intended: Instant,
        now: Instant,
    ) {
        let latency_us = micros(now.saturating_duration_since(intended));
        let phase = self.phases.current();
        let second = now.saturating_duration_since(self.start).as_secs();
        self.progress.note(group, outcome == Outcome::Ok);
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner
            .totals
            .entry((phase, group))
            .or_insert_with(|| Acc::new(3))
            .record(&outcome, latency_us);
        let second = second.max(inner.closed_before);
        inner
            .open
            .entry((second, phase, group))
            .or_insert_with(|| Acc::new(2))
            .record(&outcome, latency_us);
        if second >= OPEN_SECONDS {
            self.close_before(&mut inner, second - OPEN_SECONDS + 1);
        }
    }

    fn close_before(&self, inner: &mut Inner, second: u64) {
        while let Some(entry) = inner.open.first_entry() {
            if entry.key().0 >= second {
                break;
            }
            let ((s, phase, group), acc) = entry.remove_entry();
            inner.rows.push(SecondRow {
                second: s,
                phase: self.phases.name(phase),
                group,
                ok: acc.ok,
                errors: acc.error_count(),
                p50_us: latency(&acc.hist).p50,
                p99_us: latency(&acc.hist).p99,
            });
        }
        inner.closed_before = inner.closed_before.max(second);
    }

    /// Everything recorded: totals by (phase, group), and the per-second rows.
    pub(crate) fn finish(&self) -> (BTreeMap<(usize, LegitGroup), Acc>, Vec<SecondRow>) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        self.close_before(&mut inner, u64::MAX);
        (
            std::mem::take(&mut inner.totals),
            std::mem::take(&mut inner.rows),
        )
    }

    /// Merges the phases of `totals` into one accumulator per group.
    pub(crate) fn per_group(
        totals: &BTreeMap<(usize, LegitGroup), Acc>,
    ) -> BTreeMap<LegitGroup, Acc> {
        let mut out: BTreeMap<LegitGroup, Acc> = BTreeMap::new();
        for ((_, group), acc) in totals {
            out.entry(*group).or_insert_with(|| Acc::new(3)).merge(acc);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_replies_get_short_names() {
        assert_eq!(
            reply_kind("ERR max number of clients reached"),
            "max_clients"
        );
        assert_eq!(
            reply_kind("ERR moat: too many connections from your address"),
            "moat_refused"
        );
        assert_eq!(reply_kind("ERR moat: banned for 60s"), "moat_refused");
        assert_eq!(reply_kind("ERR moat: backend unavailable"), "moat_backend");
        assert_eq!(reply_kind("NOAUTH Authentication required."), "noauth");
        assert_eq!(reply_kind("LOADING Redis is loading"), "loading");
        assert_eq!(reply_kind(""), "error");
    }

    #[test]
    fn seconds_and_phases_are_kept_apart() {
        let t0 = Instant::now();
        let phases = PhaseHandle::new("baseline");
        let rec = Recorder::new(t0, phases.clone(), Progress::default());
        let s = Duration::from_secs(1);
        let ms = Duration::from_millis(1);
        rec.record(LegitGroup::Steady, Outcome::Ok, t0, t0 + ms);
        rec.record(LegitGroup::Steady, Outcome::Ok, t0, t0 + 2 * ms);
        phases.set("attack");
        let timeout = Outcome::Failed(kind::TIMEOUT.into());
        rec.record(LegitGroup::Steady, timeout, t0 + s, t0 + 2 * s);
        let refused = Outcome::Failed(kind::REFUSED.into());
        rec.record(LegitGroup::Fresh, refused, t0 + 5 * s, t0 + 5 * s);
        let (totals, rows) = rec.finish();
        let base = &totals[&(0, LegitGroup::Steady)];
        assert_eq!((base.ok, base.hist.len()), (2, 2));
        let attack = &totals[&(1, LegitGroup::Steady)];
        assert_eq!(
            (attack.ok, attack.error_count(), attack.hist.len()),
            (0, 1, 1)
        );
        // The refused probe counts, but stays out of the latency histogram.
        assert_eq!(totals[&(1, LegitGroup::Fresh)].hist.len(), 0);
        let keys: Vec<(u64, &str, LegitGroup)> = rows
            .iter()
            .map(|r| (r.second, r.phase.as_str(), r.group))
            .collect();
        assert_eq!(
            keys,
            [
                (0, "baseline", LegitGroup::Steady),
                (2, "attack", LegitGroup::Steady),
                (5, "attack", LegitGroup::Fresh),
            ]
        );
        assert!(rows[1].p99_us >= 999_000);
        let groups = Recorder::per_group(&totals);
        assert_eq!(groups[&LegitGroup::Steady].hist.len(), 3);
    }
}
