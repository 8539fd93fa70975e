//! Signing a session in: AUTH and HELLO AUTH checked against moat's table or, in
//! passthrough mode, against Redis itself (the session waits for Redis's verdict, and the
//! client gets Redis's own reply); and following commands that change Redis's users, so
//! moat's idea of who may connect stays Redis's.

use std::sync::Arc;

use moat_protocol::Request;

use super::{Core, Wait};
use crate::auth::{AuthOutcome, Authority, Credential, Principal};
use crate::backend::verify::Verdict;

const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";
const NO_PASSWORD: &str = "ERR AUTH <password> called without any password configured for the \
                           default user. Are you sure your configuration is correct?";

/// A credential a client sent, waiting for Redis's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AuthAttempt {
    user: Option<Vec<u8>>,
    password: Vec<u8>,
}

/// What to ask Redis once a command that changes its users has been answered.
#[derive(Debug, Default)]
pub(crate) struct Recheck {
    /// Users deleted by the command (if Redis agreed): their credentials are checked again.
    deleted: Vec<Vec<u8>>,
}

/// A CLIENT subcommand and Redis's answer on whether the client may run it: its refusal
/// line if any, or why it could not be asked.
pub(crate) type Permission = (Box<[u8]>, Result<Option<String>, String>);

/// A harmless call of each CLIENT subcommand moat runs over its own sessions that Redis's
/// ACLs may deny: Redis checks permissions before arguments, so the call answers `NOPERM`
/// exactly when the real one would, and otherwise does nothing.
fn acl_probe(sub: &[u8]) -> Option<&'static [&'static [u8]]> {
    match sub {
        b"list" => Some(&[b"CLIENT", b"LIST", b"ID", b"0"]),
        b"kill" => Some(&[b"CLIENT", b"KILL", b"ID", b"0"]),
        b"unblock" => Some(&[b"CLIENT", b"UNBLOCK", b"0"]),
        // UNPAUSE has no harmless form (it would end a pause set on Redis directly), so
        // PAUSE's permission stands for both.
        b"pause" | b"unpause" => Some(&[b"CLIENT", b"PAUSE", b"0"]),
        _ => None,
    }
}

impl Core {
    /// Whether the client's Redis user may run CLIENT `sub` (lower case) over moat's
    /// sessions: always in table mode (deny lists were checked already); in passthrough
    /// mode Redis says, and `None` means its answer is awaited.
    pub(super) fn client_allowed(&mut self, sub: &[u8]) -> Option<Result<(), String>> {
        if self.worker.authority.redis().is_none() || acl_probe(sub).is_none() {
            return Some(Ok(()));
        }
        if let Wait::Permitted(done) = &self.wait
            && *done.0 == *sub
        {
            return Some(match &done.1 {
                Ok(None) => Ok(()),
                Ok(Some(line)) | Err(line) => Err(line.clone()),
            });
        }
        self.wait = Wait::Permit(sub.into());
        None
    }

    /// The request a permission was asked for is done: forget the answer.
    pub(super) fn permission_used(&mut self) {
        if matches!(self.wait, Wait::Permitted(_)) {
            self.wait = Wait::None;
        }
    }

    /// Asks Redis whether the client's user may run the CLIENT subcommand at the front.
    pub(super) async fn permit(&mut self, stream: &crate::net::Stream) -> std::io::Result<()> {
        let Wait::Permit(sub) = std::mem::replace(&mut self.wait, Wait::None) else {
            return Ok(());
        };
        self.flush(stream)?;
        let worker = self.worker.clone();
        let login = self
            .state
            .user
            .as_deref()
            .and_then(Principal::credential)
            .and_then(Credential::auth_args);
        let probe = acl_probe(&sub).unwrap_or(&[b"PING"]);
        let verdict =
            worker.verifier.refusal(login, probe).await.map_err(|e| {
                format!("ERR moat: backend unavailable (cannot check permissions: {e})")
            });
        self.wait = Wait::Permitted(Box::new((sub, verdict)));
        Ok(())
    }

