//! Safe motion, with the service running for real on loopback: a fresh start is disarmed
//! (HOLD only) until `arm`; a silent camera STOPs and its return alone does not move the
//! arm; a policy forced to extreme outputs stays inside the velocity, acceleration, jerk,
//! workspace and gripper-rate bounds; with the bundled 5 Hz checkpoint the service ACTs on
//! every tick of each action step at 200 Hz; and the displacement per second does not depend on the control
//! rate. Every wait is bounded.

// Test helpers fail the test by panicking, like the test functions themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod service_support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use service_support::*;
use vla_rt::capture::{CaptureError, CaptureStats, Frame, FrameSource};
use vla_rt::config::ServiceConfig;
use vla_rt::control::command_record::CommandRecord;
use vla_rt::control::supervisor::StopCause;
use vla_rt::control::ControlState;
use vla_rt::policy::{Policy, PolicyError, Prediction, StageTimings};
use vla_rt::preprocess::RgbImage;
use vla_rt::service::{Service, ServiceOptions};

const WAIT: Duration = Duration::from_secs(10);

/// One bundled-model service at a time: each runs inference on the shared cores, and a
/// starved policy would blur what the tests measure.
static ONE_MODEL: std::sync::Mutex<()> = std::sync::Mutex::new(());
/// Model load and warm-up on a busy machine.
const FIRST_COMMAND: Duration = Duration::from_secs(60);

fn start_fake(config: &ServiceConfig, controls: &Arc<FakeControls>) -> Service {
    let source = vla_rt::capture::open_source(&config.camera).unwrap();
    let controls = Arc::clone(controls);
    Service::start(
        config,
        source,
        move || Ok(Box::new(FakePolicy { controls }) as Box<dyn Policy>),
        ServiceOptions::default(),
    )
    .unwrap()
}

fn start_bundled(config: &ServiceConfig) -> Service {
    let source = vla_rt::capture::open_source(&config.camera).unwrap();
    let model = config.model.path.clone();
    let options = config.model.policy_options();
    Service::start(
        config,
        source,
        move || vla_rt::backend::load_policy(&model, &options),
        ServiceOptions::default(),
    )
    .unwrap()
}

fn states(records: &[CommandRecord]) -> Vec<ControlState> {
    records.iter().map(|r| r.state).collect()
}

fn next_n(stream: &CommandStream, n: usize) -> Vec<CommandRecord> {
    (0..n)
        .map(|_| stream.next(Duration::from_secs(3)))
        .collect()
}

