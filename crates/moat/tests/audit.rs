//! `moat audit` as operators and CI run it: exit status, SARIF, the nftables ruleset
//! (checked by `nft -c` and loaded in a network namespace where allowed), bad input, and a
//! Redis behind a `moat proxy` process.
#![allow(clippy::unwrap_used)]

use std::net::TcpStream;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use moat_testkit::RedisServer;

fn moat() -> Command {
    Command::new(env!("CARGO_BIN_EXE_moat"))
}

fn audit(args: &[&str]) -> Output {
    moat()
        .arg("audit")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn weak() -> RedisServer {
    RedisServer::builder()
        .config("protected-mode no")
        .config("timeout 0")
        .start()
        .unwrap()
}

fn url(r: &RedisServer) -> String {
    format!("redis://127.0.0.1:{}", r.port())
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn exit_status_is_the_worst_severity_and_sarif_has_what_code_scanning_needs() {
    let r = weak();
    let out = audit(&[&url(&r), "--format", "json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // No password and protected mode off: high.
    assert_eq!(doc["worst"], "high", "{}", text(&out.stdout));
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(doc["exit_code"], 5);

    let out = audit(&[&url(&r), "--format", "sarif"]);
    assert_eq!(out.status.code(), Some(5));
    let sarif: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(sarif["version"], "2.1.0");
    assert!(sarif["$schema"].as_str().unwrap().contains("sarif-2.1.0"));
    let run = &sarif["runs"][0];
    assert_eq!(run["tool"]["driver"]["name"], "moat audit");
    let rules = run["tool"]["driver"]["rules"].as_array().unwrap();
    let ids: Vec<&str> = rules.iter().map(|r| r["id"].as_str().unwrap()).collect();
    let results = run["results"].as_array().unwrap();
    assert!(!results.is_empty());
    for res in results {
        let id = res["ruleId"].as_str().unwrap();
        assert!(ids.contains(&id), "{id} has no rule");
        let i = res["ruleIndex"].as_u64().unwrap() as usize;
        assert_eq!(ids[i], id);
        assert!(["error", "warning", "note"].contains(&res["level"].as_str().unwrap()));
        assert!(!res["message"]["text"].as_str().unwrap().is_empty());
        let loc = &res["locations"][0]["physicalLocation"];
        assert!(
            loc["artifactLocation"]["uri"]
                .as_str()
                .unwrap()
                .starts_with("redis/")
        );
        assert!(loc["region"]["startLine"].as_u64().unwrap() >= 1);
        assert!(res["partialFingerprints"].is_object());
    }
    for rule in rules {
        assert!(
            !rule["shortDescription"]["text"]
                .as_str()
                .unwrap()
                .is_empty()
        );
        let sev: f64 = rule["properties"]["security-severity"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((0.0..=10.0).contains(&sev));
    }
}

#[test]
fn unreachable_host_is_a_clear_error_without_the_password() {
    let port = moat_testkit::free_port();
    let out = audit(&[
        &format!("redis://u:secret@127.0.0.1:{port}"),
        "--timeout",
        "2s",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("cannot reach Redis at"), "{err}");
    assert!(!err.contains("secret"), "{err}");
}

#[test]
fn wrong_password_is_a_partial_report() {
    let r = RedisServer::builder().password("right").start().unwrap();
    let out = audit(&[&format!("redis://default:wrong@127.0.0.1:{}", r.port())]);
    let report = text(&out.stdout);
    assert!(report.contains("refused the audit's login"), "{report}");
    assert!(report.contains("Not checked:"), "{report}");
    assert!(!report.contains("wrong@"), "{report}");
    assert!(out.status.code().is_some_and(|c| c != 1), "{out:?}");
}

#[test]
fn emitted_nftables_ruleset_passes_nft_and_loads_in_a_namespace() {
    let r = weak();
    let out = audit(&[&url(&r), "--emit", "nftables"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let ruleset = text(&out.stdout);
    assert!(ruleset.contains("table inet moat {"), "{ruleset}");
    assert!(
        ruleset.contains(&format!("tcp dport {{ {} }} jump sources", r.port())),
        "{ruleset}"
    );
    for set in ["banned4", "banned6", "trusted4", "rate4", "conn4"] {
        assert!(ruleset.contains(&format!("set {set} {{")), "{set}");
    }
    assert!(ruleset.contains("ct count over"), "{ruleset}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("moat.nft");
    std::fs::write(&file, &ruleset).unwrap();

    let check = Command::new("nft").arg("-c").arg("-f").arg(&file).output();
    match check {
        Err(e) => {
            println!("SKIPPED nft -c: the nft command is not available ({e})");
            return;
        }
        Ok(o) if !o.status.success() && text(&o.stderr).contains("Operation not permitted") => {
            println!(
                "SKIPPED nft -c: not permitted here ({})",
                text(&o.stderr).trim()
            );
            return;
        }
        Ok(o) => assert!(o.status.success(), "nft -c: {}", text(&o.stderr)),
    }
    // Load it for real, in a network namespace of its own, and add a ban the way moat does.
    let script = format!(
        "nft -f {} && nft add element inet moat banned4 '{{ 192.0.2.9 timeout 10m }}' \
         && nft list set inet moat banned4",
        file.display()
    );
    match Command::new("unshare")
        .args(["-n", "sh", "-c", &script])
        .output()
    {
        Ok(o) if o.status.success() => {
            assert!(text(&o.stdout).contains("192.0.2.9"), "{}", text(&o.stdout));
        }
        Ok(o) => println!(
            "SKIPPED loading in a namespace: unshare -n failed ({})",
            text(&o.stderr).trim()
        ),
        Err(e) => println!("SKIPPED loading in a namespace: no unshare ({e})"),
    }
}

#[test]
fn emitted_sysctl_and_redis_conf_are_files() {
    let r = weak();
    let out = audit(&[&url(&r), "--emit", "redis-conf"]);
    assert_eq!(out.status.code(), Some(0));
    let conf = text(&out.stdout);
    assert!(conf.contains("\ntimeout 300\n"), "{conf}");
    assert!(conf.contains("\nprotected-mode yes\n"), "{conf}");
    let out = audit(&[&url(&r), "--emit", "sysctl"]);
    assert_eq!(out.status.code(), Some(0));
    let sysctl = text(&out.stdout);
    for line in sysctl
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (k, v) = line.split_once(" = ").unwrap();
        assert!(k.starts_with("net."), "{line}");
        assert!(!v.is_empty(), "{line}");
    }
}

#[test]
fn fix_yes_applies_and_shows_the_audit_after() {
    let r = weak();
    let out = moat()
        .args(["audit", &url(&r), "--fix", "--yes"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let report = text(&out.stdout);
    assert!(report.contains("CONFIG SET timeout \"300\""), "{report}");
    assert!(report.contains("CONFIG REWRITE:"), "{report}");
    let after = report.split("After --fix:").nth(1).unwrap();
    assert!(!after.contains("timeout-zero"), "{after}");
    assert!(after.contains("protected-mode-off"), "{after}");
    assert_eq!(out.status.code(), Some(5));
    // Without --yes and with no answer, nothing changes.
    let r = weak();
    let out = audit(&[&url(&r), "--fix"]);
    assert!(text(&out.stdout).contains("Nothing changed."));
    assert_eq!(
        r.command(&["CONFIG", "GET", "timeout"]).unwrap(),
        b"*2\r\n$7\r\ntimeout\r\n$1\r\n0\r\n"
    );
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn behind_moat_is_detected_and_still_audited() {
    let redis = weak();
    let port = moat_testkit::free_port();
    let child = moat()
        .args(["proxy", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin", "127.0.0.1:0"])
        .args(["--backend", &redis.addr().to_string()])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = Killed(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moat never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = audit(&[&format!("redis://127.0.0.1:{port}"), "--format", "json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let evidence = doc["facts"]["redis"]["behind_moat"].as_str().unwrap();
    assert!(evidence.contains(&redis.port().to_string()), "{evidence}");
    let ids: Vec<&str> = doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    // Redis's own settings are still seen through moat.
    assert!(
        ids.contains(&"behind-moat") && ids.contains(&"timeout-zero"),
        "{ids:?}"
    );
}
