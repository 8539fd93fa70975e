//! The admission guard end to end: rate limits, concurrency caps, the trusted reserve,
//! handshake/auth/idle deadlines, strikes and bans, shedding above the high-water mark, and
//! the deny/allow lists, with a real redis-server behind moat.
//!
//! Different client addresses are played by binding client sockets to 127.x.y.z before
//! connecting: only 127.0.0.1 is trusted by default, every other loopback address is an
//! untrusted "remote" client, and 127.a.b.* share one /24.
//!
//! Every check asserts the refusal (or the close) itself, so removing the rule fails the
//! test; every wait is bounded, and no assertion depends on how fast the machine is.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::conn::Conn;
use common::{Stack, bulk, command, shown};
use moat_guard::IpNet;
use moat_proxy::config::UserConfig;
use moat_testkit::RedisServer;

/// Longest wait for a close (or a refusal) checked directly in this file; [`Conn`]'s own
/// waits use `common::conn::REPLY_TIMEOUT`.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a condition polled on the guard or Redis.
const SETTLE: Duration = Duration::from_secs(10);
/// Longest a whole phase (a flood) may take.
const PHASE_DEADLINE: Duration = Duration::from_secs(120);

const IP_RATE: &[u8] = b"-ERR moat: too many new connections from your address (rate limit)\r\n";
const SUBNET_RATE: &[u8] =
    b"-ERR moat: too many new connections from your network (rate limit)\r\n";
const TOO_MANY_IP: &[u8] = b"-ERR moat: too many connections from your address\r\n";
const TOO_MANY_SUBNET: &[u8] = b"-ERR moat: too many connections from your network\r\n";
const FULL: &[u8] = b"-ERR moat: max number of clients reached\r\n";
const BUSY: &[u8] = b"-ERR moat: server busy, try again later\r\n";
const DENIED: &[u8] = b"-ERR moat: connections from your address are not allowed\r\n";
const PONG: &[u8] = b"+PONG\r\n";
const OK: &[u8] = b"+OK\r\n";
const NOAUTH: &[u8] = b"-NOAUTH Authentication required.\r\n";
const WRONGPASS: &[u8] = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n";

/// The password of the moat user in the authentication tests.
const PASSWORD: &str = "s3cret-pass";

/// Connects from `src` and returns whatever moat sends before closing; fails the test if
/// the connection is still open after [`CLOSE_TIMEOUT`] (it was admitted).
fn refusal(src: [u8; 4], to: SocketAddr) -> Vec<u8> {
    let mut conn = Conn::from(src, to);
    conn.read_to_eof(CLOSE_TIMEOUT).unwrap_or_else(|| {
        panic!("{src:?} was admitted: still open after {CLOSE_TIMEOUT:?}, expected a refusal")
    })
}

/// Asserts that a connection from `src` is refused with exactly `line`.
fn expect_refused(src: [u8; 4], to: SocketAddr, line: &[u8]) {
    let got = refusal(src, to);
    assert_eq!(
        shown(&got),
        shown(line),
        "connection from {src:?} should be refused with that line"
    );
}

/// Connects from `src` and checks it is admitted (PING answered).
fn admitted(src: [u8; 4], to: SocketAddr) -> Conn {
    let mut conn = Conn::from(src, to);
    let reply = conn.call(&["PING"]);
    assert_eq!(
        shown(&reply),
        shown(PONG),
        "connection from {src:?} should be admitted"
    );
    conn
}

/// Seconds in a `-ERR moat: banned for Ns` line, or `None` for any other bytes.
fn banned_secs(line: &[u8]) -> Option<u64> {
    std::str::from_utf8(line)
        .ok()?
        .strip_prefix("-ERR moat: banned for ")?
        .strip_suffix("s\r\n")?
        .parse()
        .ok()
}

/// Polls `check` every 10 ms until it holds; fails the test with `what` after `limit`.
fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wait_clients(stack: &Stack, n: u32) {
    wait_until(&format!("moat to hold {n} clients"), SETTLE, || {
        stack.moat.guard().clients() == n
    });
}

fn host(ip: [u8; 4]) -> IpNet {
    IpNet::from(std::net::IpAddr::from(ip))
}

fn is_banned(stack: &Stack, ip: [u8; 4]) -> bool {
    stack
        .moat
        .guard()
        .bans(Instant::now())
        .iter()
        .any(|(net, _)| *net == host(ip))
}

/// Redis with default settings, moat tweaked by `tweak`.
fn with_config(tweak: impl FnOnce(&mut moat_proxy::Config)) -> Stack {
    Stack::with(RedisServer::builder(), tweak)
}

/// One moat user, `default`, with [`PASSWORD`]: clients must AUTH (Redis itself does not
/// require a password; moat's backend connections need none).
fn require_auth(config: &mut moat_proxy::Config) {
    config.users = vec![UserConfig {
        name: "default".into(),
        password: Some(PASSWORD.into()),
        password_sha256: None,
        deny_commands: Vec::new(),
    }];
}

/// SET then GET a key unique to `tag` through `conn`.
fn set_get(conn: &mut Conn, tag: &str) {
    let key = format!("guard:{tag}");
    assert_eq!(
        shown(&conn.call(&["SET", &key, tag])),
        shown(OK),
        "SET {key}"
    );
    assert_eq!(
        shown(&conn.call(&["GET", &key])),
        shown(&bulk(tag.as_bytes())),
        "GET {key}"
    );
}

