//! The table as nft script text: a pure function of an [`NftSpec`], so what moat loads and
//! what an audit prints are the same text.

use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;

/// The set of banned IPv4 addresses (elements carry their ban's remaining time).
pub const BANNED4: &str = "banned4";
/// The set of banned IPv6 addresses (elements carry their ban's remaining time).
pub const BANNED6: &str = "banned6";
/// The set of banned IPv4 networks wider than one address. Networks need an interval set,
/// and adding to a large interval set is slow (nft reads the whole set back: 1,000 adds to
/// one of 60,000 elements took 1.7 s here, against 0.02 s for a hash set), so addresses,
/// the bulk of the bans, have a hash set of their own.
pub const BANNED_NETS4: &str = "banned_nets4";
/// The set of banned IPv6 networks wider than one address.
pub const BANNED_NETS6: &str = "banned_nets6";

/// How much looser than the guard's per-address limits the kernel's are: the guard stays
/// the precise layer (strikes, bans, a clear refusal), nft only cuts the flood that would
/// cost moat CPU before the guard could see it.
pub const LOOSENESS: u32 = 2;

/// Largest element count of any set moat creates.
const MAX_SET_SIZE: u32 = 1 << 20;

/// How long a per-source rate meter remembers an idle source.
const METER_TIMEOUT: &str = "1m";

/// Everything moat's nftables table is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftSpec {
    /// Table name (family `inet`); checked by [`super::validate_table_name`].
    pub table: String,
    /// Moat's listening TCP ports: the only packets the table looks at.
    pub ports: Vec<u16>,
    /// Networks exempt from every rule (the guard's `trusted`), matched first.
    pub trusted: Vec<IpNet>,
    /// Networks always dropped (the guard's `deny`).
    pub deny: Vec<IpNet>,
    /// Most elements each ban set (one per family) holds.
    pub ban_set_size: u32,
    /// Per-source new-connection rate and concurrency caps; none: no such rules.
    pub per_source: Option<SourceLimits>,
}

/// Per-source caps the kernel enforces on new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceLimits {
    /// New connections per unit of time one address may open, sustained.
    pub rate: Rate,
    /// New connections above the rate one address may open at once.
    pub burst: u32,
    /// Connections one address may hold open at once.
    pub max_connections: u32,
    /// Sources the rate and connection meters remember (one set per family).
    pub meter_size: u32,
}

/// A whole number of events per unit of time, as nft's `limit rate` wants it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Events per `unit`.
    pub count: u32,
    /// The unit of time.
    pub unit: RateUnit,
}

/// nft's units of time for rates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateUnit {
    /// Per second.
    Second,
    /// Per minute.
    Minute,
    /// Per hour.
    Hour,
}

impl Rate {
    /// The smallest whole rate at least `per_second` (the coarsest unit that keeps it
    /// whole: 0.5/s becomes 30/minute), at least 1 per hour.
    pub fn at_least(per_second: f64) -> Rate {
        let per_second = if per_second.is_finite() {
            per_second.clamp(0.0, 1e9)
        } else {
            1e9
        };
        let (count, unit) = if per_second >= 1.0 {
            (per_second.ceil(), RateUnit::Second)
        } else if per_second * 60.0 >= 1.0 {
            ((per_second * 60.0).ceil(), RateUnit::Minute)
        } else {
            ((per_second * 3600.0).ceil().max(1.0), RateUnit::Hour)
        };
        // In range: clamped above, at least 1.
        Rate {
            count: count as u32,
            unit,
        }
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match self.unit {
            RateUnit::Second => "second",
            RateUnit::Minute => "minute",
            RateUnit::Hour => "hour",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

impl SourceLimits {
    /// [`LOOSENESS`] times the guard's per-address limits (`guard.ip_rate`, `ip_burst`,
    /// `max_per_ip`), with meters of `meter_size` sources.
    pub fn looser_than(ip_rate: f64, ip_burst: u32, max_per_ip: u32, meter_size: u32) -> Self {
        SourceLimits {
            rate: Rate::at_least(ip_rate * f64::from(LOOSENESS)),
            burst: ip_burst.saturating_mul(LOOSENESS).max(1),
            max_connections: max_per_ip.saturating_mul(LOOSENESS).max(1),
            meter_size: meter_size.clamp(16, MAX_SET_SIZE),
        }
    }
}

/// `net` with host bits cleared, an IPv4-mapped IPv6 network as the IPv4 one (that is what
/// the packets carry).
pub(crate) fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && v6.prefix_len() >= 96
        && let Ok(mapped) = IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96)
    {
        return mapped.trunc();
    }
    net.trunc()
}

/// A network as an nft set element: a bare address for a single host.
pub(crate) fn element(net: &IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.to_string()
    }
}

