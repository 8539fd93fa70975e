//! The `request_parser` fuzz target's checks: [`RequestParser`] on arbitrary bytes, whole
//! and in arbitrary chunks.
//!
//! Input: `[limits: 4 bytes][n: 1 byte][n chunk sizes][payload]`.
//! Checks: no panic; each request fits its buffer and its limits; args lie inside the
//! request; a multibulk request is exactly the canonical encoding of its args; `write_resp`
//! re-parses to the same args; the whole buffer and the chunked stream (resumed the way a
//! session resumes: same prefix plus more bytes) give the same requests and the same final
//! outcome.

use super::header::{Header, boundaries};
use crate::{Limits, ParseError, Request, RequestParser, encode};
use bytes::BytesMut;

#[derive(Debug, PartialEq, Eq)]
struct Parsed {
    len: usize,
    inline: bool,
    args: Vec<Vec<u8>>,
}

#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Everything consumed, or a partial request left waiting for more.
    Incomplete {
        consumed: usize,
    },
    Error {
        consumed: usize,
        err: ParseError,
    },
}

fn limits(h: &mut Header<'_>) -> Limits {
    let (a, b, c, d) = (h.byte(), h.byte(), h.byte(), h.byte());
    if a == 0xff {
        return Limits::default();
    }
    Limits {
        max_args: 1 + usize::from(a % 16),
        max_bulk_len: usize::from(b) * 4,
        max_request_bytes: 1 + usize::from(c) * 8,
        // moat's config refuses less than 64; the parser must still cope.
        max_inline_len: usize::from(d),
    }
}

/// Feeds `data` in pieces ending at `ends`, resuming like a session does.
fn run(data: &[u8], ends: &[usize], limits: Limits) -> (Vec<Parsed>, End) {
    let mut parser = RequestParser::new(limits);
    let mut out = Vec::new();
    let mut pos = 0; // consumed by complete requests
    let mut chunk = 0;
    let mut avail = ends[0];
    loop {
        let buf = &data[pos..avail];
        match parser.parse(buf) {
            Ok(Some(req)) => {
                check_request(&req, buf, limits);
                out.push(Parsed {
                    len: req.len(),
                    inline: req.is_inline(),
                    args: req.args().map(<[u8]>::to_vec).collect(),
                });
                pos += req.len();
            }
            Ok(None) => {
                if chunk + 1 == ends.len() {
                    return (out, End::Incomplete { consumed: pos });
                }
                chunk += 1;
                avail = ends[chunk];
            }
            Err(err) => return (out, End::Error { consumed: pos, err }),
        }
    }
}

fn inside(part: &[u8], whole: &[u8]) -> bool {
    let (p, w) = (part.as_ptr() as usize, whole.as_ptr() as usize);
    p >= w && p + part.len() <= w + whole.len()
}

fn check_request(req: &Request<'_>, buf: &[u8], limits: Limits) {
    assert!(!req.is_empty(), "empty request");
    assert!(req.len() <= buf.len(), "request longer than its buffer");
    assert_eq!(req.raw(), &buf[..req.len()]);
    assert_eq!(req.args().len(), req.argc());
    assert!(
        req.argc() <= limits.max_args,
        "argc {} over limit",
        req.argc()
    );
    for i in 0..req.argc() {
        let arg = req.arg(i).expect("arg within argc");
        assert_eq!(Some(arg), req.args().nth(i));
        if req.is_inline() {
            // Unescaped into scratch: never longer than the line it came from.
            assert!(arg.len() < req.len());
        } else {
            assert!(inside(arg, req.raw()), "arg {i} outside the request");
            assert!(arg.len() <= limits.max_bulk_len);
        }
    }
    assert_eq!(req.arg(req.argc()), None);
    if req.is_inline() {
        assert_eq!(req.raw().last(), Some(&b'\n'));
        assert!(req.len() - 1 <= limits.max_inline_len);
        assert!(req.len() <= limits.max_request_bytes);
    } else if req.argc() > 0 {
        assert!(req.len() <= limits.max_request_bytes);
        // Numbers are parsed strictly, so only the canonical encoding parses.
        let mut canon = BytesMut::new();
        let args: Vec<&[u8]> = req.args().collect();
        encode::command(&mut canon, &args);
        assert_eq!(&canon[..], req.raw(), "multibulk is not canonical");
    } else {
        assert_eq!(req.raw()[0], b'*');
    }
    // What moat forwards must parse back to the same command.
    let mut resp = BytesMut::new();
    req.write_resp(&mut resp);
    let mut again = RequestParser::new(Limits::default());
    let re = again
        .parse(&resp)
        .expect("write_resp output parses")
        .expect("write_resp output is complete");
    assert_eq!(re.len(), resp.len());
    assert!(!re.is_inline());
    assert!(re.args().eq(req.args()), "write_resp changed the args");
}

/// The `request_parser` fuzz target: panics on any broken invariant.
pub fn check_request_parser(data: &[u8]) {
    let mut h = Header::new(data);
    let limits = limits(&mut h);
    let sizes = h.chunk_sizes();
    let payload = h.rest();
    let whole = run(payload, &[payload.len()], limits);
    let chunked = run(payload, &boundaries(&sizes, payload.len()), limits);
    if limits.max_inline_len < 64 {
        // Below moat's configurable minimum a valid `*<count>` or
        // `$<len>` line can exceed the limit; then whether it is refused
        // depends on whether it arrived in one piece (as in Redis).
        return;
    }
    assert_eq!(whole.0, chunked.0, "whole and chunked parses differ");
    match (&whole.1, &chunked.1) {
        (a, b) if a == b => {}
        // Which limit (or whether a limit rather than the malformed number
        // behind it) is reported first depends on how much had arrived: an
        // incomplete line can only be judged by its length so far. The
        // verdict, and where it falls, must not.
        (
            End::Error {
                consumed: c1,
                err: e1,
            },
            End::Error {
                consumed: c2,
                err: e2,
            },
        ) if c1 == c2 && (e1.is_limit() || e2.is_limit()) => {}
        (a, b) => panic!("whole and chunked outcomes differ: {a:?} vs {b:?}"),
    }
}
