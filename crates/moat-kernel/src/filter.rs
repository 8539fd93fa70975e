//! Attaches a [`crate::bpf`] program to listening sockets (`SO_ATTACH_FILTER`, no privilege).
//!
//! Attaching again replaces the program at once; connections already accepted keep the
//! program they inherited at accept time. All safe code through socket2.

use std::io;
use std::os::fd::AsFd;

use socket2::SockRef;

use crate::bpf::{MAX_INSNS, Program};

/// Why a filter could not be attached or detached.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// The program is empty or longer than the kernel accepts.
    #[error("the socket filter has {len} instructions; 1 to {max} are allowed")]
    Size {
        /// Its length.
        len: usize,
        /// The kernel's limit.
        max: usize,
    },
    /// The kernel refused the program (`ENOMEM`: `net.core.optmem_max` too small for it;
    /// `EINVAL`: rejected by the checker; `ENOTSOCK`...).
    #[error("cannot attach the socket filter: {0}")]
    Attach(#[source] io::Error),
    /// The kernel refused to remove it.
    #[error("cannot detach the socket filter: {0}")]
    Detach(#[source] io::Error),
}

impl FilterError {
    /// Whether a shorter program might attach where this one did not (`ENOMEM`: the
    /// program's memory exceeds `net.core.optmem_max`).
    pub fn may_fit_smaller(&self) -> bool {
        matches!(self, FilterError::Attach(e) if e.raw_os_error() == Some(12))
    }
}

/// Attaches `program` to `socket`, replacing any filter it had.
pub fn attach(socket: &impl AsFd, program: &Program) -> Result<(), FilterError> {
    let len = program.insns().len();
    if len == 0 || len > MAX_INSNS {
        return Err(FilterError::Size {
            len,
            max: MAX_INSNS,
        });
    }
    SockRef::from(socket)
        .attach_filter(&program.sock_filters())
        .map_err(FilterError::Attach)
}

/// Removes `socket`'s filter; a socket without one is fine.
pub fn detach(socket: &impl AsFd) -> Result<(), FilterError> {
    match SockRef::from(socket).detach_filter() {
        Ok(()) => Ok(()),
        // ENOENT: there was none.
        Err(e) if e.raw_os_error() == Some(2) => Ok(()),
        Err(e) => Err(FilterError::Detach(e)),
    }
}

/// Attaches `program` to every socket of `sockets`; stops at the first error (the sockets
/// before it have the new program, the others keep their previous one).
pub fn attach_all<'a, S: AsFd + 'a>(
    sockets: impl IntoIterator<Item = &'a S>,
    program: &Program,
) -> Result<(), FilterError> {
    sockets.into_iter().try_for_each(|s| attach(s, program))
}

/// Removes the filter of every socket of `sockets`; stops at the first error.
pub fn detach_all<'a, S: AsFd + 'a>(
    sockets: impl IntoIterator<Item = &'a S>,
) -> Result<(), FilterError> {
    sockets.into_iter().try_for_each(|s| detach(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf;
    use std::net::{TcpListener, UdpSocket};

    #[test]
    fn attaches_replaces_and_detaches_on_a_listener() -> Result<(), Box<dyn std::error::Error>> {
        let l = TcpListener::bind("127.0.0.1:0")?;
        detach(&l)?;
        let p = bpf::build(&["10.0.0.0/8".parse()?], &[]);
        attach(&l, &p)?;
        let big: Vec<ipnet::IpNet> = (0..5000u32)
            .map(|i| ipnet::IpNet::from(std::net::IpAddr::from(std::net::Ipv4Addr::from(i * 2))))
            .collect();
        let q = bpf::build(&big, &[]);
        attach(&l, &q)?;
        detach(&l)?;
        detach(&l)?;
        Ok(())
    }

    /// Whether a connect from the loopback address to `l` completes within a second (a
    /// dropped SYN is retried after 1 s, so the connect times out).
    fn connects(l: &TcpListener) -> Result<bool, Box<dyn std::error::Error>> {
        let to = l.local_addr()?;
        let s = socket2::Socket::new(
            socket2::Domain::for_address(to),
            socket2::Type::STREAM,
            None,
        )?;
        match s.connect_timeout(&to.into(), std::time::Duration::from_millis(900)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The kernel runs the program on the SYN with the IP header at `SKF_NET_OFF`: a
    /// program dropping the loopback source stops the handshake, for both families, and
    /// one dropping other networks does not.
    #[test]
    fn the_kernel_drops_the_listed_source_for_ipv4_and_ipv6()
    -> Result<(), Box<dyn std::error::Error>> {
        let net = |s: &str| s.parse::<ipnet::IpNet>();
        for (addr, own, other) in [
            ("127.0.0.1:0", "127.0.0.1/32", "10.0.0.0/8"),
            ("[::1]:0", "::1/128", "2001:db8::/32"),
        ] {
            let Ok(l) = TcpListener::bind(addr) else {
                eprintln!("skipped {addr}: cannot bind");
                continue;
            };
            attach(&l, &bpf::build_inner(&[net(other)?], &[], MAX_INSNS, false))?;
            assert!(connects(&l)?, "{addr}: dropped by a rule for {other}");
            attach(
                &l,
                &bpf::build_inner(&[net(other)?, net(own)?], &[], MAX_INSNS, false),
            )?;
            assert!(!connects(&l)?, "{addr}: not dropped by a rule for {own}");
            // Kept first: the same rule with the address kept lets it in.
            attach(
                &l,
                &bpf::build_inner(&[net(own)?], &[net(own)?], MAX_INSNS, false),
            )?;
            assert!(connects(&l)?, "{addr}: kept address dropped");
            detach(&l)?;
            assert!(connects(&l)?, "{addr}: still dropped after detach");
        }
        Ok(())
    }

    #[test]
    fn a_socket_that_is_not_one_is_an_error_not_a_panic() -> Result<(), Box<dyn std::error::Error>>
    {
        let file = std::fs::File::open("/proc/self/stat")?;
        let p = bpf::build(&[], &[]);
        assert!(matches!(attach(&file, &p), Err(FilterError::Attach(_))));
        // A UDP socket takes the same program (it only ever returns accept or drop).
        let u = UdpSocket::bind("127.0.0.1:0")?;
        attach(&u, &p)?;
        Ok(())
    }
}
