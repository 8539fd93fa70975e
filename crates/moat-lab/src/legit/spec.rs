//! What a legitimate workload does: its target, its groups of clients and their offered
//! rates, the operation mix, and the bounds that make every run stop by itself.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

use crate::sources::{Group, MAX_SOURCES};

use super::LegitError;

/// The longest run a spec may ask for: the workload is a measuring instrument, not a
/// service, and every loop here must end by itself.
pub const MAX_DURATION: Duration = Duration::from_secs(3600);
/// The most clients one group may have: each holds a socket (and churn clients many).
pub const MAX_CLIENTS: u32 = 10_000;
/// The highest offered rate, per client or of fresh probes, in operations per second.
pub const MAX_RATE: f64 = 100_000.0;
/// The most keys the workload touches.
pub const MAX_KEYS: u32 = 1_000_000;
/// The largest value written by SET, in bytes.
pub const MAX_VALUE_SIZE: usize = 64 * 1024;

/// A group of legitimate clients, each from its own range of source addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LegitGroup {
    /// Clients on persistent connections.
    Steady,
    /// Clients that reconnect every few operations.
    Churn,
    /// Probes, each a new connection from an address never used before in the run.
    Fresh,
    /// Clients from the trusted address 127.0.0.1.
    Trusted,
}

impl LegitGroup {
    /// Every group, in report order.
    pub const ALL: [LegitGroup; 4] = [
        LegitGroup::Steady,
        LegitGroup::Churn,
        LegitGroup::Fresh,
        LegitGroup::Trusted,
    ];

    /// The group's name in reports and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            LegitGroup::Steady => "steady",
            LegitGroup::Churn => "churn",
            LegitGroup::Fresh => "fresh",
            LegitGroup::Trusted => "trusted",
        }
    }

    /// The range of source addresses the group's clients connect from.
    pub fn sources(self) -> Group {
        match self {
            LegitGroup::Steady => Group::Steady,
            LegitGroup::Churn => Group::Churn,
            LegitGroup::Fresh => Group::Fresh,
            LegitGroup::Trusted => Group::Trusted,
        }
    }

    /// Position in [`LegitGroup::ALL`], for per-group arrays.
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for LegitGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Relative weights of the operations a steady, churn or trusted client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OpMix {
    /// Weight of `GET key`.
    pub get: u32,
    /// Weight of `SET key value`.
    pub set: u32,
    /// Weight of `PING`.
    pub ping: u32,
}

impl Default for OpMix {
    fn default() -> Self {
        Self {
            get: 70,
            set: 20,
            ping: 10,
        }
    }
}

/// The legitimate workload to run against one target.
///
/// Defaults: 10 seconds, 20 steady and 10 churn clients at 50 ops/s each, 5 fresh probes
/// per second, one trusted client, 1 s per operation at most.
#[derive(Debug, Clone, Serialize)]
pub struct LegitSpec {
    /// The Redis-speaking endpoint to measure (Redis itself or a proxy in front of it).
    pub target: SocketAddr,
    /// Let `target` be something other than loopback (see [`crate::target::check`]).
    pub allow_non_loopback: bool,
    /// How long operations are scheduled for; the run ends at most one `op_timeout` later.
    #[serde(with = "secs")]
    pub duration: Duration,
    /// Clients on persistent connections.
    pub steady: u32,
    /// Clients that reconnect every `churn_every` operations.
    pub churn: u32,
    /// Operations a churn client sends on one connection before it reconnects.
    pub churn_every: u32,
    /// Clients from 127.0.0.1 (the address moat trusts by default).
    pub trusted: u32,
    /// Offered rate of each steady, churn and trusted client, in operations per second.
    pub rate: f64,
    /// Fresh probes per second (in all): each connects from a new address, sends PING and
    /// GET, and closes.
    pub fresh_rate: f64,
    /// Distinct source addresses per group (steady, churn); 0 gives each client its own.
    pub sources_per_group: u32,
    /// Index of the first fresh address in 127.3.0.0/16, so successive runs against one
    /// target (a lab's phases) can keep using addresses it has never seen.
    pub fresh_first: u32,
    /// Deadline of one operation, counted from its intended send time (connecting
    /// included); an operation that late is a timeout.
    #[serde(with = "secs")]
    pub op_timeout: Duration,
    /// Keys the workload reads and writes.
    pub keys: u32,
    /// Bytes of each value written.
    pub value_size: usize,
    /// Prefix of every key, so the workload stays out of other data.
    pub key_prefix: String,
    /// The operation mix.
    pub mix: OpMix,
}

