//! A tiny classic-BPF interpreter (the opcodes [`super::emit`] uses) and tests that run the
//! built programs on packets: exactly the listed sources are dropped.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use proptest::prelude::*;

use super::*;

/// A packet as the kernel shows it to a listener's filter: the IP header, reachable at
/// `SKF_NET_OFF`, and the data starting at the TCP header.
struct Packet {
    net: Vec<u8>,
    tcp: Vec<u8>,
}

fn packet(src: IpAddr, syn: bool) -> Packet {
    let mut tcp = vec![0u8; 20];
    tcp[13] = if syn { 0x02 } else { 0x10 };
    let net = match src {
        IpAddr::V4(a) => {
            let mut h = vec![0u8; 20];
            h[0] = 0x45;
            h[12..16].copy_from_slice(&a.octets());
            h[16..20].copy_from_slice(&[10, 9, 9, 9]);
            h
        }
        IpAddr::V6(a) => {
            let mut h = vec![0u8; 40];
            h[0] = 0x60;
            h[8..24].copy_from_slice(&a.octets());
            h[24..40].copy_from_slice(&Ipv6Addr::LOCALHOST.octets());
            h
        }
    };
    Packet { net, tcp }
}

/// What the kernel's checker insists on: size, forward jumps inside the program, a return
/// at the end, scratch words in range.
fn check(p: &[Insn]) {
    assert!(!p.is_empty() && p.len() <= MAX_INSNS, "size {}", p.len());
    assert_eq!(p[p.len() - 1].code, op::RET_K, "last is not a return");
    for (pc, i) in p.iter().enumerate() {
        match i.code {
            op::JA => assert!((i.k as usize) < p.len() - pc - 1, "ja out of range at {pc}"),
            op::JEQ_K | op::JSET_K => {
                assert!(
                    pc + 1 + usize::from(i.jt.max(i.jf)) < p.len(),
                    "jump at {pc}"
                )
            }
            op::ST | op::LD_MEM => assert!(i.k < 16),
            _ => {}
        }
    }
}

fn load(pkt: &Packet, k: u32, size: usize) -> Option<u32> {
    let (buf, at) = if (k as i32) < 0 {
        let off = (k as i32).checked_sub(SKF_NET_OFF)?;
        (&pkt.net, usize::try_from(off).ok()?)
    } else {
        (&pkt.tcp, k as usize)
    };
    let bytes = buf.get(at..at + size)?;
    Some(bytes.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)))
}

/// Runs `p` on `pkt`; returns what the program returns (0 = drop).
fn run(p: &[Insn], pkt: &Packet) -> u32 {
    let (mut a, mut x, mut m) = (0u32, 0u32, [0u32; 16]);
    let mut pc = 0usize;
    for _ in 0..=p.len() {
        let i = p[pc];
        pc += 1;
        match i.code {
            op::LDB_ABS => match load(pkt, i.k, 1) {
                Some(v) => a = v,
                None => return 0,
            },
            op::LDW_ABS => match load(pkt, i.k, 4) {
                Some(v) => a = v,
                None => return 0,
            },
            op::LD_MEM => a = m[i.k as usize],
            op::ST => m[i.k as usize] = a,
            op::RSH_K => a >>= i.k,
            op::AND_K => a &= i.k,
            op::TAX => x = a,
            op::TXA => a = x,
            op::JA => pc += i.k as usize,
            op::JEQ_K => pc += usize::from(if a == i.k { i.jt } else { i.jf }),
            op::JSET_K => pc += usize::from(if a & i.k != 0 { i.jt } else { i.jf }),
            op::RET_K => return i.k,
            other => panic!("unexpected opcode {other:#x}"),
        }
    }
    panic!("no return reached");
}

fn dropped(p: &Program, ip: IpAddr) -> bool {
    run(p.insns(), &packet(ip, true)) == DROP
}

