//! `moat demo`: a short lab run. A flood and a hoard, each against a real Redis alone and
//! against the same Redis behind moat, with a legitimate workload measured throughout; then
//! the comparison table and where the report and charts were written.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use moat_lab::attack::Mode;
use moat_lab::lab::Scenario;

/// The shared installer, so `moat demo` works on a machine without Redis.
const INSTALL_SCRIPT: &str = include_str!("../../../scripts/install-redis.sh");

/// Options of `moat demo`.
#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// Length of each attack (the demo runs two attacks against two targets).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    attack: Duration,
    /// Measuring time before and after each attack.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    baseline: Duration,
    /// Idle connections the hoard opens (more than Redis's default maxclients of 10,000).
    #[arg(long, default_value_t = 12_000)]
    hoard: u32,
    /// Where the report goes (default: `target/lab/demo-<UTC timestamp>`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print only the final table.
    #[arg(long, short)]
    quiet: bool,
}

pub(crate) fn run(args: DemoArgs) -> anyhow::Result<()> {
    ensure_redis()?;
    let mut scenario = Scenario::demo();
    scenario.phases.attack = args.attack;
    scenario.phases.baseline = args.baseline;
    scenario.phases.recovery = args.baseline.min(Duration::from_secs(2));
    for attack in &mut scenario.attacks {
        if let Some(Mode::Hoard(hoard)) = &mut attack.mode {
            hoard.connections = args.hoard;
        }
    }
    scenario.validate().context("the demo's settings")?;
    let out = args.out.unwrap_or_else(|| {
        PathBuf::from("target/lab").join(format!("demo-{}", crate::lab::timestamp()))
    });
    println!(
        "moat demo: a flood and a hoard of {} idle connections (each from 256 addresses, \
         {:?} each), against Redis alone and against Redis behind moat, while legitimate \
         clients (steady, reconnecting, brand-new and trusted) are measured.\n",
        args.hoard, args.attack
    );
    let (report, files) =
        crate::lab::run_and_write(&scenario, Vec::new(), None, &out, !args.quiet)?;
    print!("{}", report.markdown());
    println!(
        "\nLegit success: share of legitimate requests answered during the attack. Fresh \
         probes: brand-new clients that got in. Redis connections: what Redis itself had to \
         hold."
    );
    println!(
        "Report and charts: {} ({} files; open the .svg files in a browser)",
        out.display(),
        files.len()
    );
    if report.partial {
        bail!(
            "partial report ({})",
            report.partial_reason.as_deref().unwrap_or("stopped early")
        );
    }
    Ok(())
}

fn ensure_redis() -> anyhow::Result<()> {
    if moat_testkit::redis_server_binary().is_ok() {
        return Ok(());
    }
    println!("redis-server not found: installing redis-server and redis-tools with apt...");
    let status = Command::new("bash")
        .arg("-c")
        .arg(INSTALL_SCRIPT)
        .status()
        .context("running the Redis installer")?;
    if !status.success() {
        bail!("installing redis-server failed; install it by hand (apt-get install redis-server)");
    }
    moat_testkit::redis_server_binary().context("redis-server still missing after install")?;
    Ok(())
}
