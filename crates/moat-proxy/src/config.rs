//! The proxy's configuration: one TOML file, every key optional with a documented default.
//!
//! `moat.example.toml` at the repository root lists every key; keep the two in step.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Everything `moat proxy` needs to run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Client-facing listener and runtime.
    pub proxy: ProxyConfig,
    /// Admission guard: who may connect, how fast, how many, for how long; strikes and bans.
    pub guard: moat_guard::GuardConfig,
    /// The Redis server behind moat and the shared pool of connections to it.
    pub backend: BackendConfig,
    /// Dedicated backend connections for transactions, blocking calls and pub/sub.
    pub pinned: PinnedConfig,
    /// Per-client bounds on what a client may send and leave unread.
    pub limits: LimitsConfig,
    /// Who checks clients' credentials: Redis itself (passthrough) or moat's own table.
    pub auth: AuthConfig,
    /// The admin HTTP API: metrics, status, bans, reload, drain.
    pub admin: AdminConfig,
    /// Kernel-level drop of banned and denied sources (BPF socket filter, nftables).
    pub kernel: moat_kernel::KernelConfig,
    /// Bans shared with other moats through the backend Redis (off by default).
    pub ban_share: crate::BanShareConfig,
    /// Bans shared with a CrowdSec Local API (off by default).
    pub crowdsec: crate::CrowdSecConfig,
    /// Users who authenticate at moat (`AUTH`/`HELLO AUTH`), in table mode only.
    pub users: Vec<UserConfig>,
}

/// The `[admin]` section: the admin HTTP API (`/metrics`, `/status`, `/bans`...) on its own
/// listener, loopback by default. Changes need a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Whether to run the admin API at all.
    pub enabled: bool,
    /// Address of the admin listener; port 0 picks a free port (logged at start).
    pub listen: SocketAddr,
    /// Bearer token every request must carry (`Authorization: Bearer <token>`). Required
    /// (or `token_file`) when `listen` is not a loopback address.
    pub token: Option<String>,
    /// File holding the token (surrounding whitespace ignored), so the config file need not.
    pub token_file: Option<PathBuf>,
    /// Failed token checks from one address within `lockout_window` that lock it out.
    pub lockout_after: u32,
    /// Window in which failed token checks add up.
    #[serde(with = "humantime_serde")]
    pub lockout_window: Duration,
    /// How long a locked-out address is refused, even with the right token.
    #[serde(with = "humantime_serde")]
    pub lockout_for: Duration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 6390)),
            token: None,
            token_file: None,
            lockout_after: 10,
            lockout_window: Duration::from_secs(60),
            lockout_for: Duration::from_secs(300),
        }
    }
}

impl AdminConfig {
    /// The token requests must carry, read from `token_file` when set; `None` when no token
    /// is configured (then only a loopback listener is allowed).
    pub fn resolve_token(&self) -> Result<Option<String>, ConfigError> {
        match (&self.token, &self.token_file) {
            (Some(token), _) => Ok(Some(token.clone())),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    invalid(
                        "admin.token_file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                let token = text.trim();
                check_token("admin.token_file", token)?;
                Ok(Some(token.to_string()))
            }
            (None, None) => Ok(None),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.token.is_some() && self.token_file.is_some() {
            return Err(invalid(
                "admin.token_file",
                "set either admin.token or admin.token_file, not both",
            ));
        }
        if let Some(token) = &self.token {
            check_token("admin.token", token)?;
        }
        if self.enabled
            && !self.listen.ip().is_loopback()
            && self.token.is_none()
            && self.token_file.is_none()
        {
            return Err(invalid(
                "admin.token",
                format!(
                    "required when admin.listen ({}) is not a loopback address: anyone who \
                     reaches it could lift bans and reload the config (set admin.token or \
                     admin.token_file, or listen on 127.0.0.1)",
                    self.listen
                ),
            ));
        }
        if self.lockout_after == 0 {
            return Err(invalid("admin.lockout_after", "must be positive"));
        }
        const DAY: Duration = Duration::from_secs(24 * 3600);
        for (key, d) in [
            ("admin.lockout_window", self.lockout_window),
            ("admin.lockout_for", self.lockout_for),
        ] {
            if d.is_zero() || d > DAY {
                return Err(invalid(key, "must be between 1ms and a day"));
            }
        }
        Ok(())
    }
}

/// A usable bearer token: long enough to resist guessing, and sendable in a header.
fn check_token(key: &str, token: &str) -> Result<(), ConfigError> {
    if token.len() < 16 {
        return Err(invalid(
            key,
            "the admin token must be at least 16 characters",
        ));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            key,
            "the admin token must be printable ASCII without spaces",
        ));
    }
    Ok(())
}

