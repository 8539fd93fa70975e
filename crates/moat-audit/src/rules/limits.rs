//! Connection limits and idle handling: `maxclients` against the fd limit and memory,
//! `timeout`, `tcp-keepalive`, and connections Redis already had to refuse.

use super::{CheckInfo, Evaluation, Fix, Severity, finding, no_config, no_host};
use crate::facts::{Facts, parse_memory};

/// Redis keeps this many descriptors for itself and lowers `maxclients` to the limit minus it.
pub const RESERVED_FDS: u64 = 32;

/// What an idle client costs Redis at accept (measured: 17.6 KB of `used_memory`).
pub const CLIENT_COST: u64 = 18 * 1024;

const MAXCLIENTS_FD: CheckInfo = CheckInfo {
    id: "maxclients-over-fd-limit",
    severity: Severity::Medium,
    title: "maxclients is more than the process's fd limit allows",
    reference: "https://redis.io/docs/latest/develop/reference/clients/#maximum-concurrent-connected-clients",
};
const MAXCLIENTS_MEMORY: CheckInfo = CheckInfo {
    id: "maxclients-over-memory",
    severity: Severity::Medium,
    title: "maxclients idle clients alone would take much of maxmemory",
    reference: "https://redis.io/docs/latest/develop/reference/clients/#client-eviction",
};
const TIMEOUT: CheckInfo = CheckInfo {
    id: "timeout-zero",
    severity: Severity::Medium,
    title: "idle clients are never closed (timeout 0)",
    reference: "https://raw.githubusercontent.com/redis/redis/7.0/redis.conf (timeout)",
};
const KEEPALIVE_OFF: CheckInfo = CheckInfo {
    id: "tcp-keepalive-off",
    severity: Severity::Medium,
    title: "dead peers are never detected (tcp-keepalive 0)",
    reference: "https://raw.githubusercontent.com/redis/redis/7.0/redis.conf (tcp-keepalive)",
};
const KEEPALIVE_LONG: CheckInfo = CheckInfo {
    id: "tcp-keepalive-long",
    severity: Severity::Low,
    title: "dead peers hold their connection for a long time (tcp-keepalive above 300 s)",
    reference: "https://raw.githubusercontent.com/redis/redis/7.0/redis.conf (tcp-keepalive)",
};
const REJECTED: CheckInfo = CheckInfo {
    id: "rejected-connections",
    severity: Severity::Low,
    title: "Redis has already refused connections at maxclients",
    reference: "https://redis.io/docs/latest/commands/info/ (rejected_connections)",
};

/// The checks of this module.
pub const CHECKS: &[CheckInfo] = &[
    MAXCLIENTS_FD,
    MAXCLIENTS_MEMORY,
    TIMEOUT,
    KEEPALIVE_OFF,
    KEEPALIVE_LONG,
    REJECTED,
];

pub(crate) fn run(f: &Facts, ev: &mut Evaluation) {
    maxclients_fd(f, ev);
    maxclients_memory(f, ev);
    timeout(f, ev);
    keepalive(f, ev);
    rejected(f, ev);
}

fn maxclients_fd(f: &Facts, ev: &mut Evaluation) {
    let Some(running) = f.config_u64("maxclients") else {
        return ev.skip(MAXCLIENTS_FD.id, no_config(f, "maxclients"));
    };
    let Some((_, limit)) = f.host.fds else {
        return ev.skip(
            MAXCLIENTS_FD.id,
            no_host(f, "the Redis process's fd limit (/proc/PID/limits)"),
        );
    };
    let allowed = limit.saturating_sub(RESERVED_FDS);
    let asked = f.host.configured_maxclients;
    let evidence = match asked {
        Some(asked) if asked > allowed => format!(
            "the config file asks for maxclients {asked}, the fd limit is {limit}: Redis \
             silently lowered it to {running} (limit minus {RESERVED_FDS})"
        ),
        _ if running > allowed => format!(
            "maxclients is {running} but the fd limit is {limit}: accept() will fail \
             before Redis reaches maxclients"
        ),
        // Without the file: a soft limit that reached the hard one and maxclients right at
        // it is what a lowered value looks like (a raised limit stops below the hard one).
        None if running == allowed && f.host.fd_hard_limit == Some(limit) => format!(
            "maxclients is {running}, exactly the fd limit {limit} minus {RESERVED_FDS}, and \
             the limit is the hard one: Redis most likely lowered a larger configured value \
             at startup (its log says so)"
        ),
        _ => return,
    };
    let want = asked.unwrap_or(running).max(running);
    let fix = Fix {
        text: format!(
            "Either raise the Redis process's open-file limit to at least {} (systemd: \
             `LimitNOFILE={}` in the unit's [Service] section, then restart), or set \
             `maxclients {allowed}` so the config says what Redis really does.",
            want + RESERVED_FDS,
            want + RESERVED_FDS
        ),
        redis_conf: vec![format!("maxclients {allowed}")],
        ..Fix::default()
    };
    ev.push(finding(
        &MAXCLIENTS_FD,
        MAXCLIENTS_FD.severity,
        evidence,
        fix,
    ));
}

