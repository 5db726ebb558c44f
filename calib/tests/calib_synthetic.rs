//! `vla-calib` on the synthetic camera, end to end with the real binaries: the calibration it
//! writes loads and is applied by `vla-rt run`, its contact sheet holds exactly the frames the
//! model sees, and a tampered, other-model or malformed calibration is refused with exit 2.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use common::{assert_bad_input, bundled_model, run_bounded, scratch_dir, text, VLA_CALIB};
use vla_rt::calibration::Calibration;
use vla_rt::capture::synthetic::SyntheticSource;
use vla_rt::capture::{Frame, FrameSource};
use vla_rt::config::{CameraConfig, ControlValue};
use vla_rt::preprocess::Preprocessor;

const FRAMES: u32 = 12;
const TIMEOUT: Duration = Duration::from_secs(120);
/// The contact sheet's layout (ARCHITECTURE.md §11 leaves it to the tool; these are its constants):
/// 224-pixel tiles, 4 columns, 4 pixels of background around and between them.
const TILE: u32 = 224;
const GAP: u32 = 4;
const COLUMNS: u32 = 4;

struct Calibrated {
    dir: PathBuf,
    toml: PathBuf,
    stdout: String,
}

/// One synthetic calibration, made once for the tests of this binary.
fn calibrated() -> &'static Calibrated {
    static CALIBRATED: OnceLock<Calibrated> = OnceLock::new();
    CALIBRATED.get_or_init(|| {
        let dir = scratch_dir("calib-synthetic");
        let toml = dir.join("calibration.toml");
        let mut command = Command::new(VLA_CALIB);
        command
            .args(["--camera", "synthetic", "--out"])
            .arg(&toml)
            .args(["--frames", &FRAMES.to_string()])
            .args(["--width", "320", "--height", "240", "--fps", "60"]);
        let output = run_bounded(command, TIMEOUT);
        assert!(
            output.status.success(),
            "vla-calib failed:\nstdout:\n{}\nstderr:\n{}",
            text(&output.stdout),
            text(&output.stderr)
        );
        Calibrated {
            dir,
            toml,
            stdout: text(&output.stdout),
        }
    })
}

#[test]
fn calibration_file_describes_the_run() {
    let made = calibrated();
    let calibration = Calibration::load(&made.toml, &bundled_model()).unwrap();
    assert_eq!(calibration.frames, FRAMES);
    assert_eq!(calibration.contact_sheet, "calibration.png");
    let camera = &calibration.camera;
    assert_eq!(camera.source, "synthetic");
    assert_eq!((camera.width, camera.height, camera.fps), (320, 240, 60));
    assert_eq!(camera.exposure, ControlValue::Unset, "nothing to lock");
    assert_eq!(calibration.camera_description, "synthetic 320x240@60");

    let stages = [
        "preprocess",
        "vision",
        "projector",
        "prefill",
        "decode",
        "total",
    ];
    assert_eq!(calibration.latency.len(), stages.len());
    for stage in stages {
        let l = calibration.latency[stage];
        assert!(l.p50_ms > 0.0 && l.p50_ms <= l.p99_ms, "{stage}: {l:?}");
    }
    let total = calibration.latency["total"];
    let parts: f64 = stages[..5]
        .iter()
        .map(|s| calibration.latency[*s].p50_ms)
        .sum();
    assert!(
        (0.5 * total.p50_ms..=1.5 * total.p50_ms).contains(&parts),
        "stages do not add up to the total: {:?}",
        calibration.latency
    );

    // The recommendation cuts each 200 ms action step (the bundled checkpoint's 5 Hz) into
    // at least four ticks and picks a result up within a quarter of the p99 latency; the
    // next slower usual rate would not (unless it is the fastest offered).
    let rate = calibration.recommended_rate_hz;
    let usual = [
        200.0, 100.0, 50.0, 30.0, 25.0, 20.0, 15.0, 10.0, 5.0, 4.0, 2.0, 1.0,
    ];
    let at = usual
        .iter()
        .position(|&r| r == rate)
        .expect("an offered rate");
    let needed = (4.0 * 5.0f64).max(4000.0 / total.p99_ms);
    assert!(rate >= needed || at == 0, "{rate} Hz vs {total:?}");
    if at + 1 < usual.len() {
        assert!(usual[at + 1] < needed, "{rate} Hz vs {total:?}");
    }

    let scales = &calibration.projector_scales;
    let layers: Vec<&str> = scales.layers.iter().map(|l| l.layer.as_str()).collect();
    assert_eq!(layers, ["projector.fc1", "projector.fc2", "projector.fc3"]);
    assert_eq!(scales.frames, FRAMES as usize);
    for layer in &scales.layers {
        assert!(layer.abs_percentile > 0.0 && layer.abs_percentile <= layer.abs_max);
        assert!((layer.scale - layer.abs_percentile / 127.0).abs() <= layer.scale * 1e-6);
    }

    for needle in [
        "calibration written",
        "synthetic 320x240@60",
        "Hz recommended",
        "INT8 activation scales for 3 layers",
        "calibration.png",
    ] {
        assert!(
            made.stdout.contains(needle),
            "`{needle}` not in\n{}",
            made.stdout
        );
    }
}

