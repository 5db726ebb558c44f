//! The status reporter: once a second it publishes the status JSON on `vla/<robot>/status`
//! and, on a terminal, redraws a one-line summary; state changes are logged as they are seen.
//! It only reads the counters the real-time threads keep.

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::json;
use zenoh::{Session, Wait};

use super::inference::{InferenceStats, InstructionCell, STAGE_NAMES};
use crate::capture::thread::LatestFrame;
use crate::control::clock;
use crate::control::handoff::{CommandOutbox, ControlInputs};
use crate::control::heartbeat::{Supervision, Worker};
use crate::control::stats::{ControlStats, LatencyHistogram};
use crate::control::supervisor::StopCause;
use crate::control::ControlState;
use crate::recording::Recorder;
use crate::transport::security::TransportSecurity;
use crate::transport::zenoh_error_text;
use crate::transport::zenoh_io::{PublishStats, TransportError};

/// Everything the status reflects.
#[derive(Clone)]
pub struct StatusSources {
    pub robot_id: String,
    pub rate_hz: f64,
    pub backend: String,
    pub model: String,
    pub camera: String,
    /// The wrist camera's description and frames, when there is one.
    pub wrist_camera: Option<(String, Arc<LatestFrame>)>,
    pub control: Arc<ControlStats>,
    pub inference: Arc<InferenceStats>,
    pub publish: Arc<PublishStats>,
    pub frames: Arc<LatestFrame>,
    pub outbox: Arc<CommandOutbox>,
    pub inputs: Arc<ControlInputs>,
    pub instructions: Arc<InstructionCell>,
    /// The robot's state, for a policy that takes it.
    pub proprio: Option<Arc<super::proprio::ProprioCell>>,
    pub supervision: Arc<Supervision>,
    /// What the Zenoh session's configuration says about authentication, fixed at start.
    pub transport: TransportSecurity,
    /// The session recording, if one is made.
    pub recorder: Option<Arc<Recorder>>,
    /// The ROS 2 node (`[ros2] enabled`): its counters join the status, which it also
    /// publishes as a `DiagnosticArray`.
    pub ros2: Option<Arc<crate::ros2::Ros2Node>>,
}

/// Latency percentiles cover the last one to two of these windows.
pub const LATENCY_WINDOW: Duration = Duration::from_secs(60);

fn percentiles(histogram: &LatencyHistogram) -> serde_json::Value {
    let round = |v: Option<f64>| v.map(|ms| (ms * 1e3).round() / 1e3);
    json!({
        "p50": round(histogram.quantile_ms(0.5)),
        "p99": round(histogram.quantile_ms(0.99)),
        "max": round((histogram.window_count() > 0).then(|| histogram.max_ms())),
        "count": histogram.count(),
    })
}

/// A camera's part of the status: its source, counters, and the age of its newest frame.
fn camera_json(source: &str, frames: &LatestFrame) -> serde_json::Value {
    let stats = frames.stats();
    let last_frame = frames.last_frame_monotonic_ns();
    let age_ms =
        (last_frame > 0).then(|| clock::monotonic_ns().saturating_sub(last_frame) as f64 / 1e6);
    json!({
        "source": source,
        "frames": stats.frames,
        "drops": stats.drops,
        "corrupt": stats.corrupt,
        "stalls": stats.stalls,
        "reopens": stats.reopens,
        "age_ms": age_ms.map(|ms| (ms * 10.0).round() / 10.0),
        "failed": frames.has_failed(),
    })
}

fn state_of(control: &ControlStats) -> ControlState {
    ControlState::from_wire(control.state.load(Ordering::Acquire) as u16)
        .unwrap_or(ControlState::Hold)
}

