//! Moat's admission guard: decides, right after `accept` and before any buffer exists,
//! whether a connection may proceed, and turns what connections do into strikes and bans.
//!
//! Pure decision logic: no I/O, and the time is always an argument. The proxy calls
//! [`Guard::admit`] per accepted socket and [`Guard::record`] for events; tests drive a fake
//! clock. Every per-source table has a fixed capacity (see [`GuardConfig`]).

#![forbid(unsafe_code)]

mod bans;
mod cidr;
mod config;
mod gcra;
mod guard;
#[cfg(test)]
mod guard_tests;

pub use bans::{Ban, BanReason};
pub use cidr::canonical;
pub use config::{GuardConfig, GuardConfigError};
pub use guard::{
    BanError, Event, Guard, GuardStats, MAX_BAN_LENGTH, MAX_BAN_NOTE, MAX_TOP, Reject,
    SourceConnections, SourceRefusals, TOP_SCAN, Ticket, TopSources,
};
pub use ipnet::IpNet;
