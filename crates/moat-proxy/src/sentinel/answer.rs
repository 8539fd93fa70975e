//! Reading what Sentinels and servers answer: `SENTINEL get-master-addr-by-name`, `ROLE`,
//! and `+switch-master` messages. Pure: a reply in, a meaning (or why not) out.

use std::net::{IpAddr, SocketAddr};

use moat_protocol::Value;

/// Why a Sentinel's answer names no primary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AnswerError {
    /// The Sentinel monitors no master by that name (a null reply).
    #[error("does not know a master named '{0}'")]
    UnknownMaster(String),
    /// An error reply (`-NOAUTH`, `-ERR unknown command`: not a Sentinel...).
    #[error("refused: {0}")]
    Refused(String),
    /// Not the `[ip, port]` pair a Sentinel sends.
    #[error("unexpected answer: {0}")]
    Malformed(String),
}

/// The primary a Sentinel names in its answer to `SENTINEL get-master-addr-by-name`.
pub(crate) fn master_addr(reply: &Value, master_name: &str) -> Result<SocketAddr, AnswerError> {
    match reply {
        Value::Null => Err(AnswerError::UnknownMaster(master_name.to_owned())),
        Value::Error(e) => Err(AnswerError::Refused(e.clone())),
        Value::Array(items) => match items.as_slice() {
            [ip, port] => {
                fn text(v: &Value) -> Option<&str> {
                    v.as_bytes().and_then(|b| std::str::from_utf8(b).ok())
                }
                let ip = text(ip).and_then(|t| t.parse::<IpAddr>().ok());
                let port = text(port).and_then(|t| t.parse::<u16>().ok());
                match (ip, port) {
                    (Some(ip), Some(port)) if port != 0 => Ok(SocketAddr::new(ip, port)),
                    _ => Err(AnswerError::Malformed(format!(
                        "{reply:?} (hostnames are not supported: set `sentinel \
                         resolve-hostnames no` or announce IPs)"
                    ))),
                }
            }
            _ => Err(AnswerError::Malformed(format!("{reply:?}"))),
        },
        other => Err(AnswerError::Malformed(format!("{other:?}"))),
    }
}

/// The `config-epoch` field of a `SENTINEL MASTER <name>` reply (a flat list of field
/// names and values): the epoch of the configuration the Sentinel holds. A failover raises
/// it, so the highest one is the newest view of who the primary is.
pub(crate) fn config_epoch(reply: &Value) -> Option<u64> {
    let items = reply.as_array()?;
    items.chunks(2).find_map(|pair| match pair {
        [k, v] if k.as_bytes() == Some(b"config-epoch") => {
            std::str::from_utf8(v.as_bytes()?).ok()?.parse().ok()
        }
        _ => None,
    })
}

/// One Sentinel's view: the primary it names, under which configuration epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct View {
    pub(crate) addr: SocketAddr,
    pub(crate) epoch: u64,
}

/// The addresses the Sentinels name, best first: the newest configuration (highest epoch)
/// first, then the one more Sentinels agree on, then the one in use now (no flapping
/// between equals). Each is still to be checked with `ROLE` before use.
pub(crate) fn candidates(views: &[View], current: Option<SocketAddr>) -> Vec<SocketAddr> {
    let mut ranked: Vec<(SocketAddr, u64, usize)> = Vec::new();
    for v in views {
        match ranked.iter_mut().find(|(a, _, _)| *a == v.addr) {
            Some((_, epoch, votes)) => {
                *epoch = (*epoch).max(v.epoch);
                *votes += 1;
            }
            None => ranked.push((v.addr, v.epoch, 1)),
        }
    }
    ranked.sort_by_key(|&(addr, epoch, votes)| {
        (
            std::cmp::Reverse(epoch),
            std::cmp::Reverse(votes),
            Some(addr) != current,
        )
    });
    ranked.into_iter().map(|(addr, _, _)| addr).collect()
}

/// What a server says it is, from `ROLE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Role {
    /// `master`: it takes writes.
    Master,
    /// Anything else it said: `slave`, `sentinel`...
    Other(String),
    /// It would not say (`-NOPERM`, `-NOAUTH`: moat's user may not run ROLE).
    Unknown(String),
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Role::Master => f.write_str("master"),
            Role::Other(r) => f.write_str(r),
            Role::Unknown(why) => write!(f, "unknown ({why})"),
        }
    }
}

/// Reads a `ROLE` reply.
pub(crate) fn role(reply: &Value) -> Role {
    match reply {
        Value::Error(e) => Role::Unknown(e.clone()),
        Value::Array(items) | Value::Push(items) => match items.first().and_then(Value::as_bytes) {
            Some(b"master") => Role::Master,
            Some(other) => Role::Other(String::from_utf8_lossy(other).into_owned()),
            None => Role::Other(format!("{reply:?}")),
        },
        other => Role::Other(format!("{other:?}")),
    }
}

/// From a `+switch-master` message (`<name> <old-ip> <old-port> <new-ip> <new-port>`), the
/// new primary, if the message is about `master_name`.
pub(crate) fn switch_message(payload: &[u8], master_name: &str) -> Option<SocketAddr> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut words = text.split_ascii_whitespace();
    if words.next()? != master_name {
        return None;
    }
    let (_old_ip, _old_port) = (words.next()?, words.next()?);
    let ip: IpAddr = words.next()?.parse().ok()?;
    let port: u16 = words.next()?.parse().ok()?;
    Some(SocketAddr::new(ip, port))
}

