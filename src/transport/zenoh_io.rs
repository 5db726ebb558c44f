//! The Zenoh side of the service (ARCHITECTURE.md §8): the session, the command publisher thread,
//! the status publisher, the liveliness token and the instruction and e-stop subscribers.
//! Who may reach and use the session is Zenoh's business (TLS, `access_control`, configured
//! in the json5 file); [`prepare_session`] checks what the configuration exposes first.
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

use super::security::{self, SecurityProblem, TransportSecurity};
use super::zenoh_error_text;
use crate::config::{ZenohConfig, ZenohMode};
use crate::control::clock;
use crate::control::command_record::{CommandRecord, RECORD_LEN};
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
    #[error("zenoh: endpoint `{endpoint}`: protocol not built into vla-rt (built in: {built_in})")]
    Protocol { endpoint: String, built_in: String },
    #[error(
        "zenoh.require_tls: refusing to start: {exposed} without TLS would let any host that \
         reaches it release the e-stop, replace the instruction and forge commands \
         (use tls/ endpoints with mutual TLS, see README \"Security\")"
    )]
    Insecure { exposed: String },
    #[error(
        "zenoh: refusing to start a service no one can reach: [zenoh] listen and [zenoh] connect \
         name no endpoint{in_file}, and multicast scouting (scouting/multicast/enabled) is off"
    )]
    Unreachable { in_file: String },
}

impl TransportError {
    /// Configuration mistakes (a bad file, an endpoint in use) as opposed to machine failures.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            TransportError::ConfigFile { .. }
                | TransportError::Config { .. }
                | TransportError::Open { .. }
                | TransportError::Protocol { .. }
                | TransportError::Insecure { .. }
                | TransportError::Unreachable { .. }
        )
    }
}

/// The key expressions of one robot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RobotKeys {
    pub cmd: String,
    pub status: String,
    pub instruction: String,
    /// The robot's state, for a policy that takes it (`service::proprio`).
    pub proprio: String,
    /// Any put latches STOP; a `release` here is refused (see [`EStopKey::Legacy`]).
    pub estop: String,
    pub arm: String,
    /// Any put latches STOP.
    pub estop_stop: String,
    /// A put on exactly this key releases the e-stop.
    pub estop_release: String,
    pub alive: String,
}

