//! The pinned pool end to end: transactions, blocking calls, pub/sub, MONITOR and CLIENT
//! TRACKING get a dedicated backend connection for as long as their state lasts, under caps
//! on the total, per client address and per user, and no state leaks from one lease to the
//! next. A real redis-server sits behind moat; exact replies are compared with Redis's own.
//!
//! Different client addresses are played by binding client sockets to 127.x.y.z before
//! connecting: moat counts every address separately.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::conn::Conn;
use common::{Raw, Stack, bulk, command, shown};
use moat_proxy::config::UserConfig;
use moat_testkit::RedisServer;

/// Longest wait for a condition polled on Redis (background RESET, blocked clients...).
const SETTLE: Duration = Duration::from_secs(10);
/// Rounding allowed when checking that a refusal came only after `pinned.wait` (timers
/// have millisecond ticks).
const TIMER_SLACK: Duration = Duration::from_millis(20);

/// The lease error moat answers for each cap.
fn pool_full(n: usize) -> Vec<u8> {
    format!("-ERR moat: no dedicated connection available (limit {n})\r\n").into_bytes()
}

fn ip_full(n: usize) -> Vec<u8> {
    format!("-ERR moat: no dedicated connection available (limit {n} per client address)\r\n")
        .into_bytes()
}

fn user_full(n: usize) -> Vec<u8> {
    format!("-ERR moat: no dedicated connection available (limit {n} per user)\r\n").into_bytes()
}

/// A RESP array of bulk strings, as Redis answers BLPOP and friends.
fn array(items: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", items.len()).into_bytes();
    for item in items {
        out.extend_from_slice(&bulk(item));
    }
    out
}

/// Polls `check` every 10 ms until it holds; fails the test with `what` after `limit`.
fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Redis's `CLIENT LIST`, one line per connection.
fn client_list(redis: &RedisServer) -> Vec<String> {
    let raw = redis.command(&["CLIENT", "LIST"]).unwrap();
    let Some((moat_protocol::Value::Bulk(text), _)) =
        moat_protocol::Value::decode(&raw, 8).unwrap()
    else {
        panic!("CLIENT LIST answered {}", shown(&raw));
    };
    String::from_utf8_lossy(&text)
        .lines()
        .map(str::to_string)
        .collect()
}

/// One `key=value` field of a CLIENT LIST line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split(' ')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// Moat's dedicated connections as Redis sees them.
fn pinned_lines(redis: &RedisServer) -> Vec<String> {
    client_list(redis)
        .into_iter()
        .filter(|l| field(l, "name").is_some_and(|n| n.starts_with("moat-pinned-")))
        .collect()
}

/// A dedicated connection with no client state left: not subscribed, not in MULTI, no
/// flags (monitor, tracking, blocked), db 0, last command moat's own RESET or SETNAME.
fn is_idle_pinned(line: &str) -> bool {
    field(line, "flags") == Some("N")
        && field(line, "sub") == Some("0")
        && field(line, "psub") == Some("0")
        && field(line, "ssub").is_none_or(|v| v == "0")
        && field(line, "multi") == Some("-1")
        && field(line, "db") == Some("0")
        && matches!(field(line, "cmd"), Some("reset" | "client|setname"))
}

/// Waits until every dedicated connection Redis sees is idle (leases ended, RESET done);
/// returns them.
fn wait_pinned_idle(redis: &RedisServer) -> Vec<String> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let all = client_list(redis);
        // RESET clears the connection's name until moat's SETNAME that follows: such a
        // connection is one of moat's, half way through being returned.
        let mid_reset = all
            .iter()
            .any(|l| field(l, "name") == Some("") && field(l, "cmd") == Some("reset"));
        let lines: Vec<String> = all
            .into_iter()
            .filter(|l| field(l, "name").is_some_and(|n| n.starts_with("moat-pinned-")))
            .collect();
        if !mid_reset && lines.iter().all(|l| is_idle_pinned(l)) {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "dedicated connections never went idle: {lines:#?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Asks for a lease from `src` with a short blocking call and returns the reply: `*-1` when
/// a lease was granted (and ended), moat's limit error when none was.
fn lease_probe(stack: &Stack, src: [u8; 4]) -> Vec<u8> {
    let mut probe = Conn::from(src, stack.addr());
    probe.call(&["BLPOP", "moat:probe", "0.01"])
}

fn blocked_clients(redis: &RedisServer) -> u64 {
    redis.info_u64("blocked_clients").unwrap()
}

fn wait_blocked(redis: &RedisServer, n: u64) {
    wait_until(&format!("{n} blocked clients"), SETTLE, || {
        blocked_clients(redis) == n
    });
}

fn with_config(tweak: impl FnOnce(&mut moat_proxy::Config)) -> Stack {
    stack_with(RedisServer::builder(), tweak)
}

/// A stack whose admission guard trusts all of 127.0.0.0/8: these tests play many clients
/// from a few loopback addresses, and what they check is the pinned pool's own caps, not
/// the guard's connection rates and bans.
fn stack_with(
    redis: moat_testkit::RedisServerBuilder,
    tweak: impl FnOnce(&mut moat_proxy::Config),
) -> Stack {
    Stack::with(redis, |c| {
        c.guard = moat_proxy::Config::from_toml("[guard]\ntrusted = [\"127.0.0.0/8\"]\n")
            .unwrap()
            .guard;
        tweak(c);
    })
}

// 1. Transactions.

#[test]
fn pipelined_transaction_between_shared_commands_answers_in_order() {
    let stack = with_config(|_| {});
    let script = [
        command(&[b"SET", b"a", b"1"]),
        command(&[b"MULTI"]),
        command(&[b"INCR", b"a"]),
        command(&[b"EXEC"]),
        command(&[b"GET", b"a"]),
    ]
    .concat();
    let mut direct = Conn::connect(stack.redis.addr());
    direct.send(&script);
    let expected = direct.replies(5);
    assert_eq!(
        expected,
        [
            b"+OK\r\n".to_vec(),
            b"+OK\r\n".to_vec(),
            b"+QUEUED\r\n".to_vec(),
            b"*1\r\n:2\r\n".to_vec(),
            b"$1\r\n2\r\n".to_vec(),
        ]
    );
    stack.redis.command(&["FLUSHALL"]).unwrap();

    let mut client = Conn::connect(stack.addr());
    client.send(&script);
    let got = client.replies(5);
    assert_eq!(
        got,
        expected,
        "moat: {:?}",
        got.iter().map(|r| shown(r)).collect::<Vec<_>>()
    );
    client.assert_quiet(Duration::from_millis(100), "after the pipeline");
    wait_pinned_idle(&stack.redis);
    assert_eq!(client.call(&["GET", "a"]), b"$1\r\n2\r\n");
}

/// Stopping moat closes every connection it opened, dedicated ones idle in the pool
/// included (they once held the pool alive through a reference cycle and stayed open).
#[test]
fn stopping_moat_closes_its_idle_dedicated_connections() {
    let Stack { moat, redis } = with_config(|_| {});
    let mut client = Conn::connect(moat.local_addr());
    client.send(&[command(&[b"MULTI"]), command(&[b"EXEC"])].concat());
    assert_eq!(client.replies(2), [b"+OK\r\n".to_vec(), b"*0\r\n".to_vec()]);
    drop(client);
    let idle = wait_pinned_idle(&redis);
    assert_eq!(idle.len(), 1, "one dedicated connection, back in the pool");
    moat.shutdown();
    wait_until("moat's connections to close", SETTLE, || {
        client_list(&redis)
            .iter()
            .all(|l| !field(l, "name").is_some_and(|n| n.starts_with("moat-")))
    });
}

/// WATCH then EXEC, and WATCH broken by another client: the same transcript as Redis.
fn watch_transcript(a: &mut Conn, b: &mut Conn) -> Vec<Vec<u8>> {
    vec![
        a.call(&["WATCH", "w"]),
        a.call(&["MULTI"]),
        a.call(&["INCR", "w"]),
        a.call(&["EXEC"]),
        a.call(&["WATCH", "w"]),
        b.call(&["SET", "w", "10"]),
        a.call(&["MULTI"]),
        a.call(&["INCR", "w"]),
        a.call(&["EXEC"]),
        a.call(&["GET", "w"]),
    ]
}

#[test]
fn watch_multi_exec_and_an_aborted_watch_match_redis() {
    let stack = with_config(|_| {});
    let expected = watch_transcript(
        &mut Conn::connect(stack.redis.addr()),
        &mut Conn::connect(stack.redis.addr()),
    );
    assert_eq!(expected[3], b"*1\r\n:1\r\n");
    assert_eq!(expected[8], b"*-1\r\n", "Redis aborts the watched EXEC");
    stack.redis.command(&["FLUSHALL"]).unwrap();

    let mut a = Conn::from([127, 0, 1, 1], stack.addr());
    let mut b = Conn::from([127, 0, 1, 2], stack.addr());
    let got = watch_transcript(&mut a, &mut b);
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(g, e, "reply {i}: moat {} vs redis {}", shown(g), shown(e));
    }
    wait_pinned_idle(&stack.redis);
}

