//! The real `vla-rt run` with its bundled default (synthetic camera, bundled tiny checkpoint,
//! CPU) on loopback: under another robot id than the simulation's it starts disarmed (HOLD
//! only), `arm` gives well-formed ACT commands, then SIGTERM gives one final STOP and exit
//! code 0. Every wait is bounded.

// Test helpers fail the test by panicking, like the test functions themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod service_support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use service_support::*;
use vla_rt::config::ServiceConfig;
use vla_rt::control::ControlState;

#[test]
fn default_run_publishes_commands_and_sigterm_ends_with_stop() {
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vla-rt"))
        .args(["run", "--robot-id", "process", "--rate-hz", "10"])
        .args(["--zenoh-listen", &format!("tcp/127.0.0.1:{port}")])
        .env("RUST_LOG", "info,zenoh=error")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let session = client_session(port);
    let stream = CommandStream::new(&session, "process");

    // Not the simulation's id: disarmed, HOLD only, until an `arm`.
    let first = stream.next(Duration::from_secs(60));
    assert_eq!(first.state, ControlState::Hold, "{first:?}");
    let held: Vec<_> = (0..10)
        .map(|_| stream.next(Duration::from_secs(2)))
        .collect();
    assert!(
        held.iter().all(|r| r.state == ControlState::Hold),
        "{held:?}"
    );
    arm_until_act(&session, &stream, "process", Duration::from_secs(30));
    let records: Vec<_> = (0..20)
        .map(|_| stream.next(Duration::from_secs(2)))
        .collect();
    assert_well_formed(&records, &ServiceConfig::builtin());
    let acts = records
        .iter()
        .filter(|r| r.state == ControlState::Act)
        .count();
    assert!(acts >= 10, "{acts} ACT of 20 with the tiny model at 10 Hz");
    assert!(records
        .iter()
        .filter(|r| r.state == ControlState::Act)
        .all(|r| r.capture_time_ns > 0 && r.capture_time_ns < r.tick_time_ns));

    // SAFETY: `kill` on the child's pid, which is still ours to signal (not yet reaped).
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let tail = stream.until(
        Duration::from_secs(10),
        "the final STOP",
        is_state(ControlState::Stop),
    );
    assert_well_formed(&tail, &ServiceConfig::builtin());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("vla-rt did not exit within 10 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::io::read_to_string(child.stderr.take().unwrap()).unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("state STOP (shutdown)"), "{stderr}");
    assert!(stderr.contains("starts armed only as `sim`"), "{stderr}");
    // One STOP, and nothing after it.
    assert!(stream
        .receiver
        .recv_timeout(Duration::from_millis(300))
        .is_err());
}
