//! Memory bounds, measured as the resident set size of a process running moat in-process.
//!
//! Each test re-runs this test binary with only itself selected (see [`isolated`]), so the
//! RSS it reads from `/proc/self/status` is moat's plus a small, fixed test harness, never
//! another test's leftovers. Big buffers of the test itself are allocated before the
//! baseline or not at all (payloads are streamed from one small chunk).
//!
//! Run with `--nocapture` to see the numbers.
#![allow(clippy::unwrap_used)]

mod common;

use common::rss::{Peak, mib, rss};

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{Stack, bulk, command, shown};
use moat_testkit::RedisServer;

const MIB: u64 = 1 << 20;
/// Set in the re-run copy of the binary: run the body instead of spawning.
const CHILD_ENV: &str = "MOAT_MEMORY_TEST_CHILD";
/// A whole isolated test must finish within this.
const TEST_DEADLINE: Duration = Duration::from_secs(300);
const REPLY_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs `body` in a fresh process running only the test `name` (see `common::rss`).
fn isolated(name: &str, body: fn()) {
    common::rss::isolated(name, body, CHILD_ENV, TEST_DEADLINE);
}

/// A blocking client with bounded waits.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        stream.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(REPLY_TIMEOUT)).unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    fn reply(&mut self) -> Vec<u8> {
        loop {
            if let Some((_, used)) = moat_protocol::Value::decode(&self.buf, 64).unwrap() {
                return self.buf.drain(..used).collect();
            }
            let mut chunk = [0u8; 65536];
            let n = self
                .stream
                .read(&mut chunk)
                .unwrap_or_else(|e| panic!("no reply: {e}; buffered {}", shown(&self.buf)));
            assert!(n > 0, "closed; buffered {}", shown(&self.buf));
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn call(&mut self, args: &[&[u8]]) -> Vec<u8> {
        self.stream.write_all(&command(args)).unwrap();
        self.reply()
    }

    /// True once the peer closed (reading and discarding whatever is left), false if it is
    /// still open after `wait`.
    fn closed_within(&mut self, wait: Duration) -> bool {
        self.stream.set_read_timeout(Some(wait)).unwrap();
        let deadline = Instant::now() + wait;
        let mut chunk = [0u8; 65536];
        while Instant::now() < deadline {
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return false;
                }
                Err(_) => return true,
            }
        }
        false
    }
}

/// Reply size of `GET bigkey`.
const BIG: usize = 100 << 10;
const MAX_INFLIGHT: usize = 64;
const MAX_OUTPUT: usize = 4 << 20;

/// 1. One client pipelines `GET bigkey` (100 KiB replies) and never reads: moat stops reading
///    it once `max_inflight` replies are owed or `max_output_bytes` are unread, so its memory
///    stays bounded by the config however much the client offers; other clients are served.
#[test]
fn a_client_that_never_reads_is_backpressured_not_buffered() {
    isolated(
        "a_client_that_never_reads_is_backpressured_not_buffered",
        never_reading_client,
    );
}

