//! `moat`: keeps Redis serving its legitimate clients while someone tries to exhaust its
//! connections. This binary is the command-line edge; the work lives in the library crates.

#![forbid(unsafe_code)]

mod ctl;
mod demo;

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
}

#[derive(Debug, clap::Args)]
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
    /// Log lines as JSON instead of text.
    #[arg(long)]
    log_json: bool,
}

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

fn proxy(args: ProxyArgs) -> anyhow::Result<()> {
    init_logging(args.log_json);
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
    let fds = raise_fd_limit();
    let running = moat_proxy::start(config.clone()).context("starting the proxy")?;
    tracing::info!(
        listen = %running.local_addr(),
        backend = %config.backend.address,
        shared_connections = config.backend.shared_connections,
        fd_limit = fds,
        "moat proxy running"
    );
    let _admin = moat_admin::start(running.control(), args.config.clone(), &config.admin)
        .context("starting the admin API")?;
    let stopper = running.stopper();
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::spawn(move || {
        signals.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => tokio::select! {
                    _ = tokio::signal::ctrl_c() => {},
                    _ = term.recv() => {},
                },
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        });
        tracing::info!("stopping");
        stopper.stop();
    });
    running.wait();
    Ok(())
}
