//! One sample a second: the Redis INFO fields that matter, RSS and CPU time of every
//! process the lab started (from `/proc`), moat's `/metrics`, and the machine's busy CPU
//! (so foreign load can be told apart from the lab's own).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::targets::Proc;

/// INFO fields recorded.
pub const INFO_FIELDS: [&str; 6] = [
    "connected_clients",
    "rejected_connections",
    "total_connections_received",
    "used_memory",
    "mem_clients_normal",
    "blocked_clients",
];

/// Clock ticks per second of `/proc` CPU times (Linux's USER_HZ, 100 on every common
/// architecture).
const TICKS: f64 = 100.0;

/// What one second looked like.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    /// Seconds since the run started.
    pub t: f64,
    /// The phase current when taken.
    pub phase: String,
    /// INFO fields (absent when INFO did not answer).
    pub info: BTreeMap<String, u64>,
    /// Per process role: resident memory, bytes.
    pub rss: BTreeMap<String, u64>,
    /// Per process role: CPU time used so far, seconds.
    pub cpu_s: BTreeMap<String, f64>,
    /// moat's metrics: `moat_clients`, `moat_bans_active`, `refused:<reason>`.
    pub moat: BTreeMap<String, f64>,
    /// The machine's busy CPU time so far (all cores), seconds.
    pub machine_busy_s: f64,
}

/// A monitoring connection to Redis, opened from 127.0.0.1 before the attack so a full
/// Redis does not refuse it.
#[derive(Debug)]
pub struct Monitor {
    addr: Option<SocketAddr>,
    stream: Option<TcpStream>,
}

async fn open(addr: Option<SocketAddr>) -> Option<TcpStream> {
    tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr?))
        .await
        .ok()
        .and_then(Result::ok)
}

impl Monitor {
    /// Connects (a failure only means no INFO samples until a later one succeeds).
    pub async fn connect(addr: Option<SocketAddr>) -> Self {
        Self {
            addr,
            stream: open(addr).await,
        }
    }

    /// INFO's numeric fields of [`INFO_FIELDS`]; empty if Redis did not answer within a
    /// second. The connection is then dropped (a late reply cannot be told from the next)
    /// and opened again at the next sample, which a full Redis may refuse.
    pub async fn info(&mut self) -> BTreeMap<String, u64> {
        if self.stream.is_none() {
            self.stream = open(self.addr).await;
        }
        let Some(stream) = self.stream.as_mut() else {
            return BTreeMap::new();
        };
        match tokio::time::timeout(Duration::from_secs(1), info(stream)).await {
            Ok(Some(text)) => parse_info(&text),
            _ => {
                self.stream = None;
                BTreeMap::new()
            }
        }
    }
}

async fn info(stream: &mut TcpStream) -> Option<String> {
    stream.write_all(b"INFO\r\n").await.ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        // `$<len>\r\n<body>\r\n`
        if let Some(end) = buf.iter().position(|b| *b == b'\n') {
            let len: usize = std::str::from_utf8(buf.get(1..end)?)
                .ok()?
                .trim()
                .parse()
                .ok()?;
            if buf.len() >= end + 1 + len + 2 {
                return Some(String::from_utf8_lossy(&buf[end + 1..end + 1 + len]).into_owned());
            }
            if len > 1 << 20 {
                return None;
            }
        }
    }
}

/// The fields of [`INFO_FIELDS`] in an INFO body.
pub fn parse_info(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| l.trim().split_once(':'))
        .filter(|(k, _)| INFO_FIELDS.contains(k))
        .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
        .collect()
}

/// RSS (bytes) and CPU time (seconds) of a process, from `/proc`.
pub fn proc_usage(pid: u32) -> Option<(u64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3 (state).
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Some((rss_kb * 1024, (utime + stime) / TICKS))
}

/// Every process's parent, from `/proc/*/stat`.
pub(super) fn parents() -> Vec<(u32, u32)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let ppid = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((pid, ppid))
        })
        .collect()
}

