//! A small lock-free latency histogram for the stats endpoint: one per
//! keyspace, tier and operation that was actually used, so it must be
//! cheap to record into and small.
//!
//! Buckets are log-linear over nanoseconds: two per power of two (from
//! `2^k` and from `1.5 * 2^k`), so a percentile read from it is the upper
//! bound of its bucket, at most a third above the true value. Everything
//! under 256 ns shares the first bucket and everything above about 34 s the
//! last. Prometheus gets the same calls through its own histogram; this one
//! exists because Prometheus' series carry no per-keyspace label for most
//! keyspaces (see docs/METRICS.md).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

/// `2^8` ns: below this every call lands in the first bucket.
const SMALLEST_EXPONENT: u32 = 8;
/// `2^35` ns (about 34 s): above this every call lands in the last bucket.
const LARGEST_EXPONENT: u32 = 35;
const BUCKETS_PER_POWER_OF_TWO: usize = 2;
const BUCKET_COUNT: usize =
    1 + (LARGEST_EXPONENT - SMALLEST_EXPONENT + 1) as usize * BUCKETS_PER_POWER_OF_TWO;

pub struct LatencyHistogram {
    buckets: [AtomicU64; BUCKET_COUNT],
    calls: AtomicU64,
    total_nanoseconds: AtomicU64,
    slowest_nanoseconds: AtomicU64,
}

/// What a histogram holds, in microseconds (fractions kept: L1 calls take
/// well under one).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LatencySummary {
    pub calls: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            calls: AtomicU64::new(0),
            total_nanoseconds: AtomicU64::new(0),
            slowest_nanoseconds: AtomicU64::new(0),
        }
    }
}

impl LatencyHistogram {
    pub fn record(&self, elapsed: Duration) {
        let nanoseconds = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.buckets[bucket_index(nanoseconds)].fetch_add(1, Ordering::Relaxed);
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.total_nanoseconds
            .fetch_add(nanoseconds, Ordering::Relaxed);
        self.slowest_nanoseconds
            .fetch_max(nanoseconds, Ordering::Relaxed);
    }

    /// `None` before the first call.
    pub fn summary(&self) -> Option<LatencySummary> {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|bucket| bucket.load(Ordering::Relaxed))
            .collect();
        let calls: u64 = counts.iter().sum();
        if calls == 0 {
            return None;
        }
        let slowest = self.slowest_nanoseconds.load(Ordering::Relaxed);
        let percentile =
            |quantile: f64| microseconds(percentile_upper_bound(&counts, quantile).min(slowest));
        Some(LatencySummary {
            calls,
            mean_us: microseconds(self.total_nanoseconds.load(Ordering::Relaxed)) / calls as f64,
            p50_us: percentile(0.50),
            p99_us: percentile(0.99),
            p999_us: percentile(0.999),
            max_us: microseconds(slowest),
        })
    }
}

fn microseconds(nanoseconds: u64) -> f64 {
    nanoseconds as f64 / 1000.0
}

fn bucket_index(nanoseconds: u64) -> usize {
    if nanoseconds < 1 << SMALLEST_EXPONENT {
        return 0;
    }
    let exponent = 63 - nanoseconds.leading_zeros();
    if exponent > LARGEST_EXPONENT {
        return BUCKET_COUNT - 1;
    }
    let upper_half = ((nanoseconds >> (exponent - 1)) & 1) as usize;
    1 + (exponent - SMALLEST_EXPONENT) as usize * BUCKETS_PER_POWER_OF_TWO + upper_half
}

/// The largest value bucket `index` holds, in nanoseconds.
fn bucket_upper_bound(index: usize) -> u64 {
    if index == 0 {
        return (1 << SMALLEST_EXPONENT) - 1;
    }
    let exponent = SMALLEST_EXPONENT + ((index - 1) / BUCKETS_PER_POWER_OF_TWO) as u32;
    let upper_half = ((index - 1) % BUCKETS_PER_POWER_OF_TWO) as u64;
    let power = 1u64 << exponent;
    power + (upper_half + 1) * (power / 2) - 1
}

/// The upper bound of the bucket holding the `quantile`-th call.
fn percentile_upper_bound(counts: &[u64], quantile: f64) -> u64 {
    let calls: u64 = counts.iter().sum();
    let rank = ((quantile * calls as f64).ceil() as u64).clamp(1, calls);
    let mut seen = 0;
    for (index, count) in counts.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return bucket_upper_bound(index);
        }
    }
    u64::MAX
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_lands_in_the_bucket_whose_bounds_hold_it() {
        for nanoseconds in [0, 1, 255, 256, 383, 384, 511, 512, 1000, 123_456, 1 << 35] {
            let index = bucket_index(nanoseconds);
            assert!(nanoseconds <= bucket_upper_bound(index), "{nanoseconds}");
            if index > 0 {
                assert!(nanoseconds > bucket_upper_bound(index - 1), "{nanoseconds}");
            }
        }
        assert_eq!(bucket_index(u64::MAX), BUCKET_COUNT - 1);
    }

    #[test]
    fn a_percentile_is_at_most_a_third_above_the_true_value() {
        let histogram = LatencyHistogram::default();
        for microsecond in 1..=1000u64 {
            histogram.record(Duration::from_micros(microsecond));
        }
        let summary = histogram.summary().unwrap();
        assert_eq!(summary.calls, 1000);
        assert!((summary.mean_us - 500.5).abs() < 1e-6, "{summary:?}");
        assert!(summary.p50_us >= 500.0 && summary.p50_us <= 500.0 * 4.0 / 3.0);
        assert!(summary.p99_us >= 990.0 && summary.p99_us <= 1000.0);
        assert_eq!(summary.max_us, 1000.0);
    }

    #[test]
    fn an_unused_histogram_has_no_summary() {
        assert_eq!(LatencyHistogram::default().summary(), None);
    }
}