impl RobotKeys {
    pub fn new(robot_id: &str) -> Self {
        Self {
            cmd: format!("vla/{robot_id}/cmd"),
            status: format!("vla/{robot_id}/status"),
            instruction: format!("vla/{robot_id}/instruction"),
            proprio: format!("vla/{robot_id}/proprio"),
            estop: format!("vla/{robot_id}/estop"),
            arm: format!("vla/{robot_id}/arm"),
            estop_stop: format!("vla/{robot_id}/estop/stop"),
            estop_release: format!("vla/{robot_id}/estop/release"),
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

/// The session's configuration with the inbound message limit applied, and what it exposes.
/// Refuses endpoints whose protocol is not built in, and, under `require_tls`, any endpoint
/// other hosts reach without TLS.
pub fn prepare_session(
    config: &ZenohConfig,
    inbound_limit: usize,
) -> Result<(zenoh::Config, TransportSecurity), TransportError> {
    let mut zenoh_config = zenoh_config(config)?;
    security::limit_inbound_messages(&mut zenoh_config, inbound_limit).map_err(|message| {
        TransportError::Config {
            key: "transport/link".into(),
            message,
        }
    })?;
    let assessment = security::assess(&zenoh_config).map_err(|problem| match problem {
        SecurityProblem::UnknownProtocol { endpoint } => TransportError::Protocol {
            endpoint,
            built_in: security::BUILT_IN_PROTOCOLS.join(", "),
        },
        SecurityProblem::Unreadable { key, message } => TransportError::Config { key, message },
        SecurityProblem::AuthNotBuiltIn { key } => TransportError::Config {
            key,
            message: "Zenoh's user/password and public-key authentication are not built into \
                      vla-rt; use mutual TLS and access_control (README, Security)"
                .into(),
        },
    })?;
    if assessment.endpoints.is_empty() && !assessment.multicast_scouting {
        return Err(TransportError::Unreachable {
            in_file: config
                .config
                .as_ref()
                .map(|path| format!(" (nor does [zenoh] config {})", path.display()))
                .unwrap_or_default(),
        });
    }
    if config.require_tls && !assessment.exposed.is_empty() {
        return Err(TransportError::Insecure {
            exposed: assessment.exposed.join(", "),
        });
    }
    Ok((zenoh_config, assessment))
}

/// Opens the session after [`prepare_session`], and says in one log line who can reach it;
/// the error names the endpoints, since a taken port is the usual cause.
pub fn open_session(
    config: &ZenohConfig,
    inbound_limit: usize,
) -> Result<(Session, TransportSecurity), TransportError> {
    let (zenoh_config, assessment) = prepare_session(config, inbound_limit)?;
    // No endpoint passes `prepare_session` only with multicast scouting on.
    let endpoints = if assessment.endpoints.is_empty() {
        "no endpoint, multicast scouting only".to_string()
    } else {
        assessment.endpoints.join(", ")
    };
    if !assessment.exposed.is_empty() {
        log::warn!(
            "zenoh: {} reachable from other hosts without TLS: any of them can release the \
             e-stop, replace the instruction and forge commands (see README \"Security\"; \
             [zenoh] require_tls = true refuses this)",
            assessment.exposed.join(", ")
        );
    } else if assessment.loopback_only && !assessment.endpoints.is_empty() {
        log::info!("zenoh: loopback only ({endpoints}): no other host can reach the service");
    } else {
        log::info!(
            "zenoh: {endpoints}: TLS {}, access control {}",
            if assessment.mutual {
                "with client certificates"
            } else if assessment.tls {
                "without client certificates"
            } else {
                "off"
            },
            if assessment.access_control {
                "enforced here (default deny)"
            } else {
                "not enforced by this session"
            }
        );
    }
    let session = zenoh::open(zenoh_config).wait().map_err(|e| {
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
    })?;
    Ok((session, assessment))
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

/// A second publisher of every record the publisher thread sends (the ROS 2 twist and
/// gripper, ARCHITECTURE.md §15): called on the publisher thread right after the native put
/// of the same record, with that put's duration in ns. It must not allocate or lock per
/// record beyond what its own puts do.
pub trait CommandMirror: Send + 'static {
    fn mirror(&mut self, record: &[u8; RECORD_LEN], native_put_ns: u64);
    /// Undeclares what it declared (the publisher thread ends).
    fn close(self: Box<Self>);
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
        Self::spawn_mirrored(session, key, outbox, stats, settings, None, on_start)
    }

    /// [`CommandPublisherThread::spawn`], with `mirror` publishing each record sent right
    /// after its native put.
    pub fn spawn_mirrored(
        session: &Session,
        key: &str,
        outbox: Arc<CommandOutbox>,
        stats: Arc<PublishStats>,
        settings: PublisherSettings,
        mut mirror: Option<Box<dyn CommandMirror>>,
        on_start: impl FnOnce() + Send + 'static,
    ) -> Result<Self, TransportError> {
        let publisher = declare_command_publisher(session, key)?;
        let handle = std::thread::Builder::new()
            .name("vla-publish".into())
            .spawn(move || {
                on_start();
                let mut work =
                    || publisher_loop(&publisher, &outbox, &stats, &settings, &mut mirror);
                match &settings.supervision {
                    Some(supervision) => {
                        let _ = supervision.guard(Worker::Publisher, work);
                    }
                    None => work(),
                }
                if let Some(mirror) = mirror.take() {
                    mirror.close();
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
    mirror: &mut Option<Box<dyn CommandMirror>>,
) {
    outbox.register_publisher();
    loop {
        if let Some(supervision) = &settings.supervision {
            supervision.check_in(Worker::Publisher);
        }
        // Read before draining: a close that comes after the drain is seen next round.
        let closed = outbox.is_closed();
        while let Some(record) = outbox.receive() {
            let start = clock::monotonic_ns();
            if is_in_time(&record, start, settings.period_ns) {
                publish_one(publisher, &record.bytes, stats);
                if let Some(mirror) = mirror.as_mut() {
                    let put_ns = clock::monotonic_ns().saturating_sub(start);
                    mirror.mirror(&record.bytes, put_ns);
                }
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

/// Largest robot-state payload read on `vla/<robot_id>/proprio`: a state of a few dozen
/// numbers fits many times over.
pub const MAX_PROPRIO_BYTES: usize = 4096;

/// Where the robot's state goes (`service::proprio::ProprioCell`).
pub trait ProprioSink: Send + Sync {
    /// A payload of at most [`MAX_PROPRIO_BYTES`].
    fn receive(&self, payload: &[u8]);
    /// A larger payload, refused unread.
    fn too_large(&self, bytes: usize);
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
    proprio_subscriber: Option<Subscriber<()>>,
    estop_subscribers: Vec<Subscriber<()>>,
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

/// The e-stop keys. Stopping and releasing are separate keys so that Zenoh's access control,
/// which sees keys and never payloads, can let every peer stop the robot and only the
/// operator release it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EStopKey {
    /// `vla/<robot>/estop/stop`: any put latches STOP.
    Stop,
    /// `vla/<robot>/estop/release`: a put of `release` (or nothing) on exactly this key
    /// releases the latch.
    Release,
    /// `vla/<robot>/estop`, the key of earlier versions: any put latches STOP, `release`
    /// included. Releasing here would let anyone allowed to stop also release.
    Legacy,
}

/// What one put on an e-stop key does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EStopEffect {
    /// Latch STOP; `understood` is false for a payload that is neither `stop` nor empty (it
    /// stops all the same: an unreadable e-stop message must not leave the arm moving).
    Latch {
        understood: bool,
    },
    /// `release` on the legacy key: refused, and latched like any other put there.
    LatchRefusedRelease,
    Release,
    /// On the release key, but sent to a wildcard (it reached the stop key too) or carrying
    /// something other than `release`: nothing happens.
    IgnoredRelease,
}

/// Turns a failed declaration on `key` into the error that names it.
pub(crate) fn declare_error(key: &str) -> impl FnOnce(zenoh::Error) -> TransportError + '_ {
    move |e| TransportError::Declare {
        key: key.to_string(),
        message: zenoh_error_text(&*e),
    }
}

/// A callback body's wrapper: runs the body it is given under supervision.
pub type SupervisedCallback = Arc<dyn Fn(&dyn Fn()) + Send + Sync>;

/// Wraps the body of a Zenoh callback: it runs as a busy section of the callback worker (a
/// callback stuck past the worker timeout is a stall) and a panic in it is a fault. Without
/// supervision the body just runs.
pub fn supervised_callback(supervision: Option<Arc<Supervision>>) -> SupervisedCallback {
    Arc::new(move |work: &dyn Fn()| match &supervision {
        Some(supervision) => {
            let _ = supervision.busy(Worker::Callbacks, || {
                supervision.guard(Worker::Callbacks, || {
                    supervision.check_in(Worker::Callbacks);
                    work();
                })
            });
        }
        None => work(),
    })
}

impl EStopKey {
    /// The effect of `payload` put on this key; `named_exactly` is false when the put's key
    /// expression was a wildcard that merely includes this key.
    pub fn effect(self, named_exactly: bool, payload: &[u8]) -> EStopEffect {
        let text = String::from_utf8_lossy(payload);
        let word = text.trim().to_ascii_lowercase();
        match self {
            EStopKey::Stop => EStopEffect::Latch {
                understood: word.is_empty() || word == "stop",
            },
            EStopKey::Legacy if word == "release" => EStopEffect::LatchRefusedRelease,
            EStopKey::Legacy => EStopEffect::Latch {
                understood: word == "stop",
            },
            EStopKey::Release if named_exactly && (word.is_empty() || word == "release") => {
                EStopEffect::Release
            }
            EStopKey::Release => EStopEffect::IgnoredRelease,
        }
    }
}

fn estop_callback(
    key: EStopKey,
    key_expr: String,
    release_key: String,
    inputs: Arc<ControlInputs>,
) -> impl Fn(zenoh::sample::Sample) + Send + Sync + 'static {
    move |sample| {
        let payload = sample.payload().to_bytes();
        let named_exactly = sample.key_expr().as_str() == key_expr;
        let shown = || String::from_utf8_lossy(&payload).into_owned();
        match key.effect(named_exactly, &payload) {
            EStopEffect::Latch { understood } => {
                inputs.request_estop();
                if understood {
                    log::warn!("e-stop latched on {key_expr}");
                } else {
                    log::warn!(
                        "e-stop latched on {key_expr}: unrecognised payload {:?} taken as `stop`",
                        shown()
                    );
                }
            }
            EStopEffect::LatchRefusedRelease => {
                inputs.request_estop();
                log::warn!(
                    "e-stop latched on {key_expr}: `release` is refused on this key, put it on \
                     {release_key}"
                );
            }
            EStopEffect::Release => {
                inputs.release_estop();
                log::warn!("e-stop released on {key_expr}");
            }
            EStopEffect::IgnoredRelease => log::warn!(
                "{key_expr}: ignored {:?} put on {} (a release names this key exactly and \
                 carries `release`)",
                shown(),
                sample.key_expr()
            ),
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
        proprio: Option<Arc<dyn ProprioSink>>,
        supervision: Option<Arc<Supervision>>,
    ) -> Result<Self, TransportError> {
        let supervised = supervised_callback(supervision);
        let proprio_subscriber = match proprio {
            Some(cell) => {
                let proprio_supervised = Arc::clone(&supervised);
                Some(
                    session
                        .declare_subscriber(keys.proprio.clone())
                        .callback(move |sample| {
                            proprio_supervised(&|| {
                                let payload = sample.payload();
                                if payload.len() > MAX_PROPRIO_BYTES {
                                    // Refused unread.
                                    cell.too_large(payload.len());
                                } else {
                                    cell.receive(&payload.to_bytes());
                                }
                            })
                        })
                        .wait()
                        .map_err(declare_error(&keys.proprio))?,
                )
            }
            None => None,
        };
        let arm_key = keys.arm.clone();
        let arm_inputs = Arc::clone(&inputs);
        let arm_supervised = Arc::clone(&supervised);
        let arm_subscriber = session
            .declare_subscriber(keys.arm.clone())
            .callback(move |sample| {
                arm_supervised(&|| {
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
            })
            .wait()
            .map_err(declare_error(&keys.arm))?;
        // One subscription per exact key: access control announces a subscription only to
        // peers whose rules include its whole key expression, so a wildcard here would never
        // reach a driver allowed only `estop/stop`.
        let mut estop_subscribers = Vec::with_capacity(3);
        for (kind, key) in [
            (EStopKey::Stop, &keys.estop_stop),
            (EStopKey::Release, &keys.estop_release),
            (EStopKey::Legacy, &keys.estop),
        ] {
            let on_put = estop_callback(
                kind,
                key.clone(),
                keys.estop_release.clone(),
                Arc::clone(&inputs),
            );
            let estop_supervised = Arc::clone(&supervised);
            let subscriber = session
                .declare_subscriber(key.clone())
                .callback(move |sample| estop_supervised(&|| on_put(sample.clone())))
                .wait()
                .map_err(declare_error(key))?;
            estop_subscribers.push(subscriber);
        }
        let instruction_subscriber = session
            .declare_subscriber(keys.instruction.clone())
            .callback(move |sample| {
                supervised(&|| receive_instruction(sample.payload(), instructions.as_ref()))
            })
            .wait()
            .map_err(declare_error(&keys.instruction))?;
        Ok(Self {
            instruction_subscriber: Some(instruction_subscriber),
            proprio_subscriber,
            estop_subscribers,
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
        for subscriber in self
            .instruction_subscriber
            .take()
            .into_iter()
            .chain(self.proprio_subscriber.take())
            .chain(self.arm_subscriber.take())
            .chain(self.estop_subscribers.drain(..))
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
        assert_eq!(keys.estop_stop, "vla/arm7/estop/stop");
        assert_eq!(keys.estop_release, "vla/arm7/estop/release");
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
    fn estop_effects() {
        use EStopEffect::*;
        let latch = Latch { understood: true };
        let odd = Latch { understood: false };
        assert_eq!(EStopKey::Stop.effect(true, b"stop"), latch);
        assert_eq!(EStopKey::Stop.effect(true, b""), latch);
        assert_eq!(EStopKey::Stop.effect(false, b"stop"), latch);
        assert_eq!(EStopKey::Stop.effect(true, b"release"), odd);
        assert_eq!(EStopKey::Stop.effect(true, &[0xff, 0x00]), odd);
        assert_eq!(EStopKey::Release.effect(true, b" RELEASE\n"), Release);
        assert_eq!(EStopKey::Release.effect(true, b""), Release);
        assert_eq!(EStopKey::Release.effect(true, b"stop"), IgnoredRelease);
        assert_eq!(EStopKey::Release.effect(false, b"release"), IgnoredRelease);
        assert_eq!(EStopKey::Legacy.effect(true, b"stop"), latch);
        assert_eq!(EStopKey::Legacy.effect(true, b"halt"), odd);
        assert_eq!(
            EStopKey::Legacy.effect(true, b"release"),
            LatchRefusedRelease
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
        let Err(err) = open_session(&config, 4096) else {
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
    fn require_tls_refuses_plain_endpoints_beyond_loopback() {
        let exposed = ZenohConfig {
            listen: Some(vec!["tcp/0.0.0.0:7447".into()]),
            require_tls: true,
            ..ZenohConfig::default()
        };
        let err = prepare_session(&exposed, 4096).err().unwrap();
        assert!(err.is_bad_input());
        let message = err.to_string();
        assert!(
            message.starts_with("zenoh.require_tls: refusing to start: tcp/0.0.0.0:7447"),
            "{message}"
        );
        let loopback = ZenohConfig {
            require_tls: true,
            ..ZenohConfig::default()
        };
        let (_, security) = prepare_session(&loopback, 4096).unwrap();
        assert!(security.loopback_only && !security.tls);
        let (_, security) = prepare_session(
            &ZenohConfig {
                require_tls: false,
                ..exposed
            },
            4096,
        )
        .unwrap();
        assert_eq!(security.exposed, vec!["tcp/0.0.0.0:7447".to_string()]);
    }

    #[test]
    fn an_endpoint_of_a_protocol_not_built_in_is_refused() {
        let config = ZenohConfig {
            listen: Some(vec!["quic/127.0.0.1:7447".into()]),
            ..ZenohConfig::default()
        };
        let err = prepare_session(&config, 4096).err().unwrap();
        assert!(err.is_bad_input());
        assert_eq!(
            err.to_string(),
            "zenoh: endpoint `quic/127.0.0.1:7447`: protocol not built into vla-rt \
             (built in: tcp, udp, tls)"
        );
    }

    #[test]
    fn a_session_no_one_can_reach_is_refused() {
        // No file: multicast scouting is off, so empty lists leave no way in or out.
        let nowhere = ZenohConfig {
            listen: Some(Vec::new()),
            connect: Some(Vec::new()),
            ..ZenohConfig::default()
        };
        let err = prepare_session(&nowhere, 4096).err().unwrap();
        assert!(err.is_bad_input());
        let message = err.to_string();
        for key in [
            "[zenoh] listen",
            "[zenoh] connect",
            "scouting/multicast/enabled",
        ] {
            assert!(message.contains(key), "{message}");
        }
        // One way in or out is enough.
        for reachable in [
            ZenohConfig {
                connect: Some(vec!["tcp/127.0.0.1:7447".into()]),
                ..nowhere.clone()
            },
            ZenohConfig {
                listen: Some(vec!["tcp/127.0.0.1:7447".into()]),
                ..nowhere.clone()
            },
        ] {
            prepare_session(&reachable, 4096).unwrap();
        }
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
