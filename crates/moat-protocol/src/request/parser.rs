//! The resumable request parser.

use std::ops::Range;

use super::{Limits, ParseError, Request, inline};
use crate::line::{Line, find_crlf};
use crate::number::parse_i64;

/// Scratch capacity kept between requests (1 MiB of ranges); anything above
/// this was grown by an unusually large request and is given back rather
/// than pinned for the connection's lifetime.
const KEEP_ARGS: usize = 64 * 1024;
const KEEP_INLINE: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Nothing of the current request has been seen.
    Start,
    /// Looking for the `\n` ending an inline command.
    Inline,
    /// Looking for the CRLF ending `*<count>`.
    Count,
    /// Reading `$<len>` headers and bulk bodies.
    Bulks,
}

/// Parses client requests one at a time from the front of a buffer.
///
/// Progress on a partial request is kept between calls, so a request that
/// trickles in (or has a million tiny arguments) is parsed in linear time.
#[derive(Debug)]
pub struct RequestParser {
    limits: Limits,
    phase: Phase,
    /// Where the next header line or bulk body starts.
    pos: usize,
    /// The current line holds no terminator before this offset.
    scanned: usize,
    /// Bulk arguments still expected.
    remaining: usize,
    /// Declared length of the bulk whose body starts at `pos`.
    bulk: Option<usize>,
    args: Vec<Range<usize>>,
    inline: Vec<u8>,
}

/// How a request ended: its length and whether it was inline.
struct Done {
    len: usize,
    inline: bool,
}

