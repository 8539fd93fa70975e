//! Detector scenarios on synthetic series under a fake clock (a base `Instant` plus
//! offsets; nothing sleeps): steady load and slow ramps raise nothing, attacks raise the
//! right alert within a few polls and resolve after they end.

use std::time::{Duration, Instant};

use moat_watch::Sample;
use moat_watch::detect::{AlertId, DetectConfig, Detector, Event, Severity};
use moat_watch::sample::{ClientsSummary, HostSignals, MoatSignals, RedisSignals};

/// A synthetic Redis polled once a second: counters accumulate what the test sets.
struct Series {
    t0: Instant,
    secs: u64,
    total: u64,
    /// Fractional connections carried to the next poll.
    carry: f64,
    rejected: u64,
    overflows: u64,
    syn_drops: u64,
    connected: u64,
    maxclients: u64,
    fds: (u64, u64),
    reachable: bool,
    rng: u64,
    detector: Detector,
    events: Vec<(u64, Event)>,
}

impl Series {
    fn new() -> Self {
        Self {
            t0: Instant::now(),
            secs: 0,
            total: 1_000,
            carry: 0.0,
            rejected: 0,
            overflows: 0,
            syn_drops: 0,
            connected: 50,
            maxclients: 10_000,
            fds: (80, 10_032),
            reachable: true,
            rng: 0x9e37_79b9_7f4a_7c15,
            detector: Detector::new(DetectConfig::default()),
            events: Vec::new(),
        }
    }

