//! `auth-brute`: connect, send a wrong `AUTH`, read the error, repeat: a password guesser
//! that also costs the target a connection and a failed authentication each time.

use std::sync::Arc;
use std::time::Instant;

use tokio::io::AsyncWriteExt;

use super::AuthBruteSpec;
use super::common::{Ctx, Line, Tickets, command, read_line, wait_due};

pub(crate) async fn run(ctx: &Ctx, spec: &AuthBruteSpec) {
    let tickets = Arc::new(Tickets::new(spec.count, spec.rate, Instant::now()));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..spec.concurrency {
        let (ctx, tickets, spec) = (ctx.clone(), tickets.clone(), spec.clone());
        workers.spawn(async move { worker(&ctx, &tickets, &spec).await });
    }
    while workers.join_next().await.is_some() {}
}

async fn worker(ctx: &Ctx, tickets: &Tickets, spec: &AuthBruteSpec) {
    loop {
        let Some((mut ticket, at)) = tickets.take() else {
            return;
        };
        if !wait_due(ctx, at).await {
            return;
        }
        let Some(mut stream) = ctx.connect(ticket).await else {
            continue;
        };
        let mut guesses = 0;
        while guess(ctx, spec, &mut stream, ticket).await {
            guesses += 1;
            if guesses >= spec.per_connection {
                break;
            }
            let Some((next, at)) = tickets.take() else {
                return;
            };
            if !wait_due(ctx, at).await {
                return;
            }
            ticket = next;
        }
    }
}

/// One wrong AUTH and its reply; false when the connection is no longer usable.
async fn guess(
    ctx: &Ctx,
    spec: &AuthBruteSpec,
    stream: &mut tokio::net::TcpStream,
    n: u64,
) -> bool {
    let password = format!("moat-attack-wrong-{n}");
    let auth = match &spec.username {
        Some(user) => command(&[b"AUTH", user.as_bytes(), password.as_bytes()]),
        None => command(&[b"AUTH", password.as_bytes()]),
    };
    if let Err(e) = stream.write_all(&auth).await {
        ctx.counters.io_error(&e);
        return false;
    }
    ctx.counters.commands(1);
    let line = tokio::select! {
        _ = ctx.done.cancelled() => return false,
        l = read_line(stream, spec.reply_timeout) => l,
    };
    match line {
        Line::Got(line) => {
            ctx.counters.reply(&line);
            true
        }
        Line::Closed => {
            ctx.counters.closed_by_target();
            false
        }
        Line::Silent => {
            ctx.counters.silent();
            false
        }
        Line::Failed(e) => {
            ctx.counters.io_error(&e);
            false
        }
    }
}
