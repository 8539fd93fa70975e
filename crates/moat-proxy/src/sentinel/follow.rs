//! The follower thread: asks every Sentinel for the primary, checks the named server's
//! `ROLE`, and publishes the verified address to the workers; listens for `+switch-master`
//! on every Sentinel and asks again at once when one comes, when a worker doubts the
//! primary, and every `backend.sentinel_refresh` in case a message was lost. While no
//! Sentinel answers, the last verified primary stays in use and attempts back off. When a
//! failover's leader announces the replica it promotes, that replica is asked for its role
//! every few milliseconds and used as soon as it says master.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use moat_protocol::Value;
use moat_resilience::Backoff;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use super::answer::{self, Role, View};
use super::primary::Primary;
use crate::Metrics;
use crate::backend::handshake::Handshake;
use crate::config::Config;
use crate::net::Stream;

/// Replies from Sentinels and servers are small; deeper ones are refused.
const MAX_DEPTH: usize = 16;

/// Shortest pause between two looks: doubts and switch messages come in bursts (every
/// worker, every Sentinel), and one look answers them all.
const MIN_PAUSE: Duration = Duration::from_millis(50);

/// Delays between attempts while no Sentinel names a verified primary.
const RETRY_BASE: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// The channel Sentinels announce failovers on.
const SWITCH_CHANNEL: &str = "+switch-master";

/// Published by the failover's leader once the promoted replica reports itself master,
/// before `+switch-master` (which waits for the other replicas to be reconfigured): from
/// then on the leader names the new primary, and every write still sent to the old one
/// would be lost, so moat looks at once.
const PROMOTED_CHANNEL: &str = "+failover-state-reconf-slaves";

/// What the thread needs, fixed at start.
#[derive(Debug, Clone)]
struct Setup {
    sentinels: Vec<SocketAddr>,
    master_name: String,
    /// `AUTH` arguments for the Sentinels and for the servers (moat's backend login).
    sentinel_auth: Option<Vec<String>>,
    backend_auth: Option<Vec<String>>,
    timeout: Duration,
    refresh: Duration,
    primary: Arc<Primary>,
    metrics: Arc<Metrics>,
}

/// The running follower: the primary it maintains and its thread.
#[derive(Debug)]
pub(crate) struct Follower {
    pub(crate) primary: Arc<Primary>,
    pub(crate) thread: JoinHandle<()>,
}

fn auth_args(user: Option<&String>, password: Option<&String>) -> Option<Vec<String>> {
    let password = password?;
    Some(match user {
        Some(u) => vec!["AUTH".into(), u.clone(), password.clone()],
        None => vec!["AUTH".into(), password.clone()],
    })
}

/// Starts the follower when `backend.sentinels` is set, and waits (up to the connect
/// timeout per Sentinel, bounded) for its first look, so the first clients find the
/// primary known. Without a primary then, moat still starts: clients get a clear error
/// and the follower keeps trying.
pub(crate) fn start(
    config: &Config,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<Option<Follower>> {
    let b = &config.backend;
    let Some(master_name) = b.master_name.clone().filter(|_| !b.sentinels.is_empty()) else {
        return Ok(None);
    };
    let primary = Arc::new(Primary::new(master_name.clone()));
    let setup = Setup {
        sentinels: b.sentinels.clone(),
        master_name,
        sentinel_auth: auth_args(b.sentinel_username.as_ref(), b.sentinel_password.as_ref()),
        backend_auth: auth_args(b.username.as_ref(), b.password.as_ref()),
        timeout: b.connect_timeout,
        refresh: b.sentinel_refresh,
        primary: primary.clone(),
        metrics,
    };
    let (first_tx, first_rx) = std::sync::mpsc::channel();
    let wait = setup
        .timeout
        .saturating_mul(2 * u32::try_from(setup.sentinels.len()).unwrap_or(32))
        .min(Duration::from_secs(30));
    let thread = std::thread::Builder::new()
        .name("moat-sentinel".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "sentinel: cannot start the follower's runtime");
                    return;
                }
            };
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, follow(setup, first_tx, shutdown));
        })?;
    if first_rx.recv_timeout(wait).is_err() {
        tracing::warn!("sentinel: no answer yet; starting without a known primary");
    }
    Ok(Some(Follower { primary, thread }))
}

