//! A catalogue of hostile input: what an untrusted client can throw at moat, byte for byte,
//! with a real redis-server behind it.
//!
//! Every case asserts its exact outcome: the exact reply bytes, then either that moat closed
//! the connection (nothing more was sent) or that the connection still works (an `ECHO` sent
//! after the case gets its answer as the very next reply). A bystander client, connected
//! before the cases run, is checked after each one. Where Redis itself defines the answer,
//! the same bytes are also sent to the redis-server directly and its outcome must be the same.
//!
//! Heavy cases run in their own process (this binary re-run for one test, as `memory.rs`
//! does) and bound moat's resident set size, read from `/proc/self/status`.
//!
//! Clients connect from 127.0.0.1, which moat's admission guard trusts (never bans), except
//! where a case is about the guard. Every wait is bounded: a hang fails the test. No case
//! asserts how fast anything is.
#![allow(clippy::unwrap_used)]

mod common;

use common::rss::{Peak, mib, rss};

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use common::conn::{Conn, ECHO_SENTINEL, REPLY_TIMEOUT, SENTINEL};
use common::{Stack, bulk, command, shown};
use moat_proxy::config::UserConfig;
use moat_testkit::RedisServer;

/// Longest wait for a condition polled on moat or Redis.
const SETTLE: Duration = Duration::from_secs(10);
/// The password moat's users need in the authentication cases (Redis itself needs none).
const PASSWORD: &str = "hostile-secret";

const MIB: u64 = 1 << 20;

// Error lines moat and Redis send.
const INVALID_MBULK: &[u8] = b"-ERR Protocol error: invalid multibulk length\r\n";
const INVALID_BULK: &[u8] = b"-ERR Protocol error: invalid bulk length\r\n";
const CRLF_AFTER_BULK: &[u8] = b"-ERR Protocol error: expected CRLF after bulk data\r\n";
const UNBALANCED: &[u8] = b"-ERR Protocol error: unbalanced quotes in request\r\n";
const TOO_BIG_INLINE: &[u8] = b"-ERR Protocol error: too big inline request\r\n";
const TOO_BIG_MBULK: &[u8] = b"-ERR Protocol error: too big mbulk count string\r\n";
const TOO_BIG_BULK: &[u8] = b"-ERR Protocol error: too big bulk count string\r\n";
const BULK_TOO_LARGE: &[u8] = b"-ERR moat: bulk argument too large (limit 67108864 bytes)\r\n";
const REQUEST_TOO_LARGE: &[u8] = b"-ERR moat: request too large (limit 67108864 bytes)\r\n";
const TOO_MANY_ARGS: &[u8] = b"-ERR moat: request has too many arguments (limit 1048576)\r\n";
const TOO_MANY_ARGS_UNAUTH: &[u8] = b"-ERR moat: request has too many arguments (limit 10)\r\n";
const BULK_TOO_LARGE_UNAUTH: &[u8] = b"-ERR moat: bulk argument too large (limit 16384 bytes)\r\n";
const WRONGPASS: &[u8] = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n";
const PONG: &[u8] = b"+PONG\r\n";
const OK: &[u8] = b"+OK\r\n";

fn expected_bulk(c: u8) -> Vec<u8> {
    format!("-ERR Protocol error: expected '$', got '{}'\r\n", c as char).into_bytes()
}

// ---------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------

/// A well-behaved client connected before the cases; checked after each.
struct Bystander {
    conn: Conn,
    round: usize,
}

impl Bystander {
    fn connect(stack: &Stack) -> Bystander {
        Self::connect_with(stack, None)
    }

    fn connect_with(stack: &Stack, password: Option<&str>) -> Bystander {
        let mut conn = Conn::connect(stack.addr());
        if let Some(p) = password {
            assert_eq!(shown(&conn.call(&["AUTH", p])), shown(OK));
        }
        let mut b = Bystander { conn, round: 0 };
        b.check("before the cases");
        b
    }

    /// A write and reads that must see it, with values unique to this round.
    fn check(&mut self, after: &str) {
        self.round += 1;
        let key = format!("bystander:{}", self.round);
        let value = format!("value-{}", self.round);
        assert_eq!(
            shown(&self.conn.call(&["SET", &key, &value])),
            shown(OK),
            "bystander SET after {after}"
        );
        assert_eq!(
            shown(&self.conn.call(&["GET", &key])),
            shown(&bulk(value.as_bytes())),
            "bystander GET after {after}"
        );
        assert_eq!(
            shown(&self.conn.call(&["PING"])),
            shown(PONG),
            "bystander PING after {after}"
        );
    }
}

fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A Stack whose moat requires `AUTH hostile-secret` (Redis itself needs no password).
fn auth_stack() -> Stack {
    Stack::with(RedisServer::builder(), |c| {
        c.users = vec![UserConfig {
            name: "default".into(),
            password: Some(PASSWORD.into()),
            password_sha256: None,
            deny_commands: Vec::new(),
        }];
    })
}

fn redis_cmd(stack: &Stack, args: &[&str]) -> Vec<u8> {
    stack.redis.command(args).unwrap()
}

// ---------------------------------------------------------------------------------------
// Table-driven cases
// ---------------------------------------------------------------------------------------

/// What must happen after a case's replies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Then {
    /// The connection still works.
    Open,
    /// Moat closes the connection, having sent nothing more.
    Closed,
}

/// One hostile input and its exact outcome.
struct Case {
    name: String,
    input: Vec<u8>,
    replies: Vec<Vec<u8>>,
    then: Then,
    /// Redis answers the same bytes the same way (checked against the redis-server).
    like_redis: bool,
}

fn case(name: impl Into<String>, input: impl Into<Vec<u8>>, replies: &[&[u8]], then: Then) -> Case {
    Case {
        name: name.into(),
        input: input.into(),
        replies: replies.iter().map(|r| r.to_vec()).collect(),
        then,
        like_redis: false,
    }
}

impl Case {
    fn like_redis(mut self) -> Case {
        self.like_redis = true;
        self
    }
}

/// Sends the case's input on a fresh connection to `to` (after `AUTH` if `password`) and
/// checks its outcome.
fn check_outcome(to: SocketAddr, sentinel: (&[u8], &[u8]), c: &Case, server: &str) {
    let what = format!("{server}: case `{}` (input {})", c.name, shown(&c.input));
    let mut conn = Conn::connect(to);
    conn.send(&c.input);
    match c.then {
        Then::Closed => conn.expect_close(&c.replies.concat(), &what),
        Then::Open => {
            for (i, want) in c.replies.iter().enumerate() {
                let got = conn.reply();
                assert_eq!(shown(&got), shown(want), "{what}: reply {i}");
            }
            conn.expect_working_with(sentinel, &what);
        }
    }
}

/// Runs every case against moat (checking the bystander after each), and those marked
/// `like_redis` against the redis-server too.
fn run_cases(stack: &Stack, by: &mut Bystander, cases: &[Case]) {
    run_cases_with(stack, by, (ECHO_SENTINEL, SENTINEL), cases);
}

/// [`run_cases`], showing that a connection still works with `sentinel` (a request and
/// its reply) instead of `ECHO`.
fn run_cases_with(stack: &Stack, by: &mut Bystander, sentinel: (&[u8], &[u8]), cases: &[Case]) {
    for c in cases {
        check_outcome(stack.addr(), sentinel, c, "moat");
        by.check(&c.name);
        if c.like_redis {
            check_outcome(stack.redis.addr(), sentinel, c, "redis-server");
        }
    }
}

// ---------------------------------------------------------------------------------------
// 1. Declared bulk lengths
// ---------------------------------------------------------------------------------------

