//! The `[crowdsec]` section: bans shared with a CrowdSec Local API (LAPI).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// `[crowdsec]`: moat pushes the bans its guard issues to a CrowdSec LAPI as a machine
/// (alerts with decisions) and pulls the LAPI's ban decisions as a bouncer, applying them
/// to its guard and so its kernel filter. Off by default. Changes need a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CrowdSecConfig {
    /// Whether to talk to CrowdSec at all.
    pub enabled: bool,
    /// The LAPI's base URL, plain `http://` (a local LAPI; no TLS client is built in).
    pub lapi_url: String,
    /// Push this moat's bans to the LAPI (needs `machine_id` and a password).
    pub push: bool,
    /// Pull the LAPI's ban decisions and apply them (needs a bouncer key).
    pub pull: bool,
    /// This moat's machine name at the LAPI (`cscli machines add <id>`); also marks its own
    /// bans, so that pulling them back does not count them twice.
    pub machine_id: Option<String>,
    /// The machine's password; set this or `password_file`.
    pub password: Option<String>,
    /// File holding the machine's password (surrounding whitespace ignored).
    pub password_file: Option<PathBuf>,
    /// The bouncer's API key (`cscli bouncers add <name>`); set this or `bouncer_key_file`.
    pub bouncer_key: Option<String>,
    /// File holding the bouncer key (surrounding whitespace ignored).
    pub bouncer_key_file: Option<PathBuf>,
    /// How often decisions are pulled.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How often the whole decision list is read again (`startup=true`) and compared with
    /// what is held: the LAPI's incremental stream can miss a decision created while a
    /// pull is under way (it keeps one `last_pull` time per bouncer).
    #[serde(with = "humantime_serde")]
    pub resync_interval: Duration,
    /// Timeout of each request to the LAPI.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Longest ban applied from a decision; longer ones are cut to this (and counted).
    #[serde(with = "humantime_serde")]
    pub max_ban: Duration,
    /// Decisions held at once, at most; more are refused and counted.
    pub max_held: usize,
    /// Largest LAPI answer read, in bytes; a larger one is an error (counted).
    pub max_response_bytes: u64,
    /// Bans pushed per second, at most (the rest wait for the next second).
    pub max_push_per_sec: u32,
}

impl Default for CrowdSecConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            lapi_url: "http://127.0.0.1:8080".into(),
            push: true,
            pull: true,
            machine_id: None,
            password: None,
            password_file: None,
            bouncer_key: None,
            bouncer_key_file: None,
            poll_interval: Duration::from_secs(10),
            resync_interval: Duration::from_secs(300),
            timeout: Duration::from_secs(5),
            max_ban: Duration::from_secs(7 * 24 * 3600),
            max_held: 50_000,
            max_response_bytes: 32 << 20,
            max_push_per_sec: 100,
        }
    }
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: format!("crowdsec.{key}"),
        reason: reason.into(),
    }
}

