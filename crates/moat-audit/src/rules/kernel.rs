//! The host's TCP settings that decide what a connection flood costs before Redis sees it:
//! listen and SYN backlogs, syncookies, overflow behaviour, port range, conntrack headroom.

use super::{CheckInfo, Evaluation, Fix, Severity, finding, no_config, no_host};
use crate::facts::Facts;

/// Redis's default `tcp-backlog`: less than this is a small accept queue.
const DEFAULT_BACKLOG: u64 = 511;

const KERNEL_DOC: &str = "https://www.kernel.org/doc/Documentation/networking/ip-sysctl.txt";

const BACKLOG_OVER: CheckInfo = CheckInfo {
    id: "tcp-backlog-over-somaxconn",
    severity: Severity::Medium,
    title: "tcp-backlog is above net.core.somaxconn and silently truncated",
    reference: "https://raw.githubusercontent.com/redis/redis/7.0/redis.conf (tcp-backlog)",
};
const BACKLOG_SMALL: CheckInfo = CheckInfo {
    id: "tcp-backlog-small",
    severity: Severity::Low,
    title: "the accept queue is small: bursts of connections overflow it",
    reference: "https://raw.githubusercontent.com/redis/redis/7.0/redis.conf (tcp-backlog)",
};
const SYNCOOKIES: CheckInfo = CheckInfo {
    id: "syncookies-off",
    severity: Severity::High,
    title: "SYN cookies are off: a SYN flood fills the SYN queue and drops real clients",
    reference: KERNEL_DOC,
};
const SYN_BACKLOG: CheckInfo = CheckInfo {
    id: "syn-backlog-small",
    severity: Severity::Low,
    title: "net.ipv4.tcp_max_syn_backlog is small",
    reference: KERNEL_DOC,
};
const ABORT: CheckInfo = CheckInfo {
    id: "abort-on-overflow-on",
    severity: Severity::Medium,
    title: "tcp_abort_on_overflow resets clients when the accept queue is full",
    reference: KERNEL_DOC,
};
const PORTS: CheckInfo = CheckInfo {
    id: "local-port-range-narrow",
    severity: Severity::Info,
    title: "few local ports for outgoing connections (proxies, clients on this host)",
    reference: KERNEL_DOC,
};
const CONNTRACK: CheckInfo = CheckInfo {
    id: "conntrack-headroom",
    severity: Severity::Medium,
    title: "the conntrack table is nearly full: new connections will be dropped host-wide",
    reference: "https://www.kernel.org/doc/Documentation/networking/nf_conntrack-sysctl.txt",
};

/// The checks of this module.
pub const CHECKS: &[CheckInfo] = &[
    BACKLOG_OVER,
    BACKLOG_SMALL,
    SYNCOOKIES,
    SYN_BACKLOG,
    ABORT,
    PORTS,
    CONNTRACK,
];

pub(crate) fn run(f: &Facts, ev: &mut Evaluation) {
    backlog(f, ev);
    sysctls(f, ev);
}

fn sysctl_fix(text: String, key: &str, value: impl ToString) -> Fix {
    Fix {
        text,
        sysctl: vec![(key.to_owned(), value.to_string())],
        ..Fix::default()
    }
}

fn backlog(f: &Facts, ev: &mut Evaluation) {
    let backlog = f.config_u64("tcp-backlog");
    let somaxconn = f.host.somaxconn;
    match (backlog, somaxconn) {
        (Some(b), Some(s)) if b > s => ev.push(finding(
            &BACKLOG_OVER,
            BACKLOG_OVER.severity,
            format!(
                "tcp-backlog is {b} but net.core.somaxconn is {s}: the kernel gives the \
                 listener {s} and Redis's setting is not what happens"
            ),
            sysctl_fix(
                format!(
                    "`sysctl -w net.core.somaxconn={b}` and persist it in /etc/sysctl.d \
                     (`--emit sysctl`); Redis applies its backlog at listen(), so restart it."
                ),
                "net.core.somaxconn",
                b,
            ),
        )),
        (None, _) => ev.skip(BACKLOG_OVER.id, no_config(f, "tcp-backlog")),
        (_, None) => ev.skip(BACKLOG_OVER.id, no_host(f, "net.core.somaxconn")),
        _ => {}
    }
    let effective = match (backlog, somaxconn) {
        (Some(b), Some(s)) => Some(b.min(s)),
        (Some(b), None) => Some(b),
        (None, _) => None,
    };
    match effective {
        None => ev.skip(BACKLOG_SMALL.id, no_config(f, "tcp-backlog")),
        Some(e) if e < DEFAULT_BACKLOG => {
            let mut fix = Fix {
                text: "Set `tcp-backlog 4096` in redis.conf (it needs a restart) and \
                       net.core.somaxconn to at least as much."
                    .to_owned(),
                redis_conf: vec!["tcp-backlog 4096".to_owned()],
                ..Fix::default()
            };
            if somaxconn.is_some_and(|s| s < 4096) {
                fix.sysctl
                    .push(("net.core.somaxconn".to_owned(), "4096".to_owned()));
            }
            ev.push(finding(
                &BACKLOG_SMALL,
                BACKLOG_SMALL.severity,
                format!(
                    "the listener's effective backlog is {e} (tcp-backlog {}, somaxconn {}), \
                     below Redis's default {DEFAULT_BACKLOG}",
                    show(backlog),
                    show(somaxconn)
                ),
                fix,
            ));
        }
        Some(_) => {}
    }
}

fn show(v: Option<u64>) -> String {
    v.map_or_else(|| "unknown".to_owned(), |v| v.to_string())
}

