use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;

use super::*;

fn start(builder: RedisServerBuilder) -> RedisServer {
    builder
        .start()
        .unwrap_or_else(|e| panic!("redis-server failed to start: {e}"))
}

fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The state letter from /proc/PID/stat (R, S, T, Z, ...).
fn process_state(pid: u32) -> char {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // The command name in parentheses may contain spaces, so split after it.
    let after_name = &stat[stat.rfind(')').expect("stat has a command name") + 2..];
    after_name.chars().next().expect("stat has a state")
}

fn raw_request(port: u16, request: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .expect("set timeout");
    stream.write_all(request).expect("write");
    let mut buf = vec![0u8; 512];
    let n = stream.read(&mut buf).expect("read");
    buf.truncate(n);
    buf
}

#[test]
fn starts_answers_and_is_gone_after_drop() {
    let redis = start(RedisServer::builder());
    let pid = redis.pid();
    assert!(process_exists(pid));
    assert_eq!(redis.addr().ip(), Ipv4Addr::LOCALHOST);
    assert_eq!(redis.addr().port(), redis.port());
    assert_eq!(redis.command(&["PING"]).expect("ping"), b"+PONG\r\n");
    assert!(redis.dir().join("redis.conf").is_file());
    assert!(redis.log().contains("Ready to accept connections"));

    let dir = redis.dir().to_path_buf();
    drop(redis);
    assert!(!process_exists(pid), "redis-server {pid} survived drop");
    assert!(!dir.exists(), "temp dir {} survived drop", dir.display());
}

#[test]
fn stop_is_the_same_as_drop() {
    let redis = RedisServer::start().expect("start");
    let pid = redis.pid();
    redis.stop();
    assert!(!process_exists(pid));
}

#[test]
fn password_is_required_and_used_by_the_helpers() {
    let redis = start(RedisServer::builder().password("s3cret \"quoted\""));
    assert_eq!(redis.command(&["PING"]).expect("ping"), b"+PONG\r\n");
    assert_eq!(redis.connected_clients().expect("info"), 1);

    let anonymous = raw_request(redis.port(), b"PING\r\n");
    assert!(
        anonymous.starts_with(b"-NOAUTH"),
        "unauthenticated PING got {:?}",
        String::from_utf8_lossy(&anonymous)
    );
}

#[test]
fn extra_config_lines_are_applied() {
    let redis = start(
        RedisServer::builder()
            .config("maxclients 123")
            .config("timeout 7"),
    );
    let reply = redis
        .command(&["CONFIG", "GET", "maxclients"])
        .expect("config get");
    assert_eq!(reply, b"*2\r\n$10\r\nmaxclients\r\n$3\r\n123\r\n");
    let reply = redis
        .command(&["CONFIG", "GET", "timeout"])
        .expect("config get");
    assert_eq!(reply, b"*2\r\n$7\r\ntimeout\r\n$1\r\n7\r\n");
    // The defaults that keep test servers from touching the disk.
    let reply = redis
        .command(&["CONFIG", "GET", "save"])
        .expect("config get");
    assert_eq!(reply, b"*2\r\n$4\r\nsave\r\n$0\r\n\r\n");
    let reply = redis
        .command(&["CONFIG", "GET", "appendonly"])
        .expect("config get");
    assert_eq!(reply, b"*2\r\n$10\r\nappendonly\r\n$2\r\nno\r\n");
}

#[test]
fn rejected_config_fails_fast_with_the_reason() {
    let started = Instant::now();
    let err = RedisServer::builder()
        .config("no-such-directive 1")
        .start()
        .expect_err("bad config must not start");
    assert!(started.elapsed() < READY_TIMEOUT);
    match err {
        TestkitError::Config { output } => {
            assert!(output.contains("no-such-directive"), "{output}")
        }
        other => panic!("expected a Config error, got {other}"),
    }
}

#[test]
fn info_is_parsed_into_fields() {
    let redis = start(RedisServer::builder());
    let info = redis.info().expect("info");
    assert!(info.get("redis_version").is_some_and(|v| !v.is_empty()));
    assert_eq!(info.get("tcp_port"), Some(&redis.port().to_string()));
    assert_eq!(
        redis.info_u64("process_id").expect("process_id"),
        u64::from(redis.pid())
    );
    assert!(matches!(
        redis.info_u64("no_such_field"),
        Err(TestkitError::MissingInfoField(_))
    ));
    assert!(matches!(
        redis.info_u64("redis_mode"),
        Err(TestkitError::NotANumber { .. })
    ));

    assert_eq!(redis.connected_clients().expect("clients"), 1);
    // A round trip proves redis has accepted and registered the connection.
    let mut extra = TcpStream::connect(redis.addr()).expect("connect");
    extra.write_all(b"PING\r\n").expect("write");
    let mut pong = [0u8; 7];
    extra.read_exact(&mut pong).expect("read");
    assert_eq!(redis.connected_clients().expect("clients"), 2);
}

