//! TLS on both sides, with rustls (ring provider, no OpenSSL).
//!
//! - `config`: the `[proxy.tls]` and `[backend.tls]` sections and loading their files.
//! - `stream`: a TLS connection with the readiness API sessions and backend connections use.
//! - `handshake`: the handshake on a non-blocking socket (sans-IO rustls).
//! - `accept`: client handshakes after the guard's admission: deadline, cap, strikes, reload.
//! - `connect`: backend connections over TLS.
//! - `verify`: the explicit opt-out of certificate checks for Redis.

pub(crate) mod accept;
pub(crate) mod config;
pub(crate) mod connect;
pub(crate) mod handshake;
pub(crate) mod stream;
mod verify;

pub use config::{BackendTlsConfig, ClientTlsConfig};
