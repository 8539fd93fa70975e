//! The targets a run attacks: redis-server alone, hardened by its own config, or behind
//! `moat proxy` (a child process of the moat binary), each on free loopback ports with its
//! own directory and stopped by PID when dropped; or an endpoint the user started.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use moat_testkit::RedisServer;
use serde::Serialize;

use super::LabError;
use super::scenario::TargetName;

/// How long a started moat gets to answer PING through itself.
const READY: Duration = Duration::from_secs(10);

/// What to start (or use) for one column of the matrix.
#[derive(Debug, Clone)]
pub enum TargetDef {
    /// One the lab starts.
    Started(TargetName),
    /// A loopback endpoint the user started (`--target NAME=HOST:PORT`).
    External {
        /// Its name in the report.
        name: String,
        /// Where it listens.
        addr: SocketAddr,
    },
}

impl TargetDef {
    /// The name in reports.
    pub fn name(&self) -> String {
        match self {
            TargetDef::Started(t) => t.name().to_owned(),
            TargetDef::External { name, .. } => name.clone(),
        }
    }

    /// Parses `NAME=HOST:PORT`.
    pub fn parse_external(s: &str) -> Result<Self, LabError> {
        let bad = || LabError::Target(format!("{s}: expected NAME=HOST:PORT"));
        let (name, addr) = s.split_once('=').ok_or_else(bad)?;
        let addr = std::net::ToSocketAddrs::to_socket_addrs(addr)
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(bad)?;
        if name.is_empty() {
            return Err(bad());
        }
        crate::target::check(addr, false).map_err(|e| LabError::Target(e.to_string()))?;
        Ok(TargetDef::External {
            name: name.to_owned(),
            addr,
        })
    }
}

/// A process the lab started, for sampling and for checking nothing is left behind.
#[derive(Debug, Clone, Serialize)]
pub struct Proc {
    /// `redis`, `moat` or `attack`.
    pub role: String,
    /// Its PID.
    pub pid: u32,
}

/// A target up and running for one run.
#[derive(Debug)]
pub struct Running {
    /// The name in reports.
    pub name: String,
    /// Where legitimate clients and the attack connect.
    pub addr: SocketAddr,
    /// Where INFO is asked (the Redis itself, behind moat too), if anywhere.
    pub info_addr: Option<SocketAddr>,
    /// moat's admin API, for `/metrics`.
    pub admin: Option<SocketAddr>,
    redis: Option<RedisServer>,
    moat: Option<MoatChild>,
}

impl Running {
    /// Starts (or, for an external endpoint, checks) the target of `def`.
    /// `exe` is the moat binary, `moat_config` its optional config file.
    pub fn start(
        def: &TargetDef,
        exe: &Path,
        moat_config: Option<&Path>,
        fd_limit: u64,
    ) -> Result<Self, LabError> {
        let name = def.name();
        let started = |e: moat_testkit::TestkitError| {
            LabError::Target(format!("starting {name}'s redis-server: {e}"))
        };
        match def {
            TargetDef::External { addr, .. } => {
                // INFO is sampled only when the endpoint answers it.
                let info_addr = answers_info(*addr).then_some(*addr);
                if !answers_ping(*addr) {
                    return Err(LabError::Target(format!(
                        "{name} at {addr} does not answer PING"
                    )));
                }
                Ok(Self {
                    name,
                    addr: *addr,
                    info_addr,
                    admin: None,
                    redis: None,
                    moat: None,
                })
            }
            TargetDef::Started(kind) => {
                let mut builder = RedisServer::builder()
                    // Redis's protected mode answers DENIED to 127.x.y.z sources other
                    // than 127.0.0.1: the lab's groups would all fail for the wrong reason.
                    .config("protected-mode no")
                    .config("save \"\"");
                if *kind == TargetName::RedisHardened {
                    for line in hardened_config(fd_limit) {
                        builder = builder.config(line);
                    }
                }
                let redis = builder.start().map_err(started)?;
                let backend = redis.addr();
                let (addr, admin, moat) = if *kind == TargetName::Moat {
                    let child = MoatChild::start(exe, backend, moat_config)?;
                    (child.listen, Some(child.admin), Some(child))
                } else {
                    (backend, None, None)
                };
                Ok(Self {
                    name,
                    addr,
                    info_addr: Some(backend),
                    admin,
                    redis: Some(redis),
                    moat,
                })
            }
        }
    }

    /// The processes started for this target.
    pub fn procs(&self) -> Vec<Proc> {
        let mut out = Vec::new();
        if let Some(r) = &self.redis {
            out.push(Proc {
                role: "redis".into(),
                pid: r.pid(),
            });
        }
        if let Some(m) = &self.moat {
            out.push(Proc {
                role: "moat".into(),
                pid: m.child.id(),
            });
        }
        out
    }

