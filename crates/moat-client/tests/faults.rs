//! moat-client against a real redis-server that is killed and restarted, frozen (SIGSTOP),
//! paused (`CLIENT PAUSE`) and slow (`DEBUG SLEEP`): it recovers, the breaker opens and
//! closes, and a command that may have reached the server is never sent twice (INCR counts).

mod common;

use std::time::Duration;

use moat_client::{Applied, ClientError, Idempotency, Transition};
use moat_testkit::RedisServer;

use common::{builder, read_int, transitions, until_ok};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovers_after_kill_and_restart_and_the_breaker_opens_and_closes() {
    let mut server = RedisServer::start().expect("redis");
    let (b, seen) = transitions(builder(&server));
    let client = b.build().expect("client");
    assert!(until_ok(&client, Duration::from_secs(5)).await);

    server.kill9();
    let mut errors = Vec::new();
    for _ in 0..20 {
        match client.query::<i64>(redis::cmd("INCR").arg("n")).await {
            Ok(_) => panic!("a dead server answered"),
            Err(e) => errors.push(e),
        }
    }
    // A command on a connection open when the server died may have reached it; once one
    // broke the idle ones are dropped too, and every later command fails before reaching
    // Redis, and says so.
    let maybe = errors
        .iter()
        .take_while(|e| e.applied() == Applied::Maybe)
        .count();
    assert!(maybe <= 1, "{errors:?}");
    assert!(
        errors[maybe..].iter().all(|e| e.applied() == Applied::No),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| matches!(e, ClientError::CircuitOpen { .. })),
        "the breaker failed commands fast: {errors:?}"
    );
    assert!(
        seen.lock()
            .expect("not poisoned")
            .contains(&Transition::Opened)
    );

    server.restart().expect("restart");
    assert!(
        until_ok(&client, Duration::from_secs(10)).await,
        "recovered"
    );
    let seen = seen.lock().expect("not poisoned").clone();
    assert_eq!(seen.last(), Some(&Transition::Closed), "{seen:?}");
    assert!(client.stats().breaker_opened >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incr_that_timed_out_is_never_sent_again() {
    let server = RedisServer::builder()
        .config("enable-debug-command local")
        .start()
        .expect("redis");
    let client = builder(&server)
        .command_timeout(Duration::from_millis(300))
        .build()
        .expect("client");
    assert!(until_ok(&client, Duration::from_secs(5)).await);

    // Redis sleeps 1 s in a command of another client: ours reaches it and waits.
    let addr = server.addr();
    let sleeper = std::thread::spawn(move || {
        let mut c = redis::Client::open(format!("redis://{addr}/"))
            .expect("url")
            .get_connection()
            .expect("connect");
        redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg("1")
            .exec(&mut c)
            .expect("DEBUG SLEEP");
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let err = client
        .query::<i64>(redis::cmd("INCR").arg("counter"))
        .await
        .expect_err("timed out");
    assert!(matches!(err, ClientError::Timeout { .. }), "{err:?}");
    assert_eq!(err.applied(), Applied::Maybe);
    // The caller says this INCRBY may not repeat either, whatever happens. Its connection
    // went with the timeout, and a new one cannot open while Redis sleeps: refused at
    // connect (not applied), or sent and timed out (maybe).
    let err2 = client
        .query_with::<i64>(
            redis::cmd("INCRBY").arg("counter").arg(10),
            Idempotency::NotIdempotent,
        )
        .await
        .expect_err("Redis is asleep");
    let expected = match err2.applied() {
        Applied::No => 1,
        Applied::Maybe => 11,
        Applied::Yes => panic!("{err2:?}"),
    };
    sleeper.join().expect("sleeper");

    // Once Redis woke up it ran each sent command exactly once, never twice.
    assert!(until_ok(&client, Duration::from_secs(5)).await);
    assert_eq!(read_int(&server, "counter"), expected, "{err2:?}");

    let n: i64 = client
        .query(redis::cmd("GET").arg("counter"))
        .await
        .expect("GET");
    assert_eq!(n, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_opens_the_breaker_and_a_thawed_one_closes_it() {
    let server = RedisServer::start().expect("redis");
    let (b, seen) = transitions(builder(&server).command_timeout(Duration::from_millis(150)));
    let client = b.build().expect("client");
    assert!(until_ok(&client, Duration::from_secs(5)).await);

    server.pause();
    let mut kinds = Vec::new();
    for _ in 0..10 {
        let e = client
            .query::<i64>(redis::cmd("INCR").arg("frozen"))
            .await
            .expect_err("frozen");
        kinds.push(e.kind_label());
    }
    server.resume();
    assert!(kinds.contains(&"timeout"), "{kinds:?}");
    assert!(kinds.contains(&"circuit_open"), "{kinds:?}");
    assert!(until_ok(&client, Duration::from_secs(10)).await);
    let seen = seen.lock().expect("not poisoned").clone();
    assert!(seen.contains(&Transition::Opened), "{seen:?}");
    assert_eq!(seen.last(), Some(&Transition::Closed), "{seen:?}");
    // Each INCR that timed out was sent at most once.
    let timeouts = kinds.iter().filter(|k| **k == "timeout").count();
    let count = read_int(&server, "frozen");
    assert!(
        usize::try_from(count).expect("non-negative") <= timeouts,
        "{count} INCRs applied for {timeouts} sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_pause_holds_commands_and_they_finish_when_it_ends() {
    let server = RedisServer::start().expect("redis");
    let client = builder(&server)
        .command_timeout(Duration::from_secs(3))
        .build()
        .expect("client");
    assert!(until_ok(&client, Duration::from_secs(5)).await);

    server
        .command(&["CLIENT", "PAUSE", "400", "WRITE"])
        .expect("CLIENT PAUSE");
    // Writes wait out the pause (within the command timeout) and run once.
    let n: i64 = client
        .query(redis::cmd("INCR").arg("paused"))
        .await
        .expect("INCR after the pause");
    assert_eq!(n, 1);
    // A command timeout shorter than the pause fails, and says it may have run.
    server
        .command(&["CLIENT", "PAUSE", "600", "WRITE"])
        .expect("CLIENT PAUSE");
    let short = builder(&server)
        .command_timeout(Duration::from_millis(200))
        .build()
        .expect("client");
    let e = short
        .query::<i64>(redis::cmd("INCR").arg("paused"))
        .await
        .expect_err("paused");
    assert_eq!(e.applied(), Applied::Maybe, "{e:?}");
    assert!(until_ok(&client, Duration::from_secs(5)).await);
    let n: i64 = client
        .query(redis::cmd("INCR").arg("paused"))
        .await
        .expect("INCR");
    // 1, then the one that timed out (Redis drops a postponed command whose client left,
    // so it ran once or not at all), then this one: never twice.
    assert!((2..=3).contains(&n), "{n}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_refuses_before_running_so_an_incr_is_retried_and_applied_once() {
    let server = RedisServer::builder()
        .config("busy-reply-threshold 50")
        .start()
        .expect("redis");
    let client = builder(&server)
        .command_timeout(Duration::from_secs(4))
        .retries(20, Duration::from_millis(50), Duration::from_millis(200))
        .breaker(moat_client::BreakerSettings {
            consecutive_failures: 100,
            ..moat_client::BreakerSettings::default()
        })
        .build()
        .expect("client");
    assert!(until_ok(&client, Duration::from_secs(5)).await);

    // A script that never ends: past the threshold Redis answers everyone else -BUSY.
    let url = format!("redis://{}/", server.addr());
    let script_url = url.clone();
    let script = std::thread::spawn(move || {
        let mut c = redis::Client::open(script_url)
            .expect("url")
            .get_connection()
            .expect("connect");
        // Ends with an error once killed.
        let _ = redis::cmd("EVAL")
            .arg("local i = 0 while true do i = i + 1 end")
            .arg(0)
            .exec(&mut c);
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        let mut c = redis::Client::open(url)
            .expect("url")
            .get_connection()
            .expect("connect");
        redis::cmd("SCRIPT")
            .arg("KILL")
            .exec(&mut c)
            .expect("SCRIPT KILL");
    });
    let n: i64 = client
        .query(redis::cmd("INCR").arg("busy"))
        .await
        .expect("INCR retried past BUSY");
    killer.join().expect("killer");
    script.join().expect("script");
    assert_eq!(n, 1);
    assert_eq!(read_int(&server, "busy"), 1);
    assert!(client.stats().retries >= 1, "{:?}", client.stats());
}
