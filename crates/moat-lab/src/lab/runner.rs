//! Runs a scenario: for each attack × target, a fresh target, the legitimate workload
//! through baseline → attack → recovery, the attack as a child process (`moat attack MODE
//! --json --quiet`) during the attack phase, and a sample every second. A target that dies
//! or a stop (Ctrl-C) ends the whole run early; what was measured is still reported.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::report::{LabReport, PhaseReport, RunReport};
use super::sampler::{self, Monitor, Sample};
use super::scenario::{AttackEntry, Scenario};
use super::targets::{self, Proc, Running, TargetDef};
use crate::attack::{AttackSpec, AttackSummary, Mode, PinHow};
use crate::legit::{self, LegitGroup, LegitReport, PhaseHandle};

/// How long a stopped attack gets to print its summary before it is killed.
const ATTACK_EXIT: Duration = Duration::from_secs(15);

/// How the lab runs, besides the scenario.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// The moat binary: runs `moat proxy` for the moat target and `moat attack` for attacks.
    pub exe: PathBuf,
    /// Endpoints the user started, attacked after the scenario's own targets.
    pub externals: Vec<TargetDef>,
    /// The moat target's config file.
    pub moat_config: Option<PathBuf>,
    /// This process's open-file limit (sizes the hardened Redis's maxclients).
    pub fd_limit: u64,
    /// Print what the lab does (targets started with their PIDs, runs) on stderr.
    pub verbose: bool,
}

/// Runs every attack of `scenario` against every target until done or `stop` is cancelled.
pub async fn run(scenario: &Scenario, options: &LabOptions, stop: CancellationToken) -> LabReport {
    let mut defs: Vec<TargetDef> = scenario
        .targets
        .iter()
        .map(|t| TargetDef::Started(*t))
        .collect();
    defs.extend(options.externals.iter().cloned());
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut report = LabReport {
        scenario: scenario.clone(),
        started_unix,
        partial: false,
        partial_reason: None,
        runs: Vec::new(),
    };
    'all: for entry in &scenario.attacks {
        for def in &defs {
            if stop.is_cancelled() {
                report.partial = true;
                report.partial_reason = Some("stopped (Ctrl-C)".into());
                break 'all;
            }
            if options.verbose {
                eprintln!("moat lab: {} against {}", entry.name, def.name());
            }
            let (run, abort) = one_run(scenario, entry, def, options, &stop).await;
            report.runs.push(run);
            if let Some(why) = abort {
                report.partial = true;
                report.partial_reason = Some(why);
                break 'all;
            }
        }
    }
    report
}

