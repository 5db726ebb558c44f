//! Counters and latency histograms shared between the real-time threads and the status
//! reporter. Writers only do relaxed atomic adds and stores: no lock, no allocation.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// Values below this are their own bucket (microseconds).
const LINEAR_LIMIT: u64 = 32;
/// Buckets per power of two above the linear range (about 6 % resolution).
const SUB_BUCKETS: u64 = 16;
/// Largest recorded value: 2^40 µs, about 12.7 days; larger values land in the last bucket.
const MAX_EXPONENT: u64 = 40;
const BUCKETS: usize = (LINEAR_LIMIT + (MAX_EXPONENT - 5) * SUB_BUCKETS) as usize;

/// A lock-free histogram of durations with microsecond resolution at the low end and about
/// 6 % relative resolution above 32 µs. Samples go into the current of two epochs; the
/// quantiles and the maximum cover both, so that a reader who calls [`Self::rotate`] every
/// W seconds sees the last W to 2·W seconds (a service running for days reports how it runs
/// now, not on average since it started). Without rotation everything since the start counts.
pub struct LatencyHistogram {
    epochs: [[AtomicU64; BUCKETS]; 2],
    epoch_max_us: [AtomicU64; 2],
    current: AtomicUsize,
    /// Samples since the start.
    count: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            epochs: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            epoch_max_us: std::array::from_fn(|_| AtomicU64::new(0)),
            current: AtomicUsize::new(0),
            count: AtomicU64::new(0),
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
        let epoch = self.current.load(Ordering::Relaxed) & 1;
        self.epochs[epoch][bucket_of(us)].fetch_add(1, Ordering::Relaxed);
        self.epoch_max_us[epoch].fetch_max(us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_ms(&self, ms: f64) {
        if ms.is_finite() && ms >= 0.0 {
            self.record_ns((ms * 1e6) as u64);
        }
    }

    /// Starts a new epoch: the older of the two is emptied and receives the samples from now
    /// on. Called by the one reader (the status thread); a sample racing with it lands in
    /// either epoch.
    pub fn rotate(&self) {
        let next = (self.current.load(Ordering::Relaxed) + 1) & 1;
        for bucket in &self.epochs[next] {
            bucket.store(0, Ordering::Relaxed);
        }
        self.epoch_max_us[next].store(0, Ordering::Relaxed);
        self.current.store(next, Ordering::Relaxed);
    }

    /// Samples since the start (not only the window).
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Samples in the window (both epochs).
    pub fn window_count(&self) -> u64 {
        self.window_counts().iter().sum()
    }

    /// The largest sample of the window, in milliseconds (0 when it is empty).
    pub fn max_ms(&self) -> f64 {
        let max = self.epoch_max_us[0]
            .load(Ordering::Relaxed)
            .max(self.epoch_max_us[1].load(Ordering::Relaxed));
        max as f64 / 1e3
    }

    fn window_counts(&self) -> [u64; BUCKETS] {
        std::array::from_fn(|i| {
            self.epochs[0][i].load(Ordering::Relaxed) + self.epochs[1][i].load(Ordering::Relaxed)
        })
    }

    /// The `q` quantile (0 to 1) of the window in milliseconds, at the middle of its bucket;
    /// `None` when the window is empty.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let counts = self.window_counts();
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
    /// Action steps that ended without a fresh, valid action.
    pub misses: AtomicU64,
    pub consecutive_misses: AtomicU64,
    /// Actions rejected by the safety filter (non-finite values).
    pub rejected: AtomicU64,
    /// Actions with at least one value clamped to its limit.
    pub clamped: AtomicU64,
    /// Actions that arrived older than `max_action_age`.
    pub stale: AtomicU64,
    /// ACT commands changed by the motion limits (velocity, acceleration, jerk, workspace,
    /// gripper rate).
    pub limited: AtomicU64,
    /// `arm` requests refused because a stop condition held.
    pub arm_refused: AtomicU64,
    /// Whether the newest tick left the service armed.
    pub armed: AtomicBool,
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
    /// Step, within its chunk, of the newest ACT (always 0 for single actions).
    pub chunk_step: AtomicU64,
    /// Chunks whose remaining steps were dropped (STOP, disarm, e-stop, a new instruction),
    /// and results computed under an instruction no longer in force.
    pub chunks_dropped: AtomicU64,
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

    #[test]
    fn rotation_keeps_the_last_two_epochs() {
        let histogram = LatencyHistogram::default();
        // An old epoch of slow samples, then two of fast ones.
        for _ in 0..100 {
            histogram.record_ns(500_000_000);
        }
        histogram.rotate();
        for _ in 0..100 {
            histogram.record_ns(2_000_000);
        }
        // Still in the window: half slow, half fast.
        assert!(histogram.quantile_ms(0.99).unwrap() > 400.0);
        histogram.rotate();
        for _ in 0..100 {
            histogram.record_ns(3_000_000);
        }
        // The slow epoch is gone; only the 2 ms and 3 ms epochs remain.
        let p99 = histogram.quantile_ms(0.99).unwrap();
        assert!((2.5..3.5).contains(&p99), "p99 {p99}");
        assert_eq!(histogram.max_ms(), 3.0);
        assert_eq!(histogram.window_count(), 200);
        assert_eq!(histogram.count(), 300);
    }
}
