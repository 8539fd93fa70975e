//! Shedding under pressure: which connection makes room when the client table is near its
//! cap. Only connections doing no real work are candidates: silent ones (no command yet)
//! go before keep-alive-only ones (only commands moat answers itself or connection setup),
//! and within a class the source holding the most candidates on this worker loses its
//! oldest first (between sources holding as many, the one with the oldest candidate). Clients that sent a command to Redis and trusted clients are never
//! candidates.
//!
//! Each worker keeps one [`Hoard`]: per source, a queue of its candidates in accept order,
//! and per class an ordered index of sources by candidate count. Counts are updated as
//! connections change class or end (a few times per connection, never per request); queue
//! entries that stopped being candidates are dropped lazily, so finding a victim costs
//! O(log n) amortised, never a scan of all sessions.

use std::cmp::Reverse;
use std::collections::{BTreeSet, VecDeque};
use std::net::IpAddr;
use std::rc::{Rc, Weak};

use rustc_hash::FxHashMap;

use crate::link::{ClientLink, Kind};

/// Candidate classes in eviction order.
const CLASSES: [Kind; 2] = [Kind::Silent, Kind::KeepAlive];

fn slot(kind: Kind) -> Option<usize> {
    CLASSES.iter().position(|k| *k == kind)
}

/// One source's candidates on this worker.
#[derive(Debug, Default)]
struct Source {
    /// Per class, in accept (or class change) order; may hold entries that are no longer
    /// candidates of the class, dropped when met.
    queues: [VecDeque<(u64, Weak<ClientLink>)>; 2],
    /// Per class, the live candidates (exact).
    counts: [u32; 2],
    /// Per class, the age (sequence number) in the source's index key.
    ranked: [u64; 2],
}

/// A source's place in a class's index: most candidates, then oldest candidate.
type Rank = (u32, Reverse<u64>, IpAddr);

/// A worker's eviction candidates, by class and source.
#[derive(Debug, Default)]
pub(crate) struct Hoard {
    sources: FxHashMap<IpAddr, Source>,
    /// Per class, every source with candidates in that class: the last entry is the
    /// source to take from.
    ranks: [BTreeSet<Rank>; 2],
    /// Numbers entries in the order they join a class (the age of a candidate).
    next: u64,
}

/// Whether `link` is still a candidate of class `i`.
fn is_candidate(link: &ClientLink, i: usize) -> bool {
    !link.is_closed() && !link.evicted() && slot(link.kind()) == Some(i)
}

impl Hoard {
    /// Changes `ip`'s count in class `i` by `delta`, keeping the index in step, and
    /// forgets the source once it has no candidates left.
    fn recount(&mut self, ip: IpAddr, i: usize, delta: i32) {
        let Some(source) = self.sources.get_mut(&ip) else {
            return;
        };
        let old = source.counts[i];
        let new = old.saturating_add_signed(delta);
        source.counts[i] = new;
        if old > 0 {
            self.ranks[i].remove(&(old, Reverse(source.ranked[i]), ip));
        }
        if new > 0 {
            // The front entry may be stale (older than the oldest live candidate): the
            // source then looks a little older than it is, which only hastens a hoarder.
            source.ranked[i] = source.queues[i].front().map_or(0, |(seq, _)| *seq);
            self.ranks[i].insert((new, Reverse(source.ranked[i]), ip));
        } else {
            source.queues[i].clear();
        }
        if source.counts == [0, 0] {
            self.sources.remove(&ip);
        }
    }

    /// Adds `link` as a candidate of its current class (call on admission of an untrusted
    /// client, and when it becomes keep-alive-only).
    fn add(&mut self, ip: IpAddr, link: &Rc<ClientLink>) {
        let Some(i) = slot(link.kind()) else { return };
        let source = self.sources.entry(ip).or_default();
        let queue = &mut source.queues[i];
        // Entries that stopped being candidates are dropped from the front as they come;
        // a long-lived candidate at the front could hold stale ones behind it, so the
        // queue is compacted when they outnumber the live ones.
        // The front is kept while it is the key's age, so the index entry can be found.
        let live = |w: &Weak<ClientLink>| w.upgrade().is_some_and(|l| is_candidate(&l, i));
        if queue.len() > 2 * source.counts[i] as usize + 16 {
            let front = queue.pop_front();
            queue.retain(|(_, w)| live(w));
            if let Some(front) = front {
                queue.push_front(front);
            }
        }
        queue.push_back((self.next, Rc::downgrade(link)));
        self.next += 1;
        self.recount(ip, i, 1);
    }

    /// An untrusted client was admitted: a silent candidate.
    pub(crate) fn admitted(&mut self, ip: IpAddr, link: &Rc<ClientLink>) {
        self.add(ip, link);
    }

    /// `link` changed class from `from` (its new class is already set on the link).
    pub(crate) fn reclassed(&mut self, ip: IpAddr, link: &Rc<ClientLink>, from: Kind) {
        if link.evicted() {
            return;
        }
        if let Some(i) = slot(from) {
            self.recount(ip, i, -1);
        }
        self.add(ip, link);
    }

    /// `link`'s session ended (while of class `kind`).
    pub(crate) fn ended(&mut self, ip: IpAddr, link: &ClientLink, kind: Kind) {
        if link.evicted() {
            return;
        }
        if let Some(i) = slot(kind) {
            self.recount(ip, i, -1);
        }
    }

