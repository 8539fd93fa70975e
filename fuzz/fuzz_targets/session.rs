//! The proxy end to end: arbitrary client bytes into a whole moat session.
//!
//! Runs on `moat_proxy::harness`: one worker on this thread, the client and every backend
//! connection as in-memory pipes, and a Redis double behind them, so a session costs no
//! system call. Per input, `check_input` cuts the payload into the client's writes, runs the
//! session, and checks that moat closes the connection after the client's EOF, that
//! everything it wrote frames as complete replies, and that a fresh client still gets
//! `AUTH` + `PING` answered. The tests replay this corpus through the same check.
//!
//! Input: `[n][n write sizes][payload]` (see `fuzz/README.md`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use moat_proxy::harness::{Harness, check_input, fuzz_config};

thread_local! {
    static HARNESS: Harness = Harness::new(fuzz_config()).expect("the harness starts");
}

fuzz_target!(|data: &[u8]| {
    HARNESS.with(|harness| {
        if let Err(finding) = check_input(harness, data) {
            panic!("{finding}");
        }
    });
});
