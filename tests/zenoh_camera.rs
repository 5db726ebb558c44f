//! The Zenoh camera (`[camera] source = "zenoh:<key>"`) against a publisher in the test:
//! frame records in JPEG and RGB8 arrive with their capture time; corrupt JPEG, frames of
//! the wrong size, wrong lengths and foreign payloads are skipped and counted as corrupt;
//! sequence gaps count as drops; silence is a stall. In the service, a camera that stalls
//! or sends only corrupt frames HOLDs then STOPs the arm, as a V4L2 one does, and ACT
//! resumes when frames return. Every wait is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod service_support;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use service_support::*;
use vla_rt::capture::zenoh_source::{FrameFormat, FrameHeader, ZenohSource};
use vla_rt::capture::{CaptureError, Frame, FrameSource};
use vla_rt::config::{CameraConfig, ZenohConfig};
use vla_rt::control::ControlState;
use vla_rt::policy::Policy;
use vla_rt::service::{Service, ServiceOptions};
use zenoh::Wait;

const WIDTH: u32 = 64;
const HEIGHT: u32 = 48;
const STALL_TIMEOUT_MS: u64 = 300;

fn jpeg(width: u32, height: u32, value: u8) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95)
        .encode(
            &vec![value; (width * height * 3) as usize],
            width,
            height,
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
    out
}

fn record(format: FrameFormat, size: (u32, u32), time: u64, seq: u64, image: &[u8]) -> Vec<u8> {
    FrameHeader {
        format,
        width: size.0,
        height: size.1,
        capture_time_ns: time,
        sequence: seq,
    }
    .encode(image)
}

