//! A lab scenario (TOML): phase durations, the legitimate workload, the targets to start and
//! the attacks to run against each. Unknown keys are refused and every number is bounded, so
//! a typo or an impossible value is a clear error naming the key, never a run that does not
//! stop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::attack::{AttackSpec, Mode};
use crate::legit::LegitSpec;
use crate::sources::MAX_SOURCES;

use super::LabError;

/// The default matrix: baseline, flood, hoard beyond the fd limit, keep-alive hoard, pin,
/// slow-reader and auth brute force, each from 1,024 sources, against the three targets.
pub const DEFAULT: &str = include_str!("../../scenarios/default.toml");
/// A few seconds in all, small K: `moat lab --quick` and the smoke test.
pub const QUICK: &str = include_str!("../../scenarios/quick.toml");
/// `moat demo`'s scenario, as shipped.
pub const DEMO: &str = include_str!("../../scenarios/demo.toml");

/// The longest a phase may last.
pub const MAX_PHASE: Duration = Duration::from_secs(600);
/// The most attacks one scenario may list.
pub const MAX_ATTACKS: usize = 64;

/// A whole scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// A name for the report.
    #[serde(default = "default_name")]
    pub name: String,
    /// How long each phase of a run lasts.
    pub phases: Phases,
    /// The legitimate workload measured in every run.
    #[serde(default)]
    pub legit: LegitSettings,
    /// Which targets the lab starts itself: `redis`, `redis-hardened`, `moat`.
    #[serde(default = "default_targets")]
    pub targets: Vec<TargetName>,
    /// The moat target's config file (none: moat's defaults); relative to the scenario file.
    #[serde(default)]
    pub moat_config: Option<PathBuf>,
    /// Foreign CPU load (share of the machine, 0 to 1) above which a phase is marked noisy.
    #[serde(default = "default_noisy")]
    pub noisy_cpu: f64,
    /// The attacks; each runs against every target.
    pub attacks: Vec<AttackEntry>,
}

fn default_name() -> String {
    "scenario".into()
}

fn default_targets() -> Vec<TargetName> {
    vec![
        TargetName::Redis,
        TargetName::RedisHardened,
        TargetName::Moat,
    ]
}

fn default_noisy() -> f64 {
    0.25
}

/// The phases of one run: the attack runs only in the middle one.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phases {
    /// Before the attack.
    #[serde(with = "humantime_serde")]
    pub baseline: Duration,
    /// While the attack runs.
    #[serde(with = "humantime_serde")]
    pub attack: Duration,
    /// After the attack stopped.
    #[serde(with = "humantime_serde")]
    pub recovery: Duration,
}

impl Phases {
    /// The three phases in order, with their names.
    pub fn named(&self) -> [(&'static str, Duration); 3] {
        [
            ("baseline", self.baseline),
            ("attack", self.attack),
            ("recovery", self.recovery),
        ]
    }

    /// The whole run.
    pub fn total(&self) -> Duration {
        self.baseline + self.attack + self.recovery
    }
}

/// A target the lab starts itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetName {
    /// redis-server with its defaults (but `protected-mode no`, `save ""`).
    Redis,
    /// redis-server hardened by its own config.
    RedisHardened,
    /// redis-server behind `moat proxy`.
    Moat,
}

impl TargetName {
    /// The name in reports.
    pub fn name(self) -> &'static str {
        match self {
            TargetName::Redis => "redis",
            TargetName::RedisHardened => "redis-hardened",
            TargetName::Moat => "moat",
        }
    }
}

/// The legitimate workload's settings (see [`LegitSpec`] for their meaning).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LegitSettings {
    /// Clients on persistent connections.
    pub steady: u32,
    /// Clients that reconnect every `churn_every` operations.
    pub churn: u32,
    /// Operations per churn connection.
    pub churn_every: u32,
    /// Clients from 127.0.0.1.
    pub trusted: u32,
    /// Offered rate per client (ops/s).
    pub rate: f64,
    /// Fresh probes per second.
    pub fresh_rate: f64,
    /// Deadline of one operation.
    #[serde(with = "humantime_serde")]
    pub op_timeout: Duration,
    /// Keys read and written.
    pub keys: u32,
    /// Bytes per value.
    pub value_size: usize,
}

impl Default for LegitSettings {
    fn default() -> Self {
        let d = LegitSpec::new(SocketAddr::from(([127, 0, 0, 1], 6379)));
        Self {
            steady: d.steady,
            churn: d.churn,
            churn_every: d.churn_every,
            trusted: d.trusted,
            rate: d.rate,
            fresh_rate: d.fresh_rate,
            op_timeout: d.op_timeout,
            keys: d.keys,
            value_size: d.value_size,
        }
    }
}

impl LegitSettings {
    /// The workload against `target` for a run of `duration`.
    pub fn spec(&self, target: SocketAddr, duration: Duration) -> LegitSpec {
        let mut spec = LegitSpec::new(target);
        spec.duration = duration;
        spec.steady = self.steady;
        spec.churn = self.churn;
        spec.churn_every = self.churn_every;
        spec.trusted = self.trusted;
        spec.rate = self.rate;
        spec.fresh_rate = self.fresh_rate;
        spec.op_timeout = self.op_timeout;
        spec.keys = self.keys;
        spec.value_size = self.value_size;
        spec
    }
}

