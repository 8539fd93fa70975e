//! What an attack does: the target, how long, from how many sources, and one spec per mode.
//! Every spec has defaults that stop within a minute, and hard limits checked by
//! [`AttackSpec::validate`] so no input makes an attack unbounded.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::AttackError;

/// The longest an attack may run.
pub const MAX_DURATION: Duration = Duration::from_secs(600);
/// The most connections a hoard, pin or slow-reader may hold (the fd limit usually bites
/// first).
pub const MAX_CONNECTIONS: u32 = 1_000_000;
/// The most attempts in flight for flood and auth-brute.
pub const MAX_CONCURRENCY: u32 = 10_000;
/// The most attempts a flood or auth-brute may make.
pub const MAX_COUNT: u64 = 1_000_000_000;
/// The most processes an attack may be split over.
pub const MAX_SHARDS: u32 = 256;
/// The largest value a slow-reader may SET and request.
pub const MAX_VALUE_SIZE: usize = 64 << 20;
/// The most reply bytes one slow-reader connection may request.
pub const MAX_BYTES_PER_CONNECTION: u64 = 4 << 30;

/// One attack: where, how long, from how many addresses, and which mode. Deserializable
/// (e.g. from a scenario file) with the defaults of [`AttackSpec::new`] for what is left out.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttackSpec {
    /// The endpoint attacked (Redis, moat, or another proxy).
    pub target: SocketAddr,
    /// Allow a target outside loopback (never in tests).
    #[serde(default)]
    pub allow_non_loopback: bool,
    /// How long the attack runs at most.
    #[serde(with = "humantime_serde", default = "default_duration")]
    pub duration: Duration,
    /// How many source addresses of [`crate::sources::Group::Attack`] connections are spread
    /// over (127.100.x.y; an IPv6 target is attacked from `::1` only).
    #[serde(default = "default_sources")]
    pub sources: u32,
    /// How long one connect may take before it counts as a timeout.
    #[serde(with = "humantime_serde", default = "default_connect_timeout")]
    pub connect_timeout: Duration,
    /// The mode and its parameters.
    pub mode: Mode,
    /// Run only this share of the connections (hoard, pin, slow-reader), when one process
    /// cannot hold them all: `moat attack` starts one process per shard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<Shard>,
}

fn default_duration() -> Duration {
    Duration::from_secs(10)
}

fn default_sources() -> u32 {
    1
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}

/// One of `count` equal shares of an attack's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// Which share, from 0.
    pub index: u32,
    /// How many shares.
    pub count: u32,
}

impl Shard {
    /// The connection numbers of this shard out of `total`: contiguous, and together the
    /// shards cover `0..total` exactly once, so each connection keeps its source address.
    pub fn range(&self, total: u32) -> std::ops::Range<u32> {
        let at = |i: u32| {
            let at = u64::from(total) * u64::from(i) / u64::from(self.count.max(1));
            u32::try_from(at).unwrap_or(total)
        };
        at(self.index)..at(self.index + 1)
    }
}

impl std::str::FromStr for Shard {
    type Err = String;

    /// `i/n`, with `i` below `n`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s}: expected i/n with 0 <= i < n (e.g. 0/4)");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (i.parse().map_err(|_| bad())?, n.parse().map_err(|_| bad())?);
        if index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

/// The attack modes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Connect and close as fast as possible.
    Flood(FloodSpec),
    /// Open connections and hold them silent (slowloris).
    Hoard(HoardSpec),
    /// Take dedicated connections with blocking or stateful commands.
    Pin(PinSpec),
    /// Request large values in pipelines and never read the replies.
    SlowReader(SlowReaderSpec),
    /// Wrong passwords, again and again.
    AuthBrute(AuthBruteSpec),
}

/// `flood`: connect and close with bounded concurrency.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FloodSpec {
    /// Connects in flight at once.
    pub concurrency: u32,
    /// The most connection attempts in all.
    pub count: u64,
    /// Attempts per second at most (none: as fast as the target answers).
    pub rate: Option<f64>,
    /// Close with an RST (`SO_LINGER` 0) instead of a FIN.
    pub rst: bool,
    /// Wait this long for a line the target writes before closing (moat's `-ERR moat: ...`,
    /// Redis's `-ERR max number of clients reached`) and count it; none: close at once.
    #[serde(with = "humantime_serde")]
    pub read_reply: Option<Duration>,
}

