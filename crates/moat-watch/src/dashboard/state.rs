//! The dashboard's model: what the screen shows, fed one [`Sample`] and the detectors'
//! [`Event`]s per poll. Pure: time comes from the sample, so tests drive a fake clock.
//!
//! Counters become per-second rates between polls (a counter that went down, Redis
//! restarted, gives no point rather than an absurd one); every series is a bounded ring of
//! the last polls; a missing signal is a missing point (`n/a` on screen), never a zero.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::collect::poller::redact;
use crate::detect::rate::Counter;
use crate::detect::{AlertId, Event, Severity};
use crate::sample::{ClientsSummary, MoatSignals, Sample};

/// Polls of history the dashboard keeps by default (five minutes at one poll a second).
pub const DEFAULT_HISTORY: usize = 300;
/// Resolved alerts remembered, newest first.
const RESOLVED_KEPT: usize = 8;
/// Refusal reasons tracked at most (moat has a handful; a bound all the same).
const REASONS_KEPT: usize = 16;
/// Sources listed at most.
const SOURCES_KEPT: usize = 8;

/// A bounded history of one signal, one point per poll; `None` where the signal was missing.
#[derive(Debug, Clone)]
pub struct Series {
    points: VecDeque<Option<f64>>,
    capacity: usize,
}

impl Series {
    /// An empty series keeping at most `capacity` (at least 1) points.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            points: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    /// Appends one poll's point, dropping the oldest beyond the capacity.
    pub fn push(&mut self, point: Option<f64>) {
        if self.points.len() >= self.capacity {
            self.points.pop_front();
        }
        self.points.push_back(point.filter(|v| v.is_finite()));
    }

    /// The last poll's value: `None` when it was missing (or before any poll).
    pub fn latest(&self) -> Option<f64> {
        self.points.back().copied().flatten()
    }

    /// Points held (at most the capacity).
    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// Whether no poll has been recorded.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// The last `n` points, oldest first.
    pub fn tail(&self, n: usize) -> impl Iterator<Item = Option<f64>> + '_ {
        self.points
            .iter()
            .skip(self.points.len().saturating_sub(n))
            .copied()
    }

    /// The largest of the last `n` points, if any is present.
    pub fn max_of_tail(&self, n: usize) -> Option<f64> {
        self.tail(n).flatten().reduce(f64::max)
    }
}

/// A counter read each poll, turned into a per-second rate.
#[derive(Debug, Clone, Default)]
struct Rate {
    counter: Counter,
}

impl Rate {
    /// The rate since the previous reading; `None` on the first, a missing one or a reset.
    fn update(&mut self, at: Instant, value: Option<u64>) -> Option<f64> {
        self.counter.update(at, value).map(|d| d.per_sec())
    }
}

/// How a clients/maxclients ratio stands against the `clients_near_max` thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Below the warning threshold.
    Ok,
    /// At or above the warning threshold.
    Warning,
    /// At or above the critical threshold.
    Critical,
}

/// An alert raised and not yet resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveAlert {
    /// Which alert.
    pub id: AlertId,
    /// Its current severity (after any escalation).
    pub severity: Severity,
    /// When it was first raised (the sample's time).
    pub raised_at: Instant,
    /// The detector's latest line about it.
    pub summary: String,
    /// The value that crossed the threshold.
    pub value: f64,
    /// The threshold.
    pub threshold: f64,
}

/// An alert that ended.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedAlert {
    /// Which alert.
    pub id: AlertId,
    /// Its last severity, when the dashboard saw it raised.
    pub severity: Option<Severity>,
    /// When it was resolved (the sample's time).
    pub resolved_at: Instant,
    /// How long it was active.
    pub lasted: Duration,
}

/// What the host view covers, judged on the last sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostView {
    /// The kernel's queues and the Redis process (fds, CPU, RSS).
    Full,
    /// The kernel's counters only: the Redis process is not visible here.
    KernelOnly,
    /// None: Redis on another host, or `/proc` unreadable.
    None,
}

