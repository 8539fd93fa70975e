//! Gathering the [`Facts`]: Redis over the network ([`redis`]), then, when Redis runs on
//! this host, the host ([`host`]). The only I/O of the crate besides [`crate::fix`].

use std::path::Path;
use std::time::Duration;

use crate::facts::Facts;

pub mod host;
pub mod redis;

/// Why an audit could not even start.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// The URL is not a Redis URL.
    #[error("not a Redis URL (redis://[user:pass@]host:port): {0}")]
    Url(String),
    /// Nothing answered at the address.
    #[error("cannot reach Redis at {target}: {reason}")]
    Unreachable {
        /// The URL without its password.
        target: String,
        /// What the connection attempt said.
        reason: String,
    },
}

/// Observes the Redis at `url` (and its host when it is local), waiting at most `timeout`
/// for each connection and reply. Every refusal is a gap in the facts; only an address
/// where nothing answers is an error.
pub fn collect(url: &str, timeout: Duration) -> Result<Facts, CollectError> {
    let target = moat_watch::collect::poller::redact(url);
    let mut facts = Facts {
        target: target.clone(),
        port: port_of(url),
        local: moat_watch::collect::poller::PollerConfig::new(url).local,
        ..Facts::default()
    };
    redis::collect(url, timeout, &mut facts).map_err(|e| match e {
        CollectError::Unreachable { reason, .. } => CollectError::Unreachable { target, reason },
        other => other,
    })?;
    if facts.local {
        host::collect(Path::new("/proc"), &mut facts);
    } else {
        facts.gap(
            "the host (/proc, sysctls, fd limit, config file)",
            "Redis is not on a loopback address: run the audit on Redis's host to check them",
        );
    }
    Ok(facts)
}

/// The port of a `redis://` URL (6379 when absent).
pub fn port_of(url: &str) -> Option<u16> {
    let rest = url.split_once("://")?.1;
    let hostport = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let hostport = hostport.split(['/', '?']).next()?;
    if hostport.ends_with(']') || !hostport.contains(':') {
        return Some(6379);
    }
    hostport.rsplit_once(':')?.1.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports() {
        assert_eq!(port_of("redis://127.0.0.1:7000"), Some(7000));
        assert_eq!(port_of("redis://u:p@h:7001/0"), Some(7001));
        assert_eq!(port_of("redis://h"), Some(6379));
        assert_eq!(port_of("redis://[::1]:7002"), Some(7002));
        assert_eq!(port_of("redis://[::1]"), Some(6379));
        assert_eq!(port_of("nonsense"), None);
    }
}
