//! The CrowdSec thread: every tick it pushes the guard's new local bans (as a machine) and,
//! every `poll_interval`, pulls the decision stream (as a bouncer) and applies it to the
//! guard. Each direction backs off on its own when the LAPI fails, and logs an error once
//! per change of error.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use moat_guard::{BanReason, Guard, MAX_BAN_NOTE};
use moat_resilience::Backoff;
use serde_json::Value;

use super::decision::{self, Verdict};
use super::lapi::{Lapi, LapiError};
use super::{Counter, NOTE};
use crate::Metrics;
use crate::ban_share::PerSecond;
use crate::config::Config;

/// How often the guard's bans are checked for new local ones.
const TICK: Duration = Duration::from_millis(50);

/// Longest pause between attempts while the LAPI fails.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Refused decisions are logged at most once per this long (with the count since).
const LOG_EVERY: Duration = Duration::from_secs(10);

/// What the thread needs, fixed at start.
pub(crate) struct Setup {
    pub(crate) config: Arc<Config>,
    pub(crate) password: Option<String>,
    pub(crate) bouncer_key: Option<String>,
    pub(crate) guard: Arc<Guard>,
    pub(crate) metrics: Arc<Metrics>,
}

/// One direction's retry state.
struct Retry {
    next: Instant,
    backoff: Backoff,
    /// The last error logged, until a success (an error is logged again only when it
    /// changes).
    failing: Option<String>,
}

impl Retry {
    fn new(now: Instant) -> Self {
        Self {
            next: now,
            backoff: Backoff::new(Duration::from_millis(200), MAX_BACKOFF),
            failing: None,
        }
    }
}

/// A network banned from CrowdSec decisions.
struct Held {
    /// The decisions banning it (the ban is lifted when the last is deleted).
    ids: HashSet<i64>,
    until: Instant,
}

struct State {
    setup: Setup,
    lapi: Lapi,
    /// Local bans already pushed, with their end.
    published: HashMap<IpNet, Instant>,
    /// The guard's ban generation at the last listing.
    seen: Option<u64>,
    /// Local bans left unpushed (rate limit, or a failure).
    pending: bool,
    push_rate: PerSecond,
    push: Retry,
    /// Networks banned from decisions.
    held: HashMap<IpNet, Held>,
    /// Whether the stream was read from the start since the last failure.
    synced: bool,
    /// When the whole list was last read.
    last_full: Option<Instant>,
    pull: Retry,
    refused_since_log: u64,
    last_refusal: &'static str,
    last_log: Option<Instant>,
}

/// Runs until `stop` is dropped.
pub(crate) fn run(setup: Setup, stop: &mpsc::Receiver<()>) {
    let cs = &setup.config.crowdsec;
    let now = Instant::now();
    let lapi = Lapi::new(&cs.lapi_url, cs.timeout, cs.max_response_bytes);
    let push_rate = PerSecond::new(cs.max_push_per_sec);
    tracing::info!(
        lapi = %cs.lapi_url, push = cs.push, pull = cs.pull,
        "crowdsec: sharing bans with the CrowdSec LAPI"
    );
    let mut st = State {
        setup,
        lapi,
        published: HashMap::new(),
        seen: None,
        pending: true,
        push_rate,
        push: Retry::new(now),
        held: HashMap::new(),
        synced: false,
        last_full: None,
        pull: Retry::new(now),
        refused_since_log: 0,
        last_refusal: "",
        last_log: None,
    };
    let mut rng = rand::rng();
    loop {
        if matches!(
            stop.try_recv(),
            Err(mpsc::TryRecvError::Disconnected) | Ok(())
        ) {
            return;
        }
        let now = Instant::now();
        if st.setup.password.is_some() && now >= st.push.next {
            let result = push_new(&mut st, now);
            after(&mut st, result, true, &mut rng);
        }
        if st.setup.bouncer_key.is_some() && now >= st.pull.next {
            let result = pull(&mut st, now);
            after(&mut st, result, false, &mut rng);
        }
        std::thread::sleep(TICK);
    }
}

