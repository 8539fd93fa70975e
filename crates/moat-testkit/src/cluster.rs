//! A real Redis Cluster of primaries on loopback, for tests of moat in front of each node.
//!
//! Each node announces a client port chosen by the caller (`cluster-announce-port`), so the
//! slot maps it gives out (CLUSTER SLOTS / SHARDS / NODES, MOVED, ASK) name whatever listens
//! there, a moat in the tests, while the nodes talk to each other on their real bus ports.
//! The cluster is built by hand (ADDSLOTSRANGE, SET-CONFIG-EPOCH, MEET), which needs no
//! `redis-cli`, and slots are migrated the way `redis-cli --cluster reshard` does it:
//! SETSLOT IMPORTING / MIGRATING, MIGRATE of the keys, SETSLOT NODE everywhere.
//!
//! ```no_run
//! let ports = [moat_testkit::free_port(), moat_testkit::free_port(), moat_testkit::free_port()];
//! let cluster = moat_testkit::cluster::Cluster::start(&ports)?;
//! let slot = moat_testkit::cluster::key_slot(b"user:{42}");
//! let owner = cluster.owner(slot)?;
//! # Ok::<(), moat_testkit::TestkitError>(())
//! ```

use std::thread;
use std::time::{Duration, Instant};

use crate::{RedisServer, TestkitError, free_port, resp};

/// Slots in a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// How long a fresh cluster gets to agree on its slots (`cluster_state:ok` everywhere).
const FORM_TIMEOUT: Duration = Duration::from_secs(30);

/// One primary of the cluster.
#[derive(Debug)]
pub struct ClusterNode {
    /// The server (its real client port is [`RedisServer::port`]).
    pub server: RedisServer,
    /// The port the node announces to clients (where its moat listens): the announced
    /// port, or with [`Announce::Host`] the node's own.
    pub announce_port: u16,
    /// The node's cluster bus port (real and announced).
    pub bus_port: u16,
    /// The node's id (CLUSTER MYID).
    pub id: String,
}

/// A running cluster of primaries, stopped (each server by PID) when dropped.
#[derive(Debug)]
pub struct Cluster {
    nodes: Vec<ClusterNode>,
}

/// The hash slot of a key, as Redis computes it: CRC16 (XMODEM) of the key, or of the part
/// between the first `{` and the next `}` when that part is not empty (a hash tag).
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16(hashed) % SLOTS
}

/// CRC16-CCITT (XMODEM), the checksum Redis Cluster hashes keys with.
fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// A key (`prefix` followed by a number) that hashes to `slot`.
pub fn key_in_slot(prefix: &str, slot: u16) -> String {
    // Every slot is reached within a few hundred thousand tries; the bound keeps a
    // wrong slot number from looping for ever.
    (0..10_000_000u32)
        .map(|i| format!("{prefix}{i}"))
        .find(|k| key_slot(k.as_bytes()) == slot)
        .unwrap_or_else(|| format!("{prefix}{{no-key-for-slot-{slot}}}"))
}

impl Cluster {
    /// Starts one primary per entry of `announce_ports`, each announcing `127.0.0.1` and
    /// that port to clients, splits the slots evenly between them in order, joins them and
    /// waits until every node reports `cluster_state:ok` and knows every other.
    pub fn start(announce_ports: &[u16]) -> Result<Cluster, TestkitError> {
        let announced: Vec<Announce> = announce_ports.iter().map(|&p| Announce::Port(p)).collect();
        Self::start_announcing(&announced)
    }

    /// Like [`Cluster::start`], with each node announced as `announced` says.
    pub fn start_announcing(announced: &[Announce]) -> Result<Cluster, TestkitError> {
        let mut nodes = Vec::with_capacity(announced.len());
        for a in announced {
            nodes.push(start_node(a)?);
        }
        let cluster = Cluster { nodes };
        cluster.form()?;
        Ok(cluster)
    }

