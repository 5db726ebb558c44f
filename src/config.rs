//! The service configuration (TOML), validated at start; every error names its key.

use serde::Deserialize;

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

#[cfg(test)]
mod tests {
    use super::*;

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
