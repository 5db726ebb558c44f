//! Zenoh security of the real `vla-rt run`: mutual TLS and the access-control policy of
//! `config/zenoh-mtls.example.json5`, with a CA and certificates made by
//! `scripts/make-certs.sh` (openssl) for each test. Peers without a certificate of the CA
//! cannot connect; an arm driver can stop but not release, arm or instruct; the operator can
//! do all of it; records put on `cmd` by anyone but the robot never reach a subscriber;
//! `require_tls` refuses an exposed endpoint and an exposed one is warned about; an operator's
//! ROS 2 machine sends the instruction and the e-stop as ROS 2 messages, of exactly their
//! types, and cannot release, arm or use the native instruction key. Remote inference through
//! a router with `config/zenoh-remote.example.json5`: a robot's certificate gets the real
//! server's answers; a robot posing as a server (its own queryable, its own server token) is
//! never asked and never takes a robot away; another certificate gets no answer. Every wait is
//! bounded; a refused put is tried again and again over a window, and each refusal is paired
//! with the same put by an allowed peer, which arrives.

// Test helpers fail the test by panicking, like the test functions themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/bounded.rs"]
mod bounded;
mod service_support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bounded::run_bounded;
use crossbeam::channel::Receiver;
use service_support::{free_port, is_state, CommandStream};
use vla_rt::control::command_record::CommandRecord;
use vla_rt::control::ControlState;
use zenoh::Wait;

const BINARY: &str = env!("CARGO_BIN_EXE_vla-rt");
const ROBOT: &str = "arm0";
const WAIT: Duration = Duration::from_secs(30);
/// How long a refused put is retried before concluding it never arrives.
const REFUSED_WINDOW: Duration = Duration::from_secs(2);

/// A CA with certificates for the robot, the operator and a driver, and a second CA that
/// signed a certificate with the operator's name (a peer the robot must not trust).
struct Pki {
    dir: PathBuf,
    rogue: PathBuf,
}