/// What is and is not watched, for the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coverage {
    /// INFO answered on the last poll.
    pub info: bool,
    /// `maxclients` is known (INFO or CONFIG).
    pub maxclients: bool,
    /// The host's view.
    pub host: HostView,
    /// A `CLIENT LIST` has been sampled (`--clients`).
    pub client_list: bool,
    /// Moat's admin API: `None` when not in use, else whether it answered last poll.
    pub moat: Option<bool>,
}

/// Where a top source was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceOrigin {
    /// Redis's `CLIENT LIST`.
    Redis,
    /// Moat's admin API.
    Moat,
}

/// One row of the top-sources table.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceRow {
    /// Address (or subnet, from moat).
    pub source: String,
    /// Connections it holds.
    pub connections: u64,
    /// Its share of `maxclients`, when that is known.
    pub share: Option<f64>,
    /// Who reported it.
    pub origin: SourceOrigin,
}

/// Moat's view, kept once a sample carried one.
#[derive(Debug, Clone)]
pub struct MoatView {
    /// Whether the admin API answered on the last poll.
    pub reachable: bool,
    /// Client connections moat holds.
    pub clients: Option<u64>,
    /// Bans in force.
    pub bans_active: Option<u64>,
    /// Connections refused per second, all reasons.
    pub refused_rate: Series,
    /// Connections admitted per second, on the last poll.
    pub admitted_rate: Option<f64>,
    /// Refusals per second on the last poll, by reason (`None`: no rate yet).
    pub refused_by_reason: Vec<(String, Option<f64>)>,
    /// The sources moat sees most of, most first.
    pub top_sources: Vec<(String, u64)>,
    /// The sources moat refused most, most first (refusals counted by its guard).
    pub top_refused: Vec<(String, u64)>,
    refused: Rate,
    admitted: Rate,
    reasons: Vec<(String, Rate)>,
}

impl MoatView {
    fn new(history: usize) -> Self {
        Self {
            reachable: false,
            clients: None,
            bans_active: None,
            refused_rate: Series::new(history),
            admitted_rate: None,
            refused_by_reason: Vec::new(),
            top_sources: Vec::new(),
            top_refused: Vec::new(),
            refused: Rate::default(),
            admitted: Rate::default(),
            reasons: Vec::new(),
        }
    }

    fn observe(&mut self, at: Instant, m: Option<&MoatSignals>) {
        let empty = MoatSignals::default();
        let m = m.unwrap_or(&empty);
        self.reachable = m.reachable;
        self.clients = m.clients;
        self.bans_active = m.bans_active;
        self.refused_rate
            .push(self.refused.update(at, m.refused_total));
        self.admitted_rate = self.admitted.update(at, m.admitted_total);
        self.refused_by_reason.clear();
        for (reason, total) in &m.refused_by_reason {
            let idx = match self.reasons.iter().position(|(r, _)| r == reason) {
                Some(idx) => idx,
                None if self.reasons.len() < REASONS_KEPT => {
                    self.reasons.push((reason.clone(), Rate::default()));
                    self.reasons.len() - 1
                }
                None => continue,
            };
            let rate = self.reasons[idx].1.update(at, Some(*total));
            self.refused_by_reason.push((reason.clone(), rate));
        }
        self.top_sources = m.top_sources.iter().take(SOURCES_KEPT).cloned().collect();
        self.top_refused = m.top_refused.iter().take(SOURCES_KEPT).cloned().collect();
    }
}

/// The dashboard's model of one watched Redis.
#[derive(Debug, Clone)]
pub struct Dashboard {
    target: String,
    history: usize,
    clients_warning: f64,
    clients_critical: f64,
    polls: u64,
    first_at: Option<Instant>,
    last_at: Option<Instant>,
    reachable: Option<bool>,
    unreachable_since: Option<Instant>,
    refused: Option<String>,
    connections: Rate,
    rejected: Rate,
    overflows: Rate,
    syn_drops: Rate,
    connection_rate: Series,
    clients: Series,
    rejected_rate: Series,
    used_memory: Series,
    client_memory: Series,
    drops_rate: Series,
    maxclients: Option<u64>,
    fds: Option<(u64, u64)>,
    accept_queue: Option<(u64, u64)>,
    coverage: Coverage,
    client_list: Option<(Instant, ClientsSummary)>,
    active: Vec<ActiveAlert>,
    resolved: VecDeque<ResolvedAlert>,
    moat: Option<MoatView>,
}

