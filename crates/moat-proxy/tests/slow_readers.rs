//! Slow readers cost only themselves: clients that pipeline requests for large values and
//! never read them get a bounded window of replies forwarded, are disconnected after the
//! soft output limit's time or when unread output fills the budget (heaviest non-readers
//! first), and a client that reads, on the same shared backend connection, is served
//! throughout.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::conn::Conn;
use common::{Stack, bulk, command};
use moat_testkit::RedisServer;
use socket2::{Domain, Protocol, Socket, Type};

/// Size of the value the slow readers ask for.
const VALUE: usize = 64 << 10;

/// A client from `src` whose receive buffer is small, so the kernel holds little of what
/// moat sends it and moat's own accounting decides.
fn slow_reader(src: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind(&SocketAddr::from((src, 0)).into()).unwrap();
    socket
        .connect_timeout(&to.into(), Duration::from_secs(10))
        .unwrap();
    let stream: TcpStream = socket.into();
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Redis with `big` holding a 64 KiB value and `small` a short one; moat with one shared
/// connection (so every client's replies come through the same one) and `tweak`.
fn stack(tweak: impl FnOnce(&mut moat_proxy::Config)) -> Stack {
    let stack = Stack::with(RedisServer::builder(), |c| {
        c.backend.shared_connections = 1;
        tweak(c);
    });
    let value = "v".repeat(VALUE);
    assert_eq!(
        stack.redis.command(&["SET", "big", &value]).unwrap(),
        b"+OK\r\n"
    );
    assert_eq!(
        stack.redis.command(&["SET", "small", "hello"]).unwrap(),
        b"+OK\r\n"
    );
    stack
}

/// Times Redis has run GET.
fn redis_gets(stack: &Stack) -> u64 {
    let text = stack.redis.command(&["INFO", "commandstats"]).unwrap();
    let text = String::from_utf8_lossy(&text);
    text.lines()
        .find_map(|l| l.strip_prefix("cmdstat_get:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// moat's count of clients closed for `reason`.
fn closed(stack: &Stack, reason: &str) -> u64 {
    let snapshot = stack.moat.control().snapshot();
    snapshot
        .closed
        .iter()
        .find(|(r, _)| *r == reason)
        .map_or(0, |(_, n)| *n)
}

/// Polls `cond` every 50 ms for at most `limit`.
fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

/// 1,000 GETs of a 64 KiB value offered by a client that never reads: moat forwards only
/// about its output window's worth (1 MiB: 16 replies, plus what the kernel buffers take),
/// not the 1,000 that `max_inflight` alone would let through, and Redis runs only those.
#[test]
fn a_client_that_never_reads_gets_only_its_window_forwarded() {
    let stack = stack(|c| c.limits.output_soft_time = Duration::from_secs(60));
    let before = redis_gets(&stack);
    let mut hog = slow_reader([127, 31, 0, 1], stack.addr());
    hog.write_all(&command(&[b"GET", b"big"]).repeat(1000))
        .unwrap();
    // Whatever moat forwards, Redis answers at once; give it time to do its worst.
    std::thread::sleep(Duration::from_secs(1));
    let forwarded = redis_gets(&stack) - before;
    assert!(
        (16..=160).contains(&forwarded),
        "Redis ran {forwarded} of the 1,000 GETs"
    );
    // And someone else is served meanwhile, on the same single shared connection.
    let mut other = Conn::from([127, 31, 0, 2], stack.addr());
    for _ in 0..50 {
        assert_eq!(other.call(&["GET", "small"]), bulk(b"hello"));
    }
    drop(hog);
}

/// A client holding more unread replies than the soft limit for longer than its time is
/// disconnected and struck; a client reading on the same shared connection is served all
/// along and never disconnected.
#[test]
fn a_slow_reader_is_disconnected_and_the_reader_beside_it_is_served() {
    let stack = stack(|c| {
        c.limits.output_soft_time = Duration::from_secs(1);
        c.guard.strikes_to_ban = 1;
    });
    let mut hog = slow_reader([127, 32, 0, 1], stack.addr());
    hog.write_all(&command(&[b"GET", b"big"]).repeat(200))
        .unwrap();
    let mut reader = Conn::from([127, 32, 0, 2], stack.addr());
    let big = bulk(&vec![b'v'; VALUE]);
    // The reader asks for the same large value, reading every reply, until the slow reader
    // has been disconnected (bounded).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut served = 0;
    while closed(&stack, "output_soft_limit") == 0 && Instant::now() < deadline {
        assert_eq!(reader.call(&["GET", "big"]), big);
        assert_eq!(reader.call(&["GET", "small"]), bulk(b"hello"));
        served += 1;
    }
    assert_eq!(
        closed(&stack, "output_soft_limit"),
        1,
        "the slow reader was closed"
    );
    assert!(served > 0);
    // Its connection is gone (reading drains what the kernel held, then ends)...
    let mut hog = Conn {
        stream: hog,
        buf: Vec::new(),
    };
    assert!(
        hog.read_until_closed(Duration::from_secs(10)).is_some(),
        "the slow reader's connection was closed"
    );
    // ...its address struck (one strike bans here)...
    let hog_ip: std::net::IpAddr = [127, 32, 0, 1].into();
    assert!(
        stack
            .moat
            .guard()
            .bans(Instant::now())
            .iter()
            .any(|(net, _)| net.contains(&hog_ip)),
        "the slow reader's address is banned"
    );
    // ...and the reader is still connected and served.
    assert_eq!(reader.call(&["GET", "small"]), bulk(b"hello"));
}

/// When unread replies fill the output budget, the heaviest clients that do not read are
/// disconnected; one that keeps reading large replies is never chosen.
#[test]
fn a_full_output_budget_sheds_the_heaviest_non_reader_not_the_reader() {
    let stack = stack(|c| {
        c.limits.output_soft_time = Duration::from_secs(600);
        c.limits.output_budget = 1 << 20;
    });
    let mut reader = Conn::from([127, 33, 0, 100], stack.addr());
    let big = bulk(&vec![b'v'; VALUE]);
    let mut hogs = Vec::new();
    for i in 1..=4u8 {
        let mut hog = slow_reader([127, 33, 0, i], stack.addr());
        hog.write_all(&command(&[b"GET", b"big"]).repeat(100))
            .unwrap();
        hogs.push(hog);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while closed(&stack, "output_budget") == 0 && Instant::now() < deadline {
        assert_eq!(reader.call(&["GET", "big"]), big);
    }
    assert!(
        closed(&stack, "output_budget") >= 1,
        "a slow reader was shed"
    );
    // The reader goes on reading large values while the rest of the hogs hold theirs.
    for _ in 0..20 {
        assert_eq!(reader.call(&["GET", "big"]), big);
    }
    assert!(eventually(Duration::from_secs(5), || {
        closed(&stack, "output_budget") >= 1
    }));
    drop(hogs);
}