#[test]
fn discard_and_unwatch_end_the_lease() {
    // One dedicated connection: a lease that did not end would starve the probe.
    let stack = with_config(|c| {
        c.pinned.max_connections = 1;
        c.pinned.wait = Duration::from_millis(500);
    });
    let mut a = Conn::from([127, 0, 2, 1], stack.addr());
    assert_eq!(a.call(&["MULTI"]), b"+OK\r\n");
    assert_eq!(a.call(&["SET", "d", "1"]), b"+QUEUED\r\n");
    assert_eq!(
        lease_probe(&stack, [127, 0, 2, 9]),
        pool_full(1),
        "an open MULTI holds the lease"
    );
    assert_eq!(a.call(&["DISCARD"]), b"+OK\r\n");
    assert_eq!(a.call(&["GET", "d"]), b"$-1\r\n", "DISCARD ran nothing");
    assert_eq!(lease_probe(&stack, [127, 0, 2, 9]), b"*-1\r\n");

    assert_eq!(a.call(&["WATCH", "u"]), b"+OK\r\n");
    assert_eq!(
        lease_probe(&stack, [127, 0, 2, 9]),
        pool_full(1),
        "WATCH holds the lease"
    );
    assert_eq!(a.call(&["UNWATCH"]), b"+OK\r\n");
    assert_eq!(lease_probe(&stack, [127, 0, 2, 9]), b"*-1\r\n");
    assert_eq!(a.call(&["SET", "after", "1"]), b"+OK\r\n");
    let lines = wait_pinned_idle(&stack.redis);
    assert!(lines.len() <= 1, "{lines:#?}");
}

/// A queued command Redis rejects (wrong arity) fails the transaction: the same replies
/// as Redis, and nothing from the transaction runs.
fn arity_error_transcript(c: &mut Conn) -> Vec<Vec<u8>> {
    let script = [
        command(&[b"MULTI"]),
        command(&[b"SET", b"t1", b"1"]),
        command(&[b"INCR"]),
        command(&[b"SET", b"t2", b"2"]),
        command(&[b"EXEC"]),
        command(&[b"EXISTS", b"t1", b"t2"]),
    ]
    .concat();
    c.send(&script);
    c.replies(6)
}

#[test]
fn arity_error_inside_multi_aborts_exec_like_redis() {
    let stack = with_config(|_| {});
    let expected = arity_error_transcript(&mut Conn::connect(stack.redis.addr()));
    assert_eq!(
        expected[4],
        b"-EXECABORT Transaction discarded because of previous errors.\r\n"
    );
    assert_eq!(expected[5], b":0\r\n");
    let got = arity_error_transcript(&mut Conn::connect(stack.addr()));
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(g, e, "reply {i}: moat {} vs redis {}", shown(g), shown(e));
    }
    wait_pinned_idle(&stack.redis);
}

#[test]
fn select_inside_multi_is_refused_and_the_transaction_discarded() {
    let stack = with_config(|_| {});
    let mut c = Conn::connect(stack.addr());
    // Pipelined in one write: moat must hold SELECT until the queued replies are in.
    let script = [
        command(&[b"MULTI"]),
        command(&[b"SET", b"s1", b"1"]),
        command(&[b"SELECT", b"1"]),
        command(&[b"SET", b"s2", b"1"]),
        command(&[b"EXEC"]),
        command(&[b"EXISTS", b"s1", b"s2"]),
    ]
    .concat();
    c.send(&script);
    let got = c.replies(6);
    let want: [&[u8]; 6] = [
        b"+OK\r\n",
        b"+QUEUED\r\n",
        b"-ERR moat: SELECT inside MULTI is not supported\r\n",
        b"+QUEUED\r\n",
        b"-EXECABORT Transaction discarded because of previous errors.\r\n",
        b":0\r\n",
    ];
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g, w, "reply {i}: {}", shown(g));
    }
    // Nothing ran, in either database.
    let mut direct = Conn::connect(stack.redis.addr());
    assert_eq!(direct.call(&["DBSIZE"]), b":0\r\n");
    assert_eq!(direct.call(&["SELECT", "1"]), b"+OK\r\n");
    assert_eq!(direct.call(&["DBSIZE"]), b":0\r\n");
    // The refused SELECT did not move the client either.
    assert_eq!(c.call(&["SET", "s3", "1"]), b"+OK\r\n");
    assert_eq!(direct.call(&["SELECT", "0"]), b"+OK\r\n");
    assert_eq!(direct.call(&["EXISTS", "s3"]), b":1\r\n");
    wait_pinned_idle(&stack.redis);
}

// 2. Blocking calls.

#[test]
fn blocking_calls_wait_as_long_as_redis_and_end_their_lease() {
    let stack = with_config(|c| c.pinned.max_connections = 1);
    let mut a = Conn::from([127, 0, 3, 1], stack.addr());
    let mut b = Conn::from([127, 0, 3, 2], stack.addr());

    // BLPOP k 0 outlives every moat timeout (pinned.wait and connect_timeout are 2 s).
    a.send(&command(&[b"BLPOP", b"bk", b"0"]));
    wait_blocked(&stack.redis, 1);
    a.assert_quiet(Duration::from_millis(2500), "BLPOP bk 0 before the push");
    assert_eq!(b.call(&["LPUSH", "bk", "v"]), b":1\r\n");
    assert_eq!(a.reply(), array(&[b"bk", b"v"]));
    let lines = wait_pinned_idle(&stack.redis);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(field(&lines[0], "name"), Some("moat-pinned-w0"));
    assert_eq!(a.call(&["GET", "bk"]), b"$-1\r\n");

    // A timed BLPOP times out with Redis's nil.
    let mut direct = Conn::connect(stack.redis.addr());
    let expected = direct.call(&["BLPOP", "bk", "0.2"]);
    assert_eq!(expected, b"*-1\r\n");
    assert_eq!(a.call(&["BLPOP", "bk", "0.2"]), expected);
    wait_pinned_idle(&stack.redis);
    assert_eq!(a.call(&["SET", "x", "1"]), b"+OK\r\n");

    // XREAD BLOCK 0 woken by XADD.
    a.send(&command(&[
        b"XREAD", b"BLOCK", b"0", b"STREAMS", b"s", b"$",
    ]));
    wait_blocked(&stack.redis, 1);
    let id = b.call(&["XADD", "s", "*", "f", "v"]);
    let id = &id[id.iter().position(|&c| c == b'\n').unwrap() + 1..id.len() - 2];
    let mut want = b"*1\r\n*2\r\n$1\r\ns\r\n*1\r\n*2\r\n".to_vec();
    want.extend_from_slice(&bulk(id));
    want.extend_from_slice(&array(&[b"f", b"v"]));
    assert_eq!(a.reply(), want);
    wait_pinned_idle(&stack.redis);
    assert_eq!(a.call(&["GET", "x"]), b"$1\r\n1\r\n");

    // WAIT with no replicas.
    assert_eq!(direct.call(&["WAIT", "0", "0"]), b":0\r\n");
    assert_eq!(a.call(&["WAIT", "0", "0"]), b":0\r\n");
    let lines = wait_pinned_idle(&stack.redis);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(a.call(&["GET", "x"]), b"$1\r\n1\r\n");
    assert_eq!(lease_probe(&stack, [127, 0, 3, 9]), b"*-1\r\n");
}

// 3. The acceptance test: one address cannot take the pinned pool.

/// Each client needs a socket on both sides of moat (both in this process).
fn raise_fd_limit(clients: usize) {
    let want = 8 * clients as u64 + 1024;
    let (soft, hard) = rlimit::Resource::NOFILE.get().unwrap();
    if soft < want {
        rlimit::Resource::NOFILE.set(want.min(hard), hard).unwrap();
    }
    let (soft, _) = rlimit::Resource::NOFILE.get().unwrap();
    assert!(
        soft >= 3 * clients as u64 + 256,
        "descriptor limit {soft} too low for {clients} clients"
    );
}

mod flood {
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpSocket, TcpStream};

    use super::common::{command, shown};

    /// Longest wait for one reply in the flood.
    pub(super) const TIMEOUT: Duration = Duration::from_secs(60);

    pub(super) struct Client {
        stream: TcpStream,
        buf: Vec<u8>,
    }

    impl Client {
        pub(super) async fn connect(src: [u8; 4], to: SocketAddr) -> Result<Client, String> {
            let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
            socket
                .bind(SocketAddr::from((src, 0)))
                .map_err(|e| format!("bind: {e}"))?;
            let stream = tokio::time::timeout(TIMEOUT, socket.connect(to))
                .await
                .map_err(|_| "connect timed out".to_string())?
                .map_err(|e| format!("connect: {e}"))?;
            Ok(Client {
                stream,
                buf: Vec::new(),
            })
        }

        pub(super) async fn send(&mut self, args: &[&[u8]]) -> Result<(), String> {
            self.stream
                .write_all(&command(args))
                .await
                .map_err(|e| format!("write: {e}"))
        }

        pub(super) async fn reply(&mut self) -> Result<Vec<u8>, String> {
            let deadline = Instant::now() + TIMEOUT;
            loop {
                if let Some((_, used)) = moat_protocol::Value::decode(&self.buf, 64)
                    .map_err(|e| format!("malformed reply {}: {e}", shown(&self.buf)))?
                {
                    return Ok(self.buf.drain(..used).collect());
                }
                let mut chunk = [0u8; 4096];
                let read = tokio::time::timeout_at(deadline.into(), self.stream.read(&mut chunk))
                    .await
                    .map_err(|_| format!("no reply within {TIMEOUT:?}"))?
                    .map_err(|e| format!("read: {e}"))?;
                if read == 0 {
                    return Err(format!("connection closed; buffered {}", shown(&self.buf)));
                }
                self.buf.extend_from_slice(&chunk[..read]);
            }
        }

        pub(super) async fn call(&mut self, args: &[&[u8]]) -> Result<Vec<u8>, String> {
            self.send(args).await?;
            self.reply().await
        }
    }
}

