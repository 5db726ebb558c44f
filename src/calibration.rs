//! The calibration file written once at install time by `vla-calib` and loaded by
//! `vla-rt run`: locked camera settings, INT8 activation scales, the latency measured on this
//! machine and the control rate it supports. It is bound to one checkpoint (by fingerprint)
//! and sealed with a checksum, so that a file made for another model, or edited by hand, is
//! refused instead of silently driving the robot with wrong settings.
//!
//! The checksum is an integrity check, not an authentication: it catches a file edited by
//! hand or damaged on disk, but anyone who can write the file can also recompute it (the
//! algorithm is public and there is no key). What protects the file from a hostile writer is
//! its ownership and mode: [`Calibration::load`] refuses a file that its group or other users
//! may write, as the install script's `/etc/vla-rt` layout never makes it.
//!
//! [`Calibration::apply`] is the one place that decides what a loaded calibration changes in
//! a service configuration.

use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{CameraConfig, ControlValue, ServiceConfig};
use crate::model::quant_scales::ProjectorScales;
use crate::policy::{BackendKind, NamedVariant, PolicyOptions, ProjectorFormat, Quantization};

/// Value of the `format` field, so that another TOML file is never mistaken for one.
pub const CALIBRATION_FORMAT: &str = "vla-rt-calibration";
pub const CALIBRATION_VERSION: u32 = 1;

/// Median and 99th percentile of one stage's latency.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageLatency {
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// A calibration as `vla-calib` writes it. [`Calibration::checksum`] proves the contents
/// were not changed by accident since they were sealed; it does not prove who wrote them
/// (anyone able to write the file can reseal it), so the file's permissions are what guard it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    pub format: String,
    pub version: u32,
    pub created_unix_s: u64,
    /// [`crate::model::checkpoint_fingerprint`] of the model it was made with.
    pub model_fingerprint: String,
    pub model_path: String,
    /// How the policy ran while its latency was measured.
    pub backend: BackendKind,
    pub quantization: Quantization,
    pub projector: ProjectorFormat,
    /// The instruction the latency was measured with (the prompt length sets the prefill time).
    pub instruction: String,
    /// Frames captured for the measurement.
    pub frames: u32,
    /// The contact sheet PNG written beside this file (file name only).
    pub contact_sheet: String,
    /// Sequence numbers of the frames on the contact sheet, in tile order.
    pub contact_sheet_frames: Vec<u64>,
    /// Control rate this machine sustains with margin, from the measured policy latency.
    pub recommended_rate_hz: f64,
    /// The negotiated camera mode as the capture code describes it (`/dev/video0 MJPG 640x480@30`).
    pub camera_description: String,
    /// The camera as calibrated, with exposure, white balance and gain locked.
    pub camera: CameraConfig,
    /// Per-stage policy latency on this machine (preprocess, vision, projector, prefill,
    /// decode, total).
    pub latency: BTreeMap<String, StageLatency>,
    /// The projector's per-tensor INT8 activation scales (used with `[model] projector = "int8"`).
    pub projector_scales: ProjectorScales,
    /// `sha256:<hex>` over the file's other contents; see [`Calibration::seal`]. An
    /// integrity check against accidental edits, not a signature.
    pub checksum: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CalibrationError {
    #[error("calibration {path}: {message}")]
    Io { path: String, message: String },
    #[error("calibration {path}: {message}")]
    Invalid { path: String, message: String },
    #[error("calibration {path}: checksum mismatch: the file was modified after calibration; run vla-calib again")]
    Tampered { path: String },
    #[error(
        "calibration {path}: made for another model (model_fingerprint {found}, the model at {model_dir} is {expected}); run vla-calib again"
    )]
    WrongModel {
        path: String,
        model_dir: String,
        found: String,
        expected: String,
    },
}

