//! A small Redis double on an in-memory pipe, for the harness only.
//!
//! A real `redis-server` answers every test that can reach one; a fuzzer running millions of
//! sessions a minute cannot. The double follows Redis where moat tracks connection state
//! (MULTI/EXEC/DISCARD and what RESET does inside them, WATCH, the SUBSCRIBE family and its
//! confirmations, HELLO, RESET) and answers everything else with `+OK`. Its `COMMAND` reply
//! lists the commands it knows, so moat routes with an authoritative table, as against a
//! real server.

use std::cell::Cell;
use std::rc::Rc;

use bytes::BytesMut;
use moat_protocol::{Limits, RequestParser, encode};

use crate::net::Stream;
use crate::net::memory::Pipe;

/// A command as `COMMAND` describes it: name, arity, flags, subcommands (name, arity).
type CommandDoc = (
    &'static str,
    i64,
    &'static [&'static str],
    &'static [(&'static str, i64)],
);

/// The commands the double describes in `COMMAND`.
const COMMANDS: &[CommandDoc] = &[
    ("get", 2, &["readonly"], &[]),
    ("set", -3, &["write"], &[]),
    ("incr", 2, &["write"], &[]),
    ("del", -2, &["write"], &[]),
    ("lpush", -3, &["write"], &[]),
    ("mget", -2, &["readonly"], &[]),
    ("publish", 3, &["pubsub"], &[]),
    ("ping", -1, &[], &[]),
    ("echo", 2, &[], &[]),
    ("quit", -1, &[], &[]),
    ("select", 2, &[], &[]),
    ("auth", -2, &["no_auth"], &[]),
    ("hello", -1, &["no_auth"], &[]),
    ("reset", 1, &["no_auth"], &[]),
    ("info", -1, &[], &[]),
    ("multi", 1, &["no_multi"], &[]),
    ("exec", 1, &[], &[]),
    ("discard", 1, &[], &[]),
    ("watch", -2, &["no_multi"], &[]),
    ("unwatch", 1, &[], &[]),
    ("subscribe", -2, &["pubsub", "no_multi"], &[]),
    ("psubscribe", -2, &["pubsub", "no_multi"], &[]),
    ("ssubscribe", -2, &["pubsub", "no_multi"], &[]),
    ("unsubscribe", -1, &["pubsub", "no_multi"], &[]),
    ("punsubscribe", -1, &["pubsub", "no_multi"], &[]),
    ("sunsubscribe", -1, &["pubsub", "no_multi"], &[]),
    ("monitor", 1, &["admin", "no_multi"], &[]),
    ("blpop", -3, &["write", "blocking"], &[]),
    ("brpop", -3, &["write", "blocking"], &[]),
    ("xread", -4, &["readonly", "blocking"], &[]),
    ("wait", 3, &[], &[]),
    ("debug", -2, &["admin"], &[]),
    (
        "client",
        -2,
        &[],
        &[
            ("client|setname", 3),
            ("client|getname", 2),
            ("client|id", 2),
            ("client|info", 2),
            ("client|tracking", -3),
            ("client|reply", 3),
            ("client|kill", -3),
            ("client|list", -2),
            ("client|setinfo", 4),
        ],
    ),
    (
        "config",
        -2,
        &["admin"],
        &[("config|get", -3), ("config|set", -4)],
    ),
    ("acl", -2, &[], &[("acl|whoami", 2), ("acl|list", 2)]),
];

/// A fault the double injects: it drops a dedicated connection (one moat named
/// `moat-pinned-*`) when it is about to answer its next `n`-th request, as a server that
/// crashed or a network that failed would. Dedicated connections only: a lost shared
/// connection is reconnected after a real backoff delay, which would stall the fuzzer.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    drop_dedicated_at: Cell<Option<u32>>,
}

impl Faults {
    /// Arms the fault (`None` disarms it): the `n`-th request answered on a dedicated
    /// connection from now on (0: the next one) finds it dropped instead.
    pub(crate) fn drop_dedicated_at(&self, n: Option<u32>) {
        self.drop_dedicated_at.set(n);
    }

    /// Counts one request about to be answered on a dedicated connection; true if the
    /// connection must be dropped instead (the fault then disarms).
    fn strikes(&self) -> bool {
        match self.drop_dedicated_at.get() {
            Some(0) => {
                self.drop_dedicated_at.set(None);
                true
            }
            Some(n) => {
                self.drop_dedicated_at.set(Some(n - 1));
                false
            }
            None => false,
        }
    }
}

