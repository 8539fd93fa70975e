//! The webhook against real HTTP receivers the tests start on loopback: the body carries
//! the event, the Redis and the host; a 500 is retried until a 200; a 400 is not retried; a
//! receiver that accepts and never answers keeps the queue bounded, counts the drops, and
//! cannot hold up shutdown past its grace.
#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use moat_watch::detect::{AlertId, Event, Severity};
use moat_watch::sink::webhook::{Webhook, WebhookConfig, WebhookStats};

/// A real HTTP receiver: answers the n-th POST (from 0) with `status(n)` and keeps the bodies.
struct Receiver {
    addr: SocketAddr,
    bodies: Arc<Mutex<Vec<serde_json::Value>>>,
    hits: Arc<AtomicU32>,
}

impl Receiver {
    fn start(status: fn(u32) -> u16) -> Self {
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let hits = Arc::new(AtomicU32::new(0));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (b, h) = (Arc::clone(&bodies), Arc::clone(&hits));
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let app = axum::Router::new().route(
                    "/hook",
                    axum::routing::post(move |body: String| {
                        let n = h.fetch_add(1, Ordering::SeqCst);
                        if let Ok(v) = serde_json::from_str(&body) {
                            b.lock().unwrap().push(v);
                        }
                        async move { axum::http::StatusCode::from_u16(status(n)).unwrap() }
                    }),
                );
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
        });
        Self { addr, bodies, hits }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }
}

fn raised() -> Event {
    Event::Raised {
        id: AlertId::RejectedConnections,
        severity: Severity::Critical,
        summary: "rejected connections (maxclients reached)".into(),
        value: 12.0,
        threshold: 0.0,
    }
}

fn quick() -> WebhookConfig {
    WebhookConfig {
        timeout: Duration::from_secs(2),
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        ..WebhookConfig::default()
    }
}

fn start(urls: &[String], config: WebhookConfig) -> Webhook {
    Webhook::start(
        urls,
        config,
        "redis://***@127.0.0.1:6379".into(),
        "watch-host".into(),
    )
    .unwrap()
}

