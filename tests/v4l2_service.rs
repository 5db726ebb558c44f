//! The real `vla-rt run` (bundled tiny checkpoint, CPU) driven by the emulated V4L2 camera
//! (tests/v4l2emu) on loopback: commands in YUYV and MJPG, a stall (HOLD, then STOP, then
//! ACT again), an unplug (reopen and recovery), corrupt MJPEG and sequence gaps (skipped and
//! counted), and the capture counters of the status JSON. Every wait is bounded; the child
//! must end with exit 0 and no panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod service_support;
#[path = "common/v4l2emu.rs"]
mod v4l2emu;

use std::io::Read;
use std::process::{Child, Stdio};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, RecvTimeoutError};
use service_support::{assert_well_formed, client_session, free_port};
use vla_rt::config::ServiceConfig;
use vla_rt::control::command_record::CommandRecord;
use vla_rt::control::ControlState;
use zenoh::Wait;

const BINARY: &str = env!("CARGO_BIN_EXE_vla-rt");
/// Model load and warm-up on a busy two-core machine.
const FIRST_ACT: Duration = Duration::from_secs(60);
const NEXT_COMMAND: Duration = Duration::from_secs(3);

/// `[control]` of every run. 5 Hz leaves the tiny policy (about 30 ms, over 100 ms on a
/// loaded machine) room, so that the camera's faults, not the policy, decide the states. An
/// ACT may act on a frame up to `max_action_age` (two periods) plus a frame interval old, so a
/// camera silent for 1 s is still only late at the tick after the last ACT: it HOLDs before
/// it STOPs. Misses alone take 2 s to stop the arm, so that a STOP during a camera fault is
/// the camera's doing.
const RATE_HZ: f64 = 5.0;
const MAX_FRAME_AGE_MS: u64 = 1_000;
const STOP_AFTER_MISSES: u32 = 10;
/// `[camera] stall_timeout_ms`: each this long without a frame counts one stall.
const STALL_TIMEOUT_MS: u64 = 200;
const WIDTH: u32 = 320;
const HEIGHT: u32 = 240;
/// Faults are placed at this frame (4 s of streaming at 30 fps): after warm-up's first ACT.
const FAULT_FRAME: u64 = 120;

/// One service at a time: each loads the model and runs inference on the shared cores, and
/// a starved policy would blur the camera's effect on the commands.
static ONE_SERVICE: Mutex<()> = Mutex::new(());

fn config_text(robot_id: &str, port: u16, format: &str) -> String {
    let model = tiny_model_dir();
    format!(
        r#"robot_id = "{robot_id}"

[model]
path = "{model}"
backend = "cpu"
unnorm_key = "tiny_bridge"

[camera]
source = "{device}"
width = {WIDTH}
height = {HEIGHT}
fps = 30
format = "{format}"
stall_timeout_ms = {STALL_TIMEOUT_MS}

[control]
rate_hz = {RATE_HZ}
stop_after_misses = {STOP_AFTER_MISSES}
max_frame_age_ms = {MAX_FRAME_AGE_MS}
realtime = "off"
start_armed = true
state_dir = "{state_dir}"
estop_missing = "released"

[zenoh]
mode = "peer"
listen = ["tcp/127.0.0.1:{port}"]
connect = []
"#,
        device = v4l2emu::DEVICE,
        state_dir = v4l2emu::scratch_dir(&format!("state-{robot_id}")).display(),
    )
}

/// The limits every command is checked against: the bundled ones at this test's rate.
fn limits_config() -> ServiceConfig {
    let mut config = ServiceConfig::builtin();
    config.control.rate_hz = RATE_HZ;
    config
}

fn tiny_model_dir() -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("engines/openvla-tiny")
        .display()
        .to_string()
}

/// Checks the wire bytes independently of the crate's decoder (magic, version, CRC-32 of
/// bytes 0..60), then decodes them.
fn checked(raw: &[u8]) -> CommandRecord {
    assert_eq!(raw.len(), 64, "command record length");
    assert_eq!(&raw[0..4], b"VLA1", "magic");
    assert_eq!(u16::from_le_bytes([raw[4], raw[5]]), 1, "version");
    let crc = u32::from_le_bytes(raw[60..64].try_into().unwrap());
    assert_eq!(crc, crc32fast::hash(&raw[..60]), "CRC-32 of bytes 0..60");
    CommandRecord::decode(raw).unwrap()
}

