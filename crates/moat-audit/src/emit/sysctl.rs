//! A `/etc/sysctl.d/` file with the kernel settings the findings ask for (load it with
//! `sysctl --system`). One value per key: the largest asked for.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::report::Audit;

/// The file's text.
pub fn render(audit: &Audit) -> String {
    let mut keys: BTreeMap<&str, (&str, Vec<&str>)> = BTreeMap::new();
    for x in &audit.evaluation.findings {
        for (k, v) in &x.fix.sysctl {
            let entry = keys.entry(k).or_insert((v, Vec::new()));
            if larger(v, entry.0) {
                entry.0 = v;
            }
            entry.1.push(&x.id);
        }
    }
    let mut s = format!(
        "# moat audit: kernel settings for {} (Redis's host)\n\
         # Install as /etc/sysctl.d/60-moat-redis.conf, then `sysctl --system`.\n",
        audit.facts.target
    );
    if keys.is_empty() {
        s.push_str(if audit.facts.local {
            "# nothing to change\n"
        } else {
            "# nothing checked: Redis is not on this host; run the audit there\n"
        });
    }
    for (k, (v, ids)) in keys {
        let _ = writeln!(s, "\n# {}\n{k} = {v}", ids.join(", "));
    }
    s
}

fn larger(a: &str, b: &str) -> bool {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(a), Ok(b)) => a > b,
        _ => false,
    }
}
