//! The service executing OpenVLA-OFT action chunks: the tiny OFT fixture checkpoint on a
//! camera that shows one image, so that every chunk is the same. Each chunk step is paced at
//! the checkpoint's `action_hz` whatever the control rate; a STOP drops what is left of a
//! chunk; a new instruction discards the rest of the chunk in progress.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod service_support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use service_support::*;
use vla_rt::config::ServiceConfig;
use vla_rt::control::command_record::CommandRecord;
use vla_rt::control::ControlState;
use vla_rt::policy::PolicyOptions;
use vla_rt::recording::{RecordSettings, Recorder};
use vla_rt::service::{Service, ServiceOptions};
use zenoh::Wait;

const ACTION_HZ: f64 = 5.0;
const WAIT: Duration = Duration::from_secs(60);
const CHUNK: usize = 8;

/// The OFT fixture checkpoint taking `images` camera images, with or without the proprio
/// projector.
fn checkpoint(name: &str, with_proprio: bool, images: usize) -> PathBuf {
    let settings = serde_json::json!({
        "num_actions_chunk": CHUNK,
        "num_images_in_input": images,
        "action_normalization": "bounds_q99",
    });
    common::oft::assemble(name, &settings, with_proprio)
}

/// A folder with one image, which the `images:` camera shows over and over.
fn one_image_folder(name: &str) -> PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("chunk_camera_{name}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        common::tiny_fixture_dir().join("case0_224_square/image.png"),
        dir.join("frame.png"),
    )
    .unwrap();
    dir
}

struct Running {
    service: Service,
    /// The session recording, when the test asked for one.
    recorder: Option<Arc<Recorder>>,
    session: zenoh::Session,
    stream: CommandStream,
    robot: String,
    /// Control ticks per action step.
    ticks_per_step: usize,
}

/// The service config of these tests: the OFT checkpoint, the one-image camera, wide limits.
fn chunk_config(
    name: &str,
    robot: &str,
    port: u16,
    rate_hz: f64,
    size_threshold: f64,
) -> ServiceConfig {
    let mut config: ServiceConfig = loopback_config(robot, port, rate_hz);
    config.camera.source = format!("images:{}", one_image_folder(name).display());
    config.camera.fps = 30;
    config.control.start_armed = false;
    config.control.chunk_size_threshold = size_threshold;
    config.model.action_hz = Some(ACTION_HZ);
    // Limits wide open: the chunk's un-normalised actions, paced, are what gets published.
    config.safety.min = [-1e7, -1e7, -1e7, -1e7, -1e7, -1e7, -1e7];
    config.safety.max = [1e7; 7];
    config.safety.max_linear_velocity = 1e3;
    config.safety.max_linear_acceleration = 1e7;
    config.safety.max_linear_jerk = 1e10;
    config.safety.max_angular_velocity = 1e3;
    config.safety.max_angular_acceleration = 1e7;
    config.safety.max_angular_jerk = 1e10;
    config.safety.max_gripper_rate = 1e7;
    let images = if name.starts_with("wrist") { 2 } else { 1 };
    config.model.path = checkpoint(name, name.starts_with("proprio"), images);
    if images == 2 {
        config.wrist_camera = Some(wrist_camera(robot));
    }
    config.model.unnorm_key = Some("tiny_libero".into());
    config.validate("test config").unwrap();
    config
}

fn start(name: &str, rate_hz: f64, size_threshold: f64) -> Running {
    start_recording(name, rate_hz, size_threshold, None)
}

/// [`start`], recording the session into `recording` when given.
fn start_recording(
    name: &str,
    rate_hz: f64,
    size_threshold: f64,
    recording: Option<&Path>,
) -> Running {
    let port = free_port();
    let robot = format!("chunks-{name}");
    let config = chunk_config(name, &robot, port, rate_hz, size_threshold);
    let model = config.model.path.clone();
    let source = vla_rt::capture::open_source(&config.camera).unwrap();
    let recorder = recording.map(|path| recorder_for(&config, path));
    let service = Service::start(
        &config,
        source,
        move || vla_rt::backend::load_policy(&model, &PolicyOptions::default()),
        ServiceOptions {
            recorder: recorder.clone(),
            ..ServiceOptions::default()
        },
    )
    .unwrap();
    let session = client_session(port);
    let stream = CommandStream::new(&session, &robot);
    Running {
        service,
        recorder,
        session,
        stream,
        robot,
        ticks_per_step: (rate_hz / ACTION_HZ).round() as usize,
    }
}

