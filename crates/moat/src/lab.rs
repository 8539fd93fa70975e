//! `moat lab [SCENARIO.toml]`: runs a scenario of attacks against targets the lab starts
//! itself (Redis alone, hardened, behind moat) and endpoints given with `--target`, and
//! writes `report.json`, `report.md` and SVG charts. Ctrl-C (or SIGTERM) stops it early:
//! every process it started is stopped and the report is written, marked partial.

use std::path::{Path, PathBuf};

use anyhow::Context;
use moat_lab::lab::{self, LabOptions, LabReport, Scenario, TargetDef};
use tokio_util::sync::CancellationToken;

/// Options of `moat lab`.
#[derive(Debug, clap::Args)]
pub(crate) struct LabArgs {
    /// The scenario (TOML); default: the shipped default matrix (about 15 minutes).
    scenario: Option<PathBuf>,
    /// Where the report goes (default: `target/lab/<UTC timestamp>`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also attack an endpoint you started (loopback only), e.g. other=127.0.0.1:7000.
    #[arg(long = "target", value_name = "NAME=HOST:PORT")]
    targets: Vec<String>,
    /// Run the quick scenario (a few seconds per target, small K) instead.
    #[arg(long, conflicts_with = "scenario")]
    quick: bool,
    /// Print only the final table.
    #[arg(long, short)]
    quiet: bool,
}

pub(crate) fn main(args: LabArgs) -> anyhow::Result<()> {
    let (scenario, base) = match (&args.scenario, args.quick) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let scenario = Scenario::parse(&text).with_context(|| path.display().to_string())?;
            (scenario, path.parent().map(PathBuf::from))
        }
        (None, true) => (Scenario::quick(), None),
        (None, false) => (Scenario::default_matrix(), None),
    };
    let externals = args
        .targets
        .iter()
        .map(|t| TargetDef::parse_external(t))
        .collect::<Result<Vec<_>, _>>()?;
    let moat_config = scenario.moat_config.as_ref().map(|c| match &base {
        Some(base) if c.is_relative() => base.join(c),
        _ => c.clone(),
    });
    if let Some(c) = &moat_config {
        anyhow::ensure!(c.is_file(), "moat_config {}: no such file", c.display());
    }
    let out = args
        .out
        .unwrap_or_else(|| PathBuf::from("target/lab").join(timestamp()));
    let (report, files) = run_and_write(&scenario, externals, moat_config, &out, !args.quiet)?;
    print!("{}", report.markdown());
    println!("\nReport: {} ({} files)", out.display(), files.len());
    if report.partial {
        anyhow::bail!(
            "partial report ({}) written to {}",
            report.partial_reason.as_deref().unwrap_or("stopped early"),
            out.display()
        );
    }
    Ok(())
}

/// Runs `scenario` on a runtime of its own, stopping cleanly on Ctrl-C or SIGTERM (every
/// process the lab started is stopped; the report is marked partial), and writes the report
/// to `out`. Returns the report and the files written.
pub(crate) fn run_and_write(
    scenario: &Scenario,
    externals: Vec<TargetDef>,
    moat_config: Option<PathBuf>,
    out: &Path,
    verbose: bool,
) -> anyhow::Result<(LabReport, Vec<PathBuf>)> {
    let options = LabOptions {
        exe: std::env::current_exe().context("locating the moat binary")?,
        externals,
        moat_config,
        fd_limit: super::raise_fd_limit(),
        verbose,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let report = runtime.block_on(async {
        let stop = CancellationToken::new();
        let on_signal =
            crate::stop::on_signal(&stop, Some("moat: stopping (the report will be partial)"))?;
        let report = lab::run(scenario, &options, stop).await;
        on_signal.abort();
        anyhow::Ok(report)
    })?;
    let files = lab::write(&report, out)?;
    Ok((report, files))
}

/// `YYYYMMDD-HHMMSS` in UTC, for the default report directory.
pub(crate) fn timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's days-to-civil, for dates after 1970.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