impl StatusSources {
    /// The status document (ARCHITECTURE.md §8): state, tick counts, misses, latency p50/p99 per
    /// stage, backend, model.
    pub fn to_json(&self, uptime: Duration, measured_rate_hz: f64) -> serde_json::Value {
        let c = &self.control;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let state = state_of(c);
        let mut latency = serde_json::Map::new();
        for (name, histogram) in STAGE_NAMES.iter().zip(&self.inference.stages) {
            latency.insert(format!("policy_{name}"), percentiles(histogram));
        }
        latency.insert("tick_jitter".into(), percentiles(&c.tick_jitter));
        latency.insert("publish".into(), percentiles(&self.publish.delay));
        latency.insert("action_age".into(), percentiles(&c.action_age));
        let instruction = self.instructions.summary();
        // The operator sees why the policy fails (a remote server's wrong checkpoint, say)
        // without the log, where only the first failure is at error level.
        let last_policy_error = self
            .inference
            .last_error
            .lock()
            .ok()
            .and_then(|e| e.clone());
        let stop_cause =
            (state == ControlState::Stop).then(|| StopCause::from_u64(load(&c.stop_cause)).name());
        let ros2 = self.ros2.as_ref().map(|node| node.stats().to_json());
        json!({
            "robot_id": self.robot_id,
            "state": state.name(),
            "stop_cause": stop_cause,
            "estop": self.inputs.estop_latched(),
            "armed": c.armed.load(Ordering::Acquire),
            "arm": {
                "refused": load(&c.arm_refused),
                "ignored": self.inputs.ignored_arm_payloads(),
            },
            "estop_persist_failures": self.inputs.estop_persist_failures(),
            "uptime_s": (uptime.as_secs_f64() * 10.0).round() / 10.0,
            "rate_hz": self.rate_hz,
            "measured_rate_hz": (measured_rate_hz * 10.0).round() / 10.0,
            "ticks": {
                "total": load(&c.ticks),
                "act": load(&c.act_ticks),
                "hold": load(&c.hold_ticks),
                "stop": load(&c.stop_ticks),
            },
            "misses": load(&c.misses),
            "consecutive_misses": load(&c.consecutive_misses),
            "overruns": load(&c.overruns),
            "rejected": load(&c.rejected),
            "clamped": load(&c.clamped),
            "limited": load(&c.limited),
            "stale": load(&c.stale),
            "chunk": {
                "step": load(&c.chunk_step),
                "dropped": load(&c.chunks_dropped),
            },
            "commands": {
                "published": load(&self.publish.published),
                "failed": load(&self.publish.failed),
                "dropped": self.outbox.dropped(),
                "stale": load(&self.publish.stale),
            },
            "fault": self.supervision.fault().map(|fault| fault.to_string()),
            "camera": camera_json(&self.camera, &self.frames),
            "wrist_camera": self
                .wrist_camera
                .as_ref()
                .map(|(source, frames)| camera_json(source, frames)),
            "policy": {
                "predictions": load(&self.inference.predictions),
                "failures": load(&self.inference.failures),
                "last_error": last_policy_error,
                "no_new_frame": load(&self.inference.no_new_frame),
                "unpaired": load(&self.inference.unpaired),
                "pair_skew_ms": self.wrist_camera.as_ref().map(|_| {
                    (load(&self.inference.pair_skew_us) as f64 / 100.0).round() / 10.0
                }),
                "instruction": instruction.prefix,
                "instruction_bytes": instruction.bytes,
                "instruction_sha256": instruction.sha256,
                "instruction_updates": self.instructions.updates(),
                "instructions_applied": self.instructions.applied(),
                "instructions_rejected": self.instructions.rejected(),
            },
            "proprio": self.proprio.as_ref().map(|cell| cell.status()),
            "latency_ms": latency,
            "latency_window_s": LATENCY_WINDOW.as_secs(),
            "backend": self.backend,
            "model": self.model,
            "transport": self.transport,
            "record": self.recorder.as_ref().map(|r| r.stats().to_json()),
            "ros2": ros2,
        })
    }

    /// Starts a new epoch in every latency histogram (see [`LATENCY_WINDOW`]).
    pub fn rotate_latency_windows(&self) {
        self.control.tick_jitter.rotate();
        self.control.action_age.rotate();
        for histogram in &self.inference.stages {
            histogram.rotate();
        }
        self.publish.delay.rotate();
        if let Some(node) = &self.ros2 {
            node.stats().rotate();
        }
    }

    fn terminal_line(&self, measured_rate_hz: f64) -> String {
        let c = &self.control;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let total = &self.inference.stages[STAGE_NAMES.len() - 1];
        let ms = |q| {
            total
                .quantile_ms(q)
                .map_or("-".to_string(), |v| format!("{v:.1}"))
        };
        let armed = if c.armed.load(Ordering::Acquire) {
            "armed"
        } else {
            "disarmed"
        };
        format!(
            "{:<4} {armed:<8} tick {:>7}  {:>5.1} Hz  misses {}  overruns {}  policy p50 {} ms p99 {} ms",
            state_of(c).name(),
            load(&c.ticks),
            measured_rate_hz,
            load(&c.misses),
            load(&c.overruns),
            ms(0.5),
            ms(0.99),
        )
    }
}

