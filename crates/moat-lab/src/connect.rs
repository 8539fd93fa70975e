//! Connecting from a chosen source address: bind 127.a.b.c, then connect, so the target sees
//! that address as the peer.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};

/// Connects to `target` from `source` (port chosen by the kernel), within `timeout`.
pub async fn connect_from(
    source: IpAddr,
    target: SocketAddr,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let socket = match source {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // Many short connections from one address leave TIME_WAIT sockets behind; reusing the
    // address lets new ones bind while they linger.
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::new(source, 0))?;
    let stream = tokio::time::timeout(timeout, socket.connect(target))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_peer_sees_the_source_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let target = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let source: IpAddr = "127.55.1.2".parse().unwrap_or_else(|e| panic!("{e}"));
        let (conn, accepted) = tokio::join!(
            connect_from(source, target, Duration::from_secs(5)),
            listener.accept()
        );
        assert!(conn.is_ok());
        let (_, peer) = accepted.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(peer.ip(), source);
    }
}
