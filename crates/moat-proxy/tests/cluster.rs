//! Redis Cluster behind one moat per node: each node announces its moat's port, so
//! cluster-aware clients learn the moats from CLUSTER SLOTS / SHARDS / NODES and follow MOVED
//! and ASK through them unchanged. Real 3-primary clusters on loopback, real moats, the
//! `redis` crate's cluster client and raw RESP clients.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{Raw, shown, start_moat};
use moat_proxy::RunningProxy;
use moat_testkit::cluster::{Announce, Cluster, key_in_slot, key_slot};
use redis::Commands;
use redis::cluster::{ClusterClient, ClusterConnection, cluster_pipe};

/// Bound on every connect and reply of the cluster client, so a hang fails the test.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Three primaries, each with a moat in front that it announces to clients.
struct Stack {
    // Moats first: they stop before the nodes they front.
    moats: Vec<RunningProxy>,
    cluster: Cluster,
}

impl Stack {
    /// The cluster and its moats; `shared` backend connections per moat.
    fn start(shared: usize) -> Stack {
        let ports = [
            moat_testkit::free_port(),
            moat_testkit::free_port(),
            moat_testkit::free_port(),
        ];
        let cluster = Cluster::start(&ports).expect("cluster forms");
        let moats = cluster
            .nodes()
            .iter()
            .map(|node| {
                start_moat(node.server.addr(), |c| {
                    c.proxy.listen = SocketAddr::from(([127, 0, 0, 1], node.announce_port));
                    c.backend.shared_connections = shared;
                })
            })
            .collect();
        Stack { moats, cluster }
    }

    /// The same with nodes announcing a hostname (127.0.0.2, moats on the nodes' own port
    /// numbers there): the shape that also works with replicas.
    fn start_hosts(shared: usize) -> Stack {
        let host = Announce::Host("127.0.0.2".into());
        let cluster =
            Cluster::start_announcing(&[host.clone(), host.clone(), host]).expect("cluster forms");
        let moats = cluster
            .nodes()
            .iter()
            .map(|node| {
                start_moat(node.server.addr(), |c| {
                    c.proxy.listen = SocketAddr::from(([127, 0, 0, 2], node.server.port()));
                    c.backend.shared_connections = shared;
                })
            })
            .collect();
        Stack { moats, cluster }
    }

    fn moat(&self, node: usize) -> SocketAddr {
        self.moats[node].local_addr()
    }

    fn client(&self) -> ClusterConnection {
        let urls: Vec<String> = (0..3)
            .map(|i| format!("redis://{}/", self.moat(i)))
            .collect();
        let client = ClusterClient::builder(urls)
            .connection_timeout(TIMEOUT)
            .response_timeout(TIMEOUT)
            // It sends READONLY to every node: moat's emulation of it is exercised too
            // (on a primary it changes nothing).
            .read_routing_strategy(redis::cluster_read_routing::RandomReplicaStrategy)
            .build()
            .expect("cluster client");
        client
            .get_connection()
            .expect("cluster client connects through the moats")
    }
}

