//! Commands the session answers from its own state, with Redis's exact replies, so that
//! shared backend connections never change state on one client's behalf.

use moat_protocol::{Request, encode, parse_i64};

use super::classify::wrong_arity;
use super::{Core, Step};
use crate::backend::BackendFacts;
use crate::command::Local;

pub(super) use super::login::{AuthAttempt, Recheck};

const HELLO_NOAUTH: &str = "NOAUTH HELLO must be called with the client already authenticated, \
                            otherwise the HELLO AUTH <user> <pass> option can be used to \
                            authenticate the client and select the RESP protocol version at \
                            the same time";
const BAD_NAME: &str = "ERR Client names cannot contain spaces, newlines or special characters.";

/// Redis accepts client names (and library names) made of printable ASCII without spaces.
fn valid_name(name: &[u8]) -> bool {
    name.iter().all(|&b| (b'!'..=b'~').contains(&b))
}

impl Core {
    pub(super) fn local(&mut self, cmd: Local, req: &Request<'_>, facts: &BackendFacts) -> Step {
        let argc = req.argc();
        let arg = |i: usize| req.arg(i).unwrap_or_default();
        match cmd {
            Local::Ping => match argc {
                1 => encode::simple(&mut self.link.out(), "PONG"),
                2 => encode::bulk(&mut self.link.out(), arg(1)),
                _ => self.error(&wrong_arity("ping")),
            },
            Local::Echo => encode::bulk(&mut self.link.out(), arg(1)),
            Local::Quit => {
                encode::simple(&mut self.link.out(), "OK");
                return Step::Close;
            }
            Local::Select => match parse_i64(arg(1)) {
                None => self.error("ERR value is not an integer or out of range"),
                // Redis Cluster has database 0 only; moat would otherwise say OK and
                // then have its own SELECT refused on a shared connection.
                Some(db) if facts.cluster && db != 0 => {
                    self.error("ERR SELECT is not allowed in cluster mode")
                }
                Some(db) if db < 0 || db >= i64::from(facts.databases) => {
                    self.error("ERR DB index is out of range")
                }
                Some(db) => {
                    self.state.db = u32::try_from(db).unwrap_or(0);
                    encode::simple(&mut self.link.out(), "OK");
                }
            },
            Local::Auth => {
                let checked = match argc {
                    2 => self.try_auth(None, arg(1)),
                    3 => self.try_auth(Some(arg(1)), arg(2)),
                    _ => Some(Err("ERR syntax error".to_string())),
                };
                match checked {
                    None => return Step::Blocked,
                    Some(Ok(())) => encode::simple(&mut self.link.out(), "OK"),
                    Some(Err(line)) => self.error(&line),
                }
            }
            Local::Hello => return self.hello(req, facts),
            Local::Reset => {
                self.reset();
                encode::simple(&mut self.link.out(), "RESET");
            }
            Local::Client => return self.client(req),
            Local::Acl => {
                if arg(1).eq_ignore_ascii_case(b"WHOAMI") && argc == 2 {
                    let name = self.state.user_name().to_owned();
                    encode::bulk(&mut self.link.out(), name.as_bytes());
                } else {
                    return self.forward(req);
                }
            }
            Local::Asking | Local::ReadOnly | Local::ReadWrite => self.cluster_mode(cmd, facts),
            Local::Exec => self.error("ERR EXEC without MULTI"),
            Local::Discard => self.error("ERR DISCARD without MULTI"),
            Local::Unwatch => encode::simple(&mut self.link.out(), "OK"),
            Local::CrossProtocol => {
                tracing::debug!(
                    client = self.state.id,
                    "HTTP sent to the RESP port; closing"
                );
                self.report(moat_guard::Event::ProtocolError);
                return Step::Close;
            }
        }
        Step::Done
    }

    pub(super) fn error(&mut self, line: &str) {
        encode::error(&mut self.link.out(), line);
    }

    /// `HELLO [protover [AUTH user pass] [SETNAME name]]`, checked in Redis's order.
    fn hello(&mut self, req: &Request<'_>, facts: &BackendFacts) -> Step {
        self.hello_reply(req, facts).unwrap_or(Step::Done)
    }

