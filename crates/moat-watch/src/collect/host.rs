//! The host's view of Redis, when Redis runs on this machine: the only file I/O of the
//! collectors. Every file may be missing (Redis on another host, a container, no
//! permission on another user's process, conntrack not loaded): each field of
//! [`HostSignals`] is then `None`, never an error, so a partial view still gets watched.

use std::path::Path;

use super::{conntrack, netstat, process, tcp_table};
use crate::sample::HostSignals;

/// Reads the host signals from the real `/proc`. `pid` is Redis's `process_id` and `port`
/// its `tcp_port` (from INFO); `tcp_backlog` its `tcp-backlog` config when known (else
/// Redis's default is assumed for the accept queue's size). Call it only for a Redis
/// reached on a local address: the kernel counters are this host's.
pub fn read(pid: Option<u32>, port: Option<u16>, tcp_backlog: Option<u64>) -> HostSignals {
    read_from(Path::new("/proc"), pid, port, tcp_backlog)
}

/// [`read`] with `/proc` mounted at `proc_root` (tests point it at a fake tree).
///
/// With `pid` known, the network files come from `/proc/PID/net/`, which is Redis's own
/// network namespace (a containerised Redis has its own listen queues and counters);
/// without it, or when that is unreadable, from `/proc/net` (the reader's namespace).
pub fn read_from(
    proc_root: &Path,
    pid: Option<u32>,
    port: Option<u16>,
    tcp_backlog: Option<u64>,
) -> HostSignals {
    let pid_dir = pid.map(|pid| proc_root.join(pid.to_string()));
    // `tcp_port:0` is a Redis listening on a unix socket only.
    let port = port.filter(|&port| port != 0);
    let net_file = |name: &str| {
        pid_dir
            .as_ref()
            .and_then(|dir| read_text(&dir.join("net").join(name)))
            .or_else(|| read_text(&proc_root.join("net").join(name)))
    };

    let mut host = net_file("netstat")
        .map(|text| netstat::parse_netstat(&text))
        .unwrap_or_default();
    if let Some(text) = net_file("snmp") {
        let snmp = netstat::parse_snmp(&text);
        host.passive_opens = snmp.passive_opens;
        host.curr_estab = snmp.curr_estab;
    }

    let queue_len = port.and_then(|port| {
        let v4 = net_file("tcp").and_then(|t| tcp_table::accept_queue_len(&t, port));
        let v6 = net_file("tcp6").and_then(|t| tcp_table::accept_queue_len(&t, port));
        v4.max(v6)
    });
    host.accept_queue = queue_len.map(|len| {
        let somaxconn = read_text(&proc_root.join("sys/net/core/somaxconn"))
            .and_then(|t| tcp_table::parse_somaxconn(&t));
        (len, tcp_table::effective_backlog(tcp_backlog, somaxconn))
    });

    let netfilter = proc_root.join("sys/net/netfilter");
    host.conntrack = read_text(&netfilter.join("nf_conntrack_count"))
        .zip(read_text(&netfilter.join("nf_conntrack_max")))
        .and_then(|(count, max)| conntrack::parse(&count, &max));

    // A pid from INFO names a local process only if Redis runs here: when nothing listens
    // on Redis's port in that pid's network namespace, the pid belongs to some other
    // process (Redis is on another host) and its fds, CPU and RSS would be misleading.
    let pid_is_redis = port.is_none() || queue_len.is_some();
    if let Some(dir) = pid_dir.as_ref().filter(|_| pid_is_redis) {
        let open = process::count_fds(&dir.join("fd"));
        let limit = read_text(&dir.join("limits")).and_then(|t| process::parse_max_open_files(&t));
        host.fds = open.zip(limit);
        host.cpu_seconds = read_text(&dir.join("stat"))
            .and_then(|t| process::parse_cpu_seconds(&t, process::USER_HZ));
        host.rss_bytes = read_text(&dir.join("status")).and_then(|t| process::parse_rss_bytes(&t));
    }
    host
}

