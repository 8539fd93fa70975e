//! The TLS handshake on a non-blocking socket, on rustls's sans-IO API: wait for the socket,
//! feed rustls, write what it says, until the handshake is done or fails. The caller puts a
//! deadline around it.

use std::io;

use tokio::net::TcpStream;

use super::stream::Socket;

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeError {
    /// The peer closed before the handshake was done.
    #[error("closed during the TLS handshake")]
    Closed,
    /// The peer's messages were refused (not TLS, bad certificate, no common version...).
    #[error("{0}")]
    Tls(#[from] rustls::Error),
    /// The socket failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Runs `conn`'s handshake over `tcp`. On a TLS error rustls's alert is sent (best effort)
/// so the peer learns why.
pub(crate) async fn run(
    tcp: &TcpStream,
    conn: &mut rustls::Connection,
) -> Result<(), HandshakeError> {
    loop {
        while conn.wants_write() {
            match conn.write_tls(&mut Socket(tcp)) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => tcp.writable().await?,
                Err(e) => return Err(e.into()),
            }
        }
        if !conn.is_handshaking() {
            return Ok(());
        }
        tcp.readable().await?;
        match conn.read_tls(&mut Socket(tcp)) {
            Ok(0) => return Err(HandshakeError::Closed),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.into()),
        }
        if let Err(e) = conn.process_new_packets() {
            while conn.wants_write() {
                if conn.write_tls(&mut Socket(tcp)).is_err() {
                    break;
                }
            }
            return Err(e.into());
        }
    }
}
