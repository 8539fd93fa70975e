//! Client requests: RESP multibulk arrays and inline commands.

mod error;
mod inline;
mod parser;

use std::ops::Range;

use bytes::BytesMut;

pub use error::ParseError;
pub use parser::RequestParser;

use crate::encode;

/// Bounds on what one client request may make moat buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most arguments (including the command name) in one request.
    pub max_args: usize,
    /// Largest single bulk argument, in bytes.
    pub max_bulk_len: usize,
    /// Largest whole request, in bytes, counting protocol overhead.
    pub max_request_bytes: usize,
    /// Longest inline request line, and longest `*`/`$` header line.
    pub max_inline_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_args: 1_048_576,
            max_bulk_len: 64 * 1024 * 1024,
            max_request_bytes: 64 * 1024 * 1024,
            max_inline_len: 64 * 1024,
        }
    }
}

/// One complete request, borrowed from the input buffer and the parser.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    raw: &'a [u8],
    /// Multibulk args live in `raw`; inline args had to be unescaped, so
    /// they live in the parser's scratch buffer instead.
    src: &'a [u8],
    ranges: &'a [Range<usize>],
    inline: bool,
}

impl<'a> Request<'a> {
    /// Bytes consumed from the front of the buffer.
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// Never true: even an empty request consumes its header or line.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// Number of arguments; 0 for requests Redis silently skips
    /// (`*0`, `*-1`, blank inline lines).
    pub fn argc(&self) -> usize {
        self.ranges.len()
    }

    /// The `i`th argument (0 is the command name).
    pub fn arg(&self, i: usize) -> Option<&'a [u8]> {
        let range = self.ranges.get(i)?.clone();
        self.src.get(range)
    }

    /// All arguments in order.
    pub fn args(&self) -> impl ExactSizeIterator<Item = &'a [u8]> + 'a {
        let src = self.src;
        self.ranges
            .iter()
            .map(move |r| src.get(r.clone()).unwrap_or_default())
    }

    /// Whether the request was an inline command rather than a multibulk.
    pub fn is_inline(&self) -> bool {
        self.inline
    }

    /// The exact bytes consumed.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// Writes the request as a RESP multibulk, as Redis expects it.
    pub fn write_resp(&self, out: &mut BytesMut) {
        if self.inline {
            encode::array_header(out, self.argc());
            for arg in self.args() {
                encode::bulk(out, arg);
            }
        } else {
            out.extend_from_slice(self.raw);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests;
