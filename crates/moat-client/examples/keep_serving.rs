//! An app that keeps serving through a hoard that fills Redis's `maxclients` and through a
//! Redis restart, by serving last-known (stale) or default values while Redis is out of
//! reach; and the same app on plain `redis` + `bb8` for comparison.
//!
//! Each app runs the same workload (16 workers, each a `GET item:N` every 2 ms, 500 ms per
//! request) against its own real redis-server (moat-testkit, loopback, `maxclients 32`),
//! through two scenarios:
//! - hoard: the app warms up, then an attacker holds every free connection slot, the app's
//!   own connections are killed (`CLIENT KILL`) and their slots taken too (`maxclients`
//!   lowered to what the hoard holds, standing in for an attacker that reconnects faster
//!   than the app), so the app must reconnect to a full Redis; the hoard lets go later;
//! - restart: Redis is killed (SIGKILL) and restarted after a pause.
//!
//! It prints, per app and scenario: requests served (fresh, and stale or default for
//! moat-client), errors, p99 latency of all requests, and connection attempts the app made
//! while Redis was full or down. `--quick` runs a few seconds (CI); without it, longer phases.
//!
//! Baseline: `bb8` 0.9 with `bb8-redis` 0.26 (its `RedisConnectionManager` over redis 1.x's
//! `MultiplexedConnection`, wrapped here only to count connection attempts), bb8's defaults
//! but for the pool size and a checkout timeout equal to the request timeout.
//!
//! ```sh
//! cargo run -p moat-client --example keep_serving -- --quick
//! ```

use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use moat_client::{Client, Source};
use moat_testkit::RedisServer;
use redis::aio::MultiplexedConnection;

const MAXCLIENTS: usize = 32;
const WORKERS: usize = 16;
const KEYS: usize = 50;
const PACE: Duration = Duration::from_millis(2);
const REQUEST_TIMEOUT: Duration = Duration::from_millis(500);
const POOL_SIZE: u32 = 8;

/// Phase lengths.
#[derive(Clone, Copy)]
struct Phases {
    warm: Duration,
    hoard: Duration,
    down: Duration,
    after: Duration,
}

/// Requests and their latencies over one stretch of a scenario.
struct Counts {
    fresh: u64,
    degraded: u64,
    errors: u64,
    hist: Histogram<u64>,
}

impl Counts {
    fn new() -> Result<Counts> {
        Ok(Counts {
            fresh: 0,
            degraded: 0,
            errors: 0,
            hist: Histogram::new_with_bounds(1, 60_000_000, 3)?,
        })
    }

    fn add(&mut self, o: &Counts) -> Result<()> {
        self.fresh += o.fresh;
        self.degraded += o.degraded;
        self.errors += o.errors;
        self.hist.add(&o.hist)?;
        Ok(())
    }

    fn total(&self) -> u64 {
        self.fresh + self.degraded + self.errors
    }
}

/// What one app got in one scenario: during the fault, and over the whole run.
struct Tally {
    fault: Counts,
    all: Counts,
    /// From the end of the fault to the first fresh answer.
    recovery: Option<Duration>,
    attempts: String,
}

/// Where a scenario stands, shared with the workers.
#[derive(Default)]
struct Phase {
    in_fault: AtomicBool,
    fault_ended: std::sync::OnceLock<Instant>,
    first_fresh_after: std::sync::OnceLock<Instant>,
}

/// bb8-redis's manager, counting connection attempts.
struct Counted {
    inner: bb8_redis::RedisConnectionManager,
    attempts: Arc<AtomicU64>,
}

impl bb8::ManageConnection for Counted {
    type Connection = MultiplexedConnection;
    type Error = redis::RedisError;

    async fn connect(&self) -> Result<Self::Connection, Self::Error> {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        self.inner.connect().await
    }

    async fn is_valid(&self, conn: &mut Self::Connection) -> Result<(), Self::Error> {
        self.inner.is_valid(conn).await
    }

    fn has_broken(&self, conn: &mut Self::Connection) -> bool {
        self.inner.has_broken(conn)
    }
}

/// The app under test: one of the two clients.
#[derive(Clone)]
enum App {
    Bb8(bb8::Pool<Counted>, Arc<AtomicU64>),
    Moat(Client),
}

/// One request's outcome.
enum Outcome {
    Fresh,
    Degraded,
    Error,
}

impl App {
    fn build(kind: &str, server: &RedisServer) -> Result<App> {
        let url = format!("redis://{}/", server.addr());
        Ok(match kind {
            "bb8" => {
                let attempts = Arc::new(AtomicU64::new(0));
                let manager = Counted {
                    inner: bb8_redis::RedisConnectionManager::new(url)?,
                    attempts: attempts.clone(),
                };
                let pool = bb8::Pool::builder()
                    .max_size(POOL_SIZE)
                    .connection_timeout(REQUEST_TIMEOUT)
                    .build_unchecked(manager);
                App::Bb8(pool, attempts)
            }
            _ => App::Moat(
                Client::builder(url)
                    .max_size(POOL_SIZE as usize)
                    .command_timeout(REQUEST_TIMEOUT)
                    .stale_cache(10_000, Duration::from_secs(300))
                    .build()?,
            ),
        })
    }