/// What one flooding client saw.
#[derive(Debug)]
enum Outcome {
    /// Refused with the per-address error after the wait; its connection still works.
    Refused,
    /// Got a lease; woken with this reply.
    Woken(Vec<u8>),
    Bad(String),
}

/// Served from other addresses while 127.1.0.1 floods: shared commands and a lease.
async fn other_addresses_are_served(
    addr: SocketAddr,
    round: usize,
    extra_blocked: &AtomicU64,
) -> Result<(), String> {
    use flood::Client;
    let mut shared = Client::connect([127, 1, 0, 3], addr).await?;
    for i in 0..20 {
        let key = format!("other:{round}:{i}");
        let reply = shared.call(&[b"SET", key.as_bytes(), b"v"]).await?;
        if reply != b"+OK\r\n" {
            return Err(format!("SET from 127.1.0.3 answered {}", shown(&reply)));
        }
        let reply = shared.call(&[b"GET", key.as_bytes()]).await?;
        if reply != b"$1\r\nv\r\n" {
            return Err(format!("GET from 127.1.0.3 answered {}", shown(&reply)));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let key = format!("other:list:{round}");
    let mut blocker = Client::connect([127, 1, 0, 2], addr).await?;
    extra_blocked.fetch_add(1, Ordering::SeqCst);
    blocker.send(&[b"BLPOP", key.as_bytes(), b"0"]).await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let pushed = shared.call(&[b"LPUSH", key.as_bytes(), b"x"]).await?;
    let woken = blocker.reply().await;
    extra_blocked.fetch_sub(1, Ordering::SeqCst);
    let woken = woken?;
    if pushed != b":1\r\n" {
        return Err(format!("LPUSH answered {}", shown(&pushed)));
    }
    if woken != array(&[key.as_bytes(), b"x"]) {
        return Err(format!(
            "BLPOP from 127.1.0.2 answered {} (no lease for another address?)",
            shown(&woken)
        ));
    }
    Ok(())
}

#[test]
fn one_address_cannot_take_the_pinned_pool() {
    const FLOOD: usize = 1000;
    const CAP: usize = 8;
    const SHARED: u64 = 2;
    const MAX_PINNED: u64 = 64;
    const WAIT: Duration = Duration::from_millis(300);
    raise_fd_limit(FLOOD);
    let stack = with_config(|c| {
        c.backend.shared_connections = SHARED as usize;
        c.pinned.max_connections = MAX_PINNED as usize;
        c.pinned.max_per_ip = CAP;
        c.pinned.wait = WAIT;
    });
    let addr = stack.addr();
    let stop = AtomicBool::new(false);
    // BLPOPs from other addresses in flight: they may add to Redis's blocked_clients.
    let extra_blocked = AtomicU64::new(0);

    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    let (violations, samples) = std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            let mut violations = Vec::new();
            let mut samples = 0u64;
            let deadline = Instant::now() + Duration::from_secs(300);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                let allowed_extra = extra_blocked.load(Ordering::SeqCst);
                let info = stack.redis.info().unwrap();
                let get = |k: &str| info.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap();
                let blocked = get("blocked_clients");
                let connected = get("connected_clients");
                // The counter may have gone up just after the sample was taken.
                let allowed = CAP as u64 + allowed_extra.max(extra_blocked.load(Ordering::SeqCst));
                if blocked > allowed {
                    violations.push(format!("blocked_clients {blocked} > {allowed}"));
                }
                if connected > SHARED + MAX_PINNED + 1 {
                    violations.push(format!("connected_clients {connected}"));
                }
                samples += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            (violations, samples)
        });
        let _stop = StopOnDrop(&stop);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(flood_scenario(
            &stack,
            addr,
            &extra_blocked,
            CAP,
            FLOOD,
            WAIT,
        ));
        drop(_stop);
        watcher.join().unwrap()
    });
    assert!(samples > 0);
    assert!(
        violations.is_empty(),
        "{} violations in {samples} INFO samples, first: {:?}",
        violations.len(),
        &violations[..violations.len().min(5)]
    );
}

async fn flood_scenario(
    stack: &Stack,
    addr: SocketAddr,
    extra_blocked: &AtomicU64,
    cap: usize,
    clients: usize,
    wait: Duration,
) {
    use flood::Client;
    let flooder = [127, 1, 0, 1];
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Outcome)>();
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::with_capacity(clients);
    for i in 0..clients {
        let tx = tx.clone();
        let mut release = release_rx.clone();
        tasks.push(tokio::spawn(async move {
            let run = async {
                let mut c = Client::connect(flooder, addr).await?;
                c.send(&[b"BLPOP", b"flood", b"0"]).await?;
                let sent = Instant::now();
                let reply = c.reply().await?;
                let outcome = if reply.starts_with(b"-") {
                    if reply != ip_full(cap) {
                        return Err(format!("refused with {}", shown(&reply)));
                    }
                    // Timers tick in milliseconds: allow for rounding, not for skipping the wait.
                    if sent.elapsed() + TIMER_SLACK < wait {
                        return Err(format!(
                            "refused after {:?}, before the wait",
                            sent.elapsed()
                        ));
                    }
                    Outcome::Refused
                } else {
                    Outcome::Woken(reply)
                };
                // The connection stays open and is served on the shared pool.
                let after = c.call(&[b"GET", b"flood:after"]).await?;
                if after != b"$-1\r\n" {
                    return Err(format!("GET after BLPOP answered {}", shown(&after)));
                }
                Ok((c, outcome))
            };
            let (c, outcome) = match run.await {
                Ok(done) => done,
                Err(e) => {
                    let _ = tx.send((i, Outcome::Bad(e)));
                    return;
                }
            };
            let _ = tx.send((i, outcome));
            // Hold the connection open until the test is done with the flood.
            let _ = tokio::time::timeout(Duration::from_secs(240), release.wait_for(|r| *r)).await;
            drop(c);
        }));
    }
    drop(tx);

    // While the flood waits for leases, other addresses are served.
    let others = other_addresses_are_served(addr, 0, extra_blocked);
    let collect_refusals = async {
        let mut refused = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while refused < clients - cap {
            let (i, outcome) = match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(event)) => event,
                Ok(None) => panic!("flood tasks ended early"),
                Err(_) => panic!("only {refused} of {} refusals arrived", clients - cap),
            };
            match outcome {
                Outcome::Refused => refused += 1,
                Outcome::Bad(why) => panic!("client {i}: {why}"),
                Outcome::Woken(reply) => {
                    panic!("client {i} woke before any push: {}", shown(&reply))
                }
            }
        }
    };
    let (others, ()) = tokio::join!(others, collect_refusals);
    others.unwrap();

    // Exactly the capped number hold a lease and block in Redis.
    let redis = &stack.redis;
    tokio::task::block_in_place(|| wait_blocked(redis, cap as u64));
    // With 992 refused connections still open, other addresses are still served.
    other_addresses_are_served(addr, 1, extra_blocked)
        .await
        .unwrap();

    // Wake the leased ones: each gets exactly one value, none lost or duplicated.
    let values: Vec<String> = (0..cap).map(|i| format!("v{i}")).collect();
    let mut pusher = Client::connect([127, 1, 0, 3], addr).await.unwrap();
    let mut push: Vec<&[u8]> = vec![b"RPUSH", b"flood"];
    push.extend(values.iter().map(|v| v.as_bytes()));
    assert_eq!(
        pusher.call(&push).await.unwrap(),
        format!(":{cap}\r\n").into_bytes()
    );
    let mut got = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while got.len() < cap {
        let (i, outcome) = match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(event)) => event,
            Ok(None) => panic!("flood tasks ended early"),
            Err(_) => panic!("only {} of {cap} leased clients woke", got.len()),
        };
        let reply = match outcome {
            Outcome::Woken(reply) => reply,
            Outcome::Bad(why) => panic!("client {i}: {why}"),
            Outcome::Refused => panic!("client {i} refused after the push"),
        };
        let value = values
            .iter()
            .find(|v| reply == array(&[b"flood", v.as_bytes()]))
            .unwrap_or_else(|| panic!("client {i} woke with {}", shown(&reply)));
        assert!(got.insert(value.clone()), "{value} delivered twice");
    }
    assert_eq!(pusher.call(&[b"LLEN", b"flood"]).await.unwrap(), b":0\r\n");

    // Leases returned: the dedicated connections are idle again and the address may
    // take its share once more.
    tokio::task::block_in_place(|| {
        wait_blocked(redis, 0);
        let lines = wait_pinned_idle(redis);
        assert!(lines.len() <= cap + 2, "{lines:#?}");
    });
    let again: Vec<_> = (0..cap)
        .map(|_| {
            tokio::spawn(async move {
                let mut c = Client::connect(flooder, addr).await?;
                c.call(&[b"BLPOP", b"flood", b"0.05"]).await
            })
        })
        .collect();
    for task in again {
        assert_eq!(task.await.unwrap().unwrap(), b"*-1\r\n");
    }

    release_tx.send(true).unwrap();
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("flood task ends")
            .unwrap();
    }
}

