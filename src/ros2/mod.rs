//! vla-rt as a ROS 2 node over rmw_zenoh (ARCHITECTURE.md §15), on the service's own Zenoh
//! session: no bridge, the same endpoints, TLS and access control as the native keys.
//!
//! - Published from the control tick, by the publisher thread, from the very record it puts
//!   on `vla/<robot_id>/cmd` ([`Ros2CommandPublisher`]): the twist
//!   (`geometry_msgs/msg/TwistStamped`, the tick's deltas as velocities) and the gripper
//!   (`std_msgs/msg/Float64MultiArray`).
//! - Published by the status thread at the status rate: `diagnostic_msgs/msg/DiagnosticArray`.
//! - Subscribed: the instruction (`std_msgs/msg/String`) and the e-stop (`std_msgs/msg/Bool`,
//!   `true` stops), into the same paths as the native keys; the camera (`ros2:<topic>`) is
//!   a capture source ([`camera`]).
//! - Discovery: liveliness tokens for the node and each endpoint, as rmw_zenoh declares them.
//!
//! Every sample carries rmw_zenoh's attachment; a received one without it, of another type
//! than the topic's, or whose CDR does not decode is refused and counted ([`Ros2Stats`]).

pub mod camera;
pub mod cdr;
pub mod config;
pub mod discovery;
pub mod types;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::json;
use zenoh::liveliness::LivelinessToken;
use zenoh::pubsub::{Publisher, Subscriber};
use zenoh::qos::{CongestionControl, Priority};
use zenoh::sample::Sample;
use zenoh::{Session, Wait};

pub use config::{Ros2Config, Ros2Names};
use discovery::{Attachment, EndpointKind, NodeIdentity};
use types::{MessageType, StringRefusal, TwistStamped};

use crate::config::ACTION_DIM;
use crate::control::clock;
use crate::control::command_record::{CommandRecord, RECORD_LEN};
use crate::control::handoff::ControlInputs;
use crate::control::heartbeat::Supervision;
use crate::control::stats::LatencyHistogram;
use crate::control::ControlState;
use crate::transport::zenoh_error_text;
use crate::transport::zenoh_io::{
    self, declare_error, parse_instruction, text_prefix, CommandMirror, InstructionRefusal,
    InstructionSink, TransportError, INSTRUCTION_LOG_CHARS,
};

/// Prefix of `[camera] source` that names a ROS 2 image topic.
pub const CAMERA_SOURCE_PREFIX: &str = "ros2:";

/// What the ROS 2 side counts (in the status JSON as `ros2`).
#[derive(Default)]
pub struct Ros2Stats {
    pub twists: AtomicU64,
    pub grippers: AtomicU64,
    pub diagnostics: AtomicU64,
    /// Puts that failed.
    pub failed: AtomicU64,
    /// Instructions and e-stops received in good order (then judged as on the native keys).
    pub instructions: AtomicU64,
    pub estops: AtomicU64,
    /// `false` on the e-stop topic: releasing stays on the native key.
    pub estop_false: AtomicU64,
    /// Refused samples: CDR that does not decode, no (or a bad) attachment, a type other
    /// than the topic's.
    pub malformed: AtomicU64,
    pub no_attachment: AtomicU64,
    pub wrong_type: AtomicU64,
    /// Per record: the native put, and the ROS 2 conversion and puts that follow it.
    pub native_put: LatencyHistogram,
    pub ros2_publish: LatencyHistogram,
}

impl Ros2Stats {
    pub fn to_json(&self) -> serde_json::Value {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let percentiles = |h: &LatencyHistogram| {
            let round = |v: Option<f64>| v.map(|us| (us * 1e3).round() / 1e3);
            json!({
                "p50": round(h.quantile_ms(0.5)),
                "p99": round(h.quantile_ms(0.99)),
                "count": h.count(),
            })
        };
        json!({
            "published": {
                "twist": load(&self.twists),
                "gripper": load(&self.grippers),
                "diagnostics": load(&self.diagnostics),
                "failed": load(&self.failed),
            },
            "received": {
                "instruction": load(&self.instructions),
                "estop": load(&self.estops),
                "estop_false": load(&self.estop_false),
            },
            "refused": {
                "malformed": load(&self.malformed),
                "no_attachment": load(&self.no_attachment),
                "wrong_type": load(&self.wrong_type),
            },
            "publish_ms": {
                "native_put": percentiles(&self.native_put),
                "ros2": percentiles(&self.ros2_publish),
            },
        })
    }

