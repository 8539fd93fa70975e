//! A TLS connection over a TCP socket with the readiness API of [`crate::net::Stream`]
//! (`poll_read_ready`, `try_read`, `try_write`), built on rustls's sans-IO connection.
//!
//! Why sans-IO rather than tokio-rustls: sessions and backend connections never hold an
//! `AsyncRead`; they wait for readiness and then read or write what is there, from a
//! per-thread scratch buffer. rustls's `Connection` fits that directly: `read_tls` and
//! `write_tls` take any `io::Read`/`io::Write`, here the socket's non-blocking `try_read`
//! and `try_write`, and decrypted bytes wait in rustls until asked for. One code path for
//! both sides and no extra crate.
//!
//! Two rules make readiness honest:
//! - Read readiness is immediate while rustls holds decrypted bytes (or the peer's
//!   close), since the socket may have nothing more to say.
//! - A write reports bytes written only once their ciphertext is in the kernel. When the
//!   socket takes only part of it, rustls keeps the rest, the write reports `WouldBlock`,
//!   and the caller (which keeps its buffer, as every caller of `try_write` does) offers
//!   the same bytes again once writable: they are then acknowledged without being
//!   encrypted twice. So a caller that sees its output written never leaves ciphertext
//!   stranded in rustls.

use std::cell::{Cell, RefCell};
use std::io::{self, Read, Write};
use std::task::{Context, Poll};

use tokio::net::TcpStream;

/// Most plaintext encrypted by one write: four full records, so rustls's pending
/// ciphertext stays small and a large reply goes out as the socket takes it.
const MAX_WRITE: usize = 64 << 10;

/// The socket as rustls's `io::Read`/`io::Write`: never blocks (`WouldBlock` instead).
pub(crate) struct Socket<'a>(pub(crate) &'a TcpStream);

impl Read for Socket<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for Socket<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A TLS connection (client or server side) after its handshake.
#[derive(Debug)]
pub(crate) struct TlsStream {
    tcp: TcpStream,
    conn: RefCell<rustls::Connection>,
    /// Plaintext bytes a write took whose ciphertext was not all in the kernel yet: the
    /// next write acknowledges them once it is (see the module's notes).
    unacked: Cell<usize>,
    /// The TLS layer failed (bad record, alert): every later read or write says so.
    failed: Cell<bool>,
}

fn tls_error(e: &rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("TLS error: {e}"))
}

impl TlsStream {
    /// Wraps a connection whose handshake is done.
    pub(crate) fn new(tcp: TcpStream, conn: rustls::Connection) -> Self {
        Self {
            tcp,
            conn: RefCell::new(conn),
            unacked: Cell::new(0),
            failed: Cell::new(false),
        }
    }

    /// The TCP socket underneath (addresses, descriptor).
    pub(crate) fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    fn check(&self) -> io::Result<()> {
        if self.failed.get() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS connection failed earlier",
            ));
        }
        Ok(())
    }

    /// Writes pending ciphertext to the socket; true when none is left.
    fn flush_tls(&self, conn: &mut rustls::Connection) -> io::Result<bool> {
        while conn.wants_write() {
            match conn.write_tls(&mut Socket(&self.tcp)) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Ready to read: decrypted bytes or the peer's close are waiting, or the socket is
    /// readable.
    pub(crate) fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.failed.get() {
            return Poll::Ready(Ok(()));
        }
        {
            let mut conn = self.conn.borrow_mut();
            match conn.process_new_packets() {
                Ok(state) if state.plaintext_bytes_to_read() > 0 || state.peer_has_closed() => {
                    return Poll::Ready(Ok(()));
                }
                Ok(_) => {}
                Err(_) => return Poll::Ready(Ok(())),
            }
        }
        self.tcp.poll_read_ready(cx)
    }

    /// Ready to take plaintext: nothing is waiting for the socket, or the socket is
    /// writable.
    pub(crate) fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.failed.get() || !self.conn.borrow().wants_write() {
            return Poll::Ready(Ok(()));
        }
        self.tcp.poll_write_ready(cx)
    }

    /// Reads decrypted bytes without waiting (`WouldBlock` when none are there); 0 at the
    /// end of the stream (the peer's close_notify, or its TCP close).
    pub(crate) fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.check()?;
        let mut conn = self.conn.borrow_mut();
        loop {
            match conn.reader().read(buf) {
                Ok(n) => {
                    // Answers the peer may be owed (a key update): best effort, the next
                    // write flushes the rest.
                    let _ = self.flush_tls(&mut conn);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // TCP closed without close_notify: RESP frames delimit themselves, so a
                // truncation is seen by the parser; treat it as the end.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            let eof = match conn.read_tls(&mut Socket(&self.tcp)) {
                Ok(n) => n == 0,
                Err(e) => return Err(e),
            };
            if let Err(e) = conn.process_new_packets() {
                self.failed.set(true);
                // Sends the alert rustls queued, so the peer learns why.
                let _ = self.flush_tls(&mut conn);
                return Err(tls_error(&e));
            }
            if eof {
                return match conn.reader().read(buf) {
                    Ok(n) => Ok(n),
                    Err(_) => Ok(0),
                };
            }
        }
    }

    /// Like [`TlsStream::try_read`], appending to `buf` (growing it when it has no room).
    pub(crate) fn try_read_buf(&self, buf: &mut bytes::BytesMut) -> io::Result<usize> {
        if buf.capacity() == buf.len() {
            buf.reserve(8 << 10);
        }
        let start = buf.len();
        let room = buf.capacity() - start;
        buf.resize(start + room, 0);
        let read = self.try_read(&mut buf[start..]);
        buf.truncate(start + *read.as_ref().unwrap_or(&0));
        read
    }

    /// Encrypts and writes what the socket takes now (see the module's notes on
    /// `WouldBlock`).
    pub(crate) fn try_write(&self, data: &[u8]) -> io::Result<usize> {
        self.check()?;
        let mut conn = self.conn.borrow_mut();
        if !self.flush_tls(&mut conn)? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let taken = self.unacked.replace(0);
        if taken > 0 {
            return Ok(taken.min(data.len()));
        }
        let n = conn.writer().write(&data[..data.len().min(MAX_WRITE)])?;
        if n == 0 && !data.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        if self.flush_tls(&mut conn)? {
            Ok(n)
        } else {
            self.unacked.set(n);
            Err(io::ErrorKind::WouldBlock.into())
        }
    }
}
