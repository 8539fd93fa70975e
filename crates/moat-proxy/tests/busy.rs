//! A busy Redis (a script that never ends, a function, `DEBUG SLEEP`) behind moat, against a
//! real redis-server: the commands that end a busy script reach Redis, `-BUSY` reaches
//! clients as Redis sends it without opening the breaker, and a slow Redis never makes the
//! backend "unavailable".
//!
//! Assertions are about order and content (who gets which reply), never about how fast;
//! every wait is bounded, so a wedge fails the test instead of hanging it. Redis starts
//! answering `-BUSY` once a script has run `busy-reply-threshold` (100 ms here, 5 s by
//! default); before that it answers no one.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::conn::Conn;
use common::{Stack, shown};
use moat_testkit::RedisServer;

/// Redis's reply to a command refused while a script runs.
const BUSY: &[u8] =
    b"-BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.\r\n";
/// The same while a function runs.
const BUSY_FUNCTION: &[u8] = b"-BUSY Redis is busy running a script. You can only call FUNCTION \
KILL or SHUTDOWN NOSAVE.\r\n";
/// The start of the reply a killed script's or function's caller gets (the script's SHA
/// or the function's name follows; Redis 7.0 names SCRIPT KILL for functions too).
const KILLED: &[u8] = b"-ERR Script killed by user with ";
const UNKILLABLE: &[u8] = b"-UNKILLABLE Sorry the script already executed write commands \
against the dataset. You can either wait the script termination or kill the server in a hard \
way using the SHUTDOWN NOSAVE command.\r\n";
const TIMED_OUT: &[u8] =
    b"-ERR moat: backend timed out (no reply in time; the request was not retried)\r\n";
const OK: &[u8] = b"+OK\r\n";
const PONG: &[u8] = b"+PONG\r\n";

/// Longest wait for a condition polled on Redis or moat.
const SETTLE: Duration = Duration::from_secs(10);

/// A script that never ends and writes nothing (so SCRIPT KILL may stop it).
const SPIN: &str = "while true do end";

fn busy_redis() -> moat_testkit::RedisServerBuilder {
    RedisServer::builder()
        .config("busy-reply-threshold 100")
        .config("enable-debug-command yes")
}

/// Polls Redis directly until it answers `PING` with `want`.
fn wait_for_redis(stack: &Stack, want: &[u8], what: &str) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let mut direct = Conn::connect(stack.redis.addr());
        let reply = direct.call(&["PING"]);
        if reply == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: Redis still answers PING with {}",
            shown(&reply)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until Redis runs a script (answers `busy`), and a little longer, so moat sees
/// the connection the script runs on as stuck behind it.
fn wait_until_busy(stack: &Stack, busy: &[u8]) {
    wait_for_redis(stack, busy, "waiting for the script to run");
    std::thread::sleep(Duration::from_millis(150));
}

fn metric(stack: &Stack, name: &str) -> u64 {
    stack.moat.metrics().get(name).unwrap()
}

/// Sets and reads back a key unique to `tag` through a fresh client: moat serves.
fn served(stack: &Stack, tag: &str) {
    let mut c = Conn::connect(stack.addr());
    let (key, value) = (format!("served:{tag}"), format!("value:{tag}"));
    assert_eq!(shown(&c.call(&["SET", &key, &value])), shown(OK), "{tag}");
    assert_eq!(
        shown(&c.call(&["GET", &key])),
        shown(&common::bulk(value.as_bytes())),
        "{tag}"
    );
}

