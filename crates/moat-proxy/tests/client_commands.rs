//! CLIENT LIST, INFO, KILL, PAUSE, UNPAUSE, UNBLOCK, NO-EVICT and NO-TOUCH through moat,
//! against a real redis-server: they act on moat's own clients (never on its backend
//! connections), in Redis's formats, with Redis's errors byte for byte.
//!
//! No wall-clock assertion: a pause is checked by ordering (a request sent during the pause
//! is not answered before UNPAUSE, and is after it). The "not answered" windows can only
//! make a broken moat pass by luck, never a correct one fail.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::conn::{Conn, REPLY_TIMEOUT};
use common::{Stack, shown};
use moat_testkit::RedisServer;

/// How long a held request is watched for a reply it must not get.
const HELD: Duration = Duration::from_millis(300);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The text of a bulk string (or RESP3 verbatim string) reply.
fn bulk_text(reply: &[u8]) -> String {
    let t = text(reply);
    assert!(
        t.starts_with('$') || t.starts_with('='),
        "not a bulk reply: {t:?}"
    );
    let body = t.split_once("\r\n").map_or("", |(_, b)| b);
    let body = body.strip_suffix("\r\n").unwrap_or(body);
    body.strip_prefix("txt:").unwrap_or(body).to_string()
}

/// One CLIENT LIST line as `key=value` pairs, as redis-py parses it.
fn fields(line: &str) -> HashMap<String, String> {
    line.split(' ')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// CLIENT LIST (with `args`) as parsed lines.
fn list(c: &mut Conn, args: &[&str]) -> Vec<HashMap<String, String>> {
    let mut cmd = vec!["CLIENT", "LIST"];
    cmd.extend_from_slice(args);
    bulk_text(&c.call(&cmd))
        .lines()
        .filter(|l| !l.is_empty())
        .map(fields)
        .collect()
}

fn client_id(c: &mut Conn) -> u64 {
    let reply = text(&c.call(&["CLIENT", "ID"]));
    reply
        .trim_start_matches(':')
        .trim_end()
        .parse()
        .unwrap_or_else(|_| panic!("CLIENT ID answered {reply:?}"))
}

fn info(c: &mut Conn) -> HashMap<String, String> {
    fields(bulk_text(&c.call(&["CLIENT", "INFO"])).trim_end())
}

/// Polls `check` every 20 ms until it holds (or fails the test after [`REPLY_TIMEOUT`]).
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + REPLY_TIMEOUT;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: still not the case");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until moat lists client `id` with flag `flag` (its blocking call reached Redis).
fn wait_for_flag(c: &mut Conn, id: u64, flag: char) {
    eventually(&format!("client {id} flagged {flag}"), || {
        list(c, &["ID", &id.to_string()])
            .first()
            .is_some_and(|f| f.get("flags").is_some_and(|v| v.contains(flag)))
    });
}

/// Redis's own CLIENT LIST, straight from the server.
fn redis_list(stack: &Stack) -> String {
    text(
        &stack
            .redis
            .command(&["CLIENT", "LIST"])
            .expect("CLIENT LIST"),
    )
}

#[test]
fn list_shows_moat_clients_with_their_own_ids_and_names() {
    let stack = Stack::start();
    let mut a = Conn::connect(stack.addr());
    let mut b = Conn::connect(stack.addr());
    assert_eq!(a.call(&["CLIENT", "SETNAME", "alpha"]), b"+OK\r\n");
    assert_eq!(b.call(&["CLIENT", "SETNAME", "beta"]), b"+OK\r\n");
    assert_eq!(b.call(&["SELECT", "3"]), b"+OK\r\n");
    let (ida, idb) = (client_id(&mut a), client_id(&mut b));
    let lines = list(&mut a, &[]);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let by_name: HashMap<&str, &HashMap<String, String>> =
        lines.iter().map(|f| (f["name"].as_str(), f)).collect();
    assert_eq!(by_name["alpha"]["id"], ida.to_string());
    assert_eq!(by_name["beta"]["id"], idb.to_string());
    assert_eq!(by_name["beta"]["db"], "3");
    assert_eq!(by_name["beta"]["cmd"], "client|id");
    // The caller's own line shows the command it is running.
    assert_eq!(by_name["alpha"]["cmd"], "client|list");
    assert_eq!(by_name["alpha"]["laddr"], stack.addr().to_string());
    assert_eq!(
        by_name["alpha"]["addr"],
        a.stream.local_addr().expect("addr").to_string()
    );
    // Moat's backend connections are Redis's clients, not moat's.
    assert!(lines.iter().all(|f| !f["name"].starts_with("moat-")));
    assert!(redis_list(&stack).contains("name=moat-shared"));
    // By id, in the order asked, unknown ids skipped, repeats repeated.
    let by_id = list(
        &mut a,
        &[
            "ID",
            &idb.to_string(),
            "999999",
            &ida.to_string(),
            &idb.to_string(),
        ],
    );
    let names: Vec<&str> = by_id.iter().map(|f| f["name"].as_str()).collect();
    assert_eq!(names, ["beta", "alpha", "beta"]);
    // CLIENT INFO is the client's own line.
    let own = info(&mut b);
    assert_eq!(own["id"], idb.to_string());
    assert_eq!(own["name"], "beta");
    assert_eq!(own["cmd"], "client|info");
}

/// Moat's lines have Redis 7.0's fields in Redis's order (then 7.2's lib-name and lib-ver),
/// so a client parsing either finds what it expects.
#[test]
fn lines_have_redis_fields_in_redis_order() {
    let stack = Stack::start();
    let mut direct = Conn::connect(stack.redis.addr());
    let mut through = Conn::connect(stack.addr());
    let keys = |line: &str| -> Vec<String> {
        line.trim_end()
            .split(' ')
            .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.to_string()))
            .filter(|k| k != "lib-name" && k != "lib-ver")
            .collect()
    };
    let want = keys(&bulk_text(&direct.call(&["CLIENT", "INFO"])));
    let got_info = bulk_text(&through.call(&["CLIENT", "INFO"]));
    assert_eq!(keys(&got_info), want);
    assert!(got_info.ends_with('\n'), "{got_info:?}");
    let got_list = bulk_text(&through.call(&["CLIENT", "LIST"]));
    assert_eq!(keys(got_list.lines().next().unwrap_or_default()), want);
    // RESP3: a verbatim string, as from Redis.
    through.call(&["HELLO", "3"]);
    let reply = through.call(&["CLIENT", "LIST"]);
    assert!(reply.starts_with(b"="), "{}", shown(&reply));
    assert!(bulk_text(&reply).contains(" resp=3 "));
}

