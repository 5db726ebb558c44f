//! Shared pieces of the service tests: a scriptable fake policy, a loopback config on a
//! reserved port, and a command subscriber with bounded waits.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, RecvTimeoutError};
use vla_rt::config::{RealtimeMode, ServiceConfig};
use vla_rt::control::command_record::CommandRecord;
use vla_rt::control::ControlState;
use vla_rt::policy::{Policy, PolicyError, Prediction, StageTimings};
use vla_rt::preprocess::RgbImage;
use zenoh::Wait;

/// Knobs a test turns while the service runs.
#[derive(Default)]
pub struct FakeControls {
    /// Time each prediction takes.
    pub delay_ms: AtomicU64,
    /// Produce NaN in dx.
    pub emit_nan: AtomicBool,
    /// Instructions the policy was called with, in order (repeats collapsed).
    pub instructions: Mutex<Vec<String>>,
    pub calls: AtomicU64,
}

/// A policy that echoes its inputs: dx grows with the image's mean brightness, dy encodes
/// the instruction length, dz is out of range on purpose (to be clamped), gripper is 1.
pub struct FakePolicy {
    pub controls: Arc<FakeControls>,
}

/// dy the fake policy reports for `instruction`.
pub fn dy_for(instruction: &str) -> f32 {
    0.001 * (instruction.chars().count() % 40) as f32
}

impl Policy for FakePolicy {
    fn predict(&mut self, image: &RgbImage, instruction: &str) -> Result<Prediction, PolicyError> {
        let delay = self.controls.delay_ms.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(delay));
        self.controls.calls.fetch_add(1, Ordering::Relaxed);
        {
            let mut seen = self.controls.instructions.lock().unwrap();
            if seen.last().map(String::as_str) != Some(instruction) {
                seen.push(instruction.to_string());
            }
        }
        let mean =
            image.data.iter().map(|&v| f64::from(v)).sum::<f64>() / image.data.len().max(1) as f64;
        let dx = if self.controls.emit_nan.load(Ordering::Relaxed) {
            f64::NAN
        } else {
            0.0001 * mean
        };
        let action = vec![dx, f64::from(dy_for(instruction)), 0.5, 0.0, 0.0, 0.0, 1.0];
        Ok(Prediction {
            tokens: vec![31_000; 7],
            normalized: vec![0.0; 7],
            actions: vec![action.clone()],
            action,
            timings: StageTimings {
                total_ms: delay as f64,
                ..StageTimings::default()
            },
        })
    }

    fn action_dim(&self) -> usize {
        7
    }

    fn backend_name(&self) -> &'static str {
        "fake"
    }

    fn model_name(&self) -> &str {
        "fake-echo"
    }
}

#[path = "../common/ports.rs"]
mod ports;
pub use ports::free_port;

/// A fresh, empty folder for one service's e-stop latch.
pub fn state_dir(name: &str) -> std::path::PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "vla-rt-test-state-{name}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A loopback service config: synthetic camera, `rate_hz`, no real-time, its own port and
/// e-stop state folder; armed at start like the bundled simulation (the bundled checkpoint's
/// 5 Hz action steps).
pub fn loopback_config(robot_id: &str, port: u16, rate_hz: f64) -> ServiceConfig {
    let mut config = ServiceConfig::builtin();
    config.robot_id = robot_id.to_string();
    config.control.state_dir = state_dir(robot_id);
    config.camera.width = 64;
    config.camera.height = 48;
    config.camera.fps = 100;
    config.control.rate_hz = rate_hz;
    config.control.realtime = RealtimeMode::Off;
    config.zenoh.listen = Some(vec![format!("tcp/127.0.0.1:{port}")]);
    config.validate("test config").unwrap();
    config
}

