//! Moat in front of a Sentinel-managed primary (`backend.sentinels`): real Sentinels (the
//! installed redis-server with `--sentinel`), a primary and a replica, on loopback. Moat
//! follows a forced failover and a killed primary, keeps its clients connected across the
//! switch, and refuses what a stale or lying Sentinel names.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Raw, shown, start_moat};
use moat_proxy::RunningProxy;
use moat_testkit::{RedisServer, SentinelServer};

const MASTER: &str = "mymaster";
/// Bound on every wait for the Sentinels or moat (never a timing assertion).
const PATIENCE: Duration = Duration::from_secs(45);

/// Errors a client may meet for the few requests in flight at the switch.
const SWITCH_ERRORS: [&[u8]; 3] = [
    b"-ERR moat: the primary changed",
    b"-ERR moat: backend unavailable",
    b"-ERR moat: backend connection lost",
];

/// A primary, its replica and Sentinels watching them.
struct Deployment {
    primary: RedisServer,
    replica: RedisServer,
    sentinels: Vec<SentinelServer>,
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("gave up waiting for {what}");
}

fn role(server: &RedisServer) -> String {
    let reply = server.command(&["ROLE"]).unwrap_or_default();
    let text = String::from_utf8_lossy(&reply).to_string();
    text.split("\r\n").nth(2).unwrap_or_default().to_string()
}

/// Whether moat holds a connection to `server` (its connections are named `moat-...`).
fn moat_connected_to(server: &RedisServer) -> bool {
    let reply = server.command(&["CLIENT", "LIST"]).unwrap_or_default();
    String::from_utf8_lossy(&reply).contains("name=moat-")
}

impl Deployment {
    fn start(sentinels: usize) -> Deployment {
        let primary = RedisServer::start().expect("primary starts");
        let replica = RedisServer::builder()
            .config(format!("replicaof 127.0.0.1 {}", primary.port()))
            .start()
            .expect("replica starts");
        wait_until("the replica to sync", || {
            replica
                .info()
                .is_ok_and(|i| i.get("master_link_status").is_some_and(|s| s == "up"))
        });
        let quorum = u32::try_from(sentinels / 2 + 1).expect("few sentinels");
        let sentinels: Vec<SentinelServer> = (0..sentinels)
            .map(|_| {
                SentinelServer::builder()
                    .monitor(MASTER, primary.addr(), quorum)
                    .down_after(Duration::from_millis(500))
                    .failover_timeout(Duration::from_secs(2))
                    .start()
                    .expect("sentinel starts")
            })
            .collect();
        for s in &sentinels {
            wait_until("the Sentinel to find the replica", || {
                s.replicas_up(MASTER).is_ok_and(|n| n >= 1)
            });
        }
        Deployment {
            primary,
            replica,
            sentinels,
        }
    }

    fn sentinel_addrs(&self) -> Vec<SocketAddr> {
        self.sentinels.iter().map(SentinelServer::addr).collect()
    }

    fn moat(&self) -> RunningProxy {
        moat_with(self.sentinel_addrs(), MASTER)
    }
}

fn moat_with(sentinels: Vec<SocketAddr>, master: &str) -> RunningProxy {
    let master = master.to_owned();
    start_moat(SocketAddr::from(([127, 0, 0, 1], 6379)), move |c| {
        c.backend.sentinels = sentinels;
        c.backend.master_name = Some(master);
        c.backend.connect_timeout = Duration::from_secs(1);
        c.backend.sentinel_refresh = Duration::from_millis(500);
    })
}

fn client(moat: &RunningProxy) -> Raw {
    let raw = Raw::connect(moat.local_addr());
    raw.stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    raw
}

