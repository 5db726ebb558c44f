//! Action de-tokenisation and un-normalisation (OPENVLA_FACTS §6), in f64 as numpy does it:
//! token → bin centre in [-1, 1] → `0.5 · (x + 1) · (q99 − q01) + q01` where the mask is set.

use std::collections::BTreeMap;

use super::config::{ActionStats, DatasetStats};
use super::ModelError;

/// Picks the dataset statistics: the named key, or the only one when none is named.
pub fn resolve_unnorm_key(
    norm_stats: &BTreeMap<String, DatasetStats>,
    unnorm_key: Option<&str>,
) -> Result<String, ModelError> {
    let available = || norm_stats.keys().cloned().collect::<Vec<_>>();
    match unnorm_key {
        Some(key) if norm_stats.contains_key(key) => Ok(key.to_string()),
        Some(key) => Err(ModelError::UnknownUnnormKey {
            key: key.to_string(),
            available: available(),
        }),
        None if norm_stats.len() == 1 => Ok(available().remove(0)),
        None => Err(ModelError::AmbiguousUnnormKey {
            available: available(),
        }),
    }
}

/// Maps generated token ids to normalised and un-normalised actions.
#[derive(Debug, Clone)]
pub struct ActionDecoder {
    /// Tokenizer vocabulary without padding (32000); action tokens are the ids just below it.
    text_vocab_size: usize,
    /// `(bins[:-1] + bins[1:]) / 2` with `bins = linspace(-1, 1, n_action_bins)`.
    bin_centers: Vec<f64>,
    q01: Vec<f64>,
    q99: Vec<f64>,
    mask: Vec<bool>,
}

impl ActionDecoder {
    pub fn new(text_vocab_size: usize, n_action_bins: usize, stats: &ActionStats) -> Self {
        let bins = linspace(-1.0, 1.0, n_action_bins);
        let bin_centers = bins.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
        let dim = stats.q01.len();
        Self {
            text_vocab_size,
            bin_centers,
            q01: stats.q01.clone(),
            q99: stats.q99.clone(),
            mask: stats.mask.clone().unwrap_or_else(|| vec![true; dim]),
        }
    }

    /// Number of action dimensions (tokens to generate).
    pub fn action_dim(&self) -> usize {
        self.q01.len()
    }

    /// Bin centre of a token: `bin_centers[clip(vocab − id − 1, 0, n_bins − 2)]`.
    pub fn normalized(&self, token: u32) -> f64 {
        let distance = self.text_vocab_size as i64 - token as i64;
        let last = self.bin_centers.len() as i64 - 1;
        let index = (distance - 1).clamp(0, last.max(0)) as usize;
        self.bin_centers[index]
    }

    /// `(normalized, action)` of `action_dim` tokens.
    pub fn decode(&self, tokens: &[u32]) -> (Vec<f64>, Vec<f64>) {
        let normalized: Vec<f64> = tokens.iter().map(|&t| self.normalized(t)).collect();
        let action = normalized
            .iter()
            .enumerate()
            .map(
                |(i, &x)| match (self.mask.get(i), self.q01.get(i), self.q99.get(i)) {
                    (Some(true), Some(&lo), Some(&hi)) => 0.5 * (x + 1.0) * (hi - lo) + lo,
                    _ => x,
                },
            )
            .collect();
        (normalized, action)
    }
}

/// `numpy.linspace(start, stop, num)`: `start + i · step`, the last value exactly `stop`.
fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut values: Vec<f64> = (0..num).map(|i| start + i as f64 * step).collect();
    if let Some(last) = values.last_mut() {
        *last = stop;
    }
    values
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn edge_tokens_map_to_extreme_bins_as_the_reference_states() {
        let stats = ActionStats {
            q01: vec![0.0],
            q99: vec![1.0],
            min: None,
            max: None,
            mask: None,
        };
        let d = ActionDecoder::new(32000, 256, &stats);
        // OPENVLA_FACTS §6: 31999 → idx 0 (−0.99608), 31745 and 31744 → idx 254 (+0.99608).
        assert!((d.normalized(31999) + 0.996078431372549).abs() < 1e-12);
        assert_eq!(d.normalized(31745), d.normalized(31744));
        assert!((d.normalized(31744) - 0.996078431372549).abs() < 1e-12);
        // Token ids outside the action range clip to the end bins.
        assert_eq!(d.normalized(2), d.normalized(31744));
        assert_eq!(d.normalized(32050), d.normalized(31999));
    }
}
