//! The guard's settings (`[guard]` in moat's config file).

use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Admission, deadline and ban settings. Defaults suit an internet-facing Redis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuardConfig {
    /// Answer a refused connection with one `-ERR moat: ...` line before closing it; when
    /// false, close silently.
    pub reject_reply: bool,
    /// Networks that are never banned, may use the reserved capacity, and get their own
    /// idle timeout. Only local tools by default.
    pub trusted: Vec<IpNet>,
    /// When not empty, only these networks (and `trusted`) may connect.
    pub allow: Vec<IpNet>,
    /// Networks refused outright.
    pub deny: Vec<IpNet>,
    /// Prefix length that groups IPv4 sources into one subnet.
    pub subnet_prefix_v4: u8,
    /// Prefix length that groups IPv6 sources into one subnet.
    pub subnet_prefix_v6: u8,
    /// New connections per second one address may open, sustained.
    pub ip_rate: f64,
    /// New connections one address may open in a burst above the rate.
    pub ip_burst: u32,
    /// New connections per second one subnet may open, sustained.
    pub subnet_rate: f64,
    /// New connections one subnet may open in a burst above the rate.
    pub subnet_burst: u32,
    /// Connections one address may hold open at once.
    pub max_per_ip: u32,
    /// Connections one subnet may hold open at once.
    pub max_per_subnet: u32,
    /// Client connections moat holds at once, in total.
    pub max_clients: u32,
    /// Part of `max_clients` only trusted networks may use, so local tools and admins get in
    /// while the rest is full.
    pub reserved_for_trusted: u32,
    /// Above this many client connections, each admission closes a connection doing no
    /// real work (silent or keep-alive-only, see docs/guard.md), and new connections from
    /// sources with no recent successful command wait unless such a connection makes room.
    pub high_water: u32,
    /// How long a successful command makes its source count as known (exempt from shedding).
    #[serde(with = "humantime_serde")]
    pub recent_success: Duration,
    /// Time a new connection has to send its first command.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Time a connection has to authenticate when authentication is required.
    #[serde(with = "humantime_serde")]
    pub auth_timeout: Duration,
    /// Time a client has to finish a request it has started sending, extended by a second
    /// for every `request_min_rate` bytes of it received (0: no limit). Cuts off a slowloris
    /// that trickles a request byte by byte, whatever it sent before; trusted networks are
    /// exempt.
    #[serde(with = "humantime_serde")]
    pub request_read_timeout: Duration,
    /// Bytes per second a request being received must average, past `request_read_timeout`.
    pub request_min_rate: u32,
    /// Idle time after which an unauthenticated connection is closed (0: never).
    #[serde(with = "humantime_serde")]
    pub idle_timeout_unauthenticated: Duration,
    /// Idle time after which an authenticated connection is closed (0: never).
    #[serde(with = "humantime_serde")]
    pub idle_timeout_authenticated: Duration,
    /// Idle time after which a trusted connection is closed (0: never).
    #[serde(with = "humantime_serde")]
    pub idle_timeout_trusted: Duration,
    /// Strikes within `strike_window` that ban a source.
    pub strikes_to_ban: u32,
    /// Window in which strikes count.
    #[serde(with = "humantime_serde")]
    pub strike_window: Duration,
    /// First ban's length; each repeat ban of the same source doubles it.
    #[serde(with = "humantime_serde")]
    pub ban_time: Duration,
    /// Longest ban.
    #[serde(with = "humantime_serde")]
    pub ban_max: Duration,
    /// Random spread added to each ban, as a fraction of its length (0.2: up to +20%).
    pub ban_jitter: f64,
    /// Also ban a source's whole subnet when this many of its addresses are banned (0: never).
    pub subnet_ban_after: u32,
    /// Sources whose rate and strike state is remembered; the least recently seen is
    /// forgotten first. Bounds the guard's memory whatever the number of sources.
    pub table_capacity: usize,
    /// Active bans remembered; when full, the ban closest to its end is dropped first.
    pub ban_capacity: usize,
}

