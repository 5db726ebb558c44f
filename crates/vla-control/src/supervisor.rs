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
//! last tick), a worker fault, a silent camera, a stale robot state (for a policy that takes
//! one), `stop_after_misses` action steps in a row
//! that ended without a fresh action. While one holds, an `arm` is refused (and counted):
//! the event of the tick is the stop. Nothing leaves `Stopped` but an `arm`: a released
//! e-stop, a camera that is back or a policy that recovers leave the arm stopped until an
//! operator arms it again. The service starts `Disarmed` (or `Armed` with
//! `[control] start_armed`, for simulations).
//!
//! # What each state publishes
//!
//! `Stopped`: STOP. `Disarmed`: HOLD. `Armed`: ACT while a step of the current chunk lasts,
//! HOLD once it is used up. A result is a chunk of actions, one per action step of
//! `1 / action_hz` (the period of the policy's training data): one action on the token path,
//! `num_actions_chunk` for OpenVLA-OFT. A fresh chunk starts its first step at the tick it
//! arrives; every tick publishes the share of each step's six deltas that falls in its period
//! (`delta × tick / step`), so the arm moves at the training data's speed whatever the
//! control rate. The gripper is absolute and kept. A new chunk replaces what is left of the
//! current one (`latest`) or is averaged with it step by step (temporal ensembling,
//! [`ChunkOverlap`]). ACT commands then pass the motion limits ([`super::limits`]); HOLD and
//! STOP publish zero deltas at once.
//!
//! A step with no action left to execute is a miss. Leaving `Armed` (STOP, disarm, e-stop)
//! and a new instruction drop what is left of every chunk at once, and a result computed
//! under an older instruction is never executed.

use super::chunk::{ActionChunk, ChunkOverlap, ChunkSettings};
use super::limits::{limit_motion, MotionLimits, MotionState};
use super::safety::{Filtered, SafetyFilter};
use super::ControlState;
use crate::ACTION_DIM;

/// What the policy side delivered for this tick.
// The chunk stays inline: boxing it would allocate on the control thread.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ActionInput {
    /// No new result (not a miss by itself: misses are counted in action steps).
    Nothing,
    /// A result arrived older than `max_action_age`: ignored.
    Stale,
    /// A fresh chunk from the frame captured at `capture_time_ns`, computed under instruction
    /// number `instruction` (see [`Conditions::instruction`]).
    Fresh {
        chunk: ActionChunk,
        capture_time_ns: u64,
        instruction: u64,
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
    /// The policy takes the robot's state and none came for as long as a camera may be
    /// silent.
    ProprioStale = 6,
}

impl StopCause {
    pub fn from_u64(value: u64) -> Self {
        match value {
            1 => Self::Shutdown,
            2 => Self::EStop,
            3 => Self::CameraSilent,
            4 => Self::PolicyMisses,
            5 => Self::Fault,
            6 => Self::ProprioStale,
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
            Self::ProprioStale => "proprio stale",
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
    /// The policy takes the robot's state and the newest is too old (or none came).
    pub proprio_stale: bool,
    /// A supervised worker died or stalled: STOP and disarm.
    pub worker_fault: bool,
    /// The newest operator request since the last tick (a `disarm` wins over an `arm`).
    pub request: Option<OperatorRequest>,
    /// How many instructions have been applied: a change drops the chunks in progress.
    pub instruction: u64,
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
    /// Which step of its chunk the ACT executes (of the newest chunk that covers it).
    pub chunk_step: Option<u32>,
    /// Chunks whose remaining steps were dropped this tick (STOP, disarm, new instruction),
    /// plus fresh ones computed under an older instruction.
    pub chunks_dropped: u32,
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
    pub chunks: ChunkSettings,
}

/// Chunks temporal ensembling averages at most; a newer one pushes out the oldest.
pub const MAX_ENSEMBLE: usize = 16;

/// A chunk in execution: its first step is step `start_step` of the schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Active {
    chunk: ActionChunk,
    start_step: u64,
    capture_time_ns: u64,
    /// Arrival order, oldest lowest (ensembling weighs the oldest most).
    arrival: u64,
}

impl Active {
    fn action(&self, step: u64) -> Option<(usize, &[f32; ACTION_DIM])> {
        let k = usize::try_from(step.checked_sub(self.start_step)?).ok()?;
        self.chunk.steps().get(k).map(|action| (k, action))
    }

