//! Zero heap allocations per steady-state control tick, publish hand-off, inference trigger,
//! heartbeat check-ins, the fault check and systemd notification included, through every
//! state: disarmed HOLD, armed ACT paced over its action step and cut by the motion limiter,
//! e-stop STOP, re-arming. A counting global allocator counts the allocations
//! made on the control thread only (the test thread runs the loop) while the rest of the
//! service runs for real around it: synthetic capture thread, inference thread with a
//! policy, command publisher thread with a Zenoh session and a remote subscriber, and the
//! session recorder (MCAP) tapping every command and prediction.

// Test helpers fail the test by panicking, like the test functions themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/ports.rs"]
mod ports;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vla_rt::capture::thread::{CaptureThread, LatestFrame};
use vla_rt::config::{CameraConfig, SafetyConfig};
use vla_rt::control::command_record::CommandRecord;
use vla_rt::control::handoff::{CommandOutbox, ControlInputs, InferenceTrigger, ResultSlot};
use vla_rt::control::heartbeat::Supervision;
use vla_rt::control::stats::ControlStats;
use vla_rt::control::tap::CommandTap;
use vla_rt::control::tick_loop::{ControlLoop, LoopEnd, LoopLinks, LoopSettings};
use vla_rt::control::ControlState;
use vla_rt::policy::{Policy, PolicyError, Prediction, StageTimings};
use vla_rt::preprocess::RgbImage;
use vla_rt::recording::reader::Recording;
use vla_rt::recording::{RecordSettings, Recorder, SessionInfo};
use vla_rt::service::inference::{
    InferenceLinks, InferenceStats, InferenceThread, InstructionCell,
};
use vla_rt::service::notify::SystemdNotifier;
use vla_rt::transport::zenoh_io::{CommandPublisherThread, PublishStats, PublisherSettings};
use zenoh::Wait;

struct CountingAllocator;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count_one() {
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        }
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counting only
// touches const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Allocations made on this thread while `f` runs.
fn allocations_during<T>(f: impl FnOnce() -> T) -> (u64, T) {
    ALLOCATIONS.with(|n| n.set(0));
    COUNTING.with(|on| on.set(true));
    let out = f();
    COUNTING.with(|on| on.set(false));
    (ALLOCATIONS.with(|n| n.get()), out)
}

/// A policy that allocates freely (as real ones do) and can be made slow.
struct BusyPolicy {
    slow: Arc<AtomicBool>,
}

impl Policy for BusyPolicy {
    fn predict(&mut self, image: &RgbImage, instruction: &str) -> Result<Prediction, PolicyError> {
        let delay = if self.slow.load(Ordering::Relaxed) {
            30
        } else {
            0
        };
        std::thread::sleep(Duration::from_millis(delay));
        let mean =
            image.data.iter().map(|&v| f64::from(v)).sum::<f64>() / image.data.len().max(1) as f64;
        let action = vec![
            mean * 1e-4,
            instruction.len() as f64 * 1e-4,
            0.0,
            0.0,
            0.0,
            0.0,
            1.0,
        ];
        // A chunk of four steps, each a little slower than the one before.
        let actions = (0..4)
            .map(|k| action.iter().map(|v| v / f64::from(k + 1)).collect())
            .collect();
        Ok(Prediction {
            actions,
            ..Prediction::single(
                vec![31_000; 7],
                vec![0.0; 7],
                action,
                StageTimings::default(),
            )
        })
    }
    fn action_dim(&self) -> usize {
        7
    }
    fn backend_name(&self) -> &'static str {
        "test"
    }
    fn model_name(&self) -> &str {
        "busy"
    }
}