    /// Starts a new latency window (with the status thread's other histograms).
    pub fn rotate(&self) {
        self.native_put.rotate();
        self.ros2_publish.rotate();
    }
}

/// The twist for one record: the tick's deltas over the tick period, in m/s and rad/s; zero
/// for HOLD and STOP.
pub fn twist_of(record: &CommandRecord, period_ns: u64) -> ([f64; 3], [f64; 3]) {
    if record.state != ControlState::Act || period_ns == 0 {
        return ([0.0; 3], [0.0; 3]);
    }
    let velocity = |i: usize| f64::from(record.action[i]) * 1e9 / period_ns as f64;
    (
        [velocity(0), velocity(1), velocity(2)],
        [velocity(3), velocity(4), velocity(5)],
    )
}

/// The gripper position for a record's gripper value (0 closed, 1 open).
pub fn gripper_position(gripper: f32, closed: f64, open: f64) -> f64 {
    closed + f64::from(gripper) * (open - closed)
}

/// The entity ids of the node's endpoints (stable, so tokens and GIDs are too).
mod entity {
    pub const NODE: u32 = 0;
    pub const TWIST: u32 = 1;
    pub const GRIPPER: u32 = 2;
    pub const DIAGNOSTICS: u32 = 3;
    pub const INSTRUCTION: u32 = 4;
    pub const ESTOP: u32 = 5;
    pub const CAMERA: u32 = 6;
}

/// The twist and gripper publishers, owned by the publisher thread. Everything a record
/// needs is sized at start: the twist buffer fits the configured frame id, the gripper
/// buffer one value.
pub struct Ros2CommandPublisher {
    twist: Publisher<'static>,
    gripper: Publisher<'static>,
    twist_gid: [u8; discovery::GID_LEN],
    gripper_gid: [u8; discovery::GID_LEN],
    sequence: i64,
    frame_id: String,
    period_ns: u64,
    gripper_closed: f64,
    gripper_open: f64,
    /// No twist before the first ACT.
    acted: bool,
    twist_buffer: Vec<u8>,
    gripper_buffer: [u8; 64],
    stats: Arc<Ros2Stats>,
}

/// What [`Ros2CommandPublisher::encode`] wrote for one record.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EncodedCommand {
    pub twist_len: usize,
    pub gripper_len: usize,
    /// Attachment sequence number of both samples.
    pub sequence: i64,
}

impl Ros2CommandPublisher {
    /// Encodes the record's twist and gripper into the pre-sized buffers (no allocation);
    /// `None` before the first ACT, for a record that does not decode, or (never, by
    /// construction) one that does not fit.
    pub fn encode(&mut self, record: &[u8; RECORD_LEN]) -> Option<EncodedCommand> {
        let record = CommandRecord::decode(record).ok()?;
        if record.state == ControlState::Act {
            self.acted = true;
        }
        if !self.acted {
            return None;
        }
        let (linear, angular) = twist_of(&record, self.period_ns);
        let twist = TwistStamped {
            header: types::Header {
                stamp: types::Time::from_unix_ns(record.tick_time_ns),
                frame_id: &self.frame_id,
            },
            linear,
            angular,
        };
        let twist_len = twist.encode(&mut self.twist_buffer).ok()?;
        let position = gripper_position(
            record.action[ACTION_DIM - 1],
            self.gripper_closed,
            self.gripper_open,
        );
        let gripper_len =
            types::encode_float64_array(&[position], &mut self.gripper_buffer).ok()?;
        self.sequence += 1;
        Some(EncodedCommand {
            twist_len,
            gripper_len,
            sequence: self.sequence,
        })
    }

    fn put(
        &self,
        publisher: &Publisher<'static>,
        payload: &[u8],
        gid: [u8; discovery::GID_LEN],
        sequence: i64,
        counter: &AtomicU64,
    ) {
        let attachment = Attachment {
            sequence,
            source_timestamp_ns: clock::realtime_ns() as i64,
            gid,
        }
        .encode();
        match publisher.put(payload).attachment(attachment).wait() {
            Ok(()) => {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                if self.stats.failed.fetch_add(1, Ordering::Relaxed) == 0 {
                    log::error!("ros2: publishing a command: {}", zenoh_error_text(&*e));
                }
            }
        }
    }
}

