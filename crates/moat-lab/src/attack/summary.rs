//! The final summary of an attack: what was asked, what happened, whether it ran to the end.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{AttackSpec, CounterSnapshot};

/// What an attack did, for a report (`serde`) or a terminal (`Display`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttackSummary {
    /// The mode's name (`flood`, `hoard`...).
    pub mode: String,
    /// The target attacked.
    pub target: String,
    /// Source addresses used.
    pub sources: u32,
    /// True when the attack was stopped (Ctrl-C, a lab's stop) before its duration or
    /// count was reached.
    pub partial: bool,
    /// Processes the attack ran in (more than one when one could not hold every
    /// connection under its open-file limit).
    pub shards: u32,
    /// How long it ran, in seconds.
    pub elapsed_secs: f64,
    /// Connection attempts per second over the run.
    pub attempts_per_sec: f64,
    /// The counters at the end. The gauges `held` and `stalled` are back to 0 (everything
    /// is closed when `run` returns); `held_at_end` is what was held when the attack ended.
    pub counters: CounterSnapshot,
    /// The spec it ran with.
    pub spec: AttackSpec,
}

impl AttackSummary {
    pub(crate) fn new(
        spec: &AttackSpec,
        elapsed: Duration,
        partial: bool,
        counters: CounterSnapshot,
    ) -> Self {
        let secs = elapsed.as_secs_f64();
        Self {
            mode: spec.mode.name().to_owned(),
            target: spec.target.to_string(),
            sources: spec.sources,
            partial,
            shards: 1,
            elapsed_secs: secs,
            attempts_per_sec: if secs > 0.0 {
                counters.attempts as f64 / secs
            } else {
                0.0
            },
            counters,
            spec: spec.clone(),
        }
    }
}

impl AttackSummary {
    /// One summary of an attack run as shards (one per process): counters summed, partial
    /// if any shard was, `spec` the whole attack's.
    pub fn merge(spec: &AttackSpec, elapsed: Duration, parts: &[AttackSummary]) -> Self {
        let mut counters = CounterSnapshot::default();
        for part in parts {
            counters.merge(&part.counters);
        }
        let partial = parts.iter().any(|p| p.partial);
        let mut merged = Self::new(spec, elapsed, partial, counters);
        merged.shards = u32::try_from(parts.len()).unwrap_or(u32::MAX);
        merged
    }
}

impl fmt::Display for AttackSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counters;
        writeln!(
            f,
            "moat attack {} against {} from {} source(s){}: {:.1}s{}",
            self.mode,
            self.target,
            self.sources,
            if self.shards > 1 {
                format!(" in {} processes", self.shards)
            } else {
                String::new()
            },
            self.elapsed_secs,
            if self.partial {
                " (PARTIAL: stopped early)"
            } else {
                ""
            }
        )?;
        writeln!(
            f,
            "  connections: {} attempts ({:.0}/s), {} connected, {} refused, {} reset, \
             {} timed out, {} other errors",
            c.attempts,
            self.attempts_per_sec,
            c.connected,
            c.refused,
            c.reset,
            c.timeouts,
            c.other_errors
        )?;
        writeln!(
            f,
            "  held: {} at the end, {} at peak; {} closed by the target, {} silent",
            c.held_at_end, c.peak_held, c.closed_by_target, c.silent
        )?;
        if c.commands_sent > 0 {
            writeln!(
                f,
                "  commands sent: {}; reply bytes requested and not read: {}; stalled: {}",
                c.commands_sent, c.bytes_requested, c.stalled
            )?;
        }
        if !c.replies.is_empty() {
            writeln!(f, "  replies:")?;
            for (kind, n) in &c.replies {
                writeln!(f, "    {n:>10}  {kind}")?;
            }
        }
        if c.replies.keys().any(|k| k.starts_with("DENIED")) {
            writeln!(
                f,
                "  (DENIED: Redis is in protected mode and admits only 127.0.0.1 without a \
                 password; start it with --protected-mode no to attack it from 127.100.x.y)"
            )?;
        }
        if !c.errors.is_empty() {
            writeln!(f, "  other errors:")?;
            for (kind, n) in &c.errors {
                writeln!(f, "    {n:>10}  {kind}")?;
            }
        }
        Ok(())
    }
}
