//! `moat lab`: runs a scenario (attacks × targets, each run through baseline → attack →
//! recovery with the legitimate workload measured throughout) against targets it starts
//! itself, and writes the evidence: `report.json`, `report.md` and SVG charts.
//!
//! Modules:
//! - [`scenario`]: the TOML scenario (phases, legit workload, targets, attacks), bounded
//!   and strict; the shipped default matrix and quick scenario.
//! - [`targets`]: redis-server alone, hardened, or behind `moat proxy`, each on free
//!   loopback ports and stopped by PID; or an endpoint the user started.
//! - [`sampler`]: a sample a second (Redis INFO, `/proc` RSS and CPU, moat's `/metrics`,
//!   the machine's busy CPU).
//! - [`runner`]: runs the matrix; the attack is a child `moat attack MODE --json`.
//! - [`report`]: what is written down, and `report.md`'s tables.
//! - [`charts`]: the SVG charts.
//!
//! ```no_run
//! # async fn demo() -> Result<(), moat_lab::lab::LabError> {
//! use moat_lab::lab::{LabOptions, Scenario, run, write};
//! let options = LabOptions {
//!     exe: "target/debug/moat".into(),
//!     externals: Vec::new(),
//!     moat_config: None,
//!     fd_limit: 1024,
//!     verbose: false,
//! };
//! let stop = tokio_util::sync::CancellationToken::new();
//! let report = run(&Scenario::quick(), &options, stop).await;
//! write(&report, std::path::Path::new("target/lab/x"))?;
//! # Ok(()) }
//! ```

pub mod charts;
pub mod report;
pub mod runner;
pub mod sampler;
pub mod scenario;
pub mod targets;

use std::path::{Path, PathBuf};

pub use report::{LabReport, PhaseReport, RunReport};
pub use runner::{LabOptions, run};
pub use scenario::Scenario;
pub use targets::TargetDef;

/// Why the lab could not do something.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabError {
    /// The scenario is invalid (the message names the key).
    #[error("scenario: {0}")]
    Scenario(String),
    /// A target could not be started or used.
    #[error("target: {0}")]
    Target(String),
    /// The report could not be written.
    #[error("writing the report: {0}")]
    Write(String),
}

/// Writes `report.json`, `report.md` and the charts into `dir` (created if needed);
/// returns the files written.
pub fn write(report: &LabReport, dir: &Path) -> Result<Vec<PathBuf>, LabError> {
    let io = |what: &Path, e: std::io::Error| LabError::Write(format!("{}: {e}", what.display()));
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let json = dir.join("report.json");
    let text = serde_json::to_string_pretty(report).map_err(|e| LabError::Write(e.to_string()))?;
    std::fs::write(&json, text).map_err(|e| io(&json, e))?;
    let md = dir.join("report.md");
    std::fs::write(&md, report.markdown()).map_err(|e| io(&md, e))?;
    let mut files = vec![json, md];
    files.extend(charts::write_all(report, dir)?);
    Ok(files)
}