/// Who is the authority for users and passwords.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Redis is the authority: moat checks `AUTH` against Redis and serves each client from
    /// backend connections logged in as that client's Redis user, so Redis's ACLs apply.
    Passthrough,
    /// Moat holds the users (`[[users]]`) and reaches Redis with one credential of its own
    /// (`backend.username`/`backend.password`).
    Table,
}

/// The `[auth]` section.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `passthrough` or `table`. Unset: `table` when `[[users]]` or `backend.password` are
    /// configured (moat then holds the credentials), `passthrough` otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<AuthMode>,
}

/// Client-facing listener and runtime.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Address clients connect to.
    pub listen: SocketAddr,
    /// Worker threads, each with its own accept loop (`SO_REUSEPORT`) and its own share of the
    /// backend connections. One is right on a small host that also runs Redis.
    pub workers: usize,
    /// Listen backlog passed to `listen(2)`; the kernel truncates it to `net.core.somaxconn`.
    pub backlog: u32,
    /// Longest a drain (or graceful shutdown) waits for clients to finish what they owe
    /// before closing those still open.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Second listener, for TLS clients (Redis's `tls-port` beside `port`); needs
    /// `[proxy.tls]`. Unset: no TLS listener. Changes need a restart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_listen: Option<SocketAddr>,
    /// Certificates and handshake bounds for `tls_listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::tls::ClientTlsConfig>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 6380)),
            workers: 1,
            backlog: 4096,
            drain_timeout: Duration::from_secs(30),
            tls_listen: None,
            tls: None,
        }
    }
}

/// The Redis server behind moat and the shared connections to it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendConfig {
    /// Address of the Redis server. Not used with `sentinels`, which name the primary.
    pub address: SocketAddr,
    /// Sentinels to ask for the primary of `master_name` (empty: connect to `address`).
    /// With them, moat follows failovers; see `crate::sentinel`.
    pub sentinels: Vec<SocketAddr>,
    /// The name the Sentinels monitor the primary under (required with `sentinels`).
    pub master_name: Option<String>,
    /// ACL user for the Sentinels themselves (none: `AUTH password` only).
    pub sentinel_username: Option<String>,
    /// Password for the Sentinels (none: no AUTH sent to them).
    pub sentinel_password: Option<String>,
    /// How often moat asks the Sentinels again and checks the primary's role, in case a
    /// `+switch-master` message was lost.
    #[serde(with = "humantime_serde")]
    pub sentinel_refresh: Duration,
    /// ACL user moat authenticates as on its backend connections (none: `AUTH password` only).
    pub username: Option<String>,
    /// Password for moat's backend connections (none: no AUTH sent).
    pub password: Option<String>,
    /// Total shared backend connections across all workers; Redis never sees more than this
    /// from the shared pool, whatever the clients do.
    pub shared_connections: usize,
    /// Time allowed to open a backend connection and finish its handshake.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Number of logical databases clients may SELECT; read from the server's
    /// `CONFIG GET databases` when unset (16 if the server refuses to say).
    pub databases: Option<u32>,
    /// Requests queued or in flight on one backend connection before new requests fail fast.
    pub max_queue: usize,
    /// Longest wait for the reply to a request on a shared connection: past it the client
    /// gets `-ERR moat: backend timed out ...` (the request is never re-sent; Redis's late
    /// reply is dropped). The connection stays open, since a slow or stopped Redis is not a
    /// failed connection; an idle one whose health-check PING goes unanswered this long
    /// while other connections are answered is closed as dead. 0 disables. Blocking
    /// commands run on dedicated connections and are never cut by it.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Shared connections each worker opens at start and keeps open (at least 1).
    pub min_idle: usize,
    /// Age after which a shared connection is replaced: it stops taking new requests,
    /// drains, closes and reconnects, with ±10% jitter so they do not all recycle at once
    /// (0: never).
    #[serde(with = "humantime_serde")]
    pub max_lifetime: Duration,
    /// PING interval on a shared connection that owes nothing, to find dead connections
    /// before a client does (0: never).
    #[serde(with = "humantime_serde")]
    pub health_check_interval: Duration,
    /// When to stop sending work to a failing backend.
    pub breaker: BreakerConfig,
    /// TLS to Redis; present: on, with certificate verification unless explicitly off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::tls::BackendTlsConfig>,
}

