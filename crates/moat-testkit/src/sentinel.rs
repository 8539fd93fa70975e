//! Real Redis Sentinels on loopback: the installed `redis-server` run with `--sentinel`,
//! each on a free port with its own directory and config file (Sentinel rewrites it), and
//! stopped by PID when dropped.
//!
//! ```no_run
//! use moat_testkit::{RedisServer, SentinelServer};
//! let primary = RedisServer::start()?;
//! let sentinel = SentinelServer::builder()
//!     .monitor("mymaster", primary.addr(), 1)
//!     .start()?;
//! assert_eq!(sentinel.master_addr("mymaster")?, Some(primary.addr()));
//! # Ok::<(), moat_testkit::TestkitError>(())
//! ```

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use std::{fs, thread};

use tempfile::TempDir;

use super::{
    Connection, IO_TIMEOUT, PROBE_TIMEOUT, START_ATTEMPTS, STOP_TIMEOUT, TestkitError, conf_quote,
    free_port, io_err, redis_server_binary, send_signal,
};

/// Configures a [`SentinelServer`]; see [`SentinelServer::builder`].
#[derive(Debug, Clone, Default)]
pub struct SentinelBuilder {
    monitors: Vec<(String, SocketAddr, u32)>,
    down_after: Option<Duration>,
    failover_timeout: Option<Duration>,
    extra_config: Vec<String>,
}

impl SentinelBuilder {
    /// Monitors the primary at `addr` under `name`, with `quorum` Sentinels needed to agree
    /// it is down (1 for a lone Sentinel).
    pub fn monitor(mut self, name: &str, addr: SocketAddr, quorum: u32) -> Self {
        self.monitors.push((name.to_owned(), addr, quorum));
        self
    }

    /// `down-after-milliseconds` for every monitored name (Sentinel's default: 30 s).
    pub fn down_after(mut self, d: Duration) -> Self {
        self.down_after = Some(d);
        self
    }

    /// `failover-timeout` for every monitored name (Sentinel's default: 3 min).
    pub fn failover_timeout(mut self, d: Duration) -> Self {
        self.failover_timeout = Some(d);
        self
    }

    /// Appends a raw line to the Sentinel's config file.
    pub fn config(mut self, line: impl Into<String>) -> Self {
        self.extra_config.push(line.into());
        self
    }

    /// Spawns the Sentinel and waits until it answers; retried on a new port if the child
    /// dies early (its port was taken meanwhile).
    pub fn start(self) -> Result<SentinelServer, TestkitError> {
        let binary = redis_server_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("moat-sentinel-")
            .tempdir()
            .map_err(io_err("creating the sentinel temp dir"))?;
        let mut server = SentinelServer {
            child: None,
            port: 0,
            pid: 0,
            binary,
            setup: self,
            dir,
        };
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            server.port = free_port();
            server.write_config()?;
            match server.spawn_and_wait()? {
                Ok(()) => return Ok(server),
                Err(reason) => last = reason,
            }
        }
        Err(TestkitError::StartFailed {
            attempts: START_ATTEMPTS,
            reason: last,
            log_tail: server.log(),
        })
    }
}

/// A running Sentinel on 127.0.0.1; stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct SentinelServer {
    child: Option<Child>,
    port: u16,
    pid: u32,
    binary: PathBuf,
    setup: SentinelBuilder,
    /// Declared last so the directory outlives the process writing into it.
    dir: TempDir,
}

impl SentinelServer {
    /// A builder; add at least one [`SentinelBuilder::monitor`].
    pub fn builder() -> SentinelBuilder {
        SentinelBuilder::default()
    }

    /// The Sentinel's address, on 127.0.0.1.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The process id of the Sentinel.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The Sentinel's private directory (config, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Sends one command and returns the raw RESP reply.
    pub fn command(&self, args: &[&str]) -> Result<Vec<u8>, TestkitError> {
        if self.child.is_none() {
            return Err(TestkitError::NotRunning);
        }
        self.connect(IO_TIMEOUT)?.request(args)
    }

    /// The primary this Sentinel names for `name` (`SENTINEL get-master-addr-by-name`);
    /// none when it does not know the name.
    pub fn master_addr(&self, name: &str) -> Result<Option<SocketAddr>, TestkitError> {
        let reply = self.command(&["SENTINEL", "get-master-addr-by-name", name])?;
        if reply.starts_with(b"*-1") || reply.starts_with(b"_") {
            return Ok(None);
        }
        let text = String::from_utf8_lossy(&reply);
        let parts: Vec<&str> = text
            .split("\r\n")
            .filter(|l| !l.is_empty() && !l.starts_with('*') && !l.starts_with('$'))
            .collect();
        match parts.as_slice() {
            [ip, port] => {
                let ip: IpAddr = ip
                    .parse()
                    .map_err(|_| TestkitError::Protocol(text.to_string()))?;
                let port: u16 = port
                    .parse()
                    .map_err(|_| TestkitError::Protocol(text.to_string()))?;
                Ok(Some(SocketAddr::new(ip, port)))
            }
            _ => Err(TestkitError::Protocol(text.to_string())),
        }
    }

