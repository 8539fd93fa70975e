//! Bans shared across moat instances through the backend Redis itself (`[ban_share]`).
//!
//! - `message`: the signed line moats exchange (encode, sign, verify, parse; pure).
//! - `rate`: the per-second cap on bans applied and published (pure).
//! - `config`: the `[ban_share]` section.
//! - `task`: the thread that subscribes, publishes and applies, reconnecting on failure.
//!
//! Each moat publishes the bans its guard issues (strikes and admin bans; not those it
//! applied from a peer) on a channel and keeps them in keys expiring with the ban; the
//! others apply them to their guard, and so to their kernel filter, which follows the
//! guard. Only messages signed with the shared secret, fresh, well-formed and within the
//! caps are applied; the rest are dropped and counted.

mod config;
mod message;
mod rate;
mod task;

use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;

pub use config::BanShareConfig;
pub(crate) use message::Rejected;
pub(crate) use rate::PerSecond;

use crate::Metrics;
use crate::config::Config;

/// The running ban-share thread.
#[derive(Debug)]
pub(crate) struct BanShare {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl BanShare {
    /// Starts the thread when `[ban_share] enabled`; logs why not and returns None when the
    /// secret cannot be read or the thread cannot start.
    pub(crate) fn start(
        config: &Arc<Config>,
        guard: Arc<moat_guard::Guard>,
        metrics: Arc<Metrics>,
        primary: Option<Arc<crate::sentinel::Primary>>,
    ) -> Option<BanShare> {
        let share = &config.ban_share;
        if !share.enabled {
            return None;
        }
        let secret = match share.resolve_secret() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "ban_share: not started");
                return None;
            }
        };
        let instance = share.instance.clone().unwrap_or_else(|| {
            use rand::Rng;
            let n: u64 = rand::rng().random();
            format!("moat-{n:016x}")
        });
        let setup = task::Setup {
            config: config.clone(),
            secret,
            instance,
            guard,
            metrics,
            primary,
        };
        let (tx, rx) = mpsc::channel();
        match std::thread::Builder::new()
            .name("moat-ban-share".into())
            .spawn(move || task::run(setup, &rx))
        {
            Ok(thread) => Some(BanShare {
                stop: Some(tx),
                thread: Some(thread),
            }),
            Err(e) => {
                tracing::error!(error = %e, "ban_share: cannot start its thread");
                None
            }
        }
    }

    /// Stops the thread (within one tick, or one Redis timeout).
    pub(crate) fn stop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for BanShare {
    fn drop(&mut self) {
        self.stop();
    }
}