/// One attack against one target. Returns the run and, if the whole lab must stop, why.
async fn one_run(
    scenario: &Scenario,
    entry: &AttackEntry,
    def: &TargetDef,
    options: &LabOptions,
    stop: &CancellationToken,
) -> (RunReport, Option<String>) {
    let mut run = RunReport {
        attack: entry.name.clone(),
        target: def.name(),
        addr: String::new(),
        procs: Vec::new(),
        phases: Vec::new(),
        legit: None,
        attack_summary: None,
        moat_rss_growth: None,
        error: None,
        samples: Vec::new(),
    };
    let started = {
        let (def, exe, config, fds) = (
            def.clone(),
            options.exe.clone(),
            options.moat_config.clone(),
            options.fd_limit,
        );
        tokio::task::spawn_blocking(move || Running::start(&def, &exe, config.as_deref(), fds))
            .await
    };
    let running = match started {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            run.error = Some(e.to_string());
            // An endpoint of the user's that is down stays down: stop rather than fail
            // every later run the same way.
            return (run, Some(format!("target {}: {e}", def.name())));
        }
        Err(e) => {
            run.error = Some(e.to_string());
            return (run, Some(e.to_string()));
        }
    };
    run.addr = running.addr.to_string();
    run.procs = running.procs();
    if options.verbose {
        for p in &run.procs {
            eprintln!("moat lab: {}: started {} pid {}", run.target, p.role, p.pid);
        }
        eprintln!(
            "moat lab: {}: clients connect to {}",
            run.target, running.addr
        );
    }
    let target_addr = running.addr;
    let admin = running.admin;
    let monitor = Monitor::connect(running.info_addr).await;
    let running = Arc::new(Mutex::new(Some(running)));

    let run_stop = stop.child_token();
    let died: Arc<Mutex<Option<String>>> = Arc::default();
    // The lab's own process runs the legitimate workload: its CPU is ours, not foreign.
    let mut sampled = run.procs.clone();
    sampled.push(Proc {
        role: "lab".into(),
        pid: std::process::id(),
    });
    let procs = Arc::new(Mutex::new(sampled));
    let phases = PhaseHandle::new("baseline");
    let start = Instant::now();

    let spec = scenario.legit.spec(target_addr, scenario.phases.total());
    let legit_task = tokio::spawn(legit::run(spec, phases.clone(), run_stop.clone()));

    let sampler_stop = CancellationToken::new();
    let sampler_task = tokio::spawn(sample_loop(
        monitor,
        admin,
        start,
        phases.clone(),
        procs.clone(),
        running.clone(),
        died.clone(),
        run_stop.clone(),
        sampler_stop.clone(),
    ));

    let p = scenario.phases;
    let attack_at = start + p.baseline;
    let recovery_at = attack_at + p.attack;
    let mut attack_error = None;
    if sleep_until(attack_at, &run_stop).await {
        phases.set("attack");
        let spec = entry.spec(target_addr, p.attack);
        let child = match &spec {
            Some(spec) => match spawn_attack(&options.exe, spec) {
                Ok(child) => Some(child),
                Err(e) => {
                    attack_error = Some(e);
                    None
                }
            },
            None => None,
        };
        if let Some(child) = &child
            && let Some(pid) = child.id()
        {
            if let Ok(mut procs) = procs.lock() {
                procs.push(Proc {
                    role: "attack".into(),
                    pid,
                });
            }
            run.procs.push(Proc {
                role: "attack".into(),
                pid,
            });
        }
        let _ = sleep_until(recovery_at, &run_stop).await;
        if let Some(child) = child {
            match stop_attack(child).await {
                Ok(summary) => run.attack_summary = Some(summary),
                Err(e) => attack_error = Some(e),
            }
        }
        if let Ok(mut procs) = procs.lock() {
            procs.retain(|p| p.role != "attack");
        }
        if !run_stop.is_cancelled() {
            phases.set("recovery");
        }
    }
    let legit = legit_task.await;
    sampler_stop.cancel();
    run.samples = sampler_task.await.unwrap_or_default();
    let died = died.lock().ok().and_then(|d| d.clone());
    // Stopping a Redis waits for it: off the runtime's threads.
    let stopped = tokio::task::spawn_blocking(move || {
        let taken = running.lock().ok().and_then(|mut r| r.take());
        if let Some(r) = taken {
            r.stop();
        }
    });
    let _ = stopped.await;
    match legit {
        Ok(Ok(report)) => run.legit = Some(report),
        Ok(Err(e)) => run.error = Some(format!("legit workload: {e}")),
        Err(e) => run.error = Some(format!("legit workload: {e}")),
    }
    run.phases = phase_reports(scenario, run.legit.as_ref(), &run.samples);
    run.moat_rss_growth = run.moat_rss_growth();
    // Ctrl-C in a terminal reaches the lab's redis-servers too (same process group), so a
    // target that exits after a stop was stopped, not dead.
    let abort = if stop.is_cancelled() {
        Some("stopped (Ctrl-C)".into())
    } else if let Some(why) = died {
        run.error = Some(why.clone());
        Some(why)
    } else {
        None
    };
    if let Some(e) = attack_error {
        run.error = Some(match run.error.take() {
            Some(prev) => format!("{prev}; attack: {e}"),
            None => format!("attack: {e}"),
        });
    }
    (run, abort)
}

/// Sleeps until `at`; false if `stop` came first.
async fn sleep_until(at: Instant, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep_until(at) => true,
        _ = stop.cancelled() => false,
    }
}

#[allow(clippy::too_many_arguments)]
async fn sample_loop(
    mut monitor: Monitor,
    admin: Option<std::net::SocketAddr>,
    start: Instant,
    phases: PhaseHandle,
    procs: Arc<Mutex<Vec<Proc>>>,
    running: Arc<Mutex<Option<Running>>>,
    died: Arc<Mutex<Option<String>>>,
    run_stop: CancellationToken,
    stop: CancellationToken,
) -> Vec<Sample> {
    let mut out = Vec::new();
    // Half a second off the phase switches, so no sample straddles one.
    let mut tick =
        tokio::time::interval_at(start + Duration::from_millis(500), Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => break,
        }
        let now = procs.lock().map(|p| p.clone()).unwrap_or_default();
        let s = sampler::sample(
            start.elapsed().as_secs_f64(),
            phases.current_name(),
            &mut monitor,
            &now,
            admin,
        )
        .await;
        out.push(s);
        let why = running
            .lock()
            .ok()
            .and_then(|mut r| r.as_mut().and_then(Running::died));
        if let Some(why) = why {
            if let Ok(mut d) = died.lock() {
                *d = Some(why);
            }
            run_stop.cancel();
        }
    }
    out
}

