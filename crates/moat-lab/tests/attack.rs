//! Each attack mode against a real redis-server (and moat), with small K and short runs.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moat_lab::attack::{
    self, AttackError, AttackSpec, AttackSummary, AuthBruteSpec, Counters, FloodSpec, HoardSpec,
    Mode, PinHow, PinSpec, SlowReaderSpec,
};
use moat_testkit::RedisServer;
use tokio_util::sync::CancellationToken;

/// Redis refuses clients from 127.100.x.y in protected mode (no password): turn it off.
fn redis() -> RedisServer {
    RedisServer::builder()
        .config("protected-mode no")
        .start()
        .unwrap()
}

fn spec(target: SocketAddr, mode: Mode, secs: u64, sources: u32) -> AttackSpec {
    let mut spec = AttackSpec::new(target, mode);
    spec.duration = Duration::from_secs(secs);
    spec.sources = sources;
    spec
}

/// A running attack: its counters, its stop token, and its task.
struct Running {
    counters: Arc<Counters>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<AttackSummary, AttackError>>,
}

fn start(spec: AttackSpec) -> Running {
    let counters = Arc::new(Counters::new());
    let stop = CancellationToken::new();
    let task = {
        let (counters, stop) = (counters.clone(), stop.clone());
        tokio::spawn(async move { attack::run(&spec, stop, counters).await })
    };
    Running {
        counters,
        stop,
        task,
    }
}

impl Running {
    async fn stop(self) -> AttackSummary {
        self.stop.cancel();
        self.task.await.unwrap().unwrap()
    }
}

/// Polls `f` (blocking calls to Redis) until it holds, for at most 15 s.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if tokio::task::block_in_place(&mut f) {
            return;
        }
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn info(redis: &RedisServer, field: &str) -> u64 {
    redis.info_u64(field).unwrap()
}