#[test]
fn declared_bulk_lengths() {
    use Then::*;
    let stack = Stack::start();
    let mut by = Bystander::connect(&stack);
    let mut long_header = b"*1\r\n$".to_vec();
    long_header.extend(std::iter::repeat_n(b'9', 70_000));
    let cases = vec![
        // Over moat's 64 MiB argument limit: refused from the header alone.
        case(
            "$9999999999",
            "*1\r\n$9999999999\r\n",
            &[BULK_TOO_LARGE],
            Closed,
        ),
        case(
            "$4294967296",
            "*1\r\n$4294967296\r\n",
            &[BULK_TOO_LARGE],
            Closed,
        ),
        case(
            "$9999999999 as SET's value",
            "*3\r\n$3\r\nSET\r\n$4\r\nhuge\r\n$9999999999\r\nabc",
            &[BULK_TOO_LARGE],
            Closed,
        ),
        case(
            "$67108865",
            "*1\r\n$67108865\r\n",
            &[BULK_TOO_LARGE],
            Closed,
        ),
        // At the argument limit, but with framing the request passes 64 MiB.
        case(
            "$67108864",
            "*1\r\n$67108864\r\n",
            &[REQUEST_TOO_LARGE],
            Closed,
        ),
        // Malformed lengths, worded as Redis words them.
        case("$-1", "*1\r\n$-1\r\n", &[INVALID_BULK], Closed).like_redis(),
        case("$-2", "*1\r\n$-2\r\n", &[INVALID_BULK], Closed).like_redis(),
        case("$abc", "*1\r\n$abc\r\n", &[INVALID_BULK], Closed).like_redis(),
        case("$ 5", "*1\r\n$ 5\r\nhello\r\n", &[INVALID_BULK], Closed).like_redis(),
        case("$+5", "*1\r\n$+5\r\nhello\r\n", &[INVALID_BULK], Closed).like_redis(),
        case("$05", "*1\r\n$05\r\nhello\r\n", &[INVALID_BULK], Closed).like_redis(),
        case("$ (empty)", "*1\r\n$\r\n", &[INVALID_BULK], Closed).like_redis(),
        case(
            "$i64::MAX+1",
            "*1\r\n$9223372036854775808\r\n",
            &[INVALID_BULK],
            Closed,
        )
        .like_redis(),
        case(
            "70,000-digit $ header",
            long_header,
            &[TOO_BIG_BULK],
            Closed,
        )
        .like_redis(),
    ];
    run_cases(&stack, &mut by, &cases);
    // The SET with the oversized value never ran.
    assert_eq!(redis_cmd(&stack, &["EXISTS", "huge"]), b":0\r\n");
}

// ---------------------------------------------------------------------------------------
// 2. Multibulk counts
// ---------------------------------------------------------------------------------------

#[test]
fn multibulk_counts() {
    use Then::*;
    let stack = Stack::start();
    let mut by = Bystander::connect(&stack);
    let mut long_count = b"*".to_vec();
    long_count.extend(std::iter::repeat_n(b'1', 70_000));
    let cases = vec![
        // Redis ignores counts <= 0; so does moat, and the connection goes on.
        case("*-1 ignored", "*-1\r\nPING\r\n", &[PONG], Open).like_redis(),
        case("*0 ignored", "*0\r\nPING\r\n", &[PONG], Open).like_redis(),
        case("*-5 ignored", "*-5\r\nPING\r\n", &[PONG], Open).like_redis(),
        case(
            "*-9223372036854775808 ignored",
            "*-9223372036854775808\r\nPING\r\n",
            &[PONG],
            Open,
        )
        .like_redis(),
        case("*abc", "*abc\r\n", &[INVALID_MBULK], Closed).like_redis(),
        case("*99999999999", "*99999999999\r\n", &[INVALID_MBULK], Closed).like_redis(),
        case("*2147483648", "*2147483648\r\n", &[INVALID_MBULK], Closed).like_redis(),
        case("*+1", "*+1\r\n$4\r\nPING\r\n", &[INVALID_MBULK], Closed).like_redis(),
        case("*01", "*01\r\n$4\r\nPING\r\n", &[INVALID_MBULK], Closed).like_redis(),
        case("* 1", "* 1\r\n$4\r\nPING\r\n", &[INVALID_MBULK], Closed).like_redis(),
        case("* (empty)", "*\r\n", &[INVALID_MBULK], Closed).like_redis(),
        case("70,000-digit count", long_count, &[TOO_BIG_MBULK], Closed).like_redis(),
        // Over moat's 1,048,576-argument limit (Redis's own is the same).
        case("*2147483647", "*2147483647\r\n", &[TOO_MANY_ARGS], Closed),
        case("*5000000", "*5000000\r\n", &[TOO_MANY_ARGS], Closed),
        case(
            "*1048577 with its first arguments",
            "*1048577\r\n$5\r\nRPUSH\r\n$1\r\nl\r\n",
            &[TOO_MANY_ARGS],
            Closed,
        ),
    ];
    run_cases(&stack, &mut by, &cases);
    assert_eq!(redis_cmd(&stack, &["EXISTS", "l"]), b":0\r\n");
}

// ---------------------------------------------------------------------------------------
// 3. Arrays of millions of elements, under and over the limit (RSS bounded)
// ---------------------------------------------------------------------------------------

#[test]
fn millions_of_declared_elements_under_and_over_the_limit() {
    isolated(
        "millions_of_declared_elements_under_and_over_the_limit",
        millions_of_elements,
    );
}

fn millions_of_elements() {
    let stack = auth_stack();
    let mut by = Bystander::connect_with(&stack, Some(PASSWORD));
    // Built before the baseline: RPUSH with exactly 1,048,576 arguments (the limit).
    const ARGS: usize = 1 << 20;
    let mut big = format!("*{ARGS}\r\n$5\r\nRPUSH\r\n$7\r\nmillion\r\n").into_bytes();
    for i in 0..ARGS - 2 {
        big.extend_from_slice(&bulk(&[b'a' + (i % 26) as u8]));
    }
    let mut c = Conn::connect(stack.addr());
    assert_eq!(shown(&c.call(&["AUTH", PASSWORD])), shown(OK));

    // Before AUTH: the 10-argument limit, whatever is declared.
    let mut anon = Conn::connect(stack.addr());
    anon.send(b"*5000000\r\n");
    anon.expect_close(TOO_MANY_ARGS_UNAUTH, "*5000000 before AUTH");
    let mut anon = Conn::connect(stack.addr());
    anon.send(b"*1048576\r\n$5\r\nRPUSH\r\n");
    anon.expect_close(TOO_MANY_ARGS_UNAUTH, "*1048576 before AUTH");
    by.check("*5000000 before AUTH");

    assert_eq!(shown(&c.call(&["PING"])), shown(PONG));
    std::thread::sleep(Duration::from_millis(200));
    let baseline = rss();
    let peak = Peak::start();
    // Over the limit after AUTH: refused from the header.
    let mut over = Conn::connect(stack.addr());
    assert_eq!(shown(&over.call(&["AUTH", PASSWORD])), shown(OK));
    over.send(b"*5000000\r\n$5\r\nRPUSH\r\n$7\r\nmillion\r\n");
    over.expect_close(TOO_MANY_ARGS, "*5000000 after AUTH");
    let mut over = Conn::connect(stack.addr());
    assert_eq!(shown(&over.call(&["AUTH", PASSWORD])), shown(OK));
    over.send(b"*1048577\r\n$5\r\nRPUSH\r\n$7\r\nmillion\r\n");
    over.expect_close(TOO_MANY_ARGS, "*1048577 after AUTH");
    by.check("*5000000 after AUTH");
    // Under (at) the limit: all 1,048,576 arguments go through.
    let writer = {
        let mut stream = c.stream.try_clone().unwrap();
        std::thread::spawn(move || {
            stream.write_all(&big).unwrap();
            big.len()
        })
    };
    let reply = c.reply();
    let sent = writer.join().unwrap();
    assert_eq!(
        shown(&reply),
        shown(format!(":{}\r\n", ARGS - 2).as_bytes()),
        "RPUSH with {ARGS} arguments ({sent} bytes)"
    );
    by.check("RPUSH with 1,048,576 arguments");
    let during = peak.finish();
    let growth = during.saturating_sub(baseline);
    eprintln!(
        "RPUSH of {ARGS} arguments ({} request): RSS baseline {}, peak {} (+{})",
        mib(sent as u64),
        mib(baseline),
        mib(during),
        mib(growth)
    );
    assert_eq!(
        redis_cmd(&stack, &["LLEN", "million"]),
        format!(":{}\r\n", ARGS - 2).into_bytes()
    );
    assert_eq!(
        redis_cmd(&stack, &["LINDEX", "million", "27"]),
        b"$1\r\nb\r\n"
    );
    // The request (7 MiB), its argument table (16 MiB) and its forwarded copy (7 MiB).
    assert!(
        growth < 128 * MIB,
        "RSS grew by {} for one {}-argument request",
        mib(growth),
        ARGS
    );
    c.expect_working("after the million-argument request");
}