/// Where a test's recording goes.
fn recording_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("chunks_{name}_{}.mcap", std::process::id()))
}

/// A recorder of `config`'s session into `path`, as `vla-rt run --record` starts one.
fn recorder_for(config: &ServiceConfig, path: &Path) -> Arc<Recorder> {
    let _ = std::fs::remove_file(path);
    let session = vla_rt::recording::session_info(config, &PolicyOptions::default()).unwrap();
    Recorder::start(RecordSettings::from_config(config, path), session).unwrap()
}

/// `vla-rt replay --json` of a recording made with the checkpoint it names: every prediction
/// is replayed (none lacks an input) and gives the recorded chunk of `CHUNK` steps again,
/// value for value.
fn assert_replays_exactly(recording: &Path) -> serde_json::Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vla-rt"))
        .args(["replay", "--json"])
        .arg(recording)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let summary = &report["summary"];
    assert!(summary["steps"].as_u64().unwrap() >= 2, "{summary}");
    assert_eq!(summary["skipped"], 0, "{summary}");
    assert_eq!(summary["steps_differing"], 0, "{summary}");
    for step in report["steps"].as_array().unwrap() {
        let recorded = step["recorded_actions"].as_array().unwrap();
        assert_eq!(recorded.len(), CHUNK, "{step}");
        assert_eq!(recorded, step["replayed_actions"].as_array().unwrap());
        assert_eq!(step["max_abs_difference"], 0.0, "{step}");
    }
    report
}

/// Runs of consecutive ACT commands from one chunk (one capture time).
fn chunks_of(records: &[CommandRecord]) -> Vec<Vec<CommandRecord>> {
    let mut runs: Vec<Vec<CommandRecord>> = Vec::new();
    let mut previous: Option<&CommandRecord> = None;
    for record in records {
        let continues = previous.is_some_and(|p| {
            p.state == ControlState::Act && p.capture_time_ns == record.capture_time_ns
        });
        if record.state == ControlState::Act {
            if continues {
                runs.last_mut().unwrap().push(*record);
            } else {
                runs.push(vec![*record]);
            }
        }
        previous = Some(record);
    }
    runs
}

/// Displacement per second (x, y, z) of each whole step of a run: every tick of a step
/// publishes the same share, and the step's sum over its `1 / action_hz` seconds.
fn step_velocities(run: &[CommandRecord], ticks_per_step: usize) -> Vec<[f64; 3]> {
    run.chunks_exact(ticks_per_step)
        .map(|step| {
            for record in step {
                for i in 0..3 {
                    let (a, b) = (record.action[i], step[0].action[i]);
                    assert!(
                        (a - b).abs() <= 1e-6 * b.abs().max(1e-3),
                        "uneven pacing in a step: {step:?}"
                    );
                }
            }
            std::array::from_fn(|i| {
                step.iter().map(|r| f64::from(r.action[i])).sum::<f64>() * ACTION_HZ
            })
        })
        .collect()
}

fn records_for(stream: &CommandStream, duration: Duration) -> Vec<CommandRecord> {
    let end = Instant::now() + duration;
    let mut records = Vec::new();
    while let Ok(Ok(record)) = stream
        .receiver
        .recv_timeout(end.saturating_duration_since(Instant::now()))
    {
        records.push(record);
    }
    records
}

