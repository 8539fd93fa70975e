//! Keeps the kernel's socket filter on the listeners in step with the guard: a banned or
//! denied source's SYNs are dropped by the kernel, so it never costs moat an accept.
//!
//! One small thread (its own current-thread runtime, off the data path) holds a duplicate
//! of every worker's listening socket (the same socket: a filter attached through it is the
//! worker's), polls [`moat_guard::Guard::ban_generation`] every [`POLL`] and, when it moved
//! or `kernel.socket_filter` was reloaded, rebuilds the program from the deny list and the
//! bans and attaches it to every listener. When attaching fails it logs once and leaves the
//! refusal to the guard in user space, which refuses those sources anyway.

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use moat_guard::{Ban, Guard, IpNet};
use moat_kernel::bpf::{self, MAX_INSNS, Program};
use moat_kernel::filter;
use tokio::sync::watch;

use crate::{Config, Metrics};

/// How often the thread looks whether the ban set changed.
pub(crate) const POLL: Duration = Duration::from_millis(250);

/// The smallest program the thread tries when the kernel refuses a larger one for memory
/// (`net.core.optmem_max`).
const MIN_INSNS: usize = 64;

/// What the thread watches and updates.
pub(crate) struct Parts {
    pub(crate) listeners: Vec<TcpListener>,
    pub(crate) guard: Arc<Guard>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) live: watch::Receiver<Arc<Config>>,
    pub(crate) drain: watch::Receiver<bool>,
    pub(crate) shutdown: watch::Receiver<bool>,
}

/// The networks to drop, most harmful first: the config's deny list, then the bans by
/// repeat count (repeat offenders first), then by end (the longest first).
pub(crate) fn drop_list(deny: &[IpNet], mut bans: Vec<(IpNet, Ban)>) -> Vec<IpNet> {
    bans.sort_by(|(_, a), (_, b)| b.repeat.cmp(&a.repeat).then(b.until.cmp(&a.until)));
    deny.iter()
        .copied()
        .chain(bans.into_iter().map(|(net, _)| net))
        .collect()
}

/// The program for the guard's state at `now`, in at most `max_insns` instructions; never
/// dropping a trusted network or the loopback addresses.
pub(crate) fn program(guard: &Guard, now: Instant, max_insns: usize) -> Program {
    let config = guard.config();
    let drop = drop_list(&config.deny, guard.bans(now));
    bpf::build_with_limit(&drop, &config.trusted, max_insns)
}

/// Starts the thread. Failing to duplicate a listener or to start the thread is logged
/// and leaves the refusal to the guard.
pub(crate) fn spawn(parts: Parts) -> Option<JoinHandle<()>> {
    let result = std::thread::Builder::new()
        .name("moat-kernel-filter".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build();
            match runtime {
                Ok(rt) => rt.block_on(run(parts)),
                Err(e) => {
                    tracing::warn!(error = %e, "socket filter disabled: cannot start its thread")
                }
            }
        });
    match result {
        Ok(handle) => Some(handle),
        Err(e) => {
            tracing::warn!(error = %e, "socket filter disabled: cannot start its thread");
            None
        }
    }
}

/// Whether to rebuild: the ban generation or the switch moved since the last build.
fn changed(last: Option<(u64, bool)>, now: (u64, bool)) -> bool {
    last != Some(now)
}

async fn run(mut p: Parts) {
    let mut last: Option<(u64, bool)> = None;
    let mut state = Attached::default();
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = p.drain.changed() => {
                if changed.is_err() || *p.drain.borrow_and_update() {
                    // The workers close their listeners so the kernel refuses new
                    // connections; the duplicates here must not keep them open.
                    break;
                }
            }
            _ = p.shutdown.changed() => break,
        }
        if *p.shutdown.borrow() {
            break;
        }
        let enabled = p.live.borrow().kernel.socket_filter;
        let now = Instant::now();
        let current = (p.guard.ban_generation(now), enabled);
        if !changed(last, current) {
            continue;
        }
        last = Some(current);
        if enabled {
            state.apply(&p, now);
        } else {
            state.remove(&p);
        }
    }
    // Dropping the duplicates closes nothing the workers still use.
}

