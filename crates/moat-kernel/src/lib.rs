//! Moat's kernel-level drop: abusive sources are dropped before they cost moat anything.
//!
//! - [`bpf`]: builds a classic BPF program that drops packets from a list of networks (pure).
//! - [`filter`]: attaches such a program to listening sockets (`SO_ATTACH_FILTER`, no
//!   privilege needed): the kernel runs it on each SYN, so banned sources never complete a
//!   handshake.
//! - [`nft`]: moat's own nftables `inet` table (ban sets with per-element timeouts, rate and
//!   concurrency rules), when moat has `CAP_NET_ADMIN` and it is configured.
//! - [`config`]: the `[kernel]` section of moat's config.

pub mod bpf;
pub mod config;
pub mod filter;
pub mod nft;

pub use config::KernelConfig;