// 4. Caps on the total and per user.

#[test]
fn pool_cap_refuses_then_grants_once_a_lease_ends() {
    let stack = with_config(|c| {
        c.pinned.max_connections = 2;
        c.pinned.wait = Duration::from_millis(300);
    });
    let mut c1 = Conn::from([127, 4, 0, 1], stack.addr());
    let mut c2 = Conn::from([127, 4, 0, 2], stack.addr());
    let mut c3 = Conn::from([127, 4, 0, 3], stack.addr());
    let mut pusher = Conn::from([127, 4, 0, 4], stack.addr());
    c1.send(&command(&[b"BLPOP", b"k1", b"0"]));
    c2.send(&command(&[b"BLPOP", b"k2", b"0"]));
    wait_blocked(&stack.redis, 2);
    let started = Instant::now();
    assert_eq!(c3.call(&["BLPOP", "k3", "0"]), pool_full(2));
    assert!(
        started.elapsed() + TIMER_SLACK >= Duration::from_millis(300),
        "refused before the wait"
    );
    // Shared commands are unaffected.
    assert_eq!(c3.call(&["SET", "s", "1"]), b"+OK\r\n");
    assert_eq!(pinned_lines(&stack.redis).len(), 2);

    // One lease ends: the next request gets it.
    assert_eq!(pusher.call(&["LPUSH", "k1", "a"]), b":1\r\n");
    assert_eq!(c1.reply(), array(&[b"k1", b"a"]));
    c3.send(&command(&[b"BLPOP", b"k3", b"0"]));
    wait_blocked(&stack.redis, 2);
    assert_eq!(pusher.call(&["LPUSH", "k3", "c"]), b":1\r\n");
    assert_eq!(c3.reply(), array(&[b"k3", b"c"]));
    assert_eq!(pusher.call(&["LPUSH", "k2", "b"]), b":1\r\n");
    assert_eq!(c2.reply(), array(&[b"k2", b"b"]));
    let lines = wait_pinned_idle(&stack.redis);
    assert!(lines.len() <= 2, "{lines:#?}");
}

#[test]
fn a_waiting_session_gets_a_lease_freed_during_its_wait() {
    let stack = with_config(|c| {
        c.pinned.max_connections = 2;
        c.pinned.wait = Duration::from_secs(5);
    });
    let mut c1 = Conn::from([127, 4, 1, 1], stack.addr());
    let mut c2 = Conn::from([127, 4, 1, 2], stack.addr());
    let mut c3 = Conn::from([127, 4, 1, 3], stack.addr());
    let mut pusher = Conn::from([127, 4, 1, 4], stack.addr());
    c1.send(&command(&[b"BLPOP", b"k1", b"0"]));
    c2.send(&command(&[b"BLPOP", b"k2", b"0"]));
    wait_blocked(&stack.redis, 2);
    c3.send(&command(&[b"BLPOP", b"k3", b"0"]));
    // c3 waits for a lease: no reply, not blocked in Redis.
    c3.assert_quiet(Duration::from_millis(500), "c3 while the pool is full");
    assert_eq!(blocked_clients(&stack.redis), 2);
    assert_eq!(pusher.call(&["LPUSH", "k1", "a"]), b":1\r\n");
    assert_eq!(c1.reply(), array(&[b"k1", b"a"]));
    // c1's lease ended; c3 takes it within its wait and blocks.
    wait_blocked(&stack.redis, 2);
    assert_eq!(pusher.call(&["LPUSH", "k3", "c"]), b":1\r\n");
    assert_eq!(c3.reply(), array(&[b"k3", b"c"]));
    assert_eq!(pusher.call(&["LPUSH", "k2", "b"]), b":1\r\n");
    assert_eq!(c2.reply(), array(&[b"k2", b"b"]));
    let lines = wait_pinned_idle(&stack.redis);
    assert!(lines.len() <= 2, "{lines:#?}");
}

fn user(name: &str, password: &str) -> UserConfig {
    UserConfig {
        name: name.into(),
        password: Some(password.into()),
        password_sha256: None,
        deny_commands: Vec::new(),
    }
}

#[test]
fn per_user_cap_spans_addresses() {
    let stack = with_config(|c| {
        c.pinned.max_per_user = 1;
        c.pinned.wait = Duration::from_millis(300);
        c.users = vec![user("alice", "apw"), user("bob", "bpw")];
    });
    let mut alice1 = Conn::from([127, 5, 0, 1], stack.addr());
    let mut alice2 = Conn::from([127, 5, 0, 2], stack.addr());
    let mut bob = Conn::from([127, 5, 0, 3], stack.addr());
    assert_eq!(alice1.call(&["AUTH", "alice", "apw"]), b"+OK\r\n");
    assert_eq!(alice2.call(&["AUTH", "alice", "apw"]), b"+OK\r\n");
    assert_eq!(bob.call(&["AUTH", "bob", "bpw"]), b"+OK\r\n");
    alice1.send(&command(&[b"BLPOP", b"ka", b"0"]));
    wait_blocked(&stack.redis, 1);
    assert_eq!(alice2.call(&["BLPOP", "ka2", "0"]), user_full(1));
    assert_eq!(alice2.call(&["GET", "ka"]), b"$-1\r\n", "still served");
    assert_eq!(
        bob.call(&["BLPOP", "kb", "0.05"]),
        b"*-1\r\n",
        "another user has its own share"
    );
    assert_eq!(bob.call(&["LPUSH", "ka", "x"]), b":1\r\n");
    assert_eq!(alice1.reply(), array(&[b"ka", b"x"]));
    assert_eq!(alice2.call(&["BLPOP", "ka2", "0.05"]), b"*-1\r\n");
    wait_pinned_idle(&stack.redis);
}

// 5. Pub/sub.

/// SUBSCRIBE, PSUBSCRIBE, messages, the RESP2 subscribed-mode rules, unsubscribing all.
fn pubsub_transcript(sub: &mut Conn, publisher: &mut Conn) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    sub.send(&command(&[b"SUBSCRIBE", b"c1", b"c2"]));
    out.extend(sub.replies(2));
    out.push(sub.call(&["PSUBSCRIBE", "news.*"]));
    out.push(publisher.call(&["PUBLISH", "c1", "hello"]));
    out.push(publisher.call(&["PUBLISH", "news.a", "x"]));
    out.push(publisher.call(&["PUBLISH", "c2", "world"]));
    out.extend(sub.replies(3));
    out.push(sub.call(&["GET", "x"]));
    out.push(sub.call(&["PING"]));
    sub.send(&command(&[b"UNSUBSCRIBE"]));
    let mut unsubs = sub.replies(2);
    // Redis confirms in its own dict order; compare as a set.
    unsubs.sort();
    out.extend(unsubs);
    out.push(sub.call(&["PUNSUBSCRIBE"]));
    out.push(sub.call(&["GET", "x"]));
    out
}

#[test]
fn subscriptions_deliver_in_order_and_end_the_lease() {
    let stack = with_config(|c| {
        c.pinned.max_connections = 1;
        c.pinned.wait = Duration::from_millis(300);
    });
    let expected = pubsub_transcript(
        &mut Conn::connect(stack.redis.addr()),
        &mut Conn::connect(stack.redis.addr()),
    );
    assert_eq!(
        expected[6],
        b"*3\r\n$7\r\nmessage\r\n$2\r\nc1\r\n$5\r\nhello\r\n"
    );
    assert_eq!(
        expected[7],
        b"*4\r\n$8\r\npmessage\r\n$6\r\nnews.*\r\n$6\r\nnews.a\r\n$1\r\nx\r\n"
    );
    assert_eq!(
        expected[9],
        b"-ERR Can't execute 'get': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n".to_vec()
    );
    assert_eq!(expected[10], b"*2\r\n$4\r\npong\r\n$0\r\n\r\n");

    let mut sub = Conn::from([127, 6, 0, 1], stack.addr());
    let mut publisher = Conn::from([127, 6, 0, 2], stack.addr());
    let got = pubsub_transcript(&mut sub, &mut publisher);
    assert_eq!(got.len(), expected.len());
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(g, e, "frame {i}: moat {} vs redis {}", shown(g), shown(e));
    }
    sub.assert_quiet(Duration::from_millis(100), "after unsubscribing");
    assert_eq!(lease_probe(&stack, [127, 6, 0, 9]), b"*-1\r\n");
    assert_eq!(
        publisher.call(&["PUBLISH", "c1", "late"]),
        b":0\r\n",
        "no subscription survives the lease"
    );
    wait_pinned_idle(&stack.redis);
}

