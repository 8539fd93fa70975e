//! Bans shared through one real CrowdSec LAPI (`[crowdsec]`): a decision added with cscli
//! makes moat refuse that source and its deletion lifts it; a ban moat issues shows up in
//! the LAPI; two moats share bans both ways through it without echo; a wrong bouncer key
//! is counted and moat keeps serving; a LAPI down then up gets the bans made meanwhile.
//!
//! Skipped, with a message, only when the `crowdsec` binaries are absent (CI installs them
//! with `scripts/install-crowdsec.sh`). Client addresses are played by binding sockets to
//! 127.x.y.z (untrusted by default).
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::conn::Conn;
use moat_proxy::{Config, RunningProxy};
use moat_testkit::RedisServer;
use moat_testkit::crowdsec::{CrowdSecLapi, crowdsec_installed};

/// Longest wait for a ban to cross (generous: a loaded 2-core machine).
const WAIT: Duration = Duration::from_secs(30);

/// The pull period of the moats under test.
const POLL: Duration = Duration::from_millis(200);

const PASSWORD: &str = "moat-machine-password-0123456789";

fn lapi() -> Option<CrowdSecLapi> {
    if !crowdsec_installed() {
        eprintln!(
            "SKIPPED: crowdsec/cscli not installed (bash scripts/install-crowdsec.sh); \
             the [crowdsec] tests need a real LAPI"
        );
        return None;
    }
    Some(CrowdSecLapi::start().unwrap())
}

/// Registers machine and bouncer `name` and starts a moat pushing and pulling with them.
fn moat(redis: &RedisServer, lapi: &CrowdSecLapi, name: &str) -> RunningProxy {
    let key = format!("bouncer-key-{name}-0123456789");
    lapi.add_machine(name, PASSWORD).unwrap();
    lapi.add_bouncer(name, &key).unwrap();
    moat_with(redis, lapi, name, &key)
}

fn moat_with(redis: &RedisServer, lapi: &CrowdSecLapi, name: &str, key: &str) -> RunningProxy {
    moat_tweaked(redis, lapi, name, key, |_| {})
}

