//! Runs a real CrowdSec Local API (`crowdsec -no-cs`: the LAPI alone, no log acquisition)
//! on a free loopback port, with a config directory and sqlite database of its own in a
//! temporary directory, for the tests of moat's `[crowdsec]`. `cscli` runs against the same
//! config to register machines and bouncers and to add, list and delete decisions. The
//! LAPI is stopped by PID when dropped.
//!
//! Debian's `crowdsec` package provides both binaries (`bash scripts/install-crowdsec.sh`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use std::{env, fs, thread};

use tempfile::TempDir;

/// How long a freshly spawned LAPI gets to answer `/health`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// What can go wrong running the LAPI or cscli.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CrowdSecError {
    /// `crowdsec` or `cscli` is not on `PATH`.
    #[error("{0} not found on PATH; install it with `bash scripts/install-crowdsec.sh`")]
    NotFound(&'static str),
    /// A file or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The LAPI did not answer in time, or a cscli command failed.
    #[error("{0}")]
    Failed(String),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> CrowdSecError {
    let context = context.into();
    move |source| CrowdSecError::Io { context, source }
}

fn on_path(name: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Whether both `crowdsec` and `cscli` are installed (tests skip when they are not).
pub fn crowdsec_installed() -> bool {
    on_path("crowdsec").is_some() && on_path("cscli").is_some()
}

/// A running CrowdSec LAPI.
#[derive(Debug)]
pub struct CrowdSecLapi {
    child: Option<Child>,
    dir: TempDir,
    addr: SocketAddr,
}

impl CrowdSecLapi {
    /// Writes a config in a new temporary directory and starts the LAPI on a free loopback
    /// port; returns once it answers `/health`.
    pub fn start() -> Result<Self, CrowdSecError> {
        if on_path("crowdsec").is_none() {
            return Err(CrowdSecError::NotFound("crowdsec"));
        }
        if on_path("cscli").is_none() {
            return Err(CrowdSecError::NotFound("cscli"));
        }
        let dir = tempfile::Builder::new()
            .prefix("moat-crowdsec-")
            .tempdir()
            .map_err(io("creating the LAPI's directory"))?;
        let addr: SocketAddr = ([127, 0, 0, 1], crate::free_port()).into();
        write_config(dir.path(), addr)?;
        let mut lapi = Self {
            child: None,
            dir,
            addr,
        };
        // cscli registers its own machine in the database (the LAPI need not run), so that
        // `cscli decisions ...` can log in to the LAPI.
        lapi.cscli(&[
            "machines",
            "add",
            "cscli-local",
            "--password",
            "cscli-local-password-0123456789",
            "-f",
            &lapi.path("local_api_credentials.yaml"),
            "--force",
        ])?;
        lapi.resume()?;
        Ok(lapi)
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }

    /// The LAPI's base URL (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The LAPI's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Runs `cscli -c <config> <args>`; its standard output, or an error with its output.
    pub fn cscli(&self, args: &[&str]) -> Result<String, CrowdSecError> {
        let out = Command::new("cscli")
            .arg("-c")
            .arg(self.path("config.yaml"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(io("running cscli"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            return Err(CrowdSecError::Failed(format!(
                "cscli {args:?}: {}\n{stdout}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(stdout)
    }

    /// The LAPI's log so far (for failure messages).
    pub fn log(&self) -> String {
        fs::read_to_string(self.path("lapi.log")).unwrap_or_default()
    }

    /// Registers a machine (a watcher) with a password.
    pub fn add_machine(&self, id: &str, password: &str) -> Result<(), CrowdSecError> {
        let file = self.path(&format!("machine-{id}.yaml"));
        self.cscli(&[
            "machines",
            "add",
            id,
            "--password",
            password,
            "-f",
            &file,
            "--force",
        ])
        .map(drop)
    }

    /// Registers a bouncer with its API key.
    pub fn add_bouncer(&self, name: &str, key: &str) -> Result<(), CrowdSecError> {
        self.cscli(&["bouncers", "add", name, "-k", key]).map(drop)
    }

    /// Stops the LAPI by PID (the database stays: [`CrowdSecLapi::resume`] starts it again).
    pub fn pause(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the LAPI (again) on the same port and database; returns once it answers.
    pub fn resume(&mut self) -> Result<(), CrowdSecError> {
        if self.child.is_some() {
            return Ok(());
        }
        let log = fs::File::create(self.path("lapi.log")).map_err(io("creating the log"))?;
        let err = log.try_clone().map_err(io("cloning the log"))?;
        let child = Command::new("crowdsec")
            .arg("-c")
            .arg(self.path("config.yaml"))
            .arg("-no-cs")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(io("starting crowdsec"))?;
        self.child = Some(child);
        let start = Instant::now();
        while start.elapsed() < READY_TIMEOUT {
            if healthy(self.addr) {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(CrowdSecError::Failed(format!(
                    "crowdsec exited ({status}): {}",
                    fs::read_to_string(self.path("lapi.log")).unwrap_or_default()
                )));
            }
            thread::sleep(Duration::from_millis(50));
        }
        self.pause();
        Err(CrowdSecError::Failed(format!(
            "the LAPI did not answer within {READY_TIMEOUT:?}: {}",
            fs::read_to_string(self.path("lapi.log")).unwrap_or_default()
        )))
    }
}

impl Drop for CrowdSecLapi {
    fn drop(&mut self) {
        self.pause();
    }
}

fn healthy(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(250)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: lapi\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.") && out.contains(" 200 ")
}

fn write_config(dir: &Path, addr: SocketAddr) -> Result<(), CrowdSecError> {
    let d = dir.display();
    fs::create_dir_all(dir.join("data")).map_err(io("creating the data directory"))?;
    fs::create_dir_all(dir.join("hub")).map_err(io("creating the hub directory"))?;
    let config = format!(
        "common:\n  daemonize: false\n  log_media: stdout\n  log_level: info\n\
         config_paths:\n  config_dir: {d}\n  data_dir: {d}/data\n  hub_dir: {d}/hub\n  \
         index_path: {d}/hub/.index.json\n\
         db_config:\n  type: sqlite\n  db_path: {d}/data/crowdsec.db\n  use_wal: false\n\
         api:\n  client:\n    credentials_path: {d}/local_api_credentials.yaml\n  \
         server:\n    listen_uri: {addr}\n    profiles_path: {d}/profiles.yaml\n"
    );
    fs::write(dir.join("config.yaml"), config).map_err(io("writing config.yaml"))?;
    // Alerts without decisions get a 4h ban on their source (CrowdSec's default profile);
    // moat's alerts carry their decisions, which the LAPI keeps as they are.
    let profiles = "name: default_ip_remediation\nfilters:\n - Alert.Remediation == true && \
                    Alert.GetScope() == \"Ip\"\ndecisions:\n - type: ban\n   duration: 4h\n\
                    on_success: break\n";
    fs::write(dir.join("profiles.yaml"), profiles).map_err(io("writing profiles.yaml"))?;
    Ok(())
}