impl CommandMirror for Ros2CommandPublisher {
    fn mirror(&mut self, record: &[u8; RECORD_LEN], native_put_ns: u64) {
        let start = clock::monotonic_ns();
        if let Some(encoded) = self.encode(record) {
            self.put(
                &self.twist,
                &self.twist_buffer[..encoded.twist_len],
                self.twist_gid,
                encoded.sequence,
                &self.stats.twists,
            );
            self.put(
                &self.gripper,
                &self.gripper_buffer[..encoded.gripper_len],
                self.gripper_gid,
                encoded.sequence,
                &self.stats.grippers,
            );
            self.stats
                .ros2_publish
                .record_ns(clock::monotonic_ns().saturating_sub(start));
            self.stats.native_put.record_ns(native_put_ns);
        }
    }

    fn close(self: Box<Self>) {
        let this = *self;
        for publisher in [this.twist, this.gripper] {
            if let Err(e) = publisher.undeclare().wait() {
                log::warn!("ros2: undeclaring a publisher: {}", zenoh_error_text(&*e));
            }
        }
    }
}

/// Declarations that live as long as the service.
struct Declarations {
    diagnostics: Option<Publisher<'static>>,
    subscribers: Vec<Subscriber<()>>,
    tokens: Vec<LivelinessToken>,
}

/// The ROS 2 node: diagnostics publisher, subscriptions, liveliness tokens, counters.
pub struct Ros2Node {
    names: Ros2Names,
    config: Ros2Config,
    robot_id: String,
    identity: NodeIdentity,
    /// The camera topic (`ros2:<topic>`) when the camera comes over ROS 2.
    camera_topic: Option<String>,
    stats: Arc<Ros2Stats>,
    diagnostics_sequence: AtomicU64,
    declarations: Mutex<Declarations>,
}

/// Why a received sample was refused, before its content is judged.
fn check_sample<'a>(
    sample: &'a Sample,
    expected: &MessageType,
    stats: &Ros2Stats,
    topic: &str,
) -> Option<std::borrow::Cow<'a, [u8]>> {
    let key = sample.key_expr().as_str();
    match discovery::type_of_key(key) {
        Some((dds_name, hash)) if dds_name == expected.dds_name && hash == expected.hash => {}
        _ => {
            stats.wrong_type.fetch_add(1, Ordering::Relaxed);
            log::warn!(
                "ros2 {topic}: refused a sample on {key}: not {} ({})",
                expected.ros_name,
                expected.hash
            );
            return None;
        }
    }
    let attachment = sample.attachment().map(|a| a.to_bytes());
    match attachment.as_deref().map(Attachment::decode) {
        Some(Ok(_)) => {}
        Some(Err(why)) => {
            stats.no_attachment.fetch_add(1, Ordering::Relaxed);
            log::warn!("ros2 {topic}: refused a sample: {why}");
            return None;
        }
        None => {
            stats.no_attachment.fetch_add(1, Ordering::Relaxed);
            log::warn!("ros2 {topic}: refused a sample without rmw_zenoh's attachment");
            return None;
        }
    }
    Some(sample.payload().to_bytes())
}

/// One `std_msgs/msg/String` instruction into `sink`, with the native key's limits: over
/// `max_bytes` refused from its declared length, then UTF-8, not blank.
pub fn receive_instruction(payload: &[u8], sink: &dyn InstructionSink, stats: &Ros2Stats) {
    let max_bytes = sink.max_bytes();
    match types::decode_string(payload, max_bytes) {
        Ok(bytes) => {
            stats.instructions.fetch_add(1, Ordering::Relaxed);
            match parse_instruction(bytes, max_bytes) {
                Ok(text) => sink.submit(text.to_string()),
                Err(refusal) => sink.reject(refusal, &text_prefix(bytes, INSTRUCTION_LOG_CHARS)),
            }
        }
        Err(StringRefusal::TooLarge { bytes }) => {
            stats.instructions.fetch_add(1, Ordering::Relaxed);
            let head = payload.get(8..).unwrap_or_default();
            sink.reject(
                InstructionRefusal::TooLarge { bytes, max_bytes },
                &text_prefix(
                    &head[..head.len().min(4 * INSTRUCTION_LOG_CHARS)],
                    INSTRUCTION_LOG_CHARS,
                ),
            );
        }
        Err(StringRefusal::Malformed(e)) => {
            stats.malformed.fetch_add(1, Ordering::Relaxed);
            log::warn!("ros2 instruction: refused: {e}");
        }
    }
}

