//! The attack modes: each opens connections to a target the way one kind of
//! connection-exhaustion attack does, bounded in time and in count, and stops by itself.
//!
//! Modules:
//! - [`spec`]: what to run ([`AttackSpec`], one spec struct per mode) and its limits.
//! - [`counters`]: live counters, readable while an attack runs.
//! - [`summary`]: the final summary (serializable, and printable as text).
//! - [`progress`]: a live progress line on stderr (indicatif).
//! - `flood`, `hold` (hoard and pin), `slow_reader`, `auth_brute`: the modes.
//! - `common`: what the modes share (tickets and pacing, sources, reading reply lines).
//!
//! ```no_run
//! # async fn demo() -> Result<(), moat_lab::attack::AttackError> {
//! use std::sync::Arc;
//! use moat_lab::attack::{self, AttackSpec, Counters, FloodSpec, Mode};
//! let spec = AttackSpec::new("127.0.0.1:6379".parse().unwrap(), Mode::Flood(FloodSpec::default()));
//! let counters = Arc::new(Counters::new());
//! let stop = tokio_util::sync::CancellationToken::new();
//! let summary = attack::run(&spec, stop, counters.clone()).await?;
//! println!("{summary}");
//! # Ok(()) }
//! ```

mod auth_brute;
mod common;
pub mod counters;
mod flood;
mod hold;
pub mod progress;
mod slow_reader;
pub mod spec;
pub mod summary;

use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

pub use counters::{CounterSnapshot, Counters};
pub use spec::{
    AttackSpec, AuthBruteSpec, FloodSpec, HoardSpec, Mode, PinHow, PinSpec, Shard, SlowReaderSpec,
};
pub use summary::AttackSummary;

/// Descriptors kept free beyond the attack's own sockets (runtime, stdio, setup connection).
const FD_MARGIN: u64 = 64;

/// Why an attack could not run.
#[derive(Debug, thiserror::Error)]
pub enum AttackError {
    /// The target is not allowed (not loopback).
    #[error(transparent)]
    Target(#[from] crate::target::TargetError),
    /// A spec value is out of range.
    #[error("invalid attack spec: {0}")]
    InvalidSpec(String),
    /// The attack needs more file descriptors than this process may open.
    #[error(
        "this attack needs about {needed} file descriptors but the process may open only \
         {limit} (already raised to the hard limit); raise the hard limit (`ulimit -Hn`, \
         LimitNOFILE= in systemd, /etc/security/limits.conf) or use fewer connections \
         (hoard, pin and slow-reader split themselves over several processes; flood and \
         auth-brute need a lower --concurrency)"
    )]
    FdLimit {
        /// Descriptors the attack would hold at once.
        needed: u64,
        /// The open-file limit after raising it.
        limit: u64,
    },
    /// Preparing the attack failed (e.g. the slow-reader could not SET its value).
    #[error("setting up the attack: {0}")]
    Setup(String),
}

/// Runs one attack until its duration or count is reached, or `stop` is cancelled (the
/// summary is then marked partial). `counters` is updated live; pass a clone of an `Arc`
/// you keep to sample it while this runs.
///
/// Raises this process's open-file limit to its hard limit first, and refuses an attack
/// that would need more descriptors than that.
pub async fn run(
    spec: &AttackSpec,
    stop: CancellationToken,
    counters: Arc<Counters>,
) -> Result<AttackSummary, AttackError> {
    crate::target::check(spec.target, spec.allow_non_loopback)?;
    spec.validate()?;
    ensure_fds(spec.fds_needed())?;
    let started = Instant::now();
    // One token for "time is up or the caller stopped us": every loop watches only it.
    let done = stop.child_token();
    let timer = {
        let done = done.clone();
        let duration = spec.duration;
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(duration) => done.cancel(),
                _ = done.cancelled() => {}
            }
        })
    };
    let ctx = common::Ctx::new(spec, done.clone(), counters.clone());
    let result = match &spec.mode {
        Mode::Flood(f) => {
            flood::run(&ctx, f).await;
            Ok(())
        }
        Mode::Hoard(h) => {
            let plan = hold::HoldPlan::hoard(h);
            hold::run(&ctx, &plan, spec.connection_range(plan.connections)).await;
            Ok(())
        }
        Mode::Pin(p) => {
            let plan = hold::HoldPlan::pin(p);
            hold::run(&ctx, &plan, spec.connection_range(plan.connections)).await;
            Ok(())
        }
        Mode::SlowReader(s) => {
            slow_reader::run(&ctx, s, spec.connection_range(s.connections)).await
        }
        Mode::AuthBrute(a) => {
            auth_brute::run(&ctx, a).await;
            Ok(())
        }
    };
    done.cancel();
    let _ = timer.await;
    result?;
    Ok(AttackSummary::new(
        spec,
        started.elapsed(),
        stop.is_cancelled(),
        counters.snapshot(),
    ))
}

/// How many processes `spec` needs: 1 when this process can hold all its sockets (after
/// raising its open-file limit to the hard limit), else enough shards of a mode that holds
/// connections that each fits; an error when even that cannot work (flood and auth-brute
/// are bounded by their concurrency, and at most [`spec::MAX_SHARDS`] processes are used).
pub fn shards_needed(spec: &AttackSpec) -> Result<u32, AttackError> {
    let limit = raise_fd_limit();
    let needed = spec.fds_needed() + FD_MARGIN;
    if needed <= limit {
        return Ok(1);
    }
    let per_process = limit.saturating_sub(2 * FD_MARGIN);
    if !spec.mode.holds_connections() || spec.shard.is_some() || per_process == 0 {
        return Err(AttackError::FdLimit { needed, limit });
    }
    let shards = spec.fds_needed().div_ceil(per_process);
    match u32::try_from(shards) {
        Ok(n) if n <= spec::MAX_SHARDS => Ok(n),
        _ => Err(AttackError::FdLimit { needed, limit }),
    }
}

fn raise_fd_limit() -> u64 {
    // Without a readable limit, assume the common default and let the check speak.
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024)
}

/// Raises the soft open-file limit to the hard one and checks that `needed` fits.
fn ensure_fds(needed: u64) -> Result<(), AttackError> {
    let limit = raise_fd_limit();
    let needed = needed + FD_MARGIN;
    if needed > limit {
        return Err(AttackError::FdLimit { needed, limit });
    }
    Ok(())
}