#[test]
fn a_fresh_start_holds_until_armed_and_disarm_holds_again() {
    let port = free_port();
    let mut config = loopback_config("disarmed", port, 50.0);
    config.control.start_armed = false;
    let controls = Arc::new(FakeControls::default());
    let service = start_fake(&config, &controls);
    let session = client_session(port);
    let stream = CommandStream::new(&session, "disarmed");

    // Fresh actions arrive (the policy runs) but nothing moves: 2 s of HOLD.
    let first = next_n(&stream, 100);
    assert!(
        first
            .iter()
            .all(|r| r.state == ControlState::Hold && r.action[..6] == [0.0; 6]),
        "{:?}",
        states(&first)
    );
    assert!(controls.calls.load(Ordering::Relaxed) > 10);
    assert!(!service.control_stats().armed.load(Ordering::Relaxed));

    // Anything but `arm` / `disarm` is ignored and counted.
    put_arm(&session, "disarmed", "please move");
    let deadline = Instant::now() + WAIT;
    while service.inputs().ignored_arm_payloads() == 0 {
        assert!(Instant::now() < deadline, "the payload was not counted");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(next_n(&stream, 20)
        .iter()
        .all(|r| r.state == ControlState::Hold));

    put_arm(&session, "disarmed", "arm");
    stream.until(WAIT, "ACT after `arm`", is_state(ControlState::Act));
    assert!(service.control_stats().armed.load(Ordering::Relaxed));

    put_arm(&session, "disarmed", "disarm");
    let seen = stream.until(WAIT, "HOLD after `disarm`", is_state(ControlState::Hold));
    assert_well_formed(&seen, &config);
    let after = next_n(&stream, 50);
    assert!(
        after.iter().all(|r| r.state == ControlState::Hold),
        "{:?}",
        states(&after)
    );
    service.stop();
}

/// The synthetic camera behind a switch: while closed, no frame comes.
struct GatedSource {
    inner: Box<dyn FrameSource>,
    open: Arc<AtomicBool>,
}

impl FrameSource for GatedSource {
    fn start(&mut self) -> Result<(), CaptureError> {
        self.inner.start()
    }
    fn next_frame(&mut self, frame: &mut Frame) -> Result<(), CaptureError> {
        while !self.open.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.inner.next_frame(frame)
    }
    fn stats(&self) -> CaptureStats {
        self.inner.stats()
    }
    fn stop(&mut self) {
        self.inner.stop();
    }
    fn describe(&self) -> String {
        format!("gated {}", self.inner.describe())
    }
}

#[test]
fn a_silent_camera_stops_and_its_return_alone_gives_no_act() {
    let port = free_port();
    let config = loopback_config("silent", port, 50.0);
    let controls = Arc::new(FakeControls::default());
    let open = Arc::new(AtomicBool::new(true));
    let source = GatedSource {
        inner: vla_rt::capture::open_source(&config.camera).unwrap(),
        open: Arc::clone(&open),
    };
    let policy_controls = Arc::clone(&controls);
    let service = Service::start(
        &config,
        Box::new(source),
        move || {
            Ok(Box::new(FakePolicy {
                controls: policy_controls,
            }) as Box<dyn Policy>)
        },
        ServiceOptions::default(),
    )
    .unwrap();
    let session = client_session(port);
    let stream = CommandStream::new(&session, "silent");
    stream.until(WAIT, "the first ACT", is_state(ControlState::Act));

    open.store(false, Ordering::Release);
    let silent_since = Instant::now();
    let seen = stream.until(
        WAIT,
        "STOP from the silent camera",
        is_state(ControlState::Stop),
    );
    assert!(
        silent_since.elapsed() >= Duration::from_millis(config.control.max_frame_age_ms - 50),
        "STOP {:?} after the camera fell silent",
        silent_since.elapsed()
    );
    assert_well_formed(&seen, &config);
    assert_eq!(
        StopCause::from_u64(service.control_stats().stop_cause.load(Ordering::Relaxed)),
        StopCause::CameraSilent
    );
    // An `arm` while the camera is silent is refused.
    put_arm(&session, "silent", "arm");
    let deadline = Instant::now() + WAIT;
    while service.control_stats().arm_refused.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "the arm was not refused");
        std::thread::sleep(Duration::from_millis(10));
    }

    // Frames return, fresh actions follow, and the arm stays stopped: 2 s of STOP.
    open.store(true, Ordering::Release);
    let calls = controls.calls.load(Ordering::Relaxed);
    stream.drain();
    let after = next_n(&stream, 100);
    assert!(
        after.iter().all(|r| r.state == ControlState::Stop),
        "{:?}",
        states(&after)
    );
    assert!(controls.calls.load(Ordering::Relaxed) > calls + 10);

    arm_until_act(&session, &stream, "silent", WAIT);
    service.stop();
}

/// Huge actions (dx, dy, dz in the ratio 2 : -1 : 0.4): half a second one way, half a
/// second the other, then half a second flipping sign at every call; the gripper jumps
/// between closed and open.
struct ExtremePolicy {
    calls: Arc<AtomicU64>,
}

impl Policy for ExtremePolicy {
    fn predict(
        &mut self,
        _image: &RgbImage,
        _instruction: &str,
    ) -> Result<Prediction, PolicyError> {
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        let segment = n / 25;
        let s = match segment % 3 {
            0 => 1.0,
            1 => -1.0,
            _ if n.is_multiple_of(2) => 1.0,
            _ => -1.0,
        };
        let magnitude = [1e6, 1.0, 1e3][(n % 3) as usize];
        let action = vec![
            2.0 * s * magnitude,
            -s * magnitude,
            0.4 * s * magnitude,
            s * magnitude,
            -s * magnitude,
            0.5 * s * magnitude,
            if s > 0.0 { 1.0 } else { 0.0 },
        ];
        Ok(Prediction::single(
            vec![31_000; 7],
            vec![0.0; 7],
            action,
            StageTimings::default(),
        ))
    }
    fn action_dim(&self) -> usize {
        7
    }
    fn backend_name(&self) -> &'static str {
        "extreme"
    }
    fn model_name(&self) -> &str {
        "extreme"
    }
}