#[test]
fn kill_by_id_closes_that_client_only() {
    let stack = Stack::start();
    let mut a = Conn::connect(stack.addr());
    let mut b = Conn::connect(stack.addr());
    let mut c = Conn::connect(stack.addr());
    assert_eq!(c.call(&["SET", "kill:k", "v"]), b"+OK\r\n");
    let idb = client_id(&mut b);
    assert_eq!(
        a.call(&["CLIENT", "KILL", "ID", &idb.to_string()]),
        b":1\r\n"
    );
    b.expect_silent_close("the killed client");
    assert_eq!(c.call(&["GET", "kill:k"]), b"$1\r\nv\r\n");
    a.expect_working("the killer");
    // Gone from the list; killing it again finds nobody.
    assert!(list(&mut a, &[]).iter().all(|f| f["id"] != idb.to_string()));
    assert_eq!(
        a.call(&["CLIENT", "KILL", "ID", &idb.to_string()]),
        b":0\r\n"
    );
}

#[test]
fn old_form_kill_by_address() {
    let stack = Stack::start();
    let mut a = Conn::connect(stack.addr());
    let mut b = Conn::connect(stack.addr());
    let addr = info(&mut b)["addr"].clone();
    assert_eq!(a.call(&["CLIENT", "KILL", &addr]), b"+OK\r\n");
    b.expect_silent_close("the client killed by address");
    // Nobody there any more: Redis's own error.
    assert_eq!(
        a.call(&["CLIENT", "KILL", &addr]),
        b"-ERR No such client\r\n"
    );
    // The old form may kill the caller itself: the reply comes first.
    let own = info(&mut a)["addr"].clone();
    a.send(&common::command(&[b"CLIENT", b"KILL", own.as_bytes()]));
    a.expect_close(b"+OK\r\n", "a client killing itself by address");
}

#[test]
fn skipme_spares_the_caller_unless_told_otherwise() {
    let stack = Stack::start();
    let mut a = Conn::connect(stack.addr());
    let mut b = Conn::connect(stack.addr());
    let ida = client_id(&mut a).to_string();
    assert_eq!(a.call(&["CLIENT", "KILL", "ID", &ida]), b":0\r\n");
    assert_eq!(
        a.call(&["CLIENT", "KILL", "ID", &ida, "SKIPME", "yes"]),
        b":0\r\n"
    );
    a.expect_working("after sparing itself");
    // Every other client of this user: only b.
    assert_eq!(
        a.call(&["CLIENT", "KILL", "USER", "default", "SKIPME", "yes"]),
        b":1\r\n"
    );
    b.expect_silent_close("b");
    a.send(&common::command(&[
        b"CLIENT",
        b"KILL",
        b"ID",
        ida.as_bytes(),
        b"SKIPME",
        b"no",
    ]));
    a.expect_close(b":1\r\n", "a client killing itself with SKIPME no");
}

