//! The subscribers shown in the README, run against the service on loopback: the Rust
//! `examples/arm_driver.rs` and the Python `examples/arm_driver.py` decode the same commands
//! as the crate's own decoder.

// Test helpers fail the test by panicking, like the test functions themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod service_support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use service_support::*;
use vla_rt::control::ControlState;
use vla_rt::policy::Policy;
use vla_rt::service::{Service, ServiceOptions};
use vla_rt::transport::record::CommandRecord;

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
        if let Some(previous) = previous_seq {
            assert_eq!(seq, previous + 1, "{line}");
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
    let has_zenoh = Command::new("python3")
        .args(["-c", "import zenoh"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_zenoh {
        println!(
            "skipped: `python3 -c 'import zenoh'` fails; scripts/setup.sh installs eclipse-zenoh==1.10.2"
        );
        return;
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/arm_driver.py");
    let mut command = Command::new("python3");
    command.arg(script);
    decodes_the_same_commands("python-driver", command);
}
