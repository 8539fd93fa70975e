//! Passthrough authentication against a real redis-server: Redis is the authority for users
//! and ACLs, and changes made through moat (ACL SETUSER/DELUSER, CONFIG SET requirepass)
//! are followed without locking moat out.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::Stack;
use common::conn::Conn;
use moat_testkit::RedisServer;

const WRONGPASS: &[u8] = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n";
const NOAUTH: &[u8] = b"-NOAUTH Authentication required.\r\n";

/// The same request straight to Redis, for byte-exact comparisons.
fn direct(redis: &RedisServer, args: &[&str]) -> Vec<u8> {
    let mut c = Conn::connect(redis.addr());
    c.call(args)
}

fn whoami(c: &mut Conn) -> Vec<u8> {
    c.call(&["ACL", "WHOAMI"])
}

#[test]
fn an_acl_user_created_through_moat_logs_in_and_is_held_to_its_acl() {
    let stack = Stack::start();
    let mut admin = Conn::connect(stack.addr());
    assert_eq!(
        admin.call(&[
            "ACL",
            "SETUSER",
            "app",
            "on",
            ">app-pw",
            "~app:*",
            "+@all",
            "-flushall"
        ]),
        b"+OK\r\n"
    );
    let mut app = Conn::connect(stack.addr());
    assert_eq!(app.call(&["AUTH", "app", "app-pw"]), b"+OK\r\n");
    assert_eq!(whoami(&mut app), b"$3\r\napp\r\n");
    assert_eq!(app.call(&["SET", "app:k", "v"]), b"+OK\r\n");
    assert_eq!(app.call(&["GET", "app:k"]), b"$1\r\nv\r\n");
    // Redis itself refuses what the ACL denies: key patterns and commands.
    let denied_key = app.call(&["SET", "other:k", "v"]);
    assert!(denied_key.starts_with(b"-NOPERM"), "{denied_key:?}");
    let denied_cmd = app.call(&["FLUSHALL"]);
    assert!(denied_cmd.starts_with(b"-NOPERM"), "{denied_cmd:?}");
    // The same refusals as Redis gives a client of that user directly.
    let mut straight = Conn::connect(stack.redis.addr());
    assert_eq!(straight.call(&["AUTH", "app", "app-pw"]), b"+OK\r\n");
    assert_eq!(straight.call(&["SET", "other:k", "v"]), denied_key);
    assert_eq!(straight.call(&["FLUSHALL"]), denied_cmd);
    // The admin, a client that never sent AUTH, is still the default user.
    assert_eq!(admin.call(&["SET", "other:k", "v"]), b"+OK\r\n");
    assert_eq!(whoami(&mut admin), b"$7\r\ndefault\r\n");
    // A wrong password gets Redis's reply, and the session keeps its user.
    assert_eq!(app.call(&["AUTH", "app", "nope"]), WRONGPASS);
    assert_eq!(whoami(&mut app), b"$3\r\napp\r\n");
    assert_eq!(app.call(&["AUTH", "nobody", "x"]), WRONGPASS);
    // HELLO AUTH goes through the same check.
    let mut hello = Conn::connect(stack.addr());
    assert_eq!(hello.call(&["HELLO", "2", "AUTH", "app", "bad"]), WRONGPASS);
    let reply = hello.call(&["HELLO", "3", "AUTH", "app", "app-pw"]);
    assert!(reply.starts_with(b"%7\r\n"), "{reply:?}");
    assert_eq!(hello.call(&["GET", "app:k"]), b"$1\r\nv\r\n");
}

#[test]
fn auth_replies_are_redis_own() {
    let stack = Stack::start();
    for args in [
        &["AUTH", "pw"][..],
        &["AUTH", "default", "anything"],
        &["AUTH", "ghost", "pw"],
        &["AUTH", "a", "b", "c"],
    ] {
        let mut c = Conn::connect(stack.addr());
        assert_eq!(
            c.call(args),
            direct(&stack.redis, args),
            "{args:?} through moat and straight"
        );
    }
}

#[test]
fn requirepass_set_through_moat_is_followed_without_locking_moat_out() {
    let stack = Stack::start();
    let mut admin = Conn::connect(stack.addr());
    admin.call(&["SET", "k", "v"]);
    assert_eq!(
        admin.call(&["CONFIG", "SET", "requirepass", "s3cret"]),
        b"+OK\r\n"
    );
    // Like a connection Redis accepted before the change, the admin keeps working.
    assert_eq!(admin.call(&["GET", "k"]), b"$1\r\nv\r\n");
    // A client that connects after the `+OK` must authenticate, as with Redis.
    let mut late = Conn::connect(stack.addr());
    assert_eq!(late.call(&["GET", "k"]), NOAUTH);
    assert_eq!(late.call(&["AUTH", "wrong"]), WRONGPASS);
    assert_eq!(late.call(&["AUTH", "s3cret"]), b"+OK\r\n");
    assert_eq!(late.call(&["GET", "k"]), b"$1\r\nv\r\n");
    let mut named = Conn::connect(stack.addr());
    assert_eq!(named.call(&["AUTH", "default", "s3cret"]), b"+OK\r\n");
    assert_eq!(named.call(&["GET", "k"]), b"$1\r\nv\r\n");
    // Back to no password: new clients need no AUTH again.
    assert_eq!(late.call(&["CONFIG", "SET", "requirepass", ""]), b"+OK\r\n");
    let mut free = Conn::connect(stack.addr());
    assert_eq!(free.call(&["GET", "k"]), b"$1\r\nv\r\n");
    assert_eq!(
        free.call(&["AUTH", "x"]),
        direct(&stack.redis, &["AUTH", "x"])
    );
}

