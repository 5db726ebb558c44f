//! vla-rt's ROS 2 codec and type hashes against rosbags (Jazzy typestore), an independent
//! implementation of ROS 2's CDR and RIHS01 hashing (`tests/ros2/rosbags_codec.py`):
//! - every type hash vla-rt puts in its keys and tokens is the one rosbags computes from the
//!   message definitions;
//! - what vla-rt encodes (TwistStamped with frame ids of every padding, the gripper's
//!   Float64MultiArray, the DiagnosticArray, String, Bool) rosbags decodes to the same values;
//! - what rosbags encodes (String, Bool, TwistStamped, CompressedImage, Image) vla-rt decodes
//!   to the values rosbags was given.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use vla_rt::ros2::types::{self, Header, RosImage, Time, TwistStamped};

fn rosbags_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import rosbags.typesys, numpy"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        common::skip::missing_tool("python3 cannot import rosbags; scripts/setup.sh installs it");
    }
    ok
}

fn rosbags(request: &Value) -> Value {
    let mut child = Command::new("python3")
        .arg(common::repo_root().join("tests/ros2/rosbags_codec.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "rosbags_codec.py: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn type_hashes_are_the_ones_rosbags_computes() {
    if !rosbags_available() {
        return;
    }
    let names: Vec<&str> = types::ALL_TYPES.iter().map(|t| t.ros_name).collect();
    let answer = rosbags(&json!({ "hashes": names }));
    for message in types::ALL_TYPES {
        assert_eq!(
            answer["hashes"][message.ros_name], message.hash,
            "{}",
            message.ros_name
        );
        let (package, rest) = message.ros_name.split_once("/msg/").unwrap();
        assert_eq!(message.dds_name, format!("{package}::msg::dds_::{rest}_"));
    }
}

#[test]
fn rosbags_decodes_what_vla_rt_encodes() {
    if !rosbags_available() {
        return;
    }
    let mut decode = Vec::new();
    let mut expected = Vec::new();
    // Frame ids of 0 to 8 bytes: every padding before the f64s.
    for n in 0..=8usize {
        let frame_id = "abcdefgh"[..n].to_string();
        let twist = TwistStamped {
            header: Header {
                stamp: Time::from_unix_ns(1_790_000_000_000_000_000 + n as u64),
                frame_id: &frame_id,
            },
            linear: [0.125, -0.5, 1e-3 * n as f64],
            angular: [0.0, -0.0625, 3.0],
        };
        let mut buffer = vec![0u8; types::TWIST_STAMPED_FIXED_LEN + frame_id.len()];
        let len = twist.encode(&mut buffer).unwrap();
        decode.push(json!({"type": "geometry_msgs/msg/TwistStamped", "hex": hex(&buffer[..len])}));
        expected.push(json!({
            "stamp_ns": 1_790_000_000_000_000_000u64 + n as u64,
            "frame_id": frame_id,
            "linear": [0.125, -0.5, 1e-3 * n as f64],
            "angular": [0.0, -0.0625, 3.0],
        }));
    }
    let mut buffer = [0u8; 64];
    let len = types::encode_float64_array(&[0.04], &mut buffer).unwrap();
    decode.push(json!({"type": "std_msgs/msg/Float64MultiArray", "hex": hex(&buffer[..len])}));
    expected.push(json!({"dims": 0, "data_offset": 0, "data": [0.04]}));
    let len = types::encode_string("zum Würfel ✓", &mut buffer).unwrap();
    decode.push(json!({"type": "std_msgs/msg/String", "hex": hex(&buffer[..len])}));
    expected.push(json!({"data": "zum Würfel ✓"}));
    let len = types::encode_bool(true, &mut buffer).unwrap();
    decode.push(json!({"type": "std_msgs/msg/Bool", "hex": hex(&buffer[..len])}));
    expected.push(json!({"data": true}));
    let status = json!({
        "state": "STOP", "stop_cause": "e-stop", "armed": false, "estop": true, "fault": null,
        "misses": 3, "consecutive_misses": 0, "overruns": 1, "measured_rate_hz": 10.0,
        "latency_ms": {"policy_total": {"p50": 12.5, "p99": 20.0}},
        "commands": {"published": 77}, "camera": {"frames": 40},
    });
    let diagnostics =
        vla_rt::ros2::diagnostics_payload(&status, "vla_rt", "arm7", "/arm7").unwrap();
    decode.push(json!({"type": "diagnostic_msgs/msg/DiagnosticArray", "hex": hex(&diagnostics)}));

    let answer = rosbags(&json!({ "decode": decode }));
    let decoded = answer["decoded"].as_array().unwrap();
    for (got, want) in decoded.iter().zip(&expected) {
        assert_eq!(got, want);
    }
    let array = &decoded[decoded.len() - 1];
    assert_eq!(array["frame_id"], "");
    let status = &array["status"][0];
    assert_eq!(status["level"], 2, "STOP is ERROR");
    assert_eq!(status["name"], "/arm7/vla_rt: control");
    assert_eq!(status["message"], "STOP (e-stop)");
    assert_eq!(status["hardware_id"], "arm7");
    let values: Vec<(String, String)> = status["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|kv| {
            (
                kv[0].as_str().unwrap().to_string(),
                kv[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for (key, value) in [
        ("state", "STOP"),
        ("stop_cause", "e-stop"),
        ("misses", "3"),
        ("overruns", "1"),
        ("policy_latency_p50_ms", "12.5"),
        ("commands_published", "77"),
    ] {
        assert!(
            values.contains(&(key.to_string(), value.to_string())),
            "{key} = {value} not in {values:?}"
        );
    }
}

#[test]
fn vla_rt_decodes_what_rosbags_encodes() {
    if !rosbags_available() {
        return;
    }
    let image: Vec<u8> = (0..2 * 8 * 2).map(|i| i as u8).collect();
    let answer = rosbags(&json!({ "encode": [
        {"type": "std_msgs/msg/String", "value": {"data": "place the cup ✓"}},
        {"type": "std_msgs/msg/Bool", "value": {"data": true}},
        {"type": "std_msgs/msg/Bool", "value": {"data": false}},
        {"type": "geometry_msgs/msg/TwistStamped", "value": {
            "stamp_ns": 1_790_000_000_000_000_007u64, "frame_id": "tool0",
            "linear": [1.5, 0.0, -2.0], "angular": [0.25, 0.0, 0.0]}},
        {"type": "sensor_msgs/msg/CompressedImage", "value": {
            "stamp_ns": 1_790_000_000_500_000_000u64, "frame_id": "camera", "format": "jpeg",
            "data": "ffd8ffd9"}},
        {"type": "sensor_msgs/msg/Image", "value": {
            "stamp_ns": 1_790_000_001_000_000_000u64, "frame_id": "cam", "height": 2, "width": 2,
            "encoding": "rgb8", "step": 8, "data": hex(&image)}},
    ]}));
    let encoded: Vec<Vec<u8>> = answer["encoded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| unhex(h.as_str().unwrap()))
        .collect();
    assert_eq!(
        types::decode_string(&encoded[0], 1024).unwrap(),
        "place the cup ✓".as_bytes()
    );
    assert!(types::decode_bool(&encoded[1]).unwrap());
    assert!(!types::decode_bool(&encoded[2]).unwrap());
    let twist = TwistStamped::decode(&encoded[3]).unwrap();
    assert_eq!(
        twist.header.stamp.to_unix_ns(),
        Some(1_790_000_000_000_000_007)
    );
    assert_eq!(twist.header.frame_id, "tool0");
    assert_eq!(twist.linear, [1.5, 0.0, -2.0]);
    assert_eq!(twist.angular, [0.25, 0.0, 0.0]);
    let (header, compressed) = types::decode_compressed_image(&encoded[4]).unwrap();
    assert_eq!(header.stamp.to_unix_ns(), Some(1_790_000_000_500_000_000));
    assert_eq!(header.frame_id, "camera");
    assert_eq!(
        compressed,
        RosImage::Compressed {
            format: "jpeg",
            data: &[0xff, 0xd8, 0xff, 0xd9]
        }
    );
    let (header, raw) = types::decode_image(&encoded[5]).unwrap();
    assert_eq!(header.stamp.to_unix_ns(), Some(1_790_000_001_000_000_000));
    assert_eq!(
        raw,
        RosImage::Raw {
            height: 2,
            width: 2,
            encoding: "rgb8",
            is_bigendian: 0,
            step: 8,
            data: &image,
        }
    );
    // Cut short, every decoder answers with an error or a value, never a panic; the images
    // lose their data first, so a cut one is refused.
    for payload in &encoded {
        for cut in 0..payload.len().saturating_sub(3) {
            let short = &payload[..cut];
            let _ = types::decode_compressed_image(short);
            let _ = types::decode_image(short);
            let _ = types::decode_string(short, 1024);
            let _ = types::decode_bool(short);
            let _ = TwistStamped::decode(short);
        }
    }
    for cut in 4..encoded[5].len() - 8 {
        assert!(
            types::decode_image(&encoded[5][..cut]).is_err(),
            "cut at {cut}"
        );
    }
}
