//! The human report: worst findings first, each with evidence and fix, then what could
//! not be checked. Colour (ANSI) only when asked, i.e. when stdout is a terminal.

use std::fmt::Write as _;

use super::Audit;
use crate::rules::Severity;

/// The report; `colour` adds ANSI colours to severities.
pub fn render(audit: &Audit, colour: bool) -> String {
    let mut s = String::new();
    let f = &audit.facts;
    let _ = writeln!(s, "moat audit of {}", f.target);
    let version = f.redis.version.as_deref().unwrap_or("unknown");
    let _ = writeln!(
        s,
        "Redis {version}; settings from {}; host checks: {}",
        match f.redis.config_source {
            crate::facts::ConfigSource::ConfigGet => "CONFIG GET",
            crate::facts::ConfigSource::Info => "INFO only (CONFIG refused)",
            crate::facts::ConfigSource::None => "nowhere (Redis did not answer the audit)",
        },
        if f.local {
            "this host"
        } else {
            "none (Redis is remote)"
        }
    );
    if let Some(moat) = &f.redis.behind_moat {
        let _ = writeln!(s, "Behind moat: {moat}.");
    }
    let ev = &audit.evaluation;
    let _ = writeln!(s);
    if ev.findings.is_empty() {
        let _ = writeln!(s, "No findings.");
    }
    for x in &ev.findings {
        let _ = writeln!(s, "[{}] {}: {}", paint(x.severity, colour), x.id, x.title);
        let _ = writeln!(s, "    evidence: {}", x.evidence);
        if !x.fix.text.is_empty() {
            let _ = writeln!(s, "    fix:      {}", x.fix.text);
        }
        let _ = writeln!(s, "    ref:      {}", x.reference);
    }
    if !ev.skipped.is_empty() || !f.gaps.is_empty() {
        let _ = writeln!(s, "\nNot checked:");
        for g in &f.gaps {
            let _ = writeln!(s, "  - {}: {}", g.what, g.why);
        }
        for k in &ev.skipped {
            let _ = writeln!(s, "  - {}: {}", k.id, k.why);
        }
    }
    let counts: Vec<String> = [
        Severity::Critical,
        Severity::High,
        Severity::Medium,
        Severity::Low,
        Severity::Info,
    ]
    .iter()
    .filter_map(|sev| {
        let n = ev.findings.iter().filter(|x| x.severity == *sev).count();
        (n > 0).then(|| format!("{n} {}", sev.as_str()))
    })
    .collect();
    let _ = writeln!(
        s,
        "\n{} finding(s){}; {} check(s) not run; exit status {}",
        ev.findings.len(),
        if counts.is_empty() {
            String::new()
        } else {
            format!(" ({})", counts.join(", "))
        },
        ev.skipped.len(),
        audit.exit_code()
    );
    s
}

fn paint(sev: Severity, colour: bool) -> String {
    let name = sev.as_str().to_ascii_uppercase();
    if !colour {
        return name;
    }
    let code = match sev {
        Severity::Critical => "1;35",
        Severity::High => "1;31",
        Severity::Medium => "33",
        Severity::Low => "36",
        Severity::Info => "2",
    };
    format!("\x1b[{code}m{name}\x1b[0m")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::test_facts::with_config;

    #[test]
    fn colour_only_when_asked() {
        let audit = Audit::new(with_config(&[("timeout", "0")]));
        let plain = render(&audit, false);
        assert!(plain.contains("[MEDIUM] timeout-zero") && !plain.contains('\x1b'));
        assert!(render(&audit, true).contains("\x1b[33mMEDIUM"));
        assert!(plain.contains("Not checked:"), "{plain}");
        assert!(plain.contains("exit status 4"), "{plain}");
    }
}
