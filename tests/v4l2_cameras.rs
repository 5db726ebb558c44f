//! `vla-rt cameras` against the emulated device, and with a missing one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/v4l2emu.rs"]
mod v4l2emu;

use std::process::Command;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(30);

fn vla_rt() -> &'static str {
    env!("CARGO_BIN_EXE_vla-rt")
}

#[test]
fn cameras_lists_the_emulated_device_as_text() {
    let mut command = v4l2emu::emulated(vla_rt(), &[]);
    command.args(["cameras", "--device", v4l2emu::DEVICE]);
    let output = v4l2emu::run_bounded(command, TIMEOUT);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "/dev/video42: v4l2emu Emulated Camera (driver v4l2emu, bus platform:v4l2emu)"
    );
    for expected in [
        "    YUYV (YUYV 4:2:2)",
        "      640x480 @ 60, 30, 15 fps",
        "      320x240 @ 60, 30, 15 fps",
        "    RGB3 (24-bit RGB 8-8-8)",
        "    GREY (8-bit Greyscale)",
        "      menu: 1: Manual Mode, 3: Aperture Priority Mode",
    ] {
        assert!(
            lines.contains(&expected),
            "missing line {expected:?} in:\n{text}"
        );
    }
    let exposure = lines
        .iter()
        .find(|l| l.trim_start().starts_with("Exposure Time, Absolute"))
        .unwrap_or_else(|| panic!("no exposure control in:\n{text}"));
    assert!(
        exposure.contains("3..2047")
            && exposure.contains("value 250")
            && exposure.ends_with("(inactive)"),
        "{exposure}"
    );
    assert!(
        !text.contains("MJPG"),
        "no MJPEG frames were given:\n{text}"
    );
}

#[test]
fn cameras_json_describes_formats_sizes_rates_and_controls() {
    let dir = v4l2emu::scratch_dir("cameras-json");
    v4l2emu::write_mjpeg_frames(&dir, 160, 120);
    let mut command = v4l2emu::emulated(vla_rt(), &[("V4L2EMU_MJPEG_DIR", &dir.to_string_lossy())]);
    command.args(["cameras", "--json", "--device", v4l2emu::DEVICE]);
    let output = v4l2emu::run_bounded(command, TIMEOUT);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let document: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let device = &document["devices"][0];
    assert_eq!(device["path"], "/dev/video42");
    assert_eq!(device["driver"], "v4l2emu");
    assert_eq!(device["video_capture"], true);
    let formats: Vec<&str> = device["formats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["fourcc"].as_str().unwrap())
        .collect();
    assert_eq!(formats, ["YUYV", "RGB3", "GREY", "MJPG"]);
    let mjpeg = &device["formats"][3];
    assert_eq!(mjpeg["compressed"], true);
    assert_eq!(mjpeg["sizes"][0]["type"], "discrete");
    assert_eq!(mjpeg["sizes"][0]["width"], 160);
    assert_eq!(mjpeg["sizes"][0]["height"], 120);
    assert_eq!(mjpeg["sizes"][0]["intervals"][1]["denominator"], 30);
    let controls = device["controls"].as_array().unwrap();
    let gain = controls.iter().find(|c| c["name"] == "Gain").unwrap();
    assert_eq!(
        (
            &gain["type"],
            &gain["minimum"],
            &gain["maximum"],
            &gain["value"]
        ),
        (&"integer".into(), &0.into(), &255.into(), &32.into())
    );
    assert_eq!(controls.len(), 7);
}

#[test]
fn a_missing_device_is_one_line_naming_it_and_exit_2() {
    let started = Instant::now();
    let mut command = Command::new(vla_rt());
    command.args(["cameras", "--device", "/dev/video99"]);
    let output = v4l2emu::run_bounded(command, TIMEOUT);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("/dev/video99") && lines[0].contains("not found"),
        "{stderr}"
    );
}
