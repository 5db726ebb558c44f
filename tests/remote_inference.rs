//! Remote inference (`vla-rt serve` and `[model] remote`) through a Zenoh router on
//! loopback: two robots served by one server, answers equal to the local policy's, a server
//! killed (failover or STOP), a slow server (STOP from missed steps, no late reply acted on),
//! a busy server refusing at once, expired requests dropped before compute, a wrong
//! checkpoint fingerprint (STOP with the cause in the status), and an OpenVLA-OFT checkpoint
//! answering with its whole chunk, which a robot executes step by step. Every wait is bounded.

// Test helpers fail the test by panicking, like the test functions themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod service_support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use service_support::*;
use vla_rt::config::ServiceConfig;
use vla_rt::control::ControlState;
use vla_rt::policy::{Policy, PolicyOptions};
use vla_rt::preprocess::RgbImage;
use vla_rt::remote::wire::{
    FrameEncoding, InstructionField, Reply, ReplyStatus, Request, ServerTimings,
};
use vla_rt::remote::{
    infer_key, RemoteConfig, RemotePolicy, ResolvedRemote, ServeConfig, ServedCheckpoint, Server,
};
use vla_rt::service::{Service, ServiceOptions};
use zenoh::Wait;

const BINARY: &str = env!("CARGO_BIN_EXE_vla-rt");
const WAIT: Duration = Duration::from_secs(20);

fn checkpoint_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("engines/openvla-tiny")
}

/// A loopback session of `mode` listening on `listen` and connected to `connect`.
fn session(mode: &str, listen: Option<u16>, connect: Option<u16>) -> zenoh::Session {
    let endpoints = |port: Option<u16>| match port {
        Some(port) => format!("[\"tcp/127.0.0.1:{port}\"]"),
        None => "[]".to_string(),
    };
    let mut config = zenoh::Config::default();
    config.insert_json5("mode", &format!("\"{mode}\"")).unwrap();
    config
        .insert_json5("listen/endpoints", &endpoints(listen))
        .unwrap();
    config
        .insert_json5("connect/endpoints", &endpoints(connect))
        .unwrap();
    config
        .insert_json5("scouting/multicast/enabled", "false")
        .unwrap();
    zenoh::open(config).wait().unwrap()
}

/// A Zenoh router on loopback, as robots and servers on a LAN would share.
fn router(port: u16) -> zenoh::Session {
    session("router", Some(port), None)
}

/// A client session of the router (a server's or an observer's).
fn router_client(port: u16) -> zenoh::Session {
    session("client", None, Some(port))
}

fn fingerprint() -> String {
    vla_rt::model::fingerprint::checkpoint_fingerprint(&checkpoint_dir()).unwrap()
}

fn tiny_policy() -> Box<dyn Policy> {
    let options = PolicyOptions {
        unnorm_key: Some("tiny_bridge".into()),
        ..PolicyOptions::default()
    };
    vla_rt::backend::load_policy(&checkpoint_dir(), &options).unwrap()
}

fn served_checkpoint() -> ServedCheckpoint {
    ServedCheckpoint::load(&checkpoint_dir(), Some("tiny_bridge")).unwrap()
}

/// A server of `name` in this process, on its own client session of the router.
fn in_process_server(
    port: u16,
    name: &str,
    policy: Box<dyn Policy>,
    settings: &ServeConfig,
) -> (Server, zenoh::Session) {
    let session = router_client(port);
    let server = Server::start(&session, policy, served_checkpoint(), settings, name).unwrap();
    (server, session)
}

/// A robot's config: a client of the router, the synthetic camera, armed at start, and the
/// policy on the servers of `name`.
fn robot_config(robot_id: &str, router_port: u16, name: &str) -> ServiceConfig {
    let mut config = loopback_config(robot_id, free_port(), 20.0);
    config.zenoh.connect = Some(vec![format!("tcp/127.0.0.1:{router_port}")]);
    // Half-second action steps (and so a half-second timeout): room for the tests of this
    // file, which run side by side, to share two cores.
    config.model.action_hz = Some(2.0);
    config.control.start_armed = true;
    config.model.remote = Some(RemoteConfig::named(name));
    config.validate("test config").unwrap();
    config
}

