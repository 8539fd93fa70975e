//! Absolute rules: one poll's signals against fixed thresholds, as [`Condition`]s.
//!
//! - [`ratio`]: a level against its limit (clients vs `maxclients`, fds vs their limit),
//!   with warning, critical and a lower resolve threshold.
//! - [`per_minute`]: events counted over a sliding window against per-minute thresholds
//!   (listen overflows, SYN-queue drops, rejected connections).
//! - [`reachable`]: whether the monitoring connection reached Redis.

use super::alert::{Condition, Severity};
use super::rate::WindowCount;

/// Thresholds of a ratio rule, as fractions of the limit.
#[derive(Debug, Clone, Copy)]
pub struct RatioThresholds {
    /// Warn at or above.
    pub warning: f64,
    /// Critical at or above.
    pub critical: f64,
    /// Clear below.
    pub resolve: f64,
}

/// `used / limit` against `t`; `Unknown` without both values or with a zero limit.
pub fn ratio(used: Option<u64>, limit: Option<u64>, t: RatioThresholds, what: &str) -> Condition {
    let (Some(used), Some(limit)) = (used, limit) else {
        return Condition::Unknown;
    };
    if limit == 0 {
        return Condition::Unknown;
    }
    let r = used as f64 / limit as f64;
    let (severity, threshold) = if r >= t.critical {
        (Severity::Critical, t.critical)
    } else if r >= t.warning {
        (Severity::Warning, t.warning)
    } else if r < t.resolve {
        return Condition::Clear;
    } else {
        return Condition::Holding;
    };
    Condition::Firing {
        severity,
        value: r,
        threshold,
        summary: format!("{what}: {used} of {limit} ({:.0}%)", r * 100.0),
    }
}

/// Events in `window` scaled to a per-minute rate, against warning and critical rates
/// (strictly above, as netdata). `Clear` once the window holds no event; between zero and
/// the warning rate, `Holding`. `present` false (the counter is not readable) gives
/// `Unknown`.
pub fn per_minute(
    window: &WindowCount,
    present: bool,
    warning: f64,
    critical: f64,
    what: &str,
) -> Condition {
    if !present {
        return Condition::Unknown;
    }
    let n = window.sum();
    if n == 0 {
        return Condition::Clear;
    }
    let secs = window.window().as_secs_f64().max(1e-9);
    let per_min = n as f64 * 60.0 / secs;
    let (severity, threshold) = if per_min > critical {
        (Severity::Critical, critical)
    } else if per_min > warning {
        (Severity::Warning, warning)
    } else {
        return Condition::Holding;
    };
    Condition::Firing {
        severity,
        value: per_min,
        threshold,
        summary: format!("{what}: {n} in the last {secs:.0} s ({per_min:.1}/min)"),
    }
}

/// `redis_unreachable`: firing (critical) on a failed poll; the alert's policy supplies
/// how many in a row it takes.
pub fn reachable(reachable: bool) -> Condition {
    if reachable {
        Condition::Clear
    } else {
        Condition::Firing {
            severity: Severity::Critical,
            value: 1.0,
            threshold: 1.0,
            summary: "the monitoring connection cannot reach Redis".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    const T: RatioThresholds = RatioThresholds {
        warning: 0.8,
        critical: 0.9,
        resolve: 0.75,
    };

    #[test]
    fn ratio_levels() {
        assert_eq!(ratio(None, Some(10), T, "x"), Condition::Unknown);
        assert_eq!(ratio(Some(1), Some(0), T, "x"), Condition::Unknown);
        assert_eq!(ratio(Some(70), Some(100), T, "x"), Condition::Clear);
        assert_eq!(ratio(Some(78), Some(100), T, "x"), Condition::Holding);
        assert!(matches!(
            ratio(Some(80), Some(100), T, "x"),
            Condition::Firing {
                severity: Severity::Warning,
                ..
            }
        ));
        assert!(matches!(
            ratio(Some(100), Some(100), T, "x"),
            Condition::Firing {
                severity: Severity::Critical,
                ..
            }
        ));
    }

    #[test]
    fn per_minute_levels() {
        let t0 = Instant::now();
        let mut w = WindowCount::new(Duration::from_secs(60), 64);
        assert_eq!(per_minute(&w, false, 1.0, 5.0, "x"), Condition::Unknown);
        assert_eq!(per_minute(&w, true, 1.0, 5.0, "x"), Condition::Clear);
        w.push(t0, 1);
        assert_eq!(per_minute(&w, true, 1.0, 5.0, "x"), Condition::Holding);
        w.push(t0, 1);
        assert!(matches!(
            per_minute(&w, true, 1.0, 5.0, "x"),
            Condition::Firing {
                severity: Severity::Warning,
                ..
            }
        ));
        w.push(t0, 4);
        assert!(matches!(
            per_minute(&w, true, 1.0, 5.0, "x"),
            Condition::Firing {
                severity: Severity::Critical,
                ..
            }
        ));
    }
}