/// Runs the extreme policy at 50 Hz: armed, 300 commands, disarmed, armed again (from rest,
/// pose reset), 200 commands. Returns the config, the commands and where the second arming
/// starts.
fn run_extreme(
    robot_id: &str,
    workspace: Option<([f64; 3], [f64; 3])>,
) -> (ServiceConfig, Vec<CommandRecord>, usize) {
    let port = free_port();
    let mut config = loopback_config(robot_id, port, 50.0);
    config.control.start_armed = false;
    // Per-step clamps wide open, so that only the motion limits stand in the way.
    config.safety.min = [-1e7, -1e7, -1e7, -1e7, -1e7, -1e7, 0.0];
    config.safety.max = [1e7, 1e7, 1e7, 1e7, 1e7, 1e7, 1.0];
    config.safety.workspace_min = workspace.map(|w| w.0);
    config.safety.workspace_max = workspace.map(|w| w.1);
    config.validate("test config").unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    let policy_calls = Arc::clone(&calls);
    let source = vla_rt::capture::open_source(&config.camera).unwrap();
    let service = Service::start(
        &config,
        source,
        move || {
            Ok(Box::new(ExtremePolicy {
                calls: policy_calls,
            }) as Box<dyn Policy>)
        },
        ServiceOptions::default(),
    )
    .unwrap();
    let session = client_session(port);
    let stream = CommandStream::new(&session, robot_id);
    // Disarmed until here: the pose is integrated from this arming on.
    let mut records = arm_until_act(&session, &stream, robot_id, WAIT);
    records.extend(next_n(&stream, 300));
    put_arm(&session, robot_id, "disarm");
    records.extend(stream.until(WAIT, "HOLD after `disarm`", is_state(ControlState::Hold)));
    let rearm_at = records.len();
    records.extend(arm_until_act(&session, &stream, robot_id, WAIT));
    records.extend(next_n(&stream, 200));
    assert!(service.control_stats().limited.load(Ordering::Relaxed) > 400);
    service.stop();
    (config, records, rearm_at)
}

/// What [`check_motion`] saw.
struct Motion {
    /// Peaks of |v|, |a|, |j| over the translation axes, as fractions of their bounds.
    peak: [f64; 3],
    /// ACT commands that ended on a workspace wall, with the pose known exactly.
    wall_contacts: u32,
}