fn start_robot(config: &ServiceConfig) -> Service {
    let source = vla_rt::capture::open_source(&config.camera).unwrap();
    Service::start(
        config,
        source,
        || panic!("a remote robot loads no local policy"),
        ServiceOptions::default(),
    )
    .unwrap_or_else(|e| panic!("robot {}: {e}", config.robot_id))
}

fn gradient(width: u32, height: u32) -> RgbImage {
    let data = (0..width * height)
        .flat_map(|i| {
            let (x, y) = (i % width, i / width);
            [(x * 255 / width) as u8, (y * 255 / height) as u8, 128]
        })
        .collect();
    RgbImage {
        width,
        height,
        data,
    }
}

/// The remote answer is the local policy's, action for action, with the request's own
/// un-normalisation; raw and JPEG frames both arrive (JPEG decoded to the stated size).
#[test]
fn a_remote_answer_equals_the_local_policy() {
    let port = free_port();
    let _router = router(port);
    let (_server, _server_session) =
        in_process_server(port, "parity", tiny_policy(), &ServeConfig::default());
    let robot_session = router_client(port);
    let image = gradient(96, 64);
    let instruction = "pick up the red block";
    let local = tiny_policy().predict(&image, instruction).unwrap();

    let remote_config = |encoding| ResolvedRemote {
        name: "parity".into(),
        timeout_ms: 5_000,
        fingerprint: fingerprint(),
        encoding,
        jpeg_quality: 95,
    };
    let mut raw = RemotePolicy::connect(
        &robot_session,
        &remote_config(FrameEncoding::Raw),
        "arm0",
        Some("tiny_bridge"),
    )
    .unwrap();
    let answered = wait_for_answer(&mut raw, &image, instruction);
    assert_eq!(answered.tokens, local.tokens);
    let as_f32 = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<_>>();
    assert_eq!(as_f32(&answered.action), as_f32(&local.action));
    // The second request sends the instruction's hash; the answer is the same.
    let again = raw.predict(&image, instruction).unwrap();
    assert_eq!(again.tokens, local.tokens);

    let mut jpeg = RemotePolicy::connect(
        &robot_session,
        &remote_config(FrameEncoding::Jpeg),
        "arm0",
        Some("tiny_bridge"),
    )
    .unwrap();
    let over_jpeg = jpeg.predict(&image, instruction).unwrap();
    assert_eq!(over_jpeg.action.len(), 7);
    assert!(over_jpeg.action.iter().all(|v| v.is_finite()));
}

