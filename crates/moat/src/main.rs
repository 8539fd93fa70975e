//! `moat`: keeps Redis serving its legitimate clients while someone tries to exhaust its
//! connections. This binary is the command-line edge; the work lives in the library crates.

#![forbid(unsafe_code)]

mod attack;
mod audit;
mod ctl;
mod demo;
mod lab;
mod legit;
mod stop;
mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use moat_proxy::Config;

/// Command-line interface.
#[derive(Debug, Parser)]
#[command(
    name = "moat",
    version,
    about = "Keeps Redis serving its legitimate clients under connection-exhaustion attacks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the RESP proxy in front of Redis.
    Proxy(ProxyArgs),
    /// Validate a config file and print the effective configuration.
    CheckConfig {
        /// The TOML file to check.
        file: PathBuf,
    },
    /// Start a real Redis and moat in front of it, and show what moat saves it from.
    Demo(demo::DemoArgs),
    /// Talk to a running moat's admin API: status, bans, sources, clients, reload, drain.
    Ctl(ctl::CtlArgs),
    /// Attack a loopback Redis or proxy (flood, hoard, pin, slow-reader, auth-brute), or
    /// measure what legitimate clients get (legit).
    Attack(attack::AttackArgs),
    /// Run a scenario of attacks against Redis alone, hardened and behind moat, and write
    /// a report with tables and charts.
    Lab(lab::LabArgs),
    /// Watch any Redis for connection attacks (INFO and, on this host, /proc) and print
    /// alerts as they are raised and resolved.
    Watch(watch::WatchArgs),
    /// Check a Redis server's and its host's hardening against connection exhaustion;
    /// print findings (text, JSON, SARIF), emit fixes (redis.conf, sysctl, nftables) or
    /// apply the safe ones.
    Audit(audit::AuditArgs),
}

#[derive(Debug, Clone, clap::Args)]
struct ProxyArgs {
    /// TOML config file (see moat.example.toml); flags override its values.
    #[arg(long, short, env = "MOAT_CONFIG")]
    config: Option<PathBuf>,
    /// Address clients connect to.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Address of the Redis server.
    #[arg(long)]
    backend: Option<SocketAddr>,
    /// Worker threads (one accept loop and backend pool share each).
    #[arg(long)]
    workers: Option<usize>,
    /// Total shared backend connections.
    #[arg(long)]
    shared_connections: Option<usize>,
    /// Address of the admin API (overrides admin.listen and enables it).
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Same as `--log-format json`.
    #[arg(long)]
    log_json: bool,
}

/// How log lines are written (to stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The allocator. glibc's keeps every page that still holds one live allocation, and an
/// attack is exactly a wave of allocations of one kind (session tasks, buffers) interleaved
/// with long-lived ones (a dormant client's record): once the wave is gone, glibc still
/// holds its pages. mimalloc keeps each size class on pages of its own and gives emptied
/// pages back, so the memory a hoard or a pipeline took is returned when they end.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Proxy(args) => proxy(args),
        Command::CheckConfig { file } => {
            let config = Config::load(&file)?;
            config.admin.resolve_token()?;
            println!("# {}: valid\n{}", file.display(), config.to_redacted_toml());
            Ok(())
        }
        Command::Demo(args) => demo::run(args),
        Command::Ctl(args) => ctl::main(args),
        Command::Watch(args) => watch::main(args),
        Command::Audit(args) => audit::main(args),
        Command::Attack(args) => attack::main(args),
        Command::Lab(args) => lab::main(args),
    }
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Raises the soft open-file limit to the hard one: every client costs moat a descriptor.
fn raise_fd_limit() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024)
}

/// The config file (or the defaults) with the command-line flags applied over it: at start,
/// and again at each SIGHUP so the flags keep precedence.
fn load_config(args: &ProxyArgs) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(listen) = args.listen {
        config.proxy.listen = listen;
    }
    if let Some(backend) = args.backend {
        config.backend.address = backend;
    }
    if let Some(workers) = args.workers {
        config.proxy.workers = workers;
    }
    if let Some(n) = args.shared_connections {
        config.backend.shared_connections = n;
    }
    if let Some(admin) = args.admin {
        config.admin.listen = admin;
        config.admin.enabled = true;
    }
    // Flags are not validated by serde: check the result as a whole.
    config.validate()?;
    Ok(config)
}

fn proxy(args: ProxyArgs) -> anyhow::Result<()> {
    init_logging(args.log_json || args.log_format == LogFormat::Json);
    let config = load_config(&args)?;
    let fds = raise_fd_limit();
    let running = moat_proxy::start(config.clone()).context("starting the proxy")?;
    let (g, c) = (&config.guard, &config);
    tracing::info!(
        listen = %running.local_addr(),
        tls_listen = ?running.tls_addr(),
        backend = %c.backend.address,
        backend_tls = c.backend.tls.is_some(),
        workers = c.proxy.workers,
        shared_connections = c.backend.shared_connections,
        pinned_connections = c.pinned.max_connections,
        auth = ?c.auth_mode(),
        max_clients = g.max_clients,
        max_per_ip = g.max_per_ip,
        max_per_subnet = g.max_per_subnet,
        ip_rate = g.ip_rate,
        drain_timeout = ?c.proxy.drain_timeout,
        fd_limit = fds,
        "moat proxy running"
    );
    let loader: Option<moat_admin::ConfigLoader> = args.config.is_some().then(|| {
        let args = args.clone();
        std::sync::Arc::new(move || load_config(&args).map_err(|e| format!("{e:#}")))
            as moat_admin::ConfigLoader
    });
    let _admin = moat_admin::start(running.control(), loader, &config.admin)
        .context("starting the admin API")?;
    let (stopper, control) = (running.stopper(), running.control());
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::spawn(move || signals.block_on(handle_signals(args, stopper, control)));
    running.wait();
    Ok(())
}

/// SIGHUP reloads the config file; the first SIGTERM or SIGINT drains and then stops, a
/// second one stops at once.
async fn handle_signals(
    args: ProxyArgs,
    stopper: moat_proxy::Stopper,
    control: moat_proxy::Control,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop moat with SIGKILL");
        return;
    };
    let mut stopping = false;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the configuration");
                // Control::reload logs what it applied, or why it refused.
                match load_config(&args) {
                    Ok(config) => { let _ = control.reload(config); }
                    Err(e) => control.reload_rejected(&format!("{e:#}")),
                }
            }
            _ = async { tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} } } => {
                if stopping {
                    tracing::info!("second signal: stopping now");
                    stopper.stop();
                    return;
                }
                stopping = true;
                tracing::info!("shutting down gracefully: draining clients (signal again to stop now)");
                let stopper = stopper.clone();
                std::thread::spawn(move || stopper.drain_then_stop());
            }
        }
    }
}