/// SETs `key` through `c` until one lands on `target` as a primary (its value read there), checking
/// every error on the way is one of the switch's clear errors; returns the errors met.
fn write_until_on(c: &mut Raw, key: &str, target: &RedisServer) -> Summary {
    let mut errors = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    for i in 0.. {
        assert!(
            Instant::now() < deadline,
            "no write reached {} (errors: {errors:?})",
            target.addr()
        );
        let value = format!("v{i}");
        let reply = c.cmd(&[b"SET", key.as_bytes(), value.as_bytes()]);
        if reply == b"+OK\r\n" {
            // On a primary (which replicates from no one), the value can only be moat's write.
            let there = target.command(&["GET", key]).unwrap_or_default();
            if role(target) == "master" && there.ends_with(format!("{value}\r\n").as_bytes()) {
                return Summary(errors);
            }
        } else {
            assert!(
                SWITCH_ERRORS.iter().any(|e| reply.starts_with(e)),
                "not a clear switch error: {}",
                shown(&reply)
            );
            errors.push(shown(&reply));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Summary(errors)
}

/// Errors met, shown as each distinct line with its count.
struct Summary(Vec<String>);

impl Summary {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut counts = std::collections::BTreeMap::<&str, usize>::new();
        for e in &self.0 {
            *counts.entry(e).or_default() += 1;
        }
        f.debug_map().entries(counts).finish()
    }
}

#[test]
fn follows_a_forced_failover_and_keeps_its_clients() {
    let d = Deployment::start(1);
    let moat = d.moat();
    let mut c = client(&moat);
    assert!(write_until_on(&mut c, "k", &d.primary).is_empty());
    assert!(moat_connected_to(&d.primary));

    let reply = d.sentinels[0].failover(MASTER).unwrap();
    assert_eq!(reply, b"+OK\r\n", "{}", shown(&reply));
    let errors = write_until_on(&mut c, "k", &d.replica);
    eprintln!("errors during the forced failover: {errors:?}");
    let snap = moat.control().snapshot();
    assert!(snap.counter("sentinel_switches") >= 1);
    assert_eq!(snap.sentinel_primary, Some(d.replica.addr().to_string()));

    // Sentinel turns the old primary into a replica of the new one: moat keeps writing to
    // the new primary and holds no connection to the old one.
    wait_until("the old primary to become a replica", || {
        role(&d.primary) == "slave"
    });
    wait_until("moat to leave the old primary", || {
        !moat_connected_to(&d.primary)
    });
    for i in 0..20 {
        let v = format!("after{i}");
        assert_eq!(c.cmd(&[b"SET", b"k2", v.as_bytes()]), b"+OK\r\n");
    }
    assert_eq!(
        d.replica.command(&["GET", "k2"]).unwrap(),
        b"$7\r\nafter19\r\n"
    );
    assert!(!moat_connected_to(&d.primary));
    // The same client connection served throughout.
    assert_eq!(c.cmd(&[b"GET", b"k2"]), b"$7\r\nafter19\r\n");
}

#[test]
fn follows_a_killed_primary_and_ignores_it_once_back() {
    let mut d = Deployment::start(3);
    let moat = d.moat();
    let mut c = client(&moat);
    assert!(write_until_on(&mut c, "k", &d.primary).is_empty());

    d.primary.kill9();
    let errors = write_until_on(&mut c, "k", &d.replica);
    eprintln!("errors while the primary was down: {errors:?}");
    assert!(moat.control().snapshot().counter("sentinel_switches") >= 1);

    // Back, as the primary it was until the Sentinels turn it into a replica (when they
    // do is Sentinel's timing, seconds to a minute on a loaded machine, so the test does
    // not wait for it): moat never sends it a write meanwhile.
    d.primary.restart().expect("old primary restarts");
    for i in 0..20 {
        let v = format!("back{i}");
        assert_eq!(c.cmd(&[b"SET", b"k3", v.as_bytes()]), b"+OK\r\n");
    }
    assert_eq!(
        d.replica.command(&["GET", "k3"]).unwrap(),
        b"$6\r\nback19\r\n"
    );
    assert!(!moat_connected_to(&d.primary));
}

#[test]
fn a_sentinel_that_does_not_know_the_name_gets_a_clear_error() {
    let d = Deployment::start(1);
    let moat = moat_with(d.sentinel_addrs(), "nosuchmaster");
    let mut c = client(&moat);
    let reply = c.cmd(&[b"SET", b"k", b"v"]);
    assert!(
        reply.starts_with(b"-ERR moat: backend unavailable (no primary known"),
        "{}",
        shown(&reply)
    );
    assert!(moat.control().snapshot().counter("sentinel_errors") >= 1);
    assert!(!moat_connected_to(&d.primary));
    // Moat itself still answers.
    assert_eq!(c.cmd(&[b"PING"]), b"+PONG\r\n");
}

#[test]
fn unreachable_sentinels_at_start_do_not_stop_moat() {
    // Ports where nothing listens.
    let dead: Vec<SocketAddr> = (0..2)
        .map(|_| SocketAddr::from(([127, 0, 0, 1], moat_testkit::free_port())))
        .collect();
    let moat = moat_with(dead.clone(), MASTER);
    let mut c = client(&moat);
    let reply = c.cmd(&[b"GET", b"k"]);
    assert!(
        reply.starts_with(b"-ERR moat: backend unavailable (no primary known"),
        "{}",
        shown(&reply)
    );
    wait_until("the errors to be counted", || {
        moat.control().snapshot().counter("sentinel_errors") >= 2
    });
    drop(moat);

    // One Sentinel down among good ones: the others are enough.
    let d = Deployment::start(1);
    let mut sentinels = dead;
    sentinels.extend(d.sentinel_addrs());
    let moat = moat_with(sentinels, MASTER);
    let mut c = client(&moat);
    assert!(write_until_on(&mut c, "k", &d.primary).is_empty());
}

#[test]
fn a_sentinel_naming_a_replica_is_refused() {
    let d = Deployment::start(1);
    // A Sentinel that calls the replica the primary (stale or lying).
    let liar = SentinelServer::builder()
        .monitor(MASTER, d.replica.addr(), 1)
        .start()
        .expect("sentinel starts");
    let moat = moat_with(vec![liar.addr()], MASTER);
    let mut c = client(&moat);
    for _ in 0..3 {
        let reply = c.cmd(&[b"SET", b"k", b"v"]);
        assert!(
            reply.starts_with(b"-ERR moat: backend unavailable (no primary known"),
            "{}",
            shown(&reply)
        );
    }
    assert!(moat.control().snapshot().counter("sentinel_errors") >= 1);
    assert!(!moat_connected_to(&d.replica));
    drop(moat);

    // With an honest Sentinel beside it, moat uses the primary only.
    let moat = moat_with(vec![liar.addr(), d.sentinels[0].addr()], MASTER);
    let mut c = client(&moat);
    assert!(write_until_on(&mut c, "k", &d.primary).is_empty());
    assert!(!moat_connected_to(&d.replica));
}