// ---------------------------------------------------------------------------------------
// 4. Nesting and non-bulk elements
// ---------------------------------------------------------------------------------------

#[test]
fn nested_arrays_and_non_bulk_elements() {
    use Then::*;
    let stack = Stack::start();
    let mut by = Bystander::connect(&stack);
    let deep = b"*1\r\n".repeat(100_000);
    let cases = vec![
        case("100,000 nested *1", deep, &[&expected_bulk(b'*')], Closed).like_redis(),
        case(
            "array as ECHO's argument",
            "*2\r\n$4\r\nECHO\r\n*1\r\n$1\r\nx\r\n",
            &[&expected_bulk(b'*')],
            Closed,
        )
        .like_redis(),
        case(
            "integer element",
            "*1\r\n:1\r\n",
            &[&expected_bulk(b':')],
            Closed,
        )
        .like_redis(),
        case(
            "simple-string element",
            "*1\r\n+PING\r\n",
            &[&expected_bulk(b'+')],
            Closed,
        )
        .like_redis(),
        case(
            "inline text as element",
            "*2\r\n$4\r\nECHO\r\nhello\r\n",
            &[&expected_bulk(b'h')],
            Closed,
        )
        .like_redis(),
        // The CR is shown as a space, as Redis does, so the error stays one line.
        case(
            "empty line as element",
            "*1\r\n\r\n",
            &[b"-ERR Protocol error: expected '$', got ' '\r\n"],
            Closed,
        )
        .like_redis(),
    ];
    run_cases(&stack, &mut by, &cases);
}

// ---------------------------------------------------------------------------------------
// 5. Line endings: missing CRLF, bare LF, CR without LF
// ---------------------------------------------------------------------------------------

#[test]
fn broken_line_endings() {
    use Then::*;
    let stack = Stack::start();
    let mut by = Bystander::connect(&stack);
    let cases = vec![
        case(
            "bare LF after the count",
            "*1\n$4\r\nPING\r\n",
            &[INVALID_MBULK],
            Closed,
        )
        .like_redis(),
        case(
            "bare LF after a bulk length",
            "*1\r\n$4\nPING\r\n",
            &[INVALID_BULK],
            Closed,
        )
        .like_redis(),
        // Moat is stricter than Redis here (Redis skips the byte after a CR unchecked):
        // accepting it would let moat and Redis split the stream differently.
        case(
            "CR without LF after the count",
            "*1\rx",
            &[INVALID_MBULK],
            Closed,
        ),
        case(
            "CR without LF after a bulk length",
            "*1\r\n$4\rPING\r\n",
            &[INVALID_BULK],
            Closed,
        ),
        case(
            "bulk ended by LF",
            "*1\r\n$4\r\nPING\n",
            &[CRLF_AFTER_BULK],
            Closed,
        ),
        case(
            "bulk ended by CR and a byte",
            "*1\r\n$4\r\nPING\rx",
            &[CRLF_AFTER_BULK],
            Closed,
        ),
        case(
            "bulk longer than declared",
            "*1\r\n$3\r\nPING\r\n",
            &[CRLF_AFTER_BULK],
            Closed,
        ),
        case(
            "missing CRLF before the next request",
            "*1\r\n$4\r\nPING*1\r\n$4\r\nPING\r\n",
            &[CRLF_AFTER_BULK],
            Closed,
        ),
        // Inline: LF alone ends a line, a CR inside a line separates arguments.
        case(
            "inline lines ended by LF",
            "PING\nPING\n",
            &[PONG, PONG],
            Open,
        )
        .like_redis(),
        case(
            "inline CR inside a line",
            "PING\rhello\r\n",
            &[b"$5\r\nhello\r\n"],
            Open,
        )
        .like_redis(),
        case("inline CR CR LF", "PING\r\r\n", &[PONG], Open).like_redis(),
    ];
    run_cases(&stack, &mut by, &cases);
}

// ---------------------------------------------------------------------------------------
// 6. Inline commands: quotes, escapes, NUL bytes
// ---------------------------------------------------------------------------------------

#[test]
fn inline_quotes_and_escapes() {
    use Then::*;
    let stack = Stack::start();
    let mut by = Bystander::connect(&stack);
    let cases = vec![
        case(
            "SET \"a b\" 'c'",
            "SET \"a b\" 'c'\r\nGET \"a b\"\r\n",
            &[OK, b"$1\r\nc\r\n"],
            Open,
        )
        .like_redis(),
        case(
            "\\x41 escapes",
            "ECHO \"\\x41\\x42\\x7a\"\r\n",
            &[b"$3\r\nABz\r\n"],
            Open,
        )
        .like_redis(),
        case(
            "bad \\x escape",
            "ECHO \"\\xZZ\"\r\n",
            &[b"$3\r\nxZZ\r\n"],
            Open,
        )
        .like_redis(),
        case(
            "escaped double quote",
            "ECHO \"a\\\"b\"\r\n",
            &[b"$3\r\na\"b\r\n"],
            Open,
        )
        .like_redis(),
        case(
            "escaped single quote",
            "ECHO 'it\\'s'\r\n",
            &[b"$4\r\nit's\r\n"],
            Open,
        )
        .like_redis(),
        case(
            "\\n \\t \\r in double quotes",
            "ECHO \"\\n\\t\\r\"\r\n",
            &[b"$3\r\n\n\t\r\r\n"],
            Open,
        )
        .like_redis(),
        case(
            "empty quoted argument",
            "ECHO \"\"\r\n",
            &[b"$0\r\n\r\n"],
            Open,
        )
        .like_redis(),
        case("unbalanced \"", "ECHO \"abc\r\n", &[UNBALANCED], Closed).like_redis(),
        case("unbalanced '", "ECHO 'abc\r\n", &[UNBALANCED], Closed).like_redis(),
        case(
            "trailing backslash in quotes",
            "ECHO \"abc\\\r\n",
            &[UNBALANCED],
            Closed,
        )
        .like_redis(),
        case("\"a\"b", "ECHO \"a\"b\r\n", &[UNBALANCED], Closed).like_redis(),
        case("'a'b", "ECHO 'a'b\r\n", &[UNBALANCED], Closed).like_redis(),
        case(
            "answers before the unbalanced line",
            "PING\r\nECHO x\r\nSET \"k v\r\nPING\r\n",
            &[PONG, b"$1\r\nx\r\n", UNBALANCED],
            Closed,
        )
        .like_redis(),
    ];
    run_cases(&stack, &mut by, &cases);
}

/// Moat treats NUL in an inline command as data (Redis cuts inline strings at NUL because
/// it works on C strings; moat documents the difference), so these are moat-only.
#[test]
fn inline_commands_with_nul_bytes() {
    use Then::*;
    let stack = Stack::start();
    let mut by = Bystander::connect(&stack);
    let cases = vec![
        case("ECHO a\\0b", "ECHO a\0b\r\n", &[b"$3\r\na\0b\r\n"], Open),
        // Redis prints the name as a C string: empty.
        case(
            "command name of NULs",
            "\0\0\0\r\n",
            &[b"-ERR unknown command '', with args beginning with: \r\n"],
            Open,
        ),
        case(
            "SET with NULs, read back with a multibulk GET",
            b"SET nul\0key \"v\\x00al\"\r\n*2\r\n$3\r\nGET\r\n$7\r\nnul\0key\r\n".to_vec(),
            &[OK, b"$4\r\nv\0al\r\n"],
            Open,
        ),
    ];
    run_cases(&stack, &mut by, &cases);
}

// ---------------------------------------------------------------------------------------
// 7. Binary garbage (seeded)
// ---------------------------------------------------------------------------------------