pub struct StatusThread {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl StatusThread {
    /// Declares `vla/<robot>/status` and starts reporting. `terminal` redraws a live line on
    /// stderr; otherwise a summary is logged every ten seconds.
    pub fn spawn(
        session: &Session,
        key: &str,
        sources: StatusSources,
        terminal: bool,
    ) -> Result<Self, TransportError> {
        let publisher = session
            .declare_publisher(key.to_string())
            .congestion_control(zenoh::qos::CongestionControl::Drop)
            .wait()
            .map_err(|e| TransportError::Declare {
                key: key.to_string(),
                message: zenoh_error_text(&*e),
            })?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("vla-status".into())
            .spawn(move || {
                let supervision = Arc::clone(&sources.supervision);
                let _ = supervision.guard(Worker::Status, || {
                    status_loop(&publisher, &sources, terminal, &stop_flag);
                });
                if terminal {
                    eprintln!();
                }
                let _ = publisher.undeclare().wait();
            })
            .map_err(|e| TransportError::Thread {
                thread: "status",
                message: e.to_string(),
            })?;
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }

    /// Leaves the thread behind without waiting for it (it is stalled); it ends with the
    /// process.
    pub fn abandon(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.handle = None;
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(handle) = self.handle.take() {
            handle.thread().unpark();
            if handle.join().is_err() {
                log::error!("status thread panicked");
            }
        }
    }
}

impl Drop for StatusThread {
    fn drop(&mut self) {
        self.stop();
    }
}

fn status_loop(
    publisher: &zenoh::pubsub::Publisher<'static>,
    sources: &StatusSources,
    terminal: bool,
    stop: &AtomicBool,
) {
    let start = Instant::now();
    let mut last_report = start;
    let mut last_ticks = 0u64;
    let mut last_summary = start;
    let mut last_rotation = start;
    let mut last_state: Option<ControlState> = None;
    let mut last_stop_cause = StopCause::None;
    let mut last_arm_refused = 0u64;
    let mut last_armed = false;
    while !stop.load(Ordering::Acquire) {
        sources.supervision.check_in(Worker::Status);
        std::thread::park_timeout(Duration::from_millis(100));
        let state = state_of(&sources.control);
        let armed = sources.control.armed.load(Ordering::Acquire);
        let refused = sources.control.arm_refused.load(Ordering::Relaxed);
        if refused > last_arm_refused {
            let cause = StopCause::from_u64(sources.control.stop_cause.load(Ordering::Relaxed));
            log::warn!("`arm` refused: STOP ({}) still holds", cause.name());
            last_arm_refused = refused;
        }
        if armed != last_armed {
            log::warn!("{}", if armed { "armed" } else { "disarmed" });
            last_armed = armed;
        }
        let ticks = sources.control.ticks.load(Ordering::Relaxed);
        let cause = StopCause::from_u64(sources.control.stop_cause.load(Ordering::Relaxed));
        if ticks > 0
            && (Some(state) != last_state
                || (state == ControlState::Stop && cause != last_stop_cause))
        {
            if terminal {
                eprint!("\r\x1b[2K");
            }
            match state {
                ControlState::Stop => log::warn!("state STOP ({})", cause.name()),
                other => log::info!("state {}", other.name()),
            }
            last_state = Some(state);
            last_stop_cause = cause;
        }
        let now = Instant::now();
        if now.duration_since(last_report) < Duration::from_secs(1) {
            continue;
        }
        if now.duration_since(last_rotation) >= LATENCY_WINDOW {
            sources.rotate_latency_windows();
            last_rotation = now;
        }
        let rate = (ticks - last_ticks) as f64 / now.duration_since(last_report).as_secs_f64();
        last_ticks = ticks;
        last_report = now;
        let document = sources.to_json(now.duration_since(start), rate);
        let text = document.to_string();
        if let Some(recorder) = &sources.recorder {
            recorder.status(clock::realtime_ns(), text.clone());
        }
        if let Err(e) = publisher.put(text).wait() {
            log::debug!("zenoh: publishing status: {}", zenoh_error_text(&*e));
        }
        if let Some(node) = &sources.ros2 {
            node.publish_diagnostics(&document);
        }
        if terminal {
            eprint!("\r\x1b[2K{}", sources.terminal_line(rate));
            let _ = std::io::stderr().flush();
        } else if now.duration_since(last_summary) >= Duration::from_secs(10) {
            log::info!("{}", sources.terminal_line(rate));
            last_summary = now;
        }
    }
}
