//! Moat when Redis is not there, goes away, or comes back: clients stay connected, get
//! prompt errors instead of hangs, never get another client's data, and recover once Redis
//! is back, all without moat exceeding its pool.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Raw, Stack, bulk, command, shown, start_moat};
use moat_testkit::RedisServer;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Error replies moat gives when the backend is unreachable or lost.
const UNAVAILABLE: &[u8] = b"-ERR moat: backend unavailable";
const LOST: &[u8] = b"-ERR moat: backend connection lost";
/// How long moat gets to reconnect once Redis is back (its backoff tops out at 5 s).
const RECOVERY: Duration = Duration::from_secs(15);
/// One reply must come within this, or the test fails instead of hanging.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

fn is_backend_error(reply: &[u8]) -> bool {
    reply.starts_with(UNAVAILABLE) || reply.starts_with(LOST)
}

/// A Raw client whose replies must come within [`REPLY_TIMEOUT`].
fn raw(addr: SocketAddr) -> Raw {
    let raw = Raw::connect(addr);
    raw.stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .expect("read timeout");
    raw
}

#[test]
fn no_backend_then_backend_appears() {
    // Start Redis only to own a port, then kill it: nothing listens there now, and
    // restart() brings Redis back on the same port later.
    let mut redis = RedisServer::start().expect("redis-server starts");
    redis.kill9();
    let moat = start_moat(redis.addr(), |c| {
        c.backend.connect_timeout = Duration::from_secs(1);
    });

    let mut c = raw(moat.local_addr());
    assert_eq!(
        c.cmd(&[b"PING"]),
        b"+PONG\r\n",
        "PING is answered by moat itself"
    );
    assert_eq!(c.cmd(&[b"ECHO", b"still here"]), b"$10\r\nstill here\r\n");
    for attempt in 0..3 {
        let got = c.cmd(&[b"GET", b"k"]);
        assert!(
            got.starts_with(UNAVAILABLE),
            "GET #{attempt} with no backend: {}",
            shown(&got)
        );
        assert!(got.ends_with(b"\r\n") && !got[..got.len() - 2].contains(&b'\n'));
    }
    // A pipeline mixing forwarded and local commands: each answered, in order.
    c.send(
        &[
            command(&[b"SET", b"k", b"v"]),
            command(&[b"PING", b"one"]),
            command(&[b"GET", b"k"]),
            command(&[b"ECHO", b"two"]),
        ]
        .concat(),
    );
    let set = c.reply();
    assert!(set.starts_with(UNAVAILABLE), "SET: {}", shown(&set));
    assert_eq!(c.reply(), b"$3\r\none\r\n");
    let get = c.reply();
    assert!(get.starts_with(UNAVAILABLE), "GET: {}", shown(&get));
    assert_eq!(c.reply(), b"$3\r\ntwo\r\n");
    // The connection is still open and usable.
    assert_eq!(c.cmd(&[b"PING"]), b"+PONG\r\n");
    assert_eq!(c.cmd(&[b"SELECT", b"1"]), b"+OK\r\n");

    // Redis comes up on that port: moat reconnects by itself.
    redis
        .restart()
        .expect("redis-server starts again on its port");
    let deadline = Instant::now() + RECOVERY;
    let mut tries = 0;
    loop {
        tries += 1;
        let got = c.cmd(&[b"SET", b"k", b"back"]);
        if got == b"+OK\r\n" {
            break;
        }
        assert!(
            is_backend_error(&got),
            "while reconnecting, SET got {}",
            shown(&got)
        );
        assert!(
            Instant::now() < deadline && tries < 1000,
            "moat did not reconnect within {RECOVERY:?} ({tries} tries); last reply {}",
            shown(&got)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(c.cmd(&[b"GET", b"k"]), b"$4\r\nback\r\n");
    // The SELECT made while Redis was down still applies.
    let script = "redis.call('SELECT', 1); return redis.call('GET', KEYS[1])";
    assert_eq!(
        redis.command(&["EVAL", script, "1", "k"]).expect("EVAL"),
        b"$4\r\nback\r\n"
    );
    assert_eq!(redis.command(&["GET", "k"]).expect("GET"), b"$-1\r\n");
    // New clients work right away.
    let mut fresh = raw(moat.local_addr());
    assert_eq!(fresh.cmd(&[b"SET", b"fresh", b"1"]), b"+OK\r\n");
    let held = redis.connected_clients().expect("INFO") - 1;
    assert!(held <= 2, "Redis holds {held} moat connections, pool is 2");
}

#[test]
fn many_clients_without_backend_get_errors_not_hangs() {
    let mut redis = RedisServer::start().expect("redis-server starts");
    redis.kill9();
    let moat = start_moat(redis.addr(), |c| {
        c.backend.shared_connections = 2;
    });
    // 30 clients, each with a pipeline of 20 GETs: all answered with errors, none hangs.
    let mut clients: Vec<Raw> = (0..30).map(|_| raw(moat.local_addr())).collect();
    for c in &mut clients {
        let req: Vec<u8> = (0..20).flat_map(|_| command(&[b"GET", b"k"])).collect();
        c.send(&req);
    }
    for (i, c) in clients.iter_mut().enumerate() {
        for n in 0..20 {
            let got = c.reply();
            assert!(
                got.starts_with(UNAVAILABLE),
                "client {i} reply {n}: {}",
                shown(&got)
            );
        }
        assert_eq!(
            c.cmd(&[b"PING"]),
            b"+PONG\r\n",
            "client {i} still connected"
        );
    }
}

/// What one client knows about its keys while Redis may be killed under it.
#[derive(Default)]
struct Knowledge {
    /// Value last acknowledged with +OK, while nothing could have wiped it.
    certain: HashMap<usize, Option<Vec<u8>>>,
    /// Every value this client ever sent for each key.
    written: HashMap<usize, HashSet<Vec<u8>>>,
    /// Counter value, when known.
    counter: Option<i64>,
}

/// What a reply may be for one request.
enum Expect {
    /// +OK, or a backend error.
    Set { key: usize, value: Vec<u8> },
    /// The known value, or (when unsure) nil or one of this client's own values.
    Get { key: usize },
    /// Known counter + 1, or (when unsure) any positive integer.
    Incr,
    /// Exactly this (moat answers it itself).
    Local(Vec<u8>),
}

struct Shared {
    /// Bumped just before and just after each kill; a pipeline that saw it change is judged
    /// leniently, and what a client knew is forgotten.
    generation: AtomicU64,
    /// Set once the last restart is done: clients then must recover.
    restarted: AtomicBool,
    /// Pipelines completed, for the main thread to time the kill.
    progress: AtomicUsize,
    /// Backend errors seen in total.
    errors: AtomicUsize,
}

async fn read_reply(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Vec<u8>, String> {
    loop {
        match moat_protocol::Value::decode(buf, 64) {
            Ok(Some((_, used))) => return Ok(buf.drain(..used).collect()),
            Ok(None) => {}
            Err(e) => return Err(format!("malformed reply: {e}: {}", shown(buf))),
        }
        let mut chunk = [0u8; 16384];
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut chunk))
            .await
            .map_err(|_| "no reply within 30 s".to_string())?
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("moat closed the client connection".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A client that keeps pipelining while Redis is killed and restarted. Every reply must be
/// right or a moat backend error, never someone else's data; after the restart it must get
/// a fully successful pipeline.
async fn chaos_client(
    addr: SocketAddr,
    id: usize,
    seed: u64,
    shared: Arc<Shared>,
) -> Result<usize, String> {
    const KEYS: usize = 6;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut buf = Vec::new();
    let mut know = Knowledge::default();
    let mut seen_gen = shared.generation.load(Ordering::SeqCst);
    let mut clean_after_restart = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for round in 0.. {
        if tokio::time::Instant::now() > deadline {
            return Err(format!(
                "no clean pipeline after the restart within 60 s (round {round})"
            ));
        }
        let gen_before = shared.generation.load(Ordering::SeqCst);
        if gen_before != seen_gen {
            // Redis was killed since the last pipeline: whatever it held is gone.
            know.certain.clear();
            know.counter = None;
            seen_gen = gen_before;
        }
        let restarted_before = shared.restarted.load(Ordering::SeqCst);
        let len = rng.random_range(1..=40);
        let mut req = Vec::new();
        let mut expects = Vec::with_capacity(len);
        for i in 0..len {
            let key = rng.random_range(0..KEYS);
            let k = format!("c{id}:k{key}");
            match rng.random_range(0..10) {
                0..=3 => {
                    let mut value = format!("c{id}:k{key}:r{round}:i{i}:").into_bytes();
                    let n = rng.random_range(0..200);
                    value.extend((0..n).map(|_| rng.random::<u8>()));
                    req.extend(command(&[b"SET", k.as_bytes(), &value]));
                    know.written.entry(key).or_default().insert(value.clone());
                    expects.push(Expect::Set { key, value });
                }
                4..=6 => {
                    req.extend(command(&[b"GET", k.as_bytes()]));
                    expects.push(Expect::Get { key });
                }
                7 => {
                    req.extend(command(&[b"INCR", format!("c{id}:n").as_bytes()]));
                    expects.push(Expect::Incr);
                }
                _ => {
                    let msg = format!("ping-{id}-{round}-{i}");
                    req.extend(command(&[b"PING", msg.as_bytes()]));
                    expects.push(Expect::Local(bulk(msg.as_bytes())));
                }
            }
        }
        stream
            .write_all(&req)
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut replies = Vec::with_capacity(len);
        for _ in 0..len {
            replies.push(read_reply(&mut stream, &mut buf).await?);
        }
        // Lenient if Redis may have been killed while this pipeline ran.
        let gen_after = shared.generation.load(Ordering::SeqCst);
        let strict = gen_after == gen_before;
        let mut errors = 0;
        for (n, (expect, got)) in expects.iter().zip(&replies).enumerate() {
            let wrong = |what: &str| {
                format!(
                    "round {round} reply {n} ({what}, strict={strict}): got {}",
                    shown(got)
                )
            };
            if is_backend_error(got) {
                if matches!(expect, Expect::Local(_)) {
                    return Err(wrong("local command got a backend error"));
                }
                errors += 1;
                // What that request did (or not) is unknown now.
                match expect {
                    Expect::Set { key, .. } => {
                        know.certain.remove(key);
                    }
                    Expect::Incr => know.counter = None,
                    _ => {}
                }
                continue;
            }
            match expect {
                Expect::Set { key, value } => {
                    if got != b"+OK\r\n" {
                        return Err(wrong("SET"));
                    }
                    if strict {
                        know.certain.insert(*key, Some(value.clone()));
                    }
                }
                Expect::Get { key } => {
                    let mine = |v: &[u8]| know.written.get(key).is_some_and(|w| w.contains(v));
                    let ok = match (strict, know.certain.get(key)) {
                        (true, Some(Some(v))) => *got == bulk(v),
                        (true, Some(None)) => got == b"$-1\r\n",
                        // Unsure: nil, or a value this client wrote to this very key.
                        _ => {
                            got == b"$-1\r\n"
                                || moat_protocol::Value::decode(got, 4)
                                    .ok()
                                    .flatten()
                                    .and_then(|(v, _)| v.as_bytes().map(mine))
                                    .unwrap_or(false)
                        }
                    };
                    if !ok {
                        return Err(wrong(&format!(
                            "GET c{id}:k{key}, knew {:?}",
                            know.certain.get(key).map(|v| v.as_deref().map(shown))
                        )));
                    }
                    if strict && !know.certain.contains_key(key) && got == b"$-1\r\n" {
                        know.certain.insert(*key, None);
                    }
                }
                Expect::Incr => {
                    let n: Option<i64> = std::str::from_utf8(got)
                        .ok()
                        .and_then(|s| s.strip_prefix(':'))
                        .and_then(|s| s.trim_end().parse().ok());
                    match (n, know.counter) {
                        (Some(n), Some(c)) if strict && n == c + 1 => know.counter = Some(n),
                        (Some(n), _) if n >= 1 && !(strict && know.counter.is_some()) => {
                            know.counter = strict.then_some(n);
                        }
                        _ => return Err(wrong("INCR")),
                    }
                }
                Expect::Local(e) => {
                    if got != e {
                        return Err(wrong(&format!("expected {}", shown(e))));
                    }
                }
            }
        }
        shared.errors.fetch_add(errors, Ordering::SeqCst);
        shared.progress.fetch_add(1, Ordering::SeqCst);
        if restarted_before && errors == 0 && strict {
            clean_after_restart += 1;
            if clean_after_restart >= 2 {
                return Ok(round);
            }
        }
        tokio::task::yield_now().await;
    }
    unreachable!("the loop returns")
}

#[test]
fn kill9_with_pipelines_in_flight() {
    const CLIENTS: usize = 50;
    const SHARED: usize = 2;
    const KILLS: usize = 2;
    let mut stack = Stack::with(RedisServer::builder(), |c| {
        c.backend.shared_connections = SHARED;
    });
    let addr = stack.addr();
    let seed: u64 = std::env::var("MOAT_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("kill9 test seed: {seed} (replay with MOAT_TEST_SEED={seed})");
    let shared = Arc::new(Shared {
        generation: AtomicU64::new(0),
        restarted: AtomicBool::new(false),
        progress: AtomicUsize::new(0),
        errors: AtomicUsize::new(0),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let shared = shared.clone();
            let s = seed ^ (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            rt.spawn(async move {
                chaos_client(addr, id, s, shared)
                    .await
                    .map_err(|e| format!("client {id} (seed {s}): {e}"))
            })
        })
        .collect();

    let wait_progress = |at_least: usize, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while shared.progress.load(Ordering::SeqCst) < at_least {
            assert!(
                Instant::now() < deadline,
                "clients made no progress ({what})"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    for kill in 0..KILLS {
        // Let the clients get going, so pipelines are in flight at the kill.
        let now = shared.progress.load(Ordering::SeqCst);
        wait_progress(now + 2 * CLIENTS, "before the kill");
        // Bumped before the kill and again once the old server is surely dead, so any
        // pipeline that ran strictly inside one interval saw a single server's data.
        shared.generation.fetch_add(1, Ordering::SeqCst);
        stack.redis.kill9();
        shared.generation.fetch_add(1, Ordering::SeqCst);
        // Let the clients run into the dead backend a little.
        let now = shared.progress.load(Ordering::SeqCst);
        wait_progress(now + CLIENTS, "with Redis down");
        stack.redis.restart().expect("redis-server restarts");
        if kill + 1 == KILLS {
            shared.restarted.store(true, Ordering::SeqCst);
        }
    }

    let results: Vec<Result<usize, String>> = rt.block_on(async {
        let mut out = Vec::new();
        for t in tasks {
            out.push(
                tokio::time::timeout(Duration::from_secs(90), t)
                    .await
                    .map_err(|_| "client did not finish".to_string())
                    .and_then(|r| r.map_err(|e| format!("task: {e}")))
                    .and_then(|r| r),
            );
        }
        out
    });
    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {CLIENTS} clients failed (seed {seed}):\n{}",
        failures.len(),
        failures
            .iter()
            .take(10)
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    eprintln!(
        "{} pipelines, {} backend errors over {KILLS} kills",
        shared.progress.load(Ordering::SeqCst),
        shared.errors.load(Ordering::SeqCst)
    );
    assert!(
        shared.errors.load(Ordering::SeqCst) > 0,
        "no client saw a backend error: the kills hit nothing in flight"
    );
    let held = stack.redis_clients();
    assert!(
        held <= SHARED as u64,
        "after recovery Redis holds {held} moat connections, pool is {SHARED}"
    );
    // And fresh clients are served normally.
    let mut c = raw(addr);
    assert_eq!(c.cmd(&[b"SET", b"after", b"all"]), b"+OK\r\n");
    assert_eq!(c.cmd(&[b"GET", b"after"]), b"$3\r\nall\r\n");
}

/// Repeated failures open the circuit breaker: requests then fail at once with the retry
/// hint, and once Redis is back a probe closes it again.
#[test]
fn the_breaker_opens_on_repeated_failures_and_closes_when_redis_returns() {
    let mut redis = RedisServer::start().expect("redis-server starts");
    redis.kill9();
    let moat = start_moat(redis.addr(), |c| {
        c.backend.connect_timeout = Duration::from_secs(1);
        c.backend.breaker.consecutive_failures = 2;
        c.backend.breaker.open_for = Duration::from_millis(500);
    });
    let mut c = raw(moat.local_addr());
    let deadline = Instant::now() + RECOVERY;
    let mut open = None;
    while Instant::now() < deadline {
        let got = c.cmd(&[b"GET", b"k"]);
        assert!(is_backend_error(&got), "{}", shown(&got));
        if got.starts_with(b"-ERR moat: backend unavailable (circuit open, retry in ") {
            open = Some(got);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(open.is_some(), "the breaker never opened");

    redis.restart().expect("redis restarts");
    let deadline = Instant::now() + RECOVERY;
    loop {
        let got = c.cmd(&[b"GET", b"k"]);
        if got == b"$-1\r\n" {
            break;
        }
        assert!(is_backend_error(&got), "{}", shown(&got));
        assert!(
            Instant::now() < deadline,
            "moat never recovered: {}",
            shown(&got)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Connections past `max_lifetime` are replaced while clients keep working: every reply is
/// right, Redis sees new connections over time, and never more than the pool at once.
#[test]
fn connections_are_recycled_after_their_lifetime_without_failing_requests() {
    let stack = Stack::with(RedisServer::builder(), |c| {
        c.backend.max_lifetime = Duration::from_millis(300);
        c.backend.shared_connections = 2;
        c.backend.min_idle = 2;
    });
    let first_accepted = stack
        .redis
        .info_u64("total_connections_received")
        .expect("INFO");
    let mut c = raw(stack.addr());
    let end = Instant::now() + Duration::from_secs(2);
    let mut i = 0u64;
    let mut most = 0;
    while Instant::now() < end {
        let key = format!("life:{i}");
        let value = format!("v{i}");
        assert_eq!(
            c.cmd(&[b"SET", key.as_bytes(), value.as_bytes()]),
            b"+OK\r\n"
        );
        assert_eq!(c.cmd(&[b"GET", key.as_bytes()]), bulk(value.as_bytes()));
        if i.is_multiple_of(50) {
            most = most.max(stack.redis_clients());
        }
        i += 1;
    }
    let accepted = stack
        .redis
        .info_u64("total_connections_received")
        .expect("INFO")
        - first_accepted;
    assert!(most <= 2, "Redis saw {most} moat connections at once");
    // Each INFO above is one connection; the rest are moat's replacements.
    assert!(
        accepted > 4 + i / 50 + 1,
        "connections were not recycled: {accepted} accepted for {i} rounds"
    );
}

/// `min_idle` connections are open before any client arrives.
#[test]
fn min_idle_connections_are_opened_at_start() {
    let stack = Stack::with(RedisServer::builder(), |c| {
        c.backend.shared_connections = 3;
        c.backend.min_idle = 3;
    });
    let deadline = Instant::now() + RECOVERY;
    while stack.redis_clients() < 3 {
        assert!(
            Instant::now() < deadline,
            "min_idle connections never opened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(stack.redis_clients(), 3);
}

/// An idle shared connection is checked with PING.
#[test]
fn idle_shared_connections_are_health_checked() {
    let stack = Stack::with(RedisServer::builder(), |c| {
        c.backend.health_check_interval = Duration::from_millis(100);
    });
    let deadline = Instant::now() + RECOVERY;
    loop {
        let list = stack
            .redis
            .command(&["CLIENT", "LIST"])
            .expect("CLIENT LIST");
        let list = String::from_utf8_lossy(&list);
        if list
            .lines()
            .any(|l| l.contains("name=moat-shared-w0") && l.contains("cmd=ping"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "no PING seen: {list}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
