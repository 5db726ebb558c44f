//! The service configuration (TOML), validated at start; every error names its key.

use serde::Deserialize;

/// Value of a V4L2 control that may be left to the camera.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(untagged)]
pub enum ControlValue {
    /// Leave the camera's current setting alone.
    #[default]
    Unset,
    /// `"auto"` turns the automatic mode on; a number locks the manual value.
    Auto(AutoKeyword),
    Manual(i64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AutoKeyword {
    Auto,
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
