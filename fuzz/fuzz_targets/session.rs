//! The proxy end to end: arbitrary client bytes into a running moat.
//!
//! One moat (1 worker, small limits) runs in-process in front of a tiny
//! in-process fake Redis, both started once. Per input: connect, write the
//! input (split into up to 8 writes chosen by the header), half-close, read
//! until EOF (2 s timeout). Checks: moat closes the connection after the
//! client's EOF; everything it sent frames as complete RESP replies; and it
//! still answers PING on a fresh connection.
//!
//! Input: `[n][n chunk sizes][payload]`.
#![no_main]

mod common;

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use moat_protocol::{Limits, ReplyFramer, RequestParser, encode};
use moat_proxy::config::UserConfig;
use moat_proxy::{Config, RunningProxy};

const TIMEOUT: Duration = Duration::from_secs(2);

struct Env {
    addr: SocketAddr,
    _proxy: RunningProxy,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let backend = fake_redis();
        let mut config = Config::default();
        config.proxy.listen = "127.0.0.1:0".parse().unwrap();
        config.proxy.workers = 1;
        config.backend.address = backend;
        config.backend.shared_connections = 2;
        config.backend.request_timeout = Duration::from_secs(1);
        config.pinned.max_connections = 4;
        config.pinned.max_per_ip = 4;
        config.pinned.max_per_user = 4;
        config.pinned.wait = Duration::from_millis(200);
        config.guard.trusted = vec!["127.0.0.0/8".parse().unwrap()];
        config.limits.max_args = 32;
        config.limits.max_bulk_len = 4096;
        config.limits.max_request_bytes = 8192;
        config.limits.max_inline_len = 256;
        config.limits.max_inflight = 32;
        config.limits.max_output_bytes = 64 << 10;
        config.limits.max_output_bytes_hard = 256 << 10;
        config.limits.max_reply_depth = 16;
        // Any password makes authentication required (even with a `default`
        // without one), so inputs must start with AUTH to get anywhere; the
        // seeds do. `fuzz` brings a deny list with it.
        config.users = vec![
            UserConfig {
                name: "default".into(),
                password: None,
                password_sha256: None,
                deny_commands: vec![],
            },
            UserConfig {
                name: "fuzz".into(),
                password: Some("pw".into()),
                password_sha256: None,
                deny_commands: vec!["CONFIG".into(), "DEBUG|SLEEP".into()],
            },
        ];
        let proxy = moat_proxy::start(config).expect("moat starts");
        let addr = proxy.local_addr();
        // Wait for the backend pool: the first PING must succeed.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while let Err(got) = ping(addr) {
            assert!(std::time::Instant::now() < deadline, "moat never answered PING: {got:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Env {
            addr,
            _proxy: proxy,
        }
    })
}

/// A fake Redis: frames requests with moat's own parser and answers each.
fn fake_redis() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || serve(conn));
        }
    });
    addr
}

#[derive(Default)]
struct Conn {
    resp3: bool,
    multi: Option<usize>,
    subs: Vec<(Vec<u8>, Vec<u8>)>,
}

