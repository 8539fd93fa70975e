//! `moat attack MODE --target HOST:PORT`: runs one of moat-lab's attacks against a loopback
//! target, with a live progress line on stderr and a summary (text, or JSON with `--json`)
//! on stdout. Ctrl-C (or SIGTERM) stops it early; the summary is still printed, marked partial.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use moat_lab::attack::{
    self, AttackSpec, AuthBruteSpec, Counters, FloodSpec, HoardSpec, Mode, PinHow, PinSpec,
    SlowReaderSpec, progress::Progress,
};
use tokio_util::sync::CancellationToken;

/// Options of `moat attack`.
#[derive(Debug, clap::Args)]
pub(crate) struct AttackArgs {
    #[command(subcommand)]
    mode: AttackMode,
}

/// One subcommand per attack mode.
#[derive(Debug, Subcommand)]
enum AttackMode {
    /// Connect and close as fast as possible (bounded concurrency; --rst closes with an RST).
    Flood {
        #[command(flatten)]
        common: Common,
        /// Connects in flight at once.
        #[arg(long, default_value_t = 64)]
        concurrency: u32,
        /// The most connection attempts.
        #[arg(long, default_value_t = 10_000_000)]
        count: u64,
        /// Attempts per second at most (default: as fast as the target answers).
        #[arg(long)]
        rate: Option<f64>,
        /// Close with an RST (SO_LINGER 0) instead of a FIN.
        #[arg(long)]
        rst: bool,
        /// Wait up to this long (default 200ms when given without a value) for a line the
        /// target writes before closing (moat's `-ERR moat: ...`, Redis's `-ERR max number
        /// of clients reached`) and count it by its first words. Off by default: waiting
        /// slows the flood down.
        #[arg(long, value_name = "WAIT", num_args = 0..=1, default_missing_value = "200ms",
              value_parser = parse_duration)]
        read_reply: Option<Duration>,
    },
    /// Open K connections and hold them silent (slowloris).
    Hoard {
        #[command(flatten)]
        common: Common,
        /// Connections to open and hold (K).
        #[arg(long, default_value_t = 1000)]
        connections: u32,
        /// Send a PING this often (seconds, or 500ms, 1m...) so idle deadlines alone do not
        /// free the connections.
        #[arg(long, value_name = "SECS", value_parser = parse_duration)]
        keepalive: Option<Duration>,
        /// Re-open the connections the target closes.
        #[arg(long)]
        refill: bool,
        /// Connects in flight at once while opening.
        #[arg(long, default_value_t = 256)]
        connect_concurrency: u32,
    },
    /// K clients parked in BLPOP, SUBSCRIBE or MULTI, each taking a dedicated connection.
    Pin {
        #[command(flatten)]
        common: Common,
        /// Clients (K).
        #[arg(long, default_value_t = 100)]
        connections: u32,
        /// Which command pins the connection.
        #[arg(long, value_enum, default_value_t = How::Blpop)]
        how: How,
        /// The list key (BLPOP) or channel (SUBSCRIBE).
        #[arg(long, default_value = "moat:attack:pin")]
        key: String,
        /// Re-open (and re-pin) the connections the target closes.
        #[arg(long)]
        refill: bool,
    },
    /// SET a large value, then request it in pipelines on K connections and never read.
    SlowReader {
        #[command(flatten)]
        common: Common,
        /// Connections (K).
        #[arg(long, default_value_t = 8)]
        connections: u32,
        /// Bytes of the value requested.
        #[arg(long, default_value_t = 16_384)]
        value_size: usize,
        /// GETs per write.
        #[arg(long, default_value_t = 64)]
        pipeline: u32,
        /// Reply bytes one connection requests at most (bounds what the target buffers).
        #[arg(long, default_value_t = 32 << 20)]
        max_bytes_per_connection: u64,
        /// How long a write may block before the connection counts as stalled.
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        stall_after: Duration,
        /// The key SET and requested.
        #[arg(long, default_value = "moat:attack:big")]
        key: String,
    },
    /// Connect, send a wrong AUTH, read the error, repeat.
    AuthBrute {
        #[command(flatten)]
        common: Common,
        /// Connections in flight at once.
        #[arg(long, default_value_t = 16)]
        concurrency: u32,
        /// The most AUTH attempts.
        #[arg(long, default_value_t = 1_000_000)]
        count: u64,
        /// AUTH attempts per second at most.
        #[arg(long)]
        rate: Option<f64>,
        /// AUTH attempts per connection before reconnecting.
        #[arg(long, default_value_t = 1)]
        per_connection: u32,
        /// Username to try (`AUTH user pass`).
        #[arg(long)]
        username: Option<String>,
    },
    // `legit` (the legitimate workload) goes here too.
}

