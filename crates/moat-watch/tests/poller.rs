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

/// Polls `url` `n` times, a second apart on the poller's clock; returns the last sample and
/// the connections the poller opened.
fn poll_n(url: &str, n: u64) -> (moat_watch::Sample, u64) {
    runtime().block_on(async {
        let mut poller = Poller::new(PollerConfig::new(url)).unwrap();
        let t0 = Instant::now();
        let mut last = None;
        for i in 0..n {
            last = Some(poller.poll(t0 + Duration::from_secs(i)).await);
        }
        (last.unwrap(), poller.connects())
    })
}

/// A redis-server started by hand: moat-testkit checks its servers with INFO, which this one
/// does not have. Killed on drop.
struct Bare {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Bare {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bare_redis(extra: &[&str]) -> Bare {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let port = moat_testkit::free_port();
    let child = std::process::Command::new(moat_testkit::redis_server_binary().unwrap())
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .arg("--dir")
        .arg(dir.path())
        .args(extra)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let bare = Bare {
        child,
        port,
        _dir: dir,
    };
    for _ in 0..500 {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let mut reply = [0u8; 7];
            if s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut reply).is_ok() {
                assert_eq!(&reply, b"+PONG\r\n");
                return bare;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("redis-server on {port} never answered");
}

#[test]
fn info_renamed_or_denied_is_a_refusal_not_an_outage() {
    let renamed = bare_redis(&["--rename-command", "INFO", ""]);
    let (s, connects) = poll_n(&format!("redis://127.0.0.1:{}", renamed.port), 4);
    assert!(s.redis_reachable);
    let why = s.redis_refused.expect("INFO renamed is a refusal");
    assert!(why.contains("unknown command"), "{why}");
    // Redis answered: the same connection is kept, no reconnect storm.
    assert_eq!(connects, 1);
    assert_eq!(s.redis.connected_clients, None);

    // A monitoring user whose ACL leaves INFO out.
    let denied = RedisServer::builder()
        .config("user watcher on >watcher-pw ~* &* +@all -info")
        .start()
        .unwrap();
    let (s, connects) = poll_n(&format!("redis://watcher:watcher-pw@{}", denied.addr()), 4);
    let why = s.redis_refused.expect("INFO denied by ACL is a refusal");
    assert!(
        why.contains("NOPERM") || why.contains("permission"),
        "{why}"
    );
    assert_eq!(connects, 1);
}

#[test]
fn a_missing_or_wrong_password_is_a_refusal() {
    let redis = RedisServer::builder()
        .password("s3cret-pw")
        .start()
        .unwrap();
    let (s, _) = poll_n(&format!("redis://{}", redis.addr()), 2);
    let why = s.redis_refused.expect("no password: NOAUTH");
    assert!(
        why.contains("NOAUTH") || why.contains("uthentication"),
        "{why}"
    );
    let (s, _) = poll_n(&format!("redis://:wrong@{}", redis.addr()), 2);
    let why = s.redis_refused.expect("wrong password");
    assert!(!why.contains("wrong@"), "{why}");
    assert!(s.redis_reachable);
    let (s, _) = poll_n(&format!("redis://:s3cret-pw@{}", redis.addr()), 2);
    assert_eq!(s.redis_refused, None);
    assert!(s.redis.connected_clients.is_some());
}
