//! Motion limits in physical units, as a pure function: the command a tick wants, the state
//! of the commands before it and the limits in; the command that may be published out.
//!
//! Each axis of the end effector's translation (m/s, m/s², m/s³) and rotation (rad/s,
//! rad/s², rad/s³) has a velocity, an acceleration and a jerk bound, after libfranka's
//! `limitRate`: the jerk bounds the change of acceleration, and the acceleration is kept
//! where the velocity can still be reached without overshooting its bound
//! (`a ≤ (J/A)·(V − v)`). Together these give, for every axis, an interval of velocities the
//! tick may command. The limiter starts from the motion that continues the current
//! acceleration (zero jerk, inside the intervals) and moves from it towards the wanted
//! velocity as far as every interval allows: a limited command is scaled along the
//! direction of its change, so from rest it keeps its heading exactly.
//!
//! The optional workspace box bounds the position integrated from the published
//! translations (relative to the pose at arming); a translation that would leave it is
//! shortened along its direction to end on the wall, a hard stop that overrides the
//! acceleration and jerk bounds on that tick; the translation then restarts from its new
//! velocity with no acceleration, within every bound. The gripper (absolute) moves at a
//! bounded rate.
//!
//! Only ACT commands go through the limiter. HOLD and STOP publish zero deltas at once; the
//! state then restarts from rest ([`MotionState::at_rest`]).

use crate::safety_config::SafetyConfig;

/// Bounds of one group of axes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AxisLimits {
    pub velocity: f64,
    pub acceleration: f64,
    pub jerk: f64,
}

/// A box around the pose at arming, metres.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Workspace {
    pub min: [f64; 3],
    pub max: [f64; 3],
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MotionLimits {
    /// dx, dy, dz.
    pub linear: AxisLimits,
    /// droll, dpitch, dyaw.
    pub angular: AxisLimits,
    /// Gripper range per second.
    pub gripper_rate: f64,
    pub workspace: Option<Workspace>,
}

impl MotionLimits {
    pub fn from_config(config: &SafetyConfig) -> Self {
        Self {
            linear: AxisLimits {
                velocity: config.max_linear_velocity,
                acceleration: config.max_linear_acceleration,
                jerk: config.max_linear_jerk,
            },
            angular: AxisLimits {
                velocity: config.max_angular_velocity,
                acceleration: config.max_angular_acceleration,
                jerk: config.max_angular_jerk,
            },
            gripper_rate: config.max_gripper_rate,
            workspace: match (config.workspace_min, config.workspace_max) {
                (Some(min), Some(max)) => Some(Workspace { min, max }),
                _ => None,
            },
        }
    }

    fn axis(&self, i: usize) -> &AxisLimits {
        if i < 3 {
            &self.linear
        } else {
            &self.angular
        }
    }
}

/// What the limiter remembers of the published commands.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct MotionState {
    /// Velocity of the last command, per axis (m/s, rad/s).
    pub velocity: [f64; 6],
    /// Acceleration of the last command, per axis.
    pub acceleration: [f64; 6],
    /// Position integrated from the published translations since arming (m).
    pub position: [f64; 3],
    /// The last published gripper value.
    pub gripper: f64,
}

impl MotionState {
    /// After a HOLD or STOP: no velocity, no acceleration; position and gripper kept.
    pub fn at_rest(&self) -> Self {
        Self {
            velocity: [0.0; 6],
            acceleration: [0.0; 6],
            ..*self
        }
    }
}

/// The limiter's answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limited {
    /// Deltas to publish for this tick (m, rad).
    pub delta: [f64; 6],
    pub gripper: f64,
    /// The state after publishing them.
    pub state: MotionState,
    /// Whether anything was changed.
    pub limited: bool,
}

