//! Bans shared across moats through one real redis-server (`[ban_share]`): a ban on one
//! moat makes the other refuse that source, both ways; a moat started later learns the
//! bans in force from the keys; forged messages PUBLISHed by a plain client ban nobody
//! and are counted.
//!
//! Client addresses are played by binding sockets to 127.x.y.z (untrusted by default).
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::conn::Conn;
use moat_proxy::{Config, RunningProxy};
use moat_testkit::RedisServer;

const SECRET: &str = "the shared ban secret, test only";

/// Longest wait for a ban to reach another moat (generous: a loaded 2-core machine).
const WAIT: Duration = Duration::from_secs(30);

fn share(config: &mut Config, instance: &str) {
    config.ban_share.enabled = true;
    config.ban_share.secret = Some(SECRET.into());
    config.ban_share.instance = Some(instance.into());
    // The probes below must not be refused (or struck) for their own rate.
    config.guard.ip_rate = 1000.0;
    config.guard.ip_burst = 1000;
    config.guard.subnet_rate = 1000.0;
    config.guard.subnet_burst = 1000;
}

fn moat(redis: &RedisServer, instance: &str) -> RunningProxy {
    common::start_moat(redis.addr(), |c| share(c, instance))
}

/// Whether moat at `to` refuses `src` as banned now (a PING from it gets the ban line).
fn refuses(src: [u8; 4], to: SocketAddr) -> bool {
    let mut conn = Conn::from(src, to);
    conn.send(b"PING\r\n");
    let reply = conn.reply_within(Duration::from_secs(10)).unwrap();
    if reply.starts_with(b"-ERR moat: banned") {
        return true;
    }
    assert_eq!(reply, b"+PONG\r\n", "unexpected reply");
    false
}

/// Polls until moat at `to` refuses `src`; the time it took.
fn until_refused(src: [u8; 4], to: SocketAddr) -> Duration {
    let start = Instant::now();
    for _ in 0..3000 {
        if refuses(src, to) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < WAIT,
            "{src:?} still admitted after {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{src:?} still admitted after 3000 probes");
}

fn ban(moat: &RunningProxy, net: &str) {
    moat.guard()
        .ban_admin(
            net.parse().unwrap(),
            Duration::from_secs(300),
            "test",
            Instant::now(),
        )
        .unwrap();
}

