//! `moat attack MODE --target HOST:PORT`: runs one of moat-lab's attacks against a loopback
//! target, with a live progress line on stderr and a summary (text, or JSON with `--json`)
//! on stdout. Ctrl-C (or SIGTERM) stops it early; the summary is still printed, marked partial.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use moat_lab::attack::{
    self, AttackSpec, AuthBruteSpec, Counters, FloodSpec, HoardSpec, Mode, PinHow, PinSpec, Shard,
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
    /// Not an attack: the legitimate workload (steady, churn, fresh and trusted clients at
    /// fixed offered rates), measured to see what real clients get during one.
    Legit(crate::legit::LegitArgs),
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
    /// Run only this share (i/n) of the connections: set by a parent `moat attack` that
    /// splits a hoard, pin or slow-reader over several processes.
    #[arg(long, hide = true, value_name = "I/N")]
    shard: Option<Shard>,
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
        AttackMode::Legit(_) => anyhow::bail!("legit is a workload, not an attack mode"),
    };
    let mut spec = AttackSpec::new(resolve(&common.target)?, mode);
    spec.duration = common.duration;
    spec.sources = common.sources;
    spec.connect_timeout = common.connect_timeout;
    spec.allow_non_loopback = common.allow_non_loopback;
    spec.shard = common.shard;
    Ok((spec, common))
}

pub(crate) fn main(args: AttackArgs) -> anyhow::Result<()> {
    if let AttackMode::Legit(args) = args.mode {
        return crate::legit::run(args);
    }
    let (spec, common) = spec(args.mode)?;
    moat_lab::target::check(spec.target, spec.allow_non_loopback)?;
    spec.validate()?;
    let shards = if spec.shard.is_some() {
        1
    } else {
        attack::shards_needed(&spec)?
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let summary = runtime.block_on(async {
        let stop = CancellationToken::new();
        // Registered before the attack starts, so an early Ctrl-C or SIGTERM (a lab
        // stopping its children) still ends in a summary rather than a killed process.
        let on_signal = crate::stop::on_signal(&stop, None)?;
        let result = if shards > 1 {
            sharded(&spec, shards, stop, common.quiet).await
        } else {
            let counters = Arc::new(Counters::new());
            let label = format!("{} {}", spec.mode.name(), spec.target);
            let progress = Progress::start(label, spec.duration, counters.clone(), !common.quiet);
            let result = attack::run(&spec, stop, counters).await;
            progress.finish();
            result.map_err(|e| anyhow::anyhow!("moat attack {}: {e}", spec.mode.name()))
        };
        on_signal.abort();
        result
    })?;
    if common.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{summary}");
    }
    Ok(())
}

/// Runs the attack as `shards` child processes of this binary, each with `--shard i/n`, and
/// merges their summaries. `stop` sends SIGTERM to each child still running, by PID; a child
/// that outlives this function is killed when its handle drops.
async fn sharded(
    spec: &AttackSpec,
    shards: u32,
    stop: CancellationToken,
    quiet: bool,
) -> anyhow::Result<attack::AttackSummary> {
    let exe = std::env::current_exe().context("locating the moat binary")?;
    // The parent's own arguments, minus what the children get anyway.
    let args: Vec<std::ffi::OsString> = std::env::args_os()
        .skip(1)
        .filter(|a| a != "--json" && a != "--quiet" && a != "-q")
        .collect();
    if !quiet {
        eprintln!(
            "moat attack {}: {} connections exceed this process's open-file limit; \
             running {shards} processes",
            spec.mode.name(),
            spec.fds_needed()
        );
    }
    let started = std::time::Instant::now();
    let mut children = Vec::new();
    for index in 0..shards {
        let child = tokio::process::Command::new(&exe)
            .args(&args)
            .args(["--shard", &format!("{index}/{shards}"), "--json", "--quiet"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting shard {index}/{shards}"))?;
        children.push(child);
    }
    let mut waiting = tokio::task::JoinSet::new();
    for (index, mut child) in children.into_iter().enumerate() {
        let stop = stop.clone();
        waiting.spawn(async move {
            let mut stdout = child.stdout.take();
            let read = async {
                let mut out = Vec::new();
                if let Some(stdout) = stdout.as_mut() {
                    let _ = tokio::io::AsyncReadExt::read_to_end(stdout, &mut out).await;
                }
                out
            };
            let exit = async {
                tokio::select! {
                    status = child.wait() => return status,
                    _ = stop.cancelled() => {}
                }
                // Not reaped yet (id() is None once it is), so the PID is still the child's.
                if let Some(pid) = child.id() {
                    let _ = tokio::process::Command::new("sh")
                        .args([
                            "-c",
                            "kill -s TERM \"$1\" 2>/dev/null",
                            "sh",
                            &pid.to_string(),
                        ])
                        .status()
                        .await;
                }
                child.wait().await
            };
            let (out, status) = tokio::join!(read, exit);
            (index, out, status)
        });
    }
    let mut outputs: Vec<_> = (0..shards).map(|_| None).collect();
    while let Some(done) = waiting.join_next().await {
        let (index, out, status) = done.context("waiting for a shard")?;
        outputs[index] = Some((out, status));
    }
    let mut parts = Vec::new();
    for (index, output) in outputs.into_iter().enumerate() {
        let (out, status) = output.context("a shard was not waited for")?;
        let status = status.with_context(|| format!("waiting for shard {index}/{shards}"))?;
        match serde_json::from_slice::<attack::AttackSummary>(&out) {
            Ok(part) => parts.push(part),
            // Stopped before it could set up its own signal handling: its share is lost,
            // and the summary says partial anyway.
            Err(_) if stop.is_cancelled() => {
                eprintln!(
                    "moat attack: shard {index}/{shards} stopped before reporting ({status})"
                );
            }
            Err(e) => bail!("shard {index}/{shards} failed ({status}): {e}"),
        }
    }
    let mut summary = attack::AttackSummary::merge(spec, started.elapsed(), &parts);
    summary.partial |= stop.is_cancelled();
    summary.shards = shards;
    Ok(summary)
}