    fn end_step(&self) -> u64 {
        self.start_step + self.chunk.len() as u64
    }
}

pub struct Supervisor {
    settings: SupervisorSettings,
    state: SafetyState,
    /// The chunks being executed, at most one with `latest`.
    active: [Option<Active>; MAX_ENSEMBLE],
    arrivals: u64,
    /// Instruction number the chunks in `active` were computed under.
    instruction: u64,
    /// Tick index at which schedule step `grid_step` started (a fresh chunk, arming or the
    /// start); later steps follow every `step_ns`.
    grid_start: Option<u64>,
    grid_step: u64,
    /// The last step that had (or has) an action: later steps are misses.
    covered_until: u64,
    /// Steps ended since then without an action.
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
            active: [None; MAX_ENSEMBLE],
            arrivals: 0,
            instruction: 0,
            grid_start: None,
            grid_step: 0,
            covered_until: 0,
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
        let mut chunks_dropped = 0u32;
        self.grid_start.get_or_insert(index);
        if conditions.instruction != self.instruction {
            let dropped = self.drop_chunks(index);
            if self.state == SafetyState::Armed {
                chunks_dropped += dropped;
            }
            self.instruction = conditions.instruction;
        }
        if let ActionInput::Fresh {
            mut chunk,
            capture_time_ns,
            instruction,
        } = input
        {
            for action in chunk.steps_mut() {
                match s.filter.apply(action) {
                    Filtered::Pass(a) => *action = a,
                    Filtered::Clamped(a) => {
                        clamped = true;
                        *action = a;
                    }
                    Filtered::Rejected { .. } => rejected = true,
                }
            }
            // One unusable step makes the whole chunk unusable (counted as rejected); a chunk
            // made under an older instruction is dropped.
            if !rejected {
                if instruction == conditions.instruction {
                    self.start_chunk(index, chunk, capture_time_ns);
                } else {
                    chunks_dropped += 1;
                }
            }
        }
        let (current_step, _) = self.schedule_position(index);
        let misses =
            u32::try_from(current_step.saturating_sub(self.covered_until)).unwrap_or(u32::MAX);
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
        } else if conditions.proprio_stale {
            StopCause::ProprioStale
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
        if from == SafetyState::Armed && self.state != SafetyState::Armed {
            // Nothing of a chunk survives a STOP or a disarm. (While not armed, results keep
            // the miss count at bay but never move the arm: arming clears them.)
            chunks_dropped += self.drop_chunks(index);
        }
        if self.state == SafetyState::Armed && from != SafetyState::Armed {
            // Arming: only actions that arrive from now on move the arm, from a pose that
            // the workspace box is centred on.
            self.active = [None; MAX_ENSEMBLE];
            self.grid_start = Some(index);
            self.grid_step = 0;
            self.covered_until = 0;
            self.consecutive_misses = 0;
            self.motion = MotionState {
                gripper: self.motion.gripper,
                ..MotionState::default()
            };
        }

        let mut limited = false;
        let mut chunk_step = None;
        let (state, action, capture_time_ns) = match self.state {
            SafetyState::Stopped(_) => (ControlState::Stop, self.still_action(), 0),
            SafetyState::Disarmed => (ControlState::Hold, self.still_action(), 0),
            SafetyState::Armed => match self.paced_delta(index) {
                Some((delta, gripper, capture_time_ns, step)) => {
                    chunk_step = Some(step);
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
            chunk_step,
            chunks_dropped,
        }
    }

    /// Schedule step of tick `index` and how far into it the tick starts (ns).
    fn schedule_position(&self, index: u64) -> (u64, u64) {
        let s = &self.settings;
        let start = self.grid_start.unwrap_or(index);
        let elapsed_ns = index.saturating_sub(start).saturating_mul(s.period_ns);
        if s.step_ns == 0 {
            return (self.grid_step, 0);
        }
        let steps = elapsed_ns / s.step_ns;
        (self.grid_step + steps, elapsed_ns - steps * s.step_ns)
    }

    /// A fresh chunk whose first step starts at tick `index`: a new schedule step begins
    /// here, the rest of the one in progress is given up.
    fn start_chunk(&mut self, index: u64, chunk: ActionChunk, capture_time_ns: u64) {
        let (step, into_step) = self.schedule_position(index);
        // The step in progress is given up unless it starts at this very tick.
        let start_step = if into_step == 0 { step } else { step + 1 };
        self.grid_start = Some(index);
        self.grid_step = start_step;
        let active = Active {
            chunk,
            start_step,
            capture_time_ns,
            arrival: self.arrivals,
        };
        self.arrivals += 1;
        match self.settings.chunks.overlap {
            ChunkOverlap::Latest => {
                self.active = [None; MAX_ENSEMBLE];
                self.active[0] = Some(active);
            }
            ChunkOverlap::Ensemble { .. } => {
                // Chunks that end before the new one starts are done; the oldest goes when
                // every place is taken.
                for slot in &mut self.active {
                    if slot.is_some_and(|a| a.end_step() <= start_step) {
                        *slot = None;
                    }
                }
                let free = self.active.iter().position(Option::is_none);
                let oldest = self
                    .active
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, a)| a.map_or(u64::MAX, |a| a.arrival))
                    .map_or(0, |(i, _)| i);
                self.active[free.unwrap_or(oldest)] = Some(active);
            }
        }
        self.covered_until = self
            .active
            .iter()
            .flatten()
            .map(|a| a.end_step() - 1)
            .max()
            .unwrap_or(start_step);
    }

