//! The Prometheus exporter: `/metrics` with the latest sample's signals, the alerts' state,
//! the watcher's own counters and the webhook's.
//!
//! Names follow redis_exporter's where the signal is the same INFO field
//! (`redis_connected_clients`, `redis_connections_received_total`, ...), so dashboards and
//! rules written for it keep working; everything else is under `moat_watch_`. A signal
//! missing from the sample is missing from the page (never a made-up 0), as redis_exporter
//! does for fields an older Redis lacks. The text is rendered by hand ([`render`], a pure
//! function of a [`Snapshot`]): one small writer is clearer than a registry rebuilt on
//! every scrape to leave absent signals out. [`Exporter`] holds the latest snapshot and
//! serves it with axum on the caller's tokio runtime.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};

use crate::Sample;
use crate::detect::{AlertId, Severity};
use crate::sample::ClientsSummary;

use super::webhook::WebhookStats;

/// The watcher's own counters.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WatcherStats {
    /// Polls made.
    pub polls: u64,
    /// Polls on which Redis did not answer.
    pub polls_unreachable: u64,
    /// Monitoring connections opened.
    pub connects: u64,
    /// Connection attempts, failed ones included.
    pub connect_attempts: u64,
    /// When the last poll happened, seconds since the Unix epoch.
    pub last_poll_unix: f64,
}

/// Everything one scrape shows.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The latest sample (none before the first poll).
    pub sample: Option<Sample>,
    /// The last sampled `CLIENT LIST` summary (it is not taken every poll).
    pub clients: Option<ClientsSummary>,
    /// Alerts active now.
    pub active: Vec<(AlertId, Severity)>,
    /// The watcher's counters.
    pub watcher: WatcherStats,
    /// The webhook's counters, when `--webhook` is on.
    pub webhook: Option<WebhookStats>,
}

/// A metric family's type.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Gauge,
    Counter,
}

/// The text exposition format (0.0.4), written family by family.
struct Page(String);

impl Page {
    /// One family with its series; nothing at all when it has none.
    fn family(&mut self, name: &str, kind: Kind, help: &str, series: &[(Vec<(&str, &str)>, f64)]) {
        if series.is_empty() {
            return;
        }
        let kind = match kind {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        };
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
        for (labels, value) in series {
            self.0.push_str(name);
            if !labels.is_empty() {
                self.0.push('{');
                for (i, (k, v)) in labels.iter().enumerate() {
                    if i > 0 {
                        self.0.push(',');
                    }
                    let _ = write!(self.0, "{k}=\"{}\"", escape(v));
                }
                self.0.push('}');
            }
            let _ = writeln!(self.0, " {}", number(*value));
        }
    }

