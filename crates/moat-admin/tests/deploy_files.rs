//! The operator files moat ships (`deploy/`) agree with moat itself: the Grafana dashboard and
//! the Prometheus rules query only metrics moat exports (the table of `docs/metrics.md`) or
//! redis_exporter's standard ones, every alert's runbook is a section of
//! `docs/operations.md`, and a running moat exports every metric the table lists.
//!
//! A renamed metric therefore fails here instead of leaving an empty panel or an alert that
//! can never fire.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The redis_exporter metrics the shipped files may use (see REFERENCE "Operators' tools").
const REDIS_EXPORTER_METRICS: &[&str] = &[
    "redis_up",
    "redis_connected_clients",
    "redis_blocked_clients",
    "redis_config_maxclients",
    "redis_connections_received_total",
    "redis_rejected_connections_total",
];

/// Suffixes of a histogram's series; the family is the name without them.
const HISTOGRAM_SUFFIXES: &[&str] = &["_bucket", "_sum", "_count"];

const DASHBOARD: &str = "deploy/grafana/moat-dashboard.json";
const RULES: &str = "deploy/prometheus/moat-rules.yml";
const RULES_TEST: &str = "deploy/prometheus/moat-rules.test.yml";
const OPERATIONS: &str = "docs/operations.md";
const METRICS: &str = "docs/metrics.md";

/// One row of the table in `docs/metrics.md`.
#[derive(Debug)]
struct Documented {
    name: String,
    /// `counter`, `gauge` or `histogram` (the first word of the type column).
    kind: String,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(relative: &str) -> String {
    let path = repo_root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The metric table of `docs/metrics.md`: rows whose first cell is a backquoted `moat_` name.
fn documented_metrics() -> Vec<Documented> {
    let text = read(METRICS);
    let rows: Vec<Documented> = text
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let name = cells.get(1)?.strip_prefix("`moat_")?.strip_suffix('`')?;
            let kind = cells.get(2)?.split_whitespace().next()?;
            Some(Documented {
                name: format!("moat_{name}"),
                kind: kind.to_string(),
            })
        })
        .collect();
    // A table that no longer parses must not pass every check vacuously.
    assert!(
        rows.len() >= 30,
        "expected the metric table of {METRICS}, parsed only {rows:?}"
    );
    for row in &rows {
        assert!(
            ["counter", "gauge", "histogram"].contains(&row.kind.as_str()),
            "{METRICS}: unknown type {:?} for {}",
            row.kind,
            row.name
        );
    }
    rows
}

/// Every identifier starting with `prefix` in `text` (a whole word: not part of a longer one).
fn names_with_prefix(text: &str, prefix: &str) -> BTreeSet<String> {
    let is_ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let bytes = text.as_bytes();
    let mut found = BTreeSet::new();
    let mut from = 0;
    while let Some(at) = text[from..].find(prefix).map(|i| from + i) {
        let end = at
            + bytes[at..]
                .iter()
                .position(|&c| !is_ident(c))
                .unwrap_or(bytes.len() - at);
        if at == 0 || !is_ident(bytes[at - 1]) {
            found.insert(text[at..end].to_string());
        }
        from = end.max(at + 1);
    }
    found
}

/// Whether `name` is a documented metric, or one series of a documented histogram.
fn is_documented(name: &str, documented: &[Documented]) -> bool {
    documented.iter().any(|d| {
        d.name == name
            || (d.kind == "histogram"
                && HISTOGRAM_SUFFIXES
                    .iter()
                    .any(|suffix| name.strip_suffix(suffix) == Some(d.name.as_str())))
    })
}

/// Every string of the dashboard that Grafana sends to Prometheus: panel `expr`s and the
/// template variables' queries.
fn dashboard_queries(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr" | "query" | "definition", serde_json::Value::String(s)) => {
                        out.push(s.clone());
                    }
                    _ => dashboard_queries(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| dashboard_queries(v, out)),
        _ => {}
    }
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is valid JSON")
}

