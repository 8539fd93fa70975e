//! Every input the fuzzers kept (`fuzz/corpus/request_parser`, `fuzz/corpus/reply_framer`)
//! replayed through the fuzz targets' own checks, on stable: each stays a regression test,
//! and a change that breaks an invariant on a known-hard input fails here, not weeks later
//! in a fuzzing run.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::{Path, PathBuf};

use moat_protocol::fuzzing::{check_reply_framer, check_request_parser};

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut inputs: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            (path, data)
        })
        .collect();
    inputs.sort();
    assert!(
        inputs.len() >= 50,
        "only {} inputs in {}",
        inputs.len(),
        dir.display()
    );
    inputs
}

/// Runs `check` over `target`'s corpus on a thread with room for 512-deep decoding (about
/// 2 MiB of stack in a debug build), naming the input that fails.
fn replay(target: &'static str, check: fn(&[u8])) {
    std::thread::Builder::new()
        .stack_size(32 << 20)
        .spawn(move || {
            for (path, data) in corpus(target) {
                let outcome = std::panic::catch_unwind(|| check(&data));
                assert!(outcome.is_ok(), "{} fails its check", path.display());
            }
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn the_request_parser_corpus_replays_cleanly() {
    replay("request_parser", check_request_parser);
}

#[test]
fn the_reply_framer_corpus_replays_cleanly() {
    replay("reply_framer", check_reply_framer);
}
