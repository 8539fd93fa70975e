//! `moat watch --once` against a real redis-server: a quiet Redis is "ok" (exit 0), one that
//! does not answer is a critical `redis_unreachable` (exit 2), a flood of refused
//! connections past maxclients raises `rejected_connections`; bad thresholds are refused.
//! `--snapshot FILE` keeps FILE holding the dashboard's latest frame.
#![allow(clippy::unwrap_used)]

use std::net::TcpStream;
use std::process::Command;

use moat_testkit::RedisServer;

fn watch(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_moat"))
        .arg("watch")
        .args(args)
        .args(["--interval", "200ms"])
        .output()
        .unwrap()
}

#[test]
fn a_quiet_redis_is_ok_and_a_dead_one_is_critical() {
    let redis = RedisServer::start().unwrap();
    let url = format!("redis://{}", redis.addr());
    let out = watch(&[&url, "--once"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("ok: no alert"), "{stdout}");
    assert!(stderr.contains("INFO ok"), "{stderr}");
    redis.stop();
    let out = watch(&[&url, "--once", "--format", "json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    let raised = stdout.lines().next().unwrap();
    let v: serde_json::Value = serde_json::from_str(raised).unwrap();
    assert_eq!(v["event"], "raised", "{raised}");
    assert_eq!(v["id"], "redis_unreachable", "{raised}");
}

#[test]
fn connections_refused_at_maxclients_are_critical() {
    let redis = RedisServer::builder()
        .config("maxclients 4")
        .start()
        .unwrap();
    let url = format!("redis://{}", redis.addr());
    let mut child = Command::new(env!("CARGO_BIN_EXE_moat"))
        .args(["watch", &url, "--once", "--interval", "300ms"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Fill Redis only once the monitor holds its connection: otherwise the monitor itself
    // may be the one refused, and the watch reports Redis unreachable instead.
    for _ in 0..500 {
        let list = redis.command(&["CLIENT", "LIST"]).unwrap_or_default();
        if String::from_utf8_lossy(&list).contains("name=moat-watch") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // Until the watch has judged: hold Redis full and keep knocking, so every poll sees
    // more connections refused (bounded by the watch's few polls and a count).
    let mut held = Vec::new();
    for _ in 0..2_000 {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if let Ok(s) = TcpStream::connect(redis.addr()) {
            held.push(s);
        }
        if held.len() > 16 {
            held.drain(4..);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(stdout.contains("rejected_connections"), "{stdout}");
    drop(held);
}

#[test]
fn bad_thresholds_are_refused_with_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.toml");
    std::fs::write(&path, "no_such_key = 1\n").unwrap();
    let out = watch(&[
        "redis://127.0.0.1:1",
        "--once",
        "--thresholds",
        path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no_such_key"), "{stderr}");
}

#[test]
fn snapshot_writes_the_dashboard_frame_after_each_poll() {
    let redis = RedisServer::builder()
        .config("maxclients 777")
        .start()
        .unwrap();
    let url = format!("redis://{}", redis.addr());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("frame.txt");
    let out = watch(&[
        &url,
        "--snapshot",
        path.to_str().unwrap(),
        "--snapshot-size",
        "90x28",
        "--duration",
        "3s",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let frame = std::fs::read_to_string(&path).unwrap();
    assert_eq!(frame.lines().count(), 28, "{frame}");
    assert!(
        frame.contains("/ 777 ("),
        "the gauge shows maxclients: {frame}"
    );
    assert!(frame.contains(&url), "{frame}");
    assert!(!dir.path().join("frame.txt.tmp").exists());
    // Without --tui the alert lines still go to stdout as before.
    assert!(stderr.contains("INFO ok"), "{stderr}");
}

#[test]
fn tui_needs_a_terminal_and_refuses_once() {
    let out = watch(&["redis://127.0.0.1:1", "--tui", "--duration", "1s"]);
    assert_ne!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--tui needs a terminal"), "{stderr}");
    let out = watch(&["redis://127.0.0.1:1", "--tui", "--once"]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    let out = watch(&["redis://127.0.0.1:1", "--snapshot-size", "0x5", "--once"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("COLSxROWS"), "{stderr}");
}
