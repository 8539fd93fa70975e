//! The point of moat: however many clients connect, hold connections open, or churn, Redis
//! only ever sees moat's small shared pool.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Stack, bulk, command};
use moat_testkit::RedisServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Clients held open at once.
const CLIENTS: usize = 1000;
/// One reply must arrive within this, or the test fails instead of hanging.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// A whole phase of the test must finish within this.
const PHASE_DEADLINE: Duration = Duration::from_secs(120);

/// Each client needs a socket on both sides of moat (both in this process): make sure the
/// soft descriptor limit allows it even where it defaults to 1024.
fn raise_fd_limit() {
    const WANT: u64 = 16_384;
    let (soft, hard) = rlimit::Resource::NOFILE.get().expect("getrlimit");
    if soft < WANT {
        let new = WANT.min(hard);
        rlimit::Resource::NOFILE
            .set(new, hard)
            .expect("raise the soft descriptor limit");
    }
    let (soft, _) = rlimit::Resource::NOFILE.get().expect("getrlimit");
    assert!(
        soft >= 4 * CLIENTS as u64 + 256,
        "descriptor limit {soft} too low for {CLIENTS} clients through an in-process proxy"
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A raw async client: writes requests, reads whole raw replies.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Result<Client, String> {
        let stream = tokio::time::timeout(REPLY_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| format!("connect: {e}"))?;
        Ok(Client {
            stream,
            buf: Vec::new(),
        })
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.stream
            .write_all(bytes)
            .await
            .map_err(|e| format!("write: {e}"))
    }

    async fn reply(&mut self) -> Result<Vec<u8>, String> {
        loop {
            match moat_protocol::Value::decode(&self.buf, 64) {
                Ok(Some((_, used))) => return Ok(self.buf.drain(..used).collect()),
                Ok(None) => {}
                Err(e) => return Err(format!("malformed reply: {e}")),
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(REPLY_TIMEOUT, self.stream.read(&mut chunk))
                .await
                .map_err(|_| format!("no reply within {REPLY_TIMEOUT:?}"))?
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("connection closed while waiting for a reply".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn call(&mut self, args: &[&[u8]]) -> Result<Vec<u8>, String> {
        self.send(&command(args)).await?;
        self.reply().await
    }
}

/// Runs `f(i)` for every `i < n` concurrently and returns the results in order; fails the
/// test naming the first few failures.
async fn all<T, F, Fut>(n: usize, f: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T, String>> + Send + 'static,
{
    let tasks: Vec<_> = (0..n).map(|i| tokio::spawn(f(i))).collect();
    let mut out = Vec::with_capacity(n);
    let mut failures = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await {
            Ok(Ok(v)) => out.push(v),
            Ok(Err(e)) => failures.push(format!("client {i}: {e}")),
            Err(e) => failures.push(format!("client {i}: task failed: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {n} clients failed:\n{}",
        failures.len(),
        failures[..failures.len().min(10)].join("\n")
    );
    out
}

fn value_of(i: usize) -> Vec<u8> {
    format!("value-of-client-{i}-\r\n-{}", "x".repeat(i % 97)).into_bytes()
}

#[test]
fn thousand_clients_held_open_share_the_pool() {
    raise_fd_limit();
    const SHARED: usize = 2;
    let stack = Stack::with(RedisServer::builder(), |c| {
        c.backend.shared_connections = SHARED;
    });
    let addr = stack.addr();
    let rt = runtime();

    // Every client connects, SETs its own key and reads +OK; all stay open.
    let mut clients = rt.block_on(async {
        let connect = all(CLIENTS, move |i| async move {
            let mut c = Client::connect(addr).await?;
            let key = format!("held:{i}");
            let got = c.call(&[b"SET", key.as_bytes(), &value_of(i)]).await?;
            if got != b"+OK\r\n" {
                return Err(format!("SET {key}: {}", got.escape_ascii()));
            }
            Ok(c)
        });
        tokio::time::timeout(PHASE_DEADLINE, connect)
            .await
            .expect("1000 clients connect and SET within the deadline")
    });
    assert_eq!(clients.len(), CLIENTS);

    // With 1000 client connections open, Redis sees the pool and the testkit's own.
    let seen = stack.redis.connected_clients().expect("INFO");
    assert!(
        seen <= SHARED as u64 + 1,
        "Redis has {seen} connected clients with {CLIENTS} clients on moat; expected at most \
         {SHARED} (pool) + 1 (testkit)"
    );

    // Then every one of them reads its own value back, all at once.
    rt.block_on(async {
        let tasks: Vec<_> = clients
            .drain(..)
            .enumerate()
            .map(|(i, mut c)| {
                tokio::spawn(async move {
                    let key = format!("held:{i}");
                    let got = c.call(&[b"GET", key.as_bytes()]).await?;
                    if got != bulk(&value_of(i)) {
                        return Err(format!(
                            "GET {key}: expected {}, got {}",
                            bulk(&value_of(i)).escape_ascii(),
                            got.escape_ascii()
                        ));
                    }
                    Ok(c)
                })
            })
            .collect();
        let run = async {
            let mut failures = Vec::new();
            for (i, t) in tasks.into_iter().enumerate() {
                match t.await {
                    Ok(Ok(c)) => clients.push(c),
                    Ok(Err(e)) => failures.push(format!("client {i}: {e}")),
                    Err(e) => failures.push(format!("client {i}: {e}")),
                }
            }
            failures
        };
        let failures = tokio::time::timeout(PHASE_DEADLINE, run)
            .await
            .expect("1000 GETs within the deadline");
        assert!(
            failures.is_empty(),
            "{} clients got a wrong value:\n{}",
            failures.len(),
            failures[..failures.len().min(10)].join("\n")
        );
    });
    assert_eq!(clients.len(), CLIENTS, "every client still connected");
    let seen = stack.redis.connected_clients().expect("INFO");
    assert!(
        seen <= SHARED as u64 + 1,
        "after the GETs Redis has {seen} connected clients (pool {SHARED} + testkit 1)"
    );
    drop(clients);
}

#[test]
fn thousand_clients_churning_never_reach_redis() {
    raise_fd_limit();
    const SHARED: usize = 2;
    const ROUNDS: usize = 5;
    let stack = Stack::with(RedisServer::builder(), |c| {
        c.backend.shared_connections = SHARED;
    });
    let addr = stack.addr();
    let rt = runtime();

    // One request through moat first, so its first pool connection exists before counting.
    rt.block_on(async {
        let mut c = Client::connect(addr).await.expect("connect");
        assert_eq!(
            c.call(&[b"SET", b"warm", b"up"]).await.expect("SET"),
            b"+OK\r\n"
        );
    });
    let before = stack
        .redis
        .info_u64("total_connections_received")
        .expect("INFO");

    rt.block_on(async {
        let churn = all(CLIENTS, move |i| async move {
            for round in 0..ROUNDS {
                let mut c = Client::connect(addr).await?;
                let key = format!("churn:{i}");
                let value = format!("{i}:{round}");
                match (i + round) % 4 {
                    // Write, read back, close.
                    0 => {
                        let got = c.call(&[b"SET", key.as_bytes(), value.as_bytes()]).await?;
                        if got != b"+OK\r\n" {
                            return Err(format!("SET: {}", got.escape_ascii()));
                        }
                        let got = c.call(&[b"GET", key.as_bytes()]).await?;
                        if got != bulk(value.as_bytes()) {
                            return Err(format!("GET {key}: {}", got.escape_ascii()));
                        }
                    }
                    // Send a pipeline and vanish without reading the replies. (Its own
                    // key: nothing orders an abandoned request before a later connection's.)
                    1 => {
                        let gone = format!("{key}:gone");
                        let mut req = command(&[b"SET", gone.as_bytes(), value.as_bytes()]);
                        req.extend(command(&[b"GET", gone.as_bytes()]));
                        req.extend(command(&[b"INCR", b"churn:counter"]));
                        c.send(&req).await?;
                    }
                    // Polite goodbye.
                    2 => {
                        let got = c.call(&[b"QUIT"]).await?;
                        if got != b"+OK\r\n" {
                            return Err(format!("QUIT: {}", got.escape_ascii()));
                        }
                    }
                    // Connect and close without a word.
                    _ => {}
                }
                drop(c);
            }
            Ok(())
        });
        tokio::time::timeout(PHASE_DEADLINE, churn)
            .await
            .expect("churn finishes within the deadline");
    });

    let after = stack
        .redis
        .info_u64("total_connections_received")
        .expect("INFO");
    // The reading itself is one connection; the rest can only be the pool's slots.
    let grown = after - before;
    assert!(
        grown <= SHARED as u64 + 1,
        "{} client connections through moat made Redis accept {grown} connections \
         (before {before}, after {after}); expected at most {SHARED} (pool) + 1 (testkit)",
        CLIENTS * ROUNDS
    );
    // And moat still serves, over the same pool.
    rt.block_on(async {
        let mut c = Client::connect(addr).await.expect("connect");
        let got = c.call(&[b"GET", b"warm"]).await.expect("GET");
        assert_eq!(got, b"$2\r\nup\r\n");
    });
    let held = stack.redis_clients();
    assert!(held <= SHARED as u64, "Redis holds {held} moat connections");
}

#[test]
fn many_databases_over_two_connections() {
    const SHARED: usize = 2;
    const DB_CLIENTS: usize = 200;
    const DBS: usize = 8;
    const ROUNDS: usize = 10;
    const KEYS: usize = 5;
    let stack = Stack::with(RedisServer::builder(), |c| {
        c.backend.shared_connections = SHARED;
    });
    let addr = stack.addr();
    let rt = runtime();

    // Watch Redis's connection count while the clients run, from another thread.
    let stop = Arc::new(AtomicBool::new(false));
    let max_seen = Arc::new(AtomicU64::new(0));
    let samples = Arc::new(AtomicU64::new(0));
    let watcher = {
        let (stop, max_seen, samples) = (stop.clone(), max_seen.clone(), samples.clone());
        let redis_addr = stack.redis.addr();
        std::thread::spawn(move || {
            let deadline = Instant::now() + PHASE_DEADLINE;
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                if let Some(n) = connected_clients_direct(redis_addr) {
                    // Minus this probe's own connection.
                    max_seen.fetch_max(n.saturating_sub(1), Ordering::SeqCst);
                    samples.fetch_add(1, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };

    rt.block_on(async {
        let run = all(DB_CLIENTS, move |i| async move {
            let db = i % DBS;
            let mut c = Client::connect(addr).await?;
            let got = c.call(&[b"SELECT", db.to_string().as_bytes()]).await?;
            if got != b"+OK\r\n" {
                return Err(format!("SELECT {db}: {}", got.escape_ascii()));
            }
            for round in 0..ROUNDS {
                // A pipeline of SETs then GETs of the client's own keys.
                let mut req = Vec::new();
                let mut expect = Vec::new();
                for j in 0..KEYS {
                    let key = format!("db{db}:c{i}:k{j}");
                    let value = format!("c{i}:k{j}:r{round}:db{db}");
                    req.extend(command(&[b"SET", key.as_bytes(), value.as_bytes()]));
                    expect.push(b"+OK\r\n".to_vec());
                }
                for j in 0..KEYS {
                    let key = format!("db{db}:c{i}:k{j}");
                    let value = format!("c{i}:k{j}:r{round}:db{db}");
                    req.extend(command(&[b"GET", key.as_bytes()]));
                    expect.push(bulk(value.as_bytes()));
                }
                c.send(&req).await?;
                for (n, e) in expect.iter().enumerate() {
                    let got = c.reply().await?;
                    if &got != e {
                        return Err(format!(
                            "db {db} round {round} reply {n}: expected {}, got {}",
                            e.escape_ascii(),
                            got.escape_ascii()
                        ));
                    }
                }
                tokio::task::yield_now().await;
            }
            Ok(())
        });
        tokio::time::timeout(PHASE_DEADLINE, run)
            .await
            .expect("clients finish within the deadline");
    });
    stop.store(true, Ordering::SeqCst);
    watcher.join().expect("watcher thread");

    let max = max_seen.load(Ordering::SeqCst);
    assert!(
        samples.load(Ordering::SeqCst) > 0,
        "the watcher took no sample of connected_clients"
    );
    assert!(
        max <= SHARED as u64,
        "Redis saw up to {max} moat connections with {DBS} databases in use; the pool is \
         {SHARED}"
    );
    let held = stack.redis_clients();
    assert!(held <= SHARED as u64, "Redis holds {held} moat connections");

    // Every client's keys are in its own database on Redis, and in no other.
    for i in 0..DB_CLIENTS {
        let db = i % DBS;
        for j in 0..KEYS {
            let key = format!("db{db}:c{i}:k{j}");
            let value = format!("c{i}:k{j}:r{}:db{db}", ROUNDS - 1);
            let script = "local hits = {} \
                 for db = 0, 7 do \
                   redis.call('SELECT', db) \
                   if redis.call('EXISTS', KEYS[1]) == 1 then table.insert(hits, db) end \
                 end \
                 redis.call('SELECT', ARGV[1]) \
                 return {hits, redis.call('GET', KEYS[1])}";
            let got = stack
                .redis
                .command(&["EVAL", script, "1", &key, &db.to_string()])
                .expect("EVAL");
            let mut expect = format!("*2\r\n*1\r\n:{db}\r\n").into_bytes();
            expect.extend(bulk(value.as_bytes()));
            assert_eq!(
                got.escape_ascii().to_string(),
                expect.escape_ascii().to_string(),
                "client {i}: {key} should exist only in db {db}, with its last value"
            );
        }
    }
}

/// `connected_clients` from a raw INFO on a fresh connection (the probe counts itself), or
/// `None` if Redis did not answer in time. Kept off the testkit so a slow probe never fails
/// the test by itself.
fn connected_clients_direct(redis: SocketAddr) -> Option<u64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&redis, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"*2\r\n$4\r\nINFO\r\n$7\r\nclients\r\n").ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Ok(Some((v, _))) = moat_protocol::Value::decode(&buf, 8) {
            let text = String::from_utf8_lossy(v.as_bytes()?).into_owned();
            return text
                .lines()
                .find_map(|l| l.strip_prefix("connected_clients:"))
                .and_then(|n| n.trim().parse().ok());
        }
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
