//! What the modes share: the context of a running attack, tickets that bound the count and
//! pace the rate, source addresses, and reading reply lines.

use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::{AttackSpec, Counters};
use crate::sources::{Group, Sources};

/// The longest reply line kept for counting; the rest of a longer line is skipped.
const MAX_LINE: usize = 512;

/// A running attack's shared context.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    pub(crate) target: SocketAddr,
    pub(crate) connect_timeout: Duration,
    /// Cancelled when time is up or the caller stops the attack.
    pub(crate) done: CancellationToken,
    pub(crate) counters: Arc<Counters>,
    sources: Sources,
}

impl Ctx {
    pub(crate) fn new(spec: &AttackSpec, done: CancellationToken, counters: Arc<Counters>) -> Self {
        Self {
            target: spec.target,
            connect_timeout: spec.connect_timeout,
            done,
            counters,
            sources: Sources::new(Group::Attack, spec.sources),
        }
    }

    /// The source address of the `i`-th connection, round robin over the sources.
    pub(crate) fn source(&self, i: u64) -> IpAddr {
        if self.target.is_ipv6() {
            // 127.x.y.z cannot reach an IPv6 target; ::1 is the only loopback source there.
            return IpAddr::V6(Ipv6Addr::LOCALHOST);
        }
        let n = u64::from(self.sources.count());
        self.sources.nth(u32::try_from(i % n).unwrap_or(0))
    }

    /// Counts an attempt and connects from the `i`-th source; `None` when the attack is
    /// over or the connect failed (counted).
    pub(crate) async fn connect(&self, i: u64) -> Option<TcpStream> {
        self.counters.attempt();
        let source = self.source(i);
        let result = tokio::select! {
            _ = self.done.cancelled() => return None,
            r = crate::connect::connect_from(source, self.target, self.connect_timeout) => r,
        };
        match result {
            Ok(stream) => {
                self.counters.connected();
                Some(stream)
            }
            Err(e) => {
                self.counters.io_error(&e);
                None
            }
        }
    }

    /// Sleeps `d` unless the attack ends first; false if it ended.
    pub(crate) async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            _ = self.done.cancelled() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }
}

/// Hands out numbered tickets up to a count and, with a rate, says when each may go.
#[derive(Debug)]
pub(crate) struct Tickets {
    issued: AtomicU64,
    count: u64,
    rate: Option<f64>,
    start: Instant,
}

impl Tickets {
    pub(crate) fn new(count: u64, rate: Option<f64>, start: Instant) -> Self {
        Self {
            issued: AtomicU64::new(0),
            count,
            rate,
            start,
        }
    }

    /// The next ticket and the instant it is due, or `None` once `count` are out.
    pub(crate) fn take(&self) -> Option<(u64, Option<Instant>)> {
        let ticket = self.issued.fetch_add(1, Relaxed);
        if ticket >= self.count {
            // Keep the counter from wrapping however many workers keep asking.
            self.issued.store(self.count, Relaxed);
            return None;
        }
        Some((ticket, self.rate.map(|r| due(self.start, ticket, r))))
    }
}

/// When ticket `n` is due at `rate` per second from `start`: evenly spaced, so a late
/// worker catches up instead of the rate drifting down.
pub(crate) fn due(start: Instant, n: u64, rate: f64) -> Instant {
    start + Duration::from_secs_f64(n as f64 / rate)
}

/// Waits until `at` (if any) unless the attack ends first; false if it ended.
pub(crate) async fn wait_due(ctx: &Ctx, at: Option<Instant>) -> bool {
    match at {
        None => !ctx.done.is_cancelled(),
        Some(at) => tokio::select! {
            _ = ctx.done.cancelled() => false,
            _ = tokio::time::sleep_until(at.into()) => true,
        },
    }
}

/// A RESP command as an array of bulk strings.
pub(crate) fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// What waiting for one reply line gave.
#[derive(Debug)]
pub(crate) enum Line {
    /// A line (without CRLF, at most [`MAX_LINE`] bytes kept).
    Got(Vec<u8>),
    /// The target closed the connection (EOF) before a whole line.
    Closed,
    /// Nothing within the timeout.
    Silent,
    /// A read error.
    Failed(io::Error),
}

/// Reads one line from `stream` within `timeout`. Bytes after the line are dropped: the
/// callers send one command and wait for its one-line reply.
pub(crate) async fn read_line(stream: &mut TcpStream, timeout: Duration) -> Line {
    let mut line = Vec::new();
    let read = async {
        let mut chunk = [0u8; 1024];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) => return Line::Closed,
                Ok(n) => {
                    let part = &chunk[..n];
                    if let Some(end) = part.iter().position(|&b| b == b'\n') {
                        extend_capped(&mut line, &part[..end]);
                        if line.last() == Some(&b'\r') {
                            line.pop();
                        }
                        return Line::Got(std::mem::take(&mut line));
                    }
                    extend_capped(&mut line, part);
                }
                Err(e) => return Line::Failed(e),
            }
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Line::Silent)
}

fn extend_capped(line: &mut Vec<u8>, bytes: &[u8]) {
    let room = MAX_LINE.saturating_sub(line.len());
    line.extend_from_slice(&bytes[..bytes.len().min(room)]);
}

/// Counts the error lines (`-...`) in a stream of replies the attack otherwise ignores,
/// keeping only the start of the current line between reads.
#[derive(Debug)]
pub(crate) struct ErrorLines {
    current: Vec<u8>,
    at_line_start: bool,
}

impl Default for ErrorLines {
    fn default() -> Self {
        Self {
            current: Vec::new(),
            at_line_start: true,
        }
    }
}

impl ErrorLines {
    pub(crate) fn feed(&mut self, bytes: &[u8], counters: &Counters) {
        for &b in bytes {
            if b == b'\n' {
                if self.current.first() == Some(&b'-') {
                    counters.reply(self.current.strip_suffix(b"\r").unwrap_or(&self.current));
                }
                self.current.clear();
                self.at_line_start = true;
                continue;
            }
            // Only error lines are kept, and only their start.
            if (self.at_line_start && b == b'-')
                || (self.current.first() == Some(&b'-') && self.current.len() < MAX_LINE)
            {
                self.current.push(b);
            }
            self.at_line_start = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_bound_the_count_and_space_the_rate() {
        let start = Instant::now();
        let t = Tickets::new(3, Some(10.0), start);
        let due: Vec<_> = std::iter::from_fn(|| t.take()).collect();
        assert_eq!(due.len(), 3);
        assert_eq!(due[2].1, Some(start + Duration::from_millis(200)));
        assert!(t.take().is_none());
        assert!(t.take().is_none());
        assert_eq!(Tickets::new(1, None, start).take(), Some((0, None)));
    }

    #[test]
    fn error_lines_are_counted_across_reads() {
        let c = Counters::new();
        let mut e = ErrorLines::default();
        e.feed(b"+PONG\r\n-ERR moat: ban", &c);
        e.feed(b"ned for 3s\r\n*3\r\n$9\r\nsubscribe\r\n-ERR x\r", &c);
        e.feed(b"\n", &c);
        let s = c.snapshot();
        assert_eq!(s.replies.get("ERR moat: banned for"), Some(&1));
        assert_eq!(s.replies.get("ERR x"), Some(&1));
        assert_eq!(s.replies.len(), 2);
    }
}
