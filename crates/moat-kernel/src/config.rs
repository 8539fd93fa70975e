//! The `[kernel]` config section: which kernel-level drops moat uses.

use serde::{Deserialize, Serialize};

/// How moat asks the kernel to drop abusive sources before they reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KernelConfig {
    /// Attach a classic BPF filter dropping banned and denied sources to every listening
    /// socket (needs no privilege; falls back to user-space refusal when it cannot attach).
    pub socket_filter: bool,
    /// Keep moat's own nftables table (ban sets with timeouts, per-source rate and
    /// concurrency rules); needs `CAP_NET_ADMIN` and the `nft` command.
    pub nftables: bool,
    /// The name of moat's nftables table (family `inet`).
    pub nftables_table: String,
}

impl Default for KernelConfig {
    fn default() -> Self {
        Self {
            socket_filter: true,
            nftables: false,
            nftables_table: "moat".into(),
        }
    }
}
