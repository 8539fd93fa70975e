//! The host's side, when Redis runs on this machine: `/proc/sys` TCP settings, conntrack,
//! the Redis process's fd limit and owner, and its config file's mode and owner.
//!
//! The fd limit and conntrack come from moat-watch's reader, which also makes sure the pid
//! from INFO really is the process listening on Redis's port (a pid from a Redis on
//! another host would name some unrelated local process).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::facts::{Facts, FileFacts};

/// Fills `facts.host` from the `/proc` at `proc_root`.
pub fn collect(proc_root: &Path, facts: &mut Facts) {
    let sys = |name: &str| read(&proc_root.join("sys").join(name));
    let num = |name: &str| sys(name).and_then(|t| t.trim().parse::<u64>().ok());
    let h = &mut facts.host;
    h.somaxconn = num("net/core/somaxconn");
    h.tcp_max_syn_backlog = num("net/ipv4/tcp_max_syn_backlog");
    h.tcp_syncookies = num("net/ipv4/tcp_syncookies");
    h.tcp_abort_on_overflow = num("net/ipv4/tcp_abort_on_overflow");
    h.ip_local_port_range = sys("net/ipv4/ip_local_port_range").and_then(|t| {
        let mut it = t.split_whitespace().map(|w| w.parse::<u64>().ok());
        Some((it.next()??, it.next()??))
    });
    h.mem_total = read(&proc_root.join("meminfo")).and_then(|t| parse_mem_total(&t));
    if h.somaxconn.is_none() {
        facts.gap(
            "/proc/sys/net",
            "the kernel's TCP settings could not be read",
        );
    }

    let pid = facts.info("process_id").and_then(|p| p.parse::<u32>().ok());
    let port = facts.info("tcp_port").and_then(|p| p.parse::<u16>().ok());
    let backlog = facts.config_u64("tcp-backlog");
    let watch = moat_watch::collect::host::read_from(proc_root, pid, port, backlog);
    facts.host.conntrack = watch.conntrack;
    facts.host.fds = watch.fds;
    let Some(pid) = pid.filter(|_| watch.fds.is_some()) else {
        facts.gap(
            "the Redis process (/proc/PID)",
            match pid {
                None => "INFO gave no process_id".to_owned(),
                Some(pid) => format!(
                    "process {pid} from INFO is not readable here or is not the process \
                     listening on Redis's port (Redis in a container or on another host?)"
                ),
            },
        );
        return;
    };
    facts.host.redis_uid =
        read(&proc_root.join(pid.to_string()).join("status")).and_then(|t| parse_real_uid(&t));
    let Some(path) = facts
        .info("config_file")
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
    else {
        return;
    };
    match std::fs::metadata(&path) {
        Ok(meta) => {
            facts.host.config_file = Some(FileFacts {
                path: path.clone(),
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
            });
            // A readable file without the directive asks for Redis's default.
            facts.host.configured_maxclients = read(Path::new(&path)).and_then(|t| {
                configured(&t, "maxclients").map_or(Some(DEFAULT_MAXCLIENTS), |v| v.parse().ok())
            });
        }
        Err(e) => facts.gap(format!("config file {path}"), format!("{e}")),
    }
}

/// Redis's `maxclients` when nothing sets it.
const DEFAULT_MAXCLIENTS: u64 = 10_000;

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// `MemTotal:` of `/proc/meminfo`, in bytes.
pub fn parse_mem_total(text: &str) -> Option<u64> {
    let line = text.lines().find_map(|l| l.strip_prefix("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().next()?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The hard `Max open files` limit from `/proc/PID/limits`; `None` when unlimited.
pub fn parse_hard_nofile(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let rest = line.strip_prefix("Max open files")?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The real uid from the `Uid:` line of `/proc/PID/status`.
pub fn parse_real_uid(text: &str) -> Option<u32> {
    let line = text.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    line.split_whitespace().next()?.parse().ok()
}

/// The last value of a directive in a redis.conf text (later lines win, as in Redis).
pub fn configured(text: &str, name: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let key = words.next()?;
            key.eq_ignore_ascii_case(name)
                .then(|| words.next().map(str::to_owned))
                .flatten()
        })
        .next_back()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers() {
        assert_eq!(
            parse_mem_total("MemTotal:        8000000 kB\nMemFree: 1 kB\n"),
            Some(8_192_000_000)
        );
        assert_eq!(parse_mem_total("nothing"), None);
        assert_eq!(
            parse_real_uid("Name:\tx\nUid:\t110\t110\t110\t110\n"),
            Some(110)
        );
        assert_eq!(parse_real_uid("Uid:\n"), None);
        let limits = "Max open files            10032                20000                files\n";
        assert_eq!(parse_hard_nofile(limits), Some(20000));
        assert_eq!(parse_hard_nofile("Max open files 1 unlimited files"), None);
        let conf = "# maxclients 5\nmaxclients 100\nport 1\nMAXCLIENTS 200\n";
        assert_eq!(configured(conf, "maxclients").as_deref(), Some("200"));
        assert_eq!(configured(conf, "timeout"), None);
    }

    #[test]
    fn missing_proc_leaves_everything_unknown() {
        let mut f = Facts::default();
        collect(Path::new("/nonexistent-proc"), &mut f);
        assert_eq!(f.host, crate::facts::HostFacts::default());
        assert!(!f.gaps.is_empty());
    }
}
