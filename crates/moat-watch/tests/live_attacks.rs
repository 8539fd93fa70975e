//! The collector and the detectors together against a real redis-server and real attacks
//! (`moat_lab::attack`): a steady workload raises nothing, a connect/close flood raises
//! `connection_rate_spike` within a few polls and it resolves after the flood, and a hoard
//! toward maxclients raises `clients_near_max`, resolved once the hoard lets go. Windows are
//! shortened (thresholds file keys) so the test takes seconds; every loop is bounded.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use moat_lab::attack::{self, AttackSpec, Counters, FloodSpec, HoardSpec, Mode};
use moat_testkit::RedisServer;
use moat_watch::collect::poller::{Poller, PollerConfig};
use moat_watch::detect::{AlertId, DetectConfig, Detector, Event};
use tokio_util::sync::CancellationToken;

const POLL: Duration = Duration::from_millis(250);

/// Polls for `span`, returning each event with the time since `t0`.
async fn watch_for(
    poller: &mut Poller,
    detector: &mut Detector,
    span: Duration,
    t0: Instant,
) -> Vec<(Duration, Event)> {
    let end = Instant::now() + span;
    let mut events = Vec::new();
    while Instant::now() < end {
        let sample = poller.poll(Instant::now()).await;
        for e in detector.observe(&sample) {
            events.push((t0.elapsed(), e));
        }
        tokio::time::sleep(POLL).await;
    }
    events
}

fn raised(events: &[(Duration, Event)], id: AlertId) -> Option<Duration> {
    events.iter().find_map(|(at, e)| match e {
        Event::Raised { id: i, .. } if *i == id => Some(*at),
        _ => None,
    })
}

fn resolved(events: &[(Duration, Event)], id: AlertId) -> bool {
    events
        .iter()
        .any(|(_, e)| matches!(e, Event::Resolved { id: i, .. } if *i == id))
}

#[test]
fn a_flood_and_a_hoard_are_seen_and_resolve() {
    let redis = RedisServer::builder()
        .config("maxclients 300")
        .config("protected-mode no")
        .start()
        .unwrap();
    let addr = redis.addr();
    let config = DetectConfig::from_toml(
        "min_polls = 2\n[spike]\nshort_window = \"1s\"\nlong_window = \"60s\"\n\
         bucket = \"1s\"\nwarmup_buckets = 4\n",
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut pc = PollerConfig::new(&format!("redis://{addr}"));
        pc.clients_every = 2;
        let mut poller = Poller::new(pc).unwrap();
        let mut detector = Detector::new(config);
        let t0 = Instant::now();
        // A steady workload: a client connecting, PINGing and leaving 5 times a second.
        let stop = CancellationToken::new();
        let steady = tokio::spawn({
            let stop = stop.clone();
            async move {
                for _ in 0..1_000 {
                    if stop.is_cancelled() {
                        break;
                    }
                    if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
                        use tokio::io::AsyncWriteExt;
                        let _ = s.write_all(b"PING\r\n").await;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        });
        let quiet = watch_for(&mut poller, &mut detector, Duration::from_secs(8), t0).await;
        assert!(quiet.is_empty(), "a steady workload raised {quiet:?}");

        // A flood: 64 in flight from 32 addresses for 3 s.
        let flood_at = t0.elapsed();
        let mut spec = AttackSpec::new(
            addr,
            Mode::Flood(FloodSpec {
                concurrency: 64,
                ..FloodSpec::default()
            }),
        );
        spec.duration = Duration::from_secs(3);
        spec.sources = 32;
        let flood = tokio::spawn(async move {
            attack::run(&spec, CancellationToken::new(), Arc::new(Counters::new())).await
        });
        let during = watch_for(&mut poller, &mut detector, Duration::from_secs(3), t0).await;
        flood.await.unwrap().unwrap();
        let after = watch_for(&mut poller, &mut detector, Duration::from_secs(6), t0).await;
        let seen = raised(&during, AlertId::ConnectionRateSpike)
            .or_else(|| raised(&after, AlertId::ConnectionRateSpike))
            .unwrap_or_else(|| panic!("the flood was not seen: {during:?} {after:?}"));
        eprintln!("flood seen {:?} after it started", seen - flood_at);
        assert!(
            resolved(&after, AlertId::ConnectionRateSpike),
            "the spike did not resolve: {after:?}"
        );

        // A hoard of 285 silent connections against maxclients 300 (95%), for 4 s.
        let hoard_at = t0.elapsed();
        let mut spec = AttackSpec::new(
            addr,
            Mode::Hoard(HoardSpec {
                connections: 285,
                ..HoardSpec::default()
            }),
        );
        spec.duration = Duration::from_secs(4);
        spec.sources = 16;
        let hoard = tokio::spawn(async move {
            attack::run(&spec, CancellationToken::new(), Arc::new(Counters::new())).await
        });
        let during = watch_for(&mut poller, &mut detector, Duration::from_secs(4), t0).await;
        hoard.await.unwrap().unwrap();
        let after = watch_for(&mut poller, &mut detector, Duration::from_secs(4), t0).await;
        let seen = raised(&during, AlertId::ClientsNearMax)
            .unwrap_or_else(|| panic!("the hoard was not seen: {during:?}"));
        // The alert names who holds the connections: one of the hoard's 127.100.x.y.
        let named = during.iter().any(|(_, e)| {
            matches!(e,
            Event::Raised { id: AlertId::ClientsNearMax, summary, .. }
                if summary.contains("top source 127.100."))
        });
        assert!(named, "the hoard's top source is not named: {during:?}");
        eprintln!("hoard seen {:?} after it started", seen - hoard_at);
        assert!(
            during.iter().any(|(_, e)| matches!(e,
                Event::Raised { id: AlertId::ClientsNearMax, severity, .. }
                    if *severity == moat_watch::detect::Severity::Critical)),
            "95% of maxclients is critical: {during:?}"
        );
        assert!(
            resolved(&after, AlertId::ClientsNearMax),
            "clients_near_max did not resolve: {after:?}"
        );
        stop.cancel();
        steady.await.unwrap();
    });
}
