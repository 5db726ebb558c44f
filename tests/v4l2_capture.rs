//! V4L2 capture against the emulated device (tests/v4l2emu): each test re-runs itself in a
//! child process with the emulator preloaded, where the real capture code talks to
//! `/dev/video42`. A panic anywhere in the child fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/v4l2emu.rs"]
mod v4l2emu;

use std::time::{Duration, Instant};

use vla_rt::capture::v4l2::{CameraControls, V4l2Source};
use vla_rt::capture::{CaptureError, Frame, FrameSource};
use vla_rt::config::{AutoKeyword, CameraConfig, ControlValue};

const CHILD_TIMEOUT: Duration = Duration::from_secs(60);

fn camera(format: &str, width: u32, height: u32, fps: u32) -> CameraConfig {
    CameraConfig {
        source: v4l2emu::DEVICE.into(),
        width,
        height,
        fps,
        format: format.into(),
        stall_timeout_ms: 500,
        ..CameraConfig::default()
    }
}

fn started(config: &CameraConfig) -> V4l2Source {
    let _ = env_logger::builder().is_test(true).try_init();
    let mut source = V4l2Source::new(config).unwrap();
    source.start().unwrap();
    source
}

fn mjpeg_settings(name: &str, width: u32, height: u32) -> (std::path::PathBuf, String) {
    let dir = v4l2emu::scratch_dir(name);
    v4l2emu::write_mjpeg_frames(&dir, width, height);
    let text = dir.to_string_lossy().into_owned();
    (dir, text)
}

#[test]
fn yuyv_frames_match_the_generator_pattern() {
    if !v4l2emu::in_child() {
        return v4l2emu::run_test_in_child(
            "yuyv_frames_match_the_generator_pattern",
            &[],
            CHILD_TIMEOUT,
        );
    }
    let mut source = started(&camera("YUYV", 320, 240, 30));
    assert_eq!(source.describe(), "/dev/video42 YUYV 320x240@30");
    let mut frame = Frame::default();
    let mut previous_time = 0;
    for expected_sequence in 0..12 {
        source.next_frame(&mut frame).unwrap();
        assert_eq!(frame.sequence, expected_sequence);
        assert_eq!((frame.image.width, frame.image.height), (320, 240));
        v4l2emu::assert_pattern(
            &frame.image.data,
            320,
            240,
            frame.sequence,
            2,
            6,
            v4l2emu::identity,
        );
        assert!(frame.capture_time_ns > previous_time, "timestamps increase");
        previous_time = frame.capture_time_ns;
    }
    // Driver timestamps are mapped to the Unix epoch: the last frame is from just now.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    assert!(now >= frame.capture_time_ns && now - frame.capture_time_ns < 200_000_000);
    let stats = source.stats();
    assert_eq!(
        (stats.frames, stats.drops, stats.corrupt, stats.stalls),
        (12, 0, 0, 0)
    );
    source.stop();
}

#[test]
fn mjpeg_frames_decode_to_the_generator_pattern() {
    if !v4l2emu::in_child() {
        let (_dir, dir) = mjpeg_settings("mjpeg-pattern", 320, 240);
        return v4l2emu::run_test_in_child(
            "mjpeg_frames_decode_to_the_generator_pattern",
            &[("V4L2EMU_MJPEG_DIR", &dir)],
            CHILD_TIMEOUT,
        );
    }
    // `auto` prefers MJPG where it is offered at the configured size.
    let mut source = started(&camera("auto", 320, 240, 30));
    assert_eq!(source.describe(), "/dev/video42 MJPG 320x240@30");
    let mut frame = Frame::default();
    for expected_sequence in 0..12 {
        source.next_frame(&mut frame).unwrap();
        assert_eq!(frame.sequence, expected_sequence);
        v4l2emu::assert_pattern(
            &frame.image.data,
            320,
            240,
            frame.sequence,
            8,
            24,
            v4l2emu::identity,
        );
    }
    assert_eq!(source.stats().corrupt, 0);
}

#[test]
fn auto_format_falls_back_to_yuyv_at_a_size_mjpeg_lacks() {
    if !v4l2emu::in_child() {
        let (_dir, dir) = mjpeg_settings("mjpeg-fallback", 320, 240);
        return v4l2emu::run_test_in_child(
            "auto_format_falls_back_to_yuyv_at_a_size_mjpeg_lacks",
            &[("V4L2EMU_MJPEG_DIR", &dir)],
            CHILD_TIMEOUT,
        );
    }
    let source = started(&camera("auto", 640, 480, 30));
    assert_eq!(source.describe(), "/dev/video42 YUYV 640x480@30");
    drop(source);
    // No exact size anywhere: the nearest offered one.
    let source = started(&camera("YUYV", 300, 200, 30));
    assert_eq!(source.describe(), "/dev/video42 YUYV 320x240@30");
}