impl Default for FloodSpec {
    fn default() -> Self {
        Self {
            concurrency: 64,
            count: 10_000_000,
            rate: None,
            rst: false,
            read_reply: None,
        }
    }
}

/// `hoard`: hold K connections open without a word.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HoardSpec {
    /// Connections to open and hold.
    pub connections: u32,
    /// Send a PING this often, so idle deadlines alone do not free the connections.
    #[serde(with = "humantime_serde")]
    pub keepalive: Option<Duration>,
    /// Re-open the connections the target closes.
    pub refill: bool,
    /// Connects in flight at once while opening (keeps the target's backlog from
    /// overflowing before the hoard is even in place).
    pub connect_concurrency: u32,
}

impl Default for HoardSpec {
    fn default() -> Self {
        Self {
            connections: 1000,
            keepalive: None,
            refill: false,
            connect_concurrency: 256,
        }
    }
}

/// How `pin` takes a dedicated connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PinHow {
    /// `BLPOP key 0`: blocks forever on an empty list.
    Blpop,
    /// `SUBSCRIBE channel`: a subscriber holds its connection.
    Subscribe,
    /// `MULTI` and never `EXEC`: a transaction holds its connection.
    Multi,
}

/// `pin`: K clients each holding a connection a proxy cannot share.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PinSpec {
    /// Clients.
    pub connections: u32,
    /// Which command pins.
    pub how: PinHow,
    /// The list key (BLPOP) or channel (SUBSCRIBE).
    pub key: String,
    /// Re-open (and re-pin) the connections the target closes.
    pub refill: bool,
    /// Connects in flight at once while opening.
    pub connect_concurrency: u32,
}

impl Default for PinSpec {
    fn default() -> Self {
        Self {
            connections: 100,
            how: PinHow::Blpop,
            key: "moat:attack:pin".into(),
            refill: false,
            connect_concurrency: 256,
        }
    }
}

/// `slow-reader`: pipelines of GET for a large value, never read.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SlowReaderSpec {
    /// Connections.
    pub connections: u32,
    /// Bytes of the value SET first and then requested again and again.
    pub value_size: usize,
    /// GETs per write.
    pub pipeline: u32,
    /// Reply bytes one connection requests at most, so an unprotected Redis is not driven
    /// out of memory by mistake: connections × this bounds what the target may buffer.
    pub max_bytes_per_connection: u64,
    /// How long one write may block before the connection counts as stalled (its send
    /// buffer stopped accepting) and stops writing.
    #[serde(with = "humantime_serde")]
    pub stall_after: Duration,
    /// The key SET and requested.
    pub key: String,
}

impl Default for SlowReaderSpec {
    fn default() -> Self {
        Self {
            connections: 8,
            value_size: 16 << 10,
            pipeline: 64,
            max_bytes_per_connection: 32 << 20,
            stall_after: Duration::from_secs(1),
            key: "moat:attack:big".into(),
        }
    }
}

/// `auth-brute`: connect, wrong AUTH, read the error, repeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthBruteSpec {
    /// Connections in flight at once.
    pub concurrency: u32,
    /// The most AUTH attempts in all.
    pub count: u64,
    /// AUTH attempts per second at most.
    pub rate: Option<f64>,
    /// AUTH attempts per connection before reconnecting.
    pub per_connection: u32,
    /// Username to try (`AUTH user pass`); none: `AUTH pass`.
    pub username: Option<String>,
    /// How long to wait for each reply.
    #[serde(with = "humantime_serde")]
    pub reply_timeout: Duration,
}

impl Default for AuthBruteSpec {
    fn default() -> Self {
        Self {
            concurrency: 16,
            count: 1_000_000,
            rate: None,
            per_connection: 1,
            username: None,
            reply_timeout: Duration::from_secs(2),
        }
    }
}

impl Mode {
    /// Whether the mode holds K connections (hoard, pin, slow-reader) and can therefore be
    /// split over several processes.
    pub fn holds_connections(&self) -> bool {
        matches!(self, Mode::Hoard(_) | Mode::Pin(_) | Mode::SlowReader(_))
    }