fn camera(key: &str) -> CameraConfig {
    CameraConfig {
        source: format!("zenoh:{key}"),
        width: WIDTH,
        height: HEIGHT,
        stall_timeout_ms: STALL_TIMEOUT_MS,
        ..CameraConfig::default()
    }
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// The source on its own session (listening on a free port) and a publisher connected to
/// it, with the subscription known to the publisher (a first frame went through).
fn connected_source(key: &str) -> (ZenohSource, zenoh::Session, u64) {
    let port = free_port();
    let zenoh_config = ZenohConfig {
        listen: Some(vec![format!("tcp/127.0.0.1:{port}")]),
        ..ZenohConfig::default()
    };
    let mut source = ZenohSource::new(&camera(key), &zenoh_config).unwrap();
    source.start().unwrap();
    let mut frame = Frame::default();
    // Without an attached session, the first call opens the source's own; nobody publishes.
    let error = source.next_frame(&mut frame).unwrap_err();
    assert!(matches!(error, CaptureError::Stalled { .. }), "{error}");
    let publisher = client_session(port);
    let good = jpeg(WIDTH, HEIGHT, 128);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seq = 0;
    loop {
        publisher
            .put(
                key,
                record(FrameFormat::Jpeg, (WIDTH, HEIGHT), 1, seq, &good),
            )
            .wait()
            .unwrap();
        seq += 1;
        match source.next_frame(&mut frame) {
            Ok(()) => break,
            Err(CaptureError::Stalled { .. }) if Instant::now() < deadline => continue,
            Err(e) => panic!("no first frame: {e}"),
        }
    }
    (source, publisher, seq)
}

#[test]
fn frames_arrive_with_their_time_and_bad_ones_are_counted_like_v4l2() {
    let key = "test/zcam/frames";
    let (mut source, publisher, mut seq) = connected_source(key);
    let put = |payload: Vec<u8>| publisher.put(key, payload).wait().unwrap();
    let mut frame = Frame::default();
    let base = source.stats();
    assert_eq!(base.corrupt, 0);
    assert!(source.describe().starts_with("zenoh:test/zcam/frames"));

    // A JPEG frame: decoded, with the publisher's capture time.
    put(record(
        FrameFormat::Jpeg,
        (WIDTH, HEIGHT),
        1_700_000_000_123_456_789,
        seq,
        &jpeg(WIDTH, HEIGHT, 200),
    ));
    seq += 1;
    source.next_frame(&mut frame).unwrap();
    assert_eq!(frame.capture_time_ns, 1_700_000_000_123_456_789);
    assert_eq!((frame.image.width, frame.image.height), (WIDTH, HEIGHT));
    assert_eq!(frame.image.data.len(), (WIDTH * HEIGHT * 3) as usize);
    assert!(frame.image.data.iter().all(|&v| v.abs_diff(200) <= 3));
    let first_sequence = frame.sequence;

    // Each fault is skipped and counted; the good RGB8 frame after it is returned.
    let good_jpeg = jpeg(WIDTH, HEIGHT, 90);
    let faults: Vec<(&str, Vec<u8>)> = vec![
        (
            "truncated JPEG",
            record(
                FrameFormat::Jpeg,
                (WIDTH, HEIGHT),
                5,
                0,
                &good_jpeg[..good_jpeg.len() / 2],
            ),
        ),
        (
            "JPEG of another size",
            record(FrameFormat::Jpeg, (32, 24), 5, 0, &jpeg(32, 24, 90)),
        ),
        (
            "header and JPEG disagree on the size",
            record(FrameFormat::Jpeg, (WIDTH, HEIGHT), 5, 0, &jpeg(32, 24, 90)),
        ),
        (
            "RGB8 of another size",
            record(FrameFormat::Rgb8, (32, 24), 5, 0, &[1; 32 * 24 * 3]),
        ),
        (
            "RGB8 one byte short",
            record(
                FrameFormat::Rgb8,
                (WIDTH, HEIGHT),
                5,
                0,
                &vec![1; (WIDTH * HEIGHT * 3 - 1) as usize],
            ),
        ),
        ("not a frame record", b"hello camera".to_vec()),
    ];
    for (index, (what, mut payload)) in faults.into_iter().enumerate() {
        if payload.starts_with(b"VLAF") {
            payload[24..32].copy_from_slice(&seq.to_le_bytes());
            seq += 1;
        }
        put(payload);
        // Let the bad frame be read before the good one replaces it in the ring of one.
        let error = source.next_frame(&mut frame).unwrap_err();
        assert!(
            matches!(error, CaptureError::Corrupt { .. }),
            "{what}: {error}"
        );
        assert_eq!(
            source.stats().corrupt,
            base.corrupt + index as u64 + 1,
            "{what}"
        );
        assert_eq!(
            source.stats().stalls,
            base.stalls,
            "{what}: a corrupt wait is no stall"
        );
        put(record(
            FrameFormat::Rgb8,
            (WIDTH, HEIGHT),
            1_000 + index as u64,
            seq,
            &vec![index as u8; (WIDTH * HEIGHT * 3) as usize],
        ));
        seq += 1;
        source.next_frame(&mut frame).unwrap();
        assert_eq!(frame.capture_time_ns, 1_000 + index as u64, "{what}");
        assert!(frame.image.data.iter().all(|&v| v == index as u8), "{what}");
    }
    // Corrupt frames are not drops: every sequence number arrived (five fault frames carried
    // one, the foreign payload none, and six good frames).
    assert_eq!(source.stats().drops, base.drops);
    assert_eq!(frame.sequence, first_sequence + 11);

    // Three frames the publisher sent but the camera never got: drops.
    seq += 3;
    put(record(
        FrameFormat::Rgb8,
        (WIDTH, HEIGHT),
        0,
        seq,
        &vec![7; (WIDTH * HEIGHT * 3) as usize],
    ));
    let before = now_ns();
    source.next_frame(&mut frame).unwrap();
    assert_eq!(source.stats().drops, base.drops + 3);
    assert_eq!(frame.sequence, first_sequence + 15);
    // Capture time 0: stamped on arrival.
    assert!(frame.capture_time_ns + 1_000_000_000 >= before && frame.capture_time_ns <= now_ns());

    // Silence: a stall after stall_timeout_ms.
    let waited = Instant::now();
    let error = source.next_frame(&mut frame).unwrap_err();
    assert!(matches!(error, CaptureError::Stalled { .. }), "{error}");
    assert!(waited.elapsed() >= Duration::from_millis(STALL_TIMEOUT_MS));
    assert_eq!(source.stats().stalls, base.stalls + 1);

    source.stop();
    publisher.close().wait().unwrap();
}

/// Publishes frames on `key` at 50 Hz from a thread: good JPEG at `brightness`, or corrupt
/// ones, or nothing, as the test asks.
struct TestCamera {
    mode: Arc<AtomicU8>,
    brightness: Arc<AtomicU8>,
    last_capture_ns: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

const GOOD: u8 = 0;
const CORRUPT: u8 = 1;
const SILENT: u8 = 2;

impl TestCamera {
    /// Publishes from a thread that connects to the service at `port` once it listens.
    fn start(port: u16, key: String) -> Self {
        let mode = Arc::new(AtomicU8::new(GOOD));
        let brightness = Arc::new(AtomicU8::new(100));
        let last_capture_ns = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let (mode, brightness, last, stop) = (
                Arc::clone(&mode),
                Arc::clone(&brightness),
                Arc::clone(&last_capture_ns),
                Arc::clone(&stop),
            );
            std::thread::spawn(move || {
                let session = session_when_listening(port);
                let mut seq = 0u64;
                while !stop.load(Ordering::Acquire) {
                    let capture = now_ns();
                    let value = brightness.load(Ordering::Relaxed);
                    let payload = match mode.load(Ordering::Acquire) {
                        GOOD => Some(jpeg(WIDTH, HEIGHT, value)),
                        CORRUPT => {
                            let good = jpeg(WIDTH, HEIGHT, value);
                            Some(good[..good.len() - 40].to_vec())
                        }
                        _ => None,
                    };
                    if let Some(image) = payload {
                        let payload =
                            record(FrameFormat::Jpeg, (WIDTH, HEIGHT), capture, seq, &image);
                        seq += 1;
                        session.put(&key, payload).wait().unwrap();
                        if mode.load(Ordering::Acquire) == GOOD {
                            last.store(capture, Ordering::Release);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                session.close().wait().unwrap();
            })
        };
        Self {
            mode,
            brightness,
            last_capture_ns,
            stop,
            handle: Some(handle),
        }
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::Release);
    }
}

impl Drop for TestCamera {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(handle) = self.handle.take() {
            handle.join().unwrap();
        }
    }
}

/// Status documents of `vla/<robot>/status`.
fn status_until(
    receiver: &crossbeam::channel::Receiver<serde_json::Value>,
    timeout: Duration,
    what: &str,
    wanted: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    let mut last = serde_json::Value::Null;
    while let Ok(document) =
        receiver.recv_timeout(deadline.saturating_duration_since(Instant::now()))
    {
        if wanted(&document) {
            return document;
        }
        last = document;
    }
    panic!("waited {timeout:?} for {what}; last status: {last}");
}

#[test]
fn the_service_acts_on_zenoh_frames_and_stops_when_they_stall_or_are_corrupt() {
    let port = free_port();
    let robot = "zcam";
    let mut config = loopback_config(robot, port, 20.0);
    config.camera = camera("vla/zcam/camera");
    config.control.max_frame_age_ms = 500;
    config.control.stop_after_misses = 40;
    // One action step per tick and limits wide open: each ACT carries the policy's echo of
    // the frame unchanged (pacing and the motion limits have tests of their own).
    config.model.action_hz = Some(20.0);
    config.safety.max_linear_velocity = 100.0;
    config.safety.max_linear_acceleration = 1e6;
    config.safety.max_linear_jerk = 1e9;
    config.validate("test config").unwrap();
    // The service's own session: the source subscribes on it.
    let source = vla_rt::capture::open_source(&config.camera).unwrap();
    // The first frame must come within the first-frame timeout: publish from the start.
    let test_camera = TestCamera::start(port, "vla/zcam/camera".into());
    let controls = Arc::new(FakeControls::default());
    let policy_controls = Arc::clone(&controls);
    let service = Service::start(
        &config,
        source,
        move || {
            Ok(Box::new(FakePolicy {
                controls: policy_controls,
            }) as Box<dyn Policy>)
        },
        ServiceOptions::default(),
    )
    .unwrap();
    let session = client_session(port);
    let stream = CommandStream::new(&session, robot);
    let (status_tx, status_rx) = crossbeam::channel::unbounded();
    let _status = session
        .declare_subscriber(format!("vla/{robot}/status"))
        .callback(move |sample| {
            let text = sample.payload().to_bytes();
            let _ = status_tx.send(serde_json::from_slice(&text).unwrap());
        })
        .wait()
        .unwrap();
    let wait = Duration::from_secs(15);

    // Good frames: ACT on them, each command carrying the capture time of a frame sent and
    // the fake policy's echo of its brightness (dx = 0.0001 x mean pixel).
    let acts = stream.until(wait, "ACT on Zenoh frames", is_state(ControlState::Act));
    let act = acts.last().unwrap();
    assert!((act.action[0] - 0.01).abs() < 0.0005, "{act:?}");
    assert!(
        act.capture_time_ns > 0
            && act.capture_time_ns <= test_camera.last_capture_ns.load(Ordering::Acquire)
    );
    test_camera.brightness.store(200, Ordering::Relaxed);
    stream.until(wait, "ACT on the brighter frames", |r| {
        r.state == ControlState::Act && (r.action[0] - 0.02).abs() < 0.0005
    });
    let running = status_until(&status_rx, wait, "camera frames", |d| {
        d["camera"]["frames"].as_u64().unwrap_or(0) > 10
    });
    assert!(running["camera"]["source"]
        .as_str()
        .unwrap()
        .starts_with("zenoh:vla/zcam/camera"));
    assert_eq!(running["camera"]["corrupt"], 0);

    // Silence: HOLD, then STOP for the silent camera, stalls counted; ACT when frames return.
    test_camera.set(SILENT);
    let silent = stream.until(
        wait,
        "STOP while the camera is silent",
        is_state(ControlState::Stop),
    );
    assert!(
        silent.iter().any(|r| r.state == ControlState::Hold),
        "no HOLD before STOP"
    );
    let stalled = status_until(&status_rx, wait, "stalls", |d| {
        d["camera"]["stalls"].as_u64().unwrap_or(0) > 0 && d["state"] == "STOP"
    });
    assert_eq!(stalled["stop_cause"], "camera silent");
    test_camera.set(GOOD);
    // A camera that is back does not move the arm by itself: leaving STOP needs an `arm`.
    arm_until_act(&session, &stream, robot, wait);

    // Only corrupt frames: as silent as no frames, but counted as corrupt, not as stalls.
    let stalls_before = status_until(&status_rx, wait, "a status", |_| true)["camera"]["stalls"]
        .as_u64()
        .unwrap();
    test_camera.set(CORRUPT);
    stream.until(
        wait,
        "STOP while every frame is corrupt",
        is_state(ControlState::Stop),
    );
    let corrupt = status_until(&status_rx, wait, "corrupt frames", |d| {
        d["camera"]["corrupt"].as_u64().unwrap_or(0) >= 10
    });
    assert_eq!(corrupt["camera"]["stalls"].as_u64().unwrap(), stalls_before);
    test_camera.set(GOOD);
    arm_until_act(&session, &stream, robot, wait);

    service.stop();
    drop(test_camera);
    session.close().wait().unwrap();
}
