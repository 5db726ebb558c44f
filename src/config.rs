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
    /// `synthetic`, `images:<dir>` or a `/dev/videoN` path.
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

/// Number of action dimensions a command carries (DESIGN.md §4: dx, dy, dz, droll, dpitch,
/// dyaw, gripper).
pub const ACTION_DIM: usize = 7;

/// Checkpoint the service runs when no config file names one.
pub const BUNDLED_MODEL_DIR: &str = "engines/openvla-tiny";
/// Dataset statistics the bundled checkpoint is un-normalised with by default.
pub const BUNDLED_UNNORM_KEY: &str = "tiny_bridge";

/// The whole service configuration: one TOML file (DESIGN.md §6).
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// *contract*: the `<robot_id>` in every key expression.
    pub robot_id: String,
    pub model: ModelConfig,
    pub camera: CameraConfig,
    pub control: ControlConfig,
    pub safety: SafetyConfig,
    pub zenoh: ZenohConfig,
    pub instruction: InstructionConfig,
    pub calibration: CalibrationConfig,
    pub record: RecordConfig,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            robot_id: "robot".into(),
            model: ModelConfig::default(),
            camera: CameraConfig::default(),
            control: ControlConfig::default(),
            safety: SafetyConfig::default(),
            zenoh: ZenohConfig::default(),
            instruction: InstructionConfig::default(),
            calibration: CalibrationConfig::default(),
            record: RecordConfig::default(),
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
        }
    }
}

impl ModelConfig {
    pub fn policy_options(&self) -> PolicyOptions {
        PolicyOptions {
            backend: self.backend,
            unnorm_key: self.unnorm_key.clone(),
            quantization: self.quantization,
            projector: self.projector,
            quantized_weights: self.quantized_weights.clone(),
            projector_scales: None,
        }
    }
}

/// Whether the control thread asks for SCHED_FIFO and locked memory.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize, clap::ValueEnum,
)]
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

/// `[control]` (*contract*: `rate_hz`).
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Commands per second; one command every tick.
    pub rate_hz: f64,
    /// Oldest action (time since the tick that latched its frame) that may still be published;
    /// unset means two control periods.
    pub max_action_age_ms: Option<u64>,
    /// Consecutive ticks without a fresh, valid action before HOLD turns into STOP.
    pub stop_after_misses: u32,
    /// A camera silent for longer than this forces STOP.
    pub max_frame_age_ms: u64,
    pub realtime: RealtimeMode,
    /// SCHED_FIFO priority of the control thread (1-99) when `realtime` is not `off`.
    pub priority: i32,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            rate_hz: 10.0,
            max_action_age_ms: None,
            stop_after_misses: 5,
            max_frame_age_ms: 500,
            realtime: RealtimeMode::Try,
            priority: 80,
        }
    }
}

impl ControlConfig {
    /// The tick period in nanoseconds (rounded to the nearest nanosecond).
    pub fn period_ns(&self) -> u64 {
        (1e9 / self.rate_hz).round() as u64
    }

    /// [`ControlConfig::max_action_age_ms`] with its default applied, in nanoseconds.
    pub fn max_action_age_ns(&self) -> u64 {
        match self.max_action_age_ms {
            Some(ms) => ms.saturating_mul(1_000_000),
            None => self.period_ns().saturating_mul(2),
        }
    }
}

/// `[safety]`: per-dimension limits applied to every action before it is published.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SafetyConfig {
    /// Lower limits of dx, dy, dz, droll, dpitch, dyaw, gripper.
    pub min: [f32; ACTION_DIM],
    /// Upper limits, same order.
    pub max: [f32; ACTION_DIM],
}

