//! moat-client: a Redis client for Rust applications that keeps them serving while their
//! Redis is under attack, restarting, or full. It is built on the `redis` crate's
//! multiplexed connection (no protocol code of its own) and on moat-resilience, the breaker
//! and backoff moat's proxy uses.
//!
//! Map:
//! - [`config`]: every option, its default and why; [`builder`]: [`ClientBuilder`].
//! - [`client`](Client): the command path (backlog, budget, breaker, pool, retries).
//! - `pool`: a bounded pool of connections, lent one command at a time; `gate`: the cap on
//!   connections opened per second and the reconnect backoff, reset only by a command
//!   that succeeded.
//! - [`commands`]: which commands may run twice; [`retry`]: which errors prove a command
//!   was not applied, and when a retry is allowed; [`budget`]: the retry budget.
//! - `backlog`: the bounded queue in front of the pool.
//! - [`fallback`]: last-known values served while Redis is unavailable, marked stale.
//! - [`metrics`](Stats): prometheus-client series and a breaker callback.
//! - [`error`]: [`ClientError`], which says whether the command may have been applied.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use moat_client::{Client, Source};
//! let client = Client::builder("redis://127.0.0.1:6379/")
//!     .stale_cache(1_000, std::time::Duration::from_secs(60))
//!     .build()?;
//! let _: () = client.query(redis::cmd("SET").arg("greeting").arg("hello")).await?;
//! let served = client
//!     .get_or_fallback::<Option<String>>("greeting", || None)
//!     .await?;
//! match served.source {
//!     Source::Redis => println!("{:?}", served.value),
//!     Source::Stale { age } => println!("{:?} (as of {age:?} ago)", served.value),
//!     Source::Fallback => println!("Redis unavailable"),
//! }
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

mod backlog;
pub mod budget;
pub mod builder;
mod client;
pub mod commands;
pub mod config;
pub mod error;
pub mod fallback;
mod gate;
mod metrics;
mod pool;
pub mod retry;

pub use builder::ClientBuilder;
pub use client::Client;
pub use commands::{CommandClass, Idempotency};
pub use config::{CacheConfig, Config, PoolConfig, RetryConfig};
pub use error::{Applied, ClientError, ConfigError};
pub use fallback::{Served, Source};
pub use metrics::{Stats, TransitionCallback};
pub use moat_resilience::{BreakerSettings, Transition};
