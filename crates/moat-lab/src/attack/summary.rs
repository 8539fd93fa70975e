//! The final summary of an attack: what was asked, what happened, whether it ran to the end.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use super::{AttackSpec, CounterSnapshot};

/// What an attack did, for a report (`serde`) or a terminal (`Display`).
#[derive(Debug, Clone, Serialize)]
pub struct AttackSummary {
    /// The mode's name (`flood`, `hoard`...).
    pub mode: &'static str,
    /// The target attacked.
    pub target: String,
    /// Source addresses used.
    pub sources: u32,
    /// True when the attack was stopped (Ctrl-C, a lab's stop) before its duration or
    /// count was reached.
    pub partial: bool,
    /// How long it ran, in seconds.
    pub elapsed_secs: f64,
    /// Connection attempts per second over the run.
    pub attempts_per_sec: f64,
    /// The counters at the end. `held` and `stalled` are what was held when the attack
    /// stopped (everything is closed when `run` returns).
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
            mode: spec.mode.name(),
            target: spec.target.to_string(),
            sources: spec.sources,
            partial,
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

impl fmt::Display for AttackSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counters;
        writeln!(
            f,
            "moat attack {} against {} from {} source(s): {:.1}s{}",
            self.mode,
            self.target,
            self.sources,
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
            c.held, c.peak_held, c.closed_by_target, c.silent
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
        if !c.errors.is_empty() {
            writeln!(f, "  other errors:")?;
            for (kind, n) in &c.errors {
                writeln!(f, "    {n:>10}  {kind}")?;
            }
        }
        Ok(())
    }
}