impl Calibration {
    fn content_checksum(&self) -> Result<String, toml::ser::Error> {
        let mut unsealed = self.clone();
        unsealed.checksum = String::new();
        let text = toml::to_string(&unsealed)?;
        let digest = Sha256::digest(text.as_bytes());
        Ok(format!(
            "sha256:{}",
            digest
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        ))
    }

    /// Sets `checksum` over everything else; call last, after every field is final.
    pub fn seal(&mut self) -> Result<(), CalibrationError> {
        self.checksum = self
            .content_checksum()
            .map_err(|e| CalibrationError::Invalid {
                path: String::new(),
                message: e.to_string(),
            })?;
        Ok(())
    }

    /// Seals and writes the file.
    pub fn save(&mut self, path: &Path) -> Result<(), CalibrationError> {
        self.seal()?;
        let text = toml::to_string(self).map_err(|e| CalibrationError::Invalid {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let header = "# Written by vla-calib. Do not edit: the checksum seals the contents; run vla-calib again instead.\n";
        let io_error = |e: std::io::Error| CalibrationError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        std::fs::write(path, format!("{header}{text}")).map_err(io_error)?;
        // Owner-writable only, whatever the umask: `load` refuses anything looser.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).map_err(io_error)
    }

    /// Reads and checks a calibration file: that only its owner may write it, then format,
    /// version, checksum, activation scales, and that it was made for the checkpoint in
    /// `model_dir`.
    pub fn load(path: &Path, model_dir: &Path) -> Result<Self, CalibrationError> {
        let shown = path.display().to_string();
        let io_error = |e: std::io::Error| CalibrationError::Io {
            path: shown.clone(),
            message: e.to_string(),
        };
        // Mode and contents from the same open file, so they describe the same file.
        let mut file = std::fs::File::open(path).map_err(io_error)?;
        let mode = file.metadata().map_err(io_error)?.permissions().mode();
        if mode & 0o022 != 0 {
            return Err(CalibrationError::Invalid {
                path: shown,
                message: format!(
                    "mode {:04o}: writable by {}; only its owner may write it (chmod go-w)",
                    mode & 0o7777,
                    match (mode & 0o020 != 0, mode & 0o002 != 0) {
                        (true, true) => "its group and other users",
                        (true, false) => "its group",
                        _ => "other users",
                    }
                ),
            });
        }
        let mut text = String::new();
        std::io::Read::read_to_string(&mut file, &mut text).map_err(io_error)?;
        let calibration = Self::parse(&text, &shown)?;
        let fingerprint = crate::model::checkpoint_fingerprint(model_dir).map_err(|e| {
            CalibrationError::Invalid {
                path: shown.clone(),
                message: format!("cannot identify the model to check it against: {e}"),
            }
        })?;
        if fingerprint != calibration.model_fingerprint {
            return Err(CalibrationError::WrongModel {
                path: shown,
                model_dir: model_dir.display().to_string(),
                found: calibration.model_fingerprint,
                expected: fingerprint,
            });
        }
        Ok(calibration)
    }

    /// Checks the text of a calibration file (`shown` names it in errors): format, version,
    /// fields, checksum and activation scales; not the model it was made for.
    pub fn parse(text: &str, shown: &str) -> Result<Self, CalibrationError> {
        let shown = shown.to_string();
        let invalid = |message: String| CalibrationError::Invalid {
            path: shown.clone(),
            message,
        };
        let one_line = |e: &dyn std::fmt::Display| e.to_string().trim().replace('\n', " ");
        // Format and version first, so that another TOML file (a service config, a file of a
        // later version) is named for what it is rather than for its first unknown key.
        let table: toml::Table = toml::from_str(text).map_err(|e| invalid(one_line(&e)))?;
        match table.get("format").and_then(|v| v.as_str()) {
            Some(CALIBRATION_FORMAT) => {}
            Some(other) => {
                return Err(invalid(format!(
                    "format: expected \"{CALIBRATION_FORMAT}\", got \"{other}\""
                )))
            }
            None => {
                return Err(invalid(format!(
                    "not a calibration file (no `format = \"{CALIBRATION_FORMAT}\"`); vla-calib writes them"
                )))
            }
        }
        let version = table.get("version").and_then(|v| v.as_integer());
        if version != Some(i64::from(CALIBRATION_VERSION)) {
            return Err(invalid(format!(
                "version: this build reads version {CALIBRATION_VERSION}, the file has {}",
                version.map_or("none".to_string(), |v| v.to_string())
            )));
        }
        let calibration = Calibration::deserialize(table).map_err(|e| invalid(one_line(&e)))?;
        let expected = calibration
            .content_checksum()
            .map_err(|e| CalibrationError::Invalid {
                path: shown.clone(),
                message: e.to_string(),
            })?;
        if expected != calibration.checksum {
            return Err(CalibrationError::Tampered { path: shown });
        }
        // A zero, negative or non-finite scale would quantize every activation to 0 or
        // saturate it; a sealed file can still carry one if its writer computed it so.
        for (i, layer) in calibration.projector_scales.layers.iter().enumerate() {
            if !(layer.scale.is_finite() && layer.scale > 0.0) {
                return Err(invalid(format!(
                    "projector_scales.layers[{i}].scale ({}): {} must be finite and > 0",
                    layer.layer, layer.scale
                )));
            }
        }
        Ok(calibration)
    }
}

/// Where the service's camera settings came from once a calibration was applied.
#[derive(Debug, Clone, PartialEq)]
pub enum CameraSettings {
    /// The calibration's locked mode and controls replaced the configured ones.
    Calibrated,
    /// `--camera` named a source on the command line: the configuration's settings stay.
    CommandLine,
    /// The calibration was made with another camera: its settings do not apply to this one.
    OtherCamera { calibrated: String },
}

/// What [`Calibration::apply`] changed, for the start-up log.
#[derive(Debug, Clone, PartialEq)]
pub struct AppliedCalibration {
    pub camera: CameraSettings,
    /// The camera as it will be opened.
    pub camera_config: CameraConfig,
    /// Projector layers that run W8A8 with the calibrated activation scales (0 with an f32
    /// projector, which has no use for them).
    pub projector_layers_w8a8: usize,
    pub recommended_rate_hz: f64,
    /// Problems worth a warning: a rate above the recommendation, a latency measured with
    /// another backend or weight format, settings not applied.
    pub warnings: Vec<String>,
}

/// The lowercase name a config file uses for an option value (`cpu`, `int8`, ...).
fn value_name<T: NamedVariant>(value: &T) -> String {
    value.name().to_string()
}

fn control_text(value: ControlValue) -> String {
    match value {
        ControlValue::Unset => "unset".into(),
        ControlValue::Auto(_) => "auto".into(),
        ControlValue::Manual(v) => v.to_string(),
    }
}

impl fmt::Display for AppliedCalibration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let camera = &self.camera_config;
        let settings = format!(
            "{} {}x{}@{} format {}, exposure {}, white balance {}, gain {}",
            camera.source,
            camera.width,
            camera.height,
            camera.fps,
            camera.format,
            control_text(camera.exposure),
            control_text(camera.white_balance),
            control_text(camera.gain),
        );
        match &self.camera {
            CameraSettings::Calibrated => write!(f, "camera {settings} (calibrated)")?,
            CameraSettings::CommandLine => write!(
                f,
                "camera {settings} (from the command line, not the calibration)"
            )?,
            CameraSettings::OtherCamera { calibrated } => write!(
                f,
                "camera {settings} (configured; the calibration is for {calibrated})"
            )?,
        }
        if self.projector_layers_w8a8 > 0 {
            write!(
                f,
                "; projector W8A8 with calibrated activation scales ({} layers)",
                self.projector_layers_w8a8
            )?;
        } else {
            write!(f, "; projector scales unused (projector = \"f32\")")?;
        }
        write!(f, "; recommended rate {} Hz", self.recommended_rate_hz)
    }
}