    /// One unlabelled series, when the value is known.
    fn one(&mut self, name: &str, kind: Kind, help: &str, value: Option<f64>) {
        if let Some(v) = value {
            self.family(name, kind, help, &[(Vec::new(), v)]);
        }
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

/// A sample value as Prometheus reads it.
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

fn f(v: Option<u64>) -> Option<f64> {
    v.map(|n| n as f64)
}

fn severity_name(s: Severity) -> &'static str {
    match s {
        Severity::Warning => "warning",
        Severity::Critical => "critical",
    }
}

/// The `/metrics` page for `snap`.
pub fn render(snap: &Snapshot) -> String {
    use Kind::{Counter, Gauge};
    let mut p = Page(String::new());
    if let Some(s) = &snap.sample {
        let r = &s.redis;
        p.one(
            "redis_up",
            Gauge,
            "Whether the watched Redis answered the last poll.",
            Some(if s.redis_reachable { 1.0 } else { 0.0 }),
        );
        p.one(
            "redis_connected_clients",
            Gauge,
            "INFO connected_clients.",
            f(r.connected_clients),
        );
        p.one(
            "redis_blocked_clients",
            Gauge,
            "INFO blocked_clients.",
            f(r.blocked_clients),
        );
        p.one(
            "redis_max_clients",
            Gauge,
            "maxclients (INFO, or CONFIG GET where INFO lacks it).",
            f(r.maxclients),
        );
        p.one(
            "redis_config_maxclients",
            Gauge,
            "maxclients, under redis_exporter's CONFIG name for existing dashboards.",
            f(r.maxclients),
        );
        p.one(
            "redis_connections_received_total",
            Counter,
            "INFO total_connections_received.",
            f(r.total_connections_received),
        );
        p.one(
            "redis_rejected_connections_total",
            Counter,
            "INFO rejected_connections: clients refused at maxclients.",
            f(r.rejected_connections),
        );
        p.one(
            "redis_evicted_clients_total",
            Counter,
            "INFO evicted_clients (maxmemory-clients).",
            f(r.evicted_clients),
        );
        p.one(
            "redis_client_query_buffer_limit_disconnections_total",
            Counter,
            "INFO client_query_buffer_limit_disconnections.",
            f(r.query_buffer_limit_disconnections),
        );
        p.one(
            "redis_client_output_buffer_limit_disconnections_total",
            Counter,
            "INFO client_output_buffer_limit_disconnections.",
            f(r.output_buffer_limit_disconnections),
        );
        p.one(
            "redis_acl_access_denied_auth_total",
            Counter,
            "INFO acl_access_denied_auth: failed AUTH attempts.",
            f(r.acl_access_denied_auth),
        );
        p.one(
            "redis_memory_used_bytes",
            Gauge,
            "INFO used_memory.",
            f(r.used_memory),
        );
        p.one(
            "redis_mem_clients_normal",
            Gauge,
            "INFO mem_clients_normal: bytes held by normal clients' buffers.",
            f(r.mem_clients_normal),
        );
        p.one(
            "redis_net_input_bytes_total",
            Counter,
            "INFO total_net_input_bytes.",
            f(r.net_input_bytes),
        );
        p.one(
            "redis_net_output_bytes_total",
            Counter,
            "INFO total_net_output_bytes.",
            f(r.net_output_bytes),
        );
        p.one(
            "moat_watch_redis_instantaneous_input_kbps",
            Gauge,
            "INFO instantaneous_input_kbps (redis_exporter does not export it).",
            r.input_kbps,
        );
        p.one(
            "moat_watch_redis_instantaneous_output_kbps",
            Gauge,
            "INFO instantaneous_output_kbps.",
            r.output_kbps,
        );
        host(&mut p, s);
        if let Some(m) = &s.moat {
            moat(&mut p, m);
        }
    }
    if let Some(c) = &snap.clients {
        clients(&mut p, c);
    }
    // Every alert, so each is exported 1 or 0 (a series that vanishes is harder to alert on
    // than one that reads 0).
    let alerts: Vec<_> = AlertId::ALL
        .iter()
        .flat_map(|id| {
            let active = snap.active.iter().find(|(a, _)| a == id).map(|(_, s)| *s);
            [Severity::Warning, Severity::Critical].map(move |sev| {
                (
                    vec![("alert", id.as_str()), ("severity", severity_name(sev))],
                    if active == Some(sev) { 1.0 } else { 0.0 },
                )
            })
        })
        .collect();
    p.family(
        "moat_watch_alert",
        Gauge,
        "1 while the alert is active at that severity, else 0.",
        &alerts,
    );
    let w = &snap.watcher;
    p.one(
        "moat_watch_polls_total",
        Counter,
        "Polls made.",
        Some(w.polls as f64),
    );
    p.one(
        "moat_watch_polls_unreachable_total",
        Counter,
        "Polls on which Redis did not answer.",
        Some(w.polls_unreachable as f64),
    );
    p.one(
        "moat_watch_redis_connects_total",
        Counter,
        "Monitoring connections opened (one while Redis stays up).",
        Some(w.connects as f64),
    );
    p.one(
        "moat_watch_redis_connect_attempts_total",
        Counter,
        "Monitoring connection attempts, failed ones included.",
        Some(w.connect_attempts as f64),
    );
    if w.polls > 0 {
        p.one(
            "moat_watch_last_poll_timestamp_seconds",
            Gauge,
            "When the last poll happened (Unix time).",
            Some(w.last_poll_unix),
        );
    }
    if let Some(h) = &snap.webhook {
        p.one(
            "moat_watch_webhook_sent_total",
            Counter,
            "Alert events a webhook receiver accepted.",
            Some(h.sent as f64),
        );
        p.one(
            "moat_watch_webhook_retries_total",
            Counter,
            "Webhook delivery retries.",
            Some(h.retried as f64),
        );
        p.one(
            "moat_watch_webhook_dropped_total",
            Counter,
            "Alert events dropped unsent from a full webhook queue.",
            Some(h.dropped as f64),
        );
        p.one(
            "moat_watch_webhook_failed_total",
            Counter,
            "Alert events given up (refused, out of attempts, too old).",
            Some(h.failed as f64),
        );
        p.one(
            "moat_watch_webhook_queue_length",
            Gauge,
            "Alert events waiting for delivery.",
            Some(h.queued as f64),
        );
    }
    p.0
}

fn host(p: &mut Page, s: &Sample) {
    use Kind::{Counter, Gauge};
    let h = &s.host;
    p.one(
        "moat_watch_listen_overflows_total",
        Counter,
        "TcpExt ListenOverflows (host-wide): accept queue full, connection dropped.",
        f(h.listen_overflows),
    );
    p.one(
        "moat_watch_listen_drops_total",
        Counter,
        "TcpExt ListenDrops (host-wide).",
        f(h.listen_drops),
    );
    p.one(
        "moat_watch_syn_queue_drops_total",
        Counter,
        "TcpExt TCPReqQFullDrop (host-wide): SYN queue full, SYN dropped.",
        f(h.reqq_full_drop),
    );
    p.one(
        "moat_watch_syn_queue_cookies_total",
        Counter,
        "TcpExt TCPReqQFullDoCookies (host-wide): SYN queue full, answered with a cookie.",
        f(h.reqq_full_do_cookies),
    );
    p.one(
        "moat_watch_syncookies_sent_total",
        Counter,
        "TcpExt SyncookiesSent (host-wide).",
        f(h.syncookies_sent),
    );
    p.one(
        "moat_watch_tcp_passive_opens_total",
        Counter,
        "Tcp PassiveOpens (host-wide): inbound connections accepted by the kernel.",
        f(h.passive_opens),
    );
    p.one(
        "moat_watch_tcp_established",
        Gauge,
        "Tcp CurrEstab (host-wide): established connections now.",
        f(h.curr_estab),
    );
    p.one(
        "moat_watch_accept_queue_depth",
        Gauge,
        "Connections waiting in the Redis listener's accept queue.",
        h.accept_queue.map(|(n, _)| n as f64),
    );
    p.one(
        "moat_watch_accept_queue_size",
        Gauge,
        "The Redis listener's accept queue size (min of tcp-backlog and somaxconn).",
        h.accept_queue.map(|(_, n)| n as f64),
    );
    p.one(
        "moat_watch_conntrack_entries",
        Gauge,
        "Conntrack entries in use.",
        h.conntrack.map(|(n, _)| n as f64),
    );
    p.one(
        "moat_watch_conntrack_max",
        Gauge,
        "Conntrack table size.",
        h.conntrack.map(|(_, n)| n as f64),
    );
    p.one(
        "moat_watch_redis_open_fds",
        Gauge,
        "File descriptors the Redis process has open.",
        h.fds.map(|(n, _)| n as f64),
    );
    p.one(
        "moat_watch_redis_max_fds",
        Gauge,
        "The Redis process's file descriptor limit.",
        h.fds.map(|(_, n)| n as f64),
    );
    p.one(
        "moat_watch_redis_cpu_seconds_total",
        Counter,
        "The Redis process's CPU time, user and system (from /proc).",
        h.cpu_seconds,
    );
    p.one(
        "moat_watch_redis_resident_memory_bytes",
        Gauge,
        "The Redis process's resident memory (from /proc).",
        f(h.rss_bytes),
    );
}

fn clients(p: &mut Page, c: &ClientsSummary) {
    use Kind::Gauge;
    p.one(
        "moat_watch_clients_listed",
        Gauge,
        "Client connections in the last sampled CLIENT LIST.",
        Some(c.total as f64),
    );
    p.one(
        "moat_watch_clients_never_ran_command",
        Gauge,
        "Connections that never ran a command (cmd=NULL), last CLIENT LIST.",
        Some(c.never_ran as f64),
    );
    p.one(
        "moat_watch_clients_idle_over_minute",
        Gauge,
        "Connections idle for a minute or more, last CLIENT LIST.",
        Some(c.idle_over_minute as f64),
    );
    let top: Vec<_> = c
        .top
        .iter()
        .map(|(src, n)| (vec![("source", src.as_str())], *n as f64))
        .collect();
    p.family(
        "moat_watch_clients_top_source_connections",
        Gauge,
        "Connections held by the top source addresses, last CLIENT LIST.",
        &top,
    );
}

fn moat(p: &mut Page, m: &crate::sample::MoatSignals) {
    use Kind::{Counter, Gauge};
    p.one(
        "moat_watch_moat_up",
        Gauge,
        "Whether moat's admin API answered the last poll.",
        Some(if m.reachable { 1.0 } else { 0.0 }),
    );
    p.one(
        "moat_watch_moat_clients",
        Gauge,
        "Client connections moat holds.",
        f(m.clients),
    );
    p.one(
        "moat_watch_moat_admitted_total",
        Counter,
        "Connections moat admitted.",
        f(m.admitted_total),
    );
    p.one(
        "moat_watch_moat_refused_total",
        Counter,
        "Connections moat refused, all reasons.",
        f(m.refused_total),
    );
    let by_reason: Vec<_> = m
        .refused_by_reason
        .iter()
        .map(|(reason, n)| (vec![("reason", reason.as_str())], *n as f64))
        .collect();
    p.family(
        "moat_watch_moat_refused_by_reason_total",
        Counter,
        "Connections moat refused, by reason.",
        &by_reason,
    );
    p.one(
        "moat_watch_moat_bans_active",
        Gauge,
        "Bans moat has in force.",
        f(m.bans_active),
    );
}

/// Holds the latest snapshot and serves it on `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct Exporter {
    snapshot: Arc<Mutex<Snapshot>>,
}

