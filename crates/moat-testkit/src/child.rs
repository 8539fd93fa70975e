//! Waiting for a server process the kit started (redis-server, a Sentinel): until it
//! answers as our own child, exits, or the deadline passes. One loop for every kind of
//! server, so they all tell a config error from a lost port race the same way.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Instant;
use std::{fs, thread};

use crate::{READY_TIMEOUT, TestkitError};

/// A server process the kit started and waits for.
pub(crate) trait Started {
    /// What messages call it ("redis-server", "sentinel").
    fn what(&self) -> &'static str;
    /// The port it was told to listen on.
    fn port(&self) -> u16;
    /// The file its stdout and stderr go to.
    fn output_path(&self) -> PathBuf;
    /// The exit status if the child has exited, reaping it.
    fn reap(&mut self) -> Option<ExitStatus>;
    /// The port answers and belongs to our child: a parallel test's server may have
    /// grabbed the port, and its answer must not count.
    fn answers_as_own_child(&self) -> bool;
    /// Kills the child at once.
    fn kill_now(&mut self);
}

/// Waits for `server` to answer. The outer error is fatal (a config error: retrying cannot
/// help); the inner one says why this attempt failed (exited early, no answer in time).
pub(crate) fn wait_ready(server: &mut impl Started) -> Result<Result<(), String>, TestkitError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = server.reap() {
            let output = fs::read_to_string(server.output_path()).unwrap_or_default();
            if output.contains("FATAL CONFIG FILE ERROR") {
                return Err(TestkitError::Config { output });
            }
            return Ok(Err(format!(
                "{} on port {} exited early with {status}",
                server.what(),
                server.port()
            )));
        }
        if server.answers_as_own_child() {
            return Ok(Ok(()));
        }
        if Instant::now() >= deadline {
            server.kill_now();
            return Ok(Err(format!(
                "{} on port {} did not answer within {READY_TIMEOUT:?}",
                server.what(),
                server.port()
            )));
        }
        thread::sleep(std::time::Duration::from_millis(10));
    }
}
