//! The stats snapshot counts what happened, summed over workers: commands by kind,
//! connections accepted and refused by reason, bans, latency histograms, clients by class
//! (back to zero once they leave), clients closed and why, and the backend pools' levels.
//!
//! Client addresses are played by binding sockets to 127.x.y.z: 127.0.0.1 is trusted,
//! 127.0.9.0/24 is denied, 127.0.8.1 is an untrusted client with a tiny connection rate.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::conn::Conn;
use common::{Stack, shown};
use moat_proxy::stats::Snapshot;
use moat_testkit::RedisServer;

/// Longest wait for a level the workers refresh (once a second) or a close to be noticed.
const SETTLE: Duration = Duration::from_secs(15);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Polls `snapshot` until `ok` holds, for at most [`SETTLE`]; returns the last snapshot.
fn settle(stack: &Stack, what: &str, ok: impl Fn(&Snapshot) -> bool) -> Snapshot {
    let deadline = Instant::now() + SETTLE;
    loop {
        let snap = stack.moat.control().snapshot();
        if ok(&snap) {
            return snap;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: never settled: {snap:#?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn refused(src: [u8; 4], stack: &Stack) -> String {
    let mut conn = Conn::from(src, stack.addr());
    let got = conn
        .read_to_eof(CLOSE_TIMEOUT)
        .unwrap_or_else(|| panic!("{src:?} was admitted"));
    shown(&got)
}

fn by(set: &[(&'static str, u64)], label: &str) -> u64 {
    Snapshot::labelled(set, label)
}

#[test]
fn the_snapshot_counts_every_kind_of_traffic_over_all_workers() {
    let stack = Stack::with(RedisServer::builder(), |c| {
        c.proxy.workers = 2;
        c.guard.deny = vec!["127.0.9.0/24".parse().unwrap()];
        c.guard.ip_rate = 0.001;
        c.guard.ip_burst = 1;
        c.guard.strikes_to_ban = 3;
        // The untrusted client below talks, which makes its address known (never struck
        // for its pace) for this long; the strikes it then collects come after that.
        c.guard.recent_success = Duration::from_millis(5);
    });

    // Forwarded: SET and 40 GETs, each its own read (so some reads are timed); local: PING.
    let mut t1 = Conn::connect(stack.addr());
    assert_eq!(shown(&t1.call(&["SET", "m:k", "v"])), "+OK\\r\\n");
    for _ in 0..40 {
        assert_eq!(shown(&t1.call(&["GET", "m:k"])), "$1\\r\\nv\\r\\n");
    }
    assert_eq!(shown(&t1.call(&["PING"])), "+PONG\\r\\n");
    // Pinned: a transaction on a dedicated connection.
    let mut t2 = Conn::connect(stack.addr());
    assert_eq!(shown(&t2.call(&["MULTI"])), "+OK\\r\\n");
    assert_eq!(shown(&t2.call(&["SET", "m:t", "1"])), "+QUEUED\\r\\n");
    assert_eq!(shown(&t2.call(&["EXEC"])), "*1\\r\\n+OK\\r\\n");
    // An untrusted client, admitted once (and talking, so its close is no strike)...
    let mut u = Conn::from([127, 0, 8, 1], stack.addr());
    assert_eq!(shown(&u.call(&["PING"])), "+PONG\\r\\n");

    let snap = stack.moat.control().snapshot();
    assert_eq!(by(&snap.clients, "trusted"), 2, "{snap:#?}");
    assert_eq!(by(&snap.clients, "authenticated"), 1, "{snap:#?}");
    assert_eq!(by(&snap.clients, "unauthenticated"), 0);

    // ...then, once no longer known (a sleep longer than `recent_success` above), over its
    // rate three times (three strikes: banned), then refused as banned.
    std::thread::sleep(Duration::from_millis(20));
    let over_rate = "-ERR moat: too many new connections from your address (rate limit)\\r\\n";
    for _ in 0..3 {
        assert_eq!(refused([127, 0, 8, 1], &stack), over_rate);
    }
    assert!(refused([127, 0, 8, 1], &stack).starts_with("-ERR moat: banned for"));
    assert_eq!(
        refused([127, 0, 9, 1], &stack),
        "-ERR moat: connections from your address are not allowed\\r\\n"
    );
    // A client that breaks the protocol is closed for it.
    let mut p = Conn::connect(stack.addr());
    p.send(b"*x\r\n");
    assert!(
        p.read_to_eof(CLOSE_TIMEOUT).is_some(),
        "closed after a protocol error"
    );

    drop((t1, t2, u, p));
    let snap = settle(&stack, "clients gone", |s| {
        s.clients.iter().all(|(_, n)| *n == 0)
    });
    assert_eq!(by(&snap.commands, "forwarded"), 41, "{snap:#?}");
    assert_eq!(by(&snap.commands, "local"), 2, "{snap:#?}");
    assert_eq!(by(&snap.commands, "pinned"), 3, "{snap:#?}");
    assert_eq!(snap.accepted, 4);
    assert_eq!(by(&snap.refused, "ip_rate"), 3, "{snap:#?}");
    assert_eq!(by(&snap.refused, "banned"), 1);
    assert_eq!(by(&snap.refused, "denied"), 1);
    assert_eq!(by(&snap.bans_issued, "strikes"), 1);
    assert_eq!(snap.bans_active, 1);
    assert_eq!(by(&snap.closed, "protocol_error"), 1, "{snap:#?}");
    assert_eq!(by(&snap.closed, "idle_deadline"), 0);
    assert!(by(&snap.guard_tables, "sources") >= 1);
    assert!(
        snap.backend_latency.count >= 41,
        "every forwarded reply is timed: {:?}",
        snap.backend_latency
    );
    let below_last = snap.backend_latency.cumulative.last().copied().unwrap_or(0);
    assert!(
        below_last <= snap.backend_latency.count,
        "buckets are cumulative"
    );
    assert!(
        snap.proxy_latency.count > 0,
        "one read in 16 is timed: {:?}",
        snap.proxy_latency
    );
    assert!(snap.backend_latency.sum > 0.0 && snap.proxy_latency.sum > 0.0);
    assert_eq!(snap.breaker_open, 0);
    assert_eq!(by(&snap.breaker_transitions, "open"), 0);
    assert_eq!(snap.gauge("clients_max"), 10_000);
    assert_eq!(snap.counter("requests_refused"), 0);
    assert_eq!(stack.moat.metrics().get("backend_timeouts"), Some(0));

    // Levels the workers refresh every second: the shared connections are up, and the
    // transaction's dedicated connection is back in the pool, idle, with no lease held.
    let conns = |s: &Snapshot, group: &str, state: &str| {
        s.backend_connections
            .iter()
            .find(|(g, st, _)| *g == group && *st == state)
            .map_or(0, |(.., n)| *n)
    };
    let snap = settle(&stack, "pools refreshed", |s| {
        conns(s, "shared", "idle") >= 2 && conns(s, "pinned", "idle") == 1
    });
    assert_eq!(conns(&snap, "shared", "down"), 0);
    assert_eq!(snap.gauge("pinned_leases"), 0);
    assert_eq!(snap.gauge("client_output_bytes"), 0);
}
