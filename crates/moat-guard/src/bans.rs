//! Active bans with a fixed capacity, and the escalation of repeat bans.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use rand::Rng;
use rustc_hash::FxHashMap;

/// One ban.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    /// When it ends.
    pub until: Instant,
    /// How many times this network was banned before (0 for a first ban).
    pub repeat: u32,
    /// Who issued it and why.
    pub reason: BanReason,
}

/// Why a ban exists: the guard's own strikes, or an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BanReason {
    /// The source (or enough sources of its subnet) collected `strikes_to_ban` strikes.
    Strikes,
    /// An operator banned it through the admin API, with this note (may be empty). Shared
    /// text, so listing bans copies a pointer, not the note.
    Admin(Arc<str>),
}

impl BanReason {
    /// A short label for metrics and listings: `strikes` or `admin`.
    pub fn label(&self) -> &'static str {
        match self {
            BanReason::Strikes => "strikes",
            BanReason::Admin(_) => "admin",
        }
    }

    /// The operator's note, if any.
    pub fn note(&self) -> Option<&str> {
        match self {
            BanReason::Strikes => None,
            BanReason::Admin(text) => Some(text),
        }
    }
}

/// Bans by network. When full, the ban that ends soonest is dropped to make room, so a
/// flood of new offenders cannot push out the longest bans.
#[derive(Debug)]
pub(crate) struct BanTable {
    bans: FxHashMap<IpNet, Ban>,
    /// The same bans ordered by end, to find the one ending soonest without a scan.
    by_end: BTreeSet<(Instant, IpNet)>,
    /// Prefix lengths in use (by family), so a lookup tries only those: an address is
    /// banned when any banned network contains it.
    prefixes: BTreeMap<(bool, u8), usize>,
    capacity: usize,
    /// Bumped on every insert and removal, so a watcher (the kernel filter) sees a change
    /// without comparing lists.
    generation: u64,
}

impl BanTable {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            bans: FxHashMap::default(),
            by_end: BTreeSet::new(),
            prefixes: BTreeMap::new(),
            capacity,
            generation: 0,
        }
    }

    /// The ban covering `net`, if still running at `now`.
    pub(crate) fn active(&self, net: &IpNet, now: Instant) -> Option<&Ban> {
        self.bans.get(net).filter(|b| b.until > now)
    }

    /// The end of the longest-running active ban on a network containing `ip` (only the
    /// end: the admission path must not copy a ban's note).
    pub(crate) fn covering(&self, ip: IpAddr, now: Instant) -> Option<Instant> {
        self.prefixes
            .keys()
            .filter(|(v4, _)| *v4 == ip.is_ipv4())
            .filter_map(|&(_, len)| IpNet::new(ip, len).ok())
            .filter_map(|net| self.active(&net.trunc(), now))
            .map(|b| b.until)
            .max()
    }

    pub(crate) fn insert(&mut self, net: IpNet, ban: Ban) {
        self.remove(&net);
        // The ban ending soonest (an expired one first) makes room.
        while self.bans.len() >= self.capacity {
            let Some(&(_, soonest)) = self.by_end.first() else {
                break;
            };
            self.remove(&soonest);
        }
        self.generation = self.generation.wrapping_add(1);
        self.by_end.insert((ban.until, net));
        *self.prefixes.entry(family_len(&net)).or_default() += 1;
        self.bans.insert(net, ban);
    }

    pub(crate) fn remove(&mut self, net: &IpNet) -> bool {
        match self.bans.remove(net) {
            Some(ban) => {
                self.generation = self.generation.wrapping_add(1);
                self.by_end.remove(&(ban.until, *net));
                let key = family_len(net);
                if let Some(n) = self.prefixes.get_mut(&key) {
                    *n -= 1;
                    if *n == 0 {
                        self.prefixes.remove(&key);
                    }
                }
                true
            }
            None => false,
        }
    }

    /// Bans still running, for the admin API.
    pub(crate) fn list(&self, now: Instant) -> Vec<(IpNet, Ban)> {
        let mut out: Vec<_> = self
            .bans
            .iter()
            .filter(|(_, b)| b.until > now)
            .map(|(n, b)| (*n, b.clone()))
            .collect();
        out.sort_by_key(|(n, _)| *n);
        out
    }

    pub(crate) fn len(&self) -> usize {
        self.bans.len()
    }

    /// Removes the bans that ended by `now` (cheap: they are the first by end).
    pub(crate) fn sweep(&mut self, now: Instant) {
        while let Some(&(until, net)) = self.by_end.first() {
            if until > now {
                break;
            }
            self.remove(&net);
        }
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }
}

fn family_len(net: &IpNet) -> (bool, u8) {
    (matches!(net, IpNet::V4(_)), net.prefix_len())
}

/// Ban length for a repeat count: `base * 2^repeat`, at most `max`, plus up to
/// `jitter * length` at random (fail2ban's `bantime.increment`), so banned sources do not all
/// return at the same instant.
pub(crate) fn ban_length(
    base: Duration,
    max: Duration,
    repeat: u32,
    jitter: f64,
    rng: &mut impl Rng,
) -> Duration {
    let factor = 1u32.checked_shl(repeat.min(20)).unwrap_or(u32::MAX);
    let length = base.saturating_mul(factor).min(max);
    let spread = length.mul_f64(jitter * rng.random::<f64>());
    (length + spread).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn lengths_double_and_cap() {
        let mut rng = StdRng::seed_from_u64(3);
        let base = Duration::from_secs(60);
        let max = Duration::from_secs(600);
        let no_jitter: Vec<u64> = (0..6)
            .map(|r| ban_length(base, max, r, 0.0, &mut rng).as_secs())
            .collect();
        assert_eq!(no_jitter, [60, 120, 240, 480, 600, 600]);
        for r in 0..4 {
            let d = ban_length(base, max, r, 0.2, &mut rng);
            let plain = base * 2u32.pow(r);
            assert!(
                d >= plain.min(max) && d <= (plain.mul_f64(1.2)).min(max),
                "{d:?}"
            );
        }
    }

    #[test]
    fn full_table_drops_the_ban_ending_soonest() {
        let now = Instant::now();
        let mut t = BanTable::new(2);
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        let ban = |secs| Ban {
            until: now + Duration::from_secs(secs),
            repeat: 0,
            reason: BanReason::Strikes,
        };
        t.insert(net("10.0.0.1/32"), ban(100));
        t.insert(net("10.0.0.2/32"), ban(10));
        t.insert(net("10.0.0.3/32"), ban(50));
        assert_eq!(t.len(), 2);
        assert!(t.active(&net("10.0.0.2/32"), now).is_none());
        assert!(t.active(&net("10.0.0.1/32"), now).is_some());
        assert!(t.active(&net("10.0.0.3/32"), now).is_some());
        assert!(
            t.active(&net("10.0.0.3/32"), now + Duration::from_secs(51))
                .is_none()
        );
    }
}