/// splitmix64: deterministic bytes for the garbage cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// `len` random bytes, none of them in `except`.
    fn bytes(&mut self, len: usize, except: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let b = self.next().to_le_bytes()[0];
            if !except.contains(&b) {
                out.push(b);
            }
        }
        out
    }
}

#[test]
fn seeded_binary_garbage() {
    use Then::*;
    let stack = Stack::start();
    let mut by = Bystander::connect(&stack);
    let mut cases = Vec::new();
    for seed in 1..=3u64 {
        let mut rng = Rng(seed);
        // After `*`, anything but a digit or `-` is not a count: refused at the first line
        // end (a random megabyte has one within its first bytes).
        let mut star = b"*".to_vec();
        star.push(b'a' + (seed as u8));
        star.extend(rng.bytes(4096, b""));
        cases.push(case(
            format!("* then garbage, seed {seed}"),
            star,
            &[INVALID_MBULK],
            Closed,
        ));
        // 100 KB with no line feed (and no NUL, where Redis would stop looking): an inline
        // request too big to keep.
        let mut noline = rng.bytes(100_000, b"\n\0*");
        noline[0] = b'x';
        cases.push(
            case(
                format!("100 KB of garbage without LF, seed {seed}"),
                noline,
                &[TOO_BIG_INLINE],
                Closed,
            )
            .like_redis(),
        );
        // A well-framed start, then garbage where the CRLF after the bulk should be.
        let mut bad_end = b"*2\r\n$4\r\nECHO\r\n$16\r\n".to_vec();
        bad_end.extend(rng.bytes(16, b""));
        bad_end.extend(rng.bytes(64, b"\r"));
        cases.push(case(
            format!("garbage after a bulk, seed {seed}"),
            bad_end,
            &[CRLF_AFTER_BULK],
            Closed,
        ));
    }
    run_cases(&stack, &mut by, &cases);

    // Random lines of bytes (no NUL, where Redis's inline parser stops, and no `*`, so
    // every line is inline): moat answers exactly what Redis answers, line by line (the
    // lines' unknown commands are answered by Redis through moat), and then the `ECHO`
    // after them (unless an unbalanced quote closed the connection).
    for seed in 10..16u64 {
        let mut rng = Rng(seed);
        // Most seeds without quotes, so that all their lines get answers; two with them,
        // so that an unbalanced quote closes the connection part way.
        let except: &[u8] = if seed < 14 { b"\0*\"'" } else { b"\0*" };
        let mut input = rng.bytes(8192, except);
        input.extend_from_slice(b"\r\n");
        let (moat, moat_closed) = transcript(stack.addr(), &input);
        let (redis, redis_closed) = transcript(stack.redis.addr(), &input);
        assert_eq!(
            (shown(&moat), moat_closed),
            (shown(&redis), redis_closed),
            "seed {seed}: moat's answers (left) differ from Redis's (right)"
        );
        let lines = input.iter().filter(|&&b| b == b'\n').count();
        eprintln!(
            "garbage seed {seed}: {lines} lines, {} reply bytes, closed: {moat_closed}",
            moat.len()
        );
        by.check(&format!("garbage lines, seed {seed}"));
    }
}

