//! The `moat` binary as users run it: check-config, proxy with flags, demo.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn moat() -> Command {
    Command::new(env!("CARGO_BIN_EXE_moat"))
}

fn write_config(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

#[test]
fn check_config_prints_the_effective_config_without_passwords() {
    let f = write_config(
        "[backend]\nshared_connections = 3\npassword = \"s3cret\"\n[[users]]\nname = \"default\"\npassword = \"pw\"\n",
    );
    let out = moat().arg("check-config").arg(f.path()).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("valid"), "{text}");
    assert!(text.contains("shared_connections = 3"), "{text}");
    assert!(
        text.contains("connect_timeout = \"2s\""),
        "defaults are shown: {text}"
    );
    assert!(
        !text.contains("s3cret") && !text.contains("\"pw\""),
        "{text}"
    );
}

#[test]
fn check_config_names_the_bad_key() {
    let f = write_config("[limits]\nmax_inflight = 0\n");
    let out = moat().arg("check-config").arg(f.path()).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("limits.max_inflight"), "{err}");

    let f = write_config("[backend]\nadress = \"127.0.0.1:1\"\n");
    let out = moat().arg("check-config").arg(f.path()).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("adress"));

    let out = moat()
        .args(["check-config", "/nonexistent/moat.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/moat.toml"));
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn proxy_flags_run_a_proxy_in_front_of_redis() {
    let redis = moat_testkit::RedisServer::start().unwrap();
    let port = moat_testkit::free_port();
    let child = moat()
        .args(["proxy", "--listen", &format!("127.0.0.1:{port}")])
        // Port 0: tests running side by side must not fight over the default admin port.
        .args(["--admin", "127.0.0.1:0"])
        .args(["--backend", &redis.addr().to_string()])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = Killed(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut stream = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("moat never listened: {e}"),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"SET cli:k hello\r\nGET cli:k\r\n")
        .unwrap();
    let mut reply = vec![0u8; 16];
    stream.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"+OK\r\n$5\r\nhello\r\n");
    let direct = redis.command(&["GET", "cli:k"]).unwrap();
    assert_eq!(direct, b"$5\r\nhello\r\n");
}

#[test]
fn demo_shows_redis_holding_only_the_pool() {
    let dir = tempfile::tempdir().unwrap();
    let out = moat()
        .args([
            "demo",
            "--attack",
            "1s",
            "--baseline",
            "1s",
            "--hoard",
            "300",
            "-q",
        ])
        .arg("--out")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
        .wait_with_output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("## hoard") && text.contains("## flood"),
        "{text}"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap()).unwrap();
    let held = |target: &str| -> u64 {
        let run = report["runs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["attack"] == "hoard" && r["target"] == target)
            .unwrap_or_else(|| panic!("no hoard run against {target}"));
        let attack = run["phases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "attack")
            .unwrap();
        attack["redis_connected_max"].as_u64().unwrap()
    };
    // Straight to Redis, the hoard is held by Redis; behind moat, Redis sees only the pool.
    assert!(held("redis") >= 300, "{text}");
    assert!(held("moat") <= 4, "{text}");
    assert!(
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(Result::ok)
            .any(|e| e.path().extension().is_some_and(|x| x == "svg"))
    );
}
