//! MULTI/EXEC/WATCH edge cases, differential: every script is sent to a real redis-server
//! directly and through moat, and the two reply byte streams must be identical.
//!
//! Each script runs twice on each side: as one write (a pipeline, the shape clients such as
//! redis-py send for a transaction: `MULTI`, the commands and `EXEC` together, possibly
//! behind other commands), and one command at a time (each reply read before the next
//! command is sent). The database is flushed before every run, so both sides start from
//! the same data.
//!
//! Every wait is bounded: a hang fails the test.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::conn::Conn;
use common::{Stack, command, shown};

/// A script: commands, each a list of arguments.
type Script = &'static [&'static [&'static str]];

/// The scripts compared. Each is sent on a fresh connection.
const SCRIPTS: &[(&str, Script)] = &[
    (
        "EXECABORT after a wrong-arity command",
        &[&["MULTI"], &["SET", "a"], &["EXEC"], &["GET", "a"]],
    ),
    (
        "EXECABORT after an unknown command",
        &[
            &["MULTI"],
            &["SET", "a", "1"],
            &["NOSUCHCOMMAND", "x"],
            &["EXEC"],
            &["GET", "a"],
        ],
    ),
    ("EXEC without MULTI", &[&["EXEC"], &["PING"]]),
    ("DISCARD without MULTI", &[&["DISCARD"], &["PING"]]),
    (
        "EXEC and DISCARD without MULTI behind a forwarded command",
        &[
            &["SET", "a", "1"],
            &["EXEC"],
            &["GET", "a"],
            &["DISCARD"],
            &["GET", "a"],
        ],
    ),
    (
        "MULTI inside MULTI",
        &[
            &["MULTI"],
            &["MULTI"],
            &["SET", "a", "1"],
            &["EXEC"],
            &["GET", "a"],
        ],
    ),
    (
        "WATCH inside MULTI",
        &[
            &["MULTI"],
            &["WATCH", "a"],
            &["SET", "a", "1"],
            &["EXEC"],
            &["GET", "a"],
        ],
    ),
    (
        "plain commands and two transactions in one pipeline",
        &[
            &["SET", "a", "1"],
            &["MULTI"],
            &["INCR", "a"],
            &["EXEC"],
            &["GET", "a"],
            &["MULTI"],
            &["GET", "a"],
            &["EXEC"],
            &["PING"],
        ],
    ),
    (
        "WATCH before MULTI",
        &[
            &["SET", "a", "1"],
            &["WATCH", "a"],
            &["MULTI"],
            &["INCR", "a"],
            &["EXEC"],
            &["GET", "a"],
            &["PING"],
        ],
    ),
    (
        "WATCH, then the watched key changes on the same connection",
        &[
            &["WATCH", "a"],
            &["SET", "a", "5"],
            &["MULTI"],
            &["INCR", "a"],
            &["EXEC"],
            &["GET", "a"],
        ],
    ),
    (
        "errors inside a pipelined transaction",
        &[
            &["GET", "a"],
            &["MULTI"],
            &["SET", "a"],
            &["INCR", "a"],
            &["EXEC"],
            &["SET", "a", "x"],
            &["MULTI"],
            &["INCR", "a"],
            &["SET", "b", "2"],
            &["EXEC"],
            &["MGET", "a", "b"],
        ],
    ),
    (
        "redis-py's pipeline shape behind other commands",
        &[
            &["SET", "x", "1"],
            &["GET", "x"],
            &["MULTI"],
            &["SET", "a", "1"],
            &["GET", "a"],
            &["LPUSH", "l", "v"],
            &["EXEC"],
        ],
    ),
    (
        "transactions back to back",
        &[
            &["MULTI"],
            &["INCR", "a"],
            &["EXEC"],
            &["MULTI"],
            &["INCR", "a"],
            &["EXEC"],
            &["MULTI"],
            &["EXEC"],
            &["EXEC"],
        ],
    ),
    (
        "DISCARD, then EXEC and DISCARD without MULTI",
        &[
            &["MULTI"],
            &["SET", "a", "1"],
            &["DISCARD"],
            &["DISCARD"],
            &["EXEC"],
            &["GET", "a"],
        ],
    ),
    (
        "a failed transaction discarded",
        &[
            &["MULTI"],
            &["SET", "a"],
            &["DISCARD"],
            &["GET", "a"],
            &["EXEC"],
        ],
    ),
    (
        "UNWATCH outside and WATCH, UNWATCH, EXEC",
        &[
            &["UNWATCH"],
            &["WATCH", "a"],
            &["UNWATCH"],
            &["EXEC"],
            &["PING"],
        ],
    ),
    (
        "UNWATCH and DISCARD inside MULTI",
        &[
            &["WATCH", "a"],
            &["MULTI"],
            &["UNWATCH"],
            &["SET", "a", "1"],
            &["EXEC"],
            &["GET", "a"],
        ],
    ),
    (
        "PING and ECHO inside MULTI are queued",
        &[
            &["MULTI"],
            &["PING"],
            &["ECHO", "x"],
            &["PING", "y"],
            &["EXEC"],
        ],
    ),
    (
        "a blocking command inside MULTI does not block",
        &[&["MULTI"], &["BLPOP", "nolist", "0"], &["EXEC"], &["PING"]],
    ),
    (
        "EXEC and MULTI with arguments",
        &[
            &["EXEC", "x"],
            &["MULTI", "x"],
            &["MULTI"],
            &["EXEC", "x"],
            &["EXEC"],
        ],
    ),
    (
        "a rejected EXEC drops the watched keys",
        &[
            &["WATCH", "a"],
            &["EXEC", "x"],
            &["SET", "a", "1"],
            &["MULTI"],
            &["INCR", "a"],
            &["EXEC"],
            &["GET", "a"],
        ],
    ),
    (
        "a rejected EXEC ends the transaction",
        &[
            &["MULTI"],
            &["SET", "a", "1"],
            &["EXEC", "x"],
            &["GET", "a"],
            &["EXEC"],
            &["MULTI"],
            &["SET", "a", "2"],
            &["EXEC"],
        ],
    ),
    (
        "WATCH without a key, inside and outside MULTI",
        &[&["WATCH"], &["MULTI"], &["WATCH"], &["EXEC"]],
    ),
    (
        "a runtime error inside EXEC",
        &[
            &["SET", "s", "text"],
            &["MULTI"],
            &["INCR", "s"],
            &["SET", "b", "2"],
            &["EXEC"],
            &["GET", "b"],
        ],
    ),
    (
        "case-insensitive names",
        &[
            &["multi"],
            &["set", "a", "1"],
            &["Exec"],
            &["exec"],
            &["discard"],
        ],
    ),
    (
        "many watches then a transaction",
        &[
            &["WATCH", "a"],
            &["WATCH", "b", "c"],
            &["GET", "a"],
            &["MULTI"],
            &["SET", "b", "1"],
            &["EXEC"],
            &["EXEC"],
        ],
    ),
];

/// Sends `script` to `conn` (as one write, or command by command) and returns every reply,
/// one per command.
fn run(conn: &mut Conn, script: Script, pipelined: bool) -> Vec<Vec<u8>> {
    let requests: Vec<Vec<u8>> = script
        .iter()
        .map(|args| {
            let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
            command(&args)
        })
        .collect();
    if pipelined {
        conn.send(&requests.concat());
        conn.replies(requests.len())
    } else {
        requests
            .iter()
            .map(|r| {
                conn.send(r);
                conn.reply()
            })
            .collect()
    }
}

/// Flushes the database (directly on Redis) so a run starts from nothing.
fn flush(stack: &Stack) {
    let reply = stack.redis.command(&["FLUSHALL"]).unwrap();
    assert_eq!(reply, b"+OK\r\n");
}

fn compare(stack: &Stack, pipelined: bool) {
    let mode = if pipelined {
        "one write"
    } else {
        "one at a time"
    };
    let mut failures = Vec::new();
    for (name, script) in SCRIPTS {
        flush(stack);
        let mut direct = Conn::connect(stack.redis.addr());
        let want = run(&mut direct, script, pipelined);
        flush(stack);
        let mut through = Conn::connect(stack.addr());
        let got = run(&mut through, script, pipelined);
        // Nothing more may follow: no reply was doubled or left over.
        through.assert_quiet(Duration::from_millis(50), name);
        if want != got {
            let lines = |replies: &[Vec<u8>]| {
                replies
                    .iter()
                    .map(|r| shown(r))
                    .collect::<Vec<_>>()
                    .join(" | ")
            };
            failures.push(format!(
                "{name} ({mode}):\n  redis: {}\n  moat:  {}",
                lines(&want),
                lines(&got)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn transaction_scripts_in_one_write_answer_like_redis() {
    let stack = Stack::start();
    compare(&stack, true);
}

#[test]
fn transaction_scripts_one_command_at_a_time_answer_like_redis() {
    let stack = Stack::start();
    compare(&stack, false);
}

/// A MULTI that gets no dedicated connection is answered with the reason, and nothing the
/// client pipelined behind it runs: the commands it believes queued are refused, and its
/// EXEC gets Redis's EXECABORT (DISCARD its `+OK`), so no command of the transaction runs
/// outside one.
#[test]
fn commands_behind_a_multi_without_a_lease_do_not_run() {
    let stack = Stack::with(moat_testkit::RedisServer::builder(), |c| {
        c.pinned.max_per_ip = 1;
        c.pinned.wait = Duration::from_millis(100);
    });
    // Another client from the same address holds the address's one lease.
    let mut holder = Conn::connect(stack.addr());
    assert_eq!(
        shown(&holder.call(&["SUBSCRIBE", "ch"])),
        shown(b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n")
    );
    let script: Script = &[
        &["MULTI"],
        &["SET", "a", "1"],
        &["MULTI"],
        &["WATCH", "a"],
        &["SET", "a"],
        &["EXEC"],
        &["GET", "a"],
        &["MULTI"],
        &["SET", "a", "2"],
        &["DISCARD"],
        &["GET", "a"],
    ];
    let mut c = Conn::connect(stack.addr());
    let got: Vec<String> = run(&mut c, script, true).iter().map(|r| shown(r)).collect();
    let refused: &[u8] =
        b"-ERR moat: no dedicated connection available (limit 1 per client address)\r\n";
    let not_queued: &[u8] = b"-ERR moat: not queued: the transaction got no dedicated \
        connection (see MULTI's error)\r\n";
    let want: Vec<String> = [
        refused,
        not_queued,
        b"-ERR MULTI calls can not be nested\r\n",
        b"-ERR WATCH inside MULTI is not allowed\r\n",
        b"-ERR wrong number of arguments for 'set' command\r\n",
        b"-EXECABORT Transaction discarded because of previous errors.\r\n",
        b"$-1\r\n",
        refused,
        not_queued,
        b"+OK\r\n",
        b"$-1\r\n",
    ]
    .iter()
    .map(|r| shown(r))
    .collect();
    assert_eq!(got, want);
    c.expect_working("after the refused transactions");
}
