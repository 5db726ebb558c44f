//! Remote inference (ARCHITECTURE.md §16): `vla-rt serve` answers inference requests over
//! Zenoh queries, in batches across robots; a robot with `[model] remote` sends its frames
//! there instead of running a local backend, and keeps its own pacing, limits, arming and
//! supervision.
//!
//! Keys (*contract*):
//! - `vla/policy/<name>/infer`: the queryable every server of `<name>` declares;
//! - `vla/policy/<name>/servers/<zenoh id>`: each server's liveliness token. The servers of
//!   one name watch these to share the robots between them and to take over a dead one's.

pub mod client;
pub mod server;
pub mod wire;

use serde::Deserialize;

pub use client::RemotePolicy;
pub use server::{ServedCheckpoint, Server, ServerStats};

/// `vla/policy/<name>/infer`.
pub fn infer_key(name: &str) -> String {
    format!("vla/policy/{name}/infer")
}

/// `vla/policy/<name>/servers/<server_id>`.
pub fn server_token_key(name: &str, server_id: &str) -> String {
    format!("vla/policy/{name}/servers/{server_id}")
}

/// Every server token of `name`.
pub fn servers_selector(name: &str) -> String {
    format!("vla/policy/{name}/servers/*")
}

/// A server name: one key chunk of letters, digits, `-` and `_`.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!("`{name}`: 1 to 64 characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!(
            "`{name}`: only letters, digits, `-` and `_` (it is a Zenoh key chunk)"
        ));
    }
    Ok(())
}

/// `[model] remote`: run the policy on `vla-rt serve --name <name>` instead of locally.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteConfig {
    /// The server name (`vla/policy/<name>/infer`).
    pub name: String,
    /// How long a request waits for its answer; a later answer is never used. Unset: one
    /// action step.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// `sha256:<hex>` of the checkpoint the servers must run (`vla-rt serve` logs it).
    /// Unset: the fingerprint of `[model] path`, which must then exist on the robot.
    #[serde(default)]
    pub fingerprint: Option<String>,
    /// How frames travel: `jpeg` (default) or `raw`.
    #[serde(default = "default_encoding")]
    pub encoding: wire::FrameEncoding,
    #[serde(default = "default_jpeg_quality")]
    pub jpeg_quality: u8,
}

fn default_encoding() -> wire::FrameEncoding {
    wire::FrameEncoding::Jpeg
}

fn default_jpeg_quality() -> u8 {
    90
}

/// The settings a robot runs remote inference with, resolved from `[model] remote`.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedRemote {
    pub name: String,
    pub timeout_ms: u64,
    pub fingerprint: String,
    pub encoding: wire::FrameEncoding,
    pub jpeg_quality: u8,
}

impl RemoteConfig {
    /// A remote config naming only the server (`vla-rt run --remote NAME`).
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_string(),
            timeout_ms: None,
            fingerprint: None,
            encoding: default_encoding(),
            jpeg_quality: default_jpeg_quality(),
        }
    }
}

/// `[serve]`: how `vla-rt serve` batches.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    /// How long the first request of a batch waits for others (ms); never past the earliest
    /// deadline in the batch. 0: no batching.
    pub batch_window_ms: f64,
    /// Most requests in one batch.
    pub max_batch: usize,
    /// Most requests waiting; past it a request is refused at once with `busy`.
    pub queue: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            batch_window_ms: 5.0,
            max_batch: 8,
            queue: 32,
        }
    }
}

impl ServeConfig {
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(self.batch_window_ms.is_finite() && (0.0..=1000.0).contains(&self.batch_window_ms)) {
            return Err((
                "serve.batch_window_ms",
                format!("{}: 0 to 1000", self.batch_window_ms),
            ));
        }
        if !(1..=256).contains(&self.max_batch) {
            return Err(("serve.max_batch", format!("{}: 1 to 256", self.max_batch)));
        }
        if !(1..=4096).contains(&self.queue) {
            return Err(("serve.queue", format!("{}: 1 to 4096", self.queue)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_one_key_chunk() {
        assert!(validate_name("tiny-7b_int4").is_ok());
        for bad in ["", "a/b", "a*", "a b", "é"] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(infer_key("tiny"), "vla/policy/tiny/infer");
        assert_eq!(
            server_token_key("tiny", "ab12"),
            "vla/policy/tiny/servers/ab12"
        );
    }

    #[test]
    fn serve_limits_are_checked() {
        assert!(ServeConfig::default().validate().is_ok());
        let refused = |config: ServeConfig| config.validate().unwrap_err().0;
        assert_eq!(
            refused(ServeConfig {
                max_batch: 0,
                ..ServeConfig::default()
            }),
            "serve.max_batch"
        );
        assert_eq!(
            refused(ServeConfig {
                queue: 0,
                ..ServeConfig::default()
            }),
            "serve.queue"
        );
        assert_eq!(
            refused(ServeConfig {
                batch_window_ms: f64::NAN,
                ..ServeConfig::default()
            }),
            "serve.batch_window_ms"
        );
    }
}
