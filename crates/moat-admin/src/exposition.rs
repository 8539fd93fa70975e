//! The Prometheus text exposition of moat's metrics, built with `prometheus-client` from a
//! [`Snapshot`] taken at scrape time.
//!
//! Each scrape encodes one snapshot through a collector in a fresh registry: nothing is
//! registered or updated between scrapes, and the data path never sees the exporter. The
//! names, types and labels are those of `docs/metrics.md`; every labelled family lists all
//! of its labels, zeros included, so series never appear or vanish.

use std::fmt;

use moat_proxy::stats::{Histogram, Snapshot};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// The `Content-Type` of [`render`]'s output (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The `/metrics` body for `snapshot`.
pub fn render(snapshot: &Snapshot) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SnapshotCollector(snapshot.clone())));
    let mut out = String::with_capacity(16 << 10);
    // Writing to a String cannot fail, and every value encoded here is plain.
    if prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).is_err() {
        tracing::error!("cannot encode the metrics");
    }
    out
}

const REFUSED: [&str; 8] = [
    "denied",
    "banned",
    "ip_rate",
    "subnet_rate",
    "ip_concurrency",
    "subnet_concurrency",
    "full",
    "shed",
];
const CLASSES: [&str; 3] = ["trusted", "authenticated", "unauthenticated"];
const CLOSED: [&str; 13] = [
    "shed",
    "handshake_deadline",
    "auth_deadline",
    "idle_deadline",
    "slow_request",
    "slow_subscriber",
    "output_limit",
    "memory_budget",
    "output_soft_limit",
    "output_budget",
    "protocol_error",
    "killed",
    "drain",
];
const BAN_REASONS: [&str; 2] = ["strikes", "admin"];
const TABLES: [&str; 5] = ["sources", "subnets", "active_ips", "active_subnets", "bans"];
const GROUPS: [&str; 2] = ["shared", "pinned"];
const STATES: [&str; 4] = ["idle", "busy", "connecting", "down"];
const KINDS: [&str; 3] = ["forwarded", "local", "pinned"];
const BREAKER_TO: [&str; 3] = ["open", "half_open", "closed"];
const OUTCOMES: [&str; 2] = ["applied", "rejected"];
const ADMIN_REFUSED: [&str; 2] = ["token", "banned"];

/// Why a ban message from a peer moat was dropped (`[ban_share]`).
const BAN_SHARE_REJECTED: [&str; 7] = [
    "oversized",
    "malformed",
    "signature",
    "stale",
    "rate_limited",
    "full",
    "refused",
];

