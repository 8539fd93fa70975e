//! CLIENT subcommands over moat's own sessions (LIST, INFO, KILL, PAUSE, UNPAUSE, UNBLOCK,
//! NO-EVICT, NO-TOUCH), and what the session publishes for them: its card in the
//! directory (see `crate::clients`), and the CLIENT PAUSE check before each request.
//!
//! None of these reaches a shared backend connection: they act on the clients of moat, not
//! on the connections moat multiplexes them onto. The one exception is CLIENT UNBLOCK of a
//! client waiting on its dedicated connection: moat sends Redis `CLIENT UNBLOCK <that
//! connection's Redis id>`, and the client gets Redis's own `:1` or `:0`. The other is
//! CLIENT TRACKING ... REDIRECT: the moat id it names becomes the Redis id of a connection
//! that session holds (see [`Core::client_tracking_redirect`]).

use std::io;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use moat_protocol::{Limits, Request, RequestParser, encode};

use super::classify::wrong_arity;
use super::pinned::PinTag;
use super::{Core, Step};
use crate::clients::{
    Answer, ArgError, Extras, Identity, Question, Target, must_hold, parse_kill, parse_list,
    parse_on_off, parse_pause, parse_unblock, tracking_redirect,
};
use crate::command::Flags;
use crate::net::Stream;
use crate::pinned::Tag;

/// Where a CLIENT LIST/KILL/UNBLOCK that needs every worker stands.
#[derive(Debug)]
pub(super) enum Asking {
    /// The request at the front of the input asks this; the run loop gets the answer.
    Wanted(Question),
    /// The answer, for that request when it runs again.
    Answered(Answer),
}

/// Milliseconds of the wall clock (for CLIENT PAUSE's range check only).
fn unix_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn is(arg: Option<&[u8]>, word: &[u8]) -> bool {
    arg.is_some_and(|a| a.eq_ignore_ascii_case(word))
}

impl Core {
    /// Puts the session in its worker's directory (its card's identity and state).
    pub(super) fn enter_directory(&self, stream: &Stream) {
        self.link.card.init(Identity {
            id: self.state.id,
            peer: self.state.peer,
            laddr: stream.local_addr().unwrap_or(self.worker.listen),
            fd: stream.fd(),
            created: self.state.created,
        });
        self.publish_state();
        self.worker.clients.register(&self.link);
    }

    /// Publishes the database, protocol, user and names (after the commands that change
    /// them), so CLIENT LIST from any session shows them.
    pub(super) fn publish_state(&self) {
        let class = self.class();
        if self.counted_as.get() != Some(class) {
            if let Some(old) = self.counted_as.replace(Some(class)) {
                self.worker.stats.client(old, false);
            }
            self.worker.stats.client(class, true);
        }
        let card = &self.link.card;
        card.set_db_resp(self.state.db, self.state.resp3);
        let names = self.state.names.as_deref();
        let copy = |pick: fn(&super::ClientNames) -> &Option<Vec<u8>>| {
            names
                .and_then(|n| pick(n).as_deref())
                .map(|b| b.to_vec().into_boxed_slice())
        };
        card.set_extras(Extras {
            user: Some(self.state.user_name())
                .filter(|&name| name != "default")
                .map(Into::into),
            name: copy(|n| &n.name),
            lib_name: copy(|n| &n.lib_name),
            lib_ver: copy(|n| &n.lib_ver),
        });
    }

    /// Publishes the state of the dedicated connection (subscriptions, transaction,
    /// blocking call), or that there is none.
    pub(super) fn publish_pin(&self) {
        let card = &self.link.card;
        match self.pin.as_deref() {
            Some(pin) => card.set_pin(Some(pin.summary())),
            None if card.has_pin() => {
                card.set_pin(None);
                // A lease lost without its normal end leaves nothing to protect.
                card.set_unblock_sent(false);
                card.set_redirect_target(false);
            }
            None => {}
        }
    }

    /// Notes a request sent on the dedicated connection (MULTI's queue for CLIENT LIST and
    /// CLIENT PAUSE WRITE).
    pub(super) fn note_sent(&mut self, request: &Request<'_>, flags: Flags) {
        if let Some(pin) = self.pin.as_deref_mut() {
            let writes = flags.contains(Flags::WRITE) || flags.contains(Flags::MAY_REPLICATE);
            pin.note_sent(is(request.arg(0), b"MULTI"), writes);
        }
    }