/// `vla-rt run` under the emulator, with subscribers on its command and status keys.
struct RunningService {
    child: Child,
    stderr: Option<JoinHandle<String>>,
    commands: Receiver<Vec<u8>>,
    statuses: Receiver<serde_json::Value>,
    _command_subscriber: zenoh::pubsub::Subscriber<()>,
    _status_subscriber: zenoh::pubsub::Subscriber<()>,
    session: Option<zenoh::Session>,
    robot_id: String,
    /// Every status document read so far, in order.
    status_log: Vec<serde_json::Value>,
    _guard: std::sync::MutexGuard<'static, ()>,
}

impl RunningService {
    fn start(name: &str, format: &str, settings: &[(&str, &str)]) -> Self {
        let guard = ONE_SERVICE.lock().unwrap_or_else(|e| e.into_inner());
        let port = free_port();
        let robot_id = format!("emu-{name}");
        let dir = v4l2emu::scratch_dir(&format!("service-{name}"));
        let config = dir.join("vla-rt.toml");
        std::fs::write(&config, config_text(&robot_id, port, format)).unwrap();

        let mut command = v4l2emu::emulated(BINARY, settings);
        command
            .arg("run")
            .arg("--config")
            .arg(&config)
            // A backstop: the test ends the service with SIGTERM long before this.
            .args(["--duration", "120"])
            .env("RUST_LOG", "info,zenoh=error")
            .env("V4L2EMU_VERBOSE", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });

