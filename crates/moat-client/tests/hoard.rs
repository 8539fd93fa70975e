//! moat-client against a real redis-server whose `maxclients` is filled by a hoard of idle
//! connections: every command fails saying it was not applied (an INCR counter stays at
//! zero), the client opens connections at a capped, backed-off pace (Redis's own
//! `rejected_connections` counts them), and it serves again once the hoard lets go.

mod common;

use std::time::{Duration, Instant};

use moat_client::Applied;
use moat_testkit::RedisServer;

use common::{Hoard, builder, read_int, until_ok};

const MAXCLIENTS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_sees_few_attempts_and_no_incr_is_applied() {
    let server = RedisServer::builder()
        .config(format!("maxclients {MAXCLIENTS}"))
        .start()
        .expect("redis");
    let rejected_before = server.info_u64("rejected_connections").expect("INFO");
    let hoard = Hoard::fill(&server, MAXCLIENTS);
    // Hoard::fill saw one refusal, its own probe.
    let fill_refusals = 1;

    let per_sec = 5;
    let client = builder(&server)
        .max_size(4)
        .min_idle(0)
        .max_connects_per_sec(per_sec)
        .build()
        .expect("client");
    let started = Instant::now();
    let mut errors = Vec::new();
    // Bounded in count and time: the app keeps asking every 10 ms for ~2 s.
    for _ in 0..400 {
        if started.elapsed() > Duration::from_secs(2) {
            break;
        }
        match client.query::<i64>(redis::cmd("INCR").arg("hits")).await {
            Ok(n) => panic!("served by a full Redis: {n}"),
            Err(e) => errors.push(e),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed();
    assert!(!errors.is_empty());
    assert!(
        errors.iter().all(|e| e.applied() == Applied::No),
        "every failure proves the INCR was not applied: {:?}",
        errors.iter().find(|e| e.applied() != Applied::No)
    );
    let stats = client.stats();
    hoard.release();

    let rejected =
        server.info_u64("rejected_connections").expect("INFO") - rejected_before - fill_refusals;
    // Capped at `per_sec` a second (plus the bucket's burst), and backing off below that.
    let cap = (elapsed.as_secs_f64() * f64::from(per_sec)).ceil() as u64 + u64::from(per_sec);
    assert!(
        rejected <= cap,
        "{rejected} attempts in {elapsed:?}, cap {cap}"
    );
    assert!(rejected >= 1, "the client did try");
    assert!(
        (1..=cap).contains(&stats.connects_failed),
        "{stats:?}, cap {cap}"
    );
    assert!(
        errors.len() as u64 > 2 * rejected,
        "{} commands failed on {rejected} attempts: most failed without a connect",
        errors.len()
    );

    // Served again once the hoard goes, and the INCRs refused meanwhile were never applied.
    assert!(until_ok(&client, Duration::from_secs(10)).await);
    assert_eq!(read_int(&server, "hits"), 0);
    let n: i64 = client
        .query(redis::cmd("INCR").arg("hits"))
        .await
        .expect("INCR");
    assert_eq!(n, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_idempotent_command_refused_at_connect_is_retried_and_applied_once() {
    let server = RedisServer::builder()
        .config(format!("maxclients {MAXCLIENTS}"))
        .start()
        .expect("redis");
    let hoard = Hoard::fill(&server, MAXCLIENTS);
    let client = builder(&server)
        .min_idle(0)
        .command_timeout(Duration::from_secs(3))
        .retries(10, Duration::from_millis(50), Duration::from_millis(200))
        .breaker(moat_client::BreakerSettings {
            consecutive_failures: 100,
            ..moat_client::BreakerSettings::default()
        })
        .build()
        .expect("client");
    // Let go of the hoard while the INCR is failing at connect and retrying.
    let releaser = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        hoard.release();
    });
    let n: i64 = client
        .query(redis::cmd("INCR").arg("once"))
        .await
        .expect("INCR retried until Redis had room");
    releaser.await.expect("releaser");
    assert_eq!(n, 1);
    assert_eq!(read_int(&server, "once"), 1);
    assert!(client.stats().retries >= 1, "{:?}", client.stats());
}