    /// HELLO's checks and reply; `None` once an error was answered.
    fn hello_reply(&mut self, req: &Request<'_>, facts: &BackendFacts) -> Option<Step> {
        let argc = req.argc();
        let arg = |i: usize| req.arg(i).unwrap_or_default();
        let mut resp3 = self.state.resp3;
        if argc >= 2 {
            match parse_i64(arg(1)) {
                None => {
                    return self
                        .hello_fail("ERR Protocol version is not an integer or out of range");
                }
                Some(2) => resp3 = false,
                Some(3) => resp3 = true,
                Some(_) => return self.hello_fail("NOPROTO unsupported protocol version"),
            }
        }
        let mut credentials = None;
        let mut name = None;
        let mut j = 2;
        while j < argc {
            let more = argc - 1 - j;
            let opt = arg(j);
            if opt.eq_ignore_ascii_case(b"AUTH") && more >= 2 {
                credentials = Some((arg(j + 1), arg(j + 2)));
                j += 3;
            } else if opt.eq_ignore_ascii_case(b"SETNAME") && more >= 1 {
                if !valid_name(arg(j + 1)) {
                    return self.hello_fail(BAD_NAME);
                }
                name = Some(arg(j + 1));
                j += 2;
            } else {
                return self.hello_fail(&format!(
                    "ERR Syntax error in HELLO option '{}'",
                    String::from_utf8_lossy(opt)
                ));
            }
        }
        if let Some((user, password)) = credentials {
            match self.try_auth(Some(user), password) {
                None => return Some(Step::Blocked),
                Some(Err(line)) => return self.hello_fail(&line),
                Some(Ok(())) => {}
            }
        }
        if self.state.user.is_none() {
            return self.hello_fail(HELLO_NOAUTH);
        }
        if let Some(name) = name {
            self.state.names_mut().name = (!name.is_empty()).then(|| name.to_vec());
        }
        // The session's protocol; shared and dedicated connections follow it per request.
        self.state.resp3 = resp3;
        let mut out = self.link.out();
        if resp3 {
            encode::map_header(&mut out, 7);
        } else {
            encode::array_header(&mut out, 14);
        }
        for (key, value) in [("server", "redis"), ("version", facts.version.as_str())] {
            encode::bulk(&mut out, key.as_bytes());
            encode::bulk(&mut out, value.as_bytes());
        }
        encode::bulk(&mut out, b"proto");
        encode::integer(&mut out, if resp3 { 3 } else { 2 });
        encode::bulk(&mut out, b"id");
        encode::integer(&mut out, i64::try_from(self.state.id).unwrap_or(i64::MAX));
        for (key, value) in [("mode", "standalone"), ("role", facts.role.as_str())] {
            encode::bulk(&mut out, key.as_bytes());
            encode::bulk(&mut out, value.as_bytes());
        }
        encode::bulk(&mut out, b"modules");
        encode::array_header(&mut out, 0);
        Some(Step::Done)
    }

    /// Answers an error; `None` for [`Core::hello_reply`]'s early returns.
    fn hello_fail(&mut self, line: &str) -> Option<Step> {
        self.error(line);
        None
    }

    /// RESET: back to a fresh connection's state (database 0, no name, RESP2, and signed out
    /// when authentication is required).
    pub(super) fn reset(&mut self) {
        self.state.db = 0;
        self.state.resp3 = false;
        // RESET ends Redis Cluster's connection modes too.
        self.state.readonly = false;
        self.state.asking = false;
        self.state.names = None;
        self.state.user = self.worker.authority.initial_principal();
        self.limits_changed = true;
    }

