//! The Zenoh side of the service (ARCHITECTURE.md §8): the session, the command publisher thread,
//! the status publisher, the liveliness token and the instruction and e-stop subscribers.
//!
//! The control thread never calls Zenoh: it drops each encoded record into the
//! [`CommandOutbox`] (a ring of one), and the publisher thread (same real-time priority)
//! puts it with `Priority::RealTime`, `express` and `CongestionControl::Drop`. A record that
//! waited longer than one tick period before the publisher reached it is dropped and counted
//! instead of sent late (a STOP is always sent). Subscriber callbacks only write atomics and
//! single-slot cells. The publisher thread and the callbacks check in with the service's
//! [`Supervision`]; a panic in them is a fault of the service.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use zenoh::liveliness::LivelinessToken;
use zenoh::pubsub::{Publisher, Subscriber};
use zenoh::qos::{CongestionControl, Priority};
use zenoh::{Session, Wait};

use super::record::{CommandRecord, RECORD_LEN};
use super::zenoh_error_text;
use crate::config::{ZenohConfig, ZenohMode};
use crate::control::clock;
use crate::control::handoff::{CommandOutbox, ControlInputs, OutboxRecord};
use crate::control::heartbeat::{Supervision, Worker};
use crate::control::stats::LatencyHistogram;
use crate::control::supervisor::OperatorRequest;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("zenoh config file {path}: {message}")]
    ConfigFile { path: String, message: String },
    #[error("zenoh: cannot set `{key}`: {message}")]
    Config { key: String, message: String },
    #[error("zenoh: cannot open a session ({endpoints}): {message}")]
    Open { endpoints: String, message: String },
    #[error("zenoh: cannot declare `{key}`: {message}")]
    Declare { key: String, message: String },
    #[error("zenoh: cannot start the {thread} thread: {message}")]
    Thread {
        thread: &'static str,
        message: String,
    },
}

impl TransportError {
    /// Configuration mistakes (a bad file, an endpoint in use) as opposed to machine failures.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            TransportError::ConfigFile { .. }
                | TransportError::Config { .. }
                | TransportError::Open { .. }
        )
    }
}

/// The key expressions of one robot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RobotKeys {
    pub cmd: String,
    pub status: String,
    pub instruction: String,
    pub estop: String,
    pub arm: String,
    pub alive: String,
}

impl RobotKeys {
    pub fn new(robot_id: &str) -> Self {
        Self {
            cmd: format!("vla/{robot_id}/cmd"),
            status: format!("vla/{robot_id}/status"),
            instruction: format!("vla/{robot_id}/instruction"),
            estop: format!("vla/{robot_id}/estop"),
            arm: format!("vla/{robot_id}/arm"),
            alive: format!("vla/{robot_id}/alive"),
        }
    }
}

/// Builds the Zenoh configuration from `[zenoh]`: the json5 file first, then `mode`,
/// `listen` and `connect` on top; without a file, a peer on loopback with no multicast.
pub fn zenoh_config(config: &ZenohConfig) -> Result<zenoh::Config, TransportError> {
    let mut zenoh_config = match &config.config {
        Some(path) => zenoh::Config::from_file(path).map_err(|e| TransportError::ConfigFile {
            path: path.display().to_string(),
            message: zenoh_error_text(&*e),
        })?,
        None => {
            let mut c = zenoh::Config::default();
            set_json5(&mut c, "scouting/multicast/enabled", "false")?;
            c
        }
    };
    let mode = match (config.mode, &config.config) {
        (Some(ZenohMode::Client), _) => Some("\"client\""),
        (Some(ZenohMode::Peer), _) | (None, None) => Some("\"peer\""),
        (None, Some(_)) => None,
    };
    if let Some(mode) = mode {
        set_json5(&mut zenoh_config, "mode", mode)?;
    }
    let listen = config.listen_or_default();
    if config.listen.is_some() || config.config.is_none() {
        set_json5(&mut zenoh_config, "listen/endpoints", &json_list(&listen))?;
    }
    if let Some(connect) = &config.connect {
        set_json5(&mut zenoh_config, "connect/endpoints", &json_list(connect))?;
    }
    Ok(zenoh_config)
}

fn json_list(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".into())
}

fn set_json5(config: &mut zenoh::Config, key: &str, value: &str) -> Result<(), TransportError> {
    config
        .insert_json5(key, value)
        .map_err(|e| TransportError::Config {
            key: key.to_string(),
            message: zenoh_error_text(&*e),
        })
}