        let session = client_session(port);
        let (command_tx, commands) = crossbeam::channel::unbounded();
        let command_subscriber = session
            .declare_subscriber(format!("vla/{robot_id}/cmd"))
            .callback(move |sample| {
                let _ = command_tx.send(sample.payload().to_bytes().to_vec());
            })
            .wait()
            .unwrap();
        let (status_tx, statuses) = crossbeam::channel::unbounded();
        let status_subscriber = session
            .declare_subscriber(format!("vla/{robot_id}/status"))
            .callback(move |sample| {
                let bytes = sample.payload().to_bytes();
                let value = serde_json::from_slice(&bytes)
                    .unwrap_or_else(|e| serde_json::json!({ "undecodable": e.to_string() }));
                let _ = status_tx.send(value);
            })
            .wait()
            .unwrap();
        Self {
            child,
            stderr: Some(stderr),
            commands,
            statuses,
            _command_subscriber: command_subscriber,
            _status_subscriber: status_subscriber,
            session: Some(session),
            robot_id,
            status_log: Vec::new(),
            _guard: guard,
        }
    }

    /// The next command, checked on the wire.
    fn next(&self, timeout: Duration) -> CommandRecord {
        match self.commands.recv_timeout(timeout) {
            Ok(raw) => checked(&raw),
            Err(RecvTimeoutError::Timeout) => panic!("no command within {timeout:?}"),
            Err(RecvTimeoutError::Disconnected) => panic!("command subscriber gone"),
        }
    }

    /// Commands until one satisfies `wanted` (included, last); fails after `timeout`.
    fn until(
        &self,
        timeout: Duration,
        what: &str,
        wanted: impl Fn(&CommandRecord) -> bool,
    ) -> Vec<CommandRecord> {
        let deadline = Instant::now() + timeout;
        let mut seen: Vec<CommandRecord> = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.commands.recv_timeout(left) {
                Ok(raw) => {
                    let record = checked(&raw);
                    let done = wanted(&record);
                    seen.push(record);
                    if done {
                        return seen;
                    }
                }
                Err(_) => panic!(
                    "waited {timeout:?} for {what}; last (seq, state): {:?}",
                    seen.iter()
                        .rev()
                        .take(15)
                        .map(|r| (r.seq, r.state))
                        .collect::<Vec<_>>()
                ),
            }
        }
    }

    /// Puts `arm` every second until an ACT comes (an `arm` is refused while the camera is
    /// still silent, and leaving STOP takes one); returns the commands read, the ACT last.
    fn arm_until_act(&self, timeout: Duration) -> Vec<CommandRecord> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        let session = self.session.as_ref().unwrap();
        loop {
            session
                .put(format!("vla/{}/arm", self.robot_id), "arm")
                .wait()
                .unwrap();
            let round = Instant::now() + Duration::from_secs(1);
            while Instant::now() < round {
                let left = round.saturating_duration_since(Instant::now());
                if let Ok(raw) = self.commands.recv_timeout(left) {
                    let record = checked(&raw);
                    seen.push(record);
                    if record.state == ControlState::Act {
                        return seen;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no ACT within {timeout:?} of arming; last (seq, state): {:?}",
                seen.iter()
                    .rev()
                    .take(15)
                    .map(|r| (r.seq, r.state))
                    .collect::<Vec<_>>()
            );
        }
    }

    /// Everything that arrived so far, checked on the wire.
    fn drain(&self) -> Vec<CommandRecord> {
        self.commands.try_iter().map(|raw| checked(&raw)).collect()
    }

    /// Status documents until one satisfies `wanted` (returned); fails after `timeout`.
    fn status_until(
        &mut self,
        timeout: Duration,
        what: &str,
        wanted: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.statuses.recv_timeout(left) {
                Ok(document) => {
                    self.status_log.push(document.clone());
                    if wanted(&document) {
                        return document;
                    }
                }
                Err(_) => panic!(
                    "waited {timeout:?} for a status with {what}; last: {}",
                    self.status_log
                        .last()
                        .map_or("none".to_string(), |d| d.to_string())
                ),
            }
        }
    }

    /// Status documents read so far (also those not yet taken by `status_until`).
    fn statuses_so_far(&mut self) -> &[serde_json::Value] {
        let pending: Vec<_> = self.statuses.try_iter().collect();
        self.status_log.extend(pending);
        &self.status_log
    }

    /// SIGTERM, then: a final STOP, exit code 0, no panic. Returns the service's log.
    fn finish(mut self) -> String {
        // SAFETY: `kill` on the child's pid, which is still ours to signal (not yet reaped).
        let rc = unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        assert_eq!(rc, 0);
        let tail = self.until(Duration::from_secs(10), "the final STOP", |r| {
            r.state == ControlState::Stop
        });
        assert_well_formed(&tail, &limits_config());
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "vla-rt did not exit within 15 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let log = self.stderr.take().unwrap().join().unwrap();
        assert_eq!(status.code(), Some(0), "{log}");
        assert!(!log.contains("panicked"), "{log}");
        assert!(log.contains("state STOP (shutdown)"), "{log}");
        log
    }
}

impl Drop for RunningService {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(session) = self.session.take() {
            let _ = session.close().wait();
        }
    }
}

fn is(state: ControlState) -> impl Fn(&CommandRecord) -> bool {
    move |r| r.state == state
}

fn count(records: &[CommandRecord], state: ControlState) -> usize {
    records.iter().filter(|r| r.state == state).count()
}

fn acts(records: &[CommandRecord]) -> Vec<&CommandRecord> {
    records
        .iter()
        .filter(|r| r.state == ControlState::Act)
        .collect()
}

/// ACT commands carry the capture time of a new frame each: non-zero, on the Unix-epoch
/// clock of the tick (earlier, and by less than a second), strictly increasing. HOLD and
/// STOP carry none.
fn assert_capture_times_follow_the_frames(records: &[CommandRecord]) {
    let acts = acts(records);
    for act in &acts {
        assert!(act.capture_time_ns > 0, "{act:?}");
        assert!(act.capture_time_ns < act.tick_time_ns, "{act:?}");
        assert!(
            act.tick_time_ns - act.capture_time_ns < 1_000_000_000,
            "frame older than 1 s behind {act:?}"
        );
    }
    for pair in acts.windows(2) {
        assert!(
            pair[1].capture_time_ns > pair[0].capture_time_ns,
            "capture time did not advance: {pair:?}"
        );
    }
    for other in records.iter().filter(|r| r.state != ControlState::Act) {
        assert_eq!(other.capture_time_ns, 0, "{other:?}");
    }
}

