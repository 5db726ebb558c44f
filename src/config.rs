//! The service configuration (TOML), validated at start; every error names its key.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;

use crate::policy::{BackendKind, PolicyOptions, ProjectorFormat, Quantization};

/// Value of a V4L2 control that may be left to the camera. In TOML: `"auto"`, a number
/// (locks the manual value), or `"unset"` / absent (leave the camera's setting alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ControlValue {
    /// Leave the camera's current setting alone.
    #[default]
    Unset,
    /// Turn the automatic mode on.
    Auto(AutoKeyword),
    /// Lock the manual value.
    Manual(i64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoKeyword {
    Auto,
}

impl serde::Serialize for ControlValue {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            ControlValue::Unset => serializer.serialize_str("unset"),
            ControlValue::Auto(_) => serializer.serialize_str("auto"),
            ControlValue::Manual(v) => serializer.serialize_i64(*v),
        }
    }
}

impl<'de> Deserialize<'de> for ControlValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ControlValue;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"auto\", \"unset\" or an integer")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ControlValue, E> {
                Ok(ControlValue::Manual(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ControlValue, E> {
                i64::try_from(v)
                    .map(ControlValue::Manual)
                    .map_err(E::custom)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ControlValue, E> {
                match v {
                    "auto" => Ok(ControlValue::Auto(AutoKeyword::Auto)),
                    "unset" => Ok(ControlValue::Unset),
                    other => Err(E::custom(format!(
                        "expected \"auto\", \"unset\" or an integer, got \"{other}\""
                    ))),
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// `[camera]` (*contract*: `source`, `width`, `height`, `fps`, `format`).
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CameraConfig {
    /// `synthetic`, `images:<dir>`, `zenoh:<key expression>` or a `/dev/videoN` path.
    pub source: String,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// `auto` (best available), `MJPG`, `YUYV`, `RGB3` or `GREY`.
    pub format: String,
    /// Absolute exposure time in the camera's units (100 µs for UVC), or `"auto"`.
    pub exposure: ControlValue,
    /// White-balance temperature in kelvin, or `"auto"`.
    pub white_balance: ControlValue,
    /// Analogue gain, or `"auto"` where the camera has no separate switch for it.
    pub gain: ControlValue,
    /// No frame for this long marks the camera stalled.
    pub stall_timeout_ms: u64,
}

impl Default for CameraConfig {
    fn default() -> Self {
        Self {
            source: "synthetic".into(),
            width: 640,
            height: 480,
            fps: 30,
            format: "auto".into(),
            exposure: ControlValue::Unset,
            white_balance: ControlValue::Unset,
            gain: ControlValue::Unset,
            stall_timeout_ms: 500,
        }
    }
}

// The control layer owns these settings and their validation; the service config holds them.
pub use vla_control::safety_config::{step_period_ns, EStopMissing, SafetyConfig};
pub use vla_control::ACTION_DIM;

/// The robot id of the bundled simulation: distinct from the example drivers' default
/// (`robot`), so that the demo never drives a real arm listening under that id.
pub const DEFAULT_ROBOT_ID: &str = "sim";

/// Checkpoint the service runs when no config file names one.
pub const BUNDLED_MODEL_DIR: &str = "engines/openvla-tiny";
/// Dataset statistics the bundled checkpoint is un-normalised with by default.
pub const BUNDLED_UNNORM_KEY: &str = "tiny_bridge";

/// The whole service configuration: one TOML file (ARCHITECTURE.md §7).
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// *contract*: the `<robot_id>` in every key expression.
    pub robot_id: String,
    pub model: ModelConfig,
    pub camera: CameraConfig,
    /// `[wrist_camera]`: the second camera of a checkpoint that takes two images
    /// (OpenVLA-OFT's `num_images_in_input` 2), its image after `[camera]`'s. Absent: one camera.
    pub wrist_camera: Option<CameraConfig>,
    pub control: ControlConfig,
    pub safety: SafetyConfig,
    pub zenoh: ZenohConfig,
    pub instruction: InstructionConfig,
    pub calibration: CalibrationConfig,
    pub record: RecordConfig,
    /// `[ros2]`: the ROS 2 node over rmw_zenoh (ARCHITECTURE.md §15).
    pub ros2: crate::ros2::Ros2Config,
    /// `[serve]`: batching of `vla-rt serve` (ARCHITECTURE.md §16).
    pub serve: crate::remote::ServeConfig,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            robot_id: DEFAULT_ROBOT_ID.into(),
            model: ModelConfig::default(),
            camera: CameraConfig::default(),
            wrist_camera: None,
            control: ControlConfig::default(),
            safety: SafetyConfig::default(),
            zenoh: ZenohConfig::default(),
            instruction: InstructionConfig::default(),
            calibration: CalibrationConfig::default(),
            record: RecordConfig::default(),
            ros2: crate::ros2::Ros2Config::default(),
            serve: crate::remote::ServeConfig::default(),
        }
    }
}

/// `[model]` (*contract*: `path`, `backend`, `unnorm_key`).
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Checkpoint folder; relative paths are resolved against the config file's folder.
    pub path: PathBuf,
    pub backend: BackendKind,
    /// Dataset statistics key for un-normalisation; unset picks the only one, if only one exists.
    pub unnorm_key: Option<String>,
    pub quantization: Quantization,
    pub projector: ProjectorFormat,
    /// Pre-quantized weights written by `vla-rt quantize` (memory-mapped at start); without
    /// it, `quantization` is applied to the checkpoint's weights at load.
    pub quantized_weights: Option<PathBuf>,
    /// Rate of the policy's training data (action steps per second: 5 for Bridge, about 3
    /// for Fractal). Each action is the displacement of one such step. Unset: the
    /// checkpoint's `vla_rt_model.json` `action_hz`; a checkpoint without one refuses to run.
    pub action_hz: Option<f64>,
    /// `backend = "tensorrt"`: the folder `engines/build-trt.sh` wrote (unset: `<path>/tensorrt`).
    pub engines: Option<PathBuf>,
    /// `backend = "tensorrt"`: the libnvinfer to open (unset: `libnvinfer.so.10` from the
    /// loader's path).
    pub tensorrt_library: Option<PathBuf>,
    /// Run the policy on `vla-rt serve` processes instead of a local backend
    /// (ARCHITECTURE.md §16): `remote = { name = "...", timeout_ms = ..., fingerprint = "..." }`.
    pub remote: Option<crate::remote::RemoteConfig>,
    /// OpenVLA-OFT: action steps per chunk, as the checkpoint was fine-tuned (8 for LIBERO,
    /// 5 for Bridge). Unset: the checkpoint's `vla_rt_model.json`; set in both, they must
    /// be the same.
    pub num_actions_chunk: Option<usize>,
    /// OpenVLA-OFT: camera images per prediction (1, or 2 with `[wrist_camera]`); as above.
    pub num_images_in_input: Option<usize>,
    /// OpenVLA-OFT: `bounds_q99` or `bounds`; as above.
    pub action_normalization: Option<vla_model::model::config::ActionNormalization>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from(BUNDLED_MODEL_DIR),
            backend: BackendKind::Cpu,
            unnorm_key: Some(BUNDLED_UNNORM_KEY.into()),
            quantization: Quantization::None,
            projector: ProjectorFormat::F32,
            quantized_weights: None,
            action_hz: None,
            engines: None,
            tensorrt_library: None,
            remote: None,
            num_actions_chunk: None,
            num_images_in_input: None,
            action_normalization: None,
        }
    }
}

