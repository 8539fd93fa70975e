//! `moat watch redis://host:port`: polls one Redis (and, when it runs on this host, the
//! host's view of it) over one named monitoring connection, runs the detectors, and prints
//! each alert as it is raised and resolved: human lines or JSON lines. `--once` polls just
//! long enough for the detectors to judge, prints what is active, and exits non-zero on an
//! alert (1 warning, 2 critical), for scripts and cron. `--moat ADMIN_URL` adds the view of a
//! moat in front of that Redis (refusals, bans, top sources).

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use moat_watch::Sample;
use moat_watch::collect::moat_view::MoatView;
use moat_watch::collect::poller::{Poller, PollerConfig, redact};
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
    /// The admin API of a moat in front of this Redis (`http://host:port`): adds moat's
    /// view (refusals, bans, top sources) to the alerts.
    #[arg(long, value_name = "ADMIN_URL")]
    moat: Option<String>,
    /// Bearer token of moat's admin API, when it requires one.
    #[arg(long, env = "MOAT_ADMIN_TOKEN", hide_env_values = true)]
    moat_token: Option<String>,
    /// Output format of alert lines.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

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
    let mut poller = Poller::new(poller_config)?;
    if let Some(url) = &args.moat {
        // A read must end well within a poll, or the poll waits for it.
        let timeout = args
            .interval
            .clamp(Duration::from_millis(200), Duration::from_secs(2));
        poller = poller.with_moat(MoatView::new(url, args.moat_token.clone(), timeout)?);
    }
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
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = &mut ctrl_c => break,
        }
        let sample = poller.poll(Instant::now()).await;
        if polls == 0 {
            eprintln!("{}", coverage(&args.url, &sample));
        }
        polls += 1;
        for event in detector.observe(&sample) {
            print_event(args.format, &event);
        }
        if args.once && polls >= POLLS_TO_JUDGE {
            break;
        }
        if args.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
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
    let moat = match &s.moat {
        None => String::new(),
        Some(m) if m.reachable => format!(
            "; moat's view: {} clients, {} refused so far, {} bans",
            m.clients.map_or("?".into(), |n| n.to_string()),
            m.refused_total.map_or("?".into(), |n| n.to_string()),
            m.bans_active.map_or("?".into(), |n| n.to_string())
        ),
        Some(_) => "; moat's admin API does not answer (wrong address or token?)".to_owned(),
    };
    format!("moat watch: {}: {redis}; {host}{moat}", redact(url))
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
