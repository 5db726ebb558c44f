//! The `vla-rt` binary as a ROS 2 node (`run --ros2`, `[camera] source = "ros2:<topic>"`)
//! against an independent ROS 2 peer in Python (`tests/ros2/peer.py`: eclipse-zenoh for the
//! session, rosbags for CDR and type hashes). The peer finds the node and its publishers by
//! their liveliness tokens, feeds CompressedImage frames, collects twists, gripper commands
//! and diagnostics beside the native command records, sends an instruction, bad input and an
//! e-stop as ROS messages; this test judges what it saw:
//! - every twist is the native record of the same tick (same stamp) through the fixed
//!   conversion: deltas × control rate (m/s, rad/s), zero in HOLD and STOP, none before the
//!   first ACT; the gripper is the record's gripper;
//! - the ACT records act on the frames the peer sent (their capture time is a stamp it sent);
//! - the instruction is applied, the e-stop latches STOP;
//! - malformed CDR, a missing attachment, a wrong type on the right name and an oversized
//!   image are each refused and counted, and the service ends cleanly (exit 0, no panic).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/ports.rs"]
mod ports;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BINARY: &str = env!("CARGO_BIN_EXE_vla-rt");
const RATE_HZ: f64 = 10.0;
const ROBOT: &str = "rosbot";
const CAMERA_TOPIC: &str = "/camera/image_raw/compressed";

/// Whether python3 has eclipse-zenoh, rosbags, numpy and Pillow; under CI their absence
/// fails the test (scripts/setup.sh installs them).
fn python_peer_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import zenoh, rosbags.typesys, numpy, PIL"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        common::skip::missing_tool(
            "python3 cannot import zenoh, rosbags, numpy and PIL; scripts/setup.sh installs \
             eclipse-zenoh and rosbags",
        );
    }
    ok
}

/// Reads `pipe` to its end on a thread of its own.
fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}

fn f64s(value: &Value) -> Vec<f64> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

