//! The directory of moat's client sessions, across all workers: what CLIENT LIST, CLIENT
//! KILL and CLIENT UNBLOCK act on, and the CLIENT PAUSE state every session obeys.
//!
//! Why this shape. Sessions live on their worker's thread, and their state is the task's
//! own (`Rc`, `RefCell`, not `Send`). So:
//! - each worker keeps a registry of its sessions ([`WorkerClients`]): an ordered map from
//!   client id to the session's [`ClientLink`], whose [`Card`] the session keeps current
//!   (see `card.rs`). Sessions register when they start and leave when they end; requests
//!   only write a few `Cell`s of their own card, so the data path takes no lock and writes
//!   no shared atomic;
//! - a question about all sessions (LIST, KILL, UNBLOCK) is answered for the asking
//!   session's own worker directly, and sent to every other worker over a bounded tokio
//!   channel; a small task on each worker answers from its registry through a oneshot. The
//!   asking session waits in a boxed future, as it does for a dedicated connection, so an
//!   idle session pays nothing for it. With one worker (the default) nothing is sent;
//! - the pause is one atomic word all workers share ([`Pause`]); a session reads it before
//!   each request, one load while no pause was ever set. A held session parks in its
//!   worker's list and waits; a task per worker wakes the parked sessions when the pause
//!   ends or changes (a timer and a notification, nothing polls).

mod card;
mod filter;
mod line;
mod pause;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

pub(crate) use card::{Card, Extras, Identity, PinSummary};
pub(crate) use filter::{
    ArgError, ClientType, KillFilter, ListRequest, UnblockMode, parse_kill, parse_list,
    parse_on_off, parse_unblock, tracking_redirect,
};
pub(crate) use line::{FlagState, LineFields, write_line};
pub(crate) use pause::{Pause, must_hold, parse_pause};

use crate::command::CommandTable;
use crate::link::ClientLink;
use crate::worker::WorkerCtx;

/// Longest wait for the other workers' answers; a worker that does not answer in time is
/// left out (its sessions are not listed, killed or unblocked) rather than stalling the
/// client that asked.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// Questions one worker may have queued for another before the asker waits.
const QUERY_QUEUE: usize = 64;

/// What all workers share: a way to ask each one, and the pause.
#[derive(Debug)]
pub(crate) struct Shared {
    /// One sender per worker, by worker index.
    queries: Vec<mpsc::Sender<Query>>,
    pause: Pause,
}

impl Shared {
    /// The shared part for `workers` workers, and the receiving end of each one's queries
    /// (by worker index).
    pub(crate) fn new(workers: usize) -> (Arc<Self>, Vec<mpsc::Receiver<Query>>) {
        let (queries, receivers) = (0..workers.max(1))
            .map(|_| mpsc::channel(QUERY_QUEUE))
            .unzip();
        let shared = Arc::new(Self {
            queries,
            pause: Pause::default(),
        });
        (shared, receivers)
    }

    /// Sends a question to every worker (from outside them: the operator's [`Control`])
    /// and collects the answers that come within [`ASK_TIMEOUT`].
    ///
    /// [`Control`]: crate::Control
    pub(crate) async fn ask_all<T>(&self, make: impl Fn(oneshot::Sender<T>) -> Query) -> Vec<T> {
        ask(self.queries.iter().collect(), make).await
    }
}

/// Sends a question to each of `workers` and collects the answers that come within
/// [`ASK_TIMEOUT`].
async fn ask<T>(
    workers: Vec<&mpsc::Sender<Query>>,
    make: impl Fn(oneshot::Sender<T>) -> Query,
) -> Vec<T> {
    let deadline = tokio::time::Instant::now() + ASK_TIMEOUT;
    let mut waiting = Vec::new();
    for worker in workers {
        let (reply, answer) = oneshot::channel();
        let sent = tokio::time::timeout_at(deadline, worker.send(make(reply))).await;
        if matches!(sent, Ok(Ok(()))) {
            waiting.push(answer);
        }
    }
    let mut answers = Vec::with_capacity(waiting.len());
    for answer in waiting {
        if let Ok(Ok(value)) = tokio::time::timeout_at(deadline, answer).await {
            answers.push(value);
        }
    }
    answers
}

