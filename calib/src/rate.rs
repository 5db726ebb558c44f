//! Turning measured latencies into a control rate the machine sustains.

/// The control rates offered, from the `[control] rate_hz` values robots commonly run at.
const RATES_HZ: [f64; 14] = [
    200.0, 100.0, 50.0, 30.0, 25.0, 20.0, 15.0, 10.0, 5.0, 4.0, 2.0, 1.0, 0.5, 0.25,
];

/// Headroom kept above the p99 policy latency: the result must be ready one period after its
/// frame was latched (ARCHITECTURE.md §4), with margin for load the calibration did not see.
pub const MARGIN: f64 = 1.25;

/// The highest offered rate whose period covers `p99_ms × MARGIN`; `None` when even the
/// slowest rate is too fast, or the latency is not a positive finite number.
pub fn recommend_rate_hz(p99_ms: f64) -> Option<f64> {
    if !(p99_ms.is_finite() && p99_ms > 0.0) {
        return None;
    }
    let needed_ms = p99_ms * MARGIN;
    RATES_HZ.iter().copied().find(|hz| 1000.0 / hz >= needed_ms)
}

/// For a policy slower than every offered rate: the rate whose period is exactly
/// `p99_ms × MARGIN`, rounded down to two significant digits; 0 when the latency is not a
/// positive finite number.
pub fn sustainable_rate_hz(p99_ms: f64) -> f64 {
    if !(p99_ms.is_finite() && p99_ms > 0.0) {
        return 0.0;
    }
    let exact = 1000.0 / (p99_ms * MARGIN);
    let unit = 10f64.powf(exact.log10().floor() - 1.0);
    // The factor keeps an exact quotient (0.08 / 0.001) from flooring to one step below.
    ((exact / unit) * (1.0 + 1e-9)).floor() * unit
}

/// The `q`-quantile (0..=1) of `samples` by linear interpolation between order statistics.
pub fn quantile(samples: &[f64], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_leaves_the_margin_above_p99() {
        // 30 ms × 1.25 = 37.5 ms: 25 Hz (40 ms) fits, 30 Hz (33.3 ms) does not.
        assert_eq!(recommend_rate_hz(30.0), Some(25.0));
        assert_eq!(recommend_rate_hz(4.0), Some(200.0));
        assert_eq!(recommend_rate_hz(79.0), Some(10.0));
        assert_eq!(recommend_rate_hz(81.0), Some(5.0));
        assert_eq!(recommend_rate_hz(10_000.0), None);
        assert_eq!(recommend_rate_hz(f64::NAN), None);
    }

    #[test]
    fn sustainable_rate_rounds_down_to_two_digits() {
        // 10 s × 1.25 = 12.5 s: 0.08 Hz; 3.3 s × 1.25 = 4.125 s: 0.2424 Hz → 0.24.
        assert!((sustainable_rate_hz(10_000.0) - 0.08).abs() < 1e-12);
        assert!((sustainable_rate_hz(3_300.0) - 0.24).abs() < 1e-12);
        assert_eq!(sustainable_rate_hz(f64::INFINITY), 0.0);
    }

    #[test]
    fn quantile_interpolates_order_statistics() {
        let s = [5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(quantile(&s, 0.5), 3.0);
        assert_eq!(quantile(&s, 0.0), 1.0);
        assert_eq!(quantile(&s, 1.0), 5.0);
        assert_eq!(quantile(&s, 0.25), 2.0);
        assert!((quantile(&[1.0, 2.0], 0.99) - 1.99).abs() < 1e-12);
    }
}
