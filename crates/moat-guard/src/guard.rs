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

use crate::bans::{Ban, BanReason, BanTable, ban_length};
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
    /// The client left more replies unread than it may (output limits, or the heaviest
    /// non-reader when unread output filled the budget): a slow-reader attack.
    SlowReader,
    /// The connection was closed to make room while it held a slot without real work
    /// (silent or keep-alive only): a strike, whatever it sent.
    Evicted,
    /// The connection ended (closed or timed out) after this many commands.
    Closed {
        /// Commands the connection ran.
        commands: u64,
    },
}

/// Per-address memory: rate state, strikes, last success, how often it was banned, and its
/// recent refusals (for the admin API's top sources).
#[derive(Debug, Clone, Copy, Default)]
struct Source {
    tat: Option<Instant>,
    strikes: u32,
    window_start: Option<Instant>,
    last_success: Option<Instant>,
    bans: u32,
    /// Refusals in the current streak (no gap longer than the strike window).
    refused: u32,
    last_refused: Option<Instant>,
}

impl Source {
    fn note_refusal(&mut self, now: Instant, window: Duration) {
        if self
            .last_refused
            .is_none_or(|t| now.saturating_duration_since(t) > window)
        {
            self.refused = 0;
        }
        self.refused = self.refused.saturating_add(1);
        self.last_refused = Some(now);
    }

    /// Refusals of the streak still running at `now`, 0 once it has ended.
    fn recent_refusals(&self, now: Instant, window: Duration) -> u32 {
        match self.last_refused {
            Some(t) if now.saturating_duration_since(t) <= window => self.refused,
            _ => 0,
        }
    }

    /// Strikes of the window still open at `now`, 0 once it has closed.
    fn recent_strikes(&self, now: Instant, window: Duration) -> u32 {
        match self.window_start {
            Some(t) if now.saturating_duration_since(t) <= window => self.strikes,
            _ => 0,
        }
    }
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
    /// Bans issued automatically.
    pub bans_issued: u64,
    /// Bans issued by an operator ([`Guard::ban_admin`]).
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

/// The settings in force and what is derived from them; swapped whole by
/// [`Guard::reconfigure`], so one admission sees one consistent set.
#[derive(Debug)]
struct Settings {
    config: Arc<GuardConfig>,
    trusted: NetList,
    allow: NetList,
    deny: NetList,
    ip_rate: Gcra,
    subnet_rate: Gcra,
}

impl Settings {
    fn new(config: GuardConfig) -> Arc<Self> {
        Arc::new(Self {
            trusted: NetList::new(&config.trusted),
            allow: NetList::new(&config.allow),
            deny: NetList::new(&config.deny),
            ip_rate: Gcra::new(config.ip_rate, config.ip_burst),
            subnet_rate: Gcra::new(config.subnet_rate, config.subnet_burst),
            config: Arc::new(config),
        })
    }
}

#[derive(Debug)]
struct State {
    /// Kept inside the lock every admission takes anyway, so a reload costs the
    /// admission path nothing more.
    settings: Arc<Settings>,
    sources: LruCache<IpAddr, Source>,
    subnets: LruCache<IpNet, Subnet>,
    /// Open connections by address and subnet. Entries exist only while connections do,
    /// so these hold at most `max_clients` entries each.
    active_ip: FxHashMap<IpAddr, u32>,
    active_subnet: FxHashMap<IpNet, u32>,
    active_total: u32,
    /// Connections a worker asked to close to make room, whose tickets are still held:
    /// the caps count `active_total - vacating`, so an eviction makes room at once.
    vacating: u32,
    bans: BanTable,
    rng: StdRng,
    admitted: u64,
    rejected: FxHashMap<&'static str, u64>,
    bans_issued: u64,
    bans_issued_admin: u64,
    evictions: u64,
    /// Reconfigurations applied: a new deny or trusted list changes what the kernel
    /// filter holds (see [`Guard::ban_generation`]).
    reconfigured: u64,
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

