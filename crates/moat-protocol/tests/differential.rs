//! Differential tests against `redis-protocol` 6, used purely as an oracle
//! on well-formed input it encodes itself.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use moat_protocol::{ReplyFramer, RequestParser, Value};
use proptest::prelude::*;
use redis_protocol::resp2::types::{OwnedFrame as R2, Resp2Frame};
use redis_protocol::resp3::types::{OwnedFrame as R3, Resp3Frame, VerbatimStringFormat};

const MAX_DEPTH: usize = 16;

fn encode2(frame: &R2) -> Vec<u8> {
    let mut buf = vec![0; frame.encode_len(false)];
    let n = redis_protocol::resp2::encode::encode(&mut buf, frame, false).expect("encode");
    buf.truncate(n);
    buf
}

fn encode3(frame: &R3) -> Vec<u8> {
    let mut buf = vec![0; frame.encode_len(false)];
    let n =
        redis_protocol::resp3::encode::complete::encode(&mut buf, frame, false).expect("encode");
    buf.truncate(n);
    buf
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn value2(frame: &R2) -> Value {
    match frame {
        R2::SimpleString(s) => Value::Simple(lossy(s)),
        R2::Error(s) => Value::Error(s.clone()),
        R2::Integer(n) => Value::Integer(*n),
        R2::BulkString(b) => Value::Bulk(Bytes::copy_from_slice(b)),
        R2::Array(items) => Value::Array(items.iter().map(value2).collect()),
        R2::Null => Value::Null,
    }
}

/// Iterating the same (unchanged) map twice yields the same order, so this
/// matches the wire order `redis-protocol` encoded.
fn value3(frame: &R3) -> Value {
    match frame {
        R3::BlobString { data, .. } => Value::Bulk(Bytes::copy_from_slice(data)),
        R3::BlobError { data, .. } => Value::Error(lossy(data)),
        R3::SimpleString { data, .. } => Value::Simple(lossy(data)),
        R3::SimpleError { data, .. } => Value::Error(data.clone()),
        R3::Boolean { data, .. } => Value::Boolean(*data),
        R3::Null => Value::Null,
        R3::Number { data, .. } => Value::Integer(*data),
        R3::Double { data, .. } => Value::Double(*data),
        R3::BigNumber { data, .. } => Value::BigNumber(lossy(data)),
        R3::VerbatimString { data, format, .. } => Value::Verbatim {
            format: match format {
                VerbatimStringFormat::Text => "txt".into(),
                VerbatimStringFormat::Markdown => "mkd".into(),
            },
            text: Bytes::copy_from_slice(data),
        },
        R3::Array { data, .. } => Value::Array(data.iter().map(value3).collect()),
        R3::Map { data, .. } => {
            Value::Map(data.iter().map(|(k, v)| (value3(k), value3(v))).collect())
        }
        R3::Set { data, .. } => Value::Set(data.iter().map(value3).collect()),
        R3::Push { data, .. } => Value::Push(data.iter().map(value3).collect()),
        R3::Hello { .. } | R3::ChunkedString(_) => unreachable!("not generated"),
    }
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

fn arb_r2() -> impl Strategy<Value = R2> {
    let leaf = prop_oneof![
        "[ -~]{0,10}".prop_map(|s| R2::SimpleString(s.into_bytes())),
        "[ -~]{0,10}".prop_map(R2::Error),
        any::<i64>().prop_map(R2::Integer),
        bytes(32).prop_map(R2::BulkString),
        Just(R2::Null),
    ];
    leaf.prop_recursive(5, 48, 6, |inner| {
        proptest::collection::vec(inner, 0..6).prop_map(R2::Array)
    })
}

fn arb_attributes() -> impl Strategy<Value = Option<HashMap<R3, R3>>> {
    prop_oneof![
        3 => Just(None),
        1 => proptest::collection::hash_map(
            bytes(6).prop_map(|data| R3::BlobString { data, attributes: None }),
            any::<i64>().prop_map(|data| R3::Number { data, attributes: None }),
            0..3,
        )
        .prop_map(Some),
    ]
}

fn arb_r3() -> impl Strategy<Value = R3> {
    let leaf = prop_oneof![
        (bytes(24), arb_attributes())
            .prop_map(|(data, attributes)| R3::BlobString { data, attributes }),
        bytes(24).prop_map(|data| R3::BlobError {
            data,
            attributes: None
        }),
        ("[ -~]{0,10}", arb_attributes()).prop_map(|(s, attributes)| R3::SimpleString {
            data: s.into_bytes(),
            attributes
        }),
        "[ -~]{0,10}".prop_map(|data| R3::SimpleError {
            data,
            attributes: None
        }),
        any::<bool>().prop_map(|data| R3::Boolean {
            data,
            attributes: None
        }),
        Just(R3::Null),
        (any::<i64>(), arb_attributes())
            .prop_map(|(data, attributes)| R3::Number { data, attributes }),
        any::<f64>()
            .prop_filter("NaN never equals itself", |d| !d.is_nan())
            .prop_map(|data| R3::Double {
                data,
                attributes: None
            }),
        "-?[1-9][0-9]{0,30}".prop_map(|s| R3::BigNumber {
            data: s.into_bytes(),
            attributes: None
        }),
        (bytes(24), any::<bool>()).prop_map(|(data, md)| R3::VerbatimString {
            data,
            format: if md {
                VerbatimStringFormat::Markdown
            } else {
                VerbatimStringFormat::Text
            },
            attributes: None,
        }),
    ];
    leaf.prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            (
                proptest::collection::vec(inner.clone(), 0..6),
                arb_attributes()
            )
                .prop_map(|(data, attributes)| R3::Array { data, attributes }),
            proptest::collection::vec(inner.clone(), 0..6).prop_map(|data| R3::Push {
                data,
                attributes: None
            }),
            proptest::collection::hash_map(
                bytes(8).prop_map(|data| R3::BlobString {
                    data,
                    attributes: None
                }),
                inner,
                0..4,
            )
            .prop_map(|data| R3::Map {
                data,
                attributes: None
            }),
            proptest::collection::hash_set(
                any::<i64>().prop_map(|data| R3::Number {
                    data,
                    attributes: None
                }),
                0..5,
            )
            .prop_map(|data: HashSet<R3>| R3::Set {
                data,
                attributes: None
            }),
        ]
    })
}

