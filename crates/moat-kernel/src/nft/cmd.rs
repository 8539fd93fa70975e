//! Runs the `nft` command: one script on stdin, one transaction.

use std::io::Write as _;
use std::process::{Command, Stdio};

use super::ruleset::{NftSpec, create_script};
use super::sync::Op;

/// Why an nft operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// The `nft` command is not installed (or not on `PATH`).
    #[error("the nft command was not found (install nftables)")]
    Missing,
    /// The command could not be run or talked to.
    #[error("cannot run nft: {0}")]
    Io(#[from] std::io::Error),
    /// nft refused the script (no `CAP_NET_ADMIN`, kernel without nftables, bad input...).
    #[error("nft refused: {0}")]
    Refused(String),
}

/// Whether this process has `CAP_NET_ADMIN` in its effective set (None: cannot tell, not
/// Linux). Read from `/proc/self/status`, so moat can say why nft would refuse.
pub fn has_net_admin() -> Option<bool> {
    const CAP_NET_ADMIN: u32 = 12;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    let caps = u64::from_str_radix(hex, 16).ok()?;
    Some(caps & (1 << CAP_NET_ADMIN) != 0)
}

/// Runs `nft -f -` with `script` on stdin: all of it applies, or none.
fn run(script: &str) -> Result<(), NftError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => NftError::Missing,
            _ => NftError::Io(e),
        })?;
    // A write error (nft exited early) shows in its status and stderr below.
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(script.as_bytes());
    }
    let out = child.wait_with_output()?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The first error line is the message; the rest echoes the script.
    let first = stderr
        .lines()
        .find(|l| l.starts_with("Error"))
        .or_else(|| stderr.lines().next())
        .unwrap_or("no message")
        .trim();
    let mut reason = format!("{} ({})", first, out.status);
    reason.truncate(300);
    Err(NftError::Refused(reason))
}

/// Moat's table, loaded in the kernel; deleted on drop.
#[derive(Debug)]
pub struct NftTable {
    spec: NftSpec,
    loaded: bool,
}

impl NftTable {
    /// Replaces any table of this name (a crash's leftover) by a fresh one from `spec`, in
    /// one transaction.
    pub fn create(spec: NftSpec) -> Result<Self, NftError> {
        super::validate_table_name(&spec.table).map_err(|e| NftError::Refused(e.to_string()))?;
        run(&create_script(&spec))?;
        Ok(NftTable { spec, loaded: true })
    }

    /// What the table was built from.
    pub fn spec(&self) -> &NftSpec {
        &self.spec
    }

    /// Rebuilds the table from `spec` (new limits or lists; or after a failed batch): the
    /// ban sets start empty.
    pub fn rebuild(&mut self, spec: NftSpec) -> Result<(), NftError> {
        super::validate_table_name(&spec.table).map_err(|e| NftError::Refused(e.to_string()))?;
        if spec.table != self.spec.table {
            self.remove();
        }
        self.loaded = true;
        self.spec = spec;
        run(&create_script(&self.spec))
    }

    /// Applies ban-set changes in one transaction (nothing when `ops` is empty).
    pub fn apply(&self, ops: &[Op]) -> Result<(), NftError> {
        if ops.is_empty() {
            return Ok(());
        }
        run(&Op::script(ops, &self.spec.table))
    }

    /// Deletes the table now (also done on drop); a table already gone is fine.
    pub fn remove(&mut self) {
        if !std::mem::take(&mut self.loaded) {
            return;
        }
        let t = &self.spec.table;
        if let Err(e) = run(&format!("add table inet {t}\ndelete table inet {t}\n")) {
            tracing::warn!(table = %t, error = %e, "cannot delete moat's nftables table");
        }
    }
}

impl Drop for NftTable {
    fn drop(&mut self) {
        self.remove();
    }
}