    /// Whether this admission took moat above the high-water mark, so a connection doing
    /// no real work should be closed to make room.
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
        // Any close fulfils a pending eviction: at worst the caps see fewer free slots
        // than there are, never more.
        st.vacating = st.vacating.saturating_sub(1);
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

/// Clients that stay once the pending evictions are done.
fn live(st: &State) -> u32 {
    st.active_total.saturating_sub(st.vacating)
}

/// Frees a slot with `make_room` when `refusal` would refuse for lack of capacity; true
/// when a slot was freed (the admission then needs no more shedding).
fn room_or(
    st: &mut State,
    refusal: Reject,
    make_room: &mut dyn FnMut() -> bool,
) -> Result<bool, Reject> {
    if make_room() {
        st.vacating += 1;
        Ok(true)
    } else {
        Err(refusal)
    }
}

/// The checks for an untrusted source; `Ok(true)` when a slot was made for it.
fn check_untrusted(
    settings: &Settings,
    st: &mut State,
    ip: IpAddr,
    subnet: IpNet,
    now: Instant,
    make_room: &mut dyn FnMut() -> bool,
) -> Result<bool, Reject> {
    let c = &settings.config;
    if settings.deny.contains(ip) || (!settings.allow.is_empty() && !settings.allow.contains(ip)) {
        return Err(Reject::Denied);
    }
    if let Some(until) = st.bans.covering(ip, now) {
        return Err(Reject::Banned(until.saturating_duration_since(now)));
    }
    // An address's rate is charged for every attempt, refused or not, so hammering
    // keeps it refused. Its subnet is charged only for attempts the address's own rate
    // let through: one flooder must not use up its neighbours' share.
    let source = entry(&mut st.sources, ip, &mut st.evictions);
    let known = source
        .last_success
        .is_some_and(|t| now.saturating_duration_since(t) <= c.recent_success);
    // A known source's refused attempts cost it nothing: it gets its rate while retrying.
    let ip_ok = if known {
        settings.ip_rate.attempt_lenient(&mut source.tat, now)
    } else {
        settings.ip_rate.attempt(&mut source.tat, now)
    };
    if !ip_ok {
        return Err(Reject::IpRate);
    }
    let net = entry(&mut st.subnets, subnet, &mut st.evictions);
    if !settings.subnet_rate.attempt(&mut net.tat, now) {
        return Err(Reject::SubnetRate);
    }
    if st.active_ip.get(&ip).copied().unwrap_or(0) >= c.max_per_ip {
        return Err(Reject::TooManyFromIp);
    }
    if st.active_subnet.get(&subnet).copied().unwrap_or(0) >= c.max_per_subnet {
        return Err(Reject::TooManyFromSubnet);
    }
    // Capacity last: evicting a hoarder is worth it only for a connection every other
    // check let through.
    if live(st) >= c.max_clients - c.reserved_for_trusted {
        return room_or(st, Reject::Full, make_room);
    }
    if live(st) >= c.high_water && !known {
        return room_or(st, Reject::Shed, make_room);
    }
    Ok(false)
}

/// Whether `ip` ran a successful command within `recent_success` of `now`.
fn known_at(st: &State, settings: &Settings, ip: IpAddr, now: Instant) -> bool {
    st.sources
        .peek(&ip)
        .and_then(|s| s.last_success)
        .is_some_and(|t| now.saturating_duration_since(t) <= settings.config.recent_success)
}

/// Counts a strike; enough of them within the window ban the source.
fn strike(settings: &Settings, st: &mut State, ip: IpAddr, now: Instant) {
    if settings.trusted.contains(ip) {
        return;
    }
    let c = &settings.config;
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
            reason: BanReason::Strikes,
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
                reason: BanReason::Strikes,
            },
        );
        st.bans_issued += 1;
    }
}

impl Guard {
    /// A guard with validated settings.
    pub fn new(config: GuardConfig) -> Arc<Self> {
        let cap = |n: usize| NonZeroUsize::new(n.max(1)).unwrap_or(NonZeroUsize::MIN);
        let state = State {
            settings: Settings::new(config.clone()),
            sources: LruCache::new(cap(config.table_capacity)),
            subnets: LruCache::new(cap(config.table_capacity / 4)),
            active_ip: FxHashMap::default(),
            active_subnet: FxHashMap::default(),
            active_total: 0,
            vacating: 0,
            bans: BanTable::new(config.ban_capacity),
            rng: StdRng::from_os_rng(),
            admitted: 0,
            rejected: FxHashMap::default(),
            bans_issued: 0,
            bans_issued_admin: 0,
            evictions: 0,
            reconfigured: 0,
        };
        Arc::new(Self {
            state: Mutex::new(state),
        })
    }

    /// The settings in force (the last ones [`Guard::reconfigure`] applied).
    pub fn config(&self) -> Arc<GuardConfig> {
        self.lock().settings.config.clone()
    }

