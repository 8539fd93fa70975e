//! The operations legitimate clients send, on a connection from a chosen source address,
//! and the check of every reply: a wrong or error reply is a failure, named by its kind.

use std::net::{IpAddr, SocketAddr};

use moat_protocol::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::spec::{LegitSpec, OpMix};
use super::stats::{io_kind, kind, reply_kind};
use crate::connect::connect_from;

/// The largest reply a client buffers: values are small, so anything bigger is wrong.
const MAX_REPLY: usize = 1 << 20;
/// How deep a reply may nest: the workload's replies are flat.
const MAX_DEPTH: usize = 8;

/// One request of the workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    /// `PING`: must get `+PONG`.
    Ping,
    /// `GET key`: must get nil or a value written for that key.
    Get(u32),
    /// `SET key value`: must get `+OK`.
    Set(u32),
}

/// A small deterministic generator (splitmix64), so a run's operations are reproducible
/// from the client's number without a dependency.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u32) -> u32 {
        // n > 0 is checked by the callers; modulo bias is irrelevant here.
        (self.next_u64() % u64::from(n.max(1))) as u32
    }

    /// The next operation of `mix` over `keys` keys.
    pub(crate) fn op(&mut self, mix: OpMix, keys: u32) -> Op {
        let total = mix.get + mix.set + mix.ping;
        let pick = self.below(total);
        let key = self.below(keys);
        if pick < mix.get {
            Op::Get(key)
        } else if pick < mix.get + mix.set {
            Op::Set(key)
        } else {
            Op::Ping
        }
    }
}

/// The bytes of `args` as a RESP array.
fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The tag every value written for `key` starts with, so a GET can tell its own key's
/// value from anything else (a proxy that mixed replies up would show here).
fn value_tag(spec: &LegitSpec, key: u32) -> String {
    format!("legit:{}{key}:", spec.key_prefix)
}

impl Op {
    /// The request bytes.
    pub(crate) fn request(&self, spec: &LegitSpec) -> Vec<u8> {
        match *self {
            Op::Ping => encode(&[b"PING"]),
            Op::Get(k) => encode(&[b"GET", format!("{}{k}", spec.key_prefix).as_bytes()]),
            Op::Set(k) => {
                let mut value = value_tag(spec, k).into_bytes();
                if value.len() < spec.value_size {
                    value.resize(spec.value_size, b'x');
                }
                encode(&[b"SET", format!("{}{k}", spec.key_prefix).as_bytes(), &value])
            }
        }
    }

    /// Checks `reply`; `Err` holds the failure's kind.
    pub(crate) fn check(&self, spec: &LegitSpec, reply: &Value) -> Result<(), String> {
        if let Value::Error(line) = reply {
            return Err(reply_kind(line));
        }
        let right = match (self, reply) {
            (Op::Ping, Value::Simple(s)) => s == "PONG",
            (Op::Set(_), Value::Simple(s)) => s == "OK",
            (Op::Get(_), Value::Null) => true,
            (Op::Get(k), Value::Bulk(b)) => b.starts_with(value_tag(spec, *k).as_bytes()),
            _ => false,
        };
        if right {
            Ok(())
        } else {
            Err(kind::WRONG_REPLY.into())
        }
    }
}

/// A client connection: one request at a time, replies read whole.
#[derive(Debug)]
pub(crate) struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    /// Connects from `source` to `target` by `deadline`; `Err` holds the failure's kind.
    pub(crate) async fn open(
        source: IpAddr,
        target: SocketAddr,
        deadline: Instant,
    ) -> Result<Conn, String> {
        let left = deadline.saturating_duration_since(Instant::now());
        match connect_from(source, target, left).await {
            Ok(stream) => Ok(Conn {
                stream,
                buf: Vec::with_capacity(256),
            }),
            Err(e) => Err(io_kind(&e).into()),
        }
    }

    /// Sends `op` and checks its reply, by `deadline`; `Err` holds the failure's kind.
    pub(crate) async fn call(
        &mut self,
        spec: &LegitSpec,
        op: &Op,
        deadline: Instant,
    ) -> Result<(), String> {
        match tokio::time::timeout_at(deadline, self.exchange(spec, op)).await {
            Ok(result) => result,
            Err(_) => Err(kind::TIMEOUT.into()),
        }
    }

    async fn exchange(&mut self, spec: &LegitSpec, op: &Op) -> Result<(), String> {
        let request = op.request(spec);
        let written = self.stream.write_all(&request).await;
        // A server that refuses a client (max clients, moat's guard) writes one error line
        // and closes: our write may then fail, but the line is still there to read.
        let reply = self.read_reply().await;
        match (reply, written) {
            (Ok(value), _) => op.check(spec, &value),
            (Err(e), Err(w)) if e == kind::CLOSED => Err(io_kind(&w).into()),
            (Err(e), _) => Err(e),
        }
    }

    async fn read_reply(&mut self) -> Result<Value, String> {
        loop {
            match Value::decode(&self.buf, MAX_DEPTH) {
                Ok(Some((value, used))) => {
                    self.buf.drain(..used);
                    return Ok(value);
                }
                Ok(None) => {}
                Err(_) => return Err(kind::PROTOCOL.into()),
            }
            if self.buf.len() > MAX_REPLY {
                return Err(kind::WRONG_REPLY.into());
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) => return Err(kind::CLOSED.into()),
                Ok(_) => {}
                Err(e) => return Err(io_kind(&e).into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn replies_are_checked_against_the_request() {
        let spec = LegitSpec::new(SocketAddr::from(([127, 0, 0, 1], 1)));
        let ok = |op: Op, v: Value| op.check(&spec, &v);
        assert_eq!(ok(Op::Ping, Value::Simple("PONG".into())), Ok(()));
        assert_eq!(ok(Op::Set(3), Value::Simple("OK".into())), Ok(()));
        assert_eq!(ok(Op::Get(3), Value::Null), Ok(()));
        let mine = Bytes::from(format!("legit:{}3:xxx", spec.key_prefix));
        assert_eq!(ok(Op::Get(3), Value::Bulk(mine.clone())), Ok(()));
        assert_eq!(
            ok(Op::Get(4), Value::Bulk(mine)),
            Err(kind::WRONG_REPLY.into())
        );
        assert_eq!(
            ok(Op::Ping, Value::Simple("OK".into())),
            Err(kind::WRONG_REPLY.into())
        );
        assert_eq!(
            ok(
                Op::Ping,
                Value::Error("ERR max number of clients reached".into())
            ),
            Err("max_clients".into())
        );
    }

    #[test]
    fn the_mix_follows_its_weights() {
        let mut rng = Rng::new(7);
        let mix = OpMix {
            get: 1,
            set: 0,
            ping: 1,
        };
        let ops: Vec<Op> = (0..1000).map(|_| rng.op(mix, 10)).collect();
        assert!(!ops.iter().any(|o| matches!(o, Op::Set(_))));
        let pings = ops.iter().filter(|o| **o == Op::Ping).count();
        assert!((300..700).contains(&pings), "{pings}");
        assert!(ops.iter().all(|o| !matches!(o, Op::Get(k) if *k >= 10)));
    }
}