    /// Connection attempts so far.
    fn attempts(&self) -> u64 {
        match self {
            App::Bb8(_, a) => a.load(Ordering::Relaxed),
            App::Moat(c) => {
                let s = c.stats();
                s.connects_ok + s.connects_failed
            }
        }
    }

    async fn request(&self, key: &str) -> Outcome {
        match self {
            App::Bb8(pool, _) => {
                let get = async {
                    let mut conn = pool.get().await.ok()?;
                    redis::cmd("GET")
                        .arg(key)
                        .query_async::<Option<String>>(&mut *conn)
                        .await
                        .ok()
                };
                match tokio::time::timeout(REQUEST_TIMEOUT, get).await {
                    Ok(Some(_)) => Outcome::Fresh,
                    _ => Outcome::Error,
                }
            }
            App::Moat(client) => {
                match client
                    .get_or_fallback::<Option<String>>(key, || Some("default".to_owned()))
                    .await
                {
                    Ok(s) if s.source == Source::Redis => Outcome::Fresh,
                    Ok(_) => Outcome::Degraded,
                    Err(_) => Outcome::Error,
                }
            }
        }
    }
}

/// Runs the workload until `stop`: (during the fault, overall).
async fn workload(app: App, phase: Arc<Phase>, stop: Arc<AtomicBool>) -> Result<(Counts, Counts)> {
    let tasks: Vec<_> = (0..WORKERS)
        .map(|w| {
            let app = app.clone();
            let stop = stop.clone();
            let phase = phase.clone();
            tokio::spawn(async move {
                let (mut fault, mut all) = (Counts::new()?, Counts::new()?);
                let mut i = w;
                // Bounded by `stop`, which the scenario sets after its phases.
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("item:{}", i % KEYS);
                    i += WORKERS;
                    let in_fault = phase.in_fault.load(Ordering::Relaxed);
                    let started = Instant::now();
                    let outcome = app.request(&key).await;
                    let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                    for (c, yes) in [(&mut fault, in_fault), (&mut all, true)] {
                        if !yes {
                            continue;
                        }
                        match outcome {
                            Outcome::Fresh => c.fresh += 1,
                            Outcome::Degraded => c.degraded += 1,
                            Outcome::Error => c.errors += 1,
                        }
                        c.hist.saturating_record(us.max(1));
                    }
                    if matches!(outcome, Outcome::Fresh) && phase.fault_ended.get().is_some() {
                        let _ = phase.first_fresh_after.set(Instant::now());
                    }
                    tokio::time::sleep(PACE).await;
                }
                anyhow::Ok((fault, all))
            })
        })
        .collect();
    let (mut fault, mut all) = (Counts::new()?, Counts::new()?);
    for t in tasks {
        let (f, a) = t.await??;
        fault.add(&f)?;
        all.add(&a)?;
    }
    Ok((fault, all))
}

/// The running workload.
type Running = tokio::task::JoinHandle<Result<(Counts, Counts)>>;

/// Starts the workload; returns what `finish` needs.
fn start(app: &App) -> (Arc<Phase>, Arc<AtomicBool>, Running) {
    let phase = Arc::new(Phase::default());
    let stop = Arc::new(AtomicBool::new(false));
    let run = tokio::spawn(workload(app.clone(), phase.clone(), stop.clone()));
    (phase, stop, run)
}

/// Stops the workload and sums it up.
async fn finish(
    phase: Arc<Phase>,
    stop: Arc<AtomicBool>,
    run: Running,
    attempts: String,
) -> Result<Tally> {
    stop.store(true, Ordering::Relaxed);
    let (fault, all) = run.await??;
    let recovery = match (phase.fault_ended.get(), phase.first_fresh_after.get()) {
        (Some(end), Some(fresh)) => Some(fresh.saturating_duration_since(*end)),
        _ => None,
    };
    Ok(Tally {
        fault,
        all,
        recovery,
        attempts,
    })
}

fn fault_begins(phase: &Phase) {
    phase.in_fault.store(true, Ordering::Relaxed);
}

fn fault_ends(phase: &Phase) {
    phase.in_fault.store(false, Ordering::Relaxed);
    let _ = phase.fault_ended.set(Instant::now());
}

fn seed(server: &RedisServer) -> Result<()> {
    for k in 0..KEYS {
        server.command(&["SET", &format!("item:{k}"), &format!("value {k}")])?;
    }
    Ok(())
}

/// Opens raw connections until Redis holds `maxclients`, as an attacker does.
fn hoard(server: &RedisServer, n: usize) -> Result<Vec<TcpStream>> {
    (0..n)
        .map(|_| TcpStream::connect(server.addr()).context("hoard connect"))
        .collect()
}