    /// A deterministic uniform draw in [0, 1).
    fn uniform(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    fn sample(&self) -> Sample {
        let redis = if self.reachable {
            RedisSignals {
                connected_clients: Some(self.connected),
                maxclients: Some(self.maxclients),
                total_connections_received: Some(self.total),
                rejected_connections: Some(self.rejected),
                ..RedisSignals::default()
            }
        } else {
            RedisSignals::default()
        };
        Sample {
            at: self.t0 + Duration::from_secs(self.secs),
            redis_reachable: self.reachable,
            redis_refused: None,
            redis,
            host: HostSignals {
                listen_overflows: Some(self.overflows),
                reqq_full_drop: Some(self.syn_drops),
                fds: Some(self.fds),
                ..HostSignals::default()
            },
            clients: None,
            moat: None,
        }
    }

    /// One poll after a second of `rate` new connections per second (with +-30% noise).
    fn poll(&mut self, rate: f64) {
        self.secs += 1;
        let noisy = rate * (0.7 + 0.6 * self.uniform()) + self.carry;
        self.carry = noisy.fract();
        self.total += noisy as u64;
        let s = self.sample();
        for e in self.detector.observe(&s) {
            self.events.push((self.secs, e));
        }
    }

    fn run(&mut self, secs: u64, rate: f64) {
        for _ in 0..secs {
            self.poll(rate);
        }
    }

    fn ids(&self) -> Vec<(u64, AlertId, Option<Severity>)> {
        self.events
            .iter()
            .map(|(t, e)| match e {
                Event::Raised { id, severity, .. } => (*t, *id, Some(*severity)),
                Event::Resolved { id, .. } => (*t, *id, None),
            })
            .collect()
    }
}

#[test]
fn steady_workload_raises_nothing() {
    let mut s = Series::new();
    s.run(4 * 3600, 100.0);
    assert_eq!(s.events, vec![]);
    // The spike rule was judging all along, not warming up.
    let t = s.detector.spike().thresholds().unwrap();
    assert!((t.stats.median - 100.0).abs() < 5.0, "{t:?}");
}

#[test]
fn quiet_redis_with_a_few_connections_raises_nothing() {
    let mut s = Series::new();
    s.run(600, 0.2);
    // A burst of 10 connections in a second on a near-zero baseline: under the floor.
    s.run(1, 10.0);
    s.run(600, 0.2);
    assert_eq!(s.events, vec![]);
}

#[test]
fn slow_daily_ramp_raises_nothing() {
    let mut s = Series::new();
    s.run(600, 100.0);
    // Doubling every two hours, for six hours (x8), then back down over six hours.
    let ramp = 6 * 3600;
    for i in 0..ramp {
        s.poll(100.0 * 2f64.powf(i as f64 / 7200.0));
    }
    for i in 0..ramp {
        s.poll(800.0 * 0.5f64.powf(i as f64 / 7200.0));
    }
    assert_eq!(s.events, vec![]);
}

#[test]
fn flood_raises_one_spike_that_resolves() {
    let mut s = Series::new();
    s.run(1200, 100.0);
    let start = s.secs;
    s.run(30, 5_000.0);
    let end = s.secs;
    s.run(600, 100.0);
    let ids = s.ids();
    assert_eq!(ids.len(), 2, "{:?}", s.events);
    let (raised, id, sev) = ids[0];
    assert_eq!(
        (id, sev),
        (AlertId::ConnectionRateSpike, Some(Severity::Warning))
    );
    assert!(
        raised - start <= 4,
        "raised {}s after the start",
        raised - start
    );
    let (resolved, id, sev) = ids[1];
    assert_eq!((id, sev), (AlertId::ConnectionRateSpike, None));
    assert!(
        resolved > end && resolved - end <= 15,
        "resolved {}s after the end",
        resolved - end
    );
    let Event::Raised {
        value, threshold, ..
    } = &s.events[0].1
    else {
        panic!("not a raise");
    };
    assert!(value > threshold);
}

#[test]
fn a_second_flood_after_the_first_is_raised_again() {
    let mut s = Series::new();
    s.run(1200, 100.0);
    s.run(30, 5_000.0);
    s.run(300, 100.0);
    s.run(30, 5_000.0);
    s.run(300, 100.0);
    let spikes = s
        .ids()
        .iter()
        .filter(|(_, id, sev)| *id == AlertId::ConnectionRateSpike && sev.is_some())
        .count();
    assert_eq!(spikes, 2, "{:?}", s.events);
}

#[test]
fn hoard_raises_warning_then_critical_then_resolves() {
    let mut s = Series::new();
    s.run(600, 100.0);
    // A hoarder opens 200 connections a second and keeps them.
    while s.connected < 9_800 {
        s.connected += 200;
        s.run(1, 100.0 + 200.0);
    }
    s.run(30, 100.0);
    s.connected = 50;
    s.run(60, 100.0);
    let clients: Vec<_> = s
        .ids()
        .into_iter()
        .filter(|(_, id, _)| *id == AlertId::ClientsNearMax)
        .map(|(_, _, sev)| sev)
        .collect();
    assert_eq!(
        clients,
        vec![Some(Severity::Warning), Some(Severity::Critical), None],
        "{:?}",
        s.events
    );
}

#[test]
fn one_rejected_connection_raises_and_later_resolves() {
    let mut s = Series::new();
    s.run(120, 100.0);
    s.rejected += 1;
    s.run(1, 100.0);
    assert_eq!(
        s.ids(),
        vec![(121, AlertId::RejectedConnections, Some(Severity::Critical))]
    );
    s.run(120, 100.0);
    let ids = s.ids();
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[1].1, AlertId::RejectedConnections);
    assert_eq!(ids[1].2, None);
}

#[test]
fn listen_overflows_and_syn_drops_follow_netdata_thresholds() {
    let mut s = Series::new();
    s.run(120, 100.0);
    // One per minute: at the warning rate, not above it.
    for _ in 0..3 {
        s.overflows += 1;
        s.run(60, 100.0);
    }
    assert_eq!(s.events, vec![]);
    s.overflows += 3;
    s.syn_drops += 10;
    s.run(1, 100.0);
    let ids = s.ids();
    assert!(ids.contains(&(s.secs, AlertId::ListenOverflows, Some(Severity::Warning))));
    assert!(ids.contains(&(s.secs, AlertId::SynQueueDrops, Some(Severity::Critical))));
    s.run(120, 100.0);
    let resolved = s.ids().iter().filter(|(_, _, sev)| sev.is_none()).count();
    assert_eq!(resolved, 2, "{:?}", s.events);
}

