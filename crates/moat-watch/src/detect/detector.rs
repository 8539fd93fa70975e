//! [`Detector`]: every rule over one series of [`Sample`]s, in order, producing
//! [`Event`]s.
//!
//! Each poll: counters become increases ([`Counter`]), the per-minute rules count them over
//! their window, the spike rule rates connections, each rule gives a [`Condition`], and each
//! alert's [`AlertMachine`] turns that into at most one event.

use std::time::Instant;

use super::alert::{AlertId, AlertMachine, Condition, Event, Policy, Severity};
use super::config::DetectConfig;
use super::rate::{Counter, WindowCount};
use super::rules::{self, RatioThresholds};
use super::spike::Spike;
use crate::Sample;

/// Entries a per-minute window keeps at most (one per poll with an increase).
const WINDOW_CAP: usize = 4096;

/// A counter rule's state: the counter and its sliding window.
#[derive(Debug, Clone)]
struct Counted {
    counter: Counter,
    window: WindowCount,
}

impl Counted {
    fn new(config: &DetectConfig) -> Self {
        Self {
            counter: Counter::default(),
            window: WindowCount::new(config.counter_window, WINDOW_CAP),
        }
    }

    /// Takes a reading; returns whether the counter was readable this poll.
    fn update(&mut self, at: Instant, value: Option<u64>) -> bool {
        let increase = self.counter.update(at, value).map_or(0, |d| d.increase);
        self.window.push(at, increase);
        value.is_some()
    }
}

/// All detectors over one watched Redis.
#[derive(Debug, Clone)]
pub struct Detector {
    config: DetectConfig,
    last_at: Option<Instant>,
    /// The last sampled `CLIENT LIST` summary (taken every few polls), to name who holds
    /// the connections on the polls between.
    last_clients: Option<crate::sample::ClientsSummary>,
    /// When that summary was taken.
    last_clients_at: Option<Instant>,
    /// Since when `clients_near_max` has been firing (not yet raised, or raised).
    clients_firing_since: Option<Instant>,
    connections: Counter,
    spike: Spike,
    rejected: Counted,
    overflows: Counted,
    syn_drops: Counted,
    moat_refused: Counted,
    alerts: Vec<AlertMachine>,
}

impl Detector {
    /// Detectors with the given thresholds and no history.
    pub fn new(config: DetectConfig) -> Self {
        let level = Policy {
            raise_polls: config.min_polls,
            resolve_polls: config.min_polls,
        };
        // The sliding window already is the counter rules' duration: raise on the first
        // poll that crosses it.
        let counted = Policy {
            raise_polls: 1,
            resolve_polls: config.min_polls,
        };
        let unreachable = Policy {
            raise_polls: config.unreachable_polls,
            resolve_polls: 1,
        };
        let alerts = vec![
            AlertMachine::new(AlertId::RedisUnreachable, unreachable),
            AlertMachine::new(AlertId::ClientsNearMax, level),
            AlertMachine::new(AlertId::RejectedConnections, counted),
            AlertMachine::new(AlertId::ListenOverflows, counted),
            AlertMachine::new(AlertId::SynQueueDrops, counted),
            AlertMachine::new(AlertId::FdsNearLimit, level),
            AlertMachine::new(AlertId::ConnectionRateSpike, level),
            AlertMachine::new(AlertId::SourceHoarding, level),
            AlertMachine::new(AlertId::MoatUnreachable, unreachable),
            AlertMachine::new(AlertId::MoatRefusing, counted),
            AlertMachine::new(AlertId::MoatClientsNearMax, level),
        ];
        Self {
            connections: Counter::default(),
            spike: Spike::new(config.spike.clone()),
            rejected: Counted::new(&config),
            overflows: Counted::new(&config),
            syn_drops: Counted::new(&config),
            moat_refused: Counted::new(&config),
            alerts,
            last_at: None,
            last_clients: None,
            last_clients_at: None,
            clients_firing_since: None,
            config,
        }
    }

    /// The thresholds in force.
    pub fn config(&self) -> &DetectConfig {
        &self.config
    }

    /// The spike rule's state (its thresholds and short rate, for dashboards).
    pub fn spike(&self) -> &Spike {
        &self.spike
    }

    /// Alerts active now, with their severity.
    pub fn active(&self) -> Vec<(AlertId, Severity)> {
        self.alerts
            .iter()
            .filter_map(|m| m.active().map(|s| (m.id(), s)))
            .collect()
    }

    /// Whether a `CLIENT LIST` taken now would name who fills Redis before
    /// `clients_near_max` is raised: the rule is firing and the last summary is older than
    /// that. The watch then takes one at its next poll instead of waiting for its schedule
    /// (one extra walk over the clients per episode).
    pub fn wants_clients(&self) -> bool {
        self.clients_firing_since
            .is_some_and(|since| self.last_clients_at.is_none_or(|at| at < since))
    }

    /// Readings held across every window and baseline: bounded by the configuration,
    /// whatever the number of samples (checked by the tests).
    pub fn held(&self) -> usize {
        let (buckets, short) = self.spike.held();
        buckets
            + short
            + self.rejected.window.len()
            + self.overflows.window.len()
            + self.syn_drops.window.len()
            + self.moat_refused.window.len()
    }