impl ModelConfig {
    /// The policy's action step rate: `action_hz`, else the checkpoint's
    /// `vla_rt_model.json`. `file` names the config in errors.
    pub fn resolved_action_hz(&self, file: &str) -> Result<f64, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            file: file.to_string(),
            key: "model.action_hz".into(),
            message,
        };
        if let Some(hz) = self.action_hz {
            return Ok(hz);
        }
        let runtime = crate::model::config::RuntimeModelConfig::from_dir(&self.path)
            .map_err(|e| invalid(e.to_string()))?;
        match runtime.action_hz {
            Some(hz) if hz.is_finite() && hz > 0.0 => Ok(hz),
            Some(hz) => Err(invalid(format!(
                "{}/{}: action_hz = {hz} must be > 0",
                self.path.display(),
                crate::model::config::RUNTIME_MODEL_CONFIG_FILE
            ))),
            None => Err(invalid(format!(
                "required: the rate of the policy's training data in action steps per \
                 second (5 for Bridge, 3 for Fractal); {} does not say",
                self.path.display()
            ))),
        }
    }

    /// `remote` with its defaults filled in: the timeout is one action step at `action_hz`,
    /// the fingerprint that of `path` when the config gives none.
    pub fn resolved_remote(
        &self,
        file: &str,
        action_hz: f64,
    ) -> Result<Option<crate::remote::ResolvedRemote>, ConfigError> {
        let Some(remote) = &self.remote else {
            return Ok(None);
        };
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            file: file.to_string(),
            key: key.to_string(),
            message,
        };
        crate::remote::validate_name(&remote.name).map_err(|m| invalid("model.remote.name", m))?;
        let timeout_ms = match remote.timeout_ms {
            Some(ms) if (1..=60_000).contains(&ms) => ms,
            Some(ms) => {
                return Err(invalid(
                    "model.remote.timeout_ms",
                    format!("{ms}: 1 to 60000"),
                ))
            }
            None => ((1000.0 / action_hz).ceil() as u64).max(1),
        };
        if !(1..=100).contains(&remote.jpeg_quality) {
            return Err(invalid(
                "model.remote.jpeg_quality",
                format!("{}: 1 to 100", remote.jpeg_quality),
            ));
        }
        let fingerprint = match &remote.fingerprint {
            Some(fingerprint) if fingerprint.starts_with("sha256:") && fingerprint.len() > 7 => {
                fingerprint.clone()
            }
            Some(other) => {
                return Err(invalid(
                    "model.remote.fingerprint",
                    format!("`{other}`: a `sha256:<hex>` as `vla-rt serve` prints it"),
                ))
            }
            None => crate::model::fingerprint::checkpoint_fingerprint(&self.path).map_err(|e| {
                invalid(
                    "model.remote.fingerprint",
                    format!(
                        "unset, and the checkpoint of model.path ({}) to take it from: {e}",
                        self.path.display()
                    ),
                )
            })?,
        };
        Ok(Some(crate::remote::ResolvedRemote {
            name: remote.name.clone(),
            timeout_ms,
            fingerprint,
            encoding: remote.encoding,
            jpeg_quality: remote.jpeg_quality,
        }))
    }

    pub fn policy_options(&self) -> PolicyOptions {
        PolicyOptions {
            backend: self.backend,
            unnorm_key: self.unnorm_key.clone(),
            quantization: self.quantization,
            projector: self.projector,
            quantized_weights: self.quantized_weights.clone(),
            projector_scales: None,
            oft: vla_model::policy::OftKeys {
                num_actions_chunk: self.num_actions_chunk,
                num_images_in_input: self.num_images_in_input,
                action_normalization: self.action_normalization,
            },
        }
    }

    pub fn tensorrt_options(&self) -> crate::backend::TensorrtOptions {
        crate::backend::TensorrtOptions {
            engines: self.engines.clone(),
            library: self.tensorrt_library.clone(),
        }
    }
}

/// Whether the control thread asks for SCHED_FIFO and locked memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RealtimeMode {
    /// Ordinary scheduling.
    Off,
    /// Ask; warn and carry on when the system refuses.
    #[default]
    Try,
    /// Ask; refuse to start when the system refuses.
    Require,
}

vla_model::named_variants!(RealtimeMode { Off => "off", Try => "try", Require => "require" });

/// `[control] chunk_overlap`: what runs when a chunk arrives before the current one is used
/// up (ARCHITECTURE.md §17).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChunkOverlapMode {
    /// The new chunk replaces the rest of the current one.
    #[default]
    Latest,
    /// Temporal ensembling (ACT): every chunk's action for a step, averaged with weights
    /// `exp(-chunk_ensemble_decay · i)`, the oldest chunk first.
    Ensemble,
}

vla_model::named_variants!(ChunkOverlapMode { Latest => "latest", Ensemble => "ensemble" });

/// Where a real installation keeps its state (the systemd unit's `StateDirectory=vla-rt`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/vla-rt";
/// The bundled simulation's state folder, relative to the source tree: writable without
/// privileges, kept across restarts (and reboots), apart from every real installation.
pub const BUNDLED_STATE_DIR: &str = "target/vla-rt-state";

