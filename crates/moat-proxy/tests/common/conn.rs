//! A blocking RESP client bound to a chosen source address, whose every wait is bounded:
//! a hang fails the test instead.
//!
//! Different client addresses are played by binding the socket to 127.x.y.z before
//! connecting (any loopback address works).
#![allow(clippy::unwrap_used)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockRef, Socket, Type};

use super::{command, shown};

/// Longest wait for a connect, a write, one reply or one close.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(20);

/// `ECHO sentinel`, sent after a case to show the connection still works.
pub const ECHO_SENTINEL: &[u8] = b"ECHO sentinel\r\n";
/// The reply to [`ECHO_SENTINEL`].
pub const SENTINEL: &[u8] = b"$8\r\nsentinel\r\n";

/// A blocking RESP client bound to a chosen source address.
pub struct Conn {
    /// The socket, for tests that shut it down, clone it or read it themselves.
    pub stream: TcpStream,
    /// Bytes received but not yet returned as replies.
    pub buf: Vec<u8>,
}

impl Conn {
    /// Connects to `to` from 127.0.0.1 (trusted by the guard by default).
    pub fn connect(to: SocketAddr) -> Conn {
        Conn::from([127, 0, 0, 1], to)
    }

    /// Connects to `to` from `src` (any 127.x.y.z works on loopback).
    pub fn from(src: [u8; 4], to: SocketAddr) -> Conn {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
        socket.bind(&SocketAddr::from((src, 0)).into()).unwrap();
        socket
            .connect_timeout(&to.into(), REPLY_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect from {src:?} to {to}: {e}"));
        let stream: TcpStream = socket.into();
        stream.set_nodelay(true).unwrap();
        stream.set_write_timeout(Some(REPLY_TIMEOUT)).unwrap();
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Writes `bytes`, failing the test (with the bytes) if the write fails or times out.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("write of {}: {e}", shown(bytes)));
    }

