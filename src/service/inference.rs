//! The inference thread: waits for the control tick's trigger, latches the newest frame,
//! runs the policy with the current instruction and posts an [`ActionResult`]. It may
//! allocate and take its time; it never blocks the control thread.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::queue::ArrayQueue;

use crate::capture::pair::WristFrames;
use crate::capture::thread::LatestFrame;
use crate::capture::Frame;
use crate::config::ACTION_DIM;
use crate::control::chunk::{ActionChunk, MAX_CHUNK};
use crate::control::handoff::{ActionResult, ControlInputs, InferenceTrigger, ResultSlot};
use crate::control::heartbeat::{Supervision, Worker};
use crate::control::stats::LatencyHistogram;
use crate::policy::{Policy, PolicyError, Prediction};
use crate::preprocess::RgbImage;
use crate::transport::zenoh_io::{
    text_prefix, InstructionRefusal, InstructionSink, INSTRUCTION_LOG_CHARS,
};

/// The instruction in force, as the status reports it: a short prefix, its length and a
/// hash, computed once when it is applied (the status goes out every second).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstructionSummary {
    /// The first [`STATUS_INSTRUCTION_CHARS`] characters.
    pub prefix: String,
    pub bytes: usize,
    /// First 16 hex digits of the SHA-256 of the text.
    pub sha256: String,
}

/// Characters of the instruction in force that the status shows.
pub const STATUS_INSTRUCTION_CHARS: usize = 40;

impl InstructionSummary {
    pub fn of(text: &str) -> Self {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(text.as_bytes());
        let sha256 = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        Self {
            prefix: text_prefix(text.as_bytes(), STATUS_INSTRUCTION_CHARS),
            bytes: text.len(),
            sha256,
        }
    }
}
use crate::recording::{PredictionInputs, Recorder};

/// The instruction the policy runs with: a newest-wins slot filled by the Zenoh callback,
/// taken by the inference thread before a prediction, at most once per `min_interval`.
/// Refused instructions (too large, not UTF-8, blank, a prompt too long for the model) leave
/// the one in force and are counted.
pub struct InstructionCell {
    /// The configured instruction, in force until another is applied.
    initial: String,
    pending: ArrayQueue<String>,
    current: Mutex<InstructionSummary>,
    max_bytes: usize,
    min_interval: Duration,
    updates: AtomicU64,
    applied: AtomicU64,
    rejected: AtomicU64,
    /// Monotonic ns of the latest rejection logged at `warn` (a flood logs one a second).
    last_rejection_log_ns: AtomicU64,
}

impl InstructionCell {
    /// A cell with the default limits of `[instruction]`.
    pub fn new(initial: &str) -> Self {
        Self::with_limits(initial, &crate::config::InstructionConfig::default())
    }

    pub fn with_limits(initial: &str, limits: &crate::config::InstructionConfig) -> Self {
        Self {
            initial: initial.to_string(),
            pending: ArrayQueue::new(1),
            current: Mutex::new(InstructionSummary::of(initial)),
            max_bytes: limits.max_bytes,
            min_interval: Duration::from_millis(limits.min_interval_ms),
            updates: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            last_rejection_log_ns: AtomicU64::new(0),
        }
    }

    /// The configured instruction the service starts with.
    pub fn initial(&self) -> &str {
        &self.initial
    }

    fn take_pending(&self) -> Option<String> {
        self.pending.pop()
    }

    /// The newest pending instruction if `last_applied` is at least `min_interval` ago (or
    /// none was applied yet); otherwise it stays pending, to be replaced by a newer one or
    /// taken later.
    fn take_due(&self, last_applied: Option<Instant>, now: Instant) -> Option<String> {
        match last_applied {
            Some(at) if now.duration_since(at) < self.min_interval => None,
            _ => self.take_pending(),
        }
    }

