//! Conntrack table usage from `/proc/sys/net/netfilter/nf_conntrack_{count,max}`.
//!
//! A full conntrack table drops new connections host-wide, before Redis or the listen
//! queue sees them. The files exist only when the module is loaded; absent is normal.

/// Entries in use and the table's maximum, from the texts of `nf_conntrack_count` and
/// `nf_conntrack_max`. `None` unless both are integers.
pub fn parse(count: &str, max: &str) -> Option<(u64, u64)> {
    Some((count.trim().parse().ok()?, max.trim().parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_captured_files() {
        let count = include_str!("../../tests/data/nf_conntrack_count.txt");
        let max = include_str!("../../tests/data/nf_conntrack_max.txt");
        assert_eq!(parse(count, max), Some((0, 262_144)));
    }

    #[test]
    fn malformed_gives_none() {
        assert_eq!(parse("", "262144"), None);
        assert_eq!(parse("12", "-1"), None);
        assert_eq!(parse("garbage", "\u{0}"), None);
    }
}
