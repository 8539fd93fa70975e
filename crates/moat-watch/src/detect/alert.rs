//! Alerts and their state machine.
//!
//! - [`AlertId`], [`Severity`], [`Event`]: what the detectors report, with stable ids that
//!   sinks and scripts can match on.
//! - [`Condition`]: one rule's verdict for one poll (firing, holding, clear or unknown).
//! - [`AlertMachine`]: turns a rule's verdicts into raise and resolve events, with a minimum
//!   duration each way; the rule supplies the hysteresis by reporting `Holding` between
//!   its raise and resolve thresholds.

use std::time::{Duration, Instant};

use serde::Serialize;

/// Stable alert identifiers (their [`AlertId::as_str`] form is the public name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertId {
    /// `connected_clients` close to `maxclients`.
    ClientsNearMax,
    /// `rejected_connections` increased: Redis refused clients at `maxclients`.
    RejectedConnections,
    /// The kernel dropped connections because an accept queue was full.
    ListenOverflows,
    /// The kernel dropped SYNs because the SYN queue was full.
    SynQueueDrops,
    /// The Redis process is close to its file-descriptor limit.
    FdsNearLimit,
    /// New connections arrive far faster than the baseline.
    ConnectionRateSpike,
    /// The monitoring connection cannot reach Redis.
    RedisUnreachable,
    /// One source address holds a large share of `maxclients` (from a sampled
    /// `CLIENT LIST`): a hoarder, or an application pool far too large.
    SourceHoarding,
    /// The moat in front of Redis (`--moat`) refuses connections: an attack it is holding
    /// off, named by its top reason and source.
    MoatRefusing,
    /// The moat in front of Redis holds close to its own client cap (a hoard of moat).
    MoatClientsNearMax,
    /// The moat's admin API does not answer.
    MoatUnreachable,
}

impl AlertId {
    /// Every alert, in a stable order, for sinks that report each one whether active or not.
    pub const ALL: [AlertId; 11] = [
        Self::RedisUnreachable,
        Self::ClientsNearMax,
        Self::RejectedConnections,
        Self::ListenOverflows,
        Self::SynQueueDrops,
        Self::FdsNearLimit,
        Self::ConnectionRateSpike,
        Self::SourceHoarding,
        Self::MoatUnreachable,
        Self::MoatRefusing,
        Self::MoatClientsNearMax,
    ];

    /// Fails to compile when an alert is added without being listed in [`AlertId::ALL`].
    const fn _every_alert_listed(self) {
        match self {
            Self::RedisUnreachable
            | Self::ClientsNearMax
            | Self::RejectedConnections
            | Self::ListenOverflows
            | Self::SynQueueDrops
            | Self::FdsNearLimit
            | Self::ConnectionRateSpike
            | Self::SourceHoarding
            | Self::MoatUnreachable
            | Self::MoatRefusing
            | Self::MoatClientsNearMax => {}
        }
    }

    /// The id as sinks print it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientsNearMax => "clients_near_max",
            Self::RejectedConnections => "rejected_connections",
            Self::ListenOverflows => "listen_overflows",
            Self::SynQueueDrops => "syn_queue_drops",
            Self::FdsNearLimit => "fds_near_limit",
            Self::ConnectionRateSpike => "connection_rate_spike",
            Self::RedisUnreachable => "redis_unreachable",
            Self::SourceHoarding => "source_hoarding",
            Self::MoatRefusing => "moat_refusing",
            Self::MoatClientsNearMax => "moat_clients_near_max",
            Self::MoatUnreachable => "moat_unreachable",
        }
    }
}

impl std::fmt::Display for AlertId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How bad an alert is; ordered, so an escalation is `new > old`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth a look.
    Warning,
    /// Clients are being, or are about to be, turned away.
    Critical,
}

/// What a detector reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// An alert started, or escalated to a higher severity (raised again with it).
    Raised {
        /// Which alert.
        id: AlertId,
        /// How bad.
        severity: Severity,
        /// One human line on what was seen.
        summary: String,
        /// The measured value that crossed the threshold.
        value: f64,
        /// The threshold it crossed.
        threshold: f64,
    },
    /// An alert ended.
    Resolved {
        /// Which alert.
        id: AlertId,
        /// How long it was active (from its first raise).
        #[serde(with = "humantime_serde")]
        after: Duration,
    },
}

/// One rule's verdict on one poll.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// Above the raise threshold.
    Firing {
        /// How bad.
        severity: Severity,
        /// The measured value.
        value: f64,
        /// The threshold crossed.
        threshold: f64,
        /// One human line.
        summary: String,
    },
    /// Between the resolve and raise thresholds: neither raises nor resolves, and breaks
    /// both streaks.
    Holding,
    /// Below the resolve threshold.
    Clear,
    /// The signal is missing this poll (denied, restarted, no `/proc`): keep the state
    /// and the streaks as they are.
    Unknown,
}

