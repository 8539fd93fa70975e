//! Opening a backend connection: connect, authenticate with moat's own credentials, name the
//! connection, and (when stale) learn the server's facts: version, role, databases, commands.

use bytes::BytesMut;
use moat_protocol::{Value, encode};

use super::{BackendError, BackendFacts, Settings};
use crate::auth::Credential;
use crate::command::{CommandTable, parse_command_reply};
use crate::net::Stream;

/// Replies larger than this during the handshake mean something is wrong (COMMAND on
/// Redis 7 is about 200 KB).
const MAX_HANDSHAKE_REPLY: usize = 16 << 20;

/// Frames a dedicated connection may still deliver between a lease's end and its RESET
/// (messages, MONITOR lines) before moat gives up on it and closes it instead.
const MAX_SKIPPED_BEFORE_RESET: usize = 100_000;

/// Whom a backend connection logs in as.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Login<'a> {
    /// Moat's own credential from the config (`backend.username`/`password`), if any.
    Moat,
    /// A client's Redis user (passthrough mode); the anonymous credential sends no AUTH.
    As(&'a Credential),
}

/// A connection during its handshake: one request, one reply, nothing pipelined.
pub(crate) struct Handshake<'a> {
    stream: &'a Stream,
    buf: BytesMut,
    max_depth: usize,
}

impl<'a> Handshake<'a> {
    /// Starts talking on a fresh (or idle) connection.
    pub(crate) fn new(stream: &'a Stream, max_depth: usize) -> Self {
        Self {
            stream,
            buf: BytesMut::new(),
            max_depth,
        }
    }

    /// Sends one command and reads its reply.
    pub(crate) async fn call(&mut self, args: &[&[u8]]) -> Result<Value, BackendError> {
        let mut req = BytesMut::new();
        encode::command(&mut req, args);
        self.stream.write_all(&req).await?;
        self.next_reply().await
    }

    /// AUTH as `login`, when it has a credential.
    async fn authenticate(
        &mut self,
        settings: &Settings,
        login: Login<'_>,
    ) -> Result<(), BackendError> {
        let reply = match login {
            Login::Moat => {
                let Some(password) = &settings.password else {
                    return Ok(());
                };
                match &settings.username {
                    Some(user) => {
                        self.call(&[b"AUTH", user.as_bytes(), password.as_bytes()])
                            .await?
                    }
                    None => self.call(&[b"AUTH", password.as_bytes()]).await?,
                }
            }
            Login::As(credential) => {
                let Some((user, password)) = credential.auth_args() else {
                    return Ok(());
                };
                self.call(&[b"AUTH", user.as_bytes(), &password]).await?
            }
        };
        match reply {
            Value::Error(e) => Err(BackendError::Auth(e)),
            _ => Ok(()),
        }
    }

    /// Reads the next reply (a pub/sub message on a subscribed connection).
    pub(crate) async fn next_reply(&mut self) -> Result<Value, BackendError> {
        loop {
            if let Some((value, used)) = Value::decode(&self.buf, self.max_depth)? {
                let _ = self.buf.split_to(used);
                return Ok(value);
            }
            if self.buf.len() > MAX_HANDSHAKE_REPLY {
                return Err(BackendError::Protocol("handshake reply too large".into()));
            }
            self.buf.reserve(64 << 10);
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(BackendError::Closed);
            }
        }
    }
}

/// A connection ready to serve, and what its handshake learned.
#[derive(Debug)]
pub(crate) struct Opened {
    pub(crate) stream: Stream,
    /// The server's facts, when asked for and the connection was allowed to read them.
    pub(crate) facts: Option<BackendFacts>,
    /// For a connection that sent no AUTH: whether Redis wants one (its default user needs
    /// a password). Such a connection still serves: its clients get Redis's own `NOAUTH`.
    pub(crate) needs_auth: Option<bool>,
    /// The followed primary's generation when the connection was opened (0: fixed address).
    pub(crate) generation: u64,
}

/// Opens a connection logged in as `login` and completes its handshake within the connect
/// timeout. Learns the server's facts too when `fetch_facts` is set.
pub(crate) async fn open(
    settings: &Settings,
    login: Login<'_>,
    fetch_facts: bool,
) -> Result<Opened, BackendError> {
    // Whether the TCP connection was made: a timeout after it is Redis not answering (see
    // `BackendError::Unanswered`), one before it is the network or the host.
    let connected = std::cell::Cell::new(false);
    // Read before connecting: a switch during the connect then shows as a newer generation.
    let generation = settings.connector.generation();
    let work = async {
        let stream = settings.connector.connect().await?;
        connected.set(true);
        let mut hs = Handshake::new(&stream, settings.max_reply_depth);
        hs.authenticate(settings, login).await?;
        let anonymous = matches!(login, Login::As(c) if c.auth_args().is_none());
        // Named so operators can tell moat's connections apart in CLIENT LIST. Redis busy
        // with a script answers `-BUSY` (it allows only AUTH, HELLO and a few others then):
        // the connection is still good, it just goes unnamed.
        let reply = hs
            .call(&[b"CLIENT", b"SETNAME", settings.connection_name.as_bytes()])
            .await?;
        let mut needs_auth = anonymous.then_some(false);
        if let Value::Error(e) = reply {
            if e.starts_with("NOAUTH") {
                if !anonymous {
                    return Err(BackendError::Auth(e));
                }
                needs_auth = Some(true);
            } else {
                tracing::debug!(error = %e, "backend refused CLIENT SETNAME");
            }
        }
        if needs_auth != Some(true)
            && let Some(primary) = settings.connector.primary()
        {
            // A primary found through Sentinels must still be one: a demoted server would
            // answer every write with READONLY. A user that may not run ROLE cannot tell.
            let role = crate::sentinel::role_of_reply(&hs.call(&[b"ROLE"]).await?);
            if let Some(role) = role {
                primary.doubt();
                return Err(BackendError::NotPrimary(role));
            }
        }
        let facts = if fetch_facts && needs_auth != Some(true) {
            learn_facts(&mut hs, settings).await?
        } else {
            None
        };
        Ok::<_, BackendError>(Opened {
            stream,
            facts,
            needs_auth,
            generation,
        })
    };
    match tokio::time::timeout(settings.connect_timeout, work).await {
        Ok(result) => result,
        Err(_) if connected.get() => Err(BackendError::Unanswered(settings.connect_timeout)),
        Err(_) => Err(BackendError::Timeout(settings.connect_timeout)),
    }
}

