//! The Redis listener's accept queue, from `/proc/net/tcp` and `/proc/net/tcp6`.
//!
//! Each line is one socket: `sl local_address rem_address st tx_queue:rx_queue ...`, with
//! addresses as `HEXADDR:HEXPORT` and the state in hex (`0A` = LISTEN). For a listening
//! socket the kernel prints its accept-queue length (`sk_ack_backlog`) as `rx_queue`;
//! `tx_queue` is always 0 there (unlike `ss`, which shows the backlog as Send-Q over
//! netlink), so the queue's size comes from [`effective_backlog`] instead.

/// The `tcp-backlog` Redis uses when the collector could not read its config.
pub const REDIS_DEFAULT_TCP_BACKLOG: u64 = 511;

/// The `st` column value of a listening socket.
const LISTEN: &str = "0A";

/// The longest accept queue among the listening sockets on `port` in one table (Redis may
/// listen on several addresses; the fullest one is the one that overflows first). `None`
/// when no listener on `port` appears, or the text is not a socket table.
pub fn accept_queue_len(text: &str, port: u16) -> Option<u64> {
    text.lines()
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            let _slot = cols.next()?;
            let local = cols.next()?;
            let _remote = cols.next()?;
            let state = cols.next()?;
            let queues = cols.next()?;
            if state != LISTEN {
                return None;
            }
            let (_, local_port) = local.rsplit_once(':')?;
            if u16::from_str_radix(local_port, 16).ok()? != port {
                return None;
            }
            let (_tx, rx) = queues.split_once(':')?;
            u64::from_str_radix(rx, 16).ok()
        })
        .max()
}

/// The size of a listener's accept queue: the kernel caps the backlog asked for by
/// `listen()` (Redis's `tcp-backlog`) at `net.core.somaxconn`. With `tcp_backlog`
/// unknown, Redis's default is assumed; with `somaxconn` unknown, no cap is applied.
pub fn effective_backlog(tcp_backlog: Option<u64>, somaxconn: Option<u64>) -> u64 {
    let asked = tcp_backlog.unwrap_or(REDIS_DEFAULT_TCP_BACKLOG);
    somaxconn.map_or(asked, |cap| asked.min(cap))
}

/// `net.core.somaxconn` from `/proc/sys/net/core/somaxconn`.
pub fn parse_somaxconn(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = include_str!("../../tests/data/proc-net-tcp.txt");
    const TCP6: &str = include_str!("../../tests/data/proc-net-tcp6.txt");
    // A listener on 127.0.0.1 and ::1, port 49831, with 3 and 1 connections not accepted.
    const TCP_BACKLOGGED: &str = include_str!("../../tests/data/proc-net-tcp-backlogged.txt");
    const TCP6_BACKLOGGED: &str = include_str!("../../tests/data/proc-net-tcp6-backlogged.txt");

    #[test]
    fn idle_redis_listener_has_an_empty_queue() {
        assert_eq!(accept_queue_len(TCP, 59971), Some(0));
        assert_eq!(accept_queue_len(TCP, 2024), Some(0));
        // A client socket (TIME_WAIT, `06`) on local port 54840 is not a listener.
        assert_eq!(accept_queue_len(TCP, 54840), None);
        // The IPv6 table holds only its header.
        assert_eq!(accept_queue_len(TCP6, 59971), None);
    }

    #[test]
    fn backlogged_listener_shows_its_queue() {
        assert_eq!(accept_queue_len(TCP_BACKLOGGED, 49831), Some(3));
        assert_eq!(accept_queue_len(TCP6_BACKLOGGED, 49831), Some(1));
        assert_eq!(accept_queue_len(TCP_BACKLOGGED, 2024), Some(0));
    }

    #[test]
    fn backlog_is_capped_by_somaxconn() {
        assert_eq!(effective_backlog(None, Some(4096)), 511);
        assert_eq!(effective_backlog(Some(8192), Some(4096)), 4096);
        assert_eq!(effective_backlog(Some(100), None), 100);
        assert_eq!(parse_somaxconn("4096\n"), Some(4096));
        assert_eq!(parse_somaxconn(""), None);
        assert_eq!(parse_somaxconn("x"), None);
    }

    #[test]
    fn malformed_gives_none() {
        assert_eq!(accept_queue_len("", 59971), None);
        assert_eq!(accept_queue_len("garbage\n\u{0}\n", 59971), None);
        // Truncated before the queues.
        assert_eq!(
            accept_queue_len("   1: 0100007F:EA43 00000000:0000 0A", 59971),
            None
        );
        // Bad hex in the port or the queue.
        assert_eq!(
            accept_queue_len("1: 0100007F:ZZZZ 0:0 0A 0:3 00:0", 59971),
            None
        );
        assert_eq!(
            accept_queue_len("1: 0100007F:EA43 0:0 0A 0:XY 00:0", 59971),
            None
        );
        assert_eq!(
            accept_queue_len("1: 0100007F:EA43 0:0 0A 00000000 00:0", 59971),
            None
        );
        for cut in 0..TCP_BACKLOGGED.len() {
            if let Some(text) = TCP_BACKLOGGED.get(..cut) {
                let _ = accept_queue_len(text, 49831);
            }
        }
    }
}