    /// The mode's name as on the command line.
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Flood(_) => "flood",
            Mode::Hoard(_) => "hoard",
            Mode::Pin(_) => "pin",
            Mode::SlowReader(_) => "slow-reader",
            Mode::AuthBrute(_) => "auth-brute",
        }
    }
}

impl AttackSpec {
    /// A spec with the common defaults: 10 s, one source, 2 s connect timeout, loopback only.
    pub fn new(target: SocketAddr, mode: Mode) -> Self {
        Self {
            target,
            allow_non_loopback: false,
            duration: default_duration(),
            sources: default_sources(),
            connect_timeout: default_connect_timeout(),
            mode,
            shard: None,
        }
    }

    /// Checks every value against its limit.
    pub fn validate(&self) -> Result<(), AttackError> {
        let bad = |what: String| Err(AttackError::InvalidSpec(what));
        if self.duration.is_zero() || self.duration > MAX_DURATION {
            return bad(format!(
                "duration {:?} must be above 0 and at most {:?}",
                self.duration, MAX_DURATION
            ));
        }
        if self.sources == 0 || self.sources > crate::sources::MAX_SOURCES {
            return bad(format!(
                "sources {} must be 1 to {}",
                self.sources,
                crate::sources::MAX_SOURCES
            ));
        }
        if self.connect_timeout.is_zero() || self.connect_timeout > Duration::from_secs(60) {
            return bad("connect timeout must be above 0 and at most 60s".into());
        }
        if let Some(shard) = self.shard {
            if shard.count == 0 || shard.index >= shard.count || shard.count > MAX_SHARDS {
                return bad(format!(
                    "shard {}/{} must have 0 <= i < n <= {MAX_SHARDS}",
                    shard.index, shard.count
                ));
            }
            if !self.mode.holds_connections() {
                return bad(format!(
                    "{} cannot be sharded (its concurrency bounds its descriptors)",
                    self.mode.name()
                ));
            }
        }
        let range = |name: &str, v: u64, max: u64| -> Result<(), AttackError> {
            if v == 0 || v > max {
                return bad(format!("{name} {v} must be 1 to {max}"));
            }
            Ok(())
        };
        let rate = |r: Option<f64>| -> Result<(), AttackError> {
            match r {
                Some(r) if !(r.is_finite() && r > 0.0 && r <= 10_000_000.0) => bad(format!(
                    "rate {r} must be above 0 and at most 10000000 per second"
                )),
                _ => Ok(()),
            }
        };
        let conns = |v: u32| range("connections", v.into(), MAX_CONNECTIONS.into());
        let conc = |v: u32| range("concurrency", v.into(), MAX_CONCURRENCY.into());
        match &self.mode {
            Mode::Flood(f) => {
                conc(f.concurrency)?;
                range("count", f.count, MAX_COUNT)?;
                rate(f.rate)?;
                if f.read_reply
                    .is_some_and(|d| d.is_zero() || d > Duration::from_secs(10))
                {
                    return bad("read-reply must be above 0 and at most 10s".into());
                }
            }
            Mode::Hoard(h) => {
                conns(h.connections)?;
                conc(h.connect_concurrency)?;
                if h.keepalive.is_some_and(|d| d < Duration::from_millis(10)) {
                    return bad("keepalive must be at least 10ms".into());
                }
            }
            Mode::Pin(p) => {
                conns(p.connections)?;
                conc(p.connect_concurrency)?;
                if p.key.is_empty() || p.key.len() > 1024 {
                    return bad("pin key must be 1 to 1024 bytes".into());
                }
            }
            Mode::SlowReader(s) => {
                conns(s.connections)?;
                range("value size", s.value_size as u64, MAX_VALUE_SIZE as u64)?;
                range("pipeline", s.pipeline.into(), 100_000)?;
                range(
                    "max bytes per connection",
                    s.max_bytes_per_connection,
                    MAX_BYTES_PER_CONNECTION,
                )?;
                if s.stall_after.is_zero() {
                    return bad("stall-after must be above 0".into());
                }
                if s.key.is_empty() || s.key.len() > 1024 {
                    return bad("slow-reader key must be 1 to 1024 bytes".into());
                }
            }
            Mode::AuthBrute(a) => {
                conc(a.concurrency)?;
                range("count", a.count, MAX_COUNT)?;
                rate(a.rate)?;
                range("per-connection", a.per_connection.into(), 1_000_000)?;
                if a.reply_timeout.is_zero() || a.reply_timeout > Duration::from_secs(60) {
                    return bad("reply timeout must be above 0 and at most 60s".into());
                }
            }
        }
        Ok(())
    }

