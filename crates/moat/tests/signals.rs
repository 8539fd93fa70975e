//! The `moat proxy` process and its signals, over a real redis-server: SIGTERM drains
//! (replies in flight are delivered) and exits, a second one stops at once, SIGHUP reloads
//! the config file.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use moat_testkit::RedisServer;

/// Kills the process if the test ends early.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name}");
}

/// Starts `moat proxy --config <file>` with its log in `log`, and waits until it listens.
fn start(config: &Path, log: &Path, port: u16, extra: &[&str]) -> Proc {
    let child = Command::new(env!("CARGO_BIN_EXE_moat"))
        .args(["proxy", "--config"])
        .arg(config)
        .args(extra)
        .stderr(std::fs::File::create(log).unwrap())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let proc = Proc(child);
    for _ in 0..400 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return proc;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "moat never listened: {}",
        std::fs::read_to_string(log).unwrap()
    );
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

fn config_text(port: u16, redis: &RedisServer, extra: &str) -> String {
    format!(
        "[proxy]\nlisten = \"127.0.0.1:{port}\"\n{extra}\n[backend]\naddress = \"{}\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n",
        redis.addr()
    )
}

/// Waits (bounded, generously) for the process to exit.
fn exits(proc: &mut Proc, log: &Path) -> ExitStatus {
    for _ in 0..1200 {
        if let Some(status) = proc.0.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "moat did not exit: {}",
        std::fs::read_to_string(log).unwrap()
    );
}

fn client(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

fn wait_blocked(redis: &RedisServer, n: u64) {
    for _ in 0..400 {
        if redis.info_u64("blocked_clients").unwrap_or(0) == n {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("Redis never saw {n} blocked clients");
}

fn wait_for_log(log: &Path, what: &str) -> String {
    for _ in 0..400 {
        let text = std::fs::read_to_string(log).unwrap();
        if text.contains(what) {
            return text;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!(
        "no `{what}` in the log: {}",
        std::fs::read_to_string(log).unwrap()
    );
}

#[test]
fn sigterm_delivers_the_reply_in_flight_then_exits() {
    let redis = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (config, log) = (dir.path().join("moat.toml"), dir.path().join("moat.log"));
    let port = moat_testkit::free_port();
    write(
        &config,
        &config_text(port, &redis, "drain_timeout = \"60s\""),
    );
    let mut proc = start(&config, &log, port, &[]);
    let mut idle = client(port);
    idle.write_all(b"PING\r\n").unwrap();
    let mut pong = [0u8; 7];
    idle.read_exact(&mut pong).unwrap();
    let mut waiting = client(port);
    waiting.write_all(b"BLPOP jobs 0\r\n").unwrap();
    wait_blocked(&redis, 1);

    signal(&proc.0, "TERM");
    wait_for_log(&log, "drain started");
    // The idle client is closed; the waiting one is not, until its reply is out.
    let mut rest = Vec::new();
    assert_eq!(idle.read_to_end(&mut rest).unwrap_or(0), 0);
    assert!(
        proc.0.try_wait().unwrap().is_none(),
        "exited with a call in flight"
    );
    redis.command(&["LPUSH", "jobs", "j1"]).unwrap();
    let mut reply = Vec::new();
    waiting.read_to_end(&mut reply).unwrap();
    assert_eq!(reply, b"*2\r\n$4\r\njobs\r\n$2\r\nj1\r\n");
    let status = exits(&mut proc, &log);
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_second_sigterm_stops_at_once() {
    let redis = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (config, log) = (dir.path().join("moat.toml"), dir.path().join("moat.log"));
    let port = moat_testkit::free_port();
    // A drain that would wait far longer than the bound `exits` allows.
    write(
        &config,
        &config_text(port, &redis, "drain_timeout = \"1h\""),
    );
    let mut proc = start(&config, &log, port, &[]);
    let mut tx = client(port);
    tx.write_all(b"MULTI\r\n").unwrap();
    let mut ok = [0u8; 5];
    tx.read_exact(&mut ok).unwrap();
    signal(&proc.0, "TERM");
    wait_for_log(&log, "drain started");
    signal(&proc.0, "INT");
    let status = exits(&mut proc, &log);
    assert!(status.success(), "{status:?}");
}

#[test]
fn sighup_reloads_the_config_file_and_refuses_a_bad_one() {
    let redis = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (config, log) = (dir.path().join("moat.toml"), dir.path().join("moat.log"));
    let port = moat_testkit::free_port();
    write(&config, &config_text(port, &redis, ""));
    let mut proc = start(&config, &log, port, &["--log-format", "json"]);
    let text = wait_for_log(&log, "moat proxy running");
    assert!(text.contains("drain_timeout"), "{text}");

    write(&config, "[limits]\nmax_inflight = 0\n");
    signal(&proc.0, "HUP");
    let text = wait_for_log(&log, "reload rejected");
    assert!(text.contains("limits.max_inflight"), "{text}");
    // Still serving with the old configuration.
    let mut c = client(port);
    c.write_all(b"PING\r\n").unwrap();
    let mut pong = [0u8; 7];
    c.read_exact(&mut pong).unwrap();
    assert_eq!(&pong, b"+PONG\r\n");

    let extra = "workers = 2\n[guard]\nmax_per_ip = 7";
    write(&config, &config_text(port, &redis, extra));
    signal(&proc.0, "HUP");
    let text = wait_for_log(&log, "configuration reloaded");
    let line = text
        .lines()
        .find(|l| l.contains("configuration reloaded"))
        .unwrap();
    assert!(
        line.starts_with('{')
            && line.contains("guard.max_per_ip")
            && line.contains("proxy.workers"),
        "{line}"
    );
    signal(&proc.0, "TERM");
    assert!(exits(&mut proc, &log).success());
}