/// One `std_msgs/msg/Bool` on the e-stop topic: `true` latches the e-stop as a put on
/// `vla/<robot>/estop/stop` does (persisted first, counted); `false` does nothing.
pub fn receive_estop(payload: &[u8], inputs: &ControlInputs, stats: &Ros2Stats, topic: &str) {
    match types::decode_bool(payload) {
        Ok(true) => {
            stats.estops.fetch_add(1, Ordering::Relaxed);
            inputs.request_estop();
            log::warn!("e-stop latched on ROS 2 topic {topic}");
        }
        Ok(false) => {
            stats.estops.fetch_add(1, Ordering::Relaxed);
            stats.estop_false.fetch_add(1, Ordering::Relaxed);
            log::warn!(
                "ROS 2 topic {topic}: `false` ignored (releasing is on the native estop/release key)"
            );
        }
        Err(e) => {
            stats.malformed.fetch_add(1, Ordering::Relaxed);
            log::warn!("ros2 e-stop {topic}: refused: {e}");
        }
    }
}

impl Ros2Node {
    /// Declares the diagnostics publisher and the instruction and e-stop subscriptions; the
    /// tokens come with [`Ros2Node::announce`], the twist and gripper publishers with
    /// [`Ros2Node::command_publisher`]. `config` is validated.
    pub fn declare(
        session: &Session,
        service: &crate::config::ServiceConfig,
        inputs: Arc<ControlInputs>,
        instructions: Arc<dyn InstructionSink>,
        supervision: Option<Arc<Supervision>>,
    ) -> Result<Arc<Self>, TransportError> {
        let config = service.ros2.clone();
        let names = config.names(&service.robot_id);
        let identity = NodeIdentity {
            domain_id: config.domain_id,
            zid: session.zid().to_string(),
            node_id: entity::NODE,
            namespace: names.namespace.clone(),
            node_name: names.node_name.clone(),
        };
        let stats = Arc::new(Ros2Stats::default());
        let supervised = zenoh_io::supervised_callback(supervision);
        let diagnostics_key = discovery::data_key(
            names.domain_id,
            &names.diagnostics,
            &types::DIAGNOSTIC_ARRAY,
        );
        let diagnostics = session
            .declare_publisher(diagnostics_key.clone())
            .congestion_control(CongestionControl::Drop)
            .wait()
            .map_err(declare_error(&diagnostics_key))?;
        let mut subscribers = Vec::with_capacity(2);
        {
            let key = discovery::any_type_key(names.domain_id, &names.instruction);
            let topic = names.instruction.clone();
            let stats = Arc::clone(&stats);
            let supervised = Arc::clone(&supervised);
            subscribers.push(
                session
                    .declare_subscriber(key.clone())
                    .callback(move |sample| {
                        supervised(&|| {
                            if let Some(payload) =
                                check_sample(&sample, &types::STRING, &stats, &topic)
                            {
                                receive_instruction(&payload, instructions.as_ref(), &stats);
                            }
                        })
                    })
                    .wait()
                    .map_err(declare_error(&key))?,
            );
        }
        {
            let key = discovery::any_type_key(names.domain_id, &names.estop);
            let topic = names.estop.clone();
            let stats = Arc::clone(&stats);
            subscribers.push(
                session
                    .declare_subscriber(key.clone())
                    .callback(move |sample| {
                        supervised(&|| {
                            if let Some(payload) =
                                check_sample(&sample, &types::BOOL, &stats, &topic)
                            {
                                receive_estop(&payload, &inputs, &stats, &topic);
                            }
                        })
                    })
                    .wait()
                    .map_err(declare_error(&key))?,
            );
        }
        let camera_topic = service
            .camera
            .source
            .strip_prefix(CAMERA_SOURCE_PREFIX)
            .map(str::to_string);
        log::info!(
            "ros2: node {}/{} on domain {}: twist on {}, gripper on {}, diagnostics on {}, \
             instruction from {}, e-stop from {}",
            if names.namespace == "/" {
                ""
            } else {
                &names.namespace
            },
            names.node_name,
            names.domain_id,
            names.twist,
            names.gripper,
            names.diagnostics,
            names.instruction,
            names.estop
        );
        Ok(Arc::new(Self {
            names,
            config,
            robot_id: service.robot_id.clone(),
            identity,
            camera_topic,
            stats,
            diagnostics_sequence: AtomicU64::new(0),
            declarations: Mutex::new(Declarations {
                diagnostics: Some(diagnostics),
                subscribers,
                tokens: Vec::new(),
            }),
        }))
    }

