//! An in-memory, single-threaded byte pipe with the readiness behaviour of a socket:
//! bounded buffers (a full one makes the writer wait), end of stream after the peer's
//! shutdown, and a broken pipe once the peer is gone. Used to run sessions and backend
//! connections without the kernel, so a fuzzer drives moat at parser speed.
//!
//! Hand-written: `tokio::io::duplex` offers only `AsyncRead`/`AsyncWrite`, while moat's data
//! path polls readiness and then reads or writes without waiting (`try_read`/`try_write`).

use std::cell::RefCell;
use std::io;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, BufMut, BytesMut};

/// One direction of a pipe.
#[derive(Debug)]
struct Direction {
    bytes: BytesMut,
    capacity: usize,
    /// The writing end shut down or was dropped: the reader sees the end of the stream.
    write_closed: bool,
    /// The reading end was dropped: writes fail.
    read_closed: bool,
    reader: Option<Waker>,
    writer: Option<Waker>,
}

impl Direction {
    fn new(capacity: usize) -> Rc<RefCell<Self>> {
        Rc::new(RefCell::new(Self {
            bytes: BytesMut::new(),
            capacity: capacity.max(1),
            write_closed: false,
            read_closed: false,
            reader: None,
            writer: None,
        }))
    }

    fn wake_reader(&mut self) {
        if let Some(w) = self.reader.take() {
            w.wake();
        }
    }

    fn wake_writer(&mut self) {
        if let Some(w) = self.writer.take() {
            w.wake();
        }
    }
}

/// One end of an in-memory pipe.
#[derive(Debug)]
pub struct Pipe {
    rx: Rc<RefCell<Direction>>,
    tx: Rc<RefCell<Direction>>,
}

/// Two connected ends; each direction buffers at most `capacity` bytes.
pub fn pair(capacity: usize) -> (Pipe, Pipe) {
    let a_to_b = Direction::new(capacity);
    let b_to_a = Direction::new(capacity);
    (
        Pipe {
            rx: b_to_a.clone(),
            tx: a_to_b.clone(),
        },
        Pipe {
            rx: a_to_b,
            tx: b_to_a,
        },
    )
}

fn store(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

impl Pipe {
    /// Ready when there are bytes to read or the peer shut down its side.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut rx = self.rx.borrow_mut();
        if !rx.bytes.is_empty() || rx.write_closed {
            return Poll::Ready(Ok(()));
        }
        store(&mut rx.reader, cx);
        Poll::Pending
    }

    /// Ready when the peer's buffer has room, or when writing would fail.
    pub fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut tx = self.tx.borrow_mut();
        if tx.read_closed || tx.write_closed || tx.bytes.len() < tx.capacity {
            return Poll::Ready(Ok(()));
        }
        store(&mut tx.writer, cx);
        Poll::Pending
    }

    /// Reads what is buffered; 0 at the end of the stream, `WouldBlock` when empty.
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut rx = self.rx.borrow_mut();
        if rx.bytes.is_empty() {
            return if rx.write_closed || buf.is_empty() {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        let n = buf.len().min(rx.bytes.len());
        buf[..n].copy_from_slice(&rx.bytes[..n]);
        rx.bytes.advance(n);
        rx.wake_writer();
        Ok(n)
    }

    /// Like [`Pipe::try_read`], appending to `buf`'s spare capacity.
    pub fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
        let mut rx = self.rx.borrow_mut();
        if rx.bytes.is_empty() {
            return if rx.write_closed || buf.remaining_mut() == 0 {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        let n = (buf.capacity() - buf.len()).min(rx.bytes.len());
        buf.extend_from_slice(&rx.bytes[..n]);
        rx.bytes.advance(n);
        rx.wake_writer();
        Ok(n)
    }

    /// Buffers as much of `data` as fits; `WouldBlock` when nothing does.
    pub fn try_write(&self, data: &[u8]) -> io::Result<usize> {
        let mut tx = self.tx.borrow_mut();
        if tx.read_closed {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        if tx.write_closed {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after shutdown",
            ));
        }
        let n = data.len().min(tx.capacity - tx.bytes.len());
        if n == 0 && !data.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        tx.bytes.extend_from_slice(&data[..n]);
        tx.wake_reader();
        Ok(n)
    }

    /// Closes the writing side: the peer reads what is buffered, then the end of the stream.
    pub fn shutdown_write(&self) {
        let mut tx = self.tx.borrow_mut();
        tx.write_closed = true;
        tx.wake_reader();
    }

    /// True once the peer shut down its writing side and everything it sent was read.
    pub fn at_eof(&self) -> bool {
        let rx = self.rx.borrow();
        rx.write_closed && rx.bytes.is_empty()
    }

    /// True once the peer has read everything written to it (or is gone).
    pub fn drained(&self) -> bool {
        let tx = self.tx.borrow();
        tx.bytes.is_empty() || tx.read_closed
    }

    /// Ready when [`Pipe::drained`] is true.
    pub fn poll_drained(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut tx = self.tx.borrow_mut();
        if tx.bytes.is_empty() || tx.read_closed {
            return Poll::Ready(());
        }
        store(&mut tx.writer, cx);
        Poll::Pending
    }

    /// Waits until [`Pipe::poll_read_ready`] is ready.
    pub async fn readable(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_read_ready(cx)).await
    }

    /// Waits until [`Pipe::poll_write_ready`] is ready.
    pub async fn writable(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_write_ready(cx)).await
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        let mut tx = self.tx.borrow_mut();
        tx.write_closed = true;
        tx.wake_reader();
        drop(tx);
        let mut rx = self.rx.borrow_mut();
        rx.read_closed = true;
        rx.bytes.clear();
        rx.wake_writer();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_flow_both_ways_with_end_of_stream() {
        let (a, b) = pair(8);
        assert_eq!(a.try_write(b"hello").unwrap(), 5);
        let mut buf = [0u8; 16];
        assert_eq!(b.try_read(&mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"hello");
        assert_eq!(
            b.try_read(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        b.try_write(b"x").unwrap();
        a.shutdown_write();
        assert_eq!(b.try_read(&mut buf).unwrap(), 0);
        assert!(b.at_eof());
        assert_eq!(a.try_read(&mut buf).unwrap(), 1);
    }

    #[test]
    fn a_full_pipe_blocks_the_writer_and_a_dropped_peer_breaks_it() {
        let (a, b) = pair(4);
        assert_eq!(a.try_write(b"123456").unwrap(), 4);
        assert_eq!(
            a.try_write(b"7").unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        let mut buf = BytesMut::with_capacity(2);
        assert_eq!(b.try_read_buf(&mut buf).unwrap(), 2);
        assert_eq!(&buf[..], b"12");
        assert_eq!(a.try_write(b"78").unwrap(), 2);
        drop(b);
        assert_eq!(
            a.try_write(b"9").unwrap_err().kind(),
            io::ErrorKind::BrokenPipe
        );
        let mut one = [0u8; 1];
        assert_eq!(
            a.try_read(&mut one).unwrap(),
            0,
            "the dropped peer's side ends"
        );
    }
}