/// `moat attack MODE ...` arguments for `spec`.
pub fn attack_args(spec: &AttackSpec) -> Vec<String> {
    let secs = |d: Duration| format!("{}", d.as_secs_f64());
    let mut a: Vec<String> = vec![spec.mode.name().to_owned()];
    let mut push = |k: &str, v: String| {
        a.push(k.to_owned());
        a.push(v);
    };
    push("--target", spec.target.to_string());
    push("--duration", secs(spec.duration));
    push("--sources", spec.sources.to_string());
    push("--connect-timeout", secs(spec.connect_timeout));
    let mut flags = Vec::new();
    match &spec.mode {
        Mode::Flood(f) => {
            push("--concurrency", f.concurrency.to_string());
            push("--count", f.count.to_string());
            if let Some(r) = f.rate {
                push("--rate", r.to_string());
            }
            if f.rst {
                flags.push("--rst".to_owned());
            }
            if let Some(w) = f.read_reply {
                flags.push(format!("--read-reply={}", secs(w)));
            }
        }
        Mode::Hoard(h) => {
            push("--connections", h.connections.to_string());
            push("--connect-concurrency", h.connect_concurrency.to_string());
            if let Some(k) = h.keepalive {
                push("--keepalive", secs(k));
            }
            if h.refill {
                flags.push("--refill".to_owned());
            }
        }
        Mode::Pin(p) => {
            push("--connections", p.connections.to_string());
            let how = match p.how {
                PinHow::Blpop => "blpop",
                PinHow::Subscribe => "subscribe",
                PinHow::Multi => "multi",
            };
            push("--how", how.to_owned());
            push("--key", p.key.clone());
            if p.refill {
                flags.push("--refill".to_owned());
            }
        }
        Mode::SlowReader(s) => {
            push("--connections", s.connections.to_string());
            push("--value-size", s.value_size.to_string());
            push("--pipeline", s.pipeline.to_string());
            push(
                "--max-bytes-per-connection",
                s.max_bytes_per_connection.to_string(),
            );
            push("--stall-after", secs(s.stall_after));
            push("--key", s.key.clone());
        }
        Mode::AuthBrute(b) => {
            push("--concurrency", b.concurrency.to_string());
            push("--count", b.count.to_string());
            push("--per-connection", b.per_connection.to_string());
            if let Some(r) = b.rate {
                push("--rate", r.to_string());
            }
            if let Some(u) = &b.username {
                push("--username", u.clone());
            }
        }
    }
    a.extend(flags);
    a.push("--json".into());
    a.push("--quiet".into());
    a
}

fn spawn_attack(exe: &std::path::Path, spec: &AttackSpec) -> Result<tokio::process::Child, String> {
    tokio::process::Command::new(exe)
        .arg("attack")
        .args(attack_args(spec))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: a terminal's Ctrl-C stops the lab, which stops the attack
        // at its phase's end and still reads its summary.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("starting moat attack: {e}"))
}

/// SIGTERM (by PID, while the child is unreaped), then its JSON summary from stdout.
async fn stop_attack(mut child: tokio::process::Child) -> Result<AttackSummary, String> {
    // Its shards, if it split itself: a parent killed outright could not stop them.
    let mut shards = Vec::new();
    if matches!(child.try_wait(), Ok(None))
        && let Some(pid) = child.id()
    {
        shards = sampler::descendants(pid, &sampler::parents());
        targets::signal(pid, "TERM");
    }
    let output = match tokio::time::timeout(ATTACK_EXIT, child.wait_with_output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => return Err(format!("waiting for moat attack: {e}")),
        Err(_) => {
            // Dropping the future dropped the child, which kill_on_drop kills.
            for pid in shards.into_iter().filter(|p| targets::alive(*p)) {
                targets::signal(pid, "KILL");
            }
            return Err("moat attack did not exit after SIGTERM; killed".into());
        }
    };
    serde_json::from_slice(&output.stdout).map_err(|e| {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().last().unwrap_or("").trim().to_owned();
        format!("no summary ({}): {e}; {last}", output.status)
    })
}

