//! A robust baseline of a rate: the median and MAD of per-bucket mean rates over a long
//! window.
//!
//! - [`Baseline`]: accumulates rate readings into fixed-length buckets and keeps the last
//!   `long_window / bucket` bucket means, so memory is bounded whatever the poll rate and
//!   however long it runs; the median and MAD are recomputed when a bucket closes.
//! - [`Stats`]: the median and the MAD. Median and MAD rather than mean and deviation so a
//!   burst inside the window barely moves them.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::rate::Delta;

/// Upper bound on buckets kept, whatever the configuration says.
const MAX_BUCKETS: usize = 100_000;

/// The baseline's current view.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    /// Median of the bucket means (events per second).
    pub median: f64,
    /// Median absolute deviation from it.
    pub mad: f64,
}

impl Stats {
    /// The MAD scaled to estimate a standard deviation under normal noise.
    pub fn sigma(&self) -> f64 {
        1.4826 * self.mad
    }
}

/// The bucket being filled.
#[derive(Debug, Clone, Copy)]
struct Open {
    start: Instant,
    increase: f64,
    secs: f64,
}

/// Rolling median and MAD of a rate.
#[derive(Debug, Clone)]
pub struct Baseline {
    bucket: Duration,
    cap: usize,
    open: Option<Open>,
    buckets: VecDeque<f64>,
    stats: Option<Stats>,
}

impl Baseline {
    /// A baseline over `long_window`, in buckets of `bucket` (zero is taken as 1 s).
    pub fn new(long_window: Duration, bucket: Duration) -> Self {
        let bucket = if bucket.is_zero() {
            Duration::from_secs(1)
        } else {
            bucket
        };
        let n = long_window.as_secs_f64() / bucket.as_secs_f64();
        let cap = (n.ceil() as usize).clamp(1, MAX_BUCKETS);
        Self {
            bucket,
            cap,
            open: None,
            buckets: VecDeque::with_capacity(cap),
            stats: None,
        }
    }

    /// Adds one reading (an increase over its elapsed time) ending at `at`.
    pub fn push(&mut self, at: Instant, delta: Delta) {
        let open = self.open.get_or_insert(Open {
            start: at,
            increase: 0.0,
            secs: 0.0,
        });
        open.increase += delta.increase as f64;
        open.secs += delta.elapsed.as_secs_f64();
        if at.saturating_duration_since(open.start) < self.bucket {
            return;
        }
        let closed = *open;
        self.open = None;
        if closed.secs <= 0.0 {
            return;
        }
        if self.buckets.len() >= self.cap {
            self.buckets.pop_front();
        }
        self.buckets.push_back(closed.increase / closed.secs);
        self.stats = Some(median_mad(&self.buckets));
    }

    /// Closed buckets held (at most `long_window / bucket`).
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no bucket has closed yet.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// The median and MAD, once at least `min_buckets` buckets have closed.
    pub fn stats(&self, min_buckets: usize) -> Option<Stats> {
        if self.buckets.len() >= min_buckets.max(1) {
            self.stats
        } else {
            None
        }
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn median_mad(values: &VecDeque<f64>) -> Stats {
    let mut v: Vec<f64> = values.iter().copied().collect();
    let m = median(&mut v);
    for x in &mut v {
        *x = (*x - m).abs();
    }
    Stats {
        median: m,
        mad: median(&mut v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(increase: u64) -> Delta {
        Delta {
            increase,
            elapsed: Duration::from_secs(1),
        }
    }

    #[test]
    fn median_and_mad_ignore_a_burst_and_memory_is_bounded() {
        let t0 = Instant::now();
        let mut b = Baseline::new(Duration::from_secs(100), Duration::from_secs(10));
        assert_eq!(b.stats(1), None);
        for s in 1..=1000u64 {
            // 100/s with one 10 s burst at 10,000/s, and +-10 alternating noise.
            let rate = if (500..510).contains(&s) {
                10_000
            } else if s % 2 == 0 {
                110
            } else {
                90
            };
            b.push(t0 + Duration::from_secs(s), d(rate));
            assert!(b.len() <= 10);
        }
        let st = b.stats(3).unwrap();
        assert!((st.median - 100.0).abs() < 1.0, "{st:?}");
        assert!(st.mad < 5.0, "{st:?}");
    }
}
