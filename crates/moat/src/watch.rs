//! `moat watch redis://host:port`: polls one Redis (and, when it runs on this host, the
//! host's view of it) over one named monitoring connection, runs the detectors, and prints
//! each alert as it is raised and resolved: human lines or JSON lines. `--once` polls just
//! long enough for the detectors to judge, prints what is active, and exits non-zero on an
//! alert (1 warning, 2 critical), for scripts and cron. `--moat ADMIN_URL` adds the view of a
//! moat in front of that Redis (refusals, bans, top sources).
//!
//! `--webhook URL` (repeatable) POSTs each event from a bounded queue off the poll loop;
//! `--metrics ADDR` serves the latest sample and the alerts on `/metrics` from the same
//! runtime. Both are in `moat_watch::sink`. `--tui` shows the live dashboard instead of
//! alert lines; `--snapshot FILE` keeps FILE holding its latest frame as text.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use moat_watch::Sample;
use moat_watch::collect::moat_view::MoatView;
use moat_watch::collect::poller::{Poller, PollerConfig, redact};
use moat_watch::dashboard::terminal::{Input, Inputs, Tui};
use moat_watch::dashboard::{Dashboard, snapshot};
use moat_watch::detect::{DetectConfig, Detector, Event, Severity};
use moat_watch::sink::prometheus::{Exporter, WatcherStats};
use moat_watch::sink::webhook::{Webhook, WebhookConfig};

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
    /// Stop after this long (default: until Ctrl-C or SIGTERM).
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
    /// POST every alert event as JSON to this http:// or https:// URL (repeatable); a
    /// slow or dead receiver never holds up the watch.
    #[arg(long = "webhook", value_name = "URL")]
    webhooks: Vec<String>,
    /// Longest wait for one webhook request.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    webhook_timeout: Duration,
    /// Serve the signals and alerts in Prometheus format on `ADDR` at `/metrics` (e.g.
    /// 127.0.0.1:9121; port 0 picks one, printed on stderr).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
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

/// How long queued webhook events may still be delivered at exit.
const WEBHOOK_GRACE: Duration = Duration::from_secs(3);

/// Runs `moat watch` until Ctrl-C or SIGTERM, `--duration` or, with `--once`, its verdict.
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
    let webhook = if args.webhooks.is_empty() {
        None
    } else {
        let config = WebhookConfig {
            timeout: args.webhook_timeout,
            ..WebhookConfig::default()
        };
        let hook = Webhook::start(
            &args.webhooks,
            config,
            redact(&args.url),
            moat_watch::sink::host_name(),
        )?;
        Some(hook)
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let worst = runtime.block_on(watch(args, poller, Detector::new(config), webhook.as_ref()));
    if let Some(hook) = webhook {
        let pending = hook.stats().queued;
        if pending > 0 {
            eprintln!(
                "moat watch: delivering {pending} queued webhook event(s) (at most {}s)",
                WEBHOOK_GRACE.as_secs()
            );
        }
        let report = hook.shutdown(WEBHOOK_GRACE);
        let s = report.stats;
        if report.lost > 0 || s.failed > 0 || s.dropped > 0 {
            eprintln!(
                "moat watch: webhook: {} sent, {} failed, {} dropped, {} lost at exit",
                s.sent, s.failed, s.dropped, report.lost
            );
        }
    }
    match worst? {
        Verdict::Alert(Severity::Critical) => std::process::exit(2),
        Verdict::Alert(Severity::Warning) => std::process::exit(1),
        Verdict::Unknown => std::process::exit(3),
        Verdict::Ok => Ok(()),
    }
}

async fn watch(
    args: WatchArgs,
    mut poller: Poller,
    mut detector: Detector,
    webhook: Option<&Webhook>,
) -> anyhow::Result<Verdict> {
    let exporter = match args.metrics {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for --metrics"))?;
            let bound = listener.local_addr()?;
            eprintln!("moat watch: metrics on http://{bound}/metrics");
            let exporter = Exporter::new();
            let serving = exporter.clone();
            tokio::spawn(async move {
                if let Err(e) = serving.serve(listener).await {
                    eprintln!("moat watch: the metrics server stopped: {e}");
                }
            });
            Some(exporter)
        }
        None => None,
    };
    let mut stats = WatcherStats::default();
    let started = Instant::now();
    let mut ticker = tokio::time::interval(args.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut polls = 0u32;
    // SIGTERM too (a service manager stopping the watch), so queued webhook events still
    // get their flush at exit.
    let stop = tokio_util::sync::CancellationToken::new();
    let on_signal = crate::stop::on_signal(&stop, None)?;
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
    // Why Redis refuses the watch, as of the last poll.
    let mut refused: Option<String> = None;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.cancelled() => break,
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
        let sample: Sample = tokio::select! {
            sample = poller.poll(Instant::now()) => sample,
            _ = stop.cancelled() => break,
            Some(Input::Quit) = next_input(&mut inputs) => break,
        };
        if polls > 0 && sample.redis_refused != refused && tui.is_none() {
            match &sample.redis_refused {
                Some(why) => eprintln!("moat watch: Redis now refuses the watch: {why}"),
                None => eprintln!("moat watch: Redis accepts the watch again"),
            }
        }
        refused.clone_from(&sample.redis_refused);
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
        if detector.wants_clients() {
            poller.sample_clients_next();
        }
        for event in &events {
            if tui.is_none() {
                print_event(args.format, event);
            }
            if let Some(hook) = webhook {
                hook.send(event);
            }
        }
        if let Some(exporter) = &exporter {
            stats.polls += 1;
            stats.polls_unreachable += u64::from(!sample.redis_reachable);
            stats.connects = poller.connects();
            stats.connect_attempts = poller.attempts();
            stats.last_poll_unix = unix_now();
            exporter.update(
                &sample,
                &detector.active(),
                stats,
                webhook.map(Webhook::stats),
            );
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
    on_signal.abort();
    let active = detector.active();
    if args.once {
        if let (true, Some(why)) = (active.is_empty(), &refused) {
            // Nothing raised, but nothing of Redis's own was judged either.
            println!("unknown: Redis refuses the watch: {why}");
            return Ok(Verdict::Unknown);
        }
        if active.is_empty() {
            println!("ok: no alert after {polls} polls");
        }
        for (id, severity) in &active {
            println!("active: {} {id}", severity_name(*severity));
        }
    }
    Ok(active
        .iter()
        .map(|(_, s)| *s)
        .max()
        .map_or(Verdict::Ok, Verdict::Alert))
}

/// How the watch ends, for its exit status.
enum Verdict {
    /// No alert active (exit 0).
    Ok,
    /// The worst active alert (exit 1 warning, 2 critical).
    Alert(Severity),
    /// `--once` could not judge: Redis refuses the watch (exit 3, as monitoring plugins'
    /// UNKNOWN).
    Unknown,
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
    let redis = if let Some(why) = &s.redis_refused {
        format!(
            "Redis answers but refuses the watch ({why}): its own signals are NOT watched; give \
             the watch a user allowed INFO (see docs/watch.md)"
        )
    } else if s.redis_reachable {
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

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

fn print_event(format: Format, event: &Event) {
    match format {
        Format::Json => {
            println!("{}", moat_watch::sink::event_json(event, unix_now()));
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
