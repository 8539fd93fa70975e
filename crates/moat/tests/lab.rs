//! `moat lab` end to end with the real binary: the quick scenario writes a sane report, a
//! bad scenario is refused naming the key, and a target that dies mid-run (or Ctrl-C) gives
//! a partial report with every process the lab started gone.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn moat() -> Command {
    Command::new(env!("CARGO_BIN_EXE_moat"))
}

fn report(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("report.json")).expect("report.json");
    serde_json::from_str(&text).expect("report.json parses")
}

fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Every PID the report says the lab started, once gone (a stopped process may take a
/// moment to be reaped by its parent, which has exited).
fn assert_all_gone(report: &serde_json::Value) {
    let pids: Vec<u64> = report["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .flat_map(|r| r["procs"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p["pid"].as_u64())
        .collect();
    assert!(!pids.is_empty());
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|p| alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    for pid in pids {
        assert!(!alive(pid), "pid {pid} left running");
    }
}

#[test]
fn quick_lab_writes_a_sane_report() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = moat()
        .args(["lab", "--quick", "--quiet", "--out"])
        .arg(dir.path())
        .output()
        .expect("moat lab runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("| redis |"), "{stdout}");
    assert!(dir.path().join("report.md").is_file());
    let svgs = std::fs::read_dir(dir.path())
        .expect("out dir")
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "svg"))
        .count();
    assert!(svgs >= 1);
    let r = report(dir.path());
    assert_eq!(r["partial"], false);
    let runs = r["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 3, "quick runs one attack against three targets");
    for run in runs {
        let target = &run["target"];
        assert!(run["error"].is_null(), "{target}: {}", run["error"]);
        let base = &run["phases"][0];
        assert_eq!(base["name"], "baseline");
        assert_eq!(base["legit_success_pct"], 100.0, "{target}: {base}");
        let p99 = base["groups"]
            .as_array()
            .expect("groups")
            .iter()
            .find(|g| g["group"] == "steady")
            .and_then(|g| g["latency_us"]["p99"].as_u64())
            .expect("steady p99");
        assert!(p99 > 0, "{target}");
        let attack = &run["phases"][1];
        assert!(
            attack["redis_connected_max"]
                .as_u64()
                .is_some_and(|c| c > 0),
            "{target}: {attack}"
        );
        assert!(run["attack_summary"]["counters"]["attempts"].as_u64() > Some(0));
        assert!(!run["samples"].as_array().expect("samples").is_empty());
    }
    let moat = runs
        .iter()
        .find(|r| r["target"] == "moat")
        .expect("moat run");
    assert!(moat["phases"][1]["moat_rss_max"].as_u64() > Some(0));
    assert_all_gone(&r);
}

#[test]
fn bad_scenarios_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (text, key) in [
        (
            "[phases]\nbaseline = \"1s\"\nattack = \"1s\"\nrecovery = \"1s\"\nfoo = 1\n\
             [[attacks]]\nname = \"a\"\n",
            "foo",
        ),
        (
            "[phases]\nbaseline = \"1s\"\nattack = \"3h\"\nrecovery = \"1s\"\n\
             [[attacks]]\nname = \"a\"\n",
            "phases.attack",
        ),
        (
            "[phases]\nbaseline = \"1s\"\nattack = \"1s\"\nrecovery = \"1s\"\n\
             [[attacks]]\nname = \"a\"\nmode.hoard = { connections = 2000000 }\n",
            "attacks[0] (a).mode",
        ),
        (
            "moat_config = \"no-such-moat.toml\"\n[phases]\nbaseline = \"1s\"\n\
             attack = \"1s\"\nrecovery = \"1s\"\n[[attacks]]\nname = \"a\"\n",
            "no-such-moat.toml",
        ),
    ] {
        let path = dir.path().join("s.toml");
        std::fs::write(&path, text).expect("write scenario");
        let out = moat()
            .arg("lab")
            .arg(&path)
            .arg("--out")
            .arg(dir.path().join("out"))
            .output()
            .expect("moat lab runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains(key), "{key}: {stderr}");
    }
    let out = moat()
        .args(["lab", "--quick", "--target", "x=10.1.2.3:6379"])
        .output()
        .expect("moat lab runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
}

/// Starts `moat lab` on a one-target scenario, waits for its Redis's PID on stderr, lets the
/// run reach the attack phase, then `act`s on it; returns the report.
fn interrupted(act: impl FnOnce(u64, u32)) -> (serde_json::Value, std::process::ExitStatus) {
    let dir = tempfile::tempdir().expect("tempdir");
    let scenario = dir.path().join("s.toml");
    std::fs::write(
        &scenario,
        "targets = [\"redis\"]\n[phases]\nbaseline = \"2s\"\nattack = \"6s\"\n\
         recovery = \"2s\"\n[legit]\nsteady = 2\nchurn = 1\nrate = 20.0\nfresh_rate = 1.0\n\
         [[attacks]]\nname = \"hoard\"\nsources = 16\nmode.hoard = { connections = 50 }\n\
         [[attacks]]\nname = \"never-run\"\n",
    )
    .expect("write scenario");
    let mut child = moat()
        .arg("lab")
        .arg(&scenario)
        .arg("--out")
        .arg(dir.path().join("out"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("moat lab starts");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let pid = loop {
        let line = lines.next().expect("a line").expect("utf-8");
        if let Some(rest) = line.split(" redis pid ").nth(1) {
            break rest
                .split_whitespace()
                .next()
                .and_then(|p| p.parse::<u64>().ok())
                .expect("pid");
        }
    };
    // Into the attack phase.
    std::thread::sleep(Duration::from_secs(3));
    act(pid, child.id());
    // Drain stderr so the lab never blocks writing it.
    std::thread::spawn(move || for _ in lines {});
    let status = child.wait().expect("moat lab exits");
    (report(&dir.path().join("out")), status)
}

fn kill(signal: &str, pid: impl ToString) {
    let ok = Command::new("sh")
        .args([
            "-c",
            "kill -s \"$1\" \"$2\"",
            "sh",
            signal,
            &pid.to_string(),
        ])
        .status()
        .expect("kill");
    assert!(ok.success());
}

#[test]
fn a_target_dying_mid_run_gives_a_partial_report_and_no_stray_process() {
    let (r, status) = interrupted(|redis, _| kill("KILL", redis));
    assert!(!status.success(), "a partial report is a failure");
    assert_eq!(r["partial"], true);
    let why = r["partial_reason"].as_str().expect("reason");
    assert!(why.contains("died"), "{why}");
    let runs = r["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 1, "the lab stops at the dead target");
    assert_eq!(runs[0]["phases"][0]["legit_success_pct"], 100.0);
    assert_all_gone(&r);
}

#[test]
fn ctrl_c_gives_a_partial_report_and_no_stray_process() {
    let (r, status) = interrupted(|_, lab| kill("INT", lab));
    assert!(!status.success());
    assert_eq!(r["partial"], true);
    assert!(
        r["partial_reason"]
            .as_str()
            .is_some_and(|w| w.contains("stopped")),
        "{}",
        r["partial_reason"]
    );
    assert_eq!(r["runs"].as_array().map(Vec::len), Some(1));
    assert_all_gone(&r);
}
