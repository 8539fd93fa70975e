//! Source addresses for simulated clients: distinct peers in 127.0.0.0/8, one range per
//! group, so a target (and its per-address and per-subnet limits) sees each group as the
//! many machines it stands for, and the groups never share an address.
//!
//! Linux answers on the whole of 127.0.0.0/8 without configuration, so binding 127.a.b.c
//! before connecting is all it takes.

use std::net::{IpAddr, Ipv4Addr};

/// The most addresses one group may use: a /16 without its .0.0.
pub const MAX_SOURCES: u32 = (1 << 16) - 1;

/// Who a range of addresses belongs to. Each group has its own second octet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// Attack traffic: 127.100.0.0/16.
    Attack,
    /// Legitimate clients on persistent connections: 127.1.0.0/16.
    Steady,
    /// Legitimate clients that reconnect every few operations: 127.2.0.0/16.
    Churn,
    /// Fresh clients, each from an address never used before: 127.3.0.0/16.
    Fresh,
    /// A client from a trusted network (moat's default trusts 127.0.0.1): 127.0.0.1.
    Trusted,
}

impl Group {
    fn second_octet(self) -> u8 {
        match self {
            Group::Attack => 100,
            Group::Steady => 1,
            Group::Churn => 2,
            Group::Fresh => 3,
            Group::Trusted => 0,
        }
    }
}

/// `count` source addresses of `group`, handed out round robin.
#[derive(Debug, Clone)]
pub struct Sources {
    group: Group,
    count: u32,
    next: u32,
}

impl Sources {
    /// `count` addresses (1 to [`MAX_SOURCES`]; clamped) of `group`. The trusted group
    /// has one address whatever `count` says.
    pub fn new(group: Group, count: u32) -> Self {
        let count = match group {
            Group::Trusted => 1,
            _ => count.clamp(1, MAX_SOURCES),
        };
        Self {
            group,
            count,
            next: 0,
        }
    }

    /// How many distinct addresses this hands out.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The `i`-th address of the range (modulo its size).
    pub fn nth(&self, i: u32) -> IpAddr {
        if self.group == Group::Trusted {
            return IpAddr::V4(Ipv4Addr::LOCALHOST);
        }
        // Host numbers 1..=65535 over the third and fourth octets: 127.x.0.0 stays out.
        let host = (i % self.count) + 1;
        let [_, _, c, d] = host.to_be_bytes();
        IpAddr::V4(Ipv4Addr::new(127, self.group.second_octet(), c, d))
    }

    /// The next address, round robin.
    pub fn next_addr(&mut self) -> IpAddr {
        let addr = self.nth(self.next);
        self.next = (self.next + 1) % self.count;
        addr
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn groups_get_distinct_ranges_and_round_robin() {
        let mut a = Sources::new(Group::Attack, 4096);
        let seen: HashSet<IpAddr> = (0..4096).map(|_| a.next_addr()).collect();
        assert_eq!(seen.len(), 4096);
        assert!(seen.iter().all(|ip| match ip {
            IpAddr::V4(v4) => v4.octets()[..2] == [127, 100],
            IpAddr::V6(_) => false,
        }));
        assert_eq!(a.next_addr(), a.nth(0));
        let steady = Sources::new(Group::Steady, 2);
        assert_eq!(steady.nth(0).to_string(), "127.1.0.1");
        assert_eq!(steady.nth(3).to_string(), "127.1.0.2");
        assert_eq!(
            Sources::new(Group::Trusted, 9).nth(5).to_string(),
            "127.0.0.1"
        );
        assert_eq!(Sources::new(Group::Fresh, 0).count(), 1);
        assert_eq!(Sources::new(Group::Churn, u32::MAX).count(), MAX_SOURCES);
        assert_eq!(
            Sources::new(Group::Churn, MAX_SOURCES)
                .nth(MAX_SOURCES - 1)
                .to_string(),
            "127.2.255.255"
        );
    }
}
