//! The safety state machine and the pacing of actions, as a pure function of each tick's
//! inputs so that every transition can be tested without threads or clocks.
//!
//! # States, events, transitions
//!
//! | from \ event    | stop condition (cause) | `arm`                        | `disarm`      | nothing      |
//! |-----------------|------------------------|------------------------------|---------------|--------------|
//! | `Disarmed`      | `Stopped(cause)`       | `Armed`                      | `Disarmed`    | `Disarmed`   |
//! | `Armed`         | `Stopped(cause)`       | `Armed`                      | `Disarmed`    | `Armed`      |
//! | `Stopped(_)`    | `Stopped(cause)`       | `Armed`                      | `Stopped(_)`  | `Stopped(_)` |
//!
//! A stop condition is, most severe first: shutdown, e-stop (latched, or requested since the
//! last tick), a worker fault, a silent camera, `stop_after_misses` action steps in a row
//! that ended without a fresh action. While one holds, an `arm` is refused (and counted):
//! the event of the tick is the stop. Nothing leaves `Stopped` but an `arm`: a released
//! e-stop, a camera that is back or a policy that recovers leave the arm stopped until an
//! operator arms it again. The service starts `Disarmed` (or `Armed` with
//! `[control] start_armed`, for simulations).
//!
//! # What each state publishes
//!
//! `Stopped`: STOP. `Disarmed`: HOLD. `Armed`: ACT while the current action's step lasts,
//! HOLD once it is used up. Each fresh action starts a step of `1 / action_hz` (the period
//! of the policy's training data); every tick of the step publishes the share of the
//! action's six deltas that falls in its period (`delta × tick / step`), so the arm moves at
//! the training data's speed whatever the control rate. The gripper is absolute and kept.
//! ACT commands then pass the motion limits ([`super::limits`]); HOLD and STOP publish zero
//! deltas at once.

use super::limits::{limit_motion, MotionLimits, MotionState};
use super::safety::{Filtered, SafetyFilter};
use super::ControlState;
use crate::ACTION_DIM;

/// What the policy side delivered for this tick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ActionInput {
    /// No new result (not a miss by itself: misses are counted in action steps).
    Nothing,
    /// A result arrived older than `max_action_age`: ignored.
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

/// An operator's request, from `vla/<robot_id>/arm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperatorRequest {
    Arm,
    Disarm,
}

/// The inputs of one tick besides the action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Conditions {
    pub shutting_down: bool,
    pub estop: bool,
    pub camera_silent: bool,
    /// A supervised worker died or stalled: STOP and disarm.
    pub worker_fault: bool,
    /// The newest operator request since the last tick (a `disarm` wins over an `arm`).
    pub request: Option<OperatorRequest>,
}

/// The safety state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SafetyState {
    /// Publishes HOLD; waits for `arm`.
    Disarmed,
    /// Publishes the paced, limited actions (ACT) or HOLD between them.
    Armed,
    /// Publishes STOP; only `arm` leaves it.
    Stopped(StopCause),
}

/// The event a tick brings to the state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Stop(StopCause),
    Arm,
    Disarm,
    Nothing,
}

/// The transition table (module docs), one arm per arrow.
pub fn transition(from: SafetyState, event: Event) -> SafetyState {
    use SafetyState::{Armed, Disarmed, Stopped};
    match (from, event) {
        (Disarmed | Armed | Stopped(_), Event::Stop(cause)) => Stopped(cause),
        (Disarmed, Event::Arm) => Armed,
        (Armed, Event::Arm) => Armed,
        (Stopped(_), Event::Arm) => Armed,
        (Disarmed, Event::Disarm) => Disarmed,
        (Armed, Event::Disarm) => Disarmed,
        (Stopped(cause), Event::Disarm) => Stopped(cause),
        (state, Event::Nothing) => state,
    }
}

/// The command a tick publishes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub state: ControlState,
    pub safety: SafetyState,
    pub action: [f32; ACTION_DIM],
    /// Capture time of the frame behind the action; 0 when the action is not a policy output.
    pub capture_time_ns: u64,
    pub stop_cause: StopCause,
    /// Action steps that ended by this tick, since the last one, without a fresh action.
    pub misses: u32,
    pub clamped: bool,
    pub rejected: bool,
    /// The motion limits changed this command.
    pub limited: bool,
    /// An `arm` was refused because a stop condition holds.
    pub arm_refused: bool,
}

