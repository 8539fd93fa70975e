//! A redis.conf snippet with the settings the findings ask for. Appended to the config
//! file it takes effect at the next start (later lines win); the settings `--fix` can set
//! live are marked. Secrets are never invented: a missing password stays a comment.

use std::fmt::Write as _;

use crate::report::Audit;

/// The snippet.
pub fn render(audit: &Audit) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# moat audit: hardening against connection exhaustion for {}\n\
         # Append to redis.conf and restart (lines marked `live` can also be applied now\n\
         # with `moat audit --fix`). See docs/audit.md for each id.",
        audit.facts.target
    );
    let mut seen: Vec<String> = Vec::new();
    let mut any = false;
    for x in &audit.evaluation.findings {
        let lines: Vec<&String> = x
            .fix
            .redis_conf
            .iter()
            .filter(|l| !seen.contains(l))
            .collect();
        if lines.is_empty() {
            continue;
        }
        any = true;
        let live = if x.fix.live.is_empty() { "" } else { " (live)" };
        let _ = writeln!(s, "\n# {} [{}]{live}", x.id, x.severity.as_str());
        for l in lines {
            let _ = writeln!(s, "{l}");
            seen.push(l.clone());
        }
    }
    if !any {
        s.push_str("\n# nothing to change\n");
    }
    s
}
