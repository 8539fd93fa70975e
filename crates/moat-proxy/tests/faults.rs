//! Fault injection under load against a real redis-server: kill -9, SIGSTOP past the
//! request timeout, a server refusing connections (maxclients), `DEBUG SLEEP`, and the
//! circuit breaker closing again once Redis is back.
//!
//! Every scenario runs 30 concurrent clients, each pipelining `SET key value` + `GET key`
//! with keys and values unique to the client and round, so a reply handed to the wrong
//! client is detectable. Each reply must be the right one or one of moat's documented
//! backend errors. After each fault the test measures, and prints, the time from Redis's
//! return to the first successful reply through moat. A sampler watches Redis's
//! `connected_clients` so moat never holds more than its shared pool.
//!
//! Run with `--nocapture` to see the measurements. Tests take a lock so they run one at a
//! time: the printed recovery times are not skewed by another scenario's load.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{bulk, command, shown, start_moat};
use moat_proxy::{Config, RunningProxy};
use moat_testkit::RedisServer;

/// Concurrent load clients.
const CLIENTS: usize = 30;
/// Backend connections in moat's shared pool (the default).
const SHARED: usize = 2;
/// A reply must come within this, or the test fails instead of hanging.
const REPLY_TIMEOUT: Duration = Duration::from_secs(20);
/// Moat must serve again within this once Redis is back (its reconnect backoff tops out at
/// 5 s, the breaker's open time is at most 2 s in these tests).
const RECOVERY: Duration = Duration::from_secs(30);
/// Any other wait for something to happen.
const WAIT: Duration = Duration::from_secs(30);

const UNAVAILABLE: &[u8] = b"-ERR moat: backend unavailable\r\n";
const RECONNECTING: &[u8] = b"-ERR moat: backend unavailable (reconnecting)\r\n";
const CIRCUIT_OPEN: &[u8] = b"-ERR moat: backend unavailable (circuit open, retry in ";
const LOST: &[u8] = b"-ERR moat: backend connection lost before the reply\r\n";
const TIMED_OUT: &[u8] =
    b"-ERR moat: backend timed out (no reply in time; the request was not retried)\r\n";

static SERIAL: Mutex<()> = Mutex::new(());

/// One scenario at a time (see the module doc).
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a reply was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ok,
    Nil,
    Unavailable,
    CircuitOpen,
    Lost,
    TimedOut,
}

const KINDS: [Kind; 6] = [
    Kind::Ok,
    Kind::Nil,
    Kind::Unavailable,
    Kind::CircuitOpen,
    Kind::Lost,
    Kind::TimedOut,
];

/// One of moat's documented backend errors, or `None`.
fn documented_error(reply: &[u8]) -> Option<Kind> {
    if reply == UNAVAILABLE || reply == RECONNECTING {
        Some(Kind::Unavailable)
    } else if reply.starts_with(CIRCUIT_OPEN) && reply.ends_with(b"s)\r\n") {
        Some(Kind::CircuitOpen)
    } else if reply == LOST {
        Some(Kind::Lost)
    } else if reply == TIMED_OUT {
        Some(Kind::TimedOut)
    } else {
        None
    }
}

