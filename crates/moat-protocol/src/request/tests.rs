use bytes::BytesMut;

use super::*;

/// What a parse produced, owned so it outlives the parser borrow.
#[derive(Debug, PartialEq, Eq)]
struct Parsed {
    args: Vec<Vec<u8>>,
    len: usize,
    inline: bool,
}

fn parse_once(parser: &mut RequestParser, buf: &[u8]) -> Result<Option<Parsed>, ParseError> {
    Ok(parser.parse(buf)?.map(|req| {
        assert_eq!(req.args().len(), req.argc());
        assert_eq!(req.raw(), &buf[..req.len()]);
        Parsed {
            args: req.args().map(<[u8]>::to_vec).collect(),
            len: req.len(),
            inline: req.is_inline(),
        }
    }))
}

fn parse(buf: &[u8]) -> Result<Option<Parsed>, ParseError> {
    parse_once(&mut RequestParser::default(), buf)
}

fn args(buf: &[u8]) -> Vec<Vec<u8>> {
    let parsed = parse(buf).expect("valid").expect("complete");
    assert_eq!(parsed.len, buf.len(), "whole buffer consumed");
    parsed.args
}

fn err(buf: &[u8]) -> String {
    parse(buf).expect_err("should fail").to_string()
}

fn v(items: &[&[u8]]) -> Vec<Vec<u8>> {
    items.iter().map(|a| a.to_vec()).collect()
}

const VALID: &[&[u8]] = &[
    b"*1\r\n$4\r\nPING\r\n",
    b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nva\0ue\r\n",
    b"*2\r\n$3\r\nGET\r\n$0\r\n\r\n",
    b"*2\r\n$4\r\nECHO\r\n$4\r\n\r\n\r\n\r\n",
    b"*0\r\n",
    b"*-1\r\n",
    b"*-7\r\n",
    b"PING\r\n",
    b"PING\n",
    b"\r\n",
    b"   \t \r\n",
    b"SET k \"a b\\x00\\n\" 'it\\'s'\r\n",
    b"ECHO a\0b\n",
];