/// Sends `input` then `ECHO sentinel`, and returns every byte received before the
/// sentinel's reply (or before the close), and whether the connection closed.
fn transcript(to: SocketAddr, input: &[u8]) -> (Vec<u8>, bool) {
    let mut c = Conn::connect(to);
    c.send(input);
    c.send(ECHO_SENTINEL);
    let deadline = Instant::now() + REPLY_TIMEOUT;
    let mut out = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        while let Some((_, used)) = moat_protocol::Value::decode(&c.buf, 64).unwrap() {
            let reply: Vec<u8> = c.buf.drain(..used).collect();
            if reply == SENTINEL {
                assert!(c.buf.is_empty(), "bytes after the sentinel");
                return (out, false);
            }
            out.extend_from_slice(&reply);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no sentinel nor close from {to}");
        c.stream.set_read_timeout(Some(left)).unwrap();
        match c.stream.read(&mut chunk) {
            Ok(0) => {
                out.append(&mut c.buf);
                return (out, true);
            }
            Ok(n) => c.buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                out.append(&mut c.buf);
                return (out, true);
            }
            Err(e) => panic!("read from {to}: {e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// 8. Long lines, empty lines, empty and long command names, unicode, mixed pipelines
// ---------------------------------------------------------------------------------------

#[test]
fn long_and_empty_lines_and_names() {
    use Then::*;
    let stack = Stack::start();
    let mut by = Bystander::connect(&stack);
    let mut no_newline = b"SET k ".to_vec();
    no_newline.resize(100 << 10, b'a');
    // A line of exactly 65,536 bytes (the limit) is accepted; one more byte is not.
    let mut at_limit = b"ECHO ".to_vec();
    at_limit.resize(65_536, b'z');
    at_limit.push(b'\n');
    let at_limit_reply = bulk(&vec![b'z'; 65_536 - 5]);
    let mut over_limit = b"ECHO ".to_vec();
    over_limit.resize(65_537, b'z');
    over_limit.push(b'\n');
    let long_name = vec![b'a'; 10_000];
    let unknown_long = format!(
        "-ERR unknown command '{}', with args beginning with: \r\n",
        "a".repeat(128)
    )
    .into_bytes();
    let mut long_inline = long_name.clone();
    long_inline.extend_from_slice(b"\r\n");
    let megabyte_name = vec![b'a'; 1 << 20];
    let long_args = command(&[&[b'n'; 200], &[b'b'; 200], b"c"]);
    let unknown_long_args = format!(
        "-ERR unknown command '{}', with args beginning with: '{}' \r\n",
        "n".repeat(128),
        "b".repeat(128)
    )
    .into_bytes();
    let empty_unknown: &[u8] = b"-ERR unknown command '', with args beginning with: \r\n";
    let mut empty_mix = b"\r\n".repeat(10_000);
    empty_mix.extend(b"\n".repeat(10_000));
    empty_mix.extend(b"  \t \r\n".repeat(10_000));
    empty_mix.extend(b"*0\r\n*-1\r\n".repeat(5_000));
    empty_mix.extend_from_slice(b"PING\r\n");
    let cases = vec![
        case(
            "100 KB inline line without LF",
            no_newline,
            &[TOO_BIG_INLINE],
            Closed,
        )
        .like_redis(),
        case(
            "65,536-byte inline line",
            at_limit,
            &[&at_limit_reply],
            Open,
        ),
        // Refused even though it is complete, so the verdict does not depend on how the
        // line was split into reads (Redis's does).
        case(
            "65,537-byte inline line",
            over_limit,
            &[TOO_BIG_INLINE],
            Closed,
        ),
        case(
            "10,000-byte command name, multibulk",
            command(&[&long_name]),
            &[&unknown_long],
            Open,
        )
        .like_redis(),
        case(
            "10,000-byte command name, inline",
            long_inline,
            &[&unknown_long],
            Open,
        )
        .like_redis(),
        case(
            "1 MB command name",
            command(&[&megabyte_name]),
            &[&unknown_long],
            Open,
        )
        .like_redis(),
        case(
            "long name and arguments",
            long_args,
            &[&unknown_long_args],
            Open,
        )
        .like_redis(),
        case(
            "10,000 empty lines of each kind, then PING",
            empty_mix,
            &[PONG],
            Open,
        )
        .like_redis(),
        case(
            "empty command name, multibulk",
            "*1\r\n$0\r\n\r\n",
            &[empty_unknown],
            Open,
        )
        .like_redis(),
        case(
            "empty command name, inline",
            "\"\"\r\n",
            &[empty_unknown],
            Open,
        )
        .like_redis(),
        case(
            "empty command name with an argument",
            "*2\r\n$0\r\n\r\n$1\r\nx\r\n",
            &[b"-ERR unknown command '', with args beginning with: 'x' \r\n"],
            Open,
        )
        .like_redis(),
    ];
    run_cases(&stack, &mut by, &cases);
}

#[test]
fn unicode_and_mixed_pipelines() {
    use Then::*;
    let stack = Stack::start();
    let mut by = Bystander::connect(&stack);
    let crab = "値 🦀".as_bytes();
    let mut get_crab = b"*2\r\n$3\r\nGET\r\n".to_vec();
    get_crab.extend_from_slice(&bulk("ключ".as_bytes()));
    let mut unicode_set = "SET ключ \"値 🦀\"\r\n".as_bytes().to_vec();
    unicode_set.extend_from_slice(&get_crab);
    let mixed = [
        &b"PING\r\n"[..],
        &command(&[b"ECHO", b"a"]),
        b"ECHO b\r\n",
        &command(&[b"PING"]),
        b"SET mix \"v v\"\r\n",
        &command(&[b"GET", b"mix"]),
        b"STRLEN mix\n",
        &command(&[b"ECHO", "é".as_bytes()]),
        b"\r\n*0\r\nECHO 'c d'\r\n",
    ]
    .concat();
    let cases = vec![
        case(
            "unicode key and value, inline SET then multibulk GET",
            unicode_set,
            &[OK, &bulk(crab)],
            Open,
        )
        .like_redis(),
        case(
            "unicode ECHO",
            "ECHO ünïcödé\r\n",
            &[&bulk("ünïcödé".as_bytes())],
            Open,
        )
        .like_redis(),
        case(
            "unicode unknown command",
            "ЖЖЖ аргумент\r\n",
            &["-ERR unknown command 'ЖЖЖ', with args beginning with: 'аргумент' \r\n".as_bytes()],
            Open,
        )
        .like_redis(),
        case(
            "inline and multibulk mixed in one write",
            mixed,
            &[
                PONG,
                b"$1\r\na\r\n",
                b"$1\r\nb\r\n",
                PONG,
                OK,
                b"$3\r\nv v\r\n",
                b":3\r\n",
                &bulk("é".as_bytes()),
                b"$3\r\nc d\r\n",
            ],
            Open,
        )
        .like_redis(),
    ];
    run_cases(&stack, &mut by, &cases);
}

// ---------------------------------------------------------------------------------------
// 9. Trickles: one byte per write, 10,000 writes for one request
// ---------------------------------------------------------------------------------------

#[test]
fn a_pipeline_of_50_commands_one_byte_per_write() {
    let stack = Stack::start();
    let mut by = Bystander::connect(&stack);
    let mut input = Vec::new();
    let mut want: Vec<Vec<u8>> = Vec::new();
    for i in 0..50 {
        match i % 5 {
            0 => {
                input.extend(command(&[
                    b"SET",
                    format!("trickle:{i}").as_bytes(),
                    format!("v{i}").as_bytes(),
                ]));
                want.push(OK.to_vec());
            }
            1 => {
                input.extend(format!("GET trickle:{}\r\n", i - 1).into_bytes());
                want.push(bulk(format!("v{}", i - 1).as_bytes()));
            }
            2 => {
                input.extend(format!("INCR trickle:n:{i}\r\n").into_bytes());
                want.push(b":1\r\n".to_vec());
            }
            3 => {
                input.extend(command(&[b"ECHO", format!("e{i}").as_bytes()]));
                want.push(bulk(format!("e{i}").as_bytes()));
            }
            _ => {
                input.extend(b"PING\r\n");
                want.push(PONG.to_vec());
            }
        }
    }
    let mut c = Conn::connect(stack.addr());
    for &byte in &input {
        c.send(&[byte]);
    }
    for (i, w) in want.iter().enumerate() {
        assert_eq!(shown(&c.reply()), shown(w), "reply {i}");
    }
    c.expect_working("after the byte-at-a-time pipeline");
    by.check("the byte-at-a-time pipeline");
}

#[test]
fn one_request_split_across_10000_writes() {
    let stack = Stack::start();
    let mut by = Bystander::connect(&stack);
    let value: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let request = command(&[b"SET", b"split", &value]);
    let piece = request.len() / 10_000;
    let mut c = Conn::connect(stack.addr());
    let mut writes = 0;
    for chunk in request.chunks(piece) {
        c.send(chunk);
        writes += 1;
    }
    assert!(writes >= 10_000, "{writes} writes");
    assert_eq!(shown(&c.reply()), shown(OK));
    assert!(c.call(&["GET", "split"]) == bulk(&value), "value changed");
    c.expect_working("after the split request");
    by.check("the request split across 10,000 writes");
}

// ---------------------------------------------------------------------------------------
// 10. A 1 GB pipeline of 1 MB SETs written without reading (RSS bounded)
// ---------------------------------------------------------------------------------------

#[test]
fn a_1gb_pipeline_of_1mb_sets_written_without_reading() {
    isolated(
        "a_1gb_pipeline_of_1mb_sets_written_without_reading",
        gigabyte_pipeline,
    );
}

fn gigabyte_pipeline() {
    const VALUE: usize = 1 << 20;
    const COUNT: usize = 1024;
    const WRITE_FOR: Duration = Duration::from_secs(120);
    let stack = Stack::start();
    let mut by = Bystander::connect(&stack);
    // Built before the baseline: one request, written again and again.
    let value: Vec<u8> = (0..VALUE).map(|i| b'a' + (i % 26) as u8).collect();
    let request = command(&[b"SET", b"hog", &value]);
    let mut hog = Conn::connect(stack.addr());
    assert_eq!(shown(&hog.call(&["SET", "hog", "small"])), shown(OK));
    hog.stream
        .set_write_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let baseline = rss();
    let peak = Peak::start();
    let writer = {
        let mut stream = hog.stream.try_clone().unwrap();
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut sent = 0;
            while sent < COUNT && started.elapsed() < WRITE_FOR {
                stream
                    .write_all(&request)
                    .unwrap_or_else(|e| panic!("SET {sent} not written: {e}"));
                sent += 1;
            }
            (sent, request.len(), started.elapsed())
        })
    };
    // Meanwhile the bystander is served.
    let started = Instant::now();
    let mut rounds = 0;
    while !writer.is_finished() {
        assert!(
            started.elapsed() < WRITE_FOR + Duration::from_secs(60),
            "the writer did not stop"
        );
        by.check(&format!("round {rounds} of the 1 GB pipeline"));
        rounds += 1;
    }
    let (sent, len, took) = writer.join().unwrap();
    let during = peak.now();
    // Only now are the replies read: exactly one +OK per SET.
    let want = OK.repeat(sent);
    let mut got = std::mem::take(&mut hog.buf);
    let mut chunk = [0u8; 65536];
    let deadline = Instant::now() + REPLY_TIMEOUT;
    while got.len() < want.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "{} of {} reply bytes",
            got.len(),
            want.len()
        );
        hog.stream.set_read_timeout(Some(left)).unwrap();
        match hog.stream.read(&mut chunk) {
            Ok(0) => panic!("closed after {} of {} reply bytes", got.len(), want.len()),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("read: {e}"),
        }
    }
    assert!(got == want, "replies: {}", shown(&got));
    hog.expect_working("after the 1 GB pipeline");
    let peak = peak.finish();
    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "1 GB pipeline: {sent} SETs of {} ({} in all) in {} ms; bystander served {rounds} \
         rounds meanwhile; RSS baseline {}, peak {} (+{})",
        mib(len as u64),
        mib((sent * len) as u64),
        took.as_millis(),
        mib(baseline),
        mib(during.max(peak)),
        mib(growth)
    );
    assert_eq!(
        redis_cmd(&stack, &["STRLEN", "hog"]),
        format!(":{VALUE}\r\n").into_bytes()
    );
    // Moat must not take in the client's gigabyte. (How much it queues for Redis depends on
    // how fast Redis drains it here; the tight bound is checked with Redis stopped, in
    // `a_pipelining_client_is_not_buffered_while_redis_is_stopped`.)
    assert!(
        growth < 512 * MIB,
        "RSS grew by {} while a client pipelined {} of SETs",
        mib(growth),
        mib((sent * len) as u64)
    );
    by.check("the 1 GB pipeline");
}

/// The same client while Redis is stopped (SIGSTOP, shorter than `request_timeout`): moat
/// must stop reading its SETs after a bounded amount instead of queueing them all for Redis.
#[test]
fn a_pipelining_client_is_not_buffered_while_redis_is_stopped() {
    isolated(
        "a_pipelining_client_is_not_buffered_while_redis_is_stopped",
        pipeline_while_stopped,
    );
}

