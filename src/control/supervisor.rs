//! The ACT/HOLD/STOP state machine (DESIGN.md §3), as a pure function of each tick's inputs
//! so that every transition can be tested without threads or clocks.

use super::safety::{Filtered, SafetyFilter};
use super::ControlState;
use crate::config::ACTION_DIM;

/// What the policy side delivered for this tick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ActionInput {
    /// Nothing was asked of the policy yet (the first tick): not a miss.
    NotDue,
    /// An action was due and none arrived.
    Missing,
    /// An action arrived older than `max_action_age`.
    Stale,
    /// A fresh action from the frame captured at `capture_time_ns`.
    Fresh {
        action: [f32; ACTION_DIM],
        capture_time_ns: u64,
    },
}

/// Why the service is in STOP, most severe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum StopCause {
    None = 0,
    Shutdown = 1,
    EStop = 2,
    CameraSilent = 3,
    PolicyMisses = 4,
    /// A supervised worker thread died or stalled; the service ends after this STOP.
    Fault = 5,
}

impl StopCause {
    pub fn from_u64(value: u64) -> Self {
        match value {
            1 => Self::Shutdown,
            2 => Self::EStop,
            3 => Self::CameraSilent,
            4 => Self::PolicyMisses,
            5 => Self::Fault,
            _ => Self::None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Shutdown => "shutdown",
            Self::EStop => "e-stop",
            Self::CameraSilent => "camera silent",
            Self::PolicyMisses => "policy misses",
            Self::Fault => "worker fault",
        }
    }
}

/// The inputs of one tick besides the action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Conditions {
    pub shutting_down: bool,
    pub estop: bool,
    pub camera_silent: bool,
    /// A supervised worker died or stalled (a fault means STOP).
    pub worker_fault: bool,
}

/// The command a tick publishes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub state: ControlState,
    pub action: [f32; ACTION_DIM],
    /// Capture time of the frame behind the action; 0 when the action is not a policy output.
    pub capture_time_ns: u64,
    pub stop_cause: StopCause,
    /// This tick had no fresh, valid action although one was due.
    pub miss: bool,
    pub clamped: bool,
    pub rejected: bool,
}

pub struct Supervisor {
    filter: SafetyFilter,
    stop_after_misses: u32,
    consecutive_misses: u32,
    /// The gripper value HOLD and STOP keep: the last published ACT's.
    kept_gripper: f32,
}

impl Supervisor {
    pub fn new(filter: SafetyFilter, stop_after_misses: u32) -> Self {
        Self {
            kept_gripper: filter.clamp_gripper(0.0),
            filter,
            stop_after_misses: stop_after_misses.max(1),
            consecutive_misses: 0,
        }
    }

    pub fn consecutive_misses(&self) -> u32 {
        self.consecutive_misses
    }

    /// Decides this tick's command.
    pub fn step(&mut self, input: ActionInput, conditions: Conditions) -> Decision {
        let mut clamped = false;
        let mut rejected = false;
        let fresh = match input {
            ActionInput::NotDue => None,
            ActionInput::Missing | ActionInput::Stale => {
                self.consecutive_misses = self.consecutive_misses.saturating_add(1);
                None
            }
            ActionInput::Fresh {
                action,
                capture_time_ns,
            } => match self.filter.apply(&action) {
                Filtered::Pass(a) => Some((a, capture_time_ns)),
                Filtered::Clamped(a) => {
                    clamped = true;
                    Some((a, capture_time_ns))
                }
                Filtered::Rejected { .. } => {
                    rejected = true;
                    self.consecutive_misses = self.consecutive_misses.saturating_add(1);
                    None
                }
            },
        };
        let miss = matches!(input, ActionInput::Missing | ActionInput::Stale) || rejected;
        if fresh.is_some() {
            self.consecutive_misses = 0;
        }

        let stop_cause = if conditions.shutting_down {
            StopCause::Shutdown
        } else if conditions.worker_fault {
            StopCause::Fault
        } else if conditions.estop {
            StopCause::EStop
        } else if conditions.camera_silent {
            StopCause::CameraSilent
        } else if self.consecutive_misses >= self.stop_after_misses {
            StopCause::PolicyMisses
        } else {
            StopCause::None
        };

        let (state, action, capture_time_ns) = match (stop_cause, fresh) {
            (StopCause::None, Some((action, capture_time_ns))) => {
                self.kept_gripper = action[ACTION_DIM - 1];
                (ControlState::Act, action, capture_time_ns)
            }
            (StopCause::None, None) => (ControlState::Hold, self.still_action(), 0),
            _ => (ControlState::Stop, self.still_action(), 0),
        };
        Decision {
            state,
            action,
            capture_time_ns,
            stop_cause,
            miss,
            clamped,
            rejected,
        }
    }

