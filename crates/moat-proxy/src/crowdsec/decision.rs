//! CrowdSec's decisions read and checked, Go durations parsed, and the alerts moat pushes
//! built. Pure: no I/O, the time is an argument.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde_json::{Value, json};

/// Narrowest prefix accepted from a `Range` decision (wider ones are absurd for a ban and
/// refused; the guard refuses them too).
const MIN_PREFIX_V4: u8 = 8;
const MIN_PREFIX_V6: u8 = 16;

/// A ban decision fit to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ban {
    /// The LAPI's id of the decision (the stream's `deleted` list names it again).
    pub(crate) id: i64,
    /// The banned network (a host for scope `Ip`).
    pub(crate) net: IpNet,
    /// How long it has left, cut to `max_ban`.
    pub(crate) length: Duration,
    /// Whether the length was cut.
    pub(crate) capped: bool,
    /// The decision's scenario (says who made it).
    pub(crate) scenario: String,
}

/// What to do with one decision of the stream's `new` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Apply it.
    Ban(Ban),
    /// Over already (a zero or negative duration): nothing to do.
    Expired,
    /// Not a ban of an address or range (a captcha, a country...): not moat's to apply.
    Ignored,
    /// Malformed or absurd; the reason says which.
    Refused(&'static str),
}

/// The stream's two lists (`null` stands for an empty one).
pub(crate) fn parse_stream(body: &str) -> Result<(Vec<Value>, Vec<Value>), String> {
    let v: Value = serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(mut o) = v else {
        return Err("not a JSON object".into());
    };
    let mut list = |k: &str| match o.remove(k) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(format!("`{k}` is not a list")),
    };
    let new = list("new")?;
    let deleted = list("deleted")?;
    Ok((new, deleted))
}

/// The id and network of a decision, for a deleted one (no duration check).
pub(crate) fn target(d: &Value) -> Result<(i64, IpNet), &'static str> {
    let id = d.get("id").and_then(Value::as_i64).ok_or("no id")?;
    let scope = d.get("scope").and_then(Value::as_str).ok_or("no scope")?;
    let value = d.get("value").and_then(Value::as_str).ok_or("no value")?;
    let net = if scope.eq_ignore_ascii_case("ip") {
        IpNet::from(value.trim().parse::<IpAddr>().map_err(|_| "bad address")?)
    } else if scope.eq_ignore_ascii_case("range") {
        value
            .trim()
            .parse::<IpNet>()
            .map_err(|_| "bad range")?
            .trunc()
    } else {
        return Err("scope");
    };
    Ok((id, net))
}

/// Reads one decision of the `new` list, cutting its duration to `max_ban`.
pub(crate) fn read(d: &Value, max_ban: Duration) -> Verdict {
    if !d.is_object() {
        return Verdict::Refused("not an object");
    }
    let Some(kind) = d.get("type").and_then(Value::as_str) else {
        return Verdict::Refused("no type");
    };
    if !kind.eq_ignore_ascii_case("ban") {
        return Verdict::Ignored;
    }
    let (id, net) = match target(d) {
        Ok(t) => t,
        Err("scope") => return Verdict::Ignored,
        Err(why) => return Verdict::Refused(why),
    };
    let wide = match net {
        IpNet::V4(n) => n.prefix_len() < MIN_PREFIX_V4,
        IpNet::V6(n) => n.prefix_len() < MIN_PREFIX_V6,
    };
    if wide || net.addr().is_unspecified() && net.prefix_len() == net.max_prefix_len() {
        return Verdict::Refused("range too wide");
    }
    let Some(duration) = d.get("duration").and_then(Value::as_str) else {
        return Verdict::Refused("no duration");
    };
    let Some((negative, left)) = go_duration(duration) else {
        return Verdict::Refused("bad duration");
    };
    if negative || left < Duration::from_secs(1) {
        return Verdict::Expired;
    }
    let capped = left > max_ban;
    let scenario = d
        .get("scenario")
        .and_then(Value::as_str)
        .unwrap_or("")
        .chars()
        .take(128)
        .collect();
    Verdict::Ban(Ban {
        id,
        net,
        length: left.min(max_ban),
        capped,
        scenario,
    })
}

/// Parses a Go `time.Duration` string (`4m58.8s`, `-26ms`, `1h2m3s`, `300s`): its sign and
/// size. None when malformed or over 100 years.
pub(crate) fn go_duration(s: &str) -> Option<(bool, Duration)> {
    let (negative, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Some((negative, Duration::ZERO));
    }
    if rest.is_empty() || rest.len() > 64 {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|n| *n > 0)?;
        let number: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..u] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[u..];
        total += number * unit;
    }
    if !total.is_finite() || total > 100.0 * 365.0 * 86400.0 {
        return None;
    }
    Some((negative, Duration::from_secs_f64(total)))
}

/// The scenario of the bans a moat pushes: names its machine, so that it knows its own
/// bans when they come back in the stream.
pub(crate) fn scenario(machine_id: &str, reason: &str) -> String {
    format!("moat/{reason} by {machine_id}")
}

/// Whether a decision's scenario is one this machine pushed.
pub(crate) fn is_own(scenario: &str, machine_id: Option<&str>) -> bool {
    machine_id.is_some_and(|m| {
        scenario.starts_with("moat/")
            && scenario
                .strip_suffix(m)
                .is_some_and(|s| s.ends_with(" by "))
    })
}

