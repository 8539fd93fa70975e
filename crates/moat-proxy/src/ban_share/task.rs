//! The ban-share thread: on its own two connections to the backend Redis (one subscribed
//! to the channel, one for PUBLISH, SET and SCAN), it applies peers' bans to the guard and
//! publishes the guard's new local bans, reconnecting with [`Backoff`] when Redis goes.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use moat_guard::{BanReason, Guard};
use moat_resilience::Backoff;
use redis::{Commands, Connection, IntoConnectionInfo};

use super::message::{BanMessage, Reason, Rejected};
use super::rate::PerSecond;
use crate::Metrics;
use crate::config::Config;

/// How often the guard's bans are checked for new local ones, and the longest wait for a
/// message before checking.
const TICK: Duration = Duration::from_millis(50);

/// Keys read at start per SCAN call.
const SCAN_COUNT: usize = 200;

/// Longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Dropped messages are logged at most once per this long (with the count since).
const LOG_EVERY: Duration = Duration::from_secs(10);

use crate::relayed::PEER_NOTE;

/// What the thread needs, fixed at start.
pub(crate) struct Setup {
    pub(crate) config: Arc<Config>,
    pub(crate) secret: Vec<u8>,
    pub(crate) instance: String,
    pub(crate) guard: Arc<Guard>,
    pub(crate) metrics: Arc<Metrics>,
    /// The primary the Sentinels name, followed at each reconnection (`backend.sentinels`).
    pub(crate) primary: Option<Arc<crate::sentinel::Primary>>,
}

/// What the thread remembers across reconnections.
struct State {
    setup: Setup,
    /// Local bans already published, with their end.
    published: HashMap<IpNet, Instant>,
    /// Bans applied from peers, with their end.
    held: HashMap<IpNet, Instant>,
    /// The guard's bans at the last listing, with their end.
    local: HashMap<IpNet, Instant>,
    /// The guard's ban generation at the last listing.
    seen: Option<u64>,
    /// Local bans left unpublished by the rate limit.
    pending: bool,
    apply_rate: PerSecond,
    publish_rate: PerSecond,
    dropped_since_log: u64,
    last_log: Option<Instant>,
}

/// Runs until `stop` is dropped.
pub(crate) fn run(setup: Setup, stop: &mpsc::Receiver<()>) {
    let per_sec = setup.config.ban_share.max_per_sec;
    let mut st = State {
        setup,
        published: HashMap::new(),
        held: HashMap::new(),
        local: HashMap::new(),
        seen: None,
        pending: true,
        apply_rate: PerSecond::new(per_sec),
        publish_rate: PerSecond::new(per_sec),
        dropped_since_log: 0,
        last_log: None,
    };
    let mut backoff = Backoff::new(Duration::from_millis(100), MAX_BACKOFF);
    let mut rng = rand::rng();
    let mut failing = false;
    loop {
        match session(&mut st, stop, &mut backoff, &mut failing) {
            Ok(()) => return,
            Err(e) => {
                st.setup
                    .metrics
                    .ban_share_errors
                    .fetch_add(1, Ordering::Relaxed);
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(
                        error = %e,
                        "ban_share: lost the backend Redis; reconnecting (local bans are \
                         published once it is back)"
                    );
                }
            }
        }
        let until = Instant::now() + backoff.next_delay(&mut rng);
        while Instant::now() < until {
            if stopped(stop) {
                return;
            }
            std::thread::sleep(TICK.min(until.saturating_duration_since(Instant::now())));
        }
    }
}