/// How many consecutive polls it takes to raise and to resolve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Consecutive firing polls before a raise (or an escalation).
    pub raise_polls: u32,
    /// Consecutive clear polls before a resolve.
    pub resolve_polls: u32,
}

/// The life of one alert: inactive, active at a severity; streak counters between.
#[derive(Debug, Clone)]
pub struct AlertMachine {
    id: AlertId,
    policy: Policy,
    active: Option<(Severity, Instant)>,
    /// Consecutive firing polls at any severity, and at critical: a severity is reached
    /// once its own streak is long enough.
    firing: u32,
    firing_critical: u32,
    clear: u32,
}

impl AlertMachine {
    /// An inactive alert.
    pub fn new(id: AlertId, policy: Policy) -> Self {
        Self {
            id,
            policy,
            active: None,
            firing: 0,
            firing_critical: 0,
            clear: 0,
        }
    }

    /// The alert's id.
    pub fn id(&self) -> AlertId {
        self.id
    }

    /// The active severity, if the alert is active.
    pub fn active(&self) -> Option<Severity> {
        self.active.map(|(s, _)| s)
    }

    /// Feeds one poll's verdict; returns the event it causes, if any.
    pub fn step(&mut self, now: Instant, condition: Condition) -> Option<Event> {
        match condition {
            Condition::Unknown => None,
            Condition::Holding => {
                self.firing = 0;
                self.firing_critical = 0;
                self.clear = 0;
                None
            }
            Condition::Clear => {
                self.firing = 0;
                self.firing_critical = 0;
                self.clear = self.clear.saturating_add(1);
                let (_, since) = self.active?;
                if self.clear < self.policy.resolve_polls.max(1) {
                    return None;
                }
                self.active = None;
                self.clear = 0;
                // Whole seconds: the alert's own resolution is a poll, and sinks print it.
                let after = now.saturating_duration_since(since);
                Some(Event::Resolved {
                    id: self.id,
                    after: Duration::from_secs(after.as_secs()),
                })
            }
            Condition::Firing {
                severity,
                value,
                threshold,
                summary,
            } => {
                self.clear = 0;
                self.firing = self.firing.saturating_add(1);
                self.firing_critical = match severity {
                    Severity::Critical => self.firing_critical.saturating_add(1),
                    Severity::Warning => 0,
                };
                let needed = self.policy.raise_polls.max(1);
                let severity = if self.firing_critical >= needed {
                    Severity::Critical
                } else if self.firing >= needed {
                    Severity::Warning
                } else {
                    return None;
                };
                let since = match self.active {
                    Some((current, _)) if current >= severity => return None,
                    Some((_, since)) => since,
                    None => now,
                };
                self.active = Some((severity, since));
                Some(Event::Raised {
                    id: self.id,
                    severity,
                    summary,
                    value,
                    threshold,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn firing(severity: Severity) -> Condition {
        Condition::Firing {
            severity,
            value: 1.0,
            threshold: 1.0,
            summary: String::new(),
        }
    }

    #[test]
    fn raises_after_min_polls_escalates_and_resolves_once() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut m = AlertMachine::new(
            AlertId::ClientsNearMax,
            Policy {
                raise_polls: 3,
                resolve_polls: 2,
            },
        );
        assert_eq!(m.step(at(0), firing(Severity::Warning)), None);
        assert_eq!(m.step(at(1), Condition::Unknown), None);
        assert_eq!(m.step(at(2), firing(Severity::Critical)), None);
        let e = m.step(at(3), firing(Severity::Critical));
        assert!(matches!(
            e,
            Some(Event::Raised {
                severity: Severity::Warning,
                ..
            })
        ));
        // Escalates once three consecutive polls are critical.
        assert!(matches!(
            m.step(at(4), firing(Severity::Critical)),
            Some(Event::Raised {
                severity: Severity::Critical,
                ..
            })
        ));
        for s in 5..8 {
            assert_eq!(m.step(at(s), firing(Severity::Warning)), None);
        }
        assert_eq!(m.active(), Some(Severity::Critical));
        assert_eq!(m.step(at(8), Condition::Holding), None);
        assert_eq!(m.step(at(9), Condition::Clear), None);
        assert_eq!(
            m.step(at(10), Condition::Clear),
            Some(Event::Resolved {
                id: AlertId::ClientsNearMax,
                after: Duration::from_secs(7)
            })
        );
        assert_eq!(m.step(at(11), Condition::Clear), None);
    }

    #[test]
    fn holding_breaks_a_streak() {
        let t0 = Instant::now();
        let mut m = AlertMachine::new(
            AlertId::ConnectionRateSpike,
            Policy {
                raise_polls: 2,
                resolve_polls: 1,
            },
        );
        assert_eq!(m.step(t0, firing(Severity::Warning)), None);
        assert_eq!(m.step(t0, Condition::Holding), None);
        assert_eq!(m.step(t0, firing(Severity::Warning)), None);
        assert!(m.step(t0, firing(Severity::Warning)).is_some());
    }
}
