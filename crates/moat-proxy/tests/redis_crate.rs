//! The `redis` crate, unmodified, through moat: its connect sequence (`CLIENT SETINFO`,
//! `SELECT` from the URL, `AUTH` from the URL) and its sync, multiplexed and managed
//! connections must all work as they do against Redis itself.

mod common;

use std::time::Duration;

use common::Stack;
use moat_proxy::config::UserConfig;
use moat_testkit::RedisServer;
use redis::{Commands, RedisResult};

/// Bound on every connect and reply, so a hang fails the test.
const TIMEOUT: Duration = Duration::from_secs(10);

fn sync_conn(url: &str) -> RedisResult<redis::Connection> {
    let client = redis::Client::open(url)?;
    let con = client.get_connection_with_timeout(TIMEOUT)?;
    con.set_read_timeout(Some(TIMEOUT))?;
    con.set_write_timeout(Some(TIMEOUT))?;
    Ok(con)
}

fn async_config() -> redis::AsyncConnectionConfig {
    redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(TIMEOUT))
        .set_response_timeout(Some(TIMEOUT))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// `GET key` in database `db`, straight from Redis.
fn redis_get_in_db(redis: &RedisServer, db: u32, key: &str) -> Vec<u8> {
    let script = "redis.call('SELECT', ARGV[1]); return redis.call('GET', KEYS[1])";
    redis
        .command(&["EVAL", script, "1", key, &db.to_string()])
        .expect("EVAL on redis")
}

#[test]
fn sync_connection_commands_and_pipelines() {
    let stack = Stack::start();
    let url = format!("redis://{}/", stack.addr());
    let mut con = sync_conn(&url).expect("redis crate connects through moat");

    let _: () = con.set("sync:k", "v1").expect("SET");
    let got: String = con.get("sync:k").expect("GET");
    assert_eq!(got, "v1");
    let binary: Vec<u8> = b"\r\n\0\xff$-1\r\n".to_vec();
    let _: () = con.set("sync:bin", &binary).expect("SET binary");
    let got: Vec<u8> = con.get("sync:bin").expect("GET binary");
    assert_eq!(got, binary);
    let n: i64 = con.incr("sync:n", 1).expect("INCR");
    assert_eq!(n, 1);
    let n: i64 = con.incr("sync:n", 41).expect("INCRBY");
    assert_eq!(n, 42);
    let missing: Option<String> = con.get("sync:missing").expect("GET missing");
    assert_eq!(missing, None);

    // A pipeline mixing forwarded and moat-local commands.
    let (a, b, pong, echo, n, len): (String, String, String, String, i64, i64) = redis::pipe()
        .set("sync:p1", "one")
        .ignore()
        .set("sync:p2", "two")
        .ignore()
        .get("sync:p1")
        .get("sync:p2")
        .cmd("PING")
        .cmd("ECHO")
        .arg("hello\r\nthere")
        .incr("sync:n", 1)
        .append("sync:p1", "+more")
        .query(&mut con)
        .expect("pipeline");
    assert_eq!(
        (a.as_str(), b.as_str(), pong.as_str(), echo.as_str(), n, len),
        ("one", "two", "PONG", "hello\r\nthere", 43, 8)
    );

    // Errors come back as errors and the connection stays usable.
    let err = con
        .incr::<_, _, i64>("sync:p1", 1)
        .expect_err("INCR on a non-integer fails");
    assert!(
        err.to_string().contains("not an integer"),
        "unexpected error: {err}"
    );
    let still: String = con.get("sync:p2").expect("GET after an error");
    assert_eq!(still, "two");

    // The crate's CLIENT SETINFO on connect was accepted (moat emulates it).
    let info: String = redis::cmd("CLIENT")
        .arg("INFO")
        .query(&mut con)
        .expect("CLIENT INFO");
    assert!(info.contains("lib-name=redis-rs"), "CLIENT INFO: {info}");

    // SELECT by hand moves this client only.
    let _: () = redis::cmd("SELECT")
        .arg(5)
        .query(&mut con)
        .expect("SELECT 5");
    let _: () = con.set("sync:in5", "five").expect("SET in db 5");
    let got: String = con.get("sync:in5").expect("GET in db 5");
    assert_eq!(got, "five");
    assert_eq!(
        redis_get_in_db(&stack.redis, 5, "sync:in5"),
        b"$4\r\nfive\r\n"
    );
    assert_eq!(redis_get_in_db(&stack.redis, 0, "sync:in5"), b"$-1\r\n");
    // Another connection is still in db 0.
    let mut other = sync_conn(&url).expect("second connection");
    let got: Option<String> = other.get("sync:in5").expect("GET from db 0");
    assert_eq!(got, None);
    let got: String = other.get("sync:p2").expect("GET from db 0");
    assert_eq!(got, "two");
    assert!(stack.redis_clients() <= 2);
}