#[test]
fn the_cluster_names_the_moats_and_moat_keeps_cluster_semantics() {
    let stack = Stack::start(2);
    let moat_ports: Vec<String> = (0..3).map(|i| stack.moat(i).port().to_string()).collect();
    let mut raw = Raw::connect(stack.moat(0));
    // The maps clients read name the moats, through moat, whole.
    let nodes = raw.cmd(&[b"CLUSTER", b"NODES"]);
    let slots = raw.cmd(&[b"CLUSTER", b"SLOTS"]);
    let shards = raw.cmd(&[b"CLUSTER", b"SHARDS"]);
    let text = |r: &[u8]| String::from_utf8_lossy(r).into_owned();
    let (nodes, slots, shards) = (text(&nodes), text(&slots), text(&shards));
    for port in &moat_ports {
        assert!(nodes.contains(&format!("127.0.0.1:{port}@")), "{nodes}");
        let int = format!(":{port}\r\n");
        assert!(slots.contains(&int), "{slots}");
        assert!(shards.contains(&int), "{shards}");
    }
    // Database 0 only, as Redis says.
    assert_eq!(
        raw.cmd(&[b"SELECT", b"1"]),
        b"-ERR SELECT is not allowed in cluster mode\r\n"
    );
    assert_eq!(raw.cmd(&[b"SELECT", b"0"]), b"+OK\r\n");
    // Keys in different slots: Redis's CROSSSLOT, passed through.
    let crossslot = raw.cmd(&[b"MSET", b"{a}1", b"x", b"{b}1", b"y"]);
    assert!(
        crossslot.starts_with(b"-CROSSSLOT"),
        "{}",
        shown(&crossslot)
    );
    // A key of another node: MOVED to that node's moat.
    let slot = key_slot(b"elsewhere");
    let owner = stack.cluster.owner(slot).expect("owner");
    let via = (owner + 1) % 3;
    let moved = Raw::connect(stack.moat(via)).cmd(&[b"GET", b"elsewhere"]);
    assert_eq!(
        moved,
        format!("-MOVED {slot} 127.0.0.1:{}\r\n", moat_ports[owner]).as_bytes()
    );
    // READONLY / READWRITE are the session's, answered like Redis.
    assert_eq!(raw.cmd(&[b"READONLY"]), b"+OK\r\n");
    assert_eq!(raw.cmd(&[b"READWRITE"]), b"+OK\r\n");
}

#[test]
fn asking_applies_to_the_next_command_of_its_own_client_only() {
    // One shared backend connection per moat: every client below shares it.
    let stack = Stack::start(1);
    let key = "asked";
    let slot = key_slot(key.as_bytes());
    let from = stack.cluster.owner(slot).expect("owner");
    let to = (from + 1) % 3;
    let mut src = Raw::connect(stack.moat(from));
    assert_eq!(src.cmd(&[b"SET", key.as_bytes(), b"v"]), b"+OK\r\n");
    stack
        .cluster
        .begin_migration(slot, from, to)
        .expect("migrating");
    assert_eq!(
        stack
            .cluster
            .migrate_keys(slot, from, to, 10)
            .expect("MIGRATE"),
        1
    );
    let ask = format!("-ASK {slot} 127.0.0.1:{}\r\n", stack.moat(to).port());
    assert_eq!(src.cmd(&[b"GET", key.as_bytes()]), ask.as_bytes());

    let mut asker = Raw::connect(stack.moat(to));
    let mut other = Raw::connect(stack.moat(to));
    let moved = format!("-MOVED {slot} 127.0.0.1:{}\r\n", stack.moat(from).port());
    // The asker's flag waits for its own next command: another client's request on the
    // same backend connection meanwhile is redirected, as it would be on Redis.
    assert_eq!(asker.cmd(&[b"ASKING"]), b"+OK\r\n");
    assert_eq!(other.cmd(&[b"GET", key.as_bytes()]), moved.as_bytes());
    assert_eq!(asker.cmd(&[b"GET", key.as_bytes()]), b"$1\r\nv\r\n");
    // One command only.
    assert_eq!(asker.cmd(&[b"GET", key.as_bytes()]), moved.as_bytes());
    // Pipelined, with the other client pipelining too: every reply to its own client.
    for _ in 0..50 {
        let mut batch = common::command(&[b"GET", key.as_bytes()]);
        batch.extend(common::command(&[b"ASKING"]));
        batch.extend(common::command(&[b"GET", key.as_bytes()]));
        batch.extend(common::command(&[b"PING"]));
        let plain = [
            common::command(&[b"GET", key.as_bytes()]),
            common::command(&[b"GET", key.as_bytes()]),
        ]
        .concat();
        asker.send(&batch);
        other.send(&plain);
        assert_eq!(asker.reply(), moved.as_bytes());
        assert_eq!(asker.reply(), b"+OK\r\n");
        assert_eq!(asker.reply(), b"$1\r\nv\r\n");
        assert_eq!(asker.reply(), b"+PONG\r\n");
        assert_eq!(other.reply(), moved.as_bytes());
        assert_eq!(other.reply(), moved.as_bytes());
    }
    // A write of a new key of the slot goes where ASK sends it, with ASKING.
    let fresh = key_in_slot("fresh", slot);
    let fresh_ask = src.cmd(&[b"SET", fresh.as_bytes(), b"1"]);
    assert_eq!(fresh_ask, ask.as_bytes());
    assert_eq!(asker.cmd(&[b"ASKING"]), b"+OK\r\n");
    assert_eq!(asker.cmd(&[b"SET", fresh.as_bytes(), b"1"]), b"+OK\r\n");
    // ASKING then a transaction: the flag covers the queued commands, as on Redis.
    assert_eq!(asker.cmd(&[b"ASKING"]), b"+OK\r\n");
    assert_eq!(asker.cmd(&[b"MULTI"]), b"+OK\r\n");
    assert_eq!(asker.cmd(&[b"INCR", fresh.as_bytes()]), b"+QUEUED\r\n");
    assert_eq!(asker.cmd(&[b"EXEC"]), b"*1\r\n:2\r\n");
    stack
        .cluster
        .finish_migration(slot, to)
        .expect("slot moved");
    assert_eq!(other.cmd(&[b"GET", key.as_bytes()]), b"$1\r\nv\r\n");
}