    /// CLIENT subcommands: those about the client's own connection are emulated, and so
    /// are those about clients (LIST, KILL, PAUSE...), over moat's own sessions
    /// (`session/client.rs`); the rest (HELP, TRACKINGINFO...) are forwarded.
    fn client(&mut self, req: &Request<'_>) -> Step {
        let argc = req.argc();
        let arg = |i: usize| req.arg(i).unwrap_or_default();
        let sub = arg(1).to_ascii_lowercase();
        let full = format!("client|{}", String::from_utf8_lossy(&sub));
        let exact = |n: usize| argc == n;
        if matches!(
            sub.as_slice(),
            b"list" | b"kill" | b"unblock" | b"pause" | b"unpause"
        ) {
            // These act on other clients: Redis's ACLs decide, as they would on Redis.
            match self.client_allowed(&sub) {
                None => return Step::Blocked,
                Some(Err(line)) => {
                    self.permission_used();
                    self.error(&line);
                    return Step::Done;
                }
                Some(Ok(())) => {}
            }
            let step = match sub.as_slice() {
                b"list" => self.client_list(req),
                b"kill" => self.client_kill(req),
                b"unblock" => self.client_unblock(req),
                b"pause" => {
                    self.client_pause(req);
                    Step::Done
                }
                _ => {
                    self.client_unpause(req);
                    Step::Done
                }
            };
            if step != Step::Blocked {
                self.permission_used();
            }
            return step;
        }
        match sub.as_slice() {
            b"id" if exact(2) => encode::integer(
                &mut self.link.out(),
                i64::try_from(self.state.id).unwrap_or(-1),
            ),
            b"getname" if exact(2) => match self.state.name() {
                Some(name) => encode::bulk(&mut self.link.out(), name),
                None if self.state.resp3 => encode::null(&mut self.link.out()),
                None => encode::null_bulk(&mut self.link.out()),
            },
            b"setname" if exact(3) => {
                if valid_name(arg(2)) {
                    self.state.names_mut().name = (!arg(2).is_empty()).then(|| arg(2).to_vec());
                    encode::simple(&mut self.link.out(), "OK");
                } else {
                    self.error(BAD_NAME);
                }
            }
            b"setinfo" if exact(4) => self.client_setinfo(arg(2), arg(3)),
            b"info" if exact(2) => self.client_info(),
            b"getredir" if exact(2) => self.client_getredir(),
            b"id" | b"getname" | b"setname" | b"setinfo" | b"info" | b"getredir" => {
                self.error(&wrong_arity(&full))
            }
            // TRACKING ON takes a dedicated connection (see classify); OFF without tracking
            // and REPLY ON change nothing, as in Redis.
            b"tracking" => match Self::redirect_at(req) {
                Some(at) => return self.client_tracking_redirect(req, at),
                None => encode::simple(&mut self.link.out(), "OK"),
            },
            b"reply" => encode::simple(&mut self.link.out(), "OK"),
            b"caching" => self.error(
                "ERR CLIENT CACHING can be called only when the client is in tracking mode with \
                 OPTIN or OPTOUT mode enabled",
            ),
            b"no-evict" => self.client_switch(req, false),
            b"no-touch" => self.client_switch(req, true),
            _ => return self.forward(req),
        }
        Step::Done
    }

    /// CLIENT SETINFO LIB-NAME|LIB-VER value (Redis 7.2), emulated so clients that send it
    /// work in front of any Redis version.
    fn client_setinfo(&mut self, attr: &[u8], value: &[u8]) {
        let which = if attr.eq_ignore_ascii_case(b"lib-name") {
            "lib-name"
        } else if attr.eq_ignore_ascii_case(b"lib-ver") {
            "lib-ver"
        } else {
            return self.error(&format!(
                "ERR Unrecognized option '{}'",
                String::from_utf8_lossy(attr)
            ));
        };
        if !valid_name(value) {
            return self.error(&format!(
                "ERR {which} cannot contain spaces, newlines or special characters."
            ));
        }
        let stored = (!value.is_empty()).then(|| value.to_vec());
        if which == "lib-name" {
            self.state.names_mut().lib_name = stored;
        } else {
            self.state.names_mut().lib_ver = stored;
        }
        encode::simple(&mut self.link.out(), "OK");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_printable_ascii_without_spaces() {
        assert!(valid_name(b"worker-1"));
        assert!(valid_name(b""));
        assert!(!valid_name(b"a b"));
        assert!(!valid_name(b"a\nb"));
        assert!(!valid_name("é".as_bytes()));
    }
}
