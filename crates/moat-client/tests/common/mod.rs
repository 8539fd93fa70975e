//! What the integration tests share: a client tuned for quick tests, a hoard that fills
//! `maxclients`, and bounded waits.

#![allow(dead_code, unreachable_pub)]

use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moat_client::{BreakerSettings, Client, ClientBuilder, Transition};
use moat_testkit::RedisServer;

/// A builder for `server` with short timeouts, so faults show within a test's patience.
pub fn builder(server: &RedisServer) -> ClientBuilder {
    Client::builder(format!("redis://{}/", server.addr()))
        .command_timeout(Duration::from_millis(500))
        .connect_timeout(Duration::from_millis(300))
        .pool_wait_timeout(Duration::from_millis(200))
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(400))
        .breaker(BreakerSettings {
            consecutive_failures: 3,
            open_for: Duration::from_millis(300),
            probes: 1,
            ..BreakerSettings::default()
        })
}

/// Transitions the breaker reported, in order.
pub fn transitions(b: ClientBuilder) -> (ClientBuilder, Arc<Mutex<Vec<Transition>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let b = b.on_breaker_transition(move |t| s.lock().expect("not poisoned").push(t));
    (b, seen)
}

/// Runs `PING` through the client until it succeeds, at most `limit` long (bounded: 400
/// tries). Returns whether it did.
pub async fn until_ok(client: &Client, limit: Duration) -> bool {
    let start = Instant::now();
    for _ in 0..400 {
        if client.query::<String>(&redis::cmd("PING")).await.is_ok() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

/// Connections held open and idle, as an attacker hoarding `maxclients` does.
pub struct Hoard(Vec<TcpStream>);

impl Hoard {
    /// Opens `n` connections to `addr` and waits until a new one is refused with
    /// `max number of clients reached` (bounded).
    pub fn fill(server: &RedisServer, n: usize) -> Hoard {
        let addr: SocketAddr = server.addr();
        let held: Vec<_> = (0..n)
            .map(|_| TcpStream::connect(addr).expect("hoard connect"))
            .collect();
        for _ in 0..100 {
            let reply = server.command(&["PING"]).unwrap_or_default();
            if reply.starts_with(b"-ERR max number of clients reached") {
                return Hoard(held);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the hoard of {n} did not fill maxclients");
    }

    /// Lets the connections go.
    pub fn release(self) {
        drop(self.0);
    }
}

/// Reads an integer key straight from the server (not through the client under test).
pub fn read_int(server: &RedisServer, key: &str) -> i64 {
    let reply = server.command(&["GET", key]).expect("GET");
    let text = String::from_utf8_lossy(&reply);
    // `$1\r\n5\r\n`, or `$-1\r\n` when missing.
    text.lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0)
}
