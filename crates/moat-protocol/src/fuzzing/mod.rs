//! The checks behind moat-protocol's fuzz targets (feature `fuzzing`), kept in the crate so
//! the fuzz targets (`fuzz/`, nightly) and the corpus replay test (`tests/fuzz_corpus.rs`,
//! stable) run the same code. Each function panics on the first broken invariant.

mod header;
mod reply_framer;
mod request_parser;

pub use header::{Header, boundaries};
pub use reply_framer::check_reply_framer;
pub use request_parser::check_request_parser;
