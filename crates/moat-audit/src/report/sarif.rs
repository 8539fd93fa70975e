//! SARIF 2.1.0 for CI code scanning (GitHub accepts it with `upload-sarif`): one rule per
//! check of the catalog, one result per finding. A server has no source file, so each
//! result points at a stable pseudo-file named after the target (GitHub requires a
//! location), and carries a `partialFingerprints` entry so re-runs match.

use serde_json::{Value, json};

use super::Audit;
use crate::rules::{Severity, catalog};

/// SARIF's levels: error, warning, note.
fn level(sev: Severity) -> &'static str {
    match sev {
        Severity::Critical | Severity::High => "error",
        Severity::Medium => "warning",
        Severity::Low | Severity::Info => "note",
    }
}

/// GitHub's `security-severity` (0.0 to 10.0), which sets its alert severity.
fn security_severity(sev: Severity) -> &'static str {
    match sev {
        Severity::Critical => "9.5",
        Severity::High => "8.0",
        Severity::Medium => "5.5",
        Severity::Low => "3.0",
        Severity::Info => "0.0",
    }
}

/// The SARIF log as JSON text.
pub fn render(audit: &Audit) -> String {
    let rules: Vec<Value> = catalog()
        .iter()
        .map(|c| {
            let mut rule = json!({
                "id": c.id,
                "name": c.id,
                "shortDescription": { "text": c.title },
                "fullDescription": { "text": c.title },
                "help": { "text": format!("{} See docs/audit.md#{} and {}.", c.title, c.id, c.reference) },
                "defaultConfiguration": { "level": level(c.severity) },
                "properties": {
                    "tags": ["security", "redis", "connection-exhaustion"],
                    "security-severity": security_severity(c.severity),
                },
            });
            // helpUri must be an absolute URI: the reference's first one, if it has one.
            if let Some(uri) = c
                .reference
                .split([' ', ',', ';', '(', ')'])
                .find(|w| w.starts_with("https://"))
            {
                rule["helpUri"] = json!(uri);
            }
            rule
        })
        .collect();
    let ids: Vec<&str> = catalog().iter().map(|c| c.id).collect();
    let uri = pseudo_uri(&audit.facts.target);
    let results: Vec<Value> = audit
        .evaluation
        .findings
        .iter()
        .map(|x| {
            let mut r = json!({
                "ruleId": x.id,
                "level": level(x.severity),
                "message": { "text": format!("{} Evidence: {} Fix: {}", x.title, x.evidence, x.fix.text) },
                "locations": [{
                    "physicalLocation": {
                        "artifactLocation": { "uri": uri },
                        "region": { "startLine": 1 },
                    }
                }],
                "partialFingerprints": { "moatAudit/v1": format!("{}:{}", uri, x.id) },
                "properties": { "severity": x.severity.as_str() },
            });
            if let Some(i) = ids.iter().position(|id| *id == x.id) {
                r["ruleIndex"] = json!(i);
            }
            r
        })
        .collect();
    let not_checked: Vec<String> = audit
        .facts
        .gaps
        .iter()
        .map(|g| format!("{}: {}", g.what, g.why))
        .chain(
            audit
                .evaluation
                .skipped
                .iter()
                .map(|k| format!("{}: {}", k.id, k.why)),
        )
        .collect();
    let doc = json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": { "driver": {
                "name": "moat audit",
                "version": env!("CARGO_PKG_VERSION"),
                "informationUri": "https://example.invalid/moat/docs/audit.md",
                "rules": rules,
            }},
            "automationDetails": { "id": format!("moat-audit/{uri}/") },
            "results": results,
            "invocations": [{
                "executionSuccessful": true,
                "toolExecutionNotifications": not_checked.iter().map(|t| json!({
                    "level": "note",
                    "message": { "text": format!("not checked: {t}") },
                })).collect::<Vec<_>>(),
            }],
        }],
    });
    serde_json::to_string_pretty(&doc).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// `redis://***@host:6379` as `redis/host_6379.conf`: a stable relative path.
fn pseudo_uri(target: &str) -> String {
    let rest = target.split_once("://").map_or(target, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let clean: String = rest
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("redis/{clean}.conf")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::test_facts::with_config;

    #[test]
    fn results_point_at_known_rules() {
        let audit = Audit::new(with_config(&[("timeout", "0")]));
        let doc: Value = serde_json::from_str(&render(&audit)).expect("json");
        assert_eq!(doc["version"], "2.1.0");
        let run = &doc["runs"][0];
        let rules = run["tool"]["driver"]["rules"].as_array().expect("rules");
        let r = &run["results"][0];
        assert_eq!(r["ruleId"], "timeout-zero");
        let i = r["ruleIndex"].as_u64().expect("index") as usize;
        assert_eq!(rules[i]["id"], "timeout-zero");
        assert_eq!(
            r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"],
            "redis/127.0.0.1_6379.conf"
        );
    }
}