// ---------------------------------------------------------------------------------------
// 1. Rate limits
// ---------------------------------------------------------------------------------------

/// What one connect+close from the flooding address met.
#[derive(Debug, Default)]
struct FloodCounts {
    /// Admitted: closed by moat without a byte after the client's own close.
    admitted: u64,
    rate_limited: u64,
    banned: u64,
    /// Index of the first attempt refused with a ban, if any.
    first_ban: Option<u64>,
}

/// Clears a flag when dropped (also while unwinding).
struct ClearOnDrop<'a>(&'a AtomicBool);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// `n` connect+close attempts from `src` in a tight loop: each connects, half-closes, and
/// reads everything moat sends until it closes.
fn flood(src: [u8; 4], to: SocketAddr, n: u64) -> FloodCounts {
    let mut counts = FloodCounts::default();
    for i in 0..n {
        let mut conn = Conn::from(src, to);
        conn.stream.shutdown(Shutdown::Write).unwrap();
        let got = conn
            .read_to_eof(CLOSE_TIMEOUT)
            .unwrap_or_else(|| panic!("flood attempt {i}: moat kept a closed client open"));
        if got.is_empty() {
            counts.admitted += 1;
        } else if got == IP_RATE {
            counts.rate_limited += 1;
        } else if banned_secs(&got).is_some() {
            counts.banned += 1;
            counts.first_ban.get_or_insert(i);
        } else {
            panic!("flood attempt {i}: unexpected answer {}", shown(&got));
        }
    }
    counts
}

