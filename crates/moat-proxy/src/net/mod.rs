//! The byte streams moat serves and opens: TCP sockets, TLS over TCP (`crate::tls`), and
//! with the `harness` feature
//! in-memory pipes, so a whole session can be driven without the kernel (fuzzing).
//!
//! An enum rather than a generic parameter: sessions, backend connections and the pinned
//! pool all hold streams, and making each of them generic would spread a type parameter
//! through the whole crate for a variant production never uses. Without the feature the
//! enum has one variant and every match compiles away.

#[cfg(feature = "harness")]
pub(crate) mod memory;

use std::io;
use std::net::SocketAddr;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// A connected byte stream.
#[derive(Debug)]
pub(crate) enum Stream {
    Tcp(TcpStream),
    /// Boxed: rustls's state is a few KB, and every plain session would carry the
    /// variant's size inline.
    Tls(Box<crate::tls::stream::TlsStream>),
    #[cfg(feature = "harness")]
    Memory(memory::Pipe),
}

impl From<TcpStream> for Stream {
    fn from(stream: TcpStream) -> Self {
        Stream::Tcp(stream)
    }
}

impl Stream {
    /// Ready to read (data, end of stream or an error).
    pub(crate) fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Tcp(s) => s.poll_read_ready(cx),
            Stream::Tls(s) => s.poll_read_ready(cx),
            #[cfg(feature = "harness")]
            Stream::Memory(p) => p.poll_read_ready(cx),
        }
    }

    /// Ready to take bytes (or to report an error).
    pub(crate) fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Tcp(s) => s.poll_write_ready(cx),
            Stream::Tls(s) => s.poll_write_ready(cx),
            #[cfg(feature = "harness")]
            Stream::Memory(p) => p.poll_write_ready(cx),
        }
    }

    /// Waits until the stream is readable.
    pub(crate) async fn readable(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_read_ready(cx)).await
    }

    /// Waits until the stream is writable.
    pub(crate) async fn writable(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_write_ready(cx)).await
    }

    /// Reads what is there without waiting (`WouldBlock` when nothing is).
    pub(crate) fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_read(buf),
            Stream::Tls(s) => s.try_read(buf),
            #[cfg(feature = "harness")]
            Stream::Memory(p) => p.try_read(buf),
        }
    }

    /// Like [`Stream::try_read`], appending to `buf`'s spare capacity.
    pub(crate) fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_read_buf(buf),
            Stream::Tls(s) => s.try_read_buf(buf),
            #[cfg(feature = "harness")]
            Stream::Memory(p) => p.try_read_buf(buf),
        }
    }

    /// Writes what the stream takes now (`WouldBlock` when it takes nothing).
    pub(crate) fn try_write(&self, data: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_write(data),
            Stream::Tls(s) => s.try_write(data),
            #[cfg(feature = "harness")]
            Stream::Memory(p) => p.try_write(data),
        }
    }

    /// Writes all of `data`, waiting whenever the stream is full.
    pub(crate) async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            self.writable().await?;
            match self.try_write(data) {
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads at least one byte into `buf`'s spare capacity, waiting if needed; 0 at the end
    /// of the stream.
    pub(crate) async fn read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
        loop {
            self.readable().await?;
            match self.try_read_buf(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                done => return done,
            }
        }
    }

    /// The socket's descriptor in moat's process (-1 for an in-memory pipe), shown by
    /// CLIENT LIST as `fd=`.
    pub(crate) fn fd(&self) -> i32 {
        match self {
            Stream::Tcp(s) => std::os::fd::AsRawFd::as_raw_fd(s),
            Stream::Tls(s) => std::os::fd::AsRawFd::as_raw_fd(s.tcp()),
            #[cfg(feature = "harness")]
            Stream::Memory(_) => -1,
        }
    }

    /// True for a stream that can wait as a dormant client (a plain TCP socket).
    pub(crate) fn may_go_dormant(&self) -> bool {
        matches!(self, Stream::Tcp(_))
    }

    /// The socket out of tokio's hands (a session going dormant). On failure the stream is
    /// gone (tokio closes a socket it could not deregister); only TCP streams leave.
    pub(crate) fn into_std(self) -> io::Result<std::net::TcpStream> {
        match self {
            Stream::Tcp(s) => s.into_std(),
            // A TLS session's state lives in rustls: it stays in its task.
            Stream::Tls(_) => Err(io::Error::other("a TLS stream does not go dormant")),
            #[cfg(feature = "harness")]
            Stream::Memory(_) => Err(io::Error::other("an in-memory stream is not a socket")),
        }
    }

    /// The local address of a TCP stream (what the client connected to).
    pub(crate) fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Stream::Tcp(s) => s.local_addr().ok(),
            Stream::Tls(s) => s.tcp().local_addr().ok(),
            #[cfg(feature = "harness")]
            Stream::Memory(_) => None,
        }
    }

    /// Marks the stream drained after a read of `read` bytes into a buffer of `room` bytes,
    /// which saves a system call per read.
    ///
    /// Tokio clears a socket's read readiness only when a read fails with `WouldBlock`, so a
    /// loop that reads once per wake-up pays a second, failing `recv` after every successful
    /// one: at one request per read, that is a third of moat's system calls. A read shorter
    /// than its buffer has drained the socket (TCP hands over everything queued), so moat
    /// clears the readiness itself; data arriving later raises a new edge and a new wake-up.
    pub(crate) fn after_read(&self, read: usize, room: usize) {
        match self {
            Stream::Tcp(s) if read < room => {
                // Tokio only clears readiness observed before this call, so an edge that
                // arrived since (new data) is never lost.
                let _ = s.try_io(Interest::READABLE, || {
                    Err::<(), _>(io::Error::from(io::ErrorKind::WouldBlock))
                });
            }
            _ => {}
        }
    }
}

