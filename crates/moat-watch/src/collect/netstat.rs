//! `/proc/net/netstat` (TcpExt) and `/proc/net/snmp` (Tcp) into [`HostSignals`].
//!
//! Both files are pairs of lines sharing a prefix: `TcpExt: Name1 Name2 ...` then
//! `TcpExt: 1 2 ...`. Counters are matched by name, never by position, because the set
//! grows with each kernel release.

use crate::sample::HostSignals;

/// The value of counter `name` in section `section` (`TcpExt`, `Tcp`, `IpExt`...) of a
/// header/value formatted file. `None` when the section or name is missing, the value
/// line is truncated, or the value is not a non-negative integer (`MaxConn` is `-1`).
pub fn counter(text: &str, section: &str, name: &str) -> Option<u64> {
    let mut lines = text.lines().filter_map(|line| {
        let (prefix, rest) = line.split_once(':')?;
        (prefix.trim() == section).then_some(rest)
    });
    // Sections appear twice in a row (names, then values); pair them up in order.
    while let Some(header) = lines.next() {
        let values = lines.next()?;
        let at = header.split_whitespace().position(|h| h == name);
        if let Some(at) = at {
            return values.split_whitespace().nth(at)?.parse().ok();
        }
    }
    None
}

/// The TcpExt counters of `/proc/net/netstat`: listen-queue overflows and drops, SYN-queue
/// drops and syncookies. The other fields of the result stay `None`.
pub fn parse_netstat(text: &str) -> HostSignals {
    let tcp_ext = |name| counter(text, "TcpExt", name);
    HostSignals {
        listen_overflows: tcp_ext("ListenOverflows"),
        listen_drops: tcp_ext("ListenDrops"),
        reqq_full_drop: tcp_ext("TCPReqQFullDrop"),
        reqq_full_do_cookies: tcp_ext("TCPReqQFullDoCookies"),
        syncookies_sent: tcp_ext("SyncookiesSent"),
        ..HostSignals::default()
    }
}

/// The Tcp counters of `/proc/net/snmp`: connections accepted (`PassiveOpens`) and
/// established now (`CurrEstab`). The other fields of the result stay `None`.
pub fn parse_snmp(text: &str) -> HostSignals {
    HostSignals {
        passive_opens: counter(text, "Tcp", "PassiveOpens"),
        curr_estab: counter(text, "Tcp", "CurrEstab"),
        ..HostSignals::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NETSTAT: &str = include_str!("../../tests/data/proc-net-netstat.txt");
    const SNMP: &str = include_str!("../../tests/data/proc-net-snmp.txt");

    #[test]
    fn parses_captured_netstat() {
        assert_eq!(
            parse_netstat(NETSTAT),
            HostSignals {
                listen_overflows: Some(135_861),
                listen_drops: Some(135_861),
                reqq_full_drop: Some(0),
                reqq_full_do_cookies: Some(2465),
                syncookies_sent: Some(2465),
                ..HostSignals::default()
            }
        );
    }

    #[test]
    fn parses_captured_snmp() {
        assert_eq!(
            parse_snmp(SNMP),
            HostSignals {
                passive_opens: Some(9_426_735),
                curr_estab: Some(0),
                ..HostSignals::default()
            }
        );
        // `MaxConn` is -1 (no limit): not a counter.
        assert_eq!(counter(SNMP, "Tcp", "MaxConn"), None);
        assert_eq!(counter(SNMP, "Tcp", "RtoMin"), Some(200));
        // Prefix match is exact: `Udp` is not `UdpLite`.
        assert_eq!(counter(SNMP, "Udp", "InDatagrams"), Some(232));
    }

    #[test]
    fn malformed_gives_none() {
        assert_eq!(parse_netstat(""), HostSignals::default());
        assert_eq!(parse_snmp("garbage\n\u{0}:::\n"), HostSignals::default());
        // Header without its value line.
        assert_eq!(
            counter("Tcp: PassiveOpens CurrEstab\n", "Tcp", "CurrEstab"),
            None
        );
        // Value line truncated before the field.
        assert_eq!(
            counter("Tcp: PassiveOpens CurrEstab\nTcp: 5\n", "Tcp", "CurrEstab"),
            None
        );
        assert_eq!(
            counter(
                "Tcp: PassiveOpens CurrEstab\nTcp: 5\n",
                "Tcp",
                "PassiveOpens"
            ),
            Some(5)
        );
        assert_eq!(counter("Tcp: A B\nTcp: x y\n", "Tcp", "B"), None);
        // The whole captured file cut anywhere never panics.
        for cut in (0..NETSTAT.len()).step_by(37) {
            if let Some(text) = NETSTAT.get(..cut) {
                let _ = parse_netstat(text);
            }
        }
    }
}