/// One alert carrying one ban decision of `net` for `length`, at `unix_secs`.
pub(crate) fn alert(net: IpNet, length: Duration, scenario: &str, unix_secs: u64) -> Value {
    let (scope, value) = if net.prefix_len() == net.max_prefix_len() {
        ("Ip", net.addr().to_string())
    } else {
        ("Range", net.to_string())
    };
    let at = rfc3339(unix_secs);
    let secs = length.as_secs().max(1);
    json!({
        "scenario": scenario,
        "scenario_hash": "",
        "scenario_version": "",
        "message": format!("{scenario}: ban of {value} for {secs}s"),
        "events_count": 1,
        "start_at": at,
        "stop_at": at,
        "capacity": 0,
        "leakspeed": "0",
        "simulated": false,
        "remediation": true,
        "events": [],
        "source": {"scope": scope, "value": value},
        "decisions": [{
            "duration": format!("{secs}s"),
            // A local agent's origin: bouncers and cscli that keep to local decisions
            // (`origins=crowdsec,cscli`, cscli's default listing) see moat's bans too.
            "origin": "crowdsec",
            "scenario": scenario,
            "scope": scope,
            "type": "ban",
            "value": value,
        }],
    })
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a Unix time (civil-from-days, proleptic Gregorian).
fn rfc3339(unix_secs: u64) -> String {
    let days = i64::try_from(unix_secs / 86400).unwrap_or(0);
    let rem = unix_secs % 86400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86400);

    #[test]
    fn go_durations() {
        let d = |s| go_duration(s);
        assert_eq!(d("300s"), Some((false, Duration::from_secs(300))));
        assert_eq!(d("1h2m3s"), Some((false, Duration::from_secs(3723))));
        assert_eq!(d("-26.865884ms").map(|x| x.0), Some(true));
        assert!(d("4m58.815132563s").is_some_and(|(n, x)| !n && x > Duration::from_secs(298)));
        assert_eq!(d("0"), Some((false, Duration::ZERO)));
        for bad in ["", "s", "5", "5x", "1e9h", "99999999999h", "--1s", "1..2s"] {
            assert_eq!(d(bad), None, "{bad}");
        }
    }

    #[test]
    fn ban_decisions_are_checked_and_capped() {
        let v = json!({"id": 7, "type": "ban", "scope": "Ip", "value": "127.0.3.1",
                       "duration": "5m", "scenario": "manual"});
        let Verdict::Ban(b) = read(&v, DAY) else {
            panic!("{v}");
        };
        assert_eq!((b.id, b.net.to_string()), (7, "127.0.3.1/32".to_string()));
        assert!(!b.capped);
        let years = json!({"id": 8, "type": "ban", "scope": "Range", "value": "10.1.2.3/16",
                           "duration": "87600h"});
        let Verdict::Ban(b) = read(&years, DAY) else {
            panic!("{years}");
        };
        assert_eq!(
            (b.net.to_string(), b.length, b.capped),
            ("10.1.0.0/16".into(), DAY, true)
        );
    }

    #[test]
    fn absurd_or_foreign_decisions_are_refused_or_ignored() {
        let base = |scope: &str, value: &str, duration: &str| json!({"id": 1, "type": "ban", "scope": scope, "value": value, "duration": duration});
        for (v, want) in [
            (
                base("Range", "0.0.0.0/0", "5m"),
                Verdict::Refused("range too wide"),
            ),
            (
                base("Range", "::/8", "5m"),
                Verdict::Refused("range too wide"),
            ),
            (
                base("Ip", "0.0.0.0", "5m"),
                Verdict::Refused("range too wide"),
            ),
            (
                base("Ip", "300.1.1.1", "5m"),
                Verdict::Refused("bad address"),
            ),
            (
                base("Range", "1.2.3.4/40", "5m"),
                Verdict::Refused("bad range"),
            ),
            (
                base("Ip", "1.2.3.4", "forever"),
                Verdict::Refused("bad duration"),
            ),
            (base("Ip", "1.2.3.4", "-3s"), Verdict::Expired),
            (base("Country", "FR", "5m"), Verdict::Ignored),
            (
                json!({"id": 1, "type": "captcha", "scope": "Ip", "value": "1.2.3.4"}),
                Verdict::Ignored,
            ),
            (
                json!({"type": "ban", "scope": "Ip", "value": "1.2.3.4", "duration": "5m"}),
                Verdict::Refused("no id"),
            ),
            (json!([1, 2]), Verdict::Refused("not an object")),
        ] {
            assert_eq!(read(&v, DAY), want, "{v}");
        }
    }

    #[test]
    fn streams_are_parsed_leniently_but_not_blindly() {
        assert_eq!(
            parse_stream(r#"{"new":null,"deleted":null}"#),
            Ok((vec![], vec![]))
        );
        assert!(
            parse_stream(r#"{"new":[{"id":1}]}"#).is_ok_and(|(n, d)| n.len() == 1 && d.is_empty())
        );
        assert!(parse_stream("[]").is_err());
        assert!(parse_stream(r#"{"new":5}"#).is_err());
        assert!(parse_stream("{not json").is_err());
    }

    #[test]
    fn own_scenarios_are_known() {
        let s = scenario("moat-a", "strikes");
        assert!(is_own(&s, Some("moat-a")));
        assert!(!is_own(&s, Some("a")));
        assert!(!is_own(&s, None));
        assert!(!is_own("crowdsecurity/ssh-bf", Some("moat-a")));
    }

    #[test]
    fn alerts_carry_one_decision() {
        let a = alert(
            "127.0.4.0/24".parse().unwrap(),
            Duration::from_secs(90),
            "moat/admin by m",
            0,
        );
        assert_eq!(a["decisions"][0]["scope"], "Range");
        assert_eq!(a["decisions"][0]["duration"], "90s");
        assert_eq!(a["start_at"], "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_796_679_726), "2026-12-07T21:42:06Z");
    }
}