#[test]
fn contact_sheet_tiles_are_the_preprocessed_frames() {
    let made = calibrated();
    let calibration = Calibration::load(&made.toml, &bundled_model()).unwrap();
    let sheet = image::open(made.dir.join(&calibration.contact_sheet))
        .unwrap()
        .to_rgb8();
    let picked = &calibration.contact_sheet_frames;
    assert_eq!(picked.len(), 8);
    assert_eq!(picked.first(), Some(&0));
    assert_eq!(picked.last(), Some(&u64::from(FRAMES - 1)));
    let rows = (picked.len() as u32).div_ceil(COLUMNS);
    assert_eq!(
        sheet.dimensions(),
        (GAP + COLUMNS * (TILE + GAP), GAP + rows * (TILE + GAP))
    );

    // The synthetic camera draws frame n as a pure function of n: draw the same frames again
    // and resize them as the policy does.
    let camera = CameraConfig {
        width: 320,
        height: 240,
        fps: 1000,
        ..CameraConfig::default()
    };
    let mut source = SyntheticSource::new(&camera).unwrap();
    source.start().unwrap();
    let mut preprocessor =
        Preprocessor::from_config_file(&bundled_model().join("preprocessor_config.json")).unwrap();
    let mut frame = Frame::default();
    for (tile, &sequence) in picked.iter().enumerate() {
        while frame.sequence < sequence || (sequence == 0 && frame.image.data.is_empty()) {
            source.next_frame(&mut frame).unwrap();
        }
        assert_eq!(frame.sequence, sequence);
        let expected = preprocessor.resize(&frame.image).unwrap(); // [224, 224, 3]
        let (x0, y0) = (
            GAP + (tile as u32 % COLUMNS) * (TILE + GAP),
            GAP + (tile as u32 / COLUMNS) * (TILE + GAP),
        );
        let mut differing = 0;
        for y in 0..TILE {
            for x in 0..TILE {
                let at = ((y * TILE + x) * 3) as usize;
                if sheet.get_pixel(x0 + x, y0 + y).0 != expected[at..at + 3] {
                    differing += 1;
                }
            }
        }
        assert_eq!(differing, 0, "tile {tile} (frame {sequence}) differs");
    }
    source.stop();
    // Between the tiles: background, not image.
    assert_eq!(sheet.get_pixel(0, 0).0, [32, 32, 32]);
    assert_eq!(sheet.get_pixel(GAP + TILE + 1, GAP + 10).0, [32, 32, 32]);
}

fn vla_rt_run(args: &[&str], extra: &[&Path]) -> std::process::Output {
    let mut command = Command::new(common::vla_rt());
    command
        .args(args)
        .args(extra)
        .env("RUST_LOG", "info,zenoh=error");
    run_bounded(command, TIMEOUT)
}