#[test]
fn dashboard_rules_and_runbooks_name_only_documented_moat_metrics() {
    let documented = documented_metrics();
    let mut queries = Vec::new();
    dashboard_queries(&dashboard(), &mut queries);
    let in_dashboard = names_with_prefix(&queries.join("\n"), "moat_");
    // The whole rules file: expressions, and the names its annotations tell operators to look at.
    let in_rules = names_with_prefix(&read(RULES), "moat_");
    // The runbooks tell operators which metrics to look at.
    let in_operations = names_with_prefix(&read(OPERATIONS), "moat_");
    assert!(
        in_dashboard.len() >= 25,
        "the dashboard should chart most of moat's metrics, found {in_dashboard:?}"
    );
    assert!(
        in_rules.len() >= 8,
        "the rules should use moat's metrics, found {in_rules:?}"
    );
    let unknown: Vec<String> = (in_dashboard.iter().map(|n| (DASHBOARD, n)))
        .chain(in_rules.iter().map(|n| (RULES, n)))
        .chain(in_operations.iter().map(|n| (OPERATIONS, n)))
        .filter(|(_, name)| !is_documented(name, &documented))
        .map(|(file, name)| format!("{file}: {name}"))
        .collect();
    assert!(
        unknown.is_empty(),
        "metrics not in the table of {METRICS}: {unknown:#?}"
    );
}

#[test]
fn redis_metrics_are_redis_exporter_standard_names() {
    let mut queries = Vec::new();
    dashboard_queries(&dashboard(), &mut queries);
    for (file, text) in [
        (DASHBOARD, queries.join("\n")),
        (RULES, read(RULES)),
        (OPERATIONS, read(OPERATIONS)),
    ] {
        let unknown: Vec<String> = names_with_prefix(&text, "redis_")
            .into_iter()
            // The exporter's own name, in descriptions and comments.
            .filter(|n| n != "redis_exporter")
            .filter(|n| !REDIS_EXPORTER_METRICS.contains(&n.as_str()))
            .collect();
        assert!(
            unknown.is_empty(),
            "{file}: not a redis_exporter metric: {unknown:?}"
        );
    }
}

#[test]
fn dashboard_uses_the_datasource_variable_only() {
    let dash = dashboard();
    assert!(
        dash["schemaVersion"].as_u64().is_some_and(|v| v >= 39),
        "schemaVersion: {}",
        dash["schemaVersion"]
    );
    let variables = dash["templating"]["list"]
        .as_array()
        .expect("templating.list");
    assert!(
        variables.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "no `datasource` variable of type prometheus: {variables:#?}"
    );

    // Every datasource reference, at any depth, goes through the variable (Grafana's own
    // annotation source excepted): an exported uid would break the import elsewhere.
    fn check(value: &serde_json::Value, path: &str, bad: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    let here = format!("{path}.{key}");
                    if key == "datasource" {
                        let uid = v.get("uid").and_then(|u| u.as_str()).or(v.as_str());
                        let grafana = v.get("type").and_then(|t| t.as_str()) == Some("grafana");
                        if uid != Some("${datasource}") && !grafana {
                            bad.push(format!("{here} = {v}"));
                        }
                    }
                    check(v, &here, bad);
                }
            }
            serde_json::Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    check(v, &format!("{path}[{i}]"), bad);
                }
            }
            _ => {}
        }
    }
    let mut bad = Vec::new();
    check(&dash, "", &mut bad);
    assert!(bad.is_empty(), "hard-coded datasources: {bad:#?}");

    let panels = dash["panels"].as_array().expect("panels");
    let rows: Vec<&str> = panels
        .iter()
        .filter(|p| p["type"] == "row")
        .filter_map(|p| p["title"].as_str())
        .collect();
    for wanted in [
        "Overview", "Attack", "Backend", "Latency", "Memory", "Redis",
    ] {
        assert!(
            rows.iter().any(|r| r.starts_with(wanted)),
            "no {wanted} row in {rows:?}"
        );
    }
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let targets = panel["targets"].as_array().expect("targets");
        assert!(
            !targets.is_empty(),
            "panel {} queries nothing",
            panel["title"]
        );
        for t in targets {
            assert!(
                t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
                "panel {}: empty expr",
                panel["title"]
            );
        }
    }
}

