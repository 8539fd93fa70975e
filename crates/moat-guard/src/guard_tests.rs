//! The guard's rules under a fake clock: each test fails if its rule is removed.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::{Event, Guard, GuardConfig, IpNet, Reject};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn config() -> GuardConfig {
    GuardConfig {
        ip_rate: 10.0,
        ip_burst: 5,
        subnet_rate: 50.0,
        subnet_burst: 20,
        max_per_ip: 4,
        max_per_subnet: 10,
        max_clients: 20,
        reserved_for_trusted: 5,
        high_water: 20,
        strikes_to_ban: 3,
        ban_jitter: 0.0,
        ..GuardConfig::default()
    }
}

/// Seconds after a fixed start, so tests never sleep.
struct Clock(Instant);

impl Clock {
    fn at(&self, ms: u64) -> Instant {
        self.0 + Duration::from_millis(ms)
    }
}

fn clock() -> Clock {
    Clock(Instant::now())
}

#[test]
fn deny_and_allow_lists() {
    let g = Guard::new(GuardConfig {
        deny: vec!["10.0.0.0/8".parse().unwrap()],
        ..config()
    });
    let t = clock();
    assert_eq!(
        g.admit(ip("10.1.1.1"), t.at(0)).unwrap_err(),
        Reject::Denied
    );
    assert!(g.admit(ip("11.1.1.1"), t.at(0)).is_ok());

    let g = Guard::new(GuardConfig {
        allow: vec!["192.168.0.0/16".parse().unwrap()],
        ..config()
    });
    assert_eq!(
        g.admit(ip("11.1.1.1"), t.at(0)).unwrap_err(),
        Reject::Denied
    );
    assert!(g.admit(ip("192.168.3.4"), t.at(0)).is_ok());
    // Trusted networks pass a restrictive allow list.
    assert!(g.admit(ip("127.0.0.1"), t.at(0)).is_ok());
}

#[test]
fn per_ip_rate_limits_a_flood_but_not_a_neighbour() {
    let g = Guard::new(GuardConfig {
        strikes_to_ban: 1000,
        ..config()
    });
    let t = clock();
    let mut admitted = 0;
    for _ in 0..50 {
        if let Ok(ticket) = g.admit(ip("127.1.0.1"), t.at(0)) {
            admitted += 1;
            drop(ticket);
        }
    }
    assert_eq!(admitted, 5, "only the burst");
    assert_eq!(
        g.admit(ip("127.1.0.1"), t.at(10)).unwrap_err(),
        Reject::IpRate
    );
    // Another address in the same subnet is unaffected by the first one's rate.
    assert!(g.admit(ip("127.1.0.2"), t.at(10)).is_ok());
    // After a pause, the flooder gets its rate back.
    assert!(g.admit(ip("127.1.0.1"), t.at(10_000)).is_ok());
}

