//! The fixed-rate control loop: absolute deadlines on CLOCK_MONOTONIC (`next += period`),
//! late wake-ups skip whole tick slots and count them, one timestamp per tick. Each tick
//! reads the e-stop, operator and camera state, takes the newest action result, decides
//! ACT/HOLD/STOP (paced and limited by the [`Supervisor`]), hands exactly one command record to the publisher thread and fires the
//! next inference. Nothing in a tick allocates, locks or panics.

use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::clock;
use super::handoff::{ActionResult, CommandOutbox, ControlInputs, InferenceTrigger, ResultSlot};
use super::heartbeat::{Supervision, Worker};
use super::limits::MotionLimits;
use super::safety::SafetyFilter;
use super::stats::ControlStats;
use super::supervisor::{
    ActionInput, Conditions, OperatorRequest, StopCause, Supervisor, SupervisorSettings,
};
use super::tap::CommandTap;
use super::ControlState;
use crate::command_record::{CommandRecord, RECORD_LEN};

/// Longest single sleep of the loop; see [`ControlLoop::sleep_until_deadline_or_stop`].
const STOP_POLL_NS: u64 = 100_000_000;

/// Timing and limits of the loop, derived from the validated config.
#[derive(Debug, Clone, PartialEq)]
pub struct LoopSettings {
    pub period_ns: u64,
    /// One action step of the policy: `1 / action_hz`.
    pub step_ns: u64,
    pub max_action_age_ns: u64,
    pub max_frame_age_ns: u64,
    /// Consecutive action steps without a fresh action before STOP.
    pub stop_after_misses: u32,
    pub start_armed: bool,
    pub safety: crate::safety_config::SafetyConfig,
    /// How chunks overlap and when the next one is asked for.
    pub chunks: crate::chunk::ChunkSettings,
}

/// What the loop needs to know of the camera, read once per tick without a lock.
pub trait FrameHealth: Send + Sync {
    /// The source has failed for good (no reopen left).
    fn has_failed(&self) -> bool;
    /// CLOCK_MONOTONIC when the newest frame arrived; 0 before the first.
    fn last_frame_monotonic_ns(&self) -> u64;
}

/// Where the loop reports that it lives and what it does (systemd's notify socket in the
/// service). Called from the tick: implementations allocate nothing and take no lock.
pub trait TickNotifier: Send {
    /// After every tick; `write_status` writes the one-line status if the notifier sends one
    /// now.
    fn after_tick(&mut self, now_ns: u64, write_status: &mut dyn FnMut(&mut dyn Write));
    /// Before the final STOP of an orderly shutdown.
    fn stopping(&mut self);
}

/// The hand-offs the loop talks to.
#[derive(Clone)]
pub struct LoopLinks {
    pub frames: Arc<dyn FrameHealth>,
    pub results: Arc<ResultSlot>,
    pub trigger: Arc<InferenceTrigger>,
    pub outbox: Arc<CommandOutbox>,
    pub inputs: Arc<ControlInputs>,
    pub stats: Arc<ControlStats>,
    /// Whether the process was asked to terminate (SIGTERM, SIGINT): a plain function, read
    /// once per tick and while sleeping.
    pub termination_requested: fn() -> bool,
}

/// One tick's timestamps, read once at wake-up and passed to everything in the tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TickTime {
    /// Schedule slot since the loop started (skipped slots included).
    pub index: u64,
    /// CLOCK_MONOTONIC deadline the loop slept until (after a stall, that of the first
    /// skipped slot, so that wake-up lateness stays measured in full).
    pub scheduled_ns: u64,
    /// CLOCK_MONOTONIC at wake-up.
    pub monotonic_ns: u64,
    /// CLOCK_REALTIME at wake-up (the record's tick time).
    pub unix_ns: u64,
}

/// Per-tick timing kept for benchmarks, in a buffer sized before the loop starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TickTrace {
    pub seq: u64,
    pub scheduled_ns: u64,
    pub wake_ns: u64,
    /// CLOCK_MONOTONIC when the record was in the outbox.
    pub handed_off_ns: u64,
}

