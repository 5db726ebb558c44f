//! `[safety]` and the other settings the control layer owns, as plain data with their
//! validation: the service's config file deserializes into them, and each error names the
//! config key it comes from.

use serde::{Deserialize, Serialize};

use crate::ACTION_DIM;

/// A settings error: the config key at fault and what is wrong with it.
pub type Invalid = (String, String);

fn invalid(key: &str, message: String) -> Invalid {
    (key.to_string(), message)
}

/// `[safety]`: limits applied to every action (per action step) and to every command
/// (in physical units) before it is published.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SafetyConfig {
    /// Lower limits of dx, dy, dz, droll, dpitch, dyaw, gripper, per action step.
    pub min: [f32; ACTION_DIM],
    /// Upper limits, same order.
    pub max: [f32; ACTION_DIM],
    /// Each translation axis, m/s.
    pub max_linear_velocity: f64,
    /// Each translation axis, m/s².
    pub max_linear_acceleration: f64,
    /// Each translation axis, m/s³.
    pub max_linear_jerk: f64,
    /// Each rotation axis, rad/s.
    pub max_angular_velocity: f64,
    /// Each rotation axis, rad/s².
    pub max_angular_acceleration: f64,
    /// Each rotation axis, rad/s³.
    pub max_angular_jerk: f64,
    /// Gripper range (0 closed .. 1 open) per second.
    pub max_gripper_rate: f64,
    /// Lower corner of the workspace box (m, x y z), relative to the pose at arming,
    /// integrated from the published deltas. Unset: no workspace limit.
    pub workspace_min: Option<[f64; 3]>,
    /// Upper corner of the workspace box; set both corners or neither.
    pub workspace_max: Option<[f64; 3]>,
}

impl Default for SafetyConfig {
    fn default() -> Self {
        // Translation in metres, rotation in radians per step, gripper 0 (closed) to 1 (open):
        // wider than the usual OpenVLA dataset statistics, narrow enough to stop a runaway.
        // The rates are about a fifth of a collaborative arm's (Franka: 1.7 m/s, 13 m/s²,
        // 6500 m/s³ at the end effector).
        Self {
            min: [-0.05, -0.05, -0.05, -0.25, -0.25, -0.25, 0.0],
            max: [0.05, 0.05, 0.05, 0.25, 0.25, 0.25, 1.0],
            max_linear_velocity: 0.25,
            max_linear_acceleration: 2.0,
            max_linear_jerk: 50.0,
            max_angular_velocity: 1.0,
            max_angular_acceleration: 8.0,
            max_angular_jerk: 200.0,
            max_gripper_rate: 2.0,
            workspace_min: None,
            workspace_max: None,
        }
    }
}

impl SafetyConfig {
    /// Checks every limit; the error names the key (`safety.max[3]`, ...).
    pub fn validate(&self) -> Result<(), Invalid> {
        let safety = self;
        for (key, value) in [
            ("safety.max_linear_velocity", safety.max_linear_velocity),
            (
                "safety.max_linear_acceleration",
                safety.max_linear_acceleration,
            ),
            ("safety.max_linear_jerk", safety.max_linear_jerk),
            ("safety.max_angular_velocity", safety.max_angular_velocity),
            (
                "safety.max_angular_acceleration",
                safety.max_angular_acceleration,
            ),
            ("safety.max_angular_jerk", safety.max_angular_jerk),
            ("safety.max_gripper_rate", safety.max_gripper_rate),
        ] {
            if !value.is_finite() || value <= 0.0 {
                return Err(invalid(key, "must be a finite number > 0".into()));
            }
        }
        match (safety.workspace_min, safety.workspace_max) {
            (None, None) => {}
            (Some(_), None) => {
                return Err(invalid(
                    "safety.workspace_max",
                    "must be set with safety.workspace_min".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "safety.workspace_min",
                    "must be set with safety.workspace_max".into(),
                ))
            }
            (Some(lo), Some(hi)) => {
                for i in 0..3 {
                    if !lo[i].is_finite() || lo[i] > 0.0 {
                        return Err(invalid(
                            &format!("safety.workspace_min[{i}]"),
                            format!(
                                "{} must be finite and <= 0: the box holds the pose at arming",
                                lo[i]
                            ),
                        ));
                    }
                    if !hi[i].is_finite() || hi[i] < 0.0 {
                        return Err(invalid(
                            &format!("safety.workspace_max[{i}]"),
                            format!(
                                "{} must be finite and >= 0: the box holds the pose at arming",
                                hi[i]
                            ),
                        ));
                    }
                }
            }
        }
        for i in 0..ACTION_DIM {
            let (lo, hi) = (safety.min[i], safety.max[i]);
            if !lo.is_finite() {
                return Err(invalid(
                    &format!("safety.min[{i}]"),
                    "must be finite".into(),
                ));
            }
            if !hi.is_finite() {
                return Err(invalid(
                    &format!("safety.max[{i}]"),
                    "must be finite".into(),
                ));
            }
            if lo > hi {
                return Err(invalid(
                    &format!("safety.min[{i}]"),
                    format!("{lo} is above safety.max[{i}] = {hi}"),
                ));
            }
            // HOLD and STOP command zero deltas (the gripper is kept, dimension 6): zero must
            // lie within the limits, or those commands would leave the configured range.
            if i < ACTION_DIM - 1 {
                if lo > 0.0 {
                    return Err(invalid(
                        &format!("safety.min[{i}]"),
                        format!("{lo} is above 0; HOLD and STOP command a zero delta"),
                    ));
                }
                if hi < 0.0 {
                    return Err(invalid(
                        &format!("safety.max[{i}]"),
                        format!("{hi} is below 0; HOLD and STOP command a zero delta"),
                    ));
                }
            }
        }

        Ok(())
    }
}

/// What a missing or unreadable e-stop state file means at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EStopMissing {
    /// Start latched: the operator releases the e-stop explicitly (first install included).
    #[default]
    Latched,
    /// Start released (the bundled simulation).
    Released,
}

/// The period of one action step at `action_hz`, in nanoseconds.
pub fn step_period_ns(action_hz: f64) -> u64 {
    if action_hz.is_finite() && action_hz > 0.0 {
        (1e9 / action_hz).round() as u64
    } else {
        0
    }
}