    /// Whether CLIENT PAUSE holds this request now; if so the session parks until the
    /// pause ends or changes. See `crate::clients::pause` for Redis's rules.
    pub(super) fn held_by_pause(&mut self, request: &Request<'_>, flags: Flags) -> bool {
        let Some(mode) = self.worker.clients.pause().mode() else {
            return false;
        };
        if self.pin.as_deref().is_some_and(|p| p.state.monitor()) {
            // Redis never pauses a MONITOR client (it is flagged as a replica).
            return false;
        }
        let name = request.arg(0);
        let exempt = is(name, b"CLIENT") && is(request.arg(1), b"UNPAUSE");
        let writes = flags.contains(Flags::WRITE)
            || flags.contains(Flags::MAY_REPLICATE)
            || (is(name, b"EXEC") && self.pin.as_deref().is_some_and(|p| p.queued_writes()));
        if !must_hold(mode, writes, exempt) {
            return false;
        }
        self.worker.clients.park(&self.link);
        true
    }

    /// A question waits for the run loop to ask the other workers.
    pub(super) fn wants_answer(&self) -> bool {
        matches!(self.asking.as_deref(), Some(Asking::Wanted(_)))
    }

    /// Asks every worker the waiting question; the answer is kept for the request, which
    /// runs again.
    pub(super) async fn ask_directory(&mut self, stream: &Stream) -> io::Result<()> {
        let Some(asking) = self.asking.take() else {
            return Ok(());
        };
        let question = match *asking {
            Asking::Wanted(question) => question,
            answered @ Asking::Answered(_) => {
                self.asking = Some(Box::new(answered));
                return Ok(());
            }
        };
        // Replies already produced go out before the wait.
        self.flush(stream)?;
        let facts = self.worker.backend.facts();
        let worker = self.worker.clone();
        let answer = worker
            .clients
            .answer(question, self.state.id, &facts.table)
            .await;
        self.asking = Some(Box::new(Asking::Answered(answer)));
        Ok(())
    }

    /// The directory's answer to `question`: at once with one worker, else after the run
    /// loop asked the others (`None`: the request waits, `Step::Blocked`).
    fn directory(&mut self, question: Question) -> Option<Answer> {
        if let Some(asking) = self.asking.take() {
            match *asking {
                Asking::Answered(answer) => return Some(answer),
                Asking::Wanted(_) => {}
            }
        }
        let clients = &self.worker.clients;
        if clients.alone() {
            let facts = self.worker.backend.facts();
            return Some(clients.answer_here(question, self.state.id, &facts.table));
        }
        self.asking = Some(Box::new(Asking::Wanted(question)));
        None
    }

    fn fail(&mut self, line: &str) {
        encode::error(&mut self.link.out(), line);
    }

    fn arg_error(&mut self, e: &ArgError) {
        encode::error(&mut self.link.out(), e.line());
    }

    /// A text reply: a verbatim string in RESP3, a bulk string in RESP2 (as Redis sends
    /// CLIENT LIST and CLIENT INFO).
    fn text_reply(&mut self, text: &[u8]) {
        if self.state.resp3 {
            encode::verbatim(&mut self.link.out(), b"txt", text);
        } else {
            encode::bulk(&mut self.link.out(), text);
        }
    }

    /// `CLIENT INFO`: this session's line.
    pub(super) fn client_info(&mut self) {
        let facts = self.worker.backend.facts();
        let mut line = Vec::with_capacity(320);
        crate::clients::describe(&self.link, &facts.table, Instant::now(), &mut line);
        line.push(b'\n');
        self.text_reply(&line);
    }

    /// `CLIENT LIST [TYPE type | ID id ...]` over moat's sessions, on every worker.
    pub(super) fn client_list(&mut self, req: &Request<'_>) -> Step {
        let args: Vec<&[u8]> = req.args().skip(2).collect();
        let request = match parse_list(&args) {
            Ok(request) => request,
            Err(e) => {
                self.arg_error(&e);
                return Step::Done;
            }
        };
        match self.directory(Question::List(request)) {
            Some(Answer::List(text)) => self.text_reply(&text),
            Some(_) => self.text_reply(b""),
            None => return Step::Blocked,
        }
        Step::Done
    }

