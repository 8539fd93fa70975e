//! The dashboard's frames, rendered into ratatui's `TestBackend` (through `snapshot`) and
//! read as text: the header, values, gauge, alerts, sources and moat panel show what the
//! samples and events said, missing signals show as `n/a`, and no size panics. One test
//! feeds real samples from a real redis-server.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use moat_testkit::RedisServer;
use moat_watch::Sample;
use moat_watch::collect::poller::{Poller, PollerConfig};
use moat_watch::dashboard::{Dashboard, snapshot};
use moat_watch::detect::{AlertId, Event, Severity};
use moat_watch::sample::{ClientsSummary, HostSignals, MoatSignals, RedisSignals};

fn sample(at: Instant, f: impl FnOnce(&mut Sample)) -> Sample {
    let mut s = Sample {
        at,
        redis_reachable: true,
        redis_refused: None,
        redis: RedisSignals::default(),
        host: HostSignals::default(),
        clients: None,
        moat: None,
    };
    f(&mut s);
    s
}

/// A Redis at `clients` of 1000, its counters moving by `conns` and `rejected` a second.
fn busy(at: Instant, i: u64, clients: u64) -> Sample {
    sample(at + Duration::from_secs(i), |s| {
        s.redis.connected_clients = Some(clients);
        s.redis.maxclients = Some(1000);
        s.redis.total_connections_received = Some(10_000 + 40 * i);
        s.redis.rejected_connections = Some(0);
        s.redis.used_memory = Some(2 * 1024 * 1024);
        s.redis.mem_clients_normal = Some(20 * 1024);
    })
}

fn raised(id: AlertId, severity: Severity) -> Event {
    Event::Raised {
        id,
        severity,
        summary: format!("{id} summary"),
        value: 1.0,
        threshold: 0.0,
    }
}

#[test]
fn the_frame_shows_target_values_and_gauge() {
    let t0 = Instant::now();
    let mut d = Dashboard::new("redis://admin:hunter2@10.1.2.3:6379");
    for i in 0..10 {
        d.observe(&busy(t0, i, 812), &[]);
    }
    let frame = snapshot(&d, 80, 24);
    assert_eq!(frame.lines().count(), 24, "{frame}");
    assert!(frame.contains("moat watch"), "{frame}");
    assert!(frame.contains("redis://***@10.1.2.3:6379"), "{frame}");
    assert!(!frame.contains("hunter2"), "{frame}");
    assert!(frame.contains("reachable"), "{frame}");
    assert!(frame.contains("812 / 1000 (81%)"), "the gauge: {frame}");
    let rate = frame.lines().find(|l| l.contains("new conn/s")).unwrap();
    assert!(rate.contains(" 40 "), "the connection rate: {frame}");
    assert!(frame.contains("2.0 MiB"), "used memory: {frame}");
    assert!(frame.contains("20.0 KiB"), "client memory: {frame}");
    assert!(frame.contains("no active alert"), "{frame}");
    assert!(
        !frame.contains("moat's view"),
        "no moat panel without moat data: {frame}"
    );
}

#[test]
fn absent_host_signals_show_as_na() {
    let t0 = Instant::now();
    let mut d = Dashboard::new("redis://cache.example:6379");
    for i in 0..3 {
        d.observe(&busy(t0, i, 5), &[]);
    }
    let frame = snapshot(&d, 80, 24);
    let drops = frame.lines().find(|l| l.contains("queue drops/s")).unwrap();
    assert!(drops.contains("n/a"), "{frame}");
    assert!(
        !drops.contains("0.0"),
        "a missing signal is not zero: {frame}"
    );
    assert!(frame.contains("fds n/a"), "{frame}");
    assert!(frame.contains("host (not local)"), "{frame}");
    // And a Redis that does not answer: its values are n/a, it says so.
    d.observe(
        &sample(t0 + Duration::from_secs(10), |s| s.redis_reachable = false),
        &[],
    );
    let frame = snapshot(&d, 80, 24);
    assert!(frame.contains("UNREACHABLE"), "{frame}");
    assert!(frame.contains("n/a / 1000"), "{frame}");
}

#[test]
fn an_alert_is_listed_while_active_and_resolved_after() {
    let t0 = Instant::now();
    let mut d = Dashboard::new("redis://127.0.0.1:6379");
    d.observe(&busy(t0, 0, 100), &[]);
    d.observe(
        &busy(t0, 1, 950),
        &[
            raised(AlertId::ConnectionRateSpike, Severity::Warning),
            raised(AlertId::ClientsNearMax, Severity::Critical),
        ],
    );
    d.observe(&busy(t0, 5, 950), &[]);
    let frame = snapshot(&d, 100, 30);
    assert!(frame.contains("alerts: 2 active"), "{frame}");
    let crit = frame.find("CRIT clients_near_max").unwrap();
    let warn = frame.find("WARN connection_rate_spike").unwrap();
    assert!(crit < warn, "critical first: {frame}");
    assert!(
        frame.contains("4s ago"),
        "raised 4 s before the last poll: {frame}"
    );
    assert!(frame.contains("950 / 1000 (95%)"), "{frame}");
    d.observe(
        &busy(t0, 7, 100),
        &[Event::Resolved {
            id: AlertId::ClientsNearMax,
            after: Duration::from_secs(6),
        }],
    );
    let frame = snapshot(&d, 100, 30);
    assert!(frame.contains("alerts: 1 active"), "{frame}");
    assert!(!frame.contains("CRIT clients_near_max"), "{frame}");
    assert!(
        frame.contains("ok   clients_near_max ended 0s ago after 6s"),
        "{frame}"
    );
}

