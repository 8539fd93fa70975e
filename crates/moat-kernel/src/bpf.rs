//! A classic BPF program that drops packets from a list of networks (pure code).
//!
//! The program is meant for a listening TCP socket (`SO_ATTACH_FILTER`). There the kernel
//! runs it with the packet's data starting at the TCP header, so the IP header is read
//! through the ancillary offset [`SKF_NET_OFF`]. Layout:
//!
//! 1. a packet without the SYN flag is accepted at once: children of the listener inherit
//!    the filter at accept time, and their data packets must not pay for the rule list;
//! 2. the IP version nibble picks the IPv4 or the IPv6 part (an IPv6 listener also sees
//!    IPv4 packets when it accepts v4-mapped traffic; anything else is accepted);
//! 3. in each part the networks to keep (trusted, loopback) are checked first and accept;
//!    then the networks to drop; then accept.
//!
//! IPv4 networks are grouped by prefix length: the masked source is computed once per
//! group, then each network is one `jeq`. Conditional jumps reach only 255 instructions
//! ahead, so each group is cut into chunks of at most 256 compares, each chunk ending in its
//! own return. IPv6 networks are a chain of up to four masked word compares each, ending in
//! a return. No jump ever crosses more than one chunk, and the jump between the two parts is
//! an unconditional `ja` (32-bit offset), so the program stays valid at any size up to
//! [`MAX_INSNS`].

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// The kernel's limit on a classic BPF program (`BPF_MAXINSNS`).
pub const MAX_INSNS: usize = 4096;

/// The ancillary offset of the network (IP) header (`SKF_NET_OFF`).
pub const SKF_NET_OFF: i32 = -0x10_0000;

/// The value a program returns to accept a packet whole.
pub const ACCEPT: u32 = u32::MAX;

/// The value a program returns to drop a packet.
pub const DROP: u32 = 0;

/// Classic BPF opcodes this module emits (`linux/filter.h`).
pub mod op {
    /// `ldb [k]`: A = byte at k.
    pub const LDB_ABS: u16 = 0x30;
    /// `ld [k]`: A = 32-bit word at k, network order.
    pub const LDW_ABS: u16 = 0x20;
    /// `ld M[k]`: A = scratch word k.
    pub const LD_MEM: u16 = 0x60;
    /// `st M[k]`: scratch word k = A.
    pub const ST: u16 = 0x02;
    /// `rsh #k`.
    pub const RSH_K: u16 = 0x74;
    /// `and #k`.
    pub const AND_K: u16 = 0x54;
    /// `ja +k`: unconditional jump, 32-bit offset.
    pub const JA: u16 = 0x05;
    /// `jeq #k, jt, jf`.
    pub const JEQ_K: u16 = 0x15;
    /// `jset #k, jt, jf`.
    pub const JSET_K: u16 = 0x45;
    /// `ret #k`.
    pub const RET_K: u16 = 0x06;
    /// `tax`: X = A.
    pub const TAX: u16 = 0x07;
    /// `txa`: A = X.
    pub const TXA: u16 = 0x87;
}

/// The TCP header's flags byte, relative to the start of the TCP header.
const TCP_FLAGS: u32 = 13;
/// The SYN bit of the flags byte.
const TCP_SYN: u32 = 0x02;
/// The largest number of `jeq` that can share one return: the first jumps 255 ahead.
const CHUNK: usize = 256;

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    /// Opcode.
    pub code: u16,
    /// Jump offset when the condition holds.
    pub jt: u8,
    /// Jump offset when it does not.
    pub jf: u8,
    /// Constant operand.
    pub k: u32,
}

impl Insn {
    const fn new(code: u16, jt: u8, jf: u8, k: u32) -> Self {
        Self { code, jt, jf, k }
    }

    const fn stmt(code: u16, k: u32) -> Self {
        Self::new(code, 0, 0, k)
    }

    /// The instruction as socket2 takes it.
    pub fn to_sock_filter(self) -> socket2::SockFilter {
        socket2::SockFilter::new(self.code, self.jt, self.jf, self.k)
    }
}

