//! `moat demo`: starts a real redis-server and moat in front of it, opens thousands of client
//! connections both ways and shows what Redis holds in each case, then runs a hoard of idle
//! connections from many addresses and shows who still gets served.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use moat_testkit::RedisServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The shared installer, so `moat demo` works on a machine without Redis.
const INSTALL_SCRIPT: &str = include_str!("../../../scripts/install-redis.sh");

/// Options of `moat demo`.
#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// Client connections to open, through moat and then directly.
    #[arg(long, default_value_t = 3000)]
    connections: usize,
}

pub(crate) fn run(args: DemoArgs) -> anyhow::Result<()> {
    ensure_redis()?;
    let fd_limit = super::raise_fd_limit();
    // Each connection through moat costs this process two descriptors (client and accepted
    // side); keep clear of the limit.
    let budget = usize::try_from(fd_limit.saturating_sub(200) / 2).unwrap_or(usize::MAX);
    let n = args.connections.min(budget).min(9000);
    if n < args.connections {
        println!("(fd limit {fd_limit}: using {n} connections)");
    }

    let redis = RedisServer::start().context("starting redis-server")?;
    let version = redis
        .info()
        .ok()
        .and_then(|i| i.get("redis_version").cloned())
        .unwrap_or_default();
    let mut config = moat_proxy::Config::default();
    config.proxy.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.backend.address = redis.addr();
    let pool = config.backend.shared_connections;
    let moat = moat_proxy::start(config).context("starting moat")?;
    let moat_addr = moat.local_addr();

    println!("moat demo");
    println!(
        "  redis-server {version} on {} (pid {})",
        redis.addr(),
        redis.pid()
    );
    println!(
        "  moat proxy on {} with {pool} shared backend connections\n",
        moat.local_addr()
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // Redis's own helper connection for INFO counts as one client: subtract it.
    let clients = |redis: &RedisServer| redis.connected_clients().map(|c| c.saturating_sub(1));
    // One INFO call per snapshot: the testkit's own connection is one client and one
    // accepted connection, subtracted below.
    let snapshot = |redis: &RedisServer| -> anyhow::Result<Snapshot> {
        let info = redis.info()?;
        let field = |name: &str| -> anyhow::Result<u64> {
            info.get(name)
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("INFO lacks {name}"))
        };
        Ok(Snapshot {
            clients: field("connected_clients")?.saturating_sub(1),
            client_mem_kib: field("mem_clients_normal")? / 1024,
            accepted: field("total_connections_received")?,
        })
    };
    let before = snapshot(&redis)?;

    let start = Instant::now();
    let through = runtime.block_on(open_clients(moat_addr, n))?;
    let via_moat = snapshot(&redis)?.since(&before);
    let moat_time = start.elapsed();
    drop(through);
    moat.shutdown();
    // Let Redis notice moat's connections closing, so the next count is only direct clients.
    let deadline = Instant::now() + Duration::from_secs(3);
    while clients(&redis)? > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }

    let before = snapshot(&redis)?;
    let start = Instant::now();
    let direct = runtime.block_on(open_clients(redis.addr(), n))?;
    let via_direct = snapshot(&redis)?.since(&before);
    let direct_time = start.elapsed();
    drop(direct);

    println!("  {n} clients, each connected and SET one key, all still open. What Redis holds:\n");
    println!(
        "  {:<20} {:>18} {:>22} {:>26}",
        "", "connected_clients", "client memory (KiB)", "connections accepted"
    );
    for (label, s) in [
        ("through moat", &via_moat),
        ("straight to Redis", &via_direct),
    ] {
        println!(
            "  {:<20} {:>18} {:>22} {:>26}",
            label, s.clients, s.client_mem_kib, s.accepted
        );
    }
    println!(
        "\n  Opening them took {moat_time:.1?} through moat and {direct_time:.1?} straight to Redis."
    );
    println!(
        "  Behind moat, Redis serves every client over {} shared connection(s): client churn and\n  \
         hoarding never reach its maxclients, file descriptors or client memory.",
        via_moat.clients
    );
    hoard()?;
    Ok(())
}

