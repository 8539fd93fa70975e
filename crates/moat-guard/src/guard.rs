//! The admission decision and behaviour bookkeeping, shared by every worker.
//!
//! Every check takes `now` from the caller, so tests drive a fake clock and never sleep.
//! Checks run cheapest first: lists, bans, rates, concurrency, global capacity.

use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use lru::LruCache;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rustc_hash::FxHashMap;

use crate::bans::{Ban, BanTable, ban_length};
use crate::cidr::{NetList, canonical, subnet_of};
use crate::config::GuardConfig;
use crate::gcra::Gcra;

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// The address is on the deny list, or not on a non-empty allow list.
    Denied,
    /// The address or its subnet is banned for this much longer.
    Banned(Duration),
    /// The address opens connections faster than its rate.
    IpRate,
    /// The subnet opens connections faster than its rate.
    SubnetRate,
    /// The address holds as many connections as it may.
    TooManyFromIp,
    /// The subnet holds as many connections as it may.
    TooManyFromSubnet,
    /// Moat holds as many clients as it may (the reserve is for trusted networks).
    Full,
    /// Above the high-water mark, a source with no recent successful command waits.
    Shed,
}

impl Reject {
    /// The one error line a refused client gets (without `-` and CRLF).
    pub fn line(&self) -> String {
        match self {
            Reject::Denied => "ERR moat: connections from your address are not allowed".into(),
            Reject::Banned(left) => format!("ERR moat: banned for {}s", left.as_secs().max(1)),
            Reject::IpRate => {
                "ERR moat: too many new connections from your address (rate limit)".into()
            }
            Reject::SubnetRate => {
                "ERR moat: too many new connections from your network (rate limit)".into()
            }
            Reject::TooManyFromIp => "ERR moat: too many connections from your address".into(),
            Reject::TooManyFromSubnet => "ERR moat: too many connections from your network".into(),
            Reject::Full => "ERR moat: max number of clients reached".into(),
            Reject::Shed => "ERR moat: server busy, try again later".into(),
        }
    }

    /// A short label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Reject::Denied => "denied",
            Reject::Banned(_) => "banned",
            Reject::IpRate => "ip_rate",
            Reject::SubnetRate => "subnet_rate",
            Reject::TooManyFromIp => "ip_concurrency",
            Reject::TooManyFromSubnet => "subnet_concurrency",
            Reject::Full => "full",
            Reject::Shed => "shed",
        }
    }

    /// Whether the refusal is the source's own doing, and so counts as a strike.
    fn strikes(&self) -> bool {
        matches!(
            self,
            Reject::IpRate | Reject::SubnetRate | Reject::TooManyFromIp | Reject::TooManyFromSubnet
        )
    }
}

/// Something a connection did that the guard weighs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A command succeeded: the source is known to be legitimate for a while.
    Command,
    /// Credentials were refused.
    AuthFailed,
    /// The client sent something that is not RESP.
    ProtocolError,
    /// A request the client started was not finished in time (a slowloris).
    SlowRequest,
    /// The connection ended (closed or timed out) after this many commands.
    Closed {
        /// Commands the connection ran.
        commands: u64,
    },
}

/// Per-address memory: rate state, strikes, last success, and how often it was banned.
#[derive(Debug, Clone, Copy, Default)]
struct Source {
    tat: Option<Instant>,
    strikes: u32,
    window_start: Option<Instant>,
    last_success: Option<Instant>,
    bans: u32,
}

#[derive(Debug, Clone, Copy, Default)]
struct Subnet {
    tat: Option<Instant>,
    banned_sources: u32,
}