/// Flags every mode has.
#[derive(Debug, Clone, clap::Args)]
struct Common {
    /// The endpoint to attack (loopback only, unless --allow-non-loopback).
    #[arg(long, value_name = "HOST:PORT")]
    target: String,
    /// How long the attack runs at most (seconds, or 500ms, 1m...; at most 10m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Source addresses to spread connections over (127.100.x.y).
    #[arg(long, default_value_t = 1)]
    sources: u32,
    /// How long one connect may take.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// No progress line.
    #[arg(long, short)]
    quiet: bool,
    /// Allow a target outside loopback: attack only systems you own.
    #[arg(long)]
    allow_non_loopback: bool,
}

/// How `pin` takes its connection.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum How {
    /// BLPOP key 0.
    Blpop,
    /// SUBSCRIBE channel.
    Subscribe,
    /// MULTI, never EXEC.
    Multi,
}

/// A duration as seconds (`30`, `0.5`) or humantime (`500ms`, `1m`).
fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|e| format!("{s}: {e}"));
    }
    humantime::parse_duration(s).map_err(|e| format!("{s}: {e}"))
}

fn resolve(target: &str) -> anyhow::Result<SocketAddr> {
    target
        .to_socket_addrs()
        .with_context(|| format!("--target {target}: expected HOST:PORT"))?
        .next()
        .with_context(|| format!("--target {target}: no address"))
}

/// The spec and the common flags of a parsed command line.
fn spec(mode: AttackMode) -> anyhow::Result<(AttackSpec, Common)> {
    let (common, mode) = match mode {
        AttackMode::Flood {
            common,
            concurrency,
            count,
            rate,
            rst,
            read_reply,
        } => (
            common,
            Mode::Flood(FloodSpec {
                concurrency,
                count,
                rate,
                rst,
                read_reply,
            }),
        ),
        AttackMode::Hoard {
            common,
            connections,
            keepalive,
            refill,
            connect_concurrency,
        } => (
            common,
            Mode::Hoard(HoardSpec {
                connections,
                keepalive,
                refill,
                connect_concurrency,
            }),
        ),
        AttackMode::Pin {
            common,
            connections,
            how,
            key,
            refill,
        } => (
            common,
            Mode::Pin(PinSpec {
                connections,
                how: match how {
                    How::Blpop => PinHow::Blpop,
                    How::Subscribe => PinHow::Subscribe,
                    How::Multi => PinHow::Multi,
                },
                key,
                refill,
                ..PinSpec::default()
            }),
        ),
        AttackMode::SlowReader {
            common,
            connections,
            value_size,
            pipeline,
            max_bytes_per_connection,
            stall_after,
            key,
        } => (
            common,
            Mode::SlowReader(SlowReaderSpec {
                connections,
                value_size,
                pipeline,
                max_bytes_per_connection,
                stall_after,
                key,
            }),
        ),
        AttackMode::AuthBrute {
            common,
            concurrency,
            count,
            rate,
            per_connection,
            username,
        } => (
            common,
            Mode::AuthBrute(AuthBruteSpec {
                concurrency,
                count,
                rate,
                per_connection,
                username,
                ..AuthBruteSpec::default()
            }),
        ),
    };
    let mut spec = AttackSpec::new(resolve(&common.target)?, mode);
    spec.duration = common.duration;
    spec.sources = common.sources;
    spec.connect_timeout = common.connect_timeout;
    spec.allow_non_loopback = common.allow_non_loopback;
    Ok((spec, common))
}

pub(crate) fn main(args: AttackArgs) -> anyhow::Result<()> {
    let (spec, common) = spec(args.mode)?;
    moat_lab::target::check(spec.target, spec.allow_non_loopback)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let summary = runtime.block_on(async {
        let stop = CancellationToken::new();
        // Registered before the attack starts, so an early Ctrl-C or SIGTERM (a lab
        // stopping its children) still ends in a summary rather than a killed process.
        use tokio::signal::unix::{SignalKind, signal};
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let on_signal = {
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                stop.cancel();
            })
        };
        let counters = Arc::new(Counters::new());
        let label = format!("{} {}", spec.mode.name(), spec.target);
        let progress = Progress::start(label, spec.duration, counters.clone(), !common.quiet);
        let result = attack::run(&spec, stop, counters).await;
        progress.finish();
        on_signal.abort();
        anyhow::Ok(result)
    })?;
    let summary = match summary {
        Ok(summary) => summary,
        Err(e) => bail!("moat attack {}: {e}", spec.mode.name()),
    };
    if common.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{summary}");
    }
    Ok(())
}
