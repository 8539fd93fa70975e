//! The diff between the guard's bans and the ban sets' elements, as bounded batches.
//!
//! Pure: the caller passes the bans and the time; [`BanSync::plan`] returns the element
//! operations of one tick and assumes they were applied. If applying fails, the caller
//! rebuilds the table and calls [`BanSync::reset`].
//!
//! Addresses go to a hash set, wider networks to an interval set, which refuses overlapping
//! elements: of two overlapping network bans, the wider goes in (narrower ones pushed earlier
//! are taken out), and the narrower returns once the wider one is over. An address inside a
//! banned network is in the address set as well: the two sets do not conflict. An element is deleted only while its
//! timeout is well ahead ([`GRACE`]): deleting one the kernel already expired would fail the
//! whole batch, so an element ending sooner is left to expire, and remembered until
//! `GRACE` past its end, so nothing overlapping it is added before the kernel drops it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::ruleset::{BANNED_NETS4, BANNED_NETS6, BANNED4, BANNED6, canonical_net, element};

/// Margin between moat's clock and the kernel's expiry of an element.
pub const GRACE: Duration = Duration::from_secs(2);

/// Bans with less time left are not pushed: they end before it matters.
pub const MIN_TIMEOUT: Duration = Duration::from_secs(1);

/// One change to a ban set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Add `net` for `timeout`.
    Add {
        /// The network.
        net: IpNet,
        /// Its ban's remaining time.
        timeout: Duration,
    },
    /// Remove `net` (lifted or changed ban).
    Delete {
        /// The network.
        net: IpNet,
    },
}

impl Op {
    /// The nft command for this change to table `table`'s ban sets.
    pub fn command(&self, table: &str) -> String {
        let set = |net: &IpNet| match (net, is_host(net)) {
            (IpNet::V4(_), true) => BANNED4,
            (IpNet::V6(_), true) => BANNED6,
            (IpNet::V4(_), false) => BANNED_NETS4,
            (IpNet::V6(_), false) => BANNED_NETS6,
        };
        match self {
            Op::Add { net, timeout } => format!(
                "add element inet {table} {} {{ {} timeout {}ms }}",
                set(net),
                element(net),
                timeout.as_millis().max(1)
            ),
            Op::Delete { net } => format!(
                "delete element inet {table} {} {{ {} }}",
                set(net),
                element(net)
            ),
        }
    }

    /// One nft script (one transaction) applying `ops` in order.
    pub fn script(ops: &[Op], table: &str) -> String {
        let mut s = String::with_capacity(ops.len() * 64);
        for op in ops {
            let _ = writeln!(s, "{}", op.command(table));
        }
        s
    }
}

/// What moat believes the ban sets hold: each pushed network with the end its timeout gives.
#[derive(Debug)]
pub struct BanSync {
    pushed: BTreeMap<IpNet, Instant>,
    /// Elements per set (by [`set_index`]), each bounded by `set_size`.
    counts: [usize; 4],
    /// Prefix lengths of the networks (not addresses) in `pushed`, per family, with their
    /// counts: the ancestors a network may have among the pushed ones.
    lengths: [BTreeMap<u8, usize>; 2],
    set_size: usize,
    max_ops: usize,
}

fn family(net: &IpNet) -> usize {
    match net {
        IpNet::V4(_) => 0,
        IpNet::V6(_) => 1,
    }
}

fn is_host(net: &IpNet) -> bool {
    net.prefix_len() == net.max_prefix_len()
}

/// Which of the four ban sets holds `net`.
fn set_index(net: &IpNet) -> usize {
    family(net) * 2 + usize::from(!is_host(net))
}

impl BanSync {
    /// Nothing pushed yet; sets of `set_size` elements per family, at most `max_ops`
    /// element operations per [`BanSync::plan`].
    pub fn new(set_size: usize, max_ops: usize) -> Self {
        BanSync {
            pushed: BTreeMap::new(),
            counts: [0; 4],
            lengths: [BTreeMap::new(), BTreeMap::new()],
            set_size,
            max_ops: max_ops.max(1),
        }
    }