/// HOLD and STOP: zero deltas, the gripper of the last ACT kept.
fn assert_still(records: &[CommandRecord], gripper: f32) {
    for record in records {
        assert_eq!(
            record.action,
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, gripper],
            "{record:?}"
        );
    }
}

fn camera(document: &serde_json::Value, counter: &str) -> u64 {
    document["camera"][counter]
        .as_u64()
        .unwrap_or_else(|| panic!("status camera.{counter} is not a count: {document}"))
}

/// Steady running: commands with seq +1 and valid CRCs, ACT after warm-up, capture times
/// that follow the frames, and a status that names the negotiated camera with no faults.
fn camera_drives_the_service(name: &str, format: &str, settings: &[(&str, &str)]) {
    let mut service = RunningService::start(name, format, settings);
    let mut records = service.until(FIRST_ACT, "the first ACT", is(ControlState::Act));
    let warm_up = records.len() - 1;
    records.extend((0..30).map(|_| service.next(NEXT_COMMAND)));
    assert_well_formed(&records, &limits_config());
    let steady = &records[warm_up..];
    let act_count = count(steady, ControlState::Act);
    assert!(
        act_count >= 20,
        "{act_count} ACT of {} after warm-up at {RATE_HZ} Hz",
        steady.len()
    );
    assert_eq!(count(steady, ControlState::Stop), 0, "{steady:?}");
    assert_capture_times_follow_the_frames(&records);

    let described = format!("{} {format} {WIDTH}x{HEIGHT}@30", v4l2emu::DEVICE);
    let first = service.status_until(NEXT_COMMAND, "camera frames", |d| {
        d["camera"]["frames"].as_u64().unwrap_or(0) > 0
    });
    assert_eq!(first["camera"]["source"], described.as_str(), "{first}");
    for counter in ["drops", "corrupt", "stalls", "reopens"] {
        assert_eq!(camera(&first, counter), 0, "{counter}: {first}");
    }
    assert_eq!(first["camera"]["failed"], false, "{first}");
    let frames = camera(&first, "frames");
    let later = service.status_until(NEXT_COMMAND, "more frames", |_| true);
    // About 30 more frames in the second between two status documents.
    let more = camera(&later, "frames") - frames;
    assert!(
        (15..=45).contains(&more),
        "{more} frames in a second: {later}"
    );
    service.finish();
}

#[test]
fn yuyv_camera_drives_the_service() {
    camera_drives_the_service("yuyv", "YUYV", &[]);
}

#[test]
fn mjpeg_camera_drives_the_service() {
    let dir = v4l2emu::scratch_dir("service-mjpeg-frames");
    v4l2emu::write_mjpeg_frames(&dir, WIDTH, HEIGHT);
    camera_drives_the_service(
        "mjpeg",
        "MJPG",
        &[("V4L2EMU_MJPEG_DIR", &dir.to_string_lossy())],
    );
}

