//! Reply integrity under concurrency: hundreds of clients pipeline random mixes of forwarded
//! and moat-local commands over a few shared backend connections, and every reply must be
//! exactly the one that client expects, in order. A reply routed to the wrong client, lost,
//! duplicated or reordered fails the test with the seed that reproduces it
//! (`MOAT_TEST_SEED=<seed> cargo test -p moat-proxy --test integrity`).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use common::{Stack, bulk, command, shown};
use moat_testkit::RedisServer;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Concurrent raw clients per run.
const CLIENTS: usize = 220;
/// Pipelines per client.
const ROUNDS: usize = 4;
/// Keys each client owns (so later rounds read what earlier rounds wrote).
const KEYS: usize = 12;
/// A whole client run must finish within this, or the test fails instead of hanging.
const CLIENT_DEADLINE: Duration = Duration::from_secs(120);
/// One reply must arrive within this.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// The run's base seed: `MOAT_TEST_SEED` if set, else the clock. Printed so a failure can
/// be replayed.
fn base_seed() -> u64 {
    let seed = std::env::var("MOAT_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
    eprintln!("integrity base seed: {seed} (replay with MOAT_TEST_SEED={seed})");
    seed
}

/// A distinct, well-mixed seed per client (splitmix64 of base and id).
fn client_seed(base: u64, client: usize) -> u64 {
    let mut z = base ^ (client as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The database a client selects at start (`None`: stays in 0). Every fourth client moves.
fn client_db(client: usize) -> Option<u32> {
    (client % 4 == 1).then(|| 1 + (client % 15) as u32)
}

fn key(client: usize, j: usize) -> String {
    format!("c{client}:k{j}")
}

fn counter_key(client: usize) -> String {
    format!("c{client}:ctr")
}

// ---- RESP encoding of requests and expected replies ----

fn int(n: i64) -> Vec<u8> {
    format!(":{n}\r\n").into_bytes()
}

/// Random bytes of random length below `max`, drawn from the whole byte range and now and
/// then salted with CRLF and RESP-looking fragments, so framing bugs show.
fn random_bytes(rng: &mut StdRng, max: usize) -> Vec<u8> {
    let len = rng.random_range(0..max);
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    if len > 0 && rng.random_bool(0.3) {
        let fragments: [&[u8]; 4] = [b"\r\n", b"\r\n$-1\r\n", b"\r\n+OK\r\n", b"*2\r\n:1\r\n"];
        let frag = fragments[rng.random_range(0..fragments.len())];
        let at = rng.random_range(0..len);
        v.splice(at..at, frag.iter().copied());
    }
    v
}

/// What one client believes Redis holds for it.
#[derive(Default)]
struct Model {
    values: HashMap<usize, Vec<u8>>,
    counter: i64,
}

/// One request of a pipeline: its bytes, the exact reply expected, and a description.
struct Step {
    request: Vec<u8>,
    expect: Vec<u8>,
    what: String,
}

/// Builds a random pipeline of 1..=64 requests, updating the model as Redis will.
fn random_pipeline(
    rng: &mut StdRng,
    model: &mut Model,
    client: usize,
    round: usize,
    db: Option<u32>,
) -> Vec<Step> {
    let len = rng.random_range(1..=64);
    let mut steps = Vec::with_capacity(len + 1);
    if round == 0
        && let Some(db) = db
    {
        let n = db.to_string();
        steps.push(Step {
            request: command(&[b"SELECT", n.as_bytes()]),
            expect: b"+OK\r\n".to_vec(),
            what: format!("SELECT {db}"),
        });
    }
    for i in 0..len {
        let j = rng.random_range(0..KEYS);
        let k = key(client, j);
        let step = match rng.random_range(0..100) {
            0..=29 => {
                let mut value = format!("c{client}:k{j}:r{round}:i{i}:").into_bytes();
                value.extend(random_bytes(rng, 2000));
                let request = command(&[b"SET", k.as_bytes(), &value]);
                model.values.insert(j, value);
                Step {
                    request,
                    expect: b"+OK\r\n".to_vec(),
                    what: format!("SET {k}"),
                }
            }
            30..=54 => Step {
                request: command(&[b"GET", k.as_bytes()]),
                expect: model
                    .values
                    .get(&j)
                    .map_or_else(|| b"$-1\r\n".to_vec(), |v| bulk(v)),
                what: format!("GET {k}"),
            },
            55..=62 => {
                let suffix = random_bytes(rng, 100);
                let value = model.values.entry(j).or_default();
                value.extend_from_slice(&suffix);
                Step {
                    request: command(&[b"APPEND", k.as_bytes(), &suffix]),
                    expect: int(value.len() as i64),
                    what: format!("APPEND {k} ({} bytes)", suffix.len()),
                }
            }
            63..=69 => Step {
                request: command(&[b"STRLEN", k.as_bytes()]),
                expect: int(model.values.get(&j).map_or(0, Vec::len) as i64),
                what: format!("STRLEN {k}"),
            },
            70..=79 => {
                model.counter += 1;
                let ck = counter_key(client);
                Step {
                    request: command(&[b"INCR", ck.as_bytes()]),
                    expect: int(model.counter),
                    what: format!("INCR {ck}"),
                }
            }
            80..=88 => {
                let mut msg = format!("ping-c{client}-r{round}-i{i}-").into_bytes();
                msg.extend(random_bytes(rng, 64));
                Step {
                    request: command(&[b"PING", &msg]),
                    expect: bulk(&msg),
                    what: "PING <msg>".into(),
                }
            }
            89..=90 => Step {
                request: command(&[b"PING"]),
                expect: b"+PONG\r\n".to_vec(),
                what: "PING".into(),
            },
            91..=97 => {
                let mut msg = format!("echo-c{client}-r{round}-i{i}-").into_bytes();
                msg.extend(random_bytes(rng, 64));
                Step {
                    request: command(&[b"ECHO", &msg]),
                    expect: bulk(&msg),
                    what: "ECHO <msg>".into(),
                }
            }
            _ => {
                // Re-select the client's own database: a local command (a barrier) that
                // must not change where its keys go.
                let n = db.unwrap_or(0).to_string();
                Step {
                    request: command(&[b"SELECT", n.as_bytes()]),
                    expect: b"+OK\r\n".to_vec(),
                    what: format!("SELECT {n}"),
                }
            }
        };
        steps.push(step);
    }
    steps
}

/// Reads one complete reply (raw bytes) from `stream`, buffering the rest in `buf`.
async fn read_reply(
    stream: &mut tokio::net::tcp::ReadHalf<'_>,
    buf: &mut Vec<u8>,
) -> Result<Vec<u8>, String> {
    loop {
        match moat_protocol::Value::decode(buf, 64) {
            Ok(Some((_, used))) => return Ok(buf.drain(..used).collect()),
            Ok(None) => {}
            Err(e) => return Err(format!("malformed reply ({e}): {}", shown(buf))),
        }
        let mut chunk = [0u8; 65536];
        let n = tokio::time::timeout(REPLY_TIMEOUT, stream.read(&mut chunk))
            .await
            .map_err(|_| format!("no reply within {REPLY_TIMEOUT:?}"))?
            .map_err(|e| format!("read failed: {e}"))?;
        if n == 0 {
            return Err(format!(
                "connection closed while waiting for a reply; buffered {}",
                shown(buf)
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Writes a pipeline, sometimes whole, sometimes in random small pieces so requests arrive
/// split at arbitrary bytes.
async fn write_pipeline(
    stream: &mut tokio::net::tcp::WriteHalf<'_>,
    bytes: &[u8],
    rng: &mut StdRng,
) -> Result<(), String> {
    if rng.random_bool(0.25) {
        let mut pos = 0;
        while pos < bytes.len() {
            let n = rng
                .random_range(1..=bytes.len() - pos)
                .min(rng.random_range(1..4096));
            stream
                .write_all(&bytes[pos..pos + n])
                .await
                .map_err(|e| format!("write failed: {e}"))?;
            stream.flush().await.map_err(|e| format!("flush: {e}"))?;
            tokio::task::yield_now().await;
            pos += n;
        }
        Ok(())
    } else {
        stream
            .write_all(bytes)
            .await
            .map_err(|e| format!("write failed: {e}"))
    }
}

/// One raw client's whole life: connect, run the rounds, check every reply. Returns its
/// final model for the direct check against Redis.
async fn raw_client(addr: SocketAddr, client: usize, seed: u64) -> Result<Model, String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut model = Model::default();
    let db = client_db(client);
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    for round in 0..ROUNDS {
        let steps = random_pipeline(&mut rng, &mut model, client, round, db);
        let bytes: Vec<u8> = steps
            .iter()
            .flat_map(|s| s.request.iter().copied())
            .collect();
        let (mut rd, mut wr) = stream.split();
        let mut wrng = StdRng::seed_from_u64(rng.random());
        let write = write_pipeline(&mut wr, &bytes, &mut wrng);
        let read = async {
            for (index, step) in steps.iter().enumerate() {
                let got = read_reply(&mut rd, &mut buf).await.map_err(|e| {
                    format!(
                        "round {round}, reply {index}/{} ({}): {e}",
                        steps.len(),
                        step.what
                    )
                })?;
                if got != step.expect {
                    return Err(format!(
                        "round {round}, reply {index}/{} ({}):\n  expected {}\n  got      {}",
                        steps.len(),
                        step.what,
                        shown(&step.expect),
                        shown(&got)
                    ));
                }
            }
            Ok::<(), String>(())
        };
        let (w, r) = tokio::join!(write, read);
        w.and(r)?;
    }
    if !buf.is_empty() {
        return Err(format!(
            "unexpected extra bytes after the last reply: {}",
            shown(&buf)
        ));
    }
    Ok(model)
}

/// Runs every client concurrently; returns their final models, or panics naming each
/// failed client with its seed.
fn run_raw_clients(addr: SocketAddr, clients: usize) -> Vec<Model> {
    let base = base_seed();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let results = rt.block_on(async {
        let tasks: Vec<_> = (0..clients)
            .map(|client| {
                let seed = client_seed(base, client);
                tokio::spawn(async move {
                    let run = tokio::time::timeout(CLIENT_DEADLINE, raw_client(addr, client, seed));
                    match run.await {
                        Ok(r) => r,
                        Err(_) => Err(format!("did not finish within {CLIENT_DEADLINE:?}")),
                    }
                    .map_err(|e| format!("client {client} (seed {seed}): {e}"))
                })
            })
            .collect();
        let mut results = Vec::with_capacity(clients);
        for task in tasks {
            results.push(
                task.await
                    .unwrap_or_else(|e| Err(format!("task failed: {e}"))),
            );
        }
        results
    });
    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {clients} clients saw wrong replies (base seed {base}):\n{}",
        failures.len(),
        failures
            .iter()
            .take(10)
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    results.into_iter().map(|r| r.expect("checked")).collect()
}

/// Reads `key` in database `db` straight from Redis (a script SELECTs only for itself, so
/// the testkit's one-command connection suffices). Returns the raw reply.
fn redis_get_in_db(redis: &RedisServer, db: u32, key: &str) -> Vec<u8> {
    let script = "redis.call('SELECT', ARGV[1]); return redis.call('GET', KEYS[1])";
    redis
        .command(&["EVAL", script, "1", key, &db.to_string()])
        .expect("EVAL on redis")
}

/// Checks a sample of clients' keys directly on Redis: in their own database with the
/// value the client last wrote, and absent from another database.
fn verify_on_redis(redis: &RedisServer, models: &[Model]) {
    let mut checked = 0;
    for (client, model) in models.iter().enumerate() {
        // Every client with its own db, and every seventh of the rest.
        if client_db(client).is_none() && client % 7 != 0 {
            continue;
        }
        let db = client_db(client).unwrap_or(0);
        let other = if db == 0 { 1 } else { 0 };
        for (j, value) in &model.values {
            let k = key(client, *j);
            assert_eq!(
                shown(&redis_get_in_db(redis, db, &k)),
                shown(&bulk(value)),
                "client {client}: {k} in db {db} on Redis"
            );
            assert_eq!(
                redis_get_in_db(redis, other, &k),
                b"$-1\r\n",
                "client {client}: {k} leaked into db {other}"
            );
            checked += 1;
        }
        if model.counter > 0 {
            let ck = counter_key(client);
            assert_eq!(
                shown(&redis_get_in_db(redis, db, &ck)),
                shown(&bulk(model.counter.to_string().as_bytes())),
                "client {client}: {ck} in db {db} on Redis"
            );
        }
    }
    assert!(checked > 0, "the sample checked no key");
}

fn integrity_run(workers: usize, shared: usize) {
    integrity_run_with(workers, shared, |_| {});
}

fn integrity_run_with(workers: usize, shared: usize, tweak: impl FnOnce(&mut moat_proxy::Config)) {
    let stack = Stack::with(RedisServer::builder(), |c| {
        c.proxy.workers = workers;
        c.backend.shared_connections = shared;
        // This test is about replies, not deadlines: on a loaded machine a client thread
        // may not get to send its first command within the default handshake deadline.
        c.guard.handshake_timeout = Duration::from_secs(60);
        tweak(c);
    });
    let models = run_raw_clients(stack.addr(), CLIENTS);
    verify_on_redis(&stack.redis, &models);
    // The verification's own short connections may not be reaped by Redis yet: give it a
    // moment before counting moat's.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let mut held = stack.redis_clients();
    while held > shared as u64 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        held = stack.redis_clients();
    }
    assert!(
        held <= shared as u64,
        "Redis holds {held} connections from moat, more than shared_connections = {shared}"
    );
}

#[test]
fn raw_clients_one_worker_two_connections() {
    integrity_run(1, 2);
}

#[test]
fn raw_clients_two_workers_four_connections() {
    integrity_run(2, 4);
}

#[test]
fn raw_clients_one_shared_connection() {
    integrity_run(1, 1);
}

#[test]
fn raw_clients_with_few_requests_in_flight() {
    // moat keeps stopping and resuming every client's reads at 2 requests in flight, and
    // order must still hold.
    integrity_run_with(1, 2, |c| c.limits.max_inflight = 2);
}

#[test]
fn raw_clients_with_a_tiny_output_buffer() {
    // Most replies overflow a 512-byte output limit, so moat stops reading each client
    // until its replies are written, over and over.
    integrity_run_with(1, 2, |c| c.limits.max_output_bytes = 512);
}

/// Regression: a request held back because the client's unwritten replies reached
/// `limits.max_output_bytes`, with nothing in flight, must run once those replies are
/// written. (The session used to stall for good: the flush emptied the output, but it kept
/// reading disabled and waited for a backend delivery that could never come.)
#[test]
fn output_backpressure_with_nothing_in_flight_resumes() {
    let stack = Stack::with(RedisServer::builder(), |c| {
        c.limits.max_output_bytes = 512;
    });
    let big = vec![b'x'; 2000];
    /// What the case is, the requests pipelined, the replies expected.
    type Case = (&'static str, Vec<Vec<u8>>, Vec<Vec<u8>>);
    let cases: [Case; 3] = [
        (
            "two large local replies, then PING",
            vec![
                command(&[b"ECHO", &big]),
                command(&[b"ECHO", &big]),
                command(&[b"PING"]),
            ],
            vec![bulk(&big), bulk(&big), b"+PONG\r\n".to_vec()],
        ),
        (
            "a large forwarded reply, then a local command, then GET",
            vec![
                command(&[b"SET", b"big", &big]),
                command(&[b"GET", b"big"]),
                command(&[b"PING"]),
                command(&[b"GET", b"big"]),
            ],
            vec![
                b"+OK\r\n".to_vec(),
                bulk(&big),
                b"+PONG\r\n".to_vec(),
                bulk(&big),
            ],
        ),
        (
            "a large forwarded reply, then another forwarded request",
            vec![command(&[b"GET", b"big"]), command(&[b"STRLEN", b"big"])],
            vec![bulk(&big), int(2000)],
        ),
    ];
    let mut failures = Vec::new();
    for (what, requests, replies) in cases {
        let mut c = common::Raw::connect(stack.addr());
        c.stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        c.send(&requests.concat());
        for (n, expect) in replies.iter().enumerate() {
            // Raw::reply panics when its read times out; turn that into this case's failure.
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.reply())) {
                Ok(got) if got == *expect => {}
                Ok(got) => {
                    failures.push(format!(
                        "{what}: reply {n}: expected {}, got {}",
                        shown(expect),
                        shown(&got)
                    ));
                    break;
                }
                Err(_) => {
                    failures.push(format!(
                        "{what}: reply {n} of {} never came (max_output_bytes = 512)",
                        replies.len()
                    ));
                    break;
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---- the same through the `redis` crate's multiplexed connection ----

/// One `redis` crate client: random pipelines via `redis::pipe()`, each result compared
/// with what the client wrote.
async fn crate_client(addr: SocketAddr, client: usize, seed: u64) -> Result<Model, String> {
    use redis::Value as V;
    let mut rng = StdRng::seed_from_u64(seed);
    let db = client_db(client).unwrap_or(0);
    let url = format!("redis://{addr}/{db}");
    let redis_client = redis::Client::open(url.as_str()).map_err(|e| e.to_string())?;
    let mut con = redis_client
        .get_multiplexed_async_connection_with_config(
            // The crate's default 500 ms response timeout measures the test machine's load,
            // not moat: give replies as long as the raw clients get.
            &redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(REPLY_TIMEOUT))
                .set_response_timeout(Some(REPLY_TIMEOUT)),
        )
        .await
        .map_err(|e| format!("connect {url}: {e}"))?;
    let mut model = Model::default();
    for round in 0..ROUNDS {
        let len = rng.random_range(1..=64);
        let mut pipe = redis::pipe();
        let mut expect = Vec::with_capacity(len);
        for i in 0..len {
            let j = rng.random_range(0..KEYS);
            let k = key(client, j);
            match rng.random_range(0..100) {
                0..=34 => {
                    let mut value = format!("c{client}:k{j}:r{round}:i{i}:").into_bytes();
                    value.extend(random_bytes(&mut rng, 2000));
                    pipe.set(&k, &value);
                    model.values.insert(j, value);
                    expect.push(V::Okay);
                }
                35..=59 => {
                    pipe.get(&k);
                    expect.push(
                        model
                            .values
                            .get(&j)
                            .map_or(V::Nil, |v| V::BulkString(v.clone())),
                    );
                }
                60..=67 => {
                    let suffix = random_bytes(&mut rng, 100);
                    pipe.append(&k, &suffix);
                    let value = model.values.entry(j).or_default();
                    value.extend_from_slice(&suffix);
                    expect.push(V::Int(value.len() as i64));
                }
                68..=79 => {
                    pipe.incr(counter_key(client), 1);
                    model.counter += 1;
                    expect.push(V::Int(model.counter));
                }
                80..=89 => {
                    let msg = format!("ping-c{client}-r{round}-i{i}-{}", rng.random::<u64>());
                    pipe.cmd("PING").arg(&msg);
                    expect.push(V::BulkString(msg.into_bytes()));
                }
                _ => {
                    let mut msg = format!("echo-c{client}-r{round}-i{i}-").into_bytes();
                    msg.extend(random_bytes(&mut rng, 64));
                    pipe.cmd("ECHO").arg(&msg);
                    expect.push(V::BulkString(msg));
                }
            }
        }
        let got: Vec<V> = tokio::time::timeout(REPLY_TIMEOUT, pipe.query_async(&mut con))
            .await
            .map_err(|_| format!("round {round}: no reply within {REPLY_TIMEOUT:?}"))?
            .map_err(|e| format!("round {round}: pipeline failed: {e}"))?;
        if got.len() != expect.len() {
            return Err(format!(
                "round {round}: {} replies for {} commands",
                got.len(),
                expect.len()
            ));
        }
        for (index, (g, e)) in got.iter().zip(&expect).enumerate() {
            if g != e {
                return Err(format!(
                    "round {round}, reply {index}/{len}:\n  expected {e:?}\n  got      {g:?}"
                ));
            }
        }
    }
    Ok(model)
}

#[test]
fn redis_crate_multiplexed_clients() {
    const TASKS: usize = 200;
    let stack = Stack::with(RedisServer::builder(), |c| {
        c.proxy.workers = 2;
        c.backend.shared_connections = 4;
    });
    let addr = stack.addr();
    let base = base_seed();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let results: Vec<Result<Model, String>> = rt.block_on(async {
        let tasks: Vec<_> = (0..TASKS)
            .map(|client| {
                let seed = client_seed(base, client);
                tokio::spawn(async move {
                    match tokio::time::timeout(CLIENT_DEADLINE, crate_client(addr, client, seed))
                        .await
                    {
                        Ok(r) => r,
                        Err(_) => Err(format!("did not finish within {CLIENT_DEADLINE:?}")),
                    }
                    .map_err(|e| format!("client {client} (seed {seed}): {e}"))
                })
            })
            .collect();
        let mut results = Vec::with_capacity(TASKS);
        for task in tasks {
            results.push(
                task.await
                    .unwrap_or_else(|e| Err(format!("task failed: {e}"))),
            );
        }
        results
    });
    let failures: Vec<&str> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(String::as_str))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {TASKS} redis-crate clients saw wrong replies (base seed {base}):\n{}",
        failures.len(),
        failures[..failures.len().min(10)].join("\n")
    );
    // A sample straight from Redis: the URL's database is where the keys went.
    let models: Vec<Model> = results.into_iter().map(|r| r.expect("checked")).collect();
    verify_on_redis(&stack.redis, &models);
    // The verification's own short connections may not be reaped by Redis yet: give it a
    // moment before counting moat's.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let mut held = stack.redis_clients();
    while held > 4 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        held = stack.redis_clients();
    }
    assert!(
        held <= 4,
        "Redis holds {held} connections from moat, more than 4"
    );
}
