//! `moat audit`: checks a Redis server's and its host's hardening against connection
//! exhaustion, and emits the fixes.
//!
//! - [`facts`]: everything observed ([`Facts`]), every field optional, with what could
//!   not be read and why.
//! - [`collect`](mod@collect): gathers the facts: Redis (`CONFIG GET`, `INFO`, `ACL`), and the host
//!   (`/proc/sys`, the Redis process's limits and owner, the config file) when Redis runs
//!   here.
//! - [`rules`]: the checks, pure functions of the facts returning findings with stable ids.
//! - [`advisories`]: published connection- and memory-related Redis advisories.
//! - [`report`]: the findings as text (colour on a terminal), JSON or SARIF 2.1.0.
//! - [`emit`]: the fixes as a redis.conf snippet, a sysctl.d file, or moat's nftables table.
//! - [`fix`]: applies the safe `CONFIG SET`s to a running Redis (`--fix`).

pub mod advisories;
pub mod collect;
pub mod emit;
pub mod facts;
pub mod fix;
pub mod report;
pub mod rules;

pub use collect::{CollectError, collect};
pub use facts::Facts;
pub use report::Audit;
pub use rules::{Evaluation, Finding, Severity, evaluate};