    /// Feeds the next sample; returns the alerts it raises and resolves. A sample not
    /// later than the previous one is ignored (the detectors need time to move forward).
    pub fn observe(&mut self, sample: &Sample) -> Vec<Event> {
        let at = sample.at;
        if self.last_at.is_some_and(|last| at <= last) {
            return Vec::new();
        }
        self.last_at = Some(at);
        let c = &self.config;
        let r = &sample.redis;
        let h = &sample.host;

        let rejected_present = self.rejected.update(at, r.rejected_connections);
        let overflows_present = self.overflows.update(at, h.listen_overflows);
        let syn_present = self.syn_drops.update(at, h.reqq_full_drop);
        let resets = self.connections.resets();
        let delta = self.connections.update(at, r.total_connections_received);
        if self.connections.resets() != resets {
            self.spike.restarted(at);
        }
        let spike_active = self
            .alerts
            .iter()
            .any(|m| m.id() == AlertId::ConnectionRateSpike && m.active().is_some());

        let conditions = [
            rules::reachable(sample.redis_reachable),
            rules::ratio(
                r.connected_clients,
                r.maxclients,
                RatioThresholds {
                    warning: c.clients_warning,
                    critical: c.clients_critical,
                    resolve: c.clients_resolve,
                },
                "connected_clients of maxclients",
            ),
            rules::per_minute(
                &self.rejected.window,
                rejected_present,
                0.0,
                0.0,
                "rejected connections (maxclients reached)",
            ),
            rules::per_minute(
                &self.overflows.window,
                overflows_present,
                c.drops_warning_per_min,
                c.drops_critical_per_min,
                "listen queue overflows",
            ),
            rules::per_minute(
                &self.syn_drops.window,
                syn_present,
                c.drops_warning_per_min,
                c.drops_critical_per_min,
                "SYN queue drops",
            ),
            rules::ratio(
                h.fds.map(|(used, _)| used),
                h.fds.map(|(_, limit)| limit),
                RatioThresholds {
                    warning: c.fds_warning,
                    critical: c.fds_critical,
                    resolve: c.fds_resolve,
                },
                "Redis open fds of their limit",
            ),
            self.spike.observe(at, delta, spike_active),
            Condition::Unknown,
        ];
        // Name who holds the connections, when a CLIENT LIST was sampled.
        let mut conditions = conditions;
        if let Some(clients) = &sample.clients {
            self.last_clients = Some(clients.clone());
            self.last_clients_at = Some(at);
        }
        match &conditions[1] {
            Condition::Firing { .. } => {
                self.clients_firing_since.get_or_insert(at);
            }
            Condition::Clear => self.clients_firing_since = None,
            Condition::Holding | Condition::Unknown => {}
        }
        let top = self.last_clients.as_ref().and_then(|c| c.top.first());
        // Judged on the last sampled CLIENT LIST (it is taken every few polls).
        conditions[7] = rules::ratio(
            top.map(|(_, n)| *n),
            r.maxclients,
            RatioThresholds {
                warning: c.source_warning,
                critical: c.source_critical,
                resolve: c.source_resolve,
            },
            "connections held by one source, of maxclients",
        );
        if let (Some((source, _)), Condition::Firing { summary, .. }) = (top, &mut conditions[7]) {
            summary.push_str(&format!(" (source {source})"));
        }
        if let (Some(top), Condition::Firing { summary, .. }) = (
            self.last_clients.as_ref().and_then(|c| c.top.first()),
            &mut conditions[1],
        ) {
            summary.push_str(&format!("; top source {} holds {}", top.0, top.1));
        }
        let mut conditions = conditions.to_vec();
        conditions.extend(self.moat_conditions(sample));
        // A failed poll leaves Redis's signals empty, so its rules say `Unknown` and keep
        // their state rather than resolving.
        let mut events = Vec::new();
        for (machine, condition) in self.alerts.iter_mut().zip(conditions) {
            events.extend(machine.step(at, condition));
        }
        events
    }

    /// The moat alerts' verdicts: all `Unknown` without `--moat`, so they never fire.
    fn moat_conditions(&mut self, sample: &Sample) -> [Condition; 3] {
        let Some(m) = &sample.moat else {
            return [Condition::Unknown, Condition::Unknown, Condition::Unknown];
        };
        let c = &self.config;
        let unreachable = if m.reachable {
            Condition::Clear
        } else {
            Condition::Firing {
                severity: Severity::Warning,
                value: 1.0,
                threshold: 1.0,
                summary: "moat's admin API does not answer".to_owned(),
            }
        };
        let present = self
            .moat_refused
            .update(sample.at, m.reachable.then_some(m.refused_total).flatten());
        let mut refusing = rules::per_minute(
            &self.moat_refused.window,
            present,
            c.moat_refused_warning_per_min,
            c.moat_refused_critical_per_min,
            "connections refused by moat",
        );
        if let Condition::Firing { summary, .. } = &mut refusing {
            if let Some((reason, _)) = m.refused_by_reason.first() {
                summary.push_str(&format!("; top reason {reason}"));
            }
            if let Some(bans) = m.bans_active.filter(|n| *n > 0) {
                summary.push_str(&format!("; {bans} bans in force"));
            }
            if let Some((source, n)) = m.top_refused.first() {
                summary.push_str(&format!("; most refused source {source} ({n})"));
            }
        }
        let mut near_max = rules::ratio(
            m.clients,
            m.clients_max,
            RatioThresholds {
                warning: c.clients_warning,
                critical: c.clients_critical,
                resolve: c.clients_resolve,
            },
            "clients held by moat of its cap",
        );
        if let (Condition::Firing { summary, .. }, Some((source, n))) =
            (&mut near_max, m.top_sources.first())
        {
            summary.push_str(&format!("; top source {source} holds {n}"));
        }
        [unreachable, refusing, near_max]
    }
}