#[test]
fn a_cluster_client_through_the_moats_pipelines_hash_tags_and_follows_moved() {
    let stack = Stack::start(2);
    let mut con = stack.client();
    for i in 0..200 {
        let _: () = con.set(format!("k{i}"), i).expect("SET");
    }
    for i in 0..200 {
        let v: i64 = con.get(format!("k{i}")).expect("GET");
        assert_eq!(v, i);
    }
    // A pipeline spread over the three nodes.
    let mut pipe = cluster_pipe();
    for i in 0..100 {
        pipe.incr(format!("p{i}"), i);
    }
    for i in 0..100 {
        pipe.get(format!("p{i}"));
    }
    let replies: Vec<i64> = pipe.query(&mut con).expect("cluster pipeline");
    assert_eq!(replies.len(), 200);
    assert!((0..100).all(|i| replies[i] == i as i64 && replies[100 + i] == i as i64));
    // Multi-key commands within one hash tag.
    let _: () = con
        .mset(&[("{user7}.a", "1"), ("{user7}.b", "2")])
        .expect("MSET with a hash tag");
    let both: Vec<String> = con.mget(&["{user7}.a", "{user7}.b"]).expect("MGET");
    assert_eq!(both, ["1", "2"]);
    // Across slots (a command the client does not split by slot): Redis's CROSSSLOT.
    let _: () = con.set("{x}1", 1).expect("SET");
    let err = redis::cmd("RENAME")
        .arg("{x}1")
        .arg("{y}1")
        .query::<()>(&mut con)
        .expect_err("CROSSSLOT");
    assert_eq!(
        err.kind(),
        redis::ErrorKind::Server(redis::ServerErrorKind::CrossSlot),
        "{err}"
    );
    // The slot of k7 moves: the client follows MOVED (to the new owner's moat).
    let slot = key_slot(b"k7");
    let from = stack.cluster.owner(slot).expect("owner");
    stack
        .cluster
        .move_slot(slot, from, (from + 1) % 3)
        .expect("slot moved");
    let v: i64 = con.get("k7").expect("GET after MOVED");
    assert_eq!(v, 7);
    let _: () = con.set("k7", 70).expect("SET after MOVED");
    let v: i64 = con.get("k7").expect("GET");
    assert_eq!(v, 70);
}

