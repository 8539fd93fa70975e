//! Moat's own nftables table (`[kernel] nftables = true`), inside a network namespace the
//! test creates and deletes: the host's ruleset is never touched. Skipped, with a message,
//! where the machine cannot create a namespace or has no `nft`.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use moat_proxy::Config;
use moat_testkit::RedisServer;
use socket2::{Domain, Socket, Type};

/// A network namespace of this test's own, deleted on drop (even when the test fails).
struct Netns(String);

impl Netns {
    fn create() -> Result<Netns, String> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "moat-nft-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        sh(&["ip", "netns", "add", &name])?;
        let ns = Netns(name);
        sh(&["ip", "-n", &ns.0, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Runs `f` on a thread that entered the namespace; the threads and processes it
    /// starts (moat's workers, redis-server, nft) live there too.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = std::fs::File::open(format!("/run/netns/{}", self.0))
                    .expect("the namespace's file");
                rustix::thread::move_into_link_name_space(
                    file.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .expect("setns into the test's namespace");
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.0]);
    }
}

fn sh(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The namespace, or None (after saying why) where the machine cannot run this test.
fn netns_or_skip() -> Option<Netns> {
    if let Err(e) = sh(&["nft", "--version"]) {
        eprintln!("SKIPPED: no nft command ({e}); install nftables");
        return None;
    }
    let ns = match Netns::create() {
        Ok(ns) => ns,
        Err(e) => {
            eprintln!("SKIPPED: cannot create a network namespace ({e})");
            return None;
        }
    };
    // A kernel without nftables, or a container that refuses it even in a namespace.
    let probe = |verb: &str| {
        sh(&[
            "ip",
            "netns",
            "exec",
            &ns.0,
            "nft",
            verb,
            "table",
            "inet",
            "moatprobe",
        ])
    };
    if let Err(e) = probe("add").and_then(|_| probe("delete")) {
        eprintln!("SKIPPED: nft does not work in a network namespace here ({e})");
        return None;
    }
    Some(ns)
}

/// The elements of set `set` of table `table` (as nft prints them) with their timeouts.
fn elements(table: &str, set: &str) -> Vec<(String, Option<u64>)> {
    let text = sh(&["nft", "-j", "list", "set", "inet", table, set]).expect("the set exists");
    let json: serde_json::Value = serde_json::from_str(&text).expect("nft -j prints JSON");
    let mut out = Vec::new();
    for item in json["nftables"].as_array().into_iter().flatten() {
        for e in item["set"]["elem"].as_array().into_iter().flatten() {
            let (val, timeout) = match e.get("elem") {
                Some(inner) => (&inner["val"], inner["timeout"].as_u64()),
                None => (e, None),
            };
            let val = match val.get("prefix") {
                Some(p) => format!("{}/{}", p["addr"].as_str().unwrap_or("?"), p["len"]),
                None => val.as_str().unwrap_or("?").to_string(),
            };
            out.push((val, timeout));
        }
    }
    out
}

fn table_exists(table: &str) -> bool {
    sh(&["nft", "list", "table", "inet", table]).is_ok()
}

/// Waits (bounded) until `cond` holds.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..400 {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("never happened: {what}");
}

/// A connection to `to` from source address `from`, or the error (a timeout when the
/// kernel drops the SYN).
fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(from, 0).into())?;
    socket.connect_timeout(&to.into(), Duration::from_millis(700))?;
    Ok(socket.into())
}

