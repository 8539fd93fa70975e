//! The server version against [`crate::advisories`], and whether a moat sits in front
//! (then the audit sees Redis's settings but moat's clients and port).

use super::{CheckInfo, Evaluation, Fix, Severity, finding};
use crate::advisories::{ADVISORIES, fixed_release, show};
use crate::facts::Facts;

const BEHIND_MOAT: CheckInfo = CheckInfo {
    id: "behind-moat",
    severity: Severity::Info,
    title: "the audit reached Redis through moat",
    reference: "docs/audit.md#behind-moat",
};

/// The checks of this module: one per advisory, and `behind-moat`.
pub fn checks() -> Vec<CheckInfo> {
    let mut all: Vec<CheckInfo> = ADVISORIES
        .iter()
        .map(|a| CheckInfo {
            id: advisory_id(a.cve),
            severity: Severity::Medium,
            title: a.summary,
            reference: a.reference,
        })
        .collect();
    all.push(BEHIND_MOAT);
    all
}

/// `advisory-cve-2025-21605`: a static id per advisory of the table.
fn advisory_id(cve: &'static str) -> &'static str {
    match cve {
        "CVE-2021-32675" => "advisory-cve-2021-32675",
        "CVE-2023-45145" => "advisory-cve-2023-45145",
        "CVE-2025-21605" => "advisory-cve-2025-21605",
        "CVE-2025-48367" => "advisory-cve-2025-48367",
        _ => "advisory",
    }
}

pub(crate) fn run(f: &Facts, ev: &mut Evaluation) {
    if let Some(evidence) = &f.redis.behind_moat {
        ev.push(finding(
            &BEHIND_MOAT,
            Severity::Info,
            format!(
                "{evidence}. Settings, version and ACL are Redis's (moat forwards CONFIG, \
                 INFO and ACL); CLIENT LIST, the port and the connection limits clients \
                 meet are moat's"
            ),
            Fix::default(),
        ));
    }
    let Some(version) = f.version() else {
        for check in checks().iter().filter(|c| c.id.starts_with("advisory-")) {
            ev.skip(
                check.id,
                "the server version is unknown (INFO was not readable)",
            );
        }
        return;
    };
    for a in ADVISORIES {
        let id = advisory_id(a.cve);
        if a.cve == "CVE-2023-45145" && f.config("unixsocket").is_some_and(str::is_empty) {
            continue;
        }
        let Some(fix) = fixed_release(a, version) else {
            continue;
        };
        ev.push(finding(
            &CheckInfo {
                id,
                severity: Severity::Medium,
                title: a.summary,
                reference: a.reference,
            },
            Severity::Medium,
            format!(
                "redis_version is {}; {} was fixed upstream in {} (this branch: move to {}). \
                 Distributions backport fixes without changing the version: check your \
                 package's changelog before concluding",
                show(version),
                a.cve,
                a.fixed
                    .iter()
                    .map(|v| show(*v))
                    .collect::<Vec<_>>()
                    .join(", "),
                show(fix)
            ),
            Fix {
                text: format!(
                    "Upgrade to {} or later, or confirm that your distribution's package \
                     carries the fix for {}.",
                    show(fix),
                    a.cve
                ),
                ..Fix::default()
            },
        ));
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::evaluate;
    use crate::rules::test_facts::with_config;

    #[test]
    fn debian_bookworm_redis() {
        let mut f = with_config(&[("unixsocket", "")]);
        f.redis.version = Some("7.0.15".into());
        let ev = evaluate(&f);
        assert!(ev.has("advisory-cve-2025-21605") && ev.has("advisory-cve-2025-48367"));
        assert!(!ev.has("advisory-cve-2021-32675") && !ev.has("advisory-cve-2023-45145"));
        let hit = ev
            .findings
            .iter()
            .find(|x| x.id == "advisory-cve-2025-21605")
            .expect("found");
        assert!(hit.evidence.contains("7.0.15") && hit.evidence.contains("7.2.8"));
        assert!(hit.evidence.contains("backport"));
    }

    #[test]
    fn unix_socket_advisory_needs_a_socket() {
        let mut f = with_config(&[("unixsocket", "")]);
        f.redis.version = Some("7.0.10".into());
        assert!(!evaluate(&f).has("advisory-cve-2023-45145"));
        f.redis
            .config
            .insert("unixsocket".into(), "/run/redis.sock".into());
        assert!(evaluate(&f).has("advisory-cve-2023-45145"));
    }

    #[test]
    fn unknown_version_is_skipped_and_moat_is_said() {
        let mut f = with_config(&[]);
        f.redis.version = None;
        f.redis.behind_moat = Some("CLIENT INFO shows rbs=0".into());
        let ev = evaluate(&f);
        assert!(ev.has("behind-moat"));
        assert!(ev.skipped.iter().any(|s| s.id == "advisory-cve-2025-21605"));
        let ids = super::checks();
        assert!(ids.iter().all(|c| c.id != "advisory"));
    }
}
