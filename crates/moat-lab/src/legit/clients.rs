//! The clients of each group, each on its own open-loop schedule: persistent (steady and
//! trusted), reconnecting (churn), and fresh probes from never-used addresses.

use std::net::IpAddr;
use std::sync::Arc;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::ops::{Conn, Op, Rng};
use super::schedule::{Schedule, Slot};
use super::spec::{LegitGroup, LegitSpec};
use super::stats::{Outcome, Recorder, kind};

/// How early an operation may go out, to make up for timers that wake late (tokio's tick
/// is a millisecond); latency then counts from the actual send.
pub(crate) const EARLY: std::time::Duration = std::time::Duration::from_millis(1);

/// Fresh probes in flight at once, at most; beyond it the schedule waits (and its
/// lateness shows in the latencies, then as timeouts).
const MAX_PROBES_IN_FLIGHT: usize = 4096;

/// What every client task shares.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) spec: LegitSpec,
    pub(crate) recorder: Recorder,
    pub(crate) stop: CancellationToken,
}

impl Ctx {
    fn record(&self, group: LegitGroup, result: Result<(), String>, intended: Instant) {
        let outcome = match result {
            Ok(()) => Outcome::Ok,
            Err(k) => Outcome::Failed(k),
        };
        self.recorder
            .record(group, outcome, intended, Instant::now());
    }

    /// Sleeps until `t`; false if the run was stopped meanwhile.
    async fn wait(&self, t: Instant) -> bool {
        tokio::select! {
            _ = tokio::time::sleep_until(t) => true,
            _ = self.stop.cancelled() => false,
        }
    }
}

/// One steady, churn or trusted client: sends its operations on schedule over one
/// connection, reconnecting after a failure and, with `reconnect_every`, every so many
/// operations.
pub(crate) async fn client(
    ctx: Arc<Ctx>,
    group: LegitGroup,
    source: IpAddr,
    mut schedule: Schedule,
    reconnect_every: Option<u32>,
    seed: u64,
) {
    let spec = &ctx.spec;
    let mut rng = Rng::new(seed);
    let mut conn: Option<Conn> = None;
    let mut on_conn = 0u32;
    loop {
        let now = Instant::now();
        let intended = match schedule.poll(now) {
            Slot::Done => return,
            Slot::Wait(t) => {
                if !ctx.wait(t).await {
                    return;
                }
                continue;
            }
            Slot::Expired { intended, .. } => {
                ctx.record(group, Err(kind::TIMEOUT.into()), intended);
                continue;
            }
            // Sent early: measure from the send, not from the later intended time.
            Slot::Due { intended, .. } => intended.min(now),
        };
        let deadline = intended + spec.op_timeout;
        let op = rng.op(spec.mix, spec.keys);
        let attempt = async {
            let c = match conn.as_mut() {
                Some(c) => c,
                None => conn.insert(Conn::open(source, spec.target, deadline).await?),
            };
            c.call(spec, &op, deadline).await
        };
        let result = tokio::select! {
            r = attempt => r,
            // An operation cut short by the stop is not measured.
            _ = ctx.stop.cancelled() => return,
        };
        if result.is_err() {
            // The connection's state is unknown (a refusal closes it): start afresh.
            conn = None;
            on_conn = 0;
        } else if let Some(every) = reconnect_every {
            on_conn += 1;
            if on_conn >= every {
                conn = None;
                on_conn = 0;
            }
        }
        ctx.record(group, result, intended);
    }
}

/// The fresh probes: on schedule, each from the next never-used address (`addr(i)` for
/// probe `i`), connect, PING, GET, close.
pub(crate) async fn fresh(
    ctx: Arc<Ctx>,
    mut schedule: Schedule,
    addr: impl Fn(u64) -> IpAddr,
    seed: u64,
) {
    let mut probes = JoinSet::new();
    let mut rng = Rng::new(seed);
    loop {
        // Reap finished probes so the set stays small.
        while probes.try_join_next().is_some() {}
        if probes.len() >= MAX_PROBES_IN_FLIGHT {
            tokio::select! {
                _ = probes.join_next() => continue,
                _ = ctx.stop.cancelled() => break,
            }
        }
        let (index, intended) = match schedule.poll(Instant::now()) {
            Slot::Done => break,
            Slot::Wait(t) => {
                if !ctx.wait(t).await {
                    break;
                }
                continue;
            }
            Slot::Expired { intended, .. } => {
                ctx.record(LegitGroup::Fresh, Err(kind::TIMEOUT.into()), intended);
                continue;
            }
            Slot::Due { index, intended } => (index, intended.min(Instant::now())),
        };
        let key = match rng.op(ctx.spec.mix, ctx.spec.keys) {
            Op::Get(k) | Op::Set(k) => k,
            Op::Ping => 0,
        };
        let source = addr(index);
        let ctx = ctx.clone();
        probes.spawn(async move {
            let spec = &ctx.spec;
            let deadline = intended + spec.op_timeout;
            let probe = async {
                let mut conn = Conn::open(source, spec.target, deadline).await?;
                conn.call(spec, &Op::Ping, deadline).await?;
                conn.call(spec, &Op::Get(key), deadline).await
            };
            tokio::select! {
                result = probe => ctx.record(LegitGroup::Fresh, result, intended),
                _ = ctx.stop.cancelled() => {}
            }
        });
    }
    // Each probe ends by its deadline (or at the stop).
    while probes.join_next().await.is_some() {}
}
