//! The fixes as files to install: [`redis_conf`] (a snippet to append to redis.conf),
//! [`sysctl`] (a `/etc/sysctl.d/` file) and [`nftables`] (moat's own table, from
//! moat-kernel's [`moat_kernel::nft::ruleset`], so moat's kernel-drop feature fills the
//! ban sets it declares).

pub mod nftables;
pub mod redis_conf;
pub mod sysctl;
