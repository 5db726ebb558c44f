//! Counters and latency histograms shared between the real-time threads and the status
//! reporter. Writers only do relaxed atomic adds and stores: no lock, no allocation.

use std::sync::atomic::{AtomicU64, Ordering};

/// Values below this are their own bucket (microseconds).
const LINEAR_LIMIT: u64 = 32;
/// Buckets per power of two above the linear range (about 6 % resolution).
const SUB_BUCKETS: u64 = 16;
/// Largest recorded value: 2^40 µs, about 12.7 days; larger values land in the last bucket.
const MAX_EXPONENT: u64 = 40;
const BUCKETS: usize = (LINEAR_LIMIT + (MAX_EXPONENT - 5) * SUB_BUCKETS) as usize;

/// A lock-free histogram of durations with microsecond resolution at the low end and about
/// 6 % relative resolution above 32 µs.
pub struct LatencyHistogram {
    buckets: [AtomicU64; BUCKETS],
    count: AtomicU64,
    max_us: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
        }
    }
}

fn bucket_of(us: u64) -> usize {
    if us < LINEAR_LIMIT {
        return us as usize;
    }
    let exponent = (63 - us.leading_zeros() as u64).min(MAX_EXPONENT - 1);
    let mantissa = (us >> (exponent - 4)) & (SUB_BUCKETS - 1);
    let index = LINEAR_LIMIT + (exponent - 5) * SUB_BUCKETS + mantissa;
    (index as usize).min(BUCKETS - 1)
}

/// The lower bound and width of bucket `index`, in µs.
fn bucket_range(index: usize) -> (u64, u64) {
    let index = index as u64;
    if index < LINEAR_LIMIT {
        return (index, 1);
    }
    let exponent = (index - LINEAR_LIMIT) / SUB_BUCKETS + 5;
    let mantissa = (index - LINEAR_LIMIT) % SUB_BUCKETS;
    let width = 1u64 << (exponent - 4);
    ((SUB_BUCKETS + mantissa) * width, width)
}

impl LatencyHistogram {
    pub fn record_ns(&self, ns: u64) {
        let us = ns / 1_000;
        self.buckets[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    pub fn record_ms(&self, ms: f64) {
        if ms.is_finite() && ms >= 0.0 {
            self.record_ns((ms * 1e6) as u64);
        }
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn max_ms(&self) -> f64 {
        self.max_us.load(Ordering::Relaxed) as f64 / 1e3
    }

    /// The `q` quantile (0 to 1) in milliseconds, at the middle of its bucket; `None` when empty.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                let (low, width) = bucket_range(index);
                let middle_us = low as f64 + (width as f64 - 1.0) / 2.0;
                let max_ms = self.max_ms();
                return Some((middle_us / 1e3).min(max_ms));
            }
        }
        None
    }
}

/// What the control thread reports about itself.
#[derive(Default)]
pub struct ControlStats {
    /// Ticks run (commands handed to the publisher).
    pub ticks: AtomicU64,
    pub act_ticks: AtomicU64,
    pub hold_ticks: AtomicU64,
    pub stop_ticks: AtomicU64,
    /// Ticks without a fresh, valid action (missing, stale or rejected).
    pub misses: AtomicU64,
    pub consecutive_misses: AtomicU64,
    /// Actions rejected by the safety filter (non-finite values).
    pub rejected: AtomicU64,
    /// Actions with at least one value clamped to its limit.
    pub clamped: AtomicU64,
    /// Actions that arrived older than `max_action_age`.
    pub stale: AtomicU64,
    /// Tick slots skipped because the loop woke too late.
    pub overruns: AtomicU64,
    /// The wire value of the state of the newest tick.
    pub state: AtomicU64,
    /// Why the newest STOP happened (a [`crate::control::supervisor::StopCause`] as u64).
    pub stop_cause: AtomicU64,
    /// Wake-up lateness of each tick (actual minus scheduled).
    pub tick_jitter: LatencyHistogram,
    /// Age of each published ACT action: tick time minus the tick that latched its frame.
    pub action_age: LatencyHistogram,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_values_in_order() {
        let mut previous = 0;
        for us in [
            0,
            1,
            31,
            32,
            33,
            47,
            63,
            64,
            100,
            1_000,
            65_535,
            1 << 30,
            u64::MAX,
        ] {
            let b = bucket_of(us);
            assert!(b >= previous, "{us} went to bucket {b} below {previous}");
            previous = b;
            let (low, width) = bucket_range(b);
            if us < (1 << MAX_EXPONENT) {
                assert!(
                    low <= us && us < low + width,
                    "{us} not in [{low}, {})",
                    low + width
                );
            }
        }
    }

    #[test]
    fn quantiles_are_within_a_bucket() {
        let histogram = LatencyHistogram::default();
        assert_eq!(histogram.quantile_ms(0.5), None);
        // 1..=1000 ms: p50 is 500 ms, p99 is 990 ms.
        for ms in 1..=1000u64 {
            histogram.record_ns(ms * 1_000_000);
        }
        let p50 = histogram.quantile_ms(0.5).unwrap();
        let p99 = histogram.quantile_ms(0.99).unwrap();
        assert!((p50 - 500.0).abs() / 500.0 < 0.07, "p50 {p50}");
        assert!((p99 - 990.0).abs() / 990.0 < 0.07, "p99 {p99}");
        assert_eq!(histogram.max_ms(), 1000.0);
        assert_eq!(histogram.count(), 1000);
    }

    #[test]
    fn small_values_are_exact() {
        let histogram = LatencyHistogram::default();
        histogram.record_ns(7_000);
        assert_eq!(histogram.quantile_ms(0.5), Some(0.007));
    }
}
