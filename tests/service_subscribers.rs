//! The subscribers shown in the README, run against the service on loopback: the Rust
//! `examples/arm_driver.rs` and the Python `examples/arm_driver.py` decode the same commands
//! as the crate's own decoder. Fed crafted records over Zenoh, both refuse to move on an old
//! record or after a gap in `seq`, and stay halted after STOP until an ACT comes.

// Test helpers fail the test by panicking, like the test functions themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod service_support;
#[path = "common/skip.rs"]
mod skip;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use service_support::*;
use vla_rt::control::command_record::{CommandRecord, RECORD_LEN};
use vla_rt::control::ControlState;
use vla_rt::policy::Policy;
use vla_rt::service::{Service, ServiceOptions};
use zenoh::Wait;

const COUNT: usize = 40;

fn start_service(robot_id: &str, port: u16) -> Service {
    let config = loopback_config(robot_id, port, 50.0);
    let controls = Arc::new(FakeControls::default());
    let source = vla_rt::capture::open_source(&config.camera).unwrap();
    Service::start(
        &config,
        source,
        move || Ok(Box::new(FakePolicy { controls }) as Box<dyn Policy>),
        ServiceOptions::default(),
    )
    .unwrap()
}

/// Kills the child if the test fails half-way.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `command` (a subscriber printing one JSON command per line) against a service and
/// checks each of its lines against the commands the crate's decoder saw.
fn decodes_the_same_commands(robot_id: &str, mut command: Command) {
    let port = free_port();
    let service = start_service(robot_id, port);
    let session = client_session(port);
    let reference = CommandStream::new(&session, robot_id);

    command
        .args(["--connect", &format!("tcp/127.0.0.1:{port}")])
        .args([
            "--robot-id",
            robot_id,
            "--count",
            &COUNT.to_string(),
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = Reaper(command.spawn().expect("cannot start the subscriber"));
    let stdout = child.0.stdout.take().unwrap();
    let (sender, lines) = crossbeam::channel::unbounded();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut printed = Vec::new();
    while printed.len() < COUNT {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => printed.push(line),
            Err(_) => panic!("subscriber printed {} of {COUNT} commands", printed.len()),
        }
    }
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "subscriber did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "subscriber exited with {status}");
    reader.join().unwrap();
    service.stop();

    let mut by_seq: HashMap<u64, CommandRecord> = HashMap::new();
    while let Ok(Ok(record)) = reference.receiver.try_recv() {
        by_seq.insert(record.seq, record);
    }
    let mut compared = 0;
    let mut previous_seq = None;
    for line in &printed {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        let seq = value["seq"].as_u64().unwrap();
        // A record the publisher reached later than one period after its tick is dropped,
        // not sent late: seq may skip on a busy machine, never go back.
        if let Some(previous) = previous_seq {
            assert!(seq > previous, "{line}");
        }
        previous_seq = Some(seq);
        let Some(record) = by_seq.get(&seq) else {
            continue;
        };
        compared += 1;
        assert_eq!(value["state"], record.state.name(), "{line}");
        assert_eq!(value["tick_time_ns"].as_u64(), Some(record.tick_time_ns));
        assert_eq!(
            value["capture_time_ns"].as_u64(),
            Some(record.capture_time_ns)
        );
        // Printed as the f64 of each f32 value; serde_json's parse is within an f64 ulp of
        // it, so rounding back to f32 must give the exact value.
        let action: Vec<f32> = value["action"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(action, record.action.to_vec(), "{line}");
    }
    assert!(
        compared >= COUNT / 2,
        "only {compared} commands seen by both subscribers"
    );
    assert!(printed.iter().any(|l| l.contains(ControlState::Act.name())));
}

fn example_binary(name: &str) -> PathBuf {
    // target/release/deps/<test> → target/release/examples/<name>
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("examples").join(name))
        .unwrap()
}

#[test]
fn rust_arm_driver_decodes_the_commands() {
    let binary = example_binary("arm_driver");
    assert!(
        binary.exists(),
        "{} missing: `cargo test` builds the examples",
        binary.display()
    );
    decodes_the_same_commands("rust-driver", Command::new(binary));
}

#[test]
fn python_arm_driver_decodes_the_commands() {
    if !python_has_zenoh() {
        return;
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/arm_driver.py");
    let mut command = Command::new("python3");
    command.arg(script);
    decodes_the_same_commands("python-driver", command);
}

fn python_has_zenoh() -> bool {
    let has_zenoh = Command::new("python3")
        .args(["-c", "import zenoh"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_zenoh {
        skip::missing_tool(
            "`python3 -c 'import zenoh'` fails; scripts/setup.sh installs eclipse-zenoh==1.10.2",
        );
    }
    has_zenoh
}

/// Publishes crafted records to a driver (`command`, given `--connect`, `--robot-id`,
/// `--count`, `--json`) and checks what it does with each: it must not move on an old
/// record or after records went missing, and must stay halted after STOP until an ACT.
fn halts_on_old_records_gaps_and_stop(robot_id: &str, mut command: Command) {
    const MS: u64 = 1_000_000;
    let port = free_port();
    let mut config = zenoh::Config::default();
    config
        .insert_json5("listen/endpoints", &format!("[\"tcp/127.0.0.1:{port}\"]"))
        .unwrap();
    config
        .insert_json5("scouting/multicast/enabled", "false")
        .unwrap();
    let session = zenoh::open(config).wait().unwrap();
    let publisher = session
        .declare_publisher(format!("vla/{robot_id}/cmd"))
        .wait()
        .unwrap();

    // Ticks 100 ms apart from when the records are sent (so ages are small), except one
    // sent two seconds old.
    let start = std::cell::Cell::new(0u64);
    let tick = |seq: u64| start.get() + seq * 100 * MS;
    let old = || start.get() - 2_000 * MS;
    let script = || -> [(ControlState, u64, u64, &str, &str, bool); 9] {
        [
            // state, seq, tick time, verdict, reason, halted after
            (ControlState::Act, 0, tick(0), "halt", "unjudged", true),
            (ControlState::Act, 1, tick(1), "move", "", false),
            (ControlState::Act, 2, old(), "halt", "stale", true),
            (ControlState::Act, 3, tick(3), "move", "", false),
            // seq 4 to 7 missing: 500 ms, over the learned two periods.
            (ControlState::Act, 8, tick(8), "halt", "gap", true),
            (ControlState::Stop, 9, tick(9), "halt", "stop", true),
            (ControlState::Hold, 10, tick(10), "hold", "", true),
            (ControlState::Hold, 11, tick(11), "hold", "", true),
            (ControlState::Act, 12, tick(12), "move", "", false),
        ]
    };
    let count = script().len();

    command
        .args(["--connect", &format!("tcp/127.0.0.1:{port}")])
        .args([
            "--robot-id",
            robot_id,
            "--count",
            &count.to_string(),
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = Reaper(command.spawn().expect("cannot start the driver"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !publisher.matching_status().wait().unwrap().matching() {
        assert!(Instant::now() < deadline, "the driver never subscribed");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Subscribed; give the subscription a moment to settle on both sides.
    std::thread::sleep(Duration::from_millis(300));
    start.set(vla_rt::control::clock::realtime_ns());
    let script = script();
    for (state, seq, tick_time_ns, ..) in &script {
        let mut bytes = [0u8; RECORD_LEN];
        CommandRecord {
            state: *state,
            seq: *seq,
            tick_time_ns: *tick_time_ns,
            capture_time_ns: 0,
            action: [0.01, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
        }
        .encode(&mut bytes);
        publisher.put(bytes.to_vec()).wait().unwrap();
        std::thread::sleep(Duration::from_millis(10));
    }

    let stdout = child.0.stdout.take().unwrap();
    let (sender, lines) = crossbeam::channel::unbounded();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let mut printed = Vec::new();
    while printed.len() < script.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => printed.push(line),
            Err(_) => panic!(
                "driver printed {} of {} lines: {printed:#?}",
                printed.len(),
                script.len()
            ),
        }
    }
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "driver did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "driver exited with {status}");
    reader.join().unwrap();

    for ((state, seq, _, verdict, reason, halted), line) in script.iter().zip(&printed) {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(value["seq"].as_u64(), Some(*seq), "{line}");
        assert_eq!(value["state"], state.name(), "{line}");
        assert_eq!(value["verdict"], *verdict, "seq {seq}: {line}");
        if reason.is_empty() {
            assert!(value["reason"].is_null(), "seq {seq}: {line}");
        } else {
            assert_eq!(value["reason"], *reason, "seq {seq}: {line}");
        }
        assert_eq!(
            value["halted"].as_bool(),
            Some(*halted),
            "seq {seq}: {line}"
        );
    }
    // Only the three passing ACTs moved the arm.
    let last: serde_json::Value = serde_json::from_str(printed.last().unwrap()).unwrap();
    let x = last["position"][0].as_f64().unwrap();
    assert!((x - 0.03).abs() < 1e-6, "x = {x}");
    drop(publisher);
    session.close().wait().unwrap();
}

#[test]
fn rust_arm_driver_halts_on_old_records_gaps_and_stop() {
    let binary = example_binary("arm_driver");
    assert!(binary.exists(), "{} missing", binary.display());
    halts_on_old_records_gaps_and_stop("rust-guard", Command::new(binary));
}

#[test]
fn python_arm_driver_halts_on_old_records_gaps_and_stop() {
    if !python_has_zenoh() {
        return;
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/arm_driver.py");
    let mut command = Command::new("python3");
    command.arg(script);
    halts_on_old_records_gaps_and_stop("python-guard", command);
}