    /// Sockets the attack (or its shard) holds at once at most.
    pub fn fds_needed(&self) -> u64 {
        let share = |k: u32| -> u64 {
            match self.shard {
                Some(shard) => shard.range(k).len() as u64,
                None => k.into(),
            }
        };
        match &self.mode {
            Mode::Flood(f) => f.concurrency.into(),
            Mode::Hoard(h) => share(h.connections),
            Mode::Pin(p) => share(p.connections),
            // Plus the connection that SETs the value.
            Mode::SlowReader(s) => share(s.connections) + 1,
            Mode::AuthBrute(a) => a.concurrency.into(),
        }
    }

    /// The connection numbers this process runs: all, or its shard's.
    pub(crate) fn connection_range(&self, total: u32) -> std::ops::Range<u32> {
        match self.shard {
            Some(shard) => shard.range(total),
            None => 0..total,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(mode: Mode) -> AttackSpec {
        AttackSpec::new(SocketAddr::from(([127, 0, 0, 1], 1)), mode)
    }

    #[test]
    fn defaults_are_valid_and_limits_hold() {
        for mode in [
            Mode::Flood(FloodSpec::default()),
            Mode::Hoard(HoardSpec::default()),
            Mode::Pin(PinSpec::default()),
            Mode::SlowReader(SlowReaderSpec::default()),
            Mode::AuthBrute(AuthBruteSpec::default()),
        ] {
            assert!(spec(mode).validate().is_ok());
        }
        let mut s = spec(Mode::Flood(FloodSpec::default()));
        s.duration = Duration::from_secs(601);
        assert!(s.validate().is_err());
        s.duration = Duration::from_secs(1);
        s.sources = 0;
        assert!(s.validate().is_err());
        let s = spec(Mode::Flood(FloodSpec {
            rate: Some(f64::NAN),
            ..FloodSpec::default()
        }));
        assert!(s.validate().is_err());
        let s = spec(Mode::Hoard(HoardSpec {
            connections: 0,
            ..HoardSpec::default()
        }));
        assert!(s.validate().is_err());
    }

    #[test]
    fn specs_read_from_a_scenario_with_defaults() {
        let json = r#"{"target": "127.0.0.1:6379", "duration": "3s",
            "mode": {"hoard": {"connections": 7, "keepalive": "20s"}}}"#;
        let s: AttackSpec = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((s.duration, s.sources), (Duration::from_secs(3), 1));
        match &s.mode {
            Mode::Hoard(h) => {
                assert_eq!(h.connections, 7);
                assert_eq!(h.keepalive, Some(Duration::from_secs(20)));
                assert_eq!(h.connect_concurrency, 256);
            }
            other => panic!("{other:?}"),
        }
        let typo = r#"{"target": "127.0.0.1:6379", "mode": {"hoard": {"conections": 7}}}"#;
        assert!(serde_json::from_str::<AttackSpec>(typo).is_err());
    }

    #[test]
    fn shards_cover_every_connection_once() {
        for (total, count) in [(10, 3), (3, 4), (20_000, 7), (1, 1)] {
            let mut seen = Vec::new();
            for index in 0..count {
                seen.extend(Shard { index, count }.range(total));
            }
            assert_eq!(seen, (0..total).collect::<Vec<_>>());
        }
        assert_eq!("1/4".parse(), Ok(Shard { index: 1, count: 4 }));
        assert!("4/4".parse::<Shard>().is_err());
        assert!("x".parse::<Shard>().is_err());
        let mut s = spec(Mode::Flood(FloodSpec::default()));
        s.shard = Some(Shard { index: 0, count: 2 });
        assert!(s.validate().is_err(), "flood is not sharded");
        let mut s = spec(Mode::Hoard(HoardSpec {
            connections: 10,
            ..HoardSpec::default()
        }));
        s.shard = Some(Shard { index: 2, count: 3 });
        assert!(s.validate().is_ok());
        assert_eq!(s.fds_needed(), 4);
    }
}