/// What a subscription tells the loop.
#[derive(Debug, Clone, Copy)]
enum Hint {
    /// Ask the Sentinels again.
    Look,
    /// A failover's leader is promoting this replica.
    Promoting(SocketAddr),
}

/// The event a failover's leader publishes when it has told a replica to become primary.
const PROMOTING_CHANNEL: &str = "+failover-state-wait-promotion";

/// How often, and how long, a replica being promoted is asked for its role.
const PROMOTION_POLL: Duration = Duration::from_millis(10);
const PROMOTION_WAIT: Duration = Duration::from_secs(10);

/// How long a primary adopted from its promotion is kept while the Sentinels still name
/// the old one (they name the new one once the leader has seen the promotion, about a
/// second later; other Sentinels follow its newer configuration).
const PROMOTION_HOLD: Duration = Duration::from_secs(30);

/// Asks the replica being promoted for its role until it says master (within
/// [`PROMOTION_WAIT`]): from that moment every write the old primary takes would be lost.
async fn await_promotion(setup: &Setup, addr: SocketAddr) -> bool {
    let deadline = tokio::time::Instant::now() + PROMOTION_WAIT;
    while tokio::time::Instant::now() < deadline {
        if let Ok(Role::Master) = role_of(setup, addr).await {
            return true;
        }
        tokio::time::sleep(PROMOTION_POLL).await;
    }
    false
}

/// Moves to the replica being promoted as soon as it says it is master (once per
/// promotion, however many Sentinels announce it).
async fn follow_promotion(
    setup: &Setup,
    addr: SocketAddr,
    promoted: &mut Option<(SocketAddr, tokio::time::Instant)>,
) {
    if promoted.is_some_and(|(p, _)| p == addr) || setup.primary.current().addr == Some(addr) {
        return;
    }
    if await_promotion(setup, addr).await {
        tracing::info!(primary = %addr, "sentinel: replica promoted; moving to it");
        adopt(setup, Some(addr));
        *promoted = Some((addr, tokio::time::Instant::now()));
    }
}

/// The follower's loop, until shutdown.
async fn follow(
    setup: Setup,
    first: std::sync::mpsc::Sender<()>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (hint_tx, mut hints) = mpsc::channel::<Hint>(16);
    // A primary adopted from its promotion, before the Sentinels name it.
    let mut promoted: Option<(SocketAddr, tokio::time::Instant)> = None;
    for &sentinel in &setup.sentinels {
        tokio::task::spawn_local(listen(setup.clone(), sentinel, hint_tx.clone()));
    }
    let mut backoff = Backoff::new(RETRY_BASE, RETRY_MAX);
    let mut failing = false;
    let mut first = Some(first);
    loop {
        let wait = match look(&setup).await {
            Ok(addr) => {
                backoff.reset();
                if std::mem::replace(&mut failing, false) {
                    tracing::info!(primary = %addr, "sentinel: primary verified again");
                }
                // The Sentinels may still name the old primary for a moment after a
                // promotion moat has seen: going back to it would lose writes.
                let hold = match promoted {
                    Some((p, since)) if p != addr && since.elapsed() < PROMOTION_HOLD => {
                        setup.primary.current().addr == Some(p)
                            && matches!(role_of(&setup, p).await, Ok(Role::Master))
                    }
                    _ => false,
                };
                if hold {
                    tracing::debug!(named = %addr, "sentinel: keeping the promoted primary until the Sentinels name it");
                } else {
                    promoted = None;
                    adopt(&setup, Some(addr));
                }
                setup.refresh
            }
            Err(why) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(
                        master = %setup.master_name,
                        primary = ?setup.primary.current().addr,
                        error = %why,
                        "sentinel: no verified primary; keeping the last one known and retrying"
                    );
                } else {
                    tracing::debug!(error = %why, "sentinel: still no verified primary");
                }
                // Still no answer: is the primary in use still one? A demoted one must not
                // keep taking writes (clients would get READONLY from it).
                if let Some(current) = setup.primary.current().addr
                    && let Ok(role @ Role::Other(_)) = role_of(&setup, current).await
                {
                    tracing::warn!(primary = %current, %role, "sentinel: the primary in use is no primary any more; dropping it");
                    adopt(&setup, None);
                }
                backoff.next_delay(&mut rand::rng()).max(MIN_PAUSE)
            }
        };
        if let Some(tx) = first.take() {
            let _ = tx.send(());
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            Some(hint) = hints.recv() => {
                if let Hint::Promoting(addr) = hint {
                    follow_promotion(&setup, addr, &mut promoted).await;
                }
            }
            () = setup.primary.doubted() => {}
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return;
                }
            }
        }
        tokio::time::sleep(MIN_PAUSE).await;
        while let Ok(hint) = hints.try_recv() {
            if let Hint::Promoting(addr) = hint {
                follow_promotion(&setup, addr, &mut promoted).await;
            }
        }
    }
}