    /// How many replicas of `name` the Sentinel knows and does not consider down.
    pub fn replicas_up(&self, name: &str) -> Result<usize, TestkitError> {
        let reply = self.command(&["SENTINEL", "REPLICAS", name])?;
        let text = String::from_utf8_lossy(&reply);
        // Each replica is a flat list with a `flags` field: `slave` when healthy.
        let lines: Vec<&str> = text.split("\r\n").collect();
        Ok(lines
            .windows(4)
            .filter(|w| w[1] == "flags" && w[3] == "slave")
            .count())
    }

    /// Starts a failover of `name` without waiting for the primary to fail
    /// (`SENTINEL FAILOVER`); returns the raw reply.
    pub fn failover(&self, name: &str) -> Result<Vec<u8>, TestkitError> {
        self.command(&["SENTINEL", "FAILOVER", name])
    }

    /// The Sentinel's log, for failure messages.
    pub fn log(&self) -> String {
        let mut log = fs::read_to_string(self.dir.path().join("sentinel.log")).unwrap_or_default();
        let out = fs::read_to_string(self.dir.path().join("sentinel.out")).unwrap_or_default();
        if !out.trim().is_empty() {
            log.push_str("--- stdout/stderr ---\n");
            log.push_str(&out);
        }
        log
    }

    /// Kills the Sentinel with SIGKILL (an unreachable Sentinel).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops it; the same as dropping it.
    pub fn stop(self) {
        drop(self);
    }

    fn write_config(&self) -> Result<(), TestkitError> {
        let dir = self.dir.path();
        let mut conf = format!(
            "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {dir}\nlogfile {log}\n",
            port = self.port,
            dir = conf_quote(&dir.to_string_lossy()),
            log = conf_quote(&dir.join("sentinel.log").to_string_lossy()),
        );
        for (name, addr, quorum) in &self.setup.monitors {
            conf.push_str(&format!(
                "sentinel monitor {name} {} {} {quorum}\n",
                addr.ip(),
                addr.port()
            ));
            if let Some(d) = self.setup.down_after {
                conf.push_str(&format!(
                    "sentinel down-after-milliseconds {name} {}\n",
                    d.as_millis()
                ));
            }
            if let Some(d) = self.setup.failover_timeout {
                conf.push_str(&format!(
                    "sentinel failover-timeout {name} {}\n",
                    d.as_millis()
                ));
            }
        }
        for line in &self.setup.extra_config {
            conf.push_str(line);
            conf.push('\n');
        }
        fs::write(dir.join("sentinel.conf"), conf).map_err(io_err("writing sentinel.conf"))
    }

    fn spawn_and_wait(&mut self) -> Result<Result<(), String>, TestkitError> {
        let out_path = self.dir.path().join("sentinel.out");
        let out = fs::File::create(&out_path).map_err(io_err("creating sentinel.out"))?;
        let err = out
            .try_clone()
            .map_err(io_err("duplicating sentinel.out"))?;
        let child = Command::new(&self.binary)
            .arg(self.dir.path().join("sentinel.conf"))
            .arg("--sentinel")
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(io_err(format!(
                "spawning {} --sentinel",
                self.binary.display()
            )))?;
        self.pid = child.id();
        self.child = Some(child);
        crate::child::wait_ready(self)
    }

    fn connect(&self, timeout: Duration) -> Result<Connection, TestkitError> {
        let stream = std::net::TcpStream::connect_timeout(&self.addr(), timeout)
            .map_err(io_err(format!("connecting to sentinel at {}", self.addr())))?;
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .map_err(io_err("configuring the sentinel connection"))?;
        Ok(Connection { stream })
    }
}

impl crate::child::Started for SentinelServer {
    fn what(&self) -> &'static str {
        "sentinel"
    }

    fn port(&self) -> u16 {
        self.port
    }

    fn output_path(&self) -> PathBuf {
        self.dir.path().join("sentinel.out")
    }

    fn reap(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    fn answers_as_own_child(&self) -> bool {
        self.connect(PROBE_TIMEOUT).is_ok_and(|mut conn| {
            crate::own_child(&mut conn, self.pid)
                .is_some_and(|info| info.get("redis_mode").is_some_and(|m| m == "sentinel"))
        })
    }

    fn kill_now(&mut self) {
        self.kill9();
    }
}

impl Drop for SentinelServer {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        // Unreaped, so the PID is still this child's.
        if send_signal(child.id(), "TERM").is_ok() {
            let deadline = Instant::now() + STOP_TIMEOUT;
            while Instant::now() < deadline {
                if !matches!(child.try_wait(), Ok(None)) {
                    return;
                }
                thread::sleep(Duration::from_millis(5));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}
