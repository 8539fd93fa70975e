//! Recursive decoding of a reply the framer has already checked.

use bytes::Bytes;

use super::Value;
use crate::line::{Line, find_crlf};
use crate::number::parse_i64;
use crate::{FrameError, ReplyFramer};

/// Caps recursion whatever `max_depth` the caller passes, so even a small
/// thread stack survives.
const MAX_RECURSION: usize = 512;

pub(super) fn decode(buf: &[u8], max_depth: usize) -> Result<Option<(Value, usize)>, FrameError> {
    let max_depth = max_depth.min(MAX_RECURSION);
    let Some(frame) = ReplyFramer::new(max_depth).next_frame(buf)? else {
        return Ok(None);
    };
    let mut cursor = Cursor {
        buf: buf.get(..frame.len).unwrap_or(buf),
        pos: 0,
    };
    let value = cursor.value(max_depth)?;
    Ok(Some((value, cursor.pos)))
}

const fn malformed(what: &'static str) -> FrameError {
    FrameError::Malformed(what)
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn line(&mut self) -> Result<&'a [u8], FrameError> {
        match find_crlf(self.buf, self.pos) {
            Line::Complete { end, next } => {
                let line = self.buf.get(self.pos..end).unwrap_or_default();
                self.pos = next;
                Ok(line)
            }
            _ => Err(malformed("line not terminated by CRLF")),
        }
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], FrameError> {
        let end = self.pos.saturating_add(len);
        let data = self
            .buf
            .get(self.pos..end)
            .ok_or(malformed("truncated blob"))?;
        if self.buf.get(end..end.saturating_add(2)) != Some(b"\r\n") {
            return Err(malformed("expected CRLF after blob"));
        }
        self.pos = end + 2;
        Ok(data)
    }

    fn value(&mut self, depth_left: usize) -> Result<Value, FrameError> {
        loop {
            let line = self.line()?;
            let Some((&ty, body)) = line.split_first() else {
                return Err(malformed("empty line"));
            };
            return Ok(match ty {
                b'+' => Value::Simple(lossy(body)),
                b'-' => Value::Error(lossy(body)),
                b':' => Value::Integer(parse_i64(body).ok_or(malformed("invalid integer"))?),
                b'_' => Value::Null,
                b'#' => Value::Boolean(body == b"t"),
                b',' => Value::Double(
                    std::str::from_utf8(body)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .ok_or(malformed("invalid double"))?,
                ),
                b'(' => Value::BigNumber(lossy(body)),
                b'$' if body == b"-1" => Value::Null,
                b'*' if body == b"-1" => Value::Null,
                b'$' => Value::Bulk(Bytes::copy_from_slice(self.take(len(body)?)?)),
                b'!' => Value::Error(lossy(self.take(len(body)?)?)),
                b'=' => {
                    let data = self.take(len(body)?)?;
                    match data {
                        [a, b, c, b':', text @ ..] => Value::Verbatim {
                            format: lossy(&[*a, *b, *c]),
                            text: Bytes::copy_from_slice(text),
                        },
                        _ => return Err(malformed("verbatim string without format")),
                    }
                }
                b'*' => Value::Array(self.list(len(body)?, depth_left)?),
                b'~' => Value::Set(self.list(len(body)?, depth_left)?),
                b'>' => Value::Push(self.list(len(body)?, depth_left)?),
                b'%' => {
                    let pairs = len(body)?;
                    let inner = depth_left.checked_sub(1).ok_or(FrameError::TooDeep(0))?;
                    let mut map = Vec::with_capacity(pairs.min(self.room()));
                    for _ in 0..pairs {
                        let key = self.value(inner)?;
                        map.push((key, self.value(inner)?));
                    }
                    Value::Map(map)
                }
                b'|' => {
                    // Attributes carry hints moat does not use; skip them
                    // and return the value they annotate.
                    let inner = depth_left.checked_sub(1).ok_or(FrameError::TooDeep(0))?;
                    for _ in 0..len(body)?.saturating_mul(2) {
                        self.value(inner)?;
                    }
                    continue;
                }
                _ => return Err(malformed("unknown type byte")),
            });
        }
    }

    fn list(&mut self, n: usize, depth_left: usize) -> Result<Vec<Value>, FrameError> {
        let inner = depth_left.checked_sub(1).ok_or(FrameError::TooDeep(0))?;
        let mut items = Vec::with_capacity(n.min(self.room()));
        for _ in 0..n {
            items.push(self.value(inner)?);
        }
        Ok(items)
    }

    /// An upper bound on elements left (each takes at least 3 bytes), so a
    /// declared count cannot make us preallocate beyond the input's size.
    fn room(&self) -> usize {
        self.buf.len().saturating_sub(self.pos) / 3
    }
}

fn len(body: &[u8]) -> Result<usize, FrameError> {
    parse_i64(body)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or(malformed("invalid length"))
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
