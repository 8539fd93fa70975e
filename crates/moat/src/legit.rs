//! `moat attack legit`: the legitimate workload of `moat_lab::legit` from the command line:
//! groups of clients at fixed offered rates against a loopback target, a progress line,
//! and a table (or JSON) of what each group got.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use moat_lab::legit::{self, LegitGroup, LegitSpec, PhaseHandle, Progress};
use tokio_util::sync::CancellationToken;

/// Options of `moat attack legit`.
#[derive(Debug, clap::Args)]
pub(crate) struct LegitArgs {
    /// The Redis (or proxy) to measure; loopback only unless --allow-non-loopback.
    #[arg(long)]
    target: SocketAddr,
    /// Let the target be a non-loopback address (measure only systems you own).
    #[arg(long)]
    allow_non_loopback: bool,
    /// How long operations are scheduled for (e.g. 10s, 1m).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Clients on persistent connections (from 127.1.0.0/16).
    #[arg(long, default_value_t = 20)]
    steady: u32,
    /// Clients that reconnect every --churn-every operations (from 127.2.0.0/16).
    #[arg(long, default_value_t = 10)]
    churn: u32,
    /// Operations a churn client sends on one connection.
    #[arg(long, default_value_t = 25)]
    churn_every: u32,
    /// Clients from the trusted address 127.0.0.1.
    #[arg(long, default_value_t = 1)]
    trusted: u32,
    /// Offered rate of each steady, churn and trusted client, operations per second.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Fresh probes per second, each from an address never used before (127.3.0.0/16);
    /// 0 turns them off.
    #[arg(long, default_value_t = 5.0)]
    fresh_rate: f64,
    /// Distinct source addresses per group (default: one per client).
    #[arg(long, default_value_t = 0)]
    sources_per_group: u32,
    /// Deadline of one operation, from its intended send time.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    op_timeout: Duration,
    /// Keys the workload reads and writes (prefixed `moat:legit:`).
    #[arg(long, default_value_t = 100)]
    keys: u32,
    /// Bytes of each value written.
    #[arg(long, default_value_t = 32)]
    value_size: usize,
    /// Print the full report as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

impl LegitArgs {
    fn spec(&self) -> LegitSpec {
        let mut spec = LegitSpec::new(self.target);
        spec.allow_non_loopback = self.allow_non_loopback;
        spec.duration = self.duration;
        spec.steady = self.steady;
        spec.churn = self.churn;
        spec.churn_every = self.churn_every;
        spec.trusted = self.trusted;
        spec.rate = self.rate;
        spec.fresh_rate = self.fresh_rate;
        spec.sources_per_group = self.sources_per_group;
        spec.op_timeout = self.op_timeout;
        spec.keys = self.keys;
        spec.value_size = self.value_size;
        spec
    }
}

/// Runs `moat attack legit` on a runtime of its own (the binary's `main` is synchronous).
pub(crate) fn run(args: LegitArgs) -> anyhow::Result<()> {
    // Checked before a runtime or a socket exists.
    let spec = args.spec();
    moat_lab::target::check(spec.target, spec.allow_non_loopback)?;
    spec.validate()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(execute(args))
}

/// `moat attack legit` inside a running runtime (for a caller that already has one, such as an
/// async `moat attack` dispatcher): runs the workload and prints its report.
pub(crate) async fn execute(args: LegitArgs) -> anyhow::Result<()> {
    let spec = args.spec();
    moat_lab::target::check(spec.target, spec.allow_non_loopback)?;
    spec.validate()?;
    super::raise_fd_limit();
    let stop = CancellationToken::new();
    let progress = Progress::default();
    // Ctrl-C ends the run early: the report is printed, marked partial.
    let ctrl_c = {
        let stop = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                stop.cancel();
            }
        })
    };
    let bar = std::io::stderr()
        .is_terminal()
        .then(|| show_progress(progress.clone(), spec.duration));
    let result = legit::run_with_progress(spec, PhaseHandle::new("run"), stop, progress).await;
    ctrl_c.abort();
    if let Some((bar, task)) = bar {
        task.abort();
        bar.finish_and_clear();
    }
    let report = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

/// A progress line on stderr: elapsed time and each group's ok and error counts.
fn show_progress(
    progress: Progress,
    duration: Duration,
) -> (indicatif::ProgressBar, tokio::task::JoinHandle<()>) {
    let bar = indicatif::ProgressBar::new(duration.as_millis().try_into().unwrap_or(u64::MAX));
    if let Ok(style) = indicatif::ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {msg}") {
        bar.set_style(style.progress_chars("=> "));
    }
    let shown = bar.clone();
    let task = tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            let s = progress.snapshot();
            let groups: Vec<String> = LegitGroup::ALL
                .iter()
                .enumerate()
                .filter(|(i, _)| s.ok[*i] + s.errors[*i] > 0)
                .map(|(i, g)| format!("{g} {} ok {} err", s.ok[i], s.errors[i]))
                .collect();
            shown.set_position(start.elapsed().as_millis().try_into().unwrap_or(u64::MAX));
            shown.set_message(groups.join(" | "));
        }
    });
    (bar, task)
}