    /// The instruction in force (for status).
    pub fn summary(&self) -> InstructionSummary {
        match self.current.lock() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set_current(&self, text: &str) {
        let summary = InstructionSummary::of(text);
        log::info!(
            "instruction applied: {:?} ({} bytes, sha256 {})",
            text_prefix(text.as_bytes(), INSTRUCTION_LOG_CHARS),
            summary.bytes,
            summary.sha256
        );
        match self.current.lock() {
            Ok(mut current) => *current = summary,
            Err(poisoned) => *poisoned.into_inner() = summary,
        }
        self.applied.fetch_add(1, Ordering::Relaxed);
    }

    /// Instructions received and handed on (not refused at the edge).
    pub fn updates(&self) -> u64 {
        self.updates.load(Ordering::Relaxed)
    }

    /// Instructions that became the one in force.
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Relaxed)
    }

    /// Instructions refused, at the edge or by the policy.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }
}

impl InstructionSink for InstructionCell {
    fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    fn submit(&self, instruction: String) {
        let _ = self.pending.force_push(instruction);
        self.updates.fetch_add(1, Ordering::Relaxed);
    }

    fn reject(&self, refusal: InstructionRefusal, prefix: &str) {
        let count = self.rejected.fetch_add(1, Ordering::Relaxed) + 1;
        let now = crate::control::clock::monotonic_ns().max(1);
        let last = self.last_rejection_log_ns.load(Ordering::Relaxed);
        let quiet = last != 0 && now.saturating_sub(last) < 1_000_000_000;
        if quiet {
            log::debug!("instruction refused ({refusal}): {prefix:?}");
        } else {
            self.last_rejection_log_ns.store(now, Ordering::Relaxed);
            log::warn!(
                "instruction refused ({refusal}), the previous one stays in force \
                 ({count} refused so far): {prefix:?}"
            );
        }
    }
}

/// Stage names in [`InferenceStats::stages`] order.
pub const STAGE_NAMES: [&str; 6] = [
    "preprocess",
    "vision",
    "projector",
    "prefill",
    "decode",
    "total",
];

#[derive(Default)]
pub struct InferenceStats {
    pub predictions: AtomicU64,
    pub failures: AtomicU64,
    /// Triggers that found no frame at all yet.
    pub no_frame: AtomicU64,
    /// Triggers that found no frame newer than the last one predicted on (camera stalled,
    /// gone, or slower than the control rate): nothing is posted, the tick counts a miss.
    pub no_new_frame: AtomicU64,
    /// With a wrist camera: triggers whose frame found no wrist frame near enough in capture
    /// time (`[control] frame_pair_tolerance_ms`); nothing is posted, the tick counts a miss.
    pub unpaired: AtomicU64,
    /// The capture-time distance of the newest pair, in µs.
    pub pair_skew_us: AtomicU64,
    /// Per-stage policy latency, in [`STAGE_NAMES`] order.
    pub stages: [LatencyHistogram; 6],
    pub last_error: Mutex<Option<String>>,
}

impl InferenceStats {
    fn record(&self, prediction: &Prediction) {
        let t = &prediction.timings;
        for (histogram, ms) in self.stages.iter().zip([
            t.preprocess_ms,
            t.vision_ms,
            t.projector_ms,
            t.prefill_ms,
            t.decode_ms,
            t.total_ms,
        ]) {
            histogram.record_ms(ms);
        }
    }