#[test]
fn bans_become_elements_with_timeouts_and_the_table_goes_at_exit() {
    let Some(ns) = netns_or_skip() else {
        return;
    };
    const TABLE: &str = "moattest";
    ns.run(|| {
        // A leftover of a crash: moat replaces it.
        sh(&["nft", "add", "table", "inet", TABLE]).expect("nft works in the namespace");
        sh(&[
            "nft",
            "add",
            "set",
            "inet",
            TABLE,
            "leftover",
            "{ type ipv4_addr; }",
        ])
        .expect("leftover set");
        let redis = RedisServer::start().expect("redis-server starts");
        let mut config = Config::default();
        config.proxy.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.backend.address = redis.addr();
        config.kernel.nftables = true;
        config.kernel.nftables_table = TABLE.into();
        config.guard.deny = vec!["127.66.0.0/16".parse().expect("net")];
        let moat = moat_proxy::start(config).expect("moat starts");
        let addr = moat.local_addr();

        let listing = sh(&["nft", "list", "table", "inet", TABLE]).expect("moat's table");
        assert!(
            !listing.contains("leftover"),
            "the leftover stayed:\n{listing}"
        );
        assert!(
            listing.contains(&format!("tcp dport {} jump sources", addr.port())),
            "{listing}"
        );
        assert_eq!(
            elements(TABLE, "deny4"),
            [("127.66.0.0/16".to_string(), None)]
        );
        assert!(elements(TABLE, "banned4").is_empty());

        let banned: IpAddr = "127.9.9.9".parse().expect("ip");
        let other: IpAddr = "127.9.9.8".parse().expect("ip");
        assert!(connect_from(banned, addr).is_ok(), "not banned yet");
        assert!(moat.guard().ban(
            "127.9.9.9/32".parse().expect("net"),
            Duration::from_secs(600),
            Instant::now()
        ));
        eventually("the ban is an element of banned4", || {
            !elements(TABLE, "banned4").is_empty()
        });
        let elems = elements(TABLE, "banned4");
        assert_eq!(elems.len(), 1, "{elems:?}");
        assert_eq!(elems[0].0, "127.9.9.9");
        let timeout = elems[0].1.expect("the element has a timeout");
        assert!((590..=600).contains(&timeout), "timeout {timeout}s");
        eventually("the gauge counts the element", || {
            moat.control().snapshot().gauge("kernel_nft_elements") == 1
        });
        // The kernel drops the banned source's SYN: its connect never completes; another
        // source still gets in.
        let err = connect_from(banned, addr).expect_err("the kernel drops a banned source");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
        assert!(connect_from(other, addr).is_ok());
        assert!(
            connect_from("127.66.1.1".parse().expect("ip"), addr).is_err(),
            "denied"
        );

        assert!(moat.guard().unban("127.9.9.9/32".parse().expect("net")));
        eventually("the element is gone after the unban", || {
            elements(TABLE, "banned4").is_empty()
        });
        assert!(connect_from(banned, addr).is_ok(), "unbanned");

        // A reload that changes the deny list rebuilds the table; bans in force return.
        assert!(moat.guard().ban(
            "127.9.9.0/24".parse().expect("net"),
            Duration::from_secs(300),
            Instant::now()
        ));
        eventually("the subnet ban is an element of banned_nets4", || {
            elements(TABLE, "banned_nets4").len() == 1
        });
        let err = connect_from("127.9.9.5".parse().expect("ip"), addr)
            .expect_err("the kernel drops a banned network's source");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
        let mut reloaded = (*moat.control().config()).clone();
        reloaded.guard.deny = vec!["127.77.0.0/16".parse().expect("net")];
        moat.control().reload(reloaded).expect("reload");
        eventually("the new deny list is in the table", || {
            elements(TABLE, "deny4") == [("127.77.0.0/16".to_string(), None)]
        });
        eventually("the ban is pushed again after the rebuild", || {
            elements(TABLE, "banned_nets4")
                .iter()
                .map(|e| e.0.as_str())
                .eq(["127.9.9.0/24"])
        });
        assert_eq!(moat.control().snapshot().counter("kernel_nft_failures"), 0);

        moat.shutdown();
        assert!(!table_exists(TABLE), "the table outlived moat");
        drop(redis);
    });
}

#[test]
fn a_table_name_nft_would_misread_is_refused() {
    let mut config = Config::default();
    config.kernel.nftables_table = "moat; flush ruleset".into();
    let err = config.validate().expect_err("refused");
    assert!(err.to_string().contains("kernel.nftables_table"), "{err}");
}

