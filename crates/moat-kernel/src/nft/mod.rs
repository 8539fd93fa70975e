//! Moat's own nftables table: ban sets with per-element timeouts, rate and concurrency rules.
//!
//! - [`ruleset`]: the table as nft script text, a pure function of an [`NftSpec`] (what
//!   moat loads at start, and what `moat audit --emit nftables` prints).
//! - `sync`: [`BanSync`], the pure diff between the guard's bans and the ban sets' elements,
//!   bounded per tick, with a fake clock in its tests.
//! - `cmd`: [`NftTable`], which runs the `nft` command: creates the table atomically
//!   (replacing a leftover of a crash), applies batches, removes it on drop.
//!
//! The table sits in the `input` hook, a little before the usual filter priority, and looks
//! only at TCP packets to moat's listening ports. Trusted networks are accepted first; then
//! denied networks and banned ones (sets with timeouts, one for addresses and one for wider
//! networks per family, filled as bans happen, left to expire by themselves) are dropped; then each source's new-connection rate and open connections are
//! capped, looser than the guard's own limits so the guard stays the precise layer and nft
//! only stops the flood that would cost moat CPU.

mod cmd;
mod ruleset;
mod sync;

pub use cmd::{NftError, NftTable, has_net_admin};
pub use ruleset::{
    BANNED_NETS4, BANNED_NETS6, BANNED4, BANNED6, LOOSENESS, NftSpec, Rate, RateUnit, SourceLimits,
    create_script, ruleset,
};
pub use sync::{BanSync, GRACE, MIN_TIMEOUT, Op};

/// Why a table name cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not a usable nftables table name: 1 to 32 ASCII letters, digits, `_` or `-`, starting with a letter"
)]
pub struct BadTableName(pub String);

/// Checks a table name (`kernel.nftables_table`): it is pasted into nft scripts, so only a
/// plain identifier is accepted.
pub fn validate_table_name(name: &str) -> Result<(), BadTableName> {
    let ok = (1..=32).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(BadTableName(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names() {
        for good in ["moat", "moat_2", "m-1", "A"] {
            assert_eq!(validate_table_name(good), Ok(()), "{good}");
        }
        let long = "a".repeat(33);
        for bad in ["", "1moat", "mo at", "moat;", "moat{", "_x", long.as_str()] {
            assert!(validate_table_name(bad).is_err(), "{bad:?}");
        }
    }
}
