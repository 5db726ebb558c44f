//! The safety filter: the last check before an action is published. It rejects non-finite
//! values and clamps every dimension to its configured limits.

use crate::safety_config::SafetyConfig;
use crate::ACTION_DIM;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SafetyFilter {
    min: [f32; ACTION_DIM],
    max: [f32; ACTION_DIM],
}

/// What the filter made of an action.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Filtered {
    /// Within limits, unchanged.
    Pass([f32; ACTION_DIM]),
    /// At least one value was clamped to its limit.
    Clamped([f32; ACTION_DIM]),
    /// Dimension `dimension` was NaN or infinite; nothing of this action may be used.
    Rejected { dimension: usize },
}

impl SafetyFilter {
    pub fn new(config: &SafetyConfig) -> Self {
        Self {
            min: config.min,
            max: config.max,
        }
    }

    pub fn apply(&self, action: &[f32; ACTION_DIM]) -> Filtered {
        if let Some(dimension) = action.iter().position(|v| !v.is_finite()) {
            return Filtered::Rejected { dimension };
        }
        let mut out = *action;
        let mut clamped = false;
        for (i, value) in out.iter_mut().enumerate() {
            let limited = value.clamp(self.min[i], self.max[i]);
            if limited != *value {
                clamped = true;
                *value = limited;
            }
        }
        if clamped {
            Filtered::Clamped(out)
        } else {
            Filtered::Pass(out)
        }
    }

    /// `value` clamped to the gripper limits.
    pub fn clamp_gripper(&self, value: f32) -> f32 {
        let g = ACTION_DIM - 1;
        if value.is_finite() {
            value.clamp(self.min[g], self.max[g])
        } else {
            self.min[g]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter() -> SafetyFilter {
        SafetyFilter::new(&SafetyConfig {
            min: [-0.1, -0.1, -0.1, -0.5, -0.5, -0.5, 0.0],
            max: [0.1, 0.1, 0.1, 0.5, 0.5, 0.5, 1.0],
            ..SafetyConfig::default()
        })
    }

    #[test]
    fn passes_actions_within_limits() {
        let a = [0.01, -0.02, 0.1, 0.0, -0.5, 0.3, 1.0];
        assert_eq!(filter().apply(&a), Filtered::Pass(a));
    }

    #[test]
    fn clamps_each_dimension_to_its_own_limits() {
        let a = [0.2, -0.3, 0.05, 0.7, -0.9, 0.1, 1.5];
        assert_eq!(
            filter().apply(&a),
            Filtered::Clamped([0.1, -0.1, 0.05, 0.5, -0.5, 0.1, 1.0])
        );
    }

    #[test]
    fn rejects_non_finite_values() {
        for (dimension, bad) in [(0, f32::NAN), (3, f32::INFINITY), (6, f32::NEG_INFINITY)] {
            let mut a = [0.0; ACTION_DIM];
            a[dimension] = bad;
            assert_eq!(filter().apply(&a), Filtered::Rejected { dimension });
        }
    }
}
