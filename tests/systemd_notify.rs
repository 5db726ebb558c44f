//! The real `vla-rt run` under a fake service manager: the test binds the `NOTIFY_SOCKET`
//! datagram socket and sets `WATCHDOG_USEC`, as systemd does for `Type=notify` with
//! `WatchdogSec=`. It sees READY=1, WATCHDOG=1 at least every WATCHDOG_USEC, no WATCHDOG=1
//! while the control loop is stalled, the pings again once it runs, and STOPPING=1 at the end.
//! At a control rate of 0.5 Hz (a period as long as `WatchdogSec=2s` itself) the pings still
//! come at least every half of WATCHDOG_USEC: they have their own schedule.
//!
//! The stall is made from outside, without any hook in the service: the test ptrace-stops
//! the one thread named `vla-control` (`PTRACE_SEIZE` + `PTRACE_INTERRUPT` stop a single
//! thread, unlike SIGSTOP, which stops the whole process). Every other thread keeps running,
//! which the test checks by receiving the service's 1 Hz Zenoh status during the stall. This is
//! the failure the watchdog exists for: a process that is alive but whose control loop is not.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod service_support;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, RecvTimeoutError};
use zenoh::Wait;

const BINARY: &str = env!("CARGO_BIN_EXE_vla-rt");
/// 400 ms: the service must ping at least every 200 ms (half of it).
const WATCHDOG_USEC: u64 = 400_000;
const STALL: Duration = Duration::from_secs(2);

/// Kills the service if the test fails half-way, so no process outlives it.
struct ServiceProcess(Option<Child>);

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Every datagram the service sends, with its arrival time, from a reader thread.
fn listen(socket: UnixDatagram) -> Receiver<(Instant, String)> {
    let (sender, receiver) = crossbeam::channel::unbounded();
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 1024];
        loop {
            match socket.recv(&mut buffer) {
                Ok(n) => {
                    let message = String::from_utf8_lossy(&buffer[..n]).into_owned();
                    if sender.send((Instant::now(), message)).is_err() {
                        return;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    // Ends with the test: the receiver is gone once the test returns.
                    if sender.send((Instant::now(), String::new())).is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    });
    receiver
}

/// Messages (without the reader's empty keep-alives) until `until`.
fn collect_until(messages: &Receiver<(Instant, String)>, until: Instant) -> Vec<(Instant, String)> {
    let mut seen = Vec::new();
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return seen;
        }
        match messages.recv_timeout(left) {
            Ok((at, message)) if !message.is_empty() => seen.push((at, message)),
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout) => return seen,
            Err(RecvTimeoutError::Disconnected) => panic!("notify reader ended"),
        }
    }
}

/// Waits (at most `timeout`) for a message equal to `wanted`; returns everything read.
fn wait_for(
    messages: &Receiver<(Instant, String)>,
    wanted: &str,
    timeout: Duration,
) -> Vec<(Instant, String)> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        if let Ok((at, message)) = messages.recv_timeout(left) {
            if message.is_empty() {
                continue;
            }
            let done = message == wanted;
            seen.push((at, message));
            if done {
                return seen;
            }
        }
    }
    panic!(
        "no {wanted} within {timeout:?}; got {:?}",
        seen.iter().map(|(_, m)| m).collect::<Vec<_>>()
    );
}

fn watchdog_times(messages: &[(Instant, String)]) -> Vec<Instant> {
    messages
        .iter()
        .filter(|(_, m)| m == "WATCHDOG=1")
        .map(|(at, _)| *at)
        .collect()
}

/// The thread of `pid` named `name` (its `comm`).
fn thread_named(pid: u32, name: &str) -> Option<libc::pid_t> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .filter_map(|entry| entry.ok())
        .find(|entry| {
            std::fs::read_to_string(entry.path().join("comm")).is_ok_and(|c| c.trim() == name)
        })
        .and_then(|entry| entry.file_name().to_str()?.parse().ok())
}

/// A thread stopped by ptrace (this test thread is its tracer); dropping it lets it run on.
struct StoppedThread(libc::pid_t);