    /// Why the target is no longer usable, if a process of it has exited.
    pub fn died(&mut self) -> Option<String> {
        if let Some(r) = &self.redis
            && !alive(r.pid())
        {
            return Some(format!(
                "{}'s redis-server (pid {}) died",
                self.name,
                r.pid()
            ));
        }
        if let Some(m) = &mut self.moat
            && let Ok(Some(status)) = m.child.try_wait()
        {
            return Some(format!("{}'s moat proxy exited ({status})", self.name));
        }
        None
    }

    /// Stops every process of the target (also done on drop).
    pub fn stop(mut self) {
        self.moat.take();
        self.redis.take();
    }
}

/// The hardened Redis's extra config lines.
pub fn hardened_config(fd_limit: u64) -> Vec<String> {
    // Redis keeps 32 descriptors for itself and lowers maxclients to fit the fd limit
    // anyway; saying it outright makes the cap explicit in the report.
    let maxclients = fd_limit.saturating_sub(64).clamp(128, 100_000);
    let mut lines = vec![
        format!("maxclients {maxclients}"),
        "timeout 30".into(),
        "tcp-keepalive 60".into(),
        "client-output-buffer-limit normal 64mb 16mb 10".into(),
    ];
    if redis_major() >= 7 {
        // A percentage is of maxmemory, which is unset (0) here: a fixed amount bites.
        lines.push("maxmemory-clients 128mb".into());
    }
    lines
}

/// redis-server's major version (0 if unknown).
fn redis_major() -> u32 {
    let Ok(bin) = moat_testkit::redis_server_binary() else {
        return 0;
    };
    let Ok(out) = Command::new(bin).arg("--version").output() else {
        return 0;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("v=")
        .nth(1)
        .and_then(|v| v.split('.').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Whether a process is running (not gone, not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().chars().next()),
            Some(Some('Z' | 'X'))
        ),
        Err(_) => false,
    }
}

/// Sends `signal` to `pid` through the shell's `kill` builtin (no unsafe code here).
pub fn signal(pid: u32, signal: &str) {
    let _ = Command::new("sh")
        .args([
            "-c",
            "kill -s \"$1\" \"$2\" 2>/dev/null",
            "sh",
            signal,
            &pid.to_string(),
        ])
        .stdin(Stdio::null())
        .status();
}

/// `moat proxy` in front of a Redis, as a child of the moat binary.
#[derive(Debug)]
struct MoatChild {
    child: Child,
    listen: SocketAddr,
    admin: SocketAddr,
}

impl MoatChild {
    fn start(exe: &Path, backend: SocketAddr, config: Option<&Path>) -> Result<Self, LabError> {
        let listen = SocketAddr::from(([127, 0, 0, 1], moat_testkit::free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], moat_testkit::free_port()));
        let mut cmd = Command::new(exe);
        cmd.arg("proxy")
            .args(["--listen", &listen.to_string()])
            .args(["--backend", &backend.to_string()])
            .args(["--admin", &admin.to_string()]);
        if let Some(config) = config {
            cmd.arg("--config").arg(config);
        }
        // Its own process group: a terminal's Ctrl-C reaches the lab, which stops moat by
        // PID once the run's measurements are in.
        let child = std::os::unix::process::CommandExt::process_group(&mut cmd, 0)
            .env_remove("MOAT_CONFIG")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| LabError::Target(format!("starting {}: {e}", exe.display())))?;
        let mut me = Self {
            child,
            listen,
            admin,
        };
        let deadline = Instant::now() + READY;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = me.child.try_wait() {
                return Err(LabError::Target(format!(
                    "moat proxy exited at start ({status})"
                )));
            }
            if answers_ping(listen) {
                return Ok(me);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        me.stop();
        Err(LabError::Target(format!(
            "moat proxy did not answer on {listen} within {READY:?}"
        )))
    }

    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            signal(self.child.id(), "TERM");
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for MoatChild {
    fn drop(&mut self) {
        self.stop();
    }
}

fn ask(addr: SocketAddr, command: &[u8]) -> Option<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    s.write_all(command).ok()?;
    let mut buf = vec![0u8; 256];
    let n = s.read(&mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}

fn answers_ping(addr: SocketAddr) -> bool {
    ask(addr, b"PING\r\n").is_some_and(|r| r.starts_with(b"+PONG"))
}

fn answers_info(addr: SocketAddr) -> bool {
    ask(addr, b"INFO clients\r\n").is_some_and(|r| r.starts_with(b"$"))
}