impl LegitSpec {
    /// The defaults against `target`.
    pub fn new(target: SocketAddr) -> Self {
        Self {
            target,
            allow_non_loopback: false,
            duration: Duration::from_secs(10),
            steady: 20,
            churn: 10,
            churn_every: 25,
            trusted: 1,
            rate: 50.0,
            fresh_rate: 5.0,
            sources_per_group: 0,
            fresh_first: 0,
            op_timeout: Duration::from_secs(1),
            keys: 100,
            value_size: 32,
            key_prefix: "moat:legit:".into(),
            mix: OpMix::default(),
        }
    }

    /// How many clients (or, for fresh, probes per second) `group` has.
    pub fn clients(&self, group: LegitGroup) -> u32 {
        match group {
            LegitGroup::Steady => self.steady,
            LegitGroup::Churn => self.churn,
            LegitGroup::Trusted => self.trusted,
            LegitGroup::Fresh => u32::from(self.fresh_rate > 0.0),
        }
    }

    /// Fresh probes the run schedules at most.
    pub fn fresh_probes(&self) -> u64 {
        ops_in(self.fresh_rate, self.duration)
    }

    /// Checks every bound; a spec that passes cannot make the run loop forever or panic.
    pub fn validate(&self) -> Result<(), LegitError> {
        let bad = |what: &str| Err(LegitError::InvalidSpec(what.to_owned()));
        if self.duration.is_zero() || self.duration > MAX_DURATION {
            return bad("duration must be between 1 ms and 1 hour");
        }
        for (name, n) in [
            ("steady", self.steady),
            ("churn", self.churn),
            ("trusted", self.trusted),
        ] {
            if n > MAX_CLIENTS {
                return Err(LegitError::InvalidSpec(format!(
                    "{name}: at most {MAX_CLIENTS} clients"
                )));
            }
        }
        let any_client = self.steady + self.churn + self.trusted > 0;
        if any_client && !(self.rate > 0.0 && self.rate <= MAX_RATE) {
            return bad("rate must be above 0 and at most 100000 ops/s per client");
        }
        if !(self.fresh_rate >= 0.0 && self.fresh_rate <= MAX_RATE) {
            return bad("fresh rate must be between 0 and 100000 probes/s");
        }
        if !any_client && self.fresh_rate == 0.0 {
            return bad("no client in any group: nothing to measure");
        }
        if self.churn > 0 && self.churn_every == 0 {
            return bad("churn_every must be at least 1");
        }
        let fresh_last = u64::from(self.fresh_first) + self.fresh_probes();
        if fresh_last > u64::from(MAX_SOURCES) {
            return Err(LegitError::InvalidSpec(format!(
                "fresh probes need {fresh_last} distinct addresses from index {} on; \
                 127.3.0.0/16 has {MAX_SOURCES}: lower the fresh rate or the duration",
                self.fresh_first
            )));
        }
        if self.op_timeout.is_zero() || self.op_timeout > Duration::from_secs(60) {
            return bad("op_timeout must be between 1 ms and 60 s");
        }
        if self.keys == 0 || self.keys > MAX_KEYS {
            return bad("keys must be between 1 and 1000000");
        }
        if self.value_size > MAX_VALUE_SIZE {
            return bad("value_size must be at most 65536 bytes");
        }
        if self.mix.get + self.mix.set + self.mix.ping == 0 {
            return bad("the operation mix has no weight");
        }
        Ok(())
    }
}

/// Operations a schedule at `rate` per second offers in `duration` (rounded up).
pub(crate) fn ops_in(rate: f64, duration: Duration) -> u64 {
    if rate <= 0.0 {
        return 0;
    }
    // Bounded by validate(): at most 1e5/s over an hour.
    (rate * duration.as_secs_f64()).ceil() as u64
}

/// Durations serialized as fractional seconds, the unit the reports use.
mod secs {
    use std::time::Duration;

    pub(super) fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> LegitSpec {
        LegitSpec::new(SocketAddr::from(([127, 0, 0, 1], 6379)))
    }

    #[test]
    fn defaults_are_valid_and_bad_numbers_are_refused() {
        assert!(spec().validate().is_ok());
        let cases: [fn(&mut LegitSpec); 8] = [
            |s| s.duration = Duration::ZERO,
            |s| s.rate = 0.0,
            |s| s.rate = f64::NAN,
            |s| s.fresh_rate = -1.0,
            |s| s.churn_every = 0,
            |s| s.keys = 0,
            |s| {
                s.fresh_rate = 100.0;
                s.duration = Duration::from_secs(3600);
            },
            |s| {
                s.steady = 0;
                s.churn = 0;
                s.trusted = 0;
                s.fresh_rate = 0.0;
            },
        ];
        for case in cases {
            let mut s = spec();
            case(&mut s);
            assert!(
                matches!(s.validate(), Err(LegitError::InvalidSpec(_))),
                "{s:?}"
            );
        }
    }
}
