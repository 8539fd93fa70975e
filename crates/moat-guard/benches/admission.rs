//! Microbenchmarks of the guard's admission decision with its tables full: admitting a
//! known source, admitting a new one (which evicts the least recently seen), refusing by
//! rate and refusing a banned source. Every accepted socket pays for one of these under
//! the guard's lock, so they bound what a flood costs moat per connection.

#![allow(missing_docs)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use ipnet::IpNet;
use moat_guard::{Guard, GuardConfig};

/// The `i`th address of 10.0.0.0/8 (not trusted by default).
fn addr(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (i & 0x00ff_ffff)))
}

/// A guard whose source table is full: `table_capacity` distinct sources admitted once
/// (and closed) at `start`.
fn full_guard(config: GuardConfig, start: Instant) -> std::sync::Arc<Guard> {
    let n = config.table_capacity as u32;
    let guard = Guard::new(config);
    for i in 0..n {
        // Spread over time so no subnet's rate refuses the filling admissions.
        let _ = guard.admit(addr(i), start + Duration::from_millis(u64::from(i)));
    }
    guard
}

fn admission(c: &mut Criterion) {
    let start = Instant::now();
    let config = GuardConfig {
        // Refusals by rate would otherwise turn into strikes, then bans.
        strikes_to_ban: u32::MAX,
        ..GuardConfig::default()
    };
    let filled = start + Duration::from_secs(3600);
    let guard = full_guard(config.clone(), start);
    let mut group = c.benchmark_group("admit");

    // One known source, its rate refilled by advancing the clock a second per attempt.
    let mut t = filled;
    group.bench_function("admit_known_source", |b| {
        b.iter(|| {
            t += Duration::from_secs(1);
            black_box(guard.admit(addr(7), t).is_ok())
        })
    });

    // A stream of sources never seen: each one evicts the least recently seen entry.
    let mut next = config.table_capacity as u32;
    group.bench_function("admit_new_source_evicting", |b| {
        b.iter(|| {
            next = next.wrapping_add(1);
            t += Duration::from_millis(20);
            black_box(guard.admit(addr(next), t).is_ok())
        })
    });

    // One source hammering with the clock standing still: past its burst, every attempt
    // is refused by its rate.
    let hammer = addr(9);
    for _ in 0..1000 {
        let _ = guard.admit(hammer, t);
    }
    group.bench_function("refuse_ip_rate", |b| {
        b.iter(|| black_box(guard.admit(hammer, t).is_err()))
    });

    let banned = addr(11);
    guard.ban(IpNet::from(banned), Duration::from_secs(3600), t);
    group.bench_function("refuse_banned", |b| {
        b.iter(|| black_box(guard.admit(banned, t).is_err()))
    });
    group.finish();
}

criterion_group!(benches, admission);
criterion_main!(benches);
