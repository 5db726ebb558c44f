//! Activation ranges for the W8A8 projector, and the accuracy measure of quantized modes.
//!
//! The calibration tool runs frames through the encoders and the projector; every input of a
//! projector layer (`projector.fc1` sees the fused patch features, `fc2` and `fc3` the GELU
//! outputs of the layer before) is folded into an [`ActivationHistogram`]. A high percentile
//! of `|x|` (99.99th by default) rather than the maximum sets each per-tensor scale, so that a
//! handful of outlier activations do not coarsen the step for all the others; those outliers
//! are clamped to ±127 steps.
//!
//! The histogram has one bin per (exponent, top 7 mantissa bits) of the f32 value: 32 640
//! bins covering every finite magnitude with a relative width of at most 2⁻⁷, so a percentile
//! is known to within 0.8 % while holding any number of frames in 255 KiB per tensor.

use std::collections::BTreeMap;

/// Default percentile of `|x|` that maps to int8 level 127.
pub const DEFAULT_PERCENTILE: f64 = 99.99;

const HISTOGRAM_BINS: usize = (0x7F80_0000u32 >> 16) as usize;

/// The distribution of `|x|` over every value recorded.
#[derive(Debug, Clone)]
pub struct ActivationHistogram {
    counts: Vec<u64>,
    total: u64,
    max_abs: f32,
    non_finite: u64,
}

impl Default for ActivationHistogram {
    fn default() -> Self {
        Self {
            counts: vec![0; HISTOGRAM_BINS],
            total: 0,
            max_abs: 0.0,
            non_finite: 0,
        }
    }
}

impl ActivationHistogram {
    pub fn record(&mut self, values: &[f32]) {
        for &v in values {
            let a = v.abs();
            if !a.is_finite() {
                self.non_finite += 1;
                continue;
            }
            self.counts[(a.to_bits() >> 16) as usize] += 1;
            self.total += 1;
            self.max_abs = self.max_abs.max(a);
        }
    }

    /// Finite values recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max_abs(&self) -> f32 {
        self.max_abs
    }

    /// Non-finite values seen (not counted in the distribution).
    pub fn non_finite(&self) -> u64 {
        self.non_finite
    }

    /// The `percentile`-th percentile of `|x|` (0-100), rounded up to its bin's upper edge and
    /// never above the largest value seen; 0 when nothing was recorded.
    pub fn abs_percentile(&self, percentile: f64) -> f32 {
        if self.total == 0 {
            return 0.0;
        }
        let rank = ((percentile.clamp(0.0, 100.0) / 100.0) * self.total as f64).ceil() as u64;
        let rank = rank.clamp(1, self.total);
        let mut seen = 0u64;
        for (bin, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                let upper = f32::from_bits(((bin as u32) + 1) << 16);
                return upper.min(self.max_abs);
            }
        }
        self.max_abs
    }
}

/// The calibrated input scale of one projector layer.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ActivationScale {
    /// Checkpoint name of the layer whose input this is (`projector.fc1`, ...).
    pub layer: String,
    /// The chosen percentile of `|x|` over the calibration frames.
    pub abs_percentile: f32,
    /// The largest `|x|` seen.
    pub abs_max: f32,
    /// Value of one int8 step: `abs_percentile / 127`.
    pub scale: f32,
}

/// Per-tensor INT8 activation scales of the projector, from calibration frames.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProjectorScales {
    /// Percentile of `|x|` mapped to level 127.
    pub percentile: f64,
    /// Calibration frames seen.
    pub frames: usize,
    pub layers: Vec<ActivationScale>,
}

impl ProjectorScales {
    /// The input scale of `layer`, if it was calibrated.
    pub fn scale_for(&self, layer: &str) -> Option<f32> {
        self.layers
            .iter()
            .find(|l| l.layer == layer)
            .map(|l| l.scale)
    }
}

/// Accumulates the projector's layer inputs over frames.
#[derive(Debug, Clone)]
pub struct ScaleCollector {
    percentile: f64,
    frames: usize,
    layers: BTreeMap<String, ActivationHistogram>,
}

impl ScaleCollector {
    pub fn new(percentile: f64) -> Self {
        Self {
            percentile,
            frames: 0,
            layers: BTreeMap::new(),
        }
    }

    /// Records the input of `layer` for the current frame.
    pub fn observe(&mut self, layer: &str, input: &[f32]) {
        self.layers
            .entry(layer.to_string())
            .or_default()
            .record(input);
    }