/// One attack of the matrix.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttackEntry {
    /// Its name in the report (`flood`, `hoard-20k`...).
    pub name: String,
    /// Source addresses it spreads over (127.100.x.y).
    #[serde(default = "default_sources")]
    pub sources: u32,
    /// The mode and its parameters (`mode.flood = { concurrency = 64 }`); none: a
    /// baseline-only run where the attack phase has no attack.
    #[serde(default)]
    pub mode: Option<Mode>,
}

fn default_sources() -> u32 {
    1024
}

impl AttackEntry {
    /// The attack's spec against `target`, running for `duration`.
    pub fn spec(&self, target: SocketAddr, duration: Duration) -> Option<AttackSpec> {
        let mut spec = AttackSpec::new(target, self.mode.clone()?);
        spec.duration = duration;
        spec.sources = self.sources;
        Some(spec)
    }
}

impl Scenario {
    /// Parses and validates a scenario.
    pub fn parse(text: &str) -> Result<Self, LabError> {
        let scenario: Scenario =
            toml::from_str(text).map_err(|e| LabError::Scenario(e.to_string()))?;
        scenario.validate()?;
        Ok(scenario)
    }

    /// The default matrix.
    pub fn default_matrix() -> Self {
        // Tested to parse: a failure here is a bug in the shipped file.
        Self::parse(DEFAULT).unwrap_or_else(|e| unreachable!("default.toml: {e}"))
    }

    /// The quick scenario.
    pub fn quick() -> Self {
        Self::parse(QUICK).unwrap_or_else(|e| unreachable!("quick.toml: {e}"))
    }

    /// `moat demo`'s scenario: a flood and a hoard, Redis alone against Redis behind moat.
    pub fn demo() -> Self {
        Self::parse(DEMO).unwrap_or_else(|e| unreachable!("demo.toml: {e}"))
    }

    /// Checks every bound, naming the key at fault.
    pub fn validate(&self) -> Result<(), LabError> {
        let bad = |key: &str, why: String| Err(LabError::Scenario(format!("{key}: {why}")));
        for (name, d) in self.phases.named() {
            if d > MAX_PHASE {
                return bad(&format!("phases.{name}"), "at most 10m".into());
            }
        }
        if self.phases.attack < Duration::from_secs(1) {
            return bad("phases.attack", "at least 1s".into());
        }
        if !(0.0..=1.0).contains(&self.noisy_cpu) {
            return bad(
                "noisy_cpu",
                "a share of the machine, between 0 and 1".into(),
            );
        }
        if self.attacks.is_empty() || self.attacks.len() > MAX_ATTACKS {
            return bad("attacks", format!("between 1 and {MAX_ATTACKS} attacks"));
        }
        let any = SocketAddr::from(([127, 0, 0, 1], 1));
        self.legit
            .spec(any, self.phases.total())
            .validate()
            .or_else(|e| bad("legit", e.to_string()))?;
        for (i, attack) in self.attacks.iter().enumerate() {
            let key = format!("attacks[{i}] ({})", attack.name);
            if attack.name.is_empty() || attack.name.len() > 64 {
                return bad(&format!("{key}.name"), "1 to 64 characters".into());
            }
            if attack.sources == 0 || attack.sources > MAX_SOURCES {
                return bad(
                    &format!("{key}.sources"),
                    format!("between 1 and {MAX_SOURCES}"),
                );
            }
            if let Some(spec) = attack.spec(any, self.phases.attack) {
                spec.validate()
                    .or_else(|e| bad(&format!("{key}.mode"), e.to_string()))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_scenarios_parse() {
        let d = Scenario::parse(DEFAULT).expect("default.toml");
        assert!(d.attacks.len() >= 7);
        assert!(
            d.attacks
                .iter()
                .filter(|a| a.mode.is_some())
                .all(|a| a.sources == 1024)
        );
        Scenario::parse(DEMO).expect("demo.toml");
        let q = Scenario::parse(QUICK).expect("quick.toml");
        assert!(q.phases.total() <= Duration::from_secs(10));
    }

    #[test]
    fn unknown_key_is_named() {
        let text = QUICK.replace("[phases]", "[phases]\nbasline = \"1s\"");
        let e = Scenario::parse(&text).expect_err("unknown key").to_string();
        assert!(e.contains("basline"), "{e}");
        let text =
            format!("{QUICK}\n[[attacks]]\nname = \"x\"\nmode.flood = {{ concurency = 3 }}\n");
        let e = Scenario::parse(&text).expect_err("unknown key").to_string();
        assert!(e.contains("concurency"), "{e}");
    }

    #[test]
    fn impossible_numbers_are_named() {
        let text = QUICK.replace("attack = \"", "attack = \"2h ");
        let e = Scenario::parse(&text).expect_err("2h").to_string();
        assert!(e.contains("phases.attack"), "{e}");
        let text = format!("{QUICK}\n[[attacks]]\nname = \"x\"\nsources = 0\nmode.flood = {{}}\n");
        let e = Scenario::parse(&text).expect_err("0 sources").to_string();
        assert!(e.contains("sources"), "{e}");
        let text = format!("{QUICK}\n[[attacks]]\nname = \"x\"\nsources = -1\n");
        let e = Scenario::parse(&text).expect_err("negative").to_string();
        assert!(e.contains("sources"), "{e}");
        let text = QUICK.replace("\nrate = 20.0", "\nrate = 1e9");
        let e = Scenario::parse(&text).expect_err("rate").to_string();
        assert!(e.contains("legit"), "{e}");
    }
}
