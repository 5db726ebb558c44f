//! The e-stop latch survives a restart of the real `vla-rt run` process (bundled tiny
//! checkpoint, CPU, loopback): a first install with no latch file starts latched
//! (`estop_missing = "latched"`); `release` alone leaves STOP; `arm` acts; an e-stop is on
//! disk by the time its STOP arrives; after SIGTERM and a new start the service is still in
//! STOP and refuses `arm` until a `release`. Every wait is bounded.

// Test helpers fail the test by panicking, like the test functions themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod service_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use service_support::*;
use vla_rt::control::ControlState;
use zenoh::Wait;

const ROBOT: &str = "persist";
/// Model load and warm-up on a busy machine.
const FIRST_COMMAND: Duration = Duration::from_secs(60);
const WAIT: Duration = Duration::from_secs(15);

/// Kills the child if the test fails half-way.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write_config(dir: &Path, port: u16) -> PathBuf {
    let path = dir.join("robot.toml");
    std::fs::write(
        &path,
        format!(
            r#"robot_id = "{ROBOT}"
[model]
path = "{model}"
backend = "cpu"
unnorm_key = "tiny_bridge"
[camera]
width = 64
height = 48
fps = 30
[control]
rate_hz = 10.0
realtime = "off"
start_armed = false
state_dir = "state"
estop_missing = "latched"
[zenoh]
listen = ["tcp/127.0.0.1:{port}"]
"#,
            model = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("engines/openvla-tiny")
                .display()
        ),
    )
    .unwrap();
    path
}

fn spawn(config: &Path) -> Reaper {
    Reaper(
        Command::new(env!("CARGO_BIN_EXE_vla-rt"))
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info,zenoh=error")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

/// SIGTERM, the final STOP, exit code 0; returns the log.
fn terminate(mut child: Reaper, stream: &CommandStream) -> String {
    // SAFETY: `kill` on the child's pid, which is still ours to signal (not yet reaped).
    assert_eq!(unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) }, 0);
    stream.until(WAIT, "the final STOP", is_state(ControlState::Stop));
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "vla-rt did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = std::io::read_to_string(child.0.stderr.take().unwrap()).unwrap();
    assert_eq!(status.code(), Some(0), "{log}");
    log
}

/// The next `n` commands, all of which must be STOP.
fn all_stop(stream: &CommandStream, n: usize, what: &str) {
    for _ in 0..n {
        let record = stream.next(Duration::from_secs(3));
        assert_eq!(record.state, ControlState::Stop, "{what}: {record:?}");
    }
}

/// Every command that arrived so far must be STOP.
fn all_stop_so_far(stream: &CommandStream, what: &str) {
    while let Ok(record) = stream.receiver.try_recv() {
        let record = record.unwrap();
        assert_eq!(record.state, ControlState::Stop, "{what}: {record:?}");
    }
}

/// Puts `arm` until the service reports that it refused one (the e-stop holds); every command
/// meanwhile and the next ten after it must be STOP.
fn arm_is_refused(
    session: &zenoh::Session,
    stream: &CommandStream,
    status: &StatusWatch,
    what: &str,
) {
    let deadline = Instant::now() + WAIT;
    loop {
        put_arm(session, ROBOT, "arm");
        let refused = status.until(WAIT, "a status", |_| true)["arm"]["refused"]
            .as_u64()
            .unwrap();
        all_stop_so_far(stream, what);
        if refused > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: no `arm` refused within {WAIT:?}"
        );
    }
    all_stop(stream, 10, what);
}

/// Puts `release` until the service reports the e-stop released; every command meanwhile
/// and the next fifteen after it must be STOP (no ACT without an `arm`).
fn release_alone_keeps_stop(
    session: &zenoh::Session,
    stream: &CommandStream,
    status: &StatusWatch,
    what: &str,
) {
    let deadline = Instant::now() + WAIT;
    loop {
        session
            .put(format!("vla/{ROBOT}/estop/release"), "release")
            .wait()
            .unwrap();
        let latched = status.until(WAIT, "a status", |_| true)["estop"]
            .as_bool()
            .unwrap();
        all_stop_so_far(stream, what);
        if !latched {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the e-stop still latched after {WAIT:?}"
        );
    }
    all_stop(stream, 15, what);
}

#[test]
fn a_latched_estop_survives_a_restart_and_needs_release_and_arm() {
    let dir = state_dir("persist");
    std::fs::create_dir_all(&dir).unwrap();
    let latch_file = dir.join("state").join(format!("{ROBOT}.estop"));

    // First install: no latch file, estop_missing = "latched".
    let port = free_port();
    let config = write_config(&dir, port);
    let child = spawn(&config);
    let session = client_session(port);
    let stream = CommandStream::new(&session, ROBOT);
    let status = StatusWatch::new(&session, ROBOT);
    let first = stream.next(FIRST_COMMAND);
    assert_eq!(first.state, ControlState::Stop, "{first:?}");
    all_stop(&stream, 10, "a missing latch file is an e-stop");
    assert_eq!(std::fs::read_to_string(&latch_file).unwrap(), "latched\n");
    arm_is_refused(&session, &stream, &status, "`arm` while latched");
    release_alone_keeps_stop(&session, &stream, &status, "`release` alone");
    assert_eq!(std::fs::read_to_string(&latch_file).unwrap(), "released\n");
    arm_until_act(&session, &stream, ROBOT, WAIT);

    // An e-stop: on disk once its STOP is seen.
    session
        .put(format!("vla/{ROBOT}/estop/stop"), "stop")
        .wait()
        .unwrap();
    stream.until(WAIT, "STOP after the e-stop", is_state(ControlState::Stop));
    assert_eq!(std::fs::read_to_string(&latch_file).unwrap(), "latched\n");
    let log = terminate(child, &stream);
    assert!(log.contains("state STOP (e-stop)"), "{log}");
    drop(stream);
    drop(status);
    session.close().wait().unwrap();

    // A new process: still STOP, `arm` refused, `release` alone not enough.
    let port = free_port();
    let config = write_config(&dir, port);
    let child = spawn(&config);
    let session = client_session(port);
    let stream = CommandStream::new(&session, ROBOT);
    let status = StatusWatch::new(&session, ROBOT);
    let first = stream.next(FIRST_COMMAND);
    assert_eq!(first.state, ControlState::Stop, "{first:?}");
    all_stop(&stream, 10, "after the restart");
    arm_is_refused(
        &session,
        &stream,
        &status,
        "`arm` after the restart, still latched",
    );
    release_alone_keeps_stop(
        &session,
        &stream,
        &status,
        "`release` alone after the restart",
    );
    arm_until_act(&session, &stream, ROBOT, WAIT);
    let log = terminate(child, &stream);
    assert!(log.contains("e-stop latched"), "{log}");
    assert!(
        log.contains("`arm` refused: STOP (e-stop) still holds"),
        "{log}"
    );
    drop(stream);
    drop(status);
    session.close().wait().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