/// Plain counters: name without `_total` (prometheus-client appends it), the snapshot key,
/// help.
const COUNTERS: [(&str, &str, &str); 26] = [
    (
        "moat_backend_reconnects",
        "backend_reconnects",
        "Backend connections opened again after a loss.",
    ),
    (
        "moat_backend_connect_failures",
        "backend_connect_failures",
        "Failed attempts to open a backend connection.",
    ),
    (
        "moat_backend_connections_lost",
        "backend_connections_lost",
        "Established backend connections lost.",
    ),
    (
        "moat_backend_timeouts",
        "backend_timeouts",
        "Requests answered with the timeout error.",
    ),
    (
        "moat_backend_takeovers",
        "backend_takeovers",
        "Shared connections logged in again as another Redis user.",
    ),
    (
        "moat_requests_refused",
        "requests_refused",
        "Requests refused at once: breaker open, reconnecting, queue full.",
    ),
    (
        "moat_pool_waits",
        "pool_waits",
        "Requests that waited for a shared connection.",
    ),
    (
        "moat_pinned_lease_waits",
        "pinned_lease_waits",
        "Leases that waited for a dedicated connection.",
    ),
    (
        "moat_pinned_lease_refusals",
        "pinned_lease_refusals",
        "Leases refused (pool full after the wait, per-IP or per-user cap).",
    ),
    (
        "moat_auth_refused",
        "auth_refused",
        "AUTH / HELLO AUTH attempts refused.",
    ),
    (
        "moat_kernel_nft_failures",
        "kernel_nft_failures",
        "Failed nft operations on moat's nftables table (create, update, rebuild).",
    ),
    (
        "moat_kernel_filter_rebuilds",
        "kernel_filter_rebuilds",
        "Socket filters built and attached to the listeners.",
    ),
    (
        "moat_ban_share_published",
        "ban_share_published",
        "Bans this moat published to its peers through Redis.",
    ),
    (
        "moat_ban_share_applied",
        "ban_share_applied",
        "Bans applied from peer moats.",
    ),
    (
        "moat_ban_share_errors",
        "ban_share_errors",
        "Lost or failed connections of the ban-share thread to Redis.",
    ),
    (
        "moat_sentinel_switches",
        "sentinel_switches",
        "Primary switches followed (backend.sentinels).",
    ),
    (
        "moat_sentinel_errors",
        "sentinel_errors",
        "Sentinels unreachable, refusing, naming a server that is no primary, or dropping the +switch-master subscription.",
    ),
    (
        "moat_backend_tls_failures",
        "backend_tls_failures",
        "Failed TLS handshakes with the backend (certificate refused, not TLS...).",
    ),
    (
        "moat_crowdsec_pushed",
        "crowdsec_pushed",
        "Bans this moat pushed to the CrowdSec LAPI.",
    ),
    (
        "moat_crowdsec_applied",
        "crowdsec_applied",
        "Ban decisions from the CrowdSec LAPI applied.",
    ),
    (
        "moat_crowdsec_lifted",
        "crowdsec_lifted",
        "Bans lifted because their CrowdSec decision was deleted.",
    ),
    (
        "moat_crowdsec_refused",
        "crowdsec_refused",
        "CrowdSec decisions refused: malformed, bad address, too wide, refused by the guard, max_held.",
    ),
    (
        "moat_crowdsec_ignored",
        "crowdsec_ignored",
        "CrowdSec decisions of another type or scope, not applied.",
    ),
    (
        "moat_crowdsec_capped",
        "crowdsec_capped",
        "CrowdSec decisions whose duration was cut to crowdsec.max_ban.",
    ),
    (
        "moat_crowdsec_errors",
        "crowdsec_errors",
        "Failed requests to the CrowdSec LAPI (retried with backoff).",
    ),
    (
        "moat_crowdsec_auth_errors",
        "crowdsec_auth_errors",
        "Requests the CrowdSec LAPI refused for their credentials.",
    ),
];

/// How a client's TLS handshake ended (`proxy.tls_listen`).
const TLS_OUTCOMES: [&str; 4] = ["ok", "failed", "timeout", "busy"];

/// Plain gauges: name, snapshot key, help.
const GAUGES: [(&str, &str, &str); 10] = [
    ("moat_clients_max", "clients_max", "guard.max_clients."),
    (
        "moat_pinned_leases",
        "pinned_leases",
        "Dedicated connections leased now.",
    ),
    ("moat_monitors", "monitors", "Clients in MONITOR mode."),
    (
        "moat_client_output_bytes",
        "client_output_bytes",
        "Replies clients have not read yet, in bytes.",
    ),
    (
        "moat_request_buffer_bytes",
        "request_buffer_bytes",
        "Requests buffered in moat (read, not yet sent), in bytes.",
    ),
    (
        "moat_clients_dormant",
        "clients_dormant",
        "Idle clients held without a task (refreshed every second).",
    ),
    (
        "moat_memory_budget_bytes",
        "memory_budget_bytes",
        "limits.memory_budget.",
    ),
    (
        "moat_kernel_nft_elements",
        "kernel_nft_elements",
        "Elements of moat's nftables ban sets.",
    ),
    (
        "moat_kernel_filter_rules",
        "kernel_filter_rules",
        "Networks the kernel's socket filter drops now.",
    ),
    (
        "moat_kernel_filter_left_out",
        "kernel_filter_left_out",
        "Networks the last socket filter left out for lack of room.",
    ),
];

/// Encodes one [`Snapshot`]; owns a copy so it can live in a registry for one scrape.
#[derive(Debug)]
struct SnapshotCollector(Snapshot);

