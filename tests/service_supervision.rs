//! The real `vla-rt run` (bundled tiny model, synthetic camera, loopback Zenoh) with a fault
//! injected through the `VLA_RT_TEST_FAULT` test hook: whichever worker panics or stalls,
//! the service publishes one final STOP and exits with code 3 within the worker timeout, the
//! watchdog's round and the shutdown grace of the fault (with slack for a loaded machine); a publisher held up for a second sends no burst of old commands
//! afterwards. Every wait is bounded.

// Test helpers fail the test by panicking, like the test functions themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod service_support;

#[cfg(not(feature = "test-hooks"))]
compile_error!(
    "this test needs the test-hooks feature: cargo test --release --workspace --features test-hooks"
);

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam::channel::RecvTimeoutError;
use service_support::*;
use vla_rt::config::ServiceConfig;
use vla_rt::control::clock;
use vla_rt::control::command_record::CommandRecord;
use vla_rt::control::ControlState;
use zenoh::Wait;

const RATE_HZ: f64 = 10.0;
const WORKER_TIMEOUT_MS: u64 = 1000;

/// The watchdog's round (README, Supervision).
const WATCHDOG_PERIOD: Duration = Duration::from_millis(50);
/// After a fault the orderly shutdown gets this long, then the process exits with code 3
/// regardless (README, Supervision).
const FAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// One camera wait (`[camera] stall_timeout_ms`, 500 by default), which the capture thread
/// gets on top of the worker timeout.
const CAMERA_WAIT: Duration = Duration::from_millis(500);
/// Slack for threads that wake late and a process exit on a loaded two-core CI machine.
const LOADED_MACHINE_SLACK: Duration = Duration::from_secs(2);

/// The service process, with its stderr read line by line as it comes; kills the service if
/// the test fails half-way, so no process outlives it.
struct ServiceProcess {
    child: Option<Child>,
    /// Each stderr line and when it was read.
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// How a service process ended.
struct Exit {
    status: std::process::ExitStatus,
    /// When the exit was seen (within the 20 ms polling interval).
    at: Instant,
    stderr: String,
    lines: Vec<(Instant, String)>,
}

fn config_file(name: &str, robot_id: &str, port: u16, worker_timeout_ms: u64) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("supervision-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("service.toml");
    std::fs::write(
        &path,
        format!(
            "robot_id = \"{robot_id}\"\n[model]\npath = \"{}\"\n[camera]\nwidth = 160\nheight = 120\n\
             [control]\nrate_hz = {RATE_HZ}\nrealtime = \"off\"\nworker_timeout_ms = {worker_timeout_ms}\n\
             start_armed = true\nestop_missing = \"released\"\nstate_dir = {:?}\n\
             [zenoh]\nlisten = [\"tcp/127.0.0.1:{port}\"]\n",
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("engines/openvla-tiny")
                .display(),
            dir.join("state").display().to_string()
        ),
    )
    .unwrap();
    path
}

fn start(config: &Path, fault: &str) -> ServiceProcess {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vla-rt"))
        .arg("run")
        .arg("--config")
        .arg(config)
        .env("VLA_RT_TEST_FAULT", fault)
        .env("RUST_LOG", "info,zenoh=error")
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&lines);
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push((Instant::now(), line));
        }
    });
    ServiceProcess {
        child: Some(child),
        lines,
        reader: Some(reader),
    }
}

