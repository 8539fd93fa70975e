//! What the proxy has done and holds now, as one plain snapshot for the exporter and the
//! admin API. Built at scrape time from every worker's own counters and the guard's; the
//! data path only ever writes its own worker's counters.

pub(crate) mod worker;

/// A histogram as Prometheus exposes it: upper bounds in seconds, the count of
/// observations at or below each bound (cumulative), their sum and count.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// Upper bounds, ascending (the `+Inf` bucket is `count`).
    pub bounds: Vec<f64>,
    /// Cumulative counts, one per bound.
    pub cumulative: Vec<u64>,
    /// Sum of the observed values, in seconds.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

/// Everything `/metrics` exports, summed over workers. Labelled values are `(label, value)`
/// pairs with labels from a fixed, small set: never an address or a client.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Moat's version (`moat_build_info{version}`).
    pub version: &'static str,
    /// Unix time moat started, in seconds (`moat_start_time_seconds`).
    pub start_time_seconds: f64,
    /// Connections admitted by the guard (`moat_connections_accepted_total`).
    pub accepted: u64,
    /// Connections refused, by reason (`moat_connections_refused_total{reason}`).
    pub refused: Vec<(&'static str, u64)>,
    /// Client connections held now, by class: trusted, authenticated, unauthenticated
    /// (`moat_clients{class}`).
    pub clients: Vec<(&'static str, u64)>,
    /// Clients moat closed, by why (`moat_clients_closed_total{reason}`).
    pub closed: Vec<(&'static str, u64)>,
    /// Bans in force (`moat_bans_active`).
    pub bans_active: u64,
    /// Bans issued, by reason (`moat_bans_issued_total{reason}`).
    pub bans_issued: Vec<(&'static str, u64)>,
    /// Entries of each guard table (`moat_guard_table_entries{table}`).
    pub guard_tables: Vec<(&'static str, u64)>,
    /// Entries the guard's bounded tables dropped to make room (`moat_guard_evictions_total`).
    pub guard_evictions: u64,
    /// Backend connections by group (shared, pinned) and state (idle, busy, connecting,
    /// down), refreshed by each worker every second
    /// (`moat_backend_connections{group,state}`).
    pub backend_connections: Vec<(&'static str, &'static str, u64)>,
    /// The pool caps by group: shared, pinned (`moat_backend_connections_max{group}`).
    pub backend_connections_max: Vec<(&'static str, u64)>,
    /// Plain counters by metric name (without `moat_` and `_total`): `backend_reconnects`,
    /// `backend_connect_failures`, `backend_connections_lost`, `backend_timeouts`,
    /// `backend_takeovers`, `requests_refused`, `pool_waits`, `pinned_lease_waits`,
    /// `pinned_lease_refusals`, `auth_refused`, `kernel_filter_rebuilds`, `ban_share_published`,
    /// `ban_share_applied`, `ban_share_errors`, `sentinel_switches`, `sentinel_errors`,
    /// `backend_tls_failures`, `crowdsec_pushed`, `crowdsec_applied`, `crowdsec_lifted`,
    /// `crowdsec_refused`, `crowdsec_ignored`, `crowdsec_capped`, `crowdsec_errors`,
    /// `crowdsec_auth_errors`.
    pub counters: Vec<(&'static str, u64)>,
    /// Plain gauges by metric name (without `moat_`): `clients_max`, `pinned_leases`,
    /// `monitors`, `client_output_bytes`, `request_buffer_bytes`, `clients_dormant`,
    /// `memory_budget_bytes`, `kernel_filter_rules`, `kernel_filter_left_out`.
    /// The pinned leases, the two byte counts and the dormant clients are refreshed by each
    /// worker every second.
    pub gauges: Vec<(&'static str, u64)>,
    /// Commands by how moat ran them: forwarded, local, pinned (`moat_commands_total{kind}`).
    pub commands: Vec<(&'static str, u64)>,
    /// Time a request spent in moat itself, excluding Redis
    /// (`moat_request_duration_seconds{stage="proxy"}`): sampled, one read of a client's
    /// requests in 16, from the read to the moment moat has handled every request it
    /// brought (parsed, routed, queued for Redis or answered by moat), so the clock is read
    /// twice per 16 reads, not per request.
    pub proxy_latency: Histogram,
    /// Time from a request's write to Redis to its reply's arrival
    /// (`moat_request_duration_seconds{stage="backend"}`): every request on a shared
    /// connection, from its queueing in the connection's write buffer (written out at the
    /// writer's next turn) to the read that brought its reply.
    pub backend_latency: Histogram,
    /// Workers whose circuit breaker is open now (`moat_breaker_open_workers`).
    pub breaker_open: u64,
    /// Breaker transitions by the state entered (`moat_breaker_transitions_total{to}`).
    pub breaker_transitions: Vec<(&'static str, u64)>,
    /// Reloads by outcome (`moat_reloads_total{outcome}`).
    pub reloads: Vec<(&'static str, u64)>,
    /// Moat is draining: accepting no new clients (`moat_draining`).
    pub draining: bool,
    /// Unix time of the last applied reload, in seconds; the start time before any
    /// (`moat_config_last_reload_success_timestamp_seconds`).
    pub last_reload_success_seconds: f64,
    /// Admin API requests refused, by reason: token, banned
    /// (`moat_admin_requests_refused_total{reason}`).
    pub admin_requests_refused: Vec<(&'static str, u64)>,
    /// Ban messages from peers dropped, by reason: oversized, malformed, signature, stale,
    /// rate_limited, full, refused (`moat_ban_share_rejected_total{reason}`).
    pub ban_share_rejected: Vec<(&'static str, u64)>,
    /// The primary in use when the Sentinels name it (`backend.sentinels`), as last
    /// verified (`moat_sentinel_primary{address}`).
    pub sentinel_primary: Option<String>,
    /// Client TLS handshakes by outcome: ok, failed, timeout, busy
    /// (`moat_tls_handshakes_total{outcome}`).
    pub tls_handshakes: Vec<(&'static str, u64)>,
}

impl Snapshot {
    /// A plain counter by name, 0 when absent (tests, tools).
    pub fn counter(&self, name: &str) -> u64 {
        self.counters
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0, |(_, v)| *v)
    }

    /// A plain gauge by name, 0 when absent.
    pub fn gauge(&self, name: &str) -> u64 {
        lookup(&self.gauges, name)
    }

    /// A labelled value of `set` (one of the `(label, value)` fields), 0 when absent.
    pub fn labelled(set: &[(&'static str, u64)], label: &str) -> u64 {
        lookup(set, label)
    }
}

fn lookup(set: &[(&'static str, u64)], name: &str) -> u64 {
    set.iter().find(|(n, _)| *n == name).map_or(0, |(_, v)| *v)
}