fn maxclients_memory(f: &Facts, ev: &mut Evaluation) {
    let Some(maxclients) = f.config_u64("maxclients") else {
        return ev.skip(MAXCLIENTS_MEMORY.id, no_config(f, "maxclients"));
    };
    let maxmemory = f
        .config("maxmemory")
        .and_then(parse_memory)
        .filter(|&m| m > 0);
    let (budget, what) = match (maxmemory, f.host.mem_total) {
        (Some(m), _) => (m, "maxmemory"),
        (None, Some(total)) => (total, "the host's memory"),
        (None, None) => {
            return ev.skip(
                MAXCLIENTS_MEMORY.id,
                "neither maxmemory nor the host's memory is known",
            );
        }
    };
    let cost = maxclients.saturating_mul(CLIENT_COST);
    if cost <= budget / 4 {
        return;
    }
    let evidence = format!(
        "{maxclients} clients at ~{} KiB each (measured cost of an idle connection at \
         accept) is {} MiB, more than a quarter of {what} ({} MiB)",
        CLIENT_COST / 1024,
        cost >> 20,
        budget >> 20
    );
    let fix = Fix {
        text: "Bound what clients may take together with `maxmemory-clients` (see \
               maxmemory-clients-off), or lower maxclients to what the memory can hold; \
               a hoard of idle connections should not be able to evict data."
            .to_owned(),
        ..Fix::default()
    };
    ev.push(finding(
        &MAXCLIENTS_MEMORY,
        MAXCLIENTS_MEMORY.severity,
        evidence,
        fix,
    ));
}

fn timeout(f: &Facts, ev: &mut Evaluation) {
    match f.config_u64("timeout") {
        None => ev.skip(TIMEOUT.id, no_config(f, "timeout")),
        // Behind moat, Redis's clients are moat's pooled connections, idle by design
        // between bursts; moat's own idle deadlines close the hoarders.
        Some(0) if f.redis.behind_moat.is_some() => ev.push(finding(
            &TIMEOUT,
            Severity::Low,
            "timeout is 0; behind moat, Redis's clients are moat's pooled connections and \
             moat's idle deadlines close idle clients, but anyone reaching Redis's own port \
             directly can still hoard it"
                .to_owned(),
            Fix {
                text: "Keep Redis's port reachable only by moat (bind, `--emit nftables` on \
                       Redis's host); a Redis `timeout` would also close moat's idle pooled \
                       connections, so set it above moat's backend idle time if at all."
                    .to_owned(),
                ..Fix::default()
            },
        )),
        Some(0) => ev.push(finding(
            &TIMEOUT,
            TIMEOUT.severity,
            "timeout is 0: a connection that never sends anything is kept for ever, so a \
             slowloris hoard keeps its slots"
                .to_owned(),
            Fix {
                text: "`CONFIG SET timeout 300` (idle clients closed after 5 minutes; \
                       pub/sub clients are exempt; pools reconnect), then persist it."
                    .to_owned(),
                redis_conf: vec!["timeout 300".to_owned()],
                live: vec![("timeout".to_owned(), "300".to_owned())],
                ..Fix::default()
            },
        )),
        Some(_) => {}
    }
}

fn keepalive(f: &Facts, ev: &mut Evaluation) {
    let Some(value) = f.config_u64("tcp-keepalive") else {
        ev.skip(KEEPALIVE_OFF.id, no_config(f, "tcp-keepalive"));
        return ev.skip(KEEPALIVE_LONG.id, no_config(f, "tcp-keepalive"));
    };
    let fix = Fix {
        text: "`CONFIG SET tcp-keepalive 60` (applies to new connections), then persist it."
            .to_owned(),
        redis_conf: vec!["tcp-keepalive 60".to_owned()],
        live: vec![("tcp-keepalive".to_owned(), "60".to_owned())],
        ..Fix::default()
    };
    if value == 0 {
        ev.push(finding(
            &KEEPALIVE_OFF,
            KEEPALIVE_OFF.severity,
            "tcp-keepalive is 0: connections of vanished clients stay until the timeout, \
             or for ever"
                .to_owned(),
            fix,
        ));
    } else if value > 300 {
        ev.push(finding(
            &KEEPALIVE_LONG,
            KEEPALIVE_LONG.severity,
            format!("tcp-keepalive is {value} s (Redis's default is 300)"),
            fix,
        ));
    }
}