/// GitHub's anchor for a Markdown heading: lower case, spaces to hyphens, punctuation dropped.
fn heading_anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn every_alert_has_a_runbook_section_and_a_unit_test() {
    let rules = read(RULES);
    let tests = read(RULES_TEST);
    let anchors: BTreeSet<String> = read(OPERATIONS)
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|l| heading_anchor(l.trim_start_matches('#')))
        .collect();

    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(str::trim)
        .collect();
    let runbooks: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("runbook_url:"))
        .map(|v| v.trim().trim_matches('"'))
        .collect();
    assert!(alerts.len() >= 9, "alerts in {RULES}: {alerts:?}");
    assert_eq!(
        alerts.len(),
        runbooks.len(),
        "every alert needs a runbook_url: {alerts:?} {runbooks:?}"
    );
    for (alert, runbook) in alerts.iter().zip(&runbooks) {
        let anchor = runbook
            .strip_prefix(&format!("{OPERATIONS}#"))
            .unwrap_or_else(|| panic!("{alert}: runbook {runbook:?} is not in {OPERATIONS}"));
        assert_eq!(
            anchor,
            alert.to_lowercase(),
            "{alert}: runbook should be its own section"
        );
        assert!(
            anchors.contains(anchor),
            "{alert}: no section #{anchor} in {OPERATIONS}"
        );
        assert!(
            tests.contains(&format!("alertname: {alert}\n")),
            "{alert}: no case in {RULES_TEST}"
        );
    }
}

/// Whether the exposition declares `metric` with its documented type. Counters may be
/// declared without `_total` (OpenMetrics, prometheus-client), and the build info as an
/// OpenMetrics info family (`moat_build` of type `info`).
fn declares(exposition: &str, metric: &Documented) -> bool {
    exposition.lines().any(|line| {
        let mut words = line.split_whitespace();
        if (words.next(), words.next()) != (Some("#"), Some("TYPE")) {
            return false;
        }
        let (Some(family), Some(kind)) = (words.next(), words.next()) else {
            return false;
        };
        (family == metric.name && kind == metric.kind)
            || (metric.kind == "counter"
                && kind == "counter"
                && metric.name.strip_suffix("_total") == Some(family))
            || (metric.kind == "gauge"
                && kind == "info"
                && metric.name.strip_suffix("_info") == Some(family))
    })
}

#[test]
fn a_running_moat_exports_every_documented_metric() {
    let redis = moat_testkit::RedisServer::start().expect("redis-server starts");
    let mut config = moat_proxy::Config::default();
    config.proxy.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.backend.address = redis.addr();
    let running = moat_proxy::start(config).expect("moat starts");

    let exposition = moat_admin::exposition::render(&running.control().snapshot());
    let missing: Vec<String> = documented_metrics()
        .iter()
        .filter(|m| !declares(&exposition, m))
        .map(|m| format!("{} ({})", m.name, m.kind))
        .collect();
    running.shutdown();
    assert!(
        missing.is_empty(),
        "documented in {METRICS} but not declared by /metrics: {missing:#?}\n--- exposition:\n{exposition}"
    );
}

/// The check above reads the exposition the way prometheus-client writes it: this is the
/// crate's own output for one metric of each documented type.
#[test]
fn declares_reads_prometheus_client_output() {
    use prometheus_client::metrics::{counter::Counter, gauge::Gauge, histogram::Histogram};
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register(
        "moat_connections_accepted",
        "accepted",
        Counter::<u64>::default(),
    );
    registry.register("moat_clients_max", "cap", Gauge::<i64>::default());
    registry.register(
        "moat_request_duration_seconds",
        "latency",
        Histogram::new([0.001, 0.01]),
    );
    registry.register(
        "moat_build",
        "build",
        prometheus_client::metrics::info::Info::new(vec![("version".to_string(), "0".to_string())]),
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");

    let metric = |name: &str, kind: &str| Documented {
        name: name.to_string(),
        kind: kind.to_string(),
    };
    for (name, kind) in [
        ("moat_connections_accepted_total", "counter"),
        ("moat_clients_max", "gauge"),
        ("moat_request_duration_seconds", "histogram"),
        ("moat_build_info", "gauge"),
    ] {
        assert!(declares(&text, &metric(name, kind)), "{name} in\n{text}");
    }
    // Absent, or present with another type.
    assert!(!declares(&text, &metric("moat_clients", "gauge")), "{text}");
    assert!(
        !declares(&text, &metric("moat_clients_max", "counter")),
        "{text}"
    );

    let documented = [
        metric("moat_request_duration_seconds", "histogram"),
        metric("moat_clients", "gauge"),
    ];
    assert!(is_documented(
        "moat_request_duration_seconds_bucket",
        &documented
    ));
    assert!(!is_documented("moat_clients_bucket", &documented));
    assert!(!is_documented("moat_clients_total", &documented));
    assert_eq!(
        names_with_prefix(
            "sum(moat_clients{x}) / xmoat_y + moat_request_duration_seconds_sum",
            "moat_"
        ),
        BTreeSet::from([
            "moat_clients".to_string(),
            "moat_request_duration_seconds_sum".to_string()
        ])
    );
}