/// Counts for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuardStats {
    /// Connections admitted.
    pub admitted: u64,
    /// Connections refused, by [`Reject::label`].
    pub rejected: Vec<(&'static str, u64)>,
    /// Bans issued automatically (strikes).
    pub bans_issued: u64,
    /// Bans issued by an operator (the admin API).
    pub bans_issued_admin: u64,
    /// Entries dropped from a full `sources` or `subnets` table to make room.
    pub evictions: u64,
    /// Entries of each bounded table by name: `sources`, `subnets`, `active_ips`,
    /// `active_subnets`, `bans`.
    pub tables: Vec<(&'static str, u64)>,
    /// Client connections held now.
    pub clients: u32,
    /// Bans in force.
    pub bans_active: usize,
    /// Sources remembered.
    pub sources: usize,
}

#[derive(Debug)]
struct State {
    sources: LruCache<IpAddr, Source>,
    subnets: LruCache<IpNet, Subnet>,
    /// Open connections by address and subnet. Entries exist only while connections do,
    /// so these hold at most `max_clients` entries each.
    active_ip: FxHashMap<IpAddr, u32>,
    active_subnet: FxHashMap<IpNet, u32>,
    active_total: u32,
    bans: BanTable,
    rng: StdRng,
    admitted: u64,
    rejected: FxHashMap<&'static str, u64>,
    bans_issued: u64,
    bans_issued_admin: u64,
    evictions: u64,
}

/// `cache`'s entry for `key`, created if missing; counts in `evictions` the entry a full
/// table drops to make room for it.
fn entry<'a, K: std::hash::Hash + Eq, V: Default>(
    cache: &'a mut LruCache<K, V>,
    key: K,
    evictions: &mut u64,
) -> &'a mut V {
    if cache.len() >= cache.cap().get() && !cache.contains(&key) {
        *evictions += 1;
    }
    cache.get_or_insert_mut(key, V::default)
}

/// The admission guard. Cheap to share: workers hold an `Arc` and lock it briefly per
/// accepted connection and per reported event.
#[derive(Debug)]
pub struct Guard {
    config: GuardConfig,
    trusted: NetList,
    allow: NetList,
    deny: NetList,
    ip_rate: Gcra,
    subnet_rate: Gcra,
    state: Mutex<State>,
}

/// An admitted connection's place in the counts; dropping it gives the place back.
#[derive(Debug)]
pub struct Ticket {
    guard: Arc<Guard>,
    ip: IpAddr,
    subnet: IpNet,
    trusted: bool,
    over_high_water: bool,
}

impl Ticket {
    /// The (canonical) client address.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// Whether the client is on a trusted network.
    pub fn trusted(&self) -> bool {
        self.trusted
    }

    /// Whether this admission took moat above the high-water mark, so the oldest
    /// connection that never sent a command should be closed to make room.
    pub fn over_high_water(&self) -> bool {
        self.over_high_water
    }

    /// The guard that issued this ticket.
    pub fn guard(&self) -> &Arc<Guard> {
        &self.guard
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut st = self.guard.lock();
        st.active_total = st.active_total.saturating_sub(1);
        decrement(&mut st.active_ip, &self.ip);
        decrement(&mut st.active_subnet, &self.subnet);
    }
}