impl Default for SafetyConfig {
    fn default() -> Self {
        // Translation in metres, rotation in radians per step, gripper 0 (closed) to 1 (open):
        // wider than the usual OpenVLA dataset statistics, narrow enough to stop a runaway.
        Self {
            min: [-0.05, -0.05, -0.05, -0.25, -0.25, -0.25, 0.0],
            max: [0.05, 0.05, 0.05, 0.25, 0.25, 0.25, 1.0],
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

/// `[instruction]` (*contract*: `default`).
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct InstructionConfig {
    /// The task the policy runs until one arrives on `vla/<robot_id>/instruction`.
    pub default: String,
}

impl Default for InstructionConfig {
    fn default() -> Self {
        Self {
            default: "pick up the red block".into(),
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
    pub fn builtin() -> Self {
        let mut config = Self::default();
        if !config.model.path.exists() {
            let in_source_tree = Path::new(env!("CARGO_MANIFEST_DIR")).join(BUNDLED_MODEL_DIR);
            if in_source_tree.exists() {
                config.model.path = in_source_tree;
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
        if let Some(p) = self.zenoh.config.as_mut() {
            resolve(p);
        }
        if let Some(p) = self.calibration.path.as_mut() {
            resolve(p);
        }
        if let Some(p) = self.record.path.as_mut() {
            resolve(p);
        }
        if let Some(dir) = self.camera.source.strip_prefix("images:") {
            let dir = Path::new(dir);
            if dir.is_relative() && !dir.as_os_str().is_empty() {
                self.camera.source = format!("images:{}", base.join(dir).display());
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

        let camera = &self.camera;
        let source = camera.source.as_str();
        let source_ok = source == "synthetic"
            || source
                .strip_prefix("images:")
                .is_some_and(|d| !d.is_empty())
            || source.starts_with("/dev/");
        if !source_ok {
            return Err(invalid(
                "camera.source",
                format!("`{source}` is not `synthetic`, `images:<dir>` or a `/dev/videoN` path"),
            ));
        }
        if camera.width == 0 || camera.width > 16384 {
            return Err(invalid("camera.width", "must be 1 to 16384".into()));
        }
        if camera.height == 0 || camera.height > 16384 {
            return Err(invalid("camera.height", "must be 1 to 16384".into()));
        }
        if camera.fps == 0 || camera.fps > 1000 {
            return Err(invalid("camera.fps", "must be 1 to 1000".into()));
        }
        if camera.stall_timeout_ms == 0 {
            return Err(invalid("camera.stall_timeout_ms", "must be > 0".into()));
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
        if !(1..=99).contains(&control.priority) {
            return Err(invalid("control.priority", "must be 1 to 99".into()));
        }

        for i in 0..ACTION_DIM {
            let (lo, hi) = (self.safety.min[i], self.safety.max[i]);
            if !lo.is_finite() {
                return Err(invalid(
                    &format!("safety.min[{i}]"),
                    "must be finite".into(),
                ));
            }
            if !hi.is_finite() {
                return Err(invalid(
                    &format!("safety.max[{i}]"),
                    "must be finite".into(),
                ));
            }
            if lo > hi {
                return Err(invalid(
                    &format!("safety.min[{i}]"),
                    format!("{lo} is above safety.max[{i}] = {hi}"),
                ));
            }
            // HOLD and STOP command zero deltas (the gripper is kept, dimension 6): zero must
            // lie within the limits, or those commands would leave the configured range.
            if i < ACTION_DIM - 1 {
                if lo > 0.0 {
                    return Err(invalid(
                        &format!("safety.min[{i}]"),
                        format!("{lo} is above 0; HOLD and STOP command a zero delta"),
                    ));
                }
                if hi < 0.0 {
                    return Err(invalid(
                        &format!("safety.max[{i}]"),
                        format!("{hi} is below 0; HOLD and STOP command a zero delta"),
                    ));
                }
            }
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
        assert_eq!(config.control.max_action_age_ns(), 400_000_000);
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
    fn default_action_age_is_two_periods() {
        let config = parse_and_validate("[control]\nrate_hz = 50.0\n").unwrap();
        assert_eq!(config.control.period_ns(), 20_000_000);
        assert_eq!(config.control.max_action_age_ns(), 40_000_000);
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
            ("[camera]\nfps = 0\n", "camera.fps"),
            ("[camera]\nresolution = 3\n", "camera.resolution"),
            ("[model]\nbackend = \"tpu\"\n", "model.backend"),
            ("[model]\nquantization = \"int3\"\n", "model.quantization"),
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
            "[model]\npath = \"models/tiny\"\n[camera]\nsource = \"images:frames\"\n",
        )
        .unwrap();
        let config = ServiceConfig::from_file(&file).unwrap();
        assert_eq!(config.model.path, dir.join("models/tiny"));
        assert_eq!(
            config.camera.source,
            format!("images:{}", dir.join("frames").display())
        );
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
