//! Moat's own view, when the watched Redis sits behind a moat (`moat watch --moat
//! http://127.0.0.1:9090`): Redis behind moat sees two connections whatever the attack, so
//! what moat refuses, bans and holds is where the attack shows.
//!
//! - [`MoatView`]: reads moat's admin API (`/metrics`, `/sources`) with a short timeout;
//!   blocking, so the poller runs it beside its Redis poll on the blocking pool.
//! - [`parse_metrics`], [`parse_sources`]: pure, tested on text a real moat served.

use std::time::Duration;

use crate::sample::MoatSignals;

/// Sources of each kind a poll keeps (most first).
const TOP: usize = 5;

/// Why a moat admin URL cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MoatViewError {
    /// Not `http://host:port` (moat's admin API speaks plain HTTP on loopback by default).
    #[error("not a moat admin URL (expected http://host:port): {0}")]
    Url(String),
}

/// A client of one moat's admin API.
#[derive(Clone)]
pub struct MoatView {
    agent: ureq::Agent,
    base: String,
    token: Option<String>,
}

impl std::fmt::Debug for MoatView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("MoatView")
            .field("base", &self.base)
            .finish()
    }
}

impl MoatView {
    /// A client of the admin API at `url` (`http://host:port`), sending `token` as a bearer
    /// token when moat requires one; each request gives up after `timeout`.
    pub fn new(url: &str, token: Option<String>, timeout: Duration) -> Result<Self, MoatViewError> {
        let base = url.trim_end_matches('/');
        let rest = base
            .strip_prefix("http://")
            .ok_or_else(|| MoatViewError::Url(url.to_owned()))?;
        if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
            return Err(MoatViewError::Url(url.to_owned()));
        }
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .into();
        Ok(Self {
            agent,
            base: base.to_owned(),
            token,
        })
    }

    /// The admin API's address, as given.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// Reads moat's view now; `reachable` false (and nothing else) when `/metrics` does
    /// not answer 200. `/sources` failing only leaves the top lists empty.
    pub fn read(&self) -> MoatSignals {
        let mut signals = MoatSignals::default();
        let Some(metrics) = self.get("/metrics") else {
            return signals;
        };
        signals.reachable = true;
        parse_metrics(&metrics, &mut signals);
        if let Some(sources) = self.get(&format!("/sources?top={TOP}")) {
            parse_sources(&sources, &mut signals);
        }
        signals
    }

    fn get(&self, path: &str) -> Option<String> {
        let mut req = self.agent.get(format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            req = req.header("Authorization", format!("Bearer {token}"));
        }
        let mut resp = req.call().ok()?;
        if resp.status() != 200 {
            return None;
        }
        // Bounded: a wrong URL serving something huge costs at most this much.
        resp.body_mut()
            .with_config()
            .limit(4 << 20)
            .read_to_string()
            .ok()
    }
}

/// Fills `into` from moat's Prometheus text: clients and their cap, admissions, refusals
/// (total and by reason) and bans in force. Unknown or malformed lines are skipped.
pub fn parse_metrics(text: &str, into: &mut MoatSignals) {
    let mut clients = None::<f64>;
    let mut refused = Vec::<(String, u64)>::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        if !value.is_finite() || value < 0.0 {
            continue;
        }
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, labels.trim_end_matches('}')),
            None => (series, ""),
        };
        match name {
            "moat_clients" => *clients.get_or_insert(0.0) += value,
            "moat_clients_max" => into.clients_max = Some(value as u64),
            "moat_connections_accepted_total" => into.admitted_total = Some(value as u64),
            "moat_bans_active" => into.bans_active = Some(value as u64),
            "moat_connections_refused_total" => {
                let reason = label(labels, "reason").unwrap_or("other");
                refused.push((reason.to_owned(), value as u64));
            }
            _ => {}
        }
    }
    into.clients = clients.map(|c| c as u64);
    if !refused.is_empty() {
        into.refused_total = Some(refused.iter().map(|(_, n)| n).sum());
        refused.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        into.refused_by_reason = refused;
    }
}

