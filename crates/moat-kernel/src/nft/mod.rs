//! Moat's own nftables table: ban sets with per-element timeouts, rate and concurrency rules.