fn moat_tweaked(
    redis: &RedisServer,
    lapi: &CrowdSecLapi,
    name: &str,
    key: &str,
    tweak: impl FnOnce(&mut Config),
) -> RunningProxy {
    let (url, name, key) = (lapi.url(), name.to_owned(), key.to_owned());
    common::start_moat(redis.addr(), move |c: &mut Config| {
        c.crowdsec.enabled = true;
        c.crowdsec.lapi_url = url;
        c.crowdsec.machine_id = Some(name);
        c.crowdsec.password = Some(PASSWORD.into());
        c.crowdsec.bouncer_key = Some(key);
        c.crowdsec.poll_interval = POLL;
        // The incremental stream may miss a decision made during a pull; the full list
        // read again finds it.
        c.crowdsec.resync_interval = Duration::from_secs(3);
        c.crowdsec.timeout = Duration::from_secs(5);
        // The probes below must not be refused (or struck) for their own rate.
        c.guard.ip_rate = 1000.0;
        c.guard.ip_burst = 1000;
        c.guard.subnet_rate = 1000.0;
        c.guard.subnet_burst = 1000;
        tweak(c);
    })
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

/// Polls `cond` every 10 ms until it holds; the time it took. Fails after [`WAIT`].
fn until(what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    for _ in 0..100_000 {
        if cond() {
            return start.elapsed();
        }
        assert!(start.elapsed() < WAIT, "{what}: not within {WAIT:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{what}: not within the bounded number of polls");
}

fn in_lapi(lapi: &CrowdSecLapi, ip: &str) -> bool {
    lapi.cscli(&["decisions", "list", "-o", "json"])
        .unwrap()
        .contains(&format!("\"{ip}\""))
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

fn counter(moat: &RunningProxy, name: &str) -> u64 {
    moat.control().snapshot().counter(name)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn a_cscli_decision_is_applied_and_its_deletion_lifts_it() {
    let Some(lapi) = lapi() else { return };
    let redis = RedisServer::start().unwrap();
    let m = moat(&redis, &lapi, "moat-a");
    let mut samples = Vec::new();
    for i in 1..=5u8 {
        let ip = format!("127.0.3.{i}");
        assert!(!refuses([127, 0, 3, i], m.local_addr()));
        let start = Instant::now();
        lapi.cscli(&["decisions", "add", "--ip", &ip, "--duration", "5m"])
            .unwrap();
        until("cscli's ban applied", || {
            refuses([127, 0, 3, i], m.local_addr())
        });
        samples.push(start.elapsed());
    }
    lapi.cscli(&["decisions", "delete", "--ip", "127.0.3.1"])
        .unwrap();
    until("the deletion lifts the ban", || {
        !refuses([127, 0, 3, 1], m.local_addr())
    });
    // A range decision bans the subnet.
    lapi.cscli(&[
        "decisions",
        "add",
        "--range",
        "127.0.9.0/24",
        "--duration",
        "5m",
    ])
    .unwrap();
    until("a range ban applied", || {
        refuses([127, 0, 9, 77], m.local_addr())
    });
    assert_eq!(counter(&m, "crowdsec_applied"), 6);
    assert_eq!(counter(&m, "crowdsec_lifted"), 1);
    // Decisions from CrowdSec are never pushed back.
    assert_eq!(counter(&m, "crowdsec_pushed"), 0);
    eprintln!(
        "MEASURE cscli decisions add -> refused by moat (poll {POLL:?}): median {:?} of {samples:?}",
        median(samples.clone())
    );
}

#[test]
fn a_moat_ban_shows_up_in_crowdsec() {
    let Some(lapi) = lapi() else { return };
    let redis = RedisServer::start().unwrap();
    let m = moat(&redis, &lapi, "moat-a");
    let mut samples = Vec::new();
    for i in 1..=5u8 {
        let ip = format!("127.0.5.{i}");
        let start = Instant::now();
        ban(&m, &format!("{ip}/32"));
        until("moat's ban in the LAPI", || in_lapi(&lapi, &ip));
        samples.push(start.elapsed());
    }
    ban(&m, "127.0.8.0/24");
    until("moat's range ban in the LAPI", || {
        in_lapi(&lapi, "127.0.8.0/24")
    });
    assert_eq!(counter(&m, "crowdsec_pushed"), 6);
    // Its own bans come back in the stream and are not applied (counted) again.
    std::thread::sleep(POLL * 5);
    assert_eq!(counter(&m, "crowdsec_applied"), 0);
    eprintln!(
        "MEASURE moat ban -> in cscli decisions list (includes cscli's own run): median {:?} \
         of {samples:?}",
        median(samples.clone())
    );
}

#[test]
fn two_moats_share_bans_both_ways_through_crowdsec() {
    let Some(lapi) = lapi() else { return };
    let redis = RedisServer::start().unwrap();
    let a = moat(&redis, &lapi, "moat-a");
    let b = moat(&redis, &lapi, "moat-b");
    ban(&a, "127.0.6.1/32");
    until("a's ban refused by b", || {
        refuses([127, 0, 6, 1], b.local_addr())
    });
    ban(&b, "127.0.7.1/32");
    until("b's ban refused by a", || {
        refuses([127, 0, 7, 1], a.local_addr())
    });
    // No echo: each pushed its own ban once and applied the other's once.
    std::thread::sleep(POLL * 5);
    for m in [&a, &b] {
        assert_eq!(counter(m, "crowdsec_pushed"), 1);
        assert_eq!(counter(m, "crowdsec_applied"), 1);
    }
}

#[test]
fn a_wrong_bouncer_key_is_a_clear_error_and_no_crash() {
    let Some(lapi) = lapi() else { return };
    let redis = RedisServer::start().unwrap();
    lapi.add_machine("moat-a", PASSWORD).unwrap();
    let m = moat_with(&redis, &lapi, "moat-a", "not-the-key");
    until("auth errors counted", || {
        counter(&m, "crowdsec_auth_errors") > 0
    });
    assert!(
        !refuses([127, 0, 3, 1], m.local_addr()),
        "moat still serves"
    );
    // Pushing (a right password) still works.
    ban(&m, "127.0.5.9/32");
    until("the ban pushed", || in_lapi(&lapi, "127.0.5.9"));
}

#[test]
fn the_lapi_down_then_up() {
    let Some(mut lapi) = lapi() else { return };
    let redis = RedisServer::start().unwrap();
    let m = moat(&redis, &lapi, "moat-a");
    until("a first pull", || {
        lapi.cscli(&["bouncers", "list", "-o", "json"])
            .unwrap()
            .contains("last_pull")
    });
    lapi.pause();
    ban(&m, "127.0.5.7/32");
    until("errors counted while down", || {
        counter(&m, "crowdsec_errors") > 0
    });
    assert!(
        !refuses([127, 0, 3, 1], m.local_addr()),
        "moat still serves"
    );
    lapi.resume().unwrap();
    until("the ban made while down pushed", || {
        in_lapi(&lapi, "127.0.5.7")
    });
    lapi.cscli(&["decisions", "add", "--ip", "127.0.3.3", "--duration", "5m"])
        .unwrap();
    until("a decision after the restart applied", || {
        refuses([127, 0, 3, 3], m.local_addr())
    });
}

#[test]
fn long_and_excess_decisions_are_capped_or_refused() {
    let Some(lapi) = lapi() else { return };
    let redis = RedisServer::start().unwrap();
    let key = "bouncer-key-moat-a-0123456789";
    lapi.add_machine("moat-a", PASSWORD).unwrap();
    lapi.add_bouncer("moat-a", key).unwrap();
    let m = moat_tweaked(&redis, &lapi, "moat-a", key, |c| {
        c.crowdsec.max_held = 2;
        c.crowdsec.max_ban = Duration::from_secs(3600);
    });
    // Ten years: applied, cut to max_ban.
    lapi.cscli(&[
        "decisions",
        "add",
        "--ip",
        "127.0.3.1",
        "--duration",
        "87600h",
    ])
    .unwrap();
    until("a ten-year ban applied", || {
        refuses([127, 0, 3, 1], m.local_addr())
    });
    assert_eq!(counter(&m, "crowdsec_capped"), 1);
    let ban = m
        .guard()
        .bans(Instant::now())
        .into_iter()
        .find(|(net, _)| net.to_string() == "127.0.3.1/32")
        .unwrap()
        .1;
    assert!(ban.until <= Instant::now() + Duration::from_secs(3600));
    for ip in ["127.0.3.2", "127.0.3.3"] {
        lapi.cscli(&["decisions", "add", "--ip", ip, "--duration", "5m"])
            .unwrap();
    }
    until("the third decision refused (max_held)", || {
        counter(&m, "crowdsec_refused") >= 1
    });
    assert_eq!(counter(&m, "crowdsec_applied"), 2);
    // A decision of another type is not moat's to apply.
    lapi.cscli(&["decisions", "add", "--ip", "127.0.3.4", "--type", "captcha"])
        .unwrap();
    until("a captcha decision ignored", || {
        counter(&m, "crowdsec_ignored") >= 1
    });
    assert!(!refuses([127, 0, 3, 4], m.local_addr()));
}
