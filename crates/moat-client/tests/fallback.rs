//! `get_or_fallback` against a real redis-server that is killed and restarted: last-known
//! values are served marked stale, unknown keys get the caller's fallback, and fresh values
//! return with Redis.

mod common;

use std::time::Duration;

use moat_client::Source;
use moat_testkit::RedisServer;

use common::{builder, until_ok};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_values_are_served_and_marked_while_redis_is_down() {
    let mut server = RedisServer::start().expect("redis");
    let client = builder(&server)
        .stale_cache(100, Duration::from_secs(60))
        .build()
        .expect("client");
    assert!(until_ok(&client, Duration::from_secs(5)).await);
    let _: () = client
        .query(redis::cmd("SET").arg("price").arg("9.99"))
        .await
        .expect("SET");
    let fresh = client
        .get_or_fallback::<Option<String>>("price", || None)
        .await
        .expect("GET");
    assert_eq!(fresh.value.as_deref(), Some("9.99"));
    assert_eq!(fresh.source, Source::Redis);
    assert!(!fresh.is_degraded());

    server.kill9();
    for _ in 0..10 {
        let stale = client
            .get_or_fallback::<Option<String>>("price", || Some("fallback".into()))
            .await
            .expect("served stale");
        assert_eq!(stale.value.as_deref(), Some("9.99"));
        assert!(matches!(stale.source, Source::Stale { .. }), "{stale:?}");
    }
    let unknown = client
        .get_or_fallback::<Option<String>>("never-read", || Some("fallback".into()))
        .await
        .expect("fallback");
    assert_eq!(unknown.value.as_deref(), Some("fallback"));
    assert_eq!(unknown.source, Source::Fallback);
    let stats = client.stats();
    assert_eq!((stats.served_stale, stats.served_fallback), (10, 1));

    server.restart().expect("restart");
    assert!(until_ok(&client, Duration::from_secs(10)).await);
    let _: () = client
        .query(redis::cmd("SET").arg("price").arg("10.49"))
        .await
        .expect("SET");
    let back = client
        .get_or_fallback::<Option<String>>("price", || None)
        .await
        .expect("GET");
    assert_eq!(
        (back.value.as_deref(), back.source),
        (Some("10.49"), Source::Redis)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_reply_is_not_hidden_behind_a_stale_value() {
    let server = RedisServer::start().expect("redis");
    let client = builder(&server)
        .stale_cache(100, Duration::from_secs(60))
        .build()
        .expect("client");
    let _: () = client
        .query(redis::cmd("RPUSH").arg("list").arg("x"))
        .await
        .map(|_: i64| ())
        .expect("RPUSH");
    let e = client
        .get_or_fallback::<Option<String>>("list", || None)
        .await
        .expect_err("WRONGTYPE");
    assert!(!e.is_unavailable(), "{e:?}");
}