/// A Zenoh session connected to the service at `port`.
pub fn client_session(port: u16) -> zenoh::Session {
    let mut config = zenoh::Config::default();
    config.insert_json5("mode", "\"peer\"").unwrap();
    config
        .insert_json5("connect/endpoints", &format!("[\"tcp/127.0.0.1:{port}\"]"))
        .unwrap();
    config.insert_json5("listen/endpoints", "[]").unwrap();
    config
        .insert_json5("scouting/multicast/enabled", "false")
        .unwrap();
    zenoh::open(config).wait().unwrap()
}

/// A client session of a peer that publishes before the service listens on `port`: it
/// connects once the service does (within 30 s).
pub fn session_when_listening(port: u16) -> zenoh::Session {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut config = zenoh::Config::default();
        config.insert_json5("mode", "\"peer\"").unwrap();
        config
            .insert_json5("connect/endpoints", &format!("[\"tcp/127.0.0.1:{port}\"]"))
            .unwrap();
        config
            .insert_json5("connect/exit_on_failure", "true")
            .unwrap();
        config.insert_json5("listen/endpoints", "[]").unwrap();
        config
            .insert_json5("scouting/multicast/enabled", "false")
            .unwrap();
        match zenoh::open(config).wait() {
            Ok(session) => return session,
            Err(e) if Instant::now() > deadline => panic!("nothing listens on {port}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Decoded commands as they arrive on `vla/<robot>/cmd`.
pub struct CommandStream {
    pub receiver: Receiver<Result<CommandRecord, String>>,
    _subscriber: zenoh::pubsub::Subscriber<()>,
}

impl CommandStream {
    pub fn new(session: &zenoh::Session, robot_id: &str) -> Self {
        let (sender, receiver) = crossbeam::channel::unbounded();
        let subscriber = session
            .declare_subscriber(format!("vla/{robot_id}/cmd"))
            .callback(move |sample| {
                let bytes = sample.payload().to_bytes();
                let _ = sender.send(CommandRecord::decode(&bytes).map_err(|e| e.to_string()));
            })
            .wait()
            .unwrap();
        Self {
            receiver,
            _subscriber: subscriber,
        }
    }

    /// The next command; panics (failing the test) after `timeout`.
    pub fn next(&self, timeout: Duration) -> CommandRecord {
        match self.receiver.recv_timeout(timeout) {
            Ok(Ok(record)) => record,
            Ok(Err(e)) => panic!("undecodable command: {e}"),
            Err(RecvTimeoutError::Timeout) => panic!("no command within {timeout:?}"),
            Err(RecvTimeoutError::Disconnected) => panic!("command subscriber gone"),
        }
    }

    /// Reads commands until one satisfies `wanted`, failing after `timeout`; returns
    /// everything read, the match last.
    pub fn until(
        &self,
        timeout: Duration,
        what: &str,
        wanted: impl Fn(&CommandRecord) -> bool,
    ) -> Vec<CommandRecord> {
        self.try_until(timeout, what, wanted)
            .unwrap_or_else(|why| panic!("{why}"))
    }

    /// [`Self::until`], with the failure as text for a caller that adds its own context.
    pub fn try_until(
        &self,
        timeout: Duration,
        what: &str,
        wanted: impl Fn(&CommandRecord) -> bool,
    ) -> Result<Vec<CommandRecord>, String> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.receiver.recv_timeout(left) {
                Ok(Ok(record)) => {
                    let done = wanted(&record);
                    seen.push(record);
                    if done {
                        return Ok(seen);
                    }
                }
                Ok(Err(e)) => return Err(format!("undecodable command: {e}")),
                Err(_) => {
                    return Err(format!(
                        "waited {timeout:?} for {what}; last states: {:?}",
                        seen.iter()
                            .rev()
                            .take(12)
                            .map(|r| (r.seq, r.state))
                            .collect::<Vec<_>>()
                    ))
                }
            }
        }
    }

    /// Throws away what arrived so far.
    pub fn drain(&self) {
        while self.receiver.try_recv().is_ok() {}
    }
}

/// Puts `payload` (`arm`, `disarm`) on `vla/<robot_id>/arm`.
pub fn put_arm(session: &zenoh::Session, robot_id: &str, payload: &str) {
    session
        .put(format!("vla/{robot_id}/arm"), payload)
        .wait()
        .unwrap();
}

/// Puts `arm` every 500 ms until an ACT comes, failing after `timeout`.
pub fn arm_until_act(
    session: &zenoh::Session,
    stream: &CommandStream,
    robot_id: &str,
    timeout: Duration,
) -> Vec<CommandRecord> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        put_arm(session, robot_id, "arm");
        let round = Instant::now() + Duration::from_millis(500);
        while let Ok(Ok(record)) = stream
            .receiver
            .recv_timeout(round.saturating_duration_since(Instant::now()))
        {
            seen.push(record);
            if record.state == ControlState::Act {
                return seen;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no ACT within {timeout:?} of arming; last: {:?}",
            seen.iter()
                .rev()
                .take(12)
                .map(|r: &CommandRecord| (r.seq, r.state))
                .collect::<Vec<_>>()
        );
    }
}