#[test]
fn a_stall_holds_then_stops_and_acting_resumes_when_frames_return() {
    const STALL_MS: u64 = 3_000;
    let faults = format!("stall@{FAULT_FRAME}:{STALL_MS}");
    let mut service = RunningService::start("stall", "YUYV", &[("V4L2EMU_FAULTS", &faults)]);
    let warm_up = service.until(FIRST_ACT, "the first ACT", is(ControlState::Act));
    let mut records = vec![*warm_up.last().unwrap()];
    records.extend(service.until(
        Duration::from_secs(30),
        "STOP during the stall",
        is(ControlState::Stop),
    ));
    let stop_at = records.len() - 1;
    // Frames alone do not resume: STOP holds past the stall's end, until an `arm`.
    let until_frames_are_back = Instant::now() + Duration::from_millis(STALL_MS + 1_500);
    while Instant::now() < until_frames_are_back {
        records.push(service.next(NEXT_COMMAND));
    }
    assert!(
        records[stop_at..]
            .iter()
            .all(|r| r.state == ControlState::Stop),
        "STOP did not hold without an arm"
    );
    records.extend(service.arm_until_act(Duration::from_secs(10)));
    assert_well_formed(&records, &limits_config());

    let last_act_at = records[..stop_at]
        .iter()
        .rposition(|r| r.state == ControlState::Act)
        .unwrap();
    let last_act = records[last_act_at];
    let held = &records[last_act_at + 1..stop_at];
    assert!(
        !held.is_empty() && held.iter().all(|r| r.state == ControlState::Hold),
        "no HOLD between the last ACT and STOP: {:?}",
        records[last_act_at..=stop_at]
            .iter()
            .map(|r| r.state)
            .collect::<Vec<_>>()
    );
    let first_stop = records[stop_at];
    // STOP comes once the camera is silent for max_frame_age, not before: the newest frame
    // arrived after the one behind the last ACT was captured.
    assert!(
        first_stop.tick_time_ns - last_act.capture_time_ns >= MAX_FRAME_AGE_MS * 1_000_000,
        "STOP {} ms after the last ACT's frame",
        (first_stop.tick_time_ns - last_act.capture_time_ns) / 1_000_000
    );
    let stopped = &records[stop_at..records.len() - 1];
    assert!(
        stopped.iter().all(|r| r.state != ControlState::Act),
        "{stopped:?}"
    );
    assert_still(
        &records[last_act_at + 1..records.len() - 1],
        last_act.action[6],
    );
    // The delayed frame is stamped when it comes: the first ACT after the stall acts on it
    // (or a later one).
    let resumed = records.last().unwrap();
    assert!(
        resumed.capture_time_ns >= last_act.capture_time_ns + STALL_MS * 1_000_000 - 5_000_000,
        "ACT resumed on a frame {} ms after the last one before the stall",
        (resumed.capture_time_ns - last_act.capture_time_ns) / 1_000_000
    );
    assert_capture_times_follow_the_frames(&records);

    // Status: the STOP was for the silent camera, the stalls were counted, no frame was lost.
    let after = service.status_until(NEXT_COMMAND * 2, "ACT after the stall", |d| {
        d["state"] == "ACT" && d["camera"]["stalls"].as_u64().unwrap_or(0) > 0
    });
    // One stall per stall_timeout without a frame (a descheduled capture thread may merge a
    // few), not one per episode.
    let stalls = camera(&after, "stalls");
    assert!(
        (STALL_MS / STALL_TIMEOUT_MS / 2..=STALL_MS / STALL_TIMEOUT_MS + 1).contains(&stalls),
        "{stalls} stalls in {STALL_MS} ms: {after}"
    );
    assert_eq!(camera(&after, "drops"), 0, "{after}");
    assert_eq!(camera(&after, "reopens"), 0, "{after}");
    assert_eq!(after["camera"]["failed"], false, "{after}");
    let stop_reported = service
        .statuses_so_far()
        .iter()
        .any(|d| d["state"] == "STOP" && d["stop_cause"] == "camera silent");
    assert!(
        stop_reported,
        "no status with STOP (camera silent): {:?}",
        service.status_log
    );
    let log = service.finish();
    assert!(log.contains("state STOP (camera silent)"), "{log}");
}