#[test]
fn database_from_the_url() {
    let stack = Stack::start();
    let mut con = sync_conn(&format!("redis://{}/3", stack.addr())).expect("connect to db 3");
    let _: () = con.set("url:db", "three").expect("SET");
    let got: String = con.get("url:db").expect("GET");
    assert_eq!(got, "three");
    assert_eq!(
        redis_get_in_db(&stack.redis, 3, "url:db"),
        b"$5\r\nthree\r\n"
    );
    assert_eq!(redis_get_in_db(&stack.redis, 0, "url:db"), b"$-1\r\n");

    // The async connection honours the URL's database too.
    let rt = runtime();
    let addr = stack.addr();
    rt.block_on(async {
        let client = redis::Client::open(format!("redis://{addr}/7")).expect("url");
        let mut con = client
            .get_multiplexed_async_connection_with_config(&async_config())
            .await
            .expect("async connect to db 7");
        let _: () = redis::AsyncCommands::set(&mut con, "url:db", "seven")
            .await
            .expect("SET");
        let got: String = redis::AsyncCommands::get(&mut con, "url:db")
            .await
            .expect("GET");
        assert_eq!(got, "seven");
    });
    assert_eq!(
        redis_get_in_db(&stack.redis, 7, "url:db"),
        b"$5\r\nseven\r\n"
    );
    assert_eq!(
        redis_get_in_db(&stack.redis, 3, "url:db"),
        b"$5\r\nthree\r\n"
    );
    assert!(stack.redis_clients() <= 2);
}

#[test]
fn async_multiplexed_connection_shared_by_tasks() {
    use redis::AsyncCommands;
    let stack = Stack::start();
    let addr = stack.addr();
    let rt = runtime();
    rt.block_on(async {
        let client = redis::Client::open(format!("redis://{addr}/")).expect("url");
        let con = client
            .get_multiplexed_async_connection_with_config(&async_config())
            .await
            .expect("async connect");
        // One multiplexed connection, used from 50 tasks at once: the crate pipelines their
        // commands onto one socket and matches replies in order, as moat must keep them.
        let tasks: Vec<_> = (0..50)
            .map(|t| {
                let mut con = con.clone();
                tokio::spawn(async move {
                    for i in 0..40 {
                        let key = format!("mx:{t}:{}", i % 5);
                        let value = format!("t{t}-i{i}");
                        let _: () = con.set(&key, &value).await?;
                        let got: String = con.get(&key).await?;
                        assert_eq!(got, value, "task {t} step {i}");
                        let (pong, n): (String, i64) = redis::pipe()
                            .cmd("PING")
                            .arg(format!("p{t}-{i}"))
                            .incr(format!("mx:{t}:n"), 1)
                            .query_async(&mut con)
                            .await?;
                        assert_eq!((pong, n), (format!("p{t}-{i}"), i + 1), "task {t}");
                    }
                    RedisResult::Ok(())
                })
            })
            .collect();
        for (t, task) in tasks.into_iter().enumerate() {
            tokio::time::timeout(Duration::from_secs(60), task)
                .await
                .unwrap_or_else(|_| panic!("task {t} timed out"))
                .expect("task panicked")
                .unwrap_or_else(|e| panic!("task {t}: {e}"));
        }
    });
    assert!(stack.redis_clients() <= 2);
}

#[test]
fn connection_manager() {
    use redis::AsyncCommands;
    let stack = Stack::start();
    let addr = stack.addr();
    let rt = runtime();
    rt.block_on(async {
        let client = redis::Client::open(format!("redis://{addr}/2")).expect("url");
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(2);
        let mut manager =
            tokio::time::timeout(TIMEOUT, client.get_connection_manager_with_config(config))
                .await
                .expect("connection manager in time")
                .expect("connection manager connects through moat");
        let _: () = manager.set("cm:k", "managed").await.expect("SET");
        let got: String = manager.get("cm:k").await.expect("GET");
        assert_eq!(got, "managed");
        let (a, n): (String, i64) = redis::pipe()
            .get("cm:k")
            .incr("cm:n", 5)
            .query_async(&mut manager)
            .await
            .expect("pipeline");
        assert_eq!((a.as_str(), n), ("managed", 5));
        let pong: String = redis::cmd("PING")
            .query_async(&mut manager)
            .await
            .expect("PING");
        assert_eq!(pong, "PONG");
    });
    assert_eq!(
        redis_get_in_db(&stack.redis, 2, "cm:k"),
        b"$7\r\nmanaged\r\n"
    );
    assert!(stack.redis_clients() <= 2);
}