fn sysctls(f: &Facts, ev: &mut Evaluation) {
    let h = &f.host;
    match h.tcp_syncookies {
        None => ev.skip(SYNCOOKIES.id, no_host(f, "net.ipv4.tcp_syncookies")),
        Some(0) => ev.push(finding(
            &SYNCOOKIES,
            SYNCOOKIES.severity,
            "net.ipv4.tcp_syncookies is 0".to_owned(),
            sysctl_fix(
                "`sysctl -w net.ipv4.tcp_syncookies=1` and persist it.".to_owned(),
                "net.ipv4.tcp_syncookies",
                1,
            ),
        )),
        Some(_) => {}
    }
    match h.tcp_max_syn_backlog {
        None => ev.skip(SYN_BACKLOG.id, no_host(f, "net.ipv4.tcp_max_syn_backlog")),
        Some(n) if n < 1024 => ev.push(finding(
            &SYN_BACKLOG,
            SYN_BACKLOG.severity,
            format!("net.ipv4.tcp_max_syn_backlog is {n}"),
            sysctl_fix(
                "`sysctl -w net.ipv4.tcp_max_syn_backlog=4096` and persist it.".to_owned(),
                "net.ipv4.tcp_max_syn_backlog",
                4096,
            ),
        )),
        Some(_) => {}
    }
    match h.tcp_abort_on_overflow {
        None => ev.skip(ABORT.id, no_host(f, "net.ipv4.tcp_abort_on_overflow")),
        Some(0) => {}
        Some(v) => ev.push(finding(
            &ABORT,
            ABORT.severity,
            format!(
                "net.ipv4.tcp_abort_on_overflow is {v}: during a burst, legitimate clients \
                 get a reset instead of a retried handshake"
            ),
            sysctl_fix(
                "`sysctl -w net.ipv4.tcp_abort_on_overflow=0` and persist it.".to_owned(),
                "net.ipv4.tcp_abort_on_overflow",
                0,
            ),
        )),
    }
    match h.ip_local_port_range {
        None => ev.skip(PORTS.id, no_host(f, "net.ipv4.ip_local_port_range")),
        Some((lo, hi)) if hi.saturating_sub(lo) < 16_384 => ev.push(finding(
            &PORTS,
            PORTS.severity,
            format!(
                "net.ipv4.ip_local_port_range is {lo} {hi}: {} ports for outgoing \
                 connections to one destination",
                hi.saturating_sub(lo) + 1
            ),
            sysctl_fix(
                "`sysctl -w net.ipv4.ip_local_port_range=\"10240 65535\"` where this host \
                 opens many connections (a proxy in front of Redis, busy clients)."
                    .to_owned(),
                "net.ipv4.ip_local_port_range",
                "10240 65535",
            ),
        )),
        Some(_) => {}
    }
    match h.conntrack {
        None => ev.skip(
            CONNTRACK.id,
            if f.local {
                "conntrack is not loaded on this host (nothing to fill)".to_owned()
            } else {
                no_host(f, "conntrack usage")
            },
        ),
        Some((count, max)) if max > 0 && count.saturating_mul(4) >= max.saturating_mul(3) => {
            ev.push(finding(
                &CONNTRACK,
                CONNTRACK.severity,
                format!("conntrack holds {count} of {max} entries"),
                sysctl_fix(
                    format!(
                        "`sysctl -w net.netfilter.nf_conntrack_max={}` (and find what \
                         fills it)",
                        max.saturating_mul(2)
                    ),
                    "net.netfilter.nf_conntrack_max",
                    max.saturating_mul(2),
                ),
            ));
        }
        Some(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::evaluate;
    use crate::rules::test_facts::with_config;

    #[test]
    fn backlog_over_and_under() {
        let mut f = with_config(&[("tcp-backlog", "8192")]);
        f.host.somaxconn = Some(4096);
        let ev = evaluate(&f);
        assert!(ev.has("tcp-backlog-over-somaxconn") && !ev.has("tcp-backlog-small"));
        f.redis.config.insert("tcp-backlog".into(), "511".into());
        f.host.somaxconn = Some(128);
        let ev = evaluate(&f);
        assert!(!ev.has("tcp-backlog-over-somaxconn") || ev.has("tcp-backlog-small"));
        assert!(ev.has("tcp-backlog-small"));
        f.host.somaxconn = Some(4096);
        let ev = evaluate(&f);
        assert!(!ev.has("tcp-backlog-over-somaxconn") && !ev.has("tcp-backlog-small"));
    }

    #[test]
    fn sysctls() {
        let mut f = with_config(&[]);
        f.host.tcp_syncookies = Some(0);
        f.host.tcp_max_syn_backlog = Some(128);
        f.host.tcp_abort_on_overflow = Some(1);
        f.host.ip_local_port_range = Some((32768, 32768 + 1000));
        f.host.conntrack = Some((200_000, 262_144));
        let ev = evaluate(&f);
        for id in [
            "syncookies-off",
            "syn-backlog-small",
            "abort-on-overflow-on",
            "local-port-range-narrow",
            "conntrack-headroom",
        ] {
            assert!(ev.has(id), "{id}");
        }
        f.host.tcp_syncookies = Some(1);
        f.host.tcp_max_syn_backlog = Some(4096);
        f.host.tcp_abort_on_overflow = Some(0);
        f.host.ip_local_port_range = Some((32768, 60999));
        f.host.conntrack = Some((10, 262_144));
        let ev = evaluate(&f);
        assert!(ev.findings.is_empty(), "{:?}", ev.findings);
    }

    #[test]
    fn remote_skips_say_why() {
        let mut f = with_config(&[]);
        f.local = false;
        let ev = evaluate(&f);
        let s = ev
            .skipped
            .iter()
            .find(|s| s.id == "syncookies-off")
            .expect("skipped");
        assert!(s.why.contains("not on this host"), "{}", s.why);
    }
}
