//! `flood`: connect and close as fast as the target lets us, with bounded concurrency, the
//! way a connection flood costs a server an accept, a client structure and a close per
//! attempt.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::FloodSpec;
use super::common::{Ctx, Line, Tickets, read_line, wait_due};

pub(crate) async fn run(ctx: &Ctx, spec: &FloodSpec) {
    let tickets = Arc::new(Tickets::new(spec.count, spec.rate, Instant::now()));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..spec.concurrency {
        let (ctx, tickets, spec) = (ctx.clone(), tickets.clone(), spec.clone());
        workers.spawn(async move { worker(&ctx, &tickets, &spec).await });
    }
    while workers.join_next().await.is_some() {}
}

async fn worker(ctx: &Ctx, tickets: &Tickets, spec: &FloodSpec) {
    while let Some((ticket, at)) = tickets.take() {
        if !wait_due(ctx, at).await {
            return;
        }
        let Some(mut stream) = ctx.connect(ticket).await else {
            continue;
        };
        if let Some(timeout) = spec.read_reply {
            match read_line(&mut stream, timeout).await {
                Line::Got(line) => ctx.counters.reply(&line),
                Line::Closed => ctx.counters.closed_by_target(),
                Line::Silent => ctx.counters.silent(),
                Line::Failed(e) => ctx.counters.io_error(&e),
            }
        }
        if spec.rst {
            // SO_LINGER 0: close() sends an RST and skips TIME_WAIT.
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
        }
        drop(stream);
    }
}