/// Counts, logs (once per change) and schedules the next attempt of one direction.
fn after(st: &mut State, result: Result<(), LapiError>, push: bool, rng: &mut impl rand::Rng) {
    let now = Instant::now();
    let poll = st.setup.config.crowdsec.poll_interval;
    let metrics = st.setup.metrics.clone();
    let (retry, what) = if push {
        (&mut st.push, "pushing bans")
    } else {
        (&mut st.pull, "pulling decisions")
    };
    match result {
        Ok(()) => {
            retry.backoff.reset();
            if retry.failing.take().is_some() {
                tracing::info!("crowdsec: {what} works again");
            }
            retry.next = if push { now } else { now + poll };
        }
        Err(e) => {
            let counter = match e {
                LapiError::Auth { .. } => Counter::AuthErrors,
                _ => Counter::Errors,
            };
            metrics.crowdsec[counter as usize].fetch_add(1, Ordering::Relaxed);
            let text = e.to_string();
            if retry.failing.as_deref() != Some(text.as_str()) {
                tracing::error!(error = %text, "crowdsec: {what} failed; retrying with backoff");
                retry.failing = Some(text);
            }
            retry.next = now + retry.backoff.next_delay(rng);
            if push {
                st.pending = true;
            } else {
                // The stream is read from the start again: what changed meanwhile is
                // found by comparing with what is held.
                st.synced = false;
            }
        }
    }
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn count(st: &State, c: Counter) {
    st.setup.metrics.crowdsec[c as usize].fetch_add(1, Ordering::Relaxed);
}

/// Pushes the guard's local bans not yet pushed (new, or lengthened), when its bans moved
/// or some were left over.
fn push_new(st: &mut State, now: Instant) -> Result<(), LapiError> {
    let generation = st.setup.guard.ban_generation(now);
    if st.seen == Some(generation) && !st.pending {
        return Ok(());
    }
    st.seen = Some(generation);
    st.pending = false;
    let bans = st.setup.guard.bans(now);
    st.published
        .retain(|net, _| bans.iter().any(|(n, _)| n == net));
    let cs = &st.setup.config.crowdsec;
    let machine = cs.machine_id.clone().unwrap_or_default();
    let mut alerts = Vec::new();
    let mut sent = Vec::new();
    let at = unix_secs();
    for (net, ban) in &bans {
        let reason = match &ban.reason {
            // Not this moat's: CrowdSec or a peer already has it.
            BanReason::Admin(note) if crate::relayed::is_relayed(note) => {
                continue;
            }
            BanReason::Admin(_) => "admin",
            BanReason::Strikes => "strikes",
        };
        if st.published.get(net) == Some(&ban.until) {
            continue;
        }
        if !st.push_rate.take(now) {
            st.pending = true;
            break;
        }
        let left = ban.until.saturating_duration_since(now);
        let scenario = decision::scenario(&machine, reason);
        alerts.push(decision::alert(*net, left, &scenario, at));
        sent.push((*net, ban.until));
    }
    if alerts.is_empty() {
        return Ok(());
    }
    let password = st.setup.password.clone().unwrap_or_default();
    st.lapi
        .push(&Value::Array(alerts), &machine, &password, now)?;
    for (net, until) in sent {
        st.published.insert(net, until);
        count(st, Counter::Pushed);
    }
    Ok(())
}

/// Reads the decision stream once and applies it.
fn pull(st: &mut State, now: Instant) -> Result<(), LapiError> {
    let key = st.setup.bouncer_key.clone().unwrap_or_default();
    let resync = st.setup.config.crowdsec.resync_interval;
    let startup = !st.synced
        || st
            .last_full
            .is_none_or(|t| now.saturating_duration_since(t) >= resync);
    let body = st.lapi.stream(&key, startup)?;
    let (new, deleted) = decision::parse_stream(&body).map_err(LapiError::Bad)?;
    st.synced = true;
    if startup {
        st.last_full = Some(now);
    }
    st.held.retain(|_, h| h.until > now);
    let bans: HashMap<IpNet, (Instant, bool)> = st
        .setup
        .guard
        .bans(now)
        .into_iter()
        .map(|(net, ban)| {
            let ours = matches!(&ban.reason, BanReason::Admin(n) if n.starts_with(NOTE));
            (net, (ban.until, ours))
        })
        .collect();
    let lift = |st: &mut State, net: IpNet| {
        st.held.remove(&net);
        if bans.get(&net).is_some_and(|(_, ours)| *ours) && st.setup.guard.unban(net) {
            count(st, Counter::Lifted);
        }
    };
    if startup {
        // Everything in force is in `new`: a decision held but absent was deleted meanwhile.
        let live: HashSet<i64> = new
            .iter()
            .filter_map(|d| d.get("id").and_then(Value::as_i64))
            .collect();
        let gone: Vec<IpNet> = st
            .held
            .iter_mut()
            .filter_map(|(net, h)| {
                h.ids.retain(|id| live.contains(id));
                h.ids.is_empty().then_some(*net)
            })
            .collect();
        for net in gone {
            lift(st, net);
        }
    }
    for d in &deleted {
        let Ok((id, net)) = decision::target(d) else {
            continue;
        };
        let empty = st.held.get_mut(&net).is_some_and(|h| {
            h.ids.remove(&id);
            h.ids.is_empty()
        });
        if empty {
            lift(st, net);
        }
    }
    let cs = &st.setup.config.crowdsec;
    let (max_ban, max_held) = (cs.max_ban, cs.max_held);
    let machine = cs.machine_id.clone();
    for d in &new {
        let ban = match decision::read(d, max_ban) {
            Verdict::Ban(b) => b,
            Verdict::Expired => continue,
            Verdict::Ignored => {
                count(st, Counter::Ignored);
                continue;
            }
            Verdict::Refused(why) => {
                refused(st, why, now);
                continue;
            }
        };
        if decision::is_own(&ban.scenario, machine.as_deref()) {
            // This moat's own ban, back from the LAPI: in force here already.
            continue;
        }
        let until = now + ban.length;
        if let Some(h) = st.held.get_mut(&ban.net) {
            // Known already (a full read again), or banned at least as long: nothing new.
            if !h.ids.insert(ban.id) || h.until >= until {
                continue;
            }
        } else if st.held.len() >= max_held {
            refused(st, "max_held reached", now);
            continue;
        } else if bans
            .get(&ban.net)
            .is_some_and(|(end, ours)| !ours && *end >= until)
        {
            // Banned here at least as long already, by moat itself.
            continue;
        }
        let mut note = format!("{NOTE}{}", ban.scenario);
        if note.len() > MAX_BAN_NOTE {
            let mut cut = MAX_BAN_NOTE;
            while !note.is_char_boundary(cut) {
                cut -= 1;
            }
            note.truncate(cut);
        }
        match st.setup.guard.ban_admin(ban.net, ban.length, &note, now) {
            Ok((net, b)) => {
                let h = st.held.entry(net).or_insert_with(|| Held {
                    ids: HashSet::new(),
                    until: b.until,
                });
                h.ids.insert(ban.id);
                h.until = b.until;
                count(st, Counter::Applied);
                if ban.capped {
                    count(st, Counter::Capped);
                }
            }
            Err(_) => refused(st, "refused by the guard", now),
        }
    }
    Ok(())
}

/// Counts a refused decision and logs the refusals at most once per [`LOG_EVERY`].
fn refused(st: &mut State, why: &'static str, now: Instant) {
    count(st, Counter::Refused);
    st.refused_since_log += 1;
    st.last_refusal = why;
    if st
        .last_log
        .is_none_or(|t| now.saturating_duration_since(t) >= LOG_EVERY)
    {
        tracing::warn!(
            reason = st.last_refusal,
            refused = st.refused_since_log,
            "crowdsec: refused decisions (count since the last such line)"
        );
        st.last_log = Some(now);
        st.refused_since_log = 0;
    }
}