#[test]
fn maxage_laddr_and_type_filters() {
    let stack = Stack::start();
    let mut a = Conn::connect(stack.addr());
    let mut b = Conn::connect(stack.addr());
    let idb = client_id(&mut b).to_string();
    // Nobody is an hour old; b matches its own id, address and type.
    assert_eq!(
        a.call(&["CLIENT", "KILL", "ID", &idb, "MAXAGE", "3600"]),
        b":0\r\n"
    );
    assert_eq!(
        a.call(&["CLIENT", "KILL", "ID", &idb, "TYPE", "pubsub"]),
        b":0\r\n"
    );
    assert_eq!(
        a.call(&["CLIENT", "KILL", "ID", &idb, "LADDR", "127.0.0.1:1"]),
        b":0\r\n"
    );
    let laddr = stack.addr().to_string();
    assert_eq!(
        a.call(&[
            "CLIENT", "KILL", "ID", &idb, "LADDR", &laddr, "TYPE", "normal"
        ]),
        b":1\r\n"
    );
    b.expect_silent_close("b");
    // Masters and replicas never connect through moat.
    assert_eq!(a.call(&["CLIENT", "KILL", "TYPE", "master"]), b":0\r\n");
    assert_eq!(a.call(&["CLIENT", "KILL", "TYPE", "replica"]), b":0\r\n");
}

#[test]
fn type_pubsub_lists_and_kills_a_subscriber() {
    let stack = Stack::start();
    let mut a = Conn::connect(stack.addr());
    let mut sub = Conn::connect(stack.addr());
    let ids = client_id(&mut sub).to_string();
    sub.send(&common::command(&[b"SUBSCRIBE", b"news", b"more"]));
    sub.replies(2);
    assert!(!sub.call(&["PSUBSCRIBE", "n*"]).is_empty());
    let pubsub = list(&mut a, &["TYPE", "pubsub"]);
    assert_eq!(pubsub.len(), 1, "{pubsub:?}");
    let f = &pubsub[0];
    assert_eq!(f["id"], ids);
    assert_eq!(f["flags"], "P");
    assert_eq!((f["sub"].as_str(), f["psub"].as_str()), ("2", "1"));
    assert_eq!(f["cmd"], "psubscribe");
    let normal = list(&mut a, &["TYPE", "normal"]);
    assert!(normal.iter().all(|f| f["id"] != ids), "{normal:?}");
    assert!(list(&mut a, &["TYPE", "master"]).is_empty());
    // Killed: its dedicated connection goes too, and Redis forgets the subscription.
    assert_eq!(a.call(&["CLIENT", "KILL", "TYPE", "pubsub"]), b":1\r\n");
    sub.expect_silent_close("the subscriber");
    eventually("Redis drops the killed subscriber's channels", || {
        stack
            .redis
            .command(&["PUBSUB", "NUMSUB", "news"])
            .expect("NUMSUB")
            == b"*2\r\n$4\r\nnews\r\n:0\r\n"
    });
}

/// A client killed while its state lives on a dedicated connection (a blocking call, a
/// transaction) ends cleanly: the connection is closed or reset, Redis holds no blocked
/// client and no transaction for it, and the pool serves the next lease.
#[test]
fn kill_ends_blocked_and_transaction_clients_cleanly() {
    let stack = Stack::start();
    let mut a = Conn::connect(stack.addr());
    let mut blocked = Conn::connect(stack.addr());
    let mut multi = Conn::connect(stack.addr());
    let idb = client_id(&mut blocked);
    let idm = client_id(&mut multi);
    blocked.send(&common::command(&[b"BLPOP", b"kill:list", b"0"]));
    wait_for_flag(&mut a, idb, 'b');
    assert_eq!(multi.call(&["MULTI"]), b"+OK\r\n");
    assert_eq!(multi.call(&["SET", "kill:m", "v"]), b"+QUEUED\r\n");
    let m = list(&mut a, &["ID", &idm.to_string()]);
    assert_eq!((m[0]["flags"].as_str(), m[0]["multi"].as_str()), ("x", "1"));
    for id in [idb, idm] {
        assert_eq!(
            a.call(&["CLIENT", "KILL", "ID", &id.to_string()]),
            b":1\r\n"
        );
    }
    blocked.expect_silent_close("the blocked client");
    multi.expect_silent_close("the client in MULTI");
    eventually(
        "Redis holds no blocked client or transaction of theirs",
        || {
            let redis = redis_list(&stack);
            stack.redis.info_u64("blocked_clients").expect("INFO") == 0
                && !redis.contains("flags=x")
        },
    );
    // The transaction never ran.
    assert_eq!(a.call(&["EXISTS", "kill:m"]), b":0\r\n");
    // Dedicated connections still serve.
    assert_eq!(a.call(&["MULTI"]), b"+OK\r\n");
    assert_eq!(a.call(&["EXEC"]), b"*0\r\n");
    assert_eq!(a.call(&["BLPOP", "kill:list", "0.01"]), b"*-1\r\n");
}