/// One connection's state, as Redis keeps it.
#[derive(Debug, Default)]
struct Client {
    resp3: bool,
    /// Commands queued since MULTI (`None` outside a transaction).
    multi: Option<usize>,
    /// A command in the transaction was refused: EXEC aborts.
    multi_dirty: bool,
    subs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Moat named the connection as a dedicated one.
    dedicated: bool,
}

/// Serves one connection until moat closes its end (or sends what Redis would not parse).
pub(crate) async fn serve(pipe: Pipe, faults: Rc<Faults>) {
    let stream = Stream::Memory(pipe);
    let mut parser = RequestParser::new(Limits::default());
    let mut client = Client::default();
    let mut input = BytesMut::with_capacity(16 << 10);
    let mut out = BytesMut::new();
    loop {
        if input.capacity() - input.len() < 4 << 10 {
            input.reserve(16 << 10);
        }
        match stream.read_buf(&mut input).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut pos = 0;
        loop {
            match parser.parse(&input[pos..]) {
                Ok(Some(req)) => {
                    pos += req.len();
                    let args: Vec<&[u8]> = req.args().collect();
                    if args.is_empty() {
                        continue;
                    }
                    // Moat's own CLIENT ID after opening a dedicated connection is part
                    // of its handshake, not a request the fault counts.
                    let handshake = args.len() == 2
                        && args[0].eq_ignore_ascii_case(b"client")
                        && args[1].eq_ignore_ascii_case(b"id");
                    if client.dedicated && !handshake && faults.strikes() {
                        // Replies already produced go out first, as from a server that
                        // died between two requests.
                        let _ = stream.write_all(&out).await;
                        return;
                    }
                    answer(&mut client, &args, &mut out);
                }
                Ok(None) => break,
                // Redis answers a protocol error and closes; moat never sends one.
                Err(_) => return,
            }
        }
        let _ = input.split_to(pos);
        if stream.write_all(&out).await.is_err() {
            return;
        }
        out.clear();
    }
}

fn aggregate(out: &mut BytesMut, n: usize, push: bool) {
    let kind = if push { '>' } else { '*' };
    out.extend_from_slice(format!("{kind}{n}\r\n").as_bytes());
}

fn command_reply(out: &mut BytesMut) {
    encode::array_header(out, COMMANDS.len());
    for (name, arity, flags, subs) in COMMANDS {
        encode::array_header(out, 10);
        encode::bulk(out, name.as_bytes());
        encode::integer(out, *arity);
        encode::array_header(out, flags.len());
        for flag in *flags {
            encode::simple(out, flag);
        }
        for _ in 0..3 {
            encode::integer(out, 0);
        }
        for _ in 0..3 {
            encode::array_header(out, 0);
        }
        encode::array_header(out, subs.len());
        for (sub, arity) in *subs {
            encode::array_header(out, 2);
            encode::bulk(out, sub.as_bytes());
            encode::integer(out, *arity);
        }
    }
}

