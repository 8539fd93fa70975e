//! Locks out an address that keeps presenting a wrong admin token, so the token cannot be
//! guessed at the listener's speed. Pure logic: the time is an argument.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Addresses remembered at most; when full, the entry that matters for the shortest time
/// makes room, so the map's memory is fixed whatever the number of addresses.
pub(crate) const CAPACITY: usize = 4096;

/// One address's failures.
#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    window_start: Instant,
    locked_until: Option<Instant>,
}

impl Entry {
    /// When this entry stops mattering: its window has closed and its lock has ended.
    fn relevant_until(&self, window: Duration) -> Instant {
        let window_end = self.window_start + window;
        self.locked_until.map_or(window_end, |l| l.max(window_end))
    }
}

/// Failed token checks by address.
#[derive(Debug)]
pub(crate) struct Lockout {
    entries: HashMap<IpAddr, Entry>,
    capacity: usize,
    after: u32,
    window: Duration,
    lock_for: Duration,
}

impl Lockout {
    /// `after` failures within `window` lock an address out for `lock_for`.
    pub(crate) fn new(after: u32, window: Duration, lock_for: Duration) -> Self {
        Self::with_capacity(CAPACITY, after, window, lock_for)
    }

    fn with_capacity(capacity: usize, after: u32, window: Duration, lock_for: Duration) -> Self {
        Self {
            entries: HashMap::new(),
            capacity: capacity.max(1),
            after: after.max(1),
            window,
            lock_for,
        }
    }

    /// `Err(time left)` while `ip` is locked out at `now`.
    pub(crate) fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        match self.entries.get(&ip).and_then(|e| e.locked_until) {
            Some(until) if until > now => Err(until - now),
            _ => Ok(()),
        }
    }

    /// Counts a failed check from `ip`; returns the lock's length when this failure locked
    /// it out.
    pub(crate) fn fail(&mut self, ip: IpAddr, now: Instant) -> Option<Duration> {
        if !self.entries.contains_key(&ip) && self.entries.len() >= self.capacity {
            self.make_room(now);
        }
        let window = self.window;
        let entry = self.entries.entry(ip).or_insert(Entry {
            failures: 0,
            window_start: now,
            locked_until: None,
        });
        if now.saturating_duration_since(entry.window_start) > window {
            entry.failures = 0;
            entry.window_start = now;
        }
        entry.failures = entry.failures.saturating_add(1);
        if entry.failures >= self.after {
            entry.failures = 0;
            entry.window_start = now;
            entry.locked_until = Some(now + self.lock_for);
            return Some(self.lock_for);
        }
        None
    }

    /// A successful check from `ip` forgets its failures.
    pub(crate) fn succeed(&mut self, ip: IpAddr) {
        self.entries.remove(&ip);
    }

    /// Drops every entry that no longer matters; if none, the one that matters for the
    /// shortest time. Runs only when a new address fails while the map is full.
    fn make_room(&mut self, now: Instant) {
        let window = self.window;
        self.entries.retain(|_, e| e.relevant_until(window) > now);
        if self.entries.len() >= self.capacity
            && let Some(ip) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.relevant_until(window))
                .map(|(ip, _)| *ip)
        {
            self.entries.remove(&ip);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    struct Clock(Instant);
    impl Clock {
        fn at(&self, secs: u64) -> Instant {
            self.0 + Duration::from_secs(secs)
        }
    }

    fn lockout() -> Lockout {
        Lockout::new(3, Duration::from_secs(60), Duration::from_secs(300))
    }

    #[test]
    fn enough_failures_within_the_window_lock_out_for_a_while() {
        let t = Clock(Instant::now());
        let mut l = lockout();
        let a = ip("127.0.0.9");
        assert_eq!(l.fail(a, t.at(0)), None);
        assert_eq!(l.fail(a, t.at(10)), None);
        assert!(l.check(a, t.at(11)).is_ok(), "two failures are not enough");
        assert_eq!(l.fail(a, t.at(20)), Some(Duration::from_secs(300)));
        assert_eq!(l.check(a, t.at(21)), Err(Duration::from_secs(299)));
        assert!(
            l.check(ip("127.0.0.10"), t.at(21)).is_ok(),
            "only that address"
        );
        assert!(l.check(a, t.at(320)).is_ok(), "the lock ends");
    }

    #[test]
    fn failures_outside_the_window_do_not_add_up() {
        let t = Clock(Instant::now());
        let mut l = lockout();
        let a = ip("::1");
        for i in 0..10 {
            assert_eq!(l.fail(a, t.at(i * 61)), None, "failure {i}");
        }
        assert!(l.check(a, t.at(1000)).is_ok());
    }

    #[test]
    fn success_forgets_failures() {
        let t = Clock(Instant::now());
        let mut l = lockout();
        let a = ip("127.0.0.9");
        l.fail(a, t.at(0));
        l.fail(a, t.at(1));
        l.succeed(a);
        assert_eq!(l.fail(a, t.at(2)), None, "counting starts over");
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn the_map_stays_bounded_and_keeps_locks_over_stale_entries() {
        let t = Clock(Instant::now());
        let mut l = Lockout::with_capacity(4, 2, Duration::from_secs(60), Duration::from_secs(300));
        let locked = ip("10.0.0.1");
        l.fail(locked, t.at(0));
        assert!(l.fail(locked, t.at(0)).is_some());
        for i in 0..100u8 {
            l.fail(IpAddr::from([10, 1, 0, i]), t.at(u64::from(i)));
            assert!(l.len() <= 4);
        }
        assert!(
            l.check(locked, t.at(100)).is_err(),
            "the lock outlives newer single failures"
        );
        // Once everything is stale, a new address clears the lot.
        l.fail(ip("10.2.0.1"), t.at(10_000));
        assert_eq!(l.len(), 1);
    }
}
