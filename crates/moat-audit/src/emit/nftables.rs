//! moat's own nftables table for Redis's port: trusted and denied networks, ban sets with
//! per-element timeouts, a per-source new-connection rate limit and a per-source
//! concurrent connection cap (`ct count`). The text is moat-kernel's
//! [`moat_kernel::nft::ruleset`], the very function moat uses when it loads the table
//! itself, so table and set names agree and moat's kernel-drop feature fills the ban sets.

use moat_kernel::nft::{BANNED4, BANNED6, NftSpec, ruleset};

/// The ruleset with a header saying how to load it and what fills it.
pub fn render(spec: &NftSpec) -> String {
    let ports: Vec<String> = spec.ports.iter().map(u16::to_string).collect();
    let mut s = format!(
        "#!/usr/sbin/nft -f\n\
         # moat audit: nftables table `inet {table}` for TCP port(s) {ports}.\n\
         # Check with `nft -c -f FILE`, load with `nft -f FILE`. The sets {BANNED4} and\n\
         # {BANNED6} take per-element timeouts; moat (with `[kernel] nftables = true` and\n\
         # the same table name) adds its bans there. Add allowed networks to trusted4/6.\n",
        table = spec.table,
        ports = ports.join(", "),
    );
    s.push_str(&ruleset(spec));
    s
}
