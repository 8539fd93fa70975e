//! `moat watch`: detects connection attacks on any Redis from its INFO and the host's `/proc`.
//!
//! - [`sample`]: one poll's worth of signals ([`Sample`]), the interface between the
//!   collector and the detectors.
//! - [`collect`]: reads the signals: Redis `INFO` (and `CONFIG GET` where INFO lacks a
//!   field), `/proc/net/netstat`, `/proc/net/snmp`, the listener's accept queue, the Redis
//!   process's fds, CPU and RSS. Parsers are pure functions tested on captured samples.
//! - [`detect`]: pure detectors under a fake clock: absolute rules and adaptive baselines,
//!   with hysteresis and minimum durations, raising and resolving alerts.
//! - [`sink`]: where alerts and signals go besides the terminal: a webhook (bounded queue,
//!   retries off the poll loop) and a Prometheus `/metrics` page.
//! - [`dashboard`]: the terminal dashboard (`--tui`): its model, its ratatui rendering, a
//!   plain-text snapshot of a frame, and the raw-mode terminal it runs in.

pub mod collect;
pub mod dashboard;
pub mod detect;
pub mod sample;
pub mod sink;

pub use sample::Sample;