    /// Applies new (validated) settings to the admissions and events that follow. What the
    /// guard remembers is kept: per-source rate and strike state, bans, the counts of open
    /// connections (a lowered cap refuses new connections; it closes none). The tables'
    /// capacities (`table_capacity`, `ban_capacity`) are fixed at start.
    pub fn reconfigure(&self, config: GuardConfig) {
        let settings = Settings::new(config);
        let mut st = self.lock();
        st.settings = settings;
        st.reconfigured = st.reconfigured.wrapping_add(1);
    }

    /// A number that changes whenever the ban set or the settings change: a ban inserted,
    /// lifted or ended by `now` (ended bans are swept out here), or a reconfiguration. A
    /// watcher rebuilding something from [`Guard::bans`] and the deny list polls it and
    /// rebuilds only when it moved. Cheap: one lock, no copy.
    pub fn ban_generation(&self, now: Instant) -> u64 {
        let mut st = self.lock();
        st.bans.sweep(now);
        st.bans.generation().wrapping_add(st.reconfigured)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update is complete before the next statement; a panicking holder cannot
        // leave the counts half-changed.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `ip` is on a trusted network.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.lock().settings.trusted.contains(ip)
    }

    /// Decides on a just-accepted connection from `ip` at `now`.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<Ticket, Reject> {
        self.admit_making_room(ip, now, &mut || false)
    }

    /// [`Guard::admit`], except that a connection refused only for capacity (`Full`, or
    /// `Shed` above the high-water mark) is admitted when `make_room` closes another
    /// connection (returns true): that slot counts as free at once, though its ticket is
    /// still held until the evicted session ends. Called under the guard's lock: it must
    /// only mark a connection for closing.
    pub fn admit_making_room(
        self: &Arc<Self>,
        ip: IpAddr,
        now: Instant,
        make_room: &mut dyn FnMut() -> bool,
    ) -> Result<Ticket, Reject> {
        let ip = canonical(ip);
        let mut st = self.lock();
        let settings = st.settings.clone();
        let trusted = settings.trusted.contains(ip);
        let subnet = subnet_of(
            ip,
            settings.config.subnet_prefix_v4,
            settings.config.subnet_prefix_v6,
        );
        let verdict = if trusted {
            // Trusted networks skip per-source limits and may use the reserve.
            if live(&st) >= settings.config.max_clients {
                room_or(&mut st, Reject::Full, make_room)
            } else {
                Ok(false)
            }
        } else {
            check_untrusted(&settings, &mut st, ip, subnet, now, make_room)
        };
        match verdict {
            Ok(made_room) => {
                st.active_total += 1;
                *st.active_ip.entry(ip).or_default() += 1;
                *st.active_subnet.entry(subnet).or_default() += 1;
                st.admitted += 1;
                // A slot made for this admission is all the shedding it calls for.
                let over_high_water = !made_room && live(&st) > settings.config.high_water;
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
                // Only sources the checks already looked up: a denied or banned flood must
                // not churn the table.
                if !matches!(reject, Reject::Denied | Reject::Banned(_))
                    && let Some(source) = st.sources.peek_mut(&ip)
                {
                    source.note_refusal(now, settings.config.strike_window);
                }
                // A source with a recent successful command is refused but not struck for
                // coming too fast or too many: a real client that lost its connections
                // reconnects on every command, and banning it would turn moat's own
                // hiccup into an outage. Its silent connections, failed AUTHs and protocol
                // errors still strike.
                if reject.strikes() && !known_at(&st, &settings, ip, now) {
                    strike(&settings, &mut st, ip, now);
                }
                Err(reject)
            }
        }
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
            // Moat closed it to make room: a strike, but not for a source known to run real
            // commands (a client of theirs can be evicted before moat read its first
            // command, when moat is starved of descriptors).
            Event::Evicted => {
                let settings = st.settings.clone();
                if !known_at(st, &settings, ip, now) {
                    strike(&settings, st, ip, now);
                }
            }
            Event::AuthFailed
            | Event::ProtocolError
            | Event::SlowRequest
            | Event::SlowReader
            | Event::Closed { commands: 0 } => {
                let settings = st.settings.clone();
                strike(&settings, st, ip, now);
            }
            Event::Closed { .. } => {}
        }
    }

    /// Bans `net` (host bits ignored) for `length` from `now`, without a note; false when
    /// [`Guard::ban_admin`] refuses it (a trusted network, this host's loopback address...).
    pub fn ban(&self, net: IpNet, length: Duration, now: Instant) -> bool {
        self.ban_admin(net.trunc(), length, "", now).is_ok()
    }

    /// An operator's ban of `net` for `length` from `now`, with a note saying why. Refuses,
    /// changing nothing: networks overlapping a trusted one, networks holding this host's
    /// own loopback address (`127.0.0.1`, `::1`: local tools), host bits set, prefixes
    /// wider than /8 (IPv4) or /16 (IPv6), unspecified addresses, lengths outside 1s..1
    /// year and notes longer than [`MAX_BAN_NOTE`]. An IPv4-mapped IPv6 network is banned
    /// as the IPv4 network. Returns the network as banned and the ban.
    pub fn ban_admin(
        &self,
        net: IpNet,
        length: Duration,
        note: &str,
        now: Instant,
    ) -> Result<(IpNet, Ban), BanError> {
        let mut st = self.lock();
        let net = check_admin_ban(net, &st.settings.trusted)?;
        if length < Duration::from_secs(1) || length > MAX_BAN_LENGTH {
            return Err(BanError::Length {
                max_secs: MAX_BAN_LENGTH.as_secs(),
            });
        }
        if note.len() > MAX_BAN_NOTE {
            return Err(BanError::NoteTooLong { max: MAX_BAN_NOTE });
        }
        let repeat = st.bans.active(&net, now).map_or(0, |b| b.repeat + 1);
        let ban = Ban {
            until: now + length,
            repeat,
            reason: BanReason::Admin(note.into()),
        };
        st.bans.insert(net, ban.clone());
        st.bans_issued_admin += 1;
        Ok((net, ban))
    }

    /// Lifts a ban; true if there was one.
    pub fn unban(&self, net: IpNet) -> bool {
        self.lock().bans.remove(&mapped_to_v4(net).trunc())
    }

    /// Bans in force at `now`.
    pub fn bans(&self, now: Instant) -> Vec<(IpNet, Ban)> {
        self.lock().bans.list(now)
    }

    /// Client connections held now.
    pub fn clients(&self) -> u32 {
        self.lock().active_total
    }

    /// Whether moat holds more clients than the high-water mark (pending evictions
    /// excluded), so connections doing no real work should be closed.
    pub fn over_high_water(&self) -> bool {
        let st = self.lock();
        live(&st) > st.settings.config.high_water
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

    /// The `n` (at most [`MAX_TOP`]) sources holding the most connections, and the `n`
    /// remembered sources with the most recent refusals and strikes. Bounded work under the
    /// lock: the first list is a pass over the open connections' map (at most `max_clients`
    /// entries), the second over the [`TOP_SCAN`] most recently seen sources.
    pub fn top_sources(&self, n: usize, now: Instant) -> TopSources {
        let n = n.min(MAX_TOP);
        let st = self.lock();
        let window = st.settings.config.strike_window;
        let mut by_connections: Vec<SourceConnections> = st
            .active_ip
            .iter()
            .map(|(ip, count)| SourceConnections {
                ip: *ip,
                connections: *count,
            })
            .collect();
        top_n(&mut by_connections, n, |s| {
            (std::cmp::Reverse(s.connections), s.ip)
        });
        let scanned = st.sources.len().min(TOP_SCAN);
        let mut by_refusals: Vec<SourceRefusals> = st
            .sources
            .iter()
            .take(TOP_SCAN)
            .filter_map(|(ip, s)| {
                let refusals = s.recent_refusals(now, window);
                let strikes = s.recent_strikes(now, window);
                (refusals > 0 || strikes > 0).then_some(SourceRefusals {
                    ip: *ip,
                    refusals,
                    strikes,
                    bans: s.bans,
                    banned_for: None,
                })
            })
            .collect();
        top_n(&mut by_refusals, n, |s| {
            (
                std::cmp::Reverse(s.refusals),
                std::cmp::Reverse(s.strikes),
                s.ip,
            )
        });
        for s in &mut by_refusals {
            s.banned_for = st
                .bans
                .covering(s.ip, now)
                .map(|until| until.saturating_duration_since(now));
        }
        TopSources {
            by_connections,
            by_refusals,
            scanned,
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

/// Most entries [`Guard::top_sources`] returns per list.
pub const MAX_TOP: usize = 1000;
/// Most recently seen sources [`Guard::top_sources`] examines for refusals and strikes.
pub const TOP_SCAN: usize = 16_384;
/// Longest admin ban.
pub const MAX_BAN_LENGTH: Duration = Duration::from_secs(365 * 24 * 3600);
/// Longest note an admin ban keeps, in bytes.
pub const MAX_BAN_NOTE: usize = 256;

/// Sorts `items` by `key` and keeps the first `n`, in linear time for the selection.
fn top_n<T, K: Ord>(items: &mut Vec<T>, n: usize, key: impl Fn(&T) -> K) {
    if n == 0 {
        items.clear();
        return;
    }
    if items.len() > n {
        items.select_nth_unstable_by_key(n - 1, &key);
        items.truncate(n);
    }
    items.sort_unstable_by_key(key);
}

/// One source in [`TopSources::by_connections`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceConnections {
    /// The address.
    pub ip: IpAddr,
    /// Connections it holds now.
    pub connections: u32,
}

/// One source in [`TopSources::by_refusals`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRefusals {
    /// The address.
    pub ip: IpAddr,
    /// Connections refused in its current streak (rates, caps, shedding; no gap longer than
    /// `strike_window`).
    pub refusals: u32,
    /// Strikes in its current strike window.
    pub strikes: u32,
    /// Times the guard banned it.
    pub bans: u32,
    /// Time left on a ban covering it, if any.
    pub banned_for: Option<Duration>,
}

/// The heaviest sources now, for the admin API's `/sources`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopSources {
    /// Most connections held first.
    pub by_connections: Vec<SourceConnections>,
    /// Most recent refusals (then strikes) first; sources with neither are left out.
    pub by_refusals: Vec<SourceRefusals>,
    /// Sources examined for `by_refusals` (at most [`TOP_SCAN`], most recently seen first).
    pub scanned: usize,
    /// Sources remembered in all.
    pub sources: usize,
}

