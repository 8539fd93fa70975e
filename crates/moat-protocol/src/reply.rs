//! Framing backend replies (RESP2 and RESP3) without decoding them.

use crate::line::{Line, find_crlf};
use crate::number::parse_i64;

/// Why a reply could not be framed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Aggregates nested past the framer's `max_depth`.
    #[error("reply nested deeper than {0} levels")]
    TooDeep(usize),
    /// Not valid RESP.
    #[error("malformed reply: {0}")]
    Malformed(&'static str),
}

/// The RESP type of a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// `+` simple string.
    Simple,
    /// `-` simple error.
    Error,
    /// `:` integer.
    Integer,
    /// `$` bulk string (including the RESP2 null `$-1`).
    Bulk,
    /// `*` array (including the RESP2 null `*-1`).
    Array,
    /// `_` RESP3 null.
    Null,
    /// `%` map.
    Map,
    /// `~` set.
    Set,
    /// `>` push (out-of-band message).
    Push,
    /// `,` double.
    Double,
    /// `#` boolean.
    Boolean,
    /// `(` big number.
    BigNumber,
    /// `=` verbatim string.
    Verbatim,
    /// `!` blob error.
    BlobError,
}

/// One complete reply at the front of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// Bytes the reply occupies, including any leading attribute.
    pub len: usize,
    /// Kind of the top-level reply; a leading attribute (`|`) is folded into
    /// the frame and does not change it.
    pub kind: FrameKind,
    /// Whether the reply is a null (`$-1`, `*-1` or `_`).
    pub is_null: bool,
}

/// An aggregate whose children are still being framed.
#[derive(Debug, Clone, Copy)]
struct Open {
    remaining: usize,
    /// An attribute: its last child is the value the attribute annotates.
    attr: bool,
    /// An attribute sitting where the top-level reply goes, so its last
    /// child is the top-level reply.
    top_slot: bool,
}

/// What a type byte introduces.
enum Shape {
    /// Everything is on the header line.
    Line,
    /// A length-prefixed body follows the header.
    Blob,
    /// Child elements follow; `per_entry` children per declared entry.
    Aggregate { per_entry: usize },
}

/// Finds where each reply ends, iteratively and resumably.
#[derive(Debug)]
pub struct ReplyFramer {
    max_depth: usize,
    /// Where the next header or blob body starts.
    pos: usize,
    /// The current line holds no terminator before this offset.
    scanned: usize,
    /// Declared length of the blob whose body starts at `pos`.
    blob: Option<usize>,
    /// Open aggregates, outermost first; reused across replies so nesting
    /// costs neither recursion nor per-reply allocation.
    stack: Vec<Open>,
    top: Option<(FrameKind, bool)>,
}

impl ReplyFramer {
    /// A framer rejecting replies nested more than `max_depth` aggregates deep.
    pub fn new(max_depth: usize) -> Self {
        Self {
            max_depth,
            pos: 0,
            scanned: 0,
            blob: None,
            stack: Vec::new(),
            top: None,
        }
    }

    /// Forgets the progress of a partial reply.
    pub fn reset(&mut self) {
        self.pos = 0;
        self.scanned = 0;
        self.blob = None;
        self.stack.clear();
        self.top = None;
    }

    /// Frames the reply at the front of `buf`.
    ///
    /// `Ok(None)` means incomplete: progress is kept, so the next call must
    /// pass a buffer starting with the same bytes (plus any new ones).
    /// After `Ok(Some(_))` or an error the next call starts a fresh reply.
    pub fn next_frame(&mut self, buf: &[u8]) -> Result<Option<Frame>, FrameError> {
        if buf.len() < self.pos || buf.len() < self.scanned {
            // The caller broke the "same bytes plus more" contract; starting
            // over is the only answer that cannot index out of bounds.
            self.reset();
        }
        let outcome = self.run(buf);
        if !matches!(outcome, Ok(None)) {
            self.reset();
        }
        outcome
    }

