//! What Redis says about itself: `INFO`, `CONFIG GET *` (or INFO's few settings when CONFIG
//! is renamed or denied), the default user from `ACL GETUSER`/`ACL LIST`, which dangerous
//! commands it may run (`ACL DRYRUN`), whether a password is needed at all, and whether a
//! moat answers in front (`CLIENT INFO`).
//!
//! Every command may be refused: each refusal becomes a [`crate::facts::Gap`], never an
//! error, so a partial report still comes out.

use std::time::Duration;

use redis::{Connection, Value};

use super::CollectError;
use crate::facts::{ConfigSource, DefaultUser, Facts};
use crate::rules::access::DANGEROUS;

/// Settings INFO shows, under the same name as CONFIG (or another one): the fallback.
const INFO_SETTINGS: &[(&str, &str)] = &[
    ("maxclients", "maxclients"),
    ("maxmemory", "maxmemory"),
    ("maxmemory_policy", "maxmemory-policy"),
];

/// Settings that hold secrets: kept only as set or not, so no report ever shows them.
const SECRET_SETTINGS: &[&str] = &[
    "requirepass",
    "masterauth",
    "tls-key-file-pass",
    "tls-client-key-file-pass",
];

/// What a set secret is recorded as.
pub const HIDDEN: &str = "(set, hidden)";

/// Connects to `url` and fills `facts.redis`. `Err` only when nothing answers at all.
pub fn collect(url: &str, timeout: Duration, facts: &mut Facts) -> Result<(), CollectError> {
    let client = redis::Client::open(url).map_err(|e| CollectError::Url(format!("{e}")))?;
    let mut conn = match client.get_connection_with_timeout(timeout) {
        Ok(conn) => conn,
        Err(e) if e.is_io_error() || e.is_connection_refusal() || e.is_timeout() => {
            return Err(CollectError::Unreachable {
                target: String::new(),
                reason: format!("{e}"),
            });
        }
        Err(e) => {
            facts.gap(
                "everything Redis reports",
                format!("connected, but Redis refused the audit's login: {e}"),
            );
            probe_without_password(url, timeout, facts);
            return Ok(());
        }
    };
    let _ = conn.set_read_timeout(Some(timeout));
    let _ = conn.set_write_timeout(Some(timeout));
    facts.redis.reachable = true;
    let _: redis::RedisResult<()> = redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg("moat-audit")
        .query(&mut conn);

    info(&mut conn, facts);
    config(&mut conn, facts);
    acl(&mut conn, facts);
    behind_moat(&mut conn, facts);
    probe_without_password(url, timeout, facts);
    Ok(())
}

fn info(conn: &mut Connection, facts: &mut Facts) {
    match redis::cmd("INFO").arg("everything").query::<String>(conn) {
        Ok(text) => {
            for (k, v) in moat_watch::collect::info::fields(&text) {
                facts.redis.info.insert(k.to_owned(), v.to_owned());
            }
            facts.redis.version = facts.redis.info.get("redis_version").cloned();
        }
        Err(e) => facts.gap("INFO", format!("refused: {e}")),
    }
}

fn config(conn: &mut Connection, facts: &mut Facts) {
    match redis::cmd("CONFIG")
        .arg("GET")
        .arg("*")
        .query::<Vec<String>>(conn)
    {
        Ok(pairs) => {
            for pair in pairs.chunks_exact(2) {
                if let [k, v] = pair {
                    let k = k.to_ascii_lowercase();
                    let v = if SECRET_SETTINGS.contains(&k.as_str()) && !v.is_empty() {
                        HIDDEN.to_owned()
                    } else {
                        v.clone()
                    };
                    facts.redis.config.insert(k, v);
                }
            }
            facts.redis.config_source = ConfigSource::ConfigGet;
        }
        Err(e) => {
            facts.gap(
                "CONFIG GET",
                format!(
                    "refused ({e}): CONFIG is renamed or denied to this user; only the \
                     settings INFO shows (maxclients, maxmemory) were checked"
                ),
            );
            for (info_name, config_name) in INFO_SETTINGS {
                if let Some(v) = facts.redis.info.get(*info_name).cloned() {
                    facts.redis.config.insert((*config_name).to_owned(), v);
                }
            }
            if !facts.redis.config.is_empty() {
                facts.redis.config_source = ConfigSource::Info;
            }
        }
    }
}

fn acl(conn: &mut Connection, facts: &mut Facts) {
    match redis::cmd("ACL")
        .arg("GETUSER")
        .arg("default")
        .query::<Value>(conn)
    {
        Ok(value) => {
            let mut user = parse_getuser(&value);
            if let Ok(lines) = redis::cmd("ACL").arg("LIST").query::<Vec<String>>(conn) {
                user.acl_line = lines.into_iter().find(|l| l.starts_with("user default "));
            }
            facts.redis.default_user = Some(user);
        }
        Err(e) => facts.gap("ACL GETUSER default", format!("refused: {e}")),
    }
    for (line, _) in DANGEROUS {
        let mut cmd = redis::cmd("ACL");
        cmd.arg("DRYRUN").arg("default");
        for word in line.split_whitespace() {
            cmd.arg(word);
        }
        match cmd.query::<Value>(conn) {
            Ok(Value::Okay) => {
                facts
                    .redis
                    .default_user_commands
                    .insert((*line).to_owned(), true);
            }
            Ok(_) => {
                facts
                    .redis
                    .default_user_commands
                    .insert((*line).to_owned(), false);
            }
            // A renamed (removed) command is not open to anyone.
            Err(e) if e.to_string().contains("not found") => {
                facts
                    .redis
                    .default_user_commands
                    .insert((*line).to_owned(), false);
            }
            Err(e) => {
                facts.redis.default_user_commands.clear();
                facts.gap(
                    "ACL DRYRUN default",
                    format!("refused ({e}): which dangerous commands the default user may run"),
                );
                return;
            }
        }
    }
}