#[test]
fn service_runs_with_the_calibration_applied() {
    let made = calibrated();
    let listen = format!("tcp/127.0.0.1:{}", common::free_port());
    let output = vla_rt_run(
        &[
            "run",
            "--duration",
            "2",
            "--zenoh-listen",
            &listen,
            "--calib",
        ],
        &[&made.toml],
    );
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let applied = format!(
        "calibration {}: applied camera synthetic 320x240@60 format auto",
        made.toml.display()
    );
    assert!(stderr.contains(&applied), "`{applied}` not in\n{stderr}");
    assert!(
        stderr.contains("camera synthetic 320x240@60, model openvla-tiny on cpu"),
        "the service did not open the calibrated camera mode:\n{stderr}"
    );
    let commands: u64 = stderr
        .lines()
        .find_map(|l| l.split("stopped after ").nth(1))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no command count in\n{stderr}"));
    assert!(commands >= 10, "{commands} commands in 2 s at 10 Hz");
}

#[test]
fn tampered_calibration_is_refused() {
    let made = calibrated();
    let original = std::fs::read_to_string(&made.toml).unwrap();
    let dir = scratch_dir("calib-tampered");
    for (from, to) in [
        ("width = 320", "width = 640"),
        ("frames = 12", "frames = 99"),
    ] {
        let edited = original.replacen(from, to, 1);
        assert_ne!(edited, original, "`{from}` not in the calibration");
        let path = dir.join("calibration.toml");
        std::fs::write(&path, edited).unwrap();
        let output = vla_rt_run(&["run", "--duration", "1", "--calib"], &[&path]);
        assert_bad_input(
            "vla-rt",
            &output,
            &[&path.display().to_string(), "checksum mismatch"],
        );
    }
}

#[test]
fn calibration_for_another_model_is_refused() {
    let made = calibrated();
    let dir = scratch_dir("calib-other-model");
    // The same weights with a changed config.json are another model as far as the
    // calibration knows: its dimensions or statistics could differ.
    let model = dir.join("openvla-tiny-edited");
    std::fs::create_dir_all(&model).unwrap();
    for entry in std::fs::read_dir(bundled_model()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), model.join(entry.file_name())).unwrap();
    }
    let config_json = model.join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_json).unwrap()).unwrap();
    json["_name_or_path"] = serde_json::Value::String("another/openvla".into());
    std::fs::write(&config_json, serde_json::to_string_pretty(&json).unwrap()).unwrap();

    let config = dir.join("robot.toml");
    std::fs::write(
        &config,
        format!(
            "[model]\npath = \"{}\"\nunnorm_key = \"tiny_bridge\"\n[calibration]\npath = \"{}\"\n",
            model.display(),
            made.toml.display()
        ),
    )
    .unwrap();
    let output = vla_rt_run(&["run", "--duration", "1", "--config"], &[&config]);
    assert_bad_input(
        "vla-rt",
        &output,
        &[
            &made.toml.display().to_string(),
            "made for another model",
            &model.display().to_string(),
        ],
    );
}

#[test]
fn malformed_or_foreign_calibration_is_refused() {
    let dir = scratch_dir("calib-malformed");
    let cases = [
        ("garbage.toml", "this is = = not toml\n", "calibration"),
        (
            "service.toml",
            "robot_id = \"arm0\"\n[control]\nrate_hz = 5.0\n",
            "not a calibration file",
        ),
        (
            "later.toml",
            "format = \"vla-rt-calibration\"\nversion = 7\n",
            "version",
        ),
    ];
    for (name, content, needle) in cases {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        let output = vla_rt_run(&["run", "--duration", "1", "--calib"], &[&path]);
        assert_bad_input("vla-rt", &output, &[&path.display().to_string(), needle]);
    }
}

fn vla_calib(args: &[&str]) -> std::process::Output {
    let mut command = Command::new(VLA_CALIB);
    command.args(args);
    run_bounded(command, TIMEOUT)
}