impl Calibration {
    /// Applies the calibration to a validated service configuration and the policy options
    /// built from it: the locked camera mode and controls (unless `camera_from_command_line`,
    /// or the configuration names another camera), and the projector's activation scales
    /// when the projector runs INT8. `[control] rate_hz` is never changed; a rate above the
    /// recommendation is reported in the warnings.
    pub fn apply(
        &self,
        config: &mut ServiceConfig,
        options: &mut PolicyOptions,
        camera_from_command_line: bool,
    ) -> AppliedCalibration {
        let mut warnings = Vec::new();
        let camera = if camera_from_command_line {
            CameraSettings::CommandLine
        } else if config.camera.source != self.camera.source {
            warnings.push(format!(
                "the calibration was made with camera {}, the configuration uses {}: its camera \
                 settings are not applied; run vla-calib for this camera",
                self.camera.source, config.camera.source
            ));
            CameraSettings::OtherCamera {
                calibrated: self.camera.source.clone(),
            }
        } else {
            let configured = &mut config.camera;
            configured.width = self.camera.width;
            configured.height = self.camera.height;
            configured.fps = self.camera.fps;
            configured.format = self.camera.format.clone();
            configured.exposure = self.camera.exposure;
            configured.white_balance = self.camera.white_balance;
            configured.gain = self.camera.gain;
            CameraSettings::Calibrated
        };

        let projector_layers_w8a8 = if options.projector == ProjectorFormat::Int8 {
            options.projector_scales = Some(self.projector_scales.clone());
            self.projector_scales.layers.len()
        } else {
            0
        };

        let rate = config.control.rate_hz;
        if rate > self.recommended_rate_hz {
            warnings.push(format!(
                "control.rate_hz = {rate} is above the calibrated {} Hz: harmless for the \
                 arm's speed (each action is spread over its step), but the extra ticks cut \
                 the steps no finer than the policy's latency can use and cost CPU",
                self.recommended_rate_hz
            ));
        }
        let measured_with = (self.backend, self.quantization, self.projector);
        let running_with = (options.backend, options.quantization, options.projector);
        if measured_with != running_with {
            warnings.push(format!(
                "the calibrated latency was measured with backend {}, quantization {}, \
                 projector {}; the service runs {}, {}, {}: run vla-calib with this \
                 configuration for a rate that holds",
                value_name(&self.backend),
                value_name(&self.quantization),
                value_name(&self.projector),
                value_name(&options.backend),
                value_name(&options.quantization),
                value_name(&options.projector)
            ));
        }
        AppliedCalibration {
            camera,
            camera_config: config.camera.clone(),
            projector_layers_w8a8,
            recommended_rate_hz: self.recommended_rate_hz,
            warnings,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AutoKeyword;
    use crate::model::quant_scales::ActivationScale;

    fn scales() -> ProjectorScales {
        ProjectorScales {
            percentile: 99.99,
            frames: 16,
            layers: ["projector.fc1", "projector.fc2", "projector.fc3"]
                .iter()
                .map(|layer| ActivationScale {
                    layer: layer.to_string(),
                    abs_percentile: 6.35,
                    abs_max: 7.5,
                    scale: 0.05,
                })
                .collect(),
        }
    }

    fn sample(fingerprint: &str) -> Calibration {
        Calibration {
            format: CALIBRATION_FORMAT.into(),
            version: CALIBRATION_VERSION,
            created_unix_s: 1_790_000_000,
            model_fingerprint: fingerprint.into(),
            model_path: "engines/openvla-tiny".into(),
            backend: BackendKind::Cpu,
            quantization: Quantization::None,
            projector: ProjectorFormat::F32,
            instruction: "pick up the red block".into(),
            frames: 16,
            contact_sheet: "calibration.png".into(),
            contact_sheet_frames: vec![0, 5, 10, 15],
            recommended_rate_hz: 10.0,
            camera_description: "/dev/video0 YUYV 320x240@15".into(),
            camera: CameraConfig {
                source: "/dev/video0".into(),
                width: 320,
                height: 240,
                fps: 15,
                format: "YUYV".into(),
                exposure: ControlValue::Manual(250),
                white_balance: ControlValue::Manual(4600),
                gain: ControlValue::Manual(32),
                ..CameraConfig::default()
            },
            latency: BTreeMap::from([(
                "total".to_string(),
                StageLatency {
                    p50_ms: 40.0,
                    p99_ms: 55.0,
                },
            )]),
            projector_scales: scales(),
            checksum: String::new(),
        }
    }

    fn model_dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("engines/openvla-tiny")
    }

    fn temp_file(tag: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("vla-rt-calib-{tag}-{}.toml", std::process::id()))
    }