#[test]
fn steady_state_ticks_allocate_nothing() {
    let port = ports::free_port();

    let supervision = Arc::new(Supervision::new(
        vla_rt::config::ServiceConfig::builtin().watchdog_limits(),
    ));

    // Camera.
    let frames = Arc::new(LatestFrame::new());
    let camera = CameraConfig {
        width: 64,
        height: 48,
        fps: 200,
        ..CameraConfig::default()
    };
    let mut source = vla_rt::capture::open_source(&camera).unwrap();
    source.start().unwrap();
    let mut capture = CaptureThread::spawn(source, Arc::clone(&frames)).unwrap();

    // Recording.
    let recording_path =
        std::env::temp_dir().join(format!("vla-rt-alloc-{}.mcap", std::process::id()));
    let recorder = Recorder::start(
        RecordSettings {
            path: recording_path.clone(),
            max_file_bytes: 0,
            max_file_ns: 0,
            jpeg_quality: 80,
            cameras: 1,
        },
        SessionInfo {
            robot_id: "alloc".into(),
            rate_hz: 500.0,
            ..SessionInfo::default()
        },
    )
    .unwrap();

    // Policy.
    let trigger = Arc::new(InferenceTrigger::default());
    let results = Arc::new(ResultSlot::default());
    let slow = Arc::new(AtomicBool::new(false));
    let mut inference = InferenceThread::start_recorded(
        Box::new(BusyPolicy {
            slow: Arc::clone(&slow),
        }),
        InferenceLinks {
            frames: Arc::clone(&frames),
            trigger: Arc::clone(&trigger),
            results: Arc::clone(&results),
            instructions: Arc::new(InstructionCell::new("pick up the block")),
            stats: Arc::new(InferenceStats::default()),
            inputs: Arc::new(vla_rt::control::handoff::ControlInputs::default()),
            proprio: None,
            wrist: None,
            supervision: Some(Arc::clone(&supervision)),
        },
        Duration::from_secs(10),
        Some(Arc::clone(&recorder)),
    )
    .unwrap();

    // Zenoh: the service's session and publisher thread, and a subscriber in another session.
    let mut service_config = zenoh::Config::default();
    service_config
        .insert_json5("listen/endpoints", &format!("[\"tcp/127.0.0.1:{port}\"]"))
        .unwrap();
    service_config
        .insert_json5("scouting/multicast/enabled", "false")
        .unwrap();
    let session = zenoh::open(service_config).wait().unwrap();
    let mut subscriber_config = zenoh::Config::default();
    subscriber_config
        .insert_json5("connect/endpoints", &format!("[\"tcp/127.0.0.1:{port}\"]"))
        .unwrap();
    subscriber_config
        .insert_json5("scouting/multicast/enabled", "false")
        .unwrap();
    let subscriber_session = zenoh::open(subscriber_config).wait().unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let received_stop = Arc::new(AtomicBool::new(false));
    let (r, s) = (Arc::clone(&received), Arc::clone(&received_stop));
    let _subscriber = subscriber_session
        .declare_subscriber("vla/alloc/cmd")
        .callback(move |sample| {
            let record = CommandRecord::decode(&sample.payload().to_bytes()).unwrap();
            r.fetch_add(1, Ordering::Relaxed);
            if record.state == ControlState::Stop {
                s.store(true, Ordering::Relaxed);
            }
        })
        .wait()
        .unwrap();
    let outbox = Arc::new(CommandOutbox::default());
    let mut publisher = CommandPublisherThread::spawn(
        &session,
        "vla/alloc/cmd",
        Arc::clone(&outbox),
        Arc::new(PublishStats::new(0)),
        PublisherSettings {
            period_ns: 2_000_000,
            supervision: Some(Arc::clone(&supervision)),
        },
        || {},
    )
    .unwrap();

    // systemd: a manager socket with a 50 ms watchdog.
    let manager_name = format!("vla-rt-alloc-test-{}", std::process::id());
    let manager = {
        use std::os::linux::net::SocketAddrExt;
        let address =
            std::os::unix::net::SocketAddr::from_abstract_name(manager_name.as_bytes()).unwrap();
        std::os::unix::net::UnixDatagram::bind_addr(&address).unwrap()
    };
    manager.set_nonblocking(true).unwrap();
    let notifier = SystemdNotifier::connect(&format!("@{manager_name}"), Some(50_000)).unwrap();

    let inputs = Arc::new(ControlInputs::default());
    let stats = Arc::new(ControlStats::default());
    let mut control = ControlLoop::new(
        LoopSettings {
            period_ns: 2_000_000,
            // Ten ticks per action step: every ACT is a paced share of its action.
            step_ns: 20_000_000,
            max_action_age_ns: 20_000_000,
            max_frame_age_ns: 500_000_000,
            stop_after_misses: 5,
            start_armed: false,
            // Chunks of four overlap and are averaged step by step: the heaviest chunk path.
            chunks: vla_rt::control::chunk::ChunkSettings {
                overlap: vla_rt::control::chunk::ChunkOverlap::Ensemble { decay: 0.01 },
                size_threshold: 1.0,
            },
            // The default limits: the policy's 0.6 m/s is cut to 0.25 m/s by the limiter,
            // inside a workspace box it reaches.
            safety: SafetyConfig {
                workspace_min: Some([-0.05, -0.05, -0.05]),
                workspace_max: Some([0.05, 0.05, 0.05]),
                ..SafetyConfig::default()
            },
        },
        LoopLinks {
            frames: frames.clone(),
            results,
            trigger,
            outbox: Arc::clone(&outbox),
            inputs: Arc::clone(&inputs),
            stats: Arc::clone(&stats),
            termination_requested: vla_rt::service::signals::termination_requested,
        },
    )
    .with_notifier(Some(Box::new(notifier)))
    .with_supervision(Some(Arc::clone(&supervision)))
    .with_command_tap(Some(Arc::clone(&recorder) as Arc<dyn CommandTap>));

    // Warm-up: first ticks may touch lazily initialised state (thread-locals, futex queues),
    // disarmed (HOLD), then armed (ACT).
    assert_eq!(control.run(Some(50)), LoopEnd::BudgetSpent);
    inputs.request_arm();
    assert_eq!(control.run(Some(50)), LoopEnd::BudgetSpent);

    // Steady state through every state: paced and limited ACT, e-stop STOP, re-arming,
    // HOLD/STOP from a slow policy (30 ms against 20 ms steps), disarmed HOLD.
    let disturber = {
        let inputs = Arc::clone(&inputs);
        let slow = Arc::clone(&slow);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            inputs.request_estop();
            std::thread::sleep(Duration::from_millis(100));
            inputs.release_estop();
            std::thread::sleep(Duration::from_millis(50));
            inputs.request_arm();
            std::thread::sleep(Duration::from_millis(150));
            slow.store(true, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(150));
            slow.store(false, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(50));
            inputs.request_arm();
            std::thread::sleep(Duration::from_millis(100));
            inputs.request_disarm();
        })
    };
    let acts_before = stats.act_ticks.load(Ordering::Relaxed);
    let stops_before = stats.stop_ticks.load(Ordering::Relaxed);
    let holds_before = stats.hold_ticks.load(Ordering::Relaxed);
    let limited_before = stats.limited.load(Ordering::Relaxed);
    let (allocations, end) = allocations_during(|| control.run(Some(500)));
    disturber.join().unwrap();
    assert_eq!(end, LoopEnd::BudgetSpent);
    assert_eq!(
        allocations, 0,
        "the control thread allocated {allocations} times in 500 ticks"
    );
    assert!(stats.act_ticks.load(Ordering::Relaxed) > acts_before);
    assert!(stats.stop_ticks.load(Ordering::Relaxed) > stops_before);
    assert!(stats.hold_ticks.load(Ordering::Relaxed) > holds_before);
    assert!(stats.limited.load(Ordering::Relaxed) > limited_before);
    assert!(stats.misses.load(Ordering::Relaxed) > 0);

    // The shutdown tick (final STOP) allocates nothing either.
    inputs.request_shutdown();
    let (allocations, end) = allocations_during(|| control.run(None));
    assert_eq!(end, LoopEnd::Stopped);
    assert_eq!(allocations, 0);

    publisher.join();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while received.load(Ordering::Relaxed) < 500 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        received.load(Ordering::Relaxed) >= 500,
        "subscriber got {} commands",
        received.load(Ordering::Relaxed)
    );
    assert!(received_stop.load(Ordering::Relaxed));
    // READY=1 and a STATUS= line once a second (WATCHDOG=1 is not the control thread's).
    let mut buffer = [0u8; 256];
    let mut messages = Vec::new();
    while let Ok(n) = manager.recv(&mut buffer) {
        messages.push(String::from_utf8_lossy(&buffer[..n]).into_owned());
    }
    assert_eq!(messages.first().map(String::as_str), Some("READY=1"));
    assert!(
        messages.iter().filter(|m| m.starts_with("STATUS=")).count() >= 1,
        "{messages:?}"
    );
    // The control thread checked in through every tick; no fault was seen.
    assert!(!supervision.has_fault());
    assert!(supervision.control_silence_ns(vla_rt::control::clock::monotonic_ns()) < 1_000_000_000);

    inference.stop();
    capture.stop();

    // Every command reached the recording: none was dropped on the way.
    recorder.finish();
    let record_stats = recorder.stats();
    assert_eq!(record_stats.error(), None);
    assert_eq!(record_stats.dropped.load(Ordering::Relaxed), 0);
    let recording = Recording::read(&recording_path).unwrap();
    assert_eq!(recording.damage, None);
    let seqs: Vec<u64> = recording.commands.iter().map(|c| c.seq).collect();
    assert_eq!(seqs, (0..control.commands_sent()).collect::<Vec<_>>());
    assert!(!recording.steps.is_empty());
    assert!(recording.steps.iter().all(|s| s.input_png.is_some()));
    std::fs::remove_file(&recording_path).unwrap();

    session.close().wait().unwrap();
    subscriber_session.close().wait().unwrap();
}