/// The children of `pid`, their children, and so on.
pub(super) fn descendants(pid: u32, parents: &[(u32, u32)]) -> Vec<u32> {
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    // Bounded: a PID is visited once, and there are finitely many.
    while let Some(p) = frontier.pop() {
        let children: Vec<u32> = parents
            .iter()
            .filter(|(c, pp)| *pp == p && !out.contains(c))
            .map(|(c, _)| *c)
            .collect();
        out.extend(&children);
        frontier.extend(children);
    }
    out
}

/// The machine's busy CPU time (all cores, seconds) from `/proc/stat`.
pub fn machine_busy() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: idle and iowait are not busy.
    let busy: f64 = v
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4 && *i < 8)
        .map(|(_, x)| x)
        .sum();
    busy / TICKS
}

/// Cores of the machine.
pub fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

/// A few families of moat's `/metrics` (clients, refusals by reason, bans active).
pub async fn moat_metrics(admin: SocketAddr) -> BTreeMap<String, f64> {
    let body = tokio::time::timeout(Duration::from_secs(1), http_get(admin, "/metrics"))
        .await
        .ok()
        .flatten()
        .unwrap_or_default();
    parse_metrics(&body)
}

async fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut out = Vec::new();
    s.take(4 << 20).read_to_end(&mut out).await.ok()?;
    let text = String::from_utf8_lossy(&out).into_owned();
    text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())
}

/// The families the report uses, summed over their labels except `reason` of refusals.
pub fn parse_metrics(body: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let Some((name_labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = name_labels
            .split_once('{')
            .map_or((name_labels, ""), |(n, l)| (n, l));
        let key = match name {
            "moat_clients" => "moat_clients".to_owned(),
            "moat_bans_active" => "moat_bans_active".to_owned(),
            "moat_connections_refused_total" | "moat_connections_refused" => {
                let reason = labels
                    .split(',')
                    .find_map(|l| l.strip_prefix("reason=\""))
                    .map(|r| r.trim_end_matches(['"', '}']))
                    .unwrap_or("other");
                format!("refused:{reason}")
            }
            _ => continue,
        };
        *out.entry(key).or_insert(0.0) += value;
    }
    out
}

/// Takes one sample.
pub async fn sample(
    t: f64,
    phase: String,
    monitor: &mut Monitor,
    procs: &[Proc],
    admin: Option<SocketAddr>,
) -> Sample {
    let mut s = Sample {
        t,
        phase,
        info: monitor.info().await,
        machine_busy_s: machine_busy(),
        ..Sample::default()
    };
    let parents = parents();
    for p in procs {
        // An attack split over processes (shards) does its work in its children.
        let mut family = vec![p.pid];
        if p.role == "attack" {
            family.extend(descendants(p.pid, &parents));
        }
        for pid in family {
            if let Some((rss, cpu)) = proc_usage(pid) {
                *s.rss.entry(p.role.clone()).or_insert(0) += rss;
                *s.cpu_s.entry(p.role.clone()).or_insert(0.0) += cpu;
            }
        }
    }
    if let Some(admin) = admin {
        s.moat = moat_metrics(admin).await;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_info_and_metrics() {
        let info = parse_info("# Clients\r\nconnected_clients:7\r\nblocked_clients:0\r\nx:1\r\n");
        assert_eq!(info.get("connected_clients"), Some(&7));
        assert_eq!(info.len(), 2);
        let m = parse_metrics(
            "# HELP x\nmoat_clients{class=\"a\"} 2\nmoat_clients{class=\"b\"} 3\n\
             moat_connections_refused_total{reason=\"rate\"} 5\nmoat_bans_active 1\n",
        );
        assert_eq!(m.get("moat_clients"), Some(&5.0));
        assert_eq!(m.get("refused:rate"), Some(&5.0));
        assert_eq!(m.get("moat_bans_active"), Some(&1.0));
    }

    #[test]
    fn reads_own_proc() {
        let (rss, _cpu) = proc_usage(std::process::id()).expect("own /proc");
        assert!(rss > 0);
        assert!(machine_busy() > 0.0);
    }
}
