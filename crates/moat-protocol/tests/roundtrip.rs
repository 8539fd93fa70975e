//! Property tests: what we encode, we parse back, at any split point.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use bytes::{Bytes, BytesMut};
use moat_protocol::{Frame, FrameKind, ReplyFramer, RequestParser, Value, encode};
use proptest::prelude::*;

/// Feeds `buf[..split]` then `buf`, checking the prefix is incomplete.
fn parse_split(buf: &[u8], split: usize) -> Vec<Vec<u8>> {
    let mut parser = RequestParser::default();
    let split = split % (buf.len() + 1);
    if split < buf.len() {
        assert!(parser.parse(&buf[..split]).unwrap().is_none());
    }
    let req = parser.parse(buf).unwrap().unwrap();
    assert_eq!(req.len(), buf.len());
    req.args().map(<[u8]>::to_vec).collect()
}

/// A test-only encoder: the inverse of `Value::decode`.
fn encode_value(out: &mut Vec<u8>, value: &Value) {
    fn header(out: &mut Vec<u8>, ty: u8, n: usize) {
        out.push(ty);
        out.extend_from_slice(n.to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    fn line(out: &mut Vec<u8>, ty: u8, text: &str) {
        out.push(ty);
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match value {
        Value::Simple(s) => line(out, b'+', s),
        Value::Error(s) => line(out, b'-', s),
        Value::Integer(n) => line(out, b':', &n.to_string()),
        Value::Bulk(b) => {
            header(out, b'$', b.len());
            out.extend_from_slice(b);
            out.extend_from_slice(b"\r\n");
        }
        Value::Null => out.extend_from_slice(b"_\r\n"),
        Value::Array(items) | Value::Set(items) | Value::Push(items) => {
            let ty = match value {
                Value::Array(_) => b'*',
                Value::Set(_) => b'~',
                _ => b'>',
            };
            header(out, ty, items.len());
            for item in items {
                encode_value(out, item);
            }
        }
        Value::Map(pairs) => {
            header(out, b'%', pairs.len());
            for (k, v) in pairs {
                encode_value(out, k);
                encode_value(out, v);
            }
        }
        Value::Double(d) => line(out, b',', &d.to_string()),
        Value::Boolean(b) => line(out, b'#', if *b { "t" } else { "f" }),
        Value::BigNumber(s) => line(out, b'(', s),
        Value::Verbatim { format, text } => {
            header(out, b'=', text.len() + 4);
            out.extend_from_slice(format.as_bytes());
            out.push(b':');
            out.extend_from_slice(text);
            out.extend_from_slice(b"\r\n");
        }
    }
}

fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) | Value::Set(items) | Value::Push(items) => {
            1 + items.iter().map(depth).max().unwrap_or(0)
        }
        Value::Map(pairs) => {
            1 + pairs
                .iter()
                .map(|(k, v)| depth(k).max(depth(v)))
                .max()
                .unwrap_or(0)
        }
        _ => 0,
    }
}

fn kind(value: &Value) -> FrameKind {
    match value {
        Value::Simple(_) => FrameKind::Simple,
        Value::Error(_) => FrameKind::Error,
        Value::Integer(_) => FrameKind::Integer,
        Value::Bulk(_) => FrameKind::Bulk,
        Value::Null => FrameKind::Null,
        Value::Array(_) => FrameKind::Array,
        Value::Map(_) => FrameKind::Map,
        Value::Set(_) => FrameKind::Set,
        Value::Push(_) => FrameKind::Push,
        Value::Double(_) => FrameKind::Double,
        Value::Boolean(_) => FrameKind::Boolean,
        Value::BigNumber(_) => FrameKind::BigNumber,
        Value::Verbatim { .. } => FrameKind::Verbatim,
    }
}