/// The ROS 2 side of the publisher thread (ARCHITECTURE.md §15): turning a record into its
/// TwistStamped and Float64MultiArray, attachment sequence included, writes into buffers
/// sized at start and allocates nothing, through ACT, HOLD and STOP records.
#[test]
fn the_ros2_conversion_of_a_record_allocates_nothing() {
    use vla_rt::control::command_record::RECORD_LEN;
    use vla_rt::ros2::Ros2Node;

    let mut config = vla_rt::config::ServiceConfig::builtin();
    config.robot_id = "alloc".into();
    config.ros2.enabled = true;
    config.ros2.frame_id = "a_rather_long_frame_name_for_the_twist".into();
    config.validate("test config").unwrap();
    let mut zenoh_config = zenoh::Config::default();
    zenoh_config.insert_json5("listen/endpoints", "[]").unwrap();
    zenoh_config
        .insert_json5("scouting/multicast/enabled", "false")
        .unwrap();
    let session = zenoh::open(zenoh_config).wait().unwrap();
    let node = Ros2Node::declare(
        &session,
        &config,
        Arc::new(ControlInputs::default()),
        Arc::new(InstructionCell::new("pick up the block")),
        None,
    )
    .unwrap();
    let mut publisher = node.command_publisher(&session, 2_000_000).unwrap();
    let records: Vec<[u8; RECORD_LEN]> = (0..300u64)
        .map(|seq| {
            let state = match seq % 3 {
                0 => ControlState::Act,
                1 => ControlState::Hold,
                _ => ControlState::Stop,
            };
            let mut bytes = [0u8; RECORD_LEN];
            CommandRecord {
                state,
                seq,
                tick_time_ns: 1_790_000_000_000_000_000 + seq * 2_000_000,
                capture_time_ns: 0,
                action: [0.001, -0.002, 0.0, 0.01, 0.0, -0.01, 0.5],
            }
            .encode(&mut bytes);
            bytes
        })
        .collect();
    // Warm-up.
    assert!(publisher.encode(&records[0]).is_some());
    let (allocations, encoded) = allocations_during(|| {
        records
            .iter()
            .filter_map(|record| publisher.encode(record))
            .count()
    });
    assert_eq!(encoded, records.len());
    assert_eq!(
        allocations,
        0,
        "the ROS 2 conversion allocated {allocations} times for {} records",
        records.len()
    );
    node.undeclare();
    drop(publisher);
    session.close().wait().unwrap();
}