/// A question a worker answers about its own sessions, for a session on another worker.
#[derive(Debug)]
pub(crate) enum Query {
    /// Lines of the sessions `request` selects.
    List {
        request: ListRequest,
        reply: oneshot::Sender<Vec<(u64, Vec<u8>)>>,
    },
    /// Kill the sessions `filter` selects (never `caller`, which is on another worker
    /// anyway); the count.
    Kill {
        filter: KillFilter,
        caller: u64,
        reply: oneshot::Sender<u64>,
    },
    /// The Redis id of session `id`'s dedicated connection, if it waits in a blocking call.
    Unblock {
        id: u64,
        reply: oneshot::Sender<Option<u64>>,
    },
    /// Whether session `id` is here, and the Redis id of its dedicated connection if it
    /// holds one (marked as a redirect target: see [`Card::set_redirect_target`]).
    Redirect {
        id: u64,
        reply: oneshot::Sender<Option<Target>>,
    },
    /// A summary of every session of the worker (the operator's heaviest clients).
    Summaries {
        reply: oneshot::Sender<Vec<crate::control::ClientSummary>>,
    },
}

/// A CLIENT TRACKING REDIRECT target that exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// The session holds a dedicated connection: Redis's id of it, where the invalidations
    /// go (RESP3 pushes, or RESP2 messages while it is subscribed, as on Redis).
    Held(u64),
    /// The session runs on shared connections only: its invalidations have nowhere to go
    /// that is its own.
    Unheld,
}

/// What a session asks the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Question {
    /// CLIENT LIST.
    List(ListRequest),
    /// CLIENT KILL.
    Kill(KillFilter),
    /// CLIENT UNBLOCK of a client id.
    Unblock(i64, UnblockMode),
    /// CLIENT TRACKING ... REDIRECT of a client id.
    Redirect(u64),
}

/// The directory's answer, ready for the session to reply with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// CLIENT LIST's text.
    List(Vec<u8>),
    /// How many sessions were killed (`me`: the caller itself matched and is to close
    /// after its reply).
    Kill {
        old_form: bool,
        count: u64,
        me: bool,
    },
    /// The Redis client id of the dedicated connection the target waits on, if it does.
    Unblock {
        redis_id: Option<u64>,
        mode: UnblockMode,
    },
    /// The redirect target, if such a session exists.
    Redirect(Option<Target>),
}

/// One worker's part of an answer.
#[derive(Debug)]
enum Partial {
    Lines(Vec<(u64, Vec<u8>)>),
    Killed { count: u64, me: bool },
    Unblock(Option<u64>),
    Redirect(Option<Target>),
}

/// Sessions held by a pause, waiting to be woken.
#[derive(Debug, Default)]
struct Parked(RefCell<Vec<Weak<ClientLink>>>);

impl Parked {
    fn wake_all(&self) {
        let parked = std::mem::take(&mut *self.0.borrow_mut());
        for link in parked.iter().filter_map(Weak::upgrade) {
            link.card.set_parked(false);
            link.wake();
        }
    }
}

/// One worker's sessions.
#[derive(Debug)]
pub(crate) struct WorkerClients {
    index: usize,
    shared: Arc<Shared>,
    /// By client id, which is also the order sessions started in (Redis lists clients in
    /// that order). Weak: a session that ended without leaving is just skipped.
    sessions: RefCell<BTreeMap<u64, Weak<ClientLink>>>,
    parked: Rc<Parked>,
}

impl WorkerClients {
    /// Worker `index`'s registry, sharing `shared` with the other workers.
    pub(crate) fn new(index: usize, shared: Arc<Shared>) -> Self {
        Self {
            index,
            shared,
            sessions: RefCell::new(BTreeMap::new()),
            parked: Rc::default(),
        }
    }