/// Opens the session; the error names the endpoints, since a taken port is the usual cause.
pub fn open_session(config: &ZenohConfig) -> Result<Session, TransportError> {
    let zenoh_config = zenoh_config(config)?;
    zenoh::open(zenoh_config).wait().map_err(|e| {
        let mut endpoints = Vec::new();
        let listen = config.listen_or_default();
        if !listen.is_empty() {
            endpoints.push(format!("listen {}", listen.join(", ")));
        }
        if let Some(connect) = config.connect.as_ref().filter(|c| !c.is_empty()) {
            endpoints.push(format!("connect {}", connect.join(", ")));
        }
        if let Some(path) = &config.config {
            endpoints.push(format!("config {}", path.display()));
        }
        TransportError::Open {
            endpoints: endpoints.join("; "),
            message: zenoh_error_text(&*e),
        }
    })
}

/// What the publisher thread reports.
pub struct PublishStats {
    pub published: AtomicU64,
    pub failed: AtomicU64,
    /// Records older than one tick period when the publisher reached them: dropped, not
    /// sent late.
    pub stale: AtomicU64,
    /// CLOCK_REALTIME after `put` returned minus the record's tick time.
    pub delay: LatencyHistogram,
    /// CLOCK_MONOTONIC after `put` returned, by sequence number, for the first records
    /// (benchmarks); 0 until published.
    pub put_done_ns: Box<[AtomicU64]>,
}