/// A label's value in a Prometheus label set (`a="x",b="y"`); moat's label values never
/// hold quotes or commas, so no unescaping is needed.
fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    labels.split(',').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"'))
    })
}

/// Fills the top lists of `into` from moat's `/sources` JSON: who holds the most
/// connections, and who was refused most. Malformed JSON leaves them empty.
pub fn parse_sources(json: &str, into: &mut MoatSignals) {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(json) else {
        return;
    };
    let list = |key: &str, count: &str| -> Vec<(String, u64)> {
        value[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| Some((s["ip"].as_str()?.to_owned(), s[count].as_u64()?)))
            .filter(|(_, n)| *n > 0)
            .take(TOP)
            .collect()
    };
    into.top_sources = list("by_connections", "connections");
    into.top_refused = list("by_refusals", "refusals");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines of a real moat's `/metrics` during a flood (trimmed).
    const METRICS: &str = "\
# HELP moat_clients client connections held now
# TYPE moat_clients gauge
moat_clients{class=\"trusted\"} 1
moat_clients{class=\"authenticated\"} 0
moat_clients{class=\"unauthenticated\"} 40
# TYPE moat_clients_max gauge
moat_clients_max 10000
# TYPE moat_connections_accepted_total counter
moat_connections_accepted_total 5120
# TYPE moat_connections_refused_total counter
moat_connections_refused_total{reason=\"banned\"} 3000
moat_connections_refused_total{reason=\"ip_rate\"} 700
moat_connections_refused_total{reason=\"denied\"} 0
moat_bans_active 12
moat_bans_issued_total{reason=\"strikes\"} 14
garbage line
moat_bans_active NaN
";

    #[test]
    fn metrics_give_clients_refusals_and_bans() {
        let mut s = MoatSignals::default();
        parse_metrics(METRICS, &mut s);
        assert_eq!(s.clients, Some(41));
        assert_eq!(s.clients_max, Some(10_000));
        assert_eq!(s.admitted_total, Some(5120));
        assert_eq!(s.refused_total, Some(3700));
        assert_eq!(s.refused_by_reason[0], ("banned".to_owned(), 3000));
        assert_eq!(s.refused_by_reason[1], ("ip_rate".to_owned(), 700));
        assert_eq!(s.bans_active, Some(12));
    }

    #[test]
    fn empty_or_foreign_text_gives_nothing() {
        let mut s = MoatSignals::default();
        parse_metrics("", &mut s);
        parse_metrics("<html>not metrics</html>\nmoat_clients -3\n", &mut s);
        assert_eq!(s, MoatSignals::default());
    }

    #[test]
    fn sources_give_top_holders_and_refused() {
        let json = r#"{"by_connections":[{"ip":"127.100.0.7","connections":900},
            {"ip":"127.0.0.1","connections":0}],
            "by_refusals":[{"ip":"127.100.0.9","refusals":4000,"strikes":3,"bans":1,"banned_secs":60}]}"#;
        let mut s = MoatSignals::default();
        parse_sources(json, &mut s);
        assert_eq!(s.top_sources, vec![("127.100.0.7".to_owned(), 900)]);
        assert_eq!(s.top_refused, vec![("127.100.0.9".to_owned(), 4000)]);
        parse_sources("{not json", &mut s);
        assert_eq!(s.top_sources, vec![("127.100.0.7".to_owned(), 900)]);
    }

    #[test]
    fn urls_are_checked() {
        let t = Duration::from_secs(1);
        assert!(MoatView::new("http://127.0.0.1:9090", None, t).is_ok());
        assert!(MoatView::new("http://127.0.0.1:9090/", None, t).is_ok());
        for bad in [
            "127.0.0.1:9090",
            "https://x:1",
            "http://",
            "http://a:1/metrics",
            "http://u:p@a:1",
        ] {
            assert!(MoatView::new(bad, None, t).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_unreachable_moat_reads_as_unreachable() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(1);
        // Nothing listens there any more.
        let view = MoatView::new(
            &format!("http://127.0.0.1:{port}"),
            None,
            Duration::from_secs(1),
        );
        assert!(matches!(view, Ok(ref v) if !v.read().reachable));
    }
}