#[test]
fn an_unplug_reopens_the_camera_and_the_service_recovers() {
    // Longer than the lag of a slow policy (max_action_age), so that ticks without a new
    // frame are certain; the reopen backoff (100, 200, 400, 800 ms) retries meanwhile.
    const ABSENT_MS: u64 = 1_000;
    let faults = format!("unplug@{FAULT_FRAME}:{ABSENT_MS}");
    let mut service = RunningService::start("unplug", "YUYV", &[("V4L2EMU_FAULTS", &faults)]);
    let warm_up = service.until(FIRST_ACT, "the first ACT", is(ControlState::Act));
    let mut records = vec![*warm_up.last().unwrap()];
    let status = service.status_until(Duration::from_secs(30), "a reopen", |d| {
        d["camera"]["reopens"].as_u64().unwrap_or(0) > 0
    });
    assert_eq!(camera(&status, "reopens"), 1, "{status}");
    assert_eq!(camera(&status, "drops"), 0, "{status}");
    assert_eq!(camera(&status, "corrupt"), 0, "{status}");
    assert_eq!(status["camera"]["failed"], false, "{status}");
    records.extend(service.drain());
    // A STOP from the silence (if it lasted max_frame_age) holds until an `arm`.
    records.extend(service.arm_until_act(Duration::from_secs(15)));
    let settling: Vec<_> = (0..10).map(|_| service.next(NEXT_COMMAND)).collect();
    records.extend(&settling);
    assert_well_formed(&records, &limits_config());
    assert_capture_times_follow_the_frames(&records);

    // The outage is the longest wait between the frames of two consecutive ACTs: the device
    // was gone for ABSENT_MS, so the first frame after the reopen is at least that much later.
    let acts = acts(&records);
    let (before, after) = acts
        .windows(2)
        .map(|pair| (*pair[0], *pair[1]))
        .max_by_key(|(a, b)| b.capture_time_ns - a.capture_time_ns)
        .unwrap();
    assert!(
        after.capture_time_ns - before.capture_time_ns >= ABSENT_MS * 1_000_000,
        "longest wait between frames acted on: {} ms",
        (after.capture_time_ns - before.capture_time_ns) / 1_000_000
    );
    let outage: Vec<CommandRecord> = records
        .iter()
        .filter(|r| r.seq > before.seq && r.seq < after.seq)
        .copied()
        .collect();
    assert!(!outage.is_empty(), "ACT went on through the unplug");
    assert_eq!(
        outage[0].state,
        ControlState::Hold,
        "the first tick without a new frame holds: {outage:?}"
    );
    assert_still(&outage, before.action[6]);
    assert!(
        count(&settling, ControlState::Act) >= 6,
        "the service did not settle back into ACT: {settling:?}"
    );

    let later = service.status_until(NEXT_COMMAND, "frames after the reopen", |_| true);
    assert!(
        camera(&later, "frames") > camera(&status, "frames"),
        "{later}"
    );
    assert_eq!(camera(&later, "reopens"), 1, "{later}");
    let log = service.finish();
    assert!(log.contains("reopened after"), "{log}");
}

#[test]
fn corrupt_mjpeg_and_gaps_are_counted_and_acting_goes_on() {
    let dir = v4l2emu::scratch_dir("service-corrupt-frames");
    v4l2emu::write_mjpeg_frames(&dir, WIDTH, HEIGHT);
    let corrupt = [FAULT_FRAME, FAULT_FRAME + 1, FAULT_FRAME + 30];
    const GAP: u64 = 3;
    let faults = format!(
        "corrupt@{},corrupt@{},gap@{}:{GAP},corrupt@{}",
        corrupt[0],
        corrupt[1],
        FAULT_FRAME + 20,
        corrupt[2]
    );
    let mut service = RunningService::start(
        "corrupt",
        "MJPG",
        &[
            ("V4L2EMU_MJPEG_DIR", &dir.to_string_lossy()),
            ("V4L2EMU_FAULTS", &faults),
        ],
    );
    let warm_up = service.until(FIRST_ACT, "the first ACT", is(ControlState::Act));
    // Every fault is behind once more frames than the last faulty one were delivered.
    let status = service.status_until(Duration::from_secs(30), "every fault passed", |d| {
        d["camera"]["frames"].as_u64().unwrap_or(0) > FAULT_FRAME + 40
    });
    assert_eq!(camera(&status, "corrupt"), corrupt.len() as u64, "{status}");
    assert_eq!(camera(&status, "drops"), GAP, "{status}");
    assert_eq!(camera(&status, "stalls"), 0, "{status}");
    assert_eq!(camera(&status, "reopens"), 0, "{status}");

    let mut records = vec![*warm_up.last().unwrap()];
    records.extend(service.drain());
    assert_well_formed(&records, &limits_config());
    assert_eq!(count(&records, ControlState::Stop), 0, "{records:?}");
    let longest_without_act = records
        .split(|r| r.state == ControlState::Act)
        .map(<[CommandRecord]>::len)
        .max()
        .unwrap();
    assert!(
        longest_without_act <= 2,
        "{longest_without_act} ticks in a row without ACT"
    );
    assert_capture_times_follow_the_frames(&records);
    service.finish();
}
