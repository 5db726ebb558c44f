//! The closed loop: `sim/eval.py` starts the real `vla-rt run` (the checkpoint trained on the
//! simulator, `engines/openvla-sim`, CPU) with its camera on Zenoh, and the MuJoCo tabletop
//! (sim/) is the robot: it publishes JPEG frames, the service's commands move its gripper.
//! Five short seeded episodes, then `stop` on the e-stop key. Asserts that the loop works
//! (frames reach the service from the Zenoh source, commands reach the simulator, ACT moves
//! the gripper, STOP stops it, the service exits cleanly); the success rate is the
//! benchmark's (BENCHMARKS.md), not asserted here.
//!
//! Needs `python3` with sim/requirements.txt (`scripts/setup.sh` installs them): skipped
//! with a message when they are missing, a failure under CI (`CI` set to any non-empty
//! value).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/sim_python.rs"]
mod sim_python;
#[path = "common/skip.rs"]
mod skip;

use std::time::Duration;

const BINARY: &str = env!("CARGO_BIN_EXE_vla-rt");
const EPISODES: u64 = 5;
const MAX_STEPS: u64 = 15;
/// Model load, five 1.5 s episodes, the e-stop check and shutdown, on a busy machine.
const RUN_LIMIT: Duration = Duration::from_secs(120);

#[test]
fn the_simulated_robot_closes_the_loop_with_the_service() {
    if !sim_python::python_ready("sim_loop") {
        return;
    }
    let episodes = EPISODES.to_string();
    let max_steps = MAX_STEPS.to_string();
    let sim_python::ScriptRun {
        status,
        stdout,
        stderr,
    } = sim_python::run_script(
        &[
            "sim/eval.py",
            "--episodes",
            &episodes,
            "--seed",
            "11",
            "--max-steps",
            &max_steps,
            "--estop-check",
            // The open-loop instruction measure has its own test (tests/sim_instruction.rs).
            "--instruction-scenes",
            "0",
            "--json",
            "--vla-rt",
            BINARY,
        ],
        RUN_LIMIT,
    );
    assert!(
        status.success(),
        "sim/eval.py: {status}\nstderr:\n{stderr}\nstdout:\n{stdout}"
    );
    let report: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("sim/eval.py printed no JSON ({e}):\n{stdout}\n{stderr}"));
    let context = || format!("report:\n{stdout}\nstderr:\n{stderr}");

    // Five seeded episodes ran, none longer than asked.
    assert_eq!(report["episodes"], EPISODES, "{}", context());
    let results = report["episode_results"].as_array().unwrap();
    assert_eq!(results.len() as u64, EPISODES);
    for (index, episode) in results.iter().enumerate() {
        assert_eq!(episode["seed"], 11 + index as u64);
        let steps = episode["steps"].as_u64().unwrap();
        assert!((1..=MAX_STEPS).contains(&steps), "{episode}");
        assert!(episode["instruction"]
            .as_str()
            .unwrap()
            .starts_with("reach the "));
    }

    // The service took its frames from the Zenoh source, all of them intact.
    let service = &report["service"];
    let camera = &service["camera"];
    assert!(
        camera["source"]
            .as_str()
            .unwrap()
            .starts_with("zenoh:vla/sim/camera"),
        "{}",
        context()
    );
    let frames = camera["frames"].as_u64().unwrap();
    assert!(frames >= EPISODES, "{} frames: {}", frames, context());
    assert_eq!(camera["corrupt"], 0, "{}", context());
    assert!(frames <= report["robot"]["frames_published"].as_u64().unwrap());

    // Each episode started once the service reported its instruction in force.
    for episode in results {
        assert!(
            episode["instruction_wait_s"].as_f64().unwrap() > 0.0,
            "{episode}"
        );
        assert!(
            ["reached_named", "reached_other", "reached_none"]
                .contains(&episode["outcome"].as_str().unwrap()),
            "{episode}"
        );
    }

    // Commands reached the simulator, and ACT moved its gripper.
    let commands = &report["robot"]["commands"];
    assert!(commands["ACT"].as_u64().unwrap() > 0, "{}", context());
    assert_eq!(commands["bad"], 0, "{}", context());
    assert!(
        report["robot"]["act_travel_m"].as_f64().unwrap() > 0.001,
        "ACT did not move the gripper: {}",
        context()
    );

    // `stop` on the e-stop key: STOP reached the simulator and nothing moved after it.
    let estop = &report["estop"];
    assert!(
        estop["act_commands_before_stop"].as_u64().unwrap() >= 3,
        "{}",
        context()
    );
    assert!(
        estop["stop_commands"].as_u64().unwrap() > 0,
        "{}",
        context()
    );
    assert_eq!(
        estop["travel_after_stop_m"].as_f64().unwrap(),
        0.0,
        "{}",
        context()
    );
    assert_eq!(estop["halted"], true);

    // SIGTERM at the end: a clean exit.
    assert_eq!(service["exit_code"], 0, "{}", context());
}
