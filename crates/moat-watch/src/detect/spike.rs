//! The adaptive `connection_rate_spike` rule: the connection rate over a short window
//! against the long-window baseline.
//!
//! The raise threshold is the largest of: median + `mad_factor` robust deviations, `ratio`
//! times the median (the short- vs long-window ratio), and `min_rate` (the floor, so a
//! quiet Redis does not alert on a handful of connections). It resolves below
//! `resolve_fraction` of that threshold. While the alert is active or firing, the baseline
//! is frozen so the attack does not become the new normal; after a whole `long_window` of
//! freeze it learns again, so a lasting change of workload ends the alert eventually.

use std::collections::VecDeque;
use std::time::Instant;

use super::alert::{Condition, Severity};
use super::baseline::{Baseline, Stats};
use super::config::SpikeConfig;
use super::rate::Delta;

/// Upper bound on readings kept for the short window.
const SHORT_CAP: usize = 1024;

/// The spike detector's state.
#[derive(Debug, Clone)]
pub struct Spike {
    config: SpikeConfig,
    baseline: Baseline,
    short: VecDeque<(Instant, Delta)>,
    frozen_since: Option<Instant>,
    grace_until: Option<Instant>,
}

/// Thresholds in force at one poll (for sinks and tests).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpikeThresholds {
    /// The baseline they derive from.
    pub stats: Stats,
    /// Raise above this rate (per second).
    pub raise: f64,
    /// Resolve below this rate.
    pub resolve: f64,
}

impl Spike {
    /// A detector with no history.
    pub fn new(config: SpikeConfig) -> Self {
        Self {
            baseline: Baseline::new(config.long_window, config.bucket),
            config,
            short: VecDeque::new(),
            frozen_since: None,
            grace_until: None,
        }
    }

    /// The counter went down at `at` (Redis restarted): forget the short window and stay
    /// silent for `restart_grace`, learning nothing from the reconnect storm.
    pub fn restarted(&mut self, at: Instant) {
        self.short.clear();
        self.grace_until = at.checked_add(self.config.restart_grace);
    }

    /// The thresholds the current baseline gives, once warmed up.
    pub fn thresholds(&self) -> Option<SpikeThresholds> {
        let stats = self.baseline.stats(self.config.warmup_buckets)?;
        let c = &self.config;
        let raise = (stats.median + c.mad_factor * stats.sigma())
            .max(c.ratio * stats.median)
            .max(c.min_rate);
        Some(SpikeThresholds {
            stats,
            raise,
            resolve: raise * c.resolve_fraction,
        })
    }

    /// The mean rate over the short window (per second).
    pub fn short_rate(&self) -> Option<f64> {
        let (inc, secs) = self.short.iter().fold((0u64, 0.0f64), |(i, s), (_, d)| {
            (i.saturating_add(d.increase), s + d.elapsed.as_secs_f64())
        });
        (secs > 0.0).then(|| inc as f64 / secs)
    }

    /// Feeds one poll's increase of `total_connections_received` (`None`: missing or reset)
    /// and whether the alert is active; returns the verdict.
    pub fn observe(&mut self, at: Instant, delta: Option<Delta>, active: bool) -> Condition {
        let Some(delta) = delta else {
            return Condition::Unknown;
        };
        if self.grace_until.is_some_and(|until| at < until) {
            return Condition::Unknown;
        }
        self.grace_until = None;
        if self.short.len() >= SHORT_CAP {
            self.short.pop_front();
        }
        self.short.push_back((at, delta));
        while self.short.len() > 1
            && self
                .short
                .front()
                .is_some_and(|(t, _)| at.saturating_duration_since(*t) >= self.config.short_window)
        {
            self.short.pop_front();
        }
        let condition = match (self.thresholds(), self.short_rate()) {
            (Some(t), Some(rate)) if rate >= t.raise => Condition::Firing {
                severity: Severity::Warning,
                value: rate,
                threshold: t.raise,
                summary: format!(
                    "{rate:.0} new connections/s over {:?}, baseline median {:.1}/s (MAD {:.1})",
                    self.config.short_window, t.stats.median, t.stats.mad
                ),
            },
            (Some(t), Some(rate)) if rate < t.resolve => Condition::Clear,
            (Some(_), Some(_)) => Condition::Holding,
            _ => Condition::Unknown,
        };
        let quiet = !active && !matches!(condition, Condition::Firing { .. });
        let learn = if quiet {
            self.frozen_since = None;
            true
        } else {
            let since = *self.frozen_since.get_or_insert(at);
            at.saturating_duration_since(since) >= self.config.long_window
        };
        if learn {
            self.baseline.push(at, delta);
        }
        condition
    }

    /// Bucket means and short-window readings held (for memory bounds in tests).
    pub fn held(&self) -> (usize, usize) {
        (self.baseline.len(), self.short.len())
    }
}
