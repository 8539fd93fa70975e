//! Finding the CRLF that ends a protocol header line.

/// Where a header line ends, if it has ended yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Line {
    /// The line's content ends at `end` (the `\r`); the next line starts at `next`.
    Complete { end: usize, next: usize },
    /// No terminator yet; bytes before `scanned` need not be searched again.
    Incomplete { scanned: usize },
    /// A bare `\n`, or `\r` not followed by `\n`.
    Bad,
}

/// Searches `buf` from `from` for the CRLF ending the current line.
///
/// Stops at the first `\r` or `\n`: header lines never legitimately contain
/// either, and accepting a lone one would let moat and Redis split the
/// stream differently.
pub(crate) fn find_crlf(buf: &[u8], from: usize) -> Line {
    let tail = buf.get(from..).unwrap_or_default();
    let Some(i) = tail.iter().position(|&b| b == b'\r' || b == b'\n') else {
        return Line::Incomplete {
            scanned: buf.len().max(from),
        };
    };
    let at = from.saturating_add(i);
    match tail.get(i..) {
        Some([b'\r', b'\n', ..]) => Line::Complete {
            end: at,
            next: at.saturating_add(2),
        },
        // The '\n' may still be on its way; rescan from the '\r'.
        Some([b'\r']) => Line::Incomplete { scanned: at },
        _ => Line::Bad,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::{Line, find_crlf};

    #[test]
    fn finds_lines() {
        assert_eq!(find_crlf(b"*1\r\nx", 1), Line::Complete { end: 2, next: 4 });
        assert_eq!(find_crlf(b"*1\r", 1), Line::Incomplete { scanned: 2 });
        assert_eq!(find_crlf(b"*12", 1), Line::Incomplete { scanned: 3 });
        assert_eq!(find_crlf(b"*1\n", 1), Line::Bad);
        assert_eq!(find_crlf(b"*1\rx", 1), Line::Bad);
        assert_eq!(find_crlf(b"*", 5), Line::Incomplete { scanned: 5 });
    }
}