fn arb_value() -> impl Strategy<Value = Value> {
    let line = "[ -~]{0,12}";
    let leaf = prop_oneof![
        line.prop_map(Value::Simple),
        line.prop_map(Value::Error),
        any::<i64>().prop_map(Value::Integer),
        proptest::collection::vec(any::<u8>(), 0..24).prop_map(|b| Value::Bulk(Bytes::from(b))),
        Just(Value::Null),
        any::<f64>()
            .prop_filter("NaN never equals itself", |d| !d.is_nan())
            .prop_map(Value::Double),
        any::<bool>().prop_map(Value::Boolean),
        "-?[1-9][0-9]{0,40}".prop_map(Value::BigNumber),
        ("[a-z]{3}", proptest::collection::vec(any::<u8>(), 0..24)).prop_map(|(format, text)| {
            Value::Verbatim {
                format,
                text: Bytes::from(text),
            }
        }),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Set),
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Push),
            proptest::collection::vec((inner.clone(), inner), 0..4).prop_map(Value::Map),
        ]
    })
}

proptest! {
    #[test]
    fn command_round_trips(
        args in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..12),
        split in any::<usize>(),
    ) {
        let mut buf = BytesMut::new();
        encode::command(&mut buf, &args);
        prop_assert_eq!(parse_split(&buf, split), args);
    }

    #[test]
    fn inline_write_resp_round_trips(
        words in proptest::collection::vec("[a-zA-Z0-9]{1,8}", 1..8),
        split in any::<usize>(),
    ) {
        let line = format!("{}\r\n", words.join(" "));
        let mut parser = RequestParser::default();
        let req = parser.parse(line.as_bytes()).unwrap().unwrap();
        prop_assert!(req.is_inline());
        let mut resp = BytesMut::new();
        req.write_resp(&mut resp);
        let want: Vec<Vec<u8>> = words.iter().map(|w| w.as_bytes().to_vec()).collect();
        prop_assert_eq!(parse_split(&resp, split), want);
    }

    #[test]
    fn random_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut parser = RequestParser::default();
        for end in 0..=buf.len() {
            if parser.parse(&buf[..end]).is_err() {
                break;
            }
        }
        let mut framer = ReplyFramer::new(8);
        for end in 0..=buf.len() {
            if framer.next_frame(&buf[..end]).is_err() {
                break;
            }
        }
        let _ = Value::decode(&buf, 8);
    }

    #[test]
    fn structured_garbage_never_panics(
        parts in proptest::collection::vec(
            prop_oneof![
                Just(&b"*"[..]), Just(&b"$"[..]), Just(&b"\r\n"[..]), Just(&b"-1"[..]),
                Just(&b"1"[..]), Just(&b"0"[..]), Just(&b"%"[..]), Just(&b"|"[..]),
                Just(&b"\""[..]), Just(&b"'"[..]), Just(&b"\\x"[..]), Just(&b" "[..]),
                Just(&b"="[..]), Just(&b"\n"[..]), Just(&b"a"[..]),
            ],
            0..40,
        ),
    ) {
        let buf = parts.concat();
        let mut parser = RequestParser::default();
        let mut rest = &buf[..];
        while let Ok(Some(req)) = parser.parse(rest) {
            let len = req.len();
            prop_assert!(len > 0);
            rest = &rest[len..];
        }
        let _ = ReplyFramer::new(4).next_frame(&buf);
        let _ = Value::decode(&buf, 4);
    }

    #[test]
    fn value_round_trips(value in arb_value(), split in any::<usize>()) {
        let mut buf = Vec::new();
        encode_value(&mut buf, &value);
        let want = Frame {
            len: buf.len(),
            kind: kind(&value),
            is_null: value == Value::Null,
        };
        let max_depth = depth(&value);
        prop_assert_eq!(ReplyFramer::new(max_depth).next_frame(&buf), Ok(Some(want)));
        let mut framer = ReplyFramer::new(max_depth);
        let split = split % buf.len();
        prop_assert_eq!(framer.next_frame(&buf[..split]), Ok(None));
        prop_assert_eq!(framer.next_frame(&buf), Ok(Some(want)));
        if max_depth > 0 {
            prop_assert!(ReplyFramer::new(max_depth - 1).next_frame(&buf).is_err());
        }
        prop_assert_eq!(Value::decode(&buf, max_depth), Ok(Some((value, buf.len()))));
    }
}