#[test]
fn fds_near_limit_raises_and_resolves() {
    let mut s = Series::new();
    s.run(60, 100.0);
    s.fds = (9_100, 10_000);
    s.run(5, 100.0);
    s.fds = (100, 10_000);
    s.run(5, 100.0);
    let fds: Vec<_> = s.ids().into_iter().map(|(_, id, sev)| (id, sev)).collect();
    assert_eq!(
        fds,
        vec![
            (AlertId::FdsNearLimit, Some(Severity::Warning)),
            (AlertId::FdsNearLimit, None)
        ]
    );
}

#[test]
fn redis_restart_raises_nothing() {
    let mut s = Series::new();
    s.run(1200, 100.0);
    // Down for two polls (under the unreachable threshold), back with every counter at 0.
    s.reachable = false;
    s.run(2, 100.0);
    s.reachable = true;
    s.total = 0;
    s.rejected = 0;
    s.connected = 1;
    s.run(600, 100.0);
    assert_eq!(s.events, vec![]);
}

#[test]
fn reconnect_storm_after_a_restart_raises_nothing() {
    let mut s = Series::new();
    s.run(1200, 100.0);
    s.total = 0;
    // Every client reconnects within a few seconds, with backoff.
    s.run(3, 3_000.0);
    s.run(10, 500.0);
    s.run(600, 100.0);
    assert_eq!(s.events, vec![]);
    // The rule is judging again afterwards.
    s.run(30, 5_000.0);
    assert_eq!(s.ids().len(), 1, "{:?}", s.events);
}

#[test]
fn a_lasting_change_of_workload_ends_its_alert() {
    let mut s = Series::new();
    s.run(1200, 100.0);
    s.run(3600, 1_000.0);
    let ids = s.ids();
    assert_eq!(ids.len(), 2, "{:?}", s.events);
    assert_eq!(ids[1].2, None);
    // Within the freeze (a long window) plus half a window to move the median.
    assert!(ids[1].0 - 1200 <= 16 * 60, "{:?}", ids);
}

#[test]
fn unreachable_for_n_polls_raises_then_resolves() {
    let mut s = Series::new();
    s.run(600, 100.0);
    s.reachable = false;
    s.run(2, 100.0);
    assert_eq!(s.events, vec![]);
    s.run(1, 100.0);
    assert_eq!(
        s.ids(),
        vec![(603, AlertId::RedisUnreachable, Some(Severity::Critical))]
    );
    s.run(30, 100.0);
    s.reachable = true;
    s.run(5, 100.0);
    let ids = s.ids();
    assert_eq!(ids.len(), 2, "{:?}", s.events);
    assert_eq!((ids[1].1, ids[1].2), (AlertId::RedisUnreachable, None));
}

#[test]
fn empty_out_of_order_and_absurd_samples_do_not_panic() {
    let t0 = Instant::now();
    let mut d = Detector::new(DetectConfig::default());
    let empty = |at| Sample {
        at,
        redis_reachable: true,
        redis_refused: None,
        redis: RedisSignals::default(),
        host: HostSignals::default(),
        clients: None,
        moat: None,
    };
    assert_eq!(d.observe(&empty(t0 + Duration::from_secs(10))), vec![]);
    assert_eq!(d.observe(&empty(t0)), vec![]);
    let mut odd = empty(t0 + Duration::from_secs(11));
    odd.redis.connected_clients = Some(u64::MAX);
    odd.redis.maxclients = Some(0);
    odd.redis.total_connections_received = Some(u64::MAX);
    odd.host.fds = Some((5, 0));
    assert_eq!(d.observe(&odd), vec![]);
    odd.at += Duration::from_secs(1);
    odd.redis.total_connections_received = Some(0);
    assert_eq!(d.observe(&odd), vec![]);
}

