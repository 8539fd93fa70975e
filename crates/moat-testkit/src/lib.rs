//! Runs real `redis-server` processes on loopback for moat's integration
//! tests, `moat demo` and the benchmark lab.
//!
//! Each [`RedisServer`] owns a private temporary directory holding its
//! generated `redis.conf`, its log and its working directory, and stops its
//! child process by PID when dropped, so a panicking test leaves neither
//! zombies nor stray servers behind.
//!
//! ```no_run
//! let redis = moat_testkit::RedisServer::builder()
//!     .config("maxclients 100")
//!     .password("hunter2")
//!     .start()?;
//! assert_eq!(redis.command(&["PING"])?, b"+PONG\r\n");
//! # Ok::<(), moat_testkit::TestkitError>(())
//! ```
#![forbid(unsafe_code)]

mod child;
pub mod cluster;
pub mod crowdsec;
mod resp;
mod sentinel;

pub use sentinel::{SentinelBuilder, SentinelServer};

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use std::{env, fs, thread};

use tempfile::TempDir;

/// Environment variable that overrides where `redis-server` is looked up.
pub const REDIS_SERVER_ENV: &str = "MOAT_REDIS_SERVER";

/// How long a freshly spawned server gets to answer `PING`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How many times start-up is retried on a new port when the child dies early.
const START_ATTEMPTS: u32 = 5;
/// Socket timeouts of the helper client; bounded so that a paused or wedged
/// server fails a test instead of hanging it.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Socket timeouts while waiting for start-up: short, because whatever
/// squats on a taken port may accept connections and never answer, and the
/// child's early exit must be noticed promptly.
const PROBE_TIMEOUT: Duration = Duration::from_millis(250);
/// How long a stopping server gets to honour SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How many trailing log lines go into start-up error messages.
const LOG_TAIL_LINES: usize = 30;

/// Everything that can go wrong while running or talking to a test server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestkitError {
    /// No usable `redis-server` executable was found.
    #[error(
        "redis-server not found ({searched}); install it with `bash scripts/install-redis.sh` \
         or point ${REDIS_SERVER_ENV} at the binary"
    )]
    BinaryNotFound {
        /// Where the lookup went.
        searched: String,
    },
    /// An operating-system call failed.
    #[error("{context}: {source}")]
    Io {
        /// What the testkit was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `redis-server` refused the generated configuration file.
    #[error("redis-server rejected its configuration:\n{output}")]
    Config {
        /// What redis-server printed about it.
        output: String,
    },
    /// The server did not come up.
    #[error(
        "redis-server did not start after {attempts} attempt(s): {reason}\n--- log tail ---\n{log_tail}"
    )]
    StartFailed {
        /// How many ports were tried.
        attempts: u32,
        /// Why the last attempt failed.
        reason: String,
        /// The end of the server's log file.
        log_tail: String,
    },
    /// The server answered with a RESP error where success was required.
    #[error("redis replied to {command} with an error: {reply}")]
    ErrorReply {
        /// The command name.
        command: String,
        /// The error text, without the leading `-`.
        reply: String,
    },
    /// The server sent something that is not a RESP reply of the expected shape.
    #[error("unexpected reply from redis: {0}")]
    Protocol(String),
    /// `INFO` has no such field.
    #[error("INFO has no field `{0}`")]
    MissingInfoField(String),
    /// An `INFO` field does not hold an unsigned integer.
    #[error("INFO field `{field}` is {value:?}, not an unsigned integer")]
    NotANumber {
        /// The field name.
        field: String,
        /// Its value.
        value: String,
    },
    /// The server was killed and not restarted.
    #[error("redis-server is not running (killed and not restarted)")]
    NotRunning,
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> TestkitError {
    let context = context.into();
    move |source| TestkitError::Io { context, source }
}

/// Locates `redis-server`: `$MOAT_REDIS_SERVER` if set, else the first match
/// on `PATH`.
pub fn redis_server_binary() -> Result<PathBuf, TestkitError> {
    find_binary(env::var_os(REDIS_SERVER_ENV), env::var_os("PATH"))
}

