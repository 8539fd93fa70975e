//! A connection flood for benchmarks: opens and immediately resets TCP connections to a
//! loopback target from many 127.x source addresses, for a fixed time, and reports how many
//! it managed. Used by `bench/flood.sh`; the `moat attack` command will supersede it.
//!
//! Usage: `flood TARGET SECONDS THREADS [SOURCES] [MODE]` (TARGET must be loopback). MODE
//! `connect` (the default) completes each handshake; `syn` only sends the SYN (a
//! non-blocking connect, then close), counting attempts: the flood a kernel filter meets.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: flood TARGET SECONDS THREADS [SOURCES] [connect|syn]";
    let target: SocketAddr = args.get(1).and_then(|a| a.parse().ok()).expect(usage);
    assert!(
        target.ip().is_loopback(),
        "flood only targets loopback addresses"
    );
    let seconds: u64 = args.get(2).and_then(|a| a.parse().ok()).expect(usage);
    let threads: usize = args.get(3).and_then(|a| a.parse().ok()).expect(usage);
    let sources: u32 = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(64);
    let syn_only = args.get(5).is_some_and(|m| m == "syn");
    let connected = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(seconds);
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (connected, failed) = (connected.clone(), failed.clone());
            std::thread::spawn(move || {
                let mut i = t as u32;
                while Instant::now() < end {
                    // Sources 127.1.0.1 .. 127.1.0.N, rotated so no one source runs out of ports.
                    let source = Ipv4Addr::from(0x7f01_0001 + (i % sources));
                    i = i.wrapping_add(threads as u32);
                    let attempt = if syn_only {
                        syn(source, target)
                    } else {
                        connect(source, target)
                    };
                    match attempt {
                        Ok(()) => connected.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    let ok = connected.load(Ordering::Relaxed);
    println!(
        "connections {} failed {} per_second {:.0}",
        ok,
        failed.load(Ordering::Relaxed),
        ok as f64 / seconds as f64
    );
}

/// One SYN: a non-blocking connect, closed at once (the kernel sends the SYN in connect).
fn syn(source: Ipv4Addr, target: SocketAddr) -> std::io::Result<()> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(IpAddr::V4(source), 0).into())?;
    socket.set_nonblocking(true)?;
    socket.set_linger(Some(Duration::ZERO))?;
    match socket.connect(&target.into()) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(115) => Ok(()),
        Err(e) => Err(e),
    }
}

/// One connection, reset on close (linger 0) so the client side keeps no TIME_WAIT state.
fn connect(source: Ipv4Addr, target: SocketAddr) -> std::io::Result<()> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(IpAddr::V4(source), 0).into())?;
    socket.set_linger(Some(Duration::ZERO))?;
    socket.connect_timeout(&target.into(), Duration::from_secs(1))?;
    Ok(())
}