/// Publishes `addr` to the workers; counts and logs a switch.
fn adopt(setup: &Setup, addr: Option<SocketAddr>) {
    let before = setup.primary.current().addr;
    if !setup.primary.set(addr) {
        return;
    }
    if let Ok(mut shown) = setup.metrics.sentinel_primary.write() {
        *shown = addr;
    }
    match (before, addr) {
        (Some(old), Some(new)) => {
            setup
                .metrics
                .sentinel_switches
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(master = %setup.master_name, %old, %new, "sentinel: primary switched; moving connections");
        }
        (None, Some(new)) => {
            tracing::info!(master = %setup.master_name, primary = %new, "sentinel: primary verified");
        }
        (_, None) => {}
    }
}

/// Asks every Sentinel and returns the best-ranked named address whose `ROLE` says master.
async fn look(setup: &Setup) -> Result<SocketAddr, String> {
    // Asked at once: one unreachable Sentinel costs its timeout once, not once per
    // Sentinel after it.
    let asks: Vec<_> = setup
        .sentinels
        .iter()
        .map(|&s| {
            let setup = setup.clone();
            tokio::task::spawn_local(async move { ask(&setup, s).await })
        })
        .collect();
    let mut views = Vec::new();
    let mut problems = Vec::new();
    for (sentinel, ask) in setup.sentinels.iter().zip(asks) {
        let answer = ask.await.unwrap_or_else(|e| Err(e.to_string()));
        match answer {
            Ok(view) => views.push(view),
            Err(e) => {
                setup
                    .metrics
                    .sentinel_errors
                    .fetch_add(1, Ordering::Relaxed);
                problems.push(format!("sentinel {sentinel}: {e}"));
            }
        }
    }
    for addr in answer::candidates(&views, setup.primary.current().addr) {
        match role_of(setup, addr).await {
            Ok(Role::Master) => return Ok(addr),
            Ok(Role::Unknown(why)) => {
                // Moat's login may not run ROLE: the Sentinels' word is all there is.
                tracing::debug!(primary = %addr, why, "sentinel: cannot check the primary's role; trusting the Sentinels");
                return Ok(addr);
            }
            Ok(role @ Role::Other(_)) => {
                setup
                    .metrics
                    .sentinel_errors
                    .fetch_add(1, Ordering::Relaxed);
                problems.push(format!(
                    "{addr} was named primary but its ROLE says {role}: refused"
                ));
            }
            Err(e) => {
                setup
                    .metrics
                    .sentinel_errors
                    .fetch_add(1, Ordering::Relaxed);
                problems.push(format!("{addr} was named primary but is unreachable: {e}"));
            }
        }
    }
    if problems.is_empty() {
        problems.push("no Sentinel configured".into());
    }
    Err(problems.join("; "))
}

/// Opens a connection and logs in with `auth`, within the timeout.
async fn connect(addr: SocketAddr, auth: Option<&Vec<String>>) -> Result<Stream, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let stream = Stream::from(tcp);
    if let Some(args) = auth {
        let args: Vec<&[u8]> = args.iter().map(String::as_bytes).collect();
        let reply = Handshake::new(&stream, MAX_DEPTH)
            .call(&args)
            .await
            .map_err(|e| e.to_string())?;
        if let Value::Error(e) = reply {
            return Err(format!("AUTH refused: {e}"));
        }
    }
    Ok(stream)
}

