//! Decoded replies, for moat's control paths (handshake, `COMMAND`, `INFO`).
//!
//! The data path never decodes: it forwards frames found by
//! [`ReplyFramer`](crate::ReplyFramer).

mod decode;

use bytes::Bytes;

use crate::FrameError;

/// A decoded RESP2/RESP3 reply. Attributes are dropped.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `+` simple string (invalid UTF-8 replaced).
    Simple(String),
    /// `-` or `!` error line (invalid UTF-8 replaced).
    Error(String),
    /// `:` integer.
    Integer(i64),
    /// `$` bulk string.
    Bulk(Bytes),
    /// `_`, `$-1` or `*-1`.
    Null,
    /// `*` array.
    Array(Vec<Value>),
    /// `%` map, in wire order.
    Map(Vec<(Value, Value)>),
    /// `~` set, in wire order.
    Set(Vec<Value>),
    /// `>` push.
    Push(Vec<Value>),
    /// `,` double.
    Double(f64),
    /// `#` boolean.
    Boolean(bool),
    /// `(` big number, as its decimal text.
    BigNumber(String),
    /// `=` verbatim string.
    Verbatim {
        /// The three-letter format, e.g. `txt`.
        format: String,
        /// The text after `format:`.
        text: Bytes,
    },
}

impl Value {
    /// Decodes one complete reply at the front of `buf`, returning it and
    /// the bytes it occupied; `Ok(None)` if the reply is incomplete.
    ///
    /// The reply is framed first, so depth is checked without recursion;
    /// decoding then recurses at most `min(max_depth, 512)` levels, which is
    /// what keeps it off the end of the stack.
    pub fn decode(buf: &[u8], max_depth: usize) -> Result<Option<(Value, usize)>, FrameError> {
        decode::decode(buf, max_depth)
    }

    /// The bytes of a simple string, bulk string, verbatim text or big number.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Simple(s) | Value::BigNumber(s) => Some(s.as_bytes()),
            Value::Bulk(b) | Value::Verbatim { text: b, .. } => Some(b),
            _ => None,
        }
    }

    /// [`as_bytes`](Self::as_bytes), when the bytes are UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(self.as_bytes()?).ok()
    }

    /// An integer reply, or a string reply holding a decimal integer.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Integer(n) => Some(*n),
            Value::Simple(_) | Value::Bulk(_) => crate::number::parse_i64(self.as_bytes()?),
            _ => None,
        }
    }

    /// The elements of an array, set or push.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(v) | Value::Set(v) | Value::Push(v) => Some(v),
            _ => None,
        }
    }

    /// Whether this is an error reply.
    pub fn is_error(&self) -> bool {
        matches!(self, Value::Error(_))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests;