impl Collector for SnapshotCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let s = &self.0;
        let mut m = enc.encode_descriptor(
            "moat_build_info",
            "The running build.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(1i64).encode(m.encode_family(&[("version", s.version)])?)?;
        gauge_f64(
            &mut enc,
            "moat_start_time_seconds",
            "Unix time moat started.",
            s.start_time_seconds,
        )?;
        counter(
            &mut enc,
            "moat_connections_accepted",
            "Connections the guard admitted.",
            s.accepted,
        )?;
        family(
            &mut enc,
            Kind::Counter,
            "moat_connections_refused",
            "Connections refused at accept.",
            "reason",
            &REFUSED,
            &s.refused,
        )?;
        family(
            &mut enc,
            Kind::Gauge,
            "moat_clients",
            "Client connections held now.",
            "class",
            &CLASSES,
            &s.clients,
        )?;
        family(
            &mut enc,
            Kind::Counter,
            "moat_clients_closed",
            "Clients moat closed, and why.",
            "reason",
            &CLOSED,
            &s.closed,
        )?;
        gauge(
            &mut enc,
            "moat_bans_active",
            "Bans in force.",
            s.bans_active,
        )?;
        family(
            &mut enc,
            Kind::Counter,
            "moat_bans_issued",
            "Bans issued.",
            "reason",
            &BAN_REASONS,
            &s.bans_issued,
        )?;
        family(
            &mut enc,
            Kind::Gauge,
            "moat_guard_table_entries",
            "Entries of the guard's bounded tables.",
            "table",
            &TABLES,
            &s.guard_tables,
        )?;
        counter(
            &mut enc,
            "moat_guard_evictions",
            "Entries dropped from a full guard table.",
            s.guard_evictions,
        )?;
        let mut m = enc.encode_descriptor(
            "moat_backend_connections",
            "Connections to Redis.",
            None,
            MetricType::Gauge,
        )?;
        for group in GROUPS {
            for state in STATES {
                let n = s
                    .backend_connections
                    .iter()
                    .find(|(g, st, _)| *g == group && *st == state)
                    .map_or(0, |(_, _, n)| *n);
                ConstGauge::new(n)
                    .encode(m.encode_family(&[("group", group), ("state", state)])?)?;
            }
        }
        family(
            &mut enc,
            Kind::Gauge,
            "moat_backend_connections_max",
            "The pool caps.",
            "group",
            &GROUPS,
            &s.backend_connections_max,
        )?;
        for (name, key, help) in COUNTERS {
            counter(&mut enc, name, help, s.counter(key))?;
        }
        for (name, key, help) in GAUGES {
            gauge(&mut enc, name, help, s.gauge(key))?;
        }
        family(
            &mut enc,
            Kind::Counter,
            "moat_commands",
            "Commands, by how moat ran them.",
            "kind",
            &KINDS,
            &s.commands,
        )?;
        let mut m = enc.encode_descriptor(
            "moat_request_duration_seconds",
            "backend: from the request's write to Redis to its reply; proxy: the rest of \
             the request's time in moat (sampled).",
            None,
            MetricType::Histogram,
        )?;
        for (stage, h) in [("proxy", &s.proxy_latency), ("backend", &s.backend_latency)] {
            let buckets = buckets(h);
            m.encode_family(&[("stage", stage)])?
                .encode_histogram::<NoLabelSet>(h.sum, h.count, &buckets, None)?;
        }
        gauge(
            &mut enc,
            "moat_breaker_open_workers",
            "Workers whose backend circuit breaker is open.",
            s.breaker_open,
        )?;
        family(
            &mut enc,
            Kind::Counter,
            "moat_breaker_transitions",
            "Breaker state changes.",
            "to",
            &BREAKER_TO,
            &s.breaker_transitions,
        )?;
        family(
            &mut enc,
            Kind::Counter,
            "moat_reloads",
            "Configuration reloads.",
            "outcome",
            &OUTCOMES,
            &s.reloads,
        )?;
        gauge_f64(
            &mut enc,
            "moat_config_last_reload_success_timestamp_seconds",
            "Unix time of the last applied reload (start time before any).",
            s.last_reload_success_seconds,
        )?;
        gauge(
            &mut enc,
            "moat_draining",
            "1 while moat accepts no new clients (drain or shutdown).",
            u64::from(s.draining),
        )?;
        family(
            &mut enc,
            Kind::Counter,
            "moat_admin_requests_refused",
            "Admin API requests refused.",
            "reason",
            &ADMIN_REFUSED,
            &s.admin_requests_refused,
        )?;
        family(
            &mut enc,
            Kind::Counter,
            "moat_ban_share_rejected",
            "Ban messages from peers dropped.",
            "reason",
            &BAN_SHARE_REJECTED,
            &s.ban_share_rejected,
        )?;
        let mut m = enc.encode_descriptor(
            "moat_sentinel_primary",
            "1 with the address of the primary in use, verified (backend.sentinels); 0 with an \
             empty address while none is known or Sentinels are not used.",
            None,
            MetricType::Gauge,
        )?;
        let (address, up) = match &s.sentinel_primary {
            Some(a) => (a.as_str(), 1i64),
            None => ("", 0),
        };
        ConstGauge::new(up).encode(m.encode_family(&[("address", address)])?)?;
        family(
            &mut enc,
            Kind::Counter,
            "moat_tls_handshakes",
            "Client TLS handshakes, by outcome.",
            "outcome",
            &TLS_OUTCOMES,
            &s.tls_handshakes,
        )
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

fn counter(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> fmt::Result {
    ConstCounter::new(v).encode(enc.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn gauge(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> fmt::Result {
    ConstGauge::new(v).encode(enc.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

fn gauge_f64(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: f64) -> fmt::Result {
    ConstGauge::new(v).encode(enc.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

/// A family with one label, one series per value of `labels` (0 when `values` lacks it).
fn family(
    enc: &mut DescriptorEncoder<'_>,
    kind: Kind,
    name: &str,
    help: &str,
    key: &str,
    labels: &[&str],
    values: &[(&'static str, u64)],
) -> fmt::Result {
    let metric_type = match kind {
        Kind::Counter => MetricType::Counter,
        Kind::Gauge => MetricType::Gauge,
    };
    let mut m = enc.encode_descriptor(name, help, None, metric_type)?;
    for &label in labels {
        let v = Snapshot::labelled(values, label);
        let pair = [(key, label)];
        let series = m.encode_family(&pair)?;
        match kind {
            Kind::Counter => ConstCounter::new(v).encode(series)?,
            Kind::Gauge => ConstGauge::new(v).encode(series)?,
        }
    }
    Ok(())
}

/// The snapshot's cumulative buckets as prometheus-client wants them: per-bucket counts,
/// ending with `+Inf`.
fn buckets(h: &Histogram) -> Vec<(f64, u64)> {
    let mut out = Vec::with_capacity(h.bounds.len() + 1);
    let mut below = 0;
    for (bound, &cumulative) in h.bounds.iter().zip(&h.cumulative) {
        out.push((*bound, cumulative.saturating_sub(below)));
        below = cumulative;
    }
    out.push((f64::INFINITY, h.count.saturating_sub(below)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = include_str!("../../../docs/metrics.md");

    /// One row of the metrics table: name, type, and label key/values.
    struct Row {
        name: String,
        kind: String,
        labels: Vec<(String, Vec<String>)>,
    }

    /// The backticked words of `cell`.
    fn ticked(cell: &str) -> Vec<String> {
        cell.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    }

    fn rows() -> Vec<Row> {
        let rows: Vec<Row> = DOC
            .lines()
            .filter(|l| l.starts_with("| `moat_"))
            .map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                let name = ticked(cells[1]).remove(0);
                let kind = cells[2].split_whitespace().next().unwrap().to_string();
                // `key`: `v1`, `v2`; `key2`: ... (or just `key`).
                let labels = cells[3]
                    .split(';')
                    .filter(|p| !p.trim().is_empty())
                    .map(|part| {
                        let mut words = ticked(part);
                        let key = words.remove(0);
                        (key, words)
                    })
                    .collect();
                Row { name, kind, labels }
            })
            .collect();
        assert!(
            rows.len() >= 30,
            "the table of docs/metrics.md was not found"
        );
        rows
    }

    /// Sample lines as (name, labels text, value).
    fn samples(text: &str) -> Vec<(String, String, f64)> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').expect("a sample is `series value`");
                let value: f64 = match value {
                    "+Inf" => f64::INFINITY,
                    "-Inf" => f64::NEG_INFINITY,
                    v => v.parse().unwrap_or_else(|_| panic!("bad value in {l:?}")),
                };
                let (name, labels) = match series.split_once('{') {
                    Some((n, rest)) => {
                        let labels = rest.strip_suffix('}').expect("labels end with }");
                        (n, labels)
                    }
                    None => (series, ""),
                };
                assert!(
                    !name.is_empty()
                        && name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                        && !name.starts_with(|c: char| c.is_ascii_digit()),
                    "bad metric name in {l:?}"
                );
                for pair in labels.split(',').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').expect("label is key=\"value\"");
                    assert!(k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
                    assert!(
                        v.starts_with('"') && v.ends_with('"') && v.len() >= 2,
                        "{l:?}"
                    );
                }
                (name.to_string(), labels.to_string(), value)
            })
            .collect()
    }

    fn snapshot() -> Snapshot {
        let h = Histogram {
            bounds: vec![0.001, 0.01],
            cumulative: vec![2, 5],
            sum: 0.5,
            count: 6,
        };
        Snapshot {
            version: "9.9.9",
            accepted: 7,
            refused: vec![("denied", 3)],
            commands: vec![("forwarded", 11), ("local", 2)],
            proxy_latency: h.clone(),
            backend_latency: h,
            backend_connections: vec![("shared", "idle", 4)],
            counters: vec![("backend_timeouts", 5)],
            gauges: vec![("clients_max", 10000)],
            ..Snapshot::default()
        }
    }

    #[test]
    fn every_documented_metric_is_exported_with_its_type_and_labels() {
        let text = render(&snapshot());
        let samples = samples(&text);
        for row in rows() {
            let name = &row.name;
            let kind = match row.kind.as_str() {
                "counter" | "gauge" | "histogram" => row.kind.as_str(),
                other => panic!("unknown type {other} for {name}"),
            };
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "no `# TYPE {name} {kind}` in:\n{text}"
            );
            assert_eq!(kind == "counter", name.ends_with("_total"), "{name}");
            let series: Vec<_> = samples
                .iter()
                .filter(|(n, ..)| {
                    n == name || (kind == "histogram" && n.strip_prefix(name.as_str()).is_some())
                })
                .collect();
            assert!(!series.is_empty(), "no sample of {name}");
            for (key, values) in &row.labels {
                for value in values {
                    let pair = format!("{key}=\"{value}\"");
                    assert!(
                        series.iter().any(|(_, labels, _)| labels.contains(&pair)),
                        "{name} has no series with {pair}"
                    );
                }
                let with_key = format!("{key}=\"");
                assert!(
                    series
                        .iter()
                        .all(|(_, labels, _)| labels.contains(&with_key)),
                    "a series of {name} lacks label {key}"
                );
            }
        }
    }

    #[test]
    fn the_values_are_the_snapshots() {
        let text = render(&snapshot());
        let value = |series: &str| {
            samples(&text)
                .into_iter()
                .find(|(n, l, _)| {
                    let s = if l.is_empty() {
                        n.clone()
                    } else {
                        format!("{n}{{{l}}}")
                    };
                    s == series
                })
                .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
                .2
        };
        assert_eq!(value("moat_build_info{version=\"9.9.9\"}"), 1.0);
        assert_eq!(value("moat_connections_accepted_total"), 7.0);
        assert_eq!(
            value("moat_connections_refused_total{reason=\"denied\"}"),
            3.0
        );
        assert_eq!(
            value("moat_connections_refused_total{reason=\"shed\"}"),
            0.0
        );
        assert_eq!(value("moat_commands_total{kind=\"forwarded\"}"), 11.0);
        assert_eq!(value("moat_commands_total{kind=\"pinned\"}"), 0.0);
        assert_eq!(value("moat_backend_timeouts_total"), 5.0);
        assert_eq!(value("moat_clients_max"), 10000.0);
        assert_eq!(
            value("moat_backend_connections{group=\"shared\",state=\"idle\"}"),
            4.0
        );
        let stage = "stage=\"backend\"";
        assert_eq!(
            value(&format!(
                "moat_request_duration_seconds_bucket{{{stage},le=\"0.001\"}}"
            )),
            2.0
        );
        assert_eq!(
            value(&format!(
                "moat_request_duration_seconds_bucket{{{stage},le=\"0.01\"}}"
            )),
            5.0
        );
        assert_eq!(
            value(&format!(
                "moat_request_duration_seconds_bucket{{{stage},le=\"+Inf\"}}"
            )),
            6.0
        );
        assert_eq!(
            value(&format!("moat_request_duration_seconds_count{{{stage}}}")),
            6.0
        );
        assert_eq!(
            value(&format!("moat_request_duration_seconds_sum{{{stage}}}")),
            0.5
        );
    }

    #[test]
    fn every_family_is_described_once() {
        let text = render(&Snapshot::default());
        let mut types: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .collect();
        let n = types.len();
        types.sort_unstable();
        types.dedup();
        assert_eq!(types.len(), n, "a family is described twice");
        assert_eq!(n, rows().len(), "families not in docs/metrics.md");
    }
}