#[test]
fn each_chunk_step_moves_the_same_per_second_at_10_and_50_hz() {
    let mut per_rate = Vec::new();
    for rate in [10.0, 50.0] {
        let running = start(&format!("rate{rate}"), rate, 0.5);
        arm_until_act(&running.session, &running.stream, &running.robot, WAIT);
        let records = records_for(&running.stream, Duration::from_secs(4));
        running.service.stop();
        let runs = chunks_of(&records);
        // The first run may have started before the window; whole runs after it.
        let steps: Vec<Vec<[f64; 3]>> = runs[1..]
            .iter()
            .map(|run| step_velocities(run, running.ticks_per_step))
            .filter(|steps| steps.len() >= 2)
            .collect();
        assert!(steps.len() >= 2, "{rate} Hz: runs {:?}", runs.len());
        // The camera shows one image: every chunk is the same, step for step.
        for other in &steps[1..] {
            for (a, b) in other.iter().zip(&steps[0]) {
                for i in 0..3 {
                    assert!(
                        (a[i] - b[i]).abs() <= 1e-4 * b[i].abs().max(1e-3),
                        "{a:?} {b:?}"
                    );
                }
            }
        }
        eprintln!(
            "{rate} Hz: first steps of a chunk, m/s: {:?}",
            &steps[0][..2]
        );
        per_rate.push(steps[0][..2].to_vec());
    }
    // The first two steps of a chunk move the arm as far per second at both rates, and the
    // steps differ from each other (a chunk, not one action repeated).
    for (a, b) in per_rate[0].iter().zip(&per_rate[1]) {
        for i in 0..3 {
            assert!(
                (a[i] - b[i]).abs() <= 1e-4 * b[i].abs().max(1e-3),
                "{a:?} {b:?}"
            );
        }
    }
    assert_ne!(per_rate[0][0], per_rate[0][1]);
}

#[test]
fn a_stop_mid_chunk_publishes_no_further_step_of_that_chunk() {
    let running = start("estop", 50.0, 0.5);
    let (session, stream, robot) = (&running.session, &running.stream, &running.robot);
    arm_until_act(session, stream, robot, WAIT);
    // Into a chunk's second step, then the e-stop.
    let mut before = Vec::new();
    let mut run = 0;
    while run < running.ticks_per_step + 2 {
        let record = stream.next(WAIT);
        run = match before.last() {
            Some(p) if p_same_chunk(p, &record) => run + 1,
            _ => usize::from(record.state == ControlState::Act),
        };
        before.push(record);
    }
    session
        .put(format!("vla/{robot}/estop/stop"), "stop")
        .wait()
        .unwrap();
    let stopped = stream.until(WAIT, "STOP after the e-stop", is_state(ControlState::Stop));
    let executing = before.last().unwrap().capture_time_ns;
    for record in stopped.iter().filter(|r| r.state == ControlState::Act) {
        assert_eq!(
            record.capture_time_ns, executing,
            "a new chunk before the STOP"
        );
    }
    // STOP until released and armed again; then only chunks computed after the stop.
    let stops = records_for(stream, Duration::from_millis(500));
    assert!(
        stops.iter().all(|r| r.state == ControlState::Stop),
        "{stops:?}"
    );
    session
        .put(format!("vla/{robot}/estop/release"), "release")
        .wait()
        .unwrap();
    let after = arm_until_act(session, stream, robot, WAIT);
    let first_act = after.last().unwrap();
    assert_ne!(
        first_act.capture_time_ns, executing,
        "the stopped chunk came back"
    );
    let later = records_for(stream, Duration::from_secs(1));
    assert!(later.iter().all(|r| r.capture_time_ns != executing));
    running.service.stop();
}

fn p_same_chunk(previous: &CommandRecord, record: &CommandRecord) -> bool {
    previous.state == ControlState::Act
        && record.state == ControlState::Act
        && previous.capture_time_ns == record.capture_time_ns
}