    /// Starts the worker's tasks: the one answering other workers' questions (when there
    /// are other workers) and the one waking sessions held by a pause.
    pub(crate) fn start(ctx: &Rc<WorkerCtx>, queries: Option<mpsc::Receiver<Query>>) {
        let clients = &ctx.clients;
        // Even alone: the operator's handle asks every worker from outside.
        if let Some(rx) = queries {
            tokio::task::spawn_local(serve_queries(Rc::downgrade(ctx), rx));
        }
        tokio::task::spawn_local(wake_on_pause_change(
            clients.shared.clone(),
            clients.parked.clone(),
        ));
    }

    /// The pause all workers share.
    pub(crate) fn pause(&self) -> &Pause {
        &self.shared.pause
    }

    /// True when this worker's sessions are all of moat's: questions need no other worker.
    pub(crate) fn alone(&self) -> bool {
        self.shared.queries.len() <= 1
    }

    /// Adds a session (its card's identity already set).
    pub(crate) fn register(&self, link: &Rc<ClientLink>) {
        if let Some(ident) = link.card.identity() {
            self.sessions
                .borrow_mut()
                .insert(ident.id, Rc::downgrade(link));
        }
    }

    /// Removes a session that ended.
    pub(crate) fn unregister(&self, id: u64) {
        self.sessions.borrow_mut().remove(&id);
    }

    /// Holds a session until the pause ends or changes (once, however often it asks).
    pub(crate) fn park(&self, link: &Rc<ClientLink>) {
        if !link.card.parked() {
            link.card.set_parked(true);
            self.parked.0.borrow_mut().push(Rc::downgrade(link));
        }
    }

    /// The sessions still running, in id order. Entries of sessions that ended without
    /// leaving (a task dropped at shutdown) are dropped on the way.
    fn live(&self) -> Vec<Rc<ClientLink>> {
        let mut live = Vec::new();
        self.sessions
            .borrow_mut()
            .retain(|_, link| match link.upgrade() {
                Some(link) => {
                    live.push(link);
                    true
                }
                None => false,
            });
        live
    }

    /// One look of the dormancy sweep: a session quiet at two looks in a row, and not
    /// active in between, is asked to go dormant at its next wait (it is woken to).
    pub(crate) fn sweep_quiet(&self) {
        use crate::dormant::Rest;
        for link in self.sessions.borrow().values().filter_map(Weak::upgrade) {
            match link.rest() {
                Rest::Quiet => link.set_rest(Rest::QuietSeen),
                Rest::QuietSeen => {
                    link.set_rest(Rest::Asked);
                    link.wake();
                }
                Rest::Busy | Rest::Asked | Rest::Dormant => {}
            }
        }
    }

    /// Wakes every session so it looks at its state again (a drain started); the count.
    pub(crate) fn wake_all(&self) -> usize {
        let live = self.live();
        for link in &live {
            link.wake();
        }
        live.len()
    }

    /// Closes every session (a drain's timeout); the count.
    pub(crate) fn kill_all(&self) -> usize {
        let live = self.live();
        for link in &live {
            link.kill();
        }
        live.len()
    }

    /// What the operator sees of each session: unread output, requests in flight, age,
    /// idle time, user and what it holds.
    fn summaries(&self, now: Instant) -> Vec<crate::control::ClientSummary> {
        self.live()
            .iter()
            .filter_map(|link| {
                let card = &link.card;
                let ident = card.identity()?;
                let secs = |since: Instant| now.saturating_duration_since(since).as_secs();
                let holds = card.pin().map(|p| {
                    let what = if p.monitor {
                        "monitor"
                    } else if p.subscribed() {
                        "pubsub"
                    } else if p.multi.is_some() {
                        "multi"
                    } else if p.blocked {
                        "blocked"
                    } else if p.tracking {
                        "tracking"
                    } else {
                        "dedicated"
                    };
                    what.to_owned()
                });
                Some(crate::control::ClientSummary {
                    id: ident.id,
                    addr: ident.peer.to_string(),
                    user: card.with_extras(|e| user_of(e).to_owned()),
                    unread_output: link.out_len() as u64,
                    in_flight: link.inflight() as u64,
                    age_secs: secs(ident.created),
                    idle_secs: card.last_activity().map_or(0, secs),
                    holds,
                })
            })
            .collect()
    }