/// A built program and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    insns: Vec<Insn>,
    dropped: Vec<IpNet>,
    kept: Vec<IpNet>,
    left_out: usize,
}

impl Program {
    /// The instructions.
    pub fn insns(&self) -> &[Insn] {
        &self.insns
    }

    /// The instructions as socket2 takes them.
    pub fn sock_filters(&self) -> Vec<socket2::SockFilter> {
        self.insns.iter().map(|i| i.to_sock_filter()).collect()
    }

    /// The networks the program drops, folded (merged and deduplicated), most harmful first.
    pub fn networks(&self) -> &[IpNet] {
        &self.dropped
    }

    /// The networks checked first and accepted (those of the keep list that overlap a
    /// dropped network; always including 127.0.0.1 and ::1 when they do).
    pub fn kept(&self) -> &[IpNet] {
        &self.kept
    }

    /// How many networks of the input the program does not drop because they did not fit
    /// (counted as given, before folding). Networks inside a kept one are not counted.
    pub fn left_out(&self) -> usize {
        self.left_out
    }
}

/// Addresses never dropped, whatever the lists say: local tools and moat's own admin use.
pub fn always_kept() -> [IpNet; 2] {
    [
        IpNet::from(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        IpNet::from(IpAddr::V6(Ipv6Addr::LOCALHOST)),
    ]
}

/// Builds a program of at most [`MAX_INSNS`] instructions dropping `drop` (most harmful
/// first) except `keep` (and [`always_kept`]). See [`build_with_limit`].
pub fn build(drop: &[IpNet], keep: &[IpNet]) -> Program {
    build_with_limit(drop, keep, MAX_INSNS)
}

/// Builds a program of at most `max_insns` instructions (clamped to 32..=[`MAX_INSNS`])
/// that drops the SYNs from `drop` except those from `keep` and [`always_kept`], and accepts
/// every other packet. `drop` is in priority order, most harmful first: networks are
/// folded (IPv4-mapped IPv6 as IPv4, contained and adjacent prefixes merged), and when they
/// do not all fit, the most harmful ones that fit are kept and [`Program::left_out`] counts
/// the rest.
pub fn build_with_limit(drop: &[IpNet], keep: &[IpNet], max_insns: usize) -> Program {
    build_inner(drop, keep, max_insns, true)
}

/// [`build_with_limit`], optionally without [`always_kept`] (tests that must drop a
/// loopback address to see the kernel drop it).
pub(crate) fn build_inner(
    drop: &[IpNet],
    keep: &[IpNet],
    max_insns: usize,
    keep_loopback: bool,
) -> Program {
    let max_insns = max_insns.clamp(32, MAX_INSNS);
    let mut keep: Vec<IpNet> = keep.iter().copied().map(normalize).collect();
    if keep_loopback {
        keep.extend(always_kept());
    }
    let keep = IpNet::aggregate(&keep);

    let drop_norm: Vec<IpNet> = drop.iter().copied().map(normalize).collect();
    let folded = IpNet::aggregate(&drop_norm);
    // A folded network's priority is that of its most harmful part; how many inputs it
    // covers counts what is left out when it does not fit.
    let index: HashMap<IpNet, usize> = folded.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let mut first_seen = vec![usize::MAX; folded.len()];
    let mut covers = vec![0usize; folded.len()];
    for (rank, net) in drop_norm.iter().enumerate() {
        if let Some(i) = container(&index, net) {
            first_seen[i] = first_seen[i].min(rank);
            covers[i] += 1;
        }
    }
    let mut order: Vec<usize> = (0..folded.len()).collect();
    order.sort_by_key(|&i| first_seen[i]);

    // Networks wholly inside a kept one are never dropped: leave them out for free. Kept
    // networks matter only where they overlap a dropped one.
    order.retain(|&i| !keep.iter().any(|k| k.contains(&folded[i])));
    let kept: Vec<IpNet> = keep
        .iter()
        .copied()
        .filter(|k| order.iter().any(|&i| folded[i].contains(k)))
        .collect();

    let mut cost = Cost::default();
    for k in &kept {
        cost.add(Action::Accept, k);
    }
    let mut left_out = 0;
    let mut dropped = Vec::new();
    if cost.total() > max_insns {
        // Cannot happen with sane keep lists; never drop what should be kept.
        left_out = order.iter().map(|&i| covers[i]).sum();
        return Program {
            insns: emit(&[], &[]),
            dropped,
            kept: Vec::new(),
            left_out,
        };
    }
    for &i in &order {
        let net = folded[i];
        if cost.with(Action::Drop, &net) > max_insns {
            left_out += covers[i];
        } else {
            cost.add(Action::Drop, &net);
            dropped.push(net);
        }
    }
    let insns = emit(&kept, &dropped);
    debug_assert_eq!(insns.len(), cost.total());
    Program {
        insns,
        dropped,
        kept,
        left_out,
    }
}

/// IPv4-mapped IPv6 networks become the IPv4 network (the kernel sees an IPv4 packet);
/// host bits are cleared.
fn normalize(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && v6.prefix_len() >= 96
        && let Ok(n) = Ipv4Net::new(v4, v6.prefix_len() - 96)
    {
        return IpNet::V4(n.trunc());
    }
    net.trunc()
}

/// The index of the folded network containing `net`.
fn container(index: &HashMap<IpNet, usize>, net: &IpNet) -> Option<usize> {
    (0..=net.prefix_len())
        .rev()
        .filter_map(|len| IpNet::new(net.addr(), len).ok())
        .find_map(|n| index.get(&n.trunc()).copied())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Action {
    Accept,
    Drop,
}

impl Action {
    fn ret(self) -> Insn {
        Insn::stmt(
            op::RET_K,
            match self {
                Action::Accept => ACCEPT,
                Action::Drop => DROP,
            },
        )
    }
}

/// The size of the program being planned, kept exactly in step with [`emit`].
#[derive(Debug, Default)]
struct Cost {
    /// IPv4 networks per (action, prefix length).
    v4_groups: BTreeMap<(Action, u8), usize>,
    v4_insns: usize,
    v6_insns: usize,
}

impl Cost {
    /// The program's size with `net` added.
    fn with(&self, action: Action, net: &IpNet) -> usize {
        match net {
            IpNet::V4(n) => {
                let count = self
                    .v4_groups
                    .get(&(action, n.prefix_len()))
                    .copied()
                    .unwrap_or(0);
                let header = if count == 0 {
                    1 + usize::from(n.prefix_len() < 32)
                } else {
                    0
                };
                let chunk_ret = usize::from(count.is_multiple_of(CHUNK));
                Self::size(self.v4_insns + header + chunk_ret + 1, self.v6_insns)
            }
            IpNet::V6(n) => Self::size(self.v4_insns, self.v6_insns + v6_rule_len(n)),
        }
    }

    fn add(&mut self, action: Action, net: &IpNet) {
        match net {
            IpNet::V4(n) => {
                let count = self.v4_groups.entry((action, n.prefix_len())).or_default();
                if *count == 0 {
                    self.v4_insns += 1 + usize::from(n.prefix_len() < 32);
                }
                if count.is_multiple_of(CHUNK) {
                    self.v4_insns += 1;
                }
                *count += 1;
                self.v4_insns += 1;
            }
            IpNet::V6(n) => self.v6_insns += v6_rule_len(n),
        }
    }

    fn total(&self) -> usize {
        Self::size(self.v4_insns, self.v6_insns)
    }

    fn size(v4_insns: usize, v6_insns: usize) -> usize {
        let v6 = if v6_insns == 0 {
            1
        } else {
            // Version check, its accept, 4 × (load, store), rules, final accept.
            2 + 8 + v6_insns + 1
        };
        // SYN gate (3), version (3), ja, load + tax, rules, accept.
        3 + 3 + 1 + 2 + v4_insns + 1 + v6
    }
}

fn v4_mask(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

/// The masks of an IPv6 prefix's words, up to the last word it constrains (at least one).
fn v6_masks(len: u8) -> Vec<u32> {
    let words = usize::from(len).div_ceil(32).max(1);
    (0..words)
        .map(|w| {
            let bits = (i32::from(len) - 32 * w as i32).clamp(0, 32) as u8;
            v4_mask(bits)
        })
        .collect()
}

fn v6_rule_len(net: &Ipv6Net) -> usize {
    v6_masks(net.prefix_len())
        .iter()
        .map(|&m| 2 + usize::from(m != u32::MAX))
        .sum::<usize>()
        + 1
}

fn net_off(offset: i32) -> u32 {
    (SKF_NET_OFF + offset) as u32
}

/// Emits the program for `keep` (accepted first) and `drop`.
fn emit(keep: &[IpNet], drop: &[IpNet]) -> Vec<Insn> {
    let mut v4: BTreeMap<(Action, u8), Vec<u32>> = BTreeMap::new();
    let mut v6: Vec<(Action, Ipv6Net)> = Vec::new();
    for (action, nets) in [(Action::Accept, keep), (Action::Drop, drop)] {
        for net in nets {
            match net {
                IpNet::V4(n) => v4
                    .entry((action, n.prefix_len()))
                    .or_default()
                    .push(u32::from(n.network())),
                IpNet::V6(n) => v6.push((action, *n)),
            }
        }
    }

    let mut p = vec![
        // Only SYNs are checked; everything else (children's traffic) passes.
        Insn::stmt(op::LDB_ABS, TCP_FLAGS),
        Insn::new(op::JSET_K, 1, 0, TCP_SYN),
        Action::Accept.ret(),
        Insn::stmt(op::LDB_ABS, net_off(0)),
        Insn::stmt(op::RSH_K, 4),
        Insn::new(op::JEQ_K, 1, 0, 4),
    ];
    let ja_at = p.len();
    p.push(Insn::stmt(op::JA, 0));
    p.push(Insn::stmt(op::LDW_ABS, net_off(12)));
    p.push(Insn::stmt(op::TAX, 0));
    // BTreeMap order puts every Accept group before any Drop group.
    for ((action, len), addrs) in &v4 {
        p.push(Insn::stmt(op::TXA, 0));
        if *len < 32 {
            p.push(Insn::stmt(op::AND_K, v4_mask(*len)));
        }
        for chunk in addrs.chunks(CHUNK) {
            let n = chunk.len();
            for (i, addr) in chunk.iter().enumerate() {
                // Jump to the chunk's return; the last compare skips it when unequal.
                let jt = (n - 1 - i) as u8;
                let jf = u8::from(i == n - 1);
                p.push(Insn::new(op::JEQ_K, jt, jf, *addr));
            }
            p.push(action.ret());
        }
    }
    p.push(Action::Accept.ret());
    p[ja_at].k = (p.len() - ja_at - 1) as u32;

    if v6.is_empty() {
        p.push(Action::Accept.ret());
        return p;
    }
    p.push(Insn::new(op::JEQ_K, 1, 0, 6));
    p.push(Action::Accept.ret());
    for w in 0..4u32 {
        p.push(Insn::stmt(op::LDW_ABS, net_off(8 + 4 * w as i32)));
        p.push(Insn::stmt(op::ST, w));
    }
    v6.sort_by_key(|(action, _)| *action);
    for (action, net) in &v6 {
        let words = net.network().to_bits().to_be_bytes();
        let masks = v6_masks(net.prefix_len());
        let len = v6_rule_len(net);
        let start = p.len();
        for (w, mask) in masks.iter().enumerate() {
            let b = &words[4 * w..4 * w + 4];
            let value = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
            p.push(Insn::stmt(op::LD_MEM, w as u32));
            if *mask != u32::MAX {
                p.push(Insn::stmt(op::AND_K, *mask));
            }
            // When unequal, skip the rest of this rule and its return.
            let jf = (start + len - p.len() - 1) as u8;
            p.push(Insn::new(op::JEQ_K, 0, jf, value & mask));
        }
        p.push(action.ret());
    }
    p.push(Action::Accept.ret());
    p
}

#[cfg(test)]
#[path = "bpf_tests.rs"]
mod tests;
