//! Idle clients go dormant (no task, no buffers) and come back with everything they had:
//! their database, name and user, their place in CLIENT LIST, their deadlines, CLIENT KILL
//! and the drain.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::conn::Conn;
use common::{Stack, bulk};

/// Long enough for the sweep (two looks, 0.5 s apart) on a loaded machine.
const WAIT: Duration = Duration::from_secs(20);

/// Waits until moat reports `want` dormant clients (bounded).
fn wait_dormant(stack: &Stack, want: u64) {
    let until = Instant::now() + WAIT;
    loop {
        let now = stack.moat.control().snapshot().gauge("clients_dormant");
        if now == want {
            return;
        }
        assert!(
            Instant::now() < until,
            "{now} dormant clients after {WAIT:?}, expected {want}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn idle_clients_go_dormant_and_come_back_with_their_state() {
    let stack = Stack::start();
    let addr = stack.addr();
    let mut clients: Vec<Conn> = (0..20u8)
        .map(|i| Conn::from([127, 0, 1, 1 + i % 4], addr))
        .collect();
    let victim_id = String::from_utf8(clients[3].call(&["CLIENT", "ID"])).unwrap();
    let victim_id = victim_id.trim_start_matches(':').trim_end().to_string();
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(c.call(&["SELECT", "3"]), b"+OK\r\n");
        assert_eq!(
            c.call(&["CLIENT", "SETNAME", &format!("app-{i}")]),
            b"+OK\r\n"
        );
        assert_eq!(
            c.call(&["SET", &format!("k{i}"), &format!("v{i}")]),
            b"+OK\r\n"
        );
    }
    wait_dormant(&stack, 20);
    // Each comes back on its own request, in its database, under its name.
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(
            c.call(&["GET", &format!("k{i}")]),
            bulk(format!("v{i}").as_bytes())
        );
        assert_eq!(
            c.call(&["CLIENT", "GETNAME"]),
            bulk(format!("app-{i}").as_bytes())
        );
    }
    // Dormant or not, every client is in CLIENT LIST.
    wait_dormant(&stack, 20);
    let mut lister = Conn::connect(addr);
    let list = String::from_utf8(lister.call(&["CLIENT", "LIST"])).unwrap();
    for i in 0..20 {
        assert!(
            list.contains(&format!("name=app-{i} ")),
            "app-{i} missing from {list}"
        );
    }
    // A pipeline from a dormant client: every reply, in order.
    let mut pipeline = Vec::new();
    for n in 0..200 {
        pipeline.extend_from_slice(&common::command(&[b"ECHO", format!("{n}").as_bytes()]));
    }
    clients[7].send(&pipeline);
    for (n, reply) in clients[7].replies(200).into_iter().enumerate() {
        assert_eq!(reply, bulk(format!("{n}").as_bytes()));
    }
    // CLIENT KILL reaches a dormant client.
    wait_dormant(&stack, 21);
    let victim = clients.remove(3);
    assert_eq!(
        lister.call(&["CLIENT", "KILL", "ID", &victim_id]),
        b":1\r\n"
    );
    let mut victim = victim;
    victim.expect_silent_close("a killed dormant client");
    // Closing while dormant: the client is resumed to see its EOF, and leaves.
    drop(clients);
    drop(lister);
    wait_dormant(&stack, 0);
}

#[test]
fn a_dormant_silent_client_still_meets_its_handshake_deadline() {
    let stack = Stack::with(moat_testkit::RedisServer::builder(), |c| {
        c.guard.handshake_timeout = Duration::from_secs(3);
    });
    let addr = stack.addr();
    // Untrusted (only 127.0.0.1 is trusted by default), and silent.
    let mut silent = Conn::from([127, 0, 2, 1], addr);
    let mut talker = Conn::from([127, 0, 2, 2], addr);
    assert_eq!(talker.call(&["PING"]), b"+PONG\r\n");
    wait_dormant(&stack, 2);
    silent.expect_silent_close("a silent client past its handshake deadline");
    let snapshot = stack.moat.control().snapshot();
    assert_eq!(
        moat_proxy::stats::Snapshot::labelled(&snapshot.closed, "handshake_deadline"),
        1
    );
    // The client that spoke has no deadline left: it stays, and answers.
    talker.expect_open(Duration::from_millis(500), "a dormant client that spoke");
    assert_eq!(talker.call(&["PING"]), b"+PONG\r\n");
}

#[test]
fn a_drain_closes_dormant_clients() {
    let stack = Stack::start();
    let addr = stack.addr();
    let mut idle: Vec<Conn> = (0..5).map(|_| Conn::connect(addr)).collect();
    for c in &mut idle {
        assert_eq!(c.call(&["PING"]), b"+PONG\r\n");
    }
    wait_dormant(&stack, 5);
    stack.moat.control().drain();
    for c in &mut idle {
        c.expect_silent_close("a dormant client during a drain");
    }
}