    /// Drops every chunk in progress: the steps from tick `index` on are misses. Returns how
    /// many chunks still had steps left.
    fn drop_chunks(&mut self, index: u64) -> u32 {
        let (step, _) = self.schedule_position(index);
        let mut dropped = 0;
        for slot in &mut self.active {
            if slot.take().is_some_and(|a| a.end_step() > step) {
                dropped += 1;
            }
        }
        if dropped > 0 {
            self.covered_until = self.covered_until.min(step);
        }
        dropped
    }

    /// The action of schedule step `step`: the newest chunk's with `latest`, the weighted
    /// mean of every chunk that covers it with ensembling. Also the capture time and the
    /// step's index in the newest chunk that covers it.
    fn step_action(&self, step: u64) -> Option<([f64; ACTION_DIM], u64, u32)> {
        let (newest, k, newest_action) = self
            .active
            .iter()
            .flatten()
            .filter_map(|a| a.action(step).map(|(k, action)| (a, k, action)))
            .max_by_key(|(a, _, _)| a.arrival)?;
        let (capture_time_ns, k) = (newest.capture_time_ns, k as u32);
        match self.settings.chunks.overlap {
            ChunkOverlap::Latest => Some((newest_action.map(f64::from), capture_time_ns, k)),
            ChunkOverlap::Ensemble { decay } => {
                let mut covering = [(0u64, [0.0f32; ACTION_DIM]); MAX_ENSEMBLE];
                let mut n = 0;
                for a in self.active.iter().flatten() {
                    if let Some((_, action)) = a.action(step) {
                        covering[n] = (a.arrival, *action);
                        n += 1;
                    }
                }
                let covering = &mut covering[..n];
                covering.sort_unstable_by_key(|(arrival, _)| *arrival);
                let mut sum = [0.0f64; ACTION_DIM];
                let mut total = 0.0;
                for (i, (_, action)) in covering.iter().enumerate() {
                    let w = (-decay * i as f64).exp();
                    total += w;
                    for (acc, &v) in sum.iter_mut().zip(action) {
                        *acc += w * f64::from(v);
                    }
                }
                Some((sum.map(|v| v / total), capture_time_ns, k))
            }
        }
    }