    pub fn names(&self) -> &Ros2Names {
        &self.names
    }

    pub fn stats(&self) -> Arc<Ros2Stats> {
        Arc::clone(&self.stats)
    }

    /// Declares the twist and gripper publishers (the command QoS) for the publisher thread.
    pub fn command_publisher(
        &self,
        session: &Session,
        period_ns: u64,
    ) -> Result<Ros2CommandPublisher, TransportError> {
        let declare = |topic: &str, message: &MessageType| {
            let key = discovery::data_key(self.names.domain_id, topic, message);
            session
                .declare_publisher(key.clone())
                .priority(Priority::RealTime)
                .express(true)
                .congestion_control(CongestionControl::Drop)
                .wait()
                .map_err(declare_error(&key))
        };
        let twist = declare(&self.names.twist, &types::TWIST_STAMPED)?;
        let gripper = declare(&self.names.gripper, &types::FLOAT64_MULTI_ARRAY)?;
        let zid = &self.identity.zid;
        Ok(Ros2CommandPublisher {
            twist,
            gripper,
            twist_gid: discovery::endpoint_gid(zid, entity::TWIST),
            gripper_gid: discovery::endpoint_gid(zid, entity::GRIPPER),
            sequence: 0,
            frame_id: self.config.frame_id.clone(),
            period_ns,
            gripper_closed: self.config.gripper_closed,
            gripper_open: self.config.gripper_open,
            acted: false,
            twist_buffer: vec![0u8; types::TWIST_STAMPED_FIXED_LEN + self.config.frame_id.len()],
            gripper_buffer: [0u8; 64],
            stats: Arc::clone(&self.stats),
        })
    }

    /// The liveliness token key expressions of the node and its endpoints.
    pub fn token_keys(&self) -> Vec<String> {
        use discovery::qos_chunk;
        let n = &self.names;
        let id = &self.identity;
        let mut keys = vec![
            id.node_token(),
            id.endpoint_token(
                entity::TWIST,
                EndpointKind::Publisher,
                &n.twist,
                &types::TWIST_STAMPED,
                &qos_chunk(false, 1),
            ),
            id.endpoint_token(
                entity::GRIPPER,
                EndpointKind::Publisher,
                &n.gripper,
                &types::FLOAT64_MULTI_ARRAY,
                &qos_chunk(false, 1),
            ),
            id.endpoint_token(
                entity::DIAGNOSTICS,
                EndpointKind::Publisher,
                &n.diagnostics,
                &types::DIAGNOSTIC_ARRAY,
                &qos_chunk(false, 10),
            ),
            id.endpoint_token(
                entity::INSTRUCTION,
                EndpointKind::Subscription,
                &n.instruction,
                &types::STRING,
                &qos_chunk(false, 10),
            ),
            id.endpoint_token(
                entity::ESTOP,
                EndpointKind::Subscription,
                &n.estop,
                &types::BOOL,
                &qos_chunk(false, 10),
            ),
        ];
        if let Some(topic) = &self.camera_topic {
            // image_transport's convention: a `.../compressed` topic carries CompressedImage.
            let message = if topic.ends_with("/compressed") {
                &types::COMPRESSED_IMAGE
            } else {
                &types::IMAGE
            };
            keys.push(id.endpoint_token(
                entity::CAMERA,
                EndpointKind::Subscription,
                topic,
                message,
                &qos_chunk(true, 1),
            ));
        }
        keys
    }

    /// Declares the liveliness tokens (once the service is ready).
    pub fn announce(&self, session: &Session) -> Result<(), TransportError> {
        let mut tokens = Vec::new();
        for key in self.token_keys() {
            tokens.push(
                session
                    .liveliness()
                    .declare_token(key.clone())
                    .wait()
                    .map_err(declare_error(&key))?,
            );
        }
        if let Ok(mut declarations) = self.declarations.lock() {
            declarations.tokens = tokens;
        }
        Ok(())
    }

