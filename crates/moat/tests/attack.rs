//! `moat attack` as users run it: against a real redis-server and a `moat proxy` process.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::net::TcpStream;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use moat_testkit::RedisServer;

fn moat() -> Command {
    Command::new(env!("CARGO_BIN_EXE_moat"))
}

/// Redis refuses 127.100.x.y in protected mode (no password): turn it off.
fn redis() -> RedisServer {
    RedisServer::builder()
        .config("protected-mode no")
        .start()
        .unwrap()
}

fn run(args: &[&str]) -> Output {
    moat()
        .arg("attack")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn hoard_json_summary_parses() {
    let redis = redis();
    let target = redis.addr().to_string();
    let out = run(&[
        "hoard",
        "--target",
        &target,
        "--connections",
        "5",
        "--duration",
        "1",
        "--sources",
        "5",
        "--json",
    ]);
    let v = json(&out);
    assert_eq!(v["mode"], "hoard");
    assert_eq!(v["partial"], false);
    assert_eq!(v["sources"], 5);
    assert_eq!(v["counters"]["peak_held"], 5, "{v}");
    assert_eq!(v["counters"]["held_at_end"], 5, "{v}");
    assert_eq!(v["spec"]["mode"]["hoard"]["connections"], 5, "{v}");
}

#[test]
fn flood_text_summary() {
    let redis = redis();
    let target = redis.addr().to_string();
    let out = run(&[
        "flood", "--target", &target, "--count", "100", "--rst", "--quiet",
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("moat attack flood against"), "{text}");
    assert!(text.contains("100 attempts"), "{text}");
}

#[test]
fn non_loopback_targets_are_refused() {
    let out = run(&["flood", "--target", "10.20.30.40:6379", "--duration", "1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--allow-non-loopback"), "{err}");
    let out = run(&["flood", "--target", "127.0.0.1:1", "--duration", "11m"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("duration"));
}

#[test]
fn flood_from_four_sources_is_refused_by_a_rate_limited_moat() {
    let redis = redis();
    let mut config = tempfile::NamedTempFile::new().unwrap();
    config
        .write_all(b"[guard]\nip_rate = 1.0\nip_burst = 2\n")
        .unwrap();
    let port = moat_testkit::free_port();
    let listen = format!("127.0.0.1:{port}");
    let proxy = moat()
        .args(["proxy", "--listen", &listen, "--admin", "127.0.0.1:0"])
        .args(["--backend", &redis.addr().to_string()])
        .arg("--config")
        .arg(config.path())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _proxy = Killed(proxy);
    eventually("moat listens", || TcpStream::connect(&listen).is_ok());
    let out = run(&[
        "flood",
        "--target",
        &listen,
        "--sources",
        "4",
        "--count",
        "200",
        "--concurrency",
        "8",
        "--read-reply",
        "500ms",
        "--json",
    ]);
    let v = json(&out);
    let refused: u64 = v["counters"]["replies"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(kind, _)| kind.starts_with("ERR moat: "))
        .map(|(_, n)| n.as_u64().unwrap())
        .sum();
    assert!(refused >= 100, "{v}");
}

#[test]
fn ctrl_c_stops_with_a_partial_summary() {
    let redis = redis();
    let target = redis.addr().to_string();
    let child = moat()
        .args(["attack", "pin", "--target", &target, "--connections", "4"])
        .args(["--duration", "60", "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    eventually("4 clients blocked", || {
        redis.info_u64("blocked_clients").unwrap() == 4
    });
    let status = Command::new("sh")
        .args(["-c", "kill -s INT \"$1\"", "sh", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let v = json(&out);
    assert_eq!(v["partial"], true, "{v}");
    assert_eq!(v["counters"]["peak_held"], 4, "{v}");
    eventually("released", || {
        redis.info_u64("blocked_clients").unwrap() == 0
    });
}

#[test]
fn a_hoard_beyond_the_fd_limit_runs_in_several_processes() {
    let redis = redis();
    let target = redis.addr().to_string();
    // `ulimit -n` in sh sets the hard limit too, so moat cannot raise it past 200.
    let child = Command::new("sh")
        .args([
            "-c",
            "ulimit -n 200 && exec \"$0\" attack hoard --target \"$1\" --connections 300 \
             --sources 4 --duration 60 --json",
            env!("CARGO_BIN_EXE_moat"),
            &target,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Plus the helper's own INFO connection.
    eventually("Redis holds all 300", || {
        redis.connected_clients().unwrap() == 301
    });
    let status = Command::new("sh")
        .args(["-c", "kill -s TERM \"$1\"", "sh", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let v = json(&out);
    assert!(v["shards"].as_u64().unwrap() > 1, "{v}");
    assert_eq!(v["partial"], true, "{v}");
    assert_eq!(v["counters"]["connected"], 300, "{v}");
    // Every shard stopped: nothing holds a connection any more.
    eventually("the shards are gone", || {
        redis.connected_clients().unwrap() == 1
    });
}

#[test]
fn a_flood_beyond_the_fd_limit_is_refused_clearly() {
    let out = Command::new("sh")
        .args([
            "-c",
            "ulimit -n 200 && exec \"$0\" attack flood --target 127.0.0.1:1 --concurrency 500",
            env!("CARGO_BIN_EXE_moat"),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("may open only 200"), "{err}");
    assert!(err.contains("--concurrency"), "{err}");
}