    /// Sends one command as a RESP array and reads its reply.
    pub fn call(&mut self, args: &[&str]) -> Vec<u8> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.call_bytes(&args)
    }

    /// [`Conn::call`] with binary arguments.
    pub fn call_bytes(&mut self, args: &[&[u8]]) -> Vec<u8> {
        self.send(&command(args));
        self.reply()
    }

    /// Reads one reply, failing the test if none arrives within [`REPLY_TIMEOUT`].
    pub fn reply(&mut self) -> Vec<u8> {
        match self.reply_within(REPLY_TIMEOUT) {
            Some(r) => r,
            None => panic!(
                "no reply within {REPLY_TIMEOUT:?}; buffered {}",
                shown(&self.buf)
            ),
        }
    }

    /// Reads `n` replies, each within [`REPLY_TIMEOUT`].
    pub fn replies(&mut self, n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|_| self.reply()).collect()
    }

    /// One reply if it arrives within `limit`, else `None` (nothing consumed); panics if
    /// the connection closes first.
    pub fn reply_within(&mut self, limit: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some((_, used)) = moat_protocol::Value::decode(&self.buf, 64)
                .unwrap_or_else(|e| panic!("malformed reply {}: {e}", shown(&self.buf)))
            {
                return Some(self.buf.drain(..used).collect());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!(
                    "connection closed while waiting for a reply; buffered {}",
                    shown(&self.buf)
                ),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return None;
                }
                Err(e) => panic!("read: {e}; buffered {}", shown(&self.buf)),
            }
        }
    }

    /// Asserts that nothing at all arrives for `d` (no stray frame leaked to this client).
    pub fn assert_quiet(&mut self, d: Duration, what: &str) {
        if let Some(r) = self.reply_within(d) {
            panic!("{what}: unexpected frame {}", shown(&r));
        }
        assert!(
            self.buf.is_empty(),
            "{what}: stray bytes {}",
            shown(&self.buf)
        );
    }

    /// Reads until the peer closes, within `limit`: every byte received (buffered ones
    /// included), or `None` if the connection is still open at the deadline.
    pub fn read_to_eof(&mut self, limit: Duration) -> Option<Vec<u8>> {
        let buf = &mut self.buf;
        let closed = read_until_eof(&mut self.stream, limit, &mut [0u8; 65536], |bytes| {
            buf.extend_from_slice(bytes);
        });
        closed.then(|| std::mem::take(&mut self.buf))
    }

    /// Like [`Conn::read_to_eof`] but only counts the bytes (buffered ones included), for
    /// streams too large to keep.
    pub fn read_until_closed(&mut self, limit: Duration) -> Option<usize> {
        let mut total = std::mem::take(&mut self.buf).len();
        let closed = read_until_eof(&mut self.stream, limit, &mut vec![0u8; 1 << 20], |bytes| {
            total += bytes.len();
        });
        closed.then_some(total)
    }

    /// Asserts the peer sends exactly `want` and then closes, within [`REPLY_TIMEOUT`].
    pub fn expect_close(&mut self, want: &[u8], what: &str) {
        match self.read_to_eof(REPLY_TIMEOUT) {
            Some(got) => assert_eq!(shown(&got), shown(want), "{what}: bytes before the close"),
            None => panic!(
                "{what}: still open after {REPLY_TIMEOUT:?} (received {})",
                shown(&self.buf)
            ),
        }
    }

    /// Asserts the peer closes without sending anything, within [`REPLY_TIMEOUT`].
    pub fn expect_silent_close(&mut self, what: &str) {
        self.expect_close(b"", what);
    }

    /// Asserts that the connection stays open and silent for `d`.
    pub fn expect_open(&mut self, d: Duration, what: &str) {
        if let Some(bytes) = self.read_to_eof(d) {
            panic!("{what}: closed by moat (after sending {})", shown(&bytes));
        }
        assert!(
            self.buf.is_empty(),
            "{what}: stray bytes {}",
            shown(&self.buf)
        );
    }

    /// Asserts the connection still works and nothing unexpected is pending: an `ECHO`
    /// gets its answer as the very next reply.
    pub fn expect_working(&mut self, what: &str) {
        self.expect_working_with((ECHO_SENTINEL, SENTINEL), what);
    }

    /// [`Conn::expect_working`] with another request and its reply (`AUTH` before the
    /// client authenticated).
    pub fn expect_working_with(&mut self, (request, reply): (&[u8], &[u8]), what: &str) {
        if let Err(e) = self.stream.write_all(request) {
            panic!("{what}: connection no longer writable: {e}");
        }
        let r = self.reply();
        assert_eq!(shown(&r), shown(reply), "{what}: next reply after the case");
    }

    /// Sends a PING: true if the connection turns out closed (EOF, reset or a failed
    /// write), false if it answered; panics on any reply other than `expect`.
    pub fn ping_until_closed(&mut self, expect: &[u8]) -> bool {
        if self.stream.write_all(&command(&[b"PING"])).is_err() {
            return true;
        }
        let mut chunk = [0u8; 4096];
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            if let Some((_, used)) = moat_protocol::Value::decode(&self.buf, 64).unwrap() {
                let reply: Vec<u8> = self.buf.drain(..used).collect();
                assert_eq!(shown(&reply), shown(expect), "reply to PING");
                return false;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no reply to PING within {REPLY_TIMEOUT:?}");
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) =>
                {
                    return true;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// Drops the connection with a RST instead of a FIN, as a crashed client would.
    pub fn abort(self) {
        SockRef::from(&self.stream)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(self.stream);
    }
}

/// Reads `stream` in `chunk`-sized pieces, handing each to `sink`, until the peer closes
/// (EOF or a reset: true) or `limit` passes (false).
fn read_until_eof(
    stream: &mut TcpStream,
    limit: Duration,
    chunk: &mut [u8],
    mut sink: impl FnMut(&[u8]),
) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match stream.read(chunk) {
            Ok(0) => return true,
            Ok(n) => sink(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false;
            }
            Err(e) => panic!("read: {e}"),
        }
    }
}
