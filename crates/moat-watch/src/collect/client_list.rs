//! A `CLIENT LIST` reply summarised by source address: who holds the connections, how many
//! never ran a command, how many sit idle. Pure: text in, [`ClientsSummary`] out. The
//! monitor's own connection (named `moat-watch`) is left out.

use std::collections::HashMap;

use crate::sample::ClientsSummary;

/// Sources kept in [`ClientsSummary::top`].
pub const TOP: usize = 5;

/// Summarises `CLIENT LIST` text (one `key=value ...` line per client). Lines without an
/// `addr=` are skipped; a unix-socket client counts under its path.
pub fn summarise(text: &str) -> ClientsSummary {
    let mut by_source: HashMap<&str, u64> = HashMap::new();
    let mut summary = ClientsSummary::default();
    for line in text.lines() {
        let field = |key: &str| {
            line.split(' ')
                .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        };
        let Some(addr) = field("addr") else { continue };
        if field("name") == Some("moat-watch") {
            continue;
        }
        // `ip:port` or `[v6]:port`: the source is everything before the last colon.
        let source = addr
            .rsplit_once(':')
            .map_or(addr, |(ip, _)| ip)
            .trim_matches(['[', ']']);
        *by_source.entry(source).or_default() += 1;
        summary.total += 1;
        if field("cmd") == Some("NULL") {
            summary.never_ran += 1;
        }
        if field("idle")
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|idle| idle >= 60)
        {
            summary.idle_over_minute += 1;
        }
    }
    let mut top: Vec<(String, u64)> = by_source
        .into_iter()
        .map(|(s, n)| (s.to_owned(), n))
        .collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    top.truncate(TOP);
    summary.top = top;
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = "\
id=3 addr=127.0.0.1:50000 laddr=127.0.0.1:6379 fd=8 name=moat-watch age=9 idle=0 flags=N db=0 cmd=info\n\
id=4 addr=10.0.0.7:41000 laddr=127.0.0.1:6379 fd=9 name= age=90 idle=90 flags=N db=0 cmd=NULL\n\
id=5 addr=10.0.0.7:41001 laddr=127.0.0.1:6379 fd=10 name= age=90 idle=90 flags=N db=0 cmd=NULL\n\
id=6 addr=10.0.0.7:41002 laddr=127.0.0.1:6379 fd=11 name= age=5 idle=5 flags=N db=0 cmd=NULL\n\
id=7 addr=[::1]:41003 laddr=[::1]:6379 fd=12 name=app age=5 idle=0 flags=N db=0 cmd=get\n\
id=8 addr=192.168.1.2:5000 laddr=127.0.0.1:6379 fd=13 name=app age=5 idle=1 flags=N db=0 cmd=set\n";

    #[test]
    fn sources_are_ranked_and_hoard_marks_counted() {
        let s = summarise(LIST);
        assert_eq!(s.total, 5, "the monitor itself is left out");
        assert_eq!(s.top[0], ("10.0.0.7".to_owned(), 3));
        assert_eq!(s.top.len(), 3);
        assert!(s.top.contains(&("::1".to_owned(), 1)));
        assert_eq!(s.never_ran, 3);
        assert_eq!(s.idle_over_minute, 2);
    }

    #[test]
    fn garbage_and_empty_give_an_empty_summary() {
        assert_eq!(summarise(""), ClientsSummary::default());
        assert_eq!(
            summarise("no fields here\n\u{0}\u{ff}"),
            ClientsSummary::default()
        );
        let s = summarise("addr=justtext cmd=NULL");
        assert_eq!((s.total, s.never_ran), (1, 1));
    }
}
