//! The `[ban_share]` section: bans shared with other moats through the backend Redis.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// Shortest secret accepted: a guessable one would let anyone who can PUBLISH ban others.
const MIN_SECRET: usize = 16;

/// `[ban_share]`: each moat publishes the bans its guard issues on a Redis channel and
/// keeps them in keys with TTLs; the others apply them. Off by default. Changes need a
/// restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BanShareConfig {
    /// Whether to share bans at all.
    pub enabled: bool,
    /// The pub/sub channel ban messages go through.
    pub channel: String,
    /// Prefix of the keys holding the bans in force (`<prefix><network>`, expiring with
    /// the ban), read by a moat when it starts.
    pub key_prefix: String,
    /// The secret every moat sharing bans signs and checks messages with (HMAC-SHA256).
    /// At least 16 characters; set this or `secret_file`.
    pub secret: Option<String>,
    /// File holding the secret (surrounding whitespace ignored).
    pub secret_file: Option<PathBuf>,
    /// This moat's id in its messages (so it ignores its own); random at each start when
    /// unset. 1 to 64 of `[A-Za-z0-9_.-]`.
    pub instance: Option<String>,
    /// Longest ban applied from a peer; longer ones are cut to this.
    #[serde(with = "humantime_serde")]
    pub max_ban: Duration,
    /// Bans applied from peers per second, at most; more are dropped and counted. Also
    /// caps the bans this moat publishes per second (the rest wait).
    pub max_per_sec: u32,
    /// Bans from peers held at once, at most.
    pub max_held: usize,
    /// How old (or how far in the future, for skewed clocks) a message may be: older ones
    /// are replays and are dropped.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
}

impl Default for BanShareConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            channel: "moat:bans".into(),
            key_prefix: "moat:ban:".into(),
            secret: None,
            secret_file: None,
            instance: None,
            max_ban: Duration::from_secs(24 * 3600),
            max_per_sec: 100,
            max_held: 10_000,
            max_age: Duration::from_secs(30),
        }
    }
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: format!("ban_share.{key}"),
        reason: reason.into(),
    }
}

impl BanShareConfig {
    /// The secret, read from `secret_file` when set.
    pub fn resolve_secret(&self) -> Result<Vec<u8>, ConfigError> {
        let secret = match (&self.secret, &self.secret_file) {
            (Some(s), _) => s.clone(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| {
                    invalid(
                        "secret_file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?
                .trim()
                .to_owned(),
            (None, None) => {
                return Err(invalid(
                    "secret",
                    "required when ban_share.enabled (set secret or secret_file)",
                ));
            }
        };
        if secret.len() < MIN_SECRET {
            return Err(invalid(
                "secret",
                format!("must be at least {MIN_SECRET} characters"),
            ));
        }
        Ok(secret.into_bytes())
    }

    /// Checks ranges and, when enabled, that a secret is set.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.secret.is_some() && self.secret_file.is_some() {
            return Err(invalid(
                "secret_file",
                "set either secret or secret_file, not both",
            ));
        }
        if let Some(s) = &self.secret
            && s.len() < MIN_SECRET
        {
            return Err(invalid(
                "secret",
                format!("must be at least {MIN_SECRET} characters"),
            ));
        }
        if self.enabled && self.secret.is_none() && self.secret_file.is_none() {
            return Err(invalid(
                "secret",
                "required when ban_share.enabled (set secret or secret_file)",
            ));
        }
        if self.channel.is_empty() || self.channel.len() > 256 {
            return Err(invalid("channel", "must be 1 to 256 bytes"));
        }
        if self.key_prefix.is_empty() || self.key_prefix.len() > 256 {
            return Err(invalid("key_prefix", "must be 1 to 256 bytes"));
        }
        if let Some(id) = &self.instance
            && !super::message::valid_instance(id)
        {
            return Err(invalid("instance", "must be 1 to 64 of A-Z a-z 0-9 _ . -"));
        }
        if self.max_ban < Duration::from_secs(1) || self.max_ban > moat_guard::MAX_BAN_LENGTH {
            return Err(invalid("max_ban", "must be between 1s and a year"));
        }
        if self.max_per_sec == 0 || self.max_per_sec > 100_000 {
            return Err(invalid("max_per_sec", "must be between 1 and 100000"));
        }
        if self.max_held == 0 || self.max_held > 1 << 20 {
            return Err(invalid("max_held", "must be between 1 and 1048576"));
        }
        if self.max_age < Duration::from_secs(1) || self.max_age > Duration::from_secs(3600) {
            return Err(invalid("max_age", "must be between 1s and 1h"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_by_default_and_valid() {
        let c = BanShareConfig::default();
        assert!(!c.enabled);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn enabled_needs_a_long_enough_secret() {
        let mut c = BanShareConfig {
            enabled: true,
            ..Default::default()
        };
        assert!(c.validate().is_err());
        c.secret = Some("short".into());
        assert!(c.validate().is_err());
        c.secret = Some("sixteen chars ok".into());
        assert!(c.validate().is_ok());
        assert_eq!(c.resolve_secret().ok(), Some(b"sixteen chars ok".to_vec()));
        c.instance = Some("bad id".into());
        assert!(c.validate().is_err());
    }

    #[test]
    fn the_toml_section_is_read_and_checked() {
        let ok = crate::Config::from_toml(
            "[ban_share]\nenabled = true\nsecret = \"sixteen chars ok\"\nmax_age = \"5s\"\n",
        );
        assert!(ok.is_ok_and(|c| c.ban_share.max_age == Duration::from_secs(5)));
        let err = crate::Config::from_toml("[ban_share]\nenabled = true\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("ban_share.secret"), "{err}");
        assert!(crate::Config::from_toml("[ban_share]\nsecrets = \"x\"\n").is_err());
    }

    #[test]
    fn ranges_are_checked() {
        for c in [
            BanShareConfig {
                max_per_sec: 0,
                ..Default::default()
            },
            BanShareConfig {
                max_held: 0,
                ..Default::default()
            },
            BanShareConfig {
                max_age: Duration::ZERO,
                ..Default::default()
            },
            BanShareConfig {
                channel: String::new(),
                ..Default::default()
            },
        ] {
            assert!(c.validate().is_err(), "{c:?}");
        }
    }
}
