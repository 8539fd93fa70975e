//! What the admin API accepts and answers, apart from HTTP: request parsing with clear
//! errors, and the JSON shapes of the replies. `moat ctl` reads the same shapes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use moat_guard::{Ban, IpNet, MAX_TOP};
use serde::{Deserialize, Serialize};

/// Entries `?top=` returns when not given.
pub const DEFAULT_TOP: usize = 20;

/// A request the API refuses, with the text the client sees; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest(pub String);

impl std::fmt::Display for BadRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn bad(text: impl Into<String>) -> BadRequest {
    BadRequest(text.into())
}

/// `POST /bans` body as sent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BanBody {
    net: String,
    #[serde(rename = "for", default)]
    length: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

/// A parsed `POST /bans` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BanRequest {
    /// The address or network to ban (an address is its /32 or /128).
    pub net: IpNet,
    /// How long; `None`: the guard's `ban_time`.
    pub length: Option<Duration>,
    /// The operator's note (may be empty).
    pub reason: String,
}

impl BanRequest {
    /// Parses a JSON body: `{"net": "1.2.3.4" | "10.0.0.0/24", "for": "10m", "reason": "..."}`
    /// (`for` and `reason` optional).
    pub fn parse(body: &[u8]) -> Result<Self, BadRequest> {
        let body: BanBody = serde_json::from_slice(body).map_err(|e| {
            bad(format!(
                "invalid JSON body: {e} (expected {{\"net\": \"192.0.2.7\" or \"10.0.0.0/24\", \
                 \"for\": \"10m\", \"reason\": \"...\"}})"
            ))
        })?;
        let net = parse_net(&body.net)?;
        let length = body.length.as_deref().map(parse_length).transpose()?;
        Ok(Self {
            net,
            length,
            reason: body.reason.unwrap_or_default(),
        })
    }
}

/// An address (`192.0.2.7`, `2001:db8::1`) or a network (`10.0.0.0/24`).
pub fn parse_net(text: &str) -> Result<IpNet, BadRequest> {
    let text = text.trim();
    let parsed = if text.contains('/') {
        text.parse::<IpNet>().ok()
    } else {
        text.parse::<IpAddr>().ok().map(IpNet::from)
    };
    parsed.ok_or_else(|| {
        bad(format!(
            "`{text}` is not an IP address or network (examples: 192.0.2.7, 10.0.0.0/24, \
             2001:db8::/48)"
        ))
    })
}

/// A ban length: `90s`, `10m`, `2h`, `1d`, `1h 30m`.
pub fn parse_length(text: &str) -> Result<Duration, BadRequest> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        bad(format!(
            "`for`: `{text}` is not a duration ({e}; examples: 90s, 10m, 2h, 1d)"
        ))
    })
}

/// `?top=N`, the only parameter of `/sources` and `/clients`: 1..=[`MAX_TOP`], default
/// [`DEFAULT_TOP`].
pub fn parse_top(query: &HashMap<String, String>) -> Result<usize, BadRequest> {
    only_params(query, &["top"])?;
    match query.get("top") {
        None => Ok(DEFAULT_TOP),
        Some(v) => match v.trim().parse::<usize>() {
            Ok(n) if (1..=MAX_TOP).contains(&n) => Ok(n),
            _ => Err(bad(format!(
                "`top`: `{v}` is not a number between 1 and {MAX_TOP}"
            ))),
        },
    }
}

/// Refuses query parameters other than `allowed`, so a typo is not silently ignored.
pub fn only_params(query: &HashMap<String, String>, allowed: &[&str]) -> Result<(), BadRequest> {
    match query.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) if allowed.is_empty() => Err(bad(format!(
            "unknown query parameter `{k}`: this endpoint takes none"
        ))),
        Some(k) => Err(bad(format!(
            "unknown query parameter `{k}` (expected: {})",
            allowed.join(", ")
        ))),
        None => Ok(()),
    }
}

/// A ban as `/bans` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanView {
    /// The banned network (`192.0.2.7/32`).
    pub net: String,
    /// Seconds until it ends (at least 1 while it runs).
    pub remaining_secs: u64,
    /// Bans of this network before this one (0 for a first ban).
    pub repeat: u32,
    /// `strikes` (the guard's) or `admin`.
    pub reason: String,
    /// The operator's note, for admin bans that have one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub note: Option<String>,
}