#[test]
fn when_nft_refuses_moat_logs_it_and_serves_on() {
    let Some(ns) = netns_or_skip() else {
        return;
    };
    ns.run(|| {
        use std::io::{Read, Write};
        let redis = RedisServer::start().expect("redis-server starts");
        let mut config = Config::default();
        config.proxy.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.backend.address = redis.addr();
        config.kernel.nftables = true;
        // A plain identifier moat accepts, but a keyword nft will not take as a table name.
        config.kernel.nftables_table = "counter".into();
        let moat = moat_proxy::start(config).expect("moat starts without its table");
        assert_eq!(moat.control().snapshot().counter("kernel_nft_failures"), 1);
        assert_eq!(moat.control().snapshot().gauge("kernel_nft_elements"), 0);
        let tables = sh(&["nft", "list", "tables"]).expect("nft lists");
        assert!(tables.trim().is_empty(), "{tables}");
        // Serving, and the guard still refuses a banned source itself.
        let mut client = TcpStream::connect(moat.local_addr()).expect("connects");
        client.write_all(b"*1\r\n$4\r\nPING\r\n").expect("write");
        let mut reply = [0u8; 7];
        client.read_exact(&mut reply).expect("reply");
        assert_eq!(&reply, b"+PONG\r\n");
        assert!(moat.guard().ban(
            "127.9.9.9/32".parse().expect("net"),
            Duration::from_secs(60),
            Instant::now()
        ));
        let mut refused = connect_from("127.9.9.9".parse().expect("ip"), moat.local_addr())
            .expect("accepted by the kernel, refused by moat");
        let mut line = String::new();
        let _ = refused.read_to_string(&mut line);
        assert!(line.starts_with("-ERR moat"), "{line:?}");
        moat.shutdown();
    });
}

#[test]
fn a_hundred_thousand_bans_fill_the_set_at_a_bounded_pace() {
    let Some(ns) = netns_or_skip() else {
        return;
    };
    const TABLE: &str = "moatmany";
    ns.run(|| {
        use std::io::{Read, Write};
        let redis = RedisServer::start().expect("redis-server starts");
        let mut config = Config::default();
        config.proxy.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.backend.address = redis.addr();
        config.kernel.nftables = true;
        config.kernel.nftables_table = TABLE.into();
        config.guard.ban_capacity = 100_000;
        let moat = moat_proxy::start(config).expect("moat starts");
        let start = Instant::now();
        for i in 0..100_000u32 {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            let net = moat_guard::IpNet::new(ip.into(), 32).expect("net");
            assert!(moat.guard().ban(net, Duration::from_secs(600), start));
        }
        let banned_in = start.elapsed();
        let elements = || moat.control().snapshot().gauge("kernel_nft_elements");
        eventually("a few batches are in", || elements() >= 3_000);
        let filling = start.elapsed();
        // Still serving while the sync works through the rest.
        let mut client = TcpStream::connect(moat.local_addr()).expect("connects");
        client.write_all(b"*1\r\n$4\r\nPING\r\n").expect("write");
        let mut reply = [0u8; 7];
        client.read_exact(&mut reply).expect("reply");
        assert_eq!(&reply, b"+PONG\r\n");
        let in_set = sh(&["nft", "-j", "list", "set", "inet", TABLE, "banned4"])
            .expect("the set")
            .matches("\"elem\": {")
            .count();
        let gauge = elements();
        assert!(
            in_set <= gauge as usize && in_set >= 3_000,
            "{in_set} vs {gauge}"
        );
        assert_eq!(moat.control().snapshot().counter("kernel_nft_failures"), 0);
        eprintln!(
            "100,000 bans issued in {banned_in:?}; {in_set} elements in the set {filling:?} \
             after the first ban"
        );
        moat.shutdown();
        assert!(!table_exists(TABLE));
    });
}

#[test]
fn a_source_over_twice_the_guard_rate_meets_the_kernel() {
    let Some(ns) = netns_or_skip() else {
        return;
    };
    ns.run(|| {
        let redis = RedisServer::start().expect("redis-server starts");
        let mut config = Config::default();
        config.proxy.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.backend.address = redis.addr();
        config.kernel.nftables = true;
        config.kernel.nftables_table = "moatrate".into();
        // nft: 2 new connections a second, burst 2, per address.
        config.guard.ip_rate = 1.0;
        config.guard.ip_burst = 1;
        let moat = moat_proxy::start(config).expect("moat starts");
        let source: IpAddr = "127.8.8.8".parse().expect("ip");
        let mut dropped = 0;
        for _ in 0..10 {
            match connect_from(source, moat.local_addr()) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => dropped += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(dropped > 0, "no SYN of 10 quick connects was dropped");
        // Trusted sources are exempt.
        for _ in 0..10 {
            TcpStream::connect(moat.local_addr()).expect("trusted connects");
        }
        moat.shutdown();
    });
}