fn rejected(f: &Facts, ev: &mut Evaluation) {
    let Some(n) = f
        .info("rejected_connections")
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return ev.skip(REJECTED.id, "INFO rejected_connections is unknown");
    };
    if n > 0 {
        ev.push(finding(
            &REJECTED,
            REJECTED.severity,
            format!(
                "INFO rejected_connections is {n}: clients were turned away with `max number \
                 of clients reached` since Redis started"
            ),
            Fix {
                text: "Find who holds the connections (`CLIENT LIST`, or `moat watch \
                       --clients`); put moat in front of Redis to cap sources; raise \
                       maxclients only if the fd limit and memory allow."
                    .to_owned(),
                ..Fix::default()
            },
        ));
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::evaluate;
    use crate::rules::test_facts::with_config;

    #[test]
    fn lowered_maxclients_is_found_from_the_file_or_the_exact_value() {
        let mut f = with_config(&[("maxclients", "10000")]);
        // Redis raised its soft limit to maxclients + 32, below the hard limit: fine.
        f.host.fds = Some((10, 10_032));
        f.host.fd_hard_limit = Some(20_000);
        assert!(!evaluate(&f).has("maxclients-over-fd-limit"));
        f.host.configured_maxclients = Some(10_000);
        assert!(!evaluate(&f).has("maxclients-over-fd-limit"));
        f.host.configured_maxclients = None;
        f.redis.config.insert("maxclients".into(), "19968".into());
        f.host.fds = Some((10, 20000));
        let ev = evaluate(&f);
        assert!(ev.has("maxclients-over-fd-limit"), "exact limit minus 32");
        f.redis.config.insert("maxclients".into(), "1000".into());
        assert!(!evaluate(&f).has("maxclients-over-fd-limit"));
        f.host.configured_maxclients = Some(100_000);
        f.redis.config.insert("maxclients".into(), "19968".into());
        let ev = evaluate(&f);
        let hit = ev
            .findings
            .iter()
            .find(|x| x.id == "maxclients-over-fd-limit")
            .expect("found");
        assert!(hit.evidence.contains("100000"), "{}", hit.evidence);
        assert!(
            hit.fix.text.contains("LimitNOFILE=100032"),
            "{}",
            hit.fix.text
        );
    }

    #[test]
    fn remote_redis_skips_the_fd_check() {
        let mut f = with_config(&[("maxclients", "10000")]);
        f.local = false;
        let ev = evaluate(&f);
        let s = ev
            .skipped
            .iter()
            .find(|s| s.id == "maxclients-over-fd-limit")
            .expect("skipped");
        assert!(s.why.contains("not on this host"), "{}", s.why);
    }

    #[test]
    fn memory_budget() {
        let f = with_config(&[("maxclients", "10000"), ("maxmemory", "100mb")]);
        assert!(evaluate(&f).has("maxclients-over-memory"));
        let f = with_config(&[("maxclients", "1000"), ("maxmemory", "1gb")]);
        assert!(!evaluate(&f).has("maxclients-over-memory"));
        let mut f = with_config(&[("maxclients", "10000"), ("maxmemory", "0")]);
        f.host.mem_total = Some(16 << 30);
        assert!(!evaluate(&f).has("maxclients-over-memory"));
    }

    #[test]
    fn timeout_and_keepalive() {
        let f = with_config(&[("timeout", "0"), ("tcp-keepalive", "0")]);
        let ev = evaluate(&f);
        assert!(ev.has("timeout-zero") && ev.has("tcp-keepalive-off"));
        assert!(!ev.has("tcp-keepalive-long"));
        let f = with_config(&[("timeout", "60"), ("tcp-keepalive", "7200")]);
        let ev = evaluate(&f);
        assert!(!ev.has("timeout-zero") && ev.has("tcp-keepalive-long"));
        let f = with_config(&[("timeout", "60"), ("tcp-keepalive", "300")]);
        assert!(!evaluate(&f).has("tcp-keepalive-long"));
        let mut f = with_config(&[("timeout", "0")]);
        f.redis.behind_moat = Some("CLIENT INFO".into());
        let ev = evaluate(&f);
        let hit = ev
            .findings
            .iter()
            .find(|x| x.id == "timeout-zero")
            .expect("found");
        assert_eq!(hit.severity, crate::rules::Severity::Low);
        assert!(hit.fix.live.is_empty(), "no live timeout behind moat");
    }

    #[test]
    fn rejected_connections_from_info() {
        let mut f = with_config(&[]);
        f.redis
            .info
            .insert("rejected_connections".into(), "0".into());
        assert!(!evaluate(&f).has("rejected-connections"));
        f.redis
            .info
            .insert("rejected_connections".into(), "12".into());
        assert!(evaluate(&f).has("rejected-connections"));
    }
}