/// Checks velocity, acceleration, jerk, gripper rate and the workspace on every command
/// (the limiter restarts from rest after each HOLD or STOP, which publish zero deltas at
/// once). At the workspace wall a move ends short, a hard stop: acceleration and jerk are
/// not checked on the tick that stops there and the next. A command lost on the way (Zenoh
/// drops under load) breaks the chain: the derivatives restart after it, and the pose is
/// known only to within what the lost commands could have moved (the velocity bound times
/// their periods, on each axis), which the workspace check allows for from then on.
fn check_motion(config: &ServiceConfig, records: &[CommandRecord], rearm_at: usize) -> Motion {
    let s = &config.safety;
    let dt = 1.0 / config.control.rate_hz;
    let mut position = [0.0f64; 3];
    let mut previous_velocity = [0.0f64; 6];
    let mut previous_acceleration = [0.0f64; 6];
    let mut previous: Option<CommandRecord> = None;
    let mut wall_stop_ticks = 0u32;
    let mut acts = 0;
    let mut from_rest = 0;
    let mut peak = [0.0f64; 3];
    // How far the true pose may be from `position` on each axis, from lost commands.
    let mut uncertainty = 0.0f64;
    let mut wall_contacts = 0u32;
    let mut unchecked = 0u32;
    let mut lost = 0u64;
    for (k, record) in records.iter().enumerate() {
        if k == rearm_at {
            position = [0.0; 3];
            uncertainty = 0.0;
        }
        if let Some(p) = previous {
            if record.seq != p.seq + 1 {
                let missing = record.seq - p.seq - 1;
                lost += missing;
                uncertainty += missing as f64 * s.max_linear_velocity * dt;
                unchecked = 3;
                previous = None;
            }
        }
        unchecked = unchecked.saturating_sub(1);
        if let Some(p) = previous {
            let step = (record.action[6] - p.action[6]).abs();
            assert!(
                f64::from(step) <= s.max_gripper_rate * dt + 1e-6,
                "gripper moved {step} in one tick: {record:?}"
            );
        }
        let velocity: [f64; 6] = std::array::from_fn(|i| f64::from(record.action[i]) / dt);
        wall_stop_ticks = wall_stop_ticks.saturating_sub(1);
        if record.state == ControlState::Act {
            acts += 1;
            let after_act = previous.is_some_and(|p| p.state == ControlState::Act);
            if !after_act && unchecked == 0 {
                previous_velocity = [0.0; 6];
                previous_acceleration = [0.0; 6];
                if record.action[0].abs() > 1e-7 {
                    from_rest += 1;
                    // From rest, a limited command keeps its heading exactly.
                    let ratio = f64::from(record.action[1]) / f64::from(record.action[0]);
                    assert!((ratio + 0.5).abs() < 1e-3, "heading lost: {record:?}");
                }
            }
            for i in 0..3 {
                position[i] += f64::from(record.action[i]);
                if let (Some(lo), Some(hi)) = (s.workspace_min, s.workspace_max) {
                    let u = uncertainty;
                    assert!(
                        position[i] + u >= lo[i] - 1e-5 && position[i] - u <= hi[i] + 1e-5,
                        "axis {i} at {} (within {u} after lost commands) outside [{}, {}]",
                        position[i],
                        lo[i],
                        hi[i]
                    );
                    if position[i] <= lo[i] + u + 1e-6 || position[i] >= hi[i] - u - 1e-6 {
                        wall_stop_ticks = 2;
                        if u == 0.0 {
                            wall_contacts += 1;
                        }
                    }
                }
            }
            for i in 0..6 {
                let (v_max, a_max, j_max) = if i < 3 {
                    (
                        s.max_linear_velocity,
                        s.max_linear_acceleration,
                        s.max_linear_jerk,
                    )
                } else {
                    (
                        s.max_angular_velocity,
                        s.max_angular_acceleration,
                        s.max_angular_jerk,
                    )
                };
                let a = (velocity[i] - previous_velocity[i]) / dt;
                let j = (a - previous_acceleration[i]) / dt;
                assert!(
                    velocity[i].abs() <= v_max * (1.0 + 1e-4),
                    "axis {i} v {} in {record:?}",
                    velocity[i]
                );
                let at_wall = (i < 3 && wall_stop_ticks > 0) || unchecked > 0;
                if !at_wall {
                    assert!(
                        a.abs() <= a_max * (1.0 + 1e-3) + 1e-3,
                        "axis {i} a {a} in {record:?}"
                    );
                    assert!(
                        j.abs() <= j_max * (1.0 + 1e-3) + 0.1,
                        "axis {i} j {j} in {record:?}"
                    );
                }
                if i < 3 && !at_wall {
                    peak[0] = peak[0].max(velocity[i].abs() / v_max);
                    peak[1] = peak[1].max(a.abs() / a_max);
                    peak[2] = peak[2].max(j.abs() / j_max);
                }
                previous_acceleration[i] = a;
            }
        } else {
            assert_eq!(record.action[..6], [0.0; 6]);
            previous_acceleration = [0.0; 6];
        }
        previous_velocity = velocity;
        previous = Some(*record);
    }
    assert!(acts > 300, "{acts} ACT");
    assert!(from_rest >= 2, "{from_rest} ACT from rest");
    assert!(
        lost * 20 < records.len() as u64,
        "{lost} of {} commands lost",
        records.len()
    );
    Motion {
        peak,
        wall_contacts,
    }
}