/// Checks one camera table (`[camera]` or `[wrist_camera]`); an error names its key.
fn validate_camera(table: &str, camera: &CameraConfig) -> Result<(), (String, String)> {
    let source = camera.source.as_str();
    let source_ok = source == "synthetic"
        || source
            .strip_prefix("images:")
            .is_some_and(|d| !d.is_empty())
        || source.starts_with("/dev/");
    if let Some(key) = source.strip_prefix("zenoh:") {
        zenoh::key_expr::KeyExpr::try_from(key).map_err(|e| {
            (
                format!("{table}.source"),
                format!(
                    "`{key}` is not a Zenoh key expression: {}",
                    crate::transport::zenoh_error_text(&*e)
                ),
            )
        })?;
    } else if let Some(topic) = source.strip_prefix(crate::ros2::CAMERA_SOURCE_PREFIX) {
        crate::ros2::config::check_absolute_topic(topic)
            .map_err(|m| (format!("{table}.source"), format!("`{source}`: {m}")))?;
    } else if !source_ok {
        return Err((
            format!("{table}.source"),
            format!(
                "`{source}` is not `synthetic`, `images:<dir>`, `zenoh:<key>`, `ros2:<topic>` or a `/dev/videoN` path"
            ),
        ));
    }
    if camera.width == 0 || camera.width > 16384 {
        return Err((format!("{table}.width"), "must be 1 to 16384".into()));
    }
    if camera.height == 0 || camera.height > 16384 {
        return Err((format!("{table}.height"), "must be 1 to 16384".into()));
    }
    if camera.fps == 0 || camera.fps > 1000 {
        return Err((format!("{table}.fps"), "must be 1 to 1000".into()));
    }
    if camera.stall_timeout_ms == 0 {
        return Err((format!("{table}.stall_timeout_ms"), "must be > 0".into()));
    }
    Ok(())
}

/// Half a frame period of two unsynchronised 30 fps cameras (16.7 ms), the most their
/// nearest frames can be apart, plus capture-time jitter.
pub const DEFAULT_FRAME_PAIR_TOLERANCE_MS: u64 = 25;

/// `[control]` (*contract*: `rate_hz`).
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Commands per second; one command every tick.
    pub rate_hz: f64,
    /// Oldest action (time since the tick that latched its frame) that may still be published;
    /// unset means one action step or two control periods, whichever is longer.
    pub max_action_age_ms: Option<u64>,
    /// Action steps in a row that end without a fresh, valid action before STOP.
    pub stop_after_misses: u32,
    /// A camera silent for longer than this forces STOP.
    pub max_frame_age_ms: u64,
    /// With a `[wrist_camera]`: the two frames a prediction sees were captured at most this
    /// far apart (their capture times); a step without such a pair is a miss.
    pub frame_pair_tolerance_ms: u64,
    pub realtime: RealtimeMode,
    /// SCHED_FIFO priority of the control thread (1-99) when `realtime` is not `off`.
    pub priority: i32,
    /// Start armed (ACT without an `arm` request). Only for simulations.
    pub start_armed: bool,
    /// Folder of the persistent e-stop latch (`<robot_id>.estop`).
    pub state_dir: PathBuf,
    /// What a missing or unreadable e-stop file means at start.
    pub estop_missing: EStopMissing,
    /// A worker thread (capture, inference, publisher, status, a Zenoh callback) that has
    /// not checked in for this long counts as stalled: STOP, and the process exits with
    /// code 3. The capture thread gets one camera wait more; a prediction in progress gets
    /// at least 60 s or ten control periods.
    pub worker_timeout_ms: u64,
    /// Action chunks (OpenVLA-OFT): `latest` or `ensemble` when chunks overlap.
    pub chunk_overlap: ChunkOverlapMode,
    /// The `m` of ACT's temporal ensembling weights `exp(-m · i)`.
    pub chunk_ensemble_decay: f64,
    /// LeRobot's `chunk_size_threshold`: the next prediction is asked for once the steps left
    /// of the current chunk are at most this share of it (0 to 1; 1 asks at every tick).
    pub chunk_size_threshold: f64,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            rate_hz: 10.0,
            max_action_age_ms: None,
            stop_after_misses: 5,
            max_frame_age_ms: 500,
            frame_pair_tolerance_ms: DEFAULT_FRAME_PAIR_TOLERANCE_MS,
            realtime: RealtimeMode::Try,
            priority: 80,
            start_armed: false,
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            estop_missing: EStopMissing::Latched,
            worker_timeout_ms: 1000,
            chunk_overlap: ChunkOverlapMode::Latest,
            chunk_ensemble_decay: 0.01,
            chunk_size_threshold: 0.5,
        }
    }
}

impl ServiceConfig {
    /// The watchdog's limits for this (validated) config (ARCHITECTURE.md §5).
    pub fn watchdog_limits(&self) -> vla_control::heartbeat::Limits {
        // One camera wait (a stall timeout, or a frame period of a slow source) is normal.
        let camera_wait_ns = |camera: &CameraConfig| {
            camera
                .stall_timeout_ms
                .max(1_000 / u64::from(camera.fps.max(1)))
                .saturating_mul(1_000_000)
        };
        let worker_timeout_ns = self.control.worker_timeout_ms.saturating_mul(1_000_000);
        let mut limits = vla_control::heartbeat::Limits::new(
            worker_timeout_ns,
            camera_wait_ns(&self.camera),
            self.control.period_ns(),
        );
        // No wrist camera, no thread to watch.
        limits.idle_ns[vla_control::heartbeat::Worker::WristCapture as usize] =
            self.wrist_camera.as_ref().map_or(0, |wrist| {
                worker_timeout_ns.saturating_add(camera_wait_ns(wrist))
            });
        limits
    }

    /// Timing and limits of the control loop for this (validated) config, with the policy's
    /// resolved step rate ([`ModelConfig::resolved_action_hz`]).
    pub fn loop_settings(&self, action_hz: f64) -> vla_control::tick_loop::LoopSettings {
        vla_control::tick_loop::LoopSettings {
            period_ns: self.control.period_ns(),
            step_ns: step_period_ns(action_hz),
            max_action_age_ns: self.control.max_action_age_ns(action_hz),
            max_frame_age_ns: self.control.max_frame_age_ms.saturating_mul(1_000_000),
            stop_after_misses: self.control.stop_after_misses,
            start_armed: self.control.start_armed,
            safety: self.safety.clone(),
            chunks: vla_control::chunk::ChunkSettings {
                overlap: match self.control.chunk_overlap {
                    ChunkOverlapMode::Latest => vla_control::chunk::ChunkOverlap::Latest,
                    ChunkOverlapMode::Ensemble => vla_control::chunk::ChunkOverlap::Ensemble {
                        decay: self.control.chunk_ensemble_decay,
                    },
                },
                size_threshold: self.control.chunk_size_threshold,
            },
        }
    }
}

