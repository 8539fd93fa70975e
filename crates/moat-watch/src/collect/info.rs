//! Redis `INFO` text into [`RedisSignals`].
//!
//! INFO is `# Section` headers and `key:value` lines, CRLF-terminated. Fields come and go
//! between versions (and sections may be denied by ACL), so every field is looked up by
//! name, unknown ones are ignored and missing or unparsable ones stay `None`.
//! Also [`config_get_u64`], for `CONFIG GET maxclients` when INFO lacks `maxclients`.

use crate::sample::RedisSignals;

/// The `key:value` pairs of an INFO reply, in order; headers, blank and malformed lines
/// are skipped. Values may themselves contain `:` (`executable:/usr/bin/redis-server`),
/// so only the first one splits.
pub fn fields(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.lines().filter_map(|line| {
        let line = line.trim_end_matches('\r');
        if line.starts_with('#') {
            return None;
        }
        let (key, value) = line.split_once(':')?;
        let key = key.trim();
        (!key.is_empty()).then_some((key, value.trim()))
    })
}

/// Parses an INFO reply (any sections, `INFO everything` included) into the signals the
/// detectors use. Never fails: what is missing or garbled is `None`.
pub fn parse(text: &str) -> RedisSignals {
    let mut s = RedisSignals::default();
    for (key, value) in fields(text) {
        let int = || value.parse::<u64>().ok();
        match key {
            "connected_clients" => s.connected_clients = int(),
            "maxclients" => s.maxclients = int(),
            "blocked_clients" => s.blocked_clients = int(),
            "total_connections_received" => s.total_connections_received = int(),
            "rejected_connections" => s.rejected_connections = int(),
            "evicted_clients" => s.evicted_clients = int(),
            "client_query_buffer_limit_disconnections" => {
                s.query_buffer_limit_disconnections = int();
            }
            "client_output_buffer_limit_disconnections" => {
                s.output_buffer_limit_disconnections = int();
            }
            "acl_access_denied_auth" => s.acl_access_denied_auth = int(),
            "used_memory" => s.used_memory = int(),
            "mem_clients_normal" => s.mem_clients_normal = int(),
            "total_net_input_bytes" => s.net_input_bytes = int(),
            "total_net_output_bytes" => s.net_output_bytes = int(),
            "instantaneous_input_kbps" => s.input_kbps = parse_finite(value),
            "instantaneous_output_kbps" => s.output_kbps = parse_finite(value),
            "process_id" => s.process_id = value.parse().ok(),
            "tcp_port" => s.tcp_port = value.parse().ok(),
            _ => {}
        }
    }
    s
}

/// A float that is a real number: `nan` or `inf` would poison the detectors' baselines.
fn parse_finite(value: &str) -> Option<f64> {
    value.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// The integer value of `name` in a `CONFIG GET` reply given as its flat list of strings
/// (`[name, value, name, value, ...]`, as RESP2 returns it and `redis-cli` prints it).
/// Names match case-insensitively; `None` when absent or not an integer (a renamed or
/// denied `CONFIG` yields an error upstream, never a panic here).
pub fn config_get_u64<S: AsRef<str>>(reply: &[S], name: &str) -> Option<u64> {
    reply.chunks_exact(2).find_map(|pair| {
        let [key, value] = pair else { return None };
        key.as_ref()
            .trim()
            .eq_ignore_ascii_case(name)
            .then(|| value.as_ref().trim().parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = include_str!("../../tests/data/info-everything.txt");
    const CONFIG_MAXCLIENTS: &str = include_str!("../../tests/data/config-get-maxclients.txt");

    #[test]
    fn parses_captured_info_everything() {
        let s = parse(INFO);
        assert_eq!(
            s,
            RedisSignals {
                connected_clients: Some(1),
                maxclients: Some(10000),
                blocked_clients: Some(0),
                total_connections_received: Some(2),
                rejected_connections: Some(0),
                evicted_clients: Some(0),
                // This Redis 7.0.15 prints neither the 7.2 disconnection counters nor
                // `acl_access_denied_auth`.
                query_buffer_limit_disconnections: None,
                output_buffer_limit_disconnections: None,
                acl_access_denied_auth: None,
                used_memory: Some(941_136),
                mem_clients_normal: Some(0),
                net_input_bytes: Some(45),
                net_output_bytes: Some(7),
                input_kbps: Some(0.0),
                output_kbps: Some(0.0),
                process_id: Some(20379),
                tcp_port: Some(59971),
            }
        );
    }

    #[test]
    fn reads_newer_fields_and_lf_only_text() {
        let text = "# Stats\nclient_query_buffer_limit_disconnections:3\n\
                    client_output_buffer_limit_disconnections:4\ninstantaneous_input_kbps:1.25\n\
                    acl_access_denied_auth:9\n";
        let s = parse(text);
        assert_eq!(s.query_buffer_limit_disconnections, Some(3));
        assert_eq!(s.output_buffer_limit_disconnections, Some(4));
        assert_eq!(s.input_kbps, Some(1.25));
        assert_eq!(s.acl_access_denied_auth, Some(9));
    }

    #[test]
    fn values_with_colons_split_on_the_first() {
        let pairs: Vec<_> =
            fields("executable:/usr/bin/redis-server\r\ndb0:keys=1,expires=0\r\n").collect();
        assert_eq!(
            pairs,
            [
                ("executable", "/usr/bin/redis-server"),
                ("db0", "keys=1,expires=0")
            ]
        );
    }

    #[test]
    fn garbage_and_truncation_give_none() {
        assert_eq!(parse(""), RedisSignals::default());
        assert_eq!(
            parse("\u{0}\u{ff}garbage\r\n::::\r\n# x"),
            RedisSignals::default()
        );
        let s = parse(
            "connected_clients:\r\nmaxclients:-1\r\nused_memory:12abc\r\n\
             instantaneous_input_kbps:nan\r\nprocess_id:99999999999\r\ntcp_port:70000\r\nconnected_cl",
        );
        assert_eq!(s, RedisSignals::default());
        // A reply cut mid-line keeps what came before.
        let cut = &INFO[..INFO.find("maxclients").unwrap_or(0)];
        let s = parse(cut);
        assert_eq!(s.connected_clients, Some(1));
        assert_eq!(s.maxclients, None);
    }

    #[test]
    fn config_get_reply() {
        let lines: Vec<&str> = CONFIG_MAXCLIENTS.lines().collect();
        assert_eq!(config_get_u64(&lines, "maxclients"), Some(10000));
        assert_eq!(config_get_u64(&["MaxClients", "5"], "maxclients"), Some(5));
        assert_eq!(config_get_u64(&["maxclients"], "maxclients"), None);
        assert_eq!(config_get_u64(&["maxclients", "lots"], "maxclients"), None);
        assert_eq!(config_get_u64::<&str>(&[], "maxclients"), None);
        assert_eq!(
            config_get_u64(&["x", "1", "maxclients", "7"], "maxclients"),
            Some(7)
        );
    }
}
