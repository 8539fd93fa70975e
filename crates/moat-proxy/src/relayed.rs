//! Bans moat applied on another's word (a peer moat through `[ban_share]`, a CrowdSec
//! decision), told apart by the prefix of their note. They are never sent on again, or moats
//! would echo each other's bans back and forth; and the note tells an operator listing bans
//! where each came from.

/// Note prefix of bans applied from peer moats (`[ban_share]`).
pub(crate) const PEER_NOTE: &str = "ban-share from ";

/// Note prefix of bans applied from CrowdSec decisions (`[crowdsec]`).
pub(crate) const CROWDSEC_NOTE: &str = "crowdsec: ";

/// True for a ban note written when applying a peer's ban or a CrowdSec decision.
pub(crate) fn is_relayed(note: &str) -> bool {
    note.starts_with(PEER_NOTE) || note.starts_with(CROWDSEC_NOTE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_notes_written_on_relay_are_relayed() {
        assert!(is_relayed("ban-share from moat-b (strikes)"));
        assert!(is_relayed("crowdsec: crowdsecurity/ssh-bf"));
        assert!(!is_relayed("flood from the lab"));
        assert!(!is_relayed(""));
    }
}