impl StoppedThread {
    fn stop(tid: libc::pid_t) -> Self {
        // SAFETY: PTRACE_SEIZE takes no address or data pointer (null); `tid` is a thread of
        // our own child process, which we may trace.
        let seized = unsafe {
            libc::ptrace(
                libc::PTRACE_SEIZE,
                tid,
                std::ptr::null_mut::<libc::c_void>(),
                std::ptr::null_mut::<libc::c_void>(),
            )
        };
        assert_eq!(
            seized,
            0,
            "PTRACE_SEIZE: {}",
            std::io::Error::last_os_error()
        );
        let stopped = StoppedThread(tid);
        // SAFETY: as above; PTRACE_INTERRUPT applies to a thread we have seized.
        let interrupted = unsafe {
            libc::ptrace(
                libc::PTRACE_INTERRUPT,
                tid,
                std::ptr::null_mut::<libc::c_void>(),
                std::ptr::null_mut::<libc::c_void>(),
            )
        };
        assert_eq!(
            interrupted,
            0,
            "PTRACE_INTERRUPT: {}",
            std::io::Error::last_os_error()
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut status = 0;
            // SAFETY: `status` is a valid int to write; WNOHANG never blocks; __WALL lets us
            // wait for a thread that is not a process leader.
            let waited = unsafe { libc::waitpid(tid, &mut status, libc::__WALL | libc::WNOHANG) };
            if waited == tid && libc::WIFSTOPPED(status) {
                return stopped;
            }
            assert!(waited >= 0, "waitpid: {}", std::io::Error::last_os_error());
            assert!(Instant::now() < deadline, "thread {tid} did not stop");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for StoppedThread {
    fn drop(&mut self) {
        // SAFETY: PTRACE_DETACH of a thread we traced and that is in a ptrace-stop; the data
        // argument 0 means no signal is delivered on resumption.
        unsafe {
            libc::ptrace(
                libc::PTRACE_DETACH,
                self.0,
                std::ptr::null_mut::<libc::c_void>(),
                std::ptr::null_mut::<libc::c_void>(),
            );
        }
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn watchdog_pings_follow_the_control_loop() {
    let dir = scratch("systemd-notify");
    let socket_path = dir.join("notify.sock");
    let messages = listen(UnixDatagram::bind(&socket_path).unwrap());
    let port = service_support::free_port();
    let config = dir.join("service.toml");
    std::fs::write(
        &config,
        format!(
            "robot_id = \"notified\"\n[model]\npath = \"{}\"\n[camera]\nwidth = 160\nheight = 120\n\
             [control]\nrate_hz = 20.0\nrealtime = \"off\"\nstate_dir = \"{}\"\nestop_missing = \"released\"\n\
             [zenoh]\nlisten = [\"tcp/127.0.0.1:{port}\"]\n",
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("engines/openvla-tiny")
                .display(),
            dir.join("state").display()
        ),
    )
    .unwrap();
    let child = Command::new(BINARY)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .args(["--duration", "12"])
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", WATCHDOG_USEC.to_string())
        .env_remove("WATCHDOG_PID")
        .env("RUST_LOG", "warn,zenoh=error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut service = ServiceProcess(Some(child));

    let started = wait_for(&messages, "READY=1", Duration::from_secs(60));
    assert!(
        started.iter().all(|(_, m)| m == "READY=1"),
        "before READY: {started:?}"
    );
    let ready_at = started.last().unwrap().0;

    // Running: a WATCHDOG=1 at least every WATCHDOG_USEC (the service aims at half of it).
    let running = collect_until(&messages, ready_at + Duration::from_millis(1500));
    let pings = watchdog_times(&running);
    assert!(
        pings.len() >= 5,
        "{} pings in 1.5 s: {running:?}",
        pings.len()
    );
    for pair in pings.windows(2) {
        assert!(
            pair[1] - pair[0] < Duration::from_micros(WATCHDOG_USEC),
            "gap of {:?} between pings",
            pair[1] - pair[0]
        );
    }
    assert!(
        running.iter().any(|(_, m)| m.starts_with("STATUS=")),
        "{running:?}"
    );

    // The rest of the process is observed through its status publisher.
    let session = service_support::client_session(port);
    let (status_tx, status_rx) = crossbeam::channel::unbounded();
    let _status = session
        .declare_subscriber("vla/notified/status")
        .callback(move |_| {
            let _ = status_tx.send(Instant::now());
        })
        .wait()
        .unwrap();
    status_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("status from the running service");

    // Stall the control thread alone.
    let control = thread_named(pid, "vla-control").expect("a thread named vla-control");
    let stalled = StoppedThread::stop(control);
    let stopped_at = Instant::now();
    // A datagram sent just before the stop may still be on its way to the reader, and the
    // watchdog thread pings until the control thread has been silent for half of
    // WATCHDOG_USEC (200 ms).
    let _in_flight = collect_until(&messages, stopped_at + Duration::from_millis(300));
    while status_rx.try_recv().is_ok() {}
    let during = collect_until(&messages, stopped_at + STALL);
    let statuses_during = status_rx.try_iter().count();
    drop(stalled);
    let resumed_at = Instant::now();
    assert!(
        watchdog_times(&during).is_empty(),
        "WATCHDOG=1 while the control loop was stopped: {during:?}"
    );
    assert!(
        during.is_empty(),
        "the stopped control thread sends READY and STATUS, and pings are withheld: {during:?}"
    );
    assert!(
        statuses_during >= 1,
        "the rest of the process kept running (status published) during the stall"
    );

    // Running again: the pings come back.
    let after = collect_until(&messages, resumed_at + Duration::from_secs(1));
    assert!(
        watchdog_times(&after).len() >= 2,
        "pings did not resume: {after:?}"
    );

    // The end of --duration: STOPPING=1, exit 0.
    wait_for(&messages, "STOPPING=1", Duration::from_secs(30));
    let mut child = service.0.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the service did not exit after STOPPING=1");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    drop(session);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// At 0.5 Hz with WatchdogSec=2s (the shipped unit's), WATCHDOG=1 still comes at least every
/// second: the pings do not wait for ticks.
#[test]
fn watchdog_pings_keep_their_schedule_at_a_slow_rate() {
    const SLOW_WATCHDOG_USEC: u64 = 2_000_000;
    let dir = scratch("systemd-notify-slow");
    let socket_path = dir.join("notify.sock");
    let messages = listen(UnixDatagram::bind(&socket_path).unwrap());
    let port = service_support::free_port();
    let config = dir.join("service.toml");
    std::fs::write(
        &config,
        format!(
            "robot_id = \"slow\"\n[model]\npath = \"{}\"\n[camera]\nwidth = 160\nheight = 120\n\
             [control]\nrate_hz = 0.5\nrealtime = \"off\"\n[zenoh]\nlisten = [\"tcp/127.0.0.1:{port}\"]\n",
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("engines/openvla-tiny")
                .display()
        ),
    )
    .unwrap();
    let child = Command::new(BINARY)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", SLOW_WATCHDOG_USEC.to_string())
        .env_remove("WATCHDOG_PID")
        .env("RUST_LOG", "warn,zenoh=error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut service = ServiceProcess(Some(child));
    let ready_at = wait_for(&messages, "READY=1", Duration::from_secs(60))
        .last()
        .unwrap()
        .0;
    // 7 s: three and a half control periods.
    let running = collect_until(&messages, ready_at + Duration::from_secs(7));
    let mut pings = vec![ready_at];
    pings.extend(watchdog_times(&running));
    assert!(
        pings.len() >= 8,
        "{} pings in 7 s: {running:?}",
        pings.len()
    );
    for pair in pings.windows(2) {
        assert!(
            pair[1] - pair[0] <= Duration::from_micros(SLOW_WATCHDOG_USEC / 2),
            "gap of {:?} between pings at 0.5 Hz",
            pair[1] - pair[0]
        );
    }
    let mut child = service.0.take().unwrap();
    // SAFETY: `kill` on the child's pid, which is still ours to signal (not yet reaped).
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    wait_for(&messages, "STOPPING=1", Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the service did not exit after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    std::fs::remove_dir_all(&dir).unwrap();
}
