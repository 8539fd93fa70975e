//! Shared helpers for moat-proxy's integration tests: a real redis-server with moat in
//! front of it, and raw RESP clients for byte-exact checks.
#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use moat_proxy::{Config, RunningProxy};

pub mod conn;
pub mod rss;
use moat_testkit::RedisServer;

/// A redis-server and a moat proxy in front of it; both stop on drop.
pub struct Stack {
    pub moat: RunningProxy,
    pub redis: RedisServer,
}

impl Stack {
    /// Redis with default settings, moat with default settings on an ephemeral port.
    pub fn start() -> Stack {
        Self::with(RedisServer::builder(), |_| {})
    }

    /// Custom Redis and moat configs (moat's listen and backend addresses are filled in).
    pub fn with(redis: moat_testkit::RedisServerBuilder, tweak: impl FnOnce(&mut Config)) -> Stack {
        let redis = redis.start().expect("redis-server starts");
        let moat = start_moat(redis.addr(), tweak);
        Stack { moat, redis }
    }

    pub fn addr(&self) -> SocketAddr {
        self.moat.local_addr()
    }

    /// Connections Redis holds, minus the testkit's own INFO connection.
    pub fn redis_clients(&self) -> u64 {
        self.redis
            .connected_clients()
            .expect("INFO")
            .saturating_sub(1)
    }
}

/// Starts moat in front of `backend` on an ephemeral loopback port.
pub fn start_moat(backend: SocketAddr, tweak: impl FnOnce(&mut Config)) -> RunningProxy {
    let mut config = Config::default();
    config.proxy.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.backend.address = backend;
    // The tests read moat's own refusal lines for banned and denied sources; with the
    // kernel filter those SYNs are dropped instead (tests/kernel_filter.rs turns it on).
    config.kernel.socket_filter = false;
    tweak(&mut config);
    moat_proxy::start(config).expect("moat starts")
}

/// A blocking raw RESP client: writes bytes, reads whole replies.
pub struct Raw {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        Raw {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Sends one command as a RESP array.
    pub fn cmd(&mut self, args: &[&[u8]]) -> Vec<u8> {
        self.send(&command(args));
        self.reply()
    }

    /// Sends an inline command line (`PING\r\n`) and reads one reply.
    pub fn inline(&mut self, line: &str) -> Vec<u8> {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// Reads one complete reply (raw bytes).
    pub fn reply(&mut self) -> Vec<u8> {
        loop {
            if let Some((_, used)) =
                moat_protocol::Value::decode(&self.buf, 64).expect("well-formed reply")
            {
                return self.buf.drain(..used).collect();
            }
            let mut chunk = [0u8; 65536];
            let n = self.stream.read(&mut chunk).expect("read");
            assert!(
                n > 0,
                "connection closed while waiting for a reply; buffered {:?}",
                String::from_utf8_lossy(&self.buf)
            );
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// True when the peer closed the connection (after reading anything left).
    pub fn is_closed(&mut self) -> bool {
        let mut chunk = [0u8; 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

/// A command as a RESP array of bulk strings.
pub fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A RESP bulk string.
pub fn bulk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("${}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

/// Bytes as printable text for failure messages, cut after 300 characters.
pub fn shown(bytes: &[u8]) -> String {
    let text = bytes.escape_ascii().to_string();
    if text.len() > 300 {
        format!("{}... ({} bytes)", &text[..300], bytes.len())
    } else {
        text
    }
}
