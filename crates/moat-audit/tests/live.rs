//! Audits of real redis-server instances the tests start: a weak and a hardened config,
//! CONFIG renamed, a wrong password, nothing listening, `--fix` and the emitted snippet.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use moat_audit::{Audit, CollectError, collect, emit, fix};
use moat_testkit::RedisServer;

const TIMEOUT: Duration = Duration::from_secs(5);

/// Everything Redis can be told to get wrong about connection exhaustion, on loopback.
const WEAK: &[&str] = &[
    "protected-mode no",
    "timeout 0",
    "tcp-keepalive 0",
    "tcp-backlog 8192",
    "maxclients 100000",
];

const ADMIN: &str = "user admin on >adminpass ~* &* +@all";

/// The same server as hardening guides and this audit want it.
const HARDENED: &[&str] = &[
    "protected-mode yes",
    "timeout 300",
    "tcp-keepalive 60",
    "tcp-backlog 511",
    "maxclients 1000",
    "maxmemory 256mb",
    "maxmemory-clients 10%",
    "client-output-buffer-limit normal 64mb 16mb 60",
    "client-query-buffer-limit 64mb",
    "user default on >hardpass ~* &* +@all -config -debug -flushall -client|kill -shutdown -acl|setuser -module",
    ADMIN,
];

fn weak() -> RedisServer {
    let mut b = RedisServer::builder();
    for line in WEAK {
        b = b.config(*line);
    }
    b.start().unwrap()
}