    /// Marks the end of one frame.
    pub fn end_frame(&mut self) {
        self.frames += 1;
    }

    /// The scales; a layer whose inputs were all zero gets the smallest positive scale so that
    /// it still quantizes (every input to 0).
    pub fn finish(&self) -> ProjectorScales {
        let layers = self
            .layers
            .iter()
            .map(|(layer, hist)| {
                let abs_percentile = hist.abs_percentile(self.percentile);
                ActivationScale {
                    layer: layer.clone(),
                    abs_percentile,
                    abs_max: hist.max_abs(),
                    scale: (abs_percentile / 127.0).max(f32::MIN_POSITIVE),
                }
            })
            .collect();
        ProjectorScales {
            percentile: self.percentile,
            frames: self.frames,
            layers,
        }
    }
}

/// Action accuracy as NanoLLM reports it: `1 − mean over steps of NRMSE`, where a step's NRMSE
/// is `sqrt(mean_d(((reference_d − test_d) / (q99_d − q01_d))²))`. Dimensions with a zero
/// range are left out (NanoLLM's `nanmean` drops them the same way).
pub fn action_accuracy(reference: &[Vec<f64>], test: &[Vec<f64>], q01: &[f64], q99: &[f64]) -> f64 {
    let mut total = 0.0;
    let mut steps = 0usize;
    for (r, t) in reference.iter().zip(test) {
        let mut sum = 0.0;
        let mut dims = 0usize;
        for (d, (&rv, &tv)) in r.iter().zip(t).enumerate() {
            let range = q99.get(d).copied().unwrap_or(0.0) - q01.get(d).copied().unwrap_or(0.0);
            if range != 0.0 && range.is_finite() {
                sum += ((rv - tv) / range).powi(2);
                dims += 1;
            }
        }
        if dims > 0 {
            total += (sum / dims as f64).sqrt();
            steps += 1;
        }
    }
    if steps == 0 {
        return f64::NAN;
    }
    1.0 - total / steps as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_of_a_known_distribution() {
        let mut h = ActivationHistogram::default();
        // 1..=10000 (and their negatives count by magnitude).
        let values: Vec<f32> = (1..=10_000).map(|i| i as f32).collect();
        h.record(&values);
        h.record(&[f32::NAN, f32::INFINITY]);
        assert_eq!(h.count(), 10_000);
        assert_eq!(h.non_finite(), 2);
        assert_eq!(h.max_abs(), 10_000.0);
        // The 50th percentile is 5000, within one bin (2⁻⁷ relative) above it.
        let p50 = h.abs_percentile(50.0);
        assert!(
            (5000.0..=5000.0 * (1.0 + 1.0 / 128.0)).contains(&p50),
            "{p50}"
        );
        // 99.99 % of 10000 values: rank 9999.
        let p = h.abs_percentile(99.99);
        assert!((9999.0..=10_000.0).contains(&p), "{p}");
        assert_eq!(h.abs_percentile(100.0), 10_000.0);
    }

    #[test]
    fn one_outlier_does_not_set_the_scale() {
        let mut c = ScaleCollector::new(99.0);
        let mut values = vec![0.5f32; 999];
        values.push(-400.0);
        c.observe("projector.fc1", &values);
        c.end_frame();
        let scales = c.finish();
        assert_eq!(scales.frames, 1);
        let l = &scales.layers[0];
        assert_eq!(l.layer, "projector.fc1");
        assert_eq!(l.abs_max, 400.0);
        assert!((0.5..=0.5 * (1.0 + 1.0 / 128.0)).contains(&l.abs_percentile));
        assert_eq!(
            scales.scale_for("projector.fc1"),
            Some(l.abs_percentile / 127.0)
        );
        assert_eq!(scales.scale_for("projector.fc2"), None);
    }

    #[test]
    fn accuracy_matches_a_hand_computed_nrmse() {
        // Step 1: errors 0.1 and 0.2 over ranges 1 and 2 → normalised 0.1, 0.1 → NRMSE 0.1.
        // Step 2: exact → 0. Third dimension has zero range and is left out.
        let reference = vec![vec![0.0, 0.0, 5.0], vec![1.0, 1.0, 5.0]];
        let test = vec![vec![0.1, -0.2, 9.0], vec![1.0, 1.0, 7.0]];
        let acc = action_accuracy(&reference, &test, &[0.0, -1.0, 1.0], &[1.0, 1.0, 1.0]);
        assert!((acc - 0.95).abs() < 1e-12, "{acc}");
    }
}