    /// Zero translation and rotation deltas, gripper kept.
    fn still_action(&self) -> [f32; ACTION_DIM] {
        let mut action = [0.0; ACTION_DIM];
        action[ACTION_DIM - 1] = self.kept_gripper;
        action
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SafetyConfig;

    fn supervisor(stop_after_misses: u32) -> Supervisor {
        Supervisor::new(
            SafetyFilter::new(&SafetyConfig::default()),
            stop_after_misses,
        )
    }

    fn fresh(dx: f32, gripper: f32) -> ActionInput {
        ActionInput::Fresh {
            action: [dx, 0.0, 0.0, 0.0, 0.0, 0.0, gripper],
            capture_time_ns: 99,
        }
    }

    const CLEAR: Conditions = Conditions {
        shutting_down: false,
        estop: false,
        camera_silent: false,
        worker_fault: false,
    };

    #[test]
    fn first_tick_holds_without_a_miss() {
        let d = supervisor(3).step(ActionInput::NotDue, CLEAR);
        assert_eq!(d.state, ControlState::Hold);
        assert!(!d.miss);
        assert_eq!(d.action, [0.0; ACTION_DIM]);
        assert_eq!(d.capture_time_ns, 0);
    }

    #[test]
    fn fresh_action_acts() {
        let d = supervisor(3).step(fresh(0.01, 1.0), CLEAR);
        assert_eq!(d.state, ControlState::Act);
        assert_eq!(d.action[0], 0.01);
        assert_eq!(d.capture_time_ns, 99);
        assert!(!d.miss);
    }

    #[test]
    fn one_miss_holds_with_zero_deltas_and_the_gripper_kept() {
        let mut s = supervisor(3);
        s.step(fresh(0.02, 0.8), CLEAR);
        let d = s.step(ActionInput::Missing, CLEAR);
        assert_eq!(d.state, ControlState::Hold);
        assert!(d.miss);
        assert_eq!(d.action, [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.8]);
    }

    #[test]
    fn consecutive_misses_stop_and_a_fresh_action_recovers() {
        let mut s = supervisor(3);
        s.step(fresh(0.02, 0.5), CLEAR);
        let states: Vec<_> = [
            ActionInput::Missing,
            ActionInput::Stale,
            ActionInput::Missing,
            ActionInput::Missing,
        ]
        .into_iter()
        .map(|input| s.step(input, CLEAR))
        .collect();
        assert_eq!(states[0].state, ControlState::Hold);
        assert_eq!(states[1].state, ControlState::Hold);
        assert_eq!(states[2].state, ControlState::Stop);
        assert_eq!(states[2].stop_cause, StopCause::PolicyMisses);
        assert_eq!(states[2].action, [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5]);
        assert_eq!(states[3].state, ControlState::Stop);
        let d = s.step(fresh(0.03, 0.5), CLEAR);
        assert_eq!(d.state, ControlState::Act);
        assert_eq!(s.consecutive_misses(), 0);
    }

    #[test]
    fn non_finite_actions_are_misses_and_never_published() {
        let mut s = supervisor(2);
        s.step(fresh(0.01, 1.0), CLEAR);
        let d = s.step(fresh(f32::NAN, 1.0), CLEAR);
        assert_eq!(d.state, ControlState::Hold);
        assert!(d.miss && d.rejected);
        assert!(d.action.iter().all(|v| v.is_finite()));
        let d = s.step(fresh(f32::INFINITY, 1.0), CLEAR);
        assert_eq!(d.state, ControlState::Stop);
    }

    #[test]
    fn out_of_range_actions_are_clamped_not_missed() {
        let mut s = supervisor(2);
        let d = s.step(fresh(3.0, 7.0), CLEAR);
        assert_eq!(d.state, ControlState::Act);
        assert!(d.clamped && !d.miss);
        let limits = SafetyConfig::default();
        assert_eq!(d.action[0], limits.max[0]);
        assert_eq!(d.action[6], limits.max[6]);
    }

    #[test]
    fn estop_overrides_fresh_actions_until_released() {
        let mut s = supervisor(3);
        let estop = Conditions {
            estop: true,
            ..CLEAR
        };
        let d = s.step(fresh(0.01, 1.0), estop);
        assert_eq!(d.state, ControlState::Stop);
        assert_eq!(d.stop_cause, StopCause::EStop);
        assert_eq!(d.action[0], 0.0);
        assert_eq!(s.step(fresh(0.01, 1.0), CLEAR).state, ControlState::Act);
    }

    #[test]
    fn silent_camera_stops_and_shutdown_wins_over_everything() {
        let mut s = supervisor(3);
        let silent = Conditions {
            camera_silent: true,
            ..CLEAR
        };
        assert_eq!(
            s.step(fresh(0.01, 1.0), silent).stop_cause,
            StopCause::CameraSilent
        );
        let all = Conditions {
            shutting_down: true,
            estop: true,
            camera_silent: true,
            worker_fault: true,
        };
        let d = s.step(fresh(0.01, 1.0), all);
        assert_eq!(
            (d.state, d.stop_cause),
            (ControlState::Stop, StopCause::Shutdown)
        );
    }

    #[test]
    fn a_worker_fault_stops_before_any_other_cause_but_shutdown() {
        let mut s = supervisor(3);
        let fault = Conditions {
            worker_fault: true,
            estop: true,
            camera_silent: true,
            ..CLEAR
        };
        let d = s.step(fresh(0.01, 1.0), fault);
        assert_eq!(
            (d.state, d.stop_cause),
            (ControlState::Stop, StopCause::Fault)
        );
        assert_eq!(d.action[0], 0.0);
        assert_eq!(
            StopCause::from_u64(StopCause::Fault as u64),
            StopCause::Fault
        );
    }
}
