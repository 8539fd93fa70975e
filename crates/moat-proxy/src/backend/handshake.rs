//! Opening a backend connection: connect, authenticate with moat's own credentials, name the
//! connection, and (when stale) learn the server's facts: version, role, databases, commands.

use bytes::BytesMut;
use moat_protocol::{Value, encode};

use super::{BackendError, BackendFacts, Settings};
use crate::command::{CommandTable, parse_command_reply};
use crate::net::Stream;

/// Replies larger than this during the handshake mean something is wrong (COMMAND on
/// Redis 7 is about 200 KB).
const MAX_HANDSHAKE_REPLY: usize = 16 << 20;

/// Frames a dedicated connection may still deliver between a lease's end and its RESET
/// (messages, MONITOR lines) before moat gives up on it and closes it instead.
const MAX_SKIPPED_BEFORE_RESET: usize = 100_000;

/// A connection during its handshake: one request, one reply, nothing pipelined.
struct Handshake<'a> {
    stream: &'a Stream,
    buf: BytesMut,
    max_depth: usize,
}

impl Handshake<'_> {
    async fn call(&mut self, args: &[&[u8]]) -> Result<Value, BackendError> {
        let mut req = BytesMut::new();
        encode::command(&mut req, args);
        self.stream.write_all(&req).await?;
        self.next_reply().await
    }

    /// AUTH with moat's own backend credentials, when it has some.
    async fn authenticate(&mut self, settings: &Settings) -> Result<(), BackendError> {
        let Some(password) = &settings.password else {
            return Ok(());
        };
        let reply = match &settings.username {
            Some(user) => {
                self.call(&[b"AUTH", user.as_bytes(), password.as_bytes()])
                    .await?
            }
            None => self.call(&[b"AUTH", password.as_bytes()]).await?,
        };
        match reply {
            Value::Error(e) => Err(BackendError::Auth(e)),
            _ => Ok(()),
        }
    }

    async fn next_reply(&mut self) -> Result<Value, BackendError> {
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

/// Opens a connection and completes its handshake within the connect timeout. Returns the
/// server's facts too when `fetch_facts` is set.
pub(crate) async fn open(
    settings: &Settings,
    fetch_facts: bool,
) -> Result<(Stream, Option<BackendFacts>), BackendError> {
    let work = async {
        let stream = settings.connector.connect().await?;
        let mut hs = Handshake {
            stream: &stream,
            buf: BytesMut::new(),
            max_depth: settings.max_reply_depth,
        };
        hs.authenticate(settings).await?;
        // Named so operators can tell moat's connections apart in CLIENT LIST.
        let reply = hs
            .call(&[b"CLIENT", b"SETNAME", settings.connection_name.as_bytes()])
            .await?;
        if let Value::Error(e) = reply {
            if e.starts_with("NOAUTH") {
                return Err(BackendError::Auth(e));
            }
            tracing::debug!(error = %e, "backend refused CLIENT SETNAME");
        }
        let facts = if fetch_facts {
            Some(learn_facts(&mut hs, settings).await?)
        } else {
            None
        };
        Ok::<_, BackendError>((stream, facts))
    };
    match tokio::time::timeout(settings.connect_timeout, work).await {
        Ok(result) => result,
        Err(_) => Err(BackendError::Timeout(settings.connect_timeout)),
    }
}

/// Clears a dedicated connection's state before the next lease: RESET (Redis >= 6.2), which
/// also signs the connection out, then moat's own AUTH and name again.
pub(crate) async fn reset(stream: &Stream, settings: &Settings) -> Result<(), BackendError> {
    let mut hs = Handshake {
        stream,
        buf: BytesMut::new(),
        max_depth: settings.max_reply_depth,
    };
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
    hs.authenticate(settings).await?;
    hs.call(&[b"CLIENT", b"SETNAME", settings.connection_name.as_bytes()])
        .await?;
    Ok(())
}

/// Asks the server for the connection's own client id (`CLIENT ID`), so that a CLIENT
/// UNBLOCK from a client of moat can be aimed at the dedicated connection the target client
/// waits on. `None` when the server refuses (CLIENT renamed or denied to moat's user).
pub(crate) async fn client_id(
    stream: &Stream,
    settings: &Settings,
) -> Result<Option<u64>, BackendError> {
    let mut hs = Handshake {
        stream,
        buf: BytesMut::new(),
        max_depth: settings.max_reply_depth,
    };
    let reply = hs.call(&[b"CLIENT", b"ID"]).await?;
    Ok(reply.as_int().and_then(|id| u64::try_from(id).ok()))
}

/// Asks the server what the session needs to answer like it: version and role for HELLO,
/// the number of databases for SELECT, and the command table for routing.
async fn learn_facts(
    hs: &mut Handshake<'_>,
    settings: &Settings,
) -> Result<BackendFacts, BackendError> {
    let mut facts = BackendFacts::fallback(settings.databases);
    if let Value::Bulk(info) = hs.call(&[b"INFO", b"server"]).await?
        && let Some(v) = info_field(&info, "redis_version")
    {
        facts.version = v;
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
    match parse_command_reply(&reply) {
        Some(table) => facts.table = table,
        None => tracing::warn!(
            "backend did not answer COMMAND; routing with moat's built-in command table"
        ),
    }
    Ok(facts)
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