/// Why [`Guard::ban_admin`] refused a ban; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BanError {
    /// The network overlaps a trusted network, which is never banned.
    #[error("{net} overlaps the trusted network {trusted}: trusted networks are never banned")]
    Trusted {
        /// The network asked for.
        net: IpNet,
        /// The trusted network it overlaps.
        trusted: IpNet,
    },
    /// The network holds this host's own loopback address, which local tools use.
    #[error(
        "{net} contains {addr}, this host's own loopback address (moat ctl, health checks); \
         ban other loopback addresses or a narrower network"
    )]
    Loopback {
        /// The network asked for.
        net: IpNet,
        /// The loopback address it holds.
        addr: IpAddr,
    },
    /// Bits beyond the prefix are set: probably a typo.
    #[error("{net} has host bits set: did you mean {}?", .net.trunc())]
    HostBits {
        /// The network asked for.
        net: IpNet,
    },
    /// The prefix is too short: the ban would cover too much of the internet.
    #[error("{net} is too wide: the prefix must be at least /{min}")]
    TooWide {
        /// The network asked for.
        net: IpNet,
        /// The shortest prefix allowed for its family.
        min: u8,
    },
    /// The unspecified address (`0.0.0.0`, `::`) is no client's.
    #[error("{net} is the unspecified address, never a client's")]
    Unspecified {
        /// The network asked for.
        net: IpNet,
    },
    /// The length is zero or longer than a year.
    #[error("a ban must last between 1s and {max_secs}s")]
    Length {
        /// The longest ban, in seconds.
        max_secs: u64,
    },
    /// The note is too long.
    #[error("the ban's reason must be at most {max} bytes")]
    NoteTooLong {
        /// The longest note, in bytes.
        max: usize,
    },
}

