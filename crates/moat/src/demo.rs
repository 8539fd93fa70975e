//! `moat demo`: starts a real redis-server and moat in front of it, opens thousands of client
//! connections both ways, and shows what Redis holds in each case.

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
    Ok(())
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
