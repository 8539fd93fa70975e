//! Reading the signals of a [`crate::Sample`].
//!
//! - [`info`]: Redis `INFO` text (and a `CONFIG GET` reply) into [`crate::sample::RedisSignals`].
//! - [`client_list`]: a `CLIENT LIST` reply summarised by source address.
//! - [`netstat`]: `/proc/net/netstat` (TcpExt) and `/proc/net/snmp` (Tcp), the kernel's
//!   listen-queue overflows, SYN-queue drops and connection counters.
//! - [`tcp_table`]: the Redis listener's accept queue from `/proc/net/tcp` and `tcp6`.
//! - [`process`]: the Redis process's fd limit, CPU time and RSS from `/proc/PID/*`.
//! - [`conntrack`]: conntrack table usage, when the module is loaded.
//! - [`poller`]: the one persistent, named monitoring connection to Redis: polls INFO,
//!   reconnects with backoff, and reports its own failure to connect as a signal.
//! - [`moat_view`]: a moat's admin API (`/metrics`, `/sources`), when the watched Redis
//!   sits behind one.
//! - [`host`]: the only file I/O here; reads all of the above and tolerates every missing
//!   file (another host, no permission), so each field is `None` when unknown.
//!
//! Everything but [`host`] (and [`process::count_fds`]) is a pure function from text, so
//! the parsers are tested on text captured from a real Redis and a real kernel.

pub mod client_list;
pub mod conntrack;
pub mod host;
pub mod info;
pub mod moat_view;
pub mod netstat;
pub mod poller;
pub mod process;
pub mod tcp_table;
