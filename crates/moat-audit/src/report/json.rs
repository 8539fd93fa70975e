//! The audit as one JSON document: target, worst severity, exit code, findings, skipped
//! checks, gaps, and the facts themselves (password hashes excluded).

use super::Audit;

/// The JSON text (pretty-printed, one document).
pub fn render(audit: &Audit) -> String {
    let doc = serde_json::json!({
        "tool": "moat audit",
        "version": env!("CARGO_PKG_VERSION"),
        "target": audit.facts.target,
        "worst": audit.evaluation.worst(),
        "exit_code": audit.exit_code(),
        "findings": audit.evaluation.findings,
        "skipped": audit.evaluation.skipped,
        "gaps": audit.facts.gaps,
        "facts": audit.facts,
    });
    serde_json::to_string_pretty(&doc).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}
