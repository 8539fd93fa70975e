//! Hot reload and drain against a real redis-server: what a reload changes takes effect for
//! new connections and commands while clients already connected (in a transaction,
//! subscribed, plain) keep working; a drain refuses new connections, delivers the replies
//! in flight and closes each client once it owes nothing.

mod common;

use std::time::Duration;

use common::conn::Conn;
use common::{Stack, command};
use moat_proxy::config::UserConfig;
use moat_testkit::RedisServer;

/// An address the guard does not trust (only 127.0.0.1 is, by default).
const UNTRUSTED: [u8; 4] = [127, 0, 0, 2];

const TOO_MANY: &[u8] = b"-ERR moat: too many connections from your address\r\n";

fn user(name: &str, password: &str) -> UserConfig {
    UserConfig {
        name: name.into(),
        password: Some(password.into()),
        password_sha256: None,
        deny_commands: Vec::new(),
    }
}

/// Waits (bounded) until `check` holds.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..500 {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{what}: not within the bound");
}

/// Moat's connections on Redis named `name` (`moat-pinned-w0`, `moat-shared-w0`).
fn redis_connections(redis: &RedisServer, name: &str) -> usize {
    let list = redis.command(&["CLIENT", "LIST"]).expect("CLIENT LIST");
    String::from_utf8_lossy(&list)
        .lines()
        .filter(|l| l.contains(&format!(" name={name} ")))
        .count()
}

