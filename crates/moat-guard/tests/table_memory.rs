//! What the guard's per-source memory costs once its tables are full: fills the source and
//! subnet tables (and then the ban table) from more distinct addresses than they hold, and
//! reads this process's RSS growth. The figure per tracked source is what
//! `moat.example.toml` quotes for `table_capacity`; the bound below catches an entry that
//! grows by accident. nextest runs each test in its own process, so nothing else allocates.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use moat_guard::{Guard, GuardConfig, IpNet};

/// Resident memory of this process, in bytes (Linux), or `None` where /proc is unreadable.
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The `i`th of 2^24 addresses of 10.0.0.0/8, consecutive `i` in different /24s so every
/// subnet's rate stays low and the subnet table fills too.
fn spread(i: u32) -> IpAddr {
    let i = i & 0x00ff_ffff;
    IpAddr::V4(Ipv4Addr::from(
        0x0a00_0000 | ((i & 0xffff) << 8) | (i >> 16),
    ))
}

#[test]
fn full_tables_cost_what_the_docs_say_per_source() {
    let Some(before) = rss_bytes() else {
        eprintln!("no /proc/self/status: nothing to measure");
        return;
    };
    let config = GuardConfig::default();
    let capacity = config.table_capacity;
    let bans = config.ban_capacity;
    let guard = Guard::new(config);
    let start = Instant::now();
    let mut now = start;
    // Twice the capacity: every table is full and has evicted, as under a long flood.
    for i in 0..(2 * capacity as u32) {
        now += Duration::from_millis(1);
        drop(guard.admit(spread(i), now));
    }
    let sizes = guard.table_sizes();
    assert_eq!(sizes[0], capacity, "the source table is full");
    let after_sources = rss_bytes().unwrap_or(before);
    for i in 0..bans as u32 {
        guard.ban(IpNet::from(spread(i)), Duration::from_secs(3600), now);
    }
    let after_bans = rss_bytes().unwrap_or(after_sources);

    let per_source = after_sources.saturating_sub(before) as f64 / capacity as f64;
    let per_ban = after_bans.saturating_sub(after_sources) as f64 / bans as f64;
    let total = after_bans.saturating_sub(before) as f64;
    println!(
        "tables {sizes:?}: {per_source:.0} B of RSS per tracked source (sources and subnets \
         tables, {capacity} sources), {per_ban:.0} B per ban ({bans} bans), {:.1} MiB in all, \
         {:.0} B per source with the bans",
        total / 1048576.0,
        total / capacity as f64
    );
    // Measured 2026-12-07: see docs/performance.md. Generous, so allocator changes pass,
    // while an entry that doubles fails.
    assert!(per_source < 400.0, "{per_source:.0} B per source");
}