#[test]
fn a_ros2_peer_sees_the_same_ticks_and_is_heard() {
    if !python_peer_available() {
        return;
    }
    let port = ports::free_port();
    let dir = std::env::temp_dir().join(format!("vla-rt-ros2-peer-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("robot.toml");
    std::fs::write(
        &config,
        format!(
            r#"robot_id = "{ROBOT}"

[model]
path = "{model}"

[camera]
source = "ros2:{CAMERA_TOPIC}"
width = 64
height = 48
stall_timeout_ms = 1000

[control]
rate_hz = {RATE_HZ}
realtime = "off"
start_armed = false
state_dir = "{state}"
estop_missing = "released"
max_frame_age_ms = 4000

[zenoh]
listen = ["tcp/127.0.0.1:{port}"]

[ros2]
frame_id = "panda_link0"
"#,
            model = common::tiny_model_dir().display(),
            state = dir.join("state").display(),
        ),
    )
    .unwrap();
    let mut service = Command::new(BINARY)
        .args(["run", "--config", config.to_str().unwrap(), "--ros2"])
        .args(["--duration", "120"])
        .env("RUST_LOG", "info,zenoh=error")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let instruction = "stack the green cube";
    let peer = Command::new("python3")
        .arg(common::repo_root().join("tests/ros2/peer.py"))
        .args(["--connect", &format!("tcp/127.0.0.1:{port}")])
        .args(["--robot-id", ROBOT, "--domain", "0"])
        .args(["--camera-topic", CAMERA_TOPIC])
        .args(["--instruction-topic", &format!("/{ROBOT}/instruction")])
        .args(["--estop-topic", &format!("/{ROBOT}/estop")])
        .args(["--width", "64", "--height", "48"])
        .args(["--instruction", instruction])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Both children's pipes are drained as they write, so neither blocks on a full pipe.
    let service_log = drain(service.stderr.take().unwrap());
    let mut peer = peer;
    let peer_stdout = drain(peer.stdout.take().unwrap());
    let peer_stderr = drain(peer.stderr.take().unwrap());
    let started = Instant::now();
    let peer_status = loop {
        if let Some(status) = peer.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(120) {
            let _ = peer.kill();
            let _ = service.kill();
            panic!(
                "the peer did not finish within 120 s: {}",
                String::from_utf8_lossy(&peer_stderr.join().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // SIGTERM: the service stops cleanly (final STOP, exit 0).
    // SAFETY: kill(2) on the id of a child this test started and has not reaped.
    unsafe {
        libc::kill(service.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = service.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the service did not end on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let service_log = String::from_utf8_lossy(&service_log.join().unwrap()).into_owned();
    let peer_log = String::from_utf8_lossy(&peer_stderr.join().unwrap()).into_owned();
    let peer_stdout = peer_stdout.join().unwrap();
    assert!(
        peer_status.success(),
        "peer failed: {peer_log}\nservice: {service_log}"
    );
    assert_eq!(status.code(), Some(0), "service: {service_log}");
    assert!(!service_log.contains("panicked"), "{service_log}");
    let seen: Value = serde_json::from_slice(&peer_stdout)
        .unwrap_or_else(|e| panic!("peer output: {e}: {peer_log}"));
    assert_eq!(
        seen["errors"],
        serde_json::json!([]),
        "service: {service_log}"
    );

    let count = |key: &str| seen[key].as_array().map_or(0, Vec::len);
    eprintln!(
        "peer saw {} tokens, {} twists, {} gripper commands, {} diagnostics, {} records; sent {} frames",
        count("tokens"),
        count("twists"),
        count("grippers"),
        count("diagnostics"),
        count("records"),
        count("sent_stamps")
    );

    // Discovery: the node and each endpoint, as rmw_zenoh writes them.
    let tokens = seen["tokens"].as_array().unwrap();
    let find = |kind: &str, topic: Option<&str>| {
        tokens.iter().find(|t| {
            t["kind"] == kind && topic.is_none_or(|topic| t["topic"].as_str() == Some(topic))
        })
    };
    let node = find("NN", None).expect("node token");
    assert_eq!(node["namespace"], format!("/{ROBOT}"));
    assert_eq!(node["node"], "vla_rt");
    assert_eq!(node["enclave"], "%");
    let twist_token = find("MP", Some(&format!("/{ROBOT}/delta_twist_cmds"))).unwrap();
    assert_eq!(
        twist_token["type"],
        "geometry_msgs::msg::dds_::TwistStamped_"
    );
    // rosbags' hash of geometry_msgs/msg/TwistStamped (Jazzy).
    assert_eq!(
        twist_token["hash"],
        "RIHS01_5f0fcd4f81d5d06ad9b4c4c63e3ea51b82d6ae4d0558f1d475229b1121db6f64"
    );
    assert_eq!(twist_token["zid"], node["zid"]);
    for (kind, topic) in [
        ("MP", format!("/{ROBOT}/gripper_controller/commands")),
        ("MP", "/diagnostics".to_string()),
        ("MS", format!("/{ROBOT}/instruction")),
        ("MS", format!("/{ROBOT}/estop")),
        ("MS", CAMERA_TOPIC.to_string()),
    ] {
        assert!(
            find(kind, Some(&topic)).is_some(),
            "no {kind} token for {topic}"
        );
    }

    // Twists against the native records of the same ticks.
    let records = seen["records"].as_array().unwrap();
    let twists = seen["twists"].as_array().unwrap();
    let first_act = records
        .iter()
        .find(|r| r["state"] == "ACT")
        .expect("an ACT record");
    let first_act_tick = first_act["tick_ns"].as_u64().unwrap();
    assert!(twists.len() >= 10, "{} twists", twists.len());
    let mut matched = 0;
    let mut act_twists = 0;
    let mut previous_seq = 0;
    for twist in twists {
        let stamp = twist["stamp_ns"].as_u64().unwrap();
        assert!(
            stamp >= first_act_tick,
            "a twist before the first ACT: {twist}"
        );
        assert_eq!(twist["frame_id"], "panda_link0");
        let seq = twist["attachment_seq"].as_i64().unwrap();
        assert!(
            seq > previous_seq,
            "attachment sequence {seq} after {previous_seq}"
        );
        previous_seq = seq;
        let Some(record) = records
            .iter()
            .find(|r| r["tick_ns"].as_u64() == Some(stamp))
        else {
            continue;
        };
        matched += 1;
        let action = f64s(&record["action"]);
        let velocity: Vec<f64> = f64s(&twist["linear"])
            .into_iter()
            .chain(f64s(&twist["angular"]))
            .collect();
        for (axis, (v, delta)) in velocity.iter().zip(&action[..6]).enumerate() {
            let expected = if record["state"] == "ACT" {
                delta * RATE_HZ
            } else {
                0.0
            };
            assert!(
                (v - expected).abs() <= 1e-9 * expected.abs().max(1e-9),
                "axis {axis}: twist {v} for a {} record with delta {delta} at {RATE_HZ} Hz",
                record["state"]
            );
        }
        if record["state"] == "ACT" {
            act_twists += 1;
        }
    }
    assert!(
        matched * 10 >= twists.len() * 8,
        "{matched} of {} twists matched a native record",
        twists.len()
    );
    assert!(act_twists > 0, "no ACT twist matched");
    let zero_twists = twists.iter().filter(|t| {
        f64s(&t["linear"])
            .iter()
            .chain(&f64s(&t["angular"]))
            .all(|v| *v == 0.0)
    });
    assert!(zero_twists.count() > 0, "no zero twist (the e-stop's STOP)");
    // The gripper: the record's value (0 closed, 1 open, the default mapping), one per twist.
    let grippers = seen["grippers"].as_array().unwrap();
    assert!(!grippers.is_empty());
    let record_grippers: Vec<f64> = records.iter().map(|r| f64s(&r["action"])[6]).collect();
    for gripper in grippers {
        let data = f64s(&gripper["data"]);
        assert_eq!(data.len(), 1);
        assert!(
            record_grippers.iter().any(|g| (g - data[0]).abs() < 1e-6),
            "gripper {data:?} matches no record"
        );
    }

    // The camera: ACT records carry the capture time of a frame the peer sent.
    let sent: Vec<u64> = seen["sent_stamps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    for record in records.iter().filter(|r| r["state"] == "ACT") {
        let capture = record["capture_ns"].as_u64().unwrap();
        assert!(
            sent.contains(&capture),
            "ACT with capture time {capture}, not a stamp the peer sent"
        );
    }

    // Diagnostics: the status as a DiagnosticArray.
    let diagnostics = seen["diagnostics"].as_array().unwrap();
    assert!(!diagnostics.is_empty(), "no DiagnosticArray");
    let last = &diagnostics.last().unwrap()[0];
    assert_eq!(last["name"], format!("/{ROBOT}/vla_rt: control"));
    assert_eq!(last["hardware_id"], ROBOT);
    for key in [
        "state",
        "armed",
        "misses",
        "overruns",
        "policy_latency_p50_ms",
        "stop_cause",
    ] {
        assert!(last["values"].get(key).is_some(), "no `{key}` in {last}");
    }

    // The instruction went the native way (same limits, same counters).
    let after_instruction = &seen["status_after_instruction"];
    assert_eq!(after_instruction["policy"]["instruction"], instruction);
    assert!(after_instruction["ros2"]["received"]["instruction"].as_u64() >= Some(1));

    // Bad input: each refused and counted.
    let before = &seen["status_before_bad_input"];
    let after = &seen["status_after_bad_input"];
    for counter in ["malformed", "no_attachment", "wrong_type"] {
        let was = before["ros2"]["refused"][counter].as_u64().unwrap();
        let is = after["ros2"]["refused"][counter].as_u64().unwrap();
        assert!(is > was, "ros2.refused.{counter}: {was} → {is}");
    }
    assert!(
        after["camera"]["corrupt"].as_u64() > before["camera"]["corrupt"].as_u64(),
        "the oversized image was not counted corrupt"
    );
    assert!(after["camera"]["frames"].as_u64() > Some(10));

    // The e-stop latched STOP, persisted like the native key's.
    let after_estop = &seen["status_after_estop"];
    assert_eq!(after_estop["state"], "STOP");
    assert_eq!(after_estop["stop_cause"], "e-stop");
    assert!(after_estop["ros2"]["received"]["estop"].as_u64() >= Some(1));
    assert_eq!(
        std::fs::read_to_string(dir.join("state").join(format!("{ROBOT}.estop")))
            .unwrap()
            .trim(),
        "latched"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