impl PublishStats {
    pub fn new(trace_capacity: usize) -> Self {
        Self {
            published: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            stale: AtomicU64::new(0),
            delay: LatencyHistogram::default(),
            put_done_ns: (0..trace_capacity).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

/// The command publisher on its own thread.
pub struct CommandPublisherThread {
    handle: Option<JoinHandle<()>>,
    key: String,
}

/// How the publisher thread judges and reports.
pub struct PublisherSettings {
    /// The tick period: a record older than this when the publisher reaches it is dropped
    /// (unless it is a STOP).
    pub period_ns: u64,
    pub supervision: Option<Arc<Supervision>>,
}

impl CommandPublisherThread {
    /// Declares `vla/<robot>/cmd` with the command QoS and starts the thread that drains
    /// `outbox`. `on_start` runs first on the new thread (real-time set-up).
    pub fn spawn(
        session: &Session,
        key: &str,
        outbox: Arc<CommandOutbox>,
        stats: Arc<PublishStats>,
        settings: PublisherSettings,
        on_start: impl FnOnce() + Send + 'static,
    ) -> Result<Self, TransportError> {
        let publisher = declare_command_publisher(session, key)?;
        let handle = std::thread::Builder::new()
            .name("vla-publish".into())
            .spawn(move || {
                on_start();
                let work = || publisher_loop(&publisher, &outbox, &stats, &settings);
                match &settings.supervision {
                    Some(supervision) => {
                        let _ = supervision.guard(Worker::Publisher, work);
                    }
                    None => work(),
                }
                if let Err(e) = publisher.undeclare().wait() {
                    log::warn!(
                        "zenoh: undeclaring the command publisher: {}",
                        zenoh_error_text(&*e)
                    );
                }
            })
            .map_err(|e| TransportError::Thread {
                thread: "publisher",
                message: e.to_string(),
            })?;
        Ok(Self {
            handle: Some(handle),
            key: key.to_string(),
        })
    }

    /// Waits until the outbox is closed and drained (the final STOP is out).
    pub fn join(&mut self) {
        if let Some(handle) = self.handle.take() {
            if handle.join().is_err() {
                log::error!("command publisher thread panicked");
            }
        }
    }

    /// Waits at most `limit` for the thread to drain the closed outbox and end; whether it
    /// ended normally. A publisher that died or hangs is left behind (see
    /// [`CommandPublisherThread::send_left_over`]).
    pub fn join_within(&mut self, limit: std::time::Duration) -> bool {
        let Some(handle) = self.handle.take() else {
            return true;
        };
        let deadline = std::time::Instant::now() + limit;
        while !handle.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        if !handle.is_finished() {
            log::error!("command publisher thread did not end within {limit:?}");
            return false;
        }
        // A panic caught by the supervision ends the thread normally, after the fault was
        // reported; the caller asks the supervision about that.
        handle.join().is_ok()
    }

    /// Puts the record still in `outbox` (the final STOP) from the calling thread with the
    /// command QoS: for when the publisher thread died or hangs. Whether one went out.
    pub fn send_left_over(&self, session: &Session, outbox: &CommandOutbox) -> bool {
        let Some(record) = outbox.receive() else {
            return false;
        };
        let put = declare_command_publisher(session, &self.key).and_then(|publisher| {
            publisher
                .put(record.bytes)
                .wait()
                .map_err(|e| TransportError::Declare {
                    key: self.key.clone(),
                    message: zenoh_error_text(&*e),
                })?;
            let _ = publisher.undeclare().wait();
            Ok(())
        });
        match put {
            Ok(()) => true,
            Err(e) => {
                log::error!("last command: {e}");
                false
            }
        }
    }
}

fn declare_command_publisher(
    session: &Session,
    key: &str,
) -> Result<Publisher<'static>, TransportError> {
    session
        .declare_publisher(key.to_string())
        .priority(Priority::RealTime)
        .express(true)
        .congestion_control(CongestionControl::Drop)
        .wait()
        .map_err(|e| TransportError::Declare {
            key: key.to_string(),
            message: zenoh_error_text(&*e),
        })
}

fn publisher_loop(
    publisher: &Publisher<'static>,
    outbox: &CommandOutbox,
    stats: &PublishStats,
    settings: &PublisherSettings,
) {
    outbox.register_publisher();
    loop {
        if let Some(supervision) = &settings.supervision {
            supervision.check_in(Worker::Publisher);
        }
        // Read before draining: a close that comes after the drain is seen next round.
        let closed = outbox.is_closed();
        while let Some(record) = outbox.receive() {
            if is_in_time(&record, clock::monotonic_ns(), settings.period_ns) {
                publish_one(publisher, &record.bytes, stats);
            } else {
                stats.stale.fetch_add(1, Ordering::Relaxed);
            }
        }
        if closed {
            return;
        }
        std::thread::park_timeout(std::time::Duration::from_millis(100));
    }
}

fn publish_one(publisher: &Publisher<'static>, record: &[u8; RECORD_LEN], stats: &PublishStats) {
    match publisher.put(*record).wait() {
        Ok(()) => {
            let done_mono = clock::monotonic_ns();
            let done_unix = clock::realtime_ns();
            stats.published.fetch_add(1, Ordering::Relaxed);
            if let Ok(decoded) = CommandRecord::decode(record) {
                stats
                    .delay
                    .record_ns(done_unix.saturating_sub(decoded.tick_time_ns));
                if let Some(slot) = stats.put_done_ns.get(decoded.seq as usize) {
                    slot.store(done_mono, Ordering::Relaxed);
                }
            }
        }
        Err(e) => {
            if stats.failed.fetch_add(1, Ordering::Relaxed) == 0 {
                log::error!("zenoh: publishing a command: {}", zenoh_error_text(&*e));
            }
        }
    }
}

/// Whether `record` may still go out at `now_ns`: a STOP always, anything else only within
/// one tick period of its hand-over (a late command would move the arm on an old decision,
/// and the next tick's command is due anyway).
pub fn is_in_time(record: &OutboxRecord, now_ns: u64, period_ns: u64) -> bool {
    record.is_stop() || now_ns.saturating_sub(record.handed_over_ns) <= period_ns
}

/// A newest-wins instruction slot written by the subscriber and read by the inference thread.
pub trait InstructionSink: Send + Sync + 'static {
    fn submit(&self, instruction: String);
}

/// The declarations that live as long as the service: subscribers and the liveliness token.
pub struct RobotInterface {
    instruction_subscriber: Option<Subscriber<()>>,
    estop_subscriber: Option<Subscriber<()>>,
    arm_subscriber: Option<Subscriber<()>>,
    alive: Option<LivelinessToken>,
}

/// An arm-key payload: `arm` or `disarm` (trimmed, any case); anything else is ignored.
pub fn parse_arm_request(payload: &[u8]) -> Option<OperatorRequest> {
    let text = String::from_utf8_lossy(payload);
    match text.trim().to_ascii_lowercase().as_str() {
        "arm" => Some(OperatorRequest::Arm),
        "disarm" => Some(OperatorRequest::Disarm),
        _ => None,
    }
}

/// What an e-stop payload asks for. Anything but `release` stops: an unreadable e-stop
/// message must not leave the arm moving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EStopRequest {
    Stop,
    Release,
}

impl EStopRequest {
    pub fn parse(payload: &[u8]) -> (Self, bool) {
        let text = String::from_utf8_lossy(payload);
        match text.trim().to_ascii_lowercase().as_str() {
            "release" => (Self::Release, true),
            "stop" => (Self::Stop, true),
            _ => (Self::Stop, false),
        }
    }
}