#[test]
fn reload_applies_guard_and_users_while_clients_keep_working() {
    let stack = Stack::with(RedisServer::builder(), |c| {
        c.users = vec![user("app", "old")];
        c.guard.max_per_ip = 10;
    });
    let addr = stack.addr();
    let control = stack.moat.control();
    let signed_in = |c: &mut Conn| assert_eq!(c.call(&["AUTH", "app", "old"]), b"+OK\r\n");

    let mut plain = Conn::from(UNTRUSTED, addr);
    signed_in(&mut plain);
    assert_eq!(plain.call(&["SET", "k", "v"]), b"+OK\r\n");
    let mut multi = Conn::from(UNTRUSTED, addr);
    signed_in(&mut multi);
    assert_eq!(multi.call(&["MULTI"]), b"+OK\r\n");
    assert_eq!(multi.call(&["INCR", "n"]), b"+QUEUED\r\n");
    let mut sub = Conn::from(UNTRUSTED, addr);
    signed_in(&mut sub);
    sub.send(&command(&[b"SUBSCRIBE", b"ch"]));
    assert_eq!(sub.reply(), b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n");

    let mut new = (*control.config()).clone();
    new.guard.max_per_ip = 4;
    new.users = vec![user("app", "new")];
    let report = control.reload(new).expect("valid reload");
    assert!(
        report.applied.contains(&"guard.max_per_ip".to_owned())
            && report.applied.contains(&"users".to_owned()),
        "{report:?}"
    );
    assert!(report.needs_restart.is_empty(), "{report:?}");
    assert_eq!(control.config().guard.max_per_ip, 4);
    assert_eq!(stack.moat.guard().config().max_per_ip, 4);

    // The fourth connection fits under the new cap; the fifth does not.
    let mut fourth = Conn::from(UNTRUSTED, addr);
    Conn::from(UNTRUSTED, addr).expect_close(TOO_MANY, "over the lowered per-address cap");
    // The old password no longer signs in; the new one does.
    let wrong = fourth.call(&["AUTH", "app", "old"]);
    assert!(
        wrong.starts_with(b"-WRONGPASS"),
        "{}",
        common::shown(&wrong)
    );
    assert_eq!(fourth.call(&["AUTH", "app", "new"]), b"+OK\r\n");

    // The clients already there are untouched.
    assert_eq!(multi.call(&["EXEC"]), b"*1\r\n:1\r\n");
    assert_eq!(plain.call(&["PUBLISH", "ch", "hello"]), b":1\r\n");
    assert_eq!(
        sub.reply(),
        b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n"
    );
    assert_eq!(plain.call(&["GET", "k"]), b"$1\r\nv\r\n");
    assert_eq!(fourth.call(&["GET", "k"]), b"$1\r\nv\r\n");

    // An invalid configuration changes nothing.
    let mut bad = (*control.config()).clone();
    bad.guard.max_per_ip = 1;
    bad.limits.max_inflight = 0;
    let err = control.reload(bad).expect_err("invalid");
    assert!(err.to_string().contains("limits.max_inflight"), "{err}");
    assert_eq!(control.config().guard.max_per_ip, 4);
    assert_eq!(stack.moat.guard().config().max_per_ip, 4);

    // Settings that need a restart are reported and keep their running value.
    let mut restart = (*control.config()).clone();
    restart.proxy.backlog = 16;
    restart.proxy.listen = "127.0.0.1:1".parse().expect("literal");
    let report = control.reload(restart).expect("valid");
    assert_eq!(report.applied, Vec::<String>::new());
    assert_eq!(report.needs_restart, ["proxy.backlog", "proxy.listen"]);
    assert_eq!(control.config().proxy.backlog, 4096);

    let snap = control.snapshot();
    assert_eq!(snap.reloads, [("applied", 2), ("rejected", 1)]);
    assert!(snap.last_reload_success_seconds > 0.0);
}

#[test]
fn shrinking_the_pools_cuts_no_transaction() {
    let stack = Stack::with(RedisServer::builder(), |c| {
        c.backend.shared_connections = 2;
        c.backend.min_idle = 2;
        c.pinned.max_connections = 3;
    });
    let addr = stack.addr();
    let control = stack.moat.control();
    let mut txs: Vec<Conn> = (0..3).map(|_| Conn::connect(addr)).collect();
    for (i, tx) in txs.iter_mut().enumerate() {
        assert_eq!(tx.call(&["MULTI"]), b"+OK\r\n");
        let value = i.to_string();
        assert_eq!(tx.call(&["SET", &format!("t{i}"), &value]), b"+QUEUED\r\n");
    }
    assert_eq!(redis_connections(&stack.redis, "moat-pinned-w0"), 3);
    let mut plain = Conn::connect(addr);

    let mut smaller = (*control.config()).clone();
    smaller.backend.shared_connections = 1;
    smaller.pinned.max_connections = 1;
    let report = control.reload(smaller).expect("valid");
    assert_eq!(
        report.applied,
        ["backend.shared_connections", "pinned.max_connections"]
    );
    // Every transaction still runs to its end, and plain commands still work.
    for tx in &mut txs {
        assert_eq!(tx.call(&["EXEC"]), b"*1\r\n+OK\r\n");
    }
    for _ in 0..5 {
        assert_eq!(plain.call(&["PING"]), b"+PONG\r\n");
    }
    assert_eq!(plain.call(&["GET", "t2"]), b"$1\r\n2\r\n");
    // The excess connections close once they are free.
    eventually("pinned pool back to its new size", || {
        redis_connections(&stack.redis, "moat-pinned-w0") <= 1
    });
    eventually("shared pool back to its new size", || {
        redis_connections(&stack.redis, "moat-shared-w0") <= 1
    });
    assert_eq!(plain.call(&["GET", "t0"]), b"$1\r\n0\r\n");
    // Growing again works.
    let mut bigger = (*control.config()).clone();
    bigger.pinned.max_connections = 2;
    control.reload(bigger).expect("valid");
    let (mut a, mut b) = (Conn::connect(addr), Conn::connect(addr));
    assert_eq!(a.call(&["MULTI"]), b"+OK\r\n");
    assert_eq!(b.call(&["MULTI"]), b"+OK\r\n");
    assert_eq!(a.call(&["EXEC"]), b"*0\r\n");
    assert_eq!(b.call(&["EXEC"]), b"*0\r\n");
}

#[test]
fn drain_delivers_what_is_owed_closes_the_rest_and_refuses_new_clients() {
    drain_scenario(1);
}

#[test]
fn drain_and_top_clients_span_every_worker() {
    drain_scenario(2);
}

fn drain_scenario(workers: usize) {
    let stack = Stack::with(RedisServer::builder(), |c| {
        c.proxy.workers = workers;
        c.proxy.drain_timeout = Duration::from_secs(120);
    });
    let addr = stack.addr();
    let control = stack.moat.control();
    let mut idle = Conn::connect(addr);
    assert_eq!(idle.call(&["PING"]), b"+PONG\r\n");
    let mut blocked = Conn::connect(addr);
    blocked.send(&command(&[b"BLPOP", b"q", b"0"]));
    let mut sub = Conn::connect(addr);
    sub.send(&command(&[b"SUBSCRIBE", b"ch"]));
    assert_eq!(sub.reply(), b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n");
    let mut tx = Conn::connect(addr);
    assert_eq!(tx.call(&["MULTI"]), b"+OK\r\n");
    // BLPOP has reached Redis once Redis counts a blocked client.
    eventually("BLPOP waiting on Redis", || {
        stack.redis.info_u64("blocked_clients").unwrap_or(0) == 1
    });

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let top = rt.block_on(control.top_clients(10));
    assert_eq!(top.len(), 4, "{top:?}");
    let holds = |h: &str| top.iter().any(|c| c.holds.as_deref() == Some(h));
    assert!(
        holds("pubsub") && holds("multi") && holds("blocked"),
        "{top:?}"
    );
    assert_eq!(rt.block_on(control.top_clients(2)).len(), 2);

    assert!(!control.draining());
    control.drain();
    assert!(control.draining());
    assert!(control.snapshot().draining);
    assert!(control.status().draining);

    idle.expect_silent_close("an idle client is closed at once");
    sub.expect_silent_close("a subscriber is closed once its messages are out");
    eventually("new connections refused", || {
        std::net::TcpStream::connect(addr).is_err()
    });

    // The blocked call and the transaction are let finish, then closed.
    tx.expect_open(Duration::from_millis(200), "a client in MULTI");
    assert_eq!(tx.call(&["INCR", "n"]), b"+QUEUED\r\n");
    assert_eq!(tx.call(&["EXEC"]), b"*1\r\n:1\r\n");
    tx.expect_silent_close("the transaction is over");
    blocked.expect_open(Duration::from_millis(200), "a client in BLPOP");
    stack.redis.command(&["LPUSH", "q", "x"]).expect("LPUSH");
    blocked.expect_close(b"*2\r\n$1\r\nq\r\n$1\r\nx\r\n", "the blocking call's reply");
    eventually("every client gone", || stack.moat.guard().clients() == 0);
    eventually("every close counted as the drain's", || {
        moat_proxy::stats::Snapshot::labelled(&control.snapshot().closed, "drain") >= 4
    });
}

#[test]
fn drain_timeout_closes_the_clients_left() {
    let stack = Stack::with(RedisServer::builder(), |c| {
        c.proxy.drain_timeout = Duration::from_millis(300);
    });
    let mut tx = Conn::connect(stack.addr());
    assert_eq!(tx.call(&["MULTI"]), b"+OK\r\n");
    stack.moat.control().drain();
    tx.expect_silent_close("a transaction left open past the drain timeout");
    let control = stack.moat.control();
    eventually("the timeout's close counted", || {
        moat_proxy::stats::Snapshot::labelled(&control.snapshot().closed, "drain") == 1
    });
}
