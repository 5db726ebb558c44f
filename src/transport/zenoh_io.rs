//! The Zenoh side of the service (DESIGN.md §4): the session, the command publisher thread,
//! the status publisher, the liveliness token and the instruction and e-stop subscribers.
//!
//! The control thread never calls Zenoh: it drops each encoded record into the
//! [`CommandOutbox`], and the publisher thread (same real-time priority) puts it with
//! `Priority::RealTime`, `express` and `CongestionControl::Drop`. Subscriber callbacks only
//! write atomics and single-slot cells.

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
use crate::control::handoff::{CommandOutbox, ControlInputs};
use crate::control::stats::LatencyHistogram;

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
    pub alive: String,
}

impl RobotKeys {
    pub fn new(robot_id: &str) -> Self {
        Self {
            cmd: format!("vla/{robot_id}/cmd"),
            status: format!("vla/{robot_id}/status"),
            instruction: format!("vla/{robot_id}/instruction"),
            estop: format!("vla/{robot_id}/estop"),
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
            delay: LatencyHistogram::default(),
            put_done_ns: (0..trace_capacity).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

/// The command publisher on its own thread.
pub struct CommandPublisherThread {
    handle: Option<JoinHandle<()>>,
}

impl CommandPublisherThread {
    /// Declares `vla/<robot>/cmd` with the command QoS and starts the thread that drains
    /// `outbox`. `on_start` runs first on the new thread (real-time set-up).
    pub fn spawn(
        session: &Session,
        key: &str,
        outbox: Arc<CommandOutbox>,
        stats: Arc<PublishStats>,
        on_start: impl FnOnce() + Send + 'static,
    ) -> Result<Self, TransportError> {
        let publisher = session
            .declare_publisher(key.to_string())
            .priority(Priority::RealTime)
            .express(true)
            .congestion_control(CongestionControl::Drop)
            .wait()
            .map_err(|e| TransportError::Declare {
                key: key.to_string(),
                message: zenoh_error_text(&*e),
            })?;
        let handle = std::thread::Builder::new()
            .name("vla-publish".into())
            .spawn(move || {
                on_start();
                publisher_loop(&publisher, &outbox, &stats);
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
}

fn publisher_loop(publisher: &Publisher<'static>, outbox: &CommandOutbox, stats: &PublishStats) {
    outbox.register_publisher();
    loop {
        // Read before draining: a close that comes after the drain is seen next round.
        let closed = outbox.is_closed();
        while let Some(record) = outbox.receive() {
            publish_one(publisher, &record, stats);
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

/// A newest-wins instruction slot written by the subscriber and read by the inference thread.
pub trait InstructionSink: Send + Sync + 'static {
    /// Payloads longer than this are refused without being read.
    fn max_bytes(&self) -> usize;
    /// A well-formed instruction (UTF-8, not blank, trimmed, at most `max_bytes`).
    fn submit(&self, instruction: String);
    /// A refused payload: `prefix` is its start as text (at most
    /// [`INSTRUCTION_LOG_CHARS`] characters), for one log line.
    fn reject(&self, refusal: InstructionRefusal, prefix: &str);
}

/// Characters of a refused instruction that its log line shows.
pub const INSTRUCTION_LOG_CHARS: usize = 80;

/// Why an instruction payload was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstructionRefusal {
    TooLarge {
        bytes: usize,
        max_bytes: usize,
    },
    NotUtf8,
    Empty,
    /// The policy refused it (a prompt longer than the KV cache holds).
    Policy(String),
}

impl std::fmt::Display for InstructionRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooLarge { bytes, max_bytes } => write!(
                f,
                "{bytes} bytes, more than instruction.max_bytes ({max_bytes})"
            ),
            Self::NotUtf8 => f.write_str("not UTF-8"),
            Self::Empty => f.write_str("empty"),
            Self::Policy(message) => f.write_str(message),
        }
    }
}

/// The first `max_chars` characters of `bytes` read as UTF-8 (invalid sequences as U+FFFD),
/// never cut inside a character. Reads at most `4 * max_chars` bytes.
pub fn text_prefix(bytes: &[u8], max_chars: usize) -> String {
    let head = &bytes[..bytes.len().min(max_chars.saturating_mul(4))];
    String::from_utf8_lossy(head)
        .chars()
        .take(max_chars)
        .collect()
}

/// Checks an instruction payload: at most `max_bytes`, UTF-8 and not blank; the text comes
/// back trimmed.
pub fn parse_instruction(payload: &[u8], max_bytes: usize) -> Result<&str, InstructionRefusal> {
    if payload.len() > max_bytes {
        return Err(InstructionRefusal::TooLarge {
            bytes: payload.len(),
            max_bytes,
        });
    }
    let text = std::str::from_utf8(payload).map_err(|_| InstructionRefusal::NotUtf8)?;
    let text = text.trim();
    if text.is_empty() {
        return Err(InstructionRefusal::Empty);
    }
    Ok(text)
}

/// Hands one instruction sample to `sink`: a payload over the sink's limit is refused from its
/// length alone, before any copy or conversion sized by it.
fn receive_instruction(payload: &zenoh::bytes::ZBytes, sink: &dyn InstructionSink) {
    let max_bytes = sink.max_bytes();
    if payload.len() > max_bytes {
        let mut head = [0u8; 4 * INSTRUCTION_LOG_CHARS];
        let mut filled = 0;
        let mut reader = payload.reader();
        while filled < head.len() {
            match std::io::Read::read(&mut reader, &mut head[filled..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => filled += n,
            }
        }
        sink.reject(
            InstructionRefusal::TooLarge {
                bytes: payload.len(),
                max_bytes,
            },
            &text_prefix(&head[..filled], INSTRUCTION_LOG_CHARS),
        );
        return;
    }
    let bytes = payload.to_bytes();
    match parse_instruction(&bytes, max_bytes) {
        Ok(text) => sink.submit(text.to_string()),
        Err(refusal) => sink.reject(refusal, &text_prefix(&bytes, INSTRUCTION_LOG_CHARS)),
    }
}

/// The declarations that live as long as the service: subscribers and the liveliness token.
pub struct RobotInterface {
    instruction_subscriber: Option<Subscriber<()>>,
    estop_subscriber: Option<Subscriber<()>>,
    alive: Option<LivelinessToken>,
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
    ) -> Result<Self, TransportError> {
        let declare_error = |key: &str| {
            let key = key.to_string();
            move |e: zenoh::Error| TransportError::Declare {
                key,
                message: zenoh_error_text(&*e),
            }
        };
        let estop_key = keys.estop.clone();
        let estop_subscriber = session
            .declare_subscriber(keys.estop.clone())
            .callback(move |sample| {
                let payload = sample.payload().to_bytes();
                match EStopRequest::parse(&payload) {
                    (EStopRequest::Release, _) => {
                        inputs.release_estop();
                        log::warn!("e-stop released on {estop_key}");
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
            })
            .wait()
            .map_err(declare_error(&keys.estop))?;
        let instruction_subscriber = session
            .declare_subscriber(keys.instruction.clone())
            .callback(move |sample| receive_instruction(sample.payload(), instructions.as_ref()))
            .wait()
            .map_err(declare_error(&keys.instruction))?;
        Ok(Self {
            instruction_subscriber: Some(instruction_subscriber),
            estop_subscriber: Some(estop_subscriber),
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

    #[test]
    fn keys_follow_the_contract() {
        let keys = RobotKeys::new("arm7");
        assert_eq!(keys.cmd, "vla/arm7/cmd");
        assert_eq!(keys.status, "vla/arm7/status");
        assert_eq!(keys.instruction, "vla/arm7/instruction");
        assert_eq!(keys.estop, "vla/arm7/estop");
        assert_eq!(keys.alive, "vla/arm7/alive");
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
    fn instruction_payloads() {
        assert_eq!(parse_instruction(b"  pick it up\n", 64), Ok("pick it up"));
        assert_eq!(
            parse_instruction(&[b'a'; 65], 64),
            Err(InstructionRefusal::TooLarge {
                bytes: 65,
                max_bytes: 64
            })
        );
        assert_eq!(parse_instruction(&[b'a'; 64], 64), Ok(&"a".repeat(64)[..]));
        assert_eq!(
            parse_instruction(b"\xff\xfe go", 64),
            Err(InstructionRefusal::NotUtf8)
        );
        assert_eq!(
            parse_instruction(b" \t\n", 64),
            Err(InstructionRefusal::Empty)
        );
    }

    #[test]
    fn log_prefix_never_splits_a_character() {
        // 100 three-byte characters: the prefix is 80 whole ones.
        let text = "\u{20ac}".repeat(100);
        assert_eq!(text_prefix(text.as_bytes(), 80), "\u{20ac}".repeat(80));
        // A cut inside a character gives U+FFFD, not a panic.
        let cut = &text.as_bytes()[..4];
        assert_eq!(text_prefix(cut, 80), "\u{20ac}\u{fffd}");
        assert_eq!(text_prefix(b"short", 80), "short");
        assert_eq!(text_prefix(&[0xff; 1000], 3), "\u{fffd}\u{fffd}\u{fffd}");
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