/// Hoard scenario: warm up, fill the free slots, kill the app's connections (their slots
/// are taken too), hold, let go.
async fn hoard_scenario(kind: &str, p: Phases) -> Result<Tally> {
    let server = RedisServer::builder()
        .config(format!("maxclients {MAXCLIENTS}"))
        .start()?;
    seed(&server)?;
    let admin_client = redis::Client::open(format!("redis://{}/", server.addr()))?;
    let mut admin = admin_client.get_connection()?;
    let app = App::build(kind, &server)?;
    let (phase, stop, run) = start(&app);
    tokio::time::sleep(p.warm).await;

    let connected = info_field(&mut admin, "connected_clients")?;
    let held = hoard(
        &server,
        MAXCLIENTS.saturating_sub(usize::try_from(connected)?),
    )?;
    let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut admin)?;
    let me: i64 = redis::cmd("CLIENT").arg("ID").query(&mut admin)?;
    let app_ids: Vec<i64> = list
        .lines()
        .filter(|l| !l.contains("cmd=NULL"))
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .filter_map(|id| id.parse().ok())
        .filter(|id| *id != me)
        .collect();
    let rejected_before = info_field(&mut admin, "rejected_connections")?;
    let attempts_before = app.attempts();
    // The slots the app's connections free are taken from it at once: maxclients drops to
    // what the hoard and the admin connection hold, standing in for an attacker that
    // reconnects faster than any app (a race the app would otherwise sometimes win).
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxclients")
        .arg(held.len() + 1)
        .exec(&mut admin)?;
    fault_begins(&phase);
    for id in &app_ids {
        redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(id)
            .exec(&mut admin)?;
    }
    tokio::time::sleep(p.hoard).await;
    let attempts = app.attempts() - attempts_before;
    let rejected = info_field(&mut admin, "rejected_connections")? - rejected_before;
    drop(held);
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxclients")
        .arg(MAXCLIENTS)
        .exec(&mut admin)?;
    fault_ends(&phase);
    tokio::time::sleep(p.after).await;
    finish(
        phase,
        stop,
        run,
        format!("{attempts} ({rejected} refused by Redis)"),
    )
    .await
}

fn info_field(admin: &mut redis::Connection, field: &str) -> Result<u64> {
    let info: String = redis::cmd("INFO").query(admin)?;
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("INFO {field}"))
}

/// Restart scenario: warm up, SIGKILL, stay down, restart, serve again.
async fn restart_scenario(kind: &str, p: Phases) -> Result<Tally> {
    let mut server = RedisServer::builder()
        .config(format!("maxclients {MAXCLIENTS}"))
        .start()?;
    seed(&server)?;
    let app = App::build(kind, &server)?;
    let (phase, stop, run) = start(&app);
    tokio::time::sleep(p.warm).await;
    let before = app.attempts();
    fault_begins(&phase);
    server.kill9();
    tokio::time::sleep(p.down).await;
    let attempts = app.attempts() - before;
    server.restart()?;
    seed(&server)?;
    fault_ends(&phase);
    tokio::time::sleep(p.after).await;
    finish(phase, stop, run, format!("{attempts}")).await
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn row(scenario: &str, app: &str, t: &Tally) -> String {
    let f = &t.fault;
    let share = |n: u64| 100.0 * n as f64 / f.total().max(1) as f64;
    let p99 = |c: &Counts| ms(Duration::from_micros(c.hist.value_at_quantile(0.99)));
    format!(
        "| {scenario} | {app} | {} | {} ({:.1}%) | {} ({:.1}%) | {} ({:.1}%) | {} | {} | {} | {} |",
        f.total(),
        f.fresh,
        share(f.fresh),
        f.degraded,
        share(f.degraded),
        f.errors,
        share(f.errors),
        p99(f),
        t.attempts,
        t.recovery.map_or("never".to_owned(), ms),
        p99(&t.all),
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let p = if quick {
        Phases {
            warm: Duration::from_millis(700),
            hoard: Duration::from_secs(2),
            down: Duration::from_secs(1),
            after: Duration::from_millis(2500),
        }
    } else {
        Phases {
            warm: Duration::from_secs(2),
            hoard: Duration::from_secs(10),
            down: Duration::from_secs(5),
            after: Duration::from_secs(5),
        }
    };
    println!(
        "| scenario | app | requests during the fault | served fresh | served stale/default | errors | p99 during the fault | connection attempts during the fault | first fresh answer after it | p99 overall |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut moat_hoard_errors = 0.0;
    for kind in ["bb8", "moat"] {
        let name = if kind == "bb8" {
            "redis + bb8"
        } else {
            "moat-client"
        };
        let t = hoard_scenario(kind, p).await?;
        println!("{}", row("hoard", name, &t));
        if kind == "moat" {
            moat_hoard_errors = t.fault.errors as f64 / t.fault.total().max(1) as f64;
        }
        let t = restart_scenario(kind, p).await?;
        println!("{}", row("restart", name, &t));
    }
    if moat_hoard_errors > 0.1 {
        bail!(
            "moat-client failed {:.1}% of requests during the hoard",
            100.0 * moat_hoard_errors
        );
    }
    Ok(())
}