/// Fixed settings of the supervisor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SupervisorSettings {
    pub filter: SafetyFilter,
    pub limits: MotionLimits,
    /// Control period.
    pub period_ns: u64,
    /// Action step: `1 / action_hz`.
    pub step_ns: u64,
    pub stop_after_misses: u32,
    pub start_armed: bool,
}

/// The action being executed and when its step started.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Paced {
    action: [f32; ACTION_DIM],
    capture_time_ns: u64,
}

pub struct Supervisor {
    settings: SupervisorSettings,
    state: SafetyState,
    current: Option<Paced>,
    /// Tick index at which the current step started (a fresh action, arming or the start).
    step_start: Option<u64>,
    /// Steps ended since then without a fresh action.
    consecutive_misses: u32,
    motion: MotionState,
}

impl Supervisor {
    pub fn new(settings: SupervisorSettings) -> Self {
        let gripper = f64::from(settings.filter.clamp_gripper(0.0));
        Self {
            state: if settings.start_armed {
                SafetyState::Armed
            } else {
                SafetyState::Disarmed
            },
            settings: SupervisorSettings {
                stop_after_misses: settings.stop_after_misses.max(1),
                ..settings
            },
            current: None,
            step_start: None,
            consecutive_misses: 0,
            motion: MotionState {
                gripper,
                ..MotionState::default()
            },
        }
    }

    pub fn consecutive_misses(&self) -> u32 {
        self.consecutive_misses
    }

    pub fn safety_state(&self) -> SafetyState {
        self.state
    }

    pub fn armed(&self) -> bool {
        self.state == SafetyState::Armed
    }

    /// Decides the command of tick `index` (the schedule slot).
    pub fn step(&mut self, index: u64, input: ActionInput, conditions: Conditions) -> Decision {
        let s = self.settings;
        let mut clamped = false;
        let mut rejected = false;
        if let ActionInput::Fresh {
            action,
            capture_time_ns,
        } = input
        {
            let accepted = match s.filter.apply(&action) {
                Filtered::Pass(a) => Some(a),
                Filtered::Clamped(a) => {
                    clamped = true;
                    Some(a)
                }
                Filtered::Rejected { .. } => {
                    rejected = true;
                    None
                }
            };
            if let Some(action) = accepted {
                self.current = Some(Paced {
                    action,
                    capture_time_ns,
                });
                self.step_start = Some(index);
            }
        }
        let step_start = *self.step_start.get_or_insert(index);
        let elapsed_ns = index.saturating_sub(step_start).saturating_mul(s.period_ns);
        let misses = match s.step_ns {
            0 => 0,
            step => u32::try_from(elapsed_ns / step).unwrap_or(u32::MAX),
        };
        let new_misses = misses.saturating_sub(self.consecutive_misses);
        self.consecutive_misses = misses;

        let stop_cause = if conditions.shutting_down {
            StopCause::Shutdown
        } else if conditions.estop {
            StopCause::EStop
        } else if conditions.worker_fault {
            StopCause::Fault
        } else if conditions.camera_silent {
            StopCause::CameraSilent
        } else if misses >= s.stop_after_misses {
            StopCause::PolicyMisses
        } else {
            StopCause::None
        };
        let event = match (stop_cause, conditions.request) {
            (StopCause::None, Some(OperatorRequest::Disarm)) => Event::Disarm,
            (StopCause::None, Some(OperatorRequest::Arm)) => Event::Arm,
            (StopCause::None, None) => Event::Nothing,
            (cause, _) => Event::Stop(cause),
        };
        let arm_refused =
            stop_cause != StopCause::None && conditions.request == Some(OperatorRequest::Arm);
        let from = self.state;
        self.state = transition(from, event);
        if self.state == SafetyState::Armed && from != SafetyState::Armed {
            // Arming: only actions that arrive from now on move the arm, from a pose that
            // the workspace box is centred on.
            self.current = None;
            self.step_start = Some(index);
            self.consecutive_misses = 0;
            self.motion = MotionState {
                gripper: self.motion.gripper,
                ..MotionState::default()
            };
        }

        let mut limited = false;
        let (state, action, capture_time_ns) = match self.state {
            SafetyState::Stopped(_) => (ControlState::Stop, self.still_action(), 0),
            SafetyState::Disarmed => (ControlState::Hold, self.still_action(), 0),
            SafetyState::Armed => match self.paced_delta(index) {
                Some((delta, gripper, capture_time_ns)) => {
                    let dt = s.period_ns as f64 * 1e-9;
                    let out = limit_motion(&delta, gripper, dt, &self.motion, &s.limits);
                    limited = out.limited;
                    self.motion = out.state;
                    let mut action = [0.0f32; ACTION_DIM];
                    for (published, value) in action.iter_mut().zip(out.delta) {
                        *published = value as f32;
                    }
                    action[ACTION_DIM - 1] = out.gripper as f32;
                    (ControlState::Act, action, capture_time_ns)
                }
                None => (ControlState::Hold, self.still_action(), 0),
            },
        };
        Decision {
            state,
            safety: self.state,
            action,
            capture_time_ns,
            stop_cause: match self.state {
                SafetyState::Stopped(cause) => cause,
                _ => StopCause::None,
            },
            misses: new_misses,
            clamped,
            rejected,
            limited,
            arm_refused,
        }
    }

