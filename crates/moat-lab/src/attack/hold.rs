//! `hoard` and `pin`: open K connections and keep them, silent (hoard), pinging now and then
//! (keep-alive hoard), or parked in a command a proxy cannot multiplex (pin: BLPOP,
//! SUBSCRIBE, MULTI). With refill, whatever the target closes is opened again.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::common::{Ctx, ErrorLines, command};
use super::{HoardSpec, PinHow, PinSpec};

/// The first wait after a failed connect; doubled up to [`MAX_BACKOFF`], so refilling
/// against a target that refuses does not spin.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// What each held connection does.
#[derive(Debug, Clone)]
pub(crate) struct HoldPlan {
    pub(crate) connections: u32,
    connect_concurrency: u32,
    refill: bool,
    keepalive: Option<Duration>,
    /// Sent once right after connecting (pin's command).
    opening: Option<Vec<u8>>,
}

impl HoldPlan {
    pub(crate) fn hoard(spec: &HoardSpec) -> Self {
        Self {
            connections: spec.connections,
            connect_concurrency: spec.connect_concurrency,
            refill: spec.refill,
            keepalive: spec.keepalive,
            opening: None,
        }
    }

    pub(crate) fn pin(spec: &PinSpec) -> Self {
        let key = spec.key.as_bytes();
        let opening = match spec.how {
            PinHow::Blpop => command(&[b"BLPOP", key, b"0"]),
            PinHow::Subscribe => command(&[b"SUBSCRIBE", key]),
            PinHow::Multi => command(&[b"MULTI"]),
        };
        Self {
            connections: spec.connections,
            connect_concurrency: spec.connect_concurrency,
            refill: spec.refill,
            keepalive: None,
            opening: Some(opening),
        }
    }
}

/// Holds the connections numbered `range` (all of them, or this process's shard).
pub(crate) async fn run(ctx: &Ctx, plan: &HoldPlan, range: std::ops::Range<u32>) {
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(
        plan.connect_concurrency as usize,
    ));
    let mut holders = tokio::task::JoinSet::new();
    for i in range {
        let (ctx, plan, permits) = (ctx.clone(), plan.clone(), permits.clone());
        holders.spawn(async move { holder(&ctx, &plan, &permits, i.into()).await });
    }
    while holders.join_next().await.is_some() {}
}

async fn holder(ctx: &Ctx, plan: &HoldPlan, permits: &tokio::sync::Semaphore, i: u64) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let stream = {
            let Ok(_permit) = permits.acquire().await else {
                return;
            };
            ctx.connect(i).await
        };
        if ctx.done.is_cancelled() {
            return;
        }
        match stream {
            None => {
                if !plan.refill || !ctx.sleep(backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Some(stream) => {
                ctx.counters.hold_started();
                let closed = hold(ctx, plan, stream).await;
                ctx.counters.hold_ended();
                if !closed {
                    ctx.counters.held_until_the_end();
                    return;
                }
                ctx.counters.closed_by_target();
                if !plan.refill {
                    return;
                }
                backoff = FIRST_BACKOFF;
            }
        }
    }
}

/// Holds one connection until the attack ends (false) or the target closes it (true).
async fn hold(ctx: &Ctx, plan: &HoldPlan, mut stream: TcpStream) -> bool {
    if let Some(opening) = &plan.opening {
        if stream.write_all(opening).await.is_err() {
            return true;
        }
        ctx.counters.commands(1);
    }
    let mut ping = plan.keepalive.map(|every| {
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        // After a stall, one PING is enough: a burst of missed ones would be noise.
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping
    });
    let mut errors = ErrorLines::default();
    let mut chunk = [0u8; 1024];
    loop {
        tokio::select! {
            _ = ctx.done.cancelled() => return false,
            _ = async {
                match ping.as_mut() {
                    Some(p) => { p.tick().await; }
                    None => std::future::pending::<()>().await,
                }
            } => {
                if stream.write_all(b"*1\r\n$4\r\nPING\r\n").await.is_err() {
                    return true;
                }
                ctx.counters.commands(1);
            }
            r = stream.read(&mut chunk) => match r {
                Ok(0) => return true,
                Ok(n) => errors.feed(&chunk[..n], &ctx.counters),
                Err(e) => {
                    ctx.counters.io_error(&e);
                    return true;
                }
            }
        }
    }
}
