//! The kernel socket filter end to end, with a real redis-server behind moat: a banned or
//! denied source's connect does not complete (its SYN is dropped before any handshake),
//! other sources connect and are served, and lifting the ban lets the source in again.
//!
//! Sources are played by binding to 127.x.y.z. The kernel retries a dropped SYN after 1 s,
//! so a connect that has not completed after [`DROPPED_WAIT`] was dropped. Every wait is
//! bounded; nothing asserts how fast the machine is.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::Stack;
use moat_guard::IpNet;
use moat_testkit::RedisServer;
use socket2::{Domain, Socket, Type};

/// How long a connect may take before it counts as dropped (under the kernel's 1 s SYN
/// retransmission, so a dropped SYN is never answered within it).
const DROPPED_WAIT: Duration = Duration::from_millis(900);
/// Longest wait for the filter thread to apply a change (it polls every 250 ms).
const SETTLE: Duration = Duration::from_secs(15);

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// Connects from `src` to `to`: `None` when the connect did not complete in time.
fn connect_from(src: IpAddr, to: SocketAddr, wait: Duration) -> Option<TcpStream> {
    let s = Socket::new(Domain::for_address(to), Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::new(src, 0).into()).unwrap();
    match s.connect_timeout(&to.into(), wait) {
        Ok(()) => Some(s.into()),
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => None,
        Err(e) => panic!("connect from {src} to {to}: {e}"),
    }
}