pub fn is_state(state: ControlState) -> impl Fn(&CommandRecord) -> bool {
    move |r| r.state == state
}

/// Checks the invariants every command must hold. `seq` increases by one per tick; a record
/// the publisher could not send within its period is dropped (and counted), so a busy
/// machine may skip some: see [`skipped_seqs`].
pub fn assert_well_formed(records: &[CommandRecord], config: &ServiceConfig) {
    for pair in records.windows(2) {
        assert!(pair[1].seq > pair[0].seq, "sequence out of order: {pair:?}");
        assert!(pair[1].tick_time_ns > pair[0].tick_time_ns);
    }
    for record in records {
        for (i, value) in record.action.iter().enumerate() {
            assert!(value.is_finite(), "non-finite value in {record:?}");
            assert!(
                *value >= config.safety.min[i] && *value <= config.safety.max[i],
                "dimension {i} out of limits in {record:?}"
            );
        }
        // Per tick, no axis moves faster than its velocity bound.
        let dt = 1.0 / config.control.rate_hz;
        for i in 0..6 {
            let bound = if i < 3 {
                config.safety.max_linear_velocity
            } else {
                config.safety.max_angular_velocity
            };
            let speed = f64::from(record.action[i]).abs() / dt;
            assert!(
                speed <= bound * (1.0 + 1e-4),
                "axis {i} at {speed} per s over {bound} in {record:?}"
            );
        }
    }
}

/// How many sequence numbers `records` (in order) skip.
pub fn skipped_seqs(records: &[CommandRecord]) -> u64 {
    records
        .windows(2)
        .map(|pair| pair[1].seq.saturating_sub(pair[0].seq + 1))
        .sum()
}

/// Status documents of `vla/<robot>/status` (published once a second) as they arrive.
pub struct StatusWatch {
    receiver: Receiver<serde_json::Value>,
    _subscriber: zenoh::pubsub::Subscriber<()>,
}

impl StatusWatch {
    pub fn new(session: &zenoh::Session, robot_id: &str) -> Self {
        let (sender, receiver) = crossbeam::channel::unbounded();
        let subscriber = session
            .declare_subscriber(format!("vla/{robot_id}/status"))
            .callback(move |sample| {
                let text = sample.payload().try_to_string().unwrap().into_owned();
                let _ = sender.send(serde_json::from_str(&text).unwrap());
            })
            .wait()
            .unwrap();
        Self {
            receiver,
            _subscriber: subscriber,
        }
    }

    /// The first document that satisfies `wanted`, failing after `timeout`.
    pub fn until(
        &self,
        timeout: Duration,
        what: &str,
        wanted: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.receiver.recv_timeout(left) {
                Ok(status) if wanted(&status) => return status,
                Ok(status) => last = Some(status),
                Err(_) => panic!("waited {timeout:?} for a status with {what}; last: {last:?}"),
            }
        }
    }
}