#[test]
fn pause_all_holds_other_clients_until_unpause() {
    let stack = Stack::start();
    let mut admin = Conn::connect(stack.addr());
    let mut b = Conn::connect(stack.addr());
    let mut lifter = Conn::connect(stack.addr());
    assert_eq!(b.call(&["SET", "pause:k", "v"]), b"+OK\r\n");
    assert_eq!(
        admin.call(&["CLIENT", "PAUSE", "100000", "ALL"]),
        b"+OK\r\n"
    );
    b.send(&common::command(&[b"GET", b"pause:k"]));
    assert!(
        b.reply_within(HELD).is_none(),
        "GET answered during the pause"
    );
    // The pausing client is held like any other, as in Redis.
    admin.send(&common::command(&[b"PING"]));
    assert!(
        admin.reply_within(HELD).is_none(),
        "PING answered during the pause"
    );
    // Requests Redis would refuse are answered at once.
    assert_eq!(
        lifter.call(&["GET"]),
        b"-ERR wrong number of arguments for 'get' command\r\n"
    );
    // CLIENT UNPAUSE is never held (moat's one difference from Redis 7.0, where an ALL
    // pause also holds it).
    assert_eq!(lifter.call(&["CLIENT", "UNPAUSE"]), b"+OK\r\n");
    assert_eq!(b.reply(), b"$1\r\nv\r\n");
    assert_eq!(admin.reply(), b"+PONG\r\n");
    b.expect_working("after the pause");
}

#[test]
fn pause_write_lets_reads_through_and_holds_writes() {
    let stack = Stack::start();
    let mut admin = Conn::connect(stack.addr());
    let mut b = Conn::connect(stack.addr());
    let mut reader = Conn::connect(stack.addr());
    assert_eq!(b.call(&["SET", "pw:k", "old"]), b"+OK\r\n");
    assert_eq!(
        admin.call(&["CLIENT", "PAUSE", "100000", "WRITE"]),
        b"+OK\r\n"
    );
    assert_eq!(b.call(&["GET", "pw:k"]), b"$3\r\nold\r\n");
    b.send(&common::command(&[b"SET", b"pw:k", b"new"]));
    assert!(
        b.reply_within(HELD).is_none(),
        "SET answered during a WRITE pause"
    );
    // PUBLISH and EVAL may replicate: held too (Redis 7.0's COMMAND does not say so).
    reader.send(&common::command(&[b"PUBLISH", b"pw:ch", b"x"]));
    assert!(reader.reply_within(HELD).is_none(), "PUBLISH answered");
    let mut script = Conn::connect(stack.addr());
    script.send(&common::command(&[b"EVAL", b"return 1", b"0"]));
    assert!(script.reply_within(HELD).is_none(), "EVAL answered");
    let mut other = Conn::connect(stack.addr());
    assert_eq!(other.call(&["GET", "pw:k"]), b"$3\r\nold\r\n");
    assert_eq!(other.call(&["CLIENT", "UNPAUSE"]), b"+OK\r\n");
    assert_eq!(b.reply(), b"+OK\r\n");
    assert_eq!(reader.reply(), b":0\r\n");
    assert_eq!(script.reply(), b":1\r\n");
    assert_eq!(other.call(&["GET", "pw:k"]), b"$3\r\nnew\r\n");
}

/// Inside MULTI, Redis 7.0 holds a queued write during a WRITE pause, and an EXEC of a
/// transaction that queued one.
#[test]
fn pause_write_holds_exec_of_a_writing_transaction() {
    let stack = Stack::start();
    let mut admin = Conn::connect(stack.addr());
    let mut t = Conn::connect(stack.addr());
    assert_eq!(t.call(&["MULTI"]), b"+OK\r\n");
    assert_eq!(t.call(&["SET", "pwx:k", "v"]), b"+QUEUED\r\n");
    assert_eq!(t.call(&["GET", "pwx:k"]), b"+QUEUED\r\n");
    assert_eq!(
        admin.call(&["CLIENT", "PAUSE", "100000", "WRITE"]),
        b"+OK\r\n"
    );
    t.send(&common::command(&[b"EXEC"]));
    assert!(t.reply_within(HELD).is_none(), "EXEC of a write answered");
    assert_eq!(admin.call(&["CLIENT", "UNPAUSE"]), b"+OK\r\n");
    assert_eq!(t.reply(), b"*2\r\n+OK\r\n$1\r\nv\r\n");
    // A read-only transaction goes through a WRITE pause.
    assert_eq!(
        admin.call(&["CLIENT", "PAUSE", "100000", "WRITE"]),
        b"+OK\r\n"
    );
    assert_eq!(t.call(&["MULTI"]), b"+OK\r\n");
    assert_eq!(t.call(&["GET", "pwx:k"]), b"+QUEUED\r\n");
    assert_eq!(t.call(&["EXEC"]), b"*1\r\n$1\r\nv\r\n");
    assert_eq!(admin.call(&["CLIENT", "UNPAUSE"]), b"+OK\r\n");
}

