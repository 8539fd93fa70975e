//! `moat legit` as users run it: against a real Redis with `--json`, and refusing a
//! non-loopback target.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use moat_testkit::RedisServer;

/// `moat legit`; the one place to change if the subcommand moves (`moat attack legit`).
fn legit() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_moat"));
    cmd.args(["attack", "legit"]);
    cmd
}

#[test]
fn legit_json_reports_every_group() {
    // Protected mode would refuse the group addresses other than 127.0.0.1.
    let redis = RedisServer::builder()
        .config("protected-mode no")
        .start()
        .unwrap();
    let out = legit()
        .args(["--target", &redis.addr().to_string()])
        .args(["--duration", "1s", "--steady", "2", "--churn", "2"])
        .args(["--churn-every", "3", "--rate", "20", "--fresh-rate", "5"])
        .args(["--op-timeout", "5s", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["partial"], false);
    assert_eq!(json["spec"]["steady"], 2);
    let groups = json["groups"].as_array().unwrap();
    let names: Vec<&str> = groups
        .iter()
        .map(|g| g["group"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["steady", "churn", "fresh", "trusted"]);
    for g in groups {
        assert_eq!(g["errors"], 0, "{g}");
        assert_eq!(g["success_rate"], 1.0, "{g}");
        assert_eq!(g["latency_us"]["count"], g["ok"], "{g}");
    }
    // 1 s at 20 ops/s per client; 5 fresh probes.
    assert_eq!(groups[0]["ok"], 40);
    assert_eq!(groups[2]["ok"], 5);
    assert!(!json["seconds"].as_array().unwrap().is_empty());
    assert_eq!(json["phases"][0]["name"], "run");
}

#[test]
fn legit_refuses_a_non_loopback_target_without_the_flag() {
    let out = legit()
        .args(["--target", "192.0.2.1:6379", "--duration", "1s"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a loopback address"), "{err}");
}

#[test]
fn legit_refuses_impossible_numbers() {
    let out = legit()
        .args(["--target", "127.0.0.1:1", "--rate", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rate"), "{err}");
}

#[test]
fn legit_stops_on_ctrl_c_with_a_partial_report() {
    let redis = RedisServer::builder()
        .config("protected-mode no")
        .start()
        .unwrap();
    let child = legit()
        .args(["--target", &redis.addr().to_string()])
        .args([
            "--duration",
            "50s",
            "--steady",
            "2",
            "--churn",
            "1",
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once the workload's clients are connected, the signal handler is installed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while redis.connected_clients().unwrap() < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["partial"], true);
    assert!(json["elapsed_s"].as_f64().unwrap() < 50.0);
    assert!(json["groups"][0]["ok"].as_u64().unwrap() > 0);
}
