use bytes::Bytes;

use super::Value;
use crate::FrameError;

fn decode(buf: &[u8]) -> Value {
    let (value, used) = Value::decode(buf, 16).unwrap().unwrap();
    assert_eq!(used, buf.len());
    value
}

#[test]
fn decodes_every_type() {
    assert_eq!(decode(b"+OK\r\n"), Value::Simple("OK".into()));
    assert_eq!(decode(b"-ERR x\r\n"), Value::Error("ERR x".into()));
    assert_eq!(decode(b"!5\r\nERR y\r\n"), Value::Error("ERR y".into()));
    assert_eq!(decode(b":-3\r\n"), Value::Integer(-3));
    assert_eq!(
        decode(b"$2\r\nhi\r\n"),
        Value::Bulk(Bytes::from_static(b"hi"))
    );
    assert_eq!(decode(b"$-1\r\n"), Value::Null);
    assert_eq!(decode(b"*-1\r\n"), Value::Null);
    assert_eq!(decode(b"_\r\n"), Value::Null);
    assert_eq!(
        decode(b"*2\r\n:1\r\n*0\r\n"),
        Value::Array(vec![Value::Integer(1), Value::Array(vec![])])
    );
    assert_eq!(
        decode(b"%1\r\n+k\r\n#t\r\n"),
        Value::Map(vec![(Value::Simple("k".into()), Value::Boolean(true))])
    );
    assert_eq!(
        decode(b"~1\r\n#f\r\n"),
        Value::Set(vec![Value::Boolean(false)])
    );
    assert_eq!(
        decode(b">1\r\n,2.5\r\n"),
        Value::Push(vec![Value::Double(2.5)])
    );
    assert_eq!(decode(b",inf\r\n"), Value::Double(f64::INFINITY));
    assert_eq!(
        decode(b"(12345678901234567890\r\n"),
        Value::BigNumber("12345678901234567890".into())
    );
    assert_eq!(
        decode(b"=8\r\ntxt:a\r\nb\r\n"),
        Value::Verbatim {
            format: "txt".into(),
            text: Bytes::from_static(b"a\r\nb")
        }
    );
}

#[test]
fn attributes_are_dropped() {
    assert_eq!(decode(b"|1\r\n+k\r\n+v\r\n:1\r\n"), Value::Integer(1));
    assert_eq!(
        decode(b"*2\r\n|1\r\n+k\r\n+v\r\n:1\r\n:2\r\n"),
        Value::Array(vec![Value::Integer(1), Value::Integer(2)])
    );
}

#[test]
fn incomplete_and_errors() {
    assert_eq!(Value::decode(b"*2\r\n:1\r\n", 4), Ok(None));
    assert_eq!(Value::decode(b"", 4), Ok(None));
    assert_eq!(
        Value::decode(b"*1\r\n*1\r\n:1\r\n", 1),
        Err(FrameError::TooDeep(1))
    );
    assert!(matches!(
        Value::decode(b":x\r\n", 4),
        Err(FrameError::Malformed(_))
    ));
    assert!(matches!(
        Value::decode(b",x\r\n", 4),
        Err(FrameError::Malformed(_))
    ));
    assert!(matches!(
        Value::decode(b"=2\r\nab\r\n", 4),
        Err(FrameError::Malformed(_))
    ));
    let deep = b"*1\r\n".repeat(1_000_000);
    assert_eq!(
        Value::decode(&deep, usize::MAX),
        Err(FrameError::TooDeep(512))
    );
}

#[test]
fn trailing_bytes_are_left() {
    let (value, used) = Value::decode(b"+OK\r\n+NEXT\r\n", 4).unwrap().unwrap();
    assert_eq!((value, used), (Value::Simple("OK".into()), 5));
}

#[test]
fn accessors() {
    let bulk = Value::Bulk(Bytes::from_static(b"42"));
    assert_eq!(bulk.as_bytes(), Some(&b"42"[..]));
    assert_eq!(bulk.as_str(), Some("42"));
    assert_eq!(bulk.as_int(), Some(42));
    assert_eq!(Value::Simple("-7".into()).as_int(), Some(-7));
    assert_eq!(Value::Integer(9).as_int(), Some(9));
    assert_eq!(Value::Integer(9).as_bytes(), None);
    assert_eq!(Value::Bulk(Bytes::from_static(b"\xff")).as_str(), None);
    assert_eq!(Value::Bulk(Bytes::from_static(b"4x")).as_int(), None);
    assert_eq!(Value::BigNumber("1".into()).as_str(), Some("1"));
    let verbatim = Value::Verbatim {
        format: "txt".into(),
        text: Bytes::from_static(b"hi"),
    };
    assert_eq!(verbatim.as_str(), Some("hi"));
    let items = vec![Value::Null];
    assert_eq!(Value::Array(items.clone()).as_array(), Some(&items[..]));
    assert_eq!(Value::Set(items.clone()).as_array(), Some(&items[..]));
    assert_eq!(Value::Push(items.clone()).as_array(), Some(&items[..]));
    assert_eq!(Value::Map(vec![]).as_array(), None);
    assert!(Value::Error("ERR".into()).is_error());
    assert!(!Value::Simple("ERR".into()).is_error());
}
