//! The ban message moats exchange through Redis: encoding, HMAC-SHA256 signing,
//! verification and parsing. Pure: the clock is an argument.
//!
//! One line of ASCII, fields separated by single spaces:
//! `moat-ban1 <instance> <sent_ms> <network> <until_ms> <reason> <signature>`, times in
//! Unix milliseconds, the signature the lowercase hex HMAC-SHA256 (under the shared
//! secret) of everything before its separating space. Whoever can PUBLISH on the channel
//! but lacks the secret cannot forge one; a genuine one replayed later than `max_age` is
//! refused (and carries its own end, so a replay cannot lengthen a ban).

use std::fmt::Write as _;
use std::time::Duration;

use hmac::{Hmac, Mac};
use ipnet::IpNet;
use sha2::Sha256;

/// The first field: the format's name and version.
const MAGIC: &str = "moat-ban1";

/// Longest message accepted; anything longer is dropped before it is parsed.
pub(crate) const MAX_MESSAGE: usize = 256;

/// Longest instance id.
pub(crate) const MAX_INSTANCE: usize = 64;

/// Why a moat issued the ban.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// The guard's own strikes.
    Strikes,
    /// An operator, through the admin API.
    Admin,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::Strikes => "strikes",
            Reason::Admin => "admin",
        }
    }
}

/// One shared ban.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BanMessage {
    /// The moat that issued it (so it can ignore its own).
    pub(crate) instance: String,
    /// When it was sent, Unix milliseconds.
    pub(crate) sent_ms: u64,
    /// The banned network.
    pub(crate) net: IpNet,
    /// When the ban ends, Unix milliseconds.
    pub(crate) until_ms: u64,
    /// Why.
    pub(crate) reason: Reason,
}

/// Why a message was dropped; the label is the `reason` of
/// `moat_ban_share_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejected {
    /// Longer than [`MAX_MESSAGE`].
    Oversized,
    /// Not the format: wrong field count, magic, number, network, reason or id.
    Malformed,
    /// Missing or wrong signature.
    Signature,
    /// Sent too long ago (or too far in the future): a replay, or a clock far off.
    Stale,
    /// Over `ban_share.max_per_sec`.
    RateLimited,
    /// `ban_share.max_held` bans from peers are held already.
    Full,
    /// The guard refused the ban (a trusted network, moat's own loopback, too wide...).
    Refused,
}

impl Rejected {
    /// Every reason, in label order.
    pub(crate) const ALL: [Rejected; 7] = [
        Rejected::Oversized,
        Rejected::Malformed,
        Rejected::Signature,
        Rejected::Stale,
        Rejected::RateLimited,
        Rejected::Full,
        Rejected::Refused,
    ];

    /// The metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Rejected::Oversized => "oversized",
            Rejected::Malformed => "malformed",
            Rejected::Signature => "signature",
            Rejected::Stale => "stale",
            Rejected::RateLimited => "rate_limited",
            Rejected::Full => "full",
            Rejected::Refused => "refused",
        }
    }
}

/// Whether `id` is a usable instance id: 1..=64 of `[A-Za-z0-9_.-]`.
pub(crate) fn valid_instance(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_INSTANCE
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn mac(secret: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length; the error exists only for fixed-key MACs.
    <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
}

impl BanMessage {
    /// The signed line.
    pub(crate) fn encode(&self, secret: &[u8]) -> String {
        let body = format!(
            "{MAGIC} {} {} {} {} {}",
            self.instance,
            self.sent_ms,
            self.net,
            self.until_ms,
            self.reason.as_str()
        );
        let mut m = mac(secret);
        m.update(body.as_bytes());
        let mut line = body;
        line.push(' ');
        for b in m.finalize().into_bytes() {
            let _ = write!(line, "{b:02x}");
        }
        line
    }

    /// Checks and parses `raw`: size, then signature (before any field is trusted), then
    /// the fields. Freshness is [`BanMessage::check_fresh`]'s job (keys are read long
    /// after they were sent).
    pub(crate) fn verify(raw: &[u8], secret: &[u8]) -> Result<BanMessage, Rejected> {
        if raw.len() > MAX_MESSAGE {
            return Err(Rejected::Oversized);
        }
        let text = std::str::from_utf8(raw).map_err(|_| Rejected::Malformed)?;
        let (body, sig) = text.rsplit_once(' ').ok_or(Rejected::Malformed)?;
        let sig = unhex(sig).ok_or(Rejected::Signature)?;
        let mut m = mac(secret);
        m.update(body.as_bytes());
        // Constant-time comparison.
        m.verify_slice(&sig).map_err(|_| Rejected::Signature)?;
        parse(body).ok_or(Rejected::Malformed)
    }

    /// Refuses a message sent more than `max_age` before or after `now_ms`.
    pub(crate) fn check_fresh(&self, now_ms: u64, max_age: Duration) -> Result<(), Rejected> {
        let max = u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX);
        if self.sent_ms.abs_diff(now_ms) > max {
            return Err(Rejected::Stale);
        }
        Ok(())
    }
}