#[test]
fn a_new_instruction_mid_chunk_discards_the_rest() {
    // Threshold 0: the next chunk is asked for in the last step only, so a chunk runs to
    // its end unless something drops it.
    let running = start("instruction", 50.0, 0.0);
    let (session, stream, robot) = (&running.session, &running.stream, &running.robot);
    let tps = running.ticks_per_step;
    arm_until_act(session, stream, robot, WAIT);
    // Left alone, a chunk runs into its last step, where the next one replaces it.
    let records = records_for(stream, Duration::from_secs(4));
    let runs = chunks_of(&records);
    assert!(runs.len() >= 3, "{} runs", runs.len());
    assert!(
        runs[1..runs.len() - 1]
            .iter()
            .all(|run| run.len() >= (CHUNK - 1) * tps),
        "runs of {:?} ticks",
        runs.iter().map(Vec::len).collect::<Vec<_>>()
    );
    // At the start of a chunk's second step (counted from its first tick), a new
    // instruction.
    let mut previous = *records.last().unwrap();
    let mut current: Vec<CommandRecord> = Vec::new();
    loop {
        let record = stream.next(WAIT);
        if p_same_chunk(&previous, &record) {
            if !current.is_empty() {
                current.push(record);
            }
        } else if record.state == ControlState::Act {
            current = vec![record];
        }
        previous = record;
        if current.len() == tps + 1 {
            break;
        }
    }
    let cut = current[0].capture_time_ns;
    session
        .put(
            format!("vla/{robot}/instruction"),
            "Put the cream cheese in the bowl",
        )
        .wait()
        .unwrap();
    let records = records_for(stream, Duration::from_secs(3));
    let rest = records
        .iter()
        .filter(|r| r.state == ControlState::Act && r.capture_time_ns == cut)
        .count();
    let executed = current.len() + rest;
    assert!(
        executed < (CHUNK - 2) * tps,
        "{executed} ticks of the chunk ran after the instruction came ({} ticks per step)",
        tps
    );
    // The arm moves on with chunks computed under the new instruction.
    assert!(records
        .iter()
        .any(|r| r.state == ControlState::Act && r.capture_time_ns != cut));
    let status = StatusWatch::new(session, robot).until(WAIT, "a dropped chunk", |s| {
        s["chunk"]["dropped"].as_u64().unwrap() >= 1
    });
    assert_eq!(status["policy"]["instructions_applied"], 1, "{status}");
    running.service.stop();
}