/// The fields of an `ACL GETUSER` reply (a flat list or a RESP3 map).
pub fn parse_getuser(value: &Value) -> DefaultUser {
    let pairs: Vec<(String, &Value)> = match value {
        Value::Array(items) => items
            .chunks_exact(2)
            .filter_map(|p| Some((text(&p[0])?, &p[1])))
            .collect(),
        Value::Map(items) => items
            .iter()
            .filter_map(|(k, v)| Some((text(k)?, v)))
            .collect(),
        _ => Vec::new(),
    };
    let mut user = DefaultUser::default();
    for (key, v) in pairs {
        match key.as_str() {
            "flags" => {
                let flags = list(v);
                user.enabled = flags.iter().any(|f| f == "on");
                user.nopass = flags.iter().any(|f| f == "nopass");
            }
            "passwords" => user.passwords = list(v).len(),
            "commands" => user.commands = text(v).unwrap_or_default(),
            "keys" => user.keys = text(v).unwrap_or_default(),
            "channels" => user.channels = text(v).unwrap_or_default(),
            _ => {}
        }
    }
    user
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Okay => Some("OK".to_owned()),
        _ => None,
    }
}

fn list(v: &Value) -> Vec<String> {
    match v {
        Value::Array(items) | Value::Set(items) => items.iter().filter_map(text).collect(),
        _ => Vec::new(),
    }
}

/// Moat answers CLIENT INFO from its own session, with Redis's buffer counters at 0
/// (`argv-mem=0 ... rbs=0`); a real Redis 7 always shows the running command's argv and
/// its read buffer there.
fn behind_moat(conn: &mut Connection, facts: &mut Facts) {
    let Ok(line) = redis::cmd("CLIENT").arg("INFO").query::<String>(conn) else {
        return;
    };
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
    };
    let moat_like = field("argv-mem") == Some("0") && field("rbs") == Some("0");
    if !moat_like {
        return;
    }
    let mut evidence = "CLIENT INFO shows argv-mem=0 and rbs=0, as moat's emulation does \
                        (a Redis shows the running command there)"
        .to_owned();
    let redis_port = facts.redis.info.get("tcp_port").cloned();
    if let (Some(rp), Some(up)) = (redis_port, facts.port)
        && rp != up.to_string()
    {
        evidence.push_str(&format!(
            "; the audit connected to port {up} while INFO says Redis listens on {rp}"
        ));
    }
    facts.redis.behind_moat = Some(evidence);
}

/// Whether a connection without credentials may run a command: the default user's
/// password, seen from outside (works even when ACL is denied to the audit).
fn probe_without_password(url: &str, timeout: Duration, facts: &mut Facts) {
    let Some(bare) = strip_credentials(url) else {
        return;
    };
    let Ok(client) = redis::Client::open(bare.as_str()) else {
        return;
    };
    let Ok(mut conn) = client.get_connection_with_timeout(timeout) else {
        // Without credentials the handshake itself may be refused.
        facts.redis.unauthenticated_access = Some(false);
        return;
    };
    let _ = conn.set_read_timeout(Some(timeout));
    // A key lookup: moat answers PING itself, but forwards this.
    let reply: redis::RedisResult<i64> = redis::cmd("EXISTS")
        .arg("moat-audit:probe")
        .query(&mut conn);
    facts.redis.unauthenticated_access = Some(reply.is_ok());
}

/// `url` without `user:pass@`; the same URL when it has none.
pub fn strip_credentials(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let rest = match rest.rsplit_once('@') {
        Some((_, host)) => host,
        None => rest,
    };
    Some(format!("{scheme}://{rest}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn getuser_flat_list() {
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let v = Value::Array(vec![
            b("flags"),
            Value::Array(vec![b("on"), b("nopass")]),
            b("passwords"),
            Value::Array(vec![]),
            b("commands"),
            b("+@all -config"),
            b("keys"),
            b("~*"),
            b("channels"),
            b("&*"),
        ]);
        let u = parse_getuser(&v);
        assert!(u.enabled && u.nopass);
        assert_eq!(u.passwords, 0);
        assert_eq!(u.commands, "+@all -config");
        assert_eq!(parse_getuser(&Value::Nil), DefaultUser::default());
    }

    #[test]
    fn credentials_are_stripped() {
        assert_eq!(
            strip_credentials("redis://u:p@h:1/0").as_deref(),
            Some("redis://h:1/0")
        );
        assert_eq!(
            strip_credentials("redis://h:1").as_deref(),
            Some("redis://h:1")
        );
        assert_eq!(strip_credentials("nonsense"), None);
    }
}