impl BanView {
    /// The view of `ban` on `net` at `now`.
    pub fn new(net: IpNet, ban: &Ban, now: Instant) -> Self {
        let left = ban.until.saturating_duration_since(now);
        Self {
            net: net.to_string(),
            remaining_secs: left.as_secs() + u64::from(left.subsec_nanos() > 0),
            repeat: ban.repeat,
            reason: ban.reason.label().to_string(),
            note: ban
                .reason
                .note()
                .filter(|n| !n.is_empty())
                .map(str::to_string),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ban_requests_parse_with_defaults() {
        let r = BanRequest::parse(br#"{"net": "192.0.2.7", "for": "10m", "reason": "scraper"}"#)
            .unwrap();
        assert_eq!(r.net, "192.0.2.7/32".parse::<IpNet>().unwrap());
        assert_eq!(r.length, Some(Duration::from_secs(600)));
        assert_eq!(r.reason, "scraper");
        let r = BanRequest::parse(br#"{"net": " 10.0.0.0/24 "}"#).unwrap();
        assert_eq!(r.net, "10.0.0.0/24".parse::<IpNet>().unwrap());
        assert_eq!(r.length, None);
        assert_eq!(r.reason, "");
        let r = BanRequest::parse(br#"{"net": "2001:db8::1", "for": "1h 30m"}"#).unwrap();
        assert_eq!(r.net.prefix_len(), 128);
        assert_eq!(r.length, Some(Duration::from_secs(5400)));
    }

    #[test]
    fn bad_ban_requests_say_what_is_wrong() {
        let err = |body: &[u8]| BanRequest::parse(body).unwrap_err().0;
        assert!(err(b"{not json").contains("invalid JSON"));
        assert!(err(b"").contains("invalid JSON"));
        assert!(err(br#"{"net": "1.2.3.4", "fro": "1m"}"#).contains("fro"));
        assert!(err(br#"{"for": "1m"}"#).contains("net"));
        assert!(err(br#"{"net": 5}"#).contains("invalid JSON"));
        assert!(err(br#"{"net": "1.2.3.999"}"#).contains("1.2.3.999"));
        assert!(err(br#"{"net": "10.0.0.0/33"}"#).contains("10.0.0.0/33"));
        assert!(err(br#"{"net": "example.com"}"#).contains("not an IP address"));
        assert!(err(br#"{"net": "1.2.3.4", "for": "10x"}"#).contains("not a duration"));
        assert!(err(br#"{"net": "1.2.3.4", "for": "-1m"}"#).contains("not a duration"));
    }

    #[test]
    fn top_is_bounded_and_other_parameters_are_refused() {
        let q = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(parse_top(&q(&[])).unwrap(), DEFAULT_TOP);
        assert_eq!(parse_top(&q(&[("top", "5")])).unwrap(), 5);
        assert_eq!(parse_top(&q(&[("top", "1000")])).unwrap(), 1000);
        for bad in ["0", "1001", "-1", "ten", ""] {
            let e = parse_top(&q(&[("top", bad)])).unwrap_err().0;
            assert!(e.contains("top"), "{bad}: {e}");
        }
        assert!(
            parse_top(&q(&[("tpo", "5")]))
                .unwrap_err()
                .0
                .contains("tpo")
        );
        assert!(only_params(&q(&[("x", "1")]), &[]).is_err());
        assert!(only_params(&q(&[]), &[]).is_ok());
    }

    #[test]
    fn ban_views_round_up_the_time_left() {
        let now = Instant::now();
        let ban = Ban {
            until: now + Duration::from_millis(1500),
            repeat: 2,
            reason: moat_guard::BanReason::Admin("why".into()),
        };
        let v = BanView::new("10.0.0.0/24".parse().unwrap(), &ban, now);
        assert_eq!(v.remaining_secs, 2);
        assert_eq!(v.reason, "admin");
        assert_eq!(v.note.as_deref(), Some("why"));
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["net"], "10.0.0.0/24");
    }
}