/// Idle connections held by the hoard, from this many addresses.
const HOARD: usize = 1100;
const HOARD_SOURCES: u32 = 50;
/// A small `maxclients`, so the hoard fills Redis quickly.
const DEMO_MAXCLIENTS: usize = 1000;

/// Part two: a hoard of idle connections from many addresses (slowloris), then one
/// legitimate client, straight to Redis and through moat.
fn hoard() -> anyhow::Result<()> {
    // Protected mode would refuse 127.1.x.y outright; the server only listens on 127.0.0.1.
    let redis = RedisServer::builder()
        .config(format!("maxclients {DEMO_MAXCLIENTS}"))
        .config("protected-mode no")
        .start()
        .context("starting redis-server")?;
    let handshake = Duration::from_secs(3);
    let mut config = moat_proxy::Config::default();
    config.proxy.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.backend.address = redis.addr();
    config.guard.handshake_timeout = handshake;
    let moat = moat_proxy::start(config).context("starting moat")?;

    println!(
        "\n  Hoard: {HOARD} idle connections from {HOARD_SOURCES} addresses (127.1.0.x), then a \
         legitimate client (127.2.0.1) sends SET. Redis has maxclients {DEMO_MAXCLIENTS}.\n"
    );
    println!(
        "  {:<20} {:<40} {:>24}",
        "", "legitimate client's reply", "Redis connected_clients"
    );

    // Opened before the hoard, as an operator's console would be: a full Redis refuses new
    // connections, INFO ones included.
    let mut console = std::net::TcpStream::connect(redis.addr())?;
    let held = open_idle(redis.addr(), HOARD);
    let reply = legit_set(redis.addr())?;
    let clients = connected_clients(&mut console)?.saturating_sub(1);
    println!(
        "  {:<20} {:<40} {:>24}",
        "straight to Redis", reply, clients
    );
    drop(held);

    let held = open_idle(moat.local_addr(), HOARD);
    let reply = legit_set(moat.local_addr())?;
    let clients = connected_clients(&mut console)?.saturating_sub(1);
    println!("  {:<20} {:<40} {:>24}", "through moat", reply, clients);
    std::thread::sleep(handshake + Duration::from_millis(1500));
    let (mut refused, mut closed, mut open) = (0, 0, 0);
    for stream in &held {
        match fate(stream) {
            Fate::Refused => refused += 1,
            Fate::Closed => closed += 1,
            Fate::Open => open += 1,
        }
    }
    println!(
        "\n  Of the {} idle connections, moat refused {refused} at once (rate and concurrency limits \
         per\n  address and per /24), closed {closed} at its {}s handshake deadline, and holds {open}; \
         none reached Redis.",
        held.len(),
        handshake.as_secs()
    );
    let banned = moat.guard().bans(Instant::now()).len();
    println!(
        "  Silent connections and refusals are strikes: {banned} of the {HOARD_SOURCES} addresses are banned now."
    );
    Ok(())
}

/// `connected_clients` read over an already open connection.
fn connected_clients(console: &mut std::net::TcpStream) -> anyhow::Result<u64> {
    use std::io::{Read, Write};
    console.set_read_timeout(Some(Duration::from_secs(5)))?;
    console.write_all(b"INFO clients\r\n")?;
    let mut reply = Vec::new();
    let mut chunk = [0u8; 4096];
    while !reply.ends_with(b"\r\n\r\n") {
        let n = console.read(&mut chunk)?;
        if n == 0 {
            bail!("Redis closed the console connection");
        }
        reply.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&reply)
        .lines()
        .find_map(|l| l.strip_prefix("connected_clients:")?.trim().parse().ok())
        .context("INFO clients lacks connected_clients")
}

/// What became of an idle connection.
enum Fate {
    /// Moat answered with a refusal line and closed it.
    Refused,
    /// Closed without a word (a deadline).
    Closed,
    /// Still open.
    Open,
}