    fn link(&self, id: u64) -> Option<Rc<ClientLink>> {
        self.sessions.borrow().get(&id).and_then(Weak::upgrade)
    }

    /// Lines for the sessions of this worker that `request` selects, by id.
    fn lines(
        &self,
        request: &ListRequest,
        table: &CommandTable,
        now: Instant,
    ) -> Vec<(u64, Vec<u8>)> {
        let line = |link: &ClientLink| {
            let mut out = Vec::with_capacity(320);
            describe(link, table, now, &mut out).then_some(out)
        };
        match request {
            ListRequest::All(kind) => self
                .live()
                .iter()
                .filter(|l| kind.is_none_or(|k| k == type_of(l)))
                .filter_map(|l| Some((l.card.identity()?.id, line(l)?)))
                .collect(),
            ListRequest::Ids(ids) => {
                let mut wanted: Vec<u64> = ids
                    .iter()
                    .filter_map(|&id| u64::try_from(id).ok())
                    .collect();
                wanted.sort_unstable();
                wanted.dedup();
                wanted
                    .into_iter()
                    .filter_map(|id| Some((id, line(&*self.link(id)?)?)))
                    .collect()
            }
        }
    }

    /// Kills this worker's sessions that match `filter`, except the caller, which is only
    /// reported (`me`): it closes itself after its reply. Returns how many matched.
    fn kill(&self, filter: &KillFilter, caller: u64, now: Instant) -> (u64, bool) {
        let mut count = 0;
        let mut me = false;
        for link in self.live() {
            let Some(ident) = link.card.identity() else {
                continue;
            };
            let addr = ident.peer.to_string();
            let laddr = ident.laddr.to_string();
            let user = link.card.with_extras(|e| user_of(e).to_owned());
            let candidate = filter::Candidate {
                id: ident.id,
                addr: addr.as_bytes(),
                laddr: laddr.as_bytes(),
                kind: type_of(&link),
                user: user.as_bytes(),
                age: now.saturating_duration_since(ident.created).as_secs(),
            };
            if !filter.matches(&candidate, caller) {
                continue;
            }
            count += 1;
            if ident.id == caller {
                me = true;
            } else {
                link.kill();
            }
        }
        (count, me)
    }

    /// If session `id` is on this worker and waits in a blocking call on its dedicated
    /// connection, the Redis id of that connection (marked so it is not reused after the
    /// call: see [`Card::set_unblock_sent`]).
    fn unblock_target(&self, id: u64) -> Option<u64> {
        let link = self.link(id)?;
        let pin = link.card.pin().filter(|p| p.blocked)?;
        let redis_id = pin.redis_id?;
        link.card.set_unblock_sent(true);
        Some(redis_id)
    }

    /// If session `id` is on this worker, what a tracking redirect to it reaches. A
    /// dedicated connection named as a target is marked so it never serves another lease:
    /// invalidations would keep reaching whoever held it next.
    fn redirect_target(&self, id: u64) -> Option<Target> {
        let link = self.link(id)?;
        match link.card.pin().and_then(|p| p.redis_id) {
            Some(redis_id) => {
                link.card.set_redirect_target(true);
                Some(Target::Held(redis_id))
            }
            None => Some(Target::Unheld),
        }
    }

    /// This worker's part of the answer to `question`.
    fn here(
        &self,
        question: &Question,
        caller: u64,
        table: &CommandTable,
        now: Instant,
    ) -> Partial {
        match question {
            Question::List(request) => Partial::Lines(self.lines(request, table, now)),
            Question::Kill(filter) => {
                let (count, me) = self.kill(filter, caller, now);
                Partial::Killed { count, me }
            }
            Question::Unblock(id, _) => Partial::Unblock(
                u64::try_from(*id)
                    .ok()
                    .and_then(|id| self.unblock_target(id)),
            ),
            Question::Redirect(id) => Partial::Redirect(self.redirect_target(*id)),
        }
    }

