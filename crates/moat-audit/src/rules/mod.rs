//! The checks: pure functions of [`Facts`] that return findings, each with a stable id, a
//! severity, the evidence, the exact fix and a reference.
//!
//! - [`limits`]: connection limits and idle handling (`maxclients`, `timeout`,
//!   `tcp-keepalive`, rejected connections).
//! - [`kernel`]: the host's TCP settings (`somaxconn`, SYN backlog, syncookies, conntrack).
//! - [`access`]: who may connect and what they may run (password, protected mode, bind,
//!   dangerous commands, config file, process owner).
//! - [`memory`]: what one client may cost (client eviction, output and query buffers).
//! - [`version`]: the server version against [`crate::advisories`], and moat in front.
//!
//! A check that lacks its inputs says so in [`Evaluation::skipped`], never guesses.

use serde::{Deserialize, Serialize};

use crate::facts::Facts;

pub mod access;
pub mod kernel;
pub mod limits;
pub mod memory;
pub mod version;

/// How bad a finding is; ordered, so the worst of a report is its maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing; nothing to fix.
    Info,
    /// A weakness that matters only together with others.
    Low,
    /// An attacker can degrade service with modest effort.
    Medium,
    /// An attacker can take the service down or exhaust the host.
    High,
    /// Open to anyone who can reach the port.
    Critical,
}

impl Severity {
    /// Lower-case name, as in the reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    /// The exit status of an audit whose worst finding is this (documented in
    /// `docs/audit.md`): 0 for info, then 3 to 6, so 1 (error) and 2 (usage) stay distinct.
    pub fn exit_code(worst: Option<Severity>) -> i32 {
        match worst {
            None | Some(Severity::Info) => 0,
            Some(Severity::Low) => 3,
            Some(Severity::Medium) => 4,
            Some(Severity::High) => 5,
            Some(Severity::Critical) => 6,
        }
    }
}

/// How to fix a finding, in every form the emitters and `--fix` use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fix {
    /// What to do, in words, with the exact commands.
    pub text: String,
    /// `redis.conf` lines (`--emit redis-conf`).
    pub redis_conf: Vec<String>,
    /// `CONFIG SET name value` pairs safe on a running server (`--fix`).
    pub live: Vec<(String, String)>,
    /// Kernel settings (`--emit sysctl`).
    pub sysctl: Vec<(String, String)>,
}

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// Stable id (`maxclients-over-fd-limit`), documented in `docs/audit.md`.
    pub id: String,
    /// How bad it is here.
    pub severity: Severity,
    /// One line.
    pub title: String,
    /// What was observed.
    pub evidence: String,
    /// The fix.
    pub fix: Fix,
    /// Where the rationale comes from.
    pub reference: String,
}

/// A check that could not run, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// The check's id.
    pub id: String,
    /// Why it did not run.
    pub why: String,
}

/// The result of every check on one set of facts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Problems found, worst first.
    pub findings: Vec<Finding>,
    /// Checks that could not run.
    pub skipped: Vec<Skipped>,
}

impl Evaluation {
    /// The worst severity found.
    pub fn worst(&self) -> Option<Severity> {
        self.findings.iter().map(|f| f.severity).max()
    }

    /// Whether a finding with this id is present.
    pub fn has(&self, id: &str) -> bool {
        self.findings.iter().any(|f| f.id == id)
    }

    pub(crate) fn push(&mut self, finding: Finding) {
        self.findings.push(finding);
    }

    pub(crate) fn skip(&mut self, id: &str, why: impl Into<String>) {
        self.skipped.push(Skipped {
            id: id.to_owned(),
            why: why.into(),
        });
    }
}

/// A check as documented: id, default severity, title and reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckInfo {
    /// Stable id.
    pub id: &'static str,
    /// Its usual severity (some checks raise or lower it with context).
    pub severity: Severity,
    /// One line.
    pub title: &'static str,
    /// Where the rationale comes from.
    pub reference: &'static str,
}

/// Every check, for the SARIF rule list and the docs.
pub fn catalog() -> Vec<CheckInfo> {
    let mut all = Vec::new();
    all.extend_from_slice(limits::CHECKS);
    all.extend_from_slice(kernel::CHECKS);
    all.extend_from_slice(access::CHECKS);
    all.extend_from_slice(memory::CHECKS);
    all.extend(version::checks());
    all
}

/// Runs every check on `facts`; findings worst first, then by id.
pub fn evaluate(facts: &Facts) -> Evaluation {
    let mut ev = Evaluation::default();
    limits::run(facts, &mut ev);
    kernel::run(facts, &mut ev);
    access::run(facts, &mut ev);
    memory::run(facts, &mut ev);
    version::run(facts, &mut ev);
    ev.findings
        .sort_by(|a, b| b.severity.cmp(&a.severity).then_with(|| a.id.cmp(&b.id)));
    ev
}

/// Builds a finding from its catalog entry.
pub(crate) fn finding(info: &CheckInfo, severity: Severity, evidence: String, fix: Fix) -> Finding {
    Finding {
        id: info.id.to_owned(),
        severity,
        title: info.title.to_owned(),
        evidence,
        fix,
        reference: info.reference.to_owned(),
    }
}

/// Why a Redis setting is unknown, for [`Evaluation::skip`].
pub(crate) fn no_config(facts: &Facts, name: &str) -> String {
    if !facts.redis.reachable {
        "Redis did not answer the audit (see the gaps)".to_owned()
    } else {
        format!("`{name}` is unknown: CONFIG GET was refused or renamed and INFO does not show it")
    }
}

/// Why a host value is unknown.
pub(crate) fn no_host(facts: &Facts, what: &str) -> String {
    if facts.local {
        format!("{what} could not be read on this host (see the gaps)")
    } else {
        format!("{what}: Redis is not on this host (no /proc to read); run the audit there")
    }
}

#[cfg(test)]
pub(crate) mod test_facts {
    //! Hand-built facts for the rules' unit tests.
    use crate::facts::{ConfigSource, Facts};

    /// A reachable local Redis 8.2.2 (no advisory applies) with the given CONFIG GET values.
    pub(crate) fn with_config(pairs: &[(&str, &str)]) -> Facts {
        let mut f = Facts {
            target: "redis://127.0.0.1:6379".into(),
            port: Some(6379),
            local: true,
            ..Facts::default()
        };
        f.redis.reachable = true;
        f.redis.version = Some("8.2.2".into());
        f.redis.config_source = ConfigSource::ConfigGet;
        for (k, v) in pairs {
            f.redis.config.insert((*k).into(), (*v).into());
        }
        f
    }
}