#[test]
fn a_huge_pause_is_lifted_by_unpause() {
    let stack = Stack::start();
    let mut admin = Conn::connect(stack.addr());
    let mut b = Conn::connect(stack.addr());
    assert_eq!(admin.call(&["CLIENT", "PAUSE", "999999999"]), b"+OK\r\n");
    b.send(&common::command(&[b"PING"]));
    assert!(
        b.reply_within(HELD).is_none(),
        "PING answered during the pause"
    );
    let mut lifter = Conn::connect(stack.addr());
    assert_eq!(lifter.call(&["CLIENT", "UNPAUSE"]), b"+OK\r\n");
    assert_eq!(b.reply(), b"+PONG\r\n");
    // An end past Redis's millisecond clock is refused, as newer Redis versions do.
    assert_eq!(
        admin.call(&["CLIENT", "PAUSE", "9223372036854775807"]),
        b"-ERR timeout is out of range\r\n"
    );
    admin.expect_working("after the refused pause");
}

/// A pause ends by itself at its deadline: the held client is answered without UNPAUSE.
#[test]
fn a_pause_ends_at_its_deadline() {
    let stack = Stack::start();
    let mut admin = Conn::connect(stack.addr());
    let mut b = Conn::connect(stack.addr());
    assert_eq!(admin.call(&["CLIENT", "PAUSE", "200", "ALL"]), b"+OK\r\n");
    b.send(&common::command(&[b"PING"]));
    assert_eq!(b.reply(), b"+PONG\r\n");
    admin.expect_working("after the pause");
}

/// A client that leaves while held by a pause is let go (as Redis frees a paused client at
/// its EOF), not kept until the pause ends.
#[test]
fn a_held_client_that_leaves_is_let_go() {
    let stack = Stack::start();
    let mut admin = Conn::connect(stack.addr());
    let mut b = Conn::connect(stack.addr());
    let idb = client_id(&mut b);
    assert_eq!(
        admin.call(&["CLIENT", "PAUSE", "100000", "WRITE"]),
        b"+OK\r\n"
    );
    b.send(&common::command(&[b"SET", b"leave:k", b"v"]));
    assert!(b.reply_within(HELD).is_none());
    drop(b);
    eventually("the held client leaves the list", || {
        list(&mut admin, &["ID", &idb.to_string()]).is_empty()
    });
    assert_eq!(admin.call(&["CLIENT", "UNPAUSE"]), b"+OK\r\n");
    assert_eq!(admin.call(&["EXISTS", "leave:k"]), b":0\r\n");
}

#[test]
fn unblock_ends_another_clients_blocking_call() {
    let stack = Stack::start();
    let mut a = Conn::connect(stack.addr());
    let mut b = Conn::connect(stack.addr());
    let idb = client_id(&mut b);
    let id = idb.to_string();
    // Not blocked yet, or not a client at all: 0.
    assert_eq!(a.call(&["CLIENT", "UNBLOCK", &id]), b":0\r\n");
    assert_eq!(a.call(&["CLIENT", "UNBLOCK", "987654321"]), b":0\r\n");
    b.send(&common::command(&[b"BLPOP", b"unblock:list", b"0"]));
    wait_for_flag(&mut a, idb, 'b');
    assert_eq!(a.call(&["CLIENT", "UNBLOCK", &id]), b":1\r\n");
    assert_eq!(b.reply(), b"*-1\r\n");
    b.send(&common::command(&[b"BLPOP", b"unblock:list", b"0"]));
    wait_for_flag(&mut a, idb, 'b');
    assert_eq!(a.call(&["CLIENT", "UNBLOCK", &id, "ERROR"]), b":1\r\n");
    assert_eq!(
        b.reply(),
        b"-UNBLOCKED client unblocked via CLIENT UNBLOCK\r\n"
    );
    b.send(&common::command(&[b"BLPOP", b"unblock:list", b"0"]));
    wait_for_flag(&mut a, idb, 'b');
    assert_eq!(a.call(&["CLIENT", "UNBLOCK", &id, "timeout"]), b":1\r\n");
    assert_eq!(b.reply(), b"*-1\r\n");
    // b goes on, and blocking calls still work afterwards.
    assert_eq!(a.call(&["RPUSH", "unblock:list", "x"]), b":1\r\n");
    assert_eq!(
        b.call(&["BLPOP", "unblock:list", "0"]),
        b"*2\r\n$12\r\nunblock:list\r\n$1\r\nx\r\n"
    );
    assert_eq!(a.call(&["CLIENT", "UNBLOCK", &id]), b":0\r\n");
}

