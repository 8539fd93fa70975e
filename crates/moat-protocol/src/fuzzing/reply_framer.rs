//! The `reply_framer` fuzz target's checks: [`ReplyFramer`] (whole and chunked) and
//! [`Value::decode`] on arbitrary bytes.
//!
//! Input: `[depth selector][n][n chunk sizes][payload]`.
//! Checks: no panic or stack overflow; frames fit their buffer; the chunked framer (resumed
//! with the same prefix plus more bytes) finds exactly the frames the whole-buffer framer
//! finds and ends the same way; wherever the framer finds a frame, the decoder agrees on its
//! length (or rejects a value the framer does not look inside); wherever it does not, the
//! decoder does not either; nothing decodes past the depth limit.

use super::header::{Header, boundaries};
use crate::{Frame, FrameError, ReplyFramer, Value};

const DEPTHS: [usize; 10] = [0, 1, 2, 3, 4, 8, 16, 128, 512, 100_000];

#[derive(Debug, PartialEq, Eq)]
enum End {
    Incomplete { consumed: usize },
    Error { consumed: usize, err: FrameError },
}

fn run(data: &[u8], ends: &[usize], max_depth: usize) -> (Vec<Frame>, End) {
    let mut framer = ReplyFramer::new(max_depth);
    let mut frames = Vec::new();
    let mut pos = 0;
    let mut chunk = 0;
    let mut avail = ends[0];
    loop {
        let buf = &data[pos..avail];
        match framer.next_frame(buf) {
            Ok(Some(frame)) => {
                assert!(
                    frame.len > 0 && frame.len <= buf.len(),
                    "frame outside buffer"
                );
                frames.push(frame);
                pos += frame.len;
            }
            Ok(None) => {
                if chunk + 1 == ends.len() {
                    return (frames, End::Incomplete { consumed: pos });
                }
                chunk += 1;
                avail = ends[chunk];
            }
            Err(err) => return (frames, End::Error { consumed: pos, err }),
        }
    }
}

/// Deepest aggregate nesting in a frame the framer accepted, counting
/// attributes as a level (as the framer does). Only called on valid frames.
fn nesting(frame: &[u8]) -> usize {
    let mut stack: Vec<usize> = Vec::new();
    let mut deepest = 0;
    let mut pos = 0;
    while pos < frame.len() {
        let end = pos
            + frame[pos..]
                .windows(2)
                .position(|w| w == b"\r\n")
                .expect("a framed reply ends its lines");
        let (ty, body) = (frame[pos], &frame[pos + 1..end]);
        pos = end + 2;
        let n: i64 = std::str::from_utf8(body)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let children = match ty {
            b'*' | b'~' | b'>' if n >= 0 => Some(n as usize),
            b'%' => Some(2 * n as usize),
            b'|' => Some(2 * n as usize + 1),
            b'$' | b'!' | b'=' if n >= 0 => {
                pos += n as usize + 2;
                None
            }
            _ => None,
        };
        if let Some(c) = children {
            deepest = deepest.max(stack.len() + 1);
            if c > 0 {
                stack.push(c);
                continue;
            }
        }
        // One element done: close what it completes.
        while let Some(top) = stack.last_mut() {
            *top -= 1;
            if *top > 0 {
                break;
            }
            stack.pop();
        }
    }
    deepest
}

/// The `reply_framer` fuzz target: panics on any broken invariant. Decoding 512-deep
/// nesting takes about 2 MiB of stack in a debug build: run it on a thread with more.
pub fn check_reply_framer(data: &[u8]) {
    let mut h = Header::new(data);
    let max_depth = DEPTHS[usize::from(h.byte()) % DEPTHS.len()];
    let sizes = h.chunk_sizes();
    let payload = h.rest();

    let whole = run(payload, &[payload.len()], max_depth);
    let chunked = run(payload, &boundaries(&sizes, payload.len()), max_depth);
    assert_eq!(whole.0, chunked.0, "whole and chunked framing differ");
    assert_eq!(whole.1, chunked.1, "whole and chunked outcomes differ");

    let effective = max_depth.min(512);
    let mut pos = 0;
    for frame in &whole.0 {
        let bytes = &payload[pos..pos + frame.len];
        let depth = nesting(bytes);
        assert!(
            depth <= max_depth,
            "frame nested {depth} deep passed max_depth {max_depth}"
        );
        match Value::decode(&payload[pos..], max_depth) {
            Ok(Some((_, used))) => assert_eq!(used, frame.len, "framer and decoder disagree"),
            Ok(None) => panic!("decoder found a framed reply incomplete"),
            // The framer does not look inside these; the decoder does.
            Err(FrameError::Malformed(
                "invalid integer" | "invalid double" | "verbatim string without format",
            )) => {}
            Err(FrameError::TooDeep(_)) if depth > effective => {}
            Err(e) => panic!("framer accepted what the decoder rejects: {e:?}"),
        }
        pos += frame.len;
    }
    let rest = &payload[pos..];
    match (&whole.1, Value::decode(rest, max_depth)) {
        (End::Incomplete { .. }, Ok(None)) => {}
        (End::Error { err, .. }, Err(e)) if max_depth <= 512 => assert_eq!(err, &e),
        (End::Error { .. }, Err(_)) => {}
        // Above 512 the decoder's own cap may stop it first.
        (End::Incomplete { .. }, Err(FrameError::TooDeep(512))) if max_depth > 512 => {}
        (end, got) => panic!("framer ended {end:?} but decoder gave {got:?}"),
    }
}