#[test]
fn script_kill_through_moat_ends_a_busy_script_and_busy_replies_pass_through() {
    let stack = Stack::with(busy_redis(), |_| {});
    served(&stack, "before");
    let mut a = Conn::connect(stack.addr());
    a.send(&common::command(&[b"EVAL", SPIN.as_bytes(), b"0"]));
    wait_until_busy(&stack, BUSY);

    // While the script runs, another client's GET gets Redis's own -BUSY, byte for byte,
    // as it would directly.
    let mut c = Conn::connect(stack.addr());
    let through = c.call(&["GET", "k"]);
    let direct = Conn::connect(stack.redis.addr()).call(&["GET", "k"]);
    assert_eq!(shown(&direct), shown(BUSY), "Redis directly");
    assert_eq!(
        shown(&through),
        shown(BUSY),
        "GET through moat during the script"
    );
    assert_eq!(shown(&c.call(&["PING"])), shown(PONG), "PING is moat's own");

    // SCRIPT KILL from a third client reaches Redis: it is not queued behind the script.
    let mut b = Conn::connect(stack.addr());
    assert_eq!(
        shown(&b.call(&["SCRIPT", "KILL"])),
        shown(OK),
        "SCRIPT KILL"
    );
    let killed = a.reply();
    assert!(
        killed.starts_with(KILLED),
        "the script's caller got {}",
        shown(&killed)
    );
    // Nothing is running any more: Redis says so, through moat too.
    let notbusy = b.call(&["SCRIPT", "KILL"]);
    assert_eq!(
        shown(&notbusy),
        shown(b"-NOTBUSY No scripts in execution right now.\r\n")
    );

    // Every client is served again, and nothing was stray.
    a.expect_working("the script's caller after the kill");
    b.expect_working("the killer");
    c.expect_working("the client that got -BUSY");
    served(&stack, "after the kill");
    assert_eq!(
        metric(&stack, "breaker_opened"),
        0,
        "-BUSY opened the breaker"
    );
    assert_eq!(metric(&stack, "backend_connections_lost"), 0);
    assert_eq!(metric(&stack, "backend_timeouts"), 0);
}

/// With a request timeout shorter than the script: the script's caller gets the timeout
/// error, the connection it ran on is kept (Redis is busy, not gone), other clients keep
/// getting -BUSY, never "backend unavailable", and once the script is killed its late
/// reply is dropped: the caller's next command gets its own reply.
#[test]
fn a_script_longer_than_the_request_timeout_wedges_nothing() {
    let stack = Stack::with(busy_redis(), |c| {
        c.backend.request_timeout = Duration::from_secs(1);
    });
    served(&stack, "before");
    let mut a = Conn::connect(stack.addr());
    a.send(&common::command(&[b"EVAL", SPIN.as_bytes(), b"0"]));
    assert_eq!(shown(&a.reply()), shown(TIMED_OUT), "the script's caller");
    assert_eq!(metric(&stack, "backend_timeouts"), 1);
    wait_until_busy(&stack, BUSY);
    for round in 0..5 {
        let mut c = Conn::connect(stack.addr());
        assert_eq!(
            shown(&c.call(&["GET", "k"])),
            shown(BUSY),
            "GET #{round} while the script runs"
        );
    }
    let mut b = Conn::connect(stack.addr());
    assert_eq!(
        shown(&b.call(&["SCRIPT", "KILL"])),
        shown(OK),
        "SCRIPT KILL"
    );
    wait_for_redis(&stack, PONG, "after SCRIPT KILL");
    // The caller's connection: its next request gets its own reply, not the script's.
    a.expect_working("the script's caller after its timeout and the kill");
    served(&stack, "after the kill");
    assert_eq!(metric(&stack, "breaker_opened"), 0);
    assert_eq!(metric(&stack, "backend_connections_lost"), 0);
}

#[test]
fn function_kill_through_moat_ends_a_busy_function() {
    let stack = Stack::with(busy_redis(), |_| {});
    let library =
        "#!lua name=busy\nredis.register_function('spin', function() while true do end end)";
    let loaded = stack.redis.command(&["FUNCTION", "LOAD", library]).unwrap();
    assert_eq!(shown(&loaded), shown(b"$4\r\nbusy\r\n"));
    let mut a = Conn::connect(stack.addr());
    a.send(&common::command(&[b"FCALL", b"spin", b"0"]));
    wait_until_busy(&stack, BUSY_FUNCTION);
    let mut c = Conn::connect(stack.addr());
    assert_eq!(
        shown(&c.call(&["GET", "k"])),
        shown(BUSY_FUNCTION),
        "GET during FCALL"
    );
    let mut b = Conn::connect(stack.addr());
    assert_eq!(
        shown(&b.call(&["FUNCTION", "KILL"])),
        shown(OK),
        "FUNCTION KILL"
    );
    let killed = a.reply();
    assert!(
        killed.starts_with(KILLED),
        "the function's caller got {}",
        shown(&killed)
    );
    a.expect_working("the function's caller");
    c.expect_working("the client that got -BUSY");
    served(&stack, "after FUNCTION KILL");
    assert_eq!(metric(&stack, "breaker_opened"), 0);
}