#[test]
fn top_sources_and_the_moat_panel_come_with_their_data() {
    let t0 = Instant::now();
    let mut d = Dashboard::new("redis://127.0.0.1:6379");
    let frame = snapshot(&d, 80, 24);
    assert!(frame.contains("n/a: --clients"), "{frame}");
    for i in 0..3 {
        d.observe(
            &sample(t0 + Duration::from_secs(i), |s| {
                s.redis.connected_clients = Some(700);
                s.redis.maxclients = Some(1000);
                s.clients = Some(ClientsSummary {
                    total: 700,
                    top: vec![("10.9.8.7".into(), 600), ("10.0.0.2".into(), 100)],
                    never_ran: 600,
                    idle_over_minute: 0,
                });
                s.moat = Some(MoatSignals {
                    reachable: true,
                    clients: Some(77),
                    refused_total: Some(1000 * i),
                    refused_by_reason: vec![("banned".into(), 1000 * i)],
                    bans_active: Some(4),
                    top_sources: vec![("203.0.113.0/24".into(), 55)],
                    top_refused: vec![("198.51.100.9".into(), 4200)],
                    ..MoatSignals::default()
                });
            }),
            &[],
        );
    }
    let frame = snapshot(&d, 100, 30);
    let top = frame.lines().find(|l| l.contains("10.9.8.7")).unwrap();
    assert!(top.contains("600") && top.contains("60%"), "{frame}");
    assert!(frame.contains("600 of 700 never ran a command"), "{frame}");
    assert!(frame.contains("203.0.113.0/24"), "{frame}");
    assert!(frame.contains("moat's view"), "{frame}");
    assert!(frame.contains("bans 4"), "{frame}");
    assert!(
        frame.contains("most refused: 198.51.100.9 (4200)"),
        "{frame}"
    );
    assert!(
        frame.contains("banned 1000"),
        "refusals per second by reason: {frame}"
    );
}

#[test]
fn no_size_panics_and_small_ones_say_so() {
    let t0 = Instant::now();
    let mut d = Dashboard::new("redis://127.0.0.1:6379");
    for i in 0..400 {
        d.observe(
            &busy(t0, i, 999),
            &[raised(AlertId::RejectedConnections, Severity::Critical)],
        );
    }
    for (w, h) in [
        (0, 0),
        (1, 1),
        (10, 5),
        (20, 3),
        (59, 40),
        (200, 15),
        (80, 24),
        (300, 100),
    ] {
        let frame = snapshot(&d, w, h);
        assert_eq!(frame.lines().count(), usize::from(h), "{w}x{h}");
        assert!(frame.lines().all(|l| l.chars().count() <= usize::from(w)));
    }
    let frame = snapshot(&d, 45, 10);
    assert!(frame.contains("terminal too small"), "{frame}");
    assert!(frame.contains("CRIT rejected_connections"), "{frame}");
}

#[test]
fn real_samples_from_a_real_redis_show_its_clients() {
    let redis = RedisServer::builder()
        .config("maxclients 321")
        .start()
        .unwrap();
    let url = format!("redis://{}", redis.addr());
    let _held: Vec<_> = (0..4)
        .map(|_| std::net::TcpStream::connect(redis.addr()).unwrap())
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut dashboard = Dashboard::new(&url);
    let connected = rt.block_on(async {
        let mut poller = Poller::new(PollerConfig::new(&url)).unwrap();
        let t0 = Instant::now();
        let mut connected = None;
        for i in 0..3 {
            let s = poller.poll(t0 + Duration::from_secs(i)).await;
            connected = s.redis.connected_clients;
            dashboard.observe(&s, &[]);
        }
        connected.unwrap()
    });
    assert!(connected >= 5, "4 held and the monitor: {connected}");
    let frame = snapshot(&dashboard, 80, 24);
    let pct = (connected as f64 / 321.0 * 100.0).round();
    assert!(
        frame.contains(&format!("{connected} / 321 ({pct}%)")),
        "{frame}"
    );
    assert!(
        frame.contains(&format!("redis://{}", redis.addr())),
        "{frame}"
    );
    assert!(frame.contains("of max 321"), "{frame}");
}

#[test]
fn a_redis_that_refuses_the_watch_says_so_in_the_header() {
    let t0 = Instant::now();
    let mut d = Dashboard::new("redis://127.0.0.1:6379");
    d.observe(
        &sample(t0, |s| {
            s.redis = RedisSignals::default();
            s.redis_refused = Some("NOAUTH: Authentication required.".into());
        }),
        &[],
    );
    let frame = snapshot(&d, 100, 30);
    assert!(frame.contains("REFUSES THE WATCH: NOAUTH"), "{frame}");
    assert!(!frame.contains("UNREACHABLE"), "{frame}");
}
