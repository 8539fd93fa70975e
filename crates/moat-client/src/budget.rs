//! The retry budget: retries are allowed up to a share of recent requests plus a small floor
//! per second, the way Finagle's `RetryBudget` and Envoy's retry budget work (tower's
//! `retry::budget` is the same idea). When Redis is down every request fails, and without a
//! budget every caller retrying three times quadruples the load on a server that is trying
//! to come back; with it, retries add at most `ratio` to the load.
//!
//! Pure: time is passed in, so tests drive a fake clock.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Slots the window is cut into; old slots fall out as time moves on.
const SLOTS: u32 = 10;

#[derive(Debug, Clone, Copy)]
struct Slot {
    start: Instant,
    requests: u32,
    retries: u32,
}

/// A sliding-window retry budget.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    ratio: f64,
    min_per_sec: u32,
    window: Duration,
    slot_len: Duration,
    slots: VecDeque<Slot>,
}

impl RetryBudget {
    /// Retries up to `ratio` of the requests seen in `window`, plus `min_per_sec` per second
    /// of the window whatever the traffic.
    pub fn new(ratio: f64, min_per_sec: u32, window: Duration) -> Self {
        let window = window.max(Duration::from_millis(u64::from(SLOTS)));
        Self {
            ratio: ratio.clamp(0.0, 1.0),
            min_per_sec,
            window,
            slot_len: window / SLOTS,
            slots: VecDeque::with_capacity(SLOTS as usize + 1),
        }
    }

    fn slot(&mut self, now: Instant) -> &mut Slot {
        let window = self.window;
        self.slots
            .retain(|s| now.saturating_duration_since(s.start) < window);
        let fresh = self
            .slots
            .back()
            .is_none_or(|s| now.saturating_duration_since(s.start) >= self.slot_len);
        if fresh {
            self.slots.push_back(Slot {
                start: now,
                requests: 0,
                retries: 0,
            });
        }
        // Just pushed or kept: never empty here.
        let last = self.slots.len() - 1;
        &mut self.slots[last]
    }

    /// A first attempt was made (retries are not counted here).
    pub fn request(&mut self, now: Instant) {
        let s = self.slot(now);
        s.requests = s.requests.saturating_add(1);
    }

    /// Retries still allowed now.
    pub fn available(&mut self, now: Instant) -> u32 {
        self.slot(now);
        let (requests, retries) = self.slots.iter().fold((0u64, 0u64), |(r, t), s| {
            (r + u64::from(s.requests), t + u64::from(s.retries))
        });
        let floor = f64::from(self.min_per_sec) * self.window.as_secs_f64();
        // Truncation is the point: a fraction of a retry is no retry.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let allowed = (floor + self.ratio * requests as f64) as u64;
        u32::try_from(allowed.saturating_sub(retries)).unwrap_or(u32::MAX)
    }

    /// Takes one retry from the budget if there is one; `false` means do not retry.
    pub fn try_withdraw(&mut self, now: Instant) -> bool {
        if self.available(now) == 0 {
            return false;
        }
        let s = self.slot(now);
        s.retries = s.retries.saturating_add(1);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_stay_within_a_fifth_of_requests_plus_the_floor() {
        let t0 = Instant::now();
        // Floor 1/s over 10 s: 10 retries without traffic.
        let mut b = RetryBudget::new(0.2, 1, Duration::from_secs(10));
        let granted = (0..100).filter(|_| b.try_withdraw(t0)).count();
        assert_eq!(granted, 10, "the floor alone");
        // 1,000 requests over the next second: 200 more.
        for i in 0..1000u64 {
            b.request(t0 + Duration::from_millis(i));
        }
        let now = t0 + Duration::from_secs(1);
        let granted = (0..1000).filter(|_| b.try_withdraw(now)).count();
        assert_eq!(granted, 200);
    }

    #[test]
    fn the_budget_refills_as_the_window_slides() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(0.2, 0, Duration::from_secs(10));
        for _ in 0..50 {
            b.request(t0);
        }
        assert_eq!(b.available(t0), 10);
        assert_eq!((0..20).filter(|_| b.try_withdraw(t0)).count(), 10);
        assert!(!b.try_withdraw(t0 + Duration::from_secs(5)), "spent");
        // The requests and the retries left the window together.
        assert_eq!(b.available(t0 + Duration::from_secs(11)), 0);
        for _ in 0..10 {
            b.request(t0 + Duration::from_secs(12));
        }
        assert_eq!(b.available(t0 + Duration::from_secs(12)), 2);
    }
}
