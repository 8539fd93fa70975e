//! `moat watch redis://host:port`: polls one Redis (and, when it runs on this host, the
//! host's view of it) over one named monitoring connection, runs the detectors, and prints
//! each alert as it is raised and resolved: human lines or JSON lines. `--once` polls just
//! long enough for the detectors to judge, prints what is active, and exits non-zero on an
//! alert (1 warning, 2 critical), for scripts and cron. `--tui` shows the live dashboard
//! instead of alert lines; `--snapshot FILE` keeps FILE holding its latest frame as text.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use moat_watch::Sample;
use moat_watch::collect::poller::{Poller, PollerConfig, redact};
use moat_watch::dashboard::terminal::{Input, Inputs, Tui};
use moat_watch::dashboard::{Dashboard, snapshot};
use moat_watch::detect::{DetectConfig, Detector, Event, Severity};

/// `moat watch`'s arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct WatchArgs {
    /// The Redis to watch: `redis://[user:pass@]host:port`.
    url: String,
    /// Time between polls.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Detector thresholds (TOML; every key optional, see docs/watch.md).
    #[arg(long)]
    thresholds: Option<PathBuf>,
    /// Check and exit: poll until the detectors can judge, print the active alerts, exit 1
    /// on a warning and 2 on a critical one.
    #[arg(long)]
    once: bool,
    /// Stop after this long (default: until Ctrl-C).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Sample `CLIENT LIST` (every `--clients-every` polls) to see who holds the
    /// connections: alerts name the top source.
    #[arg(long)]
    clients: bool,
    /// Polls between two `CLIENT LIST` samples (each walks every client on Redis).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    clients_every: u32,
    /// Output format of alert lines.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Show the live terminal dashboard (sparklines, clients gauge, top sources, alerts)
    /// instead of alert lines; q, Esc or Ctrl-C quits.
    #[arg(long, conflicts_with = "once")]
    tui: bool,
    /// Rewrite FILE with the dashboard's current frame, as text, after each poll (for
    /// reports and bug tickets); works with or without --tui.
    #[arg(long, value_name = "FILE")]
    snapshot: Option<PathBuf>,
    /// Size of the --snapshot frame, COLSxROWS (default: the terminal's with --tui, else
    /// 100x30).
    #[arg(long, value_name = "COLSxROWS", value_parser = parse_size)]
    snapshot_size: Option<(u16, u16)>,
}

/// `COLSxROWS`, e.g. `100x30`.
fn parse_size(text: &str) -> Result<(u16, u16), String> {
    let bad = || format!("expected COLSxROWS such as 100x30, got {text:?}");
    let (cols, rows) = text.split_once(['x', 'X']).ok_or_else(bad)?;
    let cols: u16 = cols.trim().parse().map_err(|_| bad())?;
    let rows: u16 = rows.trim().parse().map_err(|_| bad())?;
    if cols == 0 || rows == 0 {
        return Err(bad());
    }
    Ok((cols, rows))
}

/// The snapshot size without --tui or --snapshot-size.
const SNAPSHOT_SIZE: (u16, u16) = (100, 30);

/// How alerts are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    /// One human line per alert event.
    Text,
    /// One JSON object per alert event.
    Json,
}

/// Polls the detectors need before they can raise anything (their minimum duration).
const POLLS_TO_JUDGE: u32 = 3;

/// Runs `moat watch` until Ctrl-C, `--duration` or, with `--once`, its verdict.
pub(crate) fn main(args: WatchArgs) -> anyhow::Result<()> {
    let config = match &args.thresholds {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            DetectConfig::from_toml(&text).with_context(|| format!("{}", path.display()))?
        }
        None => DetectConfig::default(),
    };
    let mut poller_config = PollerConfig::new(&args.url);
    if args.clients {
        poller_config.clients_every = args.clients_every;
    }
    let poller = Poller::new(poller_config)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let worst = runtime.block_on(watch(args, poller, Detector::new(config)))?;
    match worst {
        Some(Severity::Critical) => std::process::exit(2),
        Some(Severity::Warning) => std::process::exit(1),
        None => Ok(()),
    }
}