impl Exporter {
    /// An exporter with nothing polled yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the latest poll: its sample, the active alerts, the watcher's and the
    /// webhook's counters. A `CLIENT LIST` summary is kept until the next one.
    pub fn update(
        &self,
        sample: &Sample,
        active: &[(AlertId, Severity)],
        watcher: WatcherStats,
        webhook: Option<WebhookStats>,
    ) {
        let mut snap = self.snapshot.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = &sample.clients {
            snap.clients = Some(c.clone());
        }
        snap.sample = Some(sample.clone());
        snap.active = active.to_vec();
        snap.watcher = watcher;
        snap.webhook = webhook;
    }

    /// The page as a scrape would see it now.
    pub fn render(&self) -> String {
        render(&self.snapshot.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Serves `GET /metrics` on `listener` until the runtime stops.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        use axum::http::header::CONTENT_TYPE;
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let page = self.render();
                async move {
                    (
                        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                        page,
                    )
                }
            }),
        );
        axum::serve(listener, app).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::sample::{HostSignals, MoatSignals, RedisSignals};

    fn sample() -> Sample {
        Sample {
            at: Instant::now(),
            redis_reachable: true,
            redis_refused: None,
            redis: RedisSignals {
                connected_clients: Some(7),
                maxclients: Some(100),
                rejected_connections: Some(3),
                ..RedisSignals::default()
            },
            host: HostSignals {
                fds: Some((40, 1024)),
                ..HostSignals::default()
            },
            clients: None,
            moat: None,
        }
    }

    #[test]
    fn absent_signals_are_absent_and_present_ones_named_like_redis_exporter() {
        let snap = Snapshot {
            sample: Some(sample()),
            active: vec![(AlertId::RejectedConnections, Severity::Critical)],
            ..Snapshot::default()
        };
        let page = render(&snap);
        assert!(page.contains("\nredis_connected_clients 7\n"), "{page}");
        assert!(page.contains("\nredis_config_maxclients 100\n"), "{page}");
        assert!(page.contains("# TYPE redis_rejected_connections_total counter\n"));
        assert!(page.contains("\nredis_rejected_connections_total 3\n"));
        assert!(page.contains("\nmoat_watch_redis_open_fds 40\n"));
        assert!(page.contains("redis_up 1\n"));
        // Unknown this poll: not exported at all.
        assert!(!page.contains("redis_blocked_clients"), "{page}");
        assert!(
            !page.contains("moat_watch_listen_overflows_total"),
            "{page}"
        );
        assert!(!page.contains("moat_watch_moat_"), "{page}");
        assert!(!page.contains("moat_watch_webhook_"), "{page}");
        assert!(page.contains(
            "moat_watch_alert{alert=\"rejected_connections\",severity=\"critical\"} 1\n"
        ));
        assert!(
            page.contains(
                "moat_watch_alert{alert=\"rejected_connections\",severity=\"warning\"} 0\n"
            )
        );
        assert!(
            page.contains("moat_watch_alert{alert=\"source_hoarding\",severity=\"critical\"} 0\n")
        );
    }

    #[test]
    fn labels_are_escaped_and_moat_view_shown_when_present() {
        let mut s = sample();
        s.moat = Some(MoatSignals {
            reachable: true,
            refused_total: Some(5),
            refused_by_reason: vec![("odd\"reason\\".into(), 5)],
            ..MoatSignals::default()
        });
        let snap = Snapshot {
            sample: Some(s),
            clients: Some(ClientsSummary {
                total: 3,
                top: vec![("10.0.0.1".into(), 2)],
                never_ran: 1,
                idle_over_minute: 0,
            }),
            ..Snapshot::default()
        };
        let page = render(&snap);
        assert!(page.contains("moat_watch_moat_up 1\n"), "{page}");
        assert!(
            page.contains(
                "moat_watch_moat_refused_by_reason_total{reason=\"odd\\\"reason\\\\\"} 5\n"
            )
        );
        assert!(
            page.contains("moat_watch_clients_top_source_connections{source=\"10.0.0.1\"} 2\n")
        );
        assert!(!page.contains("moat_watch_moat_clients"), "{page}");
    }

    #[test]
    fn before_the_first_poll_only_the_watcher_speaks() {
        let page = render(&Snapshot::default());
        assert!(!page.contains("redis_up"), "{page}");
        assert!(page.contains("moat_watch_polls_total 0\n"));
    }
}
