//! Bans shared with a CrowdSec Local API (`[crowdsec]`).
//!
//! - `config`: the `[crowdsec]` section.
//! - `decision`: CrowdSec's decisions read and checked, durations parsed, alerts built (pure).
//! - `lapi`: the HTTP calls to the LAPI (machine login, alerts push, bouncer stream).
//! - `task`: the thread that pushes the guard's bans and pulls decisions, with backoff.
//!
//! moat pushes the bans its guard issues (strikes and admin bans; not those it applied from
//! CrowdSec or from a `[ban_share]` peer) as alerts with one decision each, logged in as a
//! machine; it pulls ban decisions as a bouncer from the decision stream and applies those
//! of scope `Ip` and `Range` to its guard (and so its kernel filter), lifting them when the
//! stream says they were deleted. Its own bans coming back in the stream are known by their
//! scenario (which names its machine) and skipped, so nothing is counted twice or echoed.

mod config;
mod decision;
mod lapi;
mod task;

use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;

pub use config::CrowdSecConfig;

use crate::Metrics;
use crate::config::Config;

/// Note prefix of bans applied from CrowdSec decisions (see [`crate::relayed`]).
pub(crate) use crate::relayed::CROWDSEC_NOTE as NOTE;

/// The `[crowdsec]` counters (`moat_crowdsec_<name>_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counter {
    /// Bans pushed to the LAPI.
    Pushed,
    /// Ban decisions applied to the guard.
    Applied,
    /// Bans lifted because their decision was deleted (or expired early).
    Lifted,
    /// Decisions refused: malformed, a bad address, too wide, refused by the guard, or over
    /// `max_held`.
    Refused,
    /// Decisions ignored: another type than `ban`, another scope than `Ip` and `Range`.
    Ignored,
    /// Decisions whose duration was cut to `max_ban`.
    Capped,
    /// Failed requests to the LAPI (down, timeout, bad answer); retried with backoff.
    Errors,
    /// Requests the LAPI refused for their credentials (a wrong password or bouncer key).
    AuthErrors,
}

impl Counter {
    /// Every counter, in index order.
    pub(crate) const ALL: [Counter; 8] = [
        Counter::Pushed,
        Counter::Applied,
        Counter::Lifted,
        Counter::Refused,
        Counter::Ignored,
        Counter::Capped,
        Counter::Errors,
        Counter::AuthErrors,
    ];

    /// The metric name, without `moat_` and `_total`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Counter::Pushed => "crowdsec_pushed",
            Counter::Applied => "crowdsec_applied",
            Counter::Lifted => "crowdsec_lifted",
            Counter::Refused => "crowdsec_refused",
            Counter::Ignored => "crowdsec_ignored",
            Counter::Capped => "crowdsec_capped",
            Counter::Errors => "crowdsec_errors",
            Counter::AuthErrors => "crowdsec_auth_errors",
        }
    }
}

/// The running CrowdSec thread.
#[derive(Debug)]
pub(crate) struct CrowdSec {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl CrowdSec {
    /// Starts the thread when `[crowdsec] enabled`; logs why not and returns None when a
    /// credential cannot be read or the thread cannot start.
    pub(crate) fn start(
        config: &Arc<Config>,
        guard: Arc<moat_guard::Guard>,
        metrics: Arc<Metrics>,
    ) -> Option<CrowdSec> {
        let cs = &config.crowdsec;
        if !cs.enabled {
            return None;
        }
        let password = if cs.push {
            match cs.resolve_password() {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::error!(error = %e, "crowdsec: not started");
                    return None;
                }
            }
        } else {
            None
        };
        let bouncer_key = if cs.pull {
            match cs.resolve_bouncer_key() {
                Ok(k) => Some(k),
                Err(e) => {
                    tracing::error!(error = %e, "crowdsec: not started");
                    return None;
                }
            }
        } else {
            None
        };
        let setup = task::Setup {
            config: config.clone(),
            password,
            bouncer_key,
            guard,
            metrics,
        };
        let (tx, rx) = mpsc::channel();
        match std::thread::Builder::new()
            .name("moat-crowdsec".into())
            .spawn(move || task::run(setup, &rx))
        {
            Ok(thread) => Some(CrowdSec {
                stop: Some(tx),
                thread: Some(thread),
            }),
            Err(e) => {
                tracing::error!(error = %e, "crowdsec: cannot start its thread");
                None
            }
        }
    }

    /// Stops the thread (within one tick, or one request timeout).
    pub(crate) fn stop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for CrowdSec {
    fn drop(&mut self) {
        self.stop();
    }
}