async fn watch(
    args: WatchArgs,
    mut poller: Poller,
    mut detector: Detector,
) -> anyhow::Result<Option<Severity>> {
    let started = Instant::now();
    let mut ticker = tokio::time::interval(args.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut polls = 0u32;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut dashboard = (args.tui || args.snapshot.is_some()).then(|| {
        let c = detector.config();
        Dashboard::new(&args.url).clients_thresholds(c.clients_warning, c.clients_critical)
    });
    // The terminal is restored when `tui` drops: on return, on `?` and on panic.
    let mut tui = if args.tui {
        Some(Tui::enter().context("--tui needs a terminal on stdout")?)
    } else {
        None
    };
    let mut inputs = if args.tui {
        Some(Inputs::spawn().context("cannot read the terminal's keys")?)
    } else {
        None
    };
    let mut last_coverage = None;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = &mut ctrl_c => break,
            input = next_input(&mut inputs) => {
                match input {
                    Some(Input::Quit) => break,
                    Some(Input::Resize) => {
                        if let (Some(tui), Some(d)) = (tui.as_mut(), dashboard.as_ref()) {
                            tui.draw(d)?;
                        }
                    }
                    Some(Input::Other) => {}
                    // The key reader ended (the terminal went away): Ctrl-C still works.
                    None => inputs = None,
                }
                continue;
            }
        }
        // A poll of a Redis under attack can take seconds (its timeouts): keys still quit.
        let sample = tokio::select! {
            sample = poller.poll(Instant::now()) => sample,
            _ = &mut ctrl_c => break,
            Some(Input::Quit) = next_input(&mut inputs) => break,
        };
        if polls == 0 {
            let line = coverage(&args.url, &sample);
            // While the dashboard owns the terminal it says this in its header.
            if tui.is_none() {
                eprintln!("{line}");
            }
            last_coverage = Some(line);
        }
        polls += 1;
        let events = detector.observe(&sample);
        if tui.is_none() {
            for event in &events {
                print_event(args.format, event);
            }
        }
        if let Some(d) = dashboard.as_mut() {
            d.observe(&sample, &events);
            if let Some(tui) = tui.as_mut() {
                tui.draw(d)?;
            }
            if let Some(path) = &args.snapshot {
                let size = match (args.snapshot_size, tui.as_ref()) {
                    (Some(size), _) => size,
                    (None, Some(tui)) => tui.size().unwrap_or(SNAPSHOT_SIZE),
                    (None, None) => SNAPSHOT_SIZE,
                };
                write_snapshot(path, &snapshot(d, size.0, size.1))?;
            }
        }
        if args.once && polls >= POLLS_TO_JUDGE {
            break;
        }
        if args.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
    }
    drop(inputs);
    let had_tui = tui.is_some();
    drop(tui);
    if had_tui {
        // Back on the normal screen: leave a record of what was watched and what is on.
        if let Some(line) = last_coverage {
            eprintln!("{line}");
        }
        for (id, severity) in detector.active() {
            eprintln!("active at exit: {} {id}", severity_name(severity));
        }
    }
    let active = detector.active();
    if args.once {
        if active.is_empty() {
            println!("ok: no alert after {polls} polls");
        }
        for (id, severity) in &active {
            println!("active: {} {id}", severity_name(*severity));
        }
    }
    Ok(active.iter().map(|(_, s)| *s).max())
}

/// The next key or resize from the terminal; never, without one.
async fn next_input(inputs: &mut Option<Inputs>) -> Option<Input> {
    match inputs {
        Some(inputs) => inputs.next().await,
        None => std::future::pending().await,
    }
}

/// Replaces `path` with `frame` through a rename, so a reader never sees half a frame.
fn write_snapshot(path: &std::path::Path, frame: &str) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, frame)
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("cannot write the snapshot {}", path.display()))
}

/// The first poll's account of what is and is not watched.
fn coverage(url: &str, s: &Sample) -> String {
    let redis = if s.redis_reachable {
        let r = &s.redis;
        format!(
            "INFO ok (clients {} of maxclients {})",
            r.connected_clients.map_or("?".into(), |n| n.to_string()),
            r.maxclients
                .map_or("? (INFO and CONFIG lack it)".into(), |n| n.to_string())
        )
    } else {
        "Redis does not answer yet (reported as an alert if it goes on)".into()
    };
    let h = &s.host;
    let host = if h.fds.is_some() {
        "host view: kernel listen queues, the Redis process's fds, CPU and RSS".to_owned()
    } else if h.passive_opens.is_some() {
        "host view: kernel counters only (the Redis process is not visible here)".to_owned()
    } else {
        "no host view (Redis on another host, or /proc unreadable)".to_owned()
    };
    format!("moat watch: {}: {redis}; {host}", redact(url))
}

fn severity_name(s: Severity) -> &'static str {
    match s {
        Severity::Warning => "warning",
        Severity::Critical => "critical",
    }
}

fn print_event(format: Format, event: &Event) {
    let unix = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    match format {
        Format::Json => {
            let mut value = serde_json::to_value(event).unwrap_or_default();
            if let Some(obj) = value.as_object_mut() {
                obj.insert("unix_time".into(), unix.into());
            }
            println!("{value}");
        }
        Format::Text => match event {
            Event::Raised {
                id,
                severity,
                summary,
                value,
                threshold,
            } => println!(
                "{} RAISED {} {id}: {summary} (value {value:.1}, threshold {threshold:.1})",
                humantime::format_rfc3339_seconds(SystemTime::now()),
                severity_name(*severity)
            ),
            Event::Resolved { id, after } => println!(
                "{} RESOLVED {id} after {}",
                humantime::format_rfc3339_seconds(SystemTime::now()),
                humantime::format_duration(Duration::from_secs(after.as_secs()))
            ),
        },
    }
}