/// The RESP2 way of client-side caching: A subscribes to `__redis__:invalidate`, B tracks
/// with `REDIRECT <A's id>`, and A gets B's invalidations, as from Redis.
#[test]
fn tracking_redirect_sends_invalidations_to_the_named_client() {
    let stack = Stack::start();
    let mut a = Conn::connect(stack.addr());
    let mut b = Conn::connect(stack.addr());
    let mut writer = Conn::connect(stack.addr());
    let ida = client_id(&mut a).to_string();
    assert_eq!(
        a.call(&["SUBSCRIBE", "__redis__:invalidate"]),
        b"*3\r\n$9\r\nsubscribe\r\n$20\r\n__redis__:invalidate\r\n:1\r\n"
    );
    assert_eq!(b.call(&["CLIENT", "GETREDIR"]), b":-1\r\n");
    assert_eq!(
        b.call(&["CLIENT", "TRACKING", "on", "REDIRECT", &ida]),
        b"+OK\r\n"
    );
    assert_eq!(
        b.call(&["CLIENT", "GETREDIR"]),
        format!(":{ida}\r\n").as_bytes()
    );
    assert_eq!(info(&mut b)["redir"], ida);
    assert_eq!(info(&mut b)["flags"], "t");
    assert_eq!(b.call(&["GET", "redir:k"]), b"$-1\r\n");
    assert_eq!(writer.call(&["SET", "redir:k", "1"]), b"+OK\r\n");
    assert_eq!(
        a.reply(),
        b"*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n*1\r\n$7\r\nredir:k\r\n"
    );
    // B itself gets nothing unasked: its next reply is its own.
    assert_eq!(b.call(&["PING"]), b"+PONG\r\n");
    assert_eq!(b.call(&["CLIENT", "TRACKING", "off"]), b"+OK\r\n");
    assert_eq!(b.call(&["CLIENT", "GETREDIR"]), b":-1\r\n");
    assert_eq!(info(&mut b)["redir"], "-1");
    assert_eq!(writer.call(&["SET", "redir:k", "2"]), b"+OK\r\n");
    a.assert_quiet(HELD, "no invalidation once tracking is off");
}

/// The connection Redis sends B's invalidations to never serves another client: when the
/// target's lease ends it is closed, and the next client to subscribe gets nothing of B's.
#[test]
fn a_redirect_target_connection_is_not_handed_on() {
    let stack = Stack::start();
    let mut a = Conn::connect(stack.addr());
    let mut b = Conn::connect(stack.addr());
    let mut writer = Conn::connect(stack.addr());
    let ida = client_id(&mut a).to_string();
    a.call(&["SUBSCRIBE", "__redis__:invalidate"]);
    assert_eq!(
        b.call(&["CLIENT", "TRACKING", "on", "REDIRECT", &ida]),
        b"+OK\r\n"
    );
    // A's subscription ends, and with it its lease.
    a.call(&["UNSUBSCRIBE"]);
    eventually("A's lease ends", || {
        !list(&mut writer, &[])
            .iter()
            .any(|f| f["id"] == ida && f["flags"].contains('P'))
    });
    // Others now subscribe; none may get what Redis still sends for B.
    let mut others: Vec<Conn> = (0..3).map(|_| Conn::connect(stack.addr())).collect();
    for c in &mut others {
        c.call(&["SUBSCRIBE", "redir:other"]);
    }
    assert_eq!(b.call(&["GET", "redir:k2"]), b"$-1\r\n");
    assert_eq!(writer.call(&["SET", "redir:k2", "1"]), b"+OK\r\n");
    for c in &mut others {
        c.assert_quiet(HELD, "another client's invalidation");
    }
    a.assert_quiet(
        Duration::from_millis(50),
        "an invalidation after unsubscribing",
    );
    assert_eq!(writer.call(&["PUBLISH", "redir:other", "m"]), b":3\r\n");
}

/// What redis-py's test_client_tracking does: a redirect to itself or to a client on shared
/// connections is accepted; an id of no client gets Redis's error, ON or OFF.
#[test]
fn tracking_redirect_ids_are_moats() {
    let stack = Stack::start();
    let mut a = Conn::connect(stack.addr());
    let mut b = Conn::connect(stack.addr());
    let ida = client_id(&mut a).to_string();
    let idb = client_id(&mut b).to_string();
    for on in ["on", "ON"] {
        assert_eq!(
            a.call(&["CLIENT", "TRACKING", on, "REDIRECT", &ida]),
            b"+OK\r\n"
        );
        assert_eq!(
            a.call(&["CLIENT", "GETREDIR"]),
            format!(":{ida}\r\n").as_bytes()
        );
        assert_eq!(
            a.call(&["CLIENT", "TRACKING", "off", "REDIRECT", &ida]),
            b"+OK\r\n"
        );
        assert_eq!(
            a.call(&[
                "CLIENT", "TRACKING", on, "bcast", "prefix", "x", "REDIRECT", &idb
            ]),
            b"+OK\r\n"
        );
        assert_eq!(
            b.call(&["CLIENT", "TRACKING", "off", "REDIRECT", &idb]),
            b"+OK\r\n"
        );
        assert_eq!(a.call(&["CLIENT", "TRACKING", "off"]), b"+OK\r\n");
    }
    // Without redirection GETREDIR says 0 while tracking is on.
    assert_eq!(a.call(&["CLIENT", "TRACKING", "on"]), b"+OK\r\n");
    assert_eq!(a.call(&["CLIENT", "GETREDIR"]), b":0\r\n");
    assert_eq!(a.call(&["CLIENT", "TRACKING", "off"]), b"+OK\r\n");
    // Errors are Redis's, tracking on or off: compare with Redis itself.
    let mut direct = Conn::connect(stack.redis.addr());
    for args in [
        ["CLIENT", "TRACKING", "on", "REDIRECT", "987654"],
        ["CLIENT", "TRACKING", "off", "REDIRECT", "987654"],
        ["CLIENT", "TRACKING", "on", "REDIRECT", "0"],
        ["CLIENT", "TRACKING", "on", "REDIRECT", "-3"],
        ["CLIENT", "TRACKING", "on", "REDIRECT", "x"],
        ["CLIENT", "TRACKING", "off", "REDIRECT", "x"],
    ] {
        let want = direct.call(&args);
        assert!(want.starts_with(b"-"), "{args:?}: {}", shown(&want));
        assert_eq!(shown(&a.call(&args)), shown(&want), "{args:?}");
        a.expect_working("after a refused redirect");
    }
    assert_eq!(a.call(&["CLIENT", "GETREDIR"]), b":-1\r\n");
}