fn answer(c: &mut Client, args: &[&[u8]], out: &mut BytesMut) {
    let name = args[0].to_ascii_lowercase();
    if name == b"client"
        && args
            .get(1)
            .is_some_and(|s| s.eq_ignore_ascii_case(b"setname"))
        && args.get(2).is_some_and(|n| n.starts_with(b"moat-pinned"))
    {
        c.dedicated = true;
    }
    if let Some(queued) = c.multi.as_mut() {
        match &name[..] {
            b"exec" => {
                let n = *queued;
                c.multi = None;
                if std::mem::take(&mut c.multi_dirty) {
                    encode::error(
                        out,
                        "EXECABORT Transaction discarded because of previous errors.",
                    );
                    return;
                }
                aggregate(out, n, false);
                for _ in 0..n {
                    encode::simple(out, "OK");
                }
                return;
            }
            b"discard" => {
                c.multi = None;
                c.multi_dirty = false;
                encode::simple(out, "OK");
                return;
            }
            b"multi" => {
                encode::error(out, "ERR MULTI calls can not be nested");
                return;
            }
            b"watch" => {
                encode::error(out, "ERR WATCH inside MULTI is not allowed");
                return;
            }
            // Run at once, even inside a transaction.
            b"reset" | b"quit" => {}
            _ if !COMMANDS.iter().any(|(n, ..)| n.as_bytes() == &name[..]) => {
                c.multi_dirty = true;
                encode::error(out, "ERR unknown command");
                return;
            }
            _ => {
                *queued += 1;
                encode::simple(out, "QUEUED");
                return;
            }
        }
    }
    let pubsub_allowed = matches!(
        &name[..],
        b"ping"
            | b"subscribe"
            | b"psubscribe"
            | b"ssubscribe"
            | b"unsubscribe"
            | b"punsubscribe"
            | b"sunsubscribe"
            | b"quit"
            | b"reset"
    );
    if !c.subs.is_empty() && !c.resp3 && !pubsub_allowed {
        // Checked before anything runs, as in Redis: HELLO too is refused here.
        encode::error(
            out,
            "ERR Can't execute 'x': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context",
        );
        return;
    }
    match &name[..] {
        b"command" => command_reply(out),
        b"config" => encode::array_header(out, 0),
        b"info" => encode::bulk(out, b"# Server\r\nredis_version:7.2.0\r\n"),
        b"reset" => {
            *c = Client::default();
            encode::simple(out, "RESET");
        }
        b"multi" => {
            c.multi = Some(0);
            encode::simple(out, "OK");
        }
        b"exec" => encode::error(out, "ERR EXEC without MULTI"),
        b"discard" => encode::error(out, "ERR DISCARD without MULTI"),
        b"hello" => {
            if let Some(v) = args.get(1) {
                c.resp3 = *v == b"3";
            }
            if c.resp3 {
                encode::map_header(out, 1);
            } else {
                encode::array_header(out, 2);
            }
            encode::bulk(out, b"proto");
            encode::integer(out, if c.resp3 { 3 } else { 2 });
        }
        b"subscribe" | b"psubscribe" | b"ssubscribe" => {
            for ch in &args[1..] {
                if !c.subs.iter().any(|(k, s)| *k == name && s == ch) {
                    c.subs.push((name.clone(), ch.to_vec()));
                }
                aggregate(out, 3, c.resp3);
                encode::bulk(out, &name);
                encode::bulk(out, ch);
                encode::integer(out, count(c, &name));
            }
        }
        b"unsubscribe" | b"punsubscribe" | b"sunsubscribe" => {
            let of = subscribe_kind(&name).to_vec();
            let mut chans: Vec<Vec<u8>> = args[1..].iter().map(|a| a.to_vec()).collect();
            if chans.is_empty() {
                chans = c
                    .subs
                    .iter()
                    .filter(|(k, _)| *k == of)
                    .map(|(_, s)| s.clone())
                    .collect();
            }
            if chans.is_empty() {
                aggregate(out, 3, c.resp3);
                encode::bulk(out, &name);
                encode::null_bulk(out);
                encode::integer(out, count(c, &of));
            }
            for ch in chans {
                c.subs.retain(|(k, s)| !(*k == of && *s == ch));
                aggregate(out, 3, c.resp3);
                encode::bulk(out, &name);
                encode::bulk(out, &ch);
                encode::integer(out, count(c, &of));
            }
        }
        b"ping" if !c.subs.is_empty() && !c.resp3 => {
            aggregate(out, 2, false);
            encode::bulk(out, b"pong");
            encode::bulk(out, args.get(1).copied().unwrap_or_default());
        }
        b"ping" => encode::simple(out, "PONG"),
        _ => encode::simple(out, "OK"),
    }
}

/// The subscribe command an unsubscribe command undoes.
fn subscribe_kind(unsubscribe: &[u8]) -> &'static [u8] {
    match unsubscribe {
        b"punsubscribe" => b"psubscribe",
        b"sunsubscribe" => b"ssubscribe",
        _ => b"subscribe",
    }
}

/// The count a confirmation of `kind` reports: channels and patterns together, shard
/// channels apart (as Redis counts them).
fn count(c: &Client, kind: &[u8]) -> i64 {
    let sharded = |k: &[u8]| k == b"ssubscribe";
    let n = c
        .subs
        .iter()
        .filter(|(k, _)| sharded(k) == sharded(kind))
        .count();
    i64::try_from(n).unwrap_or(i64::MAX)
}