/// Smallest `[control] worker_timeout_ms`: the workers check in every 100 ms at most.
pub const MIN_WORKER_TIMEOUT_MS: u64 = 250;

impl ControlConfig {
    /// The tick period in nanoseconds (rounded to the nearest nanosecond).
    pub fn period_ns(&self) -> u64 {
        (1e9 / self.rate_hz).round() as u64
    }

    /// [`ControlConfig::max_action_age_ms`] with its default applied, in nanoseconds: one
    /// action step (`1 / action_hz`) or two control periods, whichever is longer.
    pub fn max_action_age_ns(&self, action_hz: f64) -> u64 {
        match self.max_action_age_ms {
            Some(ms) => ms.saturating_mul(1_000_000),
            None => self
                .period_ns()
                .saturating_mul(2)
                .max(step_period_ns(action_hz)),
        }
    }
}

/// How this process joins the Zenoh network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ZenohMode {
    #[default]
    Peer,
    Client,
}

/// `[zenoh]` (*contract*: `mode`, `listen`, `connect`). Unset keys fall back to the json5
/// file named by `config` when there is one, otherwise to a peer listening on loopback only
/// (no multicast scouting).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ZenohConfig {
    pub mode: Option<ZenohMode>,
    /// Endpoints to listen on, e.g. `tcp/127.0.0.1:7447`.
    pub listen: Option<Vec<String>>,
    /// Endpoints (routers or peers) to connect to.
    pub connect: Option<Vec<String>>,
    /// A Zenoh json5 configuration file applied first; `mode`, `listen` and `connect` override it.
    pub config: Option<PathBuf>,
    /// Refuse to start when the session would listen on, or connect to, an address other
    /// than loopback without TLS.
    pub require_tls: bool,
}

/// Where the service listens when nothing else is configured: loopback only.
pub const DEFAULT_ZENOH_LISTEN: &str = "tcp/127.0.0.1:7447";

impl ZenohConfig {
    /// The listen endpoints in effect when no json5 file decides them.
    pub fn listen_or_default(&self) -> Vec<String> {
        match (&self.listen, &self.config) {
            (Some(listen), _) => listen.clone(),
            (None, Some(_)) => Vec::new(),
            (None, None) => vec![DEFAULT_ZENOH_LISTEN.to_string()],
        }
    }
}

/// The default `[instruction] max_bytes`: the longest instruction, in bytes of UTF-8, a
/// service receives unless its config says otherwise.
pub const INSTRUCTION_MAX_BYTES: usize = 1024;

/// Largest `[instruction] max_bytes` accepted: far above any task description, far below
/// what would let one message cost the prompt path real memory.
pub const MAX_INSTRUCTION_BYTES_LIMIT: usize = 64 * 1024;

/// `[instruction]` (*contract*: `default`, `max_bytes`, `min_interval_ms`).
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct InstructionConfig {
    /// The task the policy runs until one arrives on `vla/<robot_id>/instruction`.
    pub default: String,
    /// A longer instruction payload is refused unread (the previous instruction stays).
    pub max_bytes: usize,
    /// At most one new instruction is applied per this many milliseconds; of a burst, the
    /// newest is applied when the interval has passed.
    pub min_interval_ms: u64,
}

impl Default for InstructionConfig {
    fn default() -> Self {
        Self {
            default: "pick up the red block".into(),
            max_bytes: INSTRUCTION_MAX_BYTES,
            min_interval_ms: 200,
        }
    }
}

/// `[calibration]`: the file written by `vla-calib`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CalibrationConfig {
    pub path: Option<PathBuf>,
}

/// `[record]`: the session recording (MCAP).
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordConfig {
    /// Record the session to this MCAP file; unset records nothing.
    pub path: Option<PathBuf>,
    /// Start the next file once this many MiB were written (0: never).
    pub max_file_mb: u64,
    /// Start the next file after this many seconds (0: never).
    pub max_file_s: u64,
    /// JPEG quality of the viewing copy of each frame (1 to 100).
    pub jpeg_quality: u8,
}

impl Default for RecordConfig {
    fn default() -> Self {
        Self {
            path: None,
            max_file_mb: 1024,
            max_file_s: 0,
            jpeg_quality: 80,
        }
    }
}

/// A configuration that cannot be used; the message names the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {message}")]
    Read { file: String, message: String },
    #[error("{file}: line {line}: {message}")]
    Syntax {
        file: String,
        line: usize,
        message: String,
    },
    #[error("{file}: {key}: {message}")]
    Invalid {
        file: String,
        key: String,
        message: String,
    },
}

/// What the built-in configuration is called in messages.
pub const BUILTIN_CONFIG_NAME: &str = "default config";

