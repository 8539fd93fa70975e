//! The session fuzz target's body: one input becomes one client session, and what moat did
//! with it is checked. Kept here so the fuzzer and the corpus replay test run the same code.
//!
//! Input layout: `[n][n write sizes][payload]`, `n % 9` sizes of 0..=255 bytes (0: no write);
//! the payload is cut at those sizes and the rest is one last write. `n / 9`, when not 0,
//! arms a fault: the backend drops a dedicated connection at its `n / 9 - 1`-th request.

use std::net::SocketAddr;
use std::time::Duration;

use moat_protocol::ReplyFramer;
use moat_protocol::fuzzing::{Header, boundaries};

use super::Harness;
use crate::config::{Config, UserConfig};

/// How long a session may take to close after the client's EOF before it counts as hung.
/// Nothing in [`fuzz_config`] waits longer than its 200 ms lease wait and 1 s backend
/// timeout.
const CLOSE_LIMIT: Duration = Duration::from_secs(10);

/// Bytes each direction of a client pipe buffers: small, so output backpressure and
/// partial writes happen often.
const CLIENT_WINDOW: usize = 4 << 10;

/// The worker the fuzz target runs: small limits, so they are reached; a password user, so
/// authentication is required (inputs start with `AUTH fuzz pw` to get anywhere, as the
/// seeds do); a deny list; and a `default` user without one beside it.
pub fn fuzz_config() -> Config {
    let mut config = Config::default();
    config.proxy.listen = SocketAddr::from(([127, 0, 0, 1], 6380));
    config.proxy.workers = 1;
    config.backend.shared_connections = 2;
    config.backend.request_timeout = Duration::from_secs(1);
    config.pinned.max_connections = 4;
    config.pinned.max_per_ip = 4;
    config.pinned.max_per_user = 4;
    config.pinned.wait = Duration::from_millis(200);
    config.guard.trusted = vec!["127.0.0.0/8".parse().expect("a valid network")];
    config.limits.max_args = 32;
    config.limits.max_bulk_len = 4096;
    config.limits.max_request_bytes = 8192;
    config.limits.max_inline_len = 256;
    config.limits.max_inflight = 32;
    config.limits.max_output_bytes = 64 << 10;
    config.limits.max_output_bytes_hard = 256 << 10;
    config.limits.max_reply_depth = 16;
    // CLIENT PAUSE would hold every later input of the run (the pause outlives the
    // session that set it) until its timeout: denied, like DEBUG SLEEP.
    config.users = vec![
        UserConfig {
            name: "default".into(),
            password: None,
            password_sha256: None,
            deny_commands: vec!["CLIENT|PAUSE".into()],
        },
        UserConfig {
            name: "fuzz".into(),
            password: Some("pw".into()),
            password_sha256: None,
            deny_commands: vec!["CONFIG".into(), "DEBUG|SLEEP".into(), "CLIENT|PAUSE".into()],
        },
    ];
    config
}

/// Runs `data` as one session on `harness` (built from [`fuzz_config`]) and checks that
/// moat closed the connection after the client's EOF, that everything it wrote frames as
/// complete replies, that the session left nothing counted behind
/// ([`Harness::leftovers`]), and that it still serves a fresh client. `Err` says what went
/// wrong.
pub fn check_input(harness: &Harness, data: &[u8]) -> Result<(), String> {
    // The same header as the protocol targets': `n % 9` write sizes, then the payload.
    let mut header = Header::new(data);
    let sizes = header.chunk_sizes();
    let payload = header.rest();
    let mut from = 0;
    let writes: Vec<&[u8]> = boundaries(&sizes, payload.len())
        .into_iter()
        .map(|end| {
            let write = &payload[from..end];
            from = end;
            write
        })
        .collect();

    let fault = data.first().map_or(0, |b| u32::from(b / 9));
    harness.drop_dedicated_at(fault.checked_sub(1));
    let peer = SocketAddr::from(([127, 0, 0, 1], 50000));
    let outcome = harness.session(peer, &writes, CLIENT_WINDOW, CLOSE_LIMIT);
    harness.drop_dedicated_at(None);
    let shown = |b: &[u8]| String::from_utf8_lossy(&b[..b.len().min(512)]).into_owned();
    if let Some(line) = outcome.refused {
        return Err(format!("the guard refused a trusted client: {line}"));
    }
    if !outcome.closed {
        return Err(format!(
            "moat did not close the connection within {CLOSE_LIMIT:?} of the client's EOF; \
             it wrote {} bytes: {:?}",
            outcome.output.len(),
            shown(&outcome.output)
        ));
    }
    let replies = &outcome.output;
    let mut framer = ReplyFramer::new(64);
    let mut pos = 0;
    while pos < replies.len() {
        match framer.next_frame(&replies[pos..]) {
            Ok(Some(frame)) => pos += frame.len,
            Ok(None) => {
                return Err(format!(
                    "moat's output ends in a partial reply at byte {pos}: {:?}",
                    shown(&replies[pos..])
                ));
            }
            Err(e) => {
                return Err(format!(
                    "moat wrote a malformed reply at byte {pos} ({e}): {:?}",
                    shown(&replies[pos..])
                ));
            }
        }
    }
    let leftovers = harness.leftovers();
    if !leftovers.is_empty() {
        return Err(format!("after the session ended: {}", leftovers.join("; ")));
    }
    let ping: &[u8] = b"AUTH fuzz pw\r\n*1\r\n$4\r\nPING\r\n";
    let after = harness.session(peer, &[ping], CLIENT_WINDOW, CLOSE_LIMIT);
    if after.output != b"+OK\r\n+PONG\r\n" || !after.closed {
        return Err(format!(
            "moat stopped serving: a fresh AUTH + PING got {:?} (closed: {})",
            shown(&after.output),
            after.closed
        ));
    }
    Ok(())
}