    /// Answers from this worker's sessions alone (one worker: they are all of moat's).
    pub(crate) fn answer_here(
        &self,
        question: Question,
        caller: u64,
        table: &CommandTable,
    ) -> Answer {
        let partial = self.here(&question, caller, table, Instant::now());
        finish(question, partial)
    }

    /// Answers from every worker's sessions: this one's at once, the others' by asking.
    pub(crate) async fn answer(
        &self,
        question: Question,
        caller: u64,
        table: &CommandTable,
    ) -> Answer {
        let mut partial = self.here(&question, caller, table, Instant::now());
        match (&question, &mut partial) {
            (Question::List(request), Partial::Lines(lines)) => {
                let more = self
                    .ask_others(|reply| Query::List {
                        request: request.clone(),
                        reply,
                    })
                    .await;
                lines.extend(more.into_iter().flatten());
            }
            (Question::Kill(filter), Partial::Killed { count, .. }) => {
                let more = self
                    .ask_others(|reply| Query::Kill {
                        filter: filter.clone(),
                        caller,
                        reply,
                    })
                    .await;
                *count += more.into_iter().sum::<u64>();
            }
            (Question::Unblock(id, _), Partial::Unblock(found @ None)) => {
                if let Ok(id) = u64::try_from(*id)
                    && self.link(id).is_none()
                {
                    let more = self.ask_others(|reply| Query::Unblock { id, reply }).await;
                    *found = more.into_iter().flatten().next();
                }
            }
            (Question::Redirect(id), Partial::Redirect(found @ None)) => {
                let id = *id;
                let more = self.ask_others(|reply| Query::Redirect { id, reply }).await;
                *found = more.into_iter().flatten().next();
            }
            _ => {}
        }
        finish(question, partial)
    }

    /// Sends a question to every other worker and collects the answers that come within
    /// [`ASK_TIMEOUT`].
    async fn ask_others<T>(&self, make: impl Fn(oneshot::Sender<T>) -> Query) -> Vec<T> {
        let others = (self.shared.queries.iter().enumerate())
            .filter(|(index, _)| *index != self.index)
            .map(|(_, worker)| worker)
            .collect();
        ask(others, make).await
    }
}

/// Puts the parts together as the client gets them.
fn finish(question: Question, partial: Partial) -> Answer {
    match (question, partial) {
        (Question::List(request), Partial::Lines(mut lines)) => {
            let mut text = Vec::new();
            match request {
                ListRequest::All(_) => {
                    lines.sort_unstable_by_key(|(id, _)| *id);
                    for (_, line) in lines {
                        text.extend_from_slice(&line);
                        text.push(b'\n');
                    }
                }
                ListRequest::Ids(ids) => {
                    let by_id: BTreeMap<u64, Vec<u8>> = lines.into_iter().collect();
                    for id in ids {
                        if let Some(line) = u64::try_from(id).ok().and_then(|id| by_id.get(&id)) {
                            text.extend_from_slice(line);
                            text.push(b'\n');
                        }
                    }
                }
            }
            Answer::List(text)
        }
        (Question::Kill(filter), Partial::Killed { count, me }) => Answer::Kill {
            old_form: filter.old_form,
            count,
            me,
        },
        (Question::Unblock(_, mode), Partial::Unblock(redis_id)) => {
            Answer::Unblock { redis_id, mode }
        }
        (Question::Redirect(_), Partial::Redirect(target)) => Answer::Redirect(target),
        // Each question makes its own kind of part; nothing else is built.
        (Question::List(_), _) => Answer::List(Vec::new()),
        (Question::Kill(filter), _) => Answer::Kill {
            old_form: filter.old_form,
            count: 0,
            me: false,
        },
        (Question::Unblock(_, mode), _) => Answer::Unblock {
            redis_id: None,
            mode,
        },
        (Question::Redirect(_), _) => Answer::Redirect(None),
    }
}

