//! The resilience pieces moat's proxy and `moat-client` share, so both behave the same when
//! Redis fails and neither carries a second copy.
//!
//! - [`breaker`]: a closed / open / half-open circuit breaker; pure, with `now` passed in, so
//!   tests drive a fake clock. It reports the state it entered and leaves counting and
//!   logging to its owner.
//! - [`backoff`]: reconnect delays, exponential with full jitter.

#![forbid(unsafe_code)]

pub mod backoff;
pub mod breaker;

pub use backoff::Backoff;
pub use breaker::{Breaker, BreakerSettings, BreakerState, Transition, Verdict};