/// Frames `buf` in two steps (a prefix of its first `whole` bytes, then
/// all) and returns the length.
fn frame_len(buf: &[u8], whole: usize, split: usize) -> usize {
    let mut framer = ReplyFramer::new(MAX_DEPTH);
    let split = split % whole;
    assert_eq!(framer.next_frame(&buf[..split]), Ok(None));
    framer
        .next_frame(buf)
        .expect("valid")
        .expect("complete")
        .len
}

proptest! {
    #[test]
    fn resp2_framing_matches(frame in arb_r2(), split in any::<usize>()) {
        let mut buf = encode2(&frame);
        let whole = buf.len();
        buf.extend_from_slice(b"+NEXT\r\n");
        let (decoded, used) = redis_protocol::resp2::decode::decode(&buf).unwrap().unwrap();
        prop_assert_eq!(used, whole);
        prop_assert_eq!(frame_len(&buf, whole, split), used);
        let want = value2(&decoded);
        prop_assert_eq!(Value::decode(&buf, MAX_DEPTH), Ok(Some((want, used))));
    }

    #[test]
    fn resp3_framing_matches(frame in arb_r3(), split in any::<usize>()) {
        let mut buf = encode3(&frame);
        let whole = buf.len();
        buf.extend_from_slice(b"_\r\n");
        let (_, used) = redis_protocol::resp3::decode::complete::decode(&buf).unwrap().unwrap();
        prop_assert_eq!(used, whole);
        prop_assert_eq!(frame_len(&buf, whole, split), used);
        // Compare with the frame we encoded: it fixes the map order on the wire.
        prop_assert_eq!(Value::decode(&buf, MAX_DEPTH), Ok(Some((value3(&frame), used))));
    }

    #[test]
    fn request_args_match(
        args in proptest::collection::vec(bytes(48), 1..10),
        split in any::<usize>(),
    ) {
        let frame = R2::Array(args.iter().cloned().map(R2::BulkString).collect());
        let buf = encode2(&frame);
        let (decoded, used) = redis_protocol::resp2::decode::decode(&buf).unwrap().unwrap();
        let R2::Array(items) = decoded else { panic!("not an array") };
        let want: Vec<Vec<u8>> = items
            .into_iter()
            .map(|f| match f {
                R2::BulkString(b) => b,
                other => panic!("not a bulk string: {other:?}"),
            })
            .collect();

        let mut parser = RequestParser::default();
        let split = split % buf.len();
        prop_assert!(parser.parse(&buf[..split]).unwrap().is_none());
        let req = parser.parse(&buf).unwrap().unwrap();
        prop_assert_eq!(req.len(), used);
        prop_assert_eq!(req.args().map(<[u8]>::to_vec).collect::<Vec<_>>(), want);
    }
}
