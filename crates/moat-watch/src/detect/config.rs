//! Detector thresholds, read from a TOML file (`moat watch --thresholds`).
//!
//! - [`DetectConfig`]: every threshold, with the defaults documented on each field (the
//!   community Redis rules and netdata's where they exist, so alerts match what operators
//!   already expect).
//! - [`SpikeConfig`]: the adaptive connection-rate detector's windows and factors.
//!
//! ```toml
//! clients_warning = 0.80
//! min_polls = 3
//! counter_window = "1m"
//!
//! [spike]
//! long_window = "10m"
//! min_rate = 20.0
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML did not parse or named an unknown field.
    #[error("detector config: {0}")]
    Toml(#[from] toml::de::Error),
    /// A value parsed but makes no sense (e.g. a warning above its critical).
    #[error("detector config: {0}")]
    Invalid(String),
}

/// All detector thresholds. Missing fields take their defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectConfig {
    /// `connected_clients / maxclients` at or above which `clients_near_max` warns.
    /// Default 0.80.
    pub clients_warning: f64,
    /// Same ratio at or above which it turns critical. Default 0.90 (the community
    /// redis_exporter rule).
    pub clients_critical: f64,
    /// The ratio below which an active `clients_near_max` may resolve (hysteresis, so a
    /// count hovering at 80% does not flap). Default 0.75.
    pub clients_resolve: f64,
    /// Listen-queue overflows per minute above which `listen_overflows` warns, and
    /// likewise SYN-queue drops for `syn_queue_drops`. Default 1 (netdata).
    pub drops_warning_per_min: f64,
    /// Per minute above which those two turn critical. Default 5 (netdata).
    pub drops_critical_per_min: f64,
    /// Open fds / limit at or above which `fds_near_limit` warns. Default 0.90.
    pub fds_warning: f64,
    /// Same ratio at or above which it turns critical. Default 0.97.
    pub fds_critical: f64,
    /// Ratio below which `fds_near_limit` may resolve. Default 0.85.
    pub fds_resolve: f64,
    /// Share of `maxclients` one source address may hold before `source_hoarding` warns
    /// (needs `--clients`). Default 0.25: several application hosts normally share Redis,
    /// so one holding a quarter of its capacity is a hoarder or an oversized pool.
    pub source_warning: f64,
    /// Same share at or above which it turns critical. Default 0.50.
    pub source_critical: f64,
    /// Share below which an active `source_hoarding` may resolve. Default 0.20.
    pub source_resolve: f64,
    /// Connections moat refused per minute (`--moat`) above which `moat_refusing` warns.
    /// Default 60: a legitimate client is almost never refused, so a sustained refusal a
    /// second means some source is beyond moat's limits.
    pub moat_refused_warning_per_min: f64,
    /// Per minute above which `moat_refusing` turns critical. Default 600 (10 a second: a
    /// flood or a botnet that moat is holding off).
    pub moat_refused_critical_per_min: f64,
    /// Consecutive failed polls before `redis_unreachable` is raised (one failed poll is
    /// often a blip). Default 3.
    pub unreachable_polls: u32,
    /// Consecutive polls a level or rate condition must hold before its alert is raised,
    /// and must be clear before it resolves. Default 3.
    pub min_polls: u32,
    /// How far back counter rules (`rejected_connections`, `listen_overflows`,
    /// `syn_queue_drops`) count events; they resolve once the window holds none and
    /// `min_polls` have passed. Default 60 s.
    #[serde(with = "humantime_serde")]
    pub counter_window: Duration,
    /// The adaptive connection-rate detector.
    pub spike: SpikeConfig,
}

impl Default for DetectConfig {
    fn default() -> Self {
        Self {
            clients_warning: 0.80,
            clients_critical: 0.90,
            clients_resolve: 0.75,
            drops_warning_per_min: 1.0,
            drops_critical_per_min: 5.0,
            fds_warning: 0.90,
            fds_critical: 0.97,
            fds_resolve: 0.85,
            source_warning: 0.25,
            source_critical: 0.50,
            source_resolve: 0.20,
            moat_refused_warning_per_min: 60.0,
            moat_refused_critical_per_min: 600.0,
            unreachable_polls: 3,
            min_polls: 3,
            counter_window: Duration::from_secs(60),
            spike: SpikeConfig::default(),
        }
    }
}