    /// Elements the ban sets hold (as far as moat knows; those ending are counted until
    /// [`GRACE`] past their end).
    pub fn elements(&self) -> usize {
        self.pushed.len()
    }

    /// Forgets what was pushed: the sets are empty again (the table was rebuilt).
    pub fn reset(&mut self) {
        self.pushed.clear();
        self.counts = [0; 4];
        self.lengths = [BTreeMap::new(), BTreeMap::new()];
    }

    fn insert(&mut self, net: IpNet, until: Instant) {
        if self.pushed.insert(net, until).is_none() {
            self.counts[set_index(&net)] += 1;
            if !is_host(&net) {
                *self.lengths[family(&net)]
                    .entry(net.prefix_len())
                    .or_default() += 1;
            }
        }
    }

    fn remove(&mut self, net: &IpNet) {
        if self.pushed.remove(net).is_some() {
            let f = family(net);
            self.counts[set_index(net)] -= 1;
            if is_host(net) {
                return;
            }
            if let Some(n) = self.lengths[f].get_mut(&net.prefix_len()) {
                *n -= 1;
                if *n == 0 {
                    self.lengths[f].remove(&net.prefix_len());
                }
            }
        }
    }

    /// Pushed networks overlapping network `net` in the interval set: those containing it,
    /// and those inside it (addresses are in the other set: none for an address).
    fn overlapping(&self, net: &IpNet) -> Vec<(IpNet, Instant)> {
        if is_host(net) {
            return Vec::new();
        }
        let f = family(net);
        let mut out: Vec<(IpNet, Instant)> = self.lengths[f]
            .keys()
            .filter(|&&len| len < net.prefix_len())
            .filter_map(|&len| IpNet::new(net.addr(), len).ok())
            .map(|n| n.trunc())
            .filter_map(|n| self.pushed.get(&n).map(|u| (n, *u)))
            .collect();
        let (lo, hi) = match net {
            IpNet::V4(n) => (
                Ipv4Net::new(n.network(), 0).map(IpNet::V4),
                Ipv4Net::new(n.broadcast(), 32).map(IpNet::V4),
            ),
            IpNet::V6(n) => (
                Ipv6Net::new(n.network(), 0).map(IpNet::V6),
                Ipv6Net::new(n.broadcast(), 128).map(IpNet::V6),
            ),
        };
        if let (Ok(lo), Ok(hi)) = (lo, hi) {
            out.extend(
                self.pushed
                    .range(lo..=hi)
                    .filter(|(n, _)| !is_host(n))
                    .map(|(n, u)| (*n, *u)),
            );
        }
        out
    }

