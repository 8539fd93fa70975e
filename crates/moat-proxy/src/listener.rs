//! Listening sockets: one per worker on the same address (`SO_REUSEPORT`), so the kernel
//! spreads new connections across workers without a shared accept lock.

use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

use crate::StartError;

/// Binds `workers` listening sockets on `addr`; when `addr` has port 0 the first socket picks
/// the port and the others join it.
pub(crate) fn bind(
    addr: SocketAddr,
    workers: usize,
    backlog: u32,
) -> Result<Vec<std::net::TcpListener>, StartError> {
    let mut listeners = Vec::with_capacity(workers);
    let mut target = addr;
    for _ in 0..workers {
        let listener =
            bind_one(target, workers > 1, backlog).map_err(|source| StartError::Listen {
                addr: target,
                source,
            })?;
        if let Ok(bound) = listener.local_addr() {
            target = bound;
        }
        listeners.push(listener);
    }
    Ok(listeners)
}

fn bind_one(
    addr: SocketAddr,
    reuse_port: bool,
    backlog: u32,
) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    // Only with several workers: otherwise a second moat started by mistake on the same port
    // would silently share its connections instead of failing to bind.
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket.into())
}