#[test]
fn rgb3_and_grey_frames_match_the_generator_pattern() {
    if !v4l2emu::in_child() {
        return v4l2emu::run_test_in_child(
            "rgb3_and_grey_frames_match_the_generator_pattern",
            &[],
            CHILD_TIMEOUT,
        );
    }
    let mut frame = Frame::default();
    let mut source = started(&camera("RGB3", 640, 480, 60));
    for _ in 0..3 {
        source.next_frame(&mut frame).unwrap();
        v4l2emu::assert_pattern(
            &frame.image.data,
            640,
            480,
            frame.sequence,
            0,
            0,
            v4l2emu::identity,
        );
    }
    source.stop();
    let mut source = started(&camera("GREY", 640, 480, 60));
    for _ in 0..3 {
        source.next_frame(&mut frame).unwrap();
        v4l2emu::assert_pattern(
            &frame.image.data,
            640,
            480,
            frame.sequence,
            0,
            0,
            v4l2emu::luma,
        );
    }
}

#[test]
fn frame_rate_is_near_the_negotiated_one() {
    if !v4l2emu::in_child() {
        return v4l2emu::run_test_in_child(
            "frame_rate_is_near_the_negotiated_one",
            &[],
            CHILD_TIMEOUT,
        );
    }
    let mut source = started(&camera("YUYV", 320, 240, 15));
    assert_eq!(source.describe(), "/dev/video42 YUYV 320x240@15");
    let mut frame = Frame::default();
    source.next_frame(&mut frame).unwrap();
    let first_time = frame.capture_time_ns;
    let wall = Instant::now();
    for _ in 0..15 {
        source.next_frame(&mut frame).unwrap();
    }
    let stamped_fps = 15.0 / ((frame.capture_time_ns - first_time) as f64 / 1e9);
    let wall_fps = 15.0 / wall.elapsed().as_secs_f64();
    assert!(
        (12.0..18.0).contains(&stamped_fps),
        "timestamps say {stamped_fps:.1} fps"
    );
    assert!(
        (10.0..18.0).contains(&wall_fps),
        "wall clock says {wall_fps:.1} fps"
    );
}

#[test]
fn injected_sequence_gaps_are_counted_exactly() {
    if !v4l2emu::in_child() {
        return v4l2emu::run_test_in_child(
            "injected_sequence_gaps_are_counted_exactly",
            &[("V4L2EMU_FAULTS", "gap@4:3,gap@9:1")],
            CHILD_TIMEOUT,
        );
    }
    let mut source = started(&camera("YUYV", 320, 240, 60));
    let mut frame = Frame::default();
    let mut sequences = Vec::new();
    for _ in 0..14 {
        source.next_frame(&mut frame).unwrap();
        v4l2emu::assert_pattern(
            &frame.image.data,
            320,
            240,
            frame.sequence,
            2,
            6,
            v4l2emu::identity,
        );
        sequences.push(frame.sequence);
    }
    assert_eq!(sequences, [0, 1, 2, 3, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17]);
    assert_eq!(source.stats().drops, 4);
}

#[test]
fn corrupt_mjpeg_is_skipped_and_counted() {
    if !v4l2emu::in_child() {
        let (_dir, dir) = mjpeg_settings("mjpeg-corrupt", 320, 240);
        return v4l2emu::run_test_in_child(
            "corrupt_mjpeg_is_skipped_and_counted",
            &[
                ("V4L2EMU_MJPEG_DIR", &dir),
                ("V4L2EMU_FAULTS", "corrupt@3,corrupt@4,corrupt@8"),
            ],
            CHILD_TIMEOUT,
        );
    }
    let mut source = started(&camera("MJPG", 320, 240, 60));
    let mut frame = Frame::default();
    let mut sequences = Vec::new();
    for _ in 0..10 {
        source.next_frame(&mut frame).unwrap();
        v4l2emu::assert_pattern(
            &frame.image.data,
            320,
            240,
            frame.sequence,
            8,
            24,
            v4l2emu::identity,
        );
        sequences.push(frame.sequence);
    }
    assert_eq!(sequences, [0, 1, 2, 5, 6, 7, 9, 10, 11, 12]);
    let stats = source.stats();
    assert_eq!((stats.corrupt, stats.drops, stats.frames), (3, 0, 10));
}