#[test]
fn error_replies_are_returned_raw() {
    let redis = start(RedisServer::builder());
    let reply = redis.command(&["NOSUCHCOMMAND"]).expect("reply");
    assert!(
        reply.starts_with(b"-ERR"),
        "{:?}",
        String::from_utf8_lossy(&reply)
    );
}

#[test]
fn kill9_then_restart_keeps_port_and_config() {
    let mut redis = start(
        RedisServer::builder()
            .config("maxclients 77")
            .password("pw"),
    );
    let (port, old_pid) = (redis.port(), redis.pid());
    assert_eq!(redis.command(&["SET", "k", "v"]).expect("set"), b"+OK\r\n");

    redis.kill9();
    assert!(
        !process_exists(old_pid),
        "SIGKILLed redis {old_pid} not reaped"
    );
    assert!(matches!(
        redis.command(&["PING"]),
        Err(TestkitError::NotRunning)
    ));
    redis.kill9(); // a second kill is harmless

    redis.restart().expect("restart");
    assert_eq!(redis.port(), port);
    assert_ne!(redis.pid(), old_pid);
    assert_eq!(redis.command(&["PING"]).expect("ping"), b"+PONG\r\n");
    // Nothing is persisted, so the key died with the old process.
    assert_eq!(redis.command(&["GET", "k"]).expect("get"), b"$-1\r\n");
    let reply = redis
        .command(&["CONFIG", "GET", "maxclients"])
        .expect("config get");
    assert!(reply.ends_with(b"$2\r\n77\r\n"));

    let pid = redis.pid();
    drop(redis);
    assert!(!process_exists(pid));
}

#[test]
fn pause_and_resume_and_drop_while_paused() {
    let redis = start(RedisServer::builder());
    let pid = redis.pid();
    redis.pause();
    assert_eq!(process_state(pid), 'T');
    redis.resume();
    assert_ne!(process_state(pid), 'T');
    assert_eq!(redis.command(&["PING"]).expect("ping"), b"+PONG\r\n");

    redis.pause();
    let started = Instant::now();
    drop(redis);
    assert!(!process_exists(pid), "paused redis {pid} survived drop");
    assert!(
        started.elapsed() < STOP_TIMEOUT,
        "SIGTERM should have been honoured without the SIGKILL fallback"
    );
}

#[test]
fn a_taken_port_is_retried_on_another() {
    let squatter = TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = squatter.local_addr().expect("addr").port();
    let builder = RedisServerBuilder {
        first_port: Some(taken),
        ..RedisServer::builder()
    };
    let started = Instant::now();
    let redis = start(builder);
    assert!(
        started.elapsed() < IO_TIMEOUT,
        "the squatter stalled start-up"
    );
    assert_ne!(redis.port(), taken);
    assert_eq!(redis.command(&["PING"]).expect("ping"), b"+PONG\r\n");
}

#[test]
fn servers_in_parallel_get_distinct_ports() {
    let servers: Vec<RedisServer> = (0..4).map(|_| start(RedisServer::builder())).collect();
    let mut ports: Vec<u16> = servers.iter().map(RedisServer::port).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), servers.len());
}

#[test]
fn free_port_is_bindable() {
    let port = free_port();
    assert_ne!(port, 0);
    TcpListener::bind(("127.0.0.1", port)).expect("free port can be bound");
}

#[test]
fn binary_lookup_honours_override_and_explains_how_to_install() {
    let missing = find_binary(None, Some(OsString::from("/nonexistent-dir")))
        .expect_err("no redis-server there");
    let message = missing.to_string();
    assert!(
        message.contains("bash scripts/install-redis.sh"),
        "{message}"
    );
    assert!(message.contains(REDIS_SERVER_ENV), "{message}");

    let found = redis_server_binary().expect("redis-server is installed");
    assert_eq!(
        find_binary(Some(found.clone().into_os_string()), None).expect("override"),
        found
    );
    assert!(find_binary(Some(OsString::from("/nonexistent/redis-server")), None).is_err());
}