fn never_reading_client() {
    let stack = Stack::with(RedisServer::builder(), |c| {
        c.limits.max_inflight = MAX_INFLIGHT;
        c.limits.max_output_bytes = MAX_OUTPUT;
    });
    let value: Vec<u8> = (0..BIG).map(|i| b'a' + (i % 26) as u8).collect();
    let expected_big = bulk(&value);
    let text = String::from_utf8(value).unwrap();
    assert_eq!(
        stack.redis.command(&["SET", "bigkey", &text]).unwrap(),
        b"+OK\r\n"
    );
    drop(text);
    // The other client, connected and warmed up before the baseline.
    let mut other = Client::connect(stack.addr());
    assert_eq!(other.call(&[b"GET", b"bigkey"]), expected_big);
    // One write's worth of requests, built before the baseline.
    let get = command(&[b"GET", b"bigkey"]);
    let chunk: Vec<u8> = get.repeat(4096);
    let mut hog = TcpStream::connect(stack.addr()).unwrap();
    hog.set_write_timeout(Some(Duration::from_secs(2))).unwrap();

    std::thread::sleep(Duration::from_millis(200));
    let baseline = rss();
    let peak = Peak::start();
    // Offer 1 GiB of requests (44M GETs, 4.4 TB of replies) and stop at the first write that
    // blocks for 2 s: moat stopped reading. Bounded by the target and by 60 s.
    const OFFER: u64 = 1 << 30;
    let writer = std::thread::spawn(move || {
        let started = Instant::now();
        let mut written = 0u64;
        let mut off = 0usize;
        let mut blocked = false;
        while written < OFFER && started.elapsed() < Duration::from_secs(60) {
            match hog.write(&chunk[off..]) {
                Ok(n) => {
                    written += n as u64;
                    off = (off + n) % chunk.len();
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    blocked = true;
                    break;
                }
                Err(e) => panic!("the hog's write failed: {e}"),
            }
        }
        (hog, written, blocked, started.elapsed())
    });
    // Meanwhile the other client is served, big replies and small, all correct.
    let served_from = Instant::now();
    let mut rounds = 0;
    while !writer.is_finished() || rounds < 50 {
        assert!(
            served_from.elapsed() < Duration::from_secs(90),
            "the hog's writer did not stop"
        );
        let key = format!("m:other:{rounds}");
        assert_eq!(other.call(&[b"SET", key.as_bytes(), b"v"]), b"+OK\r\n");
        assert_eq!(other.call(&[b"GET", key.as_bytes()]), b"$1\r\nv\r\n");
        assert_eq!(other.call(&[b"GET", b"bigkey"]), expected_big);
        rounds += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let (hog, written, blocked, took) = writer.join().unwrap();
    // Hold the hog unread a little longer while measuring.
    std::thread::sleep(Duration::from_secs(1));
    let during = peak.now();
    let requests = written / get.len() as u64;
    let demanded = requests * expected_big.len() as u64;
    let growth = during.saturating_sub(baseline);
    let bound = (MAX_OUTPUT + MAX_INFLIGHT * expected_big.len()) as u64 + 32 * MIB;
    eprintln!(
        "never-reading client: wrote {written} bytes ({requests} GETs, {} of replies \
         demanded) in {} ms, then its write blocked: {blocked}; other client served {rounds} \
         rounds meanwhile",
        mib(demanded),
        took.as_millis()
    );
    eprintln!(
        "RSS: baseline {}, peak while held {}, growth {} (bound: max_output_bytes {} + \
         max_inflight {MAX_INFLIGHT} x {} reply + 32 MiB slack = {})",
        mib(baseline),
        mib(during),
        mib(growth),
        mib(MAX_OUTPUT as u64),
        mib(expected_big.len() as u64),
        mib(bound)
    );
    assert!(
        blocked,
        "moat read all {written} bytes offered by a client that reads nothing (no backpressure)"
    );
    assert!(
        demanded >= 1_000_000_000,
        "only {} of replies were demanded before the writer blocked: not the >= 1 GB the \
         test means to offer",
        mib(demanded)
    );
    assert!(
        growth < bound && growth < 64 * MIB,
        "RSS grew by {} while a client left {} of replies unread (bound {})",
        mib(growth),
        mib(demanded),
        mib(bound)
    );
    // The hog leaves; its memory goes back (printed, not asserted).
    drop(hog);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(other.call(&[b"GET", b"bigkey"]), expected_big);
    let peak = peak.finish();
    eprintln!(
        "RSS after the hog closed: {} (peak {})",
        mib(rss()),
        mib(peak)
    );
}

/// Each client needs a socket on both sides of moat (both in this process).
fn raise_fd_limit(clients: u64) {
    let want = 2 * clients + 1024;
    let (soft, hard) = rlimit::Resource::NOFILE.get().unwrap();
    if soft < want {
        rlimit::Resource::NOFILE.set(want.min(hard), hard).unwrap();
    }
    let (soft, _) = rlimit::Resource::NOFILE.get().unwrap();
    assert!(
        soft >= want,
        "descriptor limit {soft} too low for {clients}"
    );
}

/// 2. Idle connections are cheap: 2,000 of them (each sent one PING, so no handshake deadline
///    closes them) cost moat less than 4 KiB each.
#[test]
fn idle_connections_cost_little() {
    isolated("idle_connections_cost_little", idle_connections);
}

fn idle_connections() {
    const IDLE: usize = 2000;
    raise_fd_limit(IDLE as u64);
    let stack = Stack::start();
    // Warm up: a few connections held, so one-time allocations are in the baseline.
    let mut warm: Vec<Client> = (0..10).map(|_| Client::connect(stack.addr())).collect();
    for c in &mut warm {
        assert_eq!(c.call(&[b"PING"]), b"+PONG\r\n");
    }
    let mut conns: Vec<TcpStream> = Vec::with_capacity(IDLE);
    let ping = command(&[b"PING"]);
    std::thread::sleep(Duration::from_millis(200));
    let baseline = rss();
    let started = Instant::now();
    for i in 0..IDLE {
        let mut s = TcpStream::connect_timeout(&stack.addr(), Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        s.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
        s.write_all(&ping).unwrap();
        let mut reply = [0u8; 7];
        s.read_exact(&mut reply)
            .unwrap_or_else(|e| panic!("connection {i}: no PONG: {e}"));
        assert_eq!(&reply, b"+PONG\r\n", "connection {i}");
        conns.push(s);
    }
    let opened = started.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let after = rss();
    let per = after.saturating_sub(baseline) / IDLE as u64;
    eprintln!(
        "{IDLE} idle connections (opened in {} ms): RSS {} -> {}, {per} bytes per connection",
        opened.as_millis(),
        mib(baseline),
        mib(after)
    );
    // Still connected and served.
    for (i, s) in conns.iter_mut().enumerate().step_by(97) {
        s.write_all(&ping).unwrap();
        let mut reply = [0u8; 7];
        s.read_exact(&mut reply)
            .unwrap_or_else(|e| panic!("connection {i} after the measurement: {e}"));
        assert_eq!(&reply, b"+PONG\r\n");
    }
    assert!(
        per < 4096,
        "an idle connection costs {per} bytes of RSS (limit 4 KiB)"
    );
    drop(conns);
}

/// 3a. One 60 MB SET (under the 64 MiB default limits) goes through intact.
#[test]
fn a_60mb_set_goes_through() {
    isolated("a_60mb_set_goes_through", sixty_mb_set);
}

/// Byte `i` of the large value: varied, so a shifted or truncated copy shows.
fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

fn sixty_mb_set() {
    const LEN: usize = 60_000_000;
    const CHUNK: usize = 1 << 20;
    let stack = Stack::start();
    let mut c = Client::connect(stack.addr());
    assert_eq!(c.call(&[b"PING"]), b"+PONG\r\n");
    let mut chunk = vec![0u8; CHUNK];
    let baseline = rss();
    let peak = Peak::start();
    let started = Instant::now();
    c.stream
        .write_all(format!("*3\r\n$3\r\nSET\r\n$5\r\nbig60\r\n${LEN}\r\n").as_bytes())
        .unwrap();
    let mut sent = 0;
    while sent < LEN {
        let n = CHUNK.min(LEN - sent);
        for (j, b) in chunk[..n].iter_mut().enumerate() {
            *b = pattern(sent + j);
        }
        c.stream.write_all(&chunk[..n]).unwrap();
        sent += n;
    }
    c.stream.write_all(b"\r\n").unwrap();
    let reply = c.reply();
    let took = started.elapsed();
    assert_eq!(reply, b"+OK\r\n", "60 MB SET: {}", shown(&reply));
    // Check it arrived intact without pulling 60 MB back: length and samples.
    assert_eq!(
        c.call(&[b"STRLEN", b"big60"]),
        format!(":{LEN}\r\n").into_bytes()
    );
    for at in [0, 1, 250, 251, CHUNK - 1, CHUNK, LEN / 2 + 17, LEN - 3] {
        let (from, to) = (at.to_string(), (at + 2).min(LEN - 1).to_string());
        let want: Vec<u8> = (at..=(at + 2).min(LEN - 1)).map(pattern).collect();
        assert_eq!(
            c.call(&[b"GETRANGE", b"big60", from.as_bytes(), to.as_bytes()]),
            bulk(&want),
            "bytes {at}.."
        );
    }
    let peak = peak.finish();
    eprintln!(
        "60 MB SET: +OK after {} ms; RSS baseline {}, peak {} (+{}), now {}",
        took.as_millis(),
        mib(baseline),
        mib(peak),
        mib(peak.saturating_sub(baseline)),
        mib(rss())
    );
}

/// 3b. A request declaring a 200 MB argument gets the limit error at once and the connection
///     is closed, without moat buffering what follows.
#[test]
fn a_200mb_declared_argument_is_refused_without_buffering() {
    isolated(
        "a_200mb_declared_argument_is_refused_without_buffering",
        declared_200mb,
    );
}

fn declared_200mb() {
    let stack = Stack::start();
    let mut c = Client::connect(stack.addr());
    assert_eq!(c.call(&[b"PING"]), b"+PONG\r\n");
    let baseline = rss();
    let peak = Peak::start();
    c.stream
        .write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$200000000\r\n")
        .unwrap();
    let reply = c.reply();
    assert_eq!(
        reply,
        format!(
            "-ERR moat: bulk argument too large (limit {} bytes)\r\n",
            64 << 20
        )
        .into_bytes(),
        "{}",
        shown(&reply)
    );
    // Keep sending the declared payload: moat must not take it in. Bounded: up to 200 MB,
    // each write at most 2 s.
    c.stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let chunk = vec![b'x'; 1 << 20];
    let mut written = 0u64;
    let mut stopped = String::from("all 200 MB accepted");
    while written < 200_000_000 {
        match c.stream.write(&chunk) {
            Ok(n) => written += n as u64,
            Err(e) => {
                stopped = e.to_string();
                break;
            }
        }
    }
    let closed = c.closed_within(Duration::from_secs(5));
    let peak = peak.finish();
    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "declared $200000000: limit error at once; then {} of payload accepted by the socket \
         before the write stopped ({stopped}); closed by moat: {closed}; RSS baseline {}, \
         peak {} (+{})",
        mib(written),
        mib(baseline),
        mib(peak),
        mib(growth)
    );
    assert!(
        closed,
        "moat kept the connection open after the limit error"
    );
    assert!(
        written < 64 * MIB,
        "{} of the oversized argument were taken in after the limit error",
        mib(written)
    );
    assert!(
        growth < 16 * MIB,
        "RSS grew by {} for a refused 200 MB argument",
        mib(growth)
    );
    // Moat still serves others.
    let mut other = Client::connect(stack.addr());
    assert_eq!(other.call(&[b"SET", b"after", b"1"]), b"+OK\r\n");
}

/// 5. Fifty slow readers from fifty addresses, each pipelining 1,000 GETs of a 64 KiB value
///    and never reading, with moat's default limits: each gets about its output window
///    (1 MiB) of replies, so moat's memory grows by tens of MiB, not the 3.2 GB they ask for,
///    and a client that reads is served meanwhile.
#[test]
fn fifty_slow_readers_cost_moat_little() {
    isolated("fifty_slow_readers_cost_moat_little", fifty_slow_readers);
}

fn fifty_slow_readers() {
    const READERS: u8 = 50;
    const VALUE: usize = 64 << 10;
    let stack = Stack::start();
    let value = "s".repeat(VALUE);
    assert_eq!(
        stack.redis.command(&["SET", "slowkey", &value]).unwrap(),
        b"+OK\r\n"
    );
    let expected = bulk(value.as_bytes());
    drop(value);
    let mut other = Client::connect(stack.addr());
    assert_eq!(other.call(&[b"GET", b"slowkey"]), expected);
    let pipeline = command(&[b"GET", b"slowkey"]).repeat(1000);
    std::thread::sleep(Duration::from_millis(200));
    let baseline = rss();
    let peak = Peak::start();
    let mut hogs = Vec::new();
    for i in 1..=READERS {
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .unwrap();
        socket
            .bind(&SocketAddr::from(([127, 41, 0, i], 0)).into())
            .unwrap();
        socket
            .connect_timeout(&stack.addr().into(), Duration::from_secs(10))
            .unwrap();
        let mut hog: TcpStream = socket.into();
        hog.set_write_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        hog.write_all(&pipeline).unwrap();
        hogs.push(hog);
    }
    // The reader is served while they hold their replies.
    for _ in 0..20 {
        assert_eq!(other.call(&[b"GET", b"slowkey"]), expected);
        std::thread::sleep(Duration::from_millis(50));
    }
    let growth = peak.now().saturating_sub(baseline);
    eprintln!(
        "{READERS} slow readers (1,000 GETs of 64 KiB each, {} demanded): moat's RSS grew {}",
        mib(u64::from(READERS) * 1000 * VALUE as u64),
        mib(growth)
    );
    assert!(
        growth < 128 * MIB,
        "fifty slow readers grew moat by {}",
        mib(growth)
    );
    drop(hogs);
}