    /// Publishes the status document as a `DiagnosticArray` (status thread).
    pub fn publish_diagnostics(&self, status: &serde_json::Value) {
        let Some(payload) = diagnostics_payload(
            status,
            &self.names.node_name,
            &self.robot_id,
            &self.names.namespace,
        ) else {
            return;
        };
        let Ok(declarations) = self.declarations.lock() else {
            return;
        };
        let Some(publisher) = &declarations.diagnostics else {
            return;
        };
        let sequence = self.diagnostics_sequence.fetch_add(1, Ordering::Relaxed) as i64 + 1;
        let attachment = Attachment {
            sequence,
            source_timestamp_ns: clock::realtime_ns() as i64,
            gid: discovery::endpoint_gid(&self.identity.zid, entity::DIAGNOSTICS),
        }
        .encode();
        match publisher.put(payload).attachment(attachment).wait() {
            Ok(()) => {
                self.stats.diagnostics.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                log::debug!("ros2: publishing diagnostics: {}", zenoh_error_text(&*e));
            }
        }
    }

    /// Undeclares everything, tokens first.
    pub fn undeclare(&self) {
        let Ok(mut declarations) = self.declarations.lock() else {
            return;
        };
        for token in declarations.tokens.drain(..) {
            if let Err(e) = token.undeclare().wait() {
                log::warn!("ros2: undeclaring a token: {}", zenoh_error_text(&*e));
            }
        }
        for subscriber in declarations.subscribers.drain(..) {
            if let Err(e) = subscriber.undeclare().wait() {
                log::warn!("ros2: undeclaring a subscriber: {}", zenoh_error_text(&*e));
            }
        }
        if let Some(publisher) = declarations.diagnostics.take() {
            if let Err(e) = publisher.undeclare().wait() {
                log::warn!("ros2: undeclaring a publisher: {}", zenoh_error_text(&*e));
            }
        }
    }
}

/// The status document (ARCHITECTURE.md §8) as one `DiagnosticStatus`: level OK in ACT and
/// HOLD, ERROR in STOP or after a fault; the values are the status's own.
pub fn diagnostics_payload(
    status: &serde_json::Value,
    node_name: &str,
    robot_id: &str,
    namespace: &str,
) -> Option<Vec<u8>> {
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    };
    let state = status["state"].as_str().unwrap_or("HOLD");
    let fault = status["fault"].as_str();
    let stop_cause = status["stop_cause"].as_str();
    let level = if state == "STOP" || fault.is_some() {
        types::level::ERROR
    } else {
        types::level::OK
    };
    let armed = status["armed"].as_bool().unwrap_or(false);
    let message = match (state, stop_cause, fault) {
        (_, _, Some(fault)) => format!("{state}: {fault}"),
        ("STOP", Some(cause), None) => format!("STOP ({cause})"),
        (state, _, None) => format!("{state}, {}", if armed { "armed" } else { "disarmed" }),
    };
    let total = &status["latency_ms"]["policy_total"];
    let values = [
        ("state", text(&status["state"])),
        ("armed", text(&status["armed"])),
        ("estop", text(&status["estop"])),
        ("stop_cause", text(&status["stop_cause"])),
        ("misses", text(&status["misses"])),
        ("consecutive_misses", text(&status["consecutive_misses"])),
        ("overruns", text(&status["overruns"])),
        ("policy_latency_p50_ms", text(&total["p50"])),
        ("policy_latency_p99_ms", text(&total["p99"])),
        ("measured_rate_hz", text(&status["measured_rate_hz"])),
        ("commands_published", text(&status["commands"]["published"])),
        ("camera_frames", text(&status["camera"]["frames"])),
    ];
    let node = if namespace == "/" {
        format!("/{node_name}")
    } else {
        format!("{namespace}/{node_name}")
    };
    let diagnostic = types::DiagnosticStatus {
        level,
        name: format!("{node}: control"),
        message,
        hardware_id: robot_id.to_string(),
        values: values
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    };
    types::encode_diagnostic_array(
        &types::Header {
            stamp: types::Time::from_unix_ns(clock::realtime_ns()),
            frame_id: "",
        },
        &[diagnostic],
    )
    .ok()
}
