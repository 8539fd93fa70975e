//! What a run measured, serializable for `report.json` and printable as a table.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::spec::{LegitGroup, LegitSpec};

/// The result of a legitimate workload run.
#[derive(Debug, Clone, Serialize)]
pub struct LegitReport {
    /// The endpoint measured.
    pub target: String,
    /// True when the run was stopped before its duration ended (its numbers cover less).
    pub partial: bool,
    /// Seconds from the first scheduled operation to the end of the last one.
    pub elapsed_s: f64,
    /// The workload as run.
    pub spec: LegitSpec,
    /// Per group, over the whole run.
    pub groups: Vec<GroupStats>,
    /// Per phase, per group.
    pub phases: Vec<PhaseStats>,
    /// When each phase was current, in seconds from the start of the run.
    pub phase_spans: Vec<PhaseSpan>,
    /// Per second, phase and group (the second an operation ended in), for charts.
    pub seconds: Vec<SecondRow>,
    /// The first fresh address index this run did not use: a later run against the same
    /// target passes it as `fresh_first` so its probes still come from never-seen addresses.
    pub fresh_next: u32,
}

/// Measurements of one group of clients.
#[derive(Debug, Clone, Serialize)]
pub struct GroupStats {
    /// Which group.
    pub group: LegitGroup,
    /// Clients in the group (fresh: 1 when probing).
    pub clients: u32,
    /// The source addresses the group connected from.
    pub sources: String,
    /// Operations that got the right reply.
    pub ok: u64,
    /// Operations that failed, in all.
    pub errors: u64,
    /// `ok / (ok + errors)`; 0 when nothing ran.
    pub success_rate: f64,
    /// Failures by kind (`refused`, `reset`, `timeout`, `max_clients`, `moat_refused`...).
    pub errors_by_kind: BTreeMap<String, u64>,
    /// Latency from each operation's intended send time, in microseconds.
    pub latency_us: Latency,
}

/// Latency percentiles in microseconds, from the intended send time (so a late client's
/// lateness counts). Holds successes and timeouts, not fast failures.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    /// Operations in the histogram.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
    /// Mean.
    pub mean: f64,
}

/// The groups' measurements during one phase.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseStats {
    /// The phase's name.
    pub name: String,
    /// Each group that ran operations in it.
    pub groups: Vec<GroupStats>,
}

/// An interval during which one phase was current.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseSpan {
    /// The phase's name.
    pub phase: String,
    /// Seconds from the start of the run.
    pub start_s: f64,
    /// Seconds from the start of the run.
    pub end_s: f64,
}

/// One group's operations that ended in one second of the run.
#[derive(Debug, Clone, Serialize)]
pub struct SecondRow {
    /// Seconds since the start of the run.
    pub second: u64,
    /// The phase current when the operations ended.
    pub phase: String,
    /// Which group.
    pub group: LegitGroup,
    /// Operations that succeeded.
    pub ok: u64,
    /// Operations that failed.
    pub errors: u64,
    /// Median latency, microseconds (0 when only fast failures ended then).
    pub p50_us: u64,
    /// 99th percentile latency, microseconds (0 when only fast failures ended then).
    pub p99_us: u64,
}

impl LegitReport {
    /// The whole-run measurements of `group`, if it ran.
    pub fn group(&self, group: LegitGroup) -> Option<&GroupStats> {
        self.groups.iter().find(|g| g.group == group)
    }

    /// The measurements of `group` during phase `name`, if it ran then.
    pub fn phase_group(&self, name: &str, group: LegitGroup) -> Option<&GroupStats> {
        self.phases
            .iter()
            .find(|p| p.name == name)?
            .groups
            .iter()
            .find(|g| g.group == group)
    }

    /// A text table per group (and per phase when there are several).
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "legit workload against {}: {:.1}s{}",
            self.target,
            self.elapsed_s,
            if self.partial {
                " (stopped early: partial)"
            } else {
                ""
            }
        );
        table(&mut out, "all", &self.groups);
        if self.phases.len() > 1 {
            for phase in &self.phases {
                table(&mut out, &phase.name, &phase.groups);
            }
        }
        out
    }
}

fn table(out: &mut String, phase: &str, groups: &[GroupStats]) {
    let _ = writeln!(
        out,
        "\n{:<10} {:<8} {:>8} {:>7} {:>8} {:>9} {:>9} {:>9} {:>9}  errors",
        "phase", "group", "ok", "errors", "success", "p50 ms", "p99 ms", "p99.9 ms", "max ms"
    );
    for g in groups {
        let ms = |us: u64| us as f64 / 1000.0;
        let kinds: Vec<String> = g
            .errors_by_kind
            .iter()
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        let _ = writeln!(
            out,
            "{:<10} {:<8} {:>8} {:>7} {:>7.1}% {:>9.2} {:>9.2} {:>9.2} {:>9.2}  {}",
            phase,
            g.group,
            g.ok,
            g.errors,
            g.success_rate * 100.0,
            ms(g.latency_us.p50),
            ms(g.latency_us.p99),
            ms(g.latency_us.p999),
            ms(g.latency_us.max),
            kinds.join(" ")
        );
    }
}