#[test]
fn a_subscriber_that_never_reads_is_cut_by_redis_not_buffered_by_moat() {
    const MESSAGE: usize = 64 << 10;
    const MESSAGES: usize = 800; // 50 MiB in all
    let stack = stack_with(
        RedisServer::builder().config("client-output-buffer-limit pubsub 8mb 2mb 60"),
        |c| c.limits.max_output_bytes = 1 << 20,
    );
    let mut slow = Conn::from([127, 7, 0, 1], stack.addr());
    assert_eq!(
        slow.call(&["SUBSCRIBE", "flood"]),
        b"*3\r\n$9\r\nsubscribe\r\n$5\r\nflood\r\n:1\r\n"
    );
    let mut publisher = Conn::from([127, 7, 0, 2], stack.addr());
    let payload = vec![b'p'; MESSAGE];
    let mut reached = 0;
    for batch in 0..MESSAGES / 16 {
        let one = command(&[b"PUBLISH", b"flood", &payload]);
        publisher.send(&one.repeat(16));
        for reply in publisher.replies(16) {
            match reply.as_slice() {
                b":1\r\n" => reached += 1,
                b":0\r\n" => {}
                other => panic!("PUBLISH in batch {batch} answered {}", shown(other)),
            }
        }
    }
    assert!(
        reached < MESSAGES,
        "every message reached the subscriber: Redis's limit never applied"
    );
    // Redis dropped the dedicated connection that was over its pubsub limit.
    wait_until("Redis to drop the subscriber", SETTLE, || {
        !client_list(&stack.redis)
            .iter()
            .any(|l| field(l, "sub") == Some("1"))
    });

    // Moat keeps serving everyone else meanwhile.
    let mut other = Conn::from([127, 7, 0, 3], stack.addr());
    assert_eq!(other.call(&["SET", "k", "v"]), b"+OK\r\n");
    assert_eq!(other.call(&["GET", "k"]), b"$1\r\nv\r\n");
    let mut listener = Conn::from([127, 7, 0, 4], stack.addr());
    assert_eq!(
        listener.call(&["SUBSCRIBE", "calm"]),
        b"*3\r\n$9\r\nsubscribe\r\n$4\r\ncalm\r\n:1\r\n"
    );
    assert_eq!(other.call(&["PUBLISH", "calm", "hi"]), b":1\r\n");
    assert_eq!(
        listener.reply(),
        b"*3\r\n$7\r\nmessage\r\n$4\r\ncalm\r\n$2\r\nhi\r\n"
    );
    assert_eq!(lease_probe(&stack, [127, 7, 0, 9]), b"*-1\r\n");

    // The slow subscriber, once it reads, finds its connection closed after far less than
    // was published: moat did not hold the flood for it.
    let read = slow
        .read_until_closed(Duration::from_secs(30))
        .expect("the slow subscriber is disconnected");
    assert!(
        read < MESSAGE * MESSAGES / 2,
        "the slow subscriber still received {read} bytes"
    );
}

/// With Redis's own pub/sub output limit off, a subscriber that never reads is cut by moat
/// once the messages it did not read pass `limits.max_output_bytes`; moat does not buffer
/// the flood for it, and others are served.
#[test]
fn a_subscriber_that_never_reads_is_cut_by_moat_when_redis_does_not() {
    const LIMIT: usize = 256 << 10;
    const MESSAGE: usize = 16 << 10;
    const MESSAGES: usize = 1024; // 16 MiB in all
    let stack = stack_with(
        RedisServer::builder().config("client-output-buffer-limit pubsub 0 0 0"),
        |c| c.limits.max_output_bytes = LIMIT,
    );
    let mut slow = Conn::from([127, 7, 2, 1], stack.addr());
    assert_eq!(
        slow.call(&["SUBSCRIBE", "flood"]),
        b"*3\r\n$9\r\nsubscribe\r\n$5\r\nflood\r\n:1\r\n"
    );
    let mut publisher = Conn::from([127, 7, 2, 2], stack.addr());
    let one = command(&[b"PUBLISH", b"flood", &vec![b'p'; MESSAGE]]);
    for _ in 0..MESSAGES / 16 {
        publisher.send(&one.repeat(16));
        publisher.replies(16);
        if stack.moat.metrics().get("slow_subscribers") == Some(1) {
            break;
        }
    }
    wait_until("moat to cut the slow subscriber", SETTLE, || {
        stack.moat.metrics().get("slow_subscribers") == Some(1)
    });
    assert_eq!(publisher.call(&["SET", "k", "v"]), b"+OK\r\n");
    let read = slow
        .read_until_closed(Duration::from_secs(30))
        .expect("the slow subscriber is disconnected");
    assert!(
        read < MESSAGE * MESSAGES / 2,
        "it still received {read} bytes"
    );
}

/// A RESP3 subscriber that asks for a reply bigger than `limits.max_output_bytes` gets it:
/// only messages it did not ask for count toward the slow-subscriber limit (found by the
/// session fuzz target: a monitoring client's own pipelined replies got it disconnected).
#[test]
fn a_subscriber_asking_for_a_big_reply_is_not_taken_for_a_slow_one() {
    const LIMIT: usize = 64 << 10;
    let stack = with_config(|c| c.limits.max_output_bytes = LIMIT);
    let big = vec![b'b'; 4 * LIMIT];
    let mut other = Conn::from([127, 7, 1, 2], stack.addr());
    assert_eq!(other.call_bytes(&[b"SET", b"big", &big]), b"+OK\r\n");
    let mut sub = Conn::from([127, 7, 1, 1], stack.addr());
    assert!(sub.call(&["HELLO", "3"]).starts_with(b"%7\r\n"));
    assert_eq!(
        sub.call(&["SUBSCRIBE", "big-ch"]),
        b">3\r\n$9\r\nsubscribe\r\n$6\r\nbig-ch\r\n:1\r\n"
    );
    for round in 0..3 {
        let reply = sub.call(&["GET", "big"]);
        assert_eq!(reply.len(), big.len() + 11, "round {round}");
        assert!(reply.starts_with(b"$262144\r\nbbb"), "round {round}");
    }
    assert_eq!(other.call(&["PUBLISH", "big-ch", "still-here"]), b":1\r\n");
    assert_eq!(
        sub.reply(),
        b">3\r\n$7\r\nmessage\r\n$6\r\nbig-ch\r\n$10\r\nstill-here\r\n"
    );
    assert_eq!(stack.moat.metrics().get("slow_subscribers"), Some(0));
}

/// A RESP2 client pipelines HELLO 3 behind an unsubscribe that leaves it in no pub/sub
/// mode: Redis runs the HELLO, so moat must too, and the session goes on in RESP3 (found by
/// the session fuzz target: moat sent the HELLO on as one Redis would refuse, and the
/// connection switched protocol behind its back).
#[test]
fn hello_3_pipelined_behind_an_unsubscribe_switches_the_session_like_redis() {
    let stack = with_config(|_| {});
    let script = [
        command(&[b"PUNSUBSCRIBE"]),
        command(&[b"HELLO", b"3"]),
        command(&[b"PING"]),
        command(&[b"SUBSCRIBE", b"hello-ch"]),
        command(&[b"PING"]),
    ]
    .concat();
    let mut direct = Conn::connect(stack.redis.addr());
    direct.send(&script);
    let want = direct.replies(5);
    let mut client = Conn::connect(stack.addr());
    client.send(&script);
    let got = client.replies(5);
    // HELLO's map names the connection id and may list modules: only its shape is Redis's.
    assert!(got[1].starts_with(b"%7\r\n"), "HELLO 3: {}", shown(&got[1]));
    assert!(want[1].starts_with(b"%7\r\n"));
    for i in [0, 2, 3, 4] {
        assert_eq!(shown(&got[i]), shown(&want[i]), "reply {i}");
    }
    assert_eq!(got[3], b">3\r\n$9\r\nsubscribe\r\n$8\r\nhello-ch\r\n:1\r\n");
    client.assert_quiet(Duration::from_millis(100), "after the pipeline");
}

// 6. No state leaks between leases.

#[test]
fn watch_and_database_of_a_vanished_client_do_not_leak() {
    let stack = with_config(|c| {
        c.pinned.max_connections = 1;
        c.pinned.wait = Duration::from_secs(2);
    });
    let mut a = Conn::from([127, 8, 0, 1], stack.addr());
    assert_eq!(a.call(&["SELECT", "5"]), b"+OK\r\n");
    assert_eq!(a.call(&["WATCH", "k"]), b"+OK\r\n");
    assert_eq!(pinned_lines(&stack.redis).len(), 1);
    a.abort();
    // The watched key changes: a leaked WATCH would abort B's transaction.
    let mut direct = Conn::connect(stack.redis.addr());
    assert_eq!(direct.call(&["SELECT", "5"]), b"+OK\r\n");
    assert_eq!(direct.call(&["SET", "k", "changed"]), b"+OK\r\n");

    let mut b = Conn::from([127, 8, 0, 2], stack.addr());
    assert_eq!(b.call(&["MULTI"]), b"+OK\r\n");
    assert_eq!(b.call(&["SET", "bkey", "1"]), b"+QUEUED\r\n");
    assert_eq!(b.call(&["EXEC"]), b"*1\r\n+OK\r\n");
    assert_eq!(
        direct.call(&["EXISTS", "bkey"]),
        b":0\r\n",
        "not in A's db 5"
    );
    assert_eq!(direct.call(&["SELECT", "0"]), b"+OK\r\n");
    assert_eq!(direct.call(&["EXISTS", "bkey"]), b":1\r\n", "in B's db 0");
    assert!(pinned_lines(&stack.redis).len() <= 1);
    wait_pinned_idle(&stack.redis);
}