fn parse(body: &str) -> Option<BanMessage> {
    let mut fields = body.split(' ');
    let mut next = || fields.next();
    if next()? != MAGIC {
        return None;
    }
    let instance = next()?;
    let sent_ms = number(next()?)?;
    let net: IpNet = next()?.parse().ok()?;
    let until_ms = number(next()?)?;
    let reason = match next()? {
        "strikes" => Reason::Strikes,
        "admin" => Reason::Admin,
        _ => return None,
    };
    if next().is_some() || !valid_instance(instance) {
        return None;
    }
    Some(BanMessage {
        instance: instance.to_owned(),
        sent_ms,
        net,
        until_ms,
        reason,
    })
}

fn number(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() != 64 {
        return None;
    }
    let digit = |b: u8| (b as char).to_digit(16);
    s.as_bytes()
        .chunks(2)
        .map(|p| Some((digit(p[0])? * 16 + digit(p[1])?) as u8))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"a shared secret of some length";

    fn sample() -> BanMessage {
        BanMessage {
            instance: "moat-a.1".into(),
            sent_ms: 1_700_000_000_000,
            net: "10.1.2.0/24".parse().unwrap(),
            until_ms: 1_700_000_600_000,
            reason: Reason::Strikes,
        }
    }

    #[test]
    fn a_signed_message_round_trips() {
        let m = sample();
        let line = m.encode(SECRET);
        assert!(line.starts_with("moat-ban1 moat-a.1 1700000000000 10.1.2.0/24 "));
        assert_eq!(BanMessage::verify(line.as_bytes(), SECRET), Ok(m.clone()));
        let v6 = BanMessage {
            net: "2001:db8::/48".parse().unwrap(),
            reason: Reason::Admin,
            ..m
        };
        assert_eq!(
            BanMessage::verify(v6.encode(SECRET).as_bytes(), SECRET),
            Ok(v6)
        );
    }

    #[test]
    fn forged_messages_are_refused() {
        let line = sample().encode(SECRET);
        // Another secret.
        assert_eq!(
            BanMessage::verify(sample().encode(b"wrong").as_bytes(), SECRET),
            Err(Rejected::Signature)
        );
        // A changed field under the original signature.
        let moved = line.replace("10.1.2.0/24", "10.9.9.0/24");
        assert_eq!(
            BanMessage::verify(moved.as_bytes(), SECRET),
            Err(Rejected::Signature)
        );
        // No signature at all, or a signature of the wrong shape.
        let (body, _) = line.rsplit_once(' ').unwrap();
        assert_eq!(
            BanMessage::verify(body.as_bytes(), SECRET),
            Err(Rejected::Signature)
        );
        let odd = format!("{body} {}", "zz".repeat(32));
        assert_eq!(
            BanMessage::verify(odd.as_bytes(), SECRET),
            Err(Rejected::Signature)
        );
        assert_eq!(BanMessage::verify(b"", SECRET), Err(Rejected::Malformed));
    }

    #[test]
    fn truncated_and_oversized_messages_are_refused() {
        let line = sample().encode(SECRET);
        for cut in 0..line.len() {
            assert!(BanMessage::verify(&line.as_bytes()[..cut], SECRET).is_err());
        }
        let long = "x".repeat(MAX_MESSAGE + 1);
        assert_eq!(
            BanMessage::verify(long.as_bytes(), SECRET),
            Err(Rejected::Oversized)
        );
        assert_eq!(
            BanMessage::verify(&[0xff; 80], SECRET),
            Err(Rejected::Malformed)
        );
    }

    #[test]
    fn signed_but_malformed_bodies_are_refused() {
        for bad in [
            "moat-ban2 a 1 10.0.0.0/8 2 strikes",
            "moat-ban1 a 1 10.0.0.0/33 2 strikes",
            "moat-ban1 a -1 10.0.0.0/8 2 strikes",
            "moat-ban1 a 1 10.0.0.0/8 2 whim",
            "moat-ban1 a 1 10.0.0.0/8 2 strikes extra",
            "moat-ban1 a/b 1 10.0.0.0/8 2 strikes",
            "moat-ban1 a 1 10.0.0.0/8 99999999999999999999999 strikes",
        ] {
            let mut m = mac(SECRET);
            m.update(bad.as_bytes());
            let sig: String = m
                .finalize()
                .into_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let line = format!("{bad} {sig}");
            assert_eq!(
                BanMessage::verify(line.as_bytes(), SECRET),
                Err(Rejected::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn replays_outside_the_window_are_stale() {
        let m = sample();
        let age = Duration::from_secs(30);
        assert_eq!(m.check_fresh(m.sent_ms + 30_000, age), Ok(()));
        assert_eq!(m.check_fresh(m.sent_ms - 30_000, age), Ok(()));
        assert_eq!(m.check_fresh(m.sent_ms + 30_001, age), Err(Rejected::Stale));
        assert_eq!(m.check_fresh(m.sent_ms - 30_001, age), Err(Rejected::Stale));
    }

    #[test]
    fn instance_ids_are_checked() {
        assert!(valid_instance("moat-a_1.x"));
        assert!(!valid_instance(""));
        assert!(!valid_instance("a b"));
        assert!(!valid_instance(&"a".repeat(65)));
    }
}