/// The table, as `nft -f` reads it (and `moat audit --emit nftables` prints it).
pub fn ruleset(spec: &NftSpec) -> String {
    let mut s = String::with_capacity(4096);
    let (trusted4, trusted6) = split(&spec.trusted);
    let (deny4, deny6) = split(&spec.deny);
    let bans = spec.ban_set_size.clamp(16, MAX_SET_SIZE);
    let _ = writeln!(s, "table inet {} {{", spec.table);
    list_set(&mut s, "trusted4", "ipv4_addr", &trusted4);
    list_set(&mut s, "trusted6", "ipv6_addr", &trusted6);
    list_set(&mut s, "deny4", "ipv4_addr", &deny4);
    list_set(&mut s, "deny6", "ipv6_addr", &deny6);
    for (name, ty, flags) in [
        (BANNED4, "ipv4_addr", "timeout"),
        (BANNED6, "ipv6_addr", "timeout"),
        (BANNED_NETS4, "ipv4_addr", "interval, timeout"),
        (BANNED_NETS6, "ipv6_addr", "interval, timeout"),
    ] {
        let _ = write!(
            s,
            "\tset {name} {{\n\t\ttype {ty}\n\t\tflags {flags}\n\t\tsize {bans}\n\t}}\n"
        );
    }
    if let Some(limits) = &spec.per_source {
        let size = limits.meter_size.clamp(16, MAX_SET_SIZE);
        for (name, ty) in [("rate4", "ipv4_addr"), ("rate6", "ipv6_addr")] {
            let _ = write!(
                s,
                "\tset {name} {{\n\t\ttype {ty}\n\t\tflags dynamic, timeout\n\t\t\
                 timeout {METER_TIMEOUT}\n\t\tsize {size}\n\t}}\n"
            );
        }
        // A `ct count` set takes no timeout: the kernel drops a source when its count is 0.
        for (name, ty) in [("conn4", "ipv4_addr"), ("conn6", "ipv6_addr")] {
            let _ = write!(
                s,
                "\tset {name} {{\n\t\ttype {ty}\n\t\tflags dynamic\n\t\tsize {size}\n\t}}\n"
            );
        }
    }
    let mut ports: Vec<u16> = spec.ports.clone();
    ports.sort_unstable();
    ports.dedup();
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    let _ = write!(
        s,
        "\tchain input {{\n\t\ttype filter hook input priority filter - 10; policy accept;\n\
         \t\ttcp dport {{ {} }} jump sources\n\t}}\n",
        ports.join(", ")
    );
    s.push_str("\tchain sources {\n");
    for line in [
        "ip saddr @trusted4 return",
        "ip6 saddr @trusted6 return",
        "ip saddr @deny4 drop",
        "ip6 saddr @deny6 drop",
        "ip saddr @banned4 drop",
        "ip6 saddr @banned6 drop",
        "ip saddr @banned_nets4 drop",
        "ip6 saddr @banned_nets6 drop",
    ] {
        let _ = writeln!(s, "\t\t{line}");
    }
    if let Some(l) = &spec.per_source {
        for (set, key) in [("rate4", "ip saddr"), ("rate6", "ip6 saddr")] {
            let _ = writeln!(
                s,
                "\t\tct state new update @{set} {{ {key} limit rate over {} burst {} packets }} drop",
                l.rate, l.burst
            );
        }
        for (set, key) in [("conn4", "ip saddr"), ("conn6", "ip6 saddr")] {
            let _ = writeln!(
                s,
                "\t\tct state new add @{set} {{ {key} ct count over {} }} drop",
                l.max_connections
            );
        }
    }
    s.push_str("\t}\n}\n");
    s
}

/// The script that replaces whatever table of that name exists (a crash's leftover) by a
/// fresh one, in one transaction: adding the table first makes the delete always succeed.
pub fn create_script(spec: &NftSpec) -> String {
    let t = &spec.table;
    format!(
        "add table inet {t}\ndelete table inet {t}\n{}",
        ruleset(spec)
    )
}

fn split(nets: &[IpNet]) -> (Vec<IpNet>, Vec<IpNet>) {
    let mut all: Vec<IpNet> = nets.iter().map(|n| canonical_net(*n)).collect();
    all.sort_unstable();
    all.dedup();
    all.into_iter().partition(|n| matches!(n, IpNet::V4(_)))
}