fn net(s: &str) -> IpNet {
    s.parse().expect("network")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

#[test]
fn drops_listed_v4_and_v6_sources_and_only_syns() {
    let p = build(
        &[
            net("10.1.2.3/32"),
            net("192.168.0.0/16"),
            net("2001:db8::/64"),
        ],
        &[],
    );
    check(p.insns());
    assert!(dropped(&p, ip("10.1.2.3")));
    assert!(!dropped(&p, ip("10.1.2.4")));
    assert!(dropped(&p, ip("192.168.77.1")));
    assert!(!dropped(&p, ip("192.169.0.1")));
    assert!(dropped(&p, ip("2001:db8::1")));
    assert!(dropped(&p, ip("2001:db8::ffff:1:2")));
    assert!(!dropped(&p, ip("2001:db8:0:1::1")));
    assert!(!dropped(&p, ip("::1")));
    // Not a SYN: passes (a child socket's data).
    assert_eq!(run(p.insns(), &packet(ip("10.1.2.3"), false)), ACCEPT);
    // Neither IPv4 nor IPv6: passes.
    let mut odd = packet(ip("10.1.2.3"), true);
    odd.net[0] = 0x75;
    assert_eq!(run(p.insns(), &odd), ACCEPT);
}

#[test]
fn empty_list_accepts_everything() {
    let p = build(&[], &[]);
    check(p.insns());
    assert!(p.networks().is_empty());
    assert!(!dropped(&p, ip("10.0.0.1")));
    assert!(!dropped(&p, ip("2001:db8::1")));
}

#[test]
fn never_drops_kept_or_loopback_sources() {
    let p = build(
        &[
            net("127.0.0.0/8"),
            net("10.0.0.0/8"),
            net("::/0"),
            net("0.0.0.0/0"),
        ],
        &[net("10.5.0.0/16")],
    );
    check(p.insns());
    assert!(!dropped(&p, ip("127.0.0.1")));
    assert!(!dropped(&p, ip("::1")));
    assert!(!dropped(&p, ip("10.5.3.3")));
    assert!(dropped(&p, ip("10.6.3.3")));
    assert!(dropped(&p, ip("127.0.0.2")));
    assert!(dropped(&p, ip("2001:db8::1")));
    // A network inside a kept one costs nothing and is never dropped.
    let q = build(
        &[net("127.0.0.1/32"), net("10.5.1.0/24")],
        &[net("10.5.0.0/16")],
    );
    assert!(q.networks().is_empty());
    assert_eq!(q.left_out(), 0);
    assert!(!dropped(&q, ip("10.5.1.1")));
}

#[test]
fn folds_adjacent_contained_and_v4_mapped_networks() {
    let p = build(
        &[
            net("10.0.0.0/25"),
            net("10.0.0.128/25"),
            net("10.0.0.7/32"),
            net("::ffff:192.0.2.9/128"),
        ],
        &[],
    );
    assert_eq!(p.networks(), &[net("10.0.0.0/24"), net("192.0.2.9/32")]);
    assert!(dropped(&p, ip("192.0.2.9")));
    assert!(dropped(&p, ip("10.0.0.200")));
}

#[test]
fn long_lists_keep_the_most_harmful_and_stay_valid_at_the_limit() {
    // 5,000 host addresses, scattered so nothing folds: only the first ones fit.
    let hosts: Vec<IpNet> = (0..5000u32)
        .map(|i| IpNet::from(IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i * 2))))
        .collect();
    let p = build(&hosts, &[]);
    check(p.insns());
    let fitted = p.networks().len();
    assert!(p.insns().len() <= MAX_INSNS);
    assert!(p.insns().len() > MAX_INSNS - 8, "{}", p.insns().len());
    assert_eq!(fitted + p.left_out(), hosts.len());
    assert!(fitted > 4000, "{fitted}");
    // Exhaustive: every listed address, every one in between.
    for (i, h) in hosts.iter().enumerate() {
        assert_eq!(dropped(&p, h.addr()), i < fitted, "{h}");
        let next = IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i as u32 * 2 + 1));
        assert!(!dropped(&p, next), "{next}");
    }
    // The prefix the program holds is the most harmful one.
    assert_eq!(p.networks(), &hosts[..fitted]);
}

#[test]
fn exhaustive_at_the_limit_with_mixed_prefixes_and_v6() {
    let mut list = Vec::new();
    for i in 0..1500u32 {
        list.push(IpNet::from(IpAddr::V4(Ipv4Addr::from(0x0c00_0000 + i * 4))));
        list.push(IpNet::V4(
            ipnet::Ipv4Net::new(Ipv4Addr::from(0x0d00_0000 + i * 512), 24).expect("net"),
        ));
        list.push(IpNet::V6(
            ipnet::Ipv6Net::new(
                Ipv6Addr::from((0x2001_0db8u128 << 96) | u128::from(i) << 65),
                64,
            )
            .expect("net"),
        ));
    }
    let p = build(&list, &[net("13.0.2.0/24")]);
    check(p.insns());
    assert!(p.insns().len() > MAX_INSNS - 16, "{}", p.insns().len());
    assert!(p.left_out() > 0);
    for n in &list {
        let inside = p.networks().iter().any(|d| d.contains(n));
        let kept = n.contains(&ip("13.0.2.5"));
        assert_eq!(dropped(&p, n.addr()), inside && !kept, "{n}");
    }
}