/// How the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopEnd {
    /// Shutdown requested or the duration reached: the last command was STOP.
    Stopped,
    /// `tick_budget` ticks done, no final STOP (used to run a loop in slices).
    BudgetSpent,
}

pub struct ControlLoop {
    settings: LoopSettings,
    links: LoopLinks,
    supervisor: Supervisor,
    notifier: Option<Box<dyn TickNotifier>>,
    /// Heartbeats: the loop checks in at every wake-up and ends with STOP on a worker fault.
    supervision: Option<Arc<Supervision>>,
    /// Next command's sequence number.
    seq: u64,
    /// Next tick's schedule slot and deadline.
    next_index: u64,
    next_deadline_ns: u64,
    started: bool,
    start_ns: u64,
    /// Slot at which the loop stops with a final STOP (from `--duration`).
    stop_at_index: Option<u64>,
    last_estop_requests: u64,
    last_arm_requests: u64,
    last_disarm_requests: u64,
    last_state: Option<ControlState>,
    encoded: [u8; RECORD_LEN],
    trace: Vec<TickTrace>,
    tap: Option<Arc<dyn CommandTap>>,
}

impl ControlLoop {
    pub fn new(settings: LoopSettings, links: LoopLinks) -> Self {
        let supervisor = Supervisor::new(SupervisorSettings {
            filter: SafetyFilter::new(&settings.safety),
            limits: MotionLimits::from_config(&settings.safety),
            period_ns: settings.period_ns,
            step_ns: settings.step_ns,
            stop_after_misses: settings.stop_after_misses,
            start_armed: settings.start_armed,
            chunks: settings.chunks,
        });
        Self {
            last_estop_requests: links.inputs.estop_requests(),
            last_arm_requests: links.inputs.arm_requests(),
            last_disarm_requests: links.inputs.disarm_requests(),
            settings,
            links,
            supervisor,
            notifier: None,
            supervision: None,
            seq: 0,
            next_index: 0,
            next_deadline_ns: 0,
            started: false,
            start_ns: 0,
            stop_at_index: None,
            last_state: None,
            encoded: [0; RECORD_LEN],
            trace: Vec::new(),
            tap: None,
        }
    }

    /// Hands a copy of every published command to `tap` (a session recorder).
    pub fn with_command_tap(mut self, tap: Option<Arc<dyn CommandTap>>) -> Self {
        self.tap = tap;
        self
    }

    /// Sends systemd notifications from the loop.
    pub fn with_notifier(mut self, notifier: Option<Box<dyn TickNotifier>>) -> Self {
        self.notifier = notifier;
        self
    }

    /// Checks in with `supervision` and ends with a STOP when it reports a worker fault.
    pub fn with_supervision(mut self, supervision: Option<Arc<Supervision>>) -> Self {
        self.supervision = supervision;
        self
    }

    fn check_in(&self) {
        if let Some(supervision) = &self.supervision {
            supervision.check_in(Worker::Control);
        }
    }

    fn worker_fault(&self) -> bool {
        self.supervision.as_ref().is_some_and(|s| s.has_fault())
    }

    /// Stops with a final STOP after `ticks` tick slots.
    pub fn with_tick_limit(mut self, ticks: Option<u64>) -> Self {
        self.stop_at_index = ticks;
        self
    }

    /// Keeps the timing of the first `capacity` ticks (allocated here, not in the loop).
    pub fn with_trace(mut self, capacity: usize) -> Self {
        self.trace = Vec::with_capacity(capacity);
        self
    }

    pub fn trace(&self) -> &[TickTrace] {
        &self.trace
    }