fn decrement<K: std::hash::Hash + Eq>(map: &mut FxHashMap<K, u32>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

fn host(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

impl Guard {
    /// A guard with validated settings.
    pub fn new(config: GuardConfig) -> Arc<Self> {
        let cap = |n: usize| NonZeroUsize::new(n.max(1)).unwrap_or(NonZeroUsize::MIN);
        let state = State {
            sources: LruCache::new(cap(config.table_capacity)),
            subnets: LruCache::new(cap(config.table_capacity / 4)),
            active_ip: FxHashMap::default(),
            active_subnet: FxHashMap::default(),
            active_total: 0,
            bans: BanTable::new(config.ban_capacity),
            rng: StdRng::from_os_rng(),
            admitted: 0,
            rejected: FxHashMap::default(),
            bans_issued: 0,
            bans_issued_admin: 0,
            evictions: 0,
        };
        Arc::new(Self {
            trusted: NetList::new(&config.trusted),
            allow: NetList::new(&config.allow),
            deny: NetList::new(&config.deny),
            ip_rate: Gcra::new(config.ip_rate, config.ip_burst),
            subnet_rate: Gcra::new(config.subnet_rate, config.subnet_burst),
            config,
            state: Mutex::new(state),
        })
    }

    /// The settings in force.
    pub fn config(&self) -> &GuardConfig {
        &self.config
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update is complete before the next statement; a panicking holder cannot
        // leave the counts half-changed.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `ip` is on a trusted network.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.contains(ip)
    }

    /// Decides on a just-accepted connection from `ip` at `now`.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<Ticket, Reject> {
        let ip = canonical(ip);
        let trusted = self.trusted.contains(ip);
        let subnet = subnet_of(
            ip,
            self.config.subnet_prefix_v4,
            self.config.subnet_prefix_v6,
        );
        let mut st = self.lock();
        let verdict = if trusted {
            // Trusted networks skip per-source limits and may use the reserve.
            if st.active_total >= self.config.max_clients {
                Err(Reject::Full)
            } else {
                Ok(())
            }
        } else {
            self.check_untrusted(&mut st, ip, subnet, now)
        };
        match verdict {
            Ok(()) => {
                st.active_total += 1;
                *st.active_ip.entry(ip).or_default() += 1;
                *st.active_subnet.entry(subnet).or_default() += 1;
                st.admitted += 1;
                let over_high_water = st.active_total > self.config.high_water;
                drop(st);
                Ok(Ticket {
                    guard: self.clone(),
                    ip,
                    subnet,
                    trusted,
                    over_high_water,
                })
            }
            Err(reject) => {
                *st.rejected.entry(reject.label()).or_default() += 1;
                if reject.strikes() {
                    self.strike(&mut st, ip, now);
                }
                Err(reject)
            }
        }
    }

    fn check_untrusted(
        &self,
        st: &mut State,
        ip: IpAddr,
        subnet: IpNet,
        now: Instant,
    ) -> Result<(), Reject> {
        let c = &self.config;
        if self.deny.contains(ip) || (!self.allow.is_empty() && !self.allow.contains(ip)) {
            return Err(Reject::Denied);
        }
        if let Some(ban) = st.bans.covering(ip, now) {
            return Err(Reject::Banned(ban.until.saturating_duration_since(now)));
        }
        // An address's rate is charged for every attempt, refused or not, so hammering
        // keeps it refused. Its subnet is charged only for attempts the address's own rate
        // let through: one flooder must not use up its neighbours' share.
        let source = entry(&mut st.sources, ip, &mut st.evictions);
        let ip_ok = self.ip_rate.attempt(&mut source.tat, now);
        let known = source
            .last_success
            .is_some_and(|t| now.saturating_duration_since(t) <= c.recent_success);
        if !ip_ok {
            return Err(Reject::IpRate);
        }
        let net = entry(&mut st.subnets, subnet, &mut st.evictions);
        if !self.subnet_rate.attempt(&mut net.tat, now) {
            return Err(Reject::SubnetRate);
        }
        if st.active_ip.get(&ip).copied().unwrap_or(0) >= c.max_per_ip {
            return Err(Reject::TooManyFromIp);
        }
        if st.active_subnet.get(&subnet).copied().unwrap_or(0) >= c.max_per_subnet {
            return Err(Reject::TooManyFromSubnet);
        }
        if st.active_total >= c.max_clients - c.reserved_for_trusted {
            return Err(Reject::Full);
        }
        if st.active_total >= c.high_water && !known {
            return Err(Reject::Shed);
        }
        Ok(())
    }

    /// Records what a connection from `ip` did.
    pub fn record(&self, ip: IpAddr, event: Event, now: Instant) {
        let ip = canonical(ip);
        let mut guard = self.lock();
        let st = &mut *guard;
        match event {
            Event::Command => {
                entry(&mut st.sources, ip, &mut st.evictions).last_success = Some(now);
            }
            Event::AuthFailed
            | Event::ProtocolError
            | Event::SlowRequest
            | Event::Closed { commands: 0 } => {
                self.strike(st, ip, now);
            }
            Event::Closed { .. } => {}
        }
    }

    /// Counts a strike; enough of them within the window ban the source.
    fn strike(&self, st: &mut State, ip: IpAddr, now: Instant) {
        if self.trusted.contains(ip) {
            return;
        }
        let c = &self.config;
        let source = entry(&mut st.sources, ip, &mut st.evictions);
        let fresh = source
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) > c.strike_window);
        if fresh {
            source.window_start = Some(now);
            source.strikes = 0;
        }
        source.strikes += 1;
        if source.strikes < c.strikes_to_ban {
            return;
        }
        source.strikes = 0;
        source.window_start = None;
        let repeat = source.bans;
        source.bans = source.bans.saturating_add(1);
        let length = ban_length(c.ban_time, c.ban_max, repeat, c.ban_jitter, &mut st.rng);
        st.bans.insert(
            host(ip),
            Ban {
                until: now + length,
                repeat,
            },
        );
        st.bans_issued += 1;
        let subnet = subnet_of(ip, c.subnet_prefix_v4, c.subnet_prefix_v6);
        let net = entry(&mut st.subnets, subnet, &mut st.evictions);
        net.banned_sources += 1;
        if c.subnet_ban_after > 0 && net.banned_sources >= c.subnet_ban_after {
            let repeat = net.banned_sources / c.subnet_ban_after - 1;
            let length = ban_length(c.ban_time, c.ban_max, repeat, c.ban_jitter, &mut st.rng);
            st.bans.insert(
                subnet,
                Ban {
                    until: now + length,
                    repeat,
                },
            );
            st.bans_issued += 1;
        }
    }

    /// Bans `net` for `length` from `now` (the admin API). Trusted networks cannot be banned.
    pub fn ban(&self, net: IpNet, length: Duration, now: Instant) -> bool {
        let net = net.trunc();
        if self.trusted.contains(net.network()) {
            return false;
        }
        let mut st = self.lock();
        let repeat = st.bans.active(&net, now).map_or(0, |b| b.repeat + 1);
        st.bans.insert(
            net,
            Ban {
                until: now + length,
                repeat,
            },
        );
        true
    }

    /// Lifts a ban; true if there was one.
    pub fn unban(&self, net: IpNet) -> bool {
        self.lock().bans.remove(&net.trunc())
    }

    /// Bans in force at `now`.
    pub fn bans(&self, now: Instant) -> Vec<(IpNet, Ban)> {
        self.lock().bans.list(now)
    }

    /// Client connections held now.
    pub fn clients(&self) -> u32 {
        self.lock().active_total
    }

    /// Whether moat holds more clients than the high-water mark, so the oldest connections
    /// that never sent a command should be closed.
    pub fn over_high_water(&self) -> bool {
        self.lock().active_total > self.config.high_water
    }

    /// Counts for metrics.
    pub fn stats(&self) -> GuardStats {
        let st = self.lock();
        let mut rejected: Vec<_> = st.rejected.iter().map(|(k, v)| (*k, *v)).collect();
        rejected.sort();
        GuardStats {
            admitted: st.admitted,
            rejected,
            bans_issued: st.bans_issued,
            bans_issued_admin: st.bans_issued_admin,
            evictions: st.evictions,
            tables: vec![
                ("sources", st.sources.len() as u64),
                ("subnets", st.subnets.len() as u64),
                ("active_ips", st.active_ip.len() as u64),
                ("active_subnets", st.active_subnet.len() as u64),
                ("bans", st.bans.len() as u64),
            ],
            clients: st.active_total,
            bans_active: st.bans.len(),
            sources: st.sources.len(),
        }
    }

    /// Sizes of every per-source table, to prove the memory bound in tests.
    #[doc(hidden)]
    pub fn table_sizes(&self) -> [usize; 5] {
        let st = self.lock();
        [
            st.sources.len(),
            st.subnets.len(),
            st.active_ip.len(),
            st.active_subnet.len(),
            st.bans.len(),
        ]
    }
}