/// Waits (bounded) for the process to exit, then for the end of its stderr.
fn wait_exit(service: &mut ServiceProcess, timeout: Duration) -> Exit {
    let mut child = service.child.take().unwrap();
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "vla-rt did not exit within {timeout:?}:\n{}",
                text_of(&service.lines.lock().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let at = Instant::now();
    // The pipe ends with the process: the reader has every line once it is done.
    service.reader.take().unwrap().join().unwrap();
    let lines = std::mem::take(&mut *service.lines.lock().unwrap());
    Exit {
        status,
        at,
        stderr: text_of(&lines),
        lines,
    }
}

fn text_of(lines: &[(Instant, String)]) -> String {
    lines.iter().map(|(_, line)| format!("{line}\n")).collect()
}

/// Runs the service with `fault` armed at 4 s; `poke` runs once commands flow (to make a
/// callback run). Checks the final STOP, nothing after it, and exit code 3; returns stderr.
fn fault_ends_in_stop_and_exit_3(
    name: &str,
    fault: &str,
    poke: impl FnOnce(&zenoh::Session),
) -> String {
    let port = free_port();
    let robot_id = format!("fault-{name}");
    let config = config_file(name, &robot_id, port, WORKER_TIMEOUT_MS);
    let mut service = start(&config, fault);
    let session = client_session(port);
    let stream = CommandStream::new(&session, &robot_id);
    stream.until(
        Duration::from_secs(60),
        "the first ACT",
        is_state(ControlState::Act),
    );
    poke(&session);

    // The fault fires 4 s after start (or at the poke); the watchdog sees it within the
    // worker timeout and its own round, and the orderly shutdown, or at worst the grace after
    // the fault, ends the process. (A STOP may come before, from policy misses on a busy
    // machine: the final one is the last command.)
    let exit = wait_exit(&mut service, Duration::from_secs(60));
    let stderr = exit.stderr;
    assert_eq!(exit.status.code(), Some(3), "{}:\n{stderr}", exit.status);
    let (fired_at, _) = exit
        .lines
        .iter()
        .find(|(_, line)| {
            line.contains("VLA_RT_TEST_FAULT: the ")
                && (line.contains(" panics now") || line.contains(" stalls "))
        })
        .unwrap_or_else(|| panic!("the fault never fired:\n{stderr}"));
    let bound = Duration::from_millis(WORKER_TIMEOUT_MS)
        + CAMERA_WAIT
        + WATCHDOG_PERIOD
        + FAULT_SHUTDOWN_GRACE
        + LOADED_MACHINE_SLACK;
    let took = exit.at - *fired_at;
    assert!(
        took <= bound,
        "exited {took:?} after the fault fired, over the worker timeout, the watchdog's round, \
         the shutdown grace and {LOADED_MACHINE_SLACK:?} of slack ({bound:?}):\n{stderr}"
    );
    // Everything the process sent before it exited (the subscriber's channel holds it).
    let mut tail = Vec::new();
    loop {
        match stream.receiver.recv_timeout(Duration::from_millis(500)) {
            Ok(Ok(record)) => tail.push(record),
            Ok(Err(e)) => panic!("undecodable command: {e}"),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
        }
    }
    let stop = *tail.last().expect("no command after the first ACT");
    assert_eq!(
        stop.state,
        ControlState::Stop,
        "{:?}",
        &tail[tail.len().saturating_sub(5)..]
    );
    assert_eq!(stop.action[..6], [0.0; 6], "{stop:?}");
    // Commands handed over while a dead publisher could not send them are lost: seq may
    // jump, but never goes back, and every value stays within the limits.
    let limits = ServiceConfig::builtin().safety;
    for pair in tail.windows(2) {
        assert!(pair[1].seq > pair[0].seq, "{pair:?}");
    }
    for record in &tail {
        for (i, value) in record.action.iter().enumerate() {
            assert!(
                (limits.min[i]..=limits.max[i]).contains(value),
                "{record:?}"
            );
        }
    }
    assert!(stderr.contains("VLA_RT_TEST_FAULT"), "{stderr}");
    stderr
}

#[test]
fn a_capture_panic_stops_and_exits_3() {
    let stderr = fault_ends_in_stop_and_exit_3("capture", "capture:panic:4000", |_| {});
    assert!(stderr.contains("capture thread panicked"), "{stderr}");
}

#[test]
fn an_inference_panic_stops_and_exits_3() {
    let stderr = fault_ends_in_stop_and_exit_3("inference", "inference:panic:4000", |_| {});
    assert!(stderr.contains("inference thread panicked"), "{stderr}");
}

#[test]
fn an_inference_stall_stops_and_exits_3() {
    let stderr = fault_ends_in_stop_and_exit_3("inference-stall", "inference:stall:4000", |_| {});
    assert!(stderr.contains("inference thread stalled"), "{stderr}");
}

#[test]
fn a_status_panic_stops_and_exits_3() {
    let stderr = fault_ends_in_stop_and_exit_3("status", "status:panic:4000", |_| {});
    assert!(stderr.contains("status thread panicked"), "{stderr}");
}

/// The publisher thread cannot send the final STOP: the main thread sends it.
#[test]
fn a_publisher_panic_still_gets_the_final_stop_out_and_exits_3() {
    let stderr = fault_ends_in_stop_and_exit_3("publisher", "publisher:panic:4000", |_| {});
    assert!(stderr.contains("publisher thread panicked"), "{stderr}");
    assert!(
        stderr.contains("final STOP was sent by the main thread"),
        "{stderr}"
    );
}

#[test]
fn a_publisher_stall_still_gets_the_final_stop_out_and_exits_3() {
    let stderr = fault_ends_in_stop_and_exit_3("publisher-stall", "publisher:stall:4000", |_| {});
    assert!(stderr.contains("publisher thread stalled"), "{stderr}");
    assert!(
        stderr.contains("final STOP was sent by the main thread"),
        "{stderr}"
    );
}

#[test]
fn a_callback_panic_stops_and_exits_3() {
    let stderr = fault_ends_in_stop_and_exit_3("callback", "callback:panic:0", |session| {
        session
            .put("vla/fault-callback/instruction", "wave")
            .wait()
            .unwrap();
    });
    assert!(stderr.contains("callback thread panicked"), "{stderr}");
}

/// The control thread's own panic: the main thread hands a last-resort STOP to the
/// publisher, and the process exits non-zero (3).
#[test]
fn a_control_panic_exits_3_after_a_last_resort_stop() {
    let stderr = fault_ends_in_stop_and_exit_3("control", "control:panic:4000", |_| {});
    assert!(stderr.contains("control thread panicked"), "{stderr}");
    assert!(stderr.contains("last-resort STOP"), "{stderr}");
}

#[test]
fn a_bad_fault_switch_is_refused_with_exit_2() {
    let port = free_port();
    let config = config_file("bad-switch", "bad-switch", port, WORKER_TIMEOUT_MS);
    let mut service = start(&config, "publisher:explode:10");
    let exit = wait_exit(&mut service, Duration::from_secs(30));
    assert_eq!(exit.status.code(), Some(2), "{}", exit.stderr);
    assert!(exit.stderr.contains("VLA_RT_TEST_FAULT"), "{}", exit.stderr);
}

/// A publisher held up for 1 s (within a 3 s worker timeout): afterwards the commands come
/// one per tick, each no older than a period on arrival, with the ones of the stall skipped,
/// never sent late in a burst.
#[test]
fn a_stalled_publisher_sends_no_burst_afterwards() {
    let period = Duration::from_secs_f64(1.0 / RATE_HZ);
    let port = free_port();
    let config = config_file("burst", "burst", port, 3000);
    let mut service = start(&config, "publisher:stall:4000:1000");
    let session = client_session(port);
    let (sender, receiver) = crossbeam::channel::unbounded();
    let _subscriber = session
        .declare_subscriber("vla/burst/cmd")
        .callback(move |sample| {
            let arrived = clock::realtime_ns();
            let record = CommandRecord::decode(&sample.payload().to_bytes()).unwrap();
            let _ = sender.send((Instant::now(), arrived, record));
        })
        .wait()
        .unwrap();

    // Read until a silence of 700 ms (the stall) has passed and 2 s of commands followed it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut arrivals: Vec<(Instant, u64, CommandRecord)> = Vec::new();
    let mut stall_end = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(arrival) = receiver.recv_timeout(left) else {
            panic!("no stall seen within 60 s ({} commands)", arrivals.len());
        };
        if let Some(previous) = arrivals.last() {
            if stall_end.is_none() && arrival.0 - previous.0 > Duration::from_millis(700) {
                stall_end = Some(arrivals.len());
            }
        }
        arrivals.push(arrival);
        if let Some(at) = stall_end {
            if arrival.0 - arrivals[at].0 > Duration::from_secs(2) {
                break;
            }
        }
    }
    let at = stall_end.unwrap();
    let before = &arrivals[at - 1].2;
    let after: Vec<_> = arrivals[at..].to_vec();
    // The commands of the stall were replaced, not queued: seq jumps over them.
    assert!(
        after[0].2.seq >= before.seq + 5,
        "seq {} after {} across a 1 s stall",
        after[0].2.seq,
        before.seq
    );
    // None older than a period on arrival (a few ms of slack for delivery on a busy machine).
    for (_, arrived_ns, record) in &after {
        let age = Duration::from_nanos(arrived_ns.saturating_sub(record.tick_time_ns));
        assert!(
            age <= period + Duration::from_millis(30),
            "seq {} arrived {age:?} after its tick",
            record.seq
        );
    }
    // One per tick: consecutive seq from the first on, and no more than a tick's worth
    // in any 300 ms.
    for pair in after.windows(2) {
        assert_eq!(pair[1].2.seq, pair[0].2.seq + 1, "after the stall");
    }
    for (i, (t, ..)) in after.iter().enumerate() {
        let within = after[i..]
            .iter()
            .take_while(|(u, ..)| *u - *t < Duration::from_millis(300))
            .count();
        assert!(
            within <= 5,
            "{within} commands within 300 ms from seq {}",
            after[i].2.seq
        );
    }

    // SIGTERM: the normal end, exit 0.
    let pid = service.child.as_ref().unwrap().id();
    // SAFETY: `kill` on the child's pid, which is still ours to signal (not yet reaped).
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    let exit = wait_exit(&mut service, Duration::from_secs(20));
    assert_eq!(exit.status.code(), Some(0), "{}", exit.stderr);
    assert!(exit.stderr.contains("runs again"), "{}", exit.stderr);
}