    /// Checks credentials; `None` while Redis's verdict is awaited (the request is handled
    /// again once it is in). On success the session acts as that user from now on; on
    /// failure it keeps its current user, as in Redis.
    pub(super) fn try_auth(
        &mut self,
        user: Option<&[u8]>,
        password: &[u8],
    ) -> Option<Result<(), String>> {
        let authority = self.worker.authority.clone();
        match &*authority {
            Authority::Table(users) => Some(match users.current().authenticate(user, password) {
                (AuthOutcome::Ok, Some(u)) => {
                    self.signed_in(u);
                    Ok(())
                }
                (AuthOutcome::NoPasswordConfigured, _) => Err(NO_PASSWORD.into()),
                _ => {
                    self.worker.stats.auth_refused.incr();
                    self.report(moat_guard::Event::AuthFailed);
                    Err(WRONGPASS.into())
                }
            }),
            Authority::Redis(users) => {
                let attempt = AuthAttempt {
                    user: user.map(<[u8]>::to_vec),
                    password: password.to_vec(),
                };
                let verdict = match std::mem::replace(&mut self.wait, Wait::None) {
                    Wait::Verified(done) if done.0 == attempt => done.1,
                    _ => {
                        self.wait = Wait::Verify(Box::new(attempt));
                        return None;
                    }
                };
                Some(match verdict {
                    Ok(Verdict::Accepted) => {
                        let name = user.unwrap_or(b"default");
                        self.signed_in(users.verified(name, password));
                        if let Some(pin) = self.pin.as_deref_mut() {
                            pin.relogin(name, password);
                        }
                        Ok(())
                    }
                    Ok(Verdict::Refused(line)) => {
                        self.worker.stats.auth_refused.incr();
                        if line.starts_with("WRONGPASS") {
                            self.report(moat_guard::Event::AuthFailed);
                        }
                        Err(line)
                    }
                    Err(line) => Err(line),
                })
            }
        }
    }

    fn signed_in(&mut self, principal: Arc<Principal>) {
        self.state.user = Some(principal);
        self.limits_changed = true;
    }

    /// Asks Redis about the credential the front request carries (passthrough mode).
    pub(super) async fn verify(&mut self, stream: &crate::net::Stream) -> std::io::Result<()> {
        let Wait::Verify(attempt) = std::mem::replace(&mut self.wait, Wait::None) else {
            return Ok(());
        };
        // Replies already produced go out before the wait.
        self.flush(stream)?;
        let worker = self.worker.clone();
        let verdict = worker
            .verifier
            .check(attempt.user.as_deref(), &attempt.password)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "cannot check a client's credential with Redis");
                format!("ERR moat: backend unavailable (cannot check credentials: {e})")
            });
        self.wait = Wait::Verified(Box::new((*attempt, verdict)));
        Ok(())
    }

    /// Notes a forwarded command that may change who Redis lets in (passthrough mode): its
    /// reply is held until moat has asked Redis again.
    pub(super) fn note_user_change(&mut self, request: &Request<'_>) {
        let name = request.arg(0).unwrap_or_default();
        let sub = request.arg(1).unwrap_or_default();
        let recheck = if name.eq_ignore_ascii_case(b"CONFIG") {
            sub.eq_ignore_ascii_case(b"SET")
        } else if name.eq_ignore_ascii_case(b"ACL") {
            sub.eq_ignore_ascii_case(b"SETUSER")
                || sub.eq_ignore_ascii_case(b"DELUSER")
                || sub.eq_ignore_ascii_case(b"LOAD")
        } else {
            false
        };
        if !recheck {
            return;
        }
        let what = self.recheck.get_or_insert_with(Box::default);
        if sub.eq_ignore_ascii_case(b"DELUSER") {
            what.deleted
                .extend(request.args().skip(2).map(<[u8]>::to_vec).take(1024));
        }
    }

    /// Asks Redis whether new clients need a password, and whether users just deleted are
    /// gone (their sessions are then signed out, as Redis disconnects its own clients of a
    /// deleted user).
    pub(super) async fn recheck(&mut self) {
        let Some(what) = self.recheck.take() else {
            return;
        };
        let worker = self.worker.clone();
        let Some(users) = worker.authority.redis() else {
            return;
        };
        match worker.verifier.default_requires_auth().await {
            Ok(required) => users.set_default_requires_auth(required),
            Err(e) => {
                tracing::warn!(error = %e, "cannot ask Redis whether clients need a password")
            }
        }
        for name in &what.deleted {
            let Some(principal) = users.lookup(name) else {
                continue;
            };
            let Some((user, password)) = principal.credential().and_then(|c| c.auth_args()) else {
                continue;
            };
            if let Ok(Verdict::Refused(_)) = worker
                .verifier
                .check(Some(user.as_bytes()), &password)
                .await
                && let Some(c) = principal.credential()
            {
                tracing::info!(user, "Redis deleted a user; signing its clients out");
                users.refused(c);
            }
        }
    }
}