#[test]
fn extreme_policy_outputs_stay_inside_velocity_acceleration_and_jerk_bounds() {
    let (config, records, rearm_at) = run_extreme("extreme", None);
    let [v, a, j] = check_motion(&config, &records, rearm_at).peak;
    eprintln!(
        "extreme policy, no workspace: peak |v| {v:.3}, |a| {a:.3}, |j| {j:.3} of their bounds"
    );
    // The bounds were reached, not merely unchallenged.
    assert!(v > 0.9 && a > 0.9 && j > 0.9, "{v} {a} {j}");
}

#[test]
fn extreme_policy_outputs_stay_inside_the_workspace() {
    let workspace = ([-0.05, -0.04, -0.03], [0.05, 0.04, 0.03]);
    let (config, records, rearm_at) = run_extreme("extreme-box", Some(workspace));
    let motion = check_motion(&config, &records, rearm_at);
    let [v, a, j] = motion.peak;
    eprintln!(
        "extreme policy, workspace box: peak |v| {v:.3}, |a| {a:.3}, |j| {j:.3} of their bounds, {} wall contacts",
        motion.wall_contacts
    );
    // The walls were reached, not merely never approached: half a second at up to the
    // velocity bound (0.25 m/s) crosses the 0.1 m box.
    assert!(
        motion.wall_contacts > 0,
        "the workspace walls were never reached"
    );
}

/// At 200 Hz a 5 Hz action step lasts 40 ticks, and the service ACTs on every one of them:
/// pacing spreads the action over its whole step (ARCHITECTURE.md §5). A HOLD comes only
/// once a step has run out with no fresh action, which on a busy machine happens whenever
/// the policy takes longer than a step; how many ticks ACT overall is therefore a measure
/// (printed), not asserted. Ticks are placed in their schedule slots by the service's own
/// tick trace, so that a late wake-up does not blur the step's end.
#[test]
fn at_200_hz_a_5_hz_policy_acts_on_every_tick_of_each_step() {
    let _one = ONE_MODEL.lock().unwrap_or_else(|e| e.into_inner());
    let port = free_port();
    let config = loopback_config("fast", port, 200.0);
    let source = vla_rt::capture::open_source(&config.camera).unwrap();
    let model = config.model.path.clone();
    let options = config.model.policy_options();
    let service = Service::start(
        &config,
        source,
        move || vla_rt::backend::load_policy(&model, &options),
        ServiceOptions {
            // Model load and warm-up (up to FIRST_COMMAND) and the 1000 commands after.
            trace_ticks: 200 * 90,
            ..ServiceOptions::default()
        },
    )
    .unwrap();
    let session = client_session(port);
    let stream = CommandStream::new(&session, "fast");
    let mut records = stream.until(FIRST_COMMAND, "the first ACT", is_state(ControlState::Act));
    records = vec![*records.last().unwrap()];
    records.extend(next_n(&stream, 1000));
    let overruns = service.control_stats().overruns.load(Ordering::Relaxed);
    let summary = service.stop();
    let period_ns = (1e9 / config.control.rate_hz).round() as u64;
    let step_slots = 40;
    let first_slot = summary.trace[0].scheduled_ns;
    let slot_of = |seq: u64| {
        let tick = summary
            .trace
            .iter()
            .find(|t| t.seq == seq)
            .unwrap_or_else(|| panic!("seq {seq} not in the tick trace"));
        (tick.scheduled_ns - first_slot + period_ns / 2) / period_ns
    };
    assert!(
        records.iter().all(|r| r.state != ControlState::Stop),
        "STOP while armed and fed"
    );
    // The current step's capture time, and its first slot when its first ACT was received
    // (every step's action has a capture time of its own: one prediction per frame).
    let mut step: Option<(u64, Option<u64>)> = None;
    let mut checked_steps = 0;
    let (mut acts, mut holds) = (0, 0);
    for (k, record) in records.iter().enumerate() {
        let slot = slot_of(record.seq);
        let follows = k > 0 && records[k - 1].seq + 1 == record.seq;
        if record.state == ControlState::Act {
            acts += 1;
            if step.is_none_or(|(capture, _)| capture != record.capture_time_ns) {
                // A fresh action: its first ACT, unless the command before was lost.
                step = Some((record.capture_time_ns, follows.then_some(slot)));
                checked_steps += usize::from(follows);
            }
            if let Some((_, Some(first))) = step {
                assert!(
                    slot - first < step_slots,
                    "ACT in slot {} of a {step_slots}-slot step (seq {})",
                    slot - first,
                    record.seq
                );
            }
        } else {
            holds += 1;
            if let Some((_, Some(first))) = step {
                assert!(
                    slot - first >= step_slots,
                    "HOLD in slot {} of a {step_slots}-slot step (seq {})",
                    slot - first,
                    record.seq
                );
            }
            step = None;
        }
    }
    eprintln!(
        "200 Hz, bundled checkpoint (5 Hz actions): {acts} ACT, {holds} HOLD of {} commands received, {checked_steps} steps checked from their first tick, {overruns} overruns",
        records.len()
    );
    assert!(checked_steps >= 3, "{checked_steps} steps checked");
}

