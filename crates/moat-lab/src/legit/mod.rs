//! The legitimate workload: groups of well-behaved clients, each from its own source
//! addresses and at a fixed offered rate, measured while attacks run, so a report can say
//! what legitimate clients got (success, latency, errors by kind) per phase and second.
//!
//! Modules:
//! - [`spec`]: what to run ([`LegitSpec`]) and its bounds.
//! - [`schedule`]: the open-loop schedule (pure, takes `now`): latency is measured from
//!   each operation's intended send time, so a slow target cannot hide behind a client
//!   that sends less.
//! - [`phase`]: named phases the caller switches while the workload runs.
//! - [`stats`]: HdrHistograms and error counts per phase, group and second; live progress.
//! - [`report`]: the serializable result and its text table.
//! - `ops` and `clients` (private): requests, reply checks and the client tasks.
//!
//! ```no_run
//! # async fn demo() -> Result<(), moat_lab::legit::LegitError> {
//! use moat_lab::legit::{LegitSpec, PhaseHandle, run};
//! let spec = LegitSpec::new("127.0.0.1:6379".parse().expect("address"));
//! let phases = PhaseHandle::new("baseline");
//! let stop = tokio_util::sync::CancellationToken::new();
//! let report = run(spec, phases, stop).await?;
//! println!("{}", report.table());
//! # Ok(()) }
//! ```

mod clients;
mod ops;
pub mod phase;
pub mod report;
pub mod schedule;
pub mod spec;
pub mod stats;

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use phase::PhaseHandle;
pub use report::{GroupStats, LegitReport, PhaseStats};
pub use spec::{LegitGroup, LegitSpec, OpMix};
pub use stats::{Progress, ProgressSnapshot};

use crate::sources::{Group, MAX_SOURCES, Sources};
use crate::target::{TargetError, check};
use clients::Ctx;
use schedule::Schedule;
use stats::Recorder;

/// Why a workload could not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LegitError {
    /// A number in the spec is out of its bounds.
    #[error("invalid legit workload: {0}")]
    InvalidSpec(String),
    /// The target may not be measured (not loopback, and not allowed).
    #[error(transparent)]
    Target(#[from] TargetError),
}

/// Time past the last operation's deadline the run waits for its clients before it stops
/// them outright.
const GRACE: Duration = Duration::from_secs(2);

/// Runs the workload of `spec` until its duration ends or `stop` is cancelled, filing
/// measurements under the phase `phases` says is current.
pub async fn run(
    spec: LegitSpec,
    phases: PhaseHandle,
    stop: CancellationToken,
) -> Result<LegitReport, LegitError> {
    run_with_progress(spec, phases, stop, Progress::default()).await
}

/// [`run`], updating `progress` as operations end (for a progress line).
pub async fn run_with_progress(
    spec: LegitSpec,
    phases: PhaseHandle,
    stop: CancellationToken,
    progress: Progress,
) -> Result<LegitReport, LegitError> {
    spec.validate()?;
    check(spec.target, spec.allow_non_loopback)?;
    let start = Instant::now();
    // The clients stop on their own at the end of the schedule; this token also lets the
    // run cut them off after the grace period without cancelling the caller's.
    let inner_stop = stop.child_token();
    let ctx = Arc::new(Ctx {
        recorder: Recorder::new(start, phases.clone(), progress),
        stop: inner_stop.clone(),
        spec,
    });
    let spec = &ctx.spec;
    let mut tasks = JoinSet::new();
    let mut seed = 0u64;
    for group in [LegitGroup::Steady, LegitGroup::Churn, LegitGroup::Trusted] {
        let n = spec.clients(group);
        let sources = group_sources(spec, group);
        let reconnect = (group == LegitGroup::Churn).then_some(spec.churn_every);
        for k in 0..n {
            // Spread the clients' first operations over one interval, so they do not all
            // connect in the same instant.
            let offset = Duration::from_secs_f64(f64::from(k) / f64::from(n) / spec.rate);
            let schedule =
                Schedule::at_rate(start + offset, spec.rate, spec.duration, spec.op_timeout)
                    .with_early(clients::EARLY);
            seed += 1;
            tasks.spawn(clients::client(
                ctx.clone(),
                group,
                sources.nth(k),
                schedule,
                reconnect,
                seed,
            ));
        }
    }
    if spec.fresh_rate > 0.0 {
        let schedule = Schedule::at_rate(start, spec.fresh_rate, spec.duration, spec.op_timeout)
            .with_early(clients::EARLY);
        let fresh = Sources::new(Group::Fresh, MAX_SOURCES);
        let first = u64::from(spec.fresh_first);
        // validate() keeps first + probes within the range.
        let addr = move |i: u64| fresh.nth(u32::try_from(first + i).unwrap_or(0));
        tasks.spawn(clients::fresh(ctx.clone(), schedule, addr, u64::MAX));
    }
    let hard_stop = start + spec.duration + spec.op_timeout + GRACE;
    loop {
        tokio::select! {
            next = tasks.join_next() => if next.is_none() { break },
            _ = tokio::time::sleep_until(hard_stop) => {
                inner_stop.cancel();
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                break;
            }
        }
    }
    let end = Instant::now();
    Ok(build_report(&ctx, &phases, start, end, stop.is_cancelled()))
}