fn pipeline_while_stopped() {
    const VALUE: usize = 1 << 20;
    const OFFER: usize = 1 << 30;
    const BLOCKED: Duration = Duration::from_secs(3);
    let stack = Stack::with(RedisServer::builder(), |c| {
        c.backend.request_timeout = Duration::from_secs(120);
    });
    let mut by = Bystander::connect(&stack);
    let value: Vec<u8> = (0..VALUE).map(|i| b'a' + (i % 26) as u8).collect();
    let request = command(&[b"SET", b"stopped:hog", &value]);
    let len = request.len();
    let mut hog = Conn::connect(stack.addr());
    assert_eq!(shown(&hog.call(&["PING"])), shown(PONG));
    hog.stream.set_write_timeout(Some(BLOCKED)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let baseline = rss();
    let peak = Peak::start();
    stack.redis.pause();
    // Offer 1 GiB of SETs; stop at the first write that blocks for 3 s (moat stopped
    // reading). Bounded by the offer and by 60 s.
    let writer = {
        let mut stream = hog.stream.try_clone().unwrap();
        let request = request.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let (mut written, mut off, mut blocked) = (0usize, 0usize, false);
            while written < OFFER && started.elapsed() < Duration::from_secs(60) {
                match stream.write(&request[off..]) {
                    Ok(n) => {
                        written += n;
                        off = (off + n) % request.len();
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        blocked = true;
                        break;
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
            Ok((written, blocked))
        })
    };
    let outcome = writer.join().unwrap();
    let held = peak.now().saturating_sub(baseline);
    stack.redis.resume();
    let (written, blocked) = outcome.unwrap_or_else(|e| panic!("the hog's write failed: {e}"));
    // Finish a request cut by the blocked write, then every SET is answered.
    let mut sets = written / len;
    let cut = written % len;
    hog.stream.set_write_timeout(Some(REPLY_TIMEOUT)).unwrap();
    if cut > 0 {
        hog.send(&request[cut..]);
        sets += 1;
    }
    for i in 0..sets {
        assert_eq!(shown(&hog.reply()), shown(OK), "reply to SET {i}");
    }
    hog.expect_working("after the stopped-Redis pipeline");
    by.check("a pipeline while Redis was stopped");
    let peak = peak.finish();
    eprintln!(
        "with Redis stopped, moat took in {} ({} SETs of {}) before the client's write \
         blocked: {blocked}; RSS baseline {}, growth while stopped {}, peak {}",
        mib(written as u64),
        written / len,
        mib(len as u64),
        mib(baseline),
        mib(held),
        mib(peak)
    );
    assert!(
        held < 128 * MIB,
        "while Redis was stopped, moat took in {} of SETs from one client (its write blocked: \
         {blocked}) and its RSS grew by {}: requests queued for Redis are bounded by count \
         (max_inflight), not by bytes",
        mib(written as u64),
        mib(held)
    );
}

// ---------------------------------------------------------------------------------------
// 11. Half-closed sockets and resets
// ---------------------------------------------------------------------------------------

#[test]
fn half_closed_sockets() {
    let stack = Stack::start();
    let mut by = Bystander::connect(&stack);

    // Complete requests, then FIN: every reply comes, then the close.
    let mut c = Conn::connect(stack.addr());
    c.send(&b"INCR hc:count\r\n".repeat(1000));
    c.stream.shutdown(Shutdown::Write).unwrap();
    let want: Vec<u8> = (1..=1000)
        .flat_map(|i| format!(":{i}\r\n").into_bytes())
        .collect();
    c.expect_close(&want, "1000 INCRs then FIN");
    by.check("1000 INCRs then FIN");

    // Stateful commands, then FIN: Redis writes the replies of what it read before it sees
    // the EOF, so a transaction's and a subscription's replies come, then the close; moat
    // gives the same bytes though they run on a dedicated connection.
    for (what, script) in [
        (
            "MULTI/INCR/EXEC then FIN",
            &b"MULTI\r\nINCR hc:tx\r\nINCR hc:tx\r\nEXEC\r\nGET hc:tx\r\n"[..],
        ),
        ("SUBSCRIBE then FIN", &b"SUBSCRIBE hc:ch1 hc:ch2\r\n"[..]),
        ("WATCH/GET then FIN", &b"WATCH hc:w\r\nGET hc:w\r\n"[..]),
    ] {
        let mut direct = Conn::connect(stack.redis.addr());
        direct.send(script);
        direct.stream.shutdown(Shutdown::Write).unwrap();
        let want = direct
            .read_to_eof(common::conn::REPLY_TIMEOUT)
            .unwrap_or_else(|| panic!("{what}: Redis did not close"));
        assert!(!want.is_empty(), "{what}: Redis sent nothing");
        redis_cmd(&stack, &["DEL", "hc:tx"]);
        let mut c = Conn::connect(stack.addr());
        c.send(script);
        c.stream.shutdown(Shutdown::Write).unwrap();
        c.expect_close(&want, what);
        by.check(what);
    }

    // A partial request, then FIN: nothing runs, nothing is answered.
    let mut c = Conn::connect(stack.addr());
    c.send(b"*3\r\n$3\r\nSET\r\n$7\r\nhc:part\r\n$5\r\nab");
    c.stream.shutdown(Shutdown::Write).unwrap();
    c.expect_close(b"", "partial SET then FIN");
    assert_eq!(redis_cmd(&stack, &["EXISTS", "hc:part"]), b":0\r\n");
    by.check("partial SET then FIN");

    // FIN before anything.
    let c = Conn::connect(stack.addr());
    c.stream.shutdown(Shutdown::Write).unwrap();
    let mut c = c;
    c.expect_close(b"", "FIN at once");

    // A blocked call, then FIN: the client is gone, so its BLPOP must not live on.
    let mut c = Conn::connect(stack.addr());
    c.send(b"BLPOP hc:list 0\r\n");
    wait_until("BLPOP to block in Redis", SETTLE, || {
        stack.redis.info_u64("blocked_clients").unwrap() == 1
    });
    c.stream.shutdown(Shutdown::Write).unwrap();
    c.expect_close(b"", "BLPOP then FIN");
    wait_until("the BLPOP to end in Redis", SETTLE, || {
        stack.redis.info_u64("blocked_clients").unwrap() == 0
    });
    assert_eq!(
        shown(&by.conn.call(&["LPUSH", "hc:list", "x"])),
        shown(b":1\r\n")
    );
    assert_eq!(redis_cmd(&stack, &["LLEN", "hc:list"]), b":1\r\n");
    by.check("BLPOP then FIN");
    wait_until("moat to hold only the bystander", SETTLE, || {
        stack.moat.guard().clients() == 1
    });
}

#[test]
fn resets_mid_request() {
    let stack = Stack::start();
    let mut by = Bystander::connect(&stack);

    // RST in the middle of a request's value.
    let mut c = Conn::connect(stack.addr());
    c.send(b"*3\r\n$3\r\nSET\r\n$6\r\nrst:mid\r\n$100\r\nabc");
    c.abort();
    wait_until("moat to drop the reset client", SETTLE, || {
        stack.moat.guard().clients() == 1
    });
    assert_eq!(redis_cmd(&stack, &["EXISTS", "rst:mid"]), b":0\r\n");
    by.check("RST mid-value");

    // RST with a thousand requests in flight.
    let mut c = Conn::connect(stack.addr());
    c.send(&b"INCR rst:count\r\n".repeat(1000));
    c.abort();
    wait_until("moat to drop the reset client", SETTLE, || {
        stack.moat.guard().clients() == 1
    });
    by.check("RST with 1000 requests in flight");
    let mut fresh = Conn::connect(stack.addr());
    let n = fresh.call(&["INCR", "rst:count"]);
    let n: u64 = std::str::from_utf8(&n[1..n.len() - 2])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("INCR answered {}", shown(&n)));
    assert!((1..=1001).contains(&n), "rst:count is {n}");

    // RST while subscribed: the dedicated connection's subscription ends in Redis.
    let mut c = Conn::connect(stack.addr());
    assert_eq!(
        shown(&c.call(&["SUBSCRIBE", "rst:chan"])),
        shown(b"*3\r\n$9\r\nsubscribe\r\n$8\r\nrst:chan\r\n:1\r\n")
    );
    c.abort();
    wait_until("the subscription to end in Redis", SETTLE, || {
        redis_cmd(&stack, &["PUBSUB", "NUMSUB", "rst:chan"]) == b"*2\r\n$8\r\nrst:chan\r\n:0\r\n"
    });
    by.check("RST while subscribed");
    wait_until("moat to hold only the bystander", SETTLE, || {
        stack.moat.guard().clients() == 2
    });
    fresh.expect_working("after the resets");
}

// ---------------------------------------------------------------------------------------
// 12. Other protocols: TLS, HTTP
// ---------------------------------------------------------------------------------------

/// A TLS 1.2 ClientHello for `localhost` (deterministic, with no LF byte in it).
fn client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x03];
    body.extend((0..32u8).map(|i| i.wrapping_mul(7).wrapping_add(0x20)));
    body.push(32);
    body.extend((0..32u8).map(|i| 0xa0 ^ i));
    body.extend([0x00, 0x04, 0x13, 0x01, 0xc0, 0x2f]);
    body.extend([0x01, 0x00]);
    let host = b"localhost";
    let mut sni = vec![0x00, 0x00];
    let list_len = host.len() + 3;
    sni.extend((list_len as u16 + 2).to_be_bytes());
    sni.extend((list_len as u16).to_be_bytes());
    sni.push(0);
    sni.extend((host.len() as u16).to_be_bytes());
    sni.extend(host);
    body.extend((sni.len() as u16).to_be_bytes());
    body.extend(sni);
    let mut handshake = vec![0x01, 0x00];
    handshake.extend((body.len() as u16).to_be_bytes());
    handshake.extend(body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend((handshake.len() as u16).to_be_bytes());
    record.extend(handshake);
    record
}

