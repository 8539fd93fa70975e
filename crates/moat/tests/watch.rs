//! `moat watch --once` against a real redis-server: a quiet Redis is "ok" (exit 0), one that
//! does not answer is a critical `redis_unreachable` (exit 2), a flood of refused
//! connections past maxclients raises `rejected_connections`; bad thresholds are refused;
//! `--webhook` delivers the alert (password redacted) to a real receiver and `--metrics`
//! serves `/metrics` on the address it prints.
//! `--snapshot FILE` keeps FILE holding the dashboard's latest frame; `--moat` reads a
//! real moat's refusals through its admin API.
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

/// A one-shot HTTP receiver on loopback: answers each POST 200 and hands its body over.
fn http_receiver() -> (String, std::sync::mpsc::Receiver<String>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://{}/hook/secret-token",
        listener.local_addr().unwrap()
    );
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(16) {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((k, v)) = line.split_once(':')
                    && k.eq_ignore_ascii_case("content-length")
                {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length.min(1 << 20)];
            let _ = reader.read_exact(&mut body);
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = tx.send(String::from_utf8_lossy(&body).into_owned());
        }
    });
    (url, rx)
}

#[test]
fn the_webhook_gets_the_alert_with_the_password_redacted() {
    let redis = RedisServer::start().unwrap();
    let url = format!("redis://:sekret@{}", redis.addr());
    redis.stop();
    let (hook, bodies) = http_receiver();
    let out = watch(&[&url, "--once", "--webhook", &hook]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    let body = bodies
        .recv_timeout(std::time::Duration::from_secs(30))
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["event"], "raised", "{body}");
    assert_eq!(v["id"], "redis_unreachable", "{body}");
    assert_eq!(v["severity"], "critical", "{body}");
    assert!(v["unix_time"].as_f64().is_some(), "{body}");
    assert!(!v["host"].as_str().unwrap().is_empty(), "{body}");
    let redis_field = v["redis"].as_str().unwrap();
    assert!(redis_field.starts_with("redis://***@127.0.0.1:"), "{body}");
    assert!(!body.contains("sekret"), "{body}");
    assert!(
        !stderr.contains("sekret") && !stderr.contains("secret-token"),
        "{stderr}"
    );
}

#[test]
fn metrics_are_served_on_the_address_printed_at_start() {
    use std::io::{BufRead, BufReader};
    let redis = RedisServer::builder()
        .config("maxclients 321")
        .start()
        .unwrap();
    let url = format!("redis://{}", redis.addr());
    let mut child = Command::new(env!("CARGO_BIN_EXE_moat"))
        .args(["watch", &url, "--interval", "200ms", "--duration", "60s"])
        .args(["--metrics", "127.0.0.1:0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut addr = None;
    for _ in 0..10 {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if let Some(rest) = line.trim().strip_prefix("moat watch: metrics on ") {
            addr = Some(rest.to_owned());
            break;
        }
    }
    let metrics = addr.expect("the metrics address on stderr");
    assert!(metrics.starts_with("http://127.0.0.1:") && metrics.ends_with("/metrics"));
    // Until the first poll lands (bounded in count).
    let mut page = String::new();
    for _ in 0..100 {
        page = ureq::get(&metrics)
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        if page.contains("redis_up") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(page.contains("\nredis_up 1\n"), "{page}");
    assert!(page.contains("\nredis_config_maxclients 321\n"), "{page}");
    assert!(
        page.contains("# TYPE redis_connections_received_total counter"),
        "{page}"
    );
    assert!(
        page.contains("moat_watch_alert{alert=\"redis_unreachable\",severity=\"critical\"} 0"),
        "{page}"
    );
}

#[test]
fn sigterm_with_a_receiver_that_never_answers_exits_and_says_what_was_lost() {
    use std::io::{BufRead, BufReader};
    let redis = RedisServer::start().unwrap();
    let url = format!("redis://{}", redis.addr());
    redis.stop();
    // Accepts and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let held: Vec<_> = listener.incoming().take(8).collect();
        std::thread::sleep(std::time::Duration::from_secs(120));
        drop(held);
    });
    let mut child = Command::new(env!("CARGO_BIN_EXE_moat"))
        .args(["watch", &url, "--interval", "200ms", "--duration", "120s"])
        .args(["--format", "json", "--webhook", &hook])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The unreachable alert is raised (and queued for the webhook) within a few polls.
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert!(line.contains("redis_unreachable"), "{line}");
    let pid = child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    // The watch exits on its own (a hang would block here; the webhook grace is 3 s).
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("lost at exit"), "{stderr}");
    assert!(stderr.contains("0 sent"), "{stderr}");
}

