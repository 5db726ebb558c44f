//! The real `vla-rt` binary given bad input: each case ends within seconds with exit code 2
//! and one error line naming the culprit, never a panic.

// Test helpers fail the test by panicking, like the test functions themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_vla-rt");

/// Runs the binary with `args`, killing it after 30 s.
fn run(args: &[&str]) -> (Output, Duration) {
    let start = Instant::now();
    let mut child = Command::new(BINARY)
        .args(args)
        .env("RUST_LOG", "info,zenoh=error")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (child.wait_with_output().unwrap(), start.elapsed())
}

/// Exit code 2, a single `vla-rt: error:` line that contains every `needle`, no panic.
fn assert_bad_input(args: &[&str], needles: &[&str]) {
    let (output, elapsed) = run(args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(
        elapsed < Duration::from_secs(10),
        "{args:?} took {elapsed:?}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("vla-rt: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    for needle in needles {
        assert!(
            errors[0].contains(needle),
            "`{needle}` not in `{}`",
            errors[0]
        );
    }
    // Besides the error: progress lines, and the start's note on the e-stop file, which a
    // fresh checkout (no earlier run) has not written yet.
    assert!(
        stderr.lines().all(|l| l.starts_with("vla-rt: error:")
            || l.contains(" INFO ")
            || (l.contains(" WARN ") && l.contains("e-stop state"))),
        "unexpected output: {stderr}"
    );
}

fn temp_file(name: &str, text: &str) -> String {
    let path = std::env::temp_dir().join(format!("vla-rt-{}-{name}", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn invalid_config_names_the_key() {
    let path = temp_file("bad-rate.toml", "[control]\nrate_hz = 0\n");
    assert_bad_input(
        &["run", "--config", &path],
        &[&path, "control.rate_hz", "> 0"],
    );
    let path = temp_file("bad-key.toml", "[control]\nrate = 10.0\n");
    assert_bad_input(
        &["run", "--config", &path],
        &["control.rate", "unknown field"],
    );
    let path = temp_file("bad-type.toml", "[camera]\nfps = \"thirty\"\n");
    assert_bad_input(&["run", "--config", &path], &["camera.fps", "invalid type"]);
    assert_bad_input(
        &["run", "--config", "/nonexistent/vla-rt.toml"],
        &["/nonexistent/vla-rt.toml", "cannot read"],
    );
}

#[test]
fn a_checkpoint_without_an_action_rate_is_refused_naming_the_key() {
    let model = std::env::temp_dir().join(format!("vla-rt-{}-no-action-hz", std::process::id()));
    std::fs::create_dir_all(&model).unwrap();
    let path = temp_file(
        "no-action-hz.toml",
        &format!("[model]\npath = \"{}\"\n", model.display()),
    );
    assert_bad_input(
        &["run", "--config", &path],
        &[&path, "model.action_hz", "required"],
    );
    let path = temp_file(
        "unwritable-state.toml",
        &format!(
            "[model]\npath = \"{}\"\naction_hz = 5.0\n[control]\nstate_dir = \"/proc/vla-rt-state\"\n",
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("engines/openvla-tiny")
                .display()
        ),
    );
    assert_bad_input(&["run", "--config", &path], &["/proc/vla-rt-state"]);
}

#[test]
fn bad_flag_values_name_the_flag() {
    assert_bad_input(&["run", "--rate-hz=-5"], &["control.rate_hz", "--rate-hz"]);
    assert_bad_input(&["run", "--robot-id", "a/b"], &["robot_id", "--robot-id"]);
    assert_bad_input(
        &["run", "--zenoh-listen", "localhost"],
        &["zenoh.listen[0]", "--zenoh-listen"],
    );
    assert_bad_input(&["run", "--camera", "webcam"], &["camera.source", "webcam"]);
    assert_bad_input(&["run", "--duration", "0"], &["--duration"]);
}

#[test]
fn bad_ros2_settings_name_the_key() {
    // A robot id that is no ROS 2 name makes no default namespace once ROS 2 is on.
    assert_bad_input(
        &["run", "--robot-id", "arm-7", "--ros2"],
        &["ros2.namespace", "`/arm-7`", "--ros2"],
    );
    let path = temp_file("bad-domain.toml", "[ros2]\ndomain_id = 300\n");
    assert_bad_input(
        &["run", "--config", &path],
        &[&path, "ros2.domain_id", "300"],
    );
    let path = temp_file(
        "bad-topic.toml",
        "[ros2]\ntwist_topic = \"servo node/cmds\"\n",
    );
    assert_bad_input(
        &["run", "--config", &path],
        &["ros2.twist_topic", "servo node"],
    );
    let path = temp_file("bad-ros2-key.toml", "[ros2]\ntopic = \"x\"\n");
    assert_bad_input(
        &["run", "--config", &path],
        &["ros2.topic", "unknown field"],
    );
    assert_bad_input(
        &["run", "--camera", "ros2:camera/image"],
        &["camera.source", "not absolute", "--camera"],
    );
}

#[test]
fn a_duration_too_long_to_hold_is_refused_not_panicked_on() {
    // Finite and positive, but more seconds than a Duration holds.
    assert_bad_input(&["run", "--duration", "1e30"], &["--duration"]);
}

#[test]
fn a_rate_whose_period_overflows_is_refused() {
    // 1e-12 Hz: the period in nanoseconds does not fit in u64, saturated, and the schedule
    // arithmetic then wrapped into ticking as fast as the CPU allows.
    assert_bad_input(
        &["run", "--rate-hz", "1e-12"],
        &["control.rate_hz", "--rate-hz"],
    );
}

#[test]
fn missing_camera_device_is_named() {
    assert_bad_input(
        &["run", "--camera", "/dev/video99"],
        &["/dev/video99", "not found"],
    );
    assert_bad_input(
        &["run", "--camera", "images:/nonexistent/frames"],
        &["images:/nonexistent/frames"],
    );
}

#[test]
fn taken_zenoh_endpoint_is_named() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("tcp/127.0.0.1:{}", listener.local_addr().unwrap().port());
    assert_bad_input(
        &["run", "--zenoh-listen", &endpoint],
        &[&endpoint, "Address already in use"],
    );
}

#[test]
fn zenoh_settings_this_build_would_ignore_are_named() {
    let quic = temp_file(
        "quic.json5",
        "{listen: {endpoints: [\"quic/127.0.0.1:7447\"]}}",
    );
    let usrpwd = temp_file(
        "usrpwd.json5",
        "{transport: {auth: {usrpwd: {user: \"operator\", password: \"secret\"}}}}",
    );
    for (json5, needles) in [
        (quic, &["quic/127.0.0.1:7447", "not built into vla-rt"][..]),
        (usrpwd, &["transport/auth/usrpwd/", "mutual TLS"][..]),
    ] {
        let model = concat!(env!("CARGO_MANIFEST_DIR"), "/engines/openvla-tiny");
        let state = std::env::temp_dir().join(format!("vla-rt-{}-state", std::process::id()));
        let toml = temp_file(
            "zenoh-config.toml",
            &format!(
                "[model]\npath = {model:?}\n[control]\nstate_dir = {:?}\n\
                 estop_missing = \"released\"\n[zenoh]\nconfig = {json5:?}\n",
                state.display().to_string()
            ),
        );
        assert_bad_input(&["run", "--config", &toml], needles);
    }
}

/// `[zenoh] listen = []` with no connect endpoint and multicast scouting off: a service no
/// operator could reach is refused, naming the keys, whether the listen endpoints it empties
/// came from the json5 file or from the built-in default.
#[test]
fn a_service_no_one_can_reach_is_refused_naming_the_keys() {
    let json5 = temp_file(
        "listening.json5",
        "{listen: {endpoints: [\"tcp/127.0.0.1:7447\"]}, scouting: {multicast: {enabled: false}}}",
    );
    let model = concat!(env!("CARGO_MANIFEST_DIR"), "/engines/openvla-tiny");
    let state = std::env::temp_dir().join(format!("vla-rt-{}-state", std::process::id()));
    for (name, zenoh) in [
        ("file", format!("config = {json5:?}\nlisten = []\n")),
        ("builtin", "listen = []\n".to_string()),
    ] {
        let toml = temp_file(
            &format!("unreachable-{name}.toml"),
            &format!(
                "[model]\npath = {model:?}\n[control]\nstate_dir = {:?}\n\
                 estop_missing = \"released\"\n[zenoh]\n{zenoh}",
                state.display().to_string()
            ),
        );
        assert_bad_input(
            &["run", "--config", &toml],
            &[
                "[zenoh] listen",
                "[zenoh] connect",
                "scouting/multicast/enabled",
            ],
        );
    }
}

#[test]
fn wrong_model_path_is_named() {
    let path = temp_file(
        "bad-model.toml",
        "[model]\npath = \"/nonexistent/openvla-7b\"\n",
    );
    assert_bad_input(
        &["run", "--config", &path],
        &["model.path", "/nonexistent/openvla-7b"],
    );
}

#[test]
fn missing_calibration_file_is_named() {
    assert_bad_input(
        &["run", "--calib", "/nonexistent/calib.toml"],
        &["calibration.path", "/nonexistent/calib.toml"],
    );
}