#[test]
fn the_recording_carries_the_chunk_step_of_every_command() {
    let port = free_port();
    let robot = "chunks-record";
    let mut config = chunk_config("record", robot, port, 50.0, 0.5);
    config.control.start_armed = true;
    // The OFT keys from the service config, as for a checkpoint folder that cannot be
    // written to: the service and the replay (from the recorded config) both take them.
    move_oft_keys_to_the_config(&mut config);
    let dir = config
        .model
        .path
        .parent()
        .unwrap()
        .join(format!("chunk_record_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config_path = dir.join("service.toml");
    std::fs::write(&config_path, toml::to_string(&config).unwrap()).unwrap();
    let recording_path = dir.join("session.mcap");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vla-rt"))
        .args([
            "run",
            "--config",
            config_path.to_str().unwrap(),
            "--duration",
            "4",
        ])
        .args(["--record", recording_path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recording = vla_rt::recording::reader::Recording::read(&recording_path).unwrap();
    let tps = (50.0 / ACTION_HZ) as u32;
    // Within each chunk's run of ACTs, tick j executes step j / tps. A chunk starts with
    // step 0 after no ACT or after a later step of the one it replaces (with the threshold
    // at 0.5, replacements come at step 4 or later).
    let mut acts = 0;
    let mut in_run = 0u32;
    let mut previous_step: Option<u32> = None;
    for command in &recording.commands {
        if command.state == "ACT" {
            acts += 1;
            let step = command.chunk_step.expect("an ACT without its chunk step");
            if step == 0 && previous_step != Some(0) {
                in_run = 0;
            }
            assert!(step < CHUNK as u32, "{command:?}");
            assert_eq!(
                step,
                in_run / tps,
                "{command:?} at tick {in_run} of its chunk"
            );
            in_run += 1;
            previous_step = Some(step);
        } else {
            assert_eq!(command.chunk_step, None, "{command:?}");
            previous_step = None;
        }
    }
    assert!(acts >= 50, "{acts} ACT");
    assert!(recording
        .commands
        .iter()
        .any(|c| c.chunk_step.is_some_and(|s| s >= 1)));
    // The recording replays to the same chunks.
    assert_replays_exactly(&recording_path);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// An input just went quiet: STOP within the frame age (500 ms) and a tick, for `cause`, and
/// only STOP after it. Returns the status that says so.
fn assert_stops_within_the_frame_age(
    stream: &CommandStream,
    status: &StatusWatch,
    cause: &str,
) -> serde_json::Value {
    let quiet = Instant::now();
    stream.until(
        WAIT,
        "STOP after the input went quiet",
        is_state(ControlState::Stop),
    );
    let took = quiet.elapsed();
    assert!(
        took < Duration::from_millis(500 + 1_500),
        "STOP {took:?} after the input went quiet ({cause})"
    );
    let stopped = status.until(WAIT, "the stop cause", |s| s["state"] == "STOP");
    assert_eq!(stopped["stop_cause"], cause, "{stopped}");
    let more = records_for(stream, Duration::from_millis(500));
    assert!(
        more.iter().all(|r| r.state == ControlState::Stop),
        "{more:?}"
    );
    stopped
}

/// Puts the robot's state on `vla/<robot>/proprio` at 50 Hz until `stop` is set.
fn publish_proprio(
    session: zenoh::Session,
    robot: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let state = "[-0.05, 0.35, 0.9, 3.1, -1.2, 0.1, 0.03, -0.029]";
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let payload = format!(r#"{{"state": {state}, "capture_time_ns": {now}}}"#);
            session
                .put(format!("vla/{robot}/proprio"), payload)
                .wait()
                .unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
    })
}

#[test]
fn a_policy_that_takes_the_robot_state_acts_on_it_and_stops_when_it_goes_stale() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let recording = recording_path("proprio");
    let running = start_recording("proprio", 50.0, 0.5, Some(&recording));
    let (session, stream, robot) = (&running.session, &running.stream, &running.robot);
    let status = StatusWatch::new(session, robot);
    // No state yet: the loop stops as for a silent camera, and nothing acts.
    let first = status.until(WAIT, "the proprio stop", |s| {
        s["stop_cause"] == "proprio stale"
    });
    assert_eq!(first["proprio"]["received"], 0, "{first}");
    // A malformed and a short state are refused and counted.
    for payload in ["[1, 2]", r#"{"state": [1, 2, 3], "capture_time_ns": 1}"#] {
        session
            .put(format!("vla/{robot}/proprio"), payload)
            .wait()
            .unwrap();
    }
    status.until(WAIT, "two refused states", |s| s["proprio"]["refused"] == 2);
    // With the driver's state coming in, an `arm` moves the arm.
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = publish_proprio(session.clone(), robot.clone(), Arc::clone(&stop));
    arm_until_act(session, stream, robot, WAIT);
    let acting = status.until(WAIT, "states received", |s| {
        s["proprio"]["received"].as_u64().unwrap() >= 10 && s["state"] == "ACT"
    });
    assert_eq!(acting["proprio"]["dim"], 8, "{acting}");
    // The driver goes quiet: STOP within the frame age (500 ms) and a tick, for that cause.
    stop.store(true, Ordering::Relaxed);
    publisher.join().unwrap();
    assert_stops_within_the_frame_age(stream, &status, "proprio stale");
    running.service.stop();
    running.recorder.unwrap().finish();
    // Each prediction's robot state was recorded with it: the replay gives the same chunks.
    assert_replays_exactly(&recording);
}

/// The wrist camera of these tests: frames the test puts on `vla/<robot>/wrist`.
fn wrist_camera(robot: &str) -> vla_rt::config::CameraConfig {
    vla_rt::config::CameraConfig {
        source: format!("zenoh:vla/{robot}/wrist"),
        width: WRIST_WIDTH,
        height: WRIST_HEIGHT,
        ..Default::default()
    }
}

const WRIST_WIDTH: u32 = 64;
const WRIST_HEIGHT: u32 = 48;

/// Puts a grey wrist frame on `vla/<robot>/wrist` every 10 ms, stamped `skew_ms` away from
/// the time it is put, until `stop` is set: from a peer that connects to the service at
/// `port` once it listens (its warm-up waits for a frame of each camera).
fn publish_wrist_frames(
    port: u16,
    robot: String,
    skew_ms: std::sync::Arc<std::sync::atomic::AtomicI64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    use std::sync::atomic::Ordering;
    use vla_rt::capture::zenoh_source::{FrameFormat, FrameHeader};
    std::thread::spawn(move || {
        let session = session_when_listening(port);
        let image = vec![128u8; (WRIST_WIDTH * WRIST_HEIGHT * 3) as usize];
        let mut sequence = 0;
        while !stop.load(Ordering::Relaxed) {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as i64;
            let stamp = now + skew_ms.load(Ordering::Relaxed) * 1_000_000;
            sequence += 1;
            let header = FrameHeader {
                format: FrameFormat::Rgb8,
                width: WRIST_WIDTH,
                height: WRIST_HEIGHT,
                capture_time_ns: stamp as u64,
                sequence,
            };
            session
                .put(format!("vla/{robot}/wrist"), header.encode(&image))
                .wait()
                .unwrap();
            std::thread::sleep(Duration::from_millis(10));
        }
    })
}

#[test]
fn a_two_camera_checkpoint_acts_on_frames_paired_by_capture_time_and_stops_when_the_wrist_goes_silent(
) {
    use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
    let port = free_port();
    let robot = "chunks-wrist".to_string();
    let config = chunk_config("wrist", &robot, port, 50.0, 0.5);
    // The wrist frames arrive, but captured a second before the primary camera's: no pair,
    // so no prediction and nothing to act on, however often the arm is asked to move.
    let skew_ms = Arc::new(AtomicI64::new(-1_000));
    let stop = Arc::new(AtomicBool::new(false));
    let publisher =
        publish_wrist_frames(port, robot.clone(), Arc::clone(&skew_ms), Arc::clone(&stop));
    let model = config.model.path.clone();
    let source = vla_rt::capture::open_source(&config.camera).unwrap();
    let recording = recording_path("wrist");
    let recorder = recorder_for(&config, &recording);
    let service = Service::start(
        &config,
        source,
        move || vla_rt::backend::load_policy(&model, &PolicyOptions::default()),
        ServiceOptions {
            recorder: Some(Arc::clone(&recorder)),
            ..ServiceOptions::default()
        },
    )
    .unwrap();
    let session = &client_session(port);
    let stream = &CommandStream::new(session, &robot);
    let robot = &robot;
    let status = StatusWatch::new(session, robot);
    let unpaired = status.until(WAIT, "unpaired frames", |s| {
        s["policy"]["unpaired"].as_u64().unwrap() >= 5
    });
    assert!(
        unpaired["wrist_camera"]["frames"].as_u64().unwrap() > 0,
        "{unpaired}"
    );
    put_arm(session, robot, "arm");
    let skewed = records_for(stream, Duration::from_secs(2));
    assert!(!skewed.is_empty());
    assert!(
        skewed.iter().all(|r| r.state != ControlState::Act),
        "acted on frames a second apart"
    );
    // In step with the primary camera: paired, predicted on, acted on.
    skew_ms.store(0, Ordering::Relaxed);
    arm_until_act(session, stream, robot, WAIT);
    let paired = status.until(WAIT, "acting on paired frames", |s| {
        s["state"] == "ACT" && s["policy"]["pair_skew_ms"].is_number()
    });
    let skew = paired["policy"]["pair_skew_ms"].as_f64().unwrap();
    assert!(skew <= 25.0, "pair {skew} ms apart: {paired}");
    assert!(
        paired["wrist_camera"]["source"]
            .as_str()
            .unwrap()
            .starts_with(&format!("zenoh:vla/{robot}/wrist ")),
        "{paired}"
    );
    // The wrist camera goes silent: STOP within the frame age (500 ms) and a tick, as for
    // a silent primary camera, while the primary camera goes on.
    stop.store(true, Ordering::Relaxed);
    publisher.join().unwrap();
    let stopped = assert_stops_within_the_frame_age(stream, &status, "camera silent");
    assert!(
        stopped["camera"]["age_ms"].as_f64().unwrap() < 500.0,
        "{stopped}"
    );
    service.stop();
    recorder.finish();
    // Both cameras' frames were recorded with each prediction: the replay gives the same
    // chunks, and every wrist frame is the paired one, within the tolerance.
    let report = assert_replays_exactly(&recording);
    let steps = vla_rt::recording::reader::Recording::read(&recording)
        .unwrap()
        .steps;
    assert_eq!(
        steps.len() as u64,
        report["summary"]["steps"].as_u64().unwrap()
    );
    for step in &steps {
        let (wrist_capture_ns, _) = step.wrist_frame.expect("a step without its wrist frame");
        assert!(
            wrist_capture_ns.abs_diff(step.capture_time_ns) <= 25_000_000,
            "{} ns apart",
            wrist_capture_ns.abs_diff(step.capture_time_ns)
        );
        assert!(step.wrist_image().unwrap().is_ok());
    }
}

#[test]
fn the_cameras_must_match_the_images_the_checkpoint_takes() {
    for (images, wrist, expected) in [
        (2, false, "configure `[wrist_camera]`"),
        (1, true, "remove `[wrist_camera]`"),
    ] {
        let name = format!("cameras{images}");
        let robot = format!("chunks-{name}");
        let mut config = chunk_config(&name, &robot, free_port(), 10.0, 0.5);
        config.model.path = checkpoint(&name, false, images);
        config.wrist_camera = wrist.then(|| wrist_camera(&robot));
        let model = config.model.path.clone();
        let source = vla_rt::capture::open_source(&config.camera).unwrap();
        let error = match Service::start(
            &config,
            source,
            move || vla_rt::backend::load_policy(&model, &PolicyOptions::default()),
            ServiceOptions::default(),
        ) {
            Ok(service) => {
                service.stop();
                panic!("{images} image(s), wrist camera {wrist}: started");
            }
            Err(e) => e,
        };
        let text = error.to_string();
        assert!(
            text.contains("wrist_camera") && text.contains(expected),
            "{text}"
        );
        assert!(error.is_bad_input(), "{text}: not exit 2");
    }
}

/// Removes the OFT keys from the checkpoint's `vla_rt_model.json` and sets them in
/// `config`'s `[model]` instead.
fn move_oft_keys_to_the_config(config: &mut ServiceConfig) {
    let file = config.model.path.join("vla_rt_model.json");
    let mut runtime: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let keys = runtime.as_object_mut().unwrap();
    config.model.num_actions_chunk = keys
        .remove("num_actions_chunk")
        .and_then(|v| v.as_u64())
        .map(|v| v as usize);
    config.model.num_images_in_input = keys
        .remove("num_images_in_input")
        .and_then(|v| v.as_u64())
        .map(|v| v as usize);
    config.model.action_normalization = keys
        .remove("action_normalization")
        .map(|v| serde_json::from_value(v).unwrap());
    assert!(
        config.model.num_actions_chunk.is_some() && config.model.action_normalization.is_some()
    );
    std::fs::remove_file(&file).unwrap();
    std::fs::write(&file, runtime.to_string()).unwrap();
}

#[test]
fn the_oft_keys_come_from_the_config_when_the_checkpoint_lacks_them_and_must_agree_with_it() {
    // The policy loads as `vla-rt run` loads it, with the config's [model] keys.
    let start = |config: &ServiceConfig| {
        let model = config.model.path.clone();
        let options = config.model.policy_options();
        let source = vla_rt::capture::open_source(&config.camera).unwrap();
        Service::start(
            config,
            source,
            move || vla_rt::backend::load_policy(&model, &options),
            ServiceOptions::default(),
        )
    };
    let error_text = |result: Result<Service, vla_rt::service::ServiceError>| match result {
        Ok(service) => {
            service.stop();
            panic!("started");
        }
        Err(e) => {
            assert!(e.is_bad_input(), "{e}: not exit 2");
            e.to_string()
        }
    };
    // Neither the file nor the config: refused, naming the key and both places.
    let mut config = chunk_config("keys-none", "chunks-keys-none", free_port(), 10.0, 0.5);
    move_oft_keys_to_the_config(&mut config);
    config.model.num_actions_chunk = None;
    let text = error_text(start(&config));
    assert!(
        text.contains("num_actions_chunk") && text.contains("[model] num_actions_chunk"),
        "{text}"
    );
    // The file says 8, the config 5: refused, naming both.
    let mut config = chunk_config("keys-differ", "chunks-keys-differ", free_port(), 10.0, 0.5);
    config.model.num_actions_chunk = Some(5);
    let text = error_text(start(&config));
    assert!(
        text.contains("vla_rt_model.json")
            && text.contains("8 here, 5 in the config's [model] num_actions_chunk"),
        "{text}"
    );
    // The same value both ways, or the config's alone: the chunk has that many steps.
    for (name, from_file) in [("keys-same", true), ("keys-config", false)] {
        let robot = format!("chunks-{name}");
        let mut config = chunk_config(name, &robot, free_port(), 10.0, 0.5);
        if from_file {
            config.model.num_actions_chunk = Some(CHUNK);
        } else {
            move_oft_keys_to_the_config(&mut config);
        }
        let service = start(&config).unwrap();
        service.stop();
    }
}