/// The `connection_rate_spike` detector: the rate of `total_connections_received` over a
/// short window against a robust baseline (median and MAD of a long window).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpikeConfig {
    /// The short window the current rate is averaged over (smooths per-poll noise while
    /// still reacting within a few polls). Default 5 s.
    #[serde(with = "humantime_serde")]
    pub short_window: Duration,
    /// The long window of the baseline. Default 10 min: long enough that a burst does not
    /// move the median, short enough to follow a daily ramp.
    #[serde(with = "humantime_serde")]
    pub long_window: Duration,
    /// The baseline keeps one mean rate per bucket of this length, so its memory is
    /// `long_window / bucket` values whatever the poll rate. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub bucket: Duration,
    /// Buckets needed before the detector judges at all (no baseline, no verdict).
    /// Default 3 (30 s).
    pub warmup_buckets: usize,
    /// Raise when the short rate exceeds the median by this many robust standard
    /// deviations (1.4826 × MAD). Default 6.
    pub mad_factor: f64,
    /// ... and is at least this many times the median (short- vs long-window ratio).
    /// Default 3.
    pub ratio: f64,
    /// ... and is at least this many connections per second, so a near-zero baseline does
    /// not turn a handful of connections into an attack. Default 20.
    pub min_rate: f64,
    /// An active spike resolves once the short rate falls below this fraction of the raise
    /// threshold (hysteresis). Default 0.5.
    pub resolve_fraction: f64,
    /// After the connection counter goes down (Redis restarted), the rule stays silent
    /// this long: every client reconnecting at once is a storm, not an attack.
    /// Default 30 s.
    #[serde(with = "humantime_serde")]
    pub restart_grace: Duration,
}

impl Default for SpikeConfig {
    fn default() -> Self {
        Self {
            short_window: Duration::from_secs(5),
            long_window: Duration::from_secs(600),
            bucket: Duration::from_secs(10),
            warmup_buckets: 3,
            mad_factor: 6.0,
            ratio: 3.0,
            min_rate: 20.0,
            resolve_fraction: 0.5,
            restart_grace: Duration::from_secs(30),
        }
    }
}

impl DetectConfig {
    /// Parses a `[detect]`-style TOML table (the table's body) and checks it.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Rejects thresholds that cannot work together, so a typo fails at start rather than
    /// silencing an alert.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |what: &str| Err(ConfigError::Invalid(what.to_owned()));
        if !(self.clients_resolve <= self.clients_warning
            && self.clients_warning <= self.clients_critical)
        {
            return bad("need clients_resolve <= clients_warning <= clients_critical");
        }
        if !(self.fds_resolve <= self.fds_warning && self.fds_warning <= self.fds_critical) {
            return bad("need fds_resolve <= fds_warning <= fds_critical");
        }
        if !(self.source_resolve <= self.source_warning
            && self.source_warning <= self.source_critical)
        {
            return bad("need source_resolve <= source_warning <= source_critical");
        }
        if !(0.0 <= self.drops_warning_per_min
            && self.drops_warning_per_min <= self.drops_critical_per_min)
        {
            return bad("need 0 <= drops_warning_per_min <= drops_critical_per_min");
        }
        if !(0.0 <= self.moat_refused_warning_per_min
            && self.moat_refused_warning_per_min <= self.moat_refused_critical_per_min)
        {
            return bad("need 0 <= moat_refused_warning_per_min <= moat_refused_critical_per_min");
        }
        if self.min_polls == 0 || self.unreachable_polls == 0 {
            return bad("min_polls and unreachable_polls must be at least 1");
        }
        if self.counter_window.is_zero() {
            return bad("counter_window must be positive");
        }
        let s = &self.spike;
        if s.bucket.is_zero() || s.short_window.is_zero() || s.long_window < s.bucket {
            return bad("spike windows must be positive and long_window >= bucket");
        }
        if !(s.ratio >= 1.0 && s.mad_factor >= 0.0 && s.min_rate >= 0.0) {
            return bad("spike: need ratio >= 1, mad_factor >= 0, min_rate >= 0");
        }
        if !(s.resolve_fraction > 0.0 && s.resolve_fraction <= 1.0) {
            return bad("spike: resolve_fraction must be in (0, 1]");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_toml_gives_defaults() {
        assert_eq!(
            DetectConfig::from_toml("").unwrap(),
            DetectConfig::default()
        );
    }

    #[test]
    fn fields_and_durations_parse() {
        let c = DetectConfig::from_toml(
            "clients_warning = 0.85\nmin_polls = 2\n[spike]\nlong_window = \"30m\"\nmin_rate = 5.0\n",
        )
        .unwrap();
        assert_eq!(c.clients_warning, 0.85);
        assert_eq!(c.min_polls, 2);
        assert_eq!(c.spike.long_window, Duration::from_secs(1800));
        assert_eq!(c.spike.min_rate, 5.0);
    }

    #[test]
    fn defaults_round_trip_through_toml() {
        // What `docs/watch.md` and `--print-config` would show parses back to the same.
        let text = toml::to_string(&DetectConfig::default()).unwrap();
        assert!(text.contains("counter_window = \"1m\""), "{text}");
        assert_eq!(
            DetectConfig::from_toml(&text).unwrap(),
            DetectConfig::default()
        );
    }

    #[test]
    fn unknown_fields_and_nonsense_are_refused() {
        assert!(DetectConfig::from_toml("client_warning = 0.7").is_err());
        assert!(DetectConfig::from_toml("clients_warning = 0.95").is_err());
        assert!(DetectConfig::from_toml("min_polls = 0").is_err());
        assert!(DetectConfig::from_toml("moat_refused_warning_per_min = -1.0").is_err());
        assert!(DetectConfig::from_toml("[spike]\nratio = 0.5").is_err());
    }
}