/// Moat requiring a password from its clients, in front of a Redis that requires its own.
fn auth_stack() -> Stack {
    Stack::with(RedisServer::builder().password("secret"), |c| {
        c.backend.password = Some("secret".into());
        c.users = vec![UserConfig {
            name: "default".into(),
            password: Some("secret".into()),
            password_sha256: None,
            deny_commands: vec![],
        }];
    })
}

#[test]
fn password_in_the_url() {
    let stack = auth_stack();
    let addr = stack.addr();

    // AUTH <password> from the URL.
    let mut con = sync_conn(&format!("redis://:secret@{addr}/")).expect("AUTH via URL");
    let _: () = con.set("auth:k", "v").expect("SET after AUTH");
    let got: String = con.get("auth:k").expect("GET");
    assert_eq!(got, "v");
    let who: String = redis::cmd("ACL")
        .arg("WHOAMI")
        .query(&mut con)
        .expect("ACL WHOAMI");
    assert_eq!(who, "default");

    // AUTH <user> <password> from the URL, with a database.
    let mut con = sync_conn(&format!("redis://default:secret@{addr}/4")).expect("AUTH user");
    let _: () = con.set("auth:k4", "four").expect("SET");
    assert_eq!(
        stack.redis.command(&["GET", "auth:k"]).expect("GET"),
        b"$1\r\nv\r\n"
    );
    let in4 = stack
        .redis
        .command(&[
            "EVAL",
            "redis.call('SELECT', 4); return redis.call('GET', KEYS[1])",
            "1",
            "auth:k4",
        ])
        .expect("EVAL");
    assert_eq!(in4, b"$4\r\nfour\r\n");

    // Async, too.
    let rt = runtime();
    rt.block_on(async {
        let client = redis::Client::open(format!("redis://:secret@{addr}/")).expect("url");
        let mut con = client
            .get_multiplexed_async_connection_with_config(&async_config())
            .await
            .expect("async AUTH via URL");
        let got: String = redis::AsyncCommands::get(&mut con, "auth:k")
            .await
            .expect("GET");
        assert_eq!(got, "v");
    });
    assert!(stack.redis_clients() <= 2);
}

#[test]
fn wrong_or_missing_password_fails_cleanly() {
    let stack = auth_stack();
    let addr = stack.addr();

    // A wrong password fails the connect with Redis's error, promptly.
    let err = sync_conn(&format!("redis://:wrong@{addr}/"))
        .err()
        .expect("a wrong password must not connect");
    assert_eq!(
        err.kind(),
        redis::ErrorKind::AuthenticationFailed,
        "unexpected error: {err}"
    );
    let err = sync_conn(&format!("redis://default:wrong@{addr}/"))
        .err()
        .expect("a wrong user password must not connect");
    assert_eq!(
        err.kind(),
        redis::ErrorKind::AuthenticationFailed,
        "unexpected error: {err}"
    );
    let err = sync_conn(&format!("redis://nobody:secret@{addr}/"))
        .err()
        .expect("an unknown user must not connect");
    assert_eq!(
        err.kind(),
        redis::ErrorKind::AuthenticationFailed,
        "unexpected error: {err}"
    );

    let rt = runtime();
    rt.block_on(async {
        let client = redis::Client::open(format!("redis://:wrong@{addr}/")).expect("url");
        let result = client
            .get_multiplexed_async_connection_with_config(&async_config())
            .await;
        let Err(err) = result else {
            panic!("async connect with a wrong password must fail");
        };
        assert_eq!(
            err.kind(),
            redis::ErrorKind::AuthenticationFailed,
            "unexpected error: {err}"
        );
    });

    // No password: the connection opens (no AUTH is sent) but commands get NOAUTH.
    let mut con = sync_conn(&format!("redis://{addr}/")).expect("connect without AUTH");
    let err = con
        .get::<_, Option<String>>("auth:k")
        .expect_err("GET without AUTH fails");
    assert!(
        err.to_string().contains("NOAUTH"),
        "unexpected error: {err}"
    );
    // ...and AUTH on the same connection then works.
    let _: () = redis::cmd("AUTH")
        .arg("secret")
        .query(&mut con)
        .expect("AUTH");
    let _: () = con.set("auth:late", "ok").expect("SET after late AUTH");

    // A failed login never cost a backend connection.
    assert!(stack.redis_clients() <= 2);
}