#[test]
fn bad_input_to_the_tool_exits_2_naming_it() {
    let dir = scratch_dir("calib-bad-input");
    let out = dir.join("c.toml");
    let out = out.to_str().unwrap();
    assert_bad_input(
        "vla-calib",
        &vla_calib(&[
            "--camera",
            "/dev/video99",
            "--out",
            out,
            "--settle-seconds",
            "0",
        ]),
        &["/dev/video99", "not found"],
    );
    assert_bad_input(
        "vla-calib",
        &vla_calib(&["--camera", "webcam", "--out", out]),
        &["camera.source", "webcam"],
    );
    assert_bad_input(
        "vla-calib",
        &vla_calib(&[
            "--camera",
            "synthetic",
            "--model",
            "/nonexistent/model",
            "--out",
            out,
        ]),
        &["/nonexistent/model", "no such checkpoint folder"],
    );
    let empty_model = dir.join("empty-model");
    std::fs::create_dir_all(&empty_model).unwrap();
    assert_bad_input(
        "vla-calib",
        &vla_calib(&[
            "--camera",
            "synthetic",
            "--model",
            empty_model.to_str().unwrap(),
            "--out",
            out,
        ]),
        &[empty_model.to_str().unwrap()],
    );
    assert_bad_input(
        "vla-calib",
        &vla_calib(&[
            "--camera",
            "synthetic",
            "--out",
            "/nonexistent/folder/c.toml",
        ]),
        &["--out /nonexistent/folder/c.toml", "does not exist"],
    );
    assert_bad_input(
        "vla-calib",
        &vla_calib(&["--camera", "synthetic", "--out", dir.to_str().unwrap()]),
        &["is a folder"],
    );
    assert!(!Path::new(out).exists(), "nothing written on bad input");
    let usage = vla_calib(&["--camera", "synthetic"]);
    assert_eq!(usage.status.code(), Some(2), "{}", text(&usage.stderr));
    assert!(text(&usage.stderr).contains("--out"));
}

#[test]
fn service_config_calibration_gives_the_int8_projector_its_scales() {
    let dir = scratch_dir("calib-config");
    let port = common::free_port();
    let config = dir.join("robot.toml");
    std::fs::write(
        &config,
        format!(
            "[model]\npath = \"{}\"\nunnorm_key = \"tiny_bridge\"\nprojector = \"int8\"\n\
             [camera]\nwidth = 160\nheight = 120\nfps = 30\n\
             [control]\nrate_hz = 500.0\nrealtime = \"off\"\nestop_missing = \"released\"\nstate_dir = \"state\"\n\
             [zenoh]\nlisten = [\"tcp/127.0.0.1:{port}\"]\n\
             [calibration]\npath = \"calibration.toml\"\n",
            bundled_model().display()
        ),
    )
    .unwrap();
    let out = dir.join("calibration.toml");
    let mut command = Command::new(VLA_CALIB);
    command
        .arg("--config")
        .arg(&config)
        .args(["--camera", "synthetic", "--frames", "6", "--out"])
        .arg(&out);
    let output = run_bounded(command, TIMEOUT);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let calibration = Calibration::load(&out, &bundled_model()).unwrap();
    assert_eq!(
        calibration.projector,
        vla_rt::policy::ProjectorFormat::Int8,
        "latency measured with the configured projector"
    );
    let camera = &calibration.camera;
    assert_eq!((camera.width, camera.height, camera.fps), (160, 120, 30));

    // The config names the calibration (relative to its folder); the service applies it.
    let output = vla_rt_run(&["run", "--duration", "2", "--config"], &[&config]);
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    for needle in [
        "applied camera synthetic 160x120@30",
        "projector W8A8 with calibrated activation scales (3 layers)",
        "control.rate_hz = 500 is above the calibrated",
    ] {
        assert!(stderr.contains(needle), "`{needle}` not in\n{stderr}");
    }
}