#[test]
fn no_evict_and_no_touch_are_session_flags() {
    let stack = Stack::start();
    let mut a = Conn::connect(stack.addr());
    assert_eq!(a.call(&["CLIENT", "NO-EVICT", "on"]), b"+OK\r\n");
    // Redis 7.0 lacks NO-TOUCH; moat accepts it whatever the version.
    assert_eq!(a.call(&["CLIENT", "NO-TOUCH", "ON"]), b"+OK\r\n");
    assert_eq!(info(&mut a)["flags"], "eT");
    assert_eq!(a.call(&["CLIENT", "NO-EVICT", "off"]), b"+OK\r\n");
    assert_eq!(info(&mut a)["flags"], "T");
    assert_eq!(
        a.call(&["CLIENT", "NO-TOUCH", "maybe"]),
        b"-ERR syntax error\r\n"
    );
    assert_eq!(
        a.call(&["CLIENT", "NO-TOUCH"]),
        b"-ERR wrong number of arguments for 'client|no-touch' command\r\n"
    );
}

/// Every argument error is Redis's own, byte for byte: each request goes to Redis
/// directly and through moat on fresh connections, and the replies must be equal.
#[test]
fn argument_errors_match_redis() {
    let stack = Stack::start();
    let cases: &[&[&str]] = &[
        &["CLIENT", "LIST", "TYPE", "foo"],
        &["CLIENT", "LIST", "ID"],
        &["CLIENT", "LIST", "ID", "abc"],
        &["CLIENT", "LIST", "foo"],
        &["CLIENT", "LIST", "TYPE"],
        &["CLIENT", "LIST", "TYPE", "normal", "ID", "5"],
        &["CLIENT", "LIST", "ID", "1", "TYPE", "normal"],
        &["CLIENT", "LIST", "ID", "99999999999999999999"],
        &["CLIENT", "LIST", "ID", "-1"],
        &["CLIENT", "LIST", "TYPE", "master"],
        &["CLIENT", "LIST", "TYPE", "replica"],
        &["CLIENT", "KILL"],
        &["CLIENT", "KILL", "1.2.3.4:5"],
        &["CLIENT", "KILL", "ID"],
        &["CLIENT", "KILL", "ID", "987654321"],
        &["CLIENT", "KILL", "ID", "0"],
        &["CLIENT", "KILL", "ID", "-1"],
        &["CLIENT", "KILL", "ID", "x"],
        &["CLIENT", "KILL", "TYPE", "foo"],
        &["CLIENT", "KILL", "type", "normal", "skipme", "maybe"],
        &["CLIENT", "KILL", "foo", "bar"],
        &["CLIENT", "KILL", "ID", "1", "TYPE"],
        &["CLIENT", "KILL", "ADDR", "1.2.3.4:5", "LADDR", "x"],
        &["CLIENT", "KILL", "TYPE", "master"],
        &["CLIENT", "PAUSE"],
        &["CLIENT", "PAUSE", "x"],
        &["CLIENT", "PAUSE", "-1"],
        &["CLIENT", "PAUSE", "100", "foo"],
        &["CLIENT", "PAUSE", "x", "foo"],
        &["CLIENT", "PaUsE", "100", "write", "extra"],
        &["CLIENT", "PAUSE", "99999999999999999999"],
        &["CLIENT", "PAUSE", "1.5"],
        &["CLIENT", "PAUSE", "0"],
        &["CLIENT", "UNPAUSE", "x"],
        &["CLIENT", "UNPAUSE"],
        &["CLIENT", "NO-EVICT", "on"],
        &["CLIENT", "NO-EVICT", "maybe"],
        &["CLIENT", "NO-EVICT"],
        &["CLIENT", "UNBLOCK"],
        &["CLIENT", "UNBLOCK", "x"],
        &["CLIENT", "UNBLOCK", "1", "foo"],
        &["CLIENT", "UNBLOCK", "x", "foo"],
        &["CLIENT", "UNBLOCK", "987654321"],
        &["CLIENT", "UNBLOCK", "1", "timeout"],
        &["CLIENT", "UNBLOCK", "1", "error", "x"],
        &["CLIENT", "UNBLOCK", "-5"],
    ];
    let mut diffs = Vec::new();
    for case in cases {
        let want = Conn::connect(stack.redis.addr()).call(case);
        let got = Conn::connect(stack.addr()).call(case);
        if want != got {
            diffs.push(format!(
                "{case:?}\n    redis: {}\n    moat:  {}",
                shown(&want),
                shown(&got)
            ));
        }
    }
    // Type names are echoed as sent, up to a NUL, bytes and all.
    for case in [
        &[&b"CLIENT"[..], b"KILL", b"TYPE", b"a\0b"][..],
        &[&b"CLIENT"[..], b"LIST", b"TYPE", b"\xff\xfe"][..],
    ] {
        let want = Conn::connect(stack.redis.addr()).call_bytes(case);
        let got = Conn::connect(stack.addr()).call_bytes(case);
        if want != got {
            diffs.push(format!(
                "{case:?}\n    redis: {}\n    moat:  {}",
                shown(&want),
                shown(&got)
            ));
        }
    }
    assert!(
        diffs.is_empty(),
        "moat differs from Redis:\n{}",
        diffs.join("\n")
    );
}

