//! Detectors: pure code that turns a series of [`crate::Sample`]s into alerts.
//!
//! - [`detector`]: [`Detector`], every rule over one series, the entry point.
//! - [`config`]: [`DetectConfig`], the thresholds (TOML, documented defaults).
//! - [`alert`]: alert ids, severities, [`Event`]s, and the state machine with minimum
//!   durations.
//! - [`rules`]: absolute rules (ratios to limits, events per minute, reachability).
//! - [`spike`]: the adaptive connection-rate rule.
//! - [`baseline`]: rolling median and MAD over bounded buckets.
//! - [`rate`]: counters to increases and rates, with reset handling; sliding window sums.
//!
//! Everything takes the sample's `at` as its clock: tests drive a fake one.

pub mod alert;
pub mod baseline;
pub mod config;
pub mod detector;
pub mod rate;
pub mod rules;
pub mod spike;

pub use alert::{AlertId, Event, Severity};
pub use config::{ConfigError, DetectConfig, SpikeConfig};
pub use detector::Detector;
