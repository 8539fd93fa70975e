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