/// The circuit breaker: after repeated backend failures, requests fail at once with
/// `-ERR moat: backend unavailable (circuit open, retry in Ns)` instead of piling up.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Consecutive failures (failed connects, lost connections) that open it.
    pub consecutive_failures: u32,
    /// Failure ratio within `window` that opens it, once `min_requests` outcomes were seen.
    pub failure_ratio: f64,
    /// Outcomes needed before the ratio counts.
    pub min_requests: u32,
    /// Window over which the ratio is counted.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// How long it stays open before letting probes through.
    #[serde(with = "humantime_serde")]
    pub open_for: Duration,
    /// Requests let through while half-open; all must succeed to close it.
    pub probes: u32,
}

impl Default for BreakerConfig {
    /// The shared breaker's defaults (one place for them: moat-resilience).
    fn default() -> Self {
        let d = moat_resilience::BreakerSettings::default();
        Self {
            consecutive_failures: d.consecutive_failures,
            failure_ratio: d.failure_ratio,
            min_requests: d.min_requests,
            window: d.window,
            open_for: d.open_for,
            probes: d.probes,
        }
    }
}

/// `backend.address` when the file does not set it.
const DEFAULT_BACKEND: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    6379,
));

impl BackendConfig {
    /// Checks the Sentinel keys: all or none, and `address` left out when they are used.
    fn validate_sentinels(&self) -> Result<(), ConfigError> {
        if self.sentinels.is_empty() {
            if self.master_name.is_some() {
                return Err(invalid(
                    "backend.master_name",
                    "needs backend.sentinels (the Sentinels that know this name)",
                ));
            }
            return Ok(());
        }
        if self.address != DEFAULT_BACKEND {
            return Err(invalid(
                "backend.address",
                "backend.address and backend.sentinels exclude each other: with Sentinels \
                 the primary's address comes from them; remove backend.address",
            ));
        }
        if self.tls.is_some() {
            return Err(invalid(
                "backend.tls",
                "TLS to a Sentinel-managed primary is not supported yet: moat would speak \
                 plain TCP to the Sentinels and the primary they name; remove [backend.tls] \
                 or backend.sentinels",
            ));
        }
        match &self.master_name {
            None => {
                return Err(invalid(
                    "backend.master_name",
                    "required with backend.sentinels (the name in `sentinel monitor <name> ...`)",
                ));
            }
            Some(name) if name.is_empty() || name.bytes().any(|b| b <= b' ' || b == 0x7f) => {
                return Err(invalid(
                    "backend.master_name",
                    "must be non-empty, without spaces",
                ));
            }
            Some(_) => {}
        }
        if self.sentinels.len() > 32 {
            return Err(invalid("backend.sentinels", "at most 32 Sentinels"));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = self.sentinels.iter().find(|a| !seen.insert(**a)) {
            return Err(invalid(
                "backend.sentinels",
                format!("{dup} is listed twice"),
            ));
        }
        if self.sentinel_username.is_some() && self.sentinel_password.is_none() {
            return Err(invalid(
                "backend.sentinel_username",
                "needs backend.sentinel_password as well",
            ));
        }
        if self.sentinel_refresh.is_zero() {
            return Err(invalid("backend.sentinel_refresh", "must be positive"));
        }
        Ok(())
    }
}

impl Default for BackendConfig {
    fn default() -> Self {
        Self {
            address: DEFAULT_BACKEND,
            sentinels: Vec::new(),
            master_name: None,
            sentinel_username: None,
            sentinel_password: None,
            sentinel_refresh: Duration::from_secs(1),
            username: None,
            password: None,
            shared_connections: 2,
            connect_timeout: Duration::from_secs(2),
            databases: None,
            max_queue: 65_536,
            request_timeout: Duration::from_secs(10),
            min_idle: 1,
            max_lifetime: Duration::from_secs(3600),
            health_check_interval: Duration::from_secs(30),
            breaker: BreakerConfig::default(),
            tls: None,
        }
    }
}

/// The pinned pool: backend connections a session holds alone while it is in a stateful
/// mode (MULTI/WATCH, a blocking call, SUBSCRIBE, MONITOR, CLIENT TRACKING). Separately
/// capped, so holding state cannot starve the shared pool or let one source take them all.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PinnedConfig {
    /// Dedicated connections in total over all workers (0: stateful commands are refused).
    pub max_connections: usize,
    /// Leases one client address may hold at once.
    pub max_per_ip: usize,
    /// Leases one user may hold at once.
    pub max_per_user: usize,
    /// How long a session waits for a lease before its command fails with
    /// `-ERR moat: no dedicated connection available`.
    #[serde(with = "humantime_serde")]
    pub wait: Duration,
}