impl Default for GuardConfig {
    fn default() -> Self {
        Self {
            reject_reply: true,
            trusted: vec![
                "127.0.0.1/32".parse().expect("literal"),
                "::1/128".parse().expect("literal"),
            ],
            allow: Vec::new(),
            deny: Vec::new(),
            subnet_prefix_v4: 24,
            subnet_prefix_v6: 64,
            ip_rate: 20.0,
            ip_burst: 40,
            subnet_rate: 100.0,
            subnet_burst: 200,
            max_per_ip: 64,
            max_per_subnet: 256,
            max_clients: 10_000,
            reserved_for_trusted: 500,
            high_water: 8_000,
            recent_success: Duration::from_secs(600),
            handshake_timeout: Duration::from_secs(5),
            auth_timeout: Duration::from_secs(10),
            request_read_timeout: Duration::from_secs(10),
            request_min_rate: 500,
            idle_timeout_unauthenticated: Duration::from_secs(30),
            idle_timeout_authenticated: Duration::ZERO,
            idle_timeout_trusted: Duration::ZERO,
            strikes_to_ban: 20,
            strike_window: Duration::from_secs(60),
            ban_time: Duration::from_secs(60),
            ban_max: Duration::from_secs(3600),
            ban_jitter: 0.2,
            subnet_ban_after: 0,
            table_capacity: 65_536,
            ban_capacity: 16_384,
        }
    }
}

/// A setting that cannot work, naming its key (without the `guard.` prefix).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}`: {reason}")]
pub struct GuardConfigError {
    /// The key at fault.
    pub key: &'static str,
    /// Why.
    pub reason: String,
}

fn bad(key: &'static str, reason: impl Into<String>) -> GuardConfigError {
    GuardConfigError {
        key,
        reason: reason.into(),
    }
}

impl GuardConfig {
    /// Checks ranges and the relations between keys.
    pub fn validate(&self) -> Result<(), GuardConfigError> {
        // Bounds that keep every `now + duration` the guard computes far from overflow.
        const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
        for (key, d) in [
            ("recent_success", self.recent_success),
            ("handshake_timeout", self.handshake_timeout),
            ("auth_timeout", self.auth_timeout),
            ("request_read_timeout", self.request_read_timeout),
            (
                "idle_timeout_unauthenticated",
                self.idle_timeout_unauthenticated,
            ),
            (
                "idle_timeout_authenticated",
                self.idle_timeout_authenticated,
            ),
            ("idle_timeout_trusted", self.idle_timeout_trusted),
            ("strike_window", self.strike_window),
            ("ban_time", self.ban_time),
            ("ban_max", self.ban_max),
        ] {
            if d > YEAR {
                return Err(bad(key, "must be at most a year"));
            }
        }
        for (key, rate) in [("ip_rate", self.ip_rate), ("subnet_rate", self.subnet_rate)] {
            if rate < 0.001 {
                return Err(bad(key, "must be at least 0.001 connections per second"));
            }
        }
        for (key, burst) in [
            ("ip_burst", self.ip_burst),
            ("subnet_burst", self.subnet_burst),
        ] {
            if burst > 1_000_000 {
                return Err(bad(key, "must be at most 1000000"));
            }
        }
        if self.subnet_prefix_v4 > 32 {
            return Err(bad("subnet_prefix_v4", "must be at most 32"));
        }
        if self.subnet_prefix_v6 > 128 {
            return Err(bad("subnet_prefix_v6", "must be at most 128"));
        }
        for (key, rate) in [("ip_rate", self.ip_rate), ("subnet_rate", self.subnet_rate)] {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(bad(
                    key,
                    "must be a positive number of connections per second",
                ));
            }
        }
        for (key, n) in [
            ("ip_burst", self.ip_burst),
            ("subnet_burst", self.subnet_burst),
            ("max_per_ip", self.max_per_ip),
            ("max_per_subnet", self.max_per_subnet),
            ("max_clients", self.max_clients),
            ("strikes_to_ban", self.strikes_to_ban),
        ] {
            if n == 0 {
                return Err(bad(key, "must be positive"));
            }
        }
        if self.reserved_for_trusted >= self.max_clients {
            return Err(bad("reserved_for_trusted", "must be less than max_clients"));
        }
        if self.high_water > self.max_clients {
            return Err(bad("high_water", "must be at most max_clients"));
        }
        if self.strike_window.is_zero() {
            return Err(bad("strike_window", "must be positive"));
        }
        if self.ban_time.is_zero() || self.ban_max < self.ban_time {
            return Err(bad(
                "ban_max",
                "ban_time must be positive and ban_max at least ban_time",
            ));
        }
        if !(0.0..=1.0).contains(&self.ban_jitter) {
            return Err(bad("ban_jitter", "must be between 0 and 1"));
        }
        if self.handshake_timeout.is_zero() {
            return Err(bad("handshake_timeout", "must be positive"));
        }
        if self.auth_timeout.is_zero() {
            return Err(bad("auth_timeout", "must be positive"));
        }
        if self.request_min_rate == 0 {
            return Err(bad("request_min_rate", "must be positive"));
        }
        if self.table_capacity < 16 {
            return Err(bad("table_capacity", "must be at least 16"));
        }
        if self.ban_capacity < 16 {
            return Err(bad("ban_capacity", "must be at least 16"));
        }
        Ok(())
    }
}