/// The user a card shows.
fn user_of(extras: &Extras) -> &str {
    extras.user.as_deref().unwrap_or("default")
}

/// A session's type: subscribed sessions are `pubsub`, all others `normal`.
fn type_of(link: &ClientLink) -> ClientType {
    if link.card.pin().is_some_and(|p| p.subscribed()) {
        ClientType::Pubsub
    } else {
        ClientType::Normal
    }
}

/// Appends the CLIENT LIST line of the session behind `link`; false if it has not
/// started (no identity yet).
pub(crate) fn describe(
    link: &ClientLink,
    table: &CommandTable,
    now: Instant,
    out: &mut Vec<u8>,
) -> bool {
    let card = &link.card;
    let Some(ident) = card.identity() else {
        return false;
    };
    let pin = card.pin().unwrap_or_default();
    let secs = |since: Instant| now.saturating_duration_since(since).as_secs();
    fn bytes(b: &Option<Box<[u8]>>) -> &[u8] {
        b.as_deref().unwrap_or_default()
    }
    card.with_extras(|extras| {
        let fields = LineFields {
            id: ident.id,
            addr: ident.peer,
            laddr: ident.laddr,
            fd: ident.fd,
            name: bytes(&extras.name),
            age: secs(ident.created),
            idle: card.last_activity().map_or(0, secs),
            flags: FlagState {
                monitor: pin.monitor,
                pubsub: pin.subscribed(),
                multi: pin.multi.is_some(),
                blocked: pin.blocked,
                tracking: pin.tracking,
                no_evict: card.no_evict(),
                no_touch: card.no_touch(),
            },
            db: card.db(),
            sub: pin.channels,
            psub: pin.patterns,
            ssub: pin.shards,
            multi: pin.multi,
            omem: link.out_len(),
            cmd: table.name(card.command()).unwrap_or("NULL"),
            user: user_of(extras),
            redir: match pin.redirect {
                _ if !pin.tracking => -1,
                Some(id) => i64::try_from(id).unwrap_or(i64::MAX),
                None => 0,
            },
            resp3: card.resp3(),
            lib_name: bytes(&extras.lib_name),
            lib_ver: bytes(&extras.lib_ver),
        };
        write_line(out, &fields);
    });
    true
}

/// Answers the other workers' questions about this worker's sessions.
async fn serve_queries(ctx: Weak<WorkerCtx>, mut queries: mpsc::Receiver<Query>) {
    while let Some(query) = queries.recv().await {
        let Some(ctx) = ctx.upgrade() else {
            return;
        };
        let facts = ctx.backend.facts();
        let now = Instant::now();
        // A dropped receiver only means the asker gave up waiting.
        match query {
            Query::List { request, reply } => {
                let _ = reply.send(ctx.clients.lines(&request, &facts.table, now));
            }
            Query::Kill {
                filter,
                caller,
                reply,
            } => {
                let _ = reply.send(ctx.clients.kill(&filter, caller, now).0);
            }
            Query::Unblock { id, reply } => {
                let _ = reply.send(ctx.clients.unblock_target(id));
            }
            Query::Redirect { id, reply } => {
                let _ = reply.send(ctx.clients.redirect_target(id));
            }
            Query::Summaries { reply } => {
                let _ = reply.send(ctx.clients.summaries(now));
            }
        }
    }
}