/// Connects from `src` (which must not be filtered) and PINGs through moat.
fn ping_from(src: IpAddr, to: SocketAddr) -> String {
    let mut s = connect_from(src, to, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("{src} could not connect"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"PING\r\n").unwrap();
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn filter_rules(stack: &Stack) -> u64 {
    stack.moat.control().snapshot().gauge("kernel_filter_rules")
}

/// Waits until the filter holds `n` networks and was rebuilt since `rebuilds_before`.
fn wait_for_rules(stack: &Stack, n: u64, rebuilds_before: u64) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let snap = stack.moat.control().snapshot();
        if snap.gauge("kernel_filter_rules") == n
            && snap.counter("kernel_filter_rebuilds") > rebuilds_before
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the filter did not reach {n} networks: {} now",
            filter_rules(stack)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the filter holds no network (removed).
fn wait_for_empty(stack: &Stack) {
    let deadline = Instant::now() + SETTLE;
    while filter_rules(stack) != 0 {
        assert!(Instant::now() < deadline, "the filter was not removed");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn rebuilds(stack: &Stack) -> u64 {
    stack
        .moat
        .control()
        .snapshot()
        .counter("kernel_filter_rebuilds")
}

fn with_filter(tweak: impl FnOnce(&mut moat_proxy::Config)) -> Stack {
    Stack::with(RedisServer::builder(), |c| {
        c.kernel.socket_filter = true;
        tweak(c);
    })
}

#[test]
fn a_banned_source_never_completes_a_handshake_until_unbanned() {
    let stack = with_filter(|_| {});
    let to = stack.addr();
    let banned: IpAddr = "127.77.0.9".parse().unwrap();
    let neighbour: IpAddr = "127.77.0.10".parse().unwrap();
    assert_eq!(
        ping_from(banned, to),
        "+PONG\r\n",
        "admitted before the ban"
    );

    let before = rebuilds(&stack);
    assert!(stack.moat.guard().ban(
        net("127.77.0.9/32"),
        Duration::from_secs(600),
        Instant::now()
    ));
    wait_for_rules(&stack, 1, before);
    assert!(
        connect_from(banned, to, DROPPED_WAIT).is_none(),
        "the banned source's connect completed"
    );
    assert_eq!(ping_from(neighbour, to), "+PONG\r\n");
    assert_eq!(ping_from("127.0.0.1".parse().unwrap(), to), "+PONG\r\n");

    assert!(stack.moat.guard().unban(net("127.77.0.9/32")));
    wait_for_empty(&stack);
    assert_eq!(
        ping_from(banned, to),
        "+PONG\r\n",
        "admitted after the unban"
    );
}

#[test]
fn a_denied_network_is_dropped_and_a_reload_lifts_it() {
    let stack = with_filter(|c| c.guard.deny = vec![net("127.78.0.0/16")]);
    let to = stack.addr();
    wait_for_rules(&stack, 1, 0);
    assert!(connect_from("127.78.3.4".parse().unwrap(), to, DROPPED_WAIT).is_none());
    assert_eq!(ping_from("127.79.0.1".parse().unwrap(), to), "+PONG\r\n");

    // Turning the filter off by reload leaves the refusal to moat: the line comes back.
    let mut off = (*stack.moat.control().config()).clone();
    off.kernel.socket_filter = false;
    stack.moat.control().reload(off.clone()).unwrap();
    wait_for_empty(&stack);
    let refusal = ping_from("127.78.3.4".parse().unwrap(), to);
    assert!(refusal.contains("not allowed"), "{refusal}");

    // On again, then the deny list emptied by reload: the network connects and is served.
    let mut on = off;
    on.kernel.socket_filter = true;
    let before = rebuilds(&stack);
    stack.moat.control().reload(on.clone()).unwrap();
    wait_for_rules(&stack, 1, before);
    assert!(connect_from("127.78.3.4".parse().unwrap(), to, DROPPED_WAIT).is_none());
    on.guard.deny.clear();
    stack.moat.control().reload(on).unwrap();
    wait_for_empty(&stack);
    assert_eq!(ping_from("127.78.3.4".parse().unwrap(), to), "+PONG\r\n");
}

#[test]
fn a_trusted_network_is_never_dropped_even_inside_a_denied_one() {
    let stack = with_filter(|c| {
        c.guard.deny = vec![net("127.0.0.0/8")];
        c.guard.trusted.push(net("127.80.0.0/16"));
    });
    let to = stack.addr();
    wait_for_rules(&stack, 1, 0);
    assert!(connect_from("127.81.0.1".parse().unwrap(), to, DROPPED_WAIT).is_none());
    assert_eq!(ping_from("127.0.0.1".parse().unwrap(), to), "+PONG\r\n");
    assert_eq!(ping_from("127.80.2.2".parse().unwrap(), to), "+PONG\r\n");
}

#[test]
fn ipv6_clients_are_served_while_ipv4_rules_are_attached() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipped: this machine has no ::1");
        return;
    }
    let stack =
        with_filter(|c| c.proxy.listen = SocketAddr::from(([0u16, 0, 0, 0, 0, 0, 0, 1], 0)));
    let to = stack.addr();
    let before = rebuilds(&stack);
    assert!(stack.moat.guard().ban(
        net("127.77.0.9/32"),
        Duration::from_secs(600),
        Instant::now()
    ));
    wait_for_rules(&stack, 1, before);
    for _ in 0..3 {
        assert_eq!(ping_from("::1".parse().unwrap(), to), "+PONG\r\n");
    }
    // Banning ::1 itself is refused: the filter can never lock local tools out.
    assert!(
        !stack
            .moat
            .guard()
            .ban(net("::1/128"), Duration::from_secs(60), Instant::now())
    );
}

#[test]
fn banned_by_strikes_then_dropped_by_the_kernel() {
    // Three connections that send nothing are three strikes: the source is banned, sees
    // nothing more from moat, and its next connect is dropped in the kernel.
    let stack = with_filter(|c| {
        c.guard.strikes_to_ban = 3;
        c.guard.handshake_timeout = Duration::from_millis(200);
    });
    let to = stack.addr();
    let src: IpAddr = "127.82.0.7".parse().unwrap();
    let before = rebuilds(&stack);
    for _ in 0..3 {
        let mut s = connect_from(src, to, Duration::from_secs(10)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 256];
        // moat closes the silent connection at its handshake deadline.
        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
    }
    wait_for_rules(&stack, 1, before);
    assert!(connect_from(src, to, DROPPED_WAIT).is_none());
}