/// Waits until both moats are subscribed (a ban published before would only reach the
/// other through the keys it reads at start).
fn until_subscribed(redis: &RedisServer, n: usize) {
    let client = redis::Client::open(format!("redis://{}", redis.addr())).unwrap();
    let mut con = client.get_connection().unwrap();
    let start = Instant::now();
    loop {
        let subs: Vec<(String, usize)> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg("moat:bans")
            .query(&mut con)
            .unwrap();
        if subs.first().is_some_and(|(_, k)| *k >= n) {
            return;
        }
        assert!(start.elapsed() < WAIT, "moats not subscribed: {subs:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn a_ban_on_either_moat_reaches_the_other() {
    let redis = RedisServer::start().unwrap();
    let a = moat(&redis, "moat-a");
    let b = moat(&redis, "moat-b");
    until_subscribed(&redis, 2);
    let mut a_to_b = Vec::new();
    let mut b_to_a = Vec::new();
    for i in 0..5u8 {
        let (src_ab, src_ba) = ([127, 0, 10 + i, 7], [127, 0, 20 + i, 7]);
        assert!(!refuses(src_ab, b.local_addr()));
        ban(&a, &format!("127.0.{}.0/24", 10 + i));
        a_to_b.push(until_refused(src_ab, b.local_addr()));
        assert!(!refuses(src_ba, a.local_addr()));
        ban(&b, &format!("127.0.{}.0/24", 20 + i));
        b_to_a.push(until_refused(src_ba, a.local_addr()));
    }
    eprintln!(
        "ban to refusal: A->B median {:?} {a_to_b:?}; B->A median {:?} {b_to_a:?}",
        median(a_to_b.clone()),
        median(b_to_a.clone())
    );
    // B's ban came from A, marked so, and was not published back.
    let on_b = b.guard().bans(Instant::now());
    let from_a = on_b
        .iter()
        .find(|(net, _)| net.to_string() == "127.0.10.0/24")
        .unwrap();
    assert!(
        from_a
            .1
            .reason
            .note()
            .unwrap()
            .starts_with("ban-share from moat-a"),
        "{from_a:?}"
    );
    let (sa, sb) = (a.control().snapshot(), b.control().snapshot());
    assert_eq!(sa.counter("ban_share_published"), 5);
    assert_eq!(sb.counter("ban_share_published"), 5);
    assert_eq!(sa.counter("ban_share_applied"), 5);
    assert_eq!(sb.counter("ban_share_applied"), 5);
}

#[test]
fn a_moat_started_later_learns_the_bans_in_force() {
    let redis = RedisServer::start().unwrap();
    let a = moat(&redis, "moat-a");
    until_subscribed(&redis, 1);
    ban(&a, "127.0.30.0/24");
    // Published (and so stored in its key) before C starts.
    let start = Instant::now();
    while a.control().snapshot().counter("ban_share_published") < 1 {
        assert!(start.elapsed() < WAIT, "A never published");
        std::thread::sleep(Duration::from_millis(10));
    }
    let c = moat(&redis, "moat-c");
    until_refused([127, 0, 30, 9], c.local_addr());
    assert_eq!(c.control().snapshot().counter("ban_share_applied"), 1);
    drop(a);
}

#[test]
fn forged_messages_ban_nobody_and_are_counted() {
    let redis = RedisServer::start().unwrap();
    let b = moat(&redis, "moat-b");
    until_subscribed(&redis, 1);
    let client = redis::Client::open(format!("redis://{}", redis.addr())).unwrap();
    let mut con = client.get_connection().unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let body = format!(
        "moat-ban1 mallory {now_ms} 127.0.40.0/24 {} admin",
        now_ms + 600_000
    );
    let forged = [
        body.clone(),                                // no signature
        format!("{body} {}", "0".repeat(64)),        // a wrong one
        format!("{body} {}", "ab".repeat(16)),       // a short one
        "x".repeat(10_000),                          // absurdly long
        format!("moat-ban1 mallory {now_ms} 127.0"), // truncated
    ];
    for msg in &forged {
        let _: i64 = redis::cmd("PUBLISH")
            .arg("moat:bans")
            .arg(msg)
            .query(&mut con)
            .unwrap();
    }
    let rejected = |reason: &str| {
        b.control()
            .snapshot()
            .ban_share_rejected
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    };
    let start = Instant::now();
    while rejected("signature") < 4 || rejected("oversized") < 1 {
        assert!(
            start.elapsed() < WAIT,
            "{:?}",
            b.control().snapshot().ban_share_rejected
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!refuses([127, 0, 40, 1], b.local_addr()));
    assert!(b.guard().bans(Instant::now()).is_empty());
    assert_eq!(b.control().snapshot().counter("ban_share_applied"), 0);
}

/// A message signed with the shared secret, as a peer moat would send it.
fn signed(instance: &str, sent_ms: u128, net: &str, until_ms: u128) -> String {
    use hmac::{Hmac, Mac};
    let body = format!("moat-ban1 {instance} {sent_ms} {net} {until_ms} strikes");
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    let sig: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{body} {sig}")
}

#[test]
fn genuine_messages_are_bounded_replays_refused_and_own_ignored() {
    let redis = RedisServer::start().unwrap();
    let b = common::start_moat(redis.addr(), |c| {
        share(c, "moat-b");
        c.ban_share.max_per_sec = 5;
        c.ban_share.max_held = 8;
    });
    until_subscribed(&redis, 1);
    let client = redis::Client::open(format!("redis://{}", redis.addr())).unwrap();
    let mut con = client.get_connection().unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let publish = |con: &mut redis::Connection, msg: &str| {
        let _: i64 = redis::cmd("PUBLISH")
            .arg("moat:bans")
            .arg(msg)
            .query(con)
            .unwrap();
    };
    // A replay: genuine, but sent an hour ago.
    publish(
        &mut con,
        &signed(
            "moat-a",
            now_ms - 3_600_000,
            "127.0.50.0/24",
            now_ms + 600_000,
        ),
    );
    // Its own message: ignored.
    publish(
        &mut con,
        &signed("moat-b", now_ms, "127.0.51.0/24", now_ms + 600_000),
    );
    // A flood of genuine bans, far over max_per_sec in one second.
    for i in 0..40 {
        publish(
            &mut con,
            &signed(
                "moat-a",
                now_ms,
                &format!("10.{i}.0.0/16"),
                now_ms + 600_000,
            ),
        );
    }
    let rejected = |reason: &str| {
        b.control()
            .snapshot()
            .ban_share_rejected
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    };
    let start = Instant::now();
    loop {
        let s = b.control().snapshot();
        let seen = s.counter("ban_share_applied")
            + rejected("rate_limited")
            + rejected("full")
            + rejected("stale");
        if seen >= 41 {
            break;
        }
        assert!(start.elapsed() < WAIT, "{:?}", s.ban_share_rejected);
        std::thread::sleep(Duration::from_millis(10));
    }
    let applied = b.control().snapshot().counter("ban_share_applied");
    assert!(
        (5..=8).contains(&applied),
        "applied {applied}: the per-second and held caps bound it"
    );
    assert_eq!(rejected("stale"), 1);
    assert!(b.guard().bans(Instant::now()).len() as u64 == applied);
    assert!(!refuses([127, 0, 50, 1], b.local_addr()));
    assert!(!refuses([127, 0, 51, 1], b.local_addr()));
}