fn fate(stream: &std::net::TcpStream) -> Fate {
    use std::io::Read;
    let _ = stream.set_nonblocking(true);
    let mut buf = [0u8; 256];
    match (&*stream).read(&mut buf) {
        Ok(n) if buf[..n].starts_with(b"-ERR moat:") => Fate::Refused,
        Ok(_) => Fate::Closed,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Fate::Open,
        Err(_) => Fate::Closed,
    }
}

/// Opens up to `n` connections from the hoard's addresses and sends nothing.
fn open_idle(target: SocketAddr, n: usize) -> Vec<std::net::TcpStream> {
    (0..n)
        .filter_map(|i| {
            let source = std::net::Ipv4Addr::from(0x7f01_0001 + (i as u32 % HOARD_SOURCES));
            connect_from(source, target).ok()
        })
        .collect()
}

fn connect_from(
    source: std::net::Ipv4Addr,
    target: SocketAddr,
) -> std::io::Result<std::net::TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::from((source, 0)).into())?;
    socket.connect_timeout(&target.into(), Duration::from_secs(2))?;
    Ok(socket.into())
}

/// One SET from a fresh address, and the first line of the reply.
fn legit_set(target: SocketAddr) -> anyhow::Result<String> {
    use std::io::{BufRead, Write};
    let mut stream = connect_from(std::net::Ipv4Addr::new(127, 2, 0, 1), target)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"*3\r\n$3\r\nSET\r\n$4\r\ndemo\r\n$2\r\nok\r\n")?;
    let mut line = String::new();
    std::io::BufReader::new(&stream).read_line(&mut line)?;
    Ok(line.trim_end().to_string())
}

/// What Redis reports about its clients.
struct Snapshot {
    clients: u64,
    client_mem_kib: u64,
    accepted: u64,
}

impl Snapshot {
    /// The state now, with connections accepted counted since `before` (minus the INFO
    /// connection that took this snapshot).
    fn since(self, before: &Snapshot) -> Snapshot {
        Snapshot {
            accepted: self.accepted.saturating_sub(before.accepted + 1),
            ..self
        }
    }
}

/// Opens `n` connections to `addr`, has each SET its own key and read the reply, and keeps
/// them open.
async fn open_clients(addr: SocketAddr, n: usize) -> anyhow::Result<Vec<TcpStream>> {
    let mut tasks = tokio::task::JoinSet::new();
    let per_task = n.div_ceil(50);
    for t in 0..50 {
        let range = (t * per_task)..((t + 1) * per_task).min(n);
        tasks.spawn(async move {
            let mut held = Vec::with_capacity(range.len());
            for i in range {
                let mut s = TcpStream::connect(addr).await?;
                let key = format!("demo:{i}");
                let req = format!("*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n$1\r\nx\r\n", key.len());
                s.write_all(req.as_bytes()).await?;
                let mut reply = [0u8; 5];
                tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut reply))
                    .await
                    .context("reply timed out")??;
                if &reply != b"+OK\r\n" {
                    bail!("unexpected reply {:?}", String::from_utf8_lossy(&reply));
                }
                held.push(s);
            }
            anyhow::Ok(held)
        });
    }
    let mut all = Vec::with_capacity(n);
    while let Some(res) = tasks.join_next().await {
        all.extend(res??);
    }
    Ok(all)
}

/// Installs redis-server with the shared script when it is missing.
fn ensure_redis() -> anyhow::Result<()> {
    if moat_testkit::redis_server_binary().is_ok() {
        return Ok(());
    }
    println!("redis-server not found: installing redis-server and redis-tools with apt...");
    let status = Command::new("bash")
        .arg("-c")
        .arg(INSTALL_SCRIPT)
        .status()
        .context("running the Redis installer")?;
    if !status.success() {
        bail!("installing redis-server failed; install it by hand (apt-get install redis-server)");
    }
    moat_testkit::redis_server_binary().context("redis-server still missing after install")?;
    Ok(())
}