/// One Sentinel's view of the primary.
async fn ask(setup: &Setup, sentinel: SocketAddr) -> Result<View, String> {
    let name = setup.master_name.as_bytes();
    let work = async {
        let stream = connect(sentinel, setup.sentinel_auth.as_ref()).await?;
        let mut hs = Handshake::new(&stream, MAX_DEPTH);
        let reply = hs
            .call(&[b"SENTINEL", b"get-master-addr-by-name", name])
            .await
            .map_err(|e| e.to_string())?;
        let addr = answer::master_addr(&reply, &setup.master_name).map_err(|e| e.to_string())?;
        let reply = hs
            .call(&[b"SENTINEL", b"MASTER", name])
            .await
            .map_err(|e| e.to_string())?;
        let epoch = answer::config_epoch(&reply).unwrap_or(0);
        Ok(View { addr, epoch })
    };
    tokio::time::timeout(setup.timeout, work)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {:?}", setup.timeout)))
}

/// What the server at `addr` says it is.
async fn role_of(setup: &Setup, addr: SocketAddr) -> Result<Role, String> {
    let work = async {
        let stream = connect(addr, setup.backend_auth.as_ref()).await?;
        let reply = Handshake::new(&stream, MAX_DEPTH)
            .call(&[b"ROLE"])
            .await
            .map_err(|e| e.to_string())?;
        Ok(answer::role(&reply))
    };
    tokio::time::timeout(setup.timeout, work)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {:?}", setup.timeout)))
}

/// Listens for `+switch-master` on one Sentinel for the life of the thread, reconnecting
/// with backoff; each message about our master (and each new subscription, which may
/// have missed one) asks the loop to look again.
async fn listen(setup: Setup, sentinel: SocketAddr, hints: mpsc::Sender<Hint>) {
    let mut backoff = Backoff::new(RETRY_BASE, RETRY_MAX);
    let mut failing = false;
    loop {
        let e = subscribed(&setup, sentinel, &hints, &mut backoff).await;
        setup
            .metrics
            .sentinel_errors
            .fetch_add(1, Ordering::Relaxed);
        if !std::mem::replace(&mut failing, true) {
            tracing::warn!(%sentinel, error = %e, "sentinel: lost the subscription to +switch-master; reconnecting");
        }
        let delay = backoff.next_delay(&mut rand::rng()).max(MIN_PAUSE);
        tokio::time::sleep(delay).await;
        if hints.is_closed() {
            return;
        }
    }
}

/// One subscription, until it fails; returns why.
async fn subscribed(
    setup: &Setup,
    sentinel: SocketAddr,
    hints: &mpsc::Sender<Hint>,
    backoff: &mut Backoff,
) -> String {
    let stream = match tokio::time::timeout(
        setup.timeout,
        connect(sentinel, setup.sentinel_auth.as_ref()),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return e,
        Err(_) => return format!("no answer within {:?}", setup.timeout),
    };
    let mut hs = Handshake::new(&stream, MAX_DEPTH);
    match hs
        .call(&[
            b"SUBSCRIBE",
            SWITCH_CHANNEL.as_bytes(),
            PROMOTED_CHANNEL.as_bytes(),
            PROMOTING_CHANNEL.as_bytes(),
        ])
        .await
    {
        Ok(Value::Error(e)) => return format!("SUBSCRIBE refused: {e}"),
        Ok(_) => {}
        Err(e) => return e.to_string(),
    }
    backoff.reset();
    tracing::debug!(%sentinel, "sentinel: subscribed to +switch-master");
    let _ = hints.try_send(Hint::Look);
    loop {
        let reply = match hs.next_reply().await {
            Ok(r) => r,
            Err(e) => return e.to_string(),
        };
        if let Some(payload) = answer::pubsub_message(&reply, SWITCH_CHANNEL)
            && let Some(new) = answer::switch_message(payload, &setup.master_name)
        {
            tracing::info!(%sentinel, %new, "sentinel: +switch-master");
            let _ = hints.try_send(Hint::Look);
        }
        if let Some(payload) = answer::pubsub_message(&reply, PROMOTING_CHANNEL)
            && let Some(replica) = answer::promoting(payload, &setup.master_name)
        {
            tracing::info!(%sentinel, %replica, "sentinel: replica being promoted");
            let _ = hints.try_send(Hint::Promoting(replica));
        }
        if let Some(payload) = answer::pubsub_message(&reply, PROMOTED_CHANNEL)
            && answer::names_master(payload, &setup.master_name)
        {
            tracing::info!(%sentinel, "sentinel: replica promoted");
            let _ = hints.try_send(Hint::Look);
        }
    }
}
