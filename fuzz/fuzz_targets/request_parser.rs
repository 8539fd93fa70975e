//! `RequestParser` on arbitrary bytes, whole and in arbitrary chunks.
//!
//! The checks live in `moat_protocol::fuzzing` (feature `fuzzing`), so the tests replay this
//! corpus through the same code on stable. Input: `[limits: 4 bytes][n][n chunk sizes][payload]`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| moat_protocol::fuzzing::check_request_parser(data));
