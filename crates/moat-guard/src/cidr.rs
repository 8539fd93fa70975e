//! Network lists (allow, deny, trusted) and the subnet a source belongs to.

use std::net::IpAddr;

use ipnet::IpNet;

/// A list of networks, matched by containment. Lists are short (operators write them by
/// hand), so a linear scan beats a trie's constant factors.
#[derive(Debug, Clone, Default)]
pub(crate) struct NetList(Vec<IpNet>);

impl NetList {
    pub(crate) fn new(nets: &[IpNet]) -> Self {
        Self(nets.iter().map(IpNet::trunc).collect())
    }

    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// A listed network that overlaps `net` (contains it or lies within it).
    pub(crate) fn overlapping(&self, net: &IpNet) -> Option<IpNet> {
        self.0
            .iter()
            .find(|n| n.contains(net) || net.contains(*n))
            .copied()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, as a dual-stack listener reports IPv4
/// peers) are treated as the IPv4 address, so lists and limits see one source.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The subnet a source is grouped into for subnet-wide limits.
pub(crate) fn subnet_of(ip: IpAddr, v4_prefix: u8, v6_prefix: u8) -> IpNet {
    let ip = canonical(ip);
    let prefix = if ip.is_ipv4() { v4_prefix } else { v6_prefix };
    IpNet::new(ip, prefix).map_or_else(|_| IpNet::from(ip), |n| n.trunc())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn lists_match_by_containment() {
        let list = NetList::new(&[
            "10.0.0.0/8".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ]);
        assert!(list.contains(ip("10.1.2.3")));
        assert!(list.contains(ip("::ffff:10.9.9.9")), "mapped IPv4 is IPv4");
        assert!(list.contains(ip("2001:db8::1")));
        assert!(!list.contains(ip("11.0.0.1")));
    }

    #[test]
    fn subnets_group_sources() {
        assert_eq!(
            subnet_of(ip("127.1.2.3"), 24, 64).to_string(),
            "127.1.2.0/24"
        );
        assert_eq!(
            subnet_of(ip("::ffff:127.1.2.3"), 24, 64).to_string(),
            "127.1.2.0/24"
        );
        assert_eq!(
            subnet_of(ip("2001:db8:1:2:3:4:5:6"), 24, 64).to_string(),
            "2001:db8:1:2::/64"
        );
    }
}
