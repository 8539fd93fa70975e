//! The lab's report: everything measured per target × attack × phase (serialized as
//! `report.json`) and the Markdown tables of `report.md`.

use std::fmt::Write as _;

use serde::Serialize;

use super::sampler::Sample;
use super::scenario::Scenario;
use super::targets::Proc;
use crate::attack::AttackSummary;
use crate::legit::{GroupStats, LegitGroup, LegitReport};

/// A whole lab run.
#[derive(Debug, Clone, Serialize)]
pub struct LabReport {
    /// The scenario run.
    pub scenario: Scenario,
    /// When it started (seconds since the Unix epoch).
    pub started_unix: u64,
    /// Whether the run stopped early.
    pub partial: bool,
    /// Why it stopped early.
    pub partial_reason: Option<String>,
    /// One entry per attack × target, in run order.
    pub runs: Vec<RunReport>,
}

/// One attack against one target.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// The attack's name.
    pub attack: String,
    /// The target's name.
    pub target: String,
    /// Where clients connected.
    pub addr: String,
    /// The processes started for it (target's and the attack's), by PID.
    pub procs: Vec<Proc>,
    /// Per phase figures.
    pub phases: Vec<PhaseReport>,
    /// The legitimate workload's full report (with per-second rows).
    pub legit: Option<LegitReport>,
    /// The attack's summary (from `moat attack --json`).
    pub attack_summary: Option<AttackSummary>,
    /// moat's RSS growth over the run (highest sample minus the first), bytes.
    pub moat_rss_growth: Option<i64>,
    /// What went wrong, if anything (the attack failed, the target died...).
    pub error: Option<String>,
    /// One sample per second.
    pub samples: Vec<Sample>,
}

/// One phase of a run.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    /// `baseline`, `attack` or `recovery`.
    pub name: String,
    /// Legitimate operations that succeeded, percent, all groups.
    pub legit_success_pct: Option<f64>,
    /// Fresh probes that succeeded, percent.
    pub fresh_success_pct: Option<f64>,
    /// Per group: success, latencies (p50/p99/p99.9/max) and errors by kind.
    pub groups: Vec<GroupStats>,
    /// Redis's connected_clients, highest sample.
    pub redis_connected_max: Option<u64>,
    /// Redis connections refused (rejected_connections) during the phase.
    pub redis_rejected: Option<u64>,
    /// moat's RSS, highest sample, bytes.
    pub moat_rss_max: Option<u64>,
    /// moat's clients (`moat_clients`), highest sample.
    pub moat_clients_max: Option<f64>,
    /// Connections moat refused during the phase, by reason (`moat_connections_refused`).
    pub moat_refused: std::collections::BTreeMap<String, f64>,
    /// CPU seconds used per process role during the phase.
    pub cpu_s: std::collections::BTreeMap<String, f64>,
    /// Busy CPU of the machine not used by the lab's processes, as a share of all cores.
    pub foreign_cpu: Option<f64>,
    /// Foreign CPU above the scenario's threshold: discard this phase's numbers.
    pub noisy: bool,
}

impl PhaseReport {
    /// The p99 of the steady group, microseconds.
    pub fn steady_p99(&self) -> Option<u64> {
        self.groups
            .iter()
            .find(|g| g.group == LegitGroup::Steady && g.latency_us.count > 0)
            .map(|g| g.latency_us.p99)
    }
}

impl RunReport {
    /// The phase called `name`.
    pub fn phase(&self, name: &str) -> Option<&PhaseReport> {
        self.phases.iter().find(|p| p.name == name)
    }

    /// moat's RSS growth over the run: highest sample minus the first, bytes.
    pub fn moat_rss_growth(&self) -> Option<i64> {
        let series: Vec<u64> = self
            .samples
            .iter()
            .filter_map(|s| s.rss.get("moat").copied())
            .collect();
        let first = *series.first()?;
        let max = *series.iter().max()?;
        Some(i64::try_from(max).unwrap_or(i64::MAX) - i64::try_from(first).unwrap_or(0))
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.1}%"))
}

fn ms(us: Option<u64>) -> String {
    us.map_or("–".into(), |us| format!("{:.2} ms", us as f64 / 1000.0))
}

impl LabReport {
    /// The Markdown report: a table per attack, rows = targets.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# moat lab: {}\n", self.scenario.name);
        if self.partial {
            let _ = writeln!(
                out,
                "**Partial report**: {}\n",
                self.partial_reason.as_deref().unwrap_or("stopped early")
            );
        }
        let p = &self.scenario.phases;
        let _ = writeln!(
            out,
            "Phases: baseline {:?}, attack {:?}, recovery {:?}. Legit success and fresh \
             probes are measured during the attack phase; p99 is the steady group's.\n",
            p.baseline, p.attack, p.recovery
        );
        let mut attacks: Vec<&str> = Vec::new();
        for r in &self.runs {
            if !attacks.contains(&r.attack.as_str()) {
                attacks.push(&r.attack);
            }
        }
        for attack in attacks {
            let _ = writeln!(out, "## {attack}\n");
            let _ = writeln!(
                out,
                "| target | legit success | legit p99 (baseline → attack) | fresh probes | \
                 Redis connections max | moat RSS growth | notes |"
            );
            let _ = writeln!(out, "|---|---|---|---|---|---|---|");
            for r in self.runs.iter().filter(|r| r.attack == attack) {
                let base = r.phase("baseline");
                let att = r.phase("attack");
                let (b99, a99) = (
                    base.and_then(PhaseReport::steady_p99),
                    att.and_then(PhaseReport::steady_p99),
                );
                let ratio = match (b99, a99) {
                    (Some(b), Some(a)) if b > 0 => format!(" (×{:.1})", a as f64 / b as f64),
                    _ => String::new(),
                };
                let growth = r.moat_rss_growth().map_or("–".into(), |g| {
                    format!("{:+.1} MiB", g as f64 / (1024.0 * 1024.0))
                });
                let mut notes = Vec::new();
                if r.phases.iter().any(|p| p.noisy) {
                    notes.push("noisy".to_owned());
                }
                if let Some(e) = &r.error {
                    notes.push(e.replace('|', "/"));
                }
                let _ = writeln!(
                    out,
                    "| {} | {} | {} → {}{} | {} | {} | {} | {} |",
                    r.target,
                    pct(att.and_then(|p| p.legit_success_pct)),
                    ms(b99),
                    ms(a99),
                    ratio,
                    pct(att.and_then(|p| p.fresh_success_pct)),
                    att.and_then(|p| p.redis_connected_max)
                        .map_or("–".into(), |c| c.to_string()),
                    growth,
                    notes.join("; "),
                );
            }
            let _ = writeln!(out);
        }
        let _ = writeln!(
            out,
            "Charts per attack: `ATTACK-p99.svg` (steady p99 over time, attack window \
             shaded), `ATTACK-success.svg` (success per phase), \
             `ATTACK-redis-connections.svg`, `ATTACK-moat-rss.svg`; every number is in \
             `report.json`."
        );
        out
    }
}