#[test]
fn a_hundred_thousand_networks_is_bounded() {
    let mut rng = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let list: Vec<IpNet> = (0..100_000u32)
        .map(|i| {
            let r = next();
            if i % 10 == 0 {
                IpNet::V6(
                    ipnet::Ipv6Net::new(Ipv6Addr::from(u128::from(r) << 64 | u128::from(i)), 128)
                        .expect("net"),
                )
            } else {
                IpNet::V4(
                    ipnet::Ipv4Net::new(Ipv4Addr::from(r as u32), 20 + (r >> 59) as u8 % 13)
                        .expect("net")
                        .trunc(),
                )
            }
        })
        .collect();
    let p = build(&list, &[]);
    check(p.insns());
    assert!(p.left_out() > 90_000, "{}", p.left_out());
    for n in p.networks() {
        assert!(dropped(&p, n.addr()));
    }
}

fn arb_v4() -> impl Strategy<Value = IpNet> {
    // A small address space so that networks overlap and fold, and probes hit them.
    (0u32..4096, 20u8..=32).prop_map(|(a, len)| {
        let addr = Ipv4Addr::from(0x0a00_0000 | (a << 8) >> 4);
        IpNet::V4(ipnet::Ipv4Net::new(addr, len).expect("net").trunc())
    })
}

fn arb_v6() -> impl Strategy<Value = IpNet> {
    (
        0u128..4096,
        prop::sample::select(vec![32u8, 48, 56, 64, 80, 96, 112, 120, 127, 128]),
    )
        .prop_map(|(a, len)| {
            let addr = Ipv6Addr::from((0x2001_0db8u128 << 96) | (a << 120 >> 24) | (a & 0xff));
            IpNet::V6(ipnet::Ipv6Net::new(addr, len).expect("net").trunc())
        })
}

fn arb_addr() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        (0u32..4096, any::<u8>()).prop_map(|(a, b)| IpAddr::V4(Ipv4Addr::from(
            (0x0a00_0000 | (a << 8) >> 4) ^ u32::from(b)
        ))),
        (0u128..4096, any::<u16>()).prop_map(|(a, b)| IpAddr::V6(Ipv6Addr::from(
            (0x2001_0db8u128 << 96) | (a << 120 >> 24) | (a & 0xff) ^ u128::from(b)
        ))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn drops_exactly_the_listed_sources(
        list in prop::collection::vec(prop_oneof![arb_v4(), arb_v6()], 0..250),
        keep in prop::collection::vec(prop_oneof![arb_v4(), arb_v6()], 0..3),
        probes in prop::collection::vec(arb_addr(), 64),
    ) {
        let p = build(&list, &keep);
        check(p.insns());
        prop_assert_eq!(p.left_out(), 0);
        let kept = |a: IpAddr| keep.iter().chain(always_kept().iter()).any(|k| k.contains(&a));
        let listed = |a: IpAddr| list.iter().any(|n| n.contains(&a));
        let mut probes = probes;
        probes.extend(list.iter().map(|n| n.addr()));
        probes.extend(list.iter().map(|n| n.broadcast()));
        for a in probes {
            prop_assert_eq!(dropped(&p, a), listed(a) && !kept(a), "{}", a);
        }
    }

    #[test]
    fn a_smaller_budget_keeps_a_valid_prefix_of_the_list(
        list in prop::collection::vec(prop_oneof![arb_v4(), arb_v6()], 0..400),
        limit in 32usize..400,
    ) {
        let p = build_with_limit(&list, &[], limit);
        check(p.insns());
        prop_assert!(p.insns().len() <= limit);
        for n in p.networks() {
            prop_assert!(dropped(&p, n.addr()));
            prop_assert!(dropped(&p, n.broadcast()));
        }
        // Every input is either in the program or counted as left out.
        let inside = list.iter().filter(|n| p.networks().iter().any(|d| d.contains(*n))).count();
        prop_assert_eq!(inside + p.left_out(), list.len());
    }
}
