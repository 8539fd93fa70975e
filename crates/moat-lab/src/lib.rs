//! Moat's lab: attacks that exhaust a Redis server's connections, a legitimate workload
//! measured while they run, and the lab: scenarios and reports that prove each defence.
//!
//! Modules:
//! - [`target`]: which endpoints may be attacked (loopback only, unless told otherwise).
//! - [`sources`]: source addresses in 127.0.0.0/8, a range per group of clients, so a target
//!   sees many distinct peers from one machine.
//! - [`connect`]: connecting from a chosen source address (bind before connect).
//! - [`attack`]: the attack modes (flood, hoard, pin, slow-reader, auth-brute).
//! - [`legit`]: the legitimate workload (groups of clients at fixed offered rates) and its
//!   latency histograms per phase and second.
//! - [`lab`]: `moat lab`: scenarios of attacks × targets it starts itself, sampled every
//!   second, written down as JSON, Markdown tables and SVG charts.
//!
//! Every loop here is bounded in count and in time, and stops by itself.

#![forbid(unsafe_code)]

pub mod attack;
pub mod connect;
pub mod lab;
pub mod legit;
pub mod sources;
pub mod target;