fn find_binary(
    override_path: Option<OsString>,
    path: Option<OsString>,
) -> Result<PathBuf, TestkitError> {
    if let Some(explicit) = override_path.filter(|p| !p.is_empty()) {
        let explicit = PathBuf::from(explicit);
        return if explicit.is_file() {
            Ok(explicit)
        } else {
            Err(TestkitError::BinaryNotFound {
                searched: format!("${REDIS_SERVER_ENV}={}", explicit.display()),
            })
        };
    }
    let path = path.unwrap_or_default();
    for dir in env::split_paths(&path) {
        let candidate = dir.join("redis-server");
        if is_executable(&candidate) {
            return Ok(candidate);
        }
    }
    Err(TestkitError::BinaryNotFound {
        searched: format!("PATH={}", path.to_string_lossy()),
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Returns a loopback TCP port that was free a moment ago.
///
/// Another process may take it before the caller binds it; [`RedisServer`]
/// copes with that by retrying on a new port.
pub fn free_port() -> u16 {
    // Binding port 0 lets the kernel pick from the ephemeral range; failing to
    // bind loopback at all means the machine cannot run any test, so panic.
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap_or_else(|e| panic!("cannot bind an ephemeral port on 127.0.0.1: {e}"));
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("cannot read the ephemeral port's address: {e}"))
        .port()
}

/// Configures a [`RedisServer`] before starting it; see [`RedisServer::builder`].
#[derive(Debug, Clone, Default)]
pub struct RedisServerBuilder {
    extra_config: Vec<String>,
    password: Option<String>,
    /// Lets tests force the first port to exercise the retry path.
    first_port: Option<u16>,
}

impl RedisServerBuilder {
    /// Appends a raw `redis.conf` line, e.g. `"maxclients 100"`; later lines
    /// override earlier ones, including the testkit's defaults.
    pub fn config(mut self, line: impl Into<String>) -> Self {
        self.extra_config.push(line.into());
        self
    }

    /// Sets `requirepass`; the helper client methods authenticate with it.
    pub fn password(mut self, pass: impl Into<String>) -> Self {
        self.password = Some(pass.into());
        self
    }

    /// Spawns the server and waits until it answers `PING`.
    ///
    /// If the child exits early (typically because its port was taken in the
    /// meantime) it is retried on a new port, up to five times.
    pub fn start(self) -> Result<RedisServer, TestkitError> {
        let binary = redis_server_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("moat-redis-")
            .tempdir()
            .map_err(io_err("creating the redis temp dir"))?;
        let mut server = RedisServer {
            child: None,
            port: 0,
            pid: 0,
            password: self.password,
            extra_config: self.extra_config,
            binary,
            dir,
        };
        let mut last_failure = String::new();
        for attempt in 1..=START_ATTEMPTS {
            server.port = match (attempt, self.first_port) {
                (1, Some(port)) => port,
                _ => free_port(),
            };
            server.write_config()?;
            match server.spawn_and_wait()? {
                Ok(()) => return Ok(server),
                Err(reason) => last_failure = reason,
            }
        }
        Err(TestkitError::StartFailed {
            attempts: START_ATTEMPTS,
            reason: last_failure,
            log_tail: server.log_tail(),
        })
    }
}

/// A running `redis-server` child process on 127.0.0.1.
///
/// Dropping it (or calling [`RedisServer::stop`]) sends SIGTERM, waits for the
/// process, falls back to SIGKILL if it lingers, then deletes its directory.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    pid: u32,
    password: Option<String>,
    extra_config: Vec<String>,
    binary: PathBuf,
    /// Declared last so the directory outlives the process writing into it.
    dir: TempDir,
}

impl RedisServer {
    /// Starts a server with the default configuration.
    pub fn start() -> Result<RedisServer, TestkitError> {
        Self::builder().start()
    }

    /// Returns a builder for a server with extra configuration.
    pub fn builder() -> RedisServerBuilder {
        RedisServerBuilder::default()
    }

    /// The TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's address, always on 127.0.0.1.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port))
    }

    /// The process id of the current (or, after [`kill9`](Self::kill9), the
    /// last) child.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The server's private directory (config, log, working dir).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Sends one command over a fresh connection and returns the raw RESP
    /// reply bytes, e.g. `b"+PONG\r\n"`.
    ///
    /// Authenticates first when a password is configured; a failed `AUTH` is
    /// an error, but an error reply to `args` itself is returned as raw bytes
    /// so that tests can assert on it.
    pub fn command(&self, args: &[&str]) -> Result<Vec<u8>, TestkitError> {
        if self.child.is_none() {
            // The port may already belong to someone else's server.
            return Err(TestkitError::NotRunning);
        }
        let mut conn = self.connect(IO_TIMEOUT)?;
        conn.request(args)
    }

    /// Runs `INFO all` and returns its fields as `field -> value`.
    pub fn info(&self) -> Result<HashMap<String, String>, TestkitError> {
        let reply = self.command(&["INFO", "all"])?;
        let text = resp::bulk_string(&reply, "INFO")?;
        Ok(parse_info(&text))
    }

    /// Returns one `INFO` field as an unsigned integer.
    pub fn info_u64(&self, field: &str) -> Result<u64, TestkitError> {
        let info = self.info()?;
        let value = info
            .get(field)
            .ok_or_else(|| TestkitError::MissingInfoField(field.to_owned()))?;
        value.parse().map_err(|_| TestkitError::NotANumber {
            field: field.to_owned(),
            value: value.clone(),
        })
    }

    /// The `connected_clients` INFO field.
    ///
    /// The helper's own connection that asks is counted too, so an otherwise
    /// idle server reports 1.
    pub fn connected_clients(&self) -> Result<u64, TestkitError> {
        self.info_u64("connected_clients")
    }

    /// Stops the server; the same as dropping it, but reads better in tests.
    pub fn stop(self) {
        drop(self);
    }

    /// Kills the server with SIGKILL and reaps it; [`restart`](Self::restart)
    /// brings it back. Does nothing if it is already dead.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Errors mean the child is already gone; wait() reaps it either way.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server with SIGSTOP: connections stay open but nothing is
    /// answered, as with a hung backend.
    ///
    /// # Panics
    /// If the server is not running or the signal cannot be sent, since a test
    /// that silently runs against an unpaused server proves nothing.
    pub fn pause(&self) {
        self.signal("STOP");
        self.wait_stopped(true);
    }

    /// Waits until the process is (`stopped`) or is no longer stopped: signals take
    /// effect asynchronously (a process on another CPU stops at its next kernel entry), and
    /// the caller's next step must meet the state it asked for. Bounded; without a
    /// readable /proc (not Linux) it does not wait.
    fn wait_stopped(&self, stopped: bool) {
        let pid = self.pid();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return;
            };
            let state = stat
                .rfind(')')
                .and_then(|end| stat[end + 1..].trim_start().chars().next());
            if matches!(state, Some('T' | 't')) == stopped {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Thaws a server frozen by [`pause`](Self::pause) with SIGCONT.
    ///
    /// # Panics
    /// If the server is not running or the signal cannot be sent.
    pub fn resume(&self) {
        self.signal("CONT");
        self.wait_stopped(false);
    }

    /// Starts the server again on the same port with the same configuration,
    /// killing the current process first if it is still running.
    pub fn restart(&mut self) -> Result<(), TestkitError> {
        self.kill9();
        match self.spawn_and_wait()? {
            Ok(()) => Ok(()),
            Err(reason) => Err(TestkitError::StartFailed {
                attempts: 1,
                reason,
                log_tail: self.log_tail(),
            }),
        }
    }

    /// The contents of the server's log file, for failure messages; empty if
    /// it cannot be read.
    pub fn log(&self) -> String {
        let mut log = fs::read_to_string(self.log_path()).unwrap_or_default();
        // Config errors never reach the log file: redis prints them to stderr
        // before opening it, and that stderr is captured next to the log.
        let output = fs::read_to_string(self.output_path()).unwrap_or_default();
        if !output.trim().is_empty() {
            log.push_str("--- redis-server stdout/stderr ---\n");
            log.push_str(&output);
        }
        log
    }

    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }

    fn conf_path(&self) -> PathBuf {
        self.dir.path().join("redis.conf")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn output_path(&self) -> PathBuf {
        self.dir.path().join("redis.out")
    }

    fn write_config(&self) -> Result<(), TestkitError> {
        let dir = self.dir.path().to_string_lossy();
        let log = self.log_path();
        let mut conf = format!(
            "port {port}\n\
             bind 127.0.0.1\n\
             daemonize no\n\
             save \"\"\n\
             appendonly no\n\
             dir {dir}\n\
             logfile {log}\n",
            port = self.port,
            dir = conf_quote(&dir),
            log = conf_quote(&log.to_string_lossy()),
        );
        if let Some(pass) = &self.password {
            conf.push_str(&format!("requirepass {}\n", conf_quote(pass)));
        }
        for line in &self.extra_config {
            conf.push_str(line);
            conf.push('\n');
        }
        fs::write(self.conf_path(), conf).map_err(io_err("writing redis.conf"))
    }

    /// Spawns the child and waits for it to answer. The outer error is fatal
    /// (retrying cannot help); the inner one says why this attempt failed.
    fn spawn_and_wait(&mut self) -> Result<Result<(), String>, TestkitError> {
        let output = fs::File::create(self.output_path())
            .map_err(io_err("creating the redis-server output file"))?;
        let output_err = output
            .try_clone()
            .map_err(io_err("duplicating the redis-server output file"))?;
        let child = Command::new(&self.binary)
            .arg(self.conf_path())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(output)
            .stderr(output_err)
            .spawn()
            .map_err(io_err(format!("spawning {}", self.binary.display())))?;
        self.pid = child.id();
        self.child = Some(child);
        child::wait_ready(self)
    }

    fn connect(&self, timeout: Duration) -> Result<Connection, TestkitError> {
        let stream = TcpStream::connect_timeout(&self.addr(), timeout)
            .map_err(io_err(format!("connecting to redis at {}", self.addr())))?;
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .and_then(|()| stream.set_nodelay(true))
            .map_err(io_err("configuring the redis connection"))?;
        let mut conn = Connection { stream };
        if let Some(pass) = &self.password {
            let reply = conn.request(&["AUTH", pass])?;
            resp::expect_ok(&reply, "AUTH")?;
        }
        Ok(conn)
    }

    fn signal(&self, signal: &str) {
        assert!(
            self.child.is_some(),
            "cannot send SIG{signal} to redis-server: it is not running"
        );
        if let Err(e) = send_signal(self.pid, signal) {
            panic!("cannot send SIG{signal} to redis-server {}: {e}", self.pid);
        }
    }

    fn shutdown(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        // The child is still unreaped here, so its PID cannot have been
        // recycled by another process and signalling it by number is safe.
        // CONT follows TERM so that a paused server wakes up to handle it.
        let signalled = send_signal(child.id(), "TERM")
            .and_then(|()| send_signal(child.id(), "CONT"))
            .is_ok();
        if signalled {
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

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Sends a signal by name through the shell's `kill` builtin, which exists
/// even on minimal systems that lack procps' `/usr/bin/kill`.
fn send_signal(pid: u32, signal: &str) -> Result<(), std::io::Error> {
    let status = Command::new("sh")
        .args([
            "-c",
            "kill -s \"$1\" \"$2\"",
            "sh",
            signal,
            &pid.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "kill -s {signal} {pid} failed: {status}"
        )))
    }
}

/// Quotes a value for redis.conf, whose parser splits on spaces and
/// understands C-style escapes inside double quotes.
fn conf_quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            _ => out.push(c),
        }
    }
    out.push('"');
    out
}