    /// Asks the best candidate to close: silent before keep-alive-only, from the source
    /// holding the most, its oldest first. Returns its source, or `None` if there is no
    /// candidate.
    pub(crate) fn evict(&mut self) -> Option<IpAddr> {
        for i in 0..CLASSES.len() {
            while let Some(&(_, _, ip)) = self.ranks[i].last() {
                let source = self.sources.get_mut(&ip)?;
                let mut victim = None;
                // Stale entries leave the front here; the key still names the age it was
                // ranked with (`ranked`), so `recount` finds it.
                while let Some((_, w)) = source.queues[i].pop_front() {
                    if let Some(link) = w.upgrade().filter(|l| is_candidate(l, i)) {
                        victim = Some(link);
                        break;
                    }
                }
                match victim {
                    Some(link) => {
                        self.recount(ip, i, -1);
                        link.evict();
                        return Some(ip);
                    }
                    // Counts are exact, so this cannot happen; if it did, forget the
                    // source's count rather than loop.
                    None => {
                        let n = source.counts[i];
                        self.recount(ip, i, -i32::try_from(n).unwrap_or(i32::MAX));
                    }
                }
            }
        }
        None
    }

    /// Candidates of each class (silent, keep-alive-only).
    #[cfg(test)]
    fn counts(&self) -> [u32; 2] {
        let mut total = [0; 2];
        for s in self.sources.values() {
            total[0] += s.counts[0];
            total[1] += s.counts[1];
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// A hoard and its links, driven like a worker drives it.
    #[derive(Default)]
    struct Table {
        hoard: Hoard,
        links: Vec<(IpAddr, Rc<ClientLink>)>,
    }

    impl Table {
        fn admit(&mut self, src: &str) -> usize {
            let link = Rc::new(ClientLink::default());
            self.hoard.admitted(ip(src), &link);
            self.links.push((ip(src), link));
            self.links.len() - 1
        }

        fn to(&mut self, i: usize, kind: Kind) {
            let (ip, link) = &self.links[i];
            let from = link.kind();
            link.set_kind(kind);
            self.hoard.reclassed(*ip, link, from);
        }

        fn end(&mut self, i: usize) {
            let (ip, link) = &self.links[i];
            link.close();
            self.hoard.ended(*ip, link, link.kind());
        }

        /// The index of the link evicted next.
        fn evict(&mut self) -> Option<usize> {
            self.hoard.evict()?;
            self.links
                .iter()
                .position(|(_, l)| l.evicted() && !l.is_closed())
                .inspect(|&i| self.end(i))
        }
    }

    #[test]
    fn silent_before_keep_alive_and_never_real() {
        let mut t = Table::default();
        let real = t.admit("10.0.0.1");
        let ping = t.admit("10.0.0.2");
        let silent = t.admit("10.0.0.3");
        t.to(real, Kind::KeepAlive);
        t.to(real, Kind::Real);
        t.to(ping, Kind::KeepAlive);
        assert_eq!(t.hoard.counts(), [1, 1]);
        assert_eq!(t.evict(), Some(silent));
        assert_eq!(t.evict(), Some(ping));
        assert_eq!(t.evict(), None, "a real client is never a candidate");
        assert!(!t.links[real].1.evicted());
    }

    #[test]
    fn the_source_holding_the_most_loses_its_oldest_first() {
        let mut t = Table::default();
        let a: Vec<_> = (0..3).map(|_| t.admit("10.0.0.1")).collect();
        let b: Vec<_> = (0..5).map(|_| t.admit("10.0.0.2")).collect();
        let c = t.admit("10.0.0.3");
        // b holds 5, a 3, c 1: b gives up its oldest until it holds as many as a; between
        // sources holding as many, the one with the oldest candidate goes first.
        let mut order = vec![];
        while let Some(i) = t.evict() {
            order.push(i);
        }
        assert_eq!(order, [b[0], b[1], a[0], b[2], a[1], b[3], a[2], b[4], c]);
        assert_eq!(t.hoard.counts(), [0, 0]);
        assert!(t.hoard.sources.is_empty() && t.hoard.ranks.iter().all(BTreeSet::is_empty));
    }

    #[test]
    fn ended_and_reclassed_connections_leave_the_counts() {
        let mut t = Table::default();
        let first = t.admit("10.0.0.1");
        let second = t.admit("10.0.0.1");
        let other = t.admit("10.0.0.2");
        t.end(first);
        t.to(second, Kind::Real);
        assert_eq!(t.hoard.counts(), [1, 0]);
        assert_eq!(
            t.evict(),
            Some(other),
            "10.0.0.1 holds no candidate any more"
        );
        assert_eq!(t.evict(), None);
    }

    #[test]
    fn stale_entries_behind_a_long_lived_candidate_stay_bounded() {
        let mut t = Table::default();
        let keeper = t.admit("10.0.0.1");
        t.to(keeper, Kind::KeepAlive);
        for _ in 0..1000 {
            let i = t.admit("10.0.0.1");
            t.to(i, Kind::KeepAlive);
            t.to(i, Kind::Real);
        }
        let source = &t.hoard.sources[&ip("10.0.0.1")];
        assert!(
            source.queues[1].len() <= 2 + 16,
            "{}",
            source.queues[1].len()
        );
        assert_eq!(source.counts, [0, 1]);
        assert_eq!(t.evict(), Some(keeper));
    }
}
