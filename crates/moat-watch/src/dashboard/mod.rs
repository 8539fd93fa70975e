//! The terminal dashboard (`moat watch --tui`): live sparklines, the clients gauge, top
//! sources and the alert list of one watched Redis.
//!
//! - [`state`]: [`Dashboard`], the model, fed one sample and its events per poll (pure,
//!   under the sample's clock).
//! - [`render`]: draws the model into a ratatui frame, from a tiny terminal up.
//! - [`snapshot()`]: the same frame as plain text, for tests, reports and bug tickets.
//! - [`terminal`]: the interactive pieces: raw mode and the alternate screen (restored on
//!   exit, error and panic), and the keys that quit.
//! - [`format`](mod@format): short human forms of rates, bytes and ages.

pub mod format;
pub mod render;
pub mod snapshot;
pub mod state;
pub mod terminal;

pub use snapshot::snapshot;
pub use state::Dashboard;
