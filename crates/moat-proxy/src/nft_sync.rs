//! Keeps moat's nftables table (`[kernel] nftables = true`) in step with the guard, on a
//! thread of its own, off the data path.
//!
//! The table is created when the proxy starts (replacing a crash's leftover) and deleted
//! when it stops. Every [`TICK`] in which the guard's ban counts moved (at least every
//! [`FULL_EVERY`]) the thread diffs the guard's bans against what it pushed and applies the
//! difference in one `nft` call of at most [`MAX_OPS_PER_TICK`] elements; a
//! reload that changes the guard's lists or per-address limits rebuilds the table. When nft
//! is missing, refuses, or moat lacks `CAP_NET_ADMIN`, it logs once and the guard's own
//! refusal goes on alone.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use moat_guard::{Guard, GuardConfig};
use moat_kernel::nft::{BanSync, NftError, NftSpec, NftTable, SourceLimits};

use crate::Metrics;
use crate::config::Config;

/// How often the ban sets are brought in step with the guard.
const TICK: Duration = Duration::from_millis(250);

/// Element changes per tick: bounds each nft call (and so the kernel's work) whatever the
/// number of bans (4,000 a second at most).
const MAX_OPS_PER_TICK: usize = 1_000;

/// Longest time between two diffs while the guard's ban counts stay the same (expired bans
/// and networks waiting for a wider one to end are handled at this pace).
const FULL_EVERY: Duration = Duration::from_secs(2);

/// Longest pause between attempts after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Largest ban set moat asks for, per family.
const MAX_BAN_SET: usize = 1 << 20;

/// The table moat keeps for `config`, with moat listening on `port` (the guard's lists and
/// per-address limits, [`moat_kernel::nft::LOOSENESS`] times looser). Also what `moat
/// audit --emit nftables` should print.
pub fn nftables_spec(config: &Config, port: u16) -> NftSpec {
    spec(&config.kernel.nftables_table, port, &config.guard)
}

fn spec(table: &str, port: u16, g: &GuardConfig) -> NftSpec {
    let size = |n: usize| u32::try_from(n.min(MAX_BAN_SET)).unwrap_or(u32::MAX);
    NftSpec {
        table: table.to_owned(),
        ports: vec![port],
        trusted: g.trusted.clone(),
        deny: g.deny.clone(),
        ban_set_size: size(g.ban_capacity),
        per_source: Some(SourceLimits::looser_than(
            g.ip_rate,
            g.ip_burst,
            g.max_per_ip,
            size(g.table_capacity),
        )),
    }
}

/// The running sync thread; stopping it deletes the table.
#[derive(Debug)]
pub(crate) struct NftSync {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl NftSync {
    /// Creates the table and starts the thread, when configured and possible; otherwise
    /// logs why (once) and returns None.
    pub(crate) fn start(
        config: &Config,
        port: u16,
        guard: Arc<Guard>,
        metrics: Arc<Metrics>,
    ) -> Option<NftSync> {
        if !config.kernel.nftables {
            return None;
        }
        let fail = |why: &dyn std::fmt::Display| {
            metrics.nft_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                error = %why,
                "kernel.nftables: moat's nftables table is not in use; banned and denied \
                 sources are refused by moat itself"
            );
        };
        if moat_kernel::nft::has_net_admin() == Some(false) {
            fail(&"moat lacks CAP_NET_ADMIN (see deploy/systemd/moat.service.d/kernel-drop.conf)");
            return None;
        }
        let spec = spec(&config.kernel.nftables_table, port, &guard.config());
        let table = match NftTable::create(spec) {
            Ok(table) => table,
            Err(e) => {
                fail(&e);
                return None;
            }
        };
        tracing::info!(table = %table.spec().table, "moat's nftables table created");
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("moat-nft".into())
            .spawn(move || run(table, port, &guard, &metrics, &rx));
        match thread {
            Ok(thread) => Some(NftSync {
                stop: Some(tx),
                thread: Some(thread),
            }),
            Err(e) => {
                // The table went with the closure: dropped, so deleted.
                tracing::warn!(error = %e, "kernel.nftables: cannot start the sync thread");
                None
            }
        }
    }

    /// Stops the thread and deletes the table.
    pub(crate) fn stop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for NftSync {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(
    mut table: NftTable,
    port: u16,
    guard: &Guard,
    metrics: &Metrics,
    stop: &mpsc::Receiver<()>,
) {
    let name = table.spec().table.clone();
    let mut sync = BanSync::new(table.spec().ban_set_size as usize, MAX_OPS_PER_TICK);
    let mut broken = false;
    let mut backoff = TICK;
    let mut retry_at = Instant::now();
    let mut failing = false;
    // Listing the bans holds the guard's lock (which admission takes) for a pass over them:
    // only when its counts moved, work is left over, or FULL_EVERY has passed.
    let mut seen = None;
    let mut busy = true;
    let mut last_full = Instant::now();
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(TICK) {
        let now = Instant::now();
        if now < retry_at {
            continue;
        }
        let outcome = (|| -> Result<(), NftError> {
            let want = spec(&name, port, &guard.config());
            if broken || want != *table.spec() {
                // Emptied sets: everything is pushed again, at the bounded pace.
                sync = BanSync::new(want.ban_set_size as usize, MAX_OPS_PER_TICK);
                table.rebuild(want)?;
                broken = false;
                busy = true;
            }
            let g = guard.stats();
            let mark = Some((g.bans_issued, g.bans_issued_admin, g.bans_active));
            if !busy && mark == seen && now < last_full + FULL_EVERY {
                return Ok(());
            }
            seen = mark;
            last_full = now;
            let bans = guard.bans(now);
            let ops = sync.plan(bans.iter().map(|(net, ban)| (*net, ban.until)), now);
            busy = !ops.is_empty();
            table.apply(&ops).inspect_err(|_| broken = true)
        })();
        metrics.nft_elements.store(
            if broken { 0 } else { sync.elements() as u64 },
            Ordering::Relaxed,
        );
        match outcome {
            Ok(()) => {
                if std::mem::take(&mut failing) {
                    tracing::info!(table = %name, "moat's nftables table is in step again");
                }
                backoff = TICK;
            }
            Err(e) => {
                metrics.nft_failures.fetch_add(1, Ordering::Relaxed);
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(
                        table = %name, error = %e,
                        "kernel.nftables: cannot update moat's table; retrying, and moat \
                         refuses banned sources itself meanwhile"
                    );
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                retry_at = now + backoff;
            }
        }
    }
    drop(table);
    metrics.nft_elements.store(0, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_config_gives_twice_the_guard_limits() {
        let spec = nftables_spec(&Config::default(), 6379);
        assert_eq!(spec.table, "moat");
        assert_eq!(spec.ports, [6379]);
        assert_eq!(spec.ban_set_size, 16_384);
        let text = moat_kernel::nft::ruleset(&spec);
        assert!(
            text.contains("limit rate over 40/second burst 80 packets"),
            "{text}"
        );
        assert!(text.contains("ct count over 128"), "{text}");
        assert!(text.contains("elements = { 127.0.0.1 }"), "{text}");
    }
}