fn resolve(
    value: Option<&String>,
    file: Option<&PathBuf>,
    key: &str,
) -> Result<String, ConfigError> {
    let v = match (value, file) {
        (Some(s), _) => s.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| {
                invalid(
                    &format!("{key}_file"),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?
            .trim()
            .to_owned(),
        (None, None) => {
            return Err(invalid(key, format!("required (set {key} or {key}_file)")));
        }
    };
    if v.is_empty() || v.len() > 1024 || v.chars().any(char::is_control) {
        return Err(invalid(key, "must be 1 to 1024 printable characters"));
    }
    Ok(v)
}

impl CrowdSecConfig {
    /// The machine password, read from `password_file` when set.
    pub fn resolve_password(&self) -> Result<String, ConfigError> {
        resolve(
            self.password.as_ref(),
            self.password_file.as_ref(),
            "password",
        )
    }

    /// The bouncer key, read from `bouncer_key_file` when set.
    pub fn resolve_bouncer_key(&self) -> Result<String, ConfigError> {
        resolve(
            self.bouncer_key.as_ref(),
            self.bouncer_key_file.as_ref(),
            "bouncer_key",
        )
    }

    /// Checks ranges and, when enabled, the credentials each direction needs.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.password.is_some() && self.password_file.is_some() {
            return Err(invalid(
                "password_file",
                "set either password or password_file",
            ));
        }
        if self.bouncer_key.is_some() && self.bouncer_key_file.is_some() {
            return Err(invalid(
                "bouncer_key_file",
                "set either bouncer_key or bouncer_key_file",
            ));
        }
        let Some(rest) = self.lapi_url.strip_prefix("http://") else {
            return Err(invalid(
                "lapi_url",
                "must start with http:// (a local LAPI)",
            ));
        };
        if rest.is_empty() || rest.len() > 512 || rest.chars().any(char::is_whitespace) {
            return Err(invalid("lapi_url", "must be http://host:port[/path]"));
        }
        if let Some(id) = &self.machine_id
            && (id.is_empty()
                || id.len() > 128
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
        {
            return Err(invalid(
                "machine_id",
                "must be 1 to 128 of A-Z a-z 0-9 _ . -",
            ));
        }
        if self.enabled {
            if !self.push && !self.pull {
                return Err(invalid("push", "push or pull (or both) must be on"));
            }
            if self.push {
                if self.machine_id.is_none() {
                    return Err(invalid("machine_id", "required when crowdsec.push"));
                }
                if self.password.is_none() && self.password_file.is_none() {
                    return Err(invalid(
                        "password",
                        "required when crowdsec.push (set password or password_file)",
                    ));
                }
            }
            if self.pull && self.bouncer_key.is_none() && self.bouncer_key_file.is_none() {
                return Err(invalid(
                    "bouncer_key",
                    "required when crowdsec.pull (set bouncer_key or bouncer_key_file)",
                ));
            }
        }
        if self.poll_interval < Duration::from_millis(100)
            || self.poll_interval > Duration::from_secs(3600)
        {
            return Err(invalid("poll_interval", "must be between 100ms and 1h"));
        }
        if self.resync_interval < self.poll_interval
            || self.resync_interval > Duration::from_secs(24 * 3600)
        {
            return Err(invalid(
                "resync_interval",
                "must be between poll_interval and 24h",
            ));
        }
        if self.timeout < Duration::from_millis(100) || self.timeout > Duration::from_secs(120) {
            return Err(invalid("timeout", "must be between 100ms and 2m"));
        }
        if self.max_ban < Duration::from_secs(1) || self.max_ban > moat_guard::MAX_BAN_LENGTH {
            return Err(invalid("max_ban", "must be between 1s and a year"));
        }
        if self.max_held == 0 || self.max_held > 1 << 20 {
            return Err(invalid("max_held", "must be between 1 and 1048576"));
        }
        if self.max_response_bytes < 4096 || self.max_response_bytes > 1 << 30 {
            return Err(invalid(
                "max_response_bytes",
                "must be between 4096 and 1GiB",
            ));
        }
        if self.max_push_per_sec == 0 || self.max_push_per_sec > 100_000 {
            return Err(invalid("max_push_per_sec", "must be between 1 and 100000"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_by_default_and_valid() {
        let c = CrowdSecConfig::default();
        assert!(!c.enabled);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn enabled_needs_credentials_for_each_direction() {
        let mut c = CrowdSecConfig {
            enabled: true,
            ..Default::default()
        };
        assert!(c.validate().is_err());
        c.machine_id = Some("moat-1".into());
        c.password = Some("pw".into());
        assert!(c.validate().is_err(), "pull needs a bouncer key");
        c.bouncer_key = Some("key".into());
        assert!(c.validate().is_ok());
        c.push = false;
        c.pull = false;
        assert!(c.validate().is_err());
        c.pull = true;
        c.lapi_url = "https://lapi:8080".into();
        assert!(c.validate().is_err());
    }

    #[test]
    fn the_toml_section_is_read_and_checked() {
        let ok = crate::Config::from_toml(
            "[crowdsec]\nenabled = true\npush = false\nbouncer_key = \"k\"\npoll_interval = \"2s\"\n",
        );
        assert!(ok.is_ok_and(|c| c.crowdsec.poll_interval == Duration::from_secs(2)));
        let err = crate::Config::from_toml("[crowdsec]\nenabled = true\npush = false\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("crowdsec.bouncer_key"), "{err}");
        assert!(crate::Config::from_toml("[crowdsec]\nkey = \"x\"\n").is_err());
    }
}
