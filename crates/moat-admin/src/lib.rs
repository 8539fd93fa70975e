//! Moat's admin side: the HTTP API operators and Prometheus talk to, on its own thread and
//! port, away from the data path, and the client `moat ctl` uses.
//!
//! Modules:
//! - `exposition`: the Prometheus text of a [`moat_proxy::stats::Snapshot`].

#![forbid(unsafe_code)]

pub mod exposition;