/// A script that wrote cannot be killed: the killer gets Redis's -UNKILLABLE; SHUTDOWN
/// NOSAVE through moat then stops Redis, the client that sent it is closed without a
/// reply (as Redis closes it), moat stays up and serves again once Redis is back.
#[test]
fn unkillable_script_then_shutdown_nosave() {
    let mut stack = Stack::with(busy_redis(), |_| {});
    let mut a = Conn::connect(stack.addr());
    let writer = "redis.call('SET', 'w', '1') while true do end";
    a.send(&common::command(&[b"EVAL", writer.as_bytes(), b"0"]));
    wait_until_busy(&stack, BUSY);
    let mut b = Conn::connect(stack.addr());
    assert_eq!(shown(&b.call(&["SCRIPT", "KILL"])), shown(UNKILLABLE));
    b.send(&common::command(&[b"SHUTDOWN", b"NOSAVE"]));
    b.expect_silent_close("the client that sent SHUTDOWN NOSAVE");
    // The script's caller loses its backend connection with the server.
    let lost = a.reply();
    assert_eq!(
        shown(&lost),
        shown(b"-ERR moat: backend connection lost before the reply\r\n")
    );
    stack.redis.restart().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut c = Conn::connect(stack.addr());
        if c.call(&["PING"]) == PONG && c.call(&["SET", "back", "1"]) == OK {
            break;
        }
        assert!(Instant::now() < deadline, "moat never served again");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `DEBUG SLEEP` longer than the request timeout: the sleeper gets the timeout error, and
/// nothing else fails: requests after Redis wakes are served on the same connections (none
/// lost, no "backend unavailable"), and the late `+OK` reaches no one.
#[test]
fn debug_sleep_longer_than_the_request_timeout_makes_nothing_unavailable() {
    let stack = Stack::with(busy_redis(), |c| {
        c.backend.request_timeout = Duration::from_secs(1);
    });
    served(&stack, "before");
    let mut sleeper = Conn::connect(stack.addr());
    sleeper.send(&common::command(&[b"DEBUG", b"SLEEP", b"2"]));
    // A client pipelined behind the sleep on the same connection.
    let mut behind = Conn::connect(stack.addr());
    behind.send(&common::command(&[b"SET", b"behind", b"1"]));
    assert_eq!(shown(&sleeper.reply()), shown(TIMED_OUT), "the sleeper");
    let r = behind.reply();
    assert!(
        r == TIMED_OUT || r == OK,
        "the client behind the sleep got {}",
        shown(&r)
    );
    wait_for_redis(&stack, PONG, "after the sleep");
    for round in 0..20 {
        served(&stack, &format!("after the sleep #{round}"));
    }
    sleeper.expect_working("the sleeper, after its late +OK");
    behind.expect_working("the client behind the sleep");
    assert_eq!(metric(&stack, "backend_connections_lost"), 0);
    assert_eq!(metric(&stack, "backend_connect_failures"), 0);
    assert_eq!(metric(&stack, "breaker_opened"), 0);
    assert!(metric(&stack, "backend_timeouts") >= 1);
}

/// With a single shared connection, everything shared queues behind the script; SCRIPT
/// KILL still reaches Redis on a dedicated connection, and the request queued behind the
/// script is answered once it ends.
#[test]
fn script_kill_reaches_redis_with_one_shared_connection() {
    let stack = Stack::with(busy_redis(), |c| c.backend.shared_connections = 1);
    let mut a = Conn::connect(stack.addr());
    a.send(&common::command(&[b"EVAL", SPIN.as_bytes(), b"0"]));
    wait_until_busy(&stack, BUSY);
    let mut c = Conn::connect(stack.addr());
    c.send(&common::command(&[b"SET", b"queued", b"1"]));
    let mut b = Conn::connect(stack.addr());
    assert_eq!(
        shown(&b.call(&["SCRIPT", "KILL"])),
        shown(OK),
        "SCRIPT KILL"
    );
    let killed = a.reply();
    assert!(
        killed.starts_with(KILLED),
        "the caller got {}",
        shown(&killed)
    );
    assert_eq!(
        shown(&c.reply()),
        shown(OK),
        "the SET queued behind the script"
    );
    assert_eq!(shown(&c.call(&["GET", "queued"])), shown(b"$1\r\n1\r\n"));
    assert_eq!(metric(&stack, "breaker_opened"), 0);
}