#[test]
fn memory_stays_bounded_over_a_million_samples() {
    let mut s = Series::new();
    for i in 0..1_000_000u64 {
        // Steady, with a flood every ~3 hours and a rejection now and then.
        let rate = if i % 10_000 < 20 { 5_000.0 } else { 100.0 };
        if i % 5_000 == 0 {
            s.rejected += 1;
        }
        s.poll(rate);
    }
    let (buckets, short) = s.detector.spike().held();
    assert!(buckets <= 60, "{buckets} buckets");
    assert!(short <= 6, "{short} short readings");
    assert!(
        s.detector.held() <= 60 + 6 + 3 * 60,
        "{}",
        s.detector.held()
    );
    assert!(s.events.len() < 1_000, "{} events", s.events.len());
}

/// One source holding half of maxclients (seen in a sampled CLIENT LIST, held between
/// samples) raises `source_hoarding` naming it; once it lets go, the alert resolves.
#[test]
fn one_source_holding_a_large_share_is_named_and_resolves() {
    let t0 = Instant::now();
    let mut d = Detector::new(DetectConfig::default());
    let sample = |secs: u64, top: Option<u64>| Sample {
        at: t0 + Duration::from_secs(secs),
        redis_reachable: true,
        redis_refused: None,
        redis: RedisSignals {
            connected_clients: Some(70),
            maxclients: Some(100),
            ..RedisSignals::default()
        },
        host: HostSignals::default(),
        // A CLIENT LIST every other poll.
        clients: top.map(|n| ClientsSummary {
            total: 70,
            top: vec![("10.0.0.9".into(), n), ("10.0.0.1".into(), 5)],
            never_ran: n,
            idle_over_minute: 0,
        }),
        moat: None,
    };
    let mut events = Vec::new();
    for secs in 0..6 {
        events.extend(d.observe(&sample(secs, (secs % 2 == 0).then_some(55))));
    }
    let raised: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Raised {
                id: AlertId::SourceHoarding,
                severity,
                summary,
                ..
            } => Some((*severity, summary.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(raised.len(), 1, "{events:?}");
    assert_eq!(raised[0].0, Severity::Critical);
    assert!(raised[0].1.contains("source 10.0.0.9"), "{}", raised[0].1);
    let mut resolved = false;
    for secs in 6..12 {
        resolved |= d
            .observe(&sample(secs, (secs % 2 == 0).then_some(10)))
            .iter()
            .any(|e| {
                matches!(
                    e,
                    Event::Resolved {
                        id: AlertId::SourceHoarding,
                        ..
                    }
                )
            });
    }
    assert!(resolved);
}

/// Moat's view of one poll: `refused` so far, `clients` held, and whether it answered.
fn moat_sample(t0: Instant, secs: u64, refused: u64, clients: u64, reachable: bool) -> Sample {
    Sample {
        at: t0 + Duration::from_secs(secs),
        redis_reachable: true,
        redis_refused: None,
        // Behind moat, Redis sees a couple of connections whatever happens in front.
        redis: RedisSignals {
            connected_clients: Some(2),
            maxclients: Some(10_000),
            total_connections_received: Some(10),
            rejected_connections: Some(0),
            ..RedisSignals::default()
        },
        host: HostSignals::default(),
        clients: None,
        moat: Some(MoatSignals {
            reachable,
            clients: reachable.then_some(clients),
            clients_max: reachable.then_some(1_000),
            refused_total: reachable.then_some(refused),
            refused_by_reason: vec![("banned".into(), refused)],
            bans_active: Some(40),
            top_sources: vec![("127.100.3.4".into(), clients)],
            top_refused: vec![("127.100.0.9".into(), refused / 2)],
            ..MoatSignals::default()
        }),
    }
}

#[test]
fn a_flood_moat_holds_off_is_raised_with_its_source_and_resolves() {
    let t0 = Instant::now();
    let mut d = Detector::new(DetectConfig::default());
    let mut events = Vec::new();
    let mut refused = 0;
    // 30 quiet polls, 20 polls of 500 refusals a second, then quiet for two minutes.
    for secs in 0..170 {
        if (30..50).contains(&secs) {
            refused += 500;
        }
        for e in d.observe(&moat_sample(t0, secs, refused, 5, true)) {
            events.push((secs, e));
        }
    }
    let ids: Vec<_> = events
        .iter()
        .map(|(s, e)| match e {
            Event::Raised { id, severity, .. } => (*s, *id, Some(*severity)),
            Event::Resolved { id, .. } => (*s, *id, None),
        })
        .collect();
    assert_eq!(
        ids,
        vec![
            // 500 in the window is above the warning rate; the next second's 1,000 above
            // the critical one.
            (30, AlertId::MoatRefusing, Some(Severity::Warning)),
            (31, AlertId::MoatRefusing, Some(Severity::Critical)),
            (111, AlertId::MoatRefusing, None),
        ],
        "{events:?}"
    );
    let Event::Raised { summary, .. } = &events[0].1 else {
        unreachable!()
    };
    assert!(summary.contains("top reason banned"), "{summary}");
    assert!(summary.contains("127.100.0.9"), "{summary}");
    assert!(summary.contains("40 bans"), "{summary}");
}

#[test]
fn a_hoard_of_moat_and_a_silent_admin_api_are_raised() {
    let t0 = Instant::now();
    let mut d = Detector::new(DetectConfig::default());
    let mut raised = Vec::new();
    for secs in 0..20 {
        let clients = if secs >= 5 { 950 } else { 10 };
        let reachable = secs < 12;
        for e in d.observe(&moat_sample(t0, secs, 0, clients, reachable)) {
            if let Event::Raised {
                id,
                severity,
                summary,
                ..
            } = e
            {
                raised.push((secs, id, severity, summary));
            }
        }
    }
    assert_eq!(raised[0].1, AlertId::MoatClientsNearMax, "{raised:?}");
    assert_eq!(raised[0].2, Severity::Critical, "{raised:?}");
    assert!(raised[0].3.contains("127.100.3.4"), "{raised:?}");
    assert_eq!(raised[1].0, 14, "{raised:?}");
    assert_eq!(raised[1].1, AlertId::MoatUnreachable, "{raised:?}");
    assert_eq!(raised.len(), 2, "{raised:?}");
}

#[test]
fn without_moat_the_moat_alerts_never_fire() {
    let mut s = Series::new();
    s.run(120, 10.0);
    assert!(
        s.events
            .iter()
            .all(|(_, e)| !format!("{e:?}").contains("Moat")),
        "{:?}",
        s.events
    );
}

#[test]
fn a_hoard_gets_a_client_list_before_it_is_raised_and_is_named() {
    let t0 = Instant::now();
    let mut d = Detector::new(DetectConfig::default());
    let mut wanted = Vec::new();
    let mut raised = None;
    let mut requested = false;
    for secs in 0..12u64 {
        let connected = if secs >= 4 { 9_500 } else { 40 };
        // The poller takes a CLIENT LIST only when asked (its schedule is far off here).
        let clients = requested.then(|| ClientsSummary {
            total: connected,
            top: vec![("127.100.0.7".into(), 600)],
            never_ran: 9_400,
            idle_over_minute: 0,
        });
        let sample = Sample {
            at: t0 + Duration::from_secs(secs),
            redis_reachable: true,
            redis_refused: None,
            redis: RedisSignals {
                connected_clients: Some(connected),
                maxclients: Some(10_000),
                ..RedisSignals::default()
            },
            host: HostSignals::default(),
            clients,
            moat: None,
        };
        for e in d.observe(&sample) {
            if let Event::Raised {
                id: AlertId::ClientsNearMax,
                summary,
                ..
            } = e
            {
                raised.get_or_insert((secs, summary));
            }
        }
        requested = d.wants_clients();
        if requested {
            wanted.push(secs);
        }
    }
    // Asked once, on the hoard's first poll; raised on its third, naming the source.
    assert_eq!(wanted, vec![4], "{raised:?}");
    let (secs, summary) = raised.unwrap();
    assert_eq!(secs, 6);
    assert!(
        summary.contains("top source 127.100.0.7 holds 600"),
        "{summary}"
    );
}