#[test]
fn subscriptions_of_a_vanished_client_do_not_leak() {
    let stack = with_config(|c| {
        c.pinned.max_connections = 1;
        c.pinned.wait = Duration::from_secs(2);
    });
    let mut a = Conn::from([127, 8, 1, 1], stack.addr());
    assert_eq!(
        a.call(&["SUBSCRIBE", "c"]),
        b"*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n"
    );
    a.abort();
    let mut b = Conn::from([127, 8, 1, 2], stack.addr());
    assert_eq!(b.call(&["MULTI"]), b"+OK\r\n");
    // B holds the only dedicated connection now: no connection may still be subscribed (a
    // closed one may take Redis a moment to reap; a leaked subscription stays).
    wait_until("no subscribed connection left", SETTLE, || {
        !client_list(&stack.redis)
            .iter()
            .any(|l| field(l, "sub") != Some("0"))
    });
    let mut direct = Conn::connect(stack.redis.addr());
    assert_eq!(
        direct.call(&["PUBLISH", "c", "hi"]),
        b":0\r\n",
        "A's subscription is gone"
    );
    assert_eq!(b.call(&["EXEC"]), b"*0\r\n");
    b.assert_quiet(Duration::from_millis(200), "B after EXEC");
    assert_eq!(b.call(&["PING"]), b"+PONG\r\n");
    assert!(pinned_lines(&stack.redis).len() <= 1);
    wait_pinned_idle(&stack.redis);
}

/// A client vanishes while messages keep arriving on its subscription; the next lease of
/// the same (only) dedicated connection must see none of them, nor the RESET moat sent.
#[test]
fn a_busy_subscription_does_not_leak_into_the_next_lease() {
    const ROUNDS: usize = 40;
    let stack = with_config(|c| {
        c.pinned.max_connections = 1;
        c.pinned.wait = Duration::from_secs(3);
    });
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let redis = stack.redis.addr();
        let stop = &stop;
        s.spawn(move || {
            let mut publisher = Conn::connect(redis);
            let one = command(&[b"PUBLISH", b"busy", b"payload"]);
            let batch = one.repeat(50);
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                publisher.send(&batch);
                publisher.replies(50);
            }
        });
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let _stop = StopOnDrop(stop);
        for round in 0..ROUNDS {
            let mut a = Conn::from([127, 8, 2, 1], stack.addr());
            a.send(&command(&[b"SUBSCRIBE", b"busy"]));
            assert_eq!(
                a.reply(),
                b"*3\r\n$9\r\nsubscribe\r\n$4\r\nbusy\r\n:1\r\n",
                "round {round}"
            );
            // Let some messages flow, then vanish mid-stream.
            let _ = a.reply();
            a.abort();
            let mut b = Conn::from([127, 8, 2, 2], stack.addr());
            let reply = b.call(&["BLPOP", "leak:probe", "0.01"]);
            assert_eq!(
                reply,
                b"*-1\r\n",
                "round {round}: B's first reply {}",
                shown(&reply)
            );
            let reply = b.call(&["PING"]);
            assert_eq!(reply, b"+PONG\r\n", "round {round}: {}", shown(&reply));
            b.assert_quiet(Duration::from_millis(20), "B after its lease");
        }
    });
    assert!(pinned_lines(&stack.redis).len() <= 1);
}

#[test]
fn reset_inside_a_pinned_session_returns_to_db0_unauthenticated() {
    let stack = with_config(|c| {
        c.pinned.max_connections = 1;
        c.pinned.wait = Duration::from_millis(300);
        c.users = vec![user("default", "pw")];
    });
    let mut c = Conn::from([127, 9, 0, 1], stack.addr());
    assert_eq!(c.call(&["AUTH", "pw"]), b"+OK\r\n");
    assert_eq!(c.call(&["SELECT", "3"]), b"+OK\r\n");
    assert_eq!(c.call(&["WATCH", "k"]), b"+OK\r\n");
    assert_eq!(c.call(&["RESET"]), b"+RESET\r\n");
    assert_eq!(
        c.call(&["GET", "k"]),
        b"-NOAUTH Authentication required.\r\n"
    );
    assert_eq!(c.call(&["AUTH", "pw"]), b"+OK\r\n");
    assert_eq!(c.call(&["SET", "rk", "1"]), b"+OK\r\n");
    let mut direct = Conn::connect(stack.redis.addr());
    assert_eq!(
        direct.call(&["EXISTS", "rk"]),
        b":1\r\n",
        "RESET went back to db 0"
    );

    // RESET while subscribed (in db 2) ends the subscription and the lease.
    assert_eq!(c.call(&["SELECT", "2"]), b"+OK\r\n");
    assert_eq!(
        c.call(&["SUBSCRIBE", "rc"]),
        b"*3\r\n$9\r\nsubscribe\r\n$2\r\nrc\r\n:1\r\n"
    );
    assert_eq!(c.call(&["RESET"]), b"+RESET\r\n");
    assert_eq!(
        c.call(&["GET", "k"]),
        b"-NOAUTH Authentication required.\r\n"
    );
    assert_eq!(c.call(&["AUTH", "pw"]), b"+OK\r\n");
    assert_eq!(c.call(&["SET", "rk2", "1"]), b"+OK\r\n");
    assert_eq!(direct.call(&["EXISTS", "rk2"]), b":1\r\n");
    wait_pinned_idle(&stack.redis);
    assert_eq!(direct.call(&["PUBLISH", "rc", "x"]), b":0\r\n");
    c.assert_quiet(Duration::from_millis(100), "after RESET");
    let mut probe = Conn::from([127, 9, 0, 2], stack.addr());
    assert_eq!(probe.call(&["AUTH", "pw"]), b"+OK\r\n");
    assert_eq!(probe.call(&["BLPOP", "p", "0.01"]), b"*-1\r\n");
    wait_pinned_idle(&stack.redis);
}

// 7. MONITOR.

#[test]
fn monitor_streams_other_clients_and_holds_its_lease_until_it_leaves() {
    let stack = with_config(|c| {
        c.pinned.max_connections = 1;
        c.pinned.wait = Duration::from_millis(300);
    });
    let mut m = Conn::from([127, 10, 0, 1], stack.addr());
    assert_eq!(m.call(&["MONITOR"]), b"+OK\r\n");
    let mut x = Conn::from([127, 10, 0, 2], stack.addr());
    assert_eq!(x.call(&["SET", "mon-key", "mon-val"]), b"+OK\r\n");
    let mut seen = false;
    for _ in 0..50 {
        let line = m.reply();
        assert!(line.starts_with(b"+"), "monitor line {}", shown(&line));
        if String::from_utf8_lossy(&line).contains("\"SET\" \"mon-key\" \"mon-val\"") {
            seen = true;
            break;
        }
    }
    assert!(seen, "MONITOR never showed the SET");
    assert_eq!(lease_probe(&stack, [127, 10, 0, 9]), pool_full(1));
    let lines = pinned_lines(&stack.redis);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(field(&lines[0], "flags").is_some_and(|f| f.contains('O')));

    drop(m);
    wait_until("the monitor connection to go", SETTLE, || {
        !pinned_lines(&stack.redis)
            .iter()
            .any(|l| field(l, "flags").is_some_and(|f| f.contains('O')))
    });
    assert!(pinned_lines(&stack.redis).len() <= 1);
    assert_eq!(lease_probe(&stack, [127, 10, 0, 9]), b"*-1\r\n");
    wait_pinned_idle(&stack.redis);
}

/// RESET and a command pipelined by a monitoring client: the command waits for RESET's reply
/// without spinning (found by the session fuzz target: a monitoring session blocked behind
/// its RESET looped without ever reading the reply it waited for), then runs on a shared
/// connection, and another client is served meanwhile.
#[test]
fn a_command_pipelined_after_monitor_and_reset_waits_for_reset_then_runs() {
    let stack = with_config(|_| {});
    let mut m = Conn::from([127, 10, 1, 1], stack.addr());
    assert_eq!(m.call(&["MONITOR"]), b"+OK\r\n");
    // Once monitoring, RESET and PING in one write: PING must wait for RESET's reply.
    m.send(&[command(&[b"RESET"]), command(&[b"PING"])].concat());
    // Monitor lines (moat's own commands on other connections) may come before `+RESET`.
    let mut reset = false;
    for _ in 0..100 {
        let line = m.reply();
        if line == b"+RESET\r\n" {
            reset = true;
            break;
        }
        assert!(
            line.starts_with(b"+"),
            "not a monitor line: {}",
            shown(&line)
        );
    }
    assert!(reset, "no +RESET among 100 replies");
    assert_eq!(m.reply(), b"+PONG\r\n");
    let mut other = Conn::from([127, 10, 1, 2], stack.addr());
    assert_eq!(other.call(&["PING"]), b"+PONG\r\n");
    assert_eq!(m.call(&["ECHO", "still-here"]), b"$10\r\nstill-here\r\n");
}