/// An IPv4-mapped IPv6 network (`::ffff:a.b.c.d/N`, N >= 96) as the IPv4 network, since the
/// guard sees IPv4 peers of a dual-stack listener as IPv4.
fn mapped_to_v4(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => v6
            .network()
            .to_ipv4_mapped()
            .and_then(|v4| ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).ok())
            .map_or(net, IpNet::V4),
        _ => net,
    }
}

/// The checks of [`Guard::ban_admin`] on the network itself.
fn check_admin_ban(net: IpNet, trusted: &NetList) -> Result<IpNet, BanError> {
    let net = mapped_to_v4(net);
    if net.trunc() != net {
        return Err(BanError::HostBits { net });
    }
    let min = if net.addr().is_ipv4() { 8 } else { 16 };
    if net.prefix_len() < min {
        return Err(BanError::TooWide { net, min });
    }
    if net.addr().is_unspecified() {
        return Err(BanError::Unspecified { net });
    }
    if let Some(trusted) = trusted.overlapping(&net) {
        return Err(BanError::Trusted { net, trusted });
    }
    let own: [IpAddr; 2] = [
        IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
    ];
    if let Some(addr) = own.into_iter().find(|a| net.contains(a)) {
        return Err(BanError::Loopback { net, addr });
    }
    Ok(net)
}