/// Wakes this worker's parked sessions whenever the pause ends, changes or is lifted; they
/// look at the pause again and either go on or park again.
async fn wake_on_pause_change(shared: Arc<Shared>, parked: Rc<Parked>) {
    loop {
        // Registered before looking at the pause, so a change in between is not missed.
        let changed = shared.pause.changed().notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        match shared.pause.until(Instant::now()) {
            Some(at) => {
                tokio::select! {
                    () = &mut changed => {}
                    () = tokio::time::sleep_until(at.into()) => {}
                }
            }
            None => changed.await,
        }
        parked.wake_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_put_together_in_redis_order() {
        let lines = vec![(9, b"nine".to_vec()), (2, b"two".to_vec())];
        let all = finish(
            Question::List(ListRequest::All(None)),
            Partial::Lines(lines.clone()),
        );
        assert_eq!(all, Answer::List(b"two\nnine\n".to_vec()));
        // By id: in the order asked, repeats again, unknown ids skipped.
        let ids = finish(
            Question::List(ListRequest::Ids(vec![9, 5, 2, 9, -1])),
            Partial::Lines(lines),
        );
        assert_eq!(ids, Answer::List(b"nine\ntwo\nnine\n".to_vec()));
    }

    #[test]
    fn a_session_is_listed_killed_and_forgotten() {
        let (shared, _) = Shared::new(1);
        let clients = WorkerClients::new(0, shared);
        let link = Rc::new(ClientLink::default());
        let now = Instant::now();
        link.card.init(Identity {
            id: 41,
            peer: "127.0.0.1:5000"
                .parse()
                .unwrap_or(std::net::SocketAddr::from(([0; 4], 0))),
            laddr: std::net::SocketAddr::from(([127, 0, 0, 1], 6380)),
            fd: 9,
            created: now,
        });
        clients.register(&link);
        let table = CommandTable::builtin();
        let answer = clients.answer_here(Question::List(ListRequest::All(None)), 1, &table);
        let Answer::List(text) = answer else {
            panic!("{answer:?}")
        };
        let text = String::from_utf8(text).unwrap_or_default();
        assert!(text.starts_with("id=41 addr=127.0.0.1:5000 "), "{text}");
        assert!(text.contains(" cmd=NULL user=default "), "{text}");
        let pubsub = clients.answer_here(
            Question::List(ListRequest::All(Some(ClientType::Pubsub))),
            1,
            &table,
        );
        assert_eq!(pubsub, Answer::List(Vec::new()));
        // The caller itself is only reported.
        let filter = KillFilter {
            id: Some(41),
            ..KillFilter::default()
        };
        let me = clients.answer_here(Question::Kill(filter.clone()), 41, &table);
        assert_eq!(
            me,
            Answer::Kill {
                old_form: false,
                count: 1,
                me: true
            }
        );
        assert!(!link.card.killed());
        let other = clients.answer_here(Question::Kill(filter), 1, &table);
        assert!(matches!(
            other,
            Answer::Kill {
                count: 1,
                me: false,
                ..
            }
        ));
        assert!(link.card.killed());
        clients.unregister(41);
        let none = clients.answer_here(Question::List(ListRequest::Ids(vec![41])), 1, &table);
        assert_eq!(none, Answer::List(Vec::new()));
    }

    #[test]
    fn unblock_needs_a_blocked_dedicated_connection() {
        let (shared, _) = Shared::new(1);
        let clients = WorkerClients::new(0, shared);
        let link = Rc::new(ClientLink::default());
        link.card.init(Identity {
            id: 7,
            peer: std::net::SocketAddr::from(([127, 0, 0, 1], 1)),
            laddr: std::net::SocketAddr::from(([127, 0, 0, 1], 2)),
            fd: -1,
            created: Instant::now(),
        });
        clients.register(&link);
        let table = CommandTable::builtin();
        let ask = || clients.answer_here(Question::Unblock(7, UnblockMode::Error), 1, &table);
        assert!(matches!(ask(), Answer::Unblock { redis_id: None, .. }));
        link.card.set_pin(Some(PinSummary {
            blocked: true,
            redis_id: Some(1234),
            ..PinSummary::default()
        }));
        assert_eq!(
            ask(),
            Answer::Unblock {
                redis_id: Some(1234),
                mode: UnblockMode::Error
            }
        );
        assert!(link.card.unblock_sent());
    }
}