    fn run(&mut self, buf: &[u8]) -> Result<Option<Frame>, FrameError> {
        loop {
            if let Some(len) = self.blob {
                let end = self
                    .pos
                    .checked_add(len)
                    .ok_or(FrameError::Malformed("blob length overflows"))?;
                let Some(crlf) = buf.get(end..end.saturating_add(2)) else {
                    return Ok(None);
                };
                if crlf != b"\r\n" {
                    return Err(FrameError::Malformed("expected CRLF after blob"));
                }
                self.blob = None;
                self.advance(end + 2);
                if let Some(frame) = self.element_done() {
                    return Ok(Some(frame));
                }
                continue;
            }
            let Some(&ty) = buf.get(self.pos) else {
                return Ok(None);
            };
            let (end, next) = match find_crlf(buf, self.scanned.max(self.pos + 1)) {
                Line::Complete { end, next } => (end, next),
                Line::Incomplete { scanned } => {
                    self.scanned = scanned;
                    return Ok(None);
                }
                Line::Bad => return Err(FrameError::Malformed("line not terminated by CRLF")),
            };
            let body = buf.get(self.pos + 1..end).unwrap_or_default();
            let at_top = self.at_top_slot();
            self.advance(next);
            if ty == b'|' {
                let pairs = aggregate_len(body)?;
                let children = pairs
                    .checked_mul(2)
                    .and_then(|n| n.checked_add(1))
                    .ok_or(FrameError::Malformed("aggregate length overflows"))?;
                self.open(children, true, at_top)?;
                continue;
            }
            let (kind, shape) = classify(ty)?;
            if body == b"?" && !matches!(shape, Shape::Line) {
                return Err(FrameError::Malformed("streamed replies are not supported"));
            }
            let null = match kind {
                FrameKind::Null => {
                    if !body.is_empty() {
                        return Err(FrameError::Malformed("null with content"));
                    }
                    true
                }
                FrameKind::Bulk | FrameKind::Array => body == b"-1",
                FrameKind::Boolean => {
                    if body != b"t" && body != b"f" {
                        return Err(FrameError::Malformed("boolean is neither t nor f"));
                    }
                    false
                }
                _ => false,
            };
            if at_top && self.top.is_none() {
                self.top = Some((kind, null));
            }
            if !null {
                match shape {
                    Shape::Line => {}
                    Shape::Blob => {
                        let len = parse_i64(body)
                            .and_then(|n| usize::try_from(n).ok())
                            .ok_or(FrameError::Malformed("invalid blob length"))?;
                        self.blob = Some(len);
                        continue;
                    }
                    Shape::Aggregate { per_entry } => {
                        let children = aggregate_len(body)?
                            .checked_mul(per_entry)
                            .ok_or(FrameError::Malformed("aggregate length overflows"))?;
                        if self.open(children, false, false)? {
                            continue;
                        }
                    }
                }
            }
            if let Some(frame) = self.element_done() {
                return Ok(Some(frame));
            }
        }
    }

    fn advance(&mut self, to: usize) {
        self.pos = to;
        self.scanned = to;
    }

    fn at_top_slot(&self) -> bool {
        match self.stack.last() {
            None => true,
            Some(open) => open.attr && open.top_slot && open.remaining == 1,
        }
    }

    /// Opens an aggregate; false if it is empty and so already complete.
    fn open(&mut self, children: usize, attr: bool, top_slot: bool) -> Result<bool, FrameError> {
        if self.stack.len() >= self.max_depth {
            return Err(FrameError::TooDeep(self.max_depth));
        }
        if children == 0 {
            return Ok(false);
        }
        self.stack.push(Open {
            remaining: children,
            attr,
            top_slot,
        });
        Ok(true)
    }

    /// Records that one element finished, closing every aggregate it
    /// completes; returns the frame once the top-level reply is complete.
    fn element_done(&mut self) -> Option<Frame> {
        while let Some(open) = self.stack.last_mut() {
            open.remaining = open.remaining.saturating_sub(1);
            if open.remaining > 0 {
                return None;
            }
            self.stack.pop();
        }
        let (kind, is_null) = self.top.unwrap_or((FrameKind::Null, true));
        Some(Frame {
            len: self.pos,
            kind,
            is_null,
        })
    }
}

fn classify(ty: u8) -> Result<(FrameKind, Shape), FrameError> {
    Ok(match ty {
        b'+' => (FrameKind::Simple, Shape::Line),
        b'-' => (FrameKind::Error, Shape::Line),
        b':' => (FrameKind::Integer, Shape::Line),
        b'_' => (FrameKind::Null, Shape::Line),
        b',' => (FrameKind::Double, Shape::Line),
        b'#' => (FrameKind::Boolean, Shape::Line),
        b'(' => (FrameKind::BigNumber, Shape::Line),
        b'$' => (FrameKind::Bulk, Shape::Blob),
        b'!' => (FrameKind::BlobError, Shape::Blob),
        b'=' => (FrameKind::Verbatim, Shape::Blob),
        b'*' => (FrameKind::Array, Shape::Aggregate { per_entry: 1 }),
        b'~' => (FrameKind::Set, Shape::Aggregate { per_entry: 1 }),
        b'>' => (FrameKind::Push, Shape::Aggregate { per_entry: 1 }),
        b'%' => (FrameKind::Map, Shape::Aggregate { per_entry: 2 }),
        _ => return Err(FrameError::Malformed("unknown type byte")),
    })
}

fn aggregate_len(body: &[u8]) -> Result<usize, FrameError> {
    if body == b"?" {
        return Err(FrameError::Malformed("streamed replies are not supported"));
    }
    parse_i64(body)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or(FrameError::Malformed("invalid aggregate length"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests;