fn parse_info(text: &str) -> HashMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// A blocking helper connection that speaks just enough RESP.
struct Connection {
    stream: TcpStream,
}

impl Connection {
    fn request(&mut self, args: &[&str]) -> Result<Vec<u8>, TestkitError> {
        self.stream
            .write_all(&resp::encode_command(args))
            .map_err(io_err("sending a command to redis"))?;
        let mut buf = Vec::with_capacity(256);
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(len) = resp::reply_len(&buf)? {
                buf.truncate(len);
                return Ok(buf);
            }
            let n = self
                .stream
                .read(&mut chunk)
                .map_err(io_err("reading a reply from redis"))?;
            if n == 0 {
                return Err(TestkitError::Protocol(format!(
                    "connection closed after {} byte(s) of a reply: {:?}",
                    buf.len(),
                    String::from_utf8_lossy(&buf)
                )));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }
}

impl child::Started for RedisServer {
    fn what(&self) -> &'static str {
        "redis-server"
    }

    fn port(&self) -> u16 {
        self.port
    }

    fn output_path(&self) -> PathBuf {
        RedisServer::output_path(self)
    }

    fn reap(&mut self) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                Some(status)
            }
            _ => None,
        }
    }

    fn answers_as_own_child(&self) -> bool {
        self.connect(PROBE_TIMEOUT)
            .is_ok_and(|mut conn| own_child(&mut conn, self.pid).is_some())
    }

    fn kill_now(&mut self) {
        self.kill9();
    }
}

/// INFO server of the server on `conn`, if it is the process `pid` (our own child).
pub(crate) fn own_child(conn: &mut Connection, pid: u32) -> Option<HashMap<String, String>> {
    let reply = conn.request(&["INFO", "server"]).ok()?;
    let text = resp::bulk_string(&reply, "INFO").ok()?;
    let info = parse_info(&text);
    info.get("process_id")
        .is_some_and(|p| *p == pid.to_string())
        .then_some(info)
}

#[cfg(test)]
mod tests;
