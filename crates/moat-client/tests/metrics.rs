//! The client's series land in the registry the application passes, and the breaker
//! callback hears every change: against a loopback port nothing listens on, then a real
//! redis-server.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use moat_client::{Applied, BreakerSettings, Client, Transition};
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;

#[tokio::test]
async fn series_and_transitions_reach_the_application() {
    // A port that was free a moment ago: connections are refused.
    let port = moat_testkit::free_port();
    let mut registry = Registry::default();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let client = Client::builder(format!("redis://127.0.0.1:{port}/"))
        .min_idle(0)
        .command_timeout(Duration::from_millis(200))
        .breaker(BreakerSettings {
            consecutive_failures: 2,
            ..BreakerSettings::default()
        })
        .metrics(&mut registry)
        .on_breaker_transition(move |t| s.lock().expect("not poisoned").push(t))
        .build()
        .expect("client");
    for _ in 0..5 {
        let e = client
            .query::<String>(&redis::cmd("PING"))
            .await
            .expect_err("nothing listens");
        assert_eq!(e.applied(), Applied::No, "{e:?}");
    }
    let mut text = String::new();
    encode(&mut text, &registry).expect("encode");
    for series in [
        "moat_client_requests_total{outcome=\"connect\"}",
        "moat_client_connects_total{result=\"failed\"}",
        "moat_client_breaker_transitions_total{to=\"open\"} 1",
        "moat_client_command_duration_seconds_count 5",
        "moat_client_connections 0",
    ] {
        assert!(text.contains(series), "{series} missing from\n{text}");
    }
    assert_eq!(
        seen.lock().expect("not poisoned").as_slice(),
        &[Transition::Opened]
    );
    let stats = client.stats();
    assert_eq!((stats.ok, stats.errors, stats.breaker_opened), (0, 5, 1));
}