    /// Runs ticks until shutdown (final STOP published) or until `tick_budget` ticks ran.
    pub fn run(&mut self, tick_budget: Option<u64>) -> LoopEnd {
        if !self.started {
            self.started = true;
            self.start_ns = clock::monotonic_ns();
            self.next_deadline_ns = self.start_ns;
        }
        let mut ticks_run = 0u64;
        loop {
            if tick_budget.is_some_and(|budget| ticks_run >= budget) {
                return LoopEnd::BudgetSpent;
            }
            let deadline_ns = self.next_deadline_ns;
            self.sleep_until_deadline_or_stop(deadline_ns);
            let monotonic_ns = clock::monotonic_ns();
            self.skip_passed_slots(monotonic_ns);
            let time = TickTime {
                index: self.next_index,
                scheduled_ns: deadline_ns,
                monotonic_ns,
                unix_ns: clock::realtime_ns(),
            };
            let state = self.tick(time);
            ticks_run += 1;
            if state.is_none() {
                return LoopEnd::Stopped;
            }
            self.advance_schedule(time.monotonic_ns);
        }
    }

    /// Sleeps until `deadline_ns`, but in steps of at most [`STOP_POLL_NS`] when the wait is
    /// longer, so that a stop request at a slow rate still gets its final STOP out within
    /// systemd's stop timeout instead of a whole period later.
    fn sleep_until_deadline_or_stop(&self, deadline_ns: u64) {
        loop {
            self.check_in();
            let now = clock::monotonic_ns();
            if now >= deadline_ns {
                return;
            }
            clock::sleep_until_monotonic(deadline_ns.min(now.saturating_add(STOP_POLL_NS)));
            if self.links.inputs.shutdown_requested()
                || (self.links.termination_requested)()
                || self.worker_fault()
            {
                return;
            }
        }
    }

    /// A wake-up a whole period or more after the slot's deadline (the thread was stalled or
    /// starved) ticks in the slot it woke in: the passed slots are skipped and counted, so
    /// action ages, which count slots, are not judged from a slot long gone.
    fn skip_passed_slots(&mut self, wake_ns: u64) {
        let period = self.settings.period_ns;
        if period == 0 || wake_ns < self.next_deadline_ns.saturating_add(period) {
            return;
        }
        let skipped = (wake_ns - self.next_deadline_ns) / period;
        self.next_index += skipped;
        self.next_deadline_ns += skipped * period;
        self.links
            .stats
            .overruns
            .fetch_add(skipped, Ordering::Relaxed);
    }

    /// Moves to the next slot; slots whose deadline already passed at wake-up are skipped
    /// and counted as overruns, so lateness never accumulates.
    fn advance_schedule(&mut self, wake_ns: u64) {
        let period = self.settings.period_ns;
        self.next_index += 1;
        self.next_deadline_ns += period;
        if wake_ns >= self.next_deadline_ns {
            let skipped = (wake_ns - self.next_deadline_ns) / period + 1;
            self.next_index += skipped;
            self.next_deadline_ns += skipped * period;
            self.links
                .stats
                .overruns
                .fetch_add(skipped, Ordering::Relaxed);
        }
    }

    /// Like a silent camera: the policy takes the robot's state and none came within
    /// `max_frame_age` (counted from the loop's start before the first).
    fn proprio_stale(&self, now_ns: u64) -> bool {
        let inputs = &self.links.inputs;
        inputs.proprio_required() && self.older_than_frame_age(inputs.last_proprio_ns(), now_ns)
    }

    fn camera_silent(&self, now_ns: u64) -> bool {
        let frames = &self.links.frames;
        frames.has_failed() || self.older_than_frame_age(frames.last_frame_monotonic_ns(), now_ns)
    }

    /// Whether an input whose newest arrival was at `last_ns` (0: none yet, counted from the
    /// loop's start) is older than `max_frame_age` at `now_ns`.
    fn older_than_frame_age(&self, last_ns: u64, now_ns: u64) -> bool {
        let since = match last_ns {
            0 => self.start_ns,
            last => last,
        };
        now_ns.saturating_sub(since) > self.settings.max_frame_age_ns
    }

