//! The Prometheus exporter scraped over real HTTP while polling a real redis-server: the
//! redis_exporter names carry Redis's values, the host's view and the alerts are there, and
//! `promtool check metrics` accepts the page (skipped, saying why, without promtool).
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use moat_testkit::RedisServer;
use moat_watch::collect::poller::{Poller, PollerConfig};
use moat_watch::detect::{DetectConfig, Detector};
use moat_watch::sink::prometheus::{Exporter, WatcherStats};

/// `name{labels}` → value, for the page's sample lines.
fn parse(page: &str) -> HashMap<String, f64> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

fn scrape(url: String) -> (String, String) {
    let mut resp = ureq::get(&url).call().unwrap();
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (ctype, resp.body_mut().read_to_string().unwrap())
}

#[test]
fn a_scrape_shows_redis_under_redis_exporter_names_and_passes_promtool() {
    let redis = RedisServer::builder()
        .config("maxclients 123")
        .start()
        .unwrap();
    let url = format!("redis://{}", redis.addr());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let page = rt.block_on(async {
        let exporter = Exporter::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(exporter.clone().serve(listener));
        let mut poller = Poller::new(PollerConfig::new(&url)).unwrap();
        let mut detector = Detector::new(DetectConfig::default());
        let t0 = Instant::now();
        for i in 0..3u64 {
            let sample = poller.poll(t0 + Duration::from_secs(i)).await;
            detector.observe(&sample);
            let watcher = WatcherStats {
                polls: i + 1,
                polls_unreachable: 0,
                connects: poller.connects(),
                connect_attempts: poller.attempts(),
                last_poll_unix: 1.0e9,
            };
            exporter.update(&sample, &detector.active(), watcher, None);
        }
        let (ctype, page) =
            tokio::task::spawn_blocking(move || scrape(format!("http://{addr}/metrics")))
                .await
                .unwrap();
        assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
        page
    });
    let m = parse(&page);
    assert_eq!(m["redis_up"], 1.0, "{page}");
    assert_eq!(m["redis_config_maxclients"], 123.0, "{page}");
    assert_eq!(m["redis_max_clients"], 123.0, "{page}");
    let info = redis.info().unwrap();
    let received: f64 = info["total_connections_received"].parse().unwrap();
    // The watch's single connection plus the testkit's INFO just now, at most.
    assert!(
        (received - 1.0..=received).contains(&m["redis_connections_received_total"]),
        "{page}"
    );
    assert!(m["redis_connected_clients"] >= 1.0, "{page}");
    assert_eq!(m["redis_rejected_connections_total"], 0.0, "{page}");
    assert!(m["redis_memory_used_bytes"] > 0.0, "{page}");
    assert!(m.contains_key("redis_mem_clients_normal"), "{page}");
    assert!(m["redis_net_input_bytes_total"] > 0.0, "{page}");
    assert!(m.contains_key("redis_evicted_clients_total"), "{page}");
    // Redis 7.0 has no acl_access_denied_auth: absent, not 0.
    if !info.contains_key("acl_access_denied_auth") {
        assert!(
            !page.contains("redis_acl_access_denied_auth_total"),
            "{page}"
        );
    }
    // Redis runs here: the host's view.
    assert!(m["moat_watch_redis_open_fds"] > 0.0, "{page}");
    assert!(m["moat_watch_redis_max_fds"] >= m["moat_watch_redis_open_fds"]);
    assert!(
        m.contains_key("moat_watch_redis_cpu_seconds_total"),
        "{page}"
    );
    assert!(
        m.contains_key("moat_watch_tcp_passive_opens_total"),
        "{page}"
    );
    assert_eq!(m["moat_watch_accept_queue_depth"], 0.0, "{page}");
    assert_eq!(m["moat_watch_polls_total"], 3.0);
    assert_eq!(m["moat_watch_redis_connects_total"], 1.0);
    assert_eq!(
        m["moat_watch_alert{alert=\"clients_near_max\",severity=\"warning\"}"], 0.0,
        "{page}"
    );
    assert!(!page.contains("moat_watch_webhook_"), "{page}");
    promtool(&page);
}

/// `promtool check metrics` on the page; skipped (with the reason printed) without it.
fn promtool(page: &str) {
    use std::io::Write;
    let path = "/usr/bin/promtool";
    if !std::path::Path::new(path).exists() {
        eprintln!("skipping promtool check: {path} is not installed");
        return;
    }
    let mut child = std::process::Command::new(path)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool: {said}\n{page}");
    assert!(said.trim().is_empty(), "promtool lint: {said}");
}