/// An OpenVLA-OFT checkpoint served from a GPU box: the reply carries the whole chunk, the
/// local policy's value for value (as f32), so the robot executes it step by step; the
/// chunk is un-normalised by the served policy, so only its statistics key is accepted.
#[test]
fn an_oft_checkpoint_is_served_with_its_whole_chunk() {
    let settings = serde_json::json!({
        "num_actions_chunk": 8,
        "num_images_in_input": 1,
        "action_normalization": "bounds_q99",
    });
    let dir = common::oft::assemble("remote", &settings, false);
    let options = PolicyOptions {
        unnorm_key: Some("tiny_libero".into()),
        ..PolicyOptions::default()
    };
    let policy = || vla_rt::backend::load_policy(&dir, &options).unwrap();
    let port = free_port();
    let _router = router(port);
    let server_session = router_client(port);
    let _server = Server::start(
        &server_session,
        policy(),
        ServedCheckpoint::load(&dir, Some("tiny_libero")).unwrap(),
        &ServeConfig::default(),
        "oft",
    )
    .unwrap();
    let robot_session = router_client(port);
    let remote = |key: &str| {
        RemotePolicy::connect(
            &robot_session,
            &ResolvedRemote {
                name: "oft".into(),
                timeout_ms: 5_000,
                fingerprint: vla_rt::model::fingerprint::checkpoint_fingerprint(&dir).unwrap(),
                encoding: FrameEncoding::Raw,
                jpeg_quality: 95,
            },
            "arm0",
            Some(key),
        )
        .unwrap()
    };
    let image = gradient(96, 64);
    let instruction = "put the bowl on the plate";
    let local = policy().predict(&image, instruction).unwrap();
    assert_eq!(local.actions.len(), 8);
    let answered = wait_for_answer(&mut remote("tiny_libero"), &image, instruction);
    let as_f32 = |rows: &[Vec<f64>]| -> Vec<Vec<f32>> {
        rows.iter()
            .map(|row| row.iter().map(|&x| x as f32).collect())
            .collect()
    };
    assert_eq!(as_f32(&answered.actions), as_f32(&local.actions));
    assert_eq!(answered.action, answered.actions[0]);
    // Statistics the served policy does not un-normalise with are refused, naming its own.
    // (The first requests of a new robot may race the server's discovery: no answer yet.)
    let mut other = remote("tiny_bridge");
    let deadline = Instant::now() + WAIT;
    let refused = loop {
        let error = other.predict(&image, instruction).unwrap_err().to_string();
        if !error.contains("no answer") || Instant::now() > deadline {
            break error;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        refused.contains("`tiny_bridge`") && refused.contains("(tiny_libero)"),
        "{refused}"
    );

    // A robot on that server executes the chunk's steps in turn, as a local chunk.
    let mut config = robot_config("oft-robot", port, "oft");
    config.model.path = dir.clone();
    config.model.unnorm_key = Some("tiny_libero".into());
    config.validate("test config").unwrap();
    let observer = router_client(port);
    let stream = CommandStream::new(&observer, "oft-robot");
    let robot = start_robot(&config);
    stream.until(WAIT, "ACT on a remote chunk", is_state(ControlState::Act));
    let control = robot.control_stats();
    let deadline = Instant::now() + WAIT;
    let mut steps_seen = std::collections::BTreeSet::new();
    while steps_seen.len() < 3 && Instant::now() < deadline {
        let record = stream.next(Duration::from_secs(2));
        assert!(record.action.iter().all(|v| v.is_finite()), "{record:?}");
        if record.state == ControlState::Act {
            steps_seen.insert(control.chunk_step.load(Ordering::Relaxed));
        }
    }
    robot.stop();
    assert!(
        steps_seen.len() >= 3,
        "ACT ticks ran chunk steps {steps_seen:?} only"
    );
}

/// The first request after the server starts may race its declaration through the router:
/// retried for a bounded time.
fn wait_for_answer(
    policy: &mut RemotePolicy,
    image: &RgbImage,
    instruction: &str,
) -> vla_rt::policy::Prediction {
    let deadline = Instant::now() + WAIT;
    loop {
        match policy.predict(image, instruction) {
            Ok(prediction) => return prediction,
            Err(e) if Instant::now() < deadline => {
                eprintln!("not yet: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("no answer within {WAIT:?}: {e}"),
        }
    }
}

/// Two robots, one server, a router between them: both ACT on the server's answers, in
/// batches when their requests meet.
#[test]
fn two_robots_are_served_through_a_router() {
    let port = free_port();
    let _router = router(port);
    let settings = ServeConfig {
        batch_window_ms: 20.0,
        ..ServeConfig::default()
    };
    let (server, _server_session) = in_process_server(port, "fleet", tiny_policy(), &settings);
    let observer = router_client(port);
    let streams = [
        CommandStream::new(&observer, "robot1"),
        CommandStream::new(&observer, "robot2"),
    ];
    let robots: Vec<Service> = ["robot1", "robot2"]
        .iter()
        .map(|id| start_robot(&robot_config(id, port, "fleet")))
        .collect();
    for stream in &streams {
        stream.until(WAIT, "ACT on a remote answer", is_state(ControlState::Act));
    }
    for stream in &streams {
        let records: Vec<_> = (0..40)
            .map(|_| stream.next(Duration::from_secs(2)))
            .collect();
        let acts = records
            .iter()
            .filter(|r| r.state == ControlState::Act)
            .count();
        // Most, not all: on a loaded machine an answer may come after its step and the tick
        // HOLDs, which the slow-server test covers.
        assert!(acts >= 20, "{acts} ACT of 40 commands");
        assert!(records
            .iter()
            .all(|r| r.action.iter().all(|v| v.is_finite())));
    }
    let predictions: Vec<u64> = robots
        .iter()
        .map(|robot| robot.inference_stats().predictions.load(Ordering::Relaxed))
        .collect();
    for robot in robots {
        robot.stop();
    }
    assert!(predictions.iter().all(|&p| p >= 5), "{predictions:?}");
    // Every prediction a robot used was one of this server's answers; how many fit in the
    // window depends on the machine's load, so no count is asked for beyond that.
    let stats = server.stats();
    let answered = stats.answered.load(Ordering::Relaxed);
    assert!(
        answered >= predictions.iter().sum::<u64>(),
        "{answered} answers for {predictions:?} predictions"
    );
    assert_eq!(stats.bad_requests.load(Ordering::Relaxed), 0);
}

/// A `vla-rt serve` process, its stderr kept.
struct ServeProcess {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl ServeProcess {
    fn start(router_port: u16, name: &str) -> Self {
        let mut child = Command::new(BINARY)
            .args(["serve", "--name", name, "--model"])
            .arg(checkpoint_dir())
            .args([
                "--zenoh-connect",
                &format!("tcp/127.0.0.1:{router_port}"),
                "--zenoh-listen",
                &format!("tcp/127.0.0.1:{}", free_port()),
            ])
            .env("RUST_LOG", "info,zenoh=error")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
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
        Self { child, stderr }
    }

    /// The server id it logs at start (its Zenoh id).
    fn server_id(&self) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = self.stderr.lock().unwrap().clone();
            if let Some(at) = text.find(" as server ") {
                let rest = &text[at + " as server ".len()..];
                return rest.split_whitespace().next().unwrap().to_string();
            }
            assert!(
                Instant::now() < deadline,
                "serve did not start within {WAIT:?}:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The documented rule (ARCHITECTURE.md §16): a robot is answered by the live server with
/// the highest `sha256(robot_id NUL server_id)` read as a big-endian u64 of its first 8 bytes.
fn rendezvous_score(robot_id: &str, server_id: &str) -> u64 {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    hasher.update(robot_id.as_bytes());
    hasher.update([0u8]);
    hasher.update(server_id.as_bytes());
    let digest = hasher.finalize();
    u64::from_be_bytes(digest[..8].try_into().unwrap())
}

/// Two servers on one name: killing the one that answers the robot moves the robot to the
/// other, or STOPs it; no ACT comes from the dead server after its death; killing the
/// second leaves the robot in STOP.
#[test]
fn a_killed_server_fails_over_or_the_robot_stops() {
    let port = free_port();
    let _router = router(port);
    let mut servers = [
        ServeProcess::start(port, "pair"),
        ServeProcess::start(port, "pair"),
    ];
    let ids: Vec<String> = servers.iter().map(ServeProcess::server_id).collect();
    let observer = router_client(port);
    let stream = CommandStream::new(&observer, "failover");
    let config = robot_config("failover", port, "pair");
    let robot = start_robot(&config);
    stream.until(WAIT, "the first ACT", is_state(ControlState::Act));
    let responsible =
        if rendezvous_score("failover", &ids[0]) > rendezvous_score("failover", &ids[1]) {
            0
        } else {
            1
        };
    let predictions_before = robot.inference_stats().predictions.load(Ordering::Relaxed);

    servers[responsible].kill();
    let killed = Instant::now();
    // Within 3 s the robot is either ACTing on the other server's answers or in STOP.
    let mut after: Vec<_> = Vec::new();
    while killed.elapsed() < Duration::from_secs(3) {
        after.push((killed.elapsed(), stream.next(Duration::from_secs(2))));
    }
    let stopped = after.iter().any(|(_, r)| r.state == ControlState::Stop);
    let late_acts = after
        .iter()
        .filter(|(at, r)| *at > Duration::from_secs(1) && r.state == ControlState::Act)
        .count();
    assert!(
        stopped || late_acts > 20,
        "after the kill: neither STOP nor ACT from the other server ({late_acts} ACT after 1 s); \
         survivor said:\n{}",
        servers[1 - responsible].stderr.lock().unwrap()
    );
    if stopped {
        // Re-armed, the survivor answers.
        arm_until_act(&observer, &stream, "failover", WAIT);
    }
    assert!(
        robot.inference_stats().predictions.load(Ordering::Relaxed) > predictions_before,
        "no prediction after the failover"
    );
    let survivor_log = servers[1 - responsible].stderr.lock().unwrap().clone();
    assert!(
        survivor_log.contains("is gone"),
        "the survivor did not see the other server go:\n{survivor_log}"
    );

    // With no server left, missed steps STOP the robot, and nothing moves after.
    servers[1 - responsible].kill();
    stream.until(WAIT, "STOP with no server", is_state(ControlState::Stop));
    let stats = robot.control_stats();
    assert_eq!(
        vla_rt::control::supervisor::StopCause::from_u64(stats.stop_cause.load(Ordering::Relaxed)),
        vla_rt::control::supervisor::StopCause::PolicyMisses
    );
    let tail: Vec<_> = (0..20)
        .map(|_| stream.next(Duration::from_secs(2)))
        .collect();
    assert!(
        tail.iter().all(|r| r.state != ControlState::Act),
        "ACT with no server alive"
    );
    robot.stop();
}

/// A policy slower than the robot's timeout: every answer arrives after its deadline, none
/// is acted on, and missed steps STOP the robot.
#[test]
fn a_slow_server_gives_stop_and_no_late_answer_moves_the_robot() {
    let port = free_port();
    let _router = router(port);
    let controls = Arc::new(FakeControls::default());
    controls.delay_ms.store(400, Ordering::Relaxed);
    let (server, _server_session) = in_process_server(
        port,
        "slow",
        Box::new(FakePolicy {
            controls: Arc::clone(&controls),
        }),
        &ServeConfig::default(),
    );
    let observer = router_client(port);
    let mut config = robot_config("slowpoke", port, "slow");
    if let Some(remote) = &mut config.model.remote {
        remote.timeout_ms = Some(150);
        remote.fingerprint = Some(fingerprint());
    }
    let source = vla_rt::capture::open_source(&config.camera).unwrap();
    // The warm-up prediction (retried for the first-answer timeout, each try with the
    // configured 150 ms) gets no answer in time: the service refuses to start, naming the
    // server.
    let refused = Service::start(
        &config,
        source,
        || panic!("a remote robot loads no local policy"),
        ServiceOptions::default(),
    )
    .err()
    .expect("a robot whose server never answers in time started");
    let message = refused.to_string();
    assert!(
        message.contains(&format!(
            "no answer from `slow` within {} ms",
            vla_rt::remote::client::FIRST_ANSWER_TIMEOUT.as_millis()
        )),
        "{message}"
    );

    // Fast enough for the warm-up (once the refused start's 400 ms request is done), then
    // slow: HOLD, then STOP, and no ACT after it.
    controls.delay_ms.store(1, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(600));
    let robot = start_robot(&config);
    let stream = CommandStream::new(&observer, "slowpoke");
    stream.until(WAIT, "the first ACT", is_state(ControlState::Act));
    controls.delay_ms.store(400, Ordering::Relaxed);
    stream.until(WAIT, "STOP from missed steps", is_state(ControlState::Stop));
    let answered_when_stopped = server.stats().answered.load(Ordering::Relaxed);
    let tail: Vec<_> = (0..30)
        .map(|_| stream.next(Duration::from_secs(2)))
        .collect();
    assert!(tail.iter().all(|r| r.state == ControlState::Stop));
    assert!(
        server.stats().answered.load(Ordering::Relaxed) > answered_when_stopped,
        "the server kept answering, late, and none of it moved the robot"
    );
    let error = robot
        .inference_stats()
        .last_error
        .lock()
        .unwrap()
        .clone()
        .unwrap_or_default();
    assert!(error.contains("no answer from `slow`"), "{error}");
    robot.stop();
}

fn raw_request(request_id: u64, robot_id: &str, budget_us: u32, frame: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    Request {
        request_id,
        capture_time_ns: 1,
        budget_us,
        robot_id,
        unnorm_key: "",
        instruction: InstructionField::Text("pick up the red block"),
        encoding: FrameEncoding::Raw,
        width: 8,
        height: 8,
        frame,
    }
    .encode(&mut bytes)
    .unwrap();
    bytes
}

/// Sends `payload` to every server of `name`, returning the replies with their arrival
/// times.
fn query(
    session: &zenoh::Session,
    name: &str,
    payload: Vec<u8>,
) -> zenoh::handlers::FifoChannelHandler<zenoh::query::Reply> {
    session
        .get(infer_key(name))
        .payload(payload)
        .target(zenoh::query::QueryTarget::All)
        .consolidation(zenoh::query::ConsolidationMode::None)
        .timeout(Duration::from_secs(10))
        .wait()
        .unwrap()
}

fn first_reply(
    replies: &zenoh::handlers::FifoChannelHandler<zenoh::query::Reply>,
) -> (ReplyStatus, ServerTimings, String) {
    let reply = replies
        .recv_timeout(Duration::from_secs(10))
        .unwrap()
        .expect("no reply within 10 s");
    let bytes = reply.result().unwrap().payload().to_bytes().into_owned();
    let decoded = Reply::decode(&bytes).unwrap();
    (decoded.status, decoded.timings, decoded.message.to_string())
}

/// One request at a time and a queue of one: of six requests sent at once, those that find
/// the queue full are refused with `busy` at once, long before the compute they would have
/// waited for; a request whose budget runs out in the queue is dropped before compute.
#[test]
fn a_busy_server_refuses_at_once_and_expired_requests_are_not_computed() {
    let port = free_port();
    let _router = router(port);
    let controls = Arc::new(FakeControls::default());
    controls.delay_ms.store(300, Ordering::Relaxed);
    let settings = ServeConfig {
        batch_window_ms: 0.0,
        max_batch: 1,
        queue: 1,
    };
    let (server, _server_session) = in_process_server(
        port,
        "busy",
        Box::new(FakePolicy {
            controls: Arc::clone(&controls),
        }),
        &settings,
    );
    let robot = router_client(port);
    let frame = vec![100u8; 8 * 8 * 3];
    // The server's queryable must be known to the router before the burst.
    // A query sent before the router knows the queryable ends with no reply: asked again.
    let deadline = Instant::now() + WAIT;
    loop {
        let warm = query(&robot, "busy", raw_request(1, "r", 5_000_000, &frame));
        if let Ok(Some(reply)) = warm.recv_timeout(Duration::from_secs(10)) {
            let bytes = reply.result().unwrap().payload().to_bytes().into_owned();
            if Reply::decode(&bytes).unwrap().status == ReplyStatus::Ok {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the server never answered");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Replies are timed as they arrive, not as they are read.
    let arrivals: Arc<Mutex<Vec<(Duration, ReplyStatus, String)>>> = Arc::default();
    let sent = Instant::now();
    for i in 0..6 {
        let arrivals = Arc::clone(&arrivals);
        robot
            .get(infer_key("busy"))
            .payload(raw_request(10 + i, "r", 5_000_000, &frame))
            .target(zenoh::query::QueryTarget::All)
            .consolidation(zenoh::query::ConsolidationMode::None)
            .timeout(Duration::from_secs(10))
            .callback(move |reply| {
                let at = sent.elapsed();
                if let Ok(sample) = reply.result() {
                    let bytes = sample.payload().to_bytes().into_owned();
                    let decoded = Reply::decode(&bytes).unwrap();
                    arrivals.lock().unwrap().push((
                        at,
                        decoded.status,
                        decoded.message.to_string(),
                    ));
                }
            })
            .wait()
            .unwrap();
    }
    let deadline = Instant::now() + WAIT;
    while arrivals.lock().unwrap().len() < 6 {
        assert!(Instant::now() < deadline, "{:?}", arrivals.lock().unwrap());
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut busy_in = Vec::new();
    let mut ok = 0;
    for (at, status, message) in arrivals.lock().unwrap().iter() {
        match status {
            ReplyStatus::Busy => {
                busy_in.push(*at);
                assert!(message.contains("queue full"), "{message}");
            }
            ReplyStatus::Ok => ok += 1,
            other => panic!("unexpected {other:?}: {message}"),
        }
    }
    assert!(busy_in.len() >= 3, "{} busy of 6", busy_in.len());
    assert!((1..=3).contains(&ok), "{ok} computed with a queue of one");
    // The refusals came before the first 300 ms computation could have ended.
    assert!(
        busy_in.iter().any(|t| *t < Duration::from_millis(250)),
        "busy replies at {busy_in:?}"
    );
    assert!(server.stats().busy.load(Ordering::Relaxed) >= 3);

    // A request with a 50 ms budget queued behind a 300 ms computation expires unseen.
    std::thread::sleep(Duration::from_millis(700));
    let calls_before = controls.calls.load(Ordering::Relaxed);
    let blocker = query(&robot, "busy", raw_request(100, "r", 5_000_000, &frame));
    std::thread::sleep(Duration::from_millis(30));
    let doomed = query(&robot, "busy", raw_request(101, "r", 50_000, &frame));
    assert_eq!(first_reply(&blocker).0, ReplyStatus::Ok);
    let (status, _, message) = first_reply(&doomed);
    assert_eq!(status, ReplyStatus::Expired, "{message}");
    assert_eq!(controls.calls.load(Ordering::Relaxed), calls_before + 1);
    assert!(server.stats().expired.load(Ordering::Relaxed) >= 1);

    // A malformed request is refused at once, naming the field.
    let mut bad = raw_request(200, "r", 5_000_000, &frame);
    bad[28] = 7;
    let (status, _, message) = first_reply(&query(&robot, "busy", bad));
    assert_eq!(status, ReplyStatus::BadRequest);
    assert!(message.contains("frame_encoding"), "{message}");
}

/// A server running another checkpoint than the robot was configured for: at start the
/// robot refuses to run, naming both checkpoints; when such a server takes over a running
/// robot (its own server gone), the robot never acts on its answers and STOPs, with the
/// cause in its last error.
#[test]
fn a_wrong_fingerprint_refuses_or_stops_with_its_cause() {
    let port = free_port();
    let _router = router(port);
    let (mut right, _right_session) =
        in_process_server(port, "fleet", tiny_policy(), &ServeConfig::default());
    let observer = router_client(port);

    let mut config = robot_config("mismatch", port, "fleet");
    if let Some(remote) = &mut config.model.remote {
        remote.fingerprint = Some(format!("sha256:{}", "0".repeat(64)));
        remote.timeout_ms = Some(2_000);
    }
    let deadline = Instant::now() + WAIT;
    let message = loop {
        let source = vla_rt::capture::open_source(&config.camera).unwrap();
        match Service::start(
            &config,
            source,
            || panic!("a remote robot loads no local policy"),
            ServiceOptions::default(),
        ) {
            Ok(_) => panic!("a robot started on a server with another checkpoint"),
            Err(e) if e.to_string().contains("no answer") && Instant::now() < deadline => {}
            Err(e) => break e.to_string(),
        }
    };
    assert!(
        message.contains(&format!("runs checkpoint {}", fingerprint()))
            && message.contains(&format!("configured for sha256:{}", "0".repeat(64))),
        "{message}"
    );

    // A robot configured for the tiny checkpoint, served; then its server goes and one with
    // the simulation's checkpoint answers instead.
    let config = robot_config("switched", port, "fleet");
    let robot = start_robot(&config);
    let stream = CommandStream::new(&observer, "switched");
    stream.until(WAIT, "the first ACT", is_state(ControlState::Act));
    let sim_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("engines/openvla-sim");
    let other_session = router_client(port);
    let _wrong = Server::start(
        &other_session,
        Box::new(FakePolicy {
            controls: Arc::new(FakeControls::default()),
        }),
        ServedCheckpoint::load(&sim_dir, None).unwrap(),
        &ServeConfig::default(),
        "fleet",
    )
    .unwrap();
    right.stop();
    stream.until(
        WAIT,
        "STOP on the other checkpoint's answers",
        is_state(ControlState::Stop),
    );
    // Between the right server's exit and the other's first answer the robot may see no
    // answer at all, so the refusal is waited for rather than read once. The operator sees
    // it in the status.
    let status = StatusWatch::new(&observer, "switched").until(
        WAIT,
        "the other checkpoint's refusal as the policy's last error",
        |status| {
            status["policy"]["last_error"]
                .as_str()
                .is_some_and(|error| {
                    error.contains("runs checkpoint sha256:")
                        && error.contains("its actions are refused")
                })
        },
    );
    assert_eq!(status["state"], "STOP", "{status}");
    assert_eq!(status["stop_cause"], "policy misses", "{status}");
    let tail: Vec<_> = (0..30)
        .map(|_| stream.next(Duration::from_secs(2)))
        .collect();
    assert!(tail.iter().all(|r| r.state == ControlState::Stop));
    robot.stop();
}