    #[test]
    fn saved_calibration_loads_back_identical() {
        let fingerprint = crate::model::checkpoint_fingerprint(&model_dir()).unwrap();
        let mut calibration = sample(&fingerprint);
        let path = temp_file("roundtrip");
        calibration.save(&path).unwrap();
        let loaded = Calibration::load(&path, &model_dir()).unwrap();
        assert_eq!(loaded, calibration);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn edited_value_is_rejected_as_tampered() {
        let fingerprint = crate::model::checkpoint_fingerprint(&model_dir()).unwrap();
        let path = temp_file("tampered");
        sample(&fingerprint).save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        for (from, to) in [
            ("recommended_rate_hz = 10.0", "recommended_rate_hz = 50.0"),
            ("exposure = 250", "exposure = 300"),
            ("scale = 0.05", "scale = 0.5"),
        ] {
            let edited = text.replacen(from, to, 1);
            assert_ne!(text, edited, "`{from}` not in\n{text}");
            std::fs::write(&path, edited).unwrap();
            let err = Calibration::load(&path, &model_dir()).unwrap_err();
            assert!(matches!(err, CalibrationError::Tampered { .. }), "{err}");
        }
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn calibration_for_another_model_is_rejected() {
        let path = temp_file("other-model");
        sample("sha256:0000").save(&path).unwrap();
        let err = Calibration::load(&path, &model_dir()).unwrap_err();
        assert!(matches!(err, CalibrationError::WrongModel { .. }), "{err}");
        assert!(err.to_string().contains("made for another model"), "{err}");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn other_toml_and_missing_fields_are_invalid_not_panics() {
        let path = temp_file("not-calibration");
        for text in [
            "robot_id = \"arm0\"\n",
            "format = \"vla-rt-calibration\"\nversion = 1\n",
            "this is not toml",
        ] {
            std::fs::write(&path, text).unwrap();
            let err = Calibration::load(&path, &model_dir()).unwrap_err();
            assert!(matches!(err, CalibrationError::Invalid { .. }), "{err}");
            assert!(!err.to_string().contains('\n'), "{err}");
        }
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn group_or_other_writable_file_is_refused() {
        let fingerprint = crate::model::checkpoint_fingerprint(&model_dir()).unwrap();
        let path = temp_file("mode");
        sample(&fingerprint).save(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644, "save writes owner-writable only");
        Calibration::load(&path, &model_dir()).unwrap();
        for (mode, who) in [
            (0o664, "writable by its group;"),
            (0o646, "writable by other users;"),
            (0o666, "writable by its group and other users;"),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = Calibration::load(&path, &model_dir()).unwrap_err();
            let message = err.to_string();
            assert!(matches!(err, CalibrationError::Invalid { .. }), "{err}");
            assert!(
                message.starts_with(&format!("calibration {}: mode 0{mode:o}", path.display())),
                "{message}"
            );
            assert!(message.contains(who), "{message}");
        }
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn zero_negative_or_non_finite_scales_are_refused_even_when_sealed() {
        let fingerprint = crate::model::checkpoint_fingerprint(&model_dir()).unwrap();
        let path = temp_file("scales");
        for bad in [0.0f32, -0.05, f32::NAN, f32::INFINITY] {
            let mut calibration = sample(&fingerprint);
            calibration.projector_scales.layers[1].scale = bad;
            calibration.save(&path).unwrap();
            let err = Calibration::load(&path, &model_dir()).unwrap_err();
            let message = err.to_string();
            assert!(matches!(err, CalibrationError::Invalid { .. }), "{err}");
            assert!(
                message.contains("projector_scales.layers[1].scale (projector.fc2)"),
                "{message}"
            );
            assert!(message.contains("must be finite and > 0"), "{message}");
            assert!(!message.contains('\n'), "{message}");
        }
        std::fs::remove_file(path).unwrap();
    }

    fn config_for(source: &str) -> ServiceConfig {
        let mut config = ServiceConfig::default();
        config.camera.source = source.into();
        config.camera.exposure = ControlValue::Auto(AutoKeyword::Auto);
        config.camera.stall_timeout_ms = 900;
        config
    }

    #[test]
    fn apply_locks_the_calibrated_camera_and_keeps_the_rest() {
        let calibration = sample("sha256:0");
        let mut config = config_for("/dev/video0");
        let mut options = config.model.policy_options();
        let applied = calibration.apply(&mut config, &mut options, false);
        assert_eq!(applied.camera, CameraSettings::Calibrated);
        let camera = &config.camera;
        assert_eq!((camera.width, camera.height, camera.fps), (320, 240, 15));
        assert_eq!(camera.format, "YUYV");
        assert_eq!(camera.exposure, ControlValue::Manual(250));
        assert_eq!(camera.white_balance, ControlValue::Manual(4600));
        assert_eq!(camera.gain, ControlValue::Manual(32));
        assert_eq!(camera.stall_timeout_ms, 900, "not a calibrated setting");
        assert_eq!(applied.camera_config, *camera);
        // f32 projector: the scales have no use; the default 10 Hz is not above 10 Hz.
        assert_eq!(options.projector_scales, None);
        assert_eq!(applied.projector_layers_w8a8, 0);
        assert!(applied.warnings.is_empty(), "{:?}", applied.warnings);
        let line = applied.to_string();
        assert!(
            line.contains("/dev/video0 320x240@15 format YUYV, exposure 250"),
            "{line}"
        );
    }

    #[test]
    fn command_line_camera_and_other_camera_keep_their_settings() {
        let calibration = sample("sha256:0");
        let mut config = config_for("/dev/video0");
        let before = config.camera.clone();
        let mut options = config.model.policy_options();
        let applied = calibration.apply(&mut config, &mut options, true);
        assert_eq!(applied.camera, CameraSettings::CommandLine);
        assert_eq!(config.camera, before);

        let mut config = config_for("/dev/video2");
        let before = config.camera.clone();
        let applied = calibration.apply(&mut config, &mut options, false);
        assert_eq!(config.camera, before);
        assert!(matches!(applied.camera, CameraSettings::OtherCamera { .. }));
        assert!(
            applied.warnings[0].contains("made with camera /dev/video0"),
            "{:?}",
            applied.warnings
        );
    }

    #[test]
    fn int8_projector_gets_the_scales_and_a_fast_rate_is_warned_about() {
        let calibration = sample("sha256:0");
        let mut config = config_for("/dev/video0");
        config.model.projector = ProjectorFormat::Int8;
        config.control.rate_hz = 30.0;
        let mut options = config.model.policy_options();
        let applied = calibration.apply(&mut config, &mut options, false);
        assert_eq!(options.projector_scales, Some(scales()));
        assert_eq!(applied.projector_layers_w8a8, 3);
        assert_eq!(config.control.rate_hz, 30.0, "the rate is never changed");
        assert!(
            applied
                .warnings
                .iter()
                .any(|w| w.contains("control.rate_hz = 30 is above the calibrated 10 Hz")),
            "{:?}",
            applied.warnings
        );
        assert!(
            applied
                .warnings
                .iter()
                .any(|w| w.contains("projector f32; the service runs cpu, none, int8")),
            "{:?}",
            applied.warnings
        );
    }
}