#[test]
fn a_tls_client_hello_is_closed_at_the_handshake_deadline() {
    let stack = Stack::with(RedisServer::builder(), |c| {
        c.guard.handshake_timeout = Duration::from_millis(500);
    });
    let mut by = Bystander::connect(&stack);
    let hello = client_hello();
    assert!(hello.starts_with(b"\x16\x03\x01"));
    assert!(!hello.contains(&b'\n'));
    let before = stack.moat.metrics().get("deadline_closes").unwrap();
    // An inline "line" that never ends: no reply, and the connection is closed silently
    // when the handshake deadline passes (Redis itself would wait forever).
    let mut c = Conn::connect(stack.addr());
    c.send(&hello);
    c.expect_close(b"", "TLS ClientHello");
    assert_eq!(
        stack.moat.metrics().get("deadline_closes").unwrap(),
        before + 1,
        "closed by the handshake deadline"
    );
    by.check("a TLS ClientHello");
}

#[test]
fn an_http_get_is_answered_like_redis_and_host_closes() {
    let stack = Stack::start();
    let mut by = Bystander::connect(&stack);
    let lost = stack
        .moat
        .metrics()
        .get("backend_connections_lost")
        .unwrap();
    let get_error: &[u8] = b"-ERR wrong number of arguments for 'get' command\r\n";
    for (server, addr) in [("redis-server", stack.redis.addr()), ("moat", stack.addr())] {
        let mut c = Conn::connect(addr);
        // `GET / HTTP/1.1` is an inline GET with two arguments too many.
        c.send(b"GET / HTTP/1.1\r\n");
        assert_eq!(shown(&c.reply()), shown(get_error), "{server}");
        // Redis treats `Host:` (and `POST`) as a cross-protocol attack: it closes the
        // connection without an answer.
        c.send(b"Host: example.com\r\nUser-Agent: curl/8.0\r\nAccept: */*\r\n\r\n");
        c.expect_close(b"", &format!("{server}: `Host:` line"));
    }
    assert_eq!(
        stack
            .moat
            .metrics()
            .get("backend_connections_lost")
            .unwrap(),
        lost,
        "an HTTP request cost moat a backend connection"
    );
    by.check("an HTTP GET");
}

#[test]
fn an_http_post_with_a_body_is_closed_like_redis() {
    let stack = Stack::start();
    let mut by = Bystander::connect(&stack);
    let lost = stack
        .moat
        .metrics()
        .get("backend_connections_lost")
        .unwrap();
    let post = b"POST /api HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                 Content-Length: 14\r\n\r\n{\"set\":\"x y\"}\n";
    for (server, addr) in [("redis-server", stack.redis.addr()), ("moat", stack.addr())] {
        let mut c = Conn::connect(addr);
        c.send(post);
        c.expect_close(b"", &format!("{server}: HTTP POST"));
    }
    assert_eq!(
        stack
            .moat
            .metrics()
            .get("backend_connections_lost")
            .unwrap(),
        lost,
        "an HTTP POST cost moat a backend connection"
    );
    by.check("an HTTP POST");
}

/// A `Host:` line from one client must not fail another client's request that shares the
/// backend connection with it.
#[test]
fn a_host_line_does_not_fail_other_clients_requests() {
    let stack = Stack::with(RedisServer::builder(), |c| {
        c.backend.shared_connections = 1;
    });
    let mut victim = Bystander::connect(&stack);
    let mut attacker = Conn::connect(stack.addr());
    assert_eq!(shown(&attacker.call(&["PING"])), shown(PONG));
    // Both requests wait in the one shared connection while Redis is stopped.
    stack.redis.pause();
    attacker.send(b"Host: x\r\n");
    std::thread::sleep(Duration::from_millis(200));
    victim.conn.send(&command(&[b"INCR", b"victim"]));
    std::thread::sleep(Duration::from_millis(200));
    stack.redis.resume();
    let reply = victim.conn.reply();
    let _ = attacker.read_to_eof(REPLY_TIMEOUT);
    assert_eq!(
        shown(&reply),
        shown(b":1\r\n"),
        "the victim's INCR, queued behind another client's `Host:` line"
    );
    victim.check("another client's `Host:` line");
}

// ---------------------------------------------------------------------------------------
// 13. QUIT
// ---------------------------------------------------------------------------------------

#[test]
fn nothing_after_quit_runs() {
    use Then::*;
    let stack = Stack::start();
    let mut by = Bystander::connect(&stack);
    let mut huge_after = b"QUIT\r\n".to_vec();
    huge_after.extend_from_slice(b"*3\r\n$3\r\nSET\r\n$5\r\nquit3\r\n$9999999999\r\n");
    let cases = vec![
        case(
            "inline QUIT then SET",
            "QUIT\r\nSET quit1 v\r\n",
            &[OK],
            Closed,
        )
        .like_redis(),
        case(
            "multibulk QUIT then SET",
            [command(&[b"QUIT"]), command(&[b"SET", b"quit2", b"v"])].concat(),
            &[OK],
            Closed,
        )
        .like_redis(),
        case(
            "QUIT then an oversized request: no protocol error",
            huge_after,
            &[OK],
            Closed,
        )
        .like_redis(),
        case(
            "QUIT then garbage",
            "QUIT\r\n*abc\r\nSET quit4 v\r\n",
            &[OK],
            Closed,
        )
        .like_redis(),
        case(
            "SET, QUIT, SET",
            "SET quit5 a\r\nQUIT\r\nSET quit5 b\r\n",
            &[OK, OK],
            Closed,
        )
        .like_redis(),
    ];
    run_cases(&stack, &mut by, &cases);
    for key in ["quit1", "quit2", "quit3", "quit4"] {
        assert_eq!(redis_cmd(&stack, &["EXISTS", key]), b":0\r\n", "{key}");
    }
    assert_eq!(redis_cmd(&stack, &["GET", "quit5"]), b"$1\r\na\r\n");
}

// ---------------------------------------------------------------------------------------
// 14. A hoard of partial requests from an untrusted source
// ---------------------------------------------------------------------------------------