    /// The share of the current action that falls in tick `index`'s period (six deltas),
    /// the wanted gripper and the capture time; `None` when the step is used up.
    fn paced_delta(&self, index: u64) -> Option<([f64; 6], f64, u64)> {
        let s = &self.settings;
        let current = self.current?;
        let step_start = self.step_start?;
        let elapsed_ns = index.saturating_sub(step_start).saturating_mul(s.period_ns);
        if s.step_ns == 0 || elapsed_ns >= s.step_ns {
            return None;
        }
        let share = (s.step_ns - elapsed_ns).min(s.period_ns) as f64 / s.step_ns as f64;
        let delta = std::array::from_fn(|i| f64::from(current.action[i]) * share);
        Some((
            delta,
            f64::from(current.action[ACTION_DIM - 1]),
            current.capture_time_ns,
        ))
    }

    /// Zero translation and rotation deltas, gripper kept; the limiter restarts from rest.
    fn still_action(&mut self) -> [f32; ACTION_DIM] {
        self.motion = self.motion.at_rest();
        let mut action = [0.0; ACTION_DIM];
        action[ACTION_DIM - 1] = self.motion.gripper as f32;
        action
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::safety_config::SafetyConfig;

    /// 10 ms ticks, 100 ms action steps (10 ticks per step).
    const PERIOD: u64 = 10_000_000;
    const STEP: u64 = 100_000_000;

    fn settings(start_armed: bool) -> SupervisorSettings {
        let config = SafetyConfig::default();
        SupervisorSettings {
            filter: SafetyFilter::new(&config),
            limits: MotionLimits::from_config(&SafetyConfig {
                // Wide enough that pacing alone shapes the commands in these tests.
                max_linear_velocity: 100.0,
                max_linear_acceleration: 1e6,
                max_linear_jerk: 1e9,
                max_angular_velocity: 100.0,
                max_angular_acceleration: 1e6,
                max_angular_jerk: 1e9,
                max_gripper_rate: 1e6,
                ..config
            }),
            period_ns: PERIOD,
            step_ns: STEP,
            stop_after_misses: 3,
            start_armed,
        }
    }

    fn armed() -> Supervisor {
        Supervisor::new(settings(true))
    }

    fn disarmed() -> Supervisor {
        Supervisor::new(settings(false))
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
        request: None,
    };
    const ARM: Conditions = Conditions {
        request: Some(OperatorRequest::Arm),
        ..CLEAR
    };
    const DISARM: Conditions = Conditions {
        request: Some(OperatorRequest::Disarm),
        ..CLEAR
    };
    const ESTOP: Conditions = Conditions {
        estop: true,
        ..CLEAR
    };

    fn stopped(cause: StopCause) -> Supervisor {
        let mut s = disarmed();
        s.step(
            0,
            ActionInput::Nothing,
            Conditions {
                estop: true,
                ..CLEAR
            },
        );
        if cause != StopCause::EStop {
            let conditions = match cause {
                StopCause::CameraSilent => Conditions {
                    camera_silent: true,
                    ..CLEAR
                },
                StopCause::Fault => Conditions {
                    worker_fault: true,
                    ..CLEAR
                },
                _ => panic!("not used"),
            };
            s.step(1, ActionInput::Nothing, conditions);
        }
        assert_eq!(s.safety_state(), SafetyState::Stopped(cause));
        s
    }

    #[test]
    fn the_transition_table() {
        use SafetyState::{Armed, Disarmed, Stopped};
        let (camera, estop) = (StopCause::CameraSilent, StopCause::EStop);
        for (from, event, to) in [
            (Disarmed, Event::Stop(camera), Stopped(camera)),
            (Disarmed, Event::Arm, Armed),
            (Disarmed, Event::Disarm, Disarmed),
            (Disarmed, Event::Nothing, Disarmed),
            (Armed, Event::Stop(camera), Stopped(camera)),
            (Armed, Event::Arm, Armed),
            (Armed, Event::Disarm, Disarmed),
            (Armed, Event::Nothing, Armed),
            (Stopped(estop), Event::Stop(camera), Stopped(camera)),
            (Stopped(estop), Event::Arm, Armed),
            (Stopped(estop), Event::Disarm, Stopped(estop)),
            (Stopped(estop), Event::Nothing, Stopped(estop)),
        ] {
            assert_eq!(transition(from, event), to, "{from:?} --{event:?}-->");
        }
    }

    // One test per arrow of the table, through the tick's inputs.

    #[test]
    fn disarmed_arm_arms() {
        let mut s = disarmed();
        assert_eq!(s.step(0, fresh(0.01, 1.0), CLEAR).state, ControlState::Hold);
        let d = s.step(1, ActionInput::Nothing, ARM);
        assert_eq!(d.safety, SafetyState::Armed);
        // The action that arrived before arming is not acted on; the next one is.
        assert_eq!(d.state, ControlState::Hold);
        assert_eq!(s.step(2, fresh(0.01, 1.0), CLEAR).state, ControlState::Act);
    }

    #[test]
    fn disarmed_disarm_stays_disarmed() {
        let mut s = disarmed();
        let d = s.step(0, fresh(0.01, 1.0), DISARM);
        assert_eq!(
            (d.safety, d.state),
            (SafetyState::Disarmed, ControlState::Hold)
        );
    }

    #[test]
    fn disarmed_stop_condition_stops() {
        let mut s = disarmed();
        let d = s.step(
            0,
            fresh(0.01, 1.0),
            Conditions {
                camera_silent: true,
                ..CLEAR
            },
        );
        assert_eq!(d.state, ControlState::Stop);
        assert_eq!(d.stop_cause, StopCause::CameraSilent);
    }

    #[test]
    fn disarmed_nothing_holds_forever() {
        let mut s = disarmed();
        for index in 0..100 {
            let d = s.step(index, fresh(0.01, 1.0), CLEAR);
            assert_eq!(
                (d.safety, d.state),
                (SafetyState::Disarmed, ControlState::Hold)
            );
            assert_eq!(d.action[..6], [0.0; 6]);
        }
    }

    #[test]
    fn armed_disarm_disarms() {
        let mut s = armed();
        assert_eq!(s.step(0, fresh(0.01, 1.0), CLEAR).state, ControlState::Act);
        let d = s.step(1, fresh(0.01, 1.0), DISARM);
        assert_eq!(
            (d.safety, d.state),
            (SafetyState::Disarmed, ControlState::Hold)
        );
        assert_eq!(d.action, [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]);
    }

    #[test]
    fn armed_arm_stays_armed_and_keeps_acting() {
        let mut s = armed();
        s.step(0, fresh(0.01, 1.0), CLEAR);
        let d = s.step(1, ActionInput::Nothing, ARM);
        assert_eq!((d.safety, d.state), (SafetyState::Armed, ControlState::Act));
    }

    #[test]
    fn armed_stop_conditions_stop_most_severe_first() {
        for (conditions, cause) in [
            (ESTOP, StopCause::EStop),
            (
                Conditions {
                    worker_fault: true,
                    ..CLEAR
                },
                StopCause::Fault,
            ),
            (
                Conditions {
                    camera_silent: true,
                    ..CLEAR
                },
                StopCause::CameraSilent,
            ),
            (
                Conditions {
                    shutting_down: true,
                    estop: true,
                    camera_silent: true,
                    worker_fault: true,
                    request: Some(OperatorRequest::Arm),
                },
                StopCause::Shutdown,
            ),
            (
                Conditions {
                    estop: true,
                    worker_fault: true,
                    ..CLEAR
                },
                StopCause::EStop,
            ),
            (
                Conditions {
                    worker_fault: true,
                    camera_silent: true,
                    ..CLEAR
                },
                StopCause::Fault,
            ),
        ] {
            let mut s = armed();
            s.step(0, fresh(0.01, 1.0), CLEAR);
            let d = s.step(1, fresh(0.01, 1.0), conditions);
            assert_eq!(d.state, ControlState::Stop);
            assert_eq!(d.stop_cause, cause);
            assert_eq!(d.action, [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]);
            assert_eq!(d.capture_time_ns, 0);
            assert!(!s.armed(), "a STOP disarms");
        }
    }

    #[test]
    fn armed_missed_steps_hold_then_stop() {
        let mut s = armed();
        assert_eq!(s.step(0, fresh(0.01, 0.5), CLEAR).state, ControlState::Act);
        // Ticks 1-9 finish the step; from tick 10 on the step is used up: HOLD, one miss.
        for index in 1..10 {
            assert_eq!(
                s.step(index, ActionInput::Nothing, CLEAR).state,
                ControlState::Act
            );
        }
        let d = s.step(10, ActionInput::Nothing, CLEAR);
        assert_eq!(d.state, ControlState::Hold);
        assert_eq!(d.misses, 1);
        assert_eq!(d.action, [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5]);
        assert_eq!(
            s.step(11, ActionInput::Stale, CLEAR).misses,
            0,
            "a tick is not a miss"
        );
        assert_eq!(s.step(20, ActionInput::Nothing, CLEAR).misses, 1);
        let d = s.step(30, ActionInput::Nothing, CLEAR);
        assert_eq!(d.state, ControlState::Stop);
        assert_eq!(d.stop_cause, StopCause::PolicyMisses);
        assert_eq!(s.consecutive_misses(), 3);
    }

    #[test]
    fn stopped_arm_rearms_once_the_condition_is_gone() {
        let mut s = stopped(StopCause::EStop);
        // The e-stop was released: nothing happens by itself, fresh actions or not.
        for index in 1..50 {
            let d = s.step(index, fresh(0.01, 1.0), CLEAR);
            assert_eq!(d.state, ControlState::Stop, "tick {index}");
        }
        let d = s.step(50, fresh(0.01, 1.0), ARM);
        assert_eq!(d.safety, SafetyState::Armed);
        assert_eq!(s.step(51, fresh(0.01, 1.0), CLEAR).state, ControlState::Act);
    }

    #[test]
    fn stopped_arm_is_refused_while_the_estop_is_latched() {
        let mut s = stopped(StopCause::EStop);
        let d = s.step(
            1,
            fresh(0.01, 1.0),
            Conditions {
                request: Some(OperatorRequest::Arm),
                ..ESTOP
            },
        );
        assert!(d.arm_refused);
        assert_eq!(
            (d.state, d.stop_cause),
            (ControlState::Stop, StopCause::EStop)
        );
        // And while the policy still misses its steps.
        let mut s = armed();
        s.step(0, ActionInput::Nothing, CLEAR);
        assert_eq!(
            s.step(30, ActionInput::Nothing, CLEAR).state,
            ControlState::Stop
        );
        let d = s.step(31, ActionInput::Nothing, ARM);
        assert!(d.arm_refused);
        assert_eq!(d.stop_cause, StopCause::PolicyMisses);
        // A fresh action clears the misses: now the arm is accepted.
        let d = s.step(32, fresh(0.01, 1.0), ARM);
        assert!(!d.arm_refused);
        assert_eq!(d.safety, SafetyState::Armed);
    }

    #[test]
    fn stopped_disarm_stays_stopped() {
        let mut s = stopped(StopCause::Fault);
        let d = s.step(2, fresh(0.01, 1.0), DISARM);
        assert_eq!(
            (d.state, d.stop_cause),
            (ControlState::Stop, StopCause::Fault)
        );
    }

    #[test]
    fn stopped_new_stop_condition_updates_the_cause() {
        let mut s = stopped(StopCause::EStop);
        let d = s.step(
            1,
            ActionInput::Nothing,
            Conditions {
                camera_silent: true,
                ..CLEAR
            },
        );
        assert_eq!(d.stop_cause, StopCause::CameraSilent);
    }

    #[test]
    fn stopped_recovery_alone_never_acts() {
        let mut s = stopped(StopCause::CameraSilent);
        for index in 2..200 {
            assert_eq!(
                s.step(index, fresh(0.01, 1.0), CLEAR).state,
                ControlState::Stop
            );
        }
    }

    // Pacing.

    #[test]
    fn an_action_is_spread_evenly_over_its_step() {
        let mut s = armed();
        let mut sum = 0.0f64;
        let d = s.step(0, fresh(0.02, 1.0), CLEAR);
        assert_eq!(d.state, ControlState::Act);
        assert!((d.action[0] - 0.002).abs() < 1e-7, "{d:?}");
        assert_eq!(d.capture_time_ns, 99);
        sum += f64::from(d.action[0]);
        for index in 1..10 {
            let d = s.step(index, ActionInput::Nothing, CLEAR);
            assert_eq!(d.state, ControlState::Act);
            assert_eq!(d.capture_time_ns, 99);
            sum += f64::from(d.action[0]);
        }
        assert!((sum - 0.02).abs() < 1e-6, "{sum}");
        assert_eq!(
            s.step(10, ActionInput::Nothing, CLEAR).state,
            ControlState::Hold
        );
    }

    #[test]
    fn a_fresh_action_starts_a_new_step() {
        let mut s = armed();
        s.step(0, fresh(0.02, 1.0), CLEAR);
        s.step(1, ActionInput::Nothing, CLEAR);
        let d = s.step(2, fresh(-0.04, 0.0), CLEAR);
        assert!((d.action[0] + 0.004).abs() < 1e-7, "{d:?}");
        assert_eq!(d.action[6], 0.0);
        for index in 3..12 {
            assert_eq!(
                s.step(index, ActionInput::Nothing, CLEAR).state,
                ControlState::Act
            );
        }
        assert_eq!(
            s.step(12, ActionInput::Nothing, CLEAR).state,
            ControlState::Hold
        );
    }

    #[test]
    fn a_tick_longer_than_the_step_publishes_the_whole_action_once() {
        let mut s = Supervisor::new(SupervisorSettings {
            period_ns: 3 * STEP,
            stop_after_misses: 10,
            ..settings(true)
        });
        let d = s.step(0, fresh(0.02, 1.0), CLEAR);
        assert!((d.action[0] - 0.02).abs() < 1e-7);
        assert_eq!(
            s.step(1, ActionInput::Nothing, CLEAR).state,
            ControlState::Hold
        );
    }

    #[test]
    fn non_finite_actions_are_never_published() {
        let mut s = armed();
        s.step(0, fresh(0.01, 1.0), CLEAR);
        let d = s.step(1, fresh(f32::NAN, 1.0), CLEAR);
        assert!(d.rejected);
        assert!(d.action.iter().all(|v| v.is_finite()));
        let d = s.step(2, fresh(f32::INFINITY, 1.0), CLEAR);
        assert!(d.rejected && d.action.iter().all(|v| v.is_finite()));
        // Rejected actions start no step: the old one runs out, then the misses stop.
        assert_eq!(
            s.step(30, fresh(f32::NAN, 1.0), CLEAR).state,
            ControlState::Stop
        );
    }

    #[test]
    fn out_of_range_actions_are_clamped_per_step() {
        let mut s = armed();
        let d = s.step(0, fresh(3.0, 7.0), CLEAR);
        assert!(d.clamped);
        let limits = SafetyConfig::default();
        assert!((d.action[0] - limits.max[0] / 10.0).abs() < 1e-7, "{d:?}");
        assert_eq!(d.action[6], limits.max[6]);
    }

    #[test]
    fn commands_over_the_motion_limits_are_limited_and_counted() {
        let mut s = Supervisor::new(SupervisorSettings {
            limits: MotionLimits::from_config(&SafetyConfig::default()),
            ..settings(true)
        });
        // 0.05 m per 100 ms step = 0.5 m/s, twice the default 0.25 m/s.
        let mut limited = 0;
        for index in 0..10 {
            let input = if index == 0 {
                fresh(0.05, 0.0)
            } else {
                ActionInput::Nothing
            };
            let d = s.step(index, input, CLEAR);
            assert_eq!(d.state, ControlState::Act);
            assert!(f64::from(d.action[0]) / 0.01 <= 0.25 + 1e-6, "{d:?}");
            limited += usize::from(d.limited);
        }
        assert_eq!(limited, 10);
    }

    #[test]
    fn a_worker_fault_stops_before_a_silent_camera() {
        let mut s = armed();
        let fault = Conditions {
            worker_fault: true,
            camera_silent: true,
            ..CLEAR
        };
        let d = s.step(0, fresh(0.01, 1.0), fault);
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
