//! The lab as a library against real servers: a baseline-only scenario against a Redis it
//! starts and one the test started (`--target`), the files it writes, and a stop before the
//! first run. (Attacks and the moat target run the moat binary: see crates/moat/tests/lab.rs.)

use std::time::Duration;

use moat_lab::lab::{LabOptions, Scenario, TargetDef, run, write};
use moat_testkit::RedisServer;
use tokio_util::sync::CancellationToken;

fn scenario() -> Scenario {
    Scenario::parse(
        "targets = [\"redis\"]\n[phases]\nbaseline = \"1s\"\nattack = \"1s\"\n\
         recovery = \"1s\"\n[legit]\nsteady = 2\nchurn = 1\nrate = 20.0\nfresh_rate = 2.0\n\
         op_timeout = \"5s\"\n[[attacks]]\nname = \"baseline\"\n",
    )
    .expect("scenario")
}

fn options(externals: Vec<TargetDef>) -> LabOptions {
    LabOptions {
        // No attack and no moat target: the binary is never run.
        exe: "/nonexistent/moat".into(),
        externals,
        moat_config: None,
        fd_limit: 1024,
        verbose: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baseline_against_started_and_external_redis() {
    let external = RedisServer::builder()
        .config("protected-mode no")
        .start()
        .expect("redis");
    let ext = TargetDef::parse_external(&format!("mine={}", external.addr())).expect("external");
    let report = run(&scenario(), &options(vec![ext]), CancellationToken::new()).await;
    assert!(!report.partial, "{:?}", report.partial_reason);
    assert_eq!(report.runs.len(), 2);
    for r in &report.runs {
        assert!(r.error.is_none(), "{}: {:?}", r.target, r.error);
        let base = r.phase("baseline").expect("baseline");
        assert_eq!(base.legit_success_pct, Some(100.0), "{}", r.target);
        assert!(base.steady_p99().is_some_and(|p| p > 0));
        assert!(
            r.samples
                .iter()
                .any(|s| s.info.contains_key("connected_clients")),
            "{}: INFO sampled",
            r.target
        );
    }
    assert_eq!(report.runs[0].target, "redis");
    assert_eq!(report.runs[0].procs.len(), 1, "the lab's own redis-server");
    assert!(
        report.runs[1].procs.is_empty(),
        "the external one is not ours"
    );
    // The lab's Redis is gone; the user's is not.
    let pid = report.runs[0].procs[0].pid;
    assert!(!moat_lab::lab::targets::alive(pid));
    assert!(moat_lab::lab::targets::alive(external.pid()));

    let dir = tempfile::tempdir().expect("tempdir");
    let files = write(&report, dir.path()).expect("write");
    assert!(files.iter().any(|f| f.ends_with("report.json")));
    let md = std::fs::read_to_string(dir.path().join("report.md")).expect("report.md");
    assert!(md.contains("| redis |") && md.contains("| mine |"), "{md}");
    assert!(
        files
            .iter()
            .any(|f| f.extension().is_some_and(|e| e == "svg"))
    );
}

#[tokio::test]
async fn a_stop_before_the_first_run_is_a_partial_empty_report() {
    let stop = CancellationToken::new();
    stop.cancel();
    let report = tokio::time::timeout(
        Duration::from_secs(30),
        run(&scenario(), &options(Vec::new()), stop),
    )
    .await
    .expect("returns");
    assert!(report.partial);
    assert!(report.runs.is_empty());
}

#[test]
fn external_targets_are_checked() {
    assert!(TargetDef::parse_external("x=127.0.0.1:6379").is_ok());
    assert!(TargetDef::parse_external("x=localhost:6379").is_ok());
    for bad in [
        "127.0.0.1:6379",
        "=127.0.0.1:1",
        "x=nowhere",
        "x=10.0.0.1:6379",
    ] {
        assert!(TargetDef::parse_external(bad).is_err(), "{bad}");
    }
}