/// A monitor leaves while other clients keep Redis busy: the next leases of the same
/// dedicated connection get their own replies, never a leftover monitor line.
#[test]
fn a_busy_monitor_does_not_leak_into_the_next_lease() {
    const ROUNDS: usize = 30;
    let stack = with_config(|c| {
        c.pinned.max_connections = 1;
        c.pinned.wait = Duration::from_secs(3);
    });
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let addr = stack.addr();
        let stop = &stop;
        s.spawn(move || {
            let mut busy = Conn::from([127, 10, 1, 3], addr);
            let batch = command(&[b"SET", b"busy", b"1"]).repeat(50);
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                busy.send(&batch);
                busy.replies(50);
            }
        });
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let _stop = StopOnDrop(stop);
        for round in 0..ROUNDS {
            let mut m = Conn::from([127, 10, 1, 1], stack.addr());
            assert_eq!(m.call(&["MONITOR"]), b"+OK\r\n", "round {round}");
            let _ = m.reply();
            m.abort();
            let mut b = Conn::from([127, 10, 1, 2], stack.addr());
            let reply = b.call(&["BLPOP", "leak:probe", "0.01"]);
            assert_eq!(reply, b"*-1\r\n", "round {round}: {}", shown(&reply));
            assert_eq!(b.call(&["PING"]), b"+PONG\r\n", "round {round}");
            b.assert_quiet(Duration::from_millis(20), "B after its lease");
        }
    });
}

// 8. CLIENT TRACKING.

#[test]
fn client_tracking_holds_a_lease_until_turned_off() {
    let stack = with_config(|c| {
        c.pinned.max_connections = 1;
        c.pinned.wait = Duration::from_millis(300);
    });
    let mut direct = Conn::connect(stack.redis.addr());
    let expected_on = direct.call(&["CLIENT", "TRACKING", "on"]);
    assert_eq!(expected_on, b"+OK\r\n");
    let expected_off = direct.call(&["CLIENT", "TRACKING", "off"]);
    assert_eq!(expected_off, b"+OK\r\n");
    drop(direct);

    let mut t = Conn::from([127, 11, 0, 1], stack.addr());
    assert_eq!(t.call(&["CLIENT", "TRACKING", "on"]), expected_on);
    assert_eq!(t.call(&["GET", "tk"]), b"$-1\r\n");
    assert_eq!(lease_probe(&stack, [127, 11, 0, 9]), pool_full(1));
    let lines = pinned_lines(&stack.redis);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        field(&lines[0], "flags").is_some_and(|f| f.contains('t')),
        "{lines:#?}"
    );
    let mut other = Conn::from([127, 11, 0, 2], stack.addr());
    assert_eq!(other.call(&["SET", "tk", "1"]), b"+OK\r\n");
    assert_eq!(t.call(&["CLIENT", "TRACKING", "off"]), expected_off);
    t.assert_quiet(Duration::from_millis(100), "after tracking off");
    assert_eq!(lease_probe(&stack, [127, 11, 0, 9]), b"*-1\r\n");
    assert_eq!(t.call(&["GET", "tk"]), b"$1\r\n1\r\n");
    wait_pinned_idle(&stack.redis);
}

/// While the only dedicated connection is leased, shared commands are still served and a
/// stateful one is refused after the wait.
#[test]
fn shared_commands_need_no_lease() {
    let stack = with_config(|c| {
        c.pinned.max_connections = 1;
        c.pinned.wait = Duration::from_millis(300);
    });
    let mut holder = Conn::from([127, 12, 0, 1], stack.addr());
    assert_eq!(holder.call(&["WATCH", "h"]), b"+OK\r\n");
    let mut raw = Raw::connect(stack.addr());
    assert_eq!(raw.cmd(&[b"SET", b"h2", b"1"]), b"+OK\r\n");
    assert_eq!(raw.cmd(&[b"GET", b"h2"]), b"$1\r\n1\r\n");
    assert_eq!(raw.cmd(&[b"BLPOP", b"h3", b"0.01"]), pool_full(1));
    assert_eq!(holder.call(&["UNWATCH"]), b"+OK\r\n");
    assert_eq!(raw.cmd(&[b"BLPOP", b"h3", b"0.01"]), b"*-1\r\n");
}

// Edge cases of the state follower, compared with Redis byte for byte.

/// Runs `script` (one request per entry, each answered before the next is sent) on `c`.
fn transcript(c: &mut Conn, script: &[&[&str]]) -> Vec<Vec<u8>> {
    script.iter().map(|args| c.call(args)).collect()
}

fn assert_same_as_redis(stack: &Stack, src: [u8; 4], script: &[&[&str]]) {
    let expected = transcript(&mut Conn::connect(stack.redis.addr()), script);
    stack.redis.command(&["FLUSHALL"]).unwrap();
    let got = transcript(&mut Conn::from(src, stack.addr()), script);
    stack.redis.command(&["FLUSHALL"]).unwrap();
    for ((args, g), e) in script.iter().zip(&got).zip(&expected) {
        assert_eq!(g, e, "{args:?}: moat {} vs redis {}", shown(g), shown(e));
    }
}

#[test]
fn transaction_edge_cases_match_redis() {
    let stack = with_config(|_| {});
    let scripts: [&[&[&str]]; 5] = [
        // Nested MULTI is an error that does not fail the transaction.
        &[
            &["MULTI"],
            &["MULTI"],
            &["SET", "n", "1"],
            &["EXEC"],
            &["GET", "n"],
        ],
        // WATCH inside MULTI is refused; the transaction still runs.
        &[
            &["MULTI"],
            &["WATCH", "n"],
            &["SET", "n", "2"],
            &["EXEC"],
            &["GET", "n"],
        ],
        // Unknown command inside MULTI fails the transaction.
        &[
            &["MULTI"],
            &["NOSUCHCOMMAND", "x"],
            &["SET", "n", "3"],
            &["EXEC"],
            &["EXISTS", "n"],
        ],
        // A blocking call inside MULTI does not block.
        &[&["MULTI"], &["BLPOP", "empty", "0"], &["EXEC"], &["PING"]],
        // EXEC, DISCARD, UNWATCH with nothing open.
        &[&["EXEC"], &["DISCARD"], &["UNWATCH"], &["PING"]],
    ];
    for (i, script) in scripts.iter().enumerate() {
        assert_same_as_redis(&stack, [127, 13, 0, i as u8 + 1], script);
    }
    wait_pinned_idle(&stack.redis);
}

/// `EXEC` without `MULTI` is an error in Redis that leaves the client's WATCH in place, so
/// a transaction that follows still fails when the watched key changed.
fn exec_without_multi_transcript(a: &mut Conn, b: &mut Conn) -> Vec<Vec<u8>> {
    vec![
        a.call(&["WATCH", "wk"]),
        a.call(&["EXEC"]),
        b.call(&["SET", "wk", "theirs"]),
        a.call(&["MULTI"]),
        a.call(&["SET", "wk", "mine"]),
        a.call(&["EXEC"]),
        a.call(&["GET", "wk"]),
    ]
}

#[test]
fn exec_without_multi_keeps_the_watch_like_redis() {
    let stack = with_config(|_| {});
    let expected = exec_without_multi_transcript(
        &mut Conn::connect(stack.redis.addr()),
        &mut Conn::connect(stack.redis.addr()),
    );
    assert_eq!(expected[1], b"-ERR EXEC without MULTI\r\n");
    assert_eq!(expected[5], b"*-1\r\n", "Redis still honours the WATCH");
    stack.redis.command(&["FLUSHALL"]).unwrap();
    let got = exec_without_multi_transcript(
        &mut Conn::from([127, 13, 1, 1], stack.addr()),
        &mut Conn::from([127, 13, 1, 2], stack.addr()),
    );
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(g, e, "reply {i}: moat {} vs redis {}", shown(g), shown(e));
    }
}

/// A client blocked in `BLPOP k 0` closes its connection (FIN, as any client library does
/// on timeout or exit). Redis drops a closed client's blocking call at once: the lease and
/// the values pushed later must not go to a client that is gone.
#[test]
fn a_blocked_client_that_closes_gives_back_its_lease_and_values() {
    let stack = with_config(|c| {
        c.pinned.max_connections = 1;
        c.pinned.wait = Duration::from_millis(500);
    });
    // Redis directly: the closed client's BLPOP takes nothing.
    let mut gone = Conn::connect(stack.redis.addr());
    gone.send(&command(&[b"BLPOP", b"gk", b"0"]));
    wait_blocked(&stack.redis, 1);
    drop(gone);
    wait_blocked(&stack.redis, 0);
    let mut direct = Conn::connect(stack.redis.addr());
    assert_eq!(direct.call(&["LPUSH", "gk", "v"]), b":1\r\n");
    assert_eq!(direct.call(&["LLEN", "gk"]), b":1\r\n");
    assert_eq!(direct.call(&["DEL", "gk"]), b":1\r\n");

    // Through moat.
    let mut gone = Conn::from([127, 14, 0, 1], stack.addr());
    gone.send(&command(&[b"BLPOP", b"gk", b"0"]));
    wait_blocked(&stack.redis, 1);
    drop(gone);
    // Give moat time to notice (bounded; not a speed assertion: checked below either way).
    let deadline = Instant::now() + Duration::from_secs(3);
    while blocked_clients(&stack.redis) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let still_blocked = blocked_clients(&stack.redis);
    let probe = lease_probe(&stack, [127, 14, 0, 2]);
    let mut other = Conn::from([127, 14, 0, 3], stack.addr());
    let pushed = other.call(&["LPUSH", "gk", "v"]);
    std::thread::sleep(Duration::from_millis(100));
    let llen = other.call(&["LLEN", "gk"]);
    assert_eq!(
        (still_blocked, shown(&probe), shown(&pushed), shown(&llen)),
        (0, shown(b"*-1\r\n"), shown(b":1\r\n"), shown(b":1\r\n")),
        "(blocked_clients 3 s after the client closed, lease probe, LPUSH, LLEN)"
    );
}