    /// `CLIENT KILL addr:port` or `CLIENT KILL <filter> <value> ...` over moat's sessions.
    /// Moat's backend connections are not clients of moat: no filter reaches them.
    pub(super) fn client_kill(&mut self, req: &Request<'_>) -> Step {
        if req.argc() < 3 {
            self.fail(&wrong_arity("client|kill"));
            return Step::Done;
        }
        let args: Vec<&[u8]> = req.args().skip(2).collect();
        let filter = match parse_kill(&args) {
            Ok(filter) => filter,
            Err(e) => {
                self.arg_error(&e);
                return Step::Done;
            }
        };
        let Some(answer) = self.directory(Question::Kill(filter)) else {
            return Step::Blocked;
        };
        let Answer::Kill {
            old_form,
            count,
            me,
        } = answer
        else {
            encode::integer(&mut self.link.out(), 0);
            return Step::Done;
        };
        if !old_form {
            encode::integer(
                &mut self.link.out(),
                i64::try_from(count).unwrap_or(i64::MAX),
            );
        } else if count == 0 {
            self.fail("ERR No such client");
        } else {
            encode::simple(&mut self.link.out(), "OK");
        }
        if me {
            // Killed itself: the reply goes out first, then the connection closes.
            tracing::debug!(client = self.state.id, "closed by its own CLIENT KILL");
            return Step::Close;
        }
        Step::Done
    }

    /// `CLIENT PAUSE timeout [WRITE|ALL]`: every worker's sessions hold their requests
    /// (see `crate::clients::pause`); Redis itself is not paused.
    pub(super) fn client_pause(&mut self, req: &Request<'_>) {
        match req.argc() {
            0..=2 => return self.fail(&wrong_arity("client|pause")),
            3 | 4 => {}
            _ => {
                return self
                    .arg_error(&ArgError::subcommand_syntax(req.arg(1).unwrap_or_default()));
            }
        }
        let args: Vec<&[u8]> = req.args().skip(2).collect();
        match parse_pause(&args, unix_now_ms()) {
            Ok((timeout, mode)) => {
                self.worker
                    .clients
                    .pause()
                    .pause(timeout, mode, Instant::now());
                encode::simple(&mut self.link.out(), "OK");
            }
            Err(e) => self.fail(&e.to_string()),
        }
    }

    /// `CLIENT UNPAUSE`: lifts the pause for every worker's sessions.
    pub(super) fn client_unpause(&mut self, req: &Request<'_>) {
        if req.argc() != 2 {
            return self.fail(&wrong_arity("client|unpause"));
        }
        self.worker.clients.pause().unpause();
        encode::simple(&mut self.link.out(), "OK");
    }

    /// `CLIENT NO-EVICT on|off` and `CLIENT NO-TOUCH on|off`: flags of this session, shown
    /// by CLIENT LIST (`e`, `T`). Moat cannot carry them to Redis: the session's commands
    /// run on connections shared with other clients.
    pub(super) fn client_switch(&mut self, req: &Request<'_>, no_touch: bool) {
        if req.argc() != 3 {
            let sub = if no_touch {
                "client|no-touch"
            } else {
                "client|no-evict"
            };
            return self.fail(&wrong_arity(sub));
        }
        match parse_on_off(req.arg(2).unwrap_or_default()) {
            Ok(on) if no_touch => self.link.card.set_no_touch(on),
            Ok(on) => self.link.card.set_no_evict(on),
            Err(e) => return self.arg_error(&e),
        }
        encode::simple(&mut self.link.out(), "OK");
    }

    /// `CLIENT UNBLOCK id [TIMEOUT|ERROR]`: if moat's session `id` waits in a blocking
    /// call, Redis is asked to unblock the dedicated connection it waits on, and answers.
    pub(super) fn client_unblock(&mut self, req: &Request<'_>) -> Step {
        match req.argc() {
            0..=2 => {
                self.fail(&wrong_arity("client|unblock"));
                return Step::Done;
            }
            3 | 4 => {}
            _ => {
                self.arg_error(&ArgError::subcommand_syntax(req.arg(1).unwrap_or_default()));
                return Step::Done;
            }
        }
        let args: Vec<&[u8]> = req.args().skip(2).collect();
        let (id, mode) = match parse_unblock(&args) {
            Ok(parsed) => parsed,
            Err(e) => {
                self.arg_error(&e);
                return Step::Done;
            }
        };
        let Some(answer) = self.directory(Question::Unblock(id, mode)) else {
            return Step::Blocked;
        };
        let Answer::Unblock {
            redis_id: Some(redis_id),
            mode,
        } = answer
        else {
            encode::integer(&mut self.link.out(), 0);
            return Step::Done;
        };
        let id = redis_id.to_string();
        let mut args: Vec<&[u8]> = vec![b"CLIENT", b"UNBLOCK", id.as_bytes()];
        args.extend(mode.arg());
        let mut raw = BytesMut::new();
        encode::command(&mut raw, &args);
        let mut parser = RequestParser::new(Limits::default());
        let Ok(Some(unblock)) = parser.parse(&raw) else {
            encode::integer(&mut self.link.out(), 0);
            return Step::Done;
        };
        match self.pin.as_deref_mut() {
            // The session's own dedicated connection keeps its replies in order.
            Some(pin) => {
                pin.forward(&unblock, &self.state, PinTag::Reply(Tag::Other));
                Step::Done
            }
            None => self.forward(&unblock),
        }
    }