/// Kills the child at the end of the test, whatever happens.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn moat_s_refusals_are_seen_through_its_admin_api() {
    const TOKEN: &str = "watch-test-token-0123456789";
    let redis = RedisServer::start().unwrap();
    let proxy = std::net::SocketAddr::from(([127, 0, 0, 1], moat_testkit::free_port()));
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], moat_testkit::free_port()));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("moat.toml");
    // 127.100.0.0/16 plays a botnet moat refuses; the kernel filter would drop the SYNs
    // before moat counts them.
    std::fs::write(
        &config,
        format!(
            "[proxy]\nlisten = \"{proxy}\"\n[backend]\naddress = \"{}\"\n\
             [guard]\ndeny = [\"127.100.0.0/16\"]\n\
             [admin]\nlisten = \"{admin}\"\ntoken = \"{TOKEN}\"\n\
             [kernel]\nsocket_filter = false\n",
            redis.addr()
        ),
    )
    .unwrap();
    let _moat = Killed(
        Command::new(env!("CARGO_BIN_EXE_moat"))
            .arg("proxy")
            .arg("--config")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    for _ in 0..400 {
        if TcpStream::connect(admin).is_ok() && TcpStream::connect(proxy).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // A wrong token: moat's view is missing, and the watch says so.
    let out = watch(&[
        &format!("redis://{proxy}"),
        "--once",
        "--moat",
        &format!("http://{admin}"),
        "--moat-token",
        "wrong",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("admin API does not answer"), "{stderr}");

    let mut child = Command::new(env!("CARGO_BIN_EXE_moat"))
        .args(["watch", &format!("redis://{proxy}"), "--once"])
        .args(["--interval", "300ms", "--moat", &format!("http://{admin}")])
        .env("MOAT_ADMIN_TOKEN", TOKEN)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Knock from denied addresses until the watch has judged (bounded by a count).
    for i in 0..5_000u32 {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        let from = std::net::Ipv4Addr::new(127, 100, (i / 250) as u8, (i % 250 + 1) as u8);
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        if socket
            .bind(&std::net::SocketAddr::from((from, 0)).into())
            .is_ok()
        {
            let _ = socket.connect_timeout(&proxy.into(), std::time::Duration::from_secs(1));
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("moat's view"), "{stderr}");
    // Warning or critical, by how many refusals this machine fitted in the polls.
    assert!(matches!(out.status.code(), Some(1 | 2)), "{stdout}{stderr}");
    assert!(stdout.contains("moat_refusing"), "{stdout}");
    assert!(stdout.contains("top reason denied"), "{stdout}");
}

#[test]
fn a_redis_that_refuses_the_watch_is_unknown_not_down() {
    let redis = RedisServer::builder()
        .password("pw-0123456789")
        .start()
        .unwrap();
    let out = watch(&[&format!("redis://{}", redis.addr()), "--once"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stdout}{stderr}");
    assert!(
        stdout.contains("unknown: Redis refuses the watch"),
        "{stdout}"
    );
    assert!(stderr.contains("NOT watched"), "{stderr}");
    assert!(!stdout.contains("redis_unreachable"), "{stdout}");
}