impl Default for RequestParser {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

impl RequestParser {
    /// A parser enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            phase: Phase::Start,
            pos: 0,
            scanned: 0,
            remaining: 0,
            bulk: None,
            args: Vec::new(),
            inline: Vec::new(),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Tightens or loosens the limits (the proxy uses smaller limits before
    /// a client authenticates). Applies to headers not yet parsed.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Forgets the progress of a partial request.
    pub fn reset(&mut self) {
        self.phase = Phase::Start;
        self.pos = 0;
        self.scanned = 0;
        self.remaining = 0;
        self.bulk = None;
    }

    /// Parses the request at the start of `buf`.
    ///
    /// - `Ok(Some(req))`: a complete request occupies the first `req.len()`
    ///   bytes; the next call starts a fresh request.
    /// - `Ok(None)`: incomplete. Progress is kept, so the next call must pass
    ///   a buffer starting with the same bytes (plus any new ones).
    /// - `Err(_)`: a protocol error or limit breach; the connection cannot be
    ///   resynchronised. Limits are checked as soon as a header arrives,
    ///   before its body is buffered.
    pub fn parse<'a>(&'a mut self, buf: &'a [u8]) -> Result<Option<Request<'a>>, ParseError> {
        if buf.len() < self.pos || buf.len() < self.scanned {
            // The caller broke the "same bytes plus more" contract; starting
            // over is the only answer that cannot index out of bounds.
            self.reset();
        }
        let outcome = match self.phase {
            Phase::Start => {
                let Some(&first) = buf.first() else {
                    return Ok(None);
                };
                self.begin();
                if first == b'*' {
                    self.phase = Phase::Count;
                    self.scanned = 1;
                    self.count(buf)
                } else {
                    self.phase = Phase::Inline;
                    self.inline_line(buf)
                }
            }
            Phase::Inline => self.inline_line(buf),
            Phase::Count => self.count(buf),
            Phase::Bulks => self.bulks(buf),
        };
        match outcome {
            Ok(Some(done)) => {
                self.reset();
                let (src, inline) = if done.inline {
                    (self.inline.as_slice(), true)
                } else {
                    (buf, false)
                };
                Ok(Some(Request {
                    raw: buf.get(..done.len).unwrap_or(buf),
                    src,
                    ranges: &self.args,
                    inline,
                }))
            }
            Ok(None) => Ok(None),
            Err(err) => {
                self.reset();
                Err(err)
            }
        }
    }

    fn begin(&mut self) {
        self.args.clear();
        self.inline.clear();
        if self.args.capacity() > KEEP_ARGS {
            self.args.shrink_to(KEEP_ARGS);
        }
        if self.inline.capacity() > KEEP_INLINE {
            self.inline.shrink_to(KEEP_INLINE);
        }
    }

    fn inline_line(&mut self, buf: &[u8]) -> Result<Option<Done>, ParseError> {
        let from = self.scanned;
        let found = buf
            .get(from..)
            .and_then(|tail| tail.iter().position(|&b| b == b'\n'));
        let Some(i) = found else {
            self.scanned = buf.len();
            self.check_inline_len(buf.len())?;
            return Ok(None);
        };
        let newline = from + i;
        // Checked on complete lines too, so the verdict does not depend on
        // how the line was split into reads.
        self.check_inline_len(newline)?;
        let mut line = buf.get(..newline).unwrap_or_default();
        if let [rest @ .., b'\r'] = line {
            line = rest;
        }
        inline::split_args(line, &mut self.inline, &mut self.args, self.limits.max_args)?;
        Ok(Some(Done {
            len: newline + 1,
            inline: true,
        }))
    }

    fn check_inline_len(&self, len: usize) -> Result<(), ParseError> {
        if len > self.limits.max_inline_len {
            return Err(ParseError::LineTooLong("too big inline request"));
        }
        if len >= self.limits.max_request_bytes {
            return Err(ParseError::RequestTooLarge {
                limit: self.limits.max_request_bytes,
            });
        }
        Ok(())
    }

    fn count(&mut self, buf: &[u8]) -> Result<Option<Done>, ParseError> {
        const INVALID: ParseError = ParseError::Protocol("invalid multibulk length");
        let (end, next) = match find_crlf(buf, self.scanned) {
            Line::Complete { end, next } => (end, next),
            Line::Incomplete { scanned } => {
                self.scanned = scanned;
                if buf.len() > self.limits.max_inline_len {
                    return Err(ParseError::LineTooLong("too big mbulk count string"));
                }
                return Ok(None);
            }
            Line::Bad => return Err(INVALID),
        };
        let count = parse_i64(buf.get(1..end).unwrap_or_default()).ok_or(INVALID)?;
        if count > i64::from(i32::MAX) {
            return Err(INVALID);
        }
        let Ok(count) = usize::try_from(count) else {
            return Ok(Some(Done {
                len: next,
                inline: false,
            }));
        };
        if count == 0 {
            return Ok(Some(Done {
                len: next,
                inline: false,
            }));
        }
        if count > self.limits.max_args {
            return Err(ParseError::TooManyArgs {
                limit: self.limits.max_args,
            });
        }
        self.phase = Phase::Bulks;
        self.remaining = count;
        self.pos = next;
        self.scanned = next;
        self.bulks(buf)
    }

    fn bulks(&mut self, buf: &[u8]) -> Result<Option<Done>, ParseError> {
        loop {
            match self.bulk {
                None => {
                    if !self.bulk_header(buf)? {
                        return Ok(None);
                    }
                }
                Some(len) => {
                    let end = self.pos.saturating_add(len);
                    let Some(crlf) = buf.get(end..end.saturating_add(2)) else {
                        // Reject a wrong terminator as soon as its first
                        // byte shows up rather than waiting for the second.
                        if buf.get(end).is_some_and(|&b| b != b'\r') {
                            return Err(ParseError::Protocol("expected CRLF after bulk data"));
                        }
                        return Ok(None);
                    };
                    // Redis skips these two bytes unchecked; a stray byte
                    // here means the client and moat disagree on framing.
                    if crlf != b"\r\n" {
                        return Err(ParseError::Protocol("expected CRLF after bulk data"));
                    }
                    self.args.push(self.pos..end);
                    self.pos = end + 2;
                    self.scanned = self.pos;
                    self.bulk = None;
                    self.remaining = self.remaining.saturating_sub(1);
                    if self.remaining == 0 {
                        return Ok(Some(Done {
                            len: self.pos,
                            inline: false,
                        }));
                    }
                }
            }
        }
    }

    /// Parses a `$<len>` header at `pos`; false if it is not complete yet.
    fn bulk_header(&mut self, buf: &[u8]) -> Result<bool, ParseError> {
        const INVALID: ParseError = ParseError::Protocol("invalid bulk length");
        let Some(&first) = buf.get(self.pos) else {
            return Ok(false);
        };
        if first != b'$' {
            return Err(ParseError::ExpectedBulk(first));
        }
        let (end, next) = match find_crlf(buf, self.scanned.max(self.pos + 1)) {
            Line::Complete { end, next } => (end, next),
            Line::Incomplete { scanned } => {
                self.scanned = scanned;
                if buf.len() - self.pos > self.limits.max_inline_len {
                    return Err(ParseError::LineTooLong("too big bulk count string"));
                }
                return Ok(false);
            }
            Line::Bad => return Err(INVALID),
        };
        let len = parse_i64(buf.get(self.pos + 1..end).unwrap_or_default())
            .and_then(|n| usize::try_from(n).ok())
            .ok_or(INVALID)?;
        if len > self.limits.max_bulk_len {
            return Err(ParseError::BulkTooLarge {
                limit: self.limits.max_bulk_len,
            });
        }
        if next.saturating_add(len).saturating_add(2) > self.limits.max_request_bytes {
            return Err(ParseError::RequestTooLarge {
                limit: self.limits.max_request_bytes,
            });
        }
        self.bulk = Some(len);
        self.pos = next;
        self.scanned = next;
        Ok(true)
    }
}
