//! Socket readiness bookkeeping that saves a system call per read.
//!
//! Tokio clears a socket's read readiness only when a read fails with `WouldBlock`, so a
//! loop that reads once per wake-up pays a second, failing `recv` after every successful one:
//! at one request per read, that is a third of moat's system calls. A read shorter than its
//! buffer has drained the socket (TCP hands over everything queued), so moat clears the
//! readiness itself; data arriving later raises a new edge and a new wake-up.

use std::io;

use tokio::io::Interest;
use tokio::net::TcpStream;

/// Marks `stream` as drained after a read of `read` bytes into a buffer of `room` bytes.
pub(crate) fn after_read(stream: &TcpStream, read: usize, room: usize) {
    if read < room {
        // Tokio only clears readiness observed before this call, so an edge that arrived
        // since (new data) is never lost.
        let _ = stream.try_io(Interest::READABLE, || {
            Err::<(), _>(io::Error::from(io::ErrorKind::WouldBlock))
        });
    }
}
