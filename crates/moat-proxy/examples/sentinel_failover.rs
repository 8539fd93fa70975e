//! Measures the client-visible gap of a Sentinel failover through moat: a client SETs at a
//! steady rate (one every 5 ms) on one connection while (a) `SENTINEL FAILOVER` runs and
//! (b) the primary is killed; prints the longest stretch without a successful write, the
//! errors and their messages. Real servers on loopback (testkit); run in release mode
//! through `bench/sentinel-failover.sh`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use moat_testkit::{RedisServer, SentinelServer};

const MASTER: &str = "mymaster";
const EVERY: Duration = Duration::from_millis(5);
const DOWN_AFTER: Duration = Duration::from_millis(1000);

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("gave up waiting for {what}");
}

/// One SET and its reply's first line (a blocking RESP client).
fn set(stream: &mut TcpStream, i: u64) -> std::io::Result<String> {
    let v = i.to_string();
    let key = format!("bench:{v}");
    let req = format!(
        "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{v}\r\n",
        key.len(),
        v.len()
    );
    stream.write_all(req.as_bytes())?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        if stream.read(&mut byte)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        line.push(byte[0]);
        if line.ends_with(b"\r\n") {
            return Ok(String::from_utf8_lossy(&line).trim_end().to_string());
        }
    }
}

struct Outcome {
    /// The write's index (its key is `bench:<i>`).
    i: u64,
    at: Instant,
    ok: bool,
    line: String,
}

/// Runs the writer until `stop`; returns every outcome.
fn writer(addr: SocketAddr, stop: Arc<AtomicBool>) -> Vec<Outcome> {
    let mut stream = TcpStream::connect(addr).expect("connect to moat");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream.set_nodelay(true).expect("nodelay");
    let mut out = Vec::new();
    let mut next = Instant::now();
    for i in 0.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let line = match set(&mut stream, i) {
            Ok(l) => l,
            Err(e) => {
                // The connection itself failed: a reconnect is part of the gap.
                out.push(Outcome {
                    i,
                    at: Instant::now(),
                    ok: false,
                    line: format!("connection error: {e}"),
                });
                stream = TcpStream::connect(addr).expect("reconnect to moat");
                continue;
            }
        };
        out.push(Outcome {
            i,
            at: Instant::now(),
            ok: line == "+OK",
            line,
        });
        next += EVERY;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
    out
}

fn deploy() -> (RedisServer, RedisServer, SentinelServer) {
    let primary = RedisServer::start().expect("primary");
    let replica = RedisServer::builder()
        .config(format!("replicaof 127.0.0.1 {}", primary.port()))
        .start()
        .expect("replica");
    wait_until("replica sync", || {
        replica
            .info()
            .is_ok_and(|i| i.get("master_link_status").is_some_and(|s| s == "up"))
    });
    let sentinel = SentinelServer::builder()
        .monitor(MASTER, primary.addr(), 1)
        .down_after(DOWN_AFTER)
        .failover_timeout(Duration::from_secs(3))
        .start()
        .expect("sentinel");
    wait_until("sentinel sees the replica", || {
        sentinel.replicas_up(MASTER).is_ok_and(|n| n >= 1)
    });
    (primary, replica, sentinel)
}

fn moat(sentinel: &SentinelServer) -> moat_proxy::RunningProxy {
    let mut config = moat_proxy::Config::default();
    config.proxy.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.kernel.socket_filter = false;
    config.backend.sentinels = vec![sentinel.addr()];
    config.backend.master_name = Some(MASTER.into());
    moat_proxy::start(config).expect("moat starts")
}

fn scenario(name: &str, trigger: impl FnOnce(&mut RedisServer, &SentinelServer)) {
    let (mut primary, replica, sentinel) = deploy();
    let moat = moat(&sentinel);
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (addr, stop) = (moat.local_addr(), stop.clone());
        std::thread::spawn(move || writer(addr, stop))
    };
    std::thread::sleep(Duration::from_secs(1));
    let started = Instant::now();
    trigger(&mut primary, &sentinel);
    wait_until("moat on the new primary", || {
        moat.control().snapshot().sentinel_primary == Some(replica.addr().to_string())
    });
    let switched = started.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let outcomes = client.join().expect("writer");
    let mut last_ok = outcomes
        .iter()
        .rev()
        .find(|o| o.ok && o.at < started)
        .map_or(started, |o| o.at);
    let mut longest = Duration::ZERO;
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    let mut writes = 0;
    for o in outcomes.iter().filter(|o| o.at >= started) {
        writes += 1;
        if o.ok {
            longest = longest.max(o.at - last_ok);
            last_ok = o.at;
        } else {
            *errors.entry(o.line.clone()).or_default() += 1;
        }
    }
    let total: usize = errors.values().sum();
    // Acknowledged writes the new primary does not have: sent to the old primary after the
    // replica's promotion (lost when the old one resyncs as a replica), or not replicated
    // before a kill.
    let keys = replica.command(&["KEYS", "bench:*"]).expect("KEYS");
    let text = String::from_utf8_lossy(&keys);
    let held: std::collections::HashSet<&str> = text
        .split("\r\n")
        .filter(|l| l.starts_with("bench:"))
        .collect();
    let acked = outcomes.iter().filter(|o| o.ok).count();
    let lost = outcomes
        .iter()
        .filter(|o| o.ok && !held.contains(format!("bench:{}", o.i).as_str()))
        .count();
    println!("## {name}");
    println!("- writes attempted after the trigger: {writes}");
    println!(
        "- moat on the new primary after: {:.0} ms",
        switched.as_secs_f64() * 1e3
    );
    println!(
        "- longest window without a successful write: {:.0} ms",
        longest.as_secs_f64() * 1e3
    );
    println!("- acknowledged writes (whole run): {acked}, missing on the new primary: {lost}");
    println!("- errors: {total}");
    for (line, n) in &errors {
        println!("  - {n} x `{line}`");
    }
    println!();
}

fn main() {
    println!(
        "SET every {} ms on one connection through moat; 1 Sentinel, down-after-milliseconds {} ms\n",
        EVERY.as_millis(),
        DOWN_AFTER.as_millis()
    );
    scenario("SENTINEL FAILOVER (forced)", |_, sentinel| {
        let reply = sentinel.failover(MASTER).expect("SENTINEL FAILOVER");
        assert_eq!(reply, b"+OK\r\n");
    });
    scenario("primary killed (SIGKILL)", |primary, _| primary.kill9());
}