    fn fail(&self, message: String) {
        let first = self.failures.fetch_add(1, Ordering::Relaxed) == 0;
        if first {
            log::error!("policy failed: {message}");
        } else {
            log::debug!("policy failed: {message}");
        }
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(message);
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    #[error("camera: no frame within {waited_ms} ms of start")]
    NoFirstFrame { waited_ms: u64 },
    #[error("policy warm-up: {0}")]
    WarmUp(#[source] PolicyError),
    #[error("policy output: {message}")]
    Output { message: String },
    #[error("cannot start the inference thread: {message}")]
    Thread { message: String },
}

impl InferenceError {
    pub fn is_bad_input(&self) -> bool {
        match self {
            InferenceError::WarmUp(e) => e.is_bad_input(),
            InferenceError::Output { .. } => true,
            InferenceError::NoFirstFrame { .. } | InferenceError::Thread { .. } => false,
        }
    }
}

/// Turns a policy output, made under instruction number `instruction`, into the fixed-size
/// result the control thread reads.
pub fn to_action_result(
    prediction: &Prediction,
    trigger_tick: u64,
    capture_time_ns: u64,
    instruction: u64,
) -> Result<ActionResult, InferenceError> {
    if prediction.action.len() != ACTION_DIM {
        return Err(InferenceError::Output {
            message: format!(
                "{} action values; the command record carries {ACTION_DIM}",
                prediction.action.len()
            ),
        });
    }
    // Compared bit for bit: a NaN action must reach the safety filter (and be counted as
    // rejected there), not fail here as a mismatch with itself.
    let same_bits = |a: &[f64], b: &[f64]| {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
    };
    if !prediction
        .actions
        .first()
        .is_some_and(|first| same_bits(first, &prediction.action))
    {
        return Err(InferenceError::Output {
            message: "the chunk's first action is not the prediction's action".into(),
        });
    }
    if prediction.actions.len() > MAX_CHUNK {
        return Err(InferenceError::Output {
            message: format!(
                "a chunk of {} actions; at most {MAX_CHUNK} are executed",
                prediction.actions.len()
            ),
        });
    }
    let mut rows = [[0.0f32; ACTION_DIM]; MAX_CHUNK];
    for (row, action) in rows.iter_mut().zip(&prediction.actions) {
        if action.len() != ACTION_DIM {
            return Err(InferenceError::Output {
                message: format!(
                    "a chunk step of {} action values; the command record carries {ACTION_DIM}",
                    action.len()
                ),
            });
        }
        for (out, value) in row.iter_mut().zip(action) {
            *out = *value as f32;
        }
    }
    let chunk = ActionChunk::from_rows(&rows[..prediction.actions.len()]).ok_or_else(|| {
        InferenceError::Output {
            message: "an empty chunk".into(),
        }
    })?;
    if prediction.tokens.len() > ACTION_DIM {
        return Err(InferenceError::Output {
            message: format!(
                "{} action tokens, at most {ACTION_DIM} expected",
                prediction.tokens.len()
            ),
        });
    }
    let mut tokens = [0u32; ACTION_DIM];
    tokens[..prediction.tokens.len()].copy_from_slice(&prediction.tokens);
    Ok(ActionResult {
        trigger_tick,
        chunk,
        tokens,
        instruction,
        capture_time_ns,
        timings: prediction.timings,
    })
}

/// Everything the inference thread shares with the rest of the service.
#[derive(Clone)]
pub struct InferenceLinks {
    pub frames: Arc<LatestFrame>,
    pub trigger: Arc<InferenceTrigger>,
    pub results: Arc<ResultSlot>,
    pub instructions: Arc<InstructionCell>,
    pub stats: Arc<InferenceStats>,
    /// The control loop's inputs: an applied instruction bumps their instruction number, so
    /// the loop drops the chunks made under the previous one.
    pub inputs: Arc<ControlInputs>,
    /// The robot's state, for a policy that takes it.
    pub proprio: Option<Arc<super::proprio::ProprioCell>>,
    /// The second camera, for a policy that takes two images.
    pub wrist: Option<WristLink>,
    /// Heartbeats: the loop checks in at least every 50 ms and a prediction is a busy
    /// section (judged by its own, longer limit).
    pub supervision: Option<Arc<Supervision>>,
}

/// The wrist camera and how its frames are paired with the primary camera's
/// (`crate::capture::pair`).
#[derive(Clone)]
pub struct WristLink {
    pub frames: Arc<LatestFrame>,
    /// `[control] frame_pair_tolerance_ms`.
    pub pair_tolerance_ns: u64,
    /// How long a pairing may wait for a wrist frame still to come: the tolerance plus one
    /// wrist frame period.
    pub pair_wait: Duration,
}

pub struct InferenceThread {
    stop: Arc<AtomicBool>,
    trigger: Arc<InferenceTrigger>,
    handle: Option<JoinHandle<()>>,
}

impl InferenceThread {
    /// Starts the thread, waits for the first frame (at most `first_frame_timeout`) and runs
    /// one warm-up prediction on it, so that a broken model fails here, not at the first tick.
    pub fn start(
        policy: Box<dyn Policy>,
        links: InferenceLinks,
        first_frame_timeout: Duration,
    ) -> Result<Self, InferenceError> {
        Self::start_recorded(policy, links, first_frame_timeout, None)
    }

    /// [`InferenceThread::start`], handing every prediction and its frame to `recorder`.
    pub fn start_recorded(
        mut policy: Box<dyn Policy>,
        links: InferenceLinks,
        first_frame_timeout: Duration,
        recorder: Option<Arc<Recorder>>,
    ) -> Result<Self, InferenceError> {
        if policy.action_dim() != ACTION_DIM {
            return Err(InferenceError::Output {
                message: format!(
                    "the policy has {} action dimensions; the command record carries {ACTION_DIM}",
                    policy.action_dim()
                ),
            });
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = crossbeam::channel::bounded(1);
        let stop_flag = Arc::clone(&stop);
        let trigger = Arc::clone(&links.trigger);
        let handle = std::thread::Builder::new()
            .name("vla-inference".into())
            .spawn(move || {
                links.trigger.register_worker();
                let mut held = None;
                let warm_up = warm_up(policy.as_mut(), &links, &mut held, first_frame_timeout);
                let ok = warm_up.is_ok();
                let _ = ready_tx.send(warm_up);
                if ok {
                    let work = || {
                        worker_loop(
                            policy.as_mut(),
                            &links,
                            &stop_flag,
                            held,
                            recorder.as_deref(),
                        )
                    };
                    match links.supervision.clone() {
                        Some(supervision) => {
                            let _ = supervision.guard(Worker::Inference, work);
                        }
                        None => work(),
                    }
                }
            })
            .map_err(|e| InferenceError::Thread {
                message: e.to_string(),
            })?;
        let mut thread = Self {
            stop,
            trigger,
            handle: Some(handle),
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(thread),
            Ok(Err(e)) => {
                thread.stop();
                Err(e)
            }
            Err(_) => {
                thread.stop();
                Err(InferenceError::Thread {
                    message: "the inference thread ended during warm-up".into(),
                })
            }
        }
    }

    /// Leaves the thread behind without waiting for it (it is stalled); it ends with the
    /// process.
    pub fn abandon(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.handle = None;
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.trigger.wake();
        if let Some(handle) = self.handle.take() {
            if handle.join().is_err() {
                log::error!("inference thread panicked");
            }
        }
    }
}

impl Drop for InferenceThread {
    fn drop(&mut self) {
        self.stop();
    }
}

fn warm_up(
    policy: &mut dyn Policy,
    links: &InferenceLinks,
    held: &mut Option<Frame>,
    first_frame_timeout: Duration,
) -> Result<(), InferenceError> {
    let deadline = Instant::now() + first_frame_timeout;
    let mut wrist = links
        .wrist
        .as_ref()
        .map(|link| WristFrames::new(Arc::clone(&link.frames)));
    let frame = loop {
        if let Some(wrist) = wrist.as_mut() {
            wrist.refresh();
        }
        let wrist_ready = wrist.as_ref().is_none_or(|w| w.newest().is_some());
        if wrist_ready {
            if let Some(frame) = links.frames.take_newest() {
                break frame;
            }
        }
        let failed = links.frames.has_failed()
            || links.wrist.as_ref().is_some_and(|w| w.frames.has_failed());
        if Instant::now() >= deadline || failed {
            return Err(InferenceError::NoFirstFrame {
                waited_ms: first_frame_timeout.as_millis() as u64,
            });
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let instruction = links.instructions.initial();
    // The robot's state may not be there yet: the warm-up, never published, runs on zeros.
    let state = links.proprio.as_ref().map(|cell| vec![0.0; cell.dim()]);
    // Never published either: the newest wrist frame, however far apart.
    let wrist_image = wrist.as_ref().and_then(|w| w.newest()).map(|f| &f.image);
    let prediction = policy
        .predict_with(
            CameraImages::new(&frame.image, wrist_image).as_slice(),
            instruction,
            state.as_deref(),
        )
        .map_err(InferenceError::WarmUp)?;
    to_action_result(&prediction, 0, frame.capture_time_ns, 0)?;
    *held = Some(frame);
    Ok(())
}

/// The images of one prediction in the checkpoint's order: the primary camera's, then the
/// wrist camera's.
struct CameraImages<'a> {
    images: [&'a RgbImage; 2],
    count: usize,
}

impl<'a> CameraImages<'a> {
    fn new(primary: &'a RgbImage, wrist: Option<&'a RgbImage>) -> Self {
        Self {
            images: [primary, wrist.unwrap_or(primary)],
            count: 1 + usize::from(wrist.is_some()),
        }
    }

    fn as_slice(&self) -> &[&'a RgbImage] {
        &self.images[..self.count]
    }
}

fn worker_loop(
    policy: &mut dyn Policy,
    links: &InferenceLinks,
    stop: &AtomicBool,
    mut held: Option<Frame>,
    recorder: Option<&Recorder>,
) {
    let mut instruction = links.instructions.initial().to_string();
    let mut instruction_number = links.inputs.instruction();
    let mut last_applied: Option<Instant> = None;
    let mut handled: Option<u64> = None;
    // Each frame is predicted on once. Predicting again on an image already acted on would
    // publish its delta a second time for a scene that was not observed again, and would
    // keep ACT going through a camera stall or unplug until `max_frame_age` forces STOP;
    // posting nothing instead makes the tick a miss, so the arm HOLDs at once. The warm-up
    // frame's prediction was not published, so it may serve the first trigger.
    let mut held_predicted = false;
    let mut wrist = links
        .wrist
        .as_ref()
        .map(|link| (link, WristFrames::new(Arc::clone(&link.frames))));
    let check_in = || {
        if let Some(supervision) = &links.supervision {
            supervision.check_in(Worker::Inference);
        }
    };
    while !stop.load(Ordering::Acquire) {
        check_in();
        // Applied whether or not a prediction is asked for: while a chunk runs, no trigger
        // comes, and a new instruction must drop its rest at once, not when it runs out.
        let now = Instant::now();
        if let Some(next) = links.instructions.take_due(last_applied, now) {
            // Checked before it replaces the one in force: an instruction the policy would
            // refuse must not leave every later prediction failing.
            match policy.check_instruction(&next) {
                Ok(()) => {
                    instruction = next;
                    links.instructions.set_current(&instruction);
                    instruction_number = links.inputs.instruction_applied();
                    last_applied = Some(now);
                }
                Err(e) => links.instructions.reject(
                    InstructionRefusal::Policy(e.to_string()),
                    &text_prefix(next.as_bytes(), INSTRUCTION_LOG_CHARS),
                ),
            }
        }
        let requested = links.trigger.requested();
        let Some(tick) = requested.filter(|&t| Some(t) != handled) else {
            std::thread::park_timeout(Duration::from_millis(50));
            continue;
        };
        handled = Some(tick);
        if let Some(newest) = links.frames.take_newest() {
            if let Some(previous) = held.replace(newest) {
                links.frames.recycle(previous);
            }
            held_predicted = false;
        }
        let Some(frame) = held.as_ref() else {
            links.stats.no_frame.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        if held_predicted {
            links.stats.no_new_frame.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let state = match &links.proprio {
            Some(cell) => match cell.fresh() {
                Some(sample) => Some(sample.state),
                // No prediction without a fresh state: the step is a miss, and the loop
                // STOPs on the stale state itself.
                None => continue,
            },
            None => None,
        };
        let wrist_frame = match wrist.as_mut() {
            Some((link, frames)) => match frames.pair_with(
                frame.capture_time_ns,
                link.pair_tolerance_ns,
                link.pair_wait,
                check_in,
            ) {
                Ok((wrist_frame, skew_ns)) => {
                    links
                        .stats
                        .pair_skew_us
                        .store(skew_ns / 1_000, Ordering::Relaxed);
                    Some(wrist_frame)
                }
                // The frame stays unpredicted: the next trigger tries again, with newer
                // frames of either camera.
                Err(_) => {
                    links.stats.unpaired.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            },
            None => None,
        };
        let images = CameraImages::new(&frame.image, wrist_frame.map(|f| &f.image));
        held_predicted = true;
        let predicted = match &links.supervision {
            Some(supervision) => supervision.busy(Worker::Inference, || {
                policy.predict_with(images.as_slice(), &instruction, state.as_deref())
            }),
            None => policy.predict_with(images.as_slice(), &instruction, state.as_deref()),
        };
        match predicted {
            Ok(prediction) => {
                match to_action_result(&prediction, tick, frame.capture_time_ns, instruction_number)
                {
                    Ok(result) => {
                        links.stats.predictions.fetch_add(1, Ordering::Relaxed);
                        links.stats.record(&prediction);
                        links.results.post(result);
                        if result.chunk.len() > 1 {
                            // A chunk covers the coming steps: the requests made while it was
                            // computed are answered; the control thread asks again when it runs
                            // low. (A single action is followed at once by the next prediction.)
                            handled = links.trigger.requested().or(handled);
                        }
                        if let Some(recorder) = recorder {
                            recorder.prediction(
                                PredictionInputs {
                                    frame,
                                    wrist: wrist_frame,
                                    instruction: &instruction,
                                    proprio: state.as_deref(),
                                    trigger_tick: tick,
                                },
                                &prediction,
                            );
                        }
                    }
                    Err(e) => links.stats.fail(e.to_string()),
                }
            }
            Err(e) => links.stats.fail(e.to_string()),
        }
    }
    if let Some(frame) = held {
        links.frames.recycle(frame);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::StageTimings;

    fn prediction(action: Vec<f64>, tokens: Vec<u32>) -> Prediction {
        Prediction {
            tokens,
            normalized: vec![0.0; action.len()],
            actions: vec![action.clone()],
            action,
            timings: StageTimings::default(),
        }
    }

    #[test]
    fn converts_a_seven_dimensional_prediction() {
        let p = prediction(vec![0.5, -0.25, 0.0, 1.0, 2.0, 3.0, 1.0], vec![31_000; 7]);
        let r = to_action_result(&p, 9, 77, 3).unwrap();
        assert_eq!(r.trigger_tick, 9);
        assert_eq!(r.capture_time_ns, 77);
        assert_eq!(r.instruction, 3);
        assert_eq!(r.chunk.steps(), &[[0.5, -0.25, 0.0, 1.0, 2.0, 3.0, 1.0]]);
        assert_eq!(r.tokens, [31_000; 7]);
    }

    #[test]
    fn refuses_other_action_sizes() {
        let err = to_action_result(&prediction(vec![0.0; 6], vec![1; 6]), 0, 0, 0).unwrap_err();
        assert!(err.to_string().contains("6 action values"), "{err}");
    }

    /// Counts its predictions; the action's dx is the image's first byte.
    struct CountingPolicy(Arc<AtomicU64>);

    impl Policy for CountingPolicy {
        fn predict(
            &mut self,
            image: &crate::preprocess::RgbImage,
            _instruction: &str,
        ) -> Result<Prediction, PolicyError> {
            self.0.fetch_add(1, Ordering::Relaxed);
            let mut action = vec![0.0; ACTION_DIM];
            action[0] = f64::from(image.data[0]);
            Ok(prediction(action, vec![1; ACTION_DIM]))
        }
        fn action_dim(&self) -> usize {
            ACTION_DIM
        }
        fn backend_name(&self) -> &'static str {
            "counting"
        }
        fn model_name(&self) -> &str {
            "counting"
        }
    }

    fn frame(value: u8, capture_time_ns: u64) -> Frame {
        Frame {
            image: crate::preprocess::RgbImage {
                width: 1,
                height: 1,
                data: vec![value; 3],
            },
            capture_time_ns,
            sequence: u64::from(value),
        }
    }

    /// Fires `tick` and waits (bounded) for the result it produces.
    fn fire_expecting_result(links: &InferenceLinks, tick: u64) -> ActionResult {
        links.trigger.fire(tick);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(result) = links.results.take() {
                return result;
            }
            assert!(Instant::now() < deadline, "no result for tick {tick}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Fires `tick`, waits (bounded) until the worker has seen it had no new frame, and
    /// checks that nothing was posted.
    fn fire_expecting_nothing(links: &InferenceLinks, tick: u64) {
        let before = links.stats.no_new_frame.load(Ordering::Relaxed);
        links.trigger.fire(tick);
        let deadline = Instant::now() + Duration::from_secs(5);
        while links.stats.no_new_frame.load(Ordering::Relaxed) == before {
            assert!(Instant::now() < deadline, "tick {tick} not handled");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(
            links.results.take().is_none(),
            "tick {tick} posted a result"
        );
    }

    #[test]
    fn each_frame_is_predicted_on_once() {
        let links = InferenceLinks {
            frames: Arc::new(LatestFrame::new()),
            trigger: Arc::new(InferenceTrigger::default()),
            results: Arc::new(ResultSlot::default()),
            instructions: Arc::new(InstructionCell::new("pick")),
            stats: Arc::new(InferenceStats::default()),
            inputs: Arc::new(ControlInputs::default()),
            proprio: None,
            wrist: None,
            supervision: None,
        };
        let calls = Arc::new(AtomicU64::new(0));
        links.frames.publish(frame(7, 700), 1);
        let mut thread = InferenceThread::start(
            Box::new(CountingPolicy(Arc::clone(&calls))),
            links.clone(),
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(calls.load(Ordering::Relaxed), 1, "warm-up");

        // The warm-up frame's prediction was not published: the first trigger uses it.
        let first = fire_expecting_result(&links, 0);
        assert_eq!((first.chunk.first()[0], first.capture_time_ns), (7.0, 700));
        // No new frame: nothing is posted, and the policy is not run again.
        fire_expecting_nothing(&links, 1);
        fire_expecting_nothing(&links, 2);
        assert_eq!(links.stats.no_new_frame.load(Ordering::Relaxed), 2);
        assert_eq!(calls.load(Ordering::Relaxed), 2);
        // A new frame: predicted on at the next trigger.
        links.frames.publish(frame(9, 900), 2);
        let next = fire_expecting_result(&links, 3);
        assert_eq!(
            (
                next.chunk.first()[0],
                next.capture_time_ns,
                next.trigger_tick
            ),
            (9.0, 900, 3)
        );
        thread.stop();
    }

    #[test]
    fn newest_instruction_wins() {
        let cell = InstructionCell::new("first");
        cell.submit("second".into());
        cell.submit("third".into());
        assert_eq!(cell.take_pending().as_deref(), Some("third"));
        assert_eq!(cell.take_pending(), None);
        assert_eq!(cell.updates(), 2);
        assert_eq!(cell.summary().prefix, "first");
    }

    #[test]
    fn rate_limit_applies_the_newest_of_a_burst_after_the_interval() {
        let limits = crate::config::InstructionConfig {
            min_interval_ms: 200,
            ..Default::default()
        };
        let cell = InstructionCell::with_limits("first", &limits);
        let t0 = Instant::now();
        assert_eq!(cell.take_due(None, t0), None, "nothing pending");
        cell.submit("a".into());
        assert_eq!(cell.take_due(None, t0).as_deref(), Some("a"));
        for text in ["b", "c", "d"] {
            cell.submit(text.into());
            // Within the interval of the last change: nothing is taken, the newest waits.
            assert_eq!(
                cell.take_due(Some(t0), t0 + Duration::from_millis(150)),
                None
            );
        }
        let due = cell.take_due(Some(t0), t0 + Duration::from_millis(200));
        assert_eq!(due.as_deref(), Some("d"));
        assert_eq!(cell.take_due(Some(t0), t0 + Duration::from_secs(1)), None);
        assert_eq!(cell.updates(), 4);
    }

    #[test]
    fn status_summary_is_short_and_char_safe() {
        let long = "\u{e9}".repeat(5_000);
        let summary = InstructionSummary::of(&long);
        assert_eq!(summary.prefix, "\u{e9}".repeat(STATUS_INSTRUCTION_CHARS));
        assert_eq!(summary.bytes, 10_000);
        assert_eq!(summary.sha256.len(), 16);
        assert_ne!(summary.sha256, InstructionSummary::of("other").sha256);
    }

    /// Records the instruction of every prediction; refuses instructions over 20 bytes as
    /// the CPU policy refuses prompts longer than its KV cache.
    struct PickyPolicy(Arc<Mutex<Vec<String>>>);

    impl Policy for PickyPolicy {
        fn predict(
            &mut self,
            _image: &crate::preprocess::RgbImage,
            instruction: &str,
        ) -> Result<Prediction, PolicyError> {
            self.check_instruction(instruction)?;
            self.0.lock().unwrap().push(instruction.to_string());
            Ok(prediction(vec![0.0; ACTION_DIM], vec![1; ACTION_DIM]))
        }
        fn check_instruction(&self, instruction: &str) -> Result<(), PolicyError> {
            if instruction.len() > 20 {
                return Err(PolicyError::Model(
                    crate::model::ModelError::PromptTooLong {
                        what: format!("{} bytes", instruction.len()),
                        limit: 5,
                    },
                ));
            }
            Ok(())
        }
        fn action_dim(&self) -> usize {
            ACTION_DIM
        }
        fn backend_name(&self) -> &'static str {
            "picky"
        }
        fn model_name(&self) -> &str {
            "picky"
        }
    }

    #[test]
    fn refused_instruction_leaves_the_previous_in_force_and_is_counted() {
        let limits = crate::config::InstructionConfig {
            min_interval_ms: 0,
            ..Default::default()
        };
        let links = InferenceLinks {
            frames: Arc::new(LatestFrame::new()),
            trigger: Arc::new(InferenceTrigger::default()),
            results: Arc::new(ResultSlot::default()),
            instructions: Arc::new(InstructionCell::with_limits("pick", &limits)),
            stats: Arc::new(InferenceStats::default()),
            inputs: Arc::new(ControlInputs::default()),
            proprio: None,
            wrist: None,
            supervision: None,
        };
        let seen = Arc::new(Mutex::new(Vec::new()));
        links.frames.publish(frame(1, 100), 1);
        let mut thread = InferenceThread::start(
            Box::new(PickyPolicy(Arc::clone(&seen))),
            links.clone(),
            Duration::from_secs(5),
        )
        .unwrap();
        links.instructions.submit("place".into());
        fire_expecting_result(&links, 0);
        links
            .instructions
            .submit("a task far longer than the model takes".into());
        links.frames.publish(frame(2, 200), 2);
        fire_expecting_result(&links, 1);
        links.frames.publish(frame(3, 300), 3);
        fire_expecting_result(&links, 2);
        thread.stop();
        assert_eq!(*seen.lock().unwrap(), ["pick", "place", "place", "place"]);
        assert_eq!(links.instructions.rejected(), 1);
        assert_eq!(links.instructions.applied(), 1);
        assert_eq!(links.instructions.summary().prefix, "place");
        assert_eq!(links.stats.failures.load(Ordering::Relaxed), 0);
    }
}