impl Default for PinnedConfig {
    fn default() -> Self {
        Self {
            max_connections: 64,
            max_per_ip: 8,
            max_per_user: 48,
            wait: Duration::from_secs(2),
        }
    }
}

/// Bounds on what one client may send and leave unread.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Most arguments in one request.
    pub max_args: usize,
    /// Largest single argument, in bytes.
    pub max_bulk_len: usize,
    /// Largest request (all arguments and framing), in bytes.
    pub max_request_bytes: usize,
    /// Longest inline command line or RESP header line, in bytes.
    pub max_inline_len: usize,
    /// Requests a client may have forwarded and unanswered; moat stops reading from the client
    /// past this (backpressure) until replies drain.
    pub max_inflight: usize,
    /// Bytes of a client's requests moat may hold for the backend (queued or unanswered)
    /// before it stops reading more from that client: bounds a client pipelining large
    /// requests to a stalled Redis.
    pub max_inflight_bytes: usize,
    /// Reply bytes waiting for a slow client before moat stops reading its requests; a
    /// subscriber with more unread messages than this is disconnected.
    pub max_output_bytes: usize,
    /// Deepest reply nesting accepted from the backend.
    pub max_reply_depth: usize,
    /// Unsent reply bytes past which a client is disconnected outright (replies already in
    /// flight when reading stopped can still arrive; this bounds them).
    pub max_output_bytes_hard: usize,
    /// Buffered client data (unsent replies, partial requests) all workers together may
    /// hold; past it, clients holding more than an equal share are disconnected first.
    pub memory_budget: usize,
    /// A client's unread replies plus the replies expected for its requests in flight
    /// (estimated from the size of its recent replies): past it, moat forwards no more of its
    /// requests until it reads. Bounds what a client that never reads can make Redis send
    /// through a shared connection ahead of everyone else's replies.
    pub output_window: usize,
    /// Unread reply bytes an untrusted client may hold for at most `output_soft_time`
    /// (Redis's soft `client-output-buffer-limit`); held longer, it is disconnected and
    /// its source struck.
    pub output_soft_limit: usize,
    /// How long an untrusted client may stay above `output_soft_limit`.
    #[serde(with = "humantime_serde")]
    pub output_soft_time: Duration,
    /// Unread reply bytes all untrusted clients together may hold (split across workers);
    /// when full, the heaviest clients that are not reading are disconnected first and
    /// their sources struck. Clients that read are never the ones disconnected.
    pub output_budget: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_args: 1_048_576,
            max_bulk_len: 64 << 20,
            max_request_bytes: 64 << 20,
            max_inline_len: 64 << 10,
            max_inflight: 1024,
            max_inflight_bytes: 16 << 20,
            max_output_bytes: 8 << 20,
            max_reply_depth: 128,
            max_output_bytes_hard: 64 << 20,
            memory_budget: 1 << 30,
            output_window: 1 << 20,
            output_soft_limit: 512 << 10,
            output_soft_time: Duration::from_secs(10),
            output_budget: 256 << 20,
        }
    }
}

/// A user who authenticates at moat.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// User name; `AUTH password` authenticates as `default`.
    pub name: String,
    /// Plain-text password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// SHA-256 of the password, hex encoded, so the file need not hold the password itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_sha256: Option<String>,
    /// Commands this user may not run (`CONFIG`, or one subcommand: `CONFIG|SET`); answered
    /// with `-NOPERM` and never forwarded.
    #[serde(default)]
    pub deny_commands: Vec<String>,
}

/// A configuration that cannot be used, naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML did not parse or did not match the schema (the message names the key).
    #[error("invalid config: {0}")]
    Parse(String),
    /// A value parsed but is not usable.
    #[error("invalid config: `{key}`: {reason}")]
    Invalid {
        /// Dotted path of the key.
        key: String,
        /// Why it was rejected.
        reason: String,
    },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