#[test]
fn a_hundred_partial_requests_are_closed_at_the_handshake_deadline() {
    const HOARD: usize = 100;
    let stack = Stack::with(RedisServer::builder(), |c| {
        c.guard.handshake_timeout = Duration::from_millis(500);
        c.guard.max_per_ip = 200;
        c.guard.ip_burst = 200;
        c.guard.ip_rate = 1000.0;
        c.guard.strikes_to_ban = 1000;
    });
    let mut by = Bystander::connect(&stack);
    let src = [127, 3, 0, 1];
    let partials: [&[u8]; 4] = [
        b"*2\r\n$3\r\nGET\r\n$5\r\nab",
        b"*3\r\n$3\r\nSET\r\n",
        b"GET some",
        b"*1",
    ];
    let before = stack.moat.metrics().get("deadline_closes").unwrap();
    let mut hoard: Vec<Conn> = (0..HOARD)
        .map(|i| {
            let mut c = Conn::from(src, stack.addr());
            c.send(partials[i % partials.len()]);
            c
        })
        .collect();
    by.check("100 partial requests connected");
    for (i, c) in hoard.iter_mut().enumerate() {
        c.expect_close(b"", &format!("partial request {i}"));
    }
    wait_until("moat to hold only the bystander", SETTLE, || {
        stack.moat.guard().clients() == 1
    });
    assert_eq!(
        stack.moat.metrics().get("deadline_closes").unwrap(),
        before + HOARD as u64
    );
    by.check("100 partial requests closed");
    // The source itself may still connect and work (it did not reach strikes_to_ban).
    let mut again = Conn::from(src, stack.addr());
    assert_eq!(shown(&again.call(&["PING"])), shown(PONG));
}

// ---------------------------------------------------------------------------------------
// 15. Authentication: big credentials and many arguments before AUTH
// ---------------------------------------------------------------------------------------

#[test]
fn oversized_requests_before_auth() {
    use Then::*;
    let stack = auth_stack();
    let mut by = Bystander::connect_with(&stack, Some(PASSWORD));
    let mut mb_auth = b"*2\r\n$4\r\nAUTH\r\n$1048576\r\n".to_vec();
    mb_auth.extend(vec![b'p'; 8192]);
    let mut inline_auth = b"AUTH ".to_vec();
    inline_auth.extend(vec![b'p'; 100_000]);
    inline_auth.extend_from_slice(b"\r\n");
    let limit_password = vec![b'p'; 16_384];
    let mut hello_1000 = b"*1000\r\n$5\r\nHELLO\r\n".to_vec();
    hello_1000.extend(b"$1\r\n3\r\n".repeat(999));
    let mut hello_inline = b"HELLO".to_vec();
    hello_inline.extend(b" 3".repeat(999));
    hello_inline.extend_from_slice(b"\r\n");
    let cases = vec![
        case(
            "AUTH with a 1 MB password",
            mb_auth,
            &[BULK_TOO_LARGE_UNAUTH],
            Closed,
        ),
        // Before AUTH a request (inline line and its LF included) may take 64 KiB, so this
        // limit trips before the 64 KiB inline limit does.
        case(
            "inline AUTH with a 100 KB password",
            inline_auth,
            &[b"-ERR moat: request too large (limit 65536 bytes)\r\n"],
            Closed,
        ),
        case(
            "AUTH with a 16 KB password (at the limit)",
            command(&[b"AUTH", &limit_password]),
            &[WRONGPASS],
            Open,
        ),
        case(
            "HELLO with 1000 arguments",
            hello_1000,
            &[TOO_MANY_ARGS_UNAUTH],
            Closed,
        ),
        case(
            "inline HELLO with 1000 arguments",
            hello_inline,
            &[TOO_MANY_ARGS_UNAUTH],
            Closed,
        ),
    ];
    let auth = format!("AUTH {PASSWORD}\r\n").into_bytes();
    run_cases_with(&stack, &mut by, (&auth, OK), &cases);
}

// ---------------------------------------------------------------------------------------
// 16. SUBSCRIBE to 10,000 channels
// ---------------------------------------------------------------------------------------

#[test]
fn subscribe_to_10000_channels_and_the_lease_ends_after_unsubscribe() {
    const CHANNELS: usize = 10_000;
    let stack = Stack::with(RedisServer::builder(), |c| {
        c.pinned.max_connections = 1;
        c.pinned.wait = Duration::from_millis(300);
    });
    let mut by = Bystander::connect(&stack);
    let names: Vec<String> = (0..CHANNELS).map(|i| format!("ch:{i}")).collect();
    let mut args: Vec<&[u8]> = vec![b"SUBSCRIBE"];
    args.extend(names.iter().map(|n| n.as_bytes()));
    let mut sub = Conn::connect(stack.addr());
    sub.send(&command(&args));
    for (i, name) in names.iter().enumerate() {
        let want = format!(
            "*3\r\n$9\r\nsubscribe\r\n${}\r\n{name}\r\n:{}\r\n",
            name.len(),
            i + 1
        );
        assert_eq!(
            shown(&sub.reply()),
            shown(want.as_bytes()),
            "confirmation {i}"
        );
    }
    assert_eq!(
        redis_cmd(&stack, &["PUBSUB", "NUMSUB", "ch:5000"]),
        b"*2\r\n$7\r\nch:5000\r\n:1\r\n"
    );
    // Messages arrive.
    assert_eq!(
        shown(&by.conn.call(&["PUBLISH", "ch:9999", "hello"])),
        shown(b":1\r\n")
    );
    assert_eq!(
        shown(&sub.reply()),
        shown(b"*3\r\n$7\r\nmessage\r\n$7\r\nch:9999\r\n$5\r\nhello\r\n")
    );
    // The one dedicated connection is held.
    let mut other = Conn::connect(stack.addr());
    assert_eq!(
        shown(&other.call(&["SUBSCRIBE", "other"])),
        shown(b"-ERR moat: no dedicated connection available (limit 1)\r\n")
    );
    by.check("SUBSCRIBE to 10,000 channels");
    // UNSUBSCRIBE from all: 10,000 replies, counts going down to 0.
    sub.send(b"UNSUBSCRIBE\r\n");
    let mut seen = std::collections::HashSet::new();
    for left in (0..CHANNELS).rev() {
        let r = sub.reply();
        let text = String::from_utf8(r.clone()).unwrap();
        let parts: Vec<&str> = text.split("\r\n").collect();
        assert!(
            parts.len() == 7
                && parts[0] == "*3"
                && parts[2] == "unsubscribe"
                && parts[5] == format!(":{left}"),
            "unsubscribe reply with {left} left: {}",
            shown(&r)
        );
        assert!(
            names.iter().any(|n| n == parts[4]) && seen.insert(parts[4].to_owned()),
            "unexpected or repeated {}",
            parts[4]
        );
    }
    assert_eq!(seen.len(), CHANNELS);
    // Out of subscriber mode: ordinary commands work again.
    assert_eq!(shown(&sub.call(&["SET", "unsubscribed", "1"])), shown(OK));
    assert_eq!(
        redis_cmd(&stack, &["PUBSUB", "NUMSUB", "ch:5000"]),
        b"*2\r\n$7\r\nch:5000\r\n:0\r\n"
    );
    // The lease ended: the one dedicated connection is free for another client.
    let mut other = Conn::connect(stack.addr());
    assert_eq!(
        shown(&other.call(&["SUBSCRIBE", "other"])),
        shown(b"*3\r\n$9\r\nsubscribe\r\n$5\r\nother\r\n:1\r\n")
    );
    by.check("UNSUBSCRIBE from 10,000 channels");
}

// ---------------------------------------------------------------------------------------
// Isolated processes and RSS (as in memory.rs)
// ---------------------------------------------------------------------------------------

/// Set in the re-run copy of the binary: run the body instead of spawning.
const CHILD_ENV: &str = "MOAT_HOSTILE_TEST_CHILD";
/// A whole isolated test must finish within this.
const TEST_DEADLINE: Duration = Duration::from_secs(400);

/// Runs `body` in a fresh process running only the test `name` (see `common::rss`).
fn isolated(name: &str, body: fn()) {
    common::rss::isolated(name, body, CHILD_ENV, TEST_DEADLINE);
}
