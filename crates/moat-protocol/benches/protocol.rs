//! Microbenchmarks of moat's per-request protocol work: the request parser on one
//! command, a pipeline and a 16 KB value, and the reply framer on the replies Redis sends
//! back. The proxy runs both on every request, so their cost is a floor under moat's CPU
//! per request (see docs/performance.md).

#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use moat_protocol::{ReplyFramer, RequestParser};

/// `SET key:NNNN <value>` as redis-benchmark sends it.
fn set_command(i: usize, value_len: usize) -> Vec<u8> {
    let key = format!("key:{i:06}");
    let mut out = format!(
        "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${value_len}\r\n",
        key.len()
    )
    .into_bytes();
    out.extend(std::iter::repeat_n(b'x', value_len));
    out.extend_from_slice(b"\r\n");
    out
}

fn get_command(i: usize) -> Vec<u8> {
    let key = format!("key:{i:06}");
    format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len()).into_bytes()
}

/// Parses every request in `buf`; returns how many there were.
fn parse_all(parser: &mut RequestParser, buf: &[u8]) -> usize {
    let mut at = 0;
    let mut n = 0;
    while at < buf.len() {
        match parser.parse(&buf[at..]) {
            Ok(Some(req)) => {
                black_box(req.arg(0));
                at += req.len();
                n += 1;
            }
            _ => break,
        }
    }
    n
}

/// Frames every reply in `buf`; returns how many there were.
fn frame_all(framer: &mut ReplyFramer, buf: &[u8]) -> usize {
    let mut at = 0;
    let mut n = 0;
    while at < buf.len() {
        match framer.next_frame(&buf[at..]) {
            Ok(Some(frame)) => {
                at += frame.len;
                n += 1;
            }
            _ => break,
        }
    }
    n
}

fn parser(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse");
    let mut parser = RequestParser::default();
    let cases: [(&str, Vec<u8>, u64); 5] = [
        ("get", get_command(1), 1),
        ("set_3B", set_command(1, 3), 1),
        ("set_16KB", set_command(1, 16 * 1024), 1),
        (
            "get_pipeline16",
            (0..16).flat_map(get_command).collect(),
            16,
        ),
        (
            "set_3B_pipeline16",
            (0..16).flat_map(|i| set_command(i, 3)).collect(),
            16,
        ),
    ];
    for (name, buf, requests) in cases {
        group.throughput(Throughput::Elements(requests));
        group.bench_function(name, |b| {
            b.iter(|| assert_eq!(parse_all(&mut parser, black_box(&buf)), requests as usize))
        });
    }
    group.finish();
}

fn framer(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame");
    let mut framer = ReplyFramer::new(64);
    let mut bulk_16k = b"$16384\r\n".to_vec();
    bulk_16k.extend(std::iter::repeat_n(b'x', 16 * 1024));
    bulk_16k.extend_from_slice(b"\r\n");
    let cases: [(&str, Vec<u8>, u64); 5] = [
        ("ok", b"+OK\r\n".to_vec(), 1),
        ("bulk_3B", b"$3\r\nxxx\r\n".to_vec(), 1),
        ("bulk_16KB", bulk_16k, 1),
        ("ok_pipeline16", b"+OK\r\n".repeat(16), 16),
        (
            "array_10",
            b"*10\r\n"
                .iter()
                .copied()
                .chain(b"$3\r\nabc\r\n".repeat(10))
                .collect(),
            1,
        ),
    ];
    for (name, buf, replies) in cases {
        group.throughput(Throughput::Elements(replies));
        group.bench_function(name, |b| {
            b.iter(|| assert_eq!(frame_all(&mut framer, black_box(&buf)), replies as usize))
        });
    }
    group.finish();
}

criterion_group!(benches, parser, framer);
criterion_main!(benches);