#[test]
fn frames_the_driver_flags_as_errors_are_skipped_and_counted() {
    if !v4l2emu::in_child() {
        return v4l2emu::run_test_in_child(
            "frames_the_driver_flags_as_errors_are_skipped_and_counted",
            &[("V4L2EMU_FAULTS", "corrupt@2")],
            CHILD_TIMEOUT,
        );
    }
    let mut source = started(&camera("YUYV", 320, 240, 60));
    let mut frame = Frame::default();
    let sequences: Vec<u64> = (0..4)
        .map(|_| {
            source.next_frame(&mut frame).unwrap();
            frame.sequence
        })
        .collect();
    assert_eq!(sequences, [0, 1, 3, 4]);
    assert_eq!(source.stats().corrupt, 1);
}

#[test]
fn a_stall_is_reported_and_recovered() {
    if !v4l2emu::in_child() {
        return v4l2emu::run_test_in_child(
            "a_stall_is_reported_and_recovered",
            &[("V4L2EMU_FAULTS", "stall@5:700")],
            CHILD_TIMEOUT,
        );
    }
    let mut config = camera("YUYV", 320, 240, 30);
    config.stall_timeout_ms = 200;
    let mut source = started(&config);
    let mut frame = Frame::default();
    let mut stalled = 0;
    let mut sequences = Vec::new();
    for _ in 0..30 {
        match source.next_frame(&mut frame) {
            Ok(()) => sequences.push(frame.sequence),
            Err(CaptureError::Stalled { waited_ms, .. }) => {
                assert!((190..400).contains(&waited_ms), "waited {waited_ms} ms");
                assert_eq!(sequences.len(), 5, "the stall comes after five frames");
                stalled += 1;
            }
            Err(other) => panic!("unexpected error: {other}"),
        }
        if sequences.len() == 10 {
            break;
        }
    }
    assert_eq!(
        sequences,
        (0..10).collect::<Vec<u64>>(),
        "recovered without losing frames"
    );
    // 700 ms without frames at a 200 ms timeout.
    assert!((2..=4).contains(&stalled), "{stalled} stalls");
    let stats = source.stats();
    assert_eq!((stats.stalls, stats.drops), (stalled, 0));
}

#[test]
fn an_unplug_gives_unplugged_then_a_reopen() {
    if !v4l2emu::in_child() {
        return v4l2emu::run_test_in_child(
            "an_unplug_gives_unplugged_then_a_reopen",
            &[("V4L2EMU_FAULTS", "unplug@5:300")],
            CHILD_TIMEOUT,
        );
    }
    let mut source = started(&camera("YUYV", 320, 240, 30));
    let mut frame = Frame::default();
    let mut sequences = Vec::new();
    let mut unplugged = 0;
    for _ in 0..40 {
        match source.next_frame(&mut frame) {
            Ok(()) => {
                // The reopened stream restarts the pattern at its first frame.
                let stream_sequence = if sequences.len() < 5 {
                    frame.sequence
                } else {
                    frame.sequence - 5
                };
                v4l2emu::assert_pattern(
                    &frame.image.data,
                    320,
                    240,
                    stream_sequence,
                    2,
                    6,
                    v4l2emu::identity,
                );
                sequences.push(frame.sequence);
            }
            Err(CaptureError::Unplugged { source_name }) => {
                assert_eq!(source_name, v4l2emu::DEVICE);
                assert_eq!(sequences.len(), 5, "unplugged after five frames");
                unplugged += 1;
            }
            Err(other) => panic!("unexpected error: {other}"),
        }
        if sequences.len() == 10 {
            break;
        }
    }
    assert_eq!(sequences, (0..10).collect::<Vec<u64>>());
    assert!(unplugged >= 1);
    let stats = source.stats();
    assert_eq!((stats.reopens, stats.drops), (1, 0));
}

#[test]
fn a_stream_io_error_is_treated_as_an_unplug() {
    if !v4l2emu::in_child() {
        return v4l2emu::run_test_in_child(
            "a_stream_io_error_is_treated_as_an_unplug",
            &[("V4L2EMU_FAULTS", "eio@3")],
            CHILD_TIMEOUT,
        );
    }
    let mut source = started(&camera("YUYV", 320, 240, 60));
    let mut frame = Frame::default();
    let mut frames = 0;
    let mut unplugged = 0;
    for _ in 0..40 {
        match source.next_frame(&mut frame) {
            Ok(()) => frames += 1,
            Err(CaptureError::Unplugged { .. }) => unplugged += 1,
            Err(other) => panic!("unexpected error: {other}"),
        }
        if frames == 6 {
            break;
        }
    }
    assert_eq!(frames, 6);
    assert!(unplugged >= 1);
    assert_eq!(source.stats().reopens, 1);
}

