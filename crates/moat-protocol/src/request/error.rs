//! Why a request was rejected.

/// A request the proxy must reject; the stream cannot be resynchronised.
///
/// `Display` gives the complete error line (without the leading `-` and
/// without CRLF), ready to send back to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Malformed framing, worded exactly as Redis words it.
    #[error("ERR Protocol error: {0}")]
    Protocol(&'static str),
    /// A multibulk argument did not start with `$`.
    #[error("ERR Protocol error: expected '$', got '{}'", printable(*.0))]
    ExpectedBulk(u8),
    /// A header or inline line grew past `max_inline_len` (Redis's wording).
    #[error("ERR Protocol error: {0}")]
    LineTooLong(&'static str),
    /// `*N` declared more than `max_args` arguments.
    #[error("ERR moat: request has too many arguments (limit {limit})")]
    TooManyArgs {
        /// The `max_args` in force.
        limit: usize,
    },
    /// `$N` declared more than `max_bulk_len` bytes.
    #[error("ERR moat: bulk argument too large (limit {limit} bytes)")]
    BulkTooLarge {
        /// The `max_bulk_len` in force.
        limit: usize,
    },
    /// The request's declared size passed `max_request_bytes`.
    #[error("ERR moat: request too large (limit {limit} bytes)")]
    RequestTooLarge {
        /// The `max_request_bytes` in force.
        limit: usize,
    },
}

impl ParseError {
    /// Whether a configured [`Limits`](super::Limits) bound was breached,
    /// as opposed to the input being malformed.
    pub fn is_limit(&self) -> bool {
        matches!(
            self,
            Self::LineTooLong(_)
                | Self::TooManyArgs { .. }
                | Self::BulkTooLarge { .. }
                | Self::RequestTooLarge { .. }
        )
    }
}

/// Redis prints the byte with `%c` but then blanks CR and LF so the error
/// line stays one line; do the same.
fn printable(byte: u8) -> char {
    match byte {
        b'\r' | b'\n' => ' ',
        other => char::from(other),
    }
}