/// Clears a dedicated connection's state before the next lease: RESET (Redis >= 6.2), which
/// also signs the connection out, then AUTH as `login` and the name again.
pub(crate) async fn reset(
    stream: &Stream,
    settings: &Settings,
    login: Login<'_>,
) -> Result<(), BackendError> {
    let mut hs = Handshake::new(stream, settings.max_reply_depth);
    // Messages or MONITOR lines sent before RESET took effect may still be in the way:
    // skip frames up to RESET's own `+RESET`, so no stale frame is left for the next lease.
    let mut reply = hs.call(&[b"RESET"]).await?;
    let mut skipped = 0;
    while reply != Value::Simple("RESET".into()) {
        if let Value::Error(e) = reply {
            return Err(BackendError::Protocol(format!("RESET refused: {e}")));
        }
        skipped += 1;
        if skipped > MAX_SKIPPED_BEFORE_RESET {
            return Err(BackendError::Protocol("no +RESET in sight".into()));
        }
        reply = hs.next_reply().await?;
    }
    hs.authenticate(settings, login).await?;
    hs.call(&[b"CLIENT", b"SETNAME", settings.connection_name.as_bytes()])
        .await?;
    Ok(())
}

/// Asks the server for the connection's own client id (`CLIENT ID`), so that a CLIENT
/// UNBLOCK from a client of moat can be aimed at the dedicated connection the target client
/// waits on. `None` when the server refuses (CLIENT renamed or denied to the connection's user).
pub(crate) async fn client_id(
    stream: &Stream,
    settings: &Settings,
) -> Result<Option<u64>, BackendError> {
    let mut hs = Handshake::new(stream, settings.max_reply_depth);
    let reply = hs.call(&[b"CLIENT", b"ID"]).await?;
    Ok(reply.as_int().and_then(|id| u64::try_from(id).ok()))
}

/// Whether a reply is Redis's `-BUSY` (a script or function running).
fn is_busy(reply: &Value) -> bool {
    matches!(reply, Value::Error(e) if e.starts_with("BUSY"))
}

/// Asks the server what the session needs to answer like it: version and role for HELLO,
/// the number of databases for SELECT, and the command table for routing. `None` when the
/// connection's user may not ask (a later connection, of another user, will), or when the
/// server is busy with a script and answers nothing but `-BUSY`: the facts known so far are
/// kept (rather than replaced by the fallback) and asked for again at the next connection.
async fn learn_facts(
    hs: &mut Handshake<'_>,
    settings: &Settings,
) -> Result<Option<BackendFacts>, BackendError> {
    let mut facts = BackendFacts::fallback(settings.databases);
    match hs.call(&[b"INFO", b"server"]).await? {
        Value::Bulk(info) => {
            if let Some(v) = info_field(&info, "redis_version") {
                facts.version = v;
            }
            facts.cluster = info_field(&info, "redis_mode").as_deref() == Some("cluster");
        }
        Value::Error(e) => {
            // -BUSY, or -NOAUTH/-NOPERM for this connection's user.
            tracing::debug!(error = %e, "this connection may not read the server's facts now");
            return Ok(None);
        }
        _ => {}
    }
    if let Value::Bulk(info) = hs.call(&[b"INFO", b"replication"]).await?
        && let Some(role) = info_field(&info, "role")
    {
        facts.role = role;
    }
    if settings.databases.is_none() {
        let reply = hs.call(&[b"CONFIG", b"GET", b"databases"]).await?;
        if let Some(n) = reply
            .as_array()
            .and_then(|a| a.get(1))
            .and_then(Value::as_int)
            .and_then(|n| u32::try_from(n).ok())
            .filter(|&n| n > 0)
        {
            facts.databases = n;
        }
    }
    let reply = hs.call(&[b"COMMAND"]).await?;
    if is_busy(&reply) {
        return Ok(None);
    }
    match parse_command_reply(&reply) {
        Some(table) => facts.table = table,
        None if matches!(reply, Value::Error(_)) => return Ok(None),
        None => tracing::warn!(
            "backend did not answer COMMAND; routing with moat's built-in command table"
        ),
    }
    Ok(Some(facts))
}

/// One `key:value` line of an INFO reply.
fn info_field(info: &[u8], key: &str) -> Option<String> {
    let text = std::str::from_utf8(info).ok()?;
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k == key).then(|| v.trim().to_string())
    })
}

impl BackendFacts {
    /// What moat assumes until the server tells it otherwise.
    pub(crate) fn fallback(databases: Option<u32>) -> Self {
        Self {
            version: "7.0.0".into(),
            role: "master".into(),
            databases: databases.unwrap_or(16),
            cluster: false,
            table: CommandTable::builtin(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_fields_are_found() {
        let info = b"# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n";
        assert_eq!(info_field(info, "redis_version").as_deref(), Some("7.0.15"));
        assert_eq!(
            info_field(info, "redis_mode").as_deref(),
            Some("standalone")
        );
        assert_eq!(info_field(info, "role"), None);
    }
}