/// A blocking RESP client whose every wait is bounded.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Result<Client, String> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("connect to moat: {e}"))?;
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(REPLY_TIMEOUT)))
            .and_then(|()| stream.set_nodelay(true))
            .map_err(|e| format!("socket options: {e}"))?;
        Ok(Client {
            stream,
            buf: Vec::new(),
        })
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.stream
            .write_all(bytes)
            .map_err(|e| format!("write: {e}"))
    }

    fn reply(&mut self) -> Result<Vec<u8>, String> {
        loop {
            match moat_protocol::Value::decode(&self.buf, 64) {
                Ok(Some((_, used))) => return Ok(self.buf.drain(..used).collect()),
                Ok(None) => {}
                Err(e) => return Err(format!("malformed reply {e}: {}", shown(&self.buf))),
            }
            let mut chunk = [0u8; 16384];
            let n = match self.stream.read(&mut chunk) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(format!(
                        "no reply within {REPLY_TIMEOUT:?} (a hang); buffered {}",
                        shown(&self.buf)
                    ));
                }
                Err(e) => return Err(format!("read: {e}")),
            };
            if n == 0 {
                return Err(format!(
                    "moat closed the connection; buffered {}",
                    shown(&self.buf)
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn call(&mut self, args: &[&[u8]]) -> Result<Vec<u8>, String> {
        self.send(&command(args))?;
        self.reply()
    }
}

/// What the load clients saw.
struct Stats {
    base: Instant,
    stop: AtomicBool,
    /// Replies by [`Kind`] (index in [`KINDS`]).
    kinds: [AtomicU64; 6],
    /// Completed SET+GET rounds.
    rounds: AtomicU64,
    /// Longest SET+GET round trip, in microseconds: overall and since the last reset.
    max_latency_us: AtomicU64,
    window_latency_us: AtomicU64,
    /// First fully successful round at or after `mark_ns` (0: none yet).
    mark_ns: AtomicU64,
    first_ok_ns: AtomicU64,
    /// Per client: time of its last fully successful round.
    last_ok_ns: Vec<AtomicU64>,
    failures: Mutex<Vec<String>>,
}

impl Stats {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn ns(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    fn count(&self, kind: Kind) -> u64 {
        let i = KINDS.iter().position(|k| *k == kind).unwrap();
        self.kinds[i].load(Ordering::SeqCst)
    }

    fn bump(&self, kind: Kind) {
        let i = KINDS.iter().position(|k| *k == kind).unwrap();
        self.kinds[i].fetch_add(1, Ordering::SeqCst);
    }

    fn errors(&self) -> u64 {
        [
            Kind::Unavailable,
            Kind::CircuitOpen,
            Kind::Lost,
            Kind::TimedOut,
        ]
        .iter()
        .map(|k| self.count(*k))
        .sum()
    }

    fn summary(&self) -> String {
        let kinds: Vec<String> = KINDS
            .iter()
            .map(|k| format!("{k:?}={}", self.count(*k)))
            .collect();
        format!(
            "{} rounds; replies {}; longest round trip {} ms",
            self.rounds.load(Ordering::SeqCst),
            kinds.join(" "),
            self.max_latency_us.load(Ordering::SeqCst) / 1000
        )
    }

    fn failures(&self) -> Vec<String> {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// 30 clients doing their own SET/GET rounds until stopped.
struct Load {
    stats: Arc<Stats>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr) -> Load {
        let stats = Arc::new(Stats {
            base: Instant::now(),
            stop: AtomicBool::new(false),
            kinds: Default::default(),
            rounds: AtomicU64::new(0),
            max_latency_us: AtomicU64::new(0),
            window_latency_us: AtomicU64::new(0),
            mark_ns: AtomicU64::new(u64::MAX),
            first_ok_ns: AtomicU64::new(0),
            last_ok_ns: (0..CLIENTS).map(|_| AtomicU64::new(0)).collect(),
            failures: Mutex::new(Vec::new()),
        });
        let threads = (0..CLIENTS)
            .map(|id| {
                let stats = stats.clone();
                std::thread::Builder::new()
                    .name(format!("load-{id}"))
                    .spawn(move || {
                        if let Err(e) = load_client(addr, id, &stats) {
                            stats
                                .failures
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(format!("client {id}: {e}"));
                        }
                    })
                    .unwrap()
            })
            .collect();
        Load { stats, threads }
    }

    /// Waits until every client has completed `n` more rounds with a full success; fails
    /// the test (naming the load's state) after `WAIT`.
    fn wait_all_ok_after(&self, at: Instant, what: &str) {
        let at = self.stats.ns(at);
        let deadline = Instant::now() + WAIT;
        loop {
            self.assert_no_failures(what);
            let behind = self
                .stats
                .last_ok_ns
                .iter()
                .filter(|t| t.load(Ordering::SeqCst) <= at)
                .count();
            if behind == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {behind} of {CLIENTS} clients got no successful reply within {WAIT:?}; {}",
                self.stats.summary()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until `cond` holds on the stats, or fails the test after `WAIT`.
    fn wait_for(&self, what: &str, cond: impl Fn(&Stats) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !cond(&self.stats) {
            self.assert_no_failures(what);
            assert!(
                Instant::now() < deadline,
                "{what}: not within {WAIT:?}; {}",
                self.stats.summary()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// From now on, the first fully successful round is recorded.
    fn mark(&self, at: Instant) {
        self.stats.first_ok_ns.store(0, Ordering::SeqCst);
        self.stats
            .mark_ns
            .store(self.stats.ns(at), Ordering::SeqCst);
    }

    /// Time from `at` (the mark) to the load's first successful round after it.
    fn first_ok_since(&self, at: Instant) -> Duration {
        self.wait_for("a load client succeeds", |s| {
            s.first_ok_ns.load(Ordering::SeqCst) != 0
        });
        let ok = self.stats.first_ok_ns.load(Ordering::SeqCst);
        Duration::from_nanos(ok.saturating_sub(self.stats.ns(at)))
    }

    fn assert_no_failures(&self, what: &str) {
        let failures = self.stats.failures();
        assert!(
            failures.is_empty(),
            "{what}: {} load clients failed:\n{}",
            failures.len(),
            failures
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    /// Stops the clients and checks none of them failed.
    fn finish(mut self, what: &str) -> Arc<Stats> {
        self.stats.stop.store(true, Ordering::SeqCst);
        for t in std::mem::take(&mut self.threads) {
            // Each client stops after its current round, which is bounded by REPLY_TIMEOUT.
            t.join().unwrap();
        }
        self.assert_no_failures(what);
        eprintln!("[{what}] load: {}", self.stats.summary());
        self.stats
    }
}

/// One load client: rounds of pipelined `SET f:c<id>:r<round> <value>` + `GET` of the same
/// key, each reply checked.
fn load_client(addr: SocketAddr, id: usize, stats: &Stats) -> Result<(), String> {
    let mut c = Client::connect(addr)?;
    let mut round = 0u64;
    while !stats.stop.load(Ordering::SeqCst) {
        round += 1;
        let key = format!("f:c{id}:r{round}");
        // Varying length, unique content: another client's or round's value never matches.
        let value = format!("c{id}:r{round}:{}", "v".repeat((round % 50) as usize));
        let mut req = command(&[b"SET", key.as_bytes(), value.as_bytes()]);
        req.extend(command(&[b"GET", key.as_bytes()]));
        let sent = Instant::now();
        c.send(&req)?;
        let set = c.reply()?;
        let get = c.reply()?;
        let latency = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
        stats.max_latency_us.fetch_max(latency, Ordering::SeqCst);
        stats.window_latency_us.fetch_max(latency, Ordering::SeqCst);
        let context = || {
            format!(
                "round {round}: SET {key} {value} -> {}, GET {key} -> {}",
                shown(&set),
                shown(&get)
            )
        };
        let set_kind = if set == b"+OK\r\n" {
            Kind::Ok
        } else {
            documented_error(&set)
                .ok_or_else(|| format!("SET got a wrong reply (misrouted?): {}", context()))?
        };
        let get_kind = if get == bulk(value.as_bytes()) {
            Kind::Ok
        } else if get == b"$-1\r\n" {
            if set_kind == Kind::Ok {
                return Err(format!(
                    "SET was acknowledged but the GET pipelined behind it found nothing: {}",
                    context()
                ));
            }
            Kind::Nil
        } else {
            documented_error(&get)
                .ok_or_else(|| format!("GET got a wrong reply (misrouted?): {}", context()))?
        };
        stats.bump(set_kind);
        stats.bump(get_kind);
        stats.rounds.fetch_add(1, Ordering::SeqCst);
        if set_kind == Kind::Ok && get_kind == Kind::Ok {
            let now = stats.now_ns();
            stats.last_ok_ns[id].store(now, Ordering::SeqCst);
            if now >= stats.mark_ns.load(Ordering::SeqCst) {
                let _ =
                    stats
                        .first_ok_ns
                        .compare_exchange(0, now, Ordering::SeqCst, Ordering::SeqCst);
            }
        } else {
            // A real client backs off a little on errors; 30 threads spinning on instant
            // errors would only starve moat of CPU.
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    Ok(())
}

/// Samples Redis's connections from moat while the test runs.
struct Sampler {
    stop: Arc<AtomicBool>,
    /// While set, samples are not taken (Redis frozen, restarting, or just resumed with
    /// closed connections it has not noticed yet).
    quiet: Arc<AtomicBool>,
    /// Most connections seen: all but the sampler's own, and those named by moat.
    max_others: Arc<AtomicU64>,
    max_named: Arc<AtomicU64>,
    samples: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

/// `connected_clients` minus the sampler's own connection, and the connections named
/// `moat-shared-*` in CLIENT LIST; `None` if Redis does not answer promptly.
fn sample_redis(redis: SocketAddr) -> Option<(u64, u64)> {
    let timeout = Duration::from_millis(300);
    let mut s = TcpStream::connect_timeout(&redis, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    let mut req = command(&[b"INFO", b"clients"]);
    req.extend(command(&[b"CLIENT", b"LIST"]));
    s.write_all(&req).ok()?;
    let mut buf = Vec::new();
    let mut replies = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(1);
    while replies.len() < 2 && Instant::now() < deadline {
        if let Some((v, used)) = moat_protocol::Value::decode(&buf, 8).ok()? {
            replies.push(v);
            buf.drain(..used);
            continue;
        }
        let mut chunk = [0u8; 16384];
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let info = String::from_utf8_lossy(replies.first()?.as_bytes()?).into_owned();
    let list = String::from_utf8_lossy(replies.get(1)?.as_bytes()?).into_owned();
    let connected: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))?
        .trim()
        .parse()
        .ok()?;
    let named = list
        .lines()
        .filter(|l| l.contains(" name=moat-shared"))
        .count() as u64;
    Some((connected.saturating_sub(1), named))
}

impl Sampler {
    fn start(redis: SocketAddr) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let quiet = Arc::new(AtomicBool::new(false));
        let max_others = Arc::new(AtomicU64::new(0));
        let max_named = Arc::new(AtomicU64::new(0));
        let samples = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, quiet) = (stop.clone(), quiet.clone());
            let (max_others, max_named, samples) =
                (max_others.clone(), max_named.clone(), samples.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(20));
                    if quiet.load(Ordering::SeqCst) {
                        continue;
                    }
                    let Some((others, named)) = sample_redis(redis) else {
                        continue;
                    };
                    // Discard a sample that straddled the start of a quiet period.
                    if quiet.load(Ordering::SeqCst) {
                        continue;
                    }
                    max_others.fetch_max(others, Ordering::SeqCst);
                    max_named.fetch_max(named, Ordering::SeqCst);
                    samples.fetch_add(1, Ordering::SeqCst);
                }
            })
        };
        Sampler {
            stop,
            quiet,
            max_others,
            max_named,
            samples,
            thread: Some(thread),
        }
    }

    fn quiet(&self, on: bool) {
        self.quiet.store(on, Ordering::SeqCst);
    }

    /// Stops sampling and checks Redis never saw more than `cap` connections from moat.
    fn finish(mut self, what: &str, cap: usize) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        let samples = self.samples.load(Ordering::SeqCst);
        let others = self.max_others.load(Ordering::SeqCst);
        let named = self.max_named.load(Ordering::SeqCst);
        eprintln!(
            "[{what}] Redis connections from moat: at most {others} (named moat-shared: \
             {named}) over {samples} samples; cap {cap}"
        );
        assert!(samples >= 10, "{what}: only {samples} samples of Redis");
        assert!(
            others <= cap as u64 && named <= cap as u64,
            "{what}: Redis saw {others} connections ({named} named moat-shared) from a \
             pool capped at {cap}"
        );
    }
}

/// Redis, moat in front of it, the load and the sampler.
struct Rig {
    redis: RedisServer,
    moat: RunningProxy,
    load: Load,
    sampler: Sampler,
    name: &'static str,
}

impl Rig {
    fn start(
        name: &'static str,
        redis: moat_testkit::RedisServerBuilder,
        tweak: impl FnOnce(&mut Config),
    ) -> Rig {
        let redis = redis.start().expect("redis-server starts");
        let moat = start_moat(redis.addr(), |c| {
            c.backend.shared_connections = SHARED;
            tweak(c);
        });
        let sampler = Sampler::start(redis.addr());
        let load = Load::start(moat.local_addr());
        let rig = Rig {
            redis,
            moat,
            load,
            sampler,
            name,
        };
        rig.warm_up();
        rig
    }

    fn addr(&self) -> SocketAddr {
        self.moat.local_addr()
    }

    /// Lets every client complete successful rounds before a fault.
    fn warm_up(&self) {
        let start = Instant::now();
        self.load.wait_all_ok_after(start, "warm-up");
        let rounds = self.load.stats.rounds.load(Ordering::SeqCst);
        self.load.wait_for("load keeps running", |s| {
            s.rounds.load(Ordering::SeqCst) >= rounds + 3 * CLIENTS as u64
        });
    }

    /// Waits for the first success through moat after Redis returned at `back`, then for
    /// every load client to succeed again. Prints and returns the time to the first success.
    fn recovery(&self, back: Instant, what: &str) -> Duration {
        let probe = probe_until_ok(self.addr(), back, what);
        let load = self.load.first_ok_since(back);
        self.load.wait_all_ok_after(back, what);
        let all = back.elapsed();
        eprintln!(
            "[{}] {what}: first successful reply through moat {} ms after Redis returned \
             (probe client: {} ms; first load client: {} ms; all {CLIENTS} clients within {} ms)",
            self.name,
            probe.min(load).as_millis(),
            probe.as_millis(),
            load.as_millis(),
            all.as_millis()
        );
        probe.min(load)
    }

    fn finish(self) -> Arc<Stats> {
        let stats = self.load.finish(self.name);
        self.sampler.finish(self.name, SHARED);
        // A fresh client is served normally at the end.
        let mut c = Client::connect(self.moat.local_addr()).unwrap();
        assert_eq!(c.call(&[b"SET", b"f:end", b"1"]).unwrap(), b"+OK\r\n");
        assert_eq!(c.call(&[b"GET", b"f:end"]).unwrap(), b"$1\r\n1\r\n");
        let metrics = self.moat.metrics().snapshot();
        eprintln!("[{}] moat metrics: {metrics:?}", self.name);
        drop(self.redis);
        stats
    }
}

/// Sends `SET` through moat until one succeeds; returns the time since `back`. Every
/// failed attempt must be a documented backend error.
fn probe_until_ok(addr: SocketAddr, back: Instant, what: &str) -> Duration {
    let mut c = Client::connect(addr).unwrap();
    let deadline = back + RECOVERY;
    for n in 0u64.. {
        let reply = c
            .call(&[b"SET", b"f:probe", n.to_string().as_bytes()])
            .unwrap_or_else(|e| panic!("{what}: probe {n}: {e}"));
        if reply == b"+OK\r\n" {
            return back.elapsed();
        }
        assert!(
            documented_error(&reply).is_some(),
            "{what}: probe {n} got {}",
            shown(&reply)
        );
        assert!(
            Instant::now() < deadline,
            "{what}: moat did not serve again within {RECOVERY:?} of Redis returning \
             ({n} probes); last reply {}",
            shown(&reply)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    unreachable!("the loop returns")
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

/// 1. kill -9 under load, restart: in-flight requests fail with moat's errors, nothing is
///    misrouted, and moat serves again on its own. Default breaker settings.
#[test]
fn kill9_under_load_then_restart() {
    kill9_cycles("kill9", None);
}

/// The same with `breaker.probes = 1`, which sidesteps the half-open breaker never closing
/// (see `breaker_closes_again_after_redis_returns`), so the kill -9 recovery time itself is
/// measured even while that bug stands.
#[test]
fn kill9_under_load_then_restart_with_one_breaker_probe() {
    kill9_cycles("kill9-probes1", Some(1));
}

fn kill9_cycles(name: &'static str, probes: Option<u32>) {
    let _serial = serial();
    let mut rig = Rig::start(name, RedisServer::builder(), |c| {
        if let Some(p) = probes {
            c.backend.breaker.probes = p;
        }
    });
    let mut times = Vec::new();
    for cycle in 1..=3 {
        let errors = rig.load.stats.errors();
        rig.sampler.quiet(true);
        rig.redis.kill9();
        // The clients run into the dead backend.
        rig.load.wait_for("clients see Redis gone", |s| {
            s.errors() >= errors + CLIENTS as u64
        });
        std::thread::sleep(Duration::from_millis(500));
        rig.redis.restart().expect("redis-server restarts");
        let back = Instant::now();
        rig.load.mark(back);
        let took = rig.recovery(back, &format!("kill -9 #{cycle}"));
        times.push(took);
        std::thread::sleep(Duration::from_millis(200));
        rig.sampler.quiet(false);
        // Run under normal load for a while, so the sampler sees the reconnected pool.
        std::thread::sleep(Duration::from_millis(500));
    }
    let lost = rig.moat.metrics().get("backend_connections_lost").unwrap();
    let stats = rig.finish();
    eprintln!(
        "[{name}] recovery times: {}",
        times.iter().map(|t| ms(*t)).collect::<Vec<_>>().join(", ")
    );
    assert!(
        stats.count(Kind::Lost) + stats.count(Kind::Unavailable) + stats.count(Kind::CircuitOpen)
            > 0,
        "no client saw a backend error: the kills hit nothing"
    );
    assert!(lost >= 3, "backend_connections_lost = {lost} after 3 kills");
}

/// 2. SIGSTOP for longer than `request_timeout` (1 s): requests owed by the frozen server get
///    the timeout error rather than hanging, `backend_timeouts` counts it, and after SIGCONT
///    moat serves again.
#[test]
fn sigstop_longer_than_request_timeout() {
    let _serial = serial();
    let rig = Rig::start("sigstop", RedisServer::builder(), |c| {
        c.backend.request_timeout = Duration::from_secs(1);
    });
    let mut times = Vec::new();
    for cycle in 1..=3 {
        let timed_out = rig.load.stats.count(Kind::TimedOut);
        let metric = rig.moat.metrics().get("backend_timeouts").unwrap();
        rig.sampler.quiet(true);
        rig.load.stats.window_latency_us.store(0, Ordering::SeqCst);
        let paused = Instant::now();
        rig.redis.pause();
        // Frozen three times the request timeout.
        std::thread::sleep(Duration::from_secs(3));
        let during = rig.load.stats.window_latency_us.load(Ordering::SeqCst);
        let new_timeouts = rig.load.stats.count(Kind::TimedOut) - timed_out;
        let new_metric = rig.moat.metrics().get("backend_timeouts").unwrap() - metric;
        rig.redis.resume();
        let back = Instant::now();
        rig.load.mark(back);
        eprintln!(
            "[sigstop] pause #{cycle}: {} held; {new_timeouts} timeout replies and \
             backend_timeouts +{new_metric} while frozen; longest round trip answered \
             meanwhile {} ms",
            ms(back - paused),
            during / 1000
        );
        assert!(
            new_timeouts > 0,
            "pause #{cycle}: no client got the timeout error while Redis was frozen for 3 s \
             with request_timeout = 1 s; {}",
            rig.load.stats.summary()
        );
        assert!(
            new_metric > 0,
            "pause #{cycle}: backend_timeouts did not move"
        );
        let took = rig.recovery(back, &format!("SIGSTOP #{cycle} then SIGCONT"));
        times.push(took);
        // Give Redis time to notice the connections moat closed while it was frozen.
        std::thread::sleep(Duration::from_millis(500));
        rig.sampler.quiet(false);
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(rig.moat.metrics().get("backend_timeouts").unwrap() > 0);
    rig.finish();
    eprintln!(
        "[sigstop] recovery times: {}",
        times.iter().map(|t| ms(*t)).collect::<Vec<_>>().join(", ")
    );
}

/// 3. Redis refusing moat's connections (`maxclients 1`, the one slot held by the test):
///    clients get prompt "backend unavailable" errors, the breaker opens, and once the slot is
///    released moat serves again.
#[test]
fn redis_refusing_connections_opens_the_breaker_then_recovers() {
    let _serial = serial();
    let redis = RedisServer::builder()
        .config("maxclients 1")
        .start()
        .expect("redis-server starts");
    // Take the only slot (retrying while Redis still counts the testkit's start-up probe).
    let mut held = None;
    let deadline = Instant::now() + WAIT;
    while held.is_none() {
        assert!(Instant::now() < deadline, "could not take Redis's one slot");
        let mut c = Client::connect(redis.addr()).unwrap();
        if c.call(&[b"PING"]).ok().as_deref() == Some(b"+PONG\r\n") {
            held = Some(c);
        } else {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let mut held = held.unwrap();
    // Check the slot is really taken: another connection is refused.
    let mut other = Client::connect(redis.addr()).unwrap();
    let refused = other.call(&[b"PING"]).unwrap_or_default();
    assert!(
        refused.starts_with(b"-ERR max number of clients reached"),
        "a second connection to Redis got {}",
        shown(&refused)
    );
    drop(other);

    let moat = start_moat(redis.addr(), |c| {
        c.backend.shared_connections = 1;
        c.backend.connect_timeout = Duration::from_secs(1);
        c.backend.breaker.consecutive_failures = 3;
        c.backend.breaker.open_for = Duration::from_secs(1);
    });
    let load = Load::start(moat.local_addr());
    // Every reply is an error while the slot is held; the breaker opens.
    load.wait_for("the breaker opens and a client sees `circuit open`", |s| {
        s.count(Kind::CircuitOpen) > 0 && s.count(Kind::Unavailable) > 0
    });
    // Run a while longer in that state.
    std::thread::sleep(Duration::from_secs(2));
    let stats = &load.stats;
    let opened = moat.metrics().get("breaker_opened").unwrap();
    let failures = moat.metrics().get("backend_connect_failures").unwrap();
    eprintln!(
        "[maxclients] while refused: {}; breaker_opened {opened}, backend_connect_failures \
         {failures}",
        stats.summary()
    );
    assert!(opened > 0, "breaker_opened = 0");
    assert!(failures > 0, "backend_connect_failures = 0");
    assert_eq!(
        stats.count(Kind::Ok),
        0,
        "a request succeeded while Redis refused every connection"
    );
    assert_eq!(stats.count(Kind::Lost) + stats.count(Kind::TimedOut), 0);
    // Prompt: nothing waited anywhere near the reply timeout (printed, not asserted).
    eprintln!(
        "[maxclients] longest round trip while refused: {} ms",
        stats.max_latency_us.load(Ordering::SeqCst) / 1000
    );

    // Release the slot.
    held.send(&command(&[b"QUIT"])).unwrap();
    let _ = held.reply();
    drop(held);
    let back = Instant::now();
    load.mark(back);
    let probe = probe_until_ok(moat.local_addr(), back, "slot released");
    let first = load.first_ok_since(back);
    load.wait_all_ok_after(back, "slot released");
    eprintln!(
        "[maxclients] slot released: first successful reply through moat {} ms later \
         (probe {} ms, first load client {} ms; all clients within {} ms)",
        probe.min(first).as_millis(),
        probe.as_millis(),
        first.as_millis(),
        back.elapsed().as_millis()
    );
    std::thread::sleep(Duration::from_millis(500));
    load.finish("maxclients");
    // Redis's one slot is moat's one shared connection now.
    let mut late = Client::connect(redis.addr()).unwrap();
    let reply = late.call(&[b"PING"]).unwrap_or_default();
    assert!(
        reply.starts_with(b"-ERR max number of clients reached"),
        "Redis's only slot should be moat's connection; a new one got {}",
        shown(&reply)
    );
    eprintln!("[maxclients] moat metrics: {:?}", moat.metrics().snapshot());
}

/// 4a. `DEBUG SLEEP 0.3` from one client stalls the others sharing the backend, but every
///     reply is still the right one.
#[test]
fn debug_sleep_stalls_the_shared_connection_but_replies_stay_correct() {
    let _serial = serial();
    let rig = Rig::start(
        "debug-sleep-0.3",
        RedisServer::builder().config("enable-debug-command yes"),
        |_| {},
    );
    let mut sleeper = Client::connect(rig.addr()).unwrap();
    for n in 1..=3 {
        let errors = rig.load.stats.errors();
        rig.load.stats.window_latency_us.store(0, Ordering::SeqCst);
        let sent = Instant::now();
        let reply = sleeper.call(&[b"DEBUG", b"SLEEP", b"0.3"]).unwrap();
        let took = sent.elapsed();
        assert_eq!(reply, b"+OK\r\n", "DEBUG SLEEP 0.3 #{n}: {}", shown(&reply));
        let back = Instant::now();
        rig.load.wait_all_ok_after(back, "after DEBUG SLEEP");
        let stalled = rig.load.stats.window_latency_us.load(Ordering::SeqCst);
        eprintln!(
            "[debug-sleep-0.3] #{n}: DEBUG SLEEP answered after {} ms; longest load round \
             trip meanwhile {} ms",
            took.as_millis(),
            stalled / 1000
        );
        // The stall is Redis's own (single-threaded) sleep: a lower bound, not a speed claim.
        assert!(
            stalled >= 200_000,
            "#{n}: no load request waited on the sleeping Redis (longest {} ms)",
            stalled / 1000
        );
        assert_eq!(
            rig.load.stats.errors(),
            errors,
            "#{n}: a 0.3 s sleep produced errors (request_timeout is 10 s): {}",
            rig.load.stats.summary()
        );
    }
    // Normal load for a while, so the sampler sees the pool.
    std::thread::sleep(Duration::from_secs(1));
    let stats = rig.finish();
    assert_eq!(stats.errors(), 0, "{}", stats.summary());
}

/// 4b. With `request_timeout = 1s`, `DEBUG SLEEP 3` makes the requests owed by the stalled
///     connections fail with the timeout error; afterwards moat serves again.
#[test]
fn debug_sleep_past_request_timeout_times_out_then_recovers() {
    let _serial = serial();
    let rig = Rig::start(
        "debug-sleep-3",
        RedisServer::builder().config("enable-debug-command yes"),
        |c| c.backend.request_timeout = Duration::from_secs(1),
    );
    let mut times = Vec::new();
    for n in 1..=2 {
        let timed_out = rig.load.stats.count(Kind::TimedOut);
        let metric = rig.moat.metrics().get("backend_timeouts").unwrap();
        rig.sampler.quiet(true);
        let mut sleeper = Client::connect(rig.addr()).unwrap();
        let sent = Instant::now();
        let reply = sleeper.call(&[b"DEBUG", b"SLEEP", b"3"]).unwrap();
        let answered = sent.elapsed();
        assert_eq!(
            reply,
            TIMED_OUT,
            "DEBUG SLEEP 3 #{n} with request_timeout 1 s: {}",
            shown(&reply)
        );
        // Redis wakes 3 s after it started sleeping: recovery is measured from there.
        let awake = sent + Duration::from_secs(3);
        let now = Instant::now();
        if now < awake {
            std::thread::sleep(awake - now);
        }
        rig.load.mark(awake);
        let took = rig.recovery(awake, &format!("DEBUG SLEEP 3 #{n}"));
        times.push(took);
        let new_timeouts = rig.load.stats.count(Kind::TimedOut) - timed_out;
        let new_metric = rig.moat.metrics().get("backend_timeouts").unwrap() - metric;
        eprintln!(
            "[debug-sleep-3] #{n}: the sleeper got the timeout error after {} ms; \
             {new_timeouts} load replies timed out; backend_timeouts +{new_metric}",
            answered.as_millis()
        );
        assert!(new_timeouts > 0, "#{n}: no load request timed out");
        assert!(new_metric > 0, "#{n}: backend_timeouts did not move");
        std::thread::sleep(Duration::from_millis(500));
        rig.sampler.quiet(false);
        std::thread::sleep(Duration::from_millis(500));
    }
    rig.finish();
    eprintln!(
        "[debug-sleep-3] recovery times: {}",
        times.iter().map(|t| ms(*t)).collect::<Vec<_>>().join(", ")
    );
}

/// 5. The breaker never stays open: with Redis down long enough for it to open, half-open
///    and open again several times, requests succeed within a bounded time of Redis's return.
#[test]
fn breaker_closes_again_after_redis_returns() {
    let _serial = serial();
    let mut rig = Rig::start("breaker", RedisServer::builder(), |c| {
        c.backend.breaker.consecutive_failures = 3;
        c.backend.breaker.open_for = Duration::from_millis(500);
    });
    let mut times = Vec::new();
    for (cycle, down) in [(1, 1000), (2, 3000), (3, 6000)] {
        let opened = rig.moat.metrics().get("breaker_opened").unwrap();
        let open_replies = rig.load.stats.count(Kind::CircuitOpen);
        rig.sampler.quiet(true);
        rig.redis.kill9();
        rig.load.wait_for("the breaker opens", |s| {
            s.count(Kind::CircuitOpen) > open_replies
        });
        // Down for a while: the breaker goes through open / half-open rounds, the
        // reconnect backoff grows.
        std::thread::sleep(Duration::from_millis(down));
        let opened_now = rig.moat.metrics().get("breaker_opened").unwrap() - opened;
        rig.redis.restart().expect("redis-server restarts");
        let back = Instant::now();
        rig.load.mark(back);
        let took = rig.recovery(
            back,
            &format!("breaker cycle {cycle} (Redis down {down} ms, breaker opened {opened_now}x)"),
        );
        times.push(took);
        assert!(opened_now > 0);
        std::thread::sleep(Duration::from_millis(200));
        rig.sampler.quiet(false);
        std::thread::sleep(Duration::from_millis(500));
    }
    let stats = rig.finish();
    eprintln!(
        "[breaker] recovery times: {}",
        times.iter().map(|t| ms(*t)).collect::<Vec<_>>().join(", ")
    );
    assert!(stats.count(Kind::CircuitOpen) > 0);
}