#[test]
fn a_slot_migrates_while_a_cluster_client_reads_and_writes_it() {
    let stack = Stack::start_hosts(2);
    let slot = key_slot(b"migrating");
    let keys: Vec<String> = (0..20)
        .map(|i| key_in_slot(&format!("m{i}:"), slot))
        .collect();
    let mut con = stack.client();
    for k in &keys {
        let _: () = con.set(k, 0).expect("SET");
    }
    let from = stack.cluster.owner(slot).expect("owner");
    let to = (from + 2) % 3;
    let done = Arc::new(AtomicBool::new(false));
    let worker = {
        let done = done.clone();
        let keys = keys.clone();
        thread::spawn(move || -> Result<(u64, Vec<i64>), String> {
            // Each key's count is known: every INCR must return the next number, and every
            // GET the number last written, whichever node holds the key now.
            let mut counts = vec![0i64; keys.len()];
            let mut rounds = 0u64;
            let started = Instant::now();
            let mut after_done = 0;
            while after_done < 3 && started.elapsed() < Duration::from_secs(60) {
                if done.load(Ordering::Relaxed) {
                    after_done += 1;
                }
                for (k, count) in keys.iter().zip(counts.iter_mut()) {
                    let n: i64 = con.incr(k, 1).map_err(|e| format!("INCR {k}: {e}"))?;
                    *count += 1;
                    if n != *count {
                        return Err(format!("INCR {k} gave {n}, expected {count}"));
                    }
                    let got: i64 = con.get(k).map_err(|e| format!("GET {k}: {e}"))?;
                    if got != *count {
                        return Err(format!("GET {k} gave {got}, expected {count}"));
                    }
                }
                rounds += 1;
            }
            Ok((rounds, counts))
        })
    };
    // Resharding the way redis-cli does it, a key at a time, while the client runs.
    stack
        .cluster
        .begin_migration(slot, from, to)
        .expect("migrating");
    let mut moved = 0;
    for _ in 0..keys.len() * 2 {
        let n = stack
            .cluster
            .migrate_keys(slot, from, to, 1)
            .expect("MIGRATE");
        if n == 0 {
            break;
        }
        moved += n;
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(moved, keys.len());
    stack
        .cluster
        .finish_migration(slot, to)
        .expect("slot moved");
    done.store(true, Ordering::Relaxed);
    let (rounds, counts) = worker
        .join()
        .expect("client thread")
        .expect("no wrong answer and no error during the migration");
    assert!(rounds >= 3, "{rounds}");
    // The client was sent ASK during the migration and moat passed its ASKING on.
    let stats = stack.cluster.nodes()[to]
        .server
        .info()
        .expect("INFO on the new owner");
    let asking = stats.get("cmdstat_asking").map_or("", String::as_str);
    assert!(
        asking.starts_with("calls="),
        "no ASKING reached the importing node"
    );
    // Every count where it should be, on the new owner.
    let owner = &stack.cluster.nodes()[to].server;
    for (k, count) in keys.iter().zip(counts) {
        let got = owner.command(&["GET", k]).expect("GET on the new owner");
        assert_eq!(got, common::bulk(count.to_string().as_bytes()), "{k}");
    }
}

/// Replicas sync from the address their primary announces, which with
/// `cluster-announce-port` would be its moat (and moat refuses SYNC). So a cluster with
/// replicas announces a hostname instead: nodes and replicas talk on 127.0.0.1 and the real
/// ports, clients are sent to 127.0.0.2 and the same ports, where the moats listen.
#[test]
fn readonly_reads_from_a_replica_for_its_own_client_only() {
    let host = Announce::Host("127.0.0.2".into());
    let mut cluster =
        Cluster::start_announcing(&[host.clone(), host.clone(), host.clone()]).expect("cluster");
    let key = "replicated";
    let slot = key_slot(key.as_bytes());
    let primary = cluster.owner(slot).expect("owner");
    let replica = cluster.add_replica(primary, &host).expect("replica syncs");
    // One shared backend connection per moat: the reader and the other client share it.
    let moats: Vec<RunningProxy> = cluster
        .nodes()
        .iter()
        .map(|node| {
            start_moat(node.server.addr(), |c| {
                c.proxy.listen = SocketAddr::from(([127, 0, 0, 2], node.server.port()));
                c.backend.shared_connections = 1;
            })
        })
        .collect();
    // Kept apart from `Stack::start_hosts`: the replica joins before the moats start.
    let stack = Stack { moats, cluster };
    let replica_moat = &stack.moats[replica];
    let mut writer = Raw::connect(stack.moat(primary));
    assert_eq!(writer.cmd(&[b"SET", key.as_bytes(), b"v"]), b"+OK\r\n");
    assert_eq!(writer.cmd(&[b"WAIT", b"1", b"5000"]), b":1\r\n");

    let mut reader = Raw::connect(replica_moat.local_addr());
    let mut other = Raw::connect(replica_moat.local_addr());
    let moved = format!("-MOVED {slot} 127.0.0.2:{}\r\n", stack.moat(primary).port());
    let get = common::command(&[b"GET", key.as_bytes()]);
    assert_eq!(other.cmd(&[b"GET", key.as_bytes()]), moved.as_bytes());
    assert_eq!(reader.cmd(&[b"READONLY"]), b"+OK\r\n");
    // Interleaved on the one backend connection: the mode is the reader's alone.
    for _ in 0..20 {
        reader.send(&get);
        other.send(&get);
        reader.send(&get);
        assert_eq!(other.reply(), moved.as_bytes());
        assert_eq!(reader.reply(), b"$1\r\nv\r\n");
        assert_eq!(reader.reply(), b"$1\r\nv\r\n");
    }
    // Writes still go to the primary.
    assert_eq!(
        reader.cmd(&[b"SET", key.as_bytes(), b"w"]),
        moved.as_bytes()
    );
    // A transaction on a dedicated connection keeps the mode.
    assert_eq!(reader.cmd(&[b"MULTI"]), b"+OK\r\n");
    assert_eq!(reader.cmd(&[b"GET", key.as_bytes()]), b"+QUEUED\r\n");
    assert_eq!(reader.cmd(&[b"EXEC"]), b"*1\r\n$1\r\nv\r\n");
    assert_eq!(reader.cmd(&[b"GET", key.as_bytes()]), b"$1\r\nv\r\n");
    // READWRITE and RESET end it.
    assert_eq!(reader.cmd(&[b"READWRITE"]), b"+OK\r\n");
    assert_eq!(reader.cmd(&[b"GET", key.as_bytes()]), moved.as_bytes());
    assert_eq!(reader.cmd(&[b"READONLY"]), b"+OK\r\n");
    assert_eq!(reader.cmd(&[b"RESET"]), b"+RESET\r\n");
    assert_eq!(reader.cmd(&[b"GET", key.as_bytes()]), moved.as_bytes());
    assert_eq!(other.cmd(&[b"GET", key.as_bytes()]), moved.as_bytes());

    // Failover: the replica takes over and announces itself, that is its own moat; the
    // old primary's moat now sends clients there.
    let replica_node = &stack.cluster.nodes()[replica].server;
    let failover = replica_node
        .command(&["CLUSTER", "FAILOVER"])
        .expect("FAILOVER");
    assert_eq!(failover, b"+OK\r\n");
    let started = Instant::now();
    while stack.cluster.owner(slot).expect("owner") != replica {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "failover never completed"
        );
        thread::sleep(Duration::from_millis(50));
    }
    let moved_to_replica = format!(
        "-MOVED {slot} 127.0.0.2:{}\r\n",
        replica_moat.local_addr().port()
    );
    let started = Instant::now();
    loop {
        let reply = Raw::connect(stack.moat(primary)).cmd(&[b"GET", key.as_bytes()]);
        if reply == moved_to_replica.as_bytes() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{}",
            shown(&reply)
        );
        thread::sleep(Duration::from_millis(50));
    }
    // Its moat serves writes now, to clients in READWRITE mode as well.
    assert_eq!(other.cmd(&[b"SET", key.as_bytes(), b"w"]), b"+OK\r\n");
    assert_eq!(other.cmd(&[b"GET", key.as_bytes()]), b"$1\r\nw\r\n");
}