/// Per phase figures from the legit report and the samples.
fn phase_reports(
    scenario: &Scenario,
    legit: Option<&LegitReport>,
    samples: &[Sample],
) -> Vec<PhaseReport> {
    let cores = sampler::cores();
    scenario
        .phases
        .named()
        .iter()
        .map(|(name, _)| {
            let groups = legit
                .and_then(|l| l.phases.iter().find(|p| p.name == *name))
                .map(|p| p.groups.clone())
                .unwrap_or_default();
            let rate = |f: &dyn Fn(LegitGroup) -> bool| {
                let (ok, all) = groups
                    .iter()
                    .filter(|g| f(g.group))
                    .fold((0u64, 0u64), |(o, a), g| (o + g.ok, a + g.ok + g.errors));
                (all > 0).then(|| 100.0 * ok as f64 / all as f64)
            };
            let in_phase: Vec<&Sample> = samples.iter().filter(|s| s.phase == *name).collect();
            // Counters over a phase run from the last sample before it (when there is
            // one) to its last, so the half second before its first sample counts too.
            let from = samples
                .iter()
                .position(|s| s.phase == *name)
                .and_then(|i| samples.get(i.saturating_sub(1)));
            let span = from.zip(in_phase.last().copied());
            let info_max = |k: &str| in_phase.iter().filter_map(|s| s.info.get(k)).max().copied();
            let redis_rejected = span.and_then(|(first, last)| {
                let k = "rejected_connections";
                Some(last.info.get(k)?.saturating_sub(*first.info.get(k)?))
            });
            let moat_rss_max = in_phase
                .iter()
                .filter_map(|s| s.rss.get("moat"))
                .max()
                .copied();
            let moat_clients_max = in_phase
                .iter()
                .filter_map(|s| s.moat.get("moat_clients").copied())
                .reduce(f64::max);
            let mut moat_refused = std::collections::BTreeMap::new();
            if let Some((first, last)) = span {
                for (key, end) in &last.moat {
                    if let Some(reason) = key.strip_prefix("refused:") {
                        let begin = first.moat.get(key).copied().unwrap_or(0.0);
                        moat_refused.insert(reason.to_owned(), (end - begin).max(0.0));
                    }
                }
            }
            let mut cpu_s = std::collections::BTreeMap::new();
            let mut foreign_cpu = None;
            if let Some((first, last)) = span
                && last.t > first.t
            {
                for (role, end) in &last.cpu_s {
                    let begin = first.cpu_s.get(role).copied().unwrap_or(0.0);
                    cpu_s.insert(role.clone(), (end - begin).max(0.0));
                }
                let ours: f64 = cpu_s.values().sum();
                let busy = last.machine_busy_s - first.machine_busy_s;
                foreign_cpu = Some(((busy - ours) / ((last.t - first.t) * cores)).max(0.0));
            }
            PhaseReport {
                name: (*name).to_owned(),
                legit_success_pct: rate(&|g| g != LegitGroup::Fresh),
                fresh_success_pct: rate(&|g| g == LegitGroup::Fresh),
                groups,
                redis_connected_max: info_max("connected_clients"),
                redis_rejected,
                moat_rss_max,
                moat_clients_max,
                moat_refused,
                cpu_s,
                noisy: foreign_cpu.is_some_and(|f| f > scenario.noisy_cpu),
                foreign_cpu,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attack::HoardSpec;

    #[test]
    fn attack_args_name_every_flag() {
        let mut spec = AttackSpec::new(
            "127.0.0.1:6379".parse().expect("addr"),
            Mode::Hoard(HoardSpec {
                keepalive: Some(Duration::from_millis(500)),
                refill: true,
                ..HoardSpec::default()
            }),
        );
        spec.sources = 64;
        let args = attack_args(&spec).join(" ");
        assert!(args.starts_with("hoard --target 127.0.0.1:6379"), "{args}");
        assert!(args.contains("--sources 64"), "{args}");
        assert!(args.contains("--keepalive 0.5"), "{args}");
        assert!(args.ends_with("--refill --json --quiet"), "{args}");
    }
}