impl RobotInterface {
    /// Declares the instruction and e-stop subscribers; the liveliness token comes with
    /// [`RobotInterface::announce`], once the service is ready.
    pub fn declare(
        session: &Session,
        keys: &RobotKeys,
        inputs: Arc<ControlInputs>,
        instructions: Arc<dyn InstructionSink>,
        supervision: Option<Arc<Supervision>>,
    ) -> Result<Self, TransportError> {
        // Each callback runs as a busy section of the callback worker (a callback stuck past
        // the worker timeout is a stall) and a panic in it is a fault.
        let supervised = move |work: &dyn Fn()| match &supervision {
            Some(supervision) => {
                let _ = supervision.busy(Worker::Callbacks, || {
                    supervision.guard(Worker::Callbacks, || {
                        supervision.check_in(Worker::Callbacks);
                        work();
                    })
                });
            }
            None => work(),
        };
        let supervised = Arc::new(supervised);
        let estop_supervised = Arc::clone(&supervised);
        let declare_error = |key: &str| {
            let key = key.to_string();
            move |e: zenoh::Error| TransportError::Declare {
                key,
                message: zenoh_error_text(&*e),
            }
        };
        let arm_key = keys.arm.clone();
        let arm_inputs = Arc::clone(&inputs);
        let arm_subscriber = session
            .declare_subscriber(keys.arm.clone())
            .callback(move |sample| {
                let payload = sample.payload().to_bytes();
                match parse_arm_request(&payload) {
                    Some(OperatorRequest::Arm) => {
                        log::warn!("arm requested on {arm_key}");
                        arm_inputs.request_arm();
                    }
                    Some(OperatorRequest::Disarm) => {
                        log::warn!("disarm requested on {arm_key}");
                        arm_inputs.request_disarm();
                    }
                    None => {
                        arm_inputs.ignore_arm_payload();
                        log::warn!(
                            "{arm_key}: payload {:?} is neither `arm` nor `disarm`, ignored",
                            String::from_utf8_lossy(&payload)
                        );
                    }
                }
            })
            .wait()
            .map_err(declare_error(&keys.arm))?;
        let estop_key = keys.estop.clone();
        let estop_subscriber = session
            .declare_subscriber(keys.estop.clone())
            .callback(move |sample| {
                estop_supervised(&|| {
                let payload = sample.payload().to_bytes();
                match EStopRequest::parse(&payload) {
                    (EStopRequest::Release, _) => {
                        inputs.release_estop();
                        log::warn!("e-stop released on {estop_key}; STOP holds until `arm`");
                    }
                    (EStopRequest::Stop, understood) => {
                        inputs.request_estop();
                        if understood {
                            log::warn!("e-stop latched on {estop_key}");
                        } else {
                            log::warn!(
                                "e-stop latched on {estop_key}: unrecognised payload {:?} taken as `stop`",
                                String::from_utf8_lossy(&payload)
                            );
                        }
                    }
                }
                });
            })
            .wait()
            .map_err(declare_error(&keys.estop))?;
        let instruction_key = keys.instruction.clone();
        let instruction_subscriber = session
            .declare_subscriber(keys.instruction.clone())
            .callback(move |sample| {
                supervised(&|| match sample.payload().try_to_string() {
                    Ok(text) if !text.trim().is_empty() => {
                        log::info!("new instruction: {text:?}");
                        instructions.submit(text.trim().to_string());
                    }
                    Ok(_) => log::warn!("{instruction_key}: empty instruction ignored"),
                    Err(_) => log::warn!("{instruction_key}: instruction is not UTF-8, ignored"),
                })
            })
            .wait()
            .map_err(declare_error(&keys.instruction))?;
        Ok(Self {
            instruction_subscriber: Some(instruction_subscriber),
            estop_subscriber: Some(estop_subscriber),
            arm_subscriber: Some(arm_subscriber),
            alive: None,
        })
    }

    /// Declares the liveliness token `vla/<robot>/alive`.
    pub fn announce(&mut self, session: &Session, keys: &RobotKeys) -> Result<(), TransportError> {
        let token = session
            .liveliness()
            .declare_token(keys.alive.clone())
            .wait()
            .map_err(|e| TransportError::Declare {
                key: keys.alive.clone(),
                message: zenoh_error_text(&*e),
            })?;
        self.alive = Some(token);
        Ok(())
    }

