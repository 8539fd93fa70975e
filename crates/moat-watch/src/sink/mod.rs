//! Where alerts and signals go besides the terminal.
//!
//! - [`event_json`]: an alert [`Event`] as the JSON lines print it (one shape for every sink).
//! - [`webhook`]: POSTs every alert event to one or more HTTP receivers, off the poll loop,
//!   from a bounded queue, with retries under exponential backoff and full jitter.
//! - [`prometheus`]: serves the latest sample's signals and the alerts' state on `/metrics`,
//!   named like redis_exporter's where they overlap.
//! - [`host_name`]: this host's name, for the webhook body.

use crate::detect::Event;

pub mod prometheus;
pub mod webhook;

/// The event as one JSON object, `unix_time` (seconds, fractional) added: the shape of
/// `moat watch --format json` lines and the core of the webhook body.
pub fn event_json(event: &Event, unix_time: f64) -> serde_json::Value {
    let mut value = serde_json::to_value(event).unwrap_or_default();
    if let Some(obj) = value.as_object_mut() {
        obj.insert("unix_time".into(), unix_time.into());
    }
    value
}

/// This host's name (from the kernel, else `$HOSTNAME`, else `unknown`), so a receiver that
/// hears from many watchers knows which one spoke.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "unknown".to_owned())
}