fn stopped(stop: &mpsc::Receiver<()>) -> bool {
    matches!(
        stop.try_recv(),
        Err(mpsc::TryRecvError::Disconnected) | Ok(())
    )
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn connect(
    config: &Config,
    primary: Option<&crate::sentinel::Primary>,
) -> redis::RedisResult<Connection> {
    let b = &config.backend;
    let address = match primary {
        Some(p) => p.current().addr.ok_or_else(|| {
            redis::RedisError::from((
                redis::ErrorKind::Io,
                "no primary known yet from the Sentinels",
            ))
        })?,
        None => b.address,
    };
    let info = redis::ConnectionAddr::Tcp(address.ip().to_string(), address.port())
        .into_connection_info()?;
    let mut settings = info.redis_settings().clone();
    if let Some(user) = &b.username {
        settings = settings.set_username(user);
    }
    if let Some(password) = &b.password {
        settings = settings.set_password(password);
    }
    let info = info.set_redis_settings(settings);
    let con = redis::Client::open(info)?.get_connection_with_timeout(b.connect_timeout)?;
    con.set_write_timeout(Some(b.connect_timeout.max(Duration::from_secs(1))))?;
    Ok(con)
}

/// One connected stretch: subscribe, read the keys, then serve until stopped (Ok) or
/// Redis fails (Err).
fn session(
    st: &mut State,
    stop: &mpsc::Receiver<()>,
    backoff: &mut Backoff,
    failing: &mut bool,
) -> redis::RedisResult<()> {
    let config = st.setup.config.clone();
    let share = &config.ban_share;
    let primary = st.setup.primary.clone();
    let mut sub = connect(&config, primary.as_deref())?;
    let mut cmd = connect(&config, primary.as_deref())?;
    cmd.set_read_timeout(Some(
        config.backend.connect_timeout.max(Duration::from_secs(1)),
    ))?;
    let mut pubsub = sub.as_pubsub();
    // Subscribed before the keys are read, so no ban falls between the two.
    pubsub.subscribe(&share.channel)?;
    pubsub.set_read_timeout(Some(TICK))?;
    load(st, &mut cmd)?;
    backoff.reset();
    if std::mem::take(failing) {
        tracing::info!("ban_share: connected to the backend Redis again");
    } else {
        tracing::info!(
            channel = %share.channel, instance = %st.setup.instance,
            "ban_share: sharing bans through the backend Redis"
        );
    }
    // Everything is published again after a reconnection: peers may have missed it.
    st.published.clear();
    st.pending = true;
    let mut last_step = None::<Instant>;
    loop {
        if stopped(stop) {
            return Ok(());
        }
        match pubsub.get_message() {
            Ok(msg) => receive(st, msg.get_payload_bytes(), true),
            Err(e) if e.is_timeout() => {}
            Err(e) => return Err(e),
        }
        let now = Instant::now();
        if last_step.is_none_or(|t| now.saturating_duration_since(t) >= TICK) {
            last_step = Some(now);
            publish_new(st, &mut cmd, now)?;
        }
    }
}

/// Reads the bans in force from the keys (at most `max_held`).
fn load(st: &mut State, cmd: &mut Connection) -> redis::RedisResult<()> {
    let share = &st.setup.config.ban_share;
    let pattern = format!("{}*", redis_glob_escape(&share.key_prefix));
    let max = share.max_held;
    let mut cursor: u64 = 0;
    let mut seen = 0usize;
    // Bounded: one pass of SCAN, stopping at max_held keys.
    for _ in 0..(max / SCAN_COUNT + 2).saturating_mul(64) {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .query(cmd)?;
        for key in keys {
            if seen >= max {
                return Ok(());
            }
            seen += 1;
            let value: Option<Vec<u8>> = cmd.get(&key)?;
            if let Some(raw) = value {
                receive(st, &raw, false);
            }
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    Ok(())
}

fn redis_glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Checks and applies one message (from the channel, or a key read at start: keys are
/// old by design, so only channel messages are checked for freshness and rate).
fn receive(st: &mut State, raw: &[u8], live: bool) {
    let now = Instant::now();
    match check_and_apply(st, raw, live, now) {
        Ok(()) => {}
        Err(why) => {
            let m = &st.setup.metrics;
            m.ban_share_rejected[why as usize].fetch_add(1, Ordering::Relaxed);
            st.dropped_since_log += 1;
            if st
                .last_log
                .is_none_or(|t| now.saturating_duration_since(t) >= LOG_EVERY)
            {
                tracing::warn!(
                    reason = why.label(),
                    dropped = st.dropped_since_log,
                    "ban_share: dropped ban messages (count since the last such line)"
                );
                st.last_log = Some(now);
                st.dropped_since_log = 0;
            }
        }
    }
}

fn check_and_apply(st: &mut State, raw: &[u8], live: bool, now: Instant) -> Result<(), Rejected> {
    let share = &st.setup.config.ban_share;
    let msg = BanMessage::verify(raw, &st.setup.secret)?;
    if msg.instance == st.setup.instance {
        return Ok(());
    }
    let now_ms = unix_ms();
    if live {
        msg.check_fresh(now_ms, share.max_age)?;
    }
    let left = msg.until_ms.saturating_sub(now_ms);
    if left == 0 {
        // Over already: nothing to apply.
        return if live { Err(Rejected::Stale) } else { Ok(()) };
    }
    let length = Duration::from_millis(left).clamp(Duration::from_secs(1), share.max_ban);
    let until = now + length;
    if st.local.get(&msg.net).is_some_and(|end| *end >= until) {
        // Banned here at least as long already.
        return Ok(());
    }
    st.held.retain(|_, end| *end > now);
    if !st.held.contains_key(&msg.net) && st.held.len() >= share.max_held {
        return Err(Rejected::Full);
    }
    if live && !st.apply_rate.take(now) {
        return Err(Rejected::RateLimited);
    }
    let note = format!("{PEER_NOTE}{} ({})", msg.instance, reason_label(msg.reason));
    let (net, ban) = st
        .setup
        .guard
        .ban_admin(msg.net, length, &note, now)
        .map_err(|_| Rejected::Refused)?;
    st.held.insert(net, ban.until);
    st.local.insert(net, ban.until);
    st.setup
        .metrics
        .ban_share_applied
        .fetch_add(1, Ordering::Relaxed);
    tracing::debug!(%net, from = %msg.instance, "ban_share: applied a peer's ban");
    Ok(())
}

fn reason_label(r: Reason) -> &'static str {
    match r {
        Reason::Strikes => "strikes",
        Reason::Admin => "admin",
    }
}

/// Publishes the guard's local bans not yet published (new, or lengthened), when its bans
/// moved or some were left over by the rate limit.
fn publish_new(st: &mut State, cmd: &mut Connection, now: Instant) -> redis::RedisResult<()> {
    let generation = st.setup.guard.ban_generation(now);
    if st.seen == Some(generation) && !st.pending {
        return Ok(());
    }
    st.seen = Some(generation);
    st.pending = false;
    let bans = st.setup.guard.bans(now);
    st.local = bans.iter().map(|(net, ban)| (*net, ban.until)).collect();
    st.published.retain(|net, _| st.local.contains_key(net));
    let share = &st.setup.config.ban_share;
    let now_ms = unix_ms();
    for (net, ban) in &bans {
        let reason = match &ban.reason {
            BanReason::Admin(note) if crate::relayed::is_relayed(note) => {
                continue;
            }
            BanReason::Admin(_) => Reason::Admin,
            BanReason::Strikes => Reason::Strikes,
        };
        if st.published.get(net) == Some(&ban.until) {
            continue;
        }
        if !st.publish_rate.take(now) {
            st.pending = true;
            break;
        }
        let left = ban.until.saturating_duration_since(now);
        let left_ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX).max(1);
        let line = BanMessage {
            instance: st.setup.instance.clone(),
            sent_ms: now_ms,
            net: *net,
            until_ms: now_ms.saturating_add(left_ms),
            reason,
        }
        .encode(&st.setup.secret);
        let key = format!("{}{net}", share.key_prefix);
        redis::pipe()
            .cmd("SET")
            .arg(&key)
            .arg(&line)
            .arg("PX")
            .arg(left_ms)
            .ignore()
            .cmd("PUBLISH")
            .arg(&share.channel)
            .arg(&line)
            .ignore()
            .query::<()>(cmd)?;
        st.published.insert(*net, ban.until);
        st.setup
            .metrics
            .ban_share_published
            .fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}
