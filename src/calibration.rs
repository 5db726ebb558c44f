//! The calibration file written once at install time by `vla-calib` and loaded by
//! `vla-rt run`: locked camera settings, INT8 activation scales, the latency measured on this
//! machine and the control rate it supports. It is bound to one checkpoint (by fingerprint)
//! and sealed with a checksum, so that a file made for another model, or edited by hand, is
//! refused instead of silently driving the robot with wrong settings.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::CameraConfig;

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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    pub format: String,
    pub version: u32,
    pub created_unix_s: u64,
    /// [`crate::model::checkpoint_fingerprint`] of the model it was made with.
    pub model_fingerprint: String,
    pub model_path: String,
    /// Frames captured for the measurement.
    pub frames: u32,
    /// The contact sheet PNG written beside this file (file name only).
    pub contact_sheet: String,
    /// Control rate this machine sustains with margin, from the measured policy latency.
    pub recommended_rate_hz: f64,
    /// The camera as calibrated, with exposure, white balance and gain locked.
    pub camera: CameraConfig,
    /// Per-stage policy latency on this machine (preprocess, vision, projector, prefill,
    /// decode, total).
    pub latency: BTreeMap<String, StageLatency>,
    /// Per-tensor INT8 activation scales by tensor name (empty when not collected).
    pub activation_scales: BTreeMap<String, f32>,
    /// `sha256:<hex>` over the file's other contents; see [`Calibration::seal`].
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
        std::fs::write(path, format!("{header}{text}")).map_err(|e| CalibrationError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// Reads and checks a calibration file: format, version, checksum, and that it was made
    /// for the checkpoint in `model_dir`.
    pub fn load(path: &Path, model_dir: &Path) -> Result<Self, CalibrationError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| CalibrationError::Io {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        let calibration: Calibration =
            toml::from_str(&text).map_err(|e| CalibrationError::Invalid {
                path: shown.clone(),
                message: e.to_string().trim().replace('\n', " "),
            })?;
        if calibration.format != CALIBRATION_FORMAT {
            return Err(CalibrationError::Invalid {
                path: shown,
                message: format!(
                    "format: expected \"{CALIBRATION_FORMAT}\", got \"{}\"",
                    calibration.format
                ),
            });
        }
        if calibration.version != CALIBRATION_VERSION {
            return Err(CalibrationError::Invalid {
                path: shown,
                message: format!(
                    "version: this build reads version {CALIBRATION_VERSION}, the file is version {}",
                    calibration.version
                ),
            });
        }
        let expected = calibration
            .content_checksum()
            .map_err(|e| CalibrationError::Invalid {
                path: shown.clone(),
                message: e.to_string(),
            })?;
        if expected != calibration.checksum {
            return Err(CalibrationError::Tampered { path: shown });
        }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(fingerprint: &str) -> Calibration {
        Calibration {
            format: CALIBRATION_FORMAT.into(),
            version: CALIBRATION_VERSION,
            created_unix_s: 1_790_000_000,
            model_fingerprint: fingerprint.into(),
            model_path: "engines/openvla-tiny".into(),
            frames: 16,
            contact_sheet: "calibration.png".into(),
            recommended_rate_hz: 10.0,
            camera: CameraConfig::default(),
            latency: BTreeMap::from([(
                "total".to_string(),
                StageLatency {
                    p50_ms: 40.0,
                    p99_ms: 55.0,
                },
            )]),
            activation_scales: BTreeMap::from([("projector.fc1.input".to_string(), 0.05)]),
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
        let edited = text.replace("recommended_rate_hz = 10.0", "recommended_rate_hz = 50.0");
        assert_ne!(text, edited);
        std::fs::write(&path, edited).unwrap();
        let err = Calibration::load(&path, &model_dir()).unwrap_err();
        assert!(matches!(err, CalibrationError::Tampered { .. }), "{err}");
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
}