/// With several workers, each session is on one of them: LIST, KILL, UNBLOCK and PAUSE
/// reach the sessions of every worker.
#[test]
fn every_worker_is_listed_killed_unblocked_and_paused() {
    let stack = Stack::with(RedisServer::builder(), |c| {
        c.proxy.workers = 2;
        c.backend.shared_connections = 2;
    });
    let addr: SocketAddr = stack.addr();
    let mut clients: Vec<Conn> = (0..8).map(|_| Conn::connect(addr)).collect();
    let ids: Vec<u64> = clients.iter_mut().map(client_id).collect();
    let mut admin = Conn::connect(addr);
    let listed: Vec<String> = list(&mut admin, &[])
        .iter()
        .map(|f| f["id"].clone())
        .collect();
    for id in &ids {
        assert!(listed.contains(&id.to_string()), "{id} not in {listed:?}");
    }
    assert_eq!(listed.len(), ids.len() + 1);
    // Pause: every worker's clients are held.
    assert_eq!(admin.call(&["CLIENT", "PAUSE", "100000"]), b"+OK\r\n");
    for c in &mut clients {
        c.send(&common::command(&[b"PING"]));
    }
    for c in &mut clients {
        assert!(c.reply_within(Duration::from_millis(50)).is_none());
    }
    let mut lifter = Conn::connect(addr);
    assert_eq!(lifter.call(&["CLIENT", "UNPAUSE"]), b"+OK\r\n");
    for c in &mut clients {
        assert_eq!(c.reply(), b"+PONG\r\n");
    }
    // Unblock and kill wherever the client is.
    let last = clients.len() - 1;
    clients[last].send(&common::command(&[b"BLPOP", b"workers:list", b"0"]));
    wait_for_flag(&mut admin, ids[last], 'b');
    assert_eq!(
        admin.call(&["CLIENT", "UNBLOCK", &ids[last].to_string()]),
        b":1\r\n"
    );
    assert_eq!(clients[last].reply(), b"*-1\r\n");
    let mut killed = 0;
    for (c, id) in clients.iter_mut().zip(&ids).take(4) {
        assert_eq!(
            admin.call(&["CLIENT", "KILL", "ID", &id.to_string()]),
            b":1\r\n"
        );
        c.expect_silent_close("a killed client");
        killed += 1;
    }
    let left = list(&mut admin, &[]);
    assert_eq!(left.len(), ids.len() + 2 - killed, "{left:?}");
    for c in clients.iter_mut().skip(4) {
        c.expect_working("a client not killed");
    }
    // Tracking redirects to a subscriber wherever it is.
    let target = ids[4].to_string();
    let (head, trackers) = clients.split_at_mut(5);
    let subscriber = &mut head[4];
    subscriber.call(&["SUBSCRIBE", "__redis__:invalidate"]);
    for (i, c) in trackers.iter_mut().enumerate() {
        assert_eq!(
            c.call(&["CLIENT", "TRACKING", "on", "REDIRECT", &target]),
            b"+OK\r\n"
        );
        let key = format!("workers:tracked:{i}");
        assert_eq!(c.call(&["GET", &key]), b"$-1\r\n");
        assert_eq!(admin.call(&["SET", &key, "1"]), b"+OK\r\n");
        let message = subscriber.reply();
        assert!(
            shown(&message).contains(&key),
            "invalidation of {key}: {}",
            shown(&message)
        );
    }
}
