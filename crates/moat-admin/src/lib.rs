//! Moat's admin side: the HTTP API operators and Prometheus talk to, on its own thread and
//! port, away from the data path, and the request/reply shapes `moat ctl` uses.
//!
//! Modules:
//! - `exposition`: the Prometheus text of a [`moat_proxy::stats::Snapshot`].
//! - `api`: request parsing and reply shapes, apart from HTTP.
//! - the server ([`start`], [`AdminServer`]): axum on its own current_thread runtime.

#![forbid(unsafe_code)]

pub mod api;
pub mod exposition;
mod listener;
mod lockout;
mod server;

pub use server::{AdminError, AdminServer, ConfigLoader, start};

/// Name of the admin API's own counter (`docs/metrics.md`).
const ADMIN_REFUSED: &str = "moat_admin_requests_refused";

/// Adds `moat_admin_requests_refused_total{reason}` (kept by the admin server, not in the
/// snapshot) to an exposition body, in its format: before `# EOF` for OpenMetrics, at the
/// end for the Prometheus text format. Leaves the body alone when it already has the
/// family. Returns the body and whether it is OpenMetrics.
pub fn with_admin_metrics(mut body: String, refused: &[(&str, u64)]) -> (String, bool) {
    let openmetrics = body.trim_end().ends_with("# EOF");
    if body.contains(&format!("# TYPE {ADMIN_REFUSED}")) {
        return (body, openmetrics);
    }
    let family = if openmetrics {
        ADMIN_REFUSED.to_string()
    } else {
        format!("{ADMIN_REFUSED}_total")
    };
    let mut lines =
        format!("# HELP {family} Admin API requests refused.\n# TYPE {family} counter\n");
    for (reason, n) in refused {
        lines.push_str(&format!(
            "{ADMIN_REFUSED}_total{{reason=\"{reason}\"}} {n}\n"
        ));
    }
    if openmetrics {
        let at = body.rfind("# EOF").unwrap_or(body.len());
        body.insert_str(at, &lines);
    } else {
        if !body.is_empty() && !body.ends_with('\n') {
            body.push('\n');
        }
        body.push_str(&lines);
    }
    (body, openmetrics)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_metrics_go_before_eof_in_openmetrics() {
        let (body, om) = with_admin_metrics(
            "# TYPE moat_x gauge\nmoat_x 1\n# EOF\n".into(),
            &[("token", 3), ("banned", 1)],
        );
        assert!(om);
        assert_eq!(
            body,
            "# TYPE moat_x gauge\nmoat_x 1\n\
             # HELP moat_admin_requests_refused Admin API requests refused.\n\
             # TYPE moat_admin_requests_refused counter\n\
             moat_admin_requests_refused_total{reason=\"token\"} 3\n\
             moat_admin_requests_refused_total{reason=\"banned\"} 1\n# EOF\n"
        );
    }

    #[test]
    fn admin_metrics_in_the_text_format_and_never_twice() {
        let (body, om) = with_admin_metrics("moat_x 1".into(), &[("token", 0)]);
        assert!(!om);
        assert!(
            body.starts_with("moat_x 1\n# HELP moat_admin_requests_refused_total ")
                && body.ends_with("moat_admin_requests_refused_total{reason=\"token\"} 0\n"),
            "{body}"
        );
        let rendered = "# TYPE moat_admin_requests_refused counter\n# EOF\n".to_string();
        assert_eq!(
            with_admin_metrics(rendered.clone(), &[("token", 5)]).0,
            rendered
        );
    }
}
