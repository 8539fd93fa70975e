//! What clients may cost Redis in memory: client eviction, the normal clients' output
//! buffer limit (the slow reader's amplification), the query buffer limit, `maxmemory`.

use super::{CheckInfo, Evaluation, Fix, Severity, finding, no_config};
use crate::facts::{Facts, parse_memory};

/// The query buffer limit Redis ships with (1 GB).
const DEFAULT_QUERY_LIMIT: u64 = 1 << 30;

const CLIENTS_OFF: CheckInfo = CheckInfo {
    id: "maxmemory-clients-off",
    severity: Severity::Medium,
    title: "client eviction is off (maxmemory-clients 0)",
    reference: "https://redis.io/docs/latest/develop/reference/clients/#client-eviction",
};
const OUTPUT_UNSET: CheckInfo = CheckInfo {
    id: "output-buffer-limit-normal-unset",
    severity: Severity::High,
    title: "normal clients' output buffers are unlimited (a slow reader can cost gigabytes)",
    reference: "https://redis.io/docs/latest/develop/reference/clients/#output-buffer-limits",
};
const QUERY_DEFAULT: CheckInfo = CheckInfo {
    id: "query-buffer-limit-default",
    severity: Severity::Low,
    title: "one client's query buffer may grow to 1 GB",
    reference: "https://redis.io/docs/latest/develop/reference/clients/#query-buffer-hard-limit",
};
const MAXMEMORY_UNSET: CheckInfo = CheckInfo {
    id: "maxmemory-unset",
    severity: Severity::Low,
    title: "no maxmemory: clients and data can grow until the host's OOM killer acts",
    reference: "https://redis.io/docs/latest/develop/reference/eviction/",
};

/// The checks of this module.
pub const CHECKS: &[CheckInfo] = &[CLIENTS_OFF, OUTPUT_UNSET, QUERY_DEFAULT, MAXMEMORY_UNSET];

/// The normal-class limit the fix sets: 64 MiB hard, 16 MiB for 60 s.
pub const OUTPUT_LIMIT: &str = "normal 64mb 16mb 60";

pub(crate) fn run(f: &Facts, ev: &mut Evaluation) {
    clients(f, ev);
    output(f, ev);
    query(f, ev);
    maxmemory(f, ev);
}

fn clients(f: &Facts, ev: &mut Evaluation) {
    if f.version().is_some_and(|(major, _, _)| major < 7) {
        return ev.skip(CLIENTS_OFF.id, "client eviction needs Redis 7.0 or later");
    }
    let Some(value) = f.config("maxmemory-clients") else {
        return ev.skip(CLIENTS_OFF.id, no_config(f, "maxmemory-clients"));
    };
    if value.trim() != "0" {
        return;
    }
    let maxmemory = f.config("maxmemory").and_then(parse_memory).unwrap_or(0);
    // A percentage is of maxmemory: without one it would mean nothing.
    let target = if maxmemory > 0 { "10%" } else { "512mb" };
    ev.push(finding(
        &CLIENTS_OFF,
        CLIENTS_OFF.severity,
        "maxmemory-clients is 0: clients' buffers together are unbounded, so a hoard of \
         connections or slow readers can push Redis into eviction or the OOM killer"
            .to_owned(),
        Fix {
            text: format!(
                "`CONFIG SET maxmemory-clients {target}`: the biggest clients are evicted \
                 first when all clients together exceed it. Protect monitoring connections \
                 with `CLIENT NO-EVICT on`."
            ),
            redis_conf: vec![format!("maxmemory-clients {target}")],
            live: vec![("maxmemory-clients".to_owned(), target.to_owned())],
            ..Fix::default()
        },
    ));
}

/// The normal class's (hard, soft, seconds) from a `client-output-buffer-limit` value.
pub fn normal_limit(value: &str) -> Option<(u64, u64, u64)> {
    let words: Vec<&str> = value.split_whitespace().collect();
    let at = words
        .iter()
        .position(|w| w.eq_ignore_ascii_case("normal"))?;
    let hard = parse_memory(words.get(at + 1)?)?;
    let soft = parse_memory(words.get(at + 2)?)?;
    let secs = words.get(at + 3)?.parse().ok()?;
    Some((hard, soft, secs))
}

fn output(f: &Facts, ev: &mut Evaluation) {
    let Some(value) = f.config("client-output-buffer-limit") else {
        return ev.skip(OUTPUT_UNSET.id, no_config(f, "client-output-buffer-limit"));
    };
    let Some((hard, soft, _)) = normal_limit(value) else {
        return ev.skip(
            OUTPUT_UNSET.id,
            format!("client-output-buffer-limit `{value}` has no readable normal class"),
        );
    };
    if hard != 0 || soft != 0 {
        return;
    }
    ev.push(finding(
        &OUTPUT_UNSET,
        OUTPUT_UNSET.severity,
        "client-output-buffer-limit normal is 0 0 0: a client that asks for big replies and \
         never reads them grows Redis without bound (measured: ~2 GB from one client \
         pipelining 200k GETs of 10 KB)"
            .to_owned(),
        Fix {
            text: format!(
                "`CONFIG SET client-output-buffer-limit \"{OUTPUT_LIMIT}\"`: a normal client \
                 whose unread replies pass 64 MiB, or 16 MiB for a minute, is disconnected. \
                 Raise it if legitimate clients fetch bigger replies in one go."
            ),
            redis_conf: vec![format!("client-output-buffer-limit {OUTPUT_LIMIT}")],
            live: vec![(
                "client-output-buffer-limit".to_owned(),
                OUTPUT_LIMIT.to_owned(),
            )],
            ..Fix::default()
        },
    ));
}