    fn action_input(&self, result: Option<ActionResult>, time: &TickTime) -> ActionInput {
        match result {
            Some(r) => {
                let age_ns = time
                    .index
                    .saturating_sub(r.trigger_tick)
                    .saturating_mul(self.settings.period_ns);
                if age_ns > self.settings.max_action_age_ns {
                    ActionInput::Stale
                } else {
                    ActionInput::Fresh {
                        chunk: r.chunk,
                        capture_time_ns: r.capture_time_ns,
                        instruction: r.instruction,
                    }
                }
            }
            None => ActionInput::Nothing,
        }
    }

    /// One tick. Returns the published state, or `None` after the final STOP.
    pub fn tick(&mut self, time: TickTime) -> Option<ControlState> {
        let links = &self.links;
        let inputs = &links.inputs;
        let estop_requests = inputs.estop_requests();
        let estop = inputs.estop_latched() || estop_requests != self.last_estop_requests;
        self.last_estop_requests = estop_requests;
        let shutting_down = inputs.shutdown_requested()
            || (self.links.termination_requested)()
            || self.stop_at_index.is_some_and(|at| time.index >= at);
        let arm_requests = inputs.arm_requests();
        let disarm_requests = inputs.disarm_requests();
        let request = if disarm_requests != self.last_disarm_requests {
            Some(OperatorRequest::Disarm)
        } else if arm_requests != self.last_arm_requests {
            Some(OperatorRequest::Arm)
        } else {
            None
        };
        self.last_arm_requests = arm_requests;
        self.last_disarm_requests = disarm_requests;
        let worker_fault = self.worker_fault();
        let conditions = Conditions {
            shutting_down,
            estop,
            camera_silent: self.camera_silent(time.monotonic_ns),
            proprio_stale: self.proprio_stale(time.monotonic_ns),
            worker_fault,
            request,
            instruction: inputs.instruction(),
        };

        let result = links.results.take();
        let input = self.action_input(result, &time);
        let decision = self.supervisor.step(time.index, input, conditions);
        // Counters first: whoever sees this tick's command must also see its counters.
        self.record_stats(&decision, input, result.as_ref(), &time);

        let links = &self.links;
        CommandRecord {
            state: decision.state,
            seq: self.seq,
            tick_time_ns: time.unix_ns,
            capture_time_ns: decision.capture_time_ns,
            action: decision.action,
        }
        .encode(&mut self.encoded);
        links.outbox.send(&self.encoded, time.monotonic_ns);
        if let Some(tap) = &self.tap {
            tap.command(
                &self.encoded,
                decision.stop_cause.name(),
                decision.chunk_step,
            );
        }
        if self.trace.len() < self.trace.capacity() {
            self.trace.push(TickTrace {
                seq: self.seq,
                scheduled_ns: time.scheduled_ns,
                wake_ns: time.monotonic_ns,
                handed_off_ns: clock::monotonic_ns(),
            });
        }
        self.seq += 1;

        // A fault ends the loop like a shutdown: this STOP is the last command.
        let ending = shutting_down || worker_fault;
        if !ending {
            if self.supervisor.wants_prediction(time.index) {
                self.links.trigger.fire(time.index);
            } else {
                self.links.trigger.withdraw();
            }
        }
        if ending {
            self.links.outbox.close();
            if let Some(notifier) = self.notifier.as_mut() {
                notifier.stopping();
            }
            return None;
        }
        Some(decision.state)
    }