impl Pki {
    /// Fails the test when openssl is missing: `scripts/setup.sh` installs it.
    fn make(test: &str) -> Self {
        assert!(
            Command::new("openssl").arg("version").output().is_ok(),
            "openssl is missing; scripts/setup.sh installs it"
        );
        let dir = std::env::temp_dir().join(format!("vla-rt-pki-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/make-certs.sh");
        let make = |dir: &Path, names: &[&str]| {
            let output = Command::new(&script).arg(dir).args(names).output().unwrap();
            assert!(
                output.status.success(),
                "make-certs.sh: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        make(
            &dir,
            &[
                "vla-robot-arm0=DNS:localhost,IP:127.0.0.1",
                "vla-operator",
                "vla-driver-arm0",
                "vla-router=DNS:localhost,IP:127.0.0.1",
                "vla-ros2-operator",
                "vla-server-tiny",
                "vla-robot-arm1",
            ],
        );
        let rogue = dir.join("rogue");
        make(&rogue, &["vla-operator"]);
        Self { dir, rogue }
    }

    /// The shipped example configuration, with this CA's files and a listen port of its own.
    fn service_json5(&self, port: u16) -> PathBuf {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/zenoh-mtls.example.json5");
        let text = std::fs::read_to_string(example).unwrap();
        assert!(text.contains("tls/0.0.0.0:7447") && text.contains("/etc/vla-rt/tls/"));
        let text = text
            .replace("tls/0.0.0.0:7447", &format!("tls/127.0.0.1:{port}"))
            .replace("/etc/vla-rt/tls/", &format!("{}/", self.dir.display()));
        let path = self.dir.join(format!("zenoh-{port}.json5"));
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Pki {
    /// The example's `access_control` block in a router's configuration, as the README's
    /// router topology says: mode `router`, listening on `port` with the router's own
    /// certificate.
    fn router_config(&self, port: u16) -> zenoh::Config {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/zenoh-mtls.example.json5");
        let mut text = std::fs::read_to_string(example).unwrap();
        for (from, to) in [
            ("mode: \"peer\"", "mode: \"router\""),
            (
                "listen_certificate: \"/etc/vla-rt/tls/vla-robot-arm0.pem\"",
                "listen_certificate: \"/etc/vla-rt/tls/vla-router.pem\"",
            ),
            (
                "listen_private_key: \"/etc/vla-rt/tls/vla-robot-arm0.key\"",
                "listen_private_key: \"/etc/vla-rt/tls/vla-router.key\"",
            ),
            ("tls/0.0.0.0:7447", &format!("tls/127.0.0.1:{port}")),
            ("/etc/vla-rt/tls/", &format!("{}/", self.dir.display())),
        ] {
            assert!(text.contains(from), "the example no longer has {from}");
            text = text.replace(from, to);
        }
        zenoh::Config::from_json5(&text).unwrap()
    }

    /// `config/zenoh-remote.example.json5` as shipped, with this CA's files and a listen port
    /// of its own.
    fn remote_router_config(&self, port: u16) -> zenoh::Config {
        let example =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("config/zenoh-remote.example.json5");
        let mut text = std::fs::read_to_string(example).unwrap();
        for (from, to) in [
            ("tls/0.0.0.0:7447", format!("tls/127.0.0.1:{port}")),
            ("/etc/vla-rt/tls/", format!("{}/", self.dir.display())),
        ] {
            assert!(text.contains(from), "the example no longer has {from}");
            text = text.replace(from, &to);
        }
        zenoh::Config::from_json5(&text).unwrap()
    }

    /// The service's json5 as a client of the router on `port`, proving itself with the
    /// robot's certificate. By address: a clean root file system may have no /etc/hosts to
    /// resolve `localhost`.
    fn service_client_json5(&self, port: u16) -> PathBuf {
        let file = |name: &str| self.dir.join(name).display().to_string();
        let text = format!(
            "{{mode: \"client\", connect: {{endpoints: [\"tls/127.0.0.1:{port}\"]}},\n\
             scouting: {{multicast: {{enabled: false}}}},\n\
             transport: {{link: {{protocols: [\"tls\"], tls: {{root_ca_certificate: {:?},\n\
             connect_certificate: {:?}, connect_private_key: {:?}, enable_mtls: true,\n\
             verify_name_on_connect: true}}}}}}}}",
            file("ca.pem"),
            file("vla-robot-arm0.pem"),
            file("vla-robot-arm0.key"),
        );
        let path = self.dir.join(format!("service-client-{port}.json5"));
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A client session that connects over TLS to `port`, presenting `cert` (`None`: no
/// certificate) and trusting `ca`.
fn tls_client(ca: &Path, cert: Option<(&Path, &str)>, port: u16) -> Result<zenoh::Session, String> {
    let mut tls = format!(
        "root_ca_certificate: {:?}, enable_mtls: {}",
        ca.join("ca.pem").display().to_string(),
        cert.is_some()
    );
    if let Some((dir, name)) = cert {
        tls += &format!(
            ", connect_certificate: {:?}, connect_private_key: {:?}",
            dir.join(format!("{name}.pem")).display().to_string(),
            dir.join(format!("{name}.key")).display().to_string()
        );
    }
    let json5 = format!(
        "{{mode: \"client\", connect: {{endpoints: [\"tls/127.0.0.1:{port}\"], timeout_ms: 5000, \
         exit_on_failure: true}}, scouting: {{multicast: {{enabled: false}}}}, \
         transport: {{link: {{tls: {{{tls}}}}}}}}}"
    );
    let config = zenoh::Config::from_json5(&json5).unwrap();
    zenoh::open(config).wait().map_err(|e| e.to_string())
}

fn client(pki: &Pki, name: &str, port: u16) -> zenoh::Session {
    tls_client(&pki.dir, Some((&pki.dir, name)), port)
        .unwrap_or_else(|e| panic!("{name} cannot connect: {e}"))
}

/// `vla-rt run` with the bundled tiny model on a synthetic camera, killed when dropped.
struct ServiceProcess {
    child: Child,
    stderr: Arc<Mutex<String>>,
    /// Reads stderr until the pipe closes, which is when the process has exited.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl ServiceProcess {
    fn start(dir: &Path, zenoh_section: &str, extra_args: &[&str]) -> Self {
        let toml = format!(
            "robot_id = \"{ROBOT}\"\n\
             [model]\npath = {:?}\n\
             [camera]\nwidth = 64\nheight = 48\nfps = 100\n\
             [control]\nrate_hz = 20.0\nrealtime = \"off\"\nstart_armed = true\n\
             estop_missing = \"released\"\nstate_dir = {:?}\n\
             [zenoh]\n{zenoh_section}\n",
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("engines/openvla-tiny")
                .display()
                .to_string(),
            dir.join(format!("state-{}", free_port()))
                .display()
                .to_string(),
        );
        std::fs::create_dir_all(dir).unwrap();
        let config = dir.join(format!("service-{}.toml", free_port()));
        std::fs::write(&config, toml).unwrap();
        let mut child = Command::new(BINARY)
            .args(["run", "--config", config.to_str().unwrap()])
            .args(extra_args)
            .env("RUST_LOG", "info,zenoh=error")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let sink = Arc::clone(&stderr);
        let reader = std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        });
        Self {
            child,
            stderr,
            reader: Some(reader),
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits for the exit (bounded) and returns its code and stderr.
    fn wait(mut self, timeout: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // The pipe closed with the process: the reader has read everything.
                self.reader.take().unwrap().join().unwrap();
                return (status.code(), self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "vla-rt still running after {timeout:?}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Status documents as they arrive.
struct StatusWatch {
    receiver: Receiver<serde_json::Value>,
    _subscriber: zenoh::pubsub::Subscriber<()>,
}

impl StatusWatch {
    fn new(session: &zenoh::Session) -> Self {
        let (sender, receiver) = crossbeam::channel::unbounded();
        let subscriber = session
            .declare_subscriber(format!("vla/{ROBOT}/status"))
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

    /// The next document, or a failed test after [`WAIT`].
    fn next(&self) -> serde_json::Value {
        self.receiver
            .recv_timeout(WAIT)
            .expect("no status document")
    }

    fn instruction_after_next_report(&self) -> String {
        while self.receiver.try_recv().is_ok() {}
        self.next()["policy"]["instruction"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

/// Puts `payload` on `key` every 100 ms until `arrived` says so; fails after [`WAIT`].
fn put_until(session: &zenoh::Session, key: &str, payload: &str, arrived: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        session.put(key, payload).wait().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        if arrived() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "put of {payload:?} on {key} never took effect"
        );
    }
}

/// Puts `payload` on `key` every 100 ms for [`REFUSED_WINDOW`].
fn put_for_a_while(session: &zenoh::Session, key: &str, payload: &[u8]) {
    let end = Instant::now() + REFUSED_WINDOW;
    while Instant::now() < end {
        session.put(key, payload.to_vec()).wait().unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn key(suffix: &str) -> String {
    format!("vla/{ROBOT}/{suffix}")
}

/// A driver's put on `estop/stop` stops the robot, and none of `attempts` (key suffix and
/// payload, each put for [`REFUSED_WINDOW`]) lets anything but STOP out.
fn driver_stops_and_cannot_leave_stop(
    driver: &zenoh::Session,
    commands: &CommandStream,
    attempts: &[(&str, &[u8])],
) {
    driver.put(key("estop/stop"), "stop").wait().unwrap();
    commands.until(WAIT, "STOP from the driver", is_state(ControlState::Stop));
    commands.drain();
    for (suffix, payload) in attempts {
        put_for_a_while(driver, &key(suffix), payload);
    }
    let held: Vec<_> = commands.receiver.try_iter().collect();
    let seconds = REFUSED_WINDOW.as_secs_f64() * attempts.len() as f64;
    assert!(
        held.len() as f64 >= 10.0 * seconds,
        "{} commands in {seconds} s at 20 Hz",
        held.len()
    );
    assert!(
        held.iter()
            .all(|r| r.as_ref().is_ok_and(|r| r.state == ControlState::Stop)),
        "a driver's put on {attempts:?} left STOP"
    );
}

/// The operator releases the e-stop and arms (leaving STOP needs both), until ACT is back.
fn operator_releases_and_arms(operator: &zenoh::Session, commands: &CommandStream) {
    put_until(operator, &key("estop/release"), "release", || {
        operator.put(key("arm"), "arm").wait().unwrap();
        commands
            .receiver
            .try_iter()
            .any(|r| r.is_ok_and(|r| r.state == ControlState::Act))
    });
}

/// A well-formed record (valid CRC) with `seq` that orders a large motion.
fn forged_record(seq: u64) -> [u8; vla_rt::control::command_record::RECORD_LEN] {
    let mut bytes = [0u8; vla_rt::control::command_record::RECORD_LEN];
    CommandRecord {
        state: ControlState::Act,
        seq,
        tick_time_ns: 1,
        capture_time_ns: 1,
        action: [0.05, 0.05, 0.05, 0.0, 0.0, 0.0, 1.0],
    }
    .encode(&mut bytes);
    bytes
}

/// Far above any sequence number the service reaches in a test.
const FORGED_SEQ: u64 = 4_000_000_000;

fn start_secure_service(pki: &Pki) -> (ServiceProcess, u16) {
    start_secure_service_with(pki, &[])
}

fn start_secure_service_with(pki: &Pki, extra_args: &[&str]) -> (ServiceProcess, u16) {
    let port = free_port();
    let json5 = pki.service_json5(port);
    let service = ServiceProcess::start(
        &pki.dir,
        &format!(
            "config = {:?}\nrequire_tls = true",
            json5.display().to_string()
        ),
        extra_args,
    );
    (service, port)
}

#[test]
fn peers_without_a_certificate_of_the_ca_cannot_connect() {
    let pki = Pki::make("noca");
    let (service, port) = start_secure_service(&pki);
    // The operator connects (once the service listens): the refusals below are the
    // certificates', not a missing listener.
    let deadline = Instant::now() + WAIT;
    let operator = loop {
        match tls_client(&pki.dir, Some((&pki.dir, "vla-operator")), port) {
            Ok(session) => break session,
            Err(e) => assert!(Instant::now() < deadline, "{e}\n{}", service.stderr()),
        }
    };
    let status = StatusWatch::new(&operator);
    // The example's listener, moved to loopback for the test.
    assert_eq!(
        status.next()["transport"],
        serde_json::json!({"tls": true, "mutual": true, "access_control": true, "loopback_only": true})
    );

    // The example arm driver, with the driver's configuration of README step 4.
    let driver_json5 = pki.dir.join("driver.json5");
    std::fs::write(
        &driver_json5,
        format!(
            "{{mode: \"client\", connect: {{endpoints: [\"tls/127.0.0.1:{port}\"]}},\n\
             scouting: {{multicast: {{enabled: false}}}},\n\
             transport: {{link: {{tls: {{root_ca_certificate: {:?}, connect_certificate: {:?},\n\
             connect_private_key: {:?}, enable_mtls: true}}}}}}}}",
            pki.dir.join("ca.pem").display().to_string(),
            pki.dir.join("vla-driver-arm0.pem").display().to_string(),
            pki.dir.join("vla-driver-arm0.key").display().to_string(),
        ),
    )
    .unwrap();
    let driver_binary = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("examples/arm_driver"))
        .unwrap();
    let mut command = Command::new(&driver_binary);
    command
        .args([
            "--robot-id",
            ROBOT,
            "--count",
            "5",
            "--json",
            "--zenoh-config",
        ])
        .arg(&driver_json5);
    let output = run_bounded(command, WAIT);
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && printed.lines().count() == 5,
        "{}\n{printed}",
        String::from_utf8_lossy(&output.stderr)
    );

    // The operator's name on a certificate of another CA.
    let rogue = tls_client(&pki.dir, Some((&pki.rogue, "vla-operator")), port);
    assert!(rogue.is_err(), "a certificate of another CA was accepted");
    // TLS without a client certificate.
    let anonymous = tls_client(&pki.dir, None, port);
    assert!(
        anonymous.is_err(),
        "a peer without a certificate was accepted"
    );
    // Plain TCP to the TLS port.
    let config = zenoh::Config::from_json5(&format!(
        "{{mode: \"client\", connect: {{endpoints: [\"tcp/127.0.0.1:{port}\"], timeout_ms: 3000, \
         exit_on_failure: true}}, scouting: {{multicast: {{enabled: false}}}}}}"
    ))
    .unwrap();
    assert!(
        zenoh::open(config).wait().is_err(),
        "plain TCP was accepted"
    );
    drop(service);
}

#[test]
fn a_driver_stops_but_cannot_release_instruct_or_arm_and_the_operator_can() {
    let pki = Pki::make("roles");
    let (service, port) = start_secure_service(&pki);
    let deadline = Instant::now() + WAIT;
    let driver = loop {
        match tls_client(&pki.dir, Some((&pki.dir, "vla-driver-arm0")), port) {
            Ok(session) => break session,
            Err(e) => assert!(Instant::now() < deadline, "{e}\n{}", service.stderr()),
        }
    };
    let operator = client(&pki, "vla-operator", port);
    let commands = CommandStream::new(&driver, ROBOT);
    let status = StatusWatch::new(&operator);
    commands.until(WAIT, "the first ACT", is_state(ControlState::Act));

    // The driver stops the robot and cannot release it, on the new key or the old one.
    driver_stops_and_cannot_leave_stop(
        &driver,
        &commands,
        &[("estop/release", b"release"), ("estop", b"release")],
    );
    operator_releases_and_arms(&operator, &commands);
    // The old key still stops, for the driver too.
    driver.put(key("estop"), "stop").wait().unwrap();
    commands.until(WAIT, "STOP on the old key", is_state(ControlState::Stop));
    operator_releases_and_arms(&operator, &commands);

    // Instructions: the driver's never reach the policy, the operator's do.
    let before = status.instruction_after_next_report();
    put_for_a_while(&driver, &key("instruction"), b"wave at the driver");
    assert_eq!(status.instruction_after_next_report(), before);
    put_until(&operator, &key("instruction"), "stack the cups", || {
        status.instruction_after_next_report() == "stack the cups"
    });
    // Larger than any legitimate instruction: dropped by the transport, not applied.
    let huge = "x".repeat(16 * 1024);
    put_for_a_while(&operator, &key("instruction"), huge.as_bytes());
    assert_eq!(status.instruction_after_next_report(), "stack the cups");
    // Exactly the longest instruction allowed, in words the prompt's token limit holds.
    let longest: String = "pick up the cup "
        .repeat(vla_rt::config::INSTRUCTION_MAX_BYTES / 16 + 1)
        .chars()
        .take(vla_rt::config::INSTRUCTION_MAX_BYTES)
        .collect();
    // The status shows the instruction in force by its first 40 characters.
    put_until(&operator, &key("instruction"), &longest, || {
        status.instruction_after_next_report() == longest[..40]
    });

    // Arming (the service's handler is not part of this check): a session holding the
    // robot's certificate subscribes to the arm key, as the service does.
    let robot = client(&pki, "vla-robot-arm0", port);
    let (sender, armed) = crossbeam::channel::unbounded();
    let _arm_subscriber = robot
        .declare_subscriber(key("arm"))
        .callback(move |sample| {
            let _ = sender.send(sample.payload().try_to_string().unwrap().into_owned());
        })
        .wait()
        .unwrap();
    put_for_a_while(&driver, &key("arm"), b"arm from the driver");
    // Give the operator's side time to learn of the subscription before the driver's window
    // is judged: the operator's put below must arrive for the check to mean anything.
    put_until(&operator, &key("arm"), "arm", || !armed.is_empty());
    put_for_a_while(&driver, &key("arm"), b"arm from the driver");
    let received: Vec<String> = armed.try_iter().collect();
    assert!(
        received.iter().all(|p| p == "arm"),
        "the driver's arm arrived: {received:?}"
    );
    drop(service);
}

#[test]
fn records_from_anyone_but_the_robot_never_reach_a_subscriber() {
    let pki = Pki::make("forgery");
    let (service, port) = start_secure_service(&pki);
    let deadline = Instant::now() + WAIT;
    let driver = loop {
        match tls_client(&pki.dir, Some((&pki.dir, "vla-driver-arm0")), port) {
            Ok(session) => break session,
            Err(e) => assert!(Instant::now() < deadline, "{e}\n{}", service.stderr()),
        }
    };
    let commands = CommandStream::new(&driver, ROBOT);
    commands.until(WAIT, "the first ACT", is_state(ControlState::Act));

    for name in ["vla-operator", "vla-driver-arm0"] {
        let forger = client(&pki, name, port);
        let end = Instant::now() + REFUSED_WINDOW;
        while Instant::now() < end {
            forger
                .put(key("cmd"), forged_record(FORGED_SEQ).to_vec())
                .wait()
                .unwrap();
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(forger);
    }
    // The same put from the robot's certificate is delivered: the path exists, the policy
    // is what stops the others.
    let robot = client(&pki, "vla-robot-arm0", port);
    let mut seen = Vec::new();
    let end = Instant::now() + WAIT;
    loop {
        robot
            .put(key("cmd"), forged_record(FORGED_SEQ + 1).to_vec())
            .wait()
            .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        seen.extend(commands.receiver.try_iter().map(Result::unwrap));
        if seen.iter().any(|r| r.seq == FORGED_SEQ + 1) {
            break;
        }
        assert!(Instant::now() < end, "the robot's own record never arrived");
    }
    assert!(
        !seen.iter().any(|r| r.seq == FORGED_SEQ),
        "a forged record reached the subscriber"
    );
    drop(service);
}

/// The README's router topology: the example's policy enforced by a router, the service its
/// client. The roles hold as they do with the service listening itself.
#[test]
fn a_router_enforces_the_same_policy_for_a_client_service() {
    let pki = Pki::make("router");
    let port = free_port();
    let router = zenoh::open(pki.router_config(port))
        .wait()
        .unwrap_or_else(|e| panic!("the router does not start: {e}"));
    let service = ServiceProcess::start(
        &pki.dir,
        &format!(
            "config = {:?}\nrequire_tls = true",
            pki.service_client_json5(port).display().to_string()
        ),
        &[],
    );
    let driver = client(&pki, "vla-driver-arm0", port);
    let operator = client(&pki, "vla-operator", port);
    let commands = CommandStream::new(&driver, ROBOT);
    let status = StatusWatch::new(&operator);
    if let Err(why) = commands.try_until(
        WAIT,
        "the first ACT through the router",
        is_state(ControlState::Act),
    ) {
        panic!("{why}; the service said:\n{}", service.stderr());
    }
    // The service's own session has no policy: the router's is not visible to it.
    assert_eq!(
        status.next()["transport"],
        serde_json::json!({"tls": true, "mutual": true, "access_control": false, "loopback_only": true}),
        "{}",
        service.stderr()
    );

    // A driver stops the robot and can neither release it nor arm.
    driver_stops_and_cannot_leave_stop(
        &driver,
        &commands,
        &[("estop/release", b"release"), ("arm", b"arm")],
    );
    operator_releases_and_arms(&operator, &commands);

    // A record forged by an authenticated driver never reaches a subscriber.
    let forger = client(&pki, "vla-driver-arm0", port);
    commands.drain();
    put_for_a_while(&forger, &key("cmd"), &forged_record(FORGED_SEQ));
    let seen: Vec<CommandRecord> = commands.receiver.try_iter().map(Result::unwrap).collect();
    assert!(seen.len() >= 20, "{} commands in 2 s at 20 Hz", seen.len());
    assert!(
        !seen.iter().any(|r| r.seq == FORGED_SEQ),
        "a forged record reached the subscriber through the router"
    );
    drop(service);
    drop(router);
}

#[test]
fn require_tls_refuses_an_exposed_endpoint() {
    let dir = std::env::temp_dir().join(format!("vla-rt-require-tls-{}", std::process::id()));
    let port = free_port();
    let service = ServiceProcess::start(
        &dir,
        &format!("listen = [\"tcp/0.0.0.0:{port}\"]\nrequire_tls = true"),
        &[],
    );
    let (code, stderr) = service.wait(Duration::from_secs(20));
    assert_eq!(code, Some(2), "{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("vla-rt: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("zenoh.require_tls"), "{}", errors[0]);
    assert!(
        errors[0].contains(&format!("tcp/0.0.0.0:{port}")),
        "{}",
        errors[0]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_exposed_endpoint_is_warned_about_and_loopback_is_said() {
    let dir = std::env::temp_dir().join(format!("vla-rt-exposed-{}", std::process::id()));
    let port = free_port();
    let service = ServiceProcess::start(
        &dir,
        &format!("listen = [\"tcp/0.0.0.0:{port}\"]"),
        &["--duration", "1"],
    );
    let (code, stderr) = service.wait(WAIT);
    assert_eq!(code, Some(0), "{stderr}");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains("without TLS"))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(warnings[0].contains(&format!("tcp/0.0.0.0:{port}")));
    assert!(warnings[0].contains("release the e-stop"));
    assert!(!stderr.contains("loopback only"), "{stderr}");

    let port = free_port();
    let service = ServiceProcess::start(
        &dir,
        &format!("listen = [\"tcp/127.0.0.1:{port}\"]"),
        &["--duration", "1"],
    );
    let (code, stderr) = service.wait(WAIT);
    assert_eq!(code, Some(0), "{stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("loopback only"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains(&format!("tcp/127.0.0.1:{port}")));
    assert!(!stderr.contains("without TLS"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A ROS 2 sample as rmw_zenoh puts it: CDR payload and the 33-byte attachment.
fn ros2_put(session: &zenoh::Session, key: &str, payload: &[u8], sequence: i64) {
    let attachment = vla_rt::ros2::discovery::Attachment {
        sequence,
        source_timestamp_ns: vla_rt::control::clock::realtime_ns() as i64,
        gid: [0x2a; 16],
    }
    .encode();
    session
        .put(key, payload.to_vec())
        .attachment(attachment.to_vec())
        .wait()
        .unwrap();
}

#[test]
fn a_ros2_operator_instructs_and_stops_and_can_do_nothing_else() {
    use vla_rt::ros2::{discovery, types};
    let pki = Pki::make("ros2");
    let (service, port) = start_secure_service_with(&pki, &["--ros2"]);
    let deadline = Instant::now() + WAIT;
    let ros2 = loop {
        match tls_client(&pki.dir, Some((&pki.dir, "vla-ros2-operator")), port) {
            Ok(session) => break session,
            Err(e) => assert!(Instant::now() < deadline, "{e}\n{}", service.stderr()),
        }
    };
    let driver = client(&pki, "vla-driver-arm0", port);
    let commands = CommandStream::new(&driver, ROBOT);
    let status = StatusWatch::new(&driver);
    commands.until(WAIT, "the first ACT", is_state(ControlState::Act));

    // The ROS 2 graph: the node's token reaches the operator's machine.
    let node = format!("/{ROBOT}/vla_rt");
    let deadline = Instant::now() + WAIT;
    loop {
        let replies = ros2.liveliness().get("@ros2_lv/0/**").wait().unwrap();
        let mut found = false;
        while let Ok(reply) = replies.recv() {
            if let Ok(sample) = reply.result() {
                found |= sample
                    .key_expr()
                    .as_str()
                    .ends_with(&format!("/NN/%/%{ROBOT}/vla_rt"));
            }
        }
        if found {
            break;
        }
        assert!(Instant::now() < deadline, "no liveliness token of {node}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // The instruction, as std_msgs/msg/String of exactly its type: applied.
    let instruction_key = discovery::data_key(0, &format!("/{ROBOT}/instruction"), &types::STRING);
    let mut buffer = [0u8; 256];
    let len = types::encode_string("fold the towel", &mut buffer).unwrap();
    let mut sequence = 0;
    let deadline = Instant::now() + WAIT;
    while status.instruction_after_next_report() != "fold the towel" {
        sequence += 1;
        ros2_put(&ros2, &instruction_key, &buffer[..len], sequence);
        assert!(
            Instant::now() < deadline,
            "the ROS 2 instruction never arrived"
        );
    }
    // The native instruction key, and another type on the instruction topic: refused by the
    // policy, so never seen by the service (not even counted as a wrong type).
    put_for_a_while(&ros2, &key("instruction"), b"wave at the camera");
    let bool_key = discovery::data_key(0, &format!("/{ROBOT}/instruction"), &types::BOOL);
    let len_bool = types::encode_bool(true, &mut buffer).unwrap();
    let end = Instant::now() + REFUSED_WINDOW;
    while Instant::now() < end {
        sequence += 1;
        ros2_put(&ros2, &bool_key, &buffer[..len_bool], sequence);
        std::thread::sleep(Duration::from_millis(100));
    }
    while status.receiver.try_recv().is_ok() {}
    let report = status.next();
    assert_eq!(report["policy"]["instruction"], "fold the towel");
    assert_eq!(report["ros2"]["refused"]["wrong_type"], 0);

    // The e-stop, as std_msgs/msg/Bool true: STOP. Releasing and arming natively: refused.
    let estop_key = discovery::data_key(0, &format!("/{ROBOT}/estop"), &types::BOOL);
    sequence += 1;
    ros2_put(&ros2, &estop_key, &buffer[..len_bool], sequence);
    commands.until(
        WAIT,
        "STOP from the ROS 2 e-stop",
        is_state(ControlState::Stop),
    );
    commands.drain();
    for suffix in ["estop/release", "arm"] {
        put_for_a_while(
            &ros2,
            &key(suffix),
            suffix.split('/').next_back().unwrap().as_bytes(),
        );
    }
    let held: Vec<_> = commands.receiver.try_iter().collect();
    assert!(held.len() >= 40, "{} commands in 4 s at 20 Hz", held.len());
    assert!(
        held.iter()
            .all(|r| r.as_ref().is_ok_and(|r| r.state == ControlState::Stop)),
        "the ROS 2 operator's release or arm left STOP"
    );
    drop(service);
}

/// The server name of the remote-inference test (`vla/policy/tiny/infer`).
const SERVED: &str = "tiny";

fn tiny_checkpoint() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("engines/openvla-tiny")
}

/// One reply to [`ask`], decoded.
#[derive(Debug)]
struct Answer {
    status: vla_rt::remote::wire::ReplyStatus,
    server_id: String,
    fingerprint: String,
}

/// Sends one inference request for `robot_id` as a robot does (every queryable, no
/// consolidation) and collects every reply to it until the query ends (at most 5 s).
fn ask(session: &zenoh::Session, robot_id: &str, request_id: u64) -> Vec<Answer> {
    use vla_rt::remote::wire::{FrameEncoding, InstructionField, Reply, Request};
    use zenoh::query::{ConsolidationMode, QueryTarget};
    let frame: Vec<u8> = (0..16 * 16 * 3).map(|i| (i * 7 % 251) as u8).collect();
    let mut payload = Vec::new();
    Request {
        request_id,
        capture_time_ns: 1,
        budget_us: 5_000_000,
        robot_id,
        unnorm_key: "",
        instruction: InstructionField::Text("pick up the red block"),
        encoding: FrameEncoding::Raw,
        width: 16,
        height: 16,
        frame: &frame,
    }
    .encode(&mut payload)
    .unwrap();
    let replies = session
        .get(vla_rt::remote::infer_key(SERVED))
        .payload(payload)
        .target(QueryTarget::All)
        .consolidation(ConsolidationMode::None)
        .timeout(Duration::from_secs(5))
        .wait()
        .unwrap();
    let mut answers = Vec::new();
    while let Ok(reply) = replies.recv() {
        let Ok(sample) = reply.result() else {
            continue;
        };
        let bytes = sample.payload().to_bytes();
        let reply = Reply::decode(&bytes).unwrap();
        if reply.request_id == request_id {
            answers.push(Answer {
                status: reply.status,
                server_id: reply.server_id.to_string(),
                fingerprint: reply.fingerprint.to_string(),
            });
        }
    }
    answers
}

/// A fake server on `session`: a queryable on the infer key that answers every request at once
/// with a well-formed `ok` reply carrying the real fingerprint, the server id `forger` and
/// actions of its choosing. Counts the queries it gets.
fn forger(
    session: &zenoh::Session,
    fingerprint: &str,
) -> (zenoh::query::Queryable<()>, Arc<AtomicU64>) {
    use vla_rt::remote::wire::{ReplyParts, ReplyStatus, Request, ServerTimings};
    let calls = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&calls);
    let fingerprint = fingerprint.to_string();
    let queryable = session
        .declare_queryable(vla_rt::remote::infer_key(SERVED))
        .callback(move |query| {
            counted.fetch_add(1, Ordering::Relaxed);
            let payload = query
                .payload()
                .map(|p| p.to_bytes().into_owned())
                .unwrap_or_default();
            let request_id = Request::decode(&payload).map_or(0, |r| r.request_id);
            let mut out = Vec::new();
            ReplyParts {
                status: ReplyStatus::Ok,
                request_id,
                capture_time_ns: 1,
                timings: ServerTimings::default(),
                fingerprint: &fingerprint,
                server_id: "forger",
                actions: &[0.05, 0.05, 0.05, 0.0, 0.0, 0.0, 1.0],
                action_dim: 7,
                tokens: &[],
                message: "",
            }
            .encode(&mut out)
            .unwrap();
            let _ = query.reply(query.key_expr().clone(), out).wait();
        })
        .wait()
        .unwrap();
    (queryable, calls)
}

/// A server id whose rendezvous score for `robot_id` beats `real`'s (the server's rule,
/// `sha256(robot_id NUL server_id)`, highest first): declared as a live server of the name, it
/// would take `robot_id` away from `real`.
fn outranking_server_id(robot_id: &str, real: &str) -> String {
    use sha2::Digest as _;
    let score = |server: &str| {
        let mut hasher = sha2::Sha256::new();
        hasher.update(robot_id.as_bytes());
        hasher.update([0u8]);
        hasher.update(server.as_bytes());
        let digest = hasher.finalize();
        let mut head = [0u8; 8];
        head.copy_from_slice(&digest[..8]);
        (u64::from_be_bytes(head), server.to_string())
    };
    (0..)
        .map(|i| format!("forger{i}"))
        .find(|id| score(id) > score(real))
        .unwrap()
}

/// Remote inference through a router running `config/zenoh-remote.example.json5`, with a real
/// server (the tiny checkpoint) holding the server certificate:
/// (a) a robot's certificate gets the real server's answer;
/// (b) a robot's certificate that declares its own queryable on the infer key is never asked,
///     so its forged answer reaches no robot, while the same queryable with the server's
///     certificate is asked and its forgery arrives (the test can fail);
/// (c) a certificate of the CA that is not a robot's (a driver) gets no answer;
/// (d) a robot's certificate holding a server token that outranks the real server does not
///     take the robot away from it, while the same token with the server's certificate does.
#[test]
fn the_remote_router_lets_robots_ask_and_only_servers_answer() {
    use vla_rt::policy::Policy as _;
    use vla_rt::remote::wire::{FrameEncoding, ReplyStatus};
    use vla_rt::remote::{RemotePolicy, ResolvedRemote, ServeConfig, ServedCheckpoint, Server};
    let pki = Pki::make("remote");
    let port = free_port();
    let _router = zenoh::open(pki.remote_router_config(port))
        .wait()
        .unwrap_or_else(|e| panic!("the router does not start: {e}"));
    let fingerprint =
        vla_rt::model::fingerprint::checkpoint_fingerprint(&tiny_checkpoint()).unwrap();
    let server_session = client(&pki, "vla-server-tiny", port);
    let policy = vla_rt::backend::load_policy(
        &tiny_checkpoint(),
        &vla_rt::policy::PolicyOptions {
            unnorm_key: Some("tiny_bridge".into()),
            ..vla_rt::policy::PolicyOptions::default()
        },
    )
    .unwrap();
    let server = Server::start(
        &server_session,
        policy,
        ServedCheckpoint::load(&tiny_checkpoint(), Some("tiny_bridge")).unwrap(),
        &ServeConfig::default(),
        SERVED,
    )
    .unwrap();
    let server_id = server_session.zid().to_string();
    let is_real = |a: &Answer| {
        a.status == ReplyStatus::Ok && a.server_id == server_id && a.fingerprint == fingerprint
    };

    // (a) The robot's own client, as `vla-rt run --remote tiny` has it: an answer, checked
    // against the fingerprint.
    let robot = client(&pki, "vla-robot-arm0", port);
    let mut remote = RemotePolicy::connect(
        &robot,
        &ResolvedRemote {
            name: SERVED.into(),
            timeout_ms: 5_000,
            fingerprint: fingerprint.clone(),
            encoding: FrameEncoding::Jpeg,
            jpeg_quality: 90,
        },
        ROBOT,
        Some("tiny_bridge"),
    )
    .unwrap();
    let image = vla_rt::preprocess::RgbImage {
        width: 32,
        height: 24,
        data: (0..32 * 24 * 3).map(|i| (i % 256) as u8).collect(),
    };
    let deadline = Instant::now() + WAIT;
    let prediction = loop {
        match remote.predict(&image, "pick up the red block") {
            Ok(prediction) => break prediction,
            Err(e) => assert!(
                Instant::now() < deadline,
                "no answer through the router: {e}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(prediction.action.len(), 7);
    let mut request_id = 1000;
    let mut next_id = || {
        request_id += 1;
        request_id
    };
    let answers = ask(&robot, ROBOT, next_id());
    assert!(
        answers.len() == 1 && is_real(&answers[0]),
        "{answers:?} (server {server_id})"
    );

    // (b) A robot posing as a server: never asked, its forgery never arrives.
    let other_robot = client(&pki, "vla-robot-arm1", port);
    let (_refused_forger, refused_calls) = forger(&other_robot, &fingerprint);
    let end = Instant::now() + REFUSED_WINDOW;
    let mut answered = 0;
    while Instant::now() < end {
        let answers = ask(&robot, ROBOT, next_id());
        assert!(
            answers.iter().all(is_real),
            "a reply not from the real server: {answers:?} (server {server_id})"
        );
        answered += answers.len();
    }
    assert!(answered >= 3, "{answered} answers in {REFUSED_WINDOW:?}");
    assert_eq!(
        refused_calls.load(Ordering::Relaxed),
        0,
        "the forger was asked"
    );
    // The same forger with the server's certificate is asked, and its forgery arrives: the
    // path exists, the policy is what keeps a robot's queryable out.
    let allowed = client(&pki, "vla-server-tiny", port);
    let (allowed_forger, allowed_calls) = forger(&allowed, &fingerprint);
    let deadline = Instant::now() + WAIT;
    while !ask(&robot, ROBOT, next_id())
        .iter()
        .any(|a| a.server_id == "forger")
    {
        assert!(
            Instant::now() < deadline,
            "a server certificate's queryable never answered"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(allowed_calls.load(Ordering::Relaxed) > 0);
    assert_eq!(
        refused_calls.load(Ordering::Relaxed),
        0,
        "the forger was asked"
    );
    allowed_forger.undeclare().wait().unwrap();

    // (c) A certificate of the CA that is not a robot's: no answer at all, while the robot's
    // requests in between are answered.
    let driver = client(&pki, "vla-driver-arm0", port);
    let end = Instant::now() + REFUSED_WINDOW;
    while Instant::now() < end {
        let answers = ask(&driver, ROBOT, next_id());
        assert!(answers.is_empty(), "the driver got {answers:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let answers = ask(&robot, ROBOT, next_id());
        assert!(answers.iter().all(is_real), "{answers:?}");
        if !answers.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the robot is no longer answered");
    }

    // (d) A server token held by a robot's certificate, ranked above the real server for
    // this robot: the real server never learns of it and keeps answering.
    let fake_id = outranking_server_id(ROBOT, &server_id);
    let fake_key = vla_rt::remote::server_token_key(SERVED, &fake_id);
    let _refused_token = other_robot
        .liveliness()
        .declare_token(&fake_key)
        .wait()
        .unwrap();
    let routed_before = server.stats().routed_elsewhere.load(Ordering::Relaxed);
    let end = Instant::now() + REFUSED_WINDOW;
    let mut answered = 0;
    while Instant::now() < end {
        let answers = ask(&robot, ROBOT, next_id());
        assert!(answers.iter().all(is_real), "{answers:?}");
        answered += answers.len();
    }
    assert_eq!(
        server.stats().routed_elsewhere.load(Ordering::Relaxed),
        routed_before,
        "a robot's server token took the robot away from the real server"
    );
    assert!(answered >= 3, "{answered} answers in {REFUSED_WINDOW:?}");
    // The same token with the server's certificate does take the robot away (the real server
    // defers to it), so the window above could have failed.
    let _allowed_token = allowed
        .liveliness()
        .declare_token(&fake_key)
        .wait()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while server.stats().routed_elsewhere.load(Ordering::Relaxed) == routed_before {
        let _ = ask(&robot, ROBOT, next_id());
        assert!(
            Instant::now() < deadline,
            "a server certificate's token never reached the real server"
        );
    }
    drop(server);
}