/// Limits the tick's wanted `delta` (6 finite values, m and rad over `dt` seconds) and
/// absolute `gripper`, given the state left by the previous commands.
pub fn limit_motion(
    delta: &[f64; 6],
    gripper: f64,
    dt: f64,
    last: &MotionState,
    limits: &MotionLimits,
) -> Limited {
    let dt = if dt.is_finite() && dt > 0.0 { dt } else { 1e-3 };
    let mut wanted: [f64; 6] = std::array::from_fn(|i| delta[i] / dt);
    // A velocity over its bound is scaled down with the whole command first (same heading),
    // so that one axis at its bound does not hold the others back.
    let mut over = 1.0f64;
    for (i, v) in wanted.iter().enumerate() {
        let bound = limits.axis(i).velocity;
        if v.abs() > bound {
            over = over.min(bound / v.abs());
        }
    }
    let mut limited = over < 1.0;
    if limited {
        for v in &mut wanted {
            *v *= over;
        }
    }
    let mut low = [0.0; 6];
    let mut high = [0.0; 6];
    let mut coast = [0.0; 6];
    for i in 0..6 {
        let axis = limits.axis(i);
        let (v, a) = (last.velocity[i], last.acceleration[i]);
        let max_a = axis.acceleration;
        // A jerk above A/dt could reach the velocity bound with more acceleration than one
        // tick can remove; the bound (J/A)·(V − v) needs J·dt ≤ A.
        let jerk = axis.jerk.min(max_a / dt);
        let safe_high = max_a.min(jerk / max_a * (axis.velocity - v));
        let safe_low = (-max_a).max(jerk / max_a * (-axis.velocity - v));
        let mut a_low = (a - jerk * dt).max(safe_low);
        let mut a_high = (a + jerk * dt).min(safe_high);
        if a_low > a_high {
            // Only after a workspace stop broke the acceleration history: the velocity
            // bound comes first.
            let a_safe = if a - jerk * dt > safe_high {
                safe_high
            } else {
                safe_low
            };
            a_low = a_safe;
            a_high = a_safe;
        }
        low[i] = v + a_low * dt;
        high[i] = v + a_high * dt;
        coast[i] = (v + a * dt).clamp(low[i], high[i]);
    }
    // The largest step from `coast` towards `wanted` that every axis allows; an axis whose
    // wanted velocity is inside its interval allows all of it (the intervals are convex).
    let slack = |bound: f64| bound.abs() * 1e-12 + 1e-15;
    let mut scale = 1.0f64;
    for i in 0..6 {
        let change = wanted[i] - coast[i];
        let room = if wanted[i] > high[i] + slack(high[i]) {
            high[i] - coast[i]
        } else if wanted[i] < low[i] - slack(low[i]) {
            low[i] - coast[i]
        } else {
            continue;
        };
        if change != 0.0 && room / change < scale {
            scale = (room / change).max(0.0);
        }
    }
    let mut velocity = wanted;
    if scale < 1.0 {
        limited = true;
        for i in 0..6 {
            velocity[i] = (coast[i] + scale * (wanted[i] - coast[i])).clamp(low[i], high[i]);
        }
    } else {
        for i in 0..6 {
            velocity[i] = wanted[i].clamp(low[i], high[i]);
        }
    }
    let mut out: [f64; 6] = std::array::from_fn(|i| velocity[i] * dt);
    if !limited {
        out = *delta;
    }

    let mut position = last.position;
    let mut wall_stop = false;
    if let Some(box_) = &limits.workspace {
        let mut fraction = 1.0f64;
        for i in 0..3 {
            let target = position[i] + out[i];
            if target > box_.max[i] && out[i] > 0.0 {
                fraction = fraction.min(((box_.max[i] - position[i]) / out[i]).max(0.0));
            } else if target < box_.min[i] && out[i] < 0.0 {
                fraction = fraction.min(((box_.min[i] - position[i]) / out[i]).max(0.0));
            }
        }
        if fraction < 1.0 {
            limited = true;
            wall_stop = true;
            for i in 0..3 {
                out[i] *= fraction;
                velocity[i] = out[i] / dt;
            }
        }
    }
    for i in 0..3 {
        position[i] += out[i];
        if let Some(box_) = &limits.workspace {
            // Rounding must not leave a position a hair outside the box.
            position[i] = position[i].clamp(box_.min[i], box_.max[i]);
        }
    }

    let step = limits.gripper_rate * dt;
    let gripper_out = gripper.clamp(last.gripper - step, last.gripper + step);
    limited |= gripper_out != gripper;

    // A wall stop is a stop: the translation restarts from its new velocity with no
    // acceleration, so that the bounds hold again from the next tick on.
    let acceleration = std::array::from_fn(|i| {
        if wall_stop && i < 3 {
            0.0
        } else {
            (velocity[i] - last.velocity[i]) / dt
        }
    });
    Limited {
        delta: out,
        gripper: gripper_out,
        state: MotionState {
            velocity,
            acceleration,
            position,
            gripper: gripper_out,
        },
        limited,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DT: f64 = 0.01;

    fn limits() -> MotionLimits {
        MotionLimits {
            linear: AxisLimits {
                velocity: 0.25,
                acceleration: 2.0,
                jerk: 50.0,
            },
            angular: AxisLimits {
                velocity: 1.0,
                acceleration: 8.0,
                jerk: 200.0,
            },
            gripper_rate: 2.0,
            workspace: None,
        }
    }

    /// Runs `wanted(tick)` (a per-tick delta) through the limiter and checks every bound
    /// at every tick, and that the limiter holds back no more than a bound demands: a
    /// command passes unchanged, or some axis ends on one of its bounds (the velocity, the
    /// acceleration, the jerk, or the acceleration from which the velocity bound is still
    /// reached without overshoot). Returns the published deltas.
    fn run_checked(
        limits: &MotionLimits,
        dt: f64,
        ticks: usize,
        wanted: impl Fn(usize) -> [f64; 6],
    ) -> Vec<[f64; 6]> {
        let tolerance = 1e-9;
        let mut state = MotionState::default();
        let mut published = Vec::new();
        let on = |value: f64, bound: f64| (value - bound).abs() <= bound.abs() * 1e-6 + 1e-12;
        for tick in 0..ticks {
            let wanted = wanted(tick);
            let out = limit_motion(&wanted, 0.0, dt, &state, limits);
            if !out.limited {
                assert_eq!(out.delta, wanted, "tick {tick}: unlimited but changed");
            }
            let mut at_a_bound = false;
            for i in 0..6 {
                let axis = limits.axis(i);
                let v = out.delta[i] / dt;
                let a = (v - state.velocity[i]) / dt;
                let j = (a - state.acceleration[i]) / dt;
                assert!(
                    v.abs() <= axis.velocity * (1.0 + tolerance),
                    "tick {tick} axis {i}: v {v}"
                );
                assert!(
                    a.abs() <= axis.acceleration * (1.0 + tolerance),
                    "tick {tick} axis {i}: a {a}"
                );
                let jerk = axis.jerk.min(axis.acceleration / dt);
                assert!(
                    j.abs() <= jerk * (1.0 + 1e-6) + 1e-6,
                    "tick {tick} axis {i}: j {j}"
                );
                assert!(out.delta[i].is_finite());
                let (v_max, a_max) = (axis.velocity, axis.acceleration);
                let a_reaching = [
                    jerk / a_max * (v_max - state.velocity[i]),
                    jerk / a_max * (-v_max - state.velocity[i]),
                ];
                at_a_bound |= on(v.abs(), v_max)
                    || on(a.abs(), a_max)
                    || on(j.abs(), jerk)
                    || a_reaching.iter().any(|&bound| on(a, bound));
            }
            assert!(
                !out.limited || at_a_bound,
                "tick {tick}: limited to {:?} (wanted {wanted:?}) with no axis on a bound",
                out.delta
            );
            state = out.state;
            published.push(out.delta);
        }
        published
    }

    #[test]
    fn commands_within_the_limits_pass_unchanged() {
        // Moving at 0.1 m/s: going on, and a change of 0.005 m/s (0.5 m/s², 50 m/s³ from
        // steady motion), are within every bound.
        let mut state = MotionState {
            velocity: [0.1, 0.0, 0.0, 0.0, 0.0, 0.0],
            ..MotionState::default()
        };
        let wanted = [0.1 * DT, 0.0, 0.0, 0.0, 0.0, 0.0];
        let out = limit_motion(&wanted, 0.0, DT, &state, &limits());
        assert!(!out.limited, "{out:?}");
        assert_eq!(out.delta, wanted);
        state = out.state;
        let faster = [0.105 * DT, 0.0, 0.0, 0.0, 0.0, 0.0];
        let again = limit_motion(&faster, 0.0, DT, &state, &limits());
        assert!(!again.limited, "{again:?}");
        assert_eq!(again.delta, faster);
        // From rest the same velocity is more acceleration than allowed: limited.
        assert!(limit_motion(&wanted, 0.0, DT, &MotionState::default(), &limits()).limited);
    }

    #[test]
    fn huge_commands_hold_every_bound_and_keep_their_heading_from_rest() {
        let wanted = [1e30, -5e29, 2e29, 1e12, 0.0, -1e12];
        let published = run_checked(&limits(), DT, 300, |_| wanted);
        let first = published[0];
        assert!(first[0] > 0.0, "{first:?}");
        // From rest the first command is the wanted one scaled: same direction.
        let ratio = first[1] / first[0];
        assert!((ratio - (-0.5)).abs() < 1e-9, "{first:?}");
        let ratio = first[2] / first[0];
        assert!((ratio - 0.2).abs() < 1e-9, "{first:?}");
        // At steady state the fastest axis runs at its velocity bound.
        let last = published.last().unwrap();
        assert!((last[0] / DT - 0.25).abs() < 1e-6, "{last:?}");
    }

    #[test]
    fn sign_flips_every_tick_hold_every_bound() {
        run_checked(&limits(), DT, 400, |tick| {
            let s = if tick % 2 == 0 { 1.0 } else { -1.0 };
            [s * 10.0, -s * 3.0, s, s * 100.0, -s * 100.0, s * 0.5]
        });
        // And a slow square wave, which takes dx (the axis that binds the scaled command) to
        // its velocity and acceleration bounds in both directions and leaves the axes it does
        // not command at rest.
        let limits = limits();
        let published = run_checked(&limits, DT, 1000, |tick| {
            let s = if (tick / 50) % 2 == 0 { 1.0 } else { -1.0 };
            [s * 10.0, 0.0, 0.0, s * 10.0, 0.0, 0.0]
        });
        let i = 0;
        let axis = limits.axis(i);
        let velocity: Vec<f64> = published.iter().map(|d| d[i] / DT).collect();
        let acceleration: Vec<f64> = velocity.windows(2).map(|v| (v[1] - v[0]) / DT).collect();
        let max = |x: &[f64]| x.iter().copied().fold(f64::MIN, f64::max);
        let min = |x: &[f64]| x.iter().copied().fold(f64::MAX, f64::min);
        // The velocity bound is approached as `a ≤ (J/A)·(V − v)` allows: to within 0.1 %.
        let reached = |value: f64, bound: f64| (value - bound).abs() <= bound.abs() * 1e-3;
        assert!(
            reached(max(&velocity), axis.velocity),
            "axis {i}: v up to {}",
            max(&velocity)
        );
        assert!(
            reached(min(&velocity), -axis.velocity),
            "axis {i}: v down to {}",
            min(&velocity)
        );
        assert!(
            reached(max(&acceleration), axis.acceleration),
            "axis {i}: a up to {}",
            max(&acceleration)
        );
        assert!(
            reached(min(&acceleration), -axis.acceleration),
            "axis {i}: a down to {}",
            min(&acceleration)
        );
        assert!(published
            .iter()
            .all(|d| [d[1], d[2], d[4], d[5]] == [0.0; 4]));
    }

    #[test]
    fn bounds_hold_at_slow_and_fast_rates() {
        for dt in [0.5, 0.1, 0.02, 0.001] {
            run_checked(&limits(), dt, 200, |tick| {
                let s = if (tick / 7) % 2 == 0 { 1.0 } else { -1.0 };
                [s * 1e6, s * 1e-3, 0.0, 0.0, s * 1e6, 0.0]
            });
        }
    }

    #[test]
    fn workspace_holds_and_keeps_the_heading() {
        let mut limits = limits();
        limits.workspace = Some(Workspace {
            min: [-0.1, -0.1, -0.05],
            max: [0.1, 0.1, 0.05],
        });
        let mut state = MotionState::default();
        let mut previous_acceleration = [0.0f64; 3];
        let mut wall_before = false;
        let mut walls = 0;
        for tick in 0..2000 {
            let s = if (tick / 400) % 2 == 0 { 1.0 } else { -1.0 };
            let wanted = [s * 1.0, s * 0.5, -s * 10.0, 0.0, 0.0, 0.0];
            let out = limit_motion(&wanted, 0.0, DT, &state, &limits);
            let at_wall = (0..3).any(|i| {
                let box_ = limits.workspace.unwrap();
                out.state.position[i] <= box_.min[i] + 1e-12
                    || out.state.position[i] >= box_.max[i] - 1e-12
            }) && out.limited;
            for (i, previous) in previous_acceleration.iter_mut().enumerate() {
                let a = (out.delta[i] / DT - state.velocity[i]) / DT;
                let j = (a - *previous) / DT;
                if !at_wall && !wall_before {
                    assert!(a.abs() <= 2.0 + 1e-6, "tick {tick} axis {i}: a {a}");
                    assert!(j.abs() <= 50.0 + 1e-3, "tick {tick} axis {i}: j {j}");
                }
                *previous = a;
            }
            walls += usize::from(at_wall);
            wall_before = at_wall;
            for i in 0..3 {
                assert!(
                    out.state.position[i] >= -0.1 - 1e-12 && out.state.position[i] <= 0.1 + 1e-12,
                    "tick {tick}: {:?}",
                    out.state.position
                );
                assert!(out.delta[i].abs() / DT <= 0.25 + 1e-9);
            }
            assert!(out.state.position[2].abs() <= 0.05 + 1e-12);
            state = out.state;
        }
        assert!(walls > 0, "the walls were never reached");
        // Heading at the wall: a move that would cross the wall ends on it, in its direction.
        // (Checked again below on a fresh state.)
        let at_wall = MotionState {
            position: [0.099, 0.0, 0.0],
            velocity: [0.2, 0.1, 0.0, 0.0, 0.0, 0.0],
            ..MotionState::default()
        };
        let out = limit_motion(
            &[0.002, 0.001, 0.0, 0.0, 0.0, 0.0],
            0.0,
            DT,
            &at_wall,
            &limits,
        );
        assert!(out.limited);
        assert!((out.state.position[0] - 0.1).abs() < 1e-12);
        assert!((out.delta[1] / out.delta[0] - 0.5).abs() < 1e-9, "{out:?}");
    }

    #[test]
    fn gripper_moves_at_its_rate() {
        let mut state = MotionState::default();
        let mut values = Vec::new();
        for _ in 0..60 {
            let out = limit_motion(&[0.0; 6], 1.0, DT, &state, &limits());
            assert!((out.gripper - state.gripper).abs() <= 2.0 * DT + 1e-12);
            state = out.state;
            values.push(out.gripper);
        }
        assert!((values[0] - 0.02).abs() < 1e-12, "{values:?}");
        assert_eq!(*values.last().unwrap(), 1.0);
        let out = limit_motion(&[0.0; 6], -1e30, DT, &state, &limits());
        assert!((out.gripper - (1.0 - 0.02)).abs() < 1e-12);
    }

    #[test]
    fn rest_keeps_position_and_gripper() {
        let state = MotionState {
            velocity: [1.0; 6],
            acceleration: [2.0; 6],
            position: [0.1, 0.2, 0.3],
            gripper: 0.4,
        };
        let rest = state.at_rest();
        assert_eq!(rest.velocity, [0.0; 6]);
        assert_eq!(rest.acceleration, [0.0; 6]);
        assert_eq!(rest.position, state.position);
        assert_eq!(rest.gripper, 0.4);
    }
}
