//! One poll's worth of signals. Every field is optional: a Redis on another host has no
//! `/proc` view, an ACL may deny `INFO` sections, an old Redis lacks newer fields. Counters
//! are the raw cumulative values; the detectors turn them into rates.

use std::time::Instant;

use serde::Serialize;

/// Signals read in one poll at `at`.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// When the poll happened (the detectors' clock).
    #[serde(skip)]
    pub at: Instant,
    /// Whether the monitoring connection could talk to Redis at all this poll (a failure to
    /// connect is itself a signal: it is often the attack).
    pub redis_reachable: bool,
    /// Redis answered but refused what the watch needs (its login, or `INFO`: a wrong
    /// password, an ACL, a renamed command), in Redis's words; its own signals are then
    /// unknown, and the host's still come.
    pub redis_refused: Option<String>,
    /// What Redis's INFO (and CONFIG) said.
    pub redis: RedisSignals,
    /// What the host said, when Redis runs on it.
    pub host: HostSignals,
    /// Who holds the connections (a sampled `CLIENT LIST`), on the polls that took one.
    pub clients: Option<ClientsSummary>,
    /// Moat's own view, when the watched Redis sits behind a moat (`--moat ADMIN_URL`).
    pub moat: Option<MoatSignals>,
}

/// What a moat in front of the watched Redis says through its admin API: what it refuses,
/// whom it bans, who connects most. Counters are cumulative, like the others.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MoatSignals {
    /// Whether the admin API answered this poll.
    pub reachable: bool,
    /// Client connections moat holds now (`moat_clients`).
    pub clients: Option<u64>,
    /// Moat's cap on client connections (`moat_clients_max`).
    pub clients_max: Option<u64>,
    /// Connections moat admitted (counter).
    pub admitted_total: Option<u64>,
    /// Connections moat refused, all reasons (counter).
    pub refused_total: Option<u64>,
    /// Refused connections by reason (counters), e.g. `("banned", 1200)`.
    pub refused_by_reason: Vec<(String, u64)>,
    /// Bans in force now.
    pub bans_active: Option<u64>,
    /// The sources holding the most connections through moat, most first: (address,
    /// connections now).
    pub top_sources: Vec<(String, u64)>,
    /// The sources moat refused most, most first: (address, refusals counted by the guard).
    pub top_refused: Vec<(String, u64)>,
}

/// A `CLIENT LIST` summarised by source address: who holds the connections.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ClientsSummary {
    /// Client connections listed.
    pub total: u64,
    /// The addresses holding the most connections, most first (at most a handful).
    pub top: Vec<(String, u64)>,
    /// Connections that never ran a command (`cmd=NULL`): the mark of a hoard.
    pub never_ran: u64,
    /// Connections idle for a minute or more.
    pub idle_over_minute: u64,
}

/// Redis's view (INFO `clients`, `stats`, `memory`; `CONFIG GET maxclients`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RedisSignals {
    /// `connected_clients`.
    pub connected_clients: Option<u64>,
    /// `maxclients` (INFO on Redis 7+, else `CONFIG GET maxclients`).
    pub maxclients: Option<u64>,
    /// `blocked_clients`.
    pub blocked_clients: Option<u64>,
    /// `total_connections_received` (counter).
    pub total_connections_received: Option<u64>,
    /// `rejected_connections` (counter).
    pub rejected_connections: Option<u64>,
    /// `evicted_clients` (counter, Redis 7+).
    pub evicted_clients: Option<u64>,
    /// `client_query_buffer_limit_disconnections` (counter, Redis 7.2+).
    pub query_buffer_limit_disconnections: Option<u64>,
    /// `client_output_buffer_limit_disconnections` (counter, Redis 7.2+).
    pub output_buffer_limit_disconnections: Option<u64>,
    /// `acl_access_denied_auth` (counter, Redis 6+).
    pub acl_access_denied_auth: Option<u64>,
    /// `used_memory`, bytes.
    pub used_memory: Option<u64>,
    /// `mem_clients_normal`, bytes.
    pub mem_clients_normal: Option<u64>,
    /// `total_net_input_bytes` (counter): exported as redis_exporter does.
    pub net_input_bytes: Option<u64>,
    /// `total_net_output_bytes` (counter).
    pub net_output_bytes: Option<u64>,
    /// `instantaneous_input_kbps`.
    pub input_kbps: Option<f64>,
    /// `instantaneous_output_kbps`.
    pub output_kbps: Option<f64>,
    /// `process_id`, to find the process in `/proc` when Redis runs on this host.
    pub process_id: Option<u32>,
    /// `tcp_port`.
    pub tcp_port: Option<u16>,
}

/// The host's view, when Redis runs on it (all counters cumulative).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HostSignals {
    /// TcpExt `ListenOverflows`: connections dropped because an accept queue was full.
    pub listen_overflows: Option<u64>,
    /// TcpExt `ListenDrops`.
    pub listen_drops: Option<u64>,
    /// TcpExt `TCPReqQFullDrop`: SYNs dropped because the SYN queue was full.
    pub reqq_full_drop: Option<u64>,
    /// TcpExt `TCPReqQFullDoCookies`.
    pub reqq_full_do_cookies: Option<u64>,
    /// TcpExt `SyncookiesSent`.
    pub syncookies_sent: Option<u64>,
    /// Tcp `PassiveOpens`: connections accepted by the host.
    pub passive_opens: Option<u64>,
    /// Tcp `CurrEstab`: established connections on the host now.
    pub curr_estab: Option<u64>,
    /// Connections waiting in the Redis listener's accept queue now, and its size.
    pub accept_queue: Option<(u64, u64)>,
    /// Conntrack entries in use and the table's maximum, when conntrack is loaded.
    pub conntrack: Option<(u64, u64)>,
    /// The Redis process's open file descriptors and its limit.
    pub fds: Option<(u64, u64)>,
    /// The Redis process's CPU time (user + system), seconds (counter).
    pub cpu_seconds: Option<f64>,
    /// The Redis process's resident memory, bytes.
    pub rss_bytes: Option<u64>,
}
