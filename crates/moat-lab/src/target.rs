//! Which endpoints the lab may send attack traffic to: loopback, unless the user says
//! otherwise in so many words. Tests never do.

use std::net::SocketAddr;

/// Why a target was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// The target is not a loopback address and the user did not allow that.
    #[error(
        "{0} is not a loopback address: moat attack only targets 127.0.0.0/8 or ::1 unless \
         given --allow-non-loopback (attack only systems you own)"
    )]
    NotLoopback(SocketAddr),
}

/// Checks that `target` may be attacked: loopback, or `allow_non_loopback`.
pub fn check(target: SocketAddr, allow_non_loopback: bool) -> Result<(), TargetError> {
    if target.ip().is_loopback() || allow_non_loopback {
        Ok(())
    } else {
        Err(TargetError::NotLoopback(target))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_without_the_flag() {
        let ok = |s: &str, allow| check(s.parse().unwrap_or_else(|_| unreachable!()), allow);
        assert!(ok("127.0.0.1:6379", false).is_ok());
        assert!(ok("127.9.8.7:1", false).is_ok());
        assert!(ok("[::1]:6379", false).is_ok());
        assert!(matches!(
            ok("10.0.0.1:6379", false),
            Err(TargetError::NotLoopback(_))
        ));
        assert!(ok("10.0.0.1:6379", true).is_ok());
    }
}
