//! Instruction limits on the real `vla-rt run` (bundled default: synthetic camera, tiny
//! checkpoint, CPU) over loopback Zenoh: an oversized instruction is refused without a memory
//! spike and leaves the one in force, as do invalid UTF-8 and a prompt too long for the KV
//! cache; the status counts each refusal and shows only a prefix, the length and a hash of the
//! instruction in force. Every wait is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod service_support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use service_support::*;
use vla_rt::control::ControlState;
use zenoh::Wait;

/// Kills the child when a test fails half-way.
struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_kb(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = text.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn sha256_16(text: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(text.as_bytes())[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The newest status documents, as they arrive.
struct StatusStream {
    receiver: crossbeam::channel::Receiver<Value>,
    _subscriber: zenoh::pubsub::Subscriber<()>,
}

impl StatusStream {
    fn new(session: &zenoh::Session, robot_id: &str) -> Self {
        let (sender, receiver) = crossbeam::channel::unbounded();
        let subscriber = session
            .declare_subscriber(format!("vla/{robot_id}/status"))
            .callback(move |sample| {
                let text = sample.payload().try_to_string().unwrap().into_owned();
                let _ = sender.send(serde_json::from_str(&text).unwrap());
            })
            .wait()
            .unwrap();
        Self {
            receiver,
            _subscriber: subscriber,
        }
    }

    /// The first status satisfying `wanted`, within `timeout`.
    fn until(&self, timeout: Duration, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.receiver.recv_timeout(left) {
                Ok(document) if wanted(&document) => return document,
                Ok(document) => last = document,
                Err(_) => panic!("waited {timeout:?} for {what}; last status: {last}"),
            }
        }
    }
}

#[test]
fn oversized_and_invalid_instructions_are_refused_and_the_previous_stays() {
    let port = free_port();
    let robot = "limits";
    let child = Command::new(env!("CARGO_BIN_EXE_vla-rt"))
        .args(["run", "--robot-id", robot, "--rate-hz", "10"])
        .args(["--zenoh-listen", &format!("tcp/127.0.0.1:{port}")])
        .env("RUST_LOG", "info,zenoh=error")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut service = Service(child);
    let pid = service.0.id();
    let session = client_session(port);
    let commands = CommandStream::new(&session, robot);
    let status = StatusStream::new(&session, robot);
    // `--robot-id` other than the simulation's starts the bundled config disarmed.
    arm_until_act(&session, &commands, robot, Duration::from_secs(60));
    let key = format!("vla/{robot}/instruction");

    // A valid instruction is applied; the status carries its prefix, length and hash.
    let task = "place the green cup on the top shelf, next to the two bowls, handle facing out";
    session.put(&key, task).wait().unwrap();
    let applied = status.until(Duration::from_secs(10), "the new instruction", |d| {
        d["policy"]["instruction_sha256"] == sha256_16(task)
    });
    let policy = &applied["policy"];
    assert_eq!(policy["instruction"], &task[..40]);
    assert_eq!(policy["instruction_bytes"], task.len());
    assert_eq!(policy["instructions_rejected"], 0);
    let failures_before = policy["failures"].as_u64().unwrap();

    // 8 MB: refused from its length, before it is copied, converted or tokenized. (The
    // session's inbound message limit, twice max_bytes plus 2 KiB, drops it before the
    // service sees it; the 2 KiB payload after it is within that limit and over max_bytes.)
    let rss_before = rss_kb(pid);
    // A put is dropped by default when the sender's queue is full, as it is while 8 MB leave
    // a loaded machine; the two that must arrive block for room instead.
    let huge = vec![b'a'; 8 << 20];
    session.put(&key, huge).wait().unwrap();
    session
        .put(&key, vec![b'b'; 2048])
        .congestion_control(zenoh::qos::CongestionControl::Block)
        .wait()
        .unwrap();
    session
        .put(&key, &b"\xff\xfe not UTF-8 at all"[..])
        .congestion_control(zenoh::qos::CongestionControl::Block)
        .wait()
        .unwrap();
    let refused = status.until(Duration::from_secs(10), "the refusals counted", |d| {
        d["policy"]["instructions_rejected"].as_u64().unwrap() >= 2
    });
    // Predictions go on with the previous instruction, and none failed.
    commands.drain();
    commands.until(
        Duration::from_secs(10),
        "an ACT after the refusals",
        is_state(ControlState::Act),
    );
    let rss_after = rss_kb(pid);
    let rejected = refused["policy"]["instructions_rejected"].as_u64().unwrap();
    assert!((2..=3).contains(&rejected), "{refused}");
    let later = status.until(Duration::from_secs(5), "a later status", |_| true);
    let policy = &later["policy"];
    assert_eq!(policy["instruction_sha256"], sha256_16(task), "{later}");
    assert_eq!(policy["failures"].as_u64().unwrap(), failures_before);
    // Before the limit, the tiny model's prompt path alone took hundreds of MB for this
    // payload; refused from its length, the receive buffer is all it costs.
    let grown_mb = (rss_after as f64 - rss_before as f64) / 1024.0;
    eprintln!("RSS {rss_before} kB before the 8 MB instruction, {rss_after} kB after");
    assert!(
        grown_mb < 12.0,
        "RSS grew {grown_mb:.1} MB ({rss_before} kB -> {rss_after} kB) for a refused instruction"
    );

    // A prompt longer than the KV cache holds: within max_bytes, refused by the policy's
    // check before it replaces the one in force.
    // Every digit is a token: 1000 of them within 1000 bytes, over the tiny model's limit.
    // After a second, so that this refusal gets its own log line.
    std::thread::sleep(Duration::from_millis(1100));
    let long = "0123456789".repeat(100);
    session.put(&key, long.as_str()).wait().unwrap();
    let refused = status.until(Duration::from_secs(10), "the long prompt refused", |d| {
        d["policy"]["instructions_rejected"].as_u64().unwrap() > rejected
    });
    assert_eq!(refused["policy"]["instruction_sha256"], sha256_16(task));

    // SAFETY: `kill` on the child's pid, which is still ours to signal (not yet reaped).
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(15);
    let code = loop {
        if let Some(code) = service.0.try_wait().unwrap() {
            break code;
        }
        assert!(Instant::now() < deadline, "no exit within 15 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::io::read_to_string(service.0.stderr.take().unwrap()).unwrap();
    assert_eq!(code.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Each refusal is logged once with its start, never the whole text; the one in force is
    // logged by prefix too.
    // (The 8 MB payload never reaches the service: the session's inbound limit drops it.)
    assert!(
        stderr.contains("instruction refused (2048 bytes"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(&"a".repeat(81)),
        "a refused payload logged in full"
    );
    assert!(
        stderr.contains("instruction applied: \"place the green cup"),
        "{stderr}"
    );
    assert!(
        stderr.contains("the prompt may have at most"),
        "the long prompt's refusal names the limit: {stderr}"
    );
}
