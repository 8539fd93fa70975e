//! Hostile and malformed input through moat in front of a real Redis. Each case asserts the
//! exact reply, whether moat closed the connection, and that a well-behaved client connected
//! before the case is still served correctly afterwards.

mod common;

use std::io::Write;
use std::net::Shutdown;

use common::{Raw, Stack};
use moat_proxy::config::UserConfig;
use moat_testkit::RedisServer;

fn text(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

fn auth_stack() -> Stack {
    Stack::with(RedisServer::builder().password("secret"), |c| {
        c.users = vec![UserConfig {
            name: "default".into(),
            password: Some("secret".into()),
            password_sha256: None,
            deny_commands: vec![],
        }];
        c.backend.password = Some("secret".into());
    })
}

/// A well-behaved client, connected (and authenticated if `password`) before a case runs.
struct Bystander {
    raw: Raw,
    round: usize,
}

impl Bystander {
    fn connect(stack: &Stack, password: Option<&str>) -> Bystander {
        let mut raw = Raw::connect(stack.addr());
        if let Some(p) = password {
            assert_eq!(raw.cmd(&[b"AUTH", p.as_bytes()]), b"+OK\r\n");
        }
        let mut b = Bystander { raw, round: 0 };
        b.check();
        b
    }

    /// A write and reads that must see it, with values unique to this round.
    fn check(&mut self) {
        self.round += 1;
        let key = format!("bystander:{}", self.round);
        let value = format!("value-{}", self.round);
        assert_eq!(
            self.raw.cmd(&[b"SET", key.as_bytes(), value.as_bytes()]),
            b"+OK\r\n"
        );
        assert_eq!(
            self.raw.cmd(&[b"GET", key.as_bytes()]),
            format!("${}\r\n{value}\r\n", value.len()).into_bytes()
        );
        assert_eq!(self.raw.cmd(&[b"PING"]), b"+PONG\r\n");
    }
}

/// Sends `input` on a fresh connection (after `AUTH secret` if `password`), expects exactly
/// the `replies`, then the connection closed.
fn rejected(stack: &Stack, by: &mut Bystander, password: bool, input: &[u8], replies: &[&str]) {
    let mut c = Raw::connect(stack.addr());
    if password {
        assert_eq!(c.cmd(&[b"AUTH", b"secret"]), b"+OK\r\n");
    }
    c.send(input);
    for want in replies {
        assert_eq!(text(&c.reply()), *want, "input {}", text(input));
    }
    assert!(
        c.is_closed(),
        "connection still open after input {}",
        text(input)
    );
    by.check();
}

#[test]
fn malformed_framing_is_answered_then_closed() {
    let stack = Stack::start();
    let mut by = Bystander::connect(&stack, None);
    let cases: &[(&[u8], &str)] = &[
        (
            b"*abc\r\n",
            "-ERR Protocol error: invalid multibulk length\\r\\n",
        ),
        (
            b"*1\r\nx",
            "-ERR Protocol error: expected \\'$\\', got \\'x\\'\\r\\n",
        ),
        (
            b"*1\r\n+x\r\n",
            "-ERR Protocol error: expected \\'$\\', got \\'+\\'\\r\\n",
        ),
        (
            b"*1\r\n$-5\r\n",
            "-ERR Protocol error: invalid bulk length\\r\\n",
        ),
        (
            b"*1\r\n$x\r\n",
            "-ERR Protocol error: invalid bulk length\\r\\n",
        ),
        (
            b"*1\r\n$4\r\nPINGxx",
            "-ERR Protocol error: expected CRLF after bulk data\\r\\n",
        ),
        (
            b"*2\r\n$4\r\nECHO\r\n$1\r\nab\r\n",
            "-ERR Protocol error: expected CRLF after bulk data\\r\\n",
        ),
        (
            b"SET \"a b\r\n",
            "-ERR Protocol error: unbalanced quotes in request\\r\\n",
        ),
        (
            b"SET 'a b\r\n",
            "-ERR Protocol error: unbalanced quotes in request\\r\\n",
        ),
        (
            b"SET \"a\"b c\r\n",
            "-ERR Protocol error: unbalanced quotes in request\\r\\n",
        ),
    ];
    for (input, reply) in cases {
        rejected(&stack, &mut by, false, input, &[reply]);
    }
    // A request before the malformed one is answered first.
    rejected(
        &stack,
        &mut by,
        false,
        b"PING\r\n*1\r\n$-5\r\n",
        &[
            "+PONG\\r\\n",
            "-ERR Protocol error: invalid bulk length\\r\\n",
        ],
    );
    // An inline line with no end, longer than the 64 KiB limit.
    let mut long = b"SET k ".to_vec();
    long.resize(70 << 10, b'a');
    rejected(
        &stack,
        &mut by,
        false,
        &long,
        &["-ERR Protocol error: too big inline request\\r\\n"],
    );
}

#[test]
fn inline_commands_with_quotes_and_escapes_work() {
    let stack = Stack::start();
    let mut by = Bystander::connect(&stack, None);
    let mut c = Raw::connect(stack.addr());
    assert_eq!(c.inline("SET \"a b\" 'c d'"), b"+OK\r\n");
    assert_eq!(c.inline("GET \"a b\""), b"$3\r\nc d\r\n");
    assert_eq!(c.cmd(&[b"GET", b"a b"]), b"$3\r\nc d\r\n");
    assert_eq!(c.inline(r#"SET "esc\x41\n\t" "q\"uote""#), b"+OK\r\n");
    assert_eq!(c.cmd(&[b"GET", b"escA\n\t"]), b"$6\r\nq\"uote\r\n");
    assert_eq!(c.inline(r"SET single 'it\'s'"), b"+OK\r\n");
    assert_eq!(c.cmd(&[b"GET", b"single"]), b"$4\r\nit's\r\n");
    assert_eq!(c.inline("  \tECHO   spaced   "), b"$6\r\nspaced\r\n");
    // LF alone ends an inline command too.
    c.send(b"ECHO lf\n");
    assert_eq!(c.reply(), b"$2\r\nlf\r\n");
    by.check();
}

#[test]
fn pipelines_trickles_and_empty_requests() {
    let stack = Stack::start();
    let mut by = Bystander::connect(&stack, None);
    // 100 inline PINGs in one write.
    let mut c = Raw::connect(stack.addr());
    c.send(&b"PING\r\n".repeat(100));
    for i in 0..100 {
        assert_eq!(c.reply(), b"+PONG\r\n", "reply {i}");
    }
    // One request, one byte per write.
    let mut t = Raw::connect(stack.addr());
    t.stream.set_nodelay(true).expect("nodelay");
    for &byte in b"*3\r\n$3\r\nSET\r\n$7\r\ntrickle\r\n$5\r\nslow!\r\nGET trickle\r\n" {
        t.stream.write_all(&[byte]).expect("write");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(t.reply(), b"+OK\r\n");
    assert_eq!(t.reply(), b"$5\r\nslow!\r\n");
    // Empty lines, `*0` and negative counts are ignored, as Redis does.
    c.send(b"\r\n\n*0\r\n   \r\n*-1\r\nPING\r\n");
    assert_eq!(c.reply(), b"+PONG\r\n");
    assert_eq!(c.cmd(&[b"ECHO", b"after"]), b"$5\r\nafter\r\n");
    by.check();
}

#[test]
fn nul_bytes_and_large_values_round_trip() {
    let stack = Stack::start();
    let mut by = Bystander::connect(&stack, None);
    let mut c = Raw::connect(stack.addr());
    assert_eq!(c.cmd(&[b"SET", b"k\0ey", b"v\0al\0"]), b"+OK\r\n");
    assert_eq!(c.cmd(&[b"GET", b"k\0ey"]), b"$5\r\nv\0al\0\r\n");
    assert_eq!(c.cmd(&[b"GET", b"k"]), b"$-1\r\n");
    assert_eq!(c.cmd(&[b"ECHO", b"\0\r\n\0"]), b"$4\r\n\0\r\n\0\r\n");
    // A 2 MB value with every byte value in it.
    let big: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(c.cmd(&[b"SET", b"big", &big]), b"+OK\r\n");
    let mut want = format!("${}\r\n", big.len()).into_bytes();
    want.extend_from_slice(&big);
    want.extend_from_slice(b"\r\n");
    assert!(
        c.cmd(&[b"GET", b"big"]) == want,
        "2 MB value came back changed"
    );
    assert_eq!(c.cmd(&[b"STRLEN", b"big"]), b":2000000\r\n");
    by.check();
}

#[test]
fn limits_before_authentication() {
    let stack = auth_stack();
    let mut by = Bystander::connect(&stack, Some("secret"));
    rejected(
        &stack,
        &mut by,
        false,
        b"*2000000\r\n",
        &["-ERR moat: request has too many arguments (limit 10)\\r\\n"],
    );
    let eleven = format!("*11\r\n{}", "$1\r\nx\r\n".repeat(11));
    rejected(
        &stack,
        &mut by,
        false,
        eleven.as_bytes(),
        &["-ERR moat: request has too many arguments (limit 10)\\r\\n"],
    );
    rejected(
        &stack,
        &mut by,
        false,
        b"*2\r\n$4\r\nAUTH\r\n$20000\r\n",
        &["-ERR moat: bulk argument too large (limit 16384 bytes)\\r\\n"],
    );
    // After AUTH the full limits apply, on the same connection.
    let mut c = Raw::connect(stack.addr());
    assert_eq!(c.cmd(&[b"AUTH", b"secret"]), b"+OK\r\n");
    let mut mset: Vec<Vec<u8>> = vec![b"MSET".to_vec()];
    for i in 0..20 {
        mset.push(format!("m{i}").into_bytes());
        mset.push(vec![b'v'; 20_000]);
    }
    let refs: Vec<&[u8]> = mset.iter().map(Vec::as_slice).collect();
    assert_eq!(c.cmd(&refs), b"+OK\r\n");
    assert_eq!(c.cmd(&[b"STRLEN", b"m19"]), b":20000\r\n");
    // AUTH (or HELLO AUTH) and a large request in one write: the request after the
    // credentials gets the full limits.
    let mut request = format!("*{}\r\n", mset.len()).into_bytes();
    for arg in &mset {
        request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        request.extend_from_slice(arg);
        request.extend_from_slice(b"\r\n");
    }
    for auth in [
        &b"*2\r\n$4\r\nAUTH\r\n$6\r\nsecret\r\n"[..],
        b"HELLO 2 AUTH default secret\r\n",
    ] {
        let mut p = Raw::connect(stack.addr());
        let mut input = auth.to_vec();
        input.extend_from_slice(&request);
        p.send(&input);
        let first = p.reply();
        assert!(
            first == b"+OK\r\n" || first.starts_with(b"*14\r\n"),
            "{}",
            text(&first)
        );
        assert_eq!(text(&p.reply()), "+OK\\r\\n");
    }
    // RESET signs out and brings the tight limits back.
    assert_eq!(c.cmd(&[b"RESET"]), b"+RESET\r\n");
    c.send(b"*2000000\r\n");
    assert_eq!(
        text(&c.reply()),
        "-ERR moat: request has too many arguments (limit 10)\\r\\n"
    );
    assert!(c.is_closed());
    by.check();
}

#[test]
fn huge_declared_bulk_is_refused_without_reading_it() {
    let stack = auth_stack();
    let mut by = Bystander::connect(&stack, Some("secret"));
    // Only the header is sent: the error and the close must come without the body.
    rejected(
        &stack,
        &mut by,
        true,
        b"*1\r\n$9999999999\r\n",
        &["-ERR moat: bulk argument too large (limit 67108864 bytes)\\r\\n"],
    );
    rejected(
        &stack,
        &mut by,
        true,
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$67108865\r\nabc",
        &["-ERR moat: bulk argument too large (limit 67108864 bytes)\\r\\n"],
    );
    // The SET never happened.
    assert_eq!(by.raw.cmd(&[b"EXISTS", b"k"]), b":0\r\n");
}

#[test]
fn replies_in_flight_come_before_the_protocol_error() {
    let stack = Stack::start();
    let mut by = Bystander::connect(&stack, None);
    let mut c = Raw::connect(stack.addr());
    let mut input = Vec::new();
    for _ in 0..200 {
        input.extend_from_slice(b"*2\r\n$4\r\nINCR\r\n$8\r\ninflight\r\n");
    }
    input.extend_from_slice(b"*abc\r\n");
    c.send(&input);
    for i in 1..=200 {
        assert_eq!(c.reply(), format!(":{i}\r\n").into_bytes(), "reply {i}");
    }
    assert_eq!(
        text(&c.reply()),
        "-ERR Protocol error: invalid multibulk length\\r\\n"
    );
    assert!(c.is_closed());
    // Nothing after the error ran; everything before it did.
    assert_eq!(by.raw.cmd(&[b"GET", b"inflight"]), b"$3\r\n200\r\n");
    by.check();

    // The same with a command moat answers itself waiting behind the forwarded ones.
    let mut c = Raw::connect(stack.addr());
    let mut input = b"INCR behind\r\n".repeat(50);
    input.extend_from_slice(b"PING\r\nECHO x\r\n*1\r\n$-5\r\nINCR behind\r\n");
    c.send(&input);
    for i in 1..=50 {
        assert_eq!(c.reply(), format!(":{i}\r\n").into_bytes(), "reply {i}");
    }
    assert_eq!(c.reply(), b"+PONG\r\n");
    assert_eq!(c.reply(), b"$1\r\nx\r\n");
    assert_eq!(
        text(&c.reply()),
        "-ERR Protocol error: invalid bulk length\\r\\n"
    );
    assert!(c.is_closed());
    assert_eq!(by.raw.cmd(&[b"GET", b"behind"]), b"$2\r\n50\r\n");

    // QUIT in a pipeline: what came before is answered, nothing after it runs.
    let mut c = Raw::connect(stack.addr());
    c.send(b"INCR quitter\r\nINCR quitter\r\nQUIT\r\nINCR quitter\r\n");
    assert_eq!(c.reply(), b":1\r\n");
    assert_eq!(c.reply(), b":2\r\n");
    assert_eq!(c.reply(), b"+OK\r\n");
    assert!(c.is_closed());
    assert_eq!(by.raw.cmd(&[b"GET", b"quitter"]), b"$1\r\n2\r\n");
    by.check();
}

#[test]
fn half_closed_client_still_gets_its_replies() {
    let stack = Stack::start();
    let mut by = Bystander::connect(&stack, None);
    let mut c = Raw::connect(stack.addr());
    c.send(b"SET a 1\r\nGET a\r\n");
    c.stream.shutdown(Shutdown::Write).expect("shutdown");
    assert_eq!(c.reply(), b"+OK\r\n");
    assert_eq!(c.reply(), b"$1\r\n1\r\n");
    assert!(c.is_closed());
    // The same with a request moat answers itself behind a forwarded one.
    let mut c = Raw::connect(stack.addr());
    c.send(b"INCR hc\r\nPING\r\nINCR hc\r\n");
    c.stream.shutdown(Shutdown::Write).expect("shutdown");
    assert_eq!(c.reply(), b":1\r\n");
    assert_eq!(c.reply(), b"+PONG\r\n");
    assert_eq!(c.reply(), b":2\r\n");
    assert!(c.is_closed());
    by.check();
}

#[test]
fn client_vanishing_with_requests_in_flight() {
    let stack = Stack::start();
    let mut by = Bystander::connect(&stack, None);
    let value = vec![b'x'; 1024];
    let mut one = format!("*3\r\n$3\r\nSET\r\n$4\r\ngone\r\n${}\r\n", value.len()).into_bytes();
    one.extend_from_slice(&value);
    one.extend_from_slice(b"\r\n");
    let mut get = b"*2\r\n$3\r\nGET\r\n$4\r\ngone\r\n".repeat(500);
    let mut input = one.repeat(500);
    input.append(&mut get);
    for round in 0..10 {
        let mut c = Raw::connect(stack.addr());
        c.send(&input);
        drop(c);
        by.check();
        let mut fresh = Raw::connect(stack.addr());
        assert_eq!(fresh.cmd(&[b"PING"]), b"+PONG\r\n", "round {round}");
        assert_eq!(
            fresh.cmd(&[b"EXISTS", b"bystander:1"]),
            b":1\r\n",
            "round {round}"
        );
    }
    // Moat's pool did not grow to make up for connections left with unread replies.
    let clients = stack.redis_clients();
    assert!(clients <= 2, "Redis holds {clients} connections from moat");
    by.check();
}