    /// The share of each step's action that falls in tick `index`'s period (six deltas; a
    /// tick that spans a step boundary takes its part of both steps), the wanted gripper
    /// (of the first step with an action), the capture time and the chunk step; `None` when
    /// no step of the period has an action left.
    fn paced_delta(&self, index: u64) -> Option<([f64; 6], f64, u64, u32)> {
        let s = &self.settings;
        if s.step_ns == 0 {
            return None;
        }
        let (mut step, mut into_step) = self.schedule_position(index);
        let mut left = s.period_ns;
        let mut delta = [0.0f64; 6];
        let mut first: Option<(f64, u64, u32)> = None;
        while left > 0 {
            let part = (s.step_ns - into_step).min(left);
            if let Some((action, capture_time_ns, k)) = self.step_action(step) {
                let share = part as f64 / s.step_ns as f64;
                for (d, a) in delta.iter_mut().zip(action) {
                    *d += a * share;
                }
                first.get_or_insert((action[ACTION_DIM - 1], capture_time_ns, k));
            } else if step > self.covered_until {
                break;
            }
            left -= part;
            into_step = 0;
            step += 1;
        }
        first.map(|(gripper, capture_time_ns, k)| (delta, gripper, capture_time_ns, k))
    }

    /// Whether the next prediction should be asked for at tick `index`: always unless armed
    /// with a chunk whose steps left (the current one included) exceed the threshold.
    pub fn wants_prediction(&self, index: u64) -> bool {
        if self.state != SafetyState::Armed {
            return true;
        }
        let Some(newest) = self.active.iter().flatten().max_by_key(|a| a.arrival) else {
            return true;
        };
        let (step, _) = self.schedule_position(index);
        let left = newest.end_step().saturating_sub(step);
        left <= self
            .settings
            .chunks
            .request_at_steps_left(newest.chunk.len())
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
            chunks: ChunkSettings::default(),
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
            chunk: ActionChunk::single([dx, 0.0, 0.0, 0.0, 0.0, 0.0, gripper]),
            capture_time_ns: 99,
            instruction: 0,
        }
    }

    const CLEAR: Conditions = Conditions {
        shutting_down: false,
        estop: false,
        camera_silent: false,
        proprio_stale: false,
        worker_fault: false,
        request: None,
        instruction: 0,
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
                    proprio_stale: true,
                    worker_fault: true,
                    request: Some(OperatorRequest::Arm),
                    instruction: 0,
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

    // Chunks: 10 ms ticks, 100 ms steps.

    fn chunk(dxs: &[f32], instruction: u64) -> ActionInput {
        let rows: Vec<[f32; ACTION_DIM]> = dxs
            .iter()
            .map(|&dx| [dx, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
            .collect();
        ActionInput::Fresh {
            chunk: ActionChunk::from_rows(&rows).expect("1 to 64 rows"),
            capture_time_ns: 7,
            instruction,
        }
    }

    fn with_chunks(chunks: ChunkSettings) -> Supervisor {
        Supervisor::new(SupervisorSettings {
            chunks,
            ..settings(true)
        })
    }

    /// Runs ticks `from..to` with no new input, returning (state, dx, chunk step) per tick.
    fn run(
        s: &mut Supervisor,
        from: u64,
        to: u64,
        conditions: Conditions,
    ) -> Vec<(ControlState, f32, Option<u32>)> {
        (from..to)
            .map(|i| {
                let d = s.step(i, ActionInput::Nothing, conditions);
                (d.state, d.action[0], d.chunk_step)
            })
            .collect()
    }

    #[test]
    fn a_chunk_executes_one_step_per_action_period_then_misses_count() {
        let mut s = armed();
        let d = s.step(0, chunk(&[0.01, 0.02, 0.03], 0), CLEAR);
        assert_eq!((d.state, d.chunk_step), (ControlState::Act, Some(0)));
        assert!((d.action[0] - 0.001).abs() < 1e-7, "{d:?}");
        let ticks = run(&mut s, 1, 30, CLEAR);
        for (i, (state, dx, step)) in ticks.iter().enumerate() {
            let tick = i + 1;
            let k = tick / 10;
            assert_eq!(*state, ControlState::Act, "tick {tick}");
            assert_eq!(*step, Some(k as u32), "tick {tick}");
            let want = 0.001 * (k + 1) as f32;
            assert!((dx - want).abs() < 1e-7, "tick {tick}: {dx} want {want}");
        }
        // Step 3 has no action left: a miss per step, STOP at the third.
        let d = s.step(30, ActionInput::Nothing, CLEAR);
        assert_eq!((d.state, d.misses), (ControlState::Hold, 1));
        let d = s.step(40, ActionInput::Nothing, CLEAR);
        assert_eq!((d.state, d.misses), (ControlState::Hold, 1));
        let d = s.step(50, ActionInput::Nothing, CLEAR);
        assert_eq!(
            (d.state, d.stop_cause),
            (ControlState::Stop, StopCause::PolicyMisses)
        );
    }

    #[test]
    fn a_tick_that_spans_two_steps_takes_its_share_of_each() {
        // 30 ms ticks over 100 ms steps: the tick at 90 ms covers 10 ms of step 0 and 20 ms
        // of step 1, so that the whole chunk is published.
        let mut s = Supervisor::new(SupervisorSettings {
            period_ns: 30_000_000,
            ..settings(true)
        });
        let mut sum = f64::from(s.step(0, chunk(&[0.01, 0.02], 0), CLEAR).action[0]);
        let d = s.step(3, ActionInput::Nothing, CLEAR);
        assert!((d.action[0] - (0.001 + 0.004)).abs() < 1e-7, "{d:?}");
        sum += f64::from(s.step(1, ActionInput::Nothing, CLEAR).action[0]);
        sum += f64::from(s.step(2, ActionInput::Nothing, CLEAR).action[0]);
        sum += f64::from(d.action[0]);
        for i in 4..8 {
            sum += f64::from(s.step(i, ActionInput::Nothing, CLEAR).action[0]);
        }
        assert!((sum - 0.03).abs() < 1e-6, "{sum}");
    }

    #[test]
    fn with_latest_a_new_chunk_replaces_the_rest_of_the_current_one() {
        let mut s = armed();
        s.step(0, chunk(&[0.01, 0.01, 0.01], 0), CLEAR);
        run(&mut s, 1, 15, CLEAR);
        // Mid step 1: the new chunk's first step starts now, for a whole step.
        let d = s.step(15, chunk(&[0.04, 0.05], 0), CLEAR);
        assert_eq!((d.chunk_step, d.clamped), (Some(0), false));
        assert!((d.action[0] - 0.004).abs() < 1e-7, "{d:?}");
        let ticks = run(&mut s, 16, 36, CLEAR);
        assert!(ticks[..9].iter().all(|t| (t.1 - 0.004).abs() < 1e-7));
        assert!(ticks[9..19].iter().all(|t| (t.1 - 0.005).abs() < 1e-7));
        assert_eq!(ticks[19].0, ControlState::Hold, "{ticks:?}");
    }

    #[test]
    fn ensembling_weighs_each_chunks_action_for_a_step_as_act_defines() {
        let decay = 0.5;
        let mut s = with_chunks(ChunkSettings {
            overlap: ChunkOverlap::Ensemble { decay },
            size_threshold: 1.0,
        });
        s.step(0, chunk(&[0.01, 0.02, 0.03], 0), CLEAR);
        run(&mut s, 1, 10, CLEAR);
        // At the step boundary: the new chunk's first step is step 1, where the first chunk
        // has 0.02. ACT: w_i = exp(-m i), i = 0 for the oldest.
        let d = s.step(10, chunk(&[0.04, 0.05, 0.045], 0), CLEAR);
        assert!(!d.clamped);
        let (w0, w1) = (1.0f64, (-decay).exp());
        let step1 = (w0 * 0.02 + w1 * 0.04) / (w0 + w1);
        assert!(
            (f64::from(d.action[0]) - step1 / 10.0).abs() < 1e-7,
            "{d:?}"
        );
        assert_eq!(d.chunk_step, Some(0));
        let ticks = run(&mut s, 11, 41, CLEAR);
        let step2 = (w0 * 0.03 + w1 * 0.05) / (w0 + w1);
        assert!(
            (f64::from(ticks[9].1) - step2 / 10.0).abs() < 1e-7,
            "{ticks:?}"
        );
        // Step 3: only the second chunk is left.
        assert!((ticks[19].1 - 0.0045).abs() < 1e-7, "{ticks:?}");
        assert_eq!(ticks[19].2, Some(2));
        assert_eq!(ticks[29].0, ControlState::Hold);
    }

    #[test]
    fn stop_disarm_and_a_new_instruction_drop_what_is_left_of_a_chunk() {
        let five = [0.01; 5];
        // E-stop mid chunk, released, armed again: no step of the old chunk comes back.
        let mut s = armed();
        s.step(0, chunk(&five, 0), CLEAR);
        let d = s.step(15, ActionInput::Nothing, ESTOP);
        assert_eq!((d.state, d.chunks_dropped), (ControlState::Stop, 1));
        assert_eq!(
            s.step(16, ActionInput::Nothing, ARM).state,
            ControlState::Hold
        );
        assert!(run(&mut s, 17, 60, CLEAR)
            .iter()
            .all(|t| t.0 != ControlState::Act));

        // Disarm mid chunk.
        let mut s = armed();
        s.step(0, chunk(&five, 0), CLEAR);
        let d = s.step(15, ActionInput::Nothing, DISARM);
        assert_eq!((d.state, d.chunks_dropped), (ControlState::Hold, 1));
        s.step(16, ActionInput::Nothing, ARM);
        assert!(run(&mut s, 17, 60, CLEAR)
            .iter()
            .all(|t| t.0 != ControlState::Act));

        // A new instruction: HOLD at once, a result of the old instruction is not executed,
        // one of the new instruction is.
        let mut s = armed();
        s.step(0, chunk(&five, 0), CLEAR);
        let next = Conditions {
            instruction: 1,
            ..CLEAR
        };
        let d = s.step(15, ActionInput::Nothing, next);
        assert_eq!((d.state, d.chunks_dropped), (ControlState::Hold, 1));
        let d = s.step(16, chunk(&five, 0), next);
        assert_eq!((d.state, d.chunks_dropped), (ControlState::Hold, 1));
        let d = s.step(17, chunk(&[0.02], 1), next);
        assert_eq!((d.state, d.chunk_step), (ControlState::Act, Some(0)));
        assert!((d.action[0] - 0.002).abs() < 1e-7);
    }

    #[test]
    fn the_next_prediction_is_asked_for_once_the_chunk_is_down_to_the_threshold() {
        let mut s = armed();
        assert!(s.wants_prediction(0), "nothing to execute");
        s.step(0, chunk(&[0.01; 8], 0), CLEAR);
        // Threshold 0.5 of 8 steps: asked for from step 4 on (4 steps left, this one included).
        for i in 1..40 {
            s.step(i, ActionInput::Nothing, CLEAR);
            assert!(!s.wants_prediction(i), "tick {i}");
        }
        for i in 40..80 {
            s.step(i, ActionInput::Nothing, CLEAR);
            assert!(s.wants_prediction(i), "tick {i}");
        }
        // Single actions are asked for at every tick, as before chunks.
        let mut s = armed();
        s.step(0, fresh(0.01, 1.0), CLEAR);
        assert!(s.wants_prediction(0));
        // Not armed: always.
        let mut s = disarmed();
        s.step(0, chunk(&[0.01; 8], 0), CLEAR);
        assert!(s.wants_prediction(1));
    }
}