fn serve(mut conn: TcpStream) {
    let _ = conn.set_nodelay(true);
    let mut parser = RequestParser::new(Limits::default());
    let mut state = Conn::default();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    loop {
        let n = match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut out = BytesMut::new();
        let mut pos = 0;
        loop {
            match parser.parse(&buf[pos..]) {
                Ok(Some(req)) => {
                    let args: Vec<Vec<u8>> = req.args().map(<[u8]>::to_vec).collect();
                    pos += req.len();
                    if !args.is_empty() {
                        answer(&mut state, &args, &mut out);
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        buf.drain(..pos);
        if conn.write_all(&out).is_err() {
            return;
        }
    }
}

fn answer(st: &mut Conn, args: &[Vec<u8>], out: &mut BytesMut) {
    let name = args[0].to_ascii_uppercase();
    let agg = |out: &mut BytesMut, n: usize, push: bool| {
        out.extend_from_slice(format!("{}{n}\r\n", if push { '>' } else { '*' }).as_bytes());
    };
    if let Some(queued) = st.multi.as_mut() {
        match &name[..] {
            b"EXEC" => {
                let n = *queued;
                st.multi = None;
                agg(out, n, false);
                for _ in 0..n {
                    out.extend_from_slice(b"+OK\r\n");
                }
            }
            b"DISCARD" => {
                st.multi = None;
                out.extend_from_slice(b"+OK\r\n");
            }
            b"MULTI" => out.extend_from_slice(b"-ERR MULTI calls can not be nested\r\n"),
            _ => {
                *queued += 1;
                out.extend_from_slice(b"+QUEUED\r\n");
            }
        }
        return;
    }
    match &name[..] {
        b"COMMAND" | b"CONFIG" => out.extend_from_slice(b"*0\r\n"),
        b"INFO" => out.extend_from_slice(b"$0\r\n\r\n"),
        b"PING" if st.subs.is_empty() => out.extend_from_slice(b"+PONG\r\n"),
        b"RESET" => {
            *st = Conn::default();
            out.extend_from_slice(b"+RESET\r\n");
        }
        b"MULTI" => {
            st.multi = Some(0);
            out.extend_from_slice(b"+OK\r\n");
        }
        b"HELLO" => {
            if let Some(v) = args.get(1) {
                st.resp3 = v == b"3";
            }
            out.extend_from_slice(if st.resp3 { b"%1\r\n" } else { b"*2\r\n" });
            encode::bulk(out, b"proto");
            out.extend_from_slice(if st.resp3 { b":3\r\n" } else { b":2\r\n" });
        }
        b"SUBSCRIBE" | b"PSUBSCRIBE" | b"SSUBSCRIBE" => {
            let kind = name.to_ascii_lowercase();
            for ch in &args[1..] {
                if !st.subs.iter().any(|(k, c)| *k == kind && c == ch) {
                    st.subs.push((kind.clone(), ch.clone()));
                }
                agg(out, 3, st.resp3);
                encode::bulk(out, &kind);
                encode::bulk(out, ch);
                encode::integer(out, st.subs.len() as i64);
            }
        }
        b"UNSUBSCRIBE" | b"PUNSUBSCRIBE" | b"SUNSUBSCRIBE" => {
            let kind = name.to_ascii_lowercase();
            let of = kind[2..].to_vec();
            let mut chans: VecDeque<Vec<u8>> = args[1..].iter().cloned().collect();
            if chans.is_empty() {
                chans = st.subs.iter().filter(|(k, _)| *k == of).map(|(_, c)| c.clone()).collect();
            }
            if chans.is_empty() {
                agg(out, 3, st.resp3);
                encode::bulk(out, &kind);
                encode::null_bulk(out);
                encode::integer(out, st.subs.len() as i64);
            }
            for ch in chans {
                st.subs.retain(|(k, c)| !(*k == of && *c == ch));
                agg(out, 3, st.resp3);
                encode::bulk(out, &kind);
                encode::bulk(out, &ch);
                encode::integer(out, st.subs.len() as i64);
            }
        }
        b"PING" => {
            agg(out, 2, st.resp3);
            encode::bulk(out, b"pong");
            encode::bulk(out, args.get(1).map_or(&b""[..], |a| a));
        }
        _ if !st.subs.is_empty() => {
            out.extend_from_slice(b"-ERR only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n");
        }
        _ => out.extend_from_slice(b"+OK\r\n"),
    }
}

/// AUTH and PING on a fresh connection; what came back if it was not right.
fn ping(addr: SocketAddr) -> Result<(), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
    s.write_all(b"AUTH fuzz pw\r\n*1\r\n$4\r\nPING\r\n").map_err(|e| e.to_string())?;
    let mut got = Vec::new();
    let mut chunk = [0u8; 64];
    while got.len() < 12 {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
    if got == b"+OK\r\n+PONG\r\n" {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&got).into_owned())
    }
}

fuzz_target!(|data: &[u8]| {
    let env = env();
    let mut h = common::Header::new(data);
    let sizes = h.chunk_sizes();
    let payload = h.rest();
    let ends = common::boundaries(&sizes, payload.len());

    let mut conn = TcpStream::connect(env.addr).expect("connect to moat");
    conn.set_nodelay(true).unwrap();
    conn.set_read_timeout(Some(TIMEOUT)).unwrap();
    conn.set_write_timeout(Some(TIMEOUT)).unwrap();
    let mut writer = conn.try_clone().unwrap();
    let mut replies = Vec::new();
    let read_result = std::thread::scope(|s| {
        s.spawn(move || {
            let mut from = 0;
            for &end in &ends {
                if writer.write_all(&payload[from..end]).is_err() {
                    break; // moat closed on us (protocol error, limit): fine
                }
                from = end;
            }
            let _ = writer.shutdown(Shutdown::Write);
        });
        let mut chunk = [0u8; 16 << 10];
        loop {
            match conn.read(&mut chunk) {
                Ok(0) => return Ok(()),
                Ok(n) => replies.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    });
    // Closing with unread input makes the kernel send RST, which may cut off
    // what moat wrote last (its final protocol error, say).
    let mut reset = false;
    match read_result {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => reset = true,
        Err(e) => panic!(
            "no EOF from moat after the client's EOF ({e}); got {} reply bytes: {:?}",
            replies.len(),
            String::from_utf8_lossy(&replies[..replies.len().min(512)])
        ),
    }

    let mut framer = ReplyFramer::new(64);
    let mut pos = 0;
    while pos < replies.len() {
        match framer.next_frame(&replies[pos..]) {
            Ok(Some(frame)) => pos += frame.len,
            Ok(None) if reset => break,
            Ok(None) => panic!(
                "moat's output ends in a partial reply at {pos}: {:?}",
                String::from_utf8_lossy(&replies[pos..])
            ),
            Err(e) => panic!(
                "moat sent a malformed reply at {pos} ({e}): {:?}",
                String::from_utf8_lossy(&replies[pos.saturating_sub(64)..])
            ),
        }
    }
    if let Err(got) = ping(env.addr) {
        panic!("moat stopped answering PING: {got:?}");
    }
});
