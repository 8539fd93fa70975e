//! The in-memory harness (feature `harness`): what it serves matches what moat serves over
//! TCP, and the session fuzz corpus (`fuzz/corpus/session`) replays cleanly through the
//! same check the fuzz target runs, so every input the fuzzer kept stays a regression test.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use moat_proxy::harness::{Harness, check_input, fuzz_config};

const LIMIT: Duration = Duration::from_secs(10);

fn peer() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 40000))
}

#[test]
fn a_session_is_served_through_the_harness() {
    let harness = Harness::new(fuzz_config()).unwrap();
    let input: &[&[u8]] = &[
        b"AUTH fuzz pw\r\nSET a 1\r\n",
        b"*2\r\n$3\r\nGET\r\n$1\r\na\r\nMULTI\r\nINCR a\r\nEXEC\r\n",
        b"SUBSCRIBE ch\r\nPING\r\nUNSUBSCRIBE\r\nCONFIG GET x\r\nQUIT\r\n",
    ];
    let outcome = harness.session(peer(), input, 64, LIMIT);
    assert!(outcome.closed);
    assert_eq!(
        String::from_utf8_lossy(&outcome.output),
        "+OK\r\n+OK\r\n+OK\r\n+OK\r\n+QUEUED\r\n*1\r\n+OK\r\n\
         *3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n\
         *2\r\n$4\r\npong\r\n$0\r\n\r\n\
         *3\r\n$11\r\nunsubscribe\r\n$2\r\nch\r\n:0\r\n\
         -NOPERM this user has no permissions to run the 'config|get' command\r\n+OK\r\n"
    );
}

#[test]
fn a_client_that_says_nothing_is_closed_at_its_eof() {
    let harness = Harness::new(fuzz_config()).unwrap();
    let outcome = harness.session(peer(), &[], 64, LIMIT);
    assert!(outcome.closed);
    assert!(outcome.output.is_empty());
}

#[test]
fn the_session_fuzz_corpus_replays_cleanly() {
    let harness = Harness::new(fuzz_config()).unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/session");
    let mut replayed = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        if let Err(e) = check_input(&harness, &data) {
            panic!("{}: {e}", path.display());
        }
        replayed += 1;
    }
    assert!(
        replayed >= 100,
        "only {replayed} inputs in {}",
        dir.display()
    );
}

/// The backend drops a dedicated connection mid-transaction: the client gets an error for
/// each reply owed and is disconnected, nothing stays counted, and the next transaction
/// runs on a fresh connection.
#[test]
fn a_dedicated_connection_lost_mid_transaction_fails_the_client_cleanly() {
    let harness = Harness::new(fuzz_config()).unwrap();
    // The backend drops the dedicated connection instead of answering the INCR.
    harness.drop_dedicated_at(Some(1));
    let input: &[&[u8]] = &[b"AUTH fuzz pw\r\nMULTI\r\nINCR a\r\nEXEC\r\nPING\r\n"];
    let outcome = harness.session(peer(), input, 4096, LIMIT);
    harness.drop_dedicated_at(None);
    // MULTI's reply came before the drop; everything after it is answered with an error,
    // and the client, whose transaction lived on that connection, is disconnected.
    assert!(outcome.closed);
    let lost = "-ERR moat: dedicated backend connection lost\r\n";
    assert_eq!(
        String::from_utf8_lossy(&outcome.output),
        format!("+OK\r\n+OK\r\n{lost}{lost}{lost}")
    );
    assert!(harness.leftovers().is_empty(), "{:?}", harness.leftovers());
    let after = harness.session(peer(), &[b"AUTH fuzz pw\r\nMULTI\r\nEXEC\r\n"], 64, LIMIT);
    assert_eq!(after.output, b"+OK\r\n+OK\r\n*0\r\n");
}