#[test]
fn every_fault_in_one_run_never_panics_and_is_counted() {
    if !v4l2emu::in_child() {
        let (_dir, dir) = mjpeg_settings("mjpeg-soak", 320, 240);
        return v4l2emu::run_test_in_child(
            "every_fault_in_one_run_never_panics_and_is_counted",
            &[
                ("V4L2EMU_MJPEG_DIR", &dir),
                (
                    "V4L2EMU_FAULTS",
                    "stall@10:400,unplug@20:200,corrupt@30,gap@40:3",
                ),
            ],
            CHILD_TIMEOUT,
        );
    }
    let mut config = camera("MJPG", 320, 240, 60);
    config.stall_timeout_ms = 150;
    let mut source = started(&config);
    let mut frame = Frame::default();
    let mut good = 0;
    for _ in 0..200 {
        match source.next_frame(&mut frame) {
            Ok(()) => good += 1,
            Err(e) if e.is_transient() => {}
            Err(other) => panic!("non-transient error: {other}"),
        }
        if good == 60 {
            break;
        }
    }
    let stats = source.stats();
    assert_eq!(good, 60);
    assert_eq!((stats.reopens, stats.corrupt, stats.drops), (1, 1, 3));
    assert!(stats.stalls >= 2, "{stats:?}");
}

#[test]
fn controls_are_applied_at_start_and_read_back() {
    if !v4l2emu::in_child() {
        return v4l2emu::run_test_in_child(
            "controls_are_applied_at_start_and_read_back",
            &[],
            CHILD_TIMEOUT,
        );
    }
    let mut config = camera("YUYV", 320, 240, 30);
    config.exposure = ControlValue::Manual(100);
    config.white_balance = ControlValue::Auto(AutoKeyword::Auto);
    config.gain = ControlValue::Manual(40);
    let source = started(&config);
    let controls = source.controls().unwrap();
    assert_eq!(
        controls,
        CameraControls {
            exposure_auto: Some(false),
            exposure: Some(100),
            white_balance_auto: Some(true),
            white_balance: Some(4600),
            gain_auto: Some(false),
            gain: Some(40),
        }
    );
    drop(source);

    // Locking what the camera settled on, then starting with it, keeps those values.
    let mut auto = camera("YUYV", 320, 240, 30);
    auto.exposure = ControlValue::Auto(AutoKeyword::Auto);
    auto.white_balance = ControlValue::Manual(5000);
    let source = started(&auto);
    let controls = source.controls().unwrap();
    assert_eq!(controls.exposure_auto, Some(true));
    assert_eq!(controls.white_balance, Some(5000));
    let mut locked = auto.clone();
    controls.lock_into(&mut locked);
    assert_eq!(
        locked.exposure,
        ControlValue::Manual(controls.exposure.unwrap())
    );
    drop(source);
    let relocked = started(&locked).controls().unwrap();
    assert_eq!(relocked.exposure_auto, Some(false));
    assert_eq!(relocked.exposure, controls.exposure);

    // Out of the camera's range: an error naming the key and the range.
    let mut bad = camera("YUYV", 320, 240, 30);
    bad.exposure = ControlValue::Manual(100_000);
    let mut source = V4l2Source::new(&bad).unwrap();
    let error = source.start().unwrap_err().to_string();
    assert!(
        error.contains("camera.exposure") && error.contains("3..=2047"),
        "{error}"
    );
}

#[test]
fn a_missing_device_is_reported_at_once_naming_the_path() {
    let started = Instant::now();
    let mut config = camera("auto", 640, 480, 30);
    config.source = "/dev/video99".into();
    let mut source = V4l2Source::new(&config).unwrap();
    match source.start() {
        Err(error @ CaptureError::DeviceMissing { .. }) => {
            assert!(error.to_string().contains("/dev/video99"), "{error}");
        }
        other => panic!("expected DeviceMissing, got {:?}", other.err()),
    }
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn a_node_that_is_not_v4l2_is_a_clear_error() {
    let mut config = camera("auto", 640, 480, 30);
    config.source = "/dev/null".into();
    let error = V4l2Source::new(&config).unwrap().start().unwrap_err();
    assert!(
        matches!(&error, CaptureError::Config { message, .. } if message.contains("not a V4L2 device")),
        "{error}"
    );
}