/// What is attached, and whether a failure was already logged.
#[derive(Debug, Default)]
struct Attached {
    any: bool,
    warned: bool,
}

impl Attached {
    fn apply(&mut self, p: &Parts, now: Instant) {
        let mut max = MAX_INSNS;
        let program = loop {
            let program = program(&p.guard, now, max);
            if program.networks().is_empty() {
                self.remove(p);
                p.metrics
                    .kernel_filter_left_out
                    .store(program.left_out() as u64, Ordering::Relaxed);
                return;
            }
            match filter::attach_all(&p.listeners, &program) {
                Ok(()) => break program,
                Err(e) if e.may_fit_smaller() && max / 2 >= MIN_INSNS => max /= 2,
                Err(e) => {
                    if !self.warned {
                        self.warned = true;
                        tracing::warn!(
                            error = %e,
                            "cannot attach the socket filter; banned and denied sources are \
                             refused by moat itself"
                        );
                    }
                    self.remove(p);
                    return;
                }
            }
        };
        if self.warned {
            self.warned = false;
            tracing::info!("socket filter attached again");
        }
        if program.left_out() > 0 {
            tracing::debug!(
                left_out = program.left_out(),
                "socket filter full; the rest are refused by moat itself"
            );
        }
        self.any = true;
        let m = &p.metrics;
        m.kernel_filter_rules
            .store(program.networks().len() as u64, Ordering::Relaxed);
        m.kernel_filter_left_out
            .store(program.left_out() as u64, Ordering::Relaxed);
        m.kernel_filter_rebuilds.fetch_add(1, Ordering::Relaxed);
    }

    fn remove(&mut self, p: &Parts) {
        p.metrics.kernel_filter_rules.store(0, Ordering::Relaxed);
        if !self.any {
            return;
        }
        if let Err(e) = filter::detach_all(&p.listeners) {
            tracing::warn!(error = %e, "cannot detach the socket filter");
        }
        self.any = false;
    }
}

/// Whether the filter would ever drop `ip`: trusted networks and loopback never.
#[cfg(test)]
fn never_dropped(trusted: &[IpNet], ip: std::net::IpAddr) -> bool {
    bpf::always_kept()
        .iter()
        .chain(trusted)
        .any(|n| n.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;
    use moat_guard::{BanReason, GuardConfig};

    fn net(s: &str) -> IpNet {
        s.parse().expect("net")
    }

    #[test]
    fn deny_first_then_repeat_offenders_then_longest_bans() {
        let now = Instant::now();
        let ban = |repeat, secs| Ban {
            until: now + Duration::from_secs(secs),
            repeat,
            reason: BanReason::Strikes,
        };
        let bans = vec![
            (net("10.0.0.1/32"), ban(0, 10)),
            (net("10.0.0.2/32"), ban(2, 10)),
            (net("10.0.0.3/32"), ban(0, 50)),
        ];
        assert_eq!(
            drop_list(&[net("192.0.2.0/24")], bans),
            [
                net("192.0.2.0/24"),
                net("10.0.0.2/32"),
                net("10.0.0.3/32"),
                net("10.0.0.1/32")
            ]
        );
    }

    #[test]
    fn the_program_never_holds_trusted_or_loopback_sources() {
        let config = GuardConfig {
            deny: vec![net("127.0.0.0/8"), net("10.0.0.0/8")],
            trusted: vec![net("10.1.0.0/16")],
            ..GuardConfig::default()
        };
        let trusted = config.trusted.clone();
        let guard = Guard::new(config);
        let now = Instant::now();
        assert!(guard.ban(net("127.77.0.9/32"), Duration::from_secs(60), now));
        let p = program(&guard, now, MAX_INSNS);
        assert!(p.networks().contains(&net("127.0.0.0/8")));
        assert!(p.kept().iter().all(|k| {
            let ip = k.addr();
            never_dropped(&trusted, ip)
        }));
        assert!(p.kept().contains(&net("127.0.0.1/32")));
        assert!(p.kept().contains(&net("10.1.0.0/16")));
        assert!(!changed(Some((1, true)), (1, true)));
        assert!(changed(Some((1, true)), (1, false)));
        assert!(changed(None, (0, true)));
    }
}