impl Dashboard {
    /// A dashboard for the Redis at `url` (credentials are redacted here, so they never
    /// reach the screen or a snapshot), keeping [`DEFAULT_HISTORY`] polls, with the
    /// default 80%/90% clients thresholds.
    pub fn new(url: &str) -> Self {
        Self::with_history(url, DEFAULT_HISTORY)
    }

    /// [`Dashboard::new`] keeping `history` (at least 1) polls per series.
    pub fn with_history(url: &str, history: usize) -> Self {
        let history = history.max(1);
        Self {
            target: redact(url),
            history,
            clients_warning: 0.80,
            clients_critical: 0.90,
            polls: 0,
            first_at: None,
            last_at: None,
            reachable: None,
            unreachable_since: None,
            refused: None,
            connections: Rate::default(),
            rejected: Rate::default(),
            overflows: Rate::default(),
            syn_drops: Rate::default(),
            connection_rate: Series::new(history),
            clients: Series::new(history),
            rejected_rate: Series::new(history),
            used_memory: Series::new(history),
            client_memory: Series::new(history),
            drops_rate: Series::new(history),
            maxclients: None,
            fds: None,
            accept_queue: None,
            coverage: Coverage {
                info: false,
                maxclients: false,
                host: HostView::None,
                client_list: false,
                moat: None,
            },
            client_list: None,
            active: Vec::new(),
            resolved: VecDeque::new(),
            moat: None,
        }
    }

    /// Colours the clients gauge with these fractions of maxclients (the detectors'
    /// `clients_warning` and `clients_critical`, so screen and alerts agree).
    pub fn clients_thresholds(mut self, warning: f64, critical: f64) -> Self {
        self.clients_warning = warning;
        self.clients_critical = critical;
        self
    }

    /// Takes one poll's sample and the events the detectors made of it. A sample not later
    /// than the previous one adds no points (its events are still applied).
    pub fn observe(&mut self, sample: &Sample, events: &[Event]) {
        let at = sample.at;
        if self.last_at.is_none_or(|last| at > last) {
            self.record(sample);
        }
        let now = self.last_at.unwrap_or(at);
        for event in events {
            self.apply(now, event);
        }
    }

