//! The generic cell rate algorithm, one 16-byte state per key.
//!
//! Hand-written rather than `governor`'s keyed limiter: moat needs the time passed in (so
//! tests drive a fake clock and every worker uses one notion of now), keys stored in its own
//! fixed-capacity table with a stated eviction rule, and rejected attempts to count too. The
//! algorithm is a few lines.

use std::time::{Duration, Instant};

/// A rate (`per_second`) with a burst allowance.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Gcra {
    /// Time one connection "costs".
    interval: Duration,
    /// How far ahead of now the theoretical arrival time may run (the burst).
    tolerance: Duration,
}

impl Gcra {
    pub(crate) fn new(per_second: f64, burst: u32) -> Self {
        let interval = Duration::from_secs_f64(1.0 / per_second.max(1e-6));
        Self {
            interval,
            tolerance: interval.saturating_mul(burst.saturating_sub(1)),
        }
    }

    /// Records an attempt at `now` against the theoretical arrival time `tat` and says
    /// whether it conforms. Refused attempts still push `tat` forward (up to one extra
    /// burst), so a source that keeps hammering stays refused until it slows down.
    pub(crate) fn attempt(&self, tat: &mut Option<Instant>, now: Instant) -> bool {
        let current = tat.map_or(now, |t| t.max(now));
        let allowed = current.saturating_duration_since(now) <= self.tolerance;
        let ceiling = now + self.tolerance + self.tolerance + self.interval;
        *tat = Some((current + self.interval).min(ceiling));
        allowed
    }

    /// Like [`Gcra::attempt`], but a refused attempt costs nothing: for a source known to be
    /// legitimate, which gets its rate even while it retries faster than that (a client
    /// reconnecting on every command after a timeout), instead of staying refused.
    pub(crate) fn attempt_lenient(&self, tat: &mut Option<Instant>, now: Instant) -> bool {
        let current = tat.map_or(now, |t| t.max(now));
        let allowed = current.saturating_duration_since(now) <= self.tolerance;
        if allowed {
            *tat = Some(current + self.interval);
        }
        allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let g = Gcra::new(10.0, 5);
        let t0 = Instant::now();
        let mut tat = None;
        let allowed = (0..8).filter(|_| g.attempt(&mut tat, t0)).count();
        assert_eq!(allowed, 5, "a burst of 5 at once");
        // After the hammering stops, the rate comes back.
        let later = t0 + Duration::from_secs(2);
        assert!(g.attempt(&mut tat, later));
    }

    #[test]
    fn a_lenient_source_retrying_fast_gets_its_rate() {
        let g = Gcra::new(10.0, 2);
        let t0 = Instant::now();
        let mut tat = None;
        let mut allowed = 0;
        // 100 attempts per second for 3 seconds: the rate's worth gets through.
        for i in 0..300u64 {
            if g.attempt_lenient(&mut tat, t0 + Duration::from_millis(i * 10)) {
                allowed += 1;
            }
        }
        assert!((30..=32).contains(&allowed), "{allowed}");
    }

    #[test]
    fn hammering_stays_refused() {
        let g = Gcra::new(10.0, 2);
        let t0 = Instant::now();
        let mut tat = None;
        let mut allowed = 0;
        // 100 attempts per second for 3 seconds: 10 times the rate.
        for i in 0..300u64 {
            if g.attempt(&mut tat, t0 + Duration::from_millis(i * 10)) {
                allowed += 1;
            }
        }
        assert!(
            allowed <= 2 + 3,
            "only the burst and about one per extra interval: {allowed}"
        );
    }

    #[test]
    fn steady_rate_is_always_allowed() {
        let g = Gcra::new(10.0, 1);
        let t0 = Instant::now();
        let mut tat = None;
        for i in 0..100u64 {
            assert!(
                g.attempt(&mut tat, t0 + Duration::from_millis(i * 100)),
                "attempt {i}"
            );
        }
    }
}