/// A file's text, or `None` for any failure: missing, unreadable, not UTF-8.
fn read_text(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    /// A fake `/proc` holding the captured files: the Redis process (pid 20379) with three
    /// fds, its network namespace, and conntrack.
    fn fake_proc() -> tempfile::TempDir {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
        let root = tempfile::tempdir().expect("tempdir");
        let pid = root.path().join("20379");
        for dir in [
            "net",
            "sys/net/core",
            "sys/net/netfilter",
            "20379/net",
            "20379/fd",
        ] {
            fs::create_dir_all(root.path().join(dir)).expect("mkdir");
        }
        let copies = [
            ("proc-net-netstat.txt", "20379/net/netstat"),
            ("proc-net-snmp.txt", "20379/net/snmp"),
            ("proc-net-tcp-backlogged.txt", "20379/net/tcp"),
            ("proc-net-tcp6-backlogged.txt", "20379/net/tcp6"),
            ("proc-pid-limits.txt", "20379/limits"),
            ("proc-pid-stat.txt", "20379/stat"),
            ("proc-pid-status.txt", "20379/status"),
            (
                "nf_conntrack_count.txt",
                "sys/net/netfilter/nf_conntrack_count",
            ),
            ("nf_conntrack_max.txt", "sys/net/netfilter/nf_conntrack_max"),
        ];
        for (from, to) in copies {
            fs::copy(data.join(from), root.path().join(to)).expect("copy");
        }
        fs::write(root.path().join("sys/net/core/somaxconn"), "4096\n").expect("write");
        for fd in ["0", "1", "2"] {
            fs::write(pid.join("fd").join(fd), "").expect("write");
        }
        root
    }

    #[test]
    fn reads_a_full_fake_proc() {
        let root = fake_proc();
        let host = read_from(root.path(), Some(20379), Some(49831), Some(128));
        assert_eq!(
            host,
            HostSignals {
                listen_overflows: Some(135_861),
                listen_drops: Some(135_861),
                reqq_full_drop: Some(0),
                reqq_full_do_cookies: Some(2465),
                syncookies_sent: Some(2465),
                passive_opens: Some(9_426_735),
                curr_estab: Some(0),
                accept_queue: Some((3, 128)),
                conntrack: Some((0, 262_144)),
                fds: Some((3, 20000)),
                cpu_seconds: Some(0.02),
                rss_bytes: Some(12_164 * 1024),
            }
        );
    }

    #[test]
    fn without_pid_uses_proc_net_and_skips_the_process() {
        let root = fake_proc();
        // /proc/net is empty here: only conntrack remains.
        let host = read_from(root.path(), None, Some(49831), None);
        assert_eq!(
            host,
            HostSignals {
                conntrack: Some((0, 262_144)),
                ..HostSignals::default()
            }
        );
    }

    #[test]
    fn missing_everything_is_all_none() {
        let host = read_from(Path::new("/nonexistent-proc"), Some(1), Some(6379), None);
        assert_eq!(host, HostSignals::default());
        let root = fake_proc();
        // A pid that is gone, a port nobody listens on.
        let host = read_from(root.path(), Some(4_000_000), Some(1), None);
        assert_eq!(host.accept_queue, None);
        assert_eq!(host.fds, None);
        assert_eq!(host.cpu_seconds, None);
    }

    #[test]
    fn a_pid_without_the_listener_is_not_redis() {
        let root = fake_proc();
        // Process 20379 exists but nothing listens on port 6379 in its namespace: the pid
        // came from a Redis on another host, so the process fields stay unknown.
        let host = read_from(root.path(), Some(20379), Some(6379), None);
        assert_eq!(
            (host.fds, host.cpu_seconds, host.rss_bytes),
            (None, None, None)
        );
        assert_eq!(host.accept_queue, None);
        // Without a port (a unix-socket-only Redis) the pid is trusted.
        let host = read_from(root.path(), Some(20379), None, None);
        assert_eq!(host.fds, Some((3, 20000)));
        let host = read_from(root.path(), Some(20379), Some(0), None);
        assert_eq!(host.fds, Some((3, 20000)));
    }

    #[test]
    fn reads_this_process_from_the_real_proc() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        // Two connections the listener never accepts wait in its queue.
        let _clients: Vec<_> = (0..2)
            .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect"))
            .collect();
        let host = read(Some(std::process::id()), Some(port), Some(64));
        let (len, size) = host.accept_queue.expect("our listener is in /proc/net/tcp");
        // The last handshake ACK may still be in flight on a loaded machine.
        assert!(len <= 2, "{len}");
        assert!(size <= 64 && size > 0, "{size}");
        assert!(
            host.fds
                .is_some_and(|(open, limit)| open >= 3 && limit >= open),
            "{host:?}"
        );
        assert!(host.rss_bytes.is_some_and(|b| b > 0));
        assert!(host.cpu_seconds.is_some());
        assert!(host.passive_opens.is_some());
    }
}