    /// Undeclares everything, liveliness token first (so watchers see the service go).
    pub fn undeclare(&mut self) {
        if let Some(token) = self.alive.take() {
            if let Err(e) = token.undeclare().wait() {
                log::warn!(
                    "zenoh: undeclaring the liveliness token: {}",
                    zenoh_error_text(&*e)
                );
            }
        }
        for subscriber in [
            self.instruction_subscriber.take(),
            self.estop_subscriber.take(),
            self.arm_subscriber.take(),
        ]
        .into_iter()
        .flatten()
        {
            if let Err(e) = subscriber.undeclare().wait() {
                log::warn!("zenoh: undeclaring a subscriber: {}", zenoh_error_text(&*e));
            }
        }
    }
}

impl Drop for RobotInterface {
    fn drop(&mut self) {
        self.undeclare();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox_record(state: crate::control::ControlState, handed_over_ns: u64) -> OutboxRecord {
        let mut bytes = [0u8; RECORD_LEN];
        CommandRecord {
            state,
            seq: 3,
            tick_time_ns: 1,
            capture_time_ns: 0,
            action: [0.0; 7],
        }
        .encode(&mut bytes);
        OutboxRecord {
            bytes,
            handed_over_ns,
        }
    }

    #[test]
    fn a_record_older_than_a_period_is_not_sent_unless_it_is_a_stop() {
        use crate::control::ControlState;
        let period = 100_000_000;
        let act = outbox_record(ControlState::Act, 1_000_000_000);
        assert!(is_in_time(&act, 1_000_000_000, period));
        assert!(is_in_time(&act, 1_100_000_000, period));
        assert!(!is_in_time(&act, 1_100_000_001, period));
        let hold = outbox_record(ControlState::Hold, 1_000_000_000);
        assert!(!is_in_time(&hold, 3_000_000_000, period));
        let stop = outbox_record(ControlState::Stop, 1_000_000_000);
        assert!(is_in_time(&stop, 60_000_000_000, period));
    }

    #[test]
    fn keys_follow_the_contract() {
        let keys = RobotKeys::new("arm7");
        assert_eq!(keys.cmd, "vla/arm7/cmd");
        assert_eq!(keys.status, "vla/arm7/status");
        assert_eq!(keys.instruction, "vla/arm7/instruction");
        assert_eq!(keys.estop, "vla/arm7/estop");
        assert_eq!(keys.arm, "vla/arm7/arm");
        assert_eq!(keys.alive, "vla/arm7/alive");
    }

    #[test]
    fn arm_payloads() {
        assert_eq!(parse_arm_request(b"arm"), Some(OperatorRequest::Arm));
        assert_eq!(
            parse_arm_request(b" DISARM\n"),
            Some(OperatorRequest::Disarm)
        );
        assert_eq!(parse_arm_request(b"armed"), None);
        assert_eq!(parse_arm_request(b""), None);
        assert_eq!(parse_arm_request(&[0xff]), None);
    }

    #[test]
    fn estop_payloads() {
        assert_eq!(EStopRequest::parse(b"stop"), (EStopRequest::Stop, true));
        assert_eq!(
            EStopRequest::parse(b" RELEASE\n"),
            (EStopRequest::Release, true)
        );
        assert_eq!(EStopRequest::parse(b"halt"), (EStopRequest::Stop, false));
        assert_eq!(
            EStopRequest::parse(&[0xff, 0x00]),
            (EStopRequest::Stop, false)
        );
    }

    #[test]
    fn default_config_is_a_loopback_peer_without_multicast() {
        let config = zenoh_config(&ZenohConfig::default()).unwrap();
        let text = format!("{config}");
        assert!(text.contains("tcp/127.0.0.1:7447"), "{text}");
    }

    #[test]
    fn taken_port_names_the_endpoint() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let config = ZenohConfig {
            listen: Some(vec![format!("tcp/127.0.0.1:{port}")]),
            ..ZenohConfig::default()
        };
        let Err(err) = open_session(&config) else {
            panic!("opened a session on a taken port");
        };
        assert!(err.is_bad_input());
        let message = err.to_string();
        assert!(
            message.contains(&format!("tcp/127.0.0.1:{port}")),
            "{message}"
        );
        assert!(!message.contains('\n'), "{message}");
    }

    #[test]
    fn missing_json5_file_is_named() {
        let config = ZenohConfig {
            config: Some("/nonexistent/zenoh.json5".into()),
            ..ZenohConfig::default()
        };
        let err = zenoh_config(&config).err().unwrap();
        assert!(err
            .to_string()
            .starts_with("zenoh config file /nonexistent/zenoh.json5"));
    }
}