/// Waits (at most ~10 s, in 20 ms steps) until `done` holds for the webhook's counters.
fn wait_for(hook: &Webhook, done: impl Fn(&WebhookStats) -> bool) -> WebhookStats {
    for _ in 0..500 {
        let s = hook.stats();
        if done(&s) {
            return s;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    hook.stats()
}

#[test]
fn the_body_carries_the_event_the_redis_and_the_host() {
    let rx = Receiver::start(|_| 200);
    let hook = start(&[rx.url()], quick());
    hook.send(&raised());
    hook.send(&Event::Resolved {
        id: AlertId::RejectedConnections,
        after: Duration::from_secs(63),
    });
    let s = wait_for(&hook, |s| s.sent == 2);
    assert_eq!(s.sent, 2, "{s:?}");
    let bodies = rx.bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 2);
    let r = &bodies[0];
    assert_eq!(r["event"], "raised");
    assert_eq!(r["id"], "rejected_connections");
    assert_eq!(r["severity"], "critical");
    assert_eq!(r["value"], 12.0);
    assert_eq!(r["threshold"], 0.0);
    assert!(r["summary"].as_str().unwrap().contains("maxclients"));
    assert!(r["unix_time"].as_f64().unwrap() > 1.7e9);
    assert_eq!(r["redis"], "redis://***@127.0.0.1:6379");
    assert_eq!(r["host"], "watch-host");
    assert_eq!(bodies[1]["event"], "resolved");
    assert_eq!(bodies[1]["after"], "1m 3s");
    let report = hook.shutdown(Duration::from_secs(1));
    assert_eq!(report.lost, 0);
    assert_eq!(report.stats.failed + report.stats.dropped, 0);
}

#[test]
fn a_500_is_retried_until_the_receiver_takes_it() {
    let rx = Receiver::start(|n| if n < 2 { 500 } else { 200 });
    let hook = start(&[rx.url()], quick());
    hook.send(&raised());
    let s = wait_for(&hook, |s| s.sent == 1);
    assert_eq!(s.sent, 1, "{s:?}");
    assert_eq!(s.retried, 2, "{s:?}");
    assert_eq!(s.failed, 0, "{s:?}");
    assert_eq!(rx.hits.load(Ordering::SeqCst), 3);
    // Every attempt carried the same event.
    let bodies = rx.bodies.lock().unwrap().clone();
    assert!(bodies.iter().all(|b| b == &bodies[0]));
    hook.shutdown(Duration::from_secs(1));
}

#[test]
fn a_400_is_not_retried() {
    let rx = Receiver::start(|_| 400);
    let hook = start(&[rx.url()], quick());
    hook.send(&raised());
    let s = wait_for(&hook, |s| s.failed == 1);
    assert_eq!(s.failed, 1, "{s:?}");
    assert_eq!(s.retried, 0, "{s:?}");
    assert_eq!(s.sent, 0, "{s:?}");
    // A second event still goes out (one refusal does not stop the sink).
    hook.send(&raised());
    let s = wait_for(&hook, |s| s.failed == 2);
    assert_eq!(s.failed, 2, "{s:?}");
    assert_eq!(rx.hits.load(Ordering::SeqCst), 2);
    hook.shutdown(Duration::from_secs(1));
}

#[test]
fn a_receiver_that_never_answers_costs_a_bounded_queue_and_a_bounded_shutdown() {
    // Accepts connections and never reads or answers.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().take(64) {
            held.push(s);
        }
        std::thread::sleep(Duration::from_secs(120));
    });
    // Each attempt waits its whole timeout, so the thread takes one event and sits on it
    // while the 200 are queued.
    let config = WebhookConfig {
        queue_cap: 8,
        timeout: Duration::from_secs(1),
        max_attempts: 3,
        ..quick()
    };
    let hook = start(&[format!("http://{addr}/hook")], config);
    for _ in 0..200 {
        hook.send(&raised());
        assert!(hook.stats().queued <= 8);
    }
    let s = hook.stats();
    assert!(s.queued <= 8, "{s:?}");
    // 200 sent into 8 slots (and at most one in flight).
    assert!(s.dropped >= 200 - 8 - 1, "{s:?}");
    assert_eq!(s.sent, 0);
    // Shutdown gives up after its grace even though the receiver never answers; run it on
    // a thread so a hang fails the test instead of stalling it (the bound is 100x the
    // grace: a hang, not a speed, is what this checks).
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(hook.shutdown(Duration::from_millis(500))).unwrap());
    let report = rx
        .recv_timeout(Duration::from_secs(50))
        .expect("shutdown returned");
    assert!(report.lost >= 1, "{report:?}");
    assert_eq!(report.stats.queued, 0, "{report:?}");
    assert_eq!(report.stats.sent, 0, "{report:?}");
    // Every event is accounted for: dropped, failed or (none) sent.
    assert_eq!(
        report.stats.dropped + report.stats.failed,
        200,
        "{report:?}"
    );
}

#[test]
fn bad_urls_are_refused_at_start() {
    for bad in ["ftp://x/y", "localhost:9/hook", "http://"] {
        let err = Webhook::start(
            &[bad.to_owned()],
            WebhookConfig::default(),
            String::new(),
            String::new(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("http://"), "{err}");
    }
}

#[test]
fn an_https_url_on_a_plain_http_receiver_fails_once_without_retries() {
    // The TLS handshake meets plain HTTP: a setup error that would recur, not a blip.
    let rx = Receiver::start(|_| 200);
    let hook = start(&[format!("https://{}/hook", rx.addr)], quick());
    hook.send(&raised());
    let s = wait_for(&hook, |s| s.failed == 1);
    assert_eq!(s.failed, 1, "{s:?}");
    assert_eq!(s.retried, 0, "{s:?}");
    assert_eq!(rx.hits.load(Ordering::SeqCst), 0);
    hook.shutdown(Duration::from_secs(1));
}
