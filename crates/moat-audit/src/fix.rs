//! `--fix`: applies the findings' live fixes (`CONFIG SET`s that are safe on a running
//! server) and, when Redis has a config file, `CONFIG REWRITE` so they survive a restart.
//! Never what needs a restart or the kernel. Asking first is the caller's job.

use std::time::Duration;

use crate::report::Audit;

/// One `CONFIG SET` to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The finding it fixes.
    pub id: String,
    /// The setting.
    pub name: String,
    /// Its new value.
    pub value: String,
    /// Its value now, when known.
    pub current: Option<String>,
}

/// The live fixes of an audit, one per setting.
pub fn plan(audit: &Audit) -> Vec<Change> {
    let mut out: Vec<Change> = Vec::new();
    for x in &audit.evaluation.findings {
        for (name, value) in &x.fix.live {
            if out.iter().any(|c| &c.name == name) {
                continue;
            }
            out.push(Change {
                id: x.id.clone(),
                name: name.clone(),
                value: value.clone(),
                current: audit.facts.config(name).map(str::to_owned),
            });
        }
    }
    out
}

/// Why `--fix` could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum FixError {
    /// No connection to Redis.
    #[error("cannot connect to {0}")]
    Connect(String),
    /// Redis refused `CONFIG REWRITE`.
    #[error("CONFIG REWRITE refused: {0}")]
    Rewrite(String),
}

/// One change and how it went (Redis's error text when refused).
pub type Outcome = (Change, Result<(), String>);

/// Whether `CONFIG REWRITE` can persist the changes (Redis was started with a file).
pub fn can_rewrite(audit: &Audit) -> bool {
    audit
        .facts
        .info("config_file")
        .is_some_and(|p| !p.is_empty())
}

/// Applies `changes`; each with its own result (Redis's error text when refused).
pub fn apply(url: &str, timeout: Duration, changes: &[Change]) -> Result<Vec<Outcome>, FixError> {
    let mut conn = connect(url, timeout)?;
    Ok(changes
        .iter()
        .map(|c| {
            let r: redis::RedisResult<()> = redis::cmd("CONFIG")
                .arg("SET")
                .arg(&c.name)
                .arg(&c.value)
                .query(&mut conn);
            (c.clone(), r.map_err(|e| e.to_string()))
        })
        .collect())
}

/// `CONFIG REWRITE`.
pub fn rewrite(url: &str, timeout: Duration) -> Result<(), FixError> {
    let mut conn = connect(url, timeout)?;
    redis::cmd("CONFIG")
        .arg("REWRITE")
        .query::<()>(&mut conn)
        .map_err(|e| FixError::Rewrite(e.to_string()))
}

fn connect(url: &str, timeout: Duration) -> Result<redis::Connection, FixError> {
    let redacted = moat_watch::collect::poller::redact(url);
    let conn = redis::Client::open(url)
        .and_then(|c| c.get_connection_with_timeout(timeout))
        .map_err(|e| FixError::Connect(format!("{redacted}: {e}")))?;
    let _ = conn.set_read_timeout(Some(timeout));
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::test_facts::with_config;

    #[test]
    fn plan_takes_only_live_fixes_once() {
        let audit = Audit::new(with_config(&[
            ("timeout", "0"),
            ("tcp-keepalive", "0"),
            ("protected-mode", "no"),
            ("tcp-backlog", "8192"),
        ]));
        let names: Vec<String> = plan(&audit).into_iter().map(|c| c.name).collect();
        assert_eq!(names, ["tcp-keepalive", "timeout"]);
        assert!(!can_rewrite(&audit));
    }
}