impl ServiceConfig {
    /// Reads, parses and validates `path`; relative paths inside are resolved against its folder.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            file: file.clone(),
            message: e.to_string(),
        })?;
        let mut config = Self::from_toml_str(&text, &file)?;
        let base = path.parent().unwrap_or(Path::new(""));
        config.resolve_relative_paths(base);
        config.validate(&file)?;
        Ok(config)
    }

    /// Parses TOML text without validating it; `file` names it in errors.
    pub fn from_toml_str(text: &str, file: &str) -> Result<Self, ConfigError> {
        let deserializer =
            toml::Deserializer::parse(text).map_err(|e| syntax_error(file, text, &e))?;
        serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            if key.is_empty() || key == "." {
                syntax_error(file, text, &inner)
            } else {
                ConfigError::Invalid {
                    file: file.to_string(),
                    key,
                    message: inner.message().trim().to_string(),
                }
            }
        })
    }

    /// The bundled default: synthetic camera, bundled tiny checkpoint, CPU, loopback Zenoh peer.
    /// The checkpoint is looked up in the working directory first, then in the source tree this
    /// binary was built from.
    /// It starts armed, with its e-stop state in the source tree's `target/vla-rt-state`
    /// (released when that file is missing): a simulation, never a robot's configuration.
    pub fn builtin() -> Self {
        let mut config = Self::default();
        config.control.start_armed = true;
        config.control.estop_missing = EStopMissing::Released;
        config.control.state_dir = PathBuf::from(BUNDLED_STATE_DIR);
        if !config.model.path.exists() {
            let source_tree = Path::new(env!("CARGO_MANIFEST_DIR"));
            let in_source_tree = source_tree.join(BUNDLED_MODEL_DIR);
            if in_source_tree.exists() {
                config.model.path = in_source_tree;
                config.control.state_dir = source_tree.join(BUNDLED_STATE_DIR);
            }
        }
        config
    }

    fn resolve_relative_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() && !p.as_os_str().is_empty() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut self.model.path);
        if let Some(p) = self.model.quantized_weights.as_mut() {
            resolve(p);
        }
        if let Some(p) = self.model.engines.as_mut() {
            resolve(p);
        }
        if let Some(p) = self.zenoh.config.as_mut() {
            resolve(p);
        }
        if let Some(p) = self.calibration.path.as_mut() {
            resolve(p);
        }
        resolve(&mut self.control.state_dir);
        if let Some(p) = self.record.path.as_mut() {
            resolve(p);
        }
        for camera in std::iter::once(&mut self.camera).chain(self.wrist_camera.as_mut()) {
            if let Some(dir) = camera.source.strip_prefix("images:") {
                let dir = Path::new(dir);
                if dir.is_relative() && !dir.as_os_str().is_empty() {
                    camera.source = format!("images:{}", base.join(dir).display());
                }
            }
        }
    }

    /// Checks every value; the first problem found is returned, naming its key.
    pub fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            file: file.to_string(),
            key: key.to_string(),
            message,
        };
        validate_robot_id(&self.robot_id).map_err(|m| invalid("robot_id", m))?;
        if self.model.path.as_os_str().is_empty() {
            return Err(invalid(
                "model.path",
                "must name a checkpoint folder".into(),
            ));
        }
        if self.model.unnorm_key.as_deref() == Some("") {
            return Err(invalid("model.unnorm_key", "must not be empty".into()));
        }
        for (key, value, max) in [
            (
                "model.num_actions_chunk",
                self.model.num_actions_chunk,
                vla_model::model::oft::MAX_ACTIONS_CHUNK,
            ),
            (
                "model.num_images_in_input",
                self.model.num_images_in_input,
                vla_model::model::oft::MAX_IMAGES_IN_INPUT,
            ),
        ] {
            if value.is_some_and(|v| !(1..=max).contains(&v)) {
                return Err(invalid(key, format!("must be 1 to {max}")));
            }
        }

        validate_camera("camera", &self.camera).map_err(|(key, m)| invalid(&key, m))?;
        if let Some(wrist) = &self.wrist_camera {
            validate_camera("wrist_camera", wrist).map_err(|(key, m)| invalid(&key, m))?;
            if wrist.source == self.camera.source && wrist.source != "synthetic" {
                return Err(invalid(
                    "wrist_camera.source",
                    format!("`{}` is `[camera]`'s source too", wrist.source),
                ));
            }
        }

        if self.record.jpeg_quality == 0 || self.record.jpeg_quality > 100 {
            return Err(invalid("record.jpeg_quality", "must be 1 to 100".into()));
        }
        if self
            .record
            .path
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(invalid("record.path", "must name a file".into()));
        }

        let control = &self.control;
        if !control.rate_hz.is_finite() || control.rate_hz <= 0.0 {
            return Err(invalid("control.rate_hz", "must be > 0".into()));
        }
        // The period is held in u64 nanoseconds and added up slot after slot; a rate this low
        // would saturate it and wrap the schedule into a busy loop.
        if control.rate_hz < 0.001 {
            return Err(invalid("control.rate_hz", "must be at least 0.001".into()));
        }
        if control.rate_hz > 10_000.0 {
            return Err(invalid("control.rate_hz", "must be at most 10000".into()));
        }
        if let Some(age_ms) = control.max_action_age_ms {
            let period_ms = 1e3 / control.rate_hz;
            if (age_ms as f64) < period_ms {
                return Err(invalid(
                    "control.max_action_age_ms",
                    format!(
                        "must be at least one control period ({period_ms:.1} ms at {} Hz)",
                        control.rate_hz
                    ),
                ));
            }
        }
        if control.stop_after_misses == 0 {
            return Err(invalid("control.stop_after_misses", "must be >= 1".into()));
        }
        if control.max_frame_age_ms == 0 {
            return Err(invalid("control.max_frame_age_ms", "must be > 0".into()));
        }
        if control.frame_pair_tolerance_ms == 0
            || control.frame_pair_tolerance_ms > control.max_frame_age_ms
        {
            return Err(invalid(
                "control.frame_pair_tolerance_ms",
                format!(
                    "must be 1 to control.max_frame_age_ms ({})",
                    control.max_frame_age_ms
                ),
            ));
        }
        if !(1..=99).contains(&control.priority) {
            return Err(invalid("control.priority", "must be 1 to 99".into()));
        }
        if control.state_dir.as_os_str().is_empty() {
            return Err(invalid("control.state_dir", "must name a folder".into()));
        }
        if let Some(hz) = self.model.action_hz {
            if !hz.is_finite() || hz <= 0.0 || hz > 1000.0 {
                return Err(invalid(
                    "model.action_hz",
                    "must be > 0 and at most 1000".into(),
                ));
            }
        }
        self.safety
            .validate()
            .map_err(|(key, message)| invalid(&key, message))?;
        if !(0.0..=1.0).contains(&control.chunk_size_threshold) {
            return Err(invalid(
                "control.chunk_size_threshold",
                "must be from 0 to 1".into(),
            ));
        }
        if !control.chunk_ensemble_decay.is_finite() || control.chunk_ensemble_decay < 0.0 {
            return Err(invalid(
                "control.chunk_ensemble_decay",
                "must be a finite number >= 0".into(),
            ));
        }
        if control.worker_timeout_ms < MIN_WORKER_TIMEOUT_MS {
            return Err(invalid(
                "control.worker_timeout_ms",
                format!(
                    "must be at least {MIN_WORKER_TIMEOUT_MS} (the workers check in every 100 ms)"
                ),
            ));
        }

        for (list, key) in [
            (&self.zenoh.listen, "zenoh.listen"),
            (&self.zenoh.connect, "zenoh.connect"),
        ] {
            for (i, endpoint) in list.iter().flatten().enumerate() {
                zenoh::config::EndPoint::from_str(endpoint).map_err(|e| {
                    invalid(
                        &format!("{key}[{i}]"),
                        format!("`{endpoint}`: {}", crate::transport::zenoh_error_text(&*e)),
                    )
                })?;
            }
        }
        if self.zenoh.mode == Some(ZenohMode::Client)
            && self.zenoh.connect.as_ref().is_none_or(|c| c.is_empty())
            && self.zenoh.config.is_none()
        {
            return Err(invalid(
                "zenoh.connect",
                "client mode needs at least one endpoint to connect to (or zenoh.config)".into(),
            ));
        }
        if self.instruction.default.trim().is_empty() {
            return Err(invalid("instruction.default", "must not be empty".into()));
        }
        if self.instruction.max_bytes == 0
            || self.instruction.max_bytes > MAX_INSTRUCTION_BYTES_LIMIT
        {
            return Err(invalid(
                "instruction.max_bytes",
                format!(
                    "{} is not in 1..={MAX_INSTRUCTION_BYTES_LIMIT}",
                    self.instruction.max_bytes
                ),
            ));
        }
        if self.instruction.default.len() > self.instruction.max_bytes {
            return Err(invalid(
                "instruction.default",
                format!(
                    "is {} bytes, more than instruction.max_bytes ({})",
                    self.instruction.default.len(),
                    self.instruction.max_bytes
                ),
            ));
        }
        if self.instruction.min_interval_ms > 60_000 {
            return Err(invalid(
                "instruction.min_interval_ms",
                format!("{} ms is over a minute", self.instruction.min_interval_ms),
            ));
        }
        self.ros2
            .validate(&self.robot_id)
            .map_err(|(key, message)| invalid(&key, message))?;
        self.serve
            .validate()
            .map_err(|(key, message)| invalid(key, message))?;
        if let Some(remote) = &self.model.remote {
            crate::remote::validate_name(&remote.name)
                .map_err(|m| invalid("model.remote.name", m))?;
        }
        Ok(())
    }
}

