//! `ReplyFramer` (whole and chunked) and `Value::decode` on arbitrary bytes.
//!
//! The checks live in `moat_protocol::fuzzing` (feature `fuzzing`), so the tests replay this
//! corpus through the same code on stable. Input: `[depth selector][n][n chunk sizes][payload]`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| moat_protocol::fuzzing::check_reply_framer(data));