/// Whether a Sentinel event about an instance (`master <name> <ip> <port>`) is about the
/// master `master_name` itself.
pub(crate) fn names_master(payload: &[u8], master_name: &str) -> bool {
    let Ok(text) = std::str::from_utf8(payload) else {
        return false;
    };
    let mut words = text.split_ascii_whitespace();
    words.next() == Some("master") && words.next() == Some(master_name)
}

/// From a `+failover-state-wait-promotion` event (`slave <ip>:<port> <ip> <port> @ <master>
/// <ip> <port>`), the replica being promoted, if the failover is of `master_name`.
pub(crate) fn promoting(payload: &[u8], master_name: &str) -> Option<SocketAddr> {
    let text = std::str::from_utf8(payload).ok()?;
    let words: Vec<&str> = text.split_ascii_whitespace().collect();
    match words.as_slice() {
        ["slave", _, ip, port, "@", name, ..] if *name == master_name => {
            Some(SocketAddr::new(ip.parse().ok()?, port.parse().ok()?))
        }
        _ => None,
    }
}

/// The payload of a pub/sub `message` on `channel`, if `reply` is one.
pub(crate) fn pubsub_message<'a>(reply: &'a Value, channel: &str) -> Option<&'a [u8]> {
    let items = match reply {
        Value::Array(items) | Value::Push(items) => items,
        _ => return None,
    };
    match items.as_slice() {
        [kind, ch, payload]
            if kind.as_bytes() == Some(b"message") && ch.as_bytes() == Some(channel.as_bytes()) =>
        {
            payload.as_bytes()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn bulk(s: &str) -> Value {
        Value::Bulk(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn a_sentinel_answer_names_an_address_or_says_why_not() {
        let ok = Value::Array(vec![bulk("127.0.0.1"), bulk("6379")]);
        assert_eq!(master_addr(&ok, "m"), Ok("127.0.0.1:6379".parse().unwrap()));
        assert_eq!(
            master_addr(&Value::Null, "m"),
            Err(AnswerError::UnknownMaster("m".into()))
        );
        assert!(matches!(
            master_addr(&Value::Error("NOAUTH x".into()), "m"),
            Err(AnswerError::Refused(_))
        ));
        for bad in [
            Value::Array(vec![bulk("redis.example"), bulk("6379")]),
            Value::Array(vec![bulk("127.0.0.1"), bulk("0")]),
            Value::Array(vec![bulk("127.0.0.1"), bulk("70000")]),
            Value::Array(vec![bulk("127.0.0.1")]),
            Value::Integer(1),
        ] {
            assert!(
                matches!(master_addr(&bad, "m"), Err(AnswerError::Malformed(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_newest_configuration_comes_first_then_the_majority_then_the_current() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let v = |addr, epoch| View { addr, epoch };
        // Mid-failover: one Sentinel already holds the new epoch, two the old one.
        assert_eq!(
            candidates(&[v(a, 1), v(b, 2), v(a, 1)], Some(a)),
            vec![b, a]
        );
        assert_eq!(
            candidates(&[v(a, 3), v(b, 3), v(b, 3)], Some(a)),
            vec![b, a]
        );
        // Equals: the one in use stays first.
        assert_eq!(candidates(&[v(b, 3), v(a, 3)], Some(a)), vec![a, b]);
        assert_eq!(candidates(&[], Some(a)), Vec::<SocketAddr>::new());
        let master = Value::Array(vec![
            bulk("name"),
            bulk("m"),
            bulk("config-epoch"),
            bulk("7"),
        ]);
        assert_eq!(config_epoch(&master), Some(7));
        assert_eq!(config_epoch(&Value::Error("x".into())), None);
    }

    #[test]
    fn role_tells_a_primary_from_the_rest() {
        let master = Value::Array(vec![
            bulk("master"),
            Value::Integer(0),
            Value::Array(vec![]),
        ]);
        assert_eq!(role(&master), Role::Master);
        let replica = Value::Array(vec![bulk("slave"), bulk("127.0.0.1"), Value::Integer(1)]);
        assert_eq!(role(&replica), Role::Other("slave".into()));
        assert!(matches!(
            role(&Value::Error("NOPERM".into())),
            Role::Unknown(_)
        ));
        assert!(matches!(role(&Value::Null), Role::Other(_)));
    }

    #[test]
    fn switch_messages_are_read_for_our_master_only() {
        let msg = b"mymaster 127.0.0.1 7001 127.0.0.1 7002";
        assert_eq!(
            switch_message(msg, "mymaster"),
            Some("127.0.0.1:7002".parse().unwrap())
        );
        assert_eq!(switch_message(msg, "other"), None);
        assert_eq!(switch_message(b"mymaster 127.0.0.1 7001", "mymaster"), None);
        assert_eq!(switch_message(b"\xff", "mymaster"), None);
        assert!(names_master(b"master mymaster 127.0.0.1 7001", "mymaster"));
        let promoting_msg = b"slave 127.0.0.1:7002 127.0.0.1 7002 @ mymaster 127.0.0.1 7001";
        assert_eq!(
            promoting(promoting_msg, "mymaster"),
            Some("127.0.0.1:7002".parse().unwrap())
        );
        assert_eq!(promoting(promoting_msg, "other"), None);
        assert_eq!(
            promoting(b"master mymaster 127.0.0.1 7001", "mymaster"),
            None
        );
        assert!(!names_master(b"master other 127.0.0.1 7001", "mymaster"));
        assert!(!names_master(
            b"slave 127.0.0.1:7002 127.0.0.1 7002 @ mymaster",
            "mymaster"
        ));
        let push = Value::Array(vec![bulk("message"), bulk("+switch-master"), bulk("x")]);
        assert_eq!(pubsub_message(&push, "+switch-master"), Some(&b"x"[..]));
        assert_eq!(pubsub_message(&push, "other"), None);
    }
}
