//! Everything an audit observed, as plain data: the rules are pure functions of [`Facts`].
//!
//! Every field is optional: a remote Redis has no `/proc` here, a renamed `CONFIG` hides
//! most settings, a wrong password hides everything but the host. What could not be read
//! is recorded in [`Facts::gaps`] with the reason, so the report can say it plainly.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// All observations of one audit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facts {
    /// What was audited (the URL without its password).
    pub target: String,
    /// The port clients connect to (from the URL): where kernel rules must apply.
    pub port: Option<u16>,
    /// The audit ran on the same host as Redis (a loopback address), so `/proc` is Redis's.
    pub local: bool,
    /// What Redis said.
    pub redis: RedisFacts,
    /// What the host said (only when `local`).
    pub host: HostFacts,
    /// What could not be read, and why.
    pub gaps: Vec<Gap>,
}

/// One thing the audit could not observe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// What is missing (`CONFIG GET`, `/proc/sys`...).
    pub what: String,
    /// Why.
    pub why: String,
}

/// Where the Redis settings came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConfigSource {
    /// `CONFIG GET *`: every setting.
    ConfigGet,
    /// `INFO` only (CONFIG renamed or denied): a few settings.
    Info,
    /// Nothing (not connected, or both refused).
    #[default]
    None,
}

/// What Redis itself told the audit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedisFacts {
    /// Connected and (if a password was given) authenticated.
    pub reachable: bool,
    /// `redis_version` from INFO.
    pub version: Option<String>,
    /// Settings by name (lower case), from CONFIG GET or, failing that, INFO.
    pub config: BTreeMap<String, String>,
    /// Where `config` came from.
    pub config_source: ConfigSource,
    /// INFO fields by name.
    pub info: BTreeMap<String, String>,
    /// The audit connected without credentials and could run commands: the default user
    /// needs no password.
    pub unauthenticated_access: Option<bool>,
    /// The default user as ACL describes it.
    pub default_user: Option<DefaultUser>,
    /// Commands the default user may run, by command line (`CONFIG SET`, `FLUSHALL`...):
    /// `true` allowed, `false` refused or absent (renamed).
    pub default_user_commands: BTreeMap<String, bool>,
    /// Evidence that the audit talked to Redis through a moat proxy.
    pub behind_moat: Option<String>,
}

/// The `default` user's ACL state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DefaultUser {
    /// `on`: the user can log in.
    pub enabled: bool,
    /// `nopass`: any password (or none) logs in.
    pub nopass: bool,
    /// How many passwords it has.
    pub passwords: usize,
    /// Its command rules, as ACL prints them (`+@all`, `-config`...).
    pub commands: String,
    /// Its key patterns, as ACL prints them (`~*`).
    pub keys: String,
    /// Its channel patterns, as ACL prints them (`&*`).
    pub channels: String,
    /// Its `ACL LIST` line (`user default on #<hash> ~* &* +@all`), so an emitted config
    /// keeps its passwords; it holds password hashes, so reports never show it.
    #[serde(skip)]
    pub acl_line: Option<String>,
}

/// What the host told the audit (Redis on this machine).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFacts {
    /// `net.core.somaxconn`.
    pub somaxconn: Option<u64>,
    /// `net.ipv4.tcp_max_syn_backlog`.
    pub tcp_max_syn_backlog: Option<u64>,
    /// `net.ipv4.tcp_syncookies` (0 off, 1 when needed, 2 always).
    pub tcp_syncookies: Option<u64>,
    /// `net.ipv4.tcp_abort_on_overflow`.
    pub tcp_abort_on_overflow: Option<u64>,
    /// `net.ipv4.ip_local_port_range`.
    pub ip_local_port_range: Option<(u64, u64)>,
    /// Conntrack entries in use and the table's maximum, when conntrack is loaded.
    pub conntrack: Option<(u64, u64)>,
    /// Total memory of the host, bytes (`MemTotal`).
    pub mem_total: Option<u64>,
    /// The Redis process's open files and its soft limit.
    pub fds: Option<(u64, u64)>,
    /// The Redis process's hard open-file limit: Redis raises its soft limit up to it.
    pub fd_hard_limit: Option<u64>,
    /// The Redis process's real user id.
    pub redis_uid: Option<u32>,
    /// The config file's metadata.
    pub config_file: Option<FileFacts>,
    /// `maxclients` as written in the config file (Redis's default 10000 when the file has
    /// no such line), when it is readable: Redis lowers the running value silently, so only
    /// the file shows what was asked for.
    pub configured_maxclients: Option<u64>,
}

/// A file's owner and permissions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileFacts {
    /// Its path.
    pub path: String,
    /// Permission bits (`0o640`).
    pub mode: u32,
    /// Owner's user id.
    pub uid: u32,
    /// Owner's group id.
    pub gid: u32,
}

impl Facts {
    /// Records that `what` could not be read because of `why`.
    pub fn gap(&mut self, what: impl Into<String>, why: impl Into<String>) {
        self.gaps.push(Gap {
            what: what.into(),
            why: why.into(),
        });
    }

    /// A Redis setting, from CONFIG GET or INFO.
    pub fn config(&self, name: &str) -> Option<&str> {
        self.redis.config.get(name).map(String::as_str)
    }

    /// A Redis setting as an integer.
    pub fn config_u64(&self, name: &str) -> Option<u64> {
        self.config(name)?.trim().parse().ok()
    }

    /// An INFO field.
    pub fn info(&self, name: &str) -> Option<&str> {
        self.redis.info.get(name).map(String::as_str)
    }

    /// The server version as (major, minor, patch), when INFO gave a parsable one.
    pub fn version(&self) -> Option<(u32, u32, u32)> {
        parse_version(self.redis.version.as_deref()?)
    }
}

/// `7.0.15` as (7, 0, 15); a missing patch is 0.
pub fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let mut parts = text.trim().split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let patch = parts.next().map_or(Some(0), |p| p.parse().ok())?;
    Some((major, minor, patch))
}

/// A Redis memory setting (`64mb`, `1gb`, `12345`) in bytes; a percentage is `None`.
pub fn parse_memory(text: &str) -> Option<u64> {
    let t = text.trim().to_ascii_lowercase();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit {
        "" | "b" => 1,
        "k" => 1000,
        "kb" => 1024,
        "m" => 1000 * 1000,
        "mb" => 1024 * 1024,
        "g" => 1000 * 1000 * 1000,
        "gb" => 1024 * 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(parse_version("7.0.15"), Some((7, 0, 15)));
        assert_eq!(parse_version("8.2"), Some((8, 2, 0)));
        assert_eq!(parse_version("7.x.1"), None);
        assert_eq!(parse_version(""), None);
    }

    #[test]
    fn memory() {
        assert_eq!(parse_memory("0"), Some(0));
        assert_eq!(parse_memory("64mb"), Some(64 << 20));
        assert_eq!(parse_memory("1GB"), Some(1 << 30));
        assert_eq!(parse_memory("10%"), None);
        assert_eq!(parse_memory("lots"), None);
        assert_eq!(parse_memory("99999999999999999999gb"), None);
    }
}