fn hardened() -> RedisServer {
    let mut b = RedisServer::builder().password("hardpass");
    for line in HARDENED {
        b = b.config(*line);
    }
    let r = b.start().unwrap();
    std::fs::set_permissions(
        r.dir().join("redis.conf"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    r
}

fn url(r: &RedisServer) -> String {
    format!("redis://127.0.0.1:{}", r.port())
}

fn admin_url(r: &RedisServer) -> String {
    format!("redis://admin:adminpass@127.0.0.1:{}", r.port())
}

fn audit(url: &str) -> Audit {
    Audit::new(collect(url, TIMEOUT).unwrap())
}

/// What this machine says, for the rows that depend on it.
struct Host {
    fd_hard: u64,
    somaxconn: u64,
    root: bool,
    redis_affected: bool,
}

fn host() -> Host {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fd_hard = line
        .split_whitespace()
        .nth(4)
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX);
    let somaxconn = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let root = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        == Some("0");
    Host {
        fd_hard,
        somaxconn,
        root,
        redis_affected: true,
    }
}

#[test]
fn each_finding_appears_exactly_when_it_should() {
    let mut h = host();
    let weak_server = weak();
    let hard_server = hardened();
    let w = audit(&url(&weak_server));
    let s = audit(&admin_url(&hard_server));
    h.redis_affected = w.facts.version().is_some_and(|v| v < (7, 2, 8));
    // (id, in the weak audit, in the hardened one)
    let rows: Vec<(&str, bool, bool)> = vec![
        ("maxclients-over-fd-limit", h.fd_hard < 100_032, false),
        ("timeout-zero", true, false),
        ("tcp-keepalive-off", true, false),
        ("tcp-keepalive-long", false, false),
        ("rejected-connections", false, false),
        ("tcp-backlog-over-somaxconn", h.somaxconn < 8192, false),
        ("tcp-backlog-small", h.somaxconn < 511, h.somaxconn < 511),
        ("default-user-no-password", true, false),
        ("protected-mode-off", true, false),
        // Tests bind loopback only (unit tests cover the other case).
        ("bound-to-all-interfaces", false, false),
        ("dangerous-commands-open", true, false),
        // The testkit writes its config with the umask's mode; the hardened one is 600.
        (
            "config-file-permissions",
            weak_mode_is_open(&weak_server),
            false,
        ),
        ("runs-as-root", h.root, h.root),
        ("maxmemory-clients-off", true, false),
        ("output-buffer-limit-normal-unset", true, false),
        ("query-buffer-limit-default", true, false),
        ("maxmemory-unset", true, false),
        (
            "advisory-cve-2025-21605",
            h.redis_affected,
            h.redis_affected,
        ),
        ("behind-moat", false, false),
    ];
    let mut wrong = Vec::new();
    for (id, in_weak, in_hard) in &rows {
        if w.evaluation.has(id) != *in_weak {
            wrong.push(format!("weak: {id} expected {in_weak}"));
        }
        if s.evaluation.has(id) != *in_hard {
            wrong.push(format!("hardened: {id} expected {in_hard}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{wrong:#?}\n--- weak\n{}\n--- hardened\n{}",
        moat_audit::report::text::render(&w, false),
        moat_audit::report::text::render(&s, false)
    );
    // The hardened audit saw everything it needed: nothing skipped for lack of access.
    assert!(
        s.evaluation
            .skipped
            .iter()
            .all(|k| !k.why.contains("CONFIG") && !k.why.contains("ACL")),
        "{:?}",
        s.evaluation.skipped
    );
    assert_eq!(s.facts.redis.unauthenticated_access, Some(false));
    // Secrets never reach a report.
    assert_eq!(s.facts.config("requirepass"), Some("(set, hidden)"));
    let json = moat_audit::report::json::render(&s);
    assert!(
        !json.contains("hardpass") && !json.contains("adminpass"),
        "{json}"
    );
    assert!(!moat_audit::report::sarif::render(&s).contains("hardpass"));
    assert_eq!(w.facts.redis.behind_moat, None);
}

fn weak_mode_is_open(r: &RedisServer) -> bool {
    let mode = std::fs::metadata(r.dir().join("redis.conf"))
        .unwrap()
        .permissions()
        .mode();
    mode & 0o026 != 0
}

#[test]
fn renamed_config_gives_a_partial_report_from_info() {
    let r = RedisServer::builder()
        .config("rename-command CONFIG \"\"")
        .config("timeout 0")
        .start()
        .unwrap();
    let a = audit(&url(&r));
    assert!(a.facts.redis.reachable);
    assert!(
        a.facts.gaps.iter().any(|g| g.what == "CONFIG GET"),
        "{:?}",
        a.facts.gaps
    );
    // maxclients still comes from INFO; timeout cannot be seen, and the report says so.
    assert!(a.facts.config_u64("maxclients").is_some());
    assert!(!a.evaluation.has("timeout-zero"));
    let skipped = a
        .evaluation
        .skipped
        .iter()
        .find(|k| k.id == "timeout-zero")
        .unwrap();
    assert!(skipped.why.contains("CONFIG GET"), "{}", skipped.why);
    // A removed CONFIG is open to nobody.
    assert!(
        !a.evaluation
            .findings
            .iter()
            .any(|f| f.id == "dangerous-commands-open" && f.evidence.contains("CONFIG")),
        "{:?}",
        a.evaluation.findings
    );
    assert!(a.evaluation.has("default-user-no-password"));
    let text = moat_audit::report::text::render(&a, false);
    assert!(text.contains("INFO only (CONFIG refused)"), "{text}");
    assert!(text.contains("Not checked:"), "{text}");
}

#[test]
fn wrong_password_gives_a_clear_partial_report() {
    let r = hardened();
    let a = audit(&format!("redis://admin:wrong@127.0.0.1:{}", r.port()));
    assert!(!a.facts.redis.reachable);
    let gap = a
        .facts
        .gaps
        .iter()
        .find(|g| g.what == "everything Redis reports")
        .unwrap();
    assert!(gap.why.contains("refused the audit's login"), "{}", gap.why);
    assert!(!a.facts.target.contains("wrong"), "{}", a.facts.target);
    // The bare probe still learns that a password is needed; the host is still read.
    assert_eq!(a.facts.redis.unauthenticated_access, Some(false));
    assert!(a.facts.host.somaxconn.is_some());
    let text = moat_audit::report::text::render(&a, false);
    assert!(text.contains("Redis did not answer the audit"), "{text}");
}

#[test]
fn unreachable_host_is_a_clear_error() {
    let port = moat_testkit::free_port();
    let err = collect(
        &format!("redis://u:secret@127.0.0.1:{port}"),
        Duration::from_secs(2),
    )
    .unwrap_err();
    assert!(matches!(err, CollectError::Unreachable { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("cannot reach Redis at"), "{msg}");
    assert!(!msg.contains("secret"), "{msg}");
    let err = collect("nonsense://x", TIMEOUT).unwrap_err();
    assert!(matches!(err, CollectError::Url(_)), "{err:?}");
}

#[test]
fn fix_clears_what_it_can_and_the_next_audit_shows_it() {
    let r = weak();
    let before = audit(&url(&r));
    let changes = fix::plan(&before);
    let ids: Vec<&str> = changes.iter().map(|c| c.id.as_str()).collect();
    for id in [
        "timeout-zero",
        "tcp-keepalive-off",
        "maxmemory-clients-off",
        "output-buffer-limit-normal-unset",
        "query-buffer-limit-default",
    ] {
        assert!(ids.contains(&id), "{id} not in {ids:?}");
        assert!(before.evaluation.has(id));
    }
    let results = fix::apply(&url(&r), TIMEOUT, &changes).unwrap();
    assert!(results.iter().all(|(_, r)| r.is_ok()), "{results:?}");
    assert!(fix::can_rewrite(&before));
    fix::rewrite(&url(&r), TIMEOUT).unwrap();
    let after = audit(&url(&r));
    for c in &changes {
        assert!(!after.evaluation.has(&c.id), "{} still there", c.id);
    }
    // What needs a restart, the kernel or a secret stays, and says so.
    assert!(after.evaluation.has("default-user-no-password"));
    assert!(after.evaluation.has("protected-mode-off"));
    assert!(fix::plan(&after).is_empty());
    let conf = std::fs::read_to_string(r.dir().join("redis.conf")).unwrap();
    assert!(conf.contains("timeout 300"), "{conf}");
}

#[test]
fn emitted_snippet_lets_redis_start_with_its_values() {
    let r = weak();
    let w = audit(&url(&r));
    let snippet = emit::redis_conf::render(&w);
    drop(r);
    // The weak config plus the snippet, and an admin to look (the snippet takes CONFIG
    // away from the default user).
    let mut b = RedisServer::builder();
    for line in WEAK {
        b = b.config(*line);
    }
    for line in snippet.lines() {
        b = b.config(line);
    }
    let hardened = b.config(ADMIN).start().unwrap();
    let a = audit(&admin_url(&hardened));
    let get = |k: &str| a.facts.config(k).unwrap_or_default().to_owned();
    assert_eq!(get("timeout"), "300");
    assert_eq!(get("tcp-keepalive"), "60");
    assert_eq!(get("protected-mode"), "yes");
    assert_eq!(get("client-query-buffer-limit"), "67108864");
    assert!(get("client-output-buffer-limit").starts_with("normal 67108864 16777216 60"));
    assert_eq!(get("maxmemory-clients"), (512u64 << 20).to_string());
    for id in [
        "timeout-zero",
        "tcp-keepalive-off",
        "protected-mode-off",
        "dangerous-commands-open",
        "maxmemory-clients-off",
        "output-buffer-limit-normal-unset",
        "query-buffer-limit-default",
        "maxclients-over-fd-limit",
    ] {
        assert!(!a.evaluation.has(id), "{id} after the snippet:\n{snippet}");
    }
    // The password is the operator's to choose: still reported.
    assert!(a.evaluation.has("default-user-no-password"));
}

#[test]
fn docs_describe_every_check() {
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/audit.md"))
        .unwrap();
    for check in moat_audit::rules::catalog() {
        let heading = format!("### {}\n", check.id);
        let row = format!("| {} |", check.id);
        assert!(
            docs.contains(&heading) || docs.contains(&row),
            "docs/audit.md does not describe {}",
            check.id
        );
    }
}
