//! The monitoring connection against a real redis-server: one named connection for the
//! whole watch (it does not inflate `total_connections_received`), the signals filled in, the
//! host's view of a local Redis, and an unreachable Redis reported as such without a crash.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use moat_testkit::RedisServer;
use moat_watch::collect::poller::{Poller, PollerConfig};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn one_named_connection_reads_every_signal() {
    let redis = RedisServer::start().unwrap();
    let url = format!("redis://{}", redis.addr());
    runtime().block_on(async {
        let mut poller = Poller::new(PollerConfig::new(&url)).unwrap();
        let t0 = Instant::now();
        let first = poller.poll(t0).await;
        assert!(first.redis_reachable);
        let r = &first.redis;
        assert!(r.connected_clients.unwrap() >= 1);
        assert_eq!(r.maxclients, Some(10_000));
        assert!(r.used_memory.unwrap() > 0);
        assert_eq!(r.tcp_port, Some(redis.addr().port()));
        // Redis runs here: the host's view of it.
        let h = &first.host;
        assert!(h.passive_opens.is_some());
        let (fds, limit) = h.fds.expect("the Redis process's fds");
        assert!(fds > 0 && limit >= fds, "{fds} of {limit}");
        assert!(h.rss_bytes.unwrap() > 0);
        assert_eq!(h.accept_queue.map(|(queued, _)| queued), Some(0));
        // Polls go over the same connection: Redis counts no new ones.
        let total = r.total_connections_received.unwrap();
        for i in 1..=5 {
            let s = poller.poll(t0 + Duration::from_secs(i)).await;
            assert_eq!(s.redis.total_connections_received, Some(total));
        }
        assert_eq!(poller.connects(), 1);
        // It is named, so operators see who it is.
        let list = redis.command(&["CLIENT", "LIST"]).unwrap();
        assert!(String::from_utf8_lossy(&list).contains("name=moat-watch"));
    });
}

#[test]
fn an_unreachable_redis_is_a_signal_and_reconnects_back_off() {
    let redis = RedisServer::start().unwrap();
    let url = format!("redis://{}", redis.addr());
    redis.stop();
    runtime().block_on(async {
        let mut config = PollerConfig::new(&url);
        config.connect_timeout = Duration::from_millis(500);
        let mut poller = Poller::new(config).unwrap();
        let t0 = Instant::now();
        let s = poller.poll(t0).await;
        assert!(!s.redis_reachable);
        assert_eq!(s.redis.connected_clients, None);
        // Within the backoff (0.5 s after the first failure) no new attempt is made.
        let s = poller.poll(t0 + Duration::from_millis(100)).await;
        assert!(!s.redis_reachable);
        assert_eq!(poller.attempts(), 1);
        // After it, one more; then the delay doubles.
        poller.poll(t0 + Duration::from_millis(600)).await;
        assert_eq!(poller.attempts(), 2);
        poller.poll(t0 + Duration::from_millis(1500)).await;
        assert_eq!(poller.attempts(), 2, "the second delay is 1 s");
        poller.poll(t0 + Duration::from_millis(1700)).await;
        assert_eq!(poller.attempts(), 3);
        assert_eq!(poller.connects(), 0);
    });
}