    fn record(&mut self, sample: &Sample) {
        let at = sample.at;
        self.last_at = Some(at);
        self.first_at.get_or_insert(at);
        self.polls += 1;
        self.reachable = Some(sample.redis_reachable);
        self.refused.clone_from(&sample.redis_refused);
        if sample.redis_reachable {
            self.unreachable_since = None;
        } else {
            self.unreachable_since.get_or_insert(at);
        }
        let r = &sample.redis;
        let h = &sample.host;
        self.connection_rate
            .push(self.connections.update(at, r.total_connections_received));
        self.rejected_rate
            .push(self.rejected.update(at, r.rejected_connections));
        self.clients.push(r.connected_clients.map(|n| n as f64));
        self.used_memory.push(r.used_memory.map(|n| n as f64));
        self.client_memory
            .push(r.mem_clients_normal.map(|n| n as f64));
        let overflows = self.overflows.update(at, h.listen_overflows);
        let syn = self.syn_drops.update(at, h.reqq_full_drop);
        self.drops_rate.push(match (overflows, syn) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0.0) + b.unwrap_or(0.0)),
        });
        // maxclients rarely changes; a poll that could not read it keeps the last one.
        if r.maxclients.is_some() {
            self.maxclients = r.maxclients;
        }
        self.fds = h.fds;
        self.accept_queue = h.accept_queue;
        if let Some(summary) = &sample.clients {
            let mut summary = summary.clone();
            summary.top.truncate(SOURCES_KEPT);
            self.client_list = Some((at, summary));
        }
        if sample.moat.is_some() || self.moat.is_some() {
            let history = self.history;
            self.moat
                .get_or_insert_with(|| MoatView::new(history))
                .observe(at, sample.moat.as_ref());
        }
        self.coverage = Coverage {
            info: sample.redis_reachable && r.connected_clients.is_some(),
            maxclients: self.maxclients.is_some(),
            host: if h.fds.is_some() {
                HostView::Full
            } else if h.passive_opens.is_some() || h.listen_overflows.is_some() {
                HostView::KernelOnly
            } else {
                HostView::None
            },
            client_list: self.client_list.is_some(),
            moat: self.moat.as_ref().map(|m| m.reachable),
        };
    }

    fn apply(&mut self, now: Instant, event: &Event) {
        match event {
            Event::Raised {
                id,
                severity,
                summary,
                value,
                threshold,
            } => {
                if let Some(a) = self.active.iter_mut().find(|a| a.id == *id) {
                    a.severity = *severity;
                    a.summary.clone_from(summary);
                    a.value = *value;
                    a.threshold = *threshold;
                } else {
                    self.active.push(ActiveAlert {
                        id: *id,
                        severity: *severity,
                        raised_at: now,
                        summary: summary.clone(),
                        value: *value,
                        threshold: *threshold,
                    });
                }
            }
            Event::Resolved { id, after } => {
                let severity = self
                    .active
                    .iter()
                    .position(|a| a.id == *id)
                    .map(|i| self.active.remove(i).severity);
                if self.resolved.len() >= RESOLVED_KEPT {
                    self.resolved.pop_back();
                }
                self.resolved.push_front(ResolvedAlert {
                    id: *id,
                    severity,
                    resolved_at: now,
                    lasted: *after,
                });
            }
        }
    }

    /// The watched Redis, credentials redacted.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Polls seen.
    pub fn polls(&self) -> u64 {
        self.polls
    }

    /// The series' capacity in polls.
    pub fn history(&self) -> usize {
        self.history
    }

    /// The last sample's time: the dashboard's "now".
    pub fn now(&self) -> Option<Instant> {
        self.last_at
    }

    /// How long the dashboard has been watching.
    pub fn watched_for(&self) -> Duration {
        match (self.first_at, self.last_at) {
            (Some(first), Some(last)) => last.saturating_duration_since(first),
            _ => Duration::ZERO,
        }
    }

    /// Whether Redis answered the last poll (`None` before the first).
    pub fn reachable(&self) -> Option<bool> {
        self.reachable
    }

    /// Why Redis refuses the watch (login or INFO), as of the last poll.
    pub fn refused(&self) -> Option<&str> {
        self.refused.as_deref()
    }

    /// How long Redis has not been answering, when it is not.
    pub fn unreachable_for(&self) -> Option<Duration> {
        let since = self.unreachable_since?;
        Some(self.last_at?.saturating_duration_since(since))
    }

    /// What is and is not watched.
    pub fn coverage(&self) -> Coverage {
        self.coverage
    }

    /// New connections per second (`total_connections_received`).
    pub fn connection_rate(&self) -> &Series {
        &self.connection_rate
    }

    /// Connected clients.
    pub fn clients(&self) -> &Series {
        &self.clients
    }

    /// `maxclients`, the last known.
    pub fn maxclients(&self) -> Option<u64> {
        self.maxclients
    }

    /// Connected clients as a fraction of maxclients, on the last poll.
    pub fn clients_ratio(&self) -> Option<f64> {
        let clients = self.clients.latest()?;
        let max = self.maxclients.filter(|&m| m > 0)? as f64;
        Some(clients / max)
    }

    /// Where the clients ratio stands against the thresholds.
    pub fn clients_level(&self) -> Option<Level> {
        let ratio = self.clients_ratio()?;
        Some(if ratio >= self.clients_critical {
            Level::Critical
        } else if ratio >= self.clients_warning {
            Level::Warning
        } else {
            Level::Ok
        })
    }

    /// Connections Redis refused per second (`rejected_connections`).
    pub fn rejected_rate(&self) -> &Series {
        &self.rejected_rate
    }

    /// `used_memory`, bytes.
    pub fn used_memory(&self) -> &Series {
        &self.used_memory
    }

    /// `mem_clients_normal`, bytes.
    pub fn client_memory(&self) -> &Series {
        &self.client_memory
    }

    /// Listen-queue overflows plus SYN-queue drops per second (host view only).
    pub fn drops_rate(&self) -> &Series {
        &self.drops_rate
    }

    /// The Redis process's open fds and limit, on the last poll.
    pub fn fds(&self) -> Option<(u64, u64)> {
        self.fds
    }

    /// The listener's accept queue (waiting, size), on the last poll.
    pub fn accept_queue(&self) -> Option<(u64, u64)> {
        self.accept_queue
    }

    /// The last sampled `CLIENT LIST` summary and when it was taken.
    pub fn client_list(&self) -> Option<(Instant, &ClientsSummary)> {
        self.client_list.as_ref().map(|(at, s)| (*at, s))
    }

    /// The top sources from Redis's `CLIENT LIST` and moat, most connections first.
    pub fn sources(&self) -> Vec<SourceRow> {
        let share = |n: u64| {
            self.maxclients
                .filter(|&m| m > 0)
                .map(|m| n as f64 / m as f64)
        };
        let redis = self
            .client_list
            .iter()
            .flat_map(|(_, s)| s.top.iter())
            .map(|(source, n)| (source, *n, SourceOrigin::Redis));
        let moat = self
            .moat
            .iter()
            .flat_map(|m| m.top_sources.iter())
            .map(|(source, n)| (source, *n, SourceOrigin::Moat));
        let mut rows: Vec<SourceRow> = redis
            .chain(moat)
            .map(|(source, connections, origin)| SourceRow {
                source: source.clone(),
                connections,
                share: share(connections),
                origin,
            })
            .collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.connections));
        rows.truncate(SOURCES_KEPT);
        rows
    }

    /// Active alerts, critical first, then the oldest first.
    pub fn alerts(&self) -> Vec<&ActiveAlert> {
        let mut alerts: Vec<&ActiveAlert> = self.active.iter().collect();
        alerts.sort_by(|a, b| {
            b.severity
                .cmp(&a.severity)
                .then(a.raised_at.cmp(&b.raised_at))
        });
        alerts
    }

    /// Recently resolved alerts, newest first.
    pub fn resolved(&self) -> impl Iterator<Item = &ResolvedAlert> {
        self.resolved.iter()
    }

    /// Moat's view, once a sample carried one.
    pub fn moat(&self) -> Option<&MoatView> {
        self.moat.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::{HostSignals, RedisSignals};

    fn sample(at: Instant, f: impl FnOnce(&mut Sample)) -> Sample {
        let mut s = Sample {
            at,
            redis_reachable: true,
            redis_refused: None,
            redis: RedisSignals::default(),
            host: HostSignals::default(),
            clients: None,
            moat: None,
        };
        f(&mut s);
        s
    }

    fn conns(at: Instant, total: u64) -> Sample {
        sample(at, |s| s.redis.total_connections_received = Some(total))
    }

    #[test]
    fn counters_become_rates_over_the_sample_times() {
        let t0 = Instant::now();
        let mut d = Dashboard::new("redis://127.0.0.1:6379");
        d.observe(&conns(t0, 1000), &[]);
        assert_eq!(
            d.connection_rate().latest(),
            None,
            "no rate from one reading"
        );
        d.observe(&conns(t0 + Duration::from_secs(2), 1100), &[]);
        assert_eq!(d.connection_rate().latest(), Some(50.0));
        d.observe(&conns(t0 + Duration::from_millis(2500), 1150), &[]);
        assert_eq!(d.connection_rate().latest(), Some(100.0));
    }

    #[test]
    fn a_restart_gives_no_point_never_an_absurd_rate() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let mut d = Dashboard::new("redis://h:1");
        d.observe(&conns(s(0), 5_000_000), &[]);
        d.observe(&conns(s(1), 5_000_010), &[]);
        // Redis restarted: the counter starts over from a few.
        d.observe(&conns(s(2), 3), &[]);
        assert_eq!(d.connection_rate().latest(), None);
        d.observe(&conns(s(3), 8), &[]);
        assert_eq!(d.connection_rate().latest(), Some(5.0));
        let points: Vec<_> = d.connection_rate().tail(10).collect();
        assert_eq!(points, vec![None, Some(10.0), None, Some(5.0)]);
    }

    #[test]
    fn missing_signals_are_missing_points_not_zero() {
        let t0 = Instant::now();
        let mut d = Dashboard::new("redis://h:1");
        d.observe(&sample(t0, |_| {}), &[]);
        d.observe(&sample(t0 + Duration::from_secs(1), |_| {}), &[]);
        assert_eq!(d.drops_rate().latest(), None);
        assert_eq!(d.clients().latest(), None);
        assert_eq!(d.clients_ratio(), None);
        assert_eq!(d.coverage().host, HostView::None);
        // Only one of the two kernel counters is readable: the rate is that one's.
        let mut d = Dashboard::new("redis://h:1");
        for (i, n) in [(0, 10), (1, 13)] {
            d.observe(
                &sample(t0 + Duration::from_secs(i), |s| {
                    s.host.listen_overflows = Some(n);
                    s.host.passive_opens = Some(1);
                }),
                &[],
            );
        }
        assert_eq!(d.drops_rate().latest(), Some(3.0));
        assert_eq!(d.coverage().host, HostView::KernelOnly);
    }

    #[test]
    fn series_are_bounded_rings() {
        let t0 = Instant::now();
        let mut d = Dashboard::with_history("redis://h:1", 5);
        for i in 0..1000u64 {
            d.observe(
                &sample(t0 + Duration::from_secs(i), |s| {
                    s.redis.connected_clients = Some(i);
                }),
                &[],
            );
        }
        assert_eq!(d.clients().len(), 5);
        let kept: Vec<_> = d.clients().tail(100).flatten().collect();
        assert_eq!(kept, vec![995.0, 996.0, 997.0, 998.0, 999.0]);
        assert_eq!(d.clients().max_of_tail(2), Some(999.0));
        assert_eq!(d.polls(), 1000);
        // A sample from the past adds nothing.
        d.observe(&sample(t0, |s| s.redis.connected_clients = Some(1)), &[]);
        assert_eq!(d.clients().latest(), Some(999.0));
    }

    fn raised(id: AlertId, severity: Severity) -> Event {
        Event::Raised {
            id,
            severity,
            summary: format!("{id} seen"),
            value: 1.0,
            threshold: 0.0,
        }
    }

    #[test]
    fn alerts_are_raised_escalated_resolved_and_remembered() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let mut d = Dashboard::new("redis://h:1");
        d.observe(
            &sample(s(0), |_| {}),
            &[raised(AlertId::ConnectionRateSpike, Severity::Warning)],
        );
        d.observe(
            &sample(s(5), |_| {}),
            &[raised(AlertId::ClientsNearMax, Severity::Warning)],
        );
        d.observe(
            &sample(s(6), |_| {}),
            &[raised(AlertId::ClientsNearMax, Severity::Critical)],
        );
        let alerts = d.alerts();
        assert_eq!(alerts.len(), 2);
        assert_eq!(alerts[0].id, AlertId::ClientsNearMax, "critical first");
        assert_eq!(
            alerts[0].raised_at,
            s(5),
            "an escalation keeps the raise time"
        );
        assert_eq!(alerts[1].raised_at, s(0));
        d.observe(
            &sample(s(20), |_| {}),
            &[Event::Resolved {
                id: AlertId::ClientsNearMax,
                after: Duration::from_secs(15),
            }],
        );
        assert_eq!(d.alerts().len(), 1);
        let resolved: Vec<_> = d.resolved().collect();
        assert_eq!(
            resolved,
            vec![&ResolvedAlert {
                id: AlertId::ClientsNearMax,
                severity: Some(Severity::Critical),
                resolved_at: s(20),
                lasted: Duration::from_secs(15),
            }]
        );
        // The resolved list is bounded.
        for i in 0..100 {
            d.observe(
                &sample(s(30 + i), |_| {}),
                &[Event::Resolved {
                    id: AlertId::RedisUnreachable,
                    after: Duration::from_secs(1),
                }],
            );
        }
        assert_eq!(d.resolved().count(), RESOLVED_KEPT);
    }

    #[test]
    fn unreachable_is_timed_from_its_first_poll() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let mut d = Dashboard::new("redis://user:secret@h:1");
        assert!(!d.target().contains("secret"));
        assert_eq!(d.reachable(), None);
        for n in 0..4 {
            d.observe(&sample(s(n), |x| x.redis_reachable = false), &[]);
        }
        assert_eq!(d.reachable(), Some(false));
        assert_eq!(d.unreachable_for(), Some(Duration::from_secs(3)));
        d.observe(&sample(s(4), |_| {}), &[]);
        assert_eq!(d.unreachable_for(), None);
    }

    #[test]
    fn sources_merge_client_list_and_moat_with_shares() {
        let t0 = Instant::now();
        let mut d = Dashboard::new("redis://h:1");
        d.observe(
            &sample(t0, |s| {
                s.redis.maxclients = Some(1000);
                s.clients = Some(ClientsSummary {
                    total: 300,
                    top: vec![("10.0.0.7".into(), 250), ("10.0.0.8".into(), 50)],
                    never_ran: 250,
                    idle_over_minute: 0,
                });
                s.moat = Some(MoatSignals {
                    reachable: true,
                    top_sources: vec![("192.0.2.0/24".into(), 400)],
                    ..MoatSignals::default()
                });
            }),
            &[],
        );
        let rows = d.sources();
        assert_eq!(rows[0].source, "192.0.2.0/24");
        assert_eq!(rows[0].origin, SourceOrigin::Moat);
        assert_eq!(rows[1].share, Some(0.25));
        // The summary is kept between CLIENT LIST samples; a moat that stops answering
        // takes its sources with it.
        d.observe(&sample(t0 + Duration::from_secs(1), |_| {}), &[]);
        assert_eq!(d.sources().len(), 2);
        assert!(d.coverage().client_list);
        assert_eq!(d.coverage().moat, Some(false));
    }

    #[test]
    fn moat_refusals_become_rates_by_reason() {
        let t0 = Instant::now();
        let mut d = Dashboard::new("redis://h:1");
        assert!(d.moat().is_none());
        for (i, (banned, rate)) in [(100u64, 10u64), (160, 12)].into_iter().enumerate() {
            d.observe(
                &sample(t0 + Duration::from_secs(2 * i as u64), |s| {
                    s.moat = Some(MoatSignals {
                        reachable: true,
                        clients: Some(42),
                        refused_total: Some(banned + rate),
                        refused_by_reason: vec![("banned".into(), banned), ("rate".into(), rate)],
                        bans_active: Some(3),
                        ..MoatSignals::default()
                    });
                }),
                &[],
            );
        }
        let m = d.moat().expect("moat view");
        assert_eq!(m.refused_rate.latest(), Some(31.0));
        assert_eq!(
            m.refused_by_reason,
            vec![("banned".into(), Some(30.0)), ("rate".into(), Some(1.0))]
        );
        assert_eq!((m.clients, m.bans_active), (Some(42), Some(3)));
    }

    #[test]
    fn clients_level_follows_the_thresholds() {
        let t0 = Instant::now();
        let mut d = Dashboard::new("redis://h:1");
        let mut level = |n: u64, i: u64| {
            d.observe(
                &sample(t0 + Duration::from_secs(i), |s| {
                    s.redis.connected_clients = Some(n);
                    s.redis.maxclients = Some(100);
                }),
                &[],
            );
            d.clients_level()
        };
        assert_eq!(level(79, 0), Some(Level::Ok));
        assert_eq!(level(80, 1), Some(Level::Warning));
        assert_eq!(level(95, 2), Some(Level::Critical));
    }
}
