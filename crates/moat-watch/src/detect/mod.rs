//! Detectors: pure code that turns a series of [`crate::Sample`]s into alerts.