#[test]
fn cluster_modes_on_a_server_without_cluster_are_redis_errors() {
    let stack = common::Stack::start();
    let mut raw = Raw::connect(stack.addr());
    let disabled = b"-ERR This instance has cluster support disabled\r\n";
    for cmd in [&b"ASKING"[..], b"READONLY", b"READWRITE"] {
        assert_eq!(raw.cmd(&[cmd]), disabled, "{}", shown(cmd));
        assert_eq!(
            stack
                .redis
                .command(&[&String::from_utf8_lossy(cmd)])
                .expect("redis"),
            disabled
        );
    }
    // Nothing was left behind: the next command runs as usual.
    assert_eq!(raw.cmd(&[b"SELECT", b"1"]), b"+OK\r\n");
    assert_eq!(raw.cmd(&[b"SET", b"k", b"v"]), b"+OK\r\n");
}

/// A primary dies: its moat tells clients `CLUSTERDOWN` and disconnects them (a plain
/// `-ERR` on an open connection would not make cluster clients look again), and once the
/// replica is promoted, the maps every live moat serves send the slot to the replica's
/// moat, which serves the acknowledged data.
#[test]
fn when_a_primary_dies_its_moat_disconnects_clients_and_the_replica_takes_over() {
    let host = Announce::Host("127.0.0.2".into());
    let mut cluster =
        Cluster::start_announcing(&[host.clone(), host.clone(), host.clone()]).expect("cluster");
    let key = "survivor";
    let slot = key_slot(key.as_bytes());
    let primary = cluster.owner(slot).expect("owner");
    let replica = cluster.add_replica(primary, &host).expect("replica syncs");
    let moats: Vec<RunningProxy> = cluster
        .nodes()
        .iter()
        .map(|node| {
            start_moat(node.server.addr(), |c| {
                c.proxy.listen = SocketAddr::from(([127, 0, 0, 2], node.server.port()));
            })
        })
        .collect();
    let mut raw = Raw::connect(moats[primary].local_addr());
    assert_eq!(raw.cmd(&[b"SET", key.as_bytes(), b"kept"]), b"+OK\r\n");
    assert_eq!(raw.cmd(&[b"WAIT", b"1", b"5000"]), b":1\r\n");

    cluster.node_mut(primary).expect("primary").server.kill9();
    let killed = Instant::now();
    let reply = raw.cmd(&[b"GET", key.as_bytes()]);
    assert!(reply.starts_with(b"-"), "{}", shown(&reply));
    // Once the breaker or the reconnect loop answers for the dead node: CLUSTERDOWN, then
    // the connection closes.
    let started = Instant::now();
    loop {
        let mut fresh = Raw::connect(moats[primary].local_addr());
        let reply = fresh.cmd(&[b"GET", key.as_bytes()]);
        if reply.starts_with(b"-CLUSTERDOWN moat: backend unavailable") {
            assert!(fresh.is_closed(), "moat keeps a client of a dead node");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{}",
            shown(&reply)
        );
        thread::sleep(Duration::from_millis(50));
    }
    // The cluster promotes the replica; a live moat's map names the replica's moat.
    let live = (primary + 1) % 3;
    let replica_port = format!(":{}\r\n", moats[replica].local_addr().port());
    let started = Instant::now();
    loop {
        let slots = Raw::connect(moats[live].local_addr()).cmd(&[b"CLUSTER", b"SLOTS"]);
        let promoted = Raw::connect(moats[replica].local_addr()).cmd(&[b"GET", key.as_bytes()]);
        if promoted == b"$4\r\nkept\r\n" && String::from_utf8_lossy(&slots).contains(&replica_port)
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no failover: {}",
            shown(&promoted)
        );
        thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "failover: the replica's moat served the slot {:?} after the primary was killed",
        killed.elapsed()
    );
    drop(moats);
}
