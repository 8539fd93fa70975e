//! Moat's admin side: the HTTP API operators and Prometheus talk to, on its own thread and
//! port, away from the data path, and the request/reply shapes `moat ctl` uses.
//!
//! Modules:
//! - `exposition`: the Prometheus text of a [`moat_proxy::stats::Snapshot`].
//! - `api`: request parsing and reply shapes, apart from HTTP.
//! - the server ([`start`], [`AdminServer`]): axum on its own current_thread runtime.

#![forbid(unsafe_code)]

pub mod api;
pub mod exposition;
mod listener;
mod lockout;
mod server;

pub use server::{AdminError, AdminServer, ConfigLoader, start};
