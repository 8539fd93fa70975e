//! The Redis process's resources from `/proc/PID/*`: open fds against `Max open files`,
//! CPU time and resident memory. An fd-exhaustion attack shows as fds nearing the limit
//! before Redis starts refusing connections.

use std::path::Path;

/// Clock ticks per second in `/proc/PID/stat` (`USER_HZ`): fixed at 100 by the Linux ABI
/// on every mainstream architecture, which spares an `unsafe` `sysconf(_SC_CLK_TCK)` call.
pub const USER_HZ: u64 = 100;

/// The soft `Max open files` limit from `/proc/PID/limits` (the one `accept()` hits).
/// `None` when the line is missing, garbled or `unlimited`.
pub fn parse_max_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let rest = line.strip_prefix("Max open files")?;
    rest.split_whitespace().next()?.parse().ok()
}

/// CPU time, user plus system, in seconds, from `/proc/PID/stat` with `clk_tck` ticks per
/// second. The command name (field 2) is in parentheses and may hold spaces and `)`, so
/// fields are counted from the last `)`.
pub fn parse_cpu_seconds(stat: &str, clk_tck: u64) -> Option<f64> {
    if clk_tck == 0 {
        return None;
    }
    let (_, after_comm) = stat.rsplit_once(')')?;
    // After the name: state (field 3) at index 0, so utime (14) is 11 and stime (15) 12.
    let mut fields = after_comm.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime.saturating_add(stime) as f64 / clk_tck as f64)
}

/// Resident memory in bytes, from the `VmRSS:` line of `/proc/PID/status` (in kB there).
/// `None` when missing (kernel threads have none) or garbled.
pub fn parse_rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let mut parts = line.split_whitespace();
    let kib: u64 = parts.next()?.parse().ok()?;
    if parts.next() != Some("kB") {
        return None;
    }
    kib.checked_mul(1024)
}

/// Counts the entries of an fd directory (`/proc/PID/fd`): the process's open files.
/// The only I/O in this module; `None` when it cannot be read (gone, another user's
/// process without the right to look).
pub fn count_fds(fd_dir: &Path) -> Option<u64> {
    let entries = std::fs::read_dir(fd_dir).ok()?;
    let mut n: u64 = 0;
    for entry in entries {
        entry.ok()?;
        n = n.saturating_add(1);
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: &str = include_str!("../../tests/data/proc-pid-limits.txt");
    const STAT: &str = include_str!("../../tests/data/proc-pid-stat.txt");
    const STATUS: &str = include_str!("../../tests/data/proc-pid-status.txt");

    #[test]
    fn parses_captured_files() {
        assert_eq!(parse_max_open_files(LIMITS), Some(20000));
        // utime 1 + stime 1 ticks.
        assert_eq!(parse_cpu_seconds(STAT, USER_HZ), Some(0.02));
        assert_eq!(parse_rss_bytes(STATUS), Some(12_164 * 1024));
    }

    #[test]
    fn comm_with_spaces_and_parens() {
        let stat = "42 (evil ) 1 2 (x) S 1 1 1 0 -1 0 0 0 0 0 250 50 0 0 20 0 1 0 9 0 0";
        assert_eq!(parse_cpu_seconds(stat, 100), Some(3.0));
    }

    #[test]
    fn own_fds_are_counted() {
        let n = count_fds(Path::new("/proc/self/fd"));
        assert!(n.is_some_and(|n| n >= 3), "{n:?}");
        assert_eq!(count_fds(Path::new("/nonexistent/fd")), None);
    }

    #[test]
    fn malformed_gives_none() {
        assert_eq!(parse_max_open_files(""), None);
        assert_eq!(
            parse_max_open_files("Max open files            unlimited            unlimited"),
            None
        );
        assert_eq!(parse_max_open_files("Max open files"), None);
        assert_eq!(parse_cpu_seconds("", 100), None);
        assert_eq!(parse_cpu_seconds(STAT, 0), None);
        assert_eq!(parse_cpu_seconds("20379 (redis-server) S 1 2 3", 100), None);
        assert_eq!(
            parse_cpu_seconds("no parens at all 1 2 3 4 5 6 7 8 9 10 11 12 13", 100),
            None
        );
        assert_eq!(parse_rss_bytes("Name:\tredis\nVmRSS:\n"), None);
        assert_eq!(parse_rss_bytes("VmRSS:\t12 MB\n"), None);
        assert_eq!(parse_rss_bytes("VmRSS:\t99999999999999999999 kB\n"), None);
        for cut in 0..STAT.len() {
            if let Some(text) = STAT.get(..cut) {
                let _ = parse_cpu_seconds(text, USER_HZ);
            }
        }
    }
}