#[test]
fn multibulk() {
    assert_eq!(args(b"*1\r\n$4\r\nPING\r\n"), v(&[b"PING"]));
    assert_eq!(
        args(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nva\0ue\r\n"),
        v(&[b"SET", b"k", b"va\0ue"])
    );
    assert_eq!(args(b"*2\r\n$3\r\nGET\r\n$0\r\n\r\n"), v(&[b"GET", b""]));
    assert_eq!(
        args(b"*2\r\n$4\r\nECHO\r\n$4\r\n\r\n\r\n\r\n"),
        v(&[b"ECHO", b"\r\n\r\n"])
    );
    let parsed = parse(b"*1\r\n$4\r\nPING\r\n").unwrap().unwrap();
    assert!(!parsed.inline);
}

#[test]
fn empty_requests_are_consumed_with_no_args() {
    for buf in [
        &b"*0\r\n"[..],
        b"*-1\r\n",
        b"*-2147483648\r\n",
        b"\r\n",
        b"\n",
        b"  \t\r\n",
    ] {
        let parsed = parse(buf).unwrap().unwrap();
        assert_eq!(parsed.len, buf.len());
        assert!(parsed.args.is_empty());
    }
}

#[test]
fn inline() {
    assert_eq!(args(b"PING\r\n"), v(&[b"PING"]));
    assert_eq!(args(b"PING\n"), v(&[b"PING"]));
    assert_eq!(args(b"SET k  v\r\n"), v(&[b"SET", b"k", b"v"]));
    assert_eq!(args(b"ECHO a\0b\n"), v(&[b"ECHO", b"a\0b"]));
    assert_eq!(
        args(b"SET k \"a b\\x00\\n\" 'it\\'s'\r\n"),
        v(&[b"SET", b"k", b"a b\0\n", b"it's"])
    );
    assert_eq!(args(b"a\rb\r\r\n"), v(&[b"a", b"b"]));
    assert!(parse(b"PING\r\n").unwrap().unwrap().inline);
}

#[test]
fn protocol_errors_use_redis_wording() {
    let cases: &[(&[u8], &str)] = &[
        (b"*x\r\n", "ERR Protocol error: invalid multibulk length"),
        (b"*\r\n", "ERR Protocol error: invalid multibulk length"),
        (b"*+1\r\n", "ERR Protocol error: invalid multibulk length"),
        (b"*01\r\n", "ERR Protocol error: invalid multibulk length"),
        (b"* 1\r\n", "ERR Protocol error: invalid multibulk length"),
        (b"*1 \r\n", "ERR Protocol error: invalid multibulk length"),
        (
            b"*2147483648\r\n",
            "ERR Protocol error: invalid multibulk length",
        ),
        (
            b"*99999999999999999999\r\n",
            "ERR Protocol error: invalid multibulk length",
        ),
        (b"*1\n", "ERR Protocol error: invalid multibulk length"),
        (b"*1\rx", "ERR Protocol error: invalid multibulk length"),
        (b"*1\r\nx", "ERR Protocol error: expected '$', got 'x'"),
        (b"*1\r\n\r\n", "ERR Protocol error: expected '$', got ' '"),
        (b"*1\r\n$x\r\n", "ERR Protocol error: invalid bulk length"),
        (b"*1\r\n$-1\r\n", "ERR Protocol error: invalid bulk length"),
        (b"*1\r\n$\r\n", "ERR Protocol error: invalid bulk length"),
        (b"*1\r\n$01\r\n", "ERR Protocol error: invalid bulk length"),
        (b"*1\r\n$1\n", "ERR Protocol error: invalid bulk length"),
        (
            b"*1\r\n$1\r\nab",
            "ERR Protocol error: expected CRLF after bulk data",
        ),
        (
            b"*1\r\n$1\r\na\rb",
            "ERR Protocol error: expected CRLF after bulk data",
        ),
        (
            b"*1\r\n$1\r\na\n\r",
            "ERR Protocol error: expected CRLF after bulk data",
        ),
        (
            b"\"abc\r\n",
            "ERR Protocol error: unbalanced quotes in request",
        ),
        (
            b"'abc'x\r\n",
            "ERR Protocol error: unbalanced quotes in request",
        ),
    ];
    for (buf, want) in cases {
        assert_eq!(err(buf), *want, "{}", String::from_utf8_lossy(buf));
        assert!(!parse(buf).unwrap_err().is_limit());
    }
}

#[test]
fn line_length_errors_use_redis_wording() {
    let limits = Limits {
        max_inline_len: 16,
        ..Limits::default()
    };
    let cases: &[(Vec<u8>, &str)] = &[
        (vec![b'a'; 17], "ERR Protocol error: too big inline request"),
        (
            [&[b'a'; 17][..], b"\r\n"].concat(),
            "ERR Protocol error: too big inline request",
        ),
        (
            [b"*", &[b'1'; 16][..]].concat(),
            "ERR Protocol error: too big mbulk count string",
        ),
        (
            [b"*1\r\n$", &[b'1'; 16][..]].concat(),
            "ERR Protocol error: too big bulk count string",
        ),
    ];
    for (buf, want) in cases {
        let e = RequestParser::new(limits).parse(buf).unwrap_err();
        assert_eq!(e.to_string(), *want);
        assert!(e.is_limit());
    }
    // At the limit exactly, the line is still waited for.
    assert_eq!(
        RequestParser::new(limits)
            .parse(&[b'a'; 16])
            .unwrap()
            .map(|r| r.len()),
        None
    );
    assert_eq!(
        RequestParser::new(limits)
            .parse(&[b'a'; 16])
            .map(|r| r.is_none()),
        Ok(true)
    );
}

#[test]
fn limit_errors() {
    let limits = Limits {
        max_args: 2,
        max_bulk_len: 5,
        max_request_bytes: 25,
        max_inline_len: 64,
    };
    let cases: &[(&[u8], &str)] = &[
        (
            b"*3\r\n",
            "ERR moat: request has too many arguments (limit 2)",
        ),
        (
            b"a b c\r\n",
            "ERR moat: request has too many arguments (limit 2)",
        ),
        (
            b"*1\r\n$6\r\n",
            "ERR moat: bulk argument too large (limit 5 bytes)",
        ),
        (
            b"*2\r\n$5\r\nhello\r\n$5\r\n",
            "ERR moat: request too large (limit 25 bytes)",
        ),
        (&[b'a'; 25], "ERR moat: request too large (limit 25 bytes)"),
    ];
    for (buf, want) in cases {
        let e = RequestParser::new(limits).parse(buf).unwrap_err();
        assert_eq!(e.to_string(), *want, "{}", String::from_utf8_lossy(buf));
        assert!(e.is_limit());
    }
    // Exactly at every limit is fine.
    let mut parser = RequestParser::new(limits);
    let buf = b"*2\r\n$5\r\nhello\r\n$4\r\nabcd\r\n";
    assert_eq!(buf.len(), 25);
    assert_eq!(parser.parse(buf).unwrap().unwrap().argc(), 2);
}

#[test]
fn expected_dollar_never_breaks_the_error_line() {
    assert_eq!(
        ParseError::ExpectedBulk(b'\n').to_string(),
        "ERR Protocol error: expected '$', got ' '"
    );
}

#[test]
fn set_limits_applies_to_the_next_header() {
    let mut parser = RequestParser::default();
    assert_eq!(parser.limits(), Limits::default());
    let small = Limits {
        max_args: 1,
        ..Limits::default()
    };
    parser.set_limits(small);
    assert_eq!(parser.limits(), small);
    assert_eq!(
        parser.parse(b"*2\r\n").unwrap_err(),
        ParseError::TooManyArgs { limit: 1 }
    );
    parser.set_limits(Limits::default());
    assert_eq!(
        parser
            .parse(b"*2\r\n$1\r\na\r\n$1\r\nb\r\n")
            .unwrap()
            .unwrap()
            .argc(),
        2
    );
}

#[test]
fn default_limits() {
    let d = Limits::default();
    assert_eq!(d.max_args, 1_048_576);
    assert_eq!(d.max_bulk_len, 64 << 20);
    assert_eq!(d.max_request_bytes, 64 << 20);
    assert_eq!(d.max_inline_len, 64 << 10);
}

#[test]
fn pipeline() {
    let buf =
        b"*1\r\n$4\r\nPING\r\nECHO hi\r\n*0\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n\n*1\r\n$4\r\nQU";
    let mut parser = RequestParser::default();
    let mut rest = &buf[..];
    let mut seen = Vec::new();
    while let Some(p) = parse_once(&mut parser, rest).unwrap() {
        rest = &rest[p.len..];
        seen.push(p.args);
    }
    assert_eq!(
        seen,
        vec![
            v(&[b"PING"]),
            v(&[b"ECHO", b"hi"]),
            vec![],
            v(&[b"GET", b"k"]),
            vec![]
        ]
    );
    assert_eq!(rest, b"*1\r\n$4\r\nQU");
}

#[test]
fn one_byte_at_a_time_matches_whole() {
    for whole in VALID {
        let want = parse(whole).unwrap().unwrap();
        let mut parser = RequestParser::default();
        for end in 1..whole.len() {
            assert_eq!(
                parse_once(&mut parser, &whole[..end]),
                Ok(None),
                "{:?} at {end}",
                whole
            );
        }
        assert_eq!(parse_once(&mut parser, whole).unwrap(), Some(want));
        // Progress was reset: the next request parses from scratch.
        assert_eq!(
            parse_once(&mut parser, b"PING\r\n").unwrap().unwrap().args,
            v(&[b"PING"])
        );
    }
}

#[test]
fn errors_are_reported_the_same_byte_by_byte() {
    for buf in [
        &b"*1\r\n$1\r\nab"[..],
        b"*1\r\nx",
        b"*1\r\n$-1\r\n",
        b"*x\r\n",
        b"\"abc\r\n",
    ] {
        let whole = parse(buf).unwrap_err();
        let mut parser = RequestParser::default();
        let mut got = None;
        for end in 1..=buf.len() {
            match parser.parse(&buf[..end]) {
                Ok(None) => {}
                Ok(Some(_)) => panic!("accepted {buf:?}"),
                Err(e) => {
                    got = Some(e);
                    break;
                }
            }
        }
        assert_eq!(got, Some(whole));
    }
}

#[test]
fn ten_thousand_pieces() {
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let mut buf = BytesMut::new();
    crate::encode::command(&mut buf, &[&b"SET"[..], b"key", &payload]);
    let step = buf.len().div_ceil(10_000);
    let mut parser = RequestParser::default();
    let mut end = 0;
    let mut calls = 0;
    loop {
        end = (end + step).min(buf.len());
        calls += 1;
        if let Some(req) = parser.parse(&buf[..end]).unwrap() {
            assert_eq!(end, buf.len());
            assert_eq!(req.arg(2), Some(&payload[..]));
            assert_eq!(req.arg(3), None);
            break;
        }
    }
    assert!(calls >= 9_000);
}

#[test]
fn million_tiny_args_in_64k_steps() {
    const N: usize = 1_000_000;
    let mut buf = BytesMut::new();
    crate::encode::array_header(&mut buf, N);
    for _ in 0..N {
        crate::encode::bulk(&mut buf, b"x");
    }
    let mut parser = RequestParser::default();
    let mut end = 0;
    loop {
        end = (end + 64 * 1024).min(buf.len());
        if let Some(req) = parser.parse(&buf[..end]).unwrap() {
            assert_eq!(req.argc(), N);
            assert_eq!(req.len(), buf.len());
            assert!(req.args().all(|a| a == b"x"));
            break;
        }
        assert!(end < buf.len());
    }
}

#[test]
fn hostile_headers_fail_before_the_body_arrives() {
    assert_eq!(
        parse(b"*1\r\n$99999999999\r\n").unwrap_err(),
        ParseError::BulkTooLarge { limit: 64 << 20 }
    );
    assert_eq!(
        parse(b"*999999999\r\n").unwrap_err(),
        ParseError::TooManyArgs { limit: 1_048_576 }
    );
}

#[test]
fn ten_megabytes_without_newline() {
    let flood = vec![b'A'; 10 << 20];
    let mut parser = RequestParser::default();
    let max = Limits::default().max_inline_len;
    let mut end = 0;
    let e = loop {
        end += 4096;
        match parser.parse(&flood[..end]) {
            Ok(None) => assert!(end <= max),
            Ok(Some(_)) => panic!("no newline, yet complete"),
            Err(e) => break e,
        }
    };
    assert_eq!(end, max + 4096);
    assert_eq!(e.to_string(), "ERR Protocol error: too big inline request");
    assert_eq!(
        RequestParser::default().parse(&flood).unwrap_err(),
        ParseError::LineTooLong("too big inline request")
    );
}

#[test]
fn write_resp() {
    let mut out = BytesMut::new();
    let mut parser = RequestParser::default();
    let raw = b"*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\n";
    parser.parse(raw).unwrap().unwrap().write_resp(&mut out);
    assert_eq!(&out[..], raw);
    out.clear();
    parser
        .parse(b"ECHO \"a b\"\r\n")
        .unwrap()
        .unwrap()
        .write_resp(&mut out);
    assert_eq!(&out[..], b"*2\r\n$4\r\nECHO\r\n$3\r\na b\r\n");
}

#[test]
fn shrunk_buffer_restarts_instead_of_panicking() {
    let mut parser = RequestParser::default();
    assert!(parser.parse(b"*2\r\n$3\r\nGET\r\n$1").unwrap().is_none());
    assert_eq!(parser.parse(b"PING\n").unwrap().unwrap().argc(), 1);
    assert!(parser.parse(b"*2\r\n$3\r\nGET\r\n$1").unwrap().is_none());
    parser.reset();
    assert_eq!(parser.parse(b"PING\n").unwrap().unwrap().argc(), 1);
}

#[test]
fn empty_buffer_is_incomplete() {
    assert!(RequestParser::default().parse(b"").unwrap().is_none());
}