#[test]
fn a_redis_with_a_password_serves_clients_that_bring_it() {
    let stack = Stack::with(RedisServer::builder().password("pw"), |_| {});
    let mut anon = Conn::connect(stack.addr());
    assert_eq!(anon.call(&["GET", "k"]), NOAUTH);
    let mut c = Conn::connect(stack.addr());
    assert_eq!(c.call(&["AUTH", "pw"]), b"+OK\r\n");
    assert_eq!(c.call(&["SET", "k", "1"]), b"+OK\r\n");
    assert_eq!(c.call(&["INCR", "k"]), b":2\r\n");
    // Dedicated connections log in as the client's user too.
    assert_eq!(c.call(&["MULTI"]), b"+OK\r\n");
    assert_eq!(c.call(&["INCR", "k"]), b"+QUEUED\r\n");
    assert_eq!(c.call(&["EXEC"]), b"*1\r\n:3\r\n");
    assert_eq!(c.call(&["BLPOP", "empty", "0.01"]), b"*-1\r\n");
    assert_eq!(anon.call(&["AUTH", "pw"]), b"+OK\r\n");
    assert_eq!(anon.call(&["GET", "k"]), b"$1\r\n3\r\n");
}

#[test]
fn a_deleted_user_is_signed_out_and_moat_keeps_serving() {
    let stack = Stack::with(RedisServer::builder(), |c| {
        c.backend.shared_connections = 1;
    });
    let mut admin = Conn::connect(stack.addr());
    admin.call(&["ACL", "SETUSER", "temp", "on", ">pw", "~*", "+@all"]);
    let mut temp = Conn::connect(stack.addr());
    assert_eq!(temp.call(&["AUTH", "temp", "pw"]), b"+OK\r\n");
    assert_eq!(temp.call(&["SET", "t", "1"]), b"+OK\r\n");
    assert_eq!(admin.call(&["ACL", "DELUSER", "temp"]), b":1\r\n");
    // Redis disconnects the clients of a deleted user; through moat the session ends too.
    let closed = temp.read_until_closed(Duration::from_secs(5)).is_some() || {
        temp.send(b"GET t\r\n");
        temp.read_to_eof(Duration::from_secs(5)).is_some()
    };
    assert!(closed, "the deleted user's session stays open");
    let mut again = Conn::connect(stack.addr());
    assert_eq!(again.call(&["AUTH", "temp", "pw"]), WRONGPASS);
    assert_eq!(admin.call(&["GET", "t"]), b"$1\r\n1\r\n");
    assert_eq!(
        stack.moat.metrics().get("breaker_opened"),
        Some(0),
        "a user's deletion is no backend failure"
    );
}