fn query(f: &Facts, ev: &mut Evaluation) {
    let Some(value) = f.config("client-query-buffer-limit") else {
        return ev.skip(QUERY_DEFAULT.id, no_config(f, "client-query-buffer-limit"));
    };
    if parse_memory(value) != Some(DEFAULT_QUERY_LIMIT) {
        return;
    }
    ev.push(finding(
        &QUERY_DEFAULT,
        QUERY_DEFAULT.severity,
        "client-query-buffer-limit is the 1 GB default: an authenticated client that sends \
         a huge request without finishing it holds up to 1 GB"
            .to_owned(),
        Fix {
            text: "`CONFIG SET client-query-buffer-limit 64mb`, if no legitimate value or \
                   pipeline is bigger."
                .to_owned(),
            redis_conf: vec!["client-query-buffer-limit 64mb".to_owned()],
            live: vec![("client-query-buffer-limit".to_owned(), "64mb".to_owned())],
            ..Fix::default()
        },
    ));
}

fn maxmemory(f: &Facts, ev: &mut Evaluation) {
    let Some(value) = f.config("maxmemory") else {
        return ev.skip(MAXMEMORY_UNSET.id, no_config(f, "maxmemory"));
    };
    if parse_memory(value) != Some(0) {
        return;
    }
    let suggestion = f.host.mem_total.map_or_else(
        || "about three quarters of the memory Redis may use".to_owned(),
        |total| {
            format!(
                "{}mb (three quarters of this host's memory)",
                (total >> 20) * 3 / 4
            )
        },
    );
    ev.push(finding(
        &MAXMEMORY_UNSET,
        MAXMEMORY_UNSET.severity,
        "maxmemory is 0: nothing bounds Redis below the host's memory, and \
         maxmemory-clients as a percentage means nothing"
            .to_owned(),
        Fix {
            text: format!(
                "Set `maxmemory` to {suggestion} with a `maxmemory-policy` that suits the \
                 data (noeviction refuses writes; allkeys-lru evicts). Not applied by \
                 --fix: it changes what happens to data."
            ),
            ..Fix::default()
        },
    ));
}

#[cfg(test)]
mod tests {
    use super::normal_limit;
    use crate::rules::evaluate;
    use crate::rules::test_facts::with_config;

    #[test]
    fn reads_the_normal_class() {
        let v = "normal 0 0 0 slave 268435456 67108864 60 pubsub 33554432 8388608 60";
        assert_eq!(normal_limit(v), Some((0, 0, 0)));
        assert_eq!(
            normal_limit("normal 64mb 16mb 60"),
            Some((64 << 20, 16 << 20, 60))
        );
        assert_eq!(normal_limit("pubsub 1 2 3"), None);
        assert_eq!(normal_limit("normal 1"), None);
    }

    #[test]
    fn weak_memory_settings() {
        let f = with_config(&[
            ("maxmemory-clients", "0"),
            ("maxmemory", "0"),
            (
                "client-output-buffer-limit",
                "normal 0 0 0 slave 268435456 67108864 60 pubsub 33554432 8388608 60",
            ),
            ("client-query-buffer-limit", "1073741824"),
        ]);
        let ev = evaluate(&f);
        for id in [
            "maxmemory-clients-off",
            "output-buffer-limit-normal-unset",
            "query-buffer-limit-default",
            "maxmemory-unset",
        ] {
            assert!(ev.has(id), "{id}");
        }
        let fix = &ev
            .findings
            .iter()
            .find(|x| x.id == "maxmemory-clients-off")
            .expect("found")
            .fix;
        assert_eq!(fix.live, [("maxmemory-clients".into(), "512mb".into())]);
    }

    #[test]
    fn hardened_memory_settings() {
        let f = with_config(&[
            ("maxmemory-clients", "10%"),
            ("maxmemory", "1gb"),
            ("client-output-buffer-limit", "normal 67108864 16777216 60"),
            ("client-query-buffer-limit", "67108864"),
        ]);
        assert!(evaluate(&f).findings.is_empty());
    }

    #[test]
    fn old_redis_has_no_client_eviction() {
        let mut f = with_config(&[("maxmemory-clients", "0")]);
        f.redis.version = Some("6.2.14".into());
        let ev = evaluate(&f);
        assert!(!ev.has("maxmemory-clients-off"));
        assert!(ev.skipped.iter().any(|s| s.id == "maxmemory-clients-off"));
    }
}
