//! The pool against a real redis-server: never more connections than its size, never
//! opened faster than its cap, a clear error when exhausted, and a bounded backlog.

mod common;

use std::time::{Duration, Instant};

use moat_client::{Applied, ClientError};
use moat_testkit::RedisServer;

use common::{builder, until_ok};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_never_exceeds_its_size() {
    let server = RedisServer::start().expect("redis");
    let client = builder(&server)
        .max_size(3)
        .backlog(100)
        .pool_wait_timeout(Duration::from_secs(2))
        .command_timeout(Duration::from_secs(3))
        .build()
        .expect("client");
    assert!(until_ok(&client, Duration::from_secs(5)).await);
    let received_before = server.info_u64("total_connections_received").expect("INFO");

    let tasks: Vec<_> = (0..30)
        .map(|i| {
            let c = client.clone();
            tokio::spawn(async move {
                for j in 0..20 {
                    let _: () = c
                        .query(redis::cmd("SET").arg(format!("k{i}")).arg(j))
                        .await
                        .expect("SET");
                }
            })
        })
        .collect();
    let mut samples = 0;
    let mut most = 0;
    for _ in 0..20 {
        // The helper's own connection counts too.
        most = most.max(server.connected_clients().expect("INFO") - 1);
        samples += 1;
        assert!(client.connections() <= 3);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for t in tasks {
        t.await.expect("task");
    }
    assert!(most <= 3, "Redis saw {most} client connections");
    let opened = server.info_u64("total_connections_received").expect("INFO")
        - received_before
        - samples
        - 1;
    assert!(opened <= 3, "{opened} connections opened for a pool of 3");
    assert!(client.stats().ok >= 600, "{:?}", client.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_pool_fails_clearly_and_connections_open_at_a_capped_pace() {
    let server = RedisServer::start().expect("redis");
    let per_sec = 4;
    let client = builder(&server)
        .max_size(12)
        .min_idle(0)
        .max_connects_per_sec(per_sec)
        .pool_wait_timeout(Duration::from_millis(100))
        .command_timeout(Duration::from_secs(4))
        .build()
        .expect("client");
    let received_before = server.info_u64("total_connections_received").expect("INFO");
    let started = Instant::now();
    // Twelve blocking commands at once: each needs its own connection.
    let blockers: Vec<_> = (0..12)
        .map(|i| {
            let c = client.clone();
            tokio::spawn(async move {
                c.query::<Option<(String, String)>>(
                    redis::cmd("BLPOP").arg(format!("none{i}")).arg(1),
                )
                .await
            })
        })
        .collect();
    let mut results = Vec::new();
    for b in blockers {
        results.push(b.await.expect("task"));
    }
    let elapsed = started.elapsed();
    let opened = server.info_u64("total_connections_received").expect("INFO") - received_before - 1;
    let cap = (elapsed.as_secs_f64() * f64::from(per_sec)).ceil() as u64 + u64::from(per_sec);
    assert!(
        opened <= cap,
        "{opened} connections in {elapsed:?}, cap {cap}"
    );
    assert!(opened <= 12);
    // Those that found the pool full and could not open a connection in time said so.
    for r in &results {
        if let Err(e) = r {
            assert_eq!(e.applied(), Applied::No, "{e:?}");
        }
    }

    // All connections busy: the next command waits the pool wait timeout, then fails.
    let small = builder(&server)
        .max_size(2)
        .pool_wait_timeout(Duration::from_millis(100))
        .command_timeout(Duration::from_secs(3))
        .build()
        .expect("client");
    let busy: Vec<_> = (0..2)
        .map(|i| {
            let c = small.clone();
            tokio::spawn(async move {
                c.query::<Option<(String, String)>>(
                    redis::cmd("BLPOP").arg(format!("busy{i}")).arg(1),
                )
                .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let e = small
        .query::<Option<String>>(redis::cmd("GET").arg("k"))
        .await
        .expect_err("pool exhausted");
    assert!(
        matches!(e, ClientError::PoolTimeout { max_size: 2, .. }),
        "{e:?}"
    );
    assert_eq!(e.applied(), Applied::No);
    assert!(e.to_string().contains("pool exhausted"), "{e}");
    for b in busy {
        b.await.expect("task").expect("BLPOP timed out normally");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backlog_stays_bounded_while_redis_does_not_answer() {
    let server = RedisServer::start().expect("redis");
    let client = builder(&server)
        .max_size(1)
        .backlog(2)
        .command_timeout(Duration::from_millis(400))
        .build()
        .expect("client");
    assert!(until_ok(&client, Duration::from_secs(5)).await);
    server.pause();
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move { c.query::<Option<String>>(redis::cmd("GET").arg("k")).await })
        })
        .collect();
    let mut full = 0;
    for t in tasks {
        match t.await.expect("task") {
            Err(ClientError::BacklogFull { capacity: 2 }) => full += 1,
            Err(e) => assert!(e.is_unavailable(), "{e:?}"),
            Ok(v) => panic!("a frozen server answered {v:?}"),
        }
    }
    server.resume();
    // One running plus two waiting; the other seven were turned away at once.
    assert!(full >= 7, "{full} turned away");
    assert!(until_ok(&client, Duration::from_secs(10)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_close_and_min_idle_is_kept() {
    let server = RedisServer::start().expect("redis");
    let lean = builder(&server)
        .min_idle(0)
        .idle_timeout(Duration::from_millis(100))
        .build()
        .expect("client");
    let kept = builder(&server).min_idle(2).build().expect("client");
    let short = builder(&server)
        .min_idle(1)
        .max_lifetime(Duration::from_millis(300), 0.5)
        .build()
        .expect("client");
    assert!(until_ok(&lean, Duration::from_secs(5)).await);
    assert!(until_ok(&kept, Duration::from_secs(5)).await);
    let received_before = server.info_u64("total_connections_received").expect("INFO");
    // The housekeeping runs twice a second; look for up to 5 s.
    let mut settled = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if lean.connections() == 0 && kept.connections() == 2 {
            settled = true;
            break;
        }
    }
    assert!(
        settled,
        "idle: {} (want 0), min idle: {} (want 2)",
        lean.connections(),
        kept.connections()
    );
    // Lifetimes of 150-300 ms: the idle connection is replaced as it expires.
    let mut replaced = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let received = server.info_u64("total_connections_received").expect("INFO");
        // Each look opens one connection of its own.
        if received - received_before > 2 * 50 {
            break;
        }
        if short.stats().connects_ok >= 4 {
            replaced = true;
            break;
        }
    }
    assert!(replaced, "{:?}", short.stats());
    assert!(short.connections() <= 1);
}