    /// `CLIENT TRACKING on|off ... REDIRECT id`: where the id argument stands, if the
    /// request is that.
    pub(super) fn redirect_at(req: &Request<'_>) -> Option<usize> {
        if !is(req.arg(0), b"CLIENT") || !is(req.arg(1), b"TRACKING") {
            return None;
        }
        let options: Vec<&[u8]> = req.args().skip(3).collect();
        tracking_redirect(&options).map(|at| at + 3)
    }

    /// `CLIENT TRACKING on|off ... REDIRECT id` (argument `at` is the id). The id is one of
    /// moat's; Redis knows only its own connections. So:
    /// - a session holding a dedicated connection is named by that connection's Redis id:
    ///   Redis sends the invalidations there (RESP3 pushes, or RESP2 messages on
    ///   `__redis__:invalidate` while it is subscribed), as it would to that client. Such a
    ///   connection is closed when its lease ends, never handed to another client;
    /// - this session itself, or a session that runs on shared connections only, is named by
    ///   this session's own dedicated connection: a RESP2 client gets nothing there unless it
    ///   is subscribed, as Redis sends nothing to a RESP2 target that is not;
    /// - an id of no session gets Redis's own error.
    ///
    /// Without a dedicated connection (OFF while tracking is off) Redis would only check the
    /// id: so does moat, and answers `+OK`.
    pub(super) fn client_tracking_redirect(&mut self, req: &Request<'_>, at: usize) -> Step {
        if self
            .pin
            .as_deref()
            .is_some_and(|p| p.state.outstanding() > 0)
        {
            // An error of moat's must not overtake replies still owed.
            return Step::Blocked;
        }
        let Some(id) = req.arg(at).and_then(moat_protocol::parse_i64) else {
            self.arg_error(&ArgError::NotInteger);
            return Step::Done;
        };
        let target = if u64::try_from(id).is_ok_and(|id| id == self.state.id) {
            Some(Target::Unheld)
        } else if let Ok(id @ 1..) = u64::try_from(id) {
            match self.directory(Question::Redirect(id)) {
                Some(Answer::Redirect(target)) => target,
                Some(_) => None,
                None => return Step::Blocked,
            }
        } else {
            None
        };
        let Some(target) = target else {
            self.fail("ERR The client ID you want redirect to does not exist");
            return Step::Done;
        };
        let Some(pin) = self.pin.as_deref_mut() else {
            encode::simple(&mut self.link.out(), "OK");
            return Step::Done;
        };
        let redis_id = match target {
            Target::Held(redis_id) => Some(redis_id),
            Target::Unheld => pin.redis_id(),
        };
        let Some(redis_id) = redis_id else {
            self.fail("ERR moat: CLIENT TRACKING REDIRECT needs a Redis that has CLIENT ID");
            return Step::Done;
        };
        let redis_id = redis_id.to_string();
        let args: Vec<&[u8]> = req
            .args()
            .enumerate()
            .map(|(i, arg)| if i == at { redis_id.as_bytes() } else { arg })
            .collect();
        let mut raw = BytesMut::new();
        encode::command(&mut raw, &args);
        let mut parser = RequestParser::new(Limits::default());
        let Ok(Some(rewritten)) = parser.parse(&raw) else {
            self.fail("ERR moat: could not rewrite CLIENT TRACKING REDIRECT");
            return Step::Done;
        };
        let tag = super::pinned::tag_of(req);
        if tag == PinTag::Reply(Tag::TrackingOn) {
            pin.redirect = u64::try_from(id).ok();
        }
        pin.forward(&rewritten, &self.state, tag);
        Step::Done
    }

    /// `CLIENT GETREDIR`: the moat id tracking redirects to, 0 when tracking sends
    /// invalidations to the client itself, -1 when it is off.
    pub(super) fn client_getredir(&mut self) {
        let redirect = match self.pin.as_deref() {
            Some(pin) if pin.state.tracking() => pin
                .redirect
                .map_or(0, |id| i64::try_from(id).unwrap_or(i64::MAX)),
            _ => -1,
        };
        encode::integer(&mut self.link.out(), redirect);
    }
}