/// A constant interval set; `auto-merge` folds overlapping networks of the config.
fn list_set(s: &mut String, name: &str, ty: &str, nets: &[IpNet]) {
    let _ = write!(
        s,
        "\tset {name} {{\n\t\ttype {ty}\n\t\tflags interval\n\t\tauto-merge\n"
    );
    if !nets.is_empty() {
        let elements: Vec<String> = nets.iter().map(element).collect();
        let _ = writeln!(s, "\t\telements = {{ {} }}", elements.join(", "));
    }
    s.push_str("\t}\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> NftSpec {
        let nets = |v: &[&str]| v.iter().map(|s| s.parse().unwrap()).collect::<Vec<IpNet>>();
        NftSpec {
            table: "moat".into(),
            ports: vec![6379],
            trusted: nets(&["127.0.0.1/32", "::1/128"]),
            deny: nets(&[
                "10.1.2.3/8",
                "192.0.2.7/32",
                "::ffff:198.51.100.0/120",
                "2001:db8::/32",
            ]),
            ban_set_size: 16_384,
            per_source: Some(SourceLimits::looser_than(20.0, 40, 64, 65_536)),
        }
    }

    const GOLDEN: &str = "\
table inet moat {
\tset trusted4 {
\t\ttype ipv4_addr
\t\tflags interval
\t\tauto-merge
\t\telements = { 127.0.0.1 }
\t}
\tset trusted6 {
\t\ttype ipv6_addr
\t\tflags interval
\t\tauto-merge
\t\telements = { ::1 }
\t}
\tset deny4 {
\t\ttype ipv4_addr
\t\tflags interval
\t\tauto-merge
\t\telements = { 10.0.0.0/8, 192.0.2.7, 198.51.100.0/24 }
\t}
\tset deny6 {
\t\ttype ipv6_addr
\t\tflags interval
\t\tauto-merge
\t\telements = { 2001:db8::/32 }
\t}
\tset banned4 {
\t\ttype ipv4_addr
\t\tflags timeout
\t\tsize 16384
\t}
\tset banned6 {
\t\ttype ipv6_addr
\t\tflags timeout
\t\tsize 16384
\t}
\tset banned_nets4 {
\t\ttype ipv4_addr
\t\tflags interval, timeout
\t\tsize 16384
\t}
\tset banned_nets6 {
\t\ttype ipv6_addr
\t\tflags interval, timeout
\t\tsize 16384
\t}
\tset rate4 {
\t\ttype ipv4_addr
\t\tflags dynamic, timeout
\t\ttimeout 1m
\t\tsize 65536
\t}
\tset rate6 {
\t\ttype ipv6_addr
\t\tflags dynamic, timeout
\t\ttimeout 1m
\t\tsize 65536
\t}
\tset conn4 {
\t\ttype ipv4_addr
\t\tflags dynamic
\t\tsize 65536
\t}
\tset conn6 {
\t\ttype ipv6_addr
\t\tflags dynamic
\t\tsize 65536
\t}
\tchain input {
\t\ttype filter hook input priority filter - 10; policy accept;
\t\ttcp dport { 6379 } jump sources
\t}
\tchain sources {
\t\tip saddr @trusted4 return
\t\tip6 saddr @trusted6 return
\t\tip saddr @deny4 drop
\t\tip6 saddr @deny6 drop
\t\tip saddr @banned4 drop
\t\tip6 saddr @banned6 drop
\t\tip saddr @banned_nets4 drop
\t\tip6 saddr @banned_nets6 drop
\t\tct state new update @rate4 { ip saddr limit rate over 40/second burst 80 packets } drop
\t\tct state new update @rate6 { ip6 saddr limit rate over 40/second burst 80 packets } drop
\t\tct state new add @conn4 { ip saddr ct count over 128 } drop
\t\tct state new add @conn6 { ip6 saddr ct count over 128 } drop
\t}
}
";

    #[test]
    fn default_guard_limits_give_the_golden_table() {
        assert_eq!(ruleset(&spec()), GOLDEN);
    }

    #[test]
    fn create_replaces_a_leftover_in_one_script() {
        let script = create_script(&spec());
        assert!(
            script.starts_with("add table inet moat\ndelete table inet moat\ntable inet moat {\n")
        );
        assert!(script.ends_with(GOLDEN));
    }

    #[test]
    fn empty_lists_ports_and_no_rate_rules() {
        let spec = NftSpec {
            table: "t".into(),
            ports: vec![7000, 6379, 7000],
            trusted: Vec::new(),
            deny: Vec::new(),
            ban_set_size: 1,
            per_source: None,
        };
        let text = ruleset(&spec);
        assert!(!text.contains("elements"), "{text}");
        assert!(
            !text.contains("rate4") && !text.contains("ct count"),
            "{text}"
        );
        assert!(
            text.contains("tcp dport { 6379, 7000 } jump sources"),
            "{text}"
        );
        assert!(text.contains("size 16\n"), "{text}");
    }

    #[test]
    fn rates_stay_whole_and_at_least_the_asked_one() {
        let r = |x| Rate::at_least(x).to_string();
        assert_eq!(r(40.0), "40/second");
        assert_eq!(r(2.5), "3/second");
        assert_eq!(r(0.5), "30/minute");
        assert_eq!(r(0.002), "8/hour");
        assert_eq!(r(0.0), "1/hour");
        assert_eq!(r(f64::NAN), "1000000000/second");
        let l = SourceLimits::looser_than(0.25, 0, u32::MAX, 1);
        assert_eq!(l.rate.to_string(), "30/minute");
        assert_eq!(
            (l.burst, l.max_connections, l.meter_size),
            (1, u32::MAX, 16)
        );
    }

    #[test]
    fn elements_are_canonical() {
        let e = |s: &str| element(&canonical_net(s.parse().unwrap()));
        assert_eq!(e("10.0.0.7/24"), "10.0.0.0/24");
        assert_eq!(e("10.0.0.7/32"), "10.0.0.7");
        assert_eq!(e("::ffff:10.0.0.7/128"), "10.0.0.7");
        assert_eq!(e("2001:db8::1/64"), "2001:db8::/64");
    }
}
