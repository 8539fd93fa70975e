//! A fixed one-second window counter: how many bans may be applied (or published) now.
//! Pure: the clock is an argument.

use std::time::{Duration, Instant};

/// At most `per_sec` takes in any window of one second starting at the first take.
#[derive(Debug)]
pub(crate) struct PerSecond {
    per_sec: u32,
    window: Option<Instant>,
    used: u32,
}

impl PerSecond {
    /// A limit of `per_sec` a second.
    pub(crate) fn new(per_sec: u32) -> Self {
        Self {
            per_sec,
            window: None,
            used: 0,
        }
    }

    /// Takes one if the window has room at `now`.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        match self.window {
            Some(start) if now.saturating_duration_since(start) < Duration::from_secs(1) => {}
            _ => {
                self.window = Some(now);
                self.used = 0;
            }
        }
        if self.used < self.per_sec {
            self.used += 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_per_sec_then_waits_for_the_next_second() {
        let t0 = Instant::now();
        let mut r = PerSecond::new(3);
        assert!((0..3).all(|_| r.take(t0)));
        assert!(!r.take(t0 + Duration::from_millis(999)));
        assert!(r.take(t0 + Duration::from_secs(1)));
        assert!(r.take(t0 + Duration::from_secs(1)));
    }
}