#[test]
fn a_connection_flood_from_one_address_is_rate_limited_while_others_work() {
    const RATE: f64 = 20.0;
    const BURST: u32 = 40;
    const ATTEMPTS: u64 = 300;
    /// Connections each well-behaved client opens: within its own burst whatever the timing.
    const GOOD_ROUNDS: usize = 30;
    let stack = with_config(|c| {
        c.guard.ip_rate = RATE;
        c.guard.ip_burst = BURST;
        // Refusals count as strikes; keep the flooder from being banned so the rate limit
        // itself is what answers every attempt.
        c.guard.strikes_to_ban = 1_000_000;
    });
    let addr = stack.addr();
    // The shared pool is up before the baseline is taken.
    set_get(&mut Conn::from([127, 0, 0, 1], addr), "warmup");
    let received_before = stack.redis.info_u64("total_connections_received").unwrap();
    let shared = moat_proxy::Config::default().backend.shared_connections as u64;
    let flooding = AtomicBool::new(true);
    let samples = AtomicU64::new(0);
    let max_redis_clients = AtomicU64::new(0);
    let started = Instant::now();
    let counts = std::thread::scope(|s| {
        let good: Vec<_> = [[127, 1, 0, 2], [127, 9, 9, 9]]
            .into_iter()
            .map(|src| {
                s.spawn(move || {
                    for round in 0..GOOD_ROUNDS {
                        let mut conn = Conn::from(src, addr);
                        let reply = conn.call(&["PING"]);
                        assert_eq!(
                            shown(&reply),
                            shown(PONG),
                            "{src:?} round {round}: a well-behaved neighbour was refused"
                        );
                        set_get(&mut conn, &format!("{}-{round}", src[1]));
                        drop(conn);
                        std::thread::sleep(Duration::from_millis(10));
                    }
                })
            })
            .collect();
        let monitor = s.spawn(|| {
            // Bounded even if the flood panics and never clears the flag.
            let deadline = Instant::now() + PHASE_DEADLINE;
            while flooding.load(Ordering::Relaxed) && Instant::now() < deadline {
                let n = stack.redis_clients();
                samples.fetch_add(1, Ordering::Relaxed);
                max_redis_clients.fetch_max(n, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        // Cleared however the flood ends, so the monitor stops and a failure is reported.
        let _stop = ClearOnDrop(&flooding);
        let counts = flood([127, 1, 0, 1], addr, ATTEMPTS);
        drop(_stop);
        for g in good {
            g.join().unwrap();
        }
        monitor.join().unwrap();
        counts
    });
    let elapsed = started.elapsed().as_secs_f64();
    let received_after = stack.redis.info_u64("total_connections_received").unwrap();
    eprintln!("flood: {counts:?} in {elapsed:.2}s");
    assert_eq!(counts.banned, 0, "{counts:?}");
    assert!(
        counts.rate_limited > 0,
        "no attempt of {ATTEMPTS} was rate limited: {counts:?}"
    );
    // GCRA: at most the burst plus the rate over the time the flood took (the test's own
    // clock spans every admission), whatever the machine's speed.
    let allowed = f64::from(BURST) + RATE * elapsed + 2.0;
    assert!(
        counts.admitted as f64 <= allowed,
        "{} admitted in {elapsed:.2}s, more than burst {BURST} + {RATE}/s allows: {counts:?}",
        counts.admitted
    );
    // The flood never reaches Redis: no more connections there than moat's shared pool,
    // and no new ones beyond the INFO connections that asked.
    let max = max_redis_clients.load(Ordering::Relaxed);
    assert!(
        max <= shared,
        "Redis held {max} connections during the flood (pool {shared})"
    );
    let asked = samples.load(Ordering::Relaxed) + 1;
    let new = received_after - received_before;
    assert!(
        new <= asked + 2,
        "Redis received {new} new connections during the flood ({asked} were INFO)"
    );
}

#[test]
fn a_sustained_flood_gets_its_address_banned() {
    let stack = with_config(|c| {
        c.guard.ip_rate = 20.0;
        c.guard.ip_burst = 40;
        c.guard.strikes_to_ban = 20;
        c.guard.ban_time = Duration::from_secs(60);
    });
    let addr = stack.addr();
    let counts = flood([127, 1, 0, 1], addr, 150);
    eprintln!("flood: {counts:?}");
    let first = counts
        .first_ban
        .unwrap_or_else(|| panic!("150 attempts and no ban: {counts:?}"));
    // Once banned, every later attempt is refused with the ban.
    assert_eq!(
        counts.banned,
        150 - first,
        "attempts after the ban were not all refused with it: {counts:?}"
    );
    assert!(is_banned(&stack, [127, 1, 0, 1]));
    let line = refusal([127, 1, 0, 1], addr);
    let secs = banned_secs(&line).unwrap_or_else(|| panic!("not a ban: {}", shown(&line)));
    assert!((1..=72).contains(&secs), "ban of {secs}s");
    // A neighbour in the same /24 is not affected.
    set_get(&mut admitted([127, 1, 0, 2], addr), "neighbour");
}

#[test]
fn a_subnet_opening_connections_too_fast_is_rate_limited() {
    let stack = with_config(|c| {
        c.guard.subnet_rate = 1.0;
        c.guard.subnet_burst = 10;
        c.guard.strikes_to_ban = 1_000_000;
    });
    let addr = stack.addr();
    // One attempt per address, many addresses of one /24: only the subnet's rate stops them.
    let mut limited = 0;
    let mut ok = 0;
    for host in 1..=40u8 {
        let mut conn = Conn::from([127, 1, 7, host], addr);
        conn.stream.shutdown(Shutdown::Write).unwrap();
        let got = conn.read_to_eof(CLOSE_TIMEOUT).unwrap();
        if got.is_empty() {
            ok += 1;
        } else {
            assert_eq!(shown(&got), shown(SUBNET_RATE), "127.1.7.{host}");
            limited += 1;
        }
    }
    assert!(ok >= 10, "the burst admits at least 10 ({ok} admitted)");
    assert!(
        limited > 0,
        "40 new connections from one /24 and none limited"
    );
    // Another /24 is untouched.
    set_get(&mut admitted([127, 1, 8, 1], addr), "other-subnet");
}

// ---------------------------------------------------------------------------------------
// 2. Concurrency caps
// ---------------------------------------------------------------------------------------

#[test]
fn an_address_holding_max_per_ip_connections_is_refused_more() {
    let stack = with_config(|c| c.guard.max_per_ip = 10);
    let addr = stack.addr();
    let src = [127, 1, 0, 1];
    let mut held: Vec<Conn> = (0..10).map(|_| admitted(src, addr)).collect();
    expect_refused(src, addr, TOO_MANY_IP);
    expect_refused(src, addr, TOO_MANY_IP);
    // The hoarded connections still work.
    for (i, conn) in held.iter_mut().enumerate() {
        assert_eq!(shown(&conn.call(&["PING"])), shown(PONG));
        set_get(conn, &format!("held-{i}"));
    }
    // Another address is not affected.
    let _other = admitted([127, 1, 0, 2], addr);
    // Closing some makes room for as many again.
    held.truncate(7);
    wait_clients(&stack, 8);
    for _ in 0..3 {
        held.push(admitted(src, addr));
    }
    expect_refused(src, addr, TOO_MANY_IP);
    assert_eq!(shown(&held[9].call(&["PING"])), shown(PONG));
}

#[test]
fn a_subnet_holding_max_per_subnet_connections_is_refused_more() {
    let stack = with_config(|c| {
        c.guard.max_per_subnet = 10;
        c.guard.max_per_ip = 64;
    });
    let addr = stack.addr();
    let mut held: Vec<Conn> = (1..=10u8).map(|h| admitted([127, 1, 2, h], addr)).collect();
    // A new address of the same /24, and one already holding a connection.
    expect_refused([127, 1, 2, 11], addr, TOO_MANY_SUBNET);
    expect_refused([127, 1, 2, 1], addr, TOO_MANY_SUBNET);
    for (i, conn) in held.iter_mut().enumerate() {
        set_get(conn, &format!("subnet-held-{i}"));
    }
    // Another /24 is not affected.
    let _other = admitted([127, 1, 3, 1], addr);
    held.truncate(8);
    wait_clients(&stack, 9);
    held.push(admitted([127, 1, 2, 11], addr));
    held.push(admitted([127, 1, 2, 12], addr));
    expect_refused([127, 1, 2, 13], addr, TOO_MANY_SUBNET);
}

// ---------------------------------------------------------------------------------------
// 3. Silent hoard, handshake deadline, strikes and bans
// ---------------------------------------------------------------------------------------

#[test]
fn a_silent_hoard_is_closed_at_the_handshake_deadline_and_banned() {
    const HANDSHAKE: Duration = Duration::from_millis(300);
    let stack = with_config(|c| {
        c.guard.handshake_timeout = HANDSHAKE;
        c.guard.strikes_to_ban = 5;
        c.guard.ban_time = Duration::from_secs(60);
        c.guard.ban_jitter = 0.2;
    });
    let addr = stack.addr();
    let src = [127, 1, 0, 1];
    let started = Instant::now();
    let mut hoard: Vec<Conn> = (0..5).map(|_| Conn::from(src, addr)).collect();
    for (i, conn) in hoard.iter_mut().enumerate() {
        conn.expect_silent_close(&format!("silent connection {i}"));
    }
    // Never before the deadline (a lower bound only: a slow machine closes later).
    let waited = started.elapsed();
    assert!(
        waited >= HANDSHAKE,
        "the hoard was closed after {waited:?}, before the {HANDSHAKE:?} deadline"
    );
    wait_until("the silent source to be banned", SETTLE, || {
        is_banned(&stack, src)
    });
    let bans = stack.moat.guard().bans(Instant::now());
    assert_eq!(bans.len(), 1, "only the hoarder is banned: {bans:?}");
    let line = refusal(src, addr);
    let secs =
        banned_secs(&line).unwrap_or_else(|| panic!("expected a ban line, got {}", shown(&line)));
    assert!(
        (50..=72).contains(&secs),
        "a first ban of 60s with 20% jitter, reported as {secs}s"
    );
    // An unrelated address, even in the same /24, still gets in.
    set_get(&mut admitted([127, 1, 0, 2], addr), "unrelated");
    // Lifting the ban lets the source back in.
    assert!(stack.moat.guard().unban(host(src)), "unban found the ban");
    assert!(!is_banned(&stack, src));
    set_get(&mut admitted(src, addr), "unbanned");
}

#[test]
fn a_slowloris_trickling_an_incomplete_request_is_closed_at_the_handshake_deadline() {
    const HANDSHAKE: Duration = Duration::from_millis(300);
    let stack = with_config(|c| {
        c.guard.handshake_timeout = HANDSHAKE;
        c.guard.idle_timeout_unauthenticated = Duration::from_secs(30);
    });
    let addr = stack.addr();
    let started = Instant::now();
    let mut slow = Conn::from([127, 1, 0, 1], addr);
    // Activity keeps the idle clock fresh, but no request ever completes.
    let partial = b"*2\r\n$3\r\nGET\r\n$10000\r\n";
    let mut sent = 0;
    let bytes = loop {
        assert!(
            started.elapsed() < CLOSE_TIMEOUT,
            "still open after {CLOSE_TIMEOUT:?} of trickling"
        );
        let byte = [partial.get(sent).copied().unwrap_or(b'x')];
        if slow.stream.write_all(&byte).is_err() {
            break Vec::new();
        }
        sent += 1;
        if let Some(bytes) = slow.read_to_eof(Duration::from_millis(50)) {
            break bytes;
        }
    };
    let lived = started.elapsed();
    assert!(bytes.is_empty(), "closed after sending {}", shown(&bytes));
    assert!(
        lived >= HANDSHAKE,
        "closed after {lived:?}, before the handshake deadline"
    );
    assert!(sent >= 2, "closed before trickling ({sent} bytes sent)");
}

/// Trickles `partial` (then filler) a byte every `every` from `conn` until moat closes it or
/// `limit` passes; returns what moat sent before closing, or `None` if still open.
fn trickle(conn: &mut Conn, partial: &[u8], every: Duration, limit: Duration) -> Option<Vec<u8>> {
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < limit {
        let byte = [partial.get(sent).copied().unwrap_or(b'x')];
        if conn.stream.write_all(&byte).is_err() {
            return Some(Vec::new());
        }
        sent += 1;
        if let Some(bytes) = conn.read_to_eof(every) {
            return Some(bytes);
        }
    }
    None
}

#[test]
fn a_slowloris_after_a_valid_command_is_closed_at_the_request_deadline_and_struck() {
    const REQUEST: Duration = Duration::from_millis(400);
    let stack = with_config(|c| {
        c.guard.request_read_timeout = REQUEST;
        c.guard.strikes_to_ban = 1;
    });
    let addr = stack.addr();
    let src = [127, 1, 0, 2];
    let mut slow = Conn::from(src, addr);
    // A valid command first: the handshake deadline no longer applies, and with no password
    // configured the client is "authenticated", so no idle timeout applies either.
    assert_eq!(slow.call(&["PING"]), PONG);
    let started = Instant::now();
    let bytes = trickle(
        &mut slow,
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$10000\r\n",
        Duration::from_millis(50),
        CLOSE_TIMEOUT,
    )
    .unwrap_or_else(|| panic!("still open after {CLOSE_TIMEOUT:?} of trickling"));
    let lived = started.elapsed();
    assert!(bytes.is_empty(), "closed after sending {}", shown(&bytes));
    assert!(
        lived >= REQUEST,
        "closed after {lived:?}, before the request deadline"
    );
    assert_eq!(stack.moat.metrics().get("slow_requests"), Some(1));
    // The unfinished request was a strike: with strikes_to_ban = 1 the address is banned.
    wait_until("the slowloris's ban", SETTLE, || is_banned(&stack, src));
    let mut other = Conn::from([127, 1, 0, 3], addr);
    set_get(&mut other, "after-slowloris");
}

#[test]
fn steady_uploads_split_pipelines_and_trusted_clients_are_not_cut_as_slow() {
    const REQUEST: Duration = Duration::from_millis(1000);
    let stack = with_config(|c| {
        c.guard.request_read_timeout = REQUEST;
        c.guard.request_min_rate = 1000;
    });
    let addr = stack.addr();
    let pause = Duration::from_millis(20);

    // An 8,000-byte value at about 5,000 bytes/s: 1.6 s in all, longer than the deadline,
    // but every byte received extends it (a second per 1,000 bytes).
    let mut upload = Conn::from([127, 1, 0, 4], addr);
    let value = vec![b'v'; 8000];
    let request = command(&[b"SET", b"big", &value]);
    for piece in request.chunks(100) {
        upload.send(piece);
        std::thread::sleep(pause);
    }
    assert_eq!(upload.reply(), OK);
    assert_eq!(upload.call(&["STRLEN", "big"]), b":8000\r\n");

    // A pipeline cut mid-request on every write, for longer than the deadline: each write
    // completes an earlier request, which restarts the clock.
    let mut pipeline = Conn::from([127, 1, 0, 5], addr);
    let stream: Vec<u8> = (0..60)
        .flat_map(|i| command(&[b"SET", format!("p{i}").as_bytes(), b"value-of-some-length"]))
        .collect();
    let started = Instant::now();
    for piece in stream.chunks(37) {
        pipeline.send(piece);
        std::thread::sleep(pause);
    }
    assert!(
        started.elapsed() > REQUEST,
        "the pipeline must outlast the deadline"
    );
    for i in 0..60 {
        assert_eq!(pipeline.reply(), OK, "reply {i}");
    }

    // Trusted networks are exempt: 127.0.0.1 trickles past the deadline and stays open.
    let mut trusted = Conn::connect(addr);
    assert_eq!(trusted.call(&["PING"]), PONG);
    let closed = trickle(
        &mut trusted,
        b"*2\r\n$4\r\nECHO\r\n$1000\r\n",
        Duration::from_millis(50),
        REQUEST * 2,
    );
    assert_eq!(closed, None, "a trusted client was cut as slow");
    assert_eq!(stack.moat.metrics().get("slow_requests"), Some(0));
}

#[test]
fn fewer_silent_connections_than_strikes_to_ban_do_not_ban() {
    let stack = with_config(|c| {
        c.guard.handshake_timeout = Duration::from_millis(300);
        c.guard.strikes_to_ban = 5;
    });
    let addr = stack.addr();
    let src = [127, 1, 0, 1];
    for i in 0..4 {
        Conn::from(src, addr).expect_silent_close(&format!("silent connection {i}"));
    }
    wait_clients(&stack, 0);
    assert!(!is_banned(&stack, src));
    // Working connections close without a strike.
    drop(admitted(src, addr));
    wait_clients(&stack, 0);
    assert!(
        !is_banned(&stack, src),
        "a connection that ran a command struck"
    );
    // The fifth silent close bans.
    Conn::from(src, addr).expect_silent_close("fifth silent connection");
    wait_until("the fifth strike to ban", SETTLE, || is_banned(&stack, src));
    let line = refusal(src, addr);
    assert!(banned_secs(&line).is_some(), "got {}", shown(&line));
}

#[test]
fn an_admin_ban_of_a_network_refuses_its_addresses() {
    let stack = Stack::start();
    let addr = stack.addr();
    let net: IpNet = "127.6.0.0/16".parse().unwrap();
    assert!(
        stack
            .moat
            .guard()
            .ban(net, Duration::from_secs(30), Instant::now())
    );
    let line = refusal([127, 6, 1, 2], addr);
    let secs = banned_secs(&line).unwrap_or_else(|| panic!("got {}", shown(&line)));
    assert!((1..=30).contains(&secs), "{secs}s");
    set_get(&mut admitted([127, 7, 0, 1], addr), "outside");
    // Trusted networks cannot be banned.
    assert!(!stack.moat.guard().ban(
        host([127, 0, 0, 1]),
        Duration::from_secs(30),
        Instant::now()
    ));
    let _trusted = admitted([127, 0, 0, 1], addr);
    assert!(stack.moat.guard().unban(net));
    let _back = admitted([127, 6, 1, 2], addr);
}

// ---------------------------------------------------------------------------------------
// 4. The trusted reserve
// ---------------------------------------------------------------------------------------

#[test]
fn the_trusted_reserve_is_kept_for_trusted_networks() {
    let stack = with_config(|c| {
        c.guard.max_clients = 20;
        c.guard.reserved_for_trusted = 5;
        c.guard.high_water = 20;
    });
    let addr = stack.addr();
    // 15 untrusted, each from its own /24 so no per-address or per-subnet cap trips, each
    // doing real work (a PING-only client would be evicted to make room).
    let mut untrusted: Vec<Conn> = (0..15u8)
        .map(|k| {
            let mut conn = admitted([127, 1, k, 1], addr);
            set_get(&mut conn, &format!("untrusted-{k}"));
            conn
        })
        .collect();
    expect_refused([127, 1, 100, 1], addr, FULL);
    expect_refused([127, 1, 0, 1], addr, FULL);
    // Trusted clients still get in, up to the reserve.
    let mut trusted: Vec<Conn> = (0..5).map(|_| admitted([127, 0, 0, 1], addr)).collect();
    for (i, conn) in trusted.iter_mut().enumerate() {
        set_get(conn, &format!("trusted-{i}"));
    }
    assert_eq!(stack.moat.guard().clients(), 20);
    // Now moat is full for everyone.
    expect_refused([127, 0, 0, 1], addr, FULL);
    expect_refused([127, 1, 101, 1], addr, FULL);
    // The untrusted ones kept working throughout.
    for conn in &mut untrusted {
        assert_eq!(shown(&conn.call(&["PING"])), shown(PONG));
    }
}

// ---------------------------------------------------------------------------------------
// 5. Authentication: brute force and the auth deadline
// ---------------------------------------------------------------------------------------

#[test]
fn repeated_wrong_passwords_ban_the_address() {
    let stack = with_config(|c| {
        require_auth(c);
        c.guard.strikes_to_ban = 5;
        c.guard.ban_time = Duration::from_secs(60);
    });
    let addr = stack.addr();
    let src = [127, 1, 0, 1];
    let mut conn = Conn::from(src, addr);
    for i in 0..4 {
        let reply = conn.call(&["AUTH", &format!("guess-{i}")]);
        assert_eq!(shown(&reply), shown(WRONGPASS), "wrong password {i}");
    }
    drop(conn);
    wait_clients(&stack, 0);
    // Four strikes of five: still admitted.
    assert!(!is_banned(&stack, src));
    let mut conn = Conn::from(src, addr);
    assert_eq!(shown(&conn.call(&["PING"])), shown(NOAUTH));
    let reply = conn.call(&["AUTH", "default", "guess-4"]);
    assert_eq!(shown(&reply), shown(WRONGPASS), "fifth wrong password");
    assert!(is_banned(&stack, src), "five wrong passwords did not ban");
    // The next connection from that address is refused.
    let line = refusal(src, addr);
    let secs =
        banned_secs(&line).unwrap_or_else(|| panic!("expected a ban line, got {}", shown(&line)));
    assert!((50..=72).contains(&secs), "{secs}s");
    // The right password from another address works.
    let mut good = Conn::from([127, 1, 0, 2], addr);
    assert_eq!(shown(&good.call(&["AUTH", PASSWORD])), shown(OK));
    set_get(&mut good, "authenticated");
}

#[test]
fn a_client_that_never_authenticates_is_closed_at_the_auth_deadline() {
    const AUTH_TIMEOUT: Duration = Duration::from_millis(400);
    let stack = with_config(|c| {
        require_auth(c);
        c.guard.auth_timeout = AUTH_TIMEOUT;
        c.guard.handshake_timeout = Duration::from_secs(30);
        c.guard.idle_timeout_unauthenticated = Duration::ZERO;
        c.guard.idle_timeout_authenticated = Duration::ZERO;
    });
    let addr = stack.addr();
    // Authenticated before the deadline: not affected by it.
    let mut good = Conn::from([127, 1, 0, 2], addr);
    assert_eq!(shown(&good.call(&["AUTH", PASSWORD])), shown(OK));
    // Busy but never authenticating: PINGs are answered NOAUTH until moat closes it.
    let started = Instant::now();
    let mut pinger = Conn::from([127, 1, 0, 1], addr);
    let mut pings = 0;
    while !pinger.ping_until_closed(NOAUTH) {
        pings += 1;
        assert!(
            started.elapsed() < CLOSE_TIMEOUT,
            "still open after {pings} PINGs and {CLOSE_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let lived = started.elapsed();
    assert!(pings >= 1, "closed before its first PING was answered");
    assert!(
        lived >= AUTH_TIMEOUT,
        "closed after {lived:?}, before the auth deadline"
    );
    // The authenticated client is still there well past the deadline.
    set_get(&mut good, "past-auth-deadline");
}

// ---------------------------------------------------------------------------------------
// 6. Idle timeouts per class
// ---------------------------------------------------------------------------------------

#[test]
fn idle_unauthenticated_connections_close_but_authenticated_ones_stay() {
    const IDLE: Duration = Duration::from_millis(400);
    let stack = with_config(|c| {
        require_auth(c);
        c.guard.handshake_timeout = Duration::from_secs(30);
        c.guard.auth_timeout = Duration::from_secs(30);
        c.guard.idle_timeout_unauthenticated = IDLE;
        c.guard.idle_timeout_authenticated = Duration::ZERO;
    });
    let addr = stack.addr();
    let mut authed = Conn::from([127, 1, 0, 2], addr);
    assert_eq!(shown(&authed.call(&["AUTH", PASSWORD])), shown(OK));
    let authed_idle_since = Instant::now();
    let mut anon = Conn::from([127, 1, 0, 1], addr);
    // Taken before the PING is sent: moat's idle clock starts no earlier.
    let anon_idle_since = Instant::now();
    assert_eq!(shown(&anon.call(&["PING"])), shown(NOAUTH));
    anon.expect_silent_close("idle unauthenticated connection");
    assert!(anon_idle_since.elapsed() >= IDLE);
    // Idle for well over the unauthenticated timeout, and still open.
    authed.expect_open(IDLE, "idle authenticated connection");
    assert!(authed_idle_since.elapsed() >= 2 * IDLE);
    set_get(&mut authed, "idle-authenticated");
}

#[test]
fn idle_timeouts_follow_the_trusted_class() {
    const IDLE: Duration = Duration::from_millis(400);
    let stack = with_config(|c| {
        c.guard.handshake_timeout = Duration::from_secs(30);
        c.guard.idle_timeout_unauthenticated = Duration::ZERO;
        c.guard.idle_timeout_authenticated = Duration::ZERO;
        c.guard.idle_timeout_trusted = IDLE;
    });
    let addr = stack.addr();
    let mut remote = admitted([127, 1, 0, 1], addr);
    let remote_idle_since = Instant::now();
    let mut trusted = admitted([127, 0, 0, 1], addr);
    trusted.expect_silent_close("idle trusted connection");
    remote.expect_open(IDLE, "idle untrusted connection (no idle timeout)");
    assert!(remote_idle_since.elapsed() >= 2 * IDLE);
    set_get(&mut remote, "idle-remote");
}

#[test]
fn a_blocked_call_is_not_idle() {
    const IDLE: Duration = Duration::from_millis(400);
    let stack = with_config(|c| {
        c.guard.handshake_timeout = Duration::from_secs(30);
        c.guard.idle_timeout_authenticated = IDLE;
        c.guard.idle_timeout_trusted = Duration::ZERO;
    });
    let addr = stack.addr();
    let mut blocked = admitted([127, 1, 0, 1], addr);
    blocked.send(&command(&[b"BLPOP", b"guard:list", b"0"]));
    let blocked_since = Instant::now();
    // The idle timeout is in force for this class: an idle client of it is closed...
    let mut idle = admitted([127, 1, 0, 3], addr);
    idle.expect_silent_close("idle client");
    // ...but the blocked one is not, however long it waits.
    blocked.expect_open(IDLE, "client blocked in BLPOP");
    assert!(blocked_since.elapsed() >= 2 * IDLE);
    let mut pusher = admitted([127, 0, 0, 1], addr);
    assert_eq!(
        shown(&pusher.call(&["LPUSH", "guard:list", "v"])),
        shown(b":1\r\n")
    );
    let mut expected = b"*2\r\n".to_vec();
    expected.extend_from_slice(&bulk(b"guard:list"));
    expected.extend_from_slice(&bulk(b"v"));
    assert_eq!(shown(&blocked.reply()), shown(&expected), "BLPOP's reply");
    // Answered, it is an ordinary idle client again.
    blocked.expect_silent_close("client idle after BLPOP returned");
}

// ---------------------------------------------------------------------------------------
// 7. Silent refusals
// ---------------------------------------------------------------------------------------

#[test]
fn with_reject_reply_off_refused_connections_close_without_a_byte() {
    let stack = with_config(|c| {
        c.guard.reject_reply = false;
        c.guard.deny = vec!["127.3.0.0/16".parse().unwrap()];
        c.guard.max_per_ip = 1;
    });
    let addr = stack.addr();
    Conn::from([127, 3, 1, 1], addr).expect_silent_close("denied connection");
    let _one = admitted([127, 1, 0, 1], addr);
    Conn::from([127, 1, 0, 1], addr).expect_silent_close("connection over max_per_ip");
    let stats = stack.moat.guard().stats();
    let refused = |label: &str| {
        stats
            .rejected
            .iter()
            .find(|(l, _)| *l == label)
            .map_or(0, |(_, n)| *n)
    };
    assert_eq!(refused("denied"), 1, "{stats:?}");
    assert_eq!(refused("ip_concurrency"), 1, "{stats:?}");
}

// ---------------------------------------------------------------------------------------
// 8. Shedding above the high-water mark
// ---------------------------------------------------------------------------------------

#[test]
fn above_high_water_the_oldest_silent_connections_are_shed_first() {
    let stack = with_config(|c| {
        c.guard.max_clients = 40;
        c.guard.reserved_for_trusted = 0;
        c.guard.high_water = 11;
        c.guard.handshake_timeout = Duration::from_secs(60);
    });
    let addr = stack.addr();
    let known = [127, 1, 50, 1];
    // The talking source ran a command earlier: it is known.
    drop(admitted(known, addr));
    wait_clients(&stack, 0);
    // A talking connection older than every silent one: shedding must pass over it.
    let mut early = admitted(known, addr);
    // Ten silent connections from assorted addresses, admitted in this order.
    let mut silent: Vec<Conn> = (0..10u8)
        .map(|k| {
            let conn = Conn::from([127, 1, k, 10 + k], addr);
            wait_clients(&stack, u32::from(k) + 2);
            conn
        })
        .collect();
    // Five talking connections above the mark: each admission sheds one silent connection,
    // the oldest first.
    let mut talking: Vec<Conn> = (0..5).map(|_| admitted(known, addr)).collect();
    for (i, conn) in silent.iter_mut().enumerate().take(5) {
        conn.expect_silent_close(&format!("silent connection {i} (among the oldest)"));
    }
    for (i, conn) in silent.iter_mut().enumerate().skip(5) {
        conn.expect_open(
            Duration::from_millis(200),
            &format!("silent connection {i} (newer than the shed ones)"),
        );
    }
    set_get(&mut early, "talking-early");
    for (i, conn) in talking.iter_mut().enumerate() {
        set_get(conn, &format!("talking-{i}"));
    }
    wait_clients(&stack, 11);
    // Sources never seen before are let in while silent connections are left to make
    // room for them, the oldest first...
    let newcomers: Vec<Conn> = (0..5u8)
        .map(|k| {
            let mut conn = admitted([127, 1, 60 + k, 1], addr);
            set_get(&mut conn, &format!("newcomer-{k}"));
            conn
        })
        .collect();
    for (i, conn) in silent.iter_mut().enumerate().skip(5) {
        conn.expect_silent_close(&format!("silent connection {i} (made room)"));
    }
    wait_clients(&stack, 11);
    // ...and wait once only clients doing real work are left.
    expect_refused([127, 1, 70, 1], addr, BUSY);
    // The known source is still let in.
    let _more = admitted(known, addr);
    drop(newcomers);
}

#[test]
fn a_full_table_evicts_hoarders_from_the_biggest_source_never_real_clients() {
    let stack = with_config(|c| {
        c.guard.max_clients = 20;
        c.guard.reserved_for_trusted = 0;
        c.guard.high_water = 20;
        c.guard.handshake_timeout = Duration::from_secs(60);
        c.guard.ip_rate = 1000.0;
        c.guard.ip_burst = 1000;
        c.guard.subnet_rate = 1000.0;
        c.guard.subnet_burst = 1000;
        c.guard.strikes_to_ban = 3;
    });
    let addr = stack.addr();
    // Three real clients, connected first: older than any hoarder.
    let mut real: Vec<Conn> = (1..=3u8)
        .map(|k| {
            let mut conn = Conn::from([127, 2, 0, k], addr);
            set_get(&mut conn, &format!("real-{k}"));
            conn
        })
        .collect();
    // The hoard: 8 silent from A, 5 PING-only from B, 4 silent from C, in that order.
    let (a, b, c) = ([127, 5, 0, 1], [127, 6, 0, 1], [127, 7, 0, 1]);
    let silent = |src: [u8; 4], n: u32, held: u32| -> Vec<Conn> {
        (0..n)
            .map(|i| {
                let conn = Conn::from(src, addr);
                wait_clients(&stack, held + i + 1);
                conn
            })
            .collect()
    };
    let mut from_a = silent(a, 8, 3);
    let mut from_b: Vec<Conn> = (0..5).map(|_| admitted(b, addr)).collect();
    let mut from_c = silent(c, 4, 16);
    wait_clients(&stack, 20);
    // Fresh real clients from other addresses: each is admitted and served, a hoarder
    // making room. Silent ones go first, from the source holding the most (A, until it
    // holds as many as C; then the one with the older candidate), oldest first.
    let mut fresh: Vec<Conn> = Vec::new();
    let serve_fresh = |n: u8, fresh: &mut Vec<Conn>| {
        for _ in 0..n {
            let k = u8::try_from(fresh.len()).unwrap();
            let mut conn = Conn::from([127, 3, 0, k + 1], addr);
            set_get(&mut conn, &format!("fresh-{k}"));
            fresh.push(conn);
        }
    };
    serve_fresh(10, &mut fresh);
    for (i, conn) in from_a.iter_mut().enumerate().take(7) {
        conn.expect_silent_close(&format!("A's silent connection {i}"));
    }
    for (i, conn) in from_c.iter_mut().enumerate().take(3) {
        conn.expect_silent_close(&format!("C's silent connection {i}"));
    }
    let short = Duration::from_millis(200);
    from_a[7].expect_open(short, "A's newest silent connection");
    from_c[3].expect_open(short, "C's newest silent connection");
    for (i, conn) in from_b.iter_mut().enumerate() {
        conn.expect_open(short, &format!("B's PING-only connection {i}"));
    }
    // Then the last silent ones, then the keep-alive-only ones, oldest first.
    serve_fresh(2, &mut fresh);
    from_a[7].expect_silent_close("A's last silent connection");
    from_c[3].expect_silent_close("C's last silent connection");
    for i in 0..5 {
        serve_fresh(1, &mut fresh);
        from_b[i].expect_silent_close(&format!("B's PING-only connection {i}"));
        for (j, conn) in from_b.iter_mut().enumerate().skip(i + 1) {
            conn.expect_open(short, &format!("B's connection {j}, newer"));
        }
    }
    // Only real clients are left: a newcomer waits, and none of them was touched.
    wait_clients(&stack, 20);
    expect_refused([127, 3, 9, 10], addr, FULL);
    for (i, conn) in real.iter_mut().chain(fresh.iter_mut()).enumerate() {
        set_get(conn, &format!("still-{i}"));
    }
    // Each eviction was a strike: the hoarders are banned, the real clients are not.
    for src in [a, b, c] {
        assert!(is_banned(&stack, src), "{src:?} should be banned");
    }
    assert!(!is_banned(&stack, [127, 2, 0, 1]) && !is_banned(&stack, [127, 3, 0, 1]));
}

// ---------------------------------------------------------------------------------------
// 9. Deny and allow lists
// ---------------------------------------------------------------------------------------

#[test]
fn denied_networks_are_refused() {
    let stack = with_config(|c| c.guard.deny = vec!["127.3.0.0/16".parse().unwrap()]);
    let addr = stack.addr();
    expect_refused([127, 3, 1, 1], addr, DENIED);
    expect_refused([127, 3, 200, 7], addr, DENIED);
    set_get(&mut admitted([127, 2, 1, 1], addr), "not-denied");
    set_get(&mut admitted([127, 0, 0, 1], addr), "trusted");
}

#[test]
fn with_an_allow_list_only_allowed_and_trusted_networks_connect() {
    let stack = with_config(|c| c.guard.allow = vec!["127.4.0.0/16".parse().unwrap()]);
    let addr = stack.addr();
    expect_refused([127, 5, 0, 1], addr, DENIED);
    expect_refused([127, 1, 0, 1], addr, DENIED);
    set_get(&mut admitted([127, 4, 0, 1], addr), "allowed");
    set_get(&mut admitted([127, 4, 9, 9], addr), "allowed-2");
    set_get(&mut admitted([127, 0, 0, 1], addr), "trusted");
}
