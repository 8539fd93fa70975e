//! Caps on dedicated-connection leases per client address and per user, shared by all
//! workers, so no single source or account can take the pinned pool.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rustc_hash::FxHashMap;
use tokio::sync::Notify;

/// Which cap refused a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LimitHit {
    /// The client's address holds as many leases as it may.
    PerIp(usize),
    /// The client's user holds as many leases as it may.
    PerUser(usize),
}

/// Leases held, by address and by user. Entries leave the maps when their count drops to
/// zero, so the maps never hold more entries than there are leases.
#[derive(Debug, Default)]
struct Counts {
    by_ip: FxHashMap<IpAddr, usize>,
    by_user: FxHashMap<Arc<str>, usize>,
}

/// The shared lease counters.
#[derive(Debug)]
pub(crate) struct LeaseLimits {
    // Atomics only so a reload can change them; read under `counts`' lock, at lease time.
    per_ip: AtomicUsize,
    per_user: AtomicUsize,
    counts: Mutex<Counts>,
    /// Signalled whenever a lease ends, for sessions waiting on a cap.
    pub(crate) released: Notify,
}

impl LeaseLimits {
    pub(crate) fn new(per_ip: usize, per_user: usize) -> Arc<Self> {
        Arc::new(Self {
            per_ip: AtomicUsize::new(per_ip),
            per_user: AtomicUsize::new(per_user),
            counts: Mutex::new(Counts::default()),
            released: Notify::new(),
        })
    }

    /// Changes the caps (a reload): leases held stay; new ones meet the new caps.
    pub(crate) fn set(&self, per_ip: usize, per_user: usize) {
        self.per_ip.store(per_ip, Ordering::Relaxed);
        self.per_user.store(per_user, Ordering::Relaxed);
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        // Counters stay consistent even if a holder panicked: every update is one step.
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes one lease for `ip` and `user`, or says which cap is full.
    pub(crate) fn try_take(
        self: &Arc<Self>,
        ip: IpAddr,
        user: &Arc<str>,
    ) -> Result<LeaseTicket, LimitHit> {
        let mut counts = self.counts();
        let (per_ip, per_user) = (
            self.per_ip.load(Ordering::Relaxed),
            self.per_user.load(Ordering::Relaxed),
        );
        let at_ip = counts.by_ip.get(&ip).copied().unwrap_or(0);
        if at_ip >= per_ip {
            return Err(LimitHit::PerIp(per_ip));
        }
        let at_user = counts.by_user.get(user).copied().unwrap_or(0);
        if at_user >= per_user {
            return Err(LimitHit::PerUser(per_user));
        }
        counts.by_ip.insert(ip, at_ip + 1);
        counts.by_user.insert(user.clone(), at_user + 1);
        Ok(LeaseTicket {
            limits: self.clone(),
            ip,
            user: user.clone(),
        })
    }

    fn give_back(&self, ip: IpAddr, user: &Arc<str>) {
        let mut counts = self.counts();
        if let Some(n) = counts.by_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                counts.by_ip.remove(&ip);
            }
        }
        if let Some(n) = counts.by_user.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                counts.by_user.remove(user);
            }
        }
        drop(counts);
        self.released.notify_waiters();
    }

    /// Leases held by `ip` (for tests and metrics).
    #[cfg(test)]
    pub(crate) fn held_by_ip(&self, ip: IpAddr) -> usize {
        self.counts().by_ip.get(&ip).copied().unwrap_or(0)
    }
}

/// One lease counted against its address and user; dropping it gives the count back.
#[derive(Debug)]
pub(crate) struct LeaseTicket {
    limits: Arc<LeaseLimits>,
    ip: IpAddr,
    user: Arc<str>,
}

impl Drop for LeaseTicket {
    fn drop(&mut self) {
        self.limits.give_back(self.ip, &self.user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 1, 0, last])
    }

    #[test]
    fn per_ip_cap_holds_and_frees() {
        let limits = LeaseLimits::new(2, 10);
        let user: Arc<str> = "default".into();
        let a = limits.try_take(ip(1), &user).unwrap();
        let _b = limits.try_take(ip(1), &user).unwrap();
        assert_eq!(
            limits.try_take(ip(1), &user).unwrap_err(),
            LimitHit::PerIp(2)
        );
        // Another address is unaffected.
        let _c = limits.try_take(ip(2), &user).unwrap();
        drop(a);
        assert_eq!(limits.held_by_ip(ip(1)), 1);
        assert!(limits.try_take(ip(1), &user).is_ok());
    }

    #[test]
    fn per_user_cap_spans_addresses() {
        let limits = LeaseLimits::new(10, 2);
        let bob: Arc<str> = "bob".into();
        let _a = limits.try_take(ip(1), &bob).unwrap();
        let _b = limits.try_take(ip(2), &bob).unwrap();
        assert_eq!(
            limits.try_take(ip(3), &bob).unwrap_err(),
            LimitHit::PerUser(2)
        );
        assert!(limits.try_take(ip(3), &"alice".into()).is_ok());
    }

    #[test]
    fn maps_empty_out_when_leases_end() {
        let limits = LeaseLimits::new(1, 1);
        for i in 0..=255u8 {
            let t = limits.try_take(ip(i), &Arc::from(format!("u{i}"))).unwrap();
            drop(t);
        }
        let counts = limits.counts();
        assert!(counts.by_ip.is_empty() && counts.by_user.is_empty());
    }
}