/// A robot id becomes one chunk of a key expression: no `/`, wildcards or whitespace.
fn validate_robot_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("must not be empty".into());
    }
    if let Some(c) = id
        .chars()
        .find(|c| matches!(c, '/' | '*' | '$' | '#' | '?') || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "`{id}` contains `{c}`, which a Zenoh key chunk cannot hold"
        ));
    }
    Ok(())
}

fn syntax_error(file: &str, text: &str, e: &toml::de::Error) -> ConfigError {
    let line = e
        .span()
        .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1)
        .unwrap_or(0);
    ConfigError::Syntax {
        file: file.to_string(),
        line,
        message: e.message().trim().replace('\n', " "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_and_validate(text: &str) -> Result<ServiceConfig, ConfigError> {
        let config = ServiceConfig::from_toml_str(text, "config.toml")?;
        config.validate("config.toml")?;
        Ok(config)
    }

    fn error_text(text: &str) -> String {
        match parse_and_validate(text) {
            Ok(_) => panic!("config was accepted:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn empty_file_is_the_default() {
        let config = parse_and_validate("").unwrap();
        assert_eq!(config, ServiceConfig::default());
        assert_eq!(config.control.rate_hz, 10.0);
        assert_eq!(
            config.zenoh.listen_or_default(),
            vec!["tcp/127.0.0.1:7447".to_string()]
        );
    }

    #[test]
    fn a_wrist_camera_is_a_second_camera_table_and_is_watched_only_when_configured() {
        let one = parse_and_validate("").unwrap();
        assert_eq!(one.wrist_camera, None);
        assert_eq!(
            one.control.frame_pair_tolerance_ms,
            DEFAULT_FRAME_PAIR_TOLERANCE_MS
        );
        let wrist = vla_control::heartbeat::Worker::WristCapture as usize;
        assert_eq!(one.watchdog_limits().idle_ns[wrist], 0);

        let two = parse_and_validate(
            "[camera]\nsource = \"/dev/video0\"\n\
             [wrist_camera]\nsource = \"zenoh:arm/wrist\"\nwidth = 320\nheight = 240\n\
             stall_timeout_ms = 700\n[control]\nframe_pair_tolerance_ms = 40\n",
        )
        .unwrap();
        let camera = two.wrist_camera.as_ref().unwrap();
        assert_eq!(
            (
                camera.source.as_str(),
                camera.width,
                camera.height,
                camera.fps
            ),
            ("zenoh:arm/wrist", 320, 240, 30)
        );
        assert_eq!(two.control.frame_pair_tolerance_ms, 40);
        // The wrist camera's thread may wait its own stall timeout on top of the worker
        // timeout (1000 ms).
        assert_eq!(two.watchdog_limits().idle_ns[wrist], 1_700_000_000);
    }

    #[test]
    fn a_camera_on_zenoh_is_a_key_expression() {
        let config = parse_and_validate("[camera]\nsource = \"zenoh:vla/sim/camera\"\n").unwrap();
        assert_eq!(config.camera.source, "zenoh:vla/sim/camera");
        let wildcard = parse_and_validate("[camera]\nsource = \"zenoh:cams/*/front\"\n").unwrap();
        assert_eq!(wildcard.camera.source, "zenoh:cams/*/front");
    }

    #[test]
    fn contract_keys_parse() {
        let config = parse_and_validate(
            r#"
            robot_id = "arm7"
            [model]
            path = "/opt/openvla-7b"
            backend = "cuda"
            unnorm_key = "bridge_orig"
            quantization = "int8"
            projector = "int8"
            [camera]
            source = "/dev/video2"
            width = 1280
            height = 720
            fps = 60
            format = "MJPG"
            [control]
            rate_hz = 5.0
            max_action_age_ms = 400
            stop_after_misses = 3
            max_frame_age_ms = 250
            realtime = "require"
            priority = 70
            [safety]
            min = [-0.1, -0.1, -0.1, -0.5, -0.5, -0.5, 0.0]
            max = [0.1, 0.1, 0.1, 0.5, 0.5, 0.5, 1.0]
            [zenoh]
            mode = "client"
            connect = ["tcp/192.168.1.10:7447"]
            listen = []
            [instruction]
            default = "open the drawer"
            [calibration]
            path = "/etc/vla-rt/calib.toml"
            "#,
        )
        .unwrap();
        assert_eq!(config.robot_id, "arm7");
        assert_eq!(config.model.backend, BackendKind::Cuda);
        assert_eq!(config.model.quantization, Quantization::Int8);
        assert_eq!(config.model.projector, ProjectorFormat::Int8);
        assert_eq!(config.camera.source, "/dev/video2");
        assert_eq!(config.camera.format, "MJPG");
        assert_eq!(config.control.realtime, RealtimeMode::Require);
        assert_eq!(config.control.period_ns(), 200_000_000);
        assert_eq!(config.control.max_action_age_ns(5.0), 400_000_000);
        assert_eq!(config.safety.max[3], 0.5);
        assert_eq!(config.zenoh.mode, Some(ZenohMode::Client));
        assert_eq!(config.zenoh.listen_or_default(), Vec::<String>::new());
        assert_eq!(config.instruction.default, "open the drawer");
        assert_eq!(
            config.calibration.path.as_deref(),
            Some(Path::new("/etc/vla-rt/calib.toml"))
        );
    }

    #[test]
    fn default_action_age_is_one_step_or_two_periods() {
        let config = parse_and_validate("[control]\nrate_hz = 50.0\n").unwrap();
        assert_eq!(config.control.period_ns(), 20_000_000);
        // 5 Hz actions: one step (200 ms) is longer than two periods (40 ms).
        assert_eq!(config.control.max_action_age_ns(5.0), 200_000_000);
        // 100 Hz actions: two periods.
        assert_eq!(config.control.max_action_age_ns(100.0), 40_000_000);
    }

    #[test]
    fn action_hz_comes_from_the_config_or_the_checkpoint_or_is_refused() {
        let mut config = ServiceConfig::builtin();
        // The bundled checkpoint says 5 Hz (Bridge).
        assert_eq!(config.model.resolved_action_hz("c.toml").unwrap(), 5.0);
        config.model.action_hz = Some(3.0);
        assert_eq!(config.model.resolved_action_hz("c.toml").unwrap(), 3.0);
        config.model.action_hz = None;
        config.model.path = std::env::temp_dir();
        let message = config
            .model
            .resolved_action_hz("c.toml")
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with("c.toml: model.action_hz: required"),
            "{message}"
        );
    }

    /// `vla-rt bench control --realtime` offers the names the config file takes.
    #[test]
    fn realtime_names_are_the_config_names() {
        use crate::policy::NamedVariant;
        for name in RealtimeMode::NAMES {
            let config = ServiceConfig::from_toml_str(
                &format!("[control]\nrealtime = \"{name}\"\n"),
                "test.toml",
            )
            .unwrap();
            assert_eq!(Some(config.control.realtime), RealtimeMode::from_name(name));
            assert_eq!(config.control.realtime.name(), *name);
        }
        assert_eq!(RealtimeMode::NAMES.len(), 3);
    }

    #[test]
    fn safety_keys_parse_and_are_checked() {
        let config = parse_and_validate(
            "[safety]\nmax_linear_velocity = 0.1\nworkspace_min = [-0.2, -0.2, 0.0]\nworkspace_max = [0.2, 0.2, 0.3]\n",
        )
        .unwrap();
        assert_eq!(config.safety.max_linear_velocity, 0.1);
        assert_eq!(config.safety.workspace_max, Some([0.2, 0.2, 0.3]));
        assert!(!config.control.start_armed);
        assert_eq!(config.control.estop_missing, EStopMissing::Latched);
        assert_eq!(config.control.state_dir, Path::new(DEFAULT_STATE_DIR));
        for (text, expected) in [
            (
                "[safety]\nmax_linear_jerk = 0.0\n",
                "safety.max_linear_jerk: must be",
            ),
            (
                "[safety]\nmax_angular_velocity = nan\n",
                "safety.max_angular_velocity",
            ),
            (
                "[safety]\nworkspace_min = [-1.0, -1.0, -1.0]\n",
                "safety.workspace_max: must be set",
            ),
            (
                "[safety]\nworkspace_min = [0.1, -1.0, -1.0]\nworkspace_max = [1.0, 1.0, 1.0]\n",
                "safety.workspace_min[0]",
            ),
            ("[model]\naction_hz = 0.0\n", "model.action_hz: must be > 0"),
            (
                "[control]\nestop_missing = \"maybe\"\n",
                "control.estop_missing",
            ),
            ("[control]\nstate_dir = \"\"\n", "control.state_dir"),
        ] {
            let message = error_text(text);
            assert!(
                message.contains(expected),
                "`{expected}` not in `{message}`"
            );
        }
    }

    #[test]
    fn errors_name_their_key() {
        let cases: &[(&str, &str)] = &[
            (
                "[control]\nrate_hz = 0.0\n",
                "config.toml: control.rate_hz: must be > 0",
            ),
            (
                "[control]\nrate_hz = -3.0\n",
                "control.rate_hz: must be > 0",
            ),
            (
                "[control]\nrate_hz = 1e-12\n",
                "control.rate_hz: must be at least 0.001",
            ),
            (
                "[control]\nrate_hz = \"fast\"\n",
                "control.rate_hz: invalid type",
            ),
            ("[control]\nrate_hertz = 10.0\n", "control.rate_hertz"),
            ("[control]\nrealtime = \"sometimes\"\n", "control.realtime"),
            (
                "[control]\nstop_after_misses = 0\n",
                "control.stop_after_misses: must be >= 1",
            ),
            (
                "[control]\nrate_hz = 50.0\nmax_action_age_ms = 10\n",
                "control.max_action_age_ms: must be at least one control period",
            ),
            (
                "[control]\npriority = 120\n",
                "control.priority: must be 1 to 99",
            ),
            (
                "[camera]\nsource = \"webcam\"\n",
                "camera.source: `webcam` is not",
            ),
            (
                "[camera]\nsource = \"zenoh:vla//camera\"\n",
                "camera.source: `vla//camera` is not a Zenoh key expression",
            ),
            ("[camera]\nfps = 0\n", "camera.fps"),
            ("[camera]\nresolution = 3\n", "camera.resolution"),
            (
                "[wrist_camera]\nsource = \"webcam\"\n",
                "wrist_camera.source: `webcam` is not",
            ),
            (
                "[wrist_camera]\nfps = 0\n",
                "wrist_camera.fps: must be 1 to 1000",
            ),
            (
                "[wrist_camera]\nstall_timeout_ms = 0\n",
                "wrist_camera.stall_timeout_ms: must be > 0",
            ),
            ("[wrist_camera]\nexposur = 3\n", "wrist_camera.exposur"),
            (
                "[camera]\nsource = \"/dev/video0\"\n[wrist_camera]\nsource = \"/dev/video0\"\n",
                "wrist_camera.source: `/dev/video0` is `[camera]`'s source too",
            ),
            (
                "[control]\nframe_pair_tolerance_ms = 0\n",
                "control.frame_pair_tolerance_ms: must be 1 to control.max_frame_age_ms (500)",
            ),
            (
                "[control]\nmax_frame_age_ms = 100\nframe_pair_tolerance_ms = 101\n",
                "control.frame_pair_tolerance_ms: must be 1 to control.max_frame_age_ms (100)",
            ),
            ("[model]\nbackend = \"tpu\"\n", "model.backend"),
            ("[model]\nquantization = \"int3\"\n", "model.quantization"),
            (
                "[model]\nnum_actions_chunk = 0\n",
                "model.num_actions_chunk: must be 1 to 256",
            ),
            (
                "[model]\nnum_images_in_input = 9\n",
                "model.num_images_in_input: must be 1 to 8",
            ),
            (
                "[model]\naction_normalization = \"q99\"\n",
                "model.action_normalization",
            ),
            ("[safety]\nmin = [0.0, 0.0, 0.0]\n", "safety.min"),
            (
                "[safety]\nmin = [0.2, 0, 0, 0, 0, 0, 0]\nmax = [0.1, 1, 1, 1, 1, 1, 1]\n",
                "safety.min[0]: 0.2 is above safety.max[0] = 0.1",
            ),
            (
                "[safety]\nmax = [0.1, 1, 1, nan, 1, 1, 1]\n",
                "safety.max[3]: must be finite",
            ),
            (
                "[zenoh]\nlisten = [\"127.0.0.1:7447\"]\n",
                "zenoh.listen[0]: `127.0.0.1:7447`",
            ),
            ("[zenoh]\nmode = \"router\"\n", "zenoh.mode"),
            (
                "[zenoh]\nmode = \"client\"\n",
                "zenoh.connect: client mode needs",
            ),
            ("robot_id = \"arm/1\"\n", "robot_id: `arm/1` contains `/`"),
            ("robot_id = \"\"\n", "robot_id: must not be empty"),
            (
                "[instruction]\ndefault = \"  \"\n",
                "instruction.default: must not be empty",
            ),
            (
                "[instruction]\nmax_bytes = 0\n",
                "instruction.max_bytes: 0 is not in 1..=65536",
            ),
            (
                "[instruction]\nmax_bytes = 100000\n",
                "instruction.max_bytes: 100000 is not in 1..=65536",
            ),
            (
                "[instruction]\nmax_bytes = 4\n",
                "instruction.default: is 21 bytes, more than instruction.max_bytes (4)",
            ),
            (
                "[instruction]\nmin_interval_ms = 600000\n",
                "instruction.min_interval_ms: 600000 ms is over a minute",
            ),
            ("[calibration]\nfile = \"x\"\n", "calibration.file"),
            ("colour = 1\n", "colour"),
        ];
        for (text, expected) in cases {
            let message = error_text(text);
            assert!(
                message.contains(expected),
                "for\n{text}\nexpected a message containing `{expected}`, got `{message}`"
            );
            assert!(!message.contains('\n'), "message spans lines: {message:?}");
        }
    }

    /// HOLD and STOP publish zero deltas; limits that exclude zero would make every HOLD and
    /// STOP command fall outside `[safety]`.
    #[test]
    fn delta_limits_must_allow_standing_still() {
        let message = error_text(
            "[safety]\nmin = [-0.1, -0.1, 0.01, -1, -1, -1, 0]\nmax = [0.1, 0.1, 0.1, 1, 1, 1, 1]\n",
        );
        assert!(message.contains("safety.min[2]"), "{message}");
        let message = error_text(
            "[safety]\nmin = [-0.1, -0.1, -0.1, -1, -1, -1, 0]\nmax = [0.1, 0.1, 0.1, 1, -0.5, 1, 1]\n",
        );
        assert!(message.contains("safety.max[4]"), "{message}");
        // The gripper is kept, not zeroed: a gripper range without 0 is fine.
        parse_and_validate(
            "[safety]\nmin = [-0.1, -0.1, -0.1, -1, -1, -1, 0.2]\nmax = [0.1, 0.1, 0.1, 1, 1, 1, 1]\n",
        )
        .unwrap();
    }

    #[test]
    fn syntax_error_names_the_line() {
        let message = error_text("robot_id = \"a\"\n[control\nrate_hz = 3\n");
        assert!(message.starts_with("config.toml: line 2:"), "{message}");
    }

    #[test]
    fn relative_paths_resolve_against_the_config_folder() {
        let dir = std::env::temp_dir().join(format!("vla-rt-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("robot.toml");
        std::fs::write(
            &file,
            "[model]\npath = \"models/tiny\"\n[camera]\nsource = \"images:frames\"\n\
             [wrist_camera]\nsource = \"images:wrist\"\n",
        )
        .unwrap();
        let config = ServiceConfig::from_file(&file).unwrap();
        assert_eq!(config.model.path, dir.join("models/tiny"));
        assert_eq!(
            config.camera.source,
            format!("images:{}", dir.join("frames").display())
        );
        assert_eq!(
            config.wrist_camera.unwrap().source,
            format!("images:{}", dir.join("wrist").display())
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tensorrt_engines_resolve_against_the_config_folder_and_the_library_stays_a_name() {
        let dir = std::env::temp_dir().join(format!("vla-rt-config-trt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("robot.toml");
        std::fs::write(
            &file,
            "[model]\npath = \"models/tiny\"\nbackend = \"tensorrt\"\nengines = \"trt\"\n\
             tensorrt_library = \"libnvinfer.so.10\"\n",
        )
        .unwrap();
        let config = ServiceConfig::from_file(&file).unwrap();
        assert_eq!(config.model.backend, BackendKind::Tensorrt);
        let trt = config.model.tensorrt_options();
        assert_eq!(trt.engines, Some(dir.join("trt")));
        assert_eq!(trt.library(), PathBuf::from("libnvinfer.so.10"));
        // Unset: the engines beside the checkpoint, the loader's libnvinfer.so.10.
        let unset = ModelConfig::default().tensorrt_options();
        assert_eq!(unset.engines_dir(Path::new("m")), Path::new("m/tensorrt"));
        assert_eq!(unset.library(), PathBuf::from("libnvinfer.so.10"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_file_is_named() {
        let message = ServiceConfig::from_file(Path::new("/nonexistent/vla.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with("/nonexistent/vla.toml: cannot read"),
            "{message}"
        );
    }

    #[test]
    fn control_values_parse_from_auto_numbers_and_absence() {
        let camera: CameraConfig =
            toml::from_str("exposure = \"auto\"\nwhite_balance = 4600\n").unwrap();
        assert_eq!(camera.exposure, ControlValue::Auto(AutoKeyword::Auto));
        assert_eq!(camera.white_balance, ControlValue::Manual(4600));
        assert_eq!(camera.gain, ControlValue::Unset);
        let text = toml::to_string(&camera).unwrap();
        assert_eq!(toml::from_str::<CameraConfig>(&text).unwrap(), camera);
    }

    #[test]
    fn control_value_rejects_other_words() {
        let err = toml::from_str::<CameraConfig>("exposure = \"manual\"\n").unwrap_err();
        assert!(err.to_string().contains("exposure"), "{err}");
    }
}