/// Clients of three users share one backend connection, taken over in turn: every reply is
/// its own user's, never another's.
#[test]
fn many_users_on_a_small_pool_never_see_each_other() {
    let stack = Stack::with(RedisServer::builder(), |c| {
        c.backend.shared_connections = 1;
    });
    let mut admin = Conn::connect(stack.addr());
    for u in ["u0", "u1", "u2"] {
        let keys = format!("~{u}:*");
        assert_eq!(
            admin.call(&["ACL", "SETUSER", u, "on", ">pw", &keys, "+@all"]),
            b"+OK\r\n"
        );
    }
    let addr: SocketAddr = stack.addr();
    let threads: Vec<_> = (0..3)
        .map(|i| {
            std::thread::spawn(move || {
                let user = format!("u{i}");
                let mut c = Conn::connect(addr);
                assert_eq!(c.call(&["AUTH", &user, "pw"]), b"+OK\r\n");
                let deadline = Instant::now() + Duration::from_secs(20);
                for n in 0..150 {
                    assert!(Instant::now() < deadline, "{user} stalled at {n}");
                    let own = format!("{user}:{n}");
                    let other = format!("u{}:{n}", (i + 1) % 3);
                    // Pipelined: SET own, SET another user's key, GET own.
                    let mut batch = Vec::new();
                    for args in [
                        vec!["SET", own.as_str(), own.as_str()],
                        vec!["SET", other.as_str(), "x"],
                        vec!["GET", own.as_str()],
                    ] {
                        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
                        batch.extend(common::command(&args));
                    }
                    c.send(&batch);
                    let replies = c.replies(3);
                    assert_eq!(replies[0], b"+OK\r\n", "{user} {n}");
                    assert!(
                        replies[1].starts_with(b"-NOPERM"),
                        "{user} {n}: {replies:?}"
                    );
                    let want = format!("${}\r\n{own}\r\n", own.len());
                    assert_eq!(replies[2], want.as_bytes(), "{user} {n}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    assert!(
        stack.moat.metrics().get("backend_takeovers") > Some(0),
        "three users on one connection never took it over"
    );
    assert!(
        stack.redis_clients() <= 2,
        "more backend connections than the pool and the verifier"
    );
}

#[test]
fn failed_auth_attempts_are_strikes() {
    let stack = Stack::with(RedisServer::builder(), |c| {
        c.guard.strikes_to_ban = 3;
    });
    let addr = stack.addr();
    for _ in 0..3 {
        let mut c = Conn::from([127, 0, 9, 9], addr);
        assert_eq!(c.call(&["AUTH", "ghost", "guess"]), WRONGPASS);
    }
    let banned = stack
        .moat
        .guard()
        .bans(Instant::now())
        .iter()
        .any(|(net, _)| net.contains(&"127.0.9.9".parse::<std::net::IpAddr>().expect("ip")));
    assert!(banned, "three wrong passwords did not ban the source");
    assert_eq!(stack.moat.metrics().get("auth_refused"), Some(3));
}

/// A client holding a dedicated connection (here after WATCH) that signs in as another user
/// runs what follows as that user, on that connection too, exactly as on Redis.
#[test]
fn signing_in_during_a_lease_moves_the_dedicated_connection_too() {
    let stack = Stack::start();
    let mut admin = Conn::connect(stack.addr());
    assert_eq!(
        admin.call(&["ACL", "SETUSER", "lim", "on", ">pw", "~lim:*", "+@all"]),
        b"+OK\r\n"
    );
    let script: &[&[&str]] = &[
        &["WATCH", "lim:w"],
        &["AUTH", "lim", "pw"],
        &["GET", "other"],
        &["MULTI"],
        &["SET", "lim:w", "1"],
        &["EXEC"],
        &["GET", "other"],
        &["ACL", "WHOAMI"],
    ];
    let run = |addr: SocketAddr| -> Vec<Vec<u8>> {
        let mut c = Conn::connect(addr);
        script.iter().map(|args| c.call(args)).collect()
    };
    let through = run(stack.addr());
    let straight = run(stack.redis.addr());
    assert!(through[2].starts_with(b"-NOPERM"), "{through:?}");
    assert_eq!(through, straight);
}

/// CLIENT LIST/KILL/UNBLOCK/PAUSE act on moat's own sessions, but Redis's ACLs still decide
/// who may run them: a user denied them gets Redis's own NOPERM, and nothing happens.
#[test]
fn acls_decide_who_may_list_kill_and_pause_moats_clients() {
    let stack = Stack::start();
    let mut admin = Conn::connect(stack.addr());
    assert_eq!(
        admin.call(&[
            "ACL",
            "SETUSER",
            "tenant",
            "on",
            ">pw",
            "~*",
            "+@all",
            "-client|kill",
            "-client|list",
            "-client|pause",
            "-client|unblock",
        ]),
        b"+OK\r\n"
    );
    let mut victim = Conn::connect(stack.addr());
    let victim_id = String::from_utf8(victim.call(&["CLIENT", "ID"])).expect("ascii");
    let victim_id = victim_id.trim_start_matches(':').trim_end().to_string();
    let attempts: &[&[&str]] = &[
        &["CLIENT", "KILL", "ID", &victim_id],
        &["CLIENT", "LIST"],
        &["CLIENT", "PAUSE", "100000"],
        &["CLIENT", "UNBLOCK", &victim_id],
    ];
    let mut tenant = Conn::connect(stack.addr());
    assert_eq!(tenant.call(&["AUTH", "tenant", "pw"]), b"+OK\r\n");
    let mut straight = Conn::connect(stack.redis.addr());
    assert_eq!(straight.call(&["AUTH", "tenant", "pw"]), b"+OK\r\n");
    for args in attempts {
        let through = tenant.call(args);
        assert!(through.starts_with(b"-NOPERM"), "{args:?}: {through:?}");
        // Redis names the subcommand the same way for any arguments.
        assert_eq!(through, straight.call(args), "{args:?}");
    }
    // Nothing happened: the victim is alive and unpaused.
    assert_eq!(victim.call(&["PING"]), b"+PONG\r\n");
    // The default user may, as on Redis.
    let listed = admin.call(&["CLIENT", "LIST"]);
    assert!(
        String::from_utf8_lossy(&listed).contains(&format!("id={victim_id} ")),
        "{listed:?}"
    );
    assert_eq!(admin.call(&["CLIENT", "KILL", "ID", &victim_id]), b":1\r\n");
}