#[test]
fn client_tracking_off_without_a_lease_matches_redis() {
    let stack = with_config(|_| {});
    assert_same_as_redis(
        &stack,
        [127, 13, 2, 1],
        &[
            &["CLIENT", "TRACKING", "off"],
            &["CLIENT", "TRACKING", "on"],
            &["CLIENT", "TRACKING", "on"],
            &["CLIENT", "TRACKING", "off"],
            &["PING"],
        ],
    );
}

/// Redis's RESET ends a client's subscriptions before it answers `+RESET`: a message
/// published after the client has its `+RESET` reaches no one (PUBLISH says 0).
#[test]
fn no_subscriber_remains_once_reset_is_answered() {
    const ROUNDS: usize = 100;
    let stack = with_config(|_| {});
    let mut direct = Conn::connect(stack.redis.addr());
    let mut c = Conn::from([127, 9, 1, 1], stack.addr());
    let mut phantom = Vec::new();
    for round in 0..ROUNDS {
        let channel = format!("rc{round}");
        assert_eq!(
            c.call(&["SUBSCRIBE", &channel]),
            format!(
                "*3\r\n$9\r\nsubscribe\r\n${}\r\n{channel}\r\n:1\r\n",
                channel.len()
            )
            .into_bytes()
        );
        assert_eq!(c.call(&["RESET"]), b"+RESET\r\n");
        let receivers = direct.call(&["PUBLISH", &channel, "after-reset"]);
        if receivers != b":0\r\n" {
            phantom.push((round, shown(&receivers)));
        }
    }
    c.assert_quiet(Duration::from_millis(100), "after RESET");
    assert!(
        phantom.is_empty(),
        "PUBLISH right after the subscriber's +RESET still reached a subscriber in {} of \
         {ROUNDS} rounds (first: {:?})",
        phantom.len(),
        &phantom[..phantom.len().min(3)]
    );
}

/// A subscriber RESETs while messages pour in and another client waits for the only
/// dedicated connection: the waiter's first reply must be its own, never a frame left over
/// from the subscription or from moat's RESET of the connection.
#[test]
fn reset_under_a_message_flood_hands_over_a_clean_connection() {
    const ROUNDS: usize = 40;
    let stack = with_config(|c| {
        c.pinned.max_connections = 1;
        c.pinned.wait = Duration::from_secs(5);
    });
    let stop = AtomicBool::new(false);
    let mut bad = Vec::new();
    std::thread::scope(|s| {
        let redis = stack.redis.addr();
        let stop = &stop;
        s.spawn(move || {
            let mut publisher = Conn::connect(redis);
            let batch = command(&[b"PUBLISH", b"pour", b"payload"]).repeat(20);
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                publisher.send(&batch);
                publisher.replies(20);
            }
        });
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let _stop = StopOnDrop(stop);
        let message = b"*3\r\n$7\r\nmessage\r\n$4\r\npour\r\n$7\r\npayload\r\n";
        for round in 0..ROUNDS {
            let mut a = Conn::from([127, 9, 2, 1], stack.addr());
            assert_eq!(
                a.call(&["SUBSCRIBE", "pour"]),
                b"*3\r\n$9\r\nsubscribe\r\n$4\r\npour\r\n:1\r\n"
            );
            assert_eq!(a.reply(), message, "round {round}: messages flow");
            // B queues for the lease A holds.
            let mut b = Conn::from([127, 9, 2, 2], stack.addr());
            b.send(&command(&[b"BLPOP", b"clean:probe", b"0.01"]));
            std::thread::sleep(Duration::from_millis(5));
            a.send(&command(&[b"RESET"]));
            // A sees messages, then +RESET.
            for _ in 0..100_000 {
                let frame = a.reply();
                if frame == b"+RESET\r\n" {
                    break;
                }
                assert_eq!(frame, message, "round {round}: A got {}", shown(&frame));
            }
            let first = b.reply();
            let second = b.call(&["PING"]);
            if first != b"*-1\r\n" || second != b"+PONG\r\n" {
                bad.push(format!(
                    "round {round}: B got {} then {}",
                    shown(&first),
                    shown(&second)
                ));
            }
        }
    });
    assert!(bad.is_empty(), "{} bad rounds: {bad:#?}", bad.len());
}

/// A message published just as a subscriber's lease ends reaches the dedicated connection
/// ahead of moat's RESET of it (moat's background RESET may read it as RESET's reply). The next lease, taken by a client already waiting for it,
/// must still get its own replies in order.
#[test]
fn a_message_racing_the_reset_does_not_shift_the_next_leases_replies() {
    const ROUNDS: usize = 100;
    let stack = with_config(|c| {
        c.pinned.max_connections = 1;
        c.pinned.wait = Duration::from_secs(5);
    });
    let mut direct = Conn::connect(stack.redis.addr());
    let mut a = Conn::from([127, 9, 3, 1], stack.addr());
    let mut bad = Vec::new();
    let mut raced = 0;
    for round in 0..ROUNDS {
        assert_eq!(
            a.call(&["SUBSCRIBE", "race"]),
            b"*3\r\n$9\r\nsubscribe\r\n$4\r\nrace\r\n:1\r\n",
            "round {round}"
        );
        let mut b = Conn::from([127, 9, 3, 2], stack.addr());
        b.send(&command(&[b"WAIT", b"0", b"0"]));
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(a.call(&["RESET"]), b"+RESET\r\n", "round {round}");
        if direct.call(&["PUBLISH", "race", "late"]) == b":1\r\n" {
            raced += 1;
        }
        let first = b.reply();
        let second = b.call(&["PING"]);
        if first != b":0\r\n" || second != b"+PONG\r\n" {
            bad.push(format!(
                "round {round}: B got {} then {}",
                shown(&first),
                shown(&second)
            ));
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {ROUNDS} rounds shifted ({raced} messages raced the RESET): {bad:#?}",
        bad.len()
    );
}

/// The same with a client that crashes (RST): its blocking call ends with it.
#[test]
fn a_blocked_client_that_crashes_gives_back_its_lease_and_values() {
    let stack = with_config(|c| {
        c.pinned.max_connections = 1;
        c.pinned.wait = Duration::from_secs(2);
    });
    let mut gone = Conn::from([127, 14, 1, 1], stack.addr());
    gone.send(&command(&[b"BLPOP", b"ck", b"0"]));
    wait_blocked(&stack.redis, 1);
    gone.abort();
    wait_blocked(&stack.redis, 0);
    assert_eq!(lease_probe(&stack, [127, 14, 1, 2]), b"*-1\r\n");
    let mut other = Conn::from([127, 14, 1, 3], stack.addr());
    assert_eq!(other.call(&["LPUSH", "ck", "v"]), b":1\r\n");
    assert_eq!(other.call(&["LLEN", "ck"]), b":1\r\n");
    wait_pinned_idle(&stack.redis);
}

/// Commands moat answers itself (PING, ECHO) reach Redis while someone monitors, so the
/// monitor sees them as it would on Redis; once the monitor leaves, moat answers them again.
#[test]
fn monitors_see_pings_that_moat_would_answer_itself() {
    let stack = Stack::start();
    let mut monitor = Conn::connect(stack.addr());
    assert_eq!(monitor.call(&["MONITOR"]), b"+OK\r\n");
    wait_until("the monitor is counted", SETTLE, || {
        stack.moat.metrics().get("monitors") == Some(1)
    });
    let mut other = Conn::connect(stack.addr());
    assert_eq!(other.call(&["PING"]), b"+PONG\r\n");
    assert_eq!(other.call(&["ECHO", "seen"]), b"$4\r\nseen\r\n");
    let mut lines = Vec::new();
    while lines.len() < 2 {
        let line = monitor.reply();
        let text = String::from_utf8_lossy(&line).into_owned();
        // Moat's own health checks may show up too; only the client's commands count.
        if text.contains("\"PING\"") || text.contains("\"ECHO\"") {
            lines.push(text);
        }
    }
    assert!(lines[0].contains("\"PING\""), "{lines:?}");
    assert!(lines[1].contains("\"ECHO\" \"seen\""), "{lines:?}");
    assert_eq!(monitor.call(&["RESET"]), b"+RESET\r\n");
    wait_until("the monitor has left", SETTLE, || {
        stack.moat.metrics().get("monitors") == Some(0)
    });
    assert_eq!(other.call(&["PING"]), b"+PONG\r\n");
}