impl Config {
    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text)
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the values serde cannot: ranges, and the relations between keys.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let p = &self.proxy;
        if p.workers == 0 || p.workers > 256 {
            return Err(invalid("proxy.workers", "must be between 1 and 256"));
        }
        let b = &self.backend;
        if b.shared_connections < p.workers {
            return Err(invalid(
                "backend.shared_connections",
                format!(
                    "must be at least proxy.workers ({}): each worker needs one",
                    p.workers
                ),
            ));
        }
        if b.shared_connections > 1024 {
            return Err(invalid(
                "backend.shared_connections",
                "must be at most 1024",
            ));
        }
        if b.connect_timeout.is_zero() {
            return Err(invalid("backend.connect_timeout", "must be positive"));
        }
        if b.username.is_some() && b.password.is_none() {
            return Err(invalid(
                "backend.username",
                "needs backend.password as well",
            ));
        }
        b.validate_sentinels()?;
        if b.databases == Some(0) {
            return Err(invalid("backend.databases", "must be at least 1"));
        }
        // Bounds that keep every `now + duration` moat computes far from overflow.
        const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
        for (key, d) in [
            ("backend.connect_timeout", b.connect_timeout),
            ("backend.request_timeout", b.request_timeout),
            ("backend.max_lifetime", b.max_lifetime),
            ("backend.health_check_interval", b.health_check_interval),
            ("backend.sentinel_refresh", b.sentinel_refresh),
            ("backend.breaker.window", b.breaker.window),
            ("backend.breaker.open_for", b.breaker.open_for),
            ("pinned.wait", self.pinned.wait),
            ("proxy.drain_timeout", p.drain_timeout),
        ] {
            if d > YEAR {
                return Err(invalid(key, "must be at most a year"));
            }
        }
        let br = &b.breaker;
        if br.consecutive_failures == 0 || br.probes == 0 || br.min_requests == 0 {
            return Err(invalid(
                "backend.breaker",
                "consecutive_failures, min_requests and probes must be positive",
            ));
        }
        if !(br.failure_ratio > 0.0 && br.failure_ratio <= 1.0) {
            return Err(invalid(
                "backend.breaker.failure_ratio",
                "must be in (0, 1]",
            ));
        }
        if br.window.is_zero() || br.open_for.is_zero() {
            return Err(invalid(
                "backend.breaker",
                "window and open_for must be positive",
            ));
        }
        if b.max_queue == 0 {
            return Err(invalid("backend.max_queue", "must be positive"));
        }
        if let Some(tls) = &b.tls {
            tls.validate()?;
        }
        if let Some(tls) = &p.tls {
            tls.validate()?;
        }
        if let Some(addr) = p.tls_listen {
            if p.tls.is_none() {
                return Err(invalid(
                    "proxy.tls_listen",
                    "needs [proxy.tls] with cert_file and key_file",
                ));
            }
            if addr == p.listen && addr.port() != 0 {
                return Err(invalid("proxy.tls_listen", "must differ from proxy.listen"));
            }
        }
        self.guard.validate().map_err(|e| ConfigError::Invalid {
            key: format!("guard.{}", e.key),
            reason: e.reason,
        })?;
        let pinned = &self.pinned;
        if pinned.max_connections > 4096 {
            return Err(invalid("pinned.max_connections", "must be at most 4096"));
        }
        if pinned.max_connections > 0 && pinned.max_connections < p.workers {
            return Err(invalid(
                "pinned.max_connections",
                format!(
                    "must be 0 or at least proxy.workers ({}): each worker needs one",
                    p.workers
                ),
            ));
        }
        if pinned.max_per_ip == 0 {
            return Err(invalid("pinned.max_per_ip", "must be positive"));
        }
        if pinned.max_per_user == 0 {
            return Err(invalid("pinned.max_per_user", "must be positive"));
        }
        let l = &self.limits;
        for (key, value) in [
            ("limits.max_args", l.max_args),
            ("limits.max_bulk_len", l.max_bulk_len),
            ("limits.max_request_bytes", l.max_request_bytes),
            ("limits.max_inflight", l.max_inflight),
            ("limits.max_inflight_bytes", l.max_inflight_bytes),
            ("limits.max_output_bytes", l.max_output_bytes),
            ("limits.max_reply_depth", l.max_reply_depth),
            ("limits.memory_budget", l.memory_budget),
            ("limits.output_window", l.output_window),
            ("limits.output_soft_limit", l.output_soft_limit),
            ("limits.output_budget", l.output_budget),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be positive"));
            }
        }
        if l.max_output_bytes_hard < l.max_output_bytes {
            return Err(invalid(
                "limits.max_output_bytes_hard",
                "must be at least limits.max_output_bytes",
            ));
        }
        if l.output_soft_time.is_zero() {
            return Err(invalid("limits.output_soft_time", "must be positive"));
        }
        if l.max_inline_len < 64 {
            return Err(invalid("limits.max_inline_len", "must be at least 64"));
        }
        self.admin.validate()?;
        self.ban_share.validate()?;
        self.crowdsec.validate()?;
        moat_kernel::nft::validate_table_name(&self.kernel.nftables_table)
            .map_err(|e| invalid("kernel.nftables_table", e.to_string()))?;
        if self.auth.mode == Some(AuthMode::Passthrough) {
            if !self.users.is_empty() {
                return Err(invalid(
                    "users",
                    "users are moat's own table; with auth.mode = \"passthrough\" Redis holds \
                     the users (set auth.mode = \"table\" to use them)",
                ));
            }
            if self.backend.password.is_some() || self.backend.username.is_some() {
                return Err(invalid(
                    "backend.password",
                    "with auth.mode = \"passthrough\" every client brings its own credential; \
                     moat's own backend credential is for auth.mode = \"table\"",
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, user) in self.users.iter().enumerate() {
            let key = |field: &str| format!("users[{i}].{field}");
            if user.name.is_empty() || user.name.bytes().any(|b| b <= b' ' || b == 0x7f) {
                return Err(invalid(key("name"), "must be non-empty, without spaces"));
            }
            if !seen.insert(user.name.as_str()) {
                return Err(invalid(
                    key("name"),
                    format!("duplicate user `{}`", user.name),
                ));
            }
            match (&user.password, &user.password_sha256) {
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        key("password_sha256"),
                        "set either password or password_sha256, not both",
                    ));
                }
                (None, Some(hex)) if decode_sha256_hex(hex).is_none() => {
                    return Err(invalid(
                        key("password_sha256"),
                        "must be 64 hexadecimal digits",
                    ));
                }
                (None, None) if user.name != "default" => {
                    return Err(invalid(
                        key("password"),
                        "required for every user but `default` (a `default` user without \
                         password means no authentication, like Redis's `nopass`)",
                    ));
                }
                _ => {}
            }
            for (j, cmd) in user.deny_commands.iter().enumerate() {
                if cmd.is_empty() || cmd.bytes().any(|b| b <= b' ') {
                    return Err(invalid(
                        key(&format!("deny_commands[{j}]")),
                        "must be a command name such as CONFIG or CONFIG|SET",
                    ));
                }
            }
        }
        Ok(())
    }

    /// The authentication mode in effect, with the default resolved.
    pub fn auth_mode(&self) -> AuthMode {
        match self.auth.mode {
            Some(mode) => mode,
            None if !self.users.is_empty() || self.backend.password.is_some() => AuthMode::Table,
            None => AuthMode::Passthrough,
        }
    }

    /// The effective configuration as TOML, with passwords replaced by `<redacted>`.
    pub fn to_redacted_toml(&self) -> String {
        let mut shown = self.clone();
        if shown.backend.password.is_some() {
            shown.backend.password = Some("<redacted>".into());
        }
        if shown.admin.token.is_some() {
            shown.admin.token = Some("<redacted-admin-token>".into());
        }
        for user in &mut shown.users {
            if user.password.is_some() {
                user.password = Some("<redacted>".into());
            }
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// Decodes a 64-digit hex SHA-256 digest (`users[].password_sha256`).
pub(crate) fn decode_sha256_hex(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::from_toml("").expect("defaults are valid");
        assert_eq!(c.backend.shared_connections, 2);
        assert_eq!(c.proxy.workers, 1);
        assert!(c.users.is_empty());
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml("[backend]\nshared_conections = 3\n").unwrap_err();
        assert!(err.to_string().contains("shared_conections"), "{err}");
    }

    #[test]
    fn wrong_type_is_named() {
        let err = Config::from_toml("[backend]\nshared_connections = \"two\"\n").unwrap_err();
        assert!(err.to_string().contains("shared_connections"), "{err}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("[proxy]\nworkers = 0\n", "proxy.workers"),
            (
                "[proxy]\nworkers = 4\n[backend]\nshared_connections = 2\n",
                "backend.shared_connections",
            ),
            (
                "[backend]\nconnect_timeout = \"0s\"\n",
                "backend.connect_timeout",
            ),
            ("[limits]\nmax_inflight = 0\n", "limits.max_inflight"),
            ("[pinned]\nmax_per_ip = 0\n", "pinned.max_per_ip"),
            ("[guard]\nhigh_water = 99999\n", "guard.high_water"),
            ("[guard]\nban_max = \"1000years\"\n", "guard.ban_max"),
            (
                "[backend]\nrequest_timeout = \"1000years\"\n",
                "backend.request_timeout",
            ),
            ("[guard]\ntrusted = [\"not-a-net\"]\n", "trusted"),
            (
                "[proxy]\nworkers = 2\n[backend]\nshared_connections = 2\n[pinned]\nmax_connections = 1\n",
                "pinned.max_connections",
            ),
            ("[[users]]\nname = \"bob\"\n", "users[0].password"),
            (
                "[[users]]\nname = \"bob\"\npassword_sha256 = \"xyz\"\n",
                "users[0].password_sha256",
            ),
            (
                "[[users]]\nname = \"a\"\npassword = \"x\"\n[[users]]\nname = \"a\"\npassword = \"y\"\n",
                "users[1].name",
            ),
        ];
        for (text, key) in cases {
            let err = Config::from_toml(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text:?}: {err}");
        }
    }

    #[test]
    fn auth_mode_defaults_to_passthrough_unless_moat_holds_credentials() {
        let mode = |toml: &str| Config::from_toml(toml).expect("valid").auth_mode();
        assert_eq!(mode(""), AuthMode::Passthrough);
        assert_eq!(mode("[backend]\npassword = \"x\"\n"), AuthMode::Table);
        assert_eq!(mode("[[users]]\nname = \"default\"\n"), AuthMode::Table);
        assert_eq!(mode("[auth]\nmode = \"table\"\n"), AuthMode::Table);
        for (toml, key) in [
            (
                "[auth]\nmode = \"passthrough\"\n[[users]]\nname = \"default\"\n",
                "users",
            ),
            (
                "[auth]\nmode = \"passthrough\"\n[backend]\npassword = \"x\"\n",
                "backend.password",
            ),
        ] {
            let err = Config::from_toml(toml)
                .and_then(|c| c.validate().map(|()| c))
                .expect_err("refused");
            assert!(err.to_string().contains(key), "{err}");
        }
        assert!(Config::from_toml("[auth]\nmode = \"ldap\"\n").is_err());
    }

    #[test]
    fn example_file_lists_the_defaults() {
        let example = Config::from_toml(include_str!("../../../moat.example.toml"))
            .expect("moat.example.toml is valid");
        assert_eq!(
            toml::to_string(&example).unwrap(),
            toml::to_string(&Config::default()).unwrap(),
            "moat.example.toml and Config::default() disagree"
        );
    }

    #[test]
    fn sentinel_keys_come_together_and_exclude_address() {
        let ok = "[backend]\nsentinels = [\"127.0.0.1:26379\", \"127.0.0.1:26380\"]\n\
                  master_name = \"mymaster\"\n";
        let c = Config::from_toml(ok).expect("valid");
        assert_eq!(c.backend.sentinels.len(), 2);
        let s = "sentinels = [\"127.0.0.1:26379\"]\n";
        for (text, key, says) in [
            (format!("[backend]\n{s}"), "backend.master_name", "required"),
            (
                "[backend]\nmaster_name = \"m\"\n".to_string(),
                "backend.master_name",
                "needs backend.sentinels",
            ),
            (
                format!("[backend]\n{s}master_name = \"m\"\naddress = \"10.0.0.1:6379\"\n"),
                "backend.address",
                "exclude each other",
            ),
            (
                format!("[backend]\n{s}master_name = \"a b\"\n"),
                "backend.master_name",
                "without spaces",
            ),
            (
                "[backend]\nsentinels = [\"127.0.0.1:1\", \"127.0.0.1:1\"]\nmaster_name = \"m\"\n"
                    .to_string(),
                "backend.sentinels",
                "twice",
            ),
            (
                format!("[backend]\n{s}master_name = \"m\"\nsentinel_username = \"u\"\n"),
                "backend.sentinel_username",
                "sentinel_password",
            ),
            (
                format!("[backend]\n{s}master_name = \"m\"\nsentinel_refresh = \"0s\"\n"),
                "backend.sentinel_refresh",
                "positive",
            ),
        ] {
            let err = Config::from_toml(&text).expect_err(&text).to_string();
            assert!(err.contains(key) && err.contains(says), "{text}: {err}");
        }
        assert!(
            Config::from_toml("[backend]\nsentinels = [\"sentinel-1:26379\"]\n").is_err(),
            "addresses, not host names"
        );
    }

    #[test]
    fn example_users_block_is_valid_once_uncommented() {
        let example = include_str!("../../../moat.example.toml");
        let users: String = example
            .lines()
            .skip_while(|l| !l.starts_with("# [[users]]"))
            .map(|l| l.strip_prefix("# ").unwrap_or(l))
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        let c = Config::from_toml(&users).expect("uncommented users are valid");
        assert_eq!(c.users.len(), 2);
        assert_eq!(c.users[0].deny_commands.len(), 6);
    }

    #[test]
    fn admin_needs_a_token_off_loopback() {
        let c = Config::from_toml("").expect("defaults");
        assert!(c.admin.enabled);
        assert_eq!(c.admin.listen.to_string(), "127.0.0.1:6390");
        assert_eq!(c.admin.resolve_token().expect("none"), None);
        let err = Config::from_toml("[admin]\nlisten = \"0.0.0.0:6390\"\n")
            .expect_err("no token")
            .to_string();
        assert!(
            err.contains("admin.token") && err.contains("0.0.0.0:6390"),
            "{err}"
        );
        assert!(
            Config::from_toml("[admin]\nlisten = \"0.0.0.0:6390\"\nenabled = false\n").is_ok(),
            "a disabled listener needs no token"
        );
        let c =
            Config::from_toml("[admin]\nlisten = \"[::]:6390\"\ntoken = \"0123456789abcdef\"\n")
                .expect("token given");
        assert_eq!(
            c.admin.resolve_token().expect("inline").as_deref(),
            Some("0123456789abcdef")
        );
        for (text, key) in [
            ("[admin]\ntoken = \"short\"\n", "admin.token"),
            ("[admin]\ntoken = \"has a space in it!!\"\n", "admin.token"),
            (
                "[admin]\ntoken = \"0123456789abcdef\"\ntoken_file = \"/x\"\n",
                "admin.token_file",
            ),
            ("[admin]\nlockout_after = 0\n", "admin.lockout_after"),
            ("[admin]\nlockout_for = \"0s\"\n", "admin.lockout_for"),
            ("[admin]\nlisen = \"127.0.0.1:1\"\n", "lisen"),
        ] {
            let err = Config::from_toml(text).expect_err(text).to_string();
            assert!(err.contains(key), "{text:?}: {err}");
        }
    }

    #[test]
    fn admin_token_file_is_read_and_trimmed() {
        let dir = std::env::temp_dir().join(format!("moat-admin-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("token");
        std::fs::write(&file, "  fedcba9876543210fedcba\n").expect("write");
        let c = Config::from_toml(&format!(
            "[admin]\nlisten = \"0.0.0.0:0\"\ntoken_file = {:?}\n",
            file.display().to_string()
        ))
        .expect("token_file given");
        assert_eq!(
            c.admin.resolve_token().expect("read").as_deref(),
            Some("fedcba9876543210fedcba")
        );
        std::fs::write(&file, "short\n").expect("write");
        assert!(c.admin.resolve_token().is_err());
        std::fs::remove_file(&file).expect("remove");
        let err = c.admin.resolve_token().expect_err("missing").to_string();
        assert!(err.contains("token"), "{err}");
        let _ = std::fs::remove_dir(&dir);
    }

    #[test]
    fn durations_parse_humanely() {
        let c = Config::from_toml("[backend]\nconnect_timeout = \"750ms\"\n").expect("valid");
        assert_eq!(c.backend.connect_timeout, Duration::from_millis(750));
    }

    #[test]
    fn redaction_hides_passwords() {
        let c = Config::from_toml(
            "[backend]\npassword = \"s3cret\"\n[admin]\ntoken = \"admin-token-0123456\"\n[[users]]\nname = \"default\"\npassword = \"hunter2\"\n",
        )
        .expect("valid");
        let shown = c.to_redacted_toml();
        assert!(
            !shown.contains("s3cret")
                && !shown.contains("hunter2")
                && !shown.contains("admin-token-0123456"),
            "{shown}"
        );
        assert!(
            Config::from_toml(&shown).is_ok(),
            "rendered config parses back"
        );
    }
}