fn client_list(redis: &RedisServer) -> String {
    String::from_utf8_lossy(&redis.command(&["CLIENT", "LIST"]).unwrap()).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_connects_and_closes_until_its_count() {
    let redis = redis();
    let before = info(&redis, "total_connections_received");
    let flood = FloodSpec {
        concurrency: 8,
        count: 300,
        ..FloodSpec::default()
    };
    let summary = start(spec(redis.addr(), Mode::Flood(flood), 20, 4))
        .task
        .await
        .unwrap()
        .unwrap();
    let c = &summary.counters;
    assert!(!summary.partial);
    assert_eq!(c.attempts, 300, "{summary}");
    assert!(c.connected > 0, "{summary}");
    eventually("Redis accepted the flood", || {
        info(&redis, "total_connections_received") >= before + c.connected
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_against_a_rate_limited_moat_counts_its_refusals() {
    let redis = redis();
    let mut config = moat_proxy::Config::default();
    config.proxy.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.backend.address = redis.addr();
    config.guard.ip_rate = 1.0;
    config.guard.ip_burst = 2;
    // Counts moat's refusal lines: banned sources must not be dropped by the kernel.
    config.kernel.socket_filter = false;
    let moat = moat_proxy::start(config).unwrap();
    let flood = FloodSpec {
        concurrency: 8,
        count: 200,
        rst: true,
        read_reply: Some(Duration::from_millis(500)),
        ..FloodSpec::default()
    };
    let summary = start(spec(moat.local_addr(), Mode::Flood(flood), 20, 4))
        .task
        .await
        .unwrap()
        .unwrap();
    let refused: u64 = summary
        .counters
        .replies
        .iter()
        .filter(|(kind, _)| kind.starts_with("ERR moat: "))
        .map(|(_, n)| n)
        .sum();
    // Rate limited first, then banned for hammering.
    assert!(refused >= 100, "{summary}");
    assert!(
        summary
            .counters
            .replies
            .keys()
            .any(|k| k.contains("too many new connections")),
        "{summary}"
    );
    drop(moat);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hoard_holds_k_connections_then_lets_go() {
    let redis = redis();
    let k = 20;
    let hoard = HoardSpec {
        connections: k,
        ..HoardSpec::default()
    };
    let running = start(spec(redis.addr(), Mode::Hoard(hoard), 60, 1));
    // The helper's own INFO connection counts as one client.
    eventually("Redis holds the hoard", || {
        info(&redis, "connected_clients") > u64::from(k)
    })
    .await;
    // Redis counts a connection when it accepts it; the holder once its connect returns
    // and its task runs again, which on a loaded machine can come later.
    eventually("the attack counts the hoard", || {
        running.counters.snapshot().held == u64::from(k)
    })
    .await;
    let summary = running.stop().await;
    assert!(summary.partial, "stopped before its 60 s: {summary}");
    assert_eq!(summary.counters.peak_held, u64::from(k));
    assert_eq!(summary.counters.held_at_end, u64::from(k));
    assert_eq!(summary.counters.held, 0, "all let go when run returns");
    eventually("the hoard is released", || {
        info(&redis, "connected_clients") == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hoard_refill_reopens_what_an_idle_timeout_closes() {
    let redis = RedisServer::builder()
        .config("protected-mode no")
        .config("timeout 1")
        .start()
        .unwrap();
    let hoard = HoardSpec {
        connections: 4,
        refill: true,
        ..HoardSpec::default()
    };
    let running = start(spec(redis.addr(), Mode::Hoard(hoard), 30, 2));
    let counters = running.counters.clone();
    eventually("the target closed and the hoard re-opened", || {
        let c = counters.snapshot();
        c.closed_by_target >= 4 && c.connected >= 8
    })
    .await;
    let summary = running.stop().await;
    assert!(summary.counters.attempts >= 8, "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hoard_keepalive_outlives_an_idle_timeout() {
    let redis = RedisServer::builder()
        .config("protected-mode no")
        .config("timeout 1")
        .start()
        .unwrap();
    let hoard = HoardSpec {
        connections: 3,
        keepalive: Some(Duration::from_millis(300)),
        ..HoardSpec::default()
    };
    let running = start(spec(redis.addr(), Mode::Hoard(hoard), 3, 1));
    let summary = running.task.await.unwrap().unwrap();
    assert!(!summary.partial);
    assert_eq!(summary.counters.closed_by_target, 0, "{summary}");
    assert!(summary.counters.commands_sent >= 3, "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pin_blpop_blocks_k_clients() {
    let redis = redis();
    let pin = PinSpec {
        connections: 10,
        how: PinHow::Blpop,
        ..PinSpec::default()
    };
    let running = start(spec(redis.addr(), Mode::Pin(pin), 60, 3));
    eventually("10 clients blocked", || {
        info(&redis, "blocked_clients") == 10
    })
    .await;
    let summary = running.stop().await;
    assert_eq!(summary.counters.peak_held, 10);
    eventually("released", || info(&redis, "blocked_clients") == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pin_subscribe_and_multi_hold_their_connections() {
    let redis = redis();
    let pin = PinSpec {
        connections: 6,
        how: PinHow::Subscribe,
        key: "attack-chan".into(),
        ..PinSpec::default()
    };
    let running = start(spec(redis.addr(), Mode::Pin(pin), 60, 1));
    eventually("6 subscribers", || {
        client_list(&redis).matches("sub=1 ").count() == 6
    })
    .await;
    assert_eq!(info(&redis, "pubsub_channels"), 1);
    running.stop().await;

    let pin = PinSpec {
        connections: 4,
        how: PinHow::Multi,
        ..PinSpec::default()
    };
    let running = start(spec(redis.addr(), Mode::Pin(pin), 60, 1));
    eventually("4 clients inside MULTI", || {
        client_list(&redis).matches("cmd=multi ").count() == 4
    })
    .await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_grows_the_target_output_buffers() {
    let redis = redis();
    let slow = SlowReaderSpec {
        connections: 2,
        value_size: 100_000,
        pipeline: 16,
        max_bytes_per_connection: 40_000_000,
        ..SlowReaderSpec::default()
    };
    let running = start(spec(redis.addr(), Mode::SlowReader(slow), 60, 2));
    eventually("Redis buffers unread replies", || {
        client_list(&redis)
            .split_whitespace()
            .filter_map(|f| f.strip_prefix("omem="))
            .filter_map(|v| v.parse::<u64>().ok())
            .any(|omem| omem > 1_000_000)
    })
    .await;
    let summary = running.stop().await;
    assert!(summary.counters.bytes_requested >= 1_600_000, "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_brute_counts_wrongpass() {
    let redis = RedisServer::builder().password("s3cret").start().unwrap();
    let brute = AuthBruteSpec {
        concurrency: 4,
        count: 60,
        per_connection: 3,
        ..AuthBruteSpec::default()
    };
    let summary = start(spec(redis.addr(), Mode::AuthBrute(brute), 20, 4))
        .task
        .await
        .unwrap()
        .unwrap();
    let wrongpass: u64 = summary
        .counters
        .replies
        .iter()
        .filter(|(kind, _)| kind.starts_with("WRONGPASS"))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(wrongpass, 60, "{summary}");
    // Up to 3 guesses per connection; the last one of each worker may get fewer.
    let connections = summary.counters.attempts;
    assert!((20..=24).contains(&connections), "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_spread_connections_over_distinct_peers() {
    let redis = redis();
    let hoard = HoardSpec {
        connections: 16,
        ..HoardSpec::default()
    };
    let running = start(spec(redis.addr(), Mode::Hoard(hoard), 60, 8));
    eventually("the hoard is in place", || {
        info(&redis, "connected_clients") > 16
    })
    .await;
    let list = client_list(&redis);
    let peers: HashSet<&str> = list
        .split_whitespace()
        .filter_map(|f| f.strip_prefix("addr="))
        .filter_map(|a| a.rsplit_once(':').map(|(ip, _)| ip))
        .filter(|ip| ip.starts_with("127.100."))
        .collect();
    assert_eq!(peers.len(), 8, "{list}");
    running.stop().await;
}

#[tokio::test]
async fn refuses_non_loopback_targets_and_bad_specs() {
    let target: SocketAddr = "10.1.2.3:6379".parse().unwrap();
    let s = spec(target, Mode::Flood(FloodSpec::default()), 1, 1);
    let err = attack::run(&s, CancellationToken::new(), Arc::new(Counters::new()))
        .await
        .unwrap_err();
    assert!(matches!(err, AttackError::Target(_)), "{err}");
    assert!(err.to_string().contains("--allow-non-loopback"));

    let s = spec(
        "127.0.0.1:1".parse().unwrap(),
        Mode::Flood(FloodSpec {
            concurrency: 0,
            ..FloodSpec::default()
        }),
        1,
        1,
    );
    let err = attack::run(&s, CancellationToken::new(), Arc::new(Counters::new()))
        .await
        .unwrap_err();
    assert!(matches!(err, AttackError::InvalidSpec(_)), "{err}");
}

#[tokio::test]
async fn refuses_more_connections_than_the_fd_limit() {
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    if hard >= u64::from(attack::spec::MAX_CONNECTIONS) {
        eprintln!("hard fd limit {hard}: cannot exceed it with a valid spec; skipped");
        return;
    }
    let hoard = HoardSpec {
        connections: attack::spec::MAX_CONNECTIONS,
        ..HoardSpec::default()
    };
    let s = spec("127.0.0.1:1".parse().unwrap(), Mode::Hoard(hoard), 1, 1);
    let err = attack::run(&s, CancellationToken::new(), Arc::new(Counters::new()))
        .await
        .unwrap_err();
    assert!(matches!(err, AttackError::FdLimit { .. }), "{err}");
    assert!(err.to_string().contains("ulimit"), "{err}");
}
