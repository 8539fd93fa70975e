//! Differential tests of the commands moat emulates: every script runs on a fresh connection
//! straight to Redis 7.0 and on a fresh connection through moat, and the replies must be
//! byte-identical except for fields that legitimately differ (client ids, addresses), which
//! are normalised explicitly. Moat-specific behaviour (dedicated-connection commands, refused
//! CLIENT subcommands, per-session state on shared connections) is asserted literally.

mod common;

use std::net::SocketAddr;

use common::{Raw, Stack, shown};
use moat_proxy::config::UserConfig;
use moat_testkit::RedisServer;

fn user(name: &str, password: &str, deny: &[&str]) -> UserConfig {
    UserConfig {
        name: name.into(),
        password: Some(password.into()),
        password_sha256: None,
        deny_commands: deny.iter().map(|d| (*d).to_string()).collect(),
    }
}

/// Redis with `requirepass secret`; moat requiring the same password from its clients.
fn auth_stack() -> Stack {
    Stack::with(RedisServer::builder().password("secret"), |c| {
        c.users = vec![user("default", "secret", &[])];
        c.backend.password = Some("secret".into());
    })
}

/// Redis and moat, neither requiring a password.
fn open_stack() -> Stack {
    Stack::start()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn args_of(step: &[&str]) -> Vec<Vec<u8>> {
    step.iter().map(|a| a.as_bytes().to_vec()).collect()
}

fn send(raw: &mut Raw, args: &[Vec<u8>]) -> Vec<u8> {
    let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
    raw.cmd(&refs)
}

fn is(arg: Option<&Vec<u8>>, want: &str) -> bool {
    arg.is_some_and(|a| a.eq_ignore_ascii_case(want.as_bytes()))
}

/// Replaces what legitimately differs between Redis and moat: the client id in HELLO and
/// CLIENT ID replies, and the per-connection counters and addresses in CLIENT INFO.
fn normalise(args: &[Vec<u8>], reply: &[u8]) -> Vec<u8> {
    let first = args.first();
    if is(first, "HELLO") && (reply.starts_with(b"*14\r\n") || reply.starts_with(b"%7\r\n")) {
        let marker: &[u8] = b"$2\r\nid\r\n:";
        if let Some(at) = reply.windows(marker.len()).position(|w| w == marker) {
            let start = at + marker.len();
            if let Some(len) = reply[start..].windows(2).position(|w| w == b"\r\n") {
                let mut out = reply[..start].to_vec();
                out.extend_from_slice(b"<id>");
                out.extend_from_slice(&reply[start + len..]);
                return out;
            }
        }
    }
    if is(first, "CLIENT") && args.len() == 2 && is(args.get(1), "ID") && reply.starts_with(b":") {
        return b":<id>\r\n".to_vec();
    }
    if is(first, "CLIENT") && args.len() == 2 && is(args.get(1), "INFO") && reply.starts_with(b"$")
    {
        let body = reply
            .split(|&b| b == b'\n')
            .nth(1)
            .map(|l| text(l).trim_end().to_string())
            .unwrap_or_default();
        return normalise_client_info(&body).into_bytes();
    }
    reply.to_vec()
}

/// Keeps the CLIENT INFO fields that describe the connection's state; fields that are
/// counters or addresses become `*`, and the Redis 7.2 `lib-name`/`lib-ver` fields (which
/// Redis 7.0 lacks) are left out.
fn normalise_client_info(line: &str) -> String {
    const STATE: &[&str] = &[
        "name", "flags", "db", "sub", "psub", "ssub", "multi", "events", "cmd", "user", "redir",
        "resp",
    ];
    line.split(' ')
        .filter_map(|field| {
            let (key, value) = field.split_once('=')?;
            if key == "lib-name" || key == "lib-ver" {
                return None;
            }
            let value = if STATE.contains(&key) { value } else { "*" };
            Some(format!("{key}={value}"))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `steps` on one fresh connection to `addr`; one normalised reply per step. When
/// `closes`, the connection must be closed after the last reply (`<closed>` is appended if
/// it is).
fn run_script(addr: SocketAddr, steps: &[Vec<Vec<u8>>], closes: bool) -> Vec<Vec<u8>> {
    let mut raw = Raw::connect(addr);
    let mut replies: Vec<Vec<u8>> = steps
        .iter()
        .map(|args| normalise(args, &send(&mut raw, args)))
        .collect();
    if closes {
        replies.push(if raw.is_closed() {
            b"<closed>".to_vec()
        } else {
            b"<open>".to_vec()
        });
    }
    replies
}

/// One script: a name, its commands, and whether the connection ends after the last one.
struct Script {
    name: &'static str,
    steps: Vec<Vec<Vec<u8>>>,
    closes: bool,
}

fn script(name: &'static str, steps: &[&[&str]]) -> Script {
    Script {
        name,
        steps: steps.iter().map(|s| args_of(s)).collect(),
        closes: false,
    }
}

fn closing(name: &'static str, steps: &[&[&str]]) -> Script {
    Script {
        closes: true,
        ..script(name, steps)
    }
}

/// Runs every script against Redis and against moat; panics listing every difference.
fn differential(stack: &Stack, scripts: &[Script]) {
    let mut diffs = Vec::new();
    for s in scripts {
        let want = run_script(stack.redis.addr(), &s.steps, s.closes);
        let got = run_script(stack.addr(), &s.steps, s.closes);
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            if w != g {
                let step = s
                    .steps
                    .get(i)
                    .map(|a| {
                        a.iter()
                            .map(|x| format!("{:?}", text(x)))
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .unwrap_or_else(|| "<connection state>".into());
                diffs.push(format!(
                    "script `{}` step {i} [{step}]:\n    redis: {}\n    moat:  {}",
                    s.name,
                    shown(w),
                    shown(g)
                ));
            }
        }
    }
    assert!(
        diffs.is_empty(),
        "moat differs from Redis:\n{}",
        diffs.join("\n")
    );
}

#[test]
fn before_auth_matches_redis() {
    let stack = auth_stack();
    differential(
        &stack,
        &[
            script("ping before auth", &[&["PING"], &["ping", "x"]]),
            script(
                "unknown command before auth",
                &[&["NOSUCHCMD"], &["nosuchcmd", "a", "b"]],
            ),
            script(
                "wrong arity before auth",
                &[&["GET"], &["SET", "k"], &["ECHO"], &["SELECT"], &["AUTH"]],
            ),
            script(
                "state commands before auth",
                &[
                    &["SELECT", "1"],
                    &["ECHO", "hi"],
                    &["CLIENT", "SETNAME", "x"],
                    &["CLIENT", "ID"],
                    &["DISCARD"],
                    &["UNWATCH"],
                    &["ACL", "WHOAMI"],
                    &["GET", "k"],
                ],
            ),
            script(
                "hello before auth",
                &[
                    &["HELLO"],
                    &["HELLO", "2"],
                    &["HELLO", "2", "SETNAME", "x"],
                    &["HELLO", "2", "SETNAME", "a b"],
                    &["HELLO", "2", "AUTH", "default", "wrong"],
                    &["PING"],
                ],
            ),
        ],
    );
}

#[test]
fn auth_matches_redis() {
    let stack = auth_stack();
    differential(
        &stack,
        &[
            script(
                "auth wrong then right",
                &[
                    &["AUTH", "wrong"],
                    &["PING"],
                    &["AUTH", "secret"],
                    &["PING"],
                    &["SET", "auth:k", "v"],
                    &["GET", "auth:k"],
                ],
            ),
            script(
                "auth too many args",
                &[
                    &["AUTH", "a", "b", "c"],
                    &["auth", "default", "secret", "x"],
                ],
            ),
            script(
                "auth user pass",
                &[
                    &["AUTH", "default", "wrong"],
                    &["AUTH", "nobody", "secret"],
                    &["AUTH", "default", "secret"],
                    &["ACL", "WHOAMI"],
                    &["PING"],
                ],
            ),
            script(
                "wrong auth after right keeps the session signed in",
                &[&["AUTH", "secret"], &["AUTH", "wrong"], &["PING"]],
            ),
        ],
    );
}

#[test]
fn hello_matches_redis() {
    let stack = auth_stack();
    differential(
        &stack,
        &[
            script(
                "hello auth setname",
                &[
                    &["HELLO", "2", "AUTH", "default", "secret", "SETNAME", "x"],
                    &["CLIENT", "GETNAME"],
                    &["HELLO"],
                    &["HELLO", "2"],
                ],
            ),
            script(
                "hello auth wrong",
                &[&["HELLO", "2", "AUTH", "default", "wrong"], &["PING"]],
            ),
            script(
                "hello bad arguments",
                &[
                    &["AUTH", "secret"],
                    &["HELLO", "foo"],
                    &["HELLO", "4"],
                    &["HELLO", "1"],
                    &["HELLO", "-1"],
                    &["HELLO", "02"],
                    &["HELLO", "2", "SETNAME", "a b"],
                    &["HELLO", "2", "SETNAME", ""],
                    &["HELLO", "2", "BAR"],
                    &["HELLO", "2", "SETNAME"],
                    &["HELLO", "2", "AUTH", "default"],
                    &["hello", "2", "setname", "y"],
                    &["CLIENT", "GETNAME"],
                    &["HELLO", "2", "SETNAME", ""],
                    &["CLIENT", "GETNAME"],
                ],
            ),
            script(
                "hello setname checked before auth",
                &[&["HELLO", "2", "SETNAME", "a b", "AUTH", "default", "wrong"]],
            ),
        ],
    );
}

#[test]
fn resp3_sessions_match_redis() {
    let stack = auth_stack();
    differential(
        &stack,
        &[
            script(
                "hello 3 then commands",
                &[
                    &["HELLO", "3", "AUTH", "default", "secret", "SETNAME", "r3"],
                    &["SET", "resp3:k", "v"],
                    &["GET", "resp3:k"],
                    &["GET", "resp3:nokey"],
                    &["HGETALL", "resp3:nokey"],
                    &["CLIENT", "GETNAME"],
                    &["CLIENT", "SETNAME", ""],
                    &["CLIENT", "GETNAME"],
                    &["SELECT", "1"],
                    &["GET", "resp3:k"],
                    &["HELLO"],
                    &["HELLO", "2"],
                    &["GET", "resp3:nokey"],
                    &["HELLO", "3"],
                    &["RESET"],
                    &["GET", "resp3:nokey"],
                ],
            ),
            script(
                "hello 3 before auth",
                &[
                    &["HELLO", "3"],
                    &["HELLO", "3", "AUTH", "default", "nope"],
                    &["PING"],
                ],
            ),
        ],
    );
}

#[test]
fn select_echo_ping_match_redis() {
    let stack = auth_stack();
    differential(
        &stack,
        &[script(
            "select echo ping",
            &[
                &["AUTH", "secret"],
                &["SELECT", "0"],
                &["SELECT", "1"],
                &["SET", "sel:k", "in-1"],
                &["SELECT", "15"],
                &["GET", "sel:k"],
                &["SELECT", "16"],
                &["SELECT", "-1"],
                &["SELECT", "x"],
                &["SELECT", "01"],
                &["SELECT", "+1"],
                &["SELECT", " 1"],
                &["SELECT", "99999999999999999999"],
                &["SELECT"],
                &["SELECT", "1", "2"],
                &["SELECT", "1"],
                &["GET", "sel:k"],
                &["ECHO", "hello"],
                &["ECHO", ""],
                &["ECHO", "a\r\nb"],
                &["ECHO"],
                &["ECHO", "a", "b"],
                &["PING"],
                &["PING", "x"],
                &["PING", ""],
                &["PING", "a", "b"],
                &["ping", "a", "b", "c"],
            ],
        )],
    );
}

#[test]
fn client_subcommands_match_redis() {
    let stack = auth_stack();
    differential(
        &stack,
        &[
            script(
                "client names",
                &[
                    &["AUTH", "secret"],
                    &["CLIENT", "GETNAME"],
                    &["CLIENT", "SETNAME", "worker-1"],
                    &["CLIENT", "GETNAME"],
                    &["client", "getname"],
                    &["CLIENT", "SETNAME", "a b"],
                    &["CLIENT", "SETNAME", "a\nb"],
                    &["CLIENT", "SETNAME", "caf\u{e9}"],
                    &["CLIENT", "GETNAME"],
                    &["CLIENT", "SETNAME", ""],
                    &["CLIENT", "GETNAME"],
                    &["CLIENT", "SETNAME"],
                    &["CLIENT", "SETNAME", "a", "b"],
                ],
            ),
            script(
                "client arity",
                &[
                    &["AUTH", "secret"],
                    &["CLIENT", "ID"],
                    &["CLIENT", "ID", "x"],
                    &["CLIENT", "GETNAME", "x"],
                    &["CLIENT", "INFO", "x"],
                    &["CLIENT", "GETREDIR"],
                    &["CLIENT", "GETREDIR", "x"],
                    &["CLIENT"],
                    &["CLIENT", "NOSUCHSUB"],
                    &["CLIENT", "INFO"],
                    &["CLIENT", "SETNAME", "info-name"],
                    &["SELECT", "3"],
                    &["CLIENT", "INFO"],
                ],
            ),
        ],
    );
}

#[test]
fn quit_and_reset_match_redis() {
    let stack = auth_stack();
    differential(
        &stack,
        &[
            closing("quit before auth", &[&["QUIT"]]),
            closing("quit after auth", &[&["AUTH", "secret"], &["QUIT"]]),
            closing("quit with args", &[&["AUTH", "secret"], &["QUIT", "now"]]),
            script(
                "reset",
                &[
                    &["AUTH", "secret"],
                    &["SELECT", "2"],
                    &["CLIENT", "SETNAME", "before-reset"],
                    &["RESET"],
                    &["PING"],
                    &["CLIENT", "GETNAME"],
                    &["AUTH", "secret"],
                    &["CLIENT", "GETNAME"],
                    &["SET", "reset:k", "db0"],
                    &["GET", "reset:k"],
                    &["RESET", "x"],
                ],
            ),
            script("reset before auth", &[&["RESET"], &["PING"]]),
        ],
    );
    // After RESET the key went to database 0, where a fresh connection sees it.
    assert_eq!(
        stack.redis.command(&["GET", "reset:k"]).expect("GET"),
        b"$3\r\ndb0\r\n"
    );
}

#[test]
fn transactions_without_multi_match_redis() {
    let stack = auth_stack();
    differential(
        &stack,
        &[script(
            "exec discard unwatch",
            &[
                &["AUTH", "secret"],
                &["EXEC"],
                &["DISCARD"],
                &["UNWATCH"],
                &["exec"],
                &["DISCARD", "x"],
                &["UNWATCH", "x"],
                &["PING"],
            ],
        )],
    );
}

/// Redis answers any rejected EXEC (before authentication, wrong arity) with `-EXECABORT
/// Transaction discarded because of: <error>`, even outside MULTI.
#[test]
fn rejected_exec_matches_redis() {
    let stack = auth_stack();
    differential(
        &stack,
        &[
            script("exec before auth", &[&["EXEC"]]),
            script("exec wrong arity", &[&["AUTH", "secret"], &["EXEC", "x"]]),
        ],
    );
}

#[test]
fn unknown_commands_and_round_trips_match_redis() {
    let stack = auth_stack();
    let long = "a".repeat(200);
    let mid = "b".repeat(100);
    let steps: Vec<Vec<Vec<u8>>> = [
        vec!["AUTH", "secret"],
        vec!["NOSUCHCMD"],
        vec!["NoSuchCmd", "arg1", "arg 2", ""],
        vec!["nosuchcmd", long.as_str()],
        vec!["nosuchcmd", mid.as_str(), mid.as_str(), "x"],
        vec![long.as_str(), "x"],
        vec!["SET", "rt:k", "v"],
        vec!["GET", "rt:k"],
        vec!["set", "rt:k", ""],
        vec!["GET", "rt:k"],
        vec!["GET", "rt:missing"],
        vec!["INCR", "rt:k"],
        vec!["SET", "rt:n", "41"],
        vec!["INCR", "rt:n"],
        vec!["DEL", "rt:k", "rt:n"],
    ]
    .iter()
    .map(|s| args_of(s))
    .collect();
    differential(
        &stack,
        &[Script {
            name: "unknown commands after auth, round trips",
            steps,
            closes: false,
        }],
    );
    // Before authentication moat composes the unknown-command error itself.
    let steps: Vec<Vec<Vec<u8>>> = [
        vec!["NoSuchCmd", "arg1", "arg 2", ""],
        vec!["nosuchcmd", long.as_str()],
        vec!["nosuchcmd", mid.as_str(), mid.as_str(), "x"],
        vec![long.as_str(), "x"],
    ]
    .iter()
    .map(|s| args_of(s))
    .collect();
    differential(
        &stack,
        &[Script {
            name: "unknown commands before auth",
            steps,
            closes: false,
        }],
    );
}

/// Runs each case before authentication (moat composes the error) and after it (Redis
/// answers through moat); panics listing every difference.
fn differential_binary(stack: &Stack, cases: &[Vec<Vec<u8>>]) {
    let mut diffs = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        for auth in [false, true] {
            let mut steps = Vec::new();
            if auth {
                steps.push(args_of(&["AUTH", "secret"]));
            }
            steps.push(case.clone());
            let want = run_script(stack.redis.addr(), &steps, false);
            let got = run_script(stack.addr(), &steps, false);
            if want != got {
                diffs.push(format!(
                    "case {i} (authenticated: {auth}):\n    redis: {}\n    moat:  {}",
                    want.last().map(|r| shown(r)).unwrap_or_default(),
                    got.last().map(|r| shown(r)).unwrap_or_default()
                ));
            }
        }
    }
    assert!(
        diffs.is_empty(),
        "moat differs from Redis:\n{}",
        diffs.join("\n")
    );
}

fn bin(parts: &[&[u8]]) -> Vec<Vec<u8>> {
    parts.iter().map(|p| p.to_vec()).collect()
}

/// Unknown-command errors quote the name and arguments as raw bytes (CR and LF blanked).
#[test]
fn unknown_command_error_keeps_raw_bytes() {
    let stack = auth_stack();
    differential_binary(
        &stack,
        &[
            bin(&[b"nosuchcmd", b"a\r\nb"]),
            bin(&[b"nosuchcmd", b"\xff\xfe"]),
            bin(&[b"no\xffcmd"]),
        ],
    );
}

/// Redis formats the unknown-command error with `%s`, so an argument ends at its first NUL.
#[test]
fn unknown_command_error_stops_at_nul_like_redis() {
    let stack = auth_stack();
    differential_binary(&stack, &[bin(&[b"nosuchcmd", b"a\0b", b"c"])]);
}

/// Redis checks subcommands (unknown subcommand, subcommand arity) before authentication.
#[test]
fn subcommand_checks_before_auth_match_redis() {
    let stack = auth_stack();
    differential(
        &stack,
        &[
            script(
                "unknown client subcommand before auth",
                &[&["CLIENT", "FOO"]],
            ),
            script(
                "client subcommand arity before auth",
                &[&["CLIENT", "GETNAME", "x"]],
            ),
            script("config subcommand arity before auth", &[&["CONFIG", "GET"]]),
        ],
    );
}

#[test]
fn client_info_describes_the_session_like_redis() {
    let stack = auth_stack();
    let script = [
        vec!["AUTH", "secret"],
        vec!["CLIENT", "SETNAME", "info-me"],
        vec!["SELECT", "7"],
        vec!["CLIENT", "INFO"],
    ];
    let steps: Vec<_> = script.iter().map(|s| args_of(s)).collect();
    let want = run_script(stack.redis.addr(), &steps, false);
    let got = run_script(stack.addr(), &steps, false);
    assert_eq!(text(&got[3]), text(&want[3]));
    assert!(text(&got[3]).contains("name=info-me") && text(&got[3]).contains("db=7"));
}

#[test]
fn no_password_auth_matches_redis() {
    let stack = open_stack();
    differential(
        &stack,
        &[
            script(
                "auth without a password configured",
                &[
                    &["AUTH", "x"],
                    &["AUTH", "default", "x"],
                    &["AUTH", "nobody", "x"],
                    &["AUTH", "a", "b", "c"],
                    &["PING"],
                    &["ACL", "WHOAMI"],
                ],
            ),
            script(
                "hello without a password configured",
                &[
                    &["HELLO"],
                    &["HELLO", "2", "AUTH", "default", "anything"],
                    &["HELLO", "2", "AUTH", "nobody", "x"],
                    &["HELLO", "2", "SETNAME", "n"],
                    &["CLIENT", "GETNAME"],
                ],
            ),
            script(
                "reset without a password configured",
                &[&["SELECT", "4"], &["RESET"], &["PING"], &["NOSUCHCMD", "x"]],
            ),
            closing("quit without a password configured", &[&["QUIT"]]),
        ],
    );
}

#[test]
fn denied_commands_match_redis_acl() {
    let stack = Stack::with(RedisServer::builder().password("secret"), |c| {
        c.users = vec![
            user("default", "secret", &[]),
            user("limited", "pw", &["FLUSHALL", "CONFIG|SET"]),
        ];
        c.backend.password = Some("secret".into());
    });
    let acl = stack
        .redis
        .command(&[
            "ACL",
            "SETUSER",
            "limited",
            "on",
            ">pw",
            "allkeys",
            "allchannels",
            "+@all",
            "-flushall",
            "-config|set",
        ])
        .expect("ACL SETUSER");
    assert_eq!(acl, b"+OK\r\n");
    differential(
        &stack,
        &[script(
            "denied commands",
            &[
                &["AUTH", "limited", "pw"],
                &["FLUSHALL"],
                &["flushall", "ASYNC"],
                &["CONFIG", "SET", "maxclients", "100"],
                &["config", "set", "maxclients", "100"],
                &["CONFIG", "GET", "maxclients"],
                &["ACL", "WHOAMI"],
                &["SET", "acl:k", "v"],
                &["GET", "acl:k"],
            ],
        )],
    );
    // The literal wording, in case Redis's ever changes.
    let mut c = Raw::connect(stack.addr());
    assert_eq!(c.cmd(&[b"AUTH", b"limited", b"pw"]), b"+OK\r\n");
    assert_eq!(
        text(&c.cmd(&[b"FLUSHALL"])),
        "-NOPERM this user has no permissions to run the 'flushall' command\r\n"
    );
    assert_eq!(
        text(&c.cmd(&[b"CONFIG", b"SET", b"maxclients", b"100"])),
        "-NOPERM this user has no permissions to run the 'config|set' command\r\n"
    );
    let got = c.cmd(&[b"CONFIG", b"GET", b"maxclients"]);
    assert!(
        got.starts_with(b"*2\r\n$10\r\nmaxclients\r\n"),
        "{}",
        text(&got)
    );
    // The denied commands never reached Redis: the key written above is still there.
    assert_eq!(c.cmd(&[b"GET", b"acl:k"]), b"$1\r\nv\r\n");
    // The default user is not limited.
    let mut d = Raw::connect(stack.addr());
    assert_eq!(d.cmd(&[b"AUTH", b"secret"]), b"+OK\r\n");
    let got = d.cmd(&[b"CONFIG", b"SET", b"maxclients", b"1000"]);
    assert_eq!(text(&got), "+OK\r\n");
}

/// Redis looks up the subcommand and checks its arity before the user's permissions, so a
/// denied command with an unknown subcommand or too few arguments gets that error, not NOPERM.
#[test]
fn denied_commands_check_subcommands_first_like_redis() {
    let stack = Stack::with(RedisServer::builder().password("secret"), |c| {
        c.users = vec![
            user("default", "secret", &[]),
            user("limited", "pw", &["CONFIG|SET"]),
            user("noconfig", "pw", &["CONFIG"]),
        ];
        c.backend.password = Some("secret".into());
    });
    let acl = stack
        .redis
        .command(&[
            "ACL", "SETUSER", "noconfig", "on", ">pw", "allkeys", "+@all", "-config",
        ])
        .expect("ACL SETUSER");
    assert_eq!(acl, b"+OK\r\n");
    let acl = stack
        .redis
        .command(&[
            "ACL",
            "SETUSER",
            "limited",
            "on",
            ">pw",
            "allkeys",
            "+@all",
            "-config|set",
        ])
        .expect("ACL SETUSER");
    assert_eq!(acl, b"+OK\r\n");
    differential(
        &stack,
        &[
            script(
                "denied subcommand with too few arguments",
                &[&["AUTH", "limited", "pw"], &["CONFIG", "SET", "maxclients"]],
            ),
            script(
                "whole command denied",
                &[
                    &["AUTH", "noconfig", "pw"],
                    &["CONFIG", "GET", "maxclients"],
                    &["config", "resetstat"],
                    &["CONFIG"],
                    &["CONFIG", "NOSUCHSUB"],
                    &["CONFIG", "GET"],
                ],
            ),
        ],
    );
}

#[test]
fn reply_suppression_is_refused_and_the_connection_survives() {
    let stack = auth_stack();
    let mut c = Raw::connect(stack.addr());
    assert_eq!(c.cmd(&[b"AUTH", b"secret"]), b"+OK\r\n");
    assert_eq!(c.cmd(&[b"SET", b"ded:k", b"v"]), b"+OK\r\n");
    let cases: &[(&[&str], &str)] = &[
        (
            &["CLIENT", "REPLY", "OFF"],
            "-ERR moat: CLIENT REPLY OFF/SKIP is not supported (moat pairs every request with its reply)\r\n",
        ),
        (
            &["client", "reply", "skip"],
            "-ERR moat: CLIENT REPLY OFF/SKIP is not supported (moat pairs every request with its reply)\r\n",
        ),
        (
            &["CLIENT", "TRACKING", "on", "REDIRECT", "987654"],
            "-ERR The client ID you want redirect to does not exist\r\n",
        ),
        (&["CLIENT", "REPLY", "ON"], "+OK\r\n"),
        (&["CLIENT", "TRACKING", "off"], "+OK\r\n"),
    ];
    for (args, want) in cases {
        let args = args_of(args);
        assert_eq!(text(&send(&mut c, &args)), *want, "{args:?}");
        // The same connection keeps working, and nothing changed its mode.
        assert_eq!(c.cmd(&[b"PING"]), b"+PONG\r\n", "after {args:?}");
        assert_eq!(c.cmd(&[b"GET", b"ded:k"]), b"$1\r\nv\r\n", "after {args:?}");
    }
}

#[test]
fn xread_without_block_is_forwarded() {
    let stack = auth_stack();
    let mut c = Raw::connect(stack.addr());
    assert_eq!(c.cmd(&[b"AUTH", b"secret"]), b"+OK\r\n");
    assert_eq!(
        c.cmd(&[b"XADD", b"xs", b"1-1", b"f", b"v"]),
        b"$3\r\n1-1\r\n"
    );
    let want = stack
        .redis
        .command(&["XREAD", "COUNT", "1", "STREAMS", "xs", "0"])
        .expect("XREAD");
    assert_eq!(
        text(&c.cmd(&[b"XREAD", b"COUNT", b"1", b"STREAMS", b"xs", b"0"])),
        text(&want)
    );
    assert!(
        want.starts_with(b"*1\r\n*2\r\n$2\r\nxs\r\n"),
        "{}",
        text(&want)
    );
    // BLOCK as a stream name (after STREAMS) does not make the request blocking.
    assert_eq!(
        c.cmd(&[b"XREAD", b"STREAMS", b"BLOCK", b"0"]),
        b"*-1\r\n".to_vec()
    );
}

/// Ids of moat's shared connections as Redis lists them.
fn shared_connection_ids(stack: &Stack) -> Vec<String> {
    let list = text(
        &stack
            .redis
            .command(&["CLIENT", "LIST"])
            .expect("CLIENT LIST"),
    );
    let mut ids: Vec<String> = list
        .lines()
        .filter(|l| l.contains(" name=moat-shared"))
        .filter_map(|l| l.split(' ').next().map(str::to_string))
        .collect();
    ids.sort();
    ids
}

/// CLIENT KILL, PAUSE, NO-EVICT and UNBLOCK act on moat's own sessions: Redis never sees
/// them, and moat's backend connections (not clients of moat) are never killed.
#[test]
fn client_control_subcommands_never_reach_redis() {
    let stack = auth_stack();
    let mut c = Raw::connect(stack.addr());
    assert_eq!(c.cmd(&[b"AUTH", b"secret"]), b"+OK\r\n");
    assert_eq!(c.cmd(&[b"SET", b"kill:k", b"v"]), b"+OK\r\n");
    let before = shared_connection_ids(&stack);
    let backend_id = before.first().cloned().unwrap_or_default();
    let backend_id = backend_id.trim_start_matches("id=");
    let cases: &[(&[&str], &[u8])] = &[
        // Only this client is a moat client of type normal, and SKIPME spares it.
        (&["CLIENT", "KILL", "TYPE", "normal"], b":0\r\n"),
        (
            &["client", "kill", "127.0.0.1:1"],
            b"-ERR No such client\r\n",
        ),
        (&["CLIENT", "KILL", "ID", backend_id], b":0\r\n"),
        (&["CLIENT", "PAUSE", "100000", "WRITE"], b"+OK\r\n"),
        (&["CLIENT", "UNPAUSE"], b"+OK\r\n"),
        (&["CLIENT", "NO-EVICT", "on"], b"+OK\r\n"),
        (&["CLIENT", "UNBLOCK", backend_id], b":0\r\n"),
    ];
    for (args, want) in cases {
        let args = args_of(args);
        let got = send(&mut c, &args);
        assert_eq!(shown(&got), shown(want), "{args:?}");
        assert_eq!(
            c.cmd(&[b"GET", b"kill:k"]),
            b"$1\r\nv\r\n",
            "after {args:?}"
        );
    }
    // Moat's shared connections are the very same ones on Redis: none was killed.
    let after = shared_connection_ids(&stack);
    assert!(!after.is_empty(), "no moat connection on Redis");
    assert_eq!(before, after);
    let mut other = Raw::connect(stack.addr());
    assert_eq!(other.cmd(&[b"AUTH", b"secret"]), b"+OK\r\n");
    assert_eq!(other.cmd(&[b"GET", b"kill:k"]), b"$1\r\nv\r\n");
    assert_eq!(c.cmd(&[b"GET", b"kill:k"]), b"$1\r\nv\r\n");
}

#[test]
fn client_setinfo_and_info_describe_this_session() {
    let stack = auth_stack();
    let mut c = Raw::connect(stack.addr());
    assert_eq!(c.cmd(&[b"AUTH", b"secret"]), b"+OK\r\n");
    // Redis 7.0 lacks CLIENT SETINFO; moat accepts it anyway.
    let direct = stack
        .redis
        .command(&["CLIENT", "SETINFO", "lib-name", "mylib"])
        .expect("CLIENT SETINFO");
    assert!(direct.starts_with(b"-ERR"), "{}", text(&direct));
    assert_eq!(
        c.cmd(&[b"CLIENT", b"SETINFO", b"lib-name", b"mylib"]),
        b"+OK\r\n"
    );
    assert_eq!(
        c.cmd(&[b"CLIENT", b"SETINFO", b"LIB-VER", b"1.2.3"]),
        b"+OK\r\n"
    );
    assert_eq!(
        c.cmd(&[b"CLIENT", b"SETNAME", b"setinfo-client"]),
        b"+OK\r\n"
    );
    assert_eq!(c.cmd(&[b"SELECT", b"9"]), b"+OK\r\n");
    let info = text(&c.cmd(&[b"CLIENT", b"INFO"]));
    for field in [
        "name=setinfo-client",
        "db=9",
        "lib-name=mylib",
        "lib-ver=1.2.3",
        "user=default",
    ] {
        assert!(
            info.split([' ', '\r', '\n']).any(|f| f == field),
            "{field} missing from {info:?}"
        );
    }
    // Another session on the same shared connection has none of it.
    let mut d = Raw::connect(stack.addr());
    assert_eq!(d.cmd(&[b"AUTH", b"secret"]), b"+OK\r\n");
    let other = text(&d.cmd(&[b"CLIENT", b"INFO"]));
    for field in ["name=", "db=0", "lib-name=", "lib-ver="] {
        assert!(
            other.split([' ', '\r', '\n']).any(|f| f == field),
            "{field} missing from {other:?}"
        );
    }
    // Invalid values are refused.
    let got = text(&c.cmd(&[b"CLIENT", b"SETINFO", b"lib-name", b"a b"]));
    assert!(got.starts_with("-ERR"), "{got}");
    let got = text(&c.cmd(&[b"CLIENT", b"SETINFO", b"nosuch", b"x"]));
    assert!(got.starts_with("-ERR"), "{got}");
    let got = text(&c.cmd(&[b"CLIENT", b"SETINFO", b"lib-name"]));
    assert_eq!(
        got,
        "-ERR wrong number of arguments for 'client|setinfo' command\r\n"
    );
}

#[test]
fn sessions_do_not_share_name_or_db() {
    // One shared connection, so both sessions certainly share it.
    let stack = Stack::with(RedisServer::builder().password("secret"), |c| {
        c.users = vec![user("default", "secret", &[])];
        c.backend.password = Some("secret".into());
        c.backend.shared_connections = 1;
    });
    let mut a = Raw::connect(stack.addr());
    let mut b = Raw::connect(stack.addr());
    assert_eq!(a.cmd(&[b"AUTH", b"secret"]), b"+OK\r\n");
    assert_eq!(b.cmd(&[b"AUTH", b"secret"]), b"+OK\r\n");
    assert_eq!(a.cmd(&[b"SELECT", b"5"]), b"+OK\r\n");
    assert_eq!(a.cmd(&[b"CLIENT", b"SETNAME", b"a"]), b"+OK\r\n");
    assert_eq!(a.cmd(&[b"SET", b"iso:a", b"in-5"]), b"+OK\r\n");
    assert_eq!(b.cmd(&[b"CLIENT", b"GETNAME"]), b"$-1\r\n");
    assert_eq!(b.cmd(&[b"SET", b"iso:b", b"in-0"]), b"+OK\r\n");
    assert_eq!(b.cmd(&[b"GET", b"iso:a"]), b"$-1\r\n");
    // A still lives in database 5 with its name after B's requests.
    assert_eq!(a.cmd(&[b"GET", b"iso:a"]), b"$4\r\nin-5\r\n");
    assert_eq!(a.cmd(&[b"GET", b"iso:b"]), b"$-1\r\n");
    assert_eq!(a.cmd(&[b"CLIENT", b"GETNAME"]), b"$1\r\na\r\n");
    // Checked on Redis directly.
    assert_eq!(
        stack.redis.command(&["GET", "iso:b"]).expect("GET"),
        b"$4\r\nin-0\r\n"
    );
    assert_eq!(
        stack.redis.command(&["GET", "iso:a"]).expect("GET"),
        b"$-1\r\n"
    );
    let mut direct = Raw::connect(stack.redis.addr());
    assert_eq!(direct.cmd(&[b"AUTH", b"secret"]), b"+OK\r\n");
    assert_eq!(direct.cmd(&[b"SELECT", b"5"]), b"+OK\r\n");
    assert_eq!(direct.cmd(&[b"GET", b"iso:a"]), b"$4\r\nin-5\r\n");
    // The shared connection kept moat's own name, not a client's.
    let list = text(
        &stack
            .redis
            .command(&["CLIENT", "LIST"])
            .expect("CLIENT LIST"),
    );
    let shared: Vec<&str> = list
        .lines()
        .filter(|l| l.contains(" name=moat-shared"))
        .collect();
    assert_eq!(shared.len(), 1, "{list}");
    assert!(!list.contains(" name=a "), "{list}");
    // Interleaved on the one connection, each session still sees its own database.
    for _ in 0..3 {
        assert_eq!(b.cmd(&[b"GET", b"iso:b"]), b"$4\r\nin-0\r\n");
        assert_eq!(a.cmd(&[b"GET", b"iso:a"]), b"$4\r\nin-5\r\n");
    }
}

#[test]
fn acl_whoami_reports_the_session_user() {
    let stack = Stack::with(RedisServer::builder().password("secret"), |c| {
        c.users = vec![user("default", "secret", &[]), user("alice", "pw", &[])];
        c.backend.password = Some("secret".into());
    });
    let mut a = Raw::connect(stack.addr());
    assert_eq!(
        text(&a.cmd(&[b"ACL", b"WHOAMI"])),
        "-NOAUTH Authentication required.\r\n"
    );
    assert_eq!(a.cmd(&[b"AUTH", b"alice", b"pw"]), b"+OK\r\n");
    assert_eq!(a.cmd(&[b"ACL", b"WHOAMI"]), b"$5\r\nalice\r\n");
    assert_eq!(a.cmd(&[b"acl", b"whoami"]), b"$5\r\nalice\r\n");
    let info = text(&a.cmd(&[b"CLIENT", b"INFO"]));
    assert!(info.contains(" user=alice "), "{info}");
    let mut d = Raw::connect(stack.addr());
    assert_eq!(
        d.cmd(&[b"HELLO", b"2", b"AUTH", b"default", b"secret"])[..4],
        b"*14\r"[..]
    );
    assert_eq!(d.cmd(&[b"ACL", b"WHOAMI"]), b"$7\r\ndefault\r\n");
    // ACL WHOAMI with an extra argument is Redis's to judge.
    let want = {
        let mut r = Raw::connect(stack.redis.addr());
        assert_eq!(r.cmd(&[b"AUTH", b"secret"]), b"+OK\r\n");
        r.cmd(&[b"ACL", b"WHOAMI", b"x"])
    };
    assert_eq!(text(&d.cmd(&[b"ACL", b"WHOAMI", b"x"])), text(&want));
    // RESET signs the session out again.
    assert_eq!(a.cmd(&[b"RESET"]), b"+RESET\r\n");
    assert_eq!(
        text(&a.cmd(&[b"ACL", b"WHOAMI"])),
        "-NOAUTH Authentication required.\r\n"
    );
}

/// Two clients forced onto one shared connection, one in RESP3 as `bob` in db 2 and one in
/// RESP2 as `default` in db 0, interleaving requests: each sees only its own protocol, user,
/// database and name.
#[test]
fn protocol_user_db_and_name_stay_per_client_on_one_shared_connection() {
    let stack = Stack::with(RedisServer::builder().password("secret"), |c| {
        c.users = vec![user("default", "secret", &[]), user("bob", "b0b", &[])];
        c.backend.password = Some("secret".into());
        c.backend.shared_connections = 1;
    });
    let mut a = Raw::connect(stack.addr());
    let mut b = Raw::connect(stack.addr());
    let hello = a.cmd(&[
        b"HELLO", b"3", b"AUTH", b"bob", b"b0b", b"SETNAME", b"alice",
    ]);
    assert!(hello.starts_with(b"%7\r\n"), "{}", text(&hello));
    assert_eq!(b.cmd(&[b"AUTH", b"secret"]), b"+OK\r\n");
    assert_eq!(a.cmd(&[b"SELECT", b"2"]), b"+OK\r\n");
    for round in 0..3 {
        assert_eq!(a.cmd(&[b"GET", b"iso:none"]), b"_\r\n", "round {round}");
        assert_eq!(b.cmd(&[b"GET", b"iso:none"]), b"$-1\r\n", "round {round}");
        assert_eq!(a.cmd(&[b"HGETALL", b"iso:none"]), b"%0\r\n");
        assert_eq!(b.cmd(&[b"HGETALL", b"iso:none"]), b"*0\r\n");
        assert_eq!(a.cmd(&[b"ACL", b"WHOAMI"]), b"$3\r\nbob\r\n");
        assert_eq!(b.cmd(&[b"ACL", b"WHOAMI"]), b"$7\r\ndefault\r\n");
        assert_eq!(a.cmd(&[b"CLIENT", b"GETNAME"]), b"$5\r\nalice\r\n");
        assert_eq!(b.cmd(&[b"CLIENT", b"GETNAME"]), b"$-1\r\n");
        assert_eq!(a.cmd(&[b"SET", b"iso:k", b"a"]), b"+OK\r\n");
        assert_eq!(b.cmd(&[b"SET", b"iso:k", b"b"]), b"+OK\r\n");
        assert_eq!(a.cmd(&[b"GET", b"iso:k"]), b"$1\r\na\r\n");
        assert_eq!(b.cmd(&[b"GET", b"iso:k"]), b"$1\r\nb\r\n");
    }
    assert!(stack.redis_clients() <= 1, "one shared connection");
    // The values really are in each client's own database.
    let mut direct = Raw::connect(stack.redis.addr());
    assert_eq!(direct.cmd(&[b"AUTH", b"secret"]), b"+OK\r\n");
    assert_eq!(direct.cmd(&[b"GET", b"iso:k"]), b"$1\r\nb\r\n");
    assert_eq!(direct.cmd(&[b"SELECT", b"2"]), b"+OK\r\n");
    assert_eq!(direct.cmd(&[b"GET", b"iso:k"]), b"$1\r\na\r\n");
    drop(direct);
}
