//! The legitimate workload against real servers: a healthy Redis, a closed port, a Redis
//! whose client slots are all taken, and moat in front of Redis.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use moat_lab::legit::{LegitGroup, LegitReport, LegitSpec, PhaseHandle, run};
use moat_protocol::Value;
use moat_testkit::RedisServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// A short workload with every group small.
fn small(target: SocketAddr) -> LegitSpec {
    let mut spec = LegitSpec::new(target);
    spec.duration = Duration::from_millis(1500);
    spec.steady = 3;
    spec.churn = 2;
    spec.churn_every = 5;
    spec.trusted = 1;
    spec.rate = 40.0;
    spec.fresh_rate = 10.0;
    // Generous: the machine is shared and noisy; the point is correctness, not speed.
    spec.op_timeout = Duration::from_secs(5);
    spec
}

async fn run_small(spec: LegitSpec) -> LegitReport {
    run(spec, PhaseHandle::default(), CancellationToken::new())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Redis answering every loopback source: protected mode (no password) would refuse the
/// group addresses other than 127.0.0.1 with `-DENIED`.
fn redis_builder() -> moat_testkit::RedisServerBuilder {
    RedisServer::builder().config("protected-mode no")
}

fn redis() -> RedisServer {
    redis_builder().start().unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_group_succeeds_against_a_healthy_redis() {
    let redis = redis();
    let phases = PhaseHandle::new("baseline");
    let switcher = phases.clone();
    let flip = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        switcher.set("second");
    });
    let report = run(small(redis.addr()), phases, CancellationToken::new())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    flip.await.unwrap_or_else(|e| panic!("{e}"));
    assert!(!report.partial);
    assert_eq!(report.groups.len(), 4, "{}", report.table());
    for g in &report.groups {
        assert_eq!(g.errors, 0, "{}", report.table());
        assert!(g.ok > 0, "{}", report.table());
        assert_eq!(g.success_rate, 1.0);
        // Every operation's latency is in the histogram.
        assert_eq!(g.latency_us.count, g.ok);
        assert!(g.latency_us.p50 > 0 && g.latency_us.p50 <= g.latency_us.max);
    }
    // An open loop sends what its schedule says: 1.5 s at 40/s is 60 per client.
    let steady = report.group(LegitGroup::Steady).unwrap_or_else(|| panic!());
    assert_eq!(steady.ok, 3 * 60);
    assert_eq!(report.group(LegitGroup::Fresh).map(|g| g.ok), Some(15));
    // Per second rows add up to the totals, and both phases got some.
    for g in &report.groups {
        let rows: u64 = report
            .seconds
            .iter()
            .filter(|r| r.group == g.group)
            .map(|r| r.ok)
            .sum();
        assert_eq!(rows, g.ok);
    }
    assert!(report.seconds.iter().all(|r| r.p99_us >= r.p50_us));
    let names: Vec<&str> = report.phases.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["baseline", "second"]);
    assert_eq!(report.phase_spans.len(), 2);
    let json = serde_json::to_value(&report).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(json["groups"][0]["group"], "steady");
    assert_eq!(json["groups"][0]["ok"], 180);
    assert_eq!(json["spec"]["duration"], 1.5);
    assert!(json["seconds"][0]["p99_us"].is_u64());
    assert_eq!(json["fresh_next"], 15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_port_gives_refused_errors() {
    let target = SocketAddr::from(([127, 0, 0, 1], moat_testkit::free_port()));
    let mut spec = small(target);
    spec.duration = Duration::from_millis(500);
    let report = run_small(spec).await;
    for g in &report.groups {
        assert_eq!(g.ok, 0, "{}", report.table());
        assert!(g.errors > 0);
        assert_eq!(g.errors_by_kind.keys().collect::<Vec<_>>(), ["refused"]);
        // Fast failures stay out of the latency histogram.
        assert_eq!(g.latency_us.count, 0);
    }
}

/// Holds `n` of a server's client slots: connected and answered, so the server counts them.
fn hold_slots(target: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut s = TcpStream::connect(target).unwrap_or_else(|e| panic!("{e}"));
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap_or_else(|e| panic!("{e}"));
            s.write_all(b"PING\r\n").unwrap_or_else(|e| panic!("{e}"));
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(&buf[..n], b"+PONG\r\n");
            s
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_probes_meet_max_clients_when_the_slots_are_held() {
    let redis = redis_builder()
        .config("maxclients 3")
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    let _held = hold_slots(redis.addr(), 3);
    let mut spec = small(redis.addr());
    spec.steady = 0;
    spec.churn = 0;
    spec.trusted = 0;
    spec.duration = Duration::from_millis(800);
    let report = run_small(spec).await;
    let fresh = report.group(LegitGroup::Fresh).unwrap_or_else(|| panic!());
    assert_eq!(fresh.ok, 0, "{}", report.table());
    assert_eq!(fresh.errors, 8);
    assert_eq!(
        fresh.errors_by_kind.get("max_clients"),
        Some(&8),
        "{}",
        report.table()
    );
}

/// Sends CLIENT LIST to `target` from 127.0.0.1 and returns its lines.
async fn client_list(target: SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(target)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    s.write_all(b"*2\r\n$6\r\nCLIENT\r\n$4\r\nLIST\r\n")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut buf = Vec::new();
    loop {
        if let Some((value, _)) = Value::decode(&buf, 4).unwrap_or_else(|e| panic!("{e:?}")) {
            return value
                .as_str()
                .unwrap_or_else(|| panic!("{value:?}"))
                .to_owned();
        }
        let n = s.read_buf(&mut buf).await.unwrap_or_else(|e| panic!("{e}"));
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&buf));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workload_gets_through_moat_from_its_group_addresses() {
    let redis = redis();
    let mut config = moat_proxy::Config::default();
    config.proxy.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.proxy.workers = 1;
    config.backend.address = redis.addr();
    let moat = moat_proxy::start(config).unwrap_or_else(|e| panic!("{e}"));
    let target = moat.local_addr();
    let mut spec = small(target);
    spec.duration = Duration::from_secs(2);
    let workload = tokio::spawn(run_small(spec));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let list = client_list(target).await;
    // Churn clients hold each connection for 5 operations (125 ms) and reconnect at the
    // next one: each is between connections a fifth of the time, both at once now and
    // then. A few looks, 30 ms apart, find one connected.
    let mut churn_seen = list.contains("addr=127.2.0.");
    for _ in 0..10 {
        if churn_seen {
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        churn_seen = client_list(target).await.contains("addr=127.2.0.");
    }
    let report = workload.await.unwrap_or_else(|e| panic!("{e}"));
    for g in &report.groups {
        assert_eq!(g.errors, 0, "{}", report.table());
        assert!(g.ok > 0);
    }
    for prefix in ["addr=127.1.0.1:", "addr=127.1.0.3:", "addr=127.0.0.1:"] {
        assert!(list.contains(prefix), "{prefix} not in\n{list}");
    }
    assert!(churn_seen, "no churn client connected in any look: {list}");
    drop(moat);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_ends_the_run_early_with_a_partial_report() {
    let redis = redis();
    let mut spec = small(redis.addr());
    spec.duration = Duration::from_secs(60);
    let stop = CancellationToken::new();
    let canceller = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        canceller.cancel();
    });
    let report = run(spec, PhaseHandle::default(), stop)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(report.partial);
    assert!(report.elapsed_s < 60.0, "{}", report.elapsed_s);
    let steady = report.group(LegitGroup::Steady).unwrap_or_else(|| panic!());
    // What ran before the stop is measured; nothing cut short counts as a failure.
    assert!(steady.ok > 0 && steady.errors == 0, "{}", report.table());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_dies_mid_run_shows_as_connection_errors() {
    let mut redis = redis();
    let mut spec = small(redis.addr());
    spec.duration = Duration::from_secs(2);
    spec.op_timeout = Duration::from_secs(1);
    let workload = tokio::spawn(run_small(spec));
    tokio::time::sleep(Duration::from_millis(700)).await;
    redis.kill9();
    let report = workload.await.unwrap_or_else(|e| panic!("{e}"));
    assert!(!report.partial);
    for g in &report.groups {
        assert!(g.ok > 0, "{}", report.table());
        assert!(g.errors > 0, "{}", report.table());
        for kind in g.errors_by_kind.keys() {
            assert!(
                ["refused", "reset", "closed"].contains(&kind.as_str()),
                "{}",
                report.table()
            );
        }
    }
}