/// Displacement per second (x, y, z) over `records` from the first ACT on.
fn displacement_per_second(records: &[CommandRecord]) -> [f64; 3] {
    let first = records
        .iter()
        .position(|r| r.state == ControlState::Act)
        .unwrap();
    let span = &records[first..];
    let mut sum = [0.0f64; 3];
    for r in span.iter().filter(|r| r.state == ControlState::Act) {
        for (total, value) in sum.iter_mut().zip(&r.action[..3]) {
            *total += f64::from(*value);
        }
    }
    // Each record covers one period, its own included.
    let seconds = (span.last().unwrap().tick_time_ns - span[0].tick_time_ns) as f64 / 1e9
        + (span[1].tick_time_ns - span[0].tick_time_ns) as f64 / 1e9;
    sum.map(|d| d / seconds)
}

#[test]
fn displacement_per_second_does_not_depend_on_the_control_rate() {
    let dir = state_dir("one-frame");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/openvla-tiny/case2_320x240/image.png"),
        dir.join("frame.png"),
    )
    .unwrap();
    let _one = ONE_MODEL.lock().unwrap_or_else(|e| e.into_inner());
    let mut per_second = Vec::new();
    for rate_hz in [10.0, 20.0] {
        let port = free_port();
        let robot_id = format!("speed{rate_hz}");
        let mut config = loopback_config(&robot_id, port, rate_hz);
        config.camera.source = format!("images:{}", dir.display());
        config.camera.fps = 30;
        // 2 Hz action steps (500 ms): the policy keeps up even on a busy machine, so the arm
        // ACTs throughout at both rates and only the pacing decides the speed.
        config.model.action_hz = Some(2.0);
        config.validate("test config").unwrap();
        let service = start_bundled(&config);
        let session = client_session(port);
        let stream = CommandStream::new(&session, &robot_id);
        let mut records = stream.until(FIRST_COMMAND, "the first ACT", is_state(ControlState::Act));
        records = vec![*records.last().unwrap()];
        records.extend(next_n(&stream, (8.0 * rate_hz) as usize));
        service.stop();
        assert_well_formed(&records, &config);
        let acts = records
            .iter()
            .filter(|r| r.state == ControlState::Act)
            .count();
        let v = displacement_per_second(&records);
        eprintln!(
            "{rate_hz} Hz: {acts} ACT of {} commands, displacement per second ({:.5}, {:.5}, {:.5}) m/s, |v| {:.5} m/s",
            records.len(),
            v[0],
            v[1],
            v[2],
            v.iter().map(|x| x * x).sum::<f64>().sqrt()
        );
        per_second.push(v);
    }
    let norm = |v: &[f64; 3]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let (slow, fast) = (&per_second[0], &per_second[1]);
    assert!(norm(slow) > 1e-3, "the arm hardly moved: {slow:?}");
    let ratio = norm(fast) / norm(slow);
    assert!(
        (0.9..=1.1).contains(&ratio),
        "20 Hz / 10 Hz speed ratio {ratio}: {per_second:?}"
    );
    let cosine = slow.iter().zip(fast).map(|(a, b)| a * b).sum::<f64>() / (norm(slow) * norm(fast));
    assert!(cosine > 0.99, "directions differ: {per_second:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}