#[test]
fn subnet_rate_catches_many_addresses_each_under_their_own_rate() {
    let g = Guard::new(GuardConfig {
        strikes_to_ban: 1000,
        ..config()
    });
    let t = clock();
    let mut refused = 0;
    for i in 0..100u32 {
        let addr = ip(&format!("127.2.0.{}", i % 250 + 1));
        match g.admit(addr, t.at(u64::from(i))) {
            Ok(ticket) => drop(ticket),
            Err(Reject::SubnetRate) => refused += 1,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert!(refused >= 70, "subnet burst 20: {refused} refused");
    // A different /24 is fine.
    assert!(g.admit(ip("127.3.0.1"), t.at(100)).is_ok());
}

#[test]
fn concurrency_caps_per_ip_and_subnet() {
    let g = Guard::new(GuardConfig {
        ip_rate: 1000.0,
        ip_burst: 1000,
        subnet_rate: 1000.0,
        subnet_burst: 1000,
        strikes_to_ban: 1000,
        ..config()
    });
    let t = clock();
    let held: Vec<_> = (0..4)
        .map(|_| g.admit(ip("127.1.0.1"), t.at(0)).unwrap())
        .collect();
    assert_eq!(
        g.admit(ip("127.1.0.1"), t.at(0)).unwrap_err(),
        Reject::TooManyFromIp
    );
    let more: Vec<_> = (2..8)
        .map(|i| g.admit(ip(&format!("127.1.0.{i}")), t.at(0)).unwrap())
        .collect();
    assert_eq!(
        g.admit(ip("127.1.0.9"), t.at(0)).unwrap_err(),
        Reject::TooManyFromSubnet
    );
    drop(held);
    assert!(
        g.admit(ip("127.1.0.1"), t.at(0)).is_ok(),
        "tickets give their place back"
    );
    drop(more);
    assert_eq!(g.clients(), 0);
}

#[test]
fn global_cap_keeps_a_reserve_for_trusted_networks() {
    let g = Guard::new(GuardConfig {
        ip_rate: 1000.0,
        ip_burst: 1000,
        subnet_rate: 1000.0,
        subnet_burst: 1000,
        ..config()
    });
    let t = clock();
    let held: Vec<_> = (0..15)
        .map(|i| g.admit(ip(&format!("10.0.{i}.1")), t.at(0)).unwrap())
        .collect();
    assert_eq!(g.admit(ip("10.9.9.9"), t.at(0)).unwrap_err(), Reject::Full);
    let trusted: Vec<_> = (0..5)
        .map(|_| g.admit(ip("127.0.0.1"), t.at(0)).unwrap())
        .collect();
    assert_eq!(g.admit(ip("127.0.0.1"), t.at(0)).unwrap_err(), Reject::Full);
    assert_eq!(g.clients(), 20);
    drop((held, trusted));
}

#[test]
fn strikes_ban_and_bans_escalate() {
    let g = Guard::new(config());
    let t = clock();
    let src = ip("127.5.0.1");
    for i in 0..3 {
        g.record(src, Event::AuthFailed, t.at(i));
    }
    match g.admit(src, t.at(10)) {
        Err(Reject::Banned(left)) => assert_eq!(left.as_secs(), 59),
        other => panic!("expected a ban, got {other:?}"),
    }
    // The first ban lasts ban_time (60s); it is over after that.
    let after = 61_000;
    let ticket = g.admit(src, t.at(after)).expect("ban over");
    drop(ticket);
    // A second offence bans for twice as long; requests left unfinished are offences too.
    for (i, event) in [
        Event::ProtocolError,
        Event::SlowRequest,
        Event::ProtocolError,
    ]
    .into_iter()
    .enumerate()
    {
        g.record(src, event, t.at(after + 1 + i as u64));
    }
    match g.admit(src, t.at(after + 10)) {
        Err(Reject::Banned(left)) => assert!(left >= Duration::from_secs(119), "{left:?}"),
        other => panic!("expected a longer ban, got {other:?}"),
    }
}

#[test]
fn strikes_outside_the_window_do_not_add_up() {
    let g = Guard::new(config());
    let t = clock();
    let src = ip("127.5.0.2");
    for i in 0..10u64 {
        g.record(src, Event::Closed { commands: 0 }, t.at(i * 31_000));
    }
    assert!(
        g.admit(src, t.at(400_000)).is_ok(),
        "two strikes per 60s window never ban"
    );
}

#[test]
fn a_full_table_admits_when_room_is_made_and_counts_the_slot_free_at_once() {
    let wide = GuardConfig {
        ip_rate: 1000.0,
        ip_burst: 1000,
        subnet_rate: 1000.0,
        subnet_burst: 1000,
        ..config()
    };
    let g = Guard::new(wide.clone());
    let t = clock();
    let mut held: Vec<_> = (0..15)
        .map(|i| g.admit(ip(&format!("10.0.{i}.1")), t.at(0)).unwrap())
        .collect();
    assert_eq!(g.admit(ip("10.9.9.9"), t.at(0)).unwrap_err(), Reject::Full);
    // Each eviction admits exactly one more, though the evicted tickets are still held.
    for i in 0..3 {
        let addr = ip(&format!("10.8.0.{i}"));
        held.push(g.admit_making_room(addr, t.at(0), &mut || true).unwrap());
    }
    assert_eq!(
        g.clients(),
        18,
        "three evicted sessions still hold their tickets"
    );
    assert_eq!(
        g.admit(ip("10.7.0.1"), t.at(0)).unwrap_err(),
        Reject::Full,
        "without an eviction the table is full"
    );
    // The evicted sessions end: the count is back at the cap, with nothing pending.
    held.truncate(15);
    assert_eq!(g.clients(), 15);
    assert_eq!(g.admit(ip("10.7.0.2"), t.at(0)).unwrap_err(), Reject::Full);
    // Trusted clients may make room too, beyond the reserve.
    let trusted: Vec<_> = (0..5)
        .map(|_| g.admit(ip("127.0.0.1"), t.at(0)).unwrap())
        .collect();
    assert_eq!(g.admit(ip("127.0.0.1"), t.at(0)).unwrap_err(), Reject::Full);
    assert!(
        g.admit_making_room(ip("127.0.0.1"), t.at(0), &mut || true)
            .is_ok()
    );
    drop((held, trusted));

    // Above the high-water mark an unknown source waits, unless a slot is made for it.
    let g = Guard::new(GuardConfig {
        high_water: 12,
        ..wide
    });
    let held: Vec<_> = (0..12)
        .map(|i| g.admit(ip(&format!("10.0.{i}.1")), t.at(0)).unwrap())
        .collect();
    let mut offered = 0;
    let mut refuse = || {
        offered += 1;
        false
    };
    assert_eq!(
        g.admit_making_room(ip("10.9.9.1"), t.at(0), &mut refuse)
            .unwrap_err(),
        Reject::Shed
    );
    assert_eq!(offered, 1, "asked once, at the capacity check only");
    let made = g
        .admit_making_room(ip("10.9.9.2"), t.at(0), &mut || true)
        .unwrap();
    assert!(!made.over_high_water(), "its slot is already made");
    drop((held, made));
}

#[test]
fn an_eviction_is_a_strike() {
    let g = Guard::new(GuardConfig {
        strikes_to_ban: 2,
        ..config()
    });
    let t = clock();
    let src = ip("127.5.0.9");
    g.record(src, Event::Evicted, t.at(0));
    g.record(src, Event::Evicted, t.at(1));
    assert!(matches!(
        g.admit(src, t.at(2)).unwrap_err(),
        Reject::Banned(_)
    ));
}

#[test]
fn silent_connections_and_rejections_are_strikes_but_served_ones_are_not() {
    let g = Guard::new(GuardConfig {
        strikes_to_ban: 5,
        ..config()
    });
    let t = clock();
    let src = ip("127.5.0.3");
    for i in 0..10 {
        g.record(src, Event::Closed { commands: 3 }, t.at(i));
    }
    assert!(
        g.admit(src, t.at(20)).is_ok(),
        "connections that ran commands are fine"
    );
    // Hammering past the rate limit is itself a strike: the flooder ends up banned.
    let flooder = ip("127.5.0.4");
    let mut last = None;
    for i in 0..40 {
        last = Some(g.admit(flooder, t.at(100 + i)).map(drop));
    }
    assert!(matches!(last, Some(Err(Reject::Banned(_)))), "{last:?}");
}

#[test]
fn a_known_client_reconnecting_fast_is_rate_limited_but_never_banned() {
    let g = Guard::new(config());
    let t = clock();
    let app = ip("127.5.0.5");
    let stranger = ip("127.5.0.6");
    // The application ran real commands; the stranger never did.
    drop(g.admit(app, t.at(0)).unwrap());
    g.record(app, Event::Command, t.at(1));
    // Both then reconnect 50 times a second for 10 seconds (a client after a timeout
    // retries every command on a new connection), five times their rate of 10/s.
    let (mut app_ok, mut app_banned, mut stranger_banned) = (0, 0, 0);
    for i in 0..500u64 {
        let at = t.at(10 + i * 20);
        match g.admit(app, at) {
            Ok(ticket) => {
                app_ok += 1;
                g.record(app, Event::Command, at);
                drop(ticket);
            }
            Err(Reject::Banned(_)) => app_banned += 1,
            Err(_) => {}
        }
        if matches!(g.admit(stranger, at), Err(Reject::Banned(_))) {
            stranger_banned += 1;
        }
    }
    assert_eq!(app_banned, 0, "a known client is never banned for its pace");
    // Its rate's worth got through: 10/s over 10 s, plus the burst.
    assert!((100..=110).contains(&app_ok), "{app_ok}");
    assert!(stranger_banned > 0, "an unknown hammering source still is");
    // A known source's silent connections still strike.
    for i in 0..3 {
        g.record(app, Event::Closed { commands: 0 }, t.at(20_000 + i));
    }
    assert!(matches!(g.admit(app, t.at(20_010)), Err(Reject::Banned(_))));
}

#[test]
fn slow_readers_are_struck() {
    let g = Guard::new(config());
    let t = clock();
    let src = ip("127.5.0.7");
    for i in 0..3 {
        g.record(src, Event::SlowReader, t.at(i));
    }
    assert!(matches!(g.admit(src, t.at(10)), Err(Reject::Banned(_))));
}

#[test]
fn trusted_networks_are_never_banned() {
    let g = Guard::new(config());
    let t = clock();
    for i in 0..100 {
        g.record(ip("127.0.0.1"), Event::AuthFailed, t.at(i));
    }
    assert!(g.admit(ip("127.0.0.1"), t.at(200)).is_ok());
    assert!(!g.ban(
        "127.0.0.1/32".parse().unwrap(),
        Duration::from_secs(60),
        t.at(0)
    ));
}

#[test]
fn admin_bans_and_subnet_bans() {
    let g = Guard::new(config());
    let t = clock();
    let net: IpNet = "127.9.0.0/16".parse().unwrap();
    assert!(g.ban(net, Duration::from_secs(30), t.at(0)));
    assert!(matches!(
        g.admit(ip("127.9.4.4"), t.at(1)),
        Err(Reject::Banned(_))
    ));
    assert!(matches!(
        g.admit(ip("127.9.200.1"), t.at(1)),
        Err(Reject::Banned(_))
    ));
    assert!(
        g.admit(ip("127.10.0.1"), t.at(1)).is_ok(),
        "outside the /16"
    );
    assert_eq!(g.bans(t.at(1)).len(), 1);
    assert!(g.unban(net));
    assert!(g.bans(t.at(1)).is_empty());
    assert!(g.admit(ip("127.9.200.1"), t.at(2)).is_ok(), "unbanned");

    // A /24 ban covers every address in it.
    let net24: IpNet = "127.9.4.0/24".parse().unwrap();
    g.ban(net24, Duration::from_secs(30), t.at(0));
    assert!(matches!(
        g.admit(ip("127.9.4.4"), t.at(1)),
        Err(Reject::Banned(_))
    ));
    assert!(g.admit(ip("127.9.4.4"), t.at(31_000)).is_ok());
}

#[test]
fn automatic_subnet_ban_after_enough_banned_sources() {
    let g = Guard::new(GuardConfig {
        subnet_ban_after: 2,
        ..config()
    });
    let t = clock();
    for host in ["127.7.7.1", "127.7.7.2"] {
        for i in 0..3 {
            g.record(ip(host), Event::AuthFailed, t.at(i));
        }
    }
    assert!(
        matches!(g.admit(ip("127.7.7.200"), t.at(10)), Err(Reject::Banned(_))),
        "the whole /24 is banned once two of its sources are"
    );
}

#[test]
fn shedding_above_high_water_refuses_unknown_sources_first() {
    let g = Guard::new(GuardConfig {
        high_water: 10,
        ip_rate: 1000.0,
        ip_burst: 1000,
        subnet_rate: 1000.0,
        subnet_burst: 1000,
        ..config()
    });
    let t = clock();
    let known = ip("10.1.0.1");
    drop(g.admit(known, t.at(0)).unwrap());
    g.record(known, Event::Command, t.at(1));
    let held: Vec<_> = (0..10)
        .map(|i| g.admit(ip(&format!("10.2.{i}.1")), t.at(2)).unwrap())
        .collect();
    assert!(!g.over_high_water());
    assert_eq!(g.admit(ip("10.3.0.1"), t.at(3)).unwrap_err(), Reject::Shed);
    let ticket = g
        .admit(known, t.at(3))
        .expect("a source with a recent success still gets in");
    assert!(g.over_high_water());
    // Success is only "recent" for so long.
    drop(ticket);
    let much_later = t.at(3 + 601_000);
    assert_eq!(g.admit(known, much_later).unwrap_err(), Reject::Shed);
    drop(held);
}

#[test]
fn a_million_sources_stay_within_the_table_bounds() {
    let g = Guard::new(GuardConfig {
        table_capacity: 4096,
        ban_capacity: 1024,
        strikes_to_ban: 1,
        ..config()
    });
    let t = clock();
    for i in 0..1_000_000u32 {
        let addr = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        let now = t.at(u64::from(i / 1000));
        if let Ok(ticket) = g.admit(addr, now) {
            if i % 3 == 0 {
                // Every third source misbehaves and is banned.
                g.record(addr, Event::ProtocolError, now);
            }
            drop(ticket);
        }
    }
    let [sources, subnets, active_ip, active_subnet, bans] = g.table_sizes();
    assert!(sources <= 4096, "{sources}");
    assert!(subnets <= 1024, "{subnets}");
    assert_eq!((active_ip, active_subnet), (0, 0));
    assert!(bans <= 1024, "{bans}");
    assert_eq!(g.clients(), 0);
}

#[test]
fn reconfigure_applies_to_new_admissions_and_keeps_what_is_held() {
    let g = Guard::new(config());
    let t = clock();
    let held: Vec<_> = (0..3)
        .map(|i| g.admit(ip("11.1.1.1"), t.at(i * 200)).unwrap())
        .collect();
    g.reconfigure(GuardConfig {
        max_per_ip: 2,
        deny: vec!["12.0.0.0/8".parse().unwrap()],
        ..config()
    });
    assert_eq!(g.config().max_per_ip, 2);
    // Connections held stay counted; the lower cap refuses the next one.
    assert_eq!(g.clients(), 3);
    assert_eq!(
        g.admit(ip("11.1.1.1"), t.at(1000)).unwrap_err(),
        Reject::TooManyFromIp
    );
    assert_eq!(
        g.admit(ip("12.1.1.1"), t.at(1000)).unwrap_err(),
        Reject::Denied
    );
    drop(held);
    assert!(g.admit(ip("11.1.1.1"), t.at(2000)).is_ok());
}

#[test]
fn admin_bans_carry_their_reason_and_refuse_what_must_not_be_banned() {
    use crate::{BanError, BanReason};
    let g = Guard::new(config());
    let t = clock();
    let net = |s: &str| s.parse::<IpNet>().unwrap();
    let min = Duration::from_secs(60);
    let (banned, ban) = g
        .ban_admin(net("127.3.0.0/24"), min, "scraper", t.at(0))
        .expect("a plain /24");
    assert_eq!(banned, net("127.3.0.0/24"));
    assert_eq!(ban.reason, BanReason::Admin("scraper".into()));
    assert_eq!(ban.reason.label(), "admin");
    assert_eq!(ban.reason.note(), Some("scraper"));
    assert!(matches!(
        g.admit(ip("127.3.0.9"), t.at(1)),
        Err(Reject::Banned(_))
    ));
    // Banning again while it runs counts as a repeat.
    let (_, again) = g
        .ban_admin(net("127.3.0.0/24"), min, "", t.at(2))
        .expect("again");
    assert_eq!(again.repeat, 1);
    // An IPv4-mapped IPv6 address is banned as the IPv4 address.
    let (mapped, _) = g
        .ban_admin(net("::ffff:127.4.0.1/128"), min, "", t.at(0))
        .expect("mapped");
    assert_eq!(mapped, net("127.4.0.1/32"));
    assert_eq!(g.stats().bans_issued_admin, 3);
    assert_eq!(g.stats().bans_issued, 0);

    let refused = |n: &str, length: Duration, note: &str| {
        g.ban_admin(net(n), length, note, t.at(0))
            .expect_err("refused")
    };
    assert!(matches!(
        refused("127.0.0.1/32", min, ""),
        BanError::Trusted { .. }
    ));
    assert!(matches!(
        refused("127.0.0.0/8", min, ""),
        BanError::Trusted { .. }
    ));
    assert!(matches!(
        refused("10.0.0.1/24", min, ""),
        BanError::HostBits { .. }
    ));
    assert!(
        refused("10.0.0.1/24", min, "")
            .to_string()
            .contains("10.0.0.0/24")
    );
    assert!(matches!(
        refused("10.0.0.0/7", min, ""),
        BanError::TooWide { min: 8, .. }
    ));
    assert!(matches!(
        refused("0.0.0.0/32", min, ""),
        BanError::Unspecified { .. }
    ));
    assert!(matches!(
        refused("10.0.0.0/8", Duration::ZERO, ""),
        BanError::Length { .. }
    ));
    assert!(matches!(
        refused("10.0.0.0/8", Duration::from_secs(400 * 24 * 3600), ""),
        BanError::Length { .. }
    ));
    assert!(matches!(
        refused("10.0.0.0/8", min, &"x".repeat(300)),
        BanError::NoteTooLong { .. }
    ));
    // With loopback untrusted, this host's own loopback address still cannot be banned.
    let open = Guard::new(GuardConfig {
        trusted: Vec::new(),
        ..config()
    });
    assert!(matches!(
        open.ban_admin(net("127.0.0.1/32"), min, "", t.at(0)),
        Err(BanError::Loopback { .. })
    ));
    assert!(
        open.ban_admin(net("127.0.0.2/32"), min, "", t.at(0))
            .is_ok()
    );
    // Nothing refused reached the table.
    assert_eq!(g.bans(t.at(3)).len(), 2);
}

#[test]
fn strike_bans_say_so() {
    let g = Guard::new(config());
    let t = clock();
    for i in 0..3 {
        g.record(ip("127.8.0.1"), Event::AuthFailed, t.at(i));
    }
    let bans = g.bans(t.at(5));
    assert_eq!(bans.len(), 1);
    assert_eq!(bans[0].1.reason, crate::BanReason::Strikes);
    assert_eq!(g.stats().bans_issued, 1);
    assert_eq!(g.stats().bans_issued_admin, 0);
}

#[test]
fn top_sources_ranks_connections_and_refusals() {
    let g = Guard::new(config());
    let t = clock();
    let mut tickets = Vec::new();
    for (host, n) in [("127.1.0.1", 3), ("127.1.1.2", 1), ("127.1.2.3", 2)] {
        for i in 0..n {
            tickets.push(g.admit(ip(host), t.at(i * 200)).expect("admitted"));
        }
    }
    // 127.1.0.1 holds 3 of its 4; one more is fine, the next two are refused.
    tickets.push(g.admit(ip("127.1.0.1"), t.at(1000)).expect("fourth"));
    assert!(g.admit(ip("127.1.0.1"), t.at(1200)).is_err());
    assert!(g.admit(ip("127.1.0.1"), t.at(1400)).is_err());
    g.record(ip("127.1.9.9"), Event::ProtocolError, t.at(1500));

    let top = g.top_sources(2, t.at(1600));
    let conns: Vec<_> = top
        .by_connections
        .iter()
        .map(|s| (s.ip.to_string(), s.connections))
        .collect();
    assert_eq!(
        conns,
        [("127.1.0.1".to_string(), 4), ("127.1.2.3".to_string(), 2)]
    );
    let refused: Vec<_> = top
        .by_refusals
        .iter()
        .map(|s| (s.ip.to_string(), s.refusals, s.strikes))
        .collect();
    assert_eq!(
        refused,
        [
            ("127.1.0.1".to_string(), 2, 2),
            ("127.1.9.9".to_string(), 0, 1)
        ]
    );
    assert!(top.sources >= 4 && top.scanned == top.sources);
    // A streak ends after a quiet strike window.
    let later = g.top_sources(10, t.at(1600) + g.config().strike_window * 2);
    assert!(later.by_refusals.is_empty(), "{later:?}");
    assert_eq!(later.by_connections.len(), 3);
    assert!(g.top_sources(0, t.at(0)).by_connections.is_empty());
    drop(tickets);
    assert!(g.top_sources(10, t.at(2000)).by_connections.is_empty());
}

#[test]
fn a_full_table_counts_the_entries_it_drops() {
    let g = Guard::new(GuardConfig {
        table_capacity: 8,
        max_clients: 1000,
        high_water: 1000,
        max_per_subnet: 1000,
        subnet_rate: 1e6,
        subnet_burst: 1000,
        ..config()
    });
    let t = clock();
    // 8 sources fit; 8 more push 8 out. Subnets hold 2: the /24s of 10.0.0.x and 10.0.1.x.
    for i in 0..16u8 {
        drop(g.admit(ip(&format!("10.0.{}.{i}", i / 8)), t.at(0)));
    }
    let stats = g.stats();
    assert_eq!(stats.evictions, 8);
    let table = |name: &str| stats.tables.iter().find(|(n, _)| *n == name).unwrap().1;
    assert_eq!(table("sources"), 8);
    assert_eq!(table("subnets"), 2);
    assert_eq!(table("active_ips"), 0, "every ticket was given back");
    // A known source is no eviction.
    drop(g.admit(ip("10.0.1.15"), t.at(1000)));
    assert_eq!(g.stats().evictions, 8);
}

#[test]
fn the_ban_generation_moves_on_ban_unban_expiry_and_reconfigure() {
    let g = Guard::new(config());
    let t = clock();
    let g0 = g.ban_generation(t.at(0));
    assert_eq!(g.ban_generation(t.at(0)), g0, "nothing changed");
    let net: IpNet = "127.9.0.0/16".parse().unwrap();
    assert!(g.ban(net, Duration::from_secs(30), t.at(0)));
    let g1 = g.ban_generation(t.at(1000));
    assert_ne!(g1, g0);
    assert_eq!(g.ban_generation(t.at(2000)), g1);
    assert!(g.unban(net));
    let g2 = g.ban_generation(t.at(3000));
    assert_ne!(g2, g1);
    assert!(!g.unban(net), "nothing to lift");
    assert_eq!(g.ban_generation(t.at(3000)), g2);
    // A ban that ends is swept out, and that is a change too.
    assert!(g.ban(net, Duration::from_secs(5), t.at(4000)));
    let g3 = g.ban_generation(t.at(5000));
    assert_eq!(g.ban_generation(t.at(8000)), g3, "still running");
    let g4 = g.ban_generation(t.at(10000));
    assert_ne!(g4, g3, "ended");
    assert!(g.bans(t.at(10000)).is_empty());
    assert_eq!(g.ban_generation(t.at(11000)), g4);
    g.reconfigure(config());
    assert_ne!(g.ban_generation(t.at(11000)), g4);
}
