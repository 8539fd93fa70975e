//! Passthrough authentication's questions to Redis, on one connection of moat's per worker
//! that serves no client: is this `AUTH` accepted, and does the default user need a
//! password now. Kept off the shared connections, whose login must never change, and off
//! the clients' paths: a check waits only for its own round trip.

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

use moat_protocol::Value;
use tokio::sync::Mutex;

use super::handshake::Handshake;
use super::{BackendError, Settings};
use crate::net::Stream;

/// What Redis answered to a client's credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// `+OK`.
    Accepted,
    /// Redis's error line, without the leading `-` (`WRONGPASS ...`, `ERR AUTH <password>
    /// called without any password configured ...`).
    Refused(String),
}

/// One worker's verifying connection, opened on first use and reopened after a failure.
#[derive(Debug)]
pub(crate) struct Verifier {
    settings: Settings,
    /// Questions go one at a time: each is one request and one reply.
    conn: Mutex<()>,
    /// The idle connection, with the followed primary's generation when it was opened.
    stream: RefCell<Option<(Stream, u64)>>,
    /// When a client's credential was last checked: an unused connection is closed, so
    /// Redis holds it only while clients sign in.
    last_check: Cell<Instant>,
}

/// A verifying connection unused by clients for this long is closed at the next recheck.
const KEEP_IDLE: Duration = Duration::from_secs(20);

impl Verifier {
    /// A verifier reaching the backend as `settings` say (its name shows in CLIENT LIST).
    pub(crate) fn new(settings: Settings) -> Self {
        Self {
            settings,
            conn: Mutex::new(()),
            stream: RefCell::new(None),
            last_check: Cell::new(Instant::now()),
        }
    }

    /// Closes the connection if no client's credential was checked on it for a while.
    pub(crate) fn close_if_unused(&self) {
        if self.last_check.get().elapsed() >= KEEP_IDLE && self.conn.try_lock().is_ok() {
            self.stream.borrow_mut().take();
        }
    }

    /// Asks Redis whether it accepts `AUTH [user] password`.
    pub(crate) async fn check(
        &self,
        user: Option<&[u8]>,
        password: &[u8],
    ) -> Result<Verdict, BackendError> {
        self.last_check.set(Instant::now());
        let reply = match user {
            Some(user) => self.ask(&[b"AUTH", user, password]).await?,
            None => self.ask(&[b"AUTH", password]).await?,
        };
        Ok(match reply {
            Value::Error(e) => Verdict::Refused(e),
            _ => Verdict::Accepted,
        })
    }

    /// Asks Redis whether a new connection must authenticate: RESET signs the verifying
    /// connection back in as the default user exactly as a new connection would be, and
    /// PING then answers `NOAUTH` if that needs a password.
    pub(crate) async fn default_requires_auth(&self) -> Result<bool, BackendError> {
        let replies = self.ask_all(&[&[b"RESET"], &[b"PING"]]).await?;
        let ping = match replies.as_slice() {
            [Value::Error(_), ..] => {
                // Redis before 6.2 has no RESET: a fresh connection answers the question.
                let work = async {
                    let stream = self.settings.connector.connect().await?;
                    Handshake::new(&stream, self.settings.max_reply_depth)
                        .call(&[b"PING"])
                        .await
                };
                let timeout = self.settings.connect_timeout;
                tokio::time::timeout(timeout, work)
                    .await
                    .map_err(|_| BackendError::Timeout(timeout))??
            }
            [_, ping] => ping.clone(),
            _ => return Err(BackendError::Protocol("no reply to PING".into())),
        };
        Ok(matches!(ping, Value::Error(e) if e.starts_with("NOAUTH")))
    }

    /// Asks Redis whether `login` (a user and password; none: the default user) may run
    /// `probe`, a harmless call of the command in question (`CLIENT KILL ID 0`): Redis checks
    /// permissions before arguments, so only a `NOPERM` reply says no. Returns Redis's
    /// refusal line, if any.
    pub(crate) async fn refusal(
        &self,
        login: Option<(String, Vec<u8>)>,
        probe: &[&[u8]],
    ) -> Result<Option<String>, BackendError> {
        let sign_in: Vec<&[u8]> = match &login {
            Some((user, password)) => vec![b"AUTH", user.as_bytes(), password],
            None => vec![b"RESET"],
        };
        let replies = self.ask_all(&[&sign_in, probe]).await?;
        Ok(match replies.as_slice() {
            // The user itself is refused now: nothing it asks is allowed.
            [Value::Error(e), ..] => Some(e.clone()),
            [_, Value::Error(e)] if e.starts_with("NOPERM") => Some(e.clone()),
            _ => None,
        })
    }

    async fn ask(&self, args: &[&[u8]]) -> Result<Value, BackendError> {
        let mut replies = self.ask_all(&[args]).await?;
        replies
            .pop()
            .ok_or_else(|| BackendError::Protocol("no reply".into()))
    }

    /// Asks several questions in a row, with no other question in between (the answer to
    /// one may depend on the login an earlier one made).
    async fn ask_all(&self, questions: &[&[&[u8]]]) -> Result<Vec<Value>, BackendError> {
        let _turn = self.conn.lock().await;
        let timeout = self.settings.connect_timeout;
        let work = async {
            let idle = self.stream.borrow_mut().take();
            let generation = self.settings.connector.generation();
            let stream = match idle {
                // One opened before the primary changed is dropped.
                Some((stream, opened)) if opened == generation => stream,
                _ => self.connect().await?,
            };
            let mut hs = Handshake::new(&stream, self.settings.max_reply_depth);
            let mut replies = Vec::with_capacity(questions.len());
            for args in questions {
                replies.push(hs.call(args).await?);
            }
            // Only a connection that answered goes back for the next question.
            *self.stream.borrow_mut() = Some((stream, generation));
            Ok(replies)
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(BackendError::Timeout(timeout)),
        }
    }

    async fn connect(&self) -> Result<Stream, BackendError> {
        let stream = self.settings.connector.connect().await?;
        // Named for operators; refused with NOAUTH when the default user needs a password,
        // which changes nothing here.
        let _ = Handshake::new(&stream, self.settings.max_reply_depth)
            .call(&[
                b"CLIENT",
                b"SETNAME",
                self.settings.connection_name.as_bytes(),
            ])
            .await?;
        Ok(stream)
    }
}
