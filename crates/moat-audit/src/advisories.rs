//! Published Redis advisories about connections and client memory, with the upstream
//! releases that fixed them. Each entry was checked against the cited release notes or
//! pull request (2026-12).
//!
//! A version check is a warning to verify, never a verdict: distributions backport fixes
//! without changing `redis_version` (Debian's 7.0.15 carries patches of later releases).

/// A version as (major, minor, patch).
pub type Version = (u32, u32, u32);

/// One advisory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advisory {
    /// CVE id.
    pub cve: &'static str,
    /// What it lets an attacker do, in one line.
    pub summary: &'static str,
    /// The first fixed release of each maintained branch, ascending. A version on one of
    /// these branches is affected below its fix; a version on a branch between two listed
    /// ones (an unmaintained one, such as 7.0 for 2025's fixes) is affected and should move
    /// to the next branch's fix; a branch newer than the last one listed is not affected.
    pub fixed: &'static [Version],
    /// Where the affected and fixed versions come from.
    pub reference: &'static str,
}

/// The table.
pub const ADVISORIES: &[Advisory] = &[
    Advisory {
        cve: "CVE-2021-32675",
        summary: "unauthenticated clients could make Redis allocate large amounts of memory \
                  with a few bytes of multibulk header, on many connections",
        fixed: &[(5, 0, 14), (6, 0, 16), (6, 2, 6)],
        reference: "https://github.com/redis/redis/pull/9588 (fix); \
                    https://github.com/redis/redis/pull/9585 (5.0.14), \
                    https://github.com/redis/redis/pull/9584 (6.0.16), \
                    https://github.com/openwrt/packages/pull/16970 (6.2.6)",
    },
    Advisory {
        cve: "CVE-2023-45145",
        summary: "the unix socket was reachable by any local user between its creation and \
                  its chmod (with a permissive umask)",
        fixed: &[(6, 2, 14), (7, 0, 14), (7, 2, 2)],
        reference: "https://osv.dev/vulnerability/CVE-2023-45145",
    },
    Advisory {
        cve: "CVE-2025-21605",
        summary: "an unauthenticated client could grow its output buffer without bound by \
                  not reading replies",
        fixed: &[(6, 2, 18), (7, 2, 8), (7, 4, 3)],
        reference: "https://github.com/redis/redis/pull/13971 (6.2.18), \
                    https://github.com/redis/redis/pull/13993 (fix), \
                    https://redis.io/blog/security-advisory-cve-2025-21605/",
    },
    Advisory {
        cve: "CVE-2025-48367",
        summary: "a connection whose accept reported an error stopped Redis from accepting \
                  the others (an unauthenticated denial of service)",
        fixed: &[(6, 2, 19), (7, 2, 10), (7, 4, 5), (8, 0, 3)],
        reference: "https://github.com/docker-library/official-images/pull/19401",
    },
];

/// The release to move to when `version` is affected by `advisory`; `None` when not.
pub fn fixed_release(advisory: &Advisory, version: Version) -> Option<Version> {
    let (major, minor, _) = version;
    for &fix in advisory.fixed {
        let branch = (fix.0, fix.1);
        if branch == (major, minor) {
            return (version < fix).then_some(fix);
        }
        if branch > (major, minor) {
            return Some(fix);
        }
    }
    None
}

/// `7.0.15`.
pub fn show(v: Version) -> String {
    format!("{}.{}.{}", v.0, v.1, v.2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by(cve: &str) -> &'static Advisory {
        ADVISORIES
            .iter()
            .find(|a| a.cve == cve)
            .expect("in the table")
    }

    #[test]
    fn branches_and_gaps() {
        let a = by("CVE-2025-21605");
        assert_eq!(fixed_release(a, (6, 2, 17)), Some((6, 2, 18)));
        assert_eq!(fixed_release(a, (6, 2, 18)), None);
        // 7.0 got no fix upstream: move to 7.2's.
        assert_eq!(fixed_release(a, (7, 0, 15)), Some((7, 2, 8)));
        assert_eq!(fixed_release(a, (7, 4, 2)), Some((7, 4, 3)));
        assert_eq!(fixed_release(a, (8, 0, 0)), None);
        assert_eq!(fixed_release(a, (5, 0, 7)), Some((6, 2, 18)));
        let b = by("CVE-2021-32675");
        assert_eq!(fixed_release(b, (7, 0, 15)), None);
        assert_eq!(fixed_release(b, (6, 2, 5)), Some((6, 2, 6)));
        let c = by("CVE-2023-45145");
        assert_eq!(fixed_release(c, (7, 0, 15)), None);
        assert_eq!(fixed_release(c, (7, 0, 13)), Some((7, 0, 14)));
    }

    #[test]
    fn table_is_ordered() {
        for a in ADVISORIES {
            assert!(a.fixed.windows(2).all(|w| w[0] < w[1]), "{}", a.cve);
            assert!(a.reference.starts_with("https://"), "{}", a.cve);
        }
    }
}