    fn record_stats(
        &mut self,
        decision: &super::supervisor::Decision,
        input: ActionInput,
        result: Option<&ActionResult>,
        time: &TickTime,
    ) {
        let stats = &self.links.stats;
        stats.ticks.fetch_add(1, Ordering::Relaxed);
        let counter = match decision.state {
            ControlState::Act => &stats.act_ticks,
            ControlState::Hold => &stats.hold_ticks,
            ControlState::Stop => &stats.stop_ticks,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if decision.misses > 0 {
            stats
                .misses
                .fetch_add(u64::from(decision.misses), Ordering::Relaxed);
        }
        if decision.rejected {
            stats.rejected.fetch_add(1, Ordering::Relaxed);
        }
        if decision.clamped {
            stats.clamped.fetch_add(1, Ordering::Relaxed);
        }
        if decision.limited {
            stats.limited.fetch_add(1, Ordering::Relaxed);
        }
        if decision.arm_refused {
            stats.arm_refused.fetch_add(1, Ordering::Relaxed);
        }
        if decision.chunks_dropped > 0 {
            stats
                .chunks_dropped
                .fetch_add(u64::from(decision.chunks_dropped), Ordering::Relaxed);
        }
        if let Some(step) = decision.chunk_step {
            stats.chunk_step.store(u64::from(step), Ordering::Relaxed);
        }
        stats
            .armed
            .store(self.supervisor.armed(), Ordering::Release);
        if input == ActionInput::Stale {
            stats.stale.fetch_add(1, Ordering::Relaxed);
        }
        stats.consecutive_misses.store(
            u64::from(self.supervisor.consecutive_misses()),
            Ordering::Relaxed,
        );
        // The cause before the state, so that a reader seeing the new state sees its cause.
        if decision.stop_cause != StopCause::None {
            stats
                .stop_cause
                .store(decision.stop_cause as u64, Ordering::Release);
        }
        stats.state.store(decision.state as u64, Ordering::Release);
        stats
            .tick_jitter
            .record_ns(time.monotonic_ns.saturating_sub(time.scheduled_ns));
        if decision.state == ControlState::Act {
            if let Some(r) = result {
                let age_ticks = time.index.saturating_sub(r.trigger_tick);
                stats
                    .action_age
                    .record_ns(age_ticks.saturating_mul(self.settings.period_ns));
            }
        }
        self.last_state = Some(decision.state);

        if let Some(notifier) = self.notifier.as_mut() {
            let seq = self.seq;
            let misses = stats.misses.load(Ordering::Relaxed);
            let overruns = stats.overruns.load(Ordering::Relaxed);
            let state = decision.state.name();
            let armed = if self.supervisor.armed() {
                "armed"
            } else {
                "disarmed"
            };
            notifier.after_tick(time.monotonic_ns, &mut |line| {
                let _ = write!(
                    line,
                    "{state} {armed} tick {seq} misses {misses} overruns {overruns}"
                );
            });
        }
    }

    /// Commands handed to the publisher so far.
    pub fn commands_sent(&self) -> u64 {
        self.seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::safety_config::SafetyConfig;
    use crate::ACTION_DIM;
    use std::sync::atomic::{AtomicBool, AtomicU64};
    use vla_model::policy::StageTimings;

    /// The camera of these tests: a frame arrives when a test publishes one.
    #[derive(Default)]
    struct TestFrames {
        last_ns: AtomicU64,
        failed: AtomicBool,
    }

    impl TestFrames {
        fn publish(&self, _frame: (), arrival_monotonic_ns: u64) {
            self.last_ns.store(arrival_monotonic_ns, Ordering::Release);
        }
    }

    impl FrameHealth for TestFrames {
        fn has_failed(&self) -> bool {
            self.failed.load(Ordering::Acquire)
        }
        fn last_frame_monotonic_ns(&self) -> u64 {
            self.last_ns.load(Ordering::Acquire)
        }
    }

    /// The loop's links, with the test camera at hand.
    struct Links {
        inner: LoopLinks,
        frames: Arc<TestFrames>,
    }

    impl std::ops::Deref for Links {
        type Target = LoopLinks;
        fn deref(&self) -> &LoopLinks {
            &self.inner
        }
    }

    const PERIOD: u64 = 20_000_000;

    /// One action step per tick, armed from the start, motion limits out of the way.
    fn settings() -> LoopSettings {
        LoopSettings {
            period_ns: PERIOD,
            step_ns: PERIOD,
            max_action_age_ns: 2 * PERIOD,
            max_frame_age_ns: 500_000_000,
            stop_after_misses: 3,
            start_armed: true,
            safety: SafetyConfig {
                max_linear_velocity: 100.0,
                max_linear_acceleration: 1e6,
                max_linear_jerk: 1e9,
                max_gripper_rate: 1e6,
                ..SafetyConfig::default()
            },
            chunks: crate::chunk::ChunkSettings::default(),
        }
    }

    fn links() -> Links {
        let frames = Arc::new(TestFrames::default());
        let inner = LoopLinks {
            frames: frames.clone(),
            results: Arc::new(ResultSlot::default()),
            trigger: Arc::new(InferenceTrigger::default()),
            // Every record kept, so a test sees each tick's command.
            outbox: Arc::new(CommandOutbox::keeping(64)),
            inputs: Arc::new(ControlInputs::default()),
            stats: Arc::new(ControlStats::default()),
            termination_requested: || false,
        };
        Links { inner, frames }
    }

    /// A loop whose camera delivered a frame at 1 s, ticking from 1 s on.
    fn control_loop() -> (ControlLoop, Links) {
        let links = links();
        links.frames.publish((), 1_000_000_000);
        let mut control = ControlLoop::new(settings(), links.clone());
        control.start_ns = 1_000_000_000;
        (control, links)
    }

    fn at(index: u64) -> TickTime {
        let t = 1_000_000_000 + index * PERIOD;
        TickTime {
            index,
            scheduled_ns: t,
            monotonic_ns: t + 1_000,
            unix_ns: 1_700_000_000_000_000_000 + t,
        }
    }

    fn result(trigger_tick: u64, dx: f32) -> ActionResult {
        ActionResult {
            trigger_tick,
            chunk: crate::chunk::ActionChunk::single([dx, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]),
            tokens: [0; ACTION_DIM],
            instruction: 0,
            capture_time_ns: 42,
            timings: StageTimings::default(),
        }
    }

    fn published(links: &LoopLinks) -> Vec<CommandRecord> {
        std::iter::from_fn(|| links.outbox.receive())
            .map(|record| CommandRecord::decode(&record.bytes).unwrap())
            .collect()
    }

    #[test]
    fn each_tick_publishes_one_record_and_fires_inference() {
        let (mut control, links) = control_loop();
        assert_eq!(control.tick(at(0)), Some(ControlState::Hold));
        assert_eq!(links.trigger.requested(), Some(0));
        // The frame latched at tick 0 gives the action published at tick 1.
        links.results.post(result(0, 0.01));
        assert_eq!(control.tick(at(1)), Some(ControlState::Act));
        assert_eq!(links.trigger.requested(), Some(1));
        let records = published(&links);
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].seq, 0);
        assert_eq!(records[0].state, ControlState::Hold);
        assert_eq!(records[0].capture_time_ns, 0);
        assert_eq!(records[1].seq, 1);
        assert_eq!(records[1].state, ControlState::Act);
        assert_eq!(records[1].action[0], 0.01);
        assert_eq!(records[1].capture_time_ns, 42);
        assert_eq!(records[1].tick_time_ns, at(1).unix_ns);
        assert_eq!(links.stats.misses.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn missing_and_stale_actions_hold_then_stop_until_armed() {
        let (mut control, links) = control_loop();
        control.tick(at(0));
        links.results.post(result(0, 0.01));
        assert_eq!(control.tick(at(1)), Some(ControlState::Act));
        // The step (one period) is used up: HOLD and one missed step.
        assert_eq!(control.tick(at(2)), Some(ControlState::Hold));
        // Latched at tick 1, ready at tick 3: two periods old, not over the limit... but
        // three periods old at tick 4 is: ignored. Three missed steps: STOP.
        links.results.post(result(1, 0.02));
        assert_eq!(control.tick(at(4)), Some(ControlState::Stop));
        assert_eq!(links.stats.misses.load(Ordering::Relaxed), 3);
        assert_eq!(links.stats.stale.load(Ordering::Relaxed), 1);
        // Fresh actions again: still STOP, until an operator arms.
        links.results.post(result(4, 0.03));
        assert_eq!(control.tick(at(5)), Some(ControlState::Stop));
        links.inputs.request_arm();
        links.results.post(result(5, 0.03));
        assert_eq!(control.tick(at(6)), Some(ControlState::Hold));
        assert!(links.stats.armed.load(Ordering::Relaxed));
        links.results.post(result(6, 0.03));
        assert_eq!(control.tick(at(7)), Some(ControlState::Act));
    }

    #[test]
    fn a_fresh_start_is_disarmed_until_an_arm_request() {
        let links = links();
        links.frames.publish((), 1_000_000_000);
        let settings = LoopSettings {
            start_armed: false,
            ..settings()
        };
        let mut control = ControlLoop::new(settings, links.clone());
        control.start_ns = 1_000_000_000;
        for index in 0..10 {
            links.results.post(result(index, 0.01));
            assert_eq!(control.tick(at(index + 1)), Some(ControlState::Hold));
        }
        assert!(!links.stats.armed.load(Ordering::Relaxed));
        links.inputs.request_arm();
        links.results.post(result(11, 0.01));
        assert_eq!(control.tick(at(12)), Some(ControlState::Hold));
        links.results.post(result(12, 0.01));
        assert_eq!(control.tick(at(13)), Some(ControlState::Act));
        links.inputs.request_disarm();
        links.results.post(result(13, 0.01));
        assert_eq!(control.tick(at(14)), Some(ControlState::Hold));
    }

    #[test]
    fn estop_latches_until_released_and_armed_and_a_brief_stop_is_never_lost() {
        let (mut control, links) = control_loop();
        control.tick(at(0));
        links.inputs.request_estop();
        links.results.post(result(0, 0.01));
        assert_eq!(control.tick(at(1)), Some(ControlState::Stop));
        // An arm while latched is refused.
        links.inputs.request_arm();
        links.results.post(result(1, 0.01));
        assert_eq!(control.tick(at(2)), Some(ControlState::Stop));
        assert_eq!(links.stats.arm_refused.load(Ordering::Relaxed), 1);
        links.inputs.release_estop();
        links.results.post(result(2, 0.01));
        assert_eq!(control.tick(at(3)), Some(ControlState::Stop));
        links.inputs.request_arm();
        links.results.post(result(3, 0.01));
        assert_eq!(control.tick(at(4)), Some(ControlState::Hold));
        links.results.post(result(4, 0.01));
        assert_eq!(control.tick(at(5)), Some(ControlState::Act));
        // Stop and release between two ticks: one STOP tick all the same, and STOP stays.
        links.inputs.request_estop();
        links.inputs.release_estop();
        links.results.post(result(5, 0.01));
        assert_eq!(control.tick(at(6)), Some(ControlState::Stop));
        links.results.post(result(6, 0.01));
        assert_eq!(control.tick(at(7)), Some(ControlState::Stop));
    }

    #[test]
    fn silent_camera_stops_and_its_return_alone_does_not_act() {
        let (mut control, links) = control_loop();
        control.tick(at(0));
        links.results.post(result(0, 0.01));
        // 30 ticks of 20 ms = 600 ms after the only frame, over the 500 ms limit.
        assert_eq!(control.tick(at(30)), Some(ControlState::Stop));
        assert_eq!(
            StopCause::from_u64(links.stats.stop_cause.load(Ordering::Relaxed)),
            StopCause::CameraSilent
        );
        links.frames.publish((), at(31).monotonic_ns);
        links.results.post(result(30, 0.01));
        assert_eq!(control.tick(at(31)), Some(ControlState::Stop));
        links.inputs.request_arm();
        links.results.post(result(31, 0.01));
        assert_eq!(control.tick(at(32)), Some(ControlState::Hold));
        links.results.post(result(32, 0.01));
        assert_eq!(control.tick(at(33)), Some(ControlState::Act));
    }

    #[test]
    fn shutdown_publishes_one_final_stop_and_closes_the_outbox() {
        let (mut control, links) = control_loop();
        control.tick(at(0));
        links.inputs.request_shutdown();
        links.results.post(result(0, 0.01));
        assert_eq!(control.tick(at(1)), None);
        let records = published(&links);
        assert_eq!(records.last().unwrap().state, ControlState::Stop);
        assert!(links.outbox.is_closed());
        // No inference is fired by the final tick.
        assert_eq!(links.trigger.requested(), Some(0));
    }

    #[test]
    fn late_wake_ups_skip_slots_without_drifting() {
        let (mut control, links) = control_loop();
        control.next_deadline_ns = 1_000_000_000;
        // On time: the next slot is one period later.
        control.advance_schedule(1_000_000_500);
        assert_eq!(
            (control.next_index, control.next_deadline_ns),
            (1, 1_020_000_000)
        );
        // Woke 45 ms late for slot 1: slots 2 and 3 passed and are skipped.
        control.advance_schedule(1_065_000_000);
        assert_eq!(
            (control.next_index, control.next_deadline_ns),
            (4, 1_080_000_000)
        );
        assert_eq!(links.stats.overruns.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_stalled_loop_judges_action_age_by_the_slot_it_wakes_in() {
        let links = links();
        let now = clock::monotonic_ns();
        links.frames.publish((), now);
        let mut control = ControlLoop::new(settings(), links.clone());
        // Slots 0 to 9 ran and slot 9 fired an inference; then the thread stalled and wakes
        // 3.5 periods after slot 10's deadline, in slot 13.
        control.started = true;
        control.next_index = 10;
        control.next_deadline_ns = now - 7 * PERIOD / 2;
        control.start_ns = control.next_deadline_ns - 10 * PERIOD;
        links.results.post(result(9, 0.01));
        assert_eq!(control.run(Some(1)), LoopEnd::BudgetSpent);
        let records = published(&links);
        // Latched at slot 9 and published in slot 13 or later: at least four periods old,
        // over the two-period limit. It must not be acted on.
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].state, ControlState::Hold, "{records:?}");
        assert_eq!(links.stats.stale.load(Ordering::Relaxed), 1);
        assert!(links.stats.overruns.load(Ordering::Relaxed) >= 3);
    }

    #[test]
    fn a_stop_request_ends_a_long_period_at_once_with_a_final_stop() {
        let links = links();
        links.frames.publish((), clock::monotonic_ns());
        let settings = LoopSettings {
            period_ns: 60 * 1_000_000_000,
            ..settings()
        };
        let mut control = ControlLoop::new(settings, links.clone());
        let (inputs, stats) = (links.inputs.clone(), links.stats.clone());
        // The request comes once the first tick is done, while the loop waits for the next
        // slot, a period away.
        let requester = std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while stats.ticks.load(Ordering::Acquire) == 0 {
                assert!(std::time::Instant::now() < deadline, "no first tick");
                std::thread::yield_now();
            }
            inputs.request_shutdown();
            std::time::Instant::now()
        });
        assert_eq!(control.run(None), LoopEnd::Stopped);
        let stopped = std::time::Instant::now();
        let requested = requester.join().unwrap();
        // The stop ends the wait within the loop's stop poll (100 ms), not a period later;
        // the rest of the bound is slack for a loaded machine.
        let waited = stopped - requested;
        assert!(
            waited < std::time::Duration::from_millis(STOP_POLL_NS / 1_000_000 + 2_000),
            "{waited:?}"
        );
        let records = published(&links);
        assert_eq!(records.len(), 2, "{records:?}");
        assert_eq!(records.last().unwrap().state, ControlState::Stop);
    }

    #[test]
    fn run_stops_at_the_tick_limit_with_a_final_stop() {
        let links = links();
        links.frames.publish((), clock::monotonic_ns());
        let settings = LoopSettings {
            period_ns: 1_000_000,
            ..settings()
        };
        let mut control = ControlLoop::new(settings, links.clone())
            .with_tick_limit(Some(5))
            .with_trace(16);
        assert_eq!(control.run(None), LoopEnd::Stopped);
        let records = published(&links);
        let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());
        assert_eq!(records.last().unwrap().state, ControlState::Stop);
        assert_eq!(control.trace().len(), records.len());
        for pair in control.trace().windows(2) {
            assert_eq!((pair[1].scheduled_ns - pair[0].scheduled_ns) % 1_000_000, 0);
        }
    }
}