    /// Adds a replica of node `primary`, announcing `announce_port`, and waits until it
    /// has synchronised and every node knows it; returns its index in [`Cluster::nodes`].
    pub fn add_replica(
        &mut self,
        primary: usize,
        announce: &Announce,
    ) -> Result<usize, TestkitError> {
        let node = start_node(announce)?;
        let first = self.node(0)?;
        let (port, bus) = (node.server.port().to_string(), node.bus_port.to_string());
        ok(
            &first.server,
            &["CLUSTER", "MEET", "127.0.0.1", &port, &bus],
        )?;
        let primary_id = self.node(primary)?.id.clone();
        let deadline = Instant::now() + FORM_TIMEOUT;
        // The replica must know the primary (through the MEET's gossip) before it can
        // follow it.
        while ok(&node.server, &["CLUSTER", "REPLICATE", &primary_id]).is_err() {
            if Instant::now() >= deadline {
                return Err(TestkitError::Protocol(
                    "replica never met its primary".into(),
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
        self.nodes.push(node);
        let index = self.nodes.len() - 1;
        loop {
            let info = resp::bulk_string(
                &self.nodes[index].server.command(&["INFO", "replication"])?,
                "INFO",
            )?;
            if info.contains("master_link_status:up") && self.wait_ok().is_ok() {
                return Ok(index);
            }
            if Instant::now() >= deadline {
                return Err(TestkitError::Protocol("replica never synchronised".into()));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn form(&self) -> Result<(), TestkitError> {
        let n = self.nodes.len().max(1);
        let per = usize::from(SLOTS) / n;
        for (i, node) in self.nodes.iter().enumerate() {
            let first = i * per;
            let last = if i + 1 == n {
                usize::from(SLOTS) - 1
            } else {
                (i + 1) * per - 1
            };
            let (first, last) = (first.to_string(), last.to_string());
            ok(&node.server, &["CLUSTER", "ADDSLOTSRANGE", &first, &last])?;
            // Distinct epochs up front: no collision to resolve while forming.
            let epoch = (i + 1).to_string();
            ok(&node.server, &["CLUSTER", "SET-CONFIG-EPOCH", &epoch])?;
        }
        if let Some((first, rest)) = self.nodes.split_first() {
            for node in rest {
                let (port, bus) = (node.server.port().to_string(), node.bus_port.to_string());
                ok(
                    &first.server,
                    &["CLUSTER", "MEET", "127.0.0.1", &port, &bus],
                )?;
            }
        }
        self.wait_ok()
    }

    /// Waits (bounded) until every node reports `cluster_state:ok`, knows every node, and
    /// agrees with the others on who owns each slot range.
    pub fn wait_ok(&self) -> Result<(), TestkitError> {
        let deadline = Instant::now() + FORM_TIMEOUT;
        let want_known = format!("cluster_known_nodes:{}", self.nodes.len());
        loop {
            let mut ready = true;
            let mut maps = Vec::new();
            for node in &self.nodes {
                let info =
                    resp::bulk_string(&node.server.command(&["CLUSTER", "INFO"])?, "CLUSTER INFO")?;
                ready &= info.contains("cluster_state:ok") && info.contains(&want_known);
                maps.push(node.server.command(&["CLUSTER", "SLOTS"])?);
            }
            if ready && maps.windows(2).all(|w| same_slots(&w[0], &w[1])) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(TestkitError::Protocol(format!(
                    "cluster not ok after {FORM_TIMEOUT:?}"
                )));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The nodes, in the order of the announce ports given to [`Cluster::start`].
    pub fn nodes(&self) -> &[ClusterNode] {
        &self.nodes
    }

    /// One node, to stop or kill it ([`RedisServer::kill9`]).
    pub fn node_mut(&mut self, i: usize) -> Option<&mut ClusterNode> {
        self.nodes.get_mut(i)
    }

    /// The index of the node that owns `slot`, as the first node sees it.
    pub fn owner(&self, slot: u16) -> Result<usize, TestkitError> {
        let first = self.nodes.first().ok_or(TestkitError::NotRunning)?;
        let nodes = resp::bulk_string(
            &first.server.command(&["CLUSTER", "NODES"])?,
            "CLUSTER NODES",
        )?;
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let owns = fields.iter().skip(8).any(|range| {
                let mut ends = range.split('-').map(str::parse::<u16>);
                match (ends.next(), ends.next()) {
                    (Some(Ok(a)), Some(Ok(b))) => (a..=b).contains(&slot),
                    (Some(Ok(a)), None) => a == slot,
                    _ => false,
                }
            });
            if owns
                && let Some(i) = self
                    .nodes
                    .iter()
                    .position(|n| Some(&n.id.as_str()) == fields.first())
            {
                return Ok(i);
            }
        }
        Err(TestkitError::Protocol(format!("no node owns slot {slot}")))
    }

    /// Starts moving `slot` from node `from` to node `to`: the target imports it, the
    /// source migrates it. Until [`Cluster::finish_migration`], the source answers ASK for
    /// keys it no longer has.
    pub fn begin_migration(&self, slot: u16, from: usize, to: usize) -> Result<(), TestkitError> {
        let (src, dst) = (self.node(from)?, self.node(to)?);
        let slot = slot.to_string();
        ok(
            &dst.server,
            &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &src.id],
        )?;
        ok(
            &src.server,
            &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &dst.id],
        )?;
        Ok(())
    }

    /// Moves up to `count` keys of `slot` from node `from` to node `to` (MIGRATE, on the
    /// nodes' real ports); returns how many moved.
    pub fn migrate_keys(
        &self,
        slot: u16,
        from: usize,
        to: usize,
        count: usize,
    ) -> Result<usize, TestkitError> {
        let (src, dst) = (self.node(from)?, self.node(to)?);
        let reply = src.server.command(&[
            "CLUSTER",
            "GETKEYSINSLOT",
            &slot.to_string(),
            &count.to_string(),
        ])?;
        let keys = bulk_array(&reply)?;
        if keys.is_empty() {
            return Ok(0);
        }
        let port = dst.server.port().to_string();
        let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
        args.extend(keys.iter().map(String::as_str));
        ok(&src.server, &args)?;
        Ok(keys.len())
    }

    /// Ends the move of `slot` to node `to`: every node is told the new owner, the target
    /// first (as `redis-cli --cluster` does), then waits until they agree.
    pub fn finish_migration(&self, slot: u16, to: usize) -> Result<(), TestkitError> {
        let owner = self.node(to)?.id.clone();
        let slot_s = slot.to_string();
        ok(
            &self.node(to)?.server,
            &["CLUSTER", "SETSLOT", &slot_s, "NODE", &owner],
        )?;
        for (i, node) in self.nodes.iter().enumerate() {
            if i != to {
                ok(
                    &node.server,
                    &["CLUSTER", "SETSLOT", &slot_s, "NODE", &owner],
                )?;
            }
        }
        self.wait_ok()
    }

    /// Moves `slot` with all its keys from node `from` to node `to` at once.
    pub fn move_slot(&self, slot: u16, from: usize, to: usize) -> Result<(), TestkitError> {
        self.begin_migration(slot, from, to)?;
        while self.migrate_keys(slot, from, to, 100)? > 0 {}
        self.finish_migration(slot, to)
    }

    fn node(&self, i: usize) -> Result<&ClusterNode, TestkitError> {
        self.nodes
            .get(i)
            .ok_or_else(|| TestkitError::Protocol(format!("no cluster node {i}")))
    }
}

/// What a node tells clients about where to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Announce {
    /// `cluster-announce-port`: clients are sent to `127.0.0.1:<port>`. Redis uses the
    /// announced port for replication too, so a replica of such a node syncs through
    /// whatever listens there (a moat refuses SYNC): for primaries-only clusters.
    Port(u16),
    /// `cluster-announce-hostname` with `cluster-preferred-endpoint-type hostname`: clients
    /// are sent to `<host>:<the node's own port>`, while the nodes and replicas keep using
    /// `127.0.0.1` and the real ports. A moat then listens on `<host>` with the node's port.
    Host(String),
}

/// Starts one cluster-enabled server announcing itself as `announce` says to clients and
/// its real bus port to the other nodes.
fn start_node(announce: &Announce) -> Result<ClusterNode, TestkitError> {
    let bus_port = free_port();
    let mut builder = RedisServer::builder()
        .config("cluster-enabled yes")
        .config("cluster-config-file nodes.conf")
        .config("cluster-node-timeout 5000")
        .config(format!("cluster-port {bus_port}"))
        .config("cluster-announce-ip 127.0.0.1")
        .config(format!("cluster-announce-bus-port {bus_port}"));
    builder = match announce {
        Announce::Port(port) => builder.config(format!("cluster-announce-port {port}")),
        Announce::Host(host) => builder
            .config(format!("cluster-announce-hostname {host}"))
            .config("cluster-preferred-endpoint-type hostname"),
    };
    let server = builder.start()?;
    let id = resp::bulk_string(&server.command(&["CLUSTER", "MYID"])?, "CLUSTER MYID")?;
    let announce_port = match announce {
        Announce::Port(port) => *port,
        Announce::Host(_) => server.port(),
    };
    Ok(ClusterNode {
        server,
        announce_port,
        bus_port,
        id,
    })
}

/// Runs a command that must answer `+OK`.
fn ok(server: &RedisServer, args: &[&str]) -> Result<(), TestkitError> {
    resp::expect_ok(&server.command(args)?, args.first().copied().unwrap_or(""))
}

/// Two CLUSTER SLOTS replies name the same ranges and owners (the order of entries aside).
fn same_slots(a: &[u8], b: &[u8]) -> bool {
    // Each reply lists ranges with their nodes; sorting the lines compares them as sets.
    let lines = |r: &[u8]| {
        let mut l: Vec<String> = String::from_utf8_lossy(r)
            .lines()
            .map(str::to_owned)
            .collect();
        l.sort();
        l
    };
    lines(a) == lines(b)
}

/// A flat RESP array of bulk strings (`*N`, then `$len` / data pairs).
fn bulk_array(reply: &[u8]) -> Result<Vec<String>, TestkitError> {
    let text = String::from_utf8_lossy(reply);
    let bad = || TestkitError::Protocol(format!("not an array of bulk strings: {text:?}"));
    let mut lines = text.split("\r\n");
    let n: usize = lines
        .next()
        .and_then(|l| l.strip_prefix('*'))
        .and_then(|n| n.parse().ok())
        .ok_or_else(bad)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        lines
            .next()
            .filter(|l| l.starts_with('$'))
            .ok_or_else(bad)?;
        out.push(lines.next().ok_or_else(bad)?.to_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"));
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
        assert_eq!(key_slot(key_in_slot("k", 7).as_bytes()), 7);
    }

    #[test]
    fn bulk_arrays_parse() {
        assert_eq!(
            bulk_array(b"*2\r\n$1\r\na\r\n$2\r\nbc\r\n").unwrap(),
            vec!["a".to_string(), "bc".to_string()]
        );
        assert!(bulk_array(b"*0\r\n").unwrap().is_empty());
        assert!(bulk_array(b"-ERR x\r\n").is_err());
    }

    #[test]
    fn a_three_node_cluster_forms_and_moves_a_slot() {
        let ports = [free_port(), free_port(), free_port()];
        let cluster = Cluster::start(&ports).unwrap();
        let slot = key_slot(b"foo");
        let from = cluster.owner(slot).unwrap();
        let to = (from + 1) % 3;
        let src = &cluster.nodes()[from].server;
        resp::expect_ok(&src.command(&["SET", "foo", "bar"]).unwrap(), "SET").unwrap();
        cluster.move_slot(slot, from, to).unwrap();
        assert_eq!(cluster.owner(slot).unwrap(), to);
        let dst = &cluster.nodes()[to].server;
        assert_eq!(dst.command(&["GET", "foo"]).unwrap(), b"$3\r\nbar\r\n");
        // The old owner redirects to the new one's announced port.
        let moved = String::from_utf8(src.command(&["GET", "foo"]).unwrap()).unwrap();
        assert_eq!(moved, format!("-MOVED {slot} 127.0.0.1:{}\r\n", ports[to]));
    }
}