    /// The operations that bring the sets to `bans` (network, end) at `now`: at most
    /// `max_ops`, wider and longer bans first, never more than `set_size` elements per
    /// family, never two overlapping elements. Assumes the operations get applied.
    pub fn plan(
        &mut self,
        bans: impl IntoIterator<Item = (IpNet, Instant)>,
        now: Instant,
    ) -> Vec<Op> {
        let mut want: BTreeMap<IpNet, Instant> = BTreeMap::new();
        for (net, until) in bans {
            if until > now + MIN_TIMEOUT {
                let e = want.entry(canonical_net(net)).or_insert(until);
                *e = (*e).max(until);
            }
        }
        let mut ops = Vec::new();
        let deletable = |until: Instant| until > now + GRACE;
        // Lifted, shortened or extended bans: delete while the element is safely alive,
        // otherwise let the kernel expire it and forget it a little after.
        let stale: Vec<(IpNet, Instant)> = self
            .pushed
            .iter()
            .filter(|(net, until)| want.get(net) != Some(until))
            .map(|(n, u)| (*n, *u))
            .collect();
        for (net, until) in stale {
            if deletable(until) {
                if ops.len() < self.max_ops {
                    ops.push(Op::Delete { net });
                    self.remove(&net);
                }
            } else if until + GRACE <= now {
                self.remove(&net);
            }
        }
        let mut candidates: Vec<(IpNet, Instant)> = want
            .into_iter()
            .filter(|(net, _)| !self.pushed.contains_key(net))
            .collect();
        // Wider networks first (in host bits, so both families compare), then longer bans.
        candidates.sort_by_key(|(net, until)| {
            let host_bits = net.max_prefix_len() - net.prefix_len();
            (std::cmp::Reverse(host_bits), std::cmp::Reverse(*until))
        });
        for (net, until) in candidates {
            if ops.len() >= self.max_ops {
                break;
            }
            if self.counts[set_index(&net)] >= self.set_size {
                // Full: wait for elements to end (no replacing inner ones either).
                continue;
            }
            let overlaps = self.overlapping(&net);
            let inner_only = overlaps
                .iter()
                .all(|(n, u)| n.prefix_len() > net.prefix_len() && deletable(*u));
            if !inner_only || ops.len() + overlaps.len() >= self.max_ops {
                continue;
            }
            // A wider ban replaces the narrower elements inside it.
            for (inner, _) in overlaps {
                ops.push(Op::Delete { net: inner });
                self.remove(&inner);
            }
            ops.push(Op::Add {
                net,
                timeout: until.saturating_duration_since(now),
            });
            self.insert(net, until);
        }
        ops
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn adds(ops: &[Op]) -> Vec<String> {
        ops.iter()
            .filter_map(|o| match o {
                Op::Add { net, .. } => Some(net.to_string()),
                Op::Delete { .. } => None,
            })
            .collect()
    }

    fn deletes(ops: &[Op]) -> Vec<String> {
        ops.iter()
            .filter_map(|o| match o {
                Op::Delete { net } => Some(net.to_string()),
                Op::Add { .. } => None,
            })
            .collect()
    }

    #[test]
    fn adds_once_then_deletes_on_unban() {
        let t0 = Instant::now();
        let mut s = BanSync::new(100, 100);
        let bans = vec![
            (net("10.0.0.1/32"), t0 + secs(60)),
            (net("2001:db8::/64"), t0 + secs(30)),
        ];
        let ops = s.plan(bans.clone(), t0);
        assert_eq!(ops.len(), 2);
        assert_eq!(
            ops[0],
            Op::Add {
                net: net("2001:db8::/64"),
                timeout: secs(30)
            }
        );
        assert_eq!(
            ops[1].command("moat"),
            "add element inet moat banned4 { 10.0.0.1 timeout 60000ms }"
        );
        assert!(s.plan(bans.clone(), t0 + secs(1)).is_empty());
        assert_eq!(s.elements(), 2);
        // Unbanned: deleted at once.
        let ops = s.plan(bans[1..].to_vec(), t0 + secs(2));
        assert_eq!(
            Op::script(&ops, "moat"),
            "delete element inet moat banned4 { 10.0.0.1 }\n"
        );
        assert_eq!(s.elements(), 1);
    }

    #[test]
    fn expiring_elements_are_left_to_the_kernel_then_forgotten() {
        let t0 = Instant::now();
        let mut s = BanSync::new(100, 100);
        let ban = (net("10.0.0.1/32"), t0 + secs(10));
        s.plan([ban], t0);
        // Lifted one second before its end: no delete (the kernel may have dropped it).
        assert!(s.plan([], t0 + secs(9)).is_empty());
        assert_eq!(s.elements(), 1);
        assert!(s.plan([], t0 + secs(11)).is_empty());
        assert_eq!(s.elements(), 1);
        assert!(s.plan([], t0 + secs(12)).is_empty());
        assert_eq!(s.elements(), 0);
        // Bans with under a second left are not pushed.
        assert!(
            s.plan(
                [(
                    net("10.0.0.2/32"),
                    t0 + secs(12) + Duration::from_millis(500)
                )],
                t0 + secs(12)
            )
            .is_empty()
        );
    }

    #[test]
    fn a_longer_ban_replaces_the_element() {
        let t0 = Instant::now();
        let mut s = BanSync::new(100, 100);
        s.plan([(net("10.0.0.1/32"), t0 + secs(60))], t0);
        let ops = s.plan([(net("10.0.0.1/32"), t0 + secs(120))], t0 + secs(5));
        assert_eq!(deletes(&ops), ["10.0.0.1/32"]);
        assert_eq!(
            ops[1],
            Op::Add {
                net: net("10.0.0.1/32"),
                timeout: secs(115)
            }
        );
    }

    #[test]
    fn wider_bans_win_and_narrower_ones_return_after() {
        let t0 = Instant::now();
        let mut s = BanSync::new(100, 100);
        let host = (net("10.0.0.16/28"), t0 + secs(100));
        s.plan([host], t0);
        let subnet = (net("10.0.0.0/24"), t0 + secs(20));
        let ops = s.plan([host, subnet], t0 + secs(1));
        assert_eq!(deletes(&ops), ["10.0.0.16/28"]);
        assert_eq!(adds(&ops), ["10.0.0.0/24"]);
        // Both at once from scratch: only the wider goes in.
        let mut fresh = BanSync::new(100, 100);
        assert_eq!(adds(&fresh.plan([host, subnet], t0)), ["10.0.0.0/24"]);
        // The subnet ban ends: the host returns once the kernel surely dropped the subnet.
        assert!(s.plan([host], t0 + secs(21)).is_empty());
        assert_eq!(adds(&s.plan([host], t0 + secs(23))), ["10.0.0.16/28"]);
        // A wider ban whose inner element is about to expire waits for it.
        let mut s = BanSync::new(100, 100);
        s.plan([(net("10.0.1.4/30"), t0 + secs(3))], t0);
        assert!(
            s.plan(
                [
                    (net("10.0.1.4/30"), t0 + secs(3)),
                    (net("10.0.0.0/16"), t0 + secs(50))
                ],
                t0 + secs(2)
            )
            .is_empty()
        );
        assert_eq!(
            adds(&s.plan([(net("10.0.0.0/16"), t0 + secs(50))], t0 + secs(5))),
            ["10.0.0.0/16"]
        );
        // An address is in the address set, whatever networks hold it.
        let addr = (net("10.0.0.7/32"), t0 + secs(90));
        let ops = s.plan([(net("10.0.0.0/16"), t0 + secs(50)), addr], t0 + secs(6));
        assert_eq!(
            Op::script(&ops, "moat"),
            "add element inet moat banned4 { 10.0.0.7 timeout 84000ms }\n"
        );
        assert_eq!(
            Op::Delete {
                net: net("10.0.0.0/16")
            }
            .command("moat"),
            "delete element inet moat banned_nets4 { 10.0.0.0/16 }"
        );
    }

    #[test]
    fn bounded_per_tick_and_by_set_size() {
        let t0 = Instant::now();
        let mut s = BanSync::new(1_000, 250);
        let bans: Vec<(IpNet, Instant)> = (0..100_000u32)
            .map(|i| {
                let ip = Ipv4Addr::from(0x0a00_0000 + i);
                (IpNet::new(ip.into(), 32).unwrap(), t0 + secs(600))
            })
            .collect();
        let mut total = 0;
        for tick in 0..5 {
            let ops = s.plan(bans.iter().copied(), t0 + Duration::from_millis(250 * tick));
            assert!(ops.len() <= 250);
            total += ops.len();
        }
        assert_eq!(total, 1_000);
        assert_eq!(s.elements(), 1_000);
        // IPv6 has its own room.
        let v6 = (net("2001:db8::/48"), t0 + secs(600));
        assert_eq!(
            adds(&s.plan(bans.iter().copied().chain([v6]), t0 + secs(3))),
            ["2001:db8::/48"]
        );
        s.reset();
        assert_eq!(s.elements(), 0);
    }
}