/// The addresses a steady, churn or trusted group's clients connect from (client `k` uses
/// the `k`-th).
fn group_sources(spec: &LegitSpec, group: LegitGroup) -> Sources {
    let count = match spec.sources_per_group {
        0 => spec.clients(group),
        n => n,
    };
    Sources::new(group.sources(), count)
}

fn describe_sources(spec: &LegitSpec, group: LegitGroup) -> String {
    match group {
        LegitGroup::Fresh => {
            let fresh = Sources::new(Group::Fresh, MAX_SOURCES);
            let probes = u32::try_from(spec.fresh_probes()).unwrap_or(MAX_SOURCES);
            let last = spec.fresh_first.saturating_add(probes.saturating_sub(1));
            format!(
                "{}-{} (one per probe)",
                fresh.nth(spec.fresh_first),
                fresh.nth(last)
            )
        }
        _ => {
            let s = group_sources(spec, group);
            let used = s.count().min(spec.clients(group).max(1));
            if used == 1 {
                s.nth(0).to_string()
            } else {
                format!("{}-{} ({used})", s.nth(0), s.nth(used - 1))
            }
        }
    }
}

fn build_report(
    ctx: &Ctx,
    phases: &PhaseHandle,
    start: Instant,
    end: Instant,
    partial: bool,
) -> LegitReport {
    let spec = &ctx.spec;
    let (totals, seconds) = ctx.recorder.finish();
    let stats = |group: LegitGroup, acc: &stats::Acc| {
        acc.stats(group, spec.clients(group), describe_sources(spec, group))
    };
    let per_group = Recorder::per_group(&totals);
    let groups = LegitGroup::ALL
        .into_iter()
        .filter(|g| spec.clients(*g) > 0)
        .map(|g| match per_group.get(&g) {
            Some(acc) => stats(g, acc),
            None => stats(g, &stats::Acc::empty()),
        })
        .collect();
    let names = phases.names();
    let phase_stats = names
        .iter()
        .enumerate()
        .filter_map(|(i, name)| {
            let groups: Vec<GroupStats> = totals
                .iter()
                .filter(|((p, _), _)| *p == i)
                .map(|((_, g), acc)| stats(*g, acc))
                .collect();
            (!groups.is_empty()).then(|| PhaseStats {
                name: name.clone(),
                groups,
            })
        })
        .collect();
    LegitReport {
        target: spec.target.to_string(),
        partial,
        elapsed_s: end.duration_since(start).as_secs_f64(),
        spec: spec.clone(),
        groups,
        phases: phase_stats,
        phase_spans: spans(phases, &names, start, end),
        seconds,
        fresh_next: u32::try_from(u64::from(spec.fresh_first) + spec.fresh_probes())
            .unwrap_or(MAX_SOURCES),
    }
}

/// The phases' intervals within `start..end`, in seconds from `start`.
fn spans(
    phases: &PhaseHandle,
    names: &[String],
    start: Instant,
    end: Instant,
) -> Vec<report::PhaseSpan> {
    let switches = phases.switches();
    let at = |t: Instant| t.clamp(start, end).duration_since(start).as_secs_f64();
    let mut out = Vec::new();
    for (i, (phase, from)) in switches.iter().enumerate() {
        let to = switches.get(i + 1).map_or(end, |s| s.1);
        if to <= start || *from >= end {
            continue;
        }
        out.push(report::PhaseSpan {
            phase: names.get(*phase).cloned().unwrap_or_default(),
            start_s: at(*from),
            end_s: at(to),
        });
    }
    out
}