/// Where moat's backend connections go.
#[derive(Clone)]
pub(crate) enum Connector {
    /// A Redis server at this address.
    Tcp(SocketAddr),
    /// The primary the Sentinels name, wherever it is now (`backend.sentinels`).
    Sentinel(std::sync::Arc<crate::sentinel::Primary>),
    /// A Redis server over TLS (`[backend.tls]`).
    Tls(std::sync::Arc<crate::tls::connect::BackendTls>),
    /// A server inside the process: each call hands it one end of a new pipe.
    #[cfg(feature = "harness")]
    Memory(std::rc::Rc<dyn Fn() -> memory::Pipe>),
}

impl Connector {
    /// Opens a connection (TCP_NODELAY: moat batches its writes itself).
    pub(crate) async fn connect(&self) -> io::Result<Stream> {
        match self {
            Connector::Tcp(addr) => {
                let stream = TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                Ok(Stream::Tcp(stream))
            }
            Connector::Sentinel(primary) => {
                let addr = primary.current().addr.ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::NotConnected,
                        format!(
                            "no primary known: no Sentinel named a verified one for '{}'",
                            primary.master_name
                        ),
                    )
                })?;
                let stream = TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                Ok(Stream::Tcp(stream))
            }
            Connector::Tls(tls) => tls.connect().await,
            #[cfg(feature = "harness")]
            Connector::Memory(open) => Ok(Stream::Memory(open())),
        }
    }
}

impl Connector {
    /// The followed primary, when the backend is found through Sentinels.
    pub(crate) fn primary(&self) -> Option<&std::sync::Arc<crate::sentinel::Primary>> {
        match self {
            Connector::Sentinel(p) => Some(p),
            _ => None,
        }
    }

    /// The primary's generation now (0 for a fixed address): a connection opened under an
    /// older one goes to a primary that was since replaced.
    pub(crate) fn generation(&self) -> u64 {
        self.primary().map_or(0, |p| p.current().generation)
    }

    /// Resolves once the primary is no longer the one of `generation` (never for a fixed
    /// address).
    pub(crate) async fn moved_from(&self, generation: u64) {
        match self.primary() {
            Some(p) => p.moved_from(generation).await,
            None => std::future::pending().await,
        }
    }
}

impl std::fmt::Display for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Connector::Tcp(addr) => write!(f, "{addr}"),
            Connector::Sentinel(p) => match p.current().addr {
                Some(addr) => write!(f, "{addr} (primary of '{}')", p.master_name),
                None => write!(f, "primary of '{}' (unknown)", p.master_name),
            },
            Connector::Tls(tls) => write!(f, "{} (TLS)", tls.address),
            #[cfg(feature = "harness")]
            Connector::Memory(_) => f.write_str("in-memory backend"),
        }
    }
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Connector({self})")
    }
}
