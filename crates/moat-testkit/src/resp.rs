//! The sliver of RESP the helper client needs. Deliberately independent of
//! `moat-protocol`, so that a bug there cannot hide behind a matching bug in
//! the tool that checks it.

use crate::TestkitError;

/// Nesting deeper than this is surely garbage, and bounding it keeps the
/// recursive scan from overflowing the stack.
const MAX_DEPTH: usize = 64;

pub(crate) fn encode_command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Length of the first complete reply in `buf`, or `None` if more bytes are
/// needed. Understands RESP2 and RESP3 framing.
pub(crate) fn reply_len(buf: &[u8]) -> Result<Option<usize>, TestkitError> {
    scan(buf, 0, 0)
}

fn scan(buf: &[u8], pos: usize, depth: usize) -> Result<Option<usize>, TestkitError> {
    if depth > MAX_DEPTH {
        return Err(TestkitError::Protocol("reply nested too deeply".into()));
    }
    let Some(&kind) = buf.get(pos) else {
        return Ok(None);
    };
    let Some(line_end) = find_crlf(buf, pos + 1) else {
        return Ok(None);
    };
    let after_line = line_end + 2;
    let header = || parse_len(&buf[pos + 1..line_end]);
    match kind {
        b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => Ok(Some(after_line)),
        b'$' | b'=' | b'!' => {
            let len = header()?;
            if len < 0 {
                return Ok(Some(after_line));
            }
            let end = after_line + len as usize + 2;
            Ok((buf.len() >= end).then_some(end))
        }
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let count = header()?;
            if count < 0 {
                return Ok(Some(after_line));
            }
            let per_entry = if matches!(kind, b'%' | b'|') { 2 } else { 1 };
            let mut next = after_line;
            for _ in 0..count as usize * per_entry {
                match scan(buf, next, depth + 1)? {
                    Some(end) => next = end,
                    None => return Ok(None),
                }
            }
            Ok(Some(next))
        }
        other => Err(TestkitError::Protocol(format!(
            "unknown RESP type byte {:?}",
            char::from(other)
        ))),
    }
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|i| from + i)
}

fn parse_len(digits: &[u8]) -> Result<i64, TestkitError> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .filter(|n| *n >= -1)
        .ok_or_else(|| {
            TestkitError::Protocol(format!("bad length {:?}", String::from_utf8_lossy(digits)))
        })
}

/// Extracts the text of a bulk (or RESP3 verbatim) string reply.
pub(crate) fn bulk_string(reply: &[u8], command: &str) -> Result<String, TestkitError> {
    check_error(reply, command)?;
    let body = match reply.first() {
        Some(b'$' | b'=') => find_crlf(reply, 1)
            .map(|end| &reply[end + 2..reply.len().saturating_sub(2).max(end + 2)]),
        _ => None,
    }
    .ok_or_else(|| {
        TestkitError::Protocol(format!(
            "{command} did not return a bulk string: {:?}",
            String::from_utf8_lossy(reply)
        ))
    })?;
    // Verbatim strings carry a three-letter format prefix such as `txt:`.
    let body = if reply.first() == Some(&b'=') {
        body.get(4..).unwrap_or_default()
    } else {
        body
    };
    Ok(String::from_utf8_lossy(body).into_owned())
}

/// Succeeds on `+OK`, fails on an error reply or anything else.
pub(crate) fn expect_ok(reply: &[u8], command: &str) -> Result<(), TestkitError> {
    check_error(reply, command)?;
    if reply == b"+OK\r\n" {
        Ok(())
    } else {
        Err(TestkitError::Protocol(format!(
            "{command} returned {:?} instead of +OK",
            String::from_utf8_lossy(reply)
        )))
    }
}

fn check_error(reply: &[u8], command: &str) -> Result<(), TestkitError> {
    match reply.strip_prefix(b"-") {
        Some(text) => Err(TestkitError::ErrorReply {
            command: command.to_owned(),
            reply: String::from_utf8_lossy(text).trim_end().to_owned(),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn len(buf: &[u8]) -> Option<usize> {
        reply_len(buf).expect("well-formed RESP")
    }

    #[test]
    fn encodes_commands_as_resp_arrays() {
        assert_eq!(
            encode_command(&["SET", "k", ""]),
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n"
        );
    }

    #[test]
    fn finds_the_end_of_complete_replies() {
        assert_eq!(len(b"+OK\r\n"), Some(5));
        assert_eq!(len(b"$3\r\nfoo\r\n+extra"), Some(9));
        assert_eq!(len(b"$-1\r\n"), Some(5));
        assert_eq!(len(b"*2\r\n$1\r\na\r\n:5\r\n"), Some(15));
        assert_eq!(len(b"%1\r\n+k\r\n+v\r\n"), Some(12));
        assert_eq!(len(b"*-1\r\n"), Some(5));
    }

    #[test]
    fn asks_for_more_bytes_on_partial_replies() {
        for partial in [
            &b""[..],
            b"+OK",
            b"+OK\r",
            b"$3\r\nfo",
            b"*2\r\n$1\r\na\r\n",
        ] {
            assert_eq!(len(partial), None, "{:?}", String::from_utf8_lossy(partial));
        }
    }

    #[test]
    fn rejects_garbage() {
        assert!(reply_len(b"?\r\n").is_err());
        assert!(reply_len(b"$x\r\n").is_err());
        assert!(reply_len(b"*-5\r\n").is_err());
    }

    #[test]
    fn extracts_bulk_strings_and_errors() {
        assert_eq!(bulk_string(b"$2\r\nhi\r\n", "X").expect("bulk"), "hi");
        assert_eq!(
            bulk_string(b"=6\r\ntxt:hi\r\n", "X").expect("verbatim"),
            "hi"
        );
        assert!(matches!(
            bulk_string(b"-ERR nope\r\n", "X"),
            Err(TestkitError::ErrorReply { reply, .. }) if reply == "ERR nope"
        ));
        assert!(bulk_string(b"+OK\r\n", "X").is_err());
        assert!(expect_ok(b"+OK\r\n", "AUTH").is_ok());
        assert!(expect_ok(b"-WRONGPASS x\r\n", "AUTH").is_err());
    }
}
