//! `vla-calib` on the emulated V4L2 camera (tests/v4l2emu, preloaded into the real binary):
//! automatic exposure, white balance and gain are turned on, then locked to the values read
//! back from the camera, and the frames are captured with the locked settings.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use common::{bundled_model, run_bounded, scratch_dir, text, workspace, VLA_CALIB};
use vla_rt::calibration::Calibration;
use vla_rt::config::ControlValue;

const DEVICE: &str = "/dev/video42";

/// The emulator library, compiled once with the flags its README gives.
fn emulator() -> &'static Path {
    static LIBRARY: OnceLock<PathBuf> = OnceLock::new();
    LIBRARY.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("calib-v4l2emu");
        std::fs::create_dir_all(&dir).unwrap();
        let library = dir.join(format!("libv4l2emu.{}.so", std::process::id()));
        let compiler = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let mut command = Command::new(&compiler);
        command
            .args([
                "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror", "-o",
            ])
            .arg(&library)
            .arg(workspace().join("tests/v4l2emu/v4l2emu.c"))
            .args(["-ldl", "-lpthread"]);
        let output = run_bounded(command, Duration::from_secs(120));
        assert!(
            output.status.success(),
            "building the V4L2 emulator failed:\n{}",
            text(&output.stderr)
        );
        library
    })
}

#[test]
fn emulated_camera_controls_are_locked_to_the_read_back_values() {
    let dir = scratch_dir("calib-v4l2emu");
    let out = dir.join("camera.toml");
    let mut command = Command::new(VLA_CALIB);
    command
        .env("LD_PRELOAD", emulator())
        .env("V4L2EMU_PATH", DEVICE)
        .env_remove("V4L2EMU_FAULTS")
        .env_remove("V4L2EMU_MJPEG_DIR")
        .env("RUST_LOG", "info")
        .args(["--camera", DEVICE, "--out"])
        .arg(&out)
        .args(["--frames", "6", "--settle-seconds", "0.5"])
        .args([
            "--width", "320", "--height", "240", "--fps", "30", "--format", "YUYV",
        ]);
    let output = run_bounded(command, Duration::from_secs(120));
    let stderr = text(&output.stderr);
    let stdout = text(&output.stdout);
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );

    // What the camera offered was listed before choosing.
    assert!(
        stderr.contains(
            "v4l2emu Emulated Camera (v4l2emu) offers YUYV 640x480 320x240 @ 60/30/15 fps"
        ),
        "{stderr}"
    );
    // The automatic modes ran while settling, and were off once locked.
    assert!(
        stderr.contains("exposure 250 (auto), white balance 4600 (auto), gain 32 (auto)"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "locked: exposure 250 (manual), white balance 4600 (manual), gain 32 (manual)"
        ),
        "{stderr}"
    );

    let calibration = Calibration::load(&out, &bundled_model()).unwrap();
    let camera = &calibration.camera;
    assert_eq!(camera.source, DEVICE);
    assert_eq!(camera.format, "YUYV");
    assert_eq!((camera.width, camera.height, camera.fps), (320, 240, 30));
    // The emulator's documented control values (tests/v4l2emu/README.md).
    assert_eq!(camera.exposure, ControlValue::Manual(250));
    assert_eq!(camera.white_balance, ControlValue::Manual(4600));
    assert_eq!(camera.gain, ControlValue::Manual(32));
    assert_eq!(
        calibration.camera_description,
        "/dev/video42 YUYV 320x240@30"
    );
    assert_eq!(calibration.frames, 6);
    // The emulator's frames carry sequence numbers from 0 at each stream start: the measured
    // frames are those of the second, locked stream.
    assert_eq!(calibration.contact_sheet_frames, vec![0, 1, 2, 3, 4, 5]);
    assert!(dir.join("camera.png").is_file());
    assert!(stdout.contains("locked exposure 250 (manual)"), "{stdout}");
}
