use super::*;

fn frame(buf: &[u8]) -> Result<Option<Frame>, FrameError> {
    ReplyFramer::new(64).next_frame(buf)
}

fn whole(buf: &[u8], kind: FrameKind, is_null: bool) {
    assert_eq!(
        frame(buf),
        Ok(Some(Frame {
            len: buf.len(),
            kind,
            is_null
        })),
        "{}",
        String::from_utf8_lossy(buf)
    );
    // Every strict prefix is incomplete, fed fresh or byte by byte.
    let mut framer = ReplyFramer::new(64);
    for end in 0..buf.len() {
        assert_eq!(frame(&buf[..end]), Ok(None));
        assert_eq!(framer.next_frame(&buf[..end]), Ok(None));
    }
    assert_eq!(
        framer.next_frame(buf).unwrap().map(|f| f.len),
        Some(buf.len())
    );
}

#[test]
fn every_type() {
    use FrameKind::*;
    whole(b"+OK\r\n", Simple, false);
    whole(b"-ERR x\r\n", Error, false);
    whole(b":-5\r\n", Integer, false);
    whole(b"$3\r\na\r\n\r\n", Bulk, false);
    whole(b"$0\r\n\r\n", Bulk, false);
    whole(b"$-1\r\n", Bulk, true);
    whole(b"*-1\r\n", Array, true);
    whole(b"*0\r\n", Array, false);
    whole(b"*2\r\n:1\r\n$1\r\nx\r\n", Array, false);
    whole(b"_\r\n", Null, true);
    whole(b"%1\r\n+k\r\n*1\r\n:1\r\n", Map, false);
    whole(b"~2\r\n:1\r\n:2\r\n", Set, false);
    whole(b">2\r\n+message\r\n$-1\r\n", Push, false);
    whole(b",1.5\r\n", Double, false);
    whole(b",-inf\r\n", Double, false);
    whole(b"#t\r\n", Boolean, false);
    whole(b"(123456789012345678901234567890\r\n", BigNumber, false);
    whole(b"=7\r\ntxt:abc\r\n", Verbatim, false);
    whole(b"!5\r\nERR x\r\n", BlobError, false);
}

#[test]
fn attributes_fold_into_the_next_reply() {
    use FrameKind::*;
    whole(b"|1\r\n+key\r\n*1\r\n:1\r\n:7\r\n", Integer, false);
    whole(b"|1\r\n+a\r\n+b\r\n|1\r\n+c\r\n+d\r\n_\r\n", Null, true);
    whole(b"|0\r\n$-1\r\n", Bulk, true);
    // Nested inside an aggregate, an attribute is not an element.
    whole(b"*2\r\n|1\r\n+k\r\n+v\r\n:1\r\n:2\r\n", Array, false);
    whole(b"*1\r\n|1\r\n+k\r\n+v\r\n:1\r\n", Array, false);
}

#[test]
fn pipelined_replies() {
    let buf = b"+OK\r\n:1\r\n*1\r\n$1\r\nx\r\n+PART";
    let mut framer = ReplyFramer::new(8);
    let mut rest = &buf[..];
    let mut kinds = Vec::new();
    while let Some(f) = framer.next_frame(rest).unwrap() {
        kinds.push(f.kind);
        rest = &rest[f.len..];
    }
    assert_eq!(
        kinds,
        [FrameKind::Simple, FrameKind::Integer, FrameKind::Array]
    );
    assert_eq!(rest, b"+PART");
}

#[test]
fn malformed() {
    let cases: &[&[u8]] = &[
        b"x\r\n",
        b"$?\r\n",
        b"*?\r\n",
        b"|?\r\n",
        b"%?\r\n",
        b"=?\r\n",
        b"$-2\r\n",
        b"!-1\r\n",
        b"%-1\r\n",
        b"*-2\r\n",
        b"$1\r\nab\r\n",
        b"$x\r\n",
        b"*01\r\n",
        b"+OK\n",
        b"+OK\rx",
        b"_x\r\n",
        b"#x\r\n",
        b"*1\r\n;3\r\n",
    ];
    for buf in cases {
        let got = frame(buf);
        assert!(
            matches!(got, Err(FrameError::Malformed(_))),
            "{} -> {got:?}",
            String::from_utf8_lossy(buf)
        );
    }
    assert_eq!(FrameError::Malformed("x").to_string(), "malformed reply: x");
}

#[test]
fn depth_limit() {
    assert_eq!(
        ReplyFramer::new(2)
            .next_frame(b"*1\r\n*1\r\n:1\r\n")
            .map(|f| f.is_some()),
        Ok(true)
    );
    assert_eq!(
        ReplyFramer::new(2).next_frame(b"*1\r\n*1\r\n*0\r\n"),
        Err(FrameError::TooDeep(2))
    );
    assert_eq!(
        ReplyFramer::new(2).next_frame(b"*1\r\n%1\r\n*1\r\n"),
        Err(FrameError::TooDeep(2))
    );
    assert_eq!(
        FrameError::TooDeep(2).to_string(),
        "reply nested deeper than 2 levels"
    );
}

#[test]
fn million_nested_arrays_is_too_deep_not_a_crash() {
    let buf = b"*1\r\n".repeat(1_000_000);
    assert_eq!(
        ReplyFramer::new(128).next_frame(&buf),
        Err(FrameError::TooDeep(128))
    );
    // Even with a huge limit the framer only grows a heap stack.
    let mut framer = ReplyFramer::new(usize::MAX);
    assert_eq!(framer.next_frame(&buf), Ok(None));
    let mut done = buf.clone();
    done.extend_from_slice(b":1\r\n");
    assert_eq!(
        framer.next_frame(&done).unwrap().map(|f| f.len),
        Some(done.len())
    );
}

#[test]
fn million_element_array_in_64k_chunks() {
    const N: usize = 1_000_000;
    let mut buf = format!("*{N}\r\n").into_bytes();
    for i in 0..N {
        buf.extend_from_slice(format!(":{}\r\n", i % 10).as_bytes());
    }
    let mut framer = ReplyFramer::new(8);
    let mut end = 0;
    loop {
        end = (end + 64 * 1024).min(buf.len());
        if let Some(f) = framer.next_frame(&buf[..end]).unwrap() {
            assert_eq!(f.len, buf.len());
            break;
        }
        assert!(end < buf.len());
    }
}

#[test]
fn long_simple_string_arriving_slowly() {
    let mut buf = vec![b'+'];
    buf.extend(std::iter::repeat_n(b'a', 200_000));
    buf.extend_from_slice(b"\r\n");
    let mut framer = ReplyFramer::new(8);
    for end in (1..buf.len()).step_by(7) {
        assert_eq!(framer.next_frame(&buf[..end]), Ok(None));
    }
    assert_eq!(
        framer.next_frame(&buf).unwrap().map(|f| f.len),
        Some(buf.len())
    );
}

#[test]
fn reset_forgets_progress() {
    let mut framer = ReplyFramer::new(8);
    assert_eq!(framer.next_frame(b"*2\r\n:1\r\n"), Ok(None));
    framer.reset();
    assert_eq!(
        framer.next_frame(b"+OK\r\n").unwrap().map(|f| f.len),
        Some(5)
    );
}

#[test]
fn question_mark_is_only_streaming_in_length_headers() {
    whole(b"+?\r\n", FrameKind::Simple, false);
    whole(b"-?\r\n", FrameKind::Error, false);
}
