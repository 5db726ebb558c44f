//! The robot's state for a policy that takes it (OpenVLA-OFT's proprio), as the arm driver
//! publishes it on `vla/<robot_id>/proprio` (ARCHITECTURE.md §8, §17): a JSON object
//! `{"state": [numbers], "capture_time_ns": integer}`, the raw state in the units of the
//! checkpoint's proprio statistics. The Zenoh callback checks and stores the newest; the
//! inference thread reads it; the control thread sees only when the last one arrived, and
//! STOPs like for a silent camera when it is too old.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::control::clock;
use crate::control::handoff::ControlInputs;
use crate::transport::zenoh_io::ProprioSink;
pub use crate::transport::zenoh_io::MAX_PROPRIO_BYTES;

/// One state as the driver sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProprioSample {
    pub state: Vec<f64>,
    /// When the driver read the state, ns since the Unix epoch.
    pub capture_time_ns: u64,
    /// CLOCK_MONOTONIC when it arrived.
    pub arrival_monotonic_ns: u64,
}

/// Why a proprio payload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProprioRefusal {
    #[error("{0} bytes, more than {MAX_PROPRIO_BYTES}")]
    TooLarge(usize),
    #[error("not a JSON object {{\"state\": [numbers], \"capture_time_ns\": integer}}: {0}")]
    Malformed(String),
    #[error("`state` has {got} values, the checkpoint takes {want}")]
    Length { got: usize, want: usize },
    #[error("`state` value {0} is not a finite number")]
    NotFinite(usize),
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ProprioMessage {
    state: Vec<f64>,
    capture_time_ns: u64,
}

/// Checks a payload against the checkpoint's state length.
pub fn parse_proprio(payload: &[u8], dim: usize) -> Result<(Vec<f64>, u64), ProprioRefusal> {
    if payload.len() > MAX_PROPRIO_BYTES {
        return Err(ProprioRefusal::TooLarge(payload.len()));
    }
    let message: ProprioMessage =
        serde_json::from_slice(payload).map_err(|e| ProprioRefusal::Malformed(e.to_string()))?;
    if message.state.len() != dim {
        return Err(ProprioRefusal::Length {
            got: message.state.len(),
            want: dim,
        });
    }
    if let Some(i) = message.state.iter().position(|v| !v.is_finite()) {
        return Err(ProprioRefusal::NotFinite(i));
    }
    Ok((message.state, message.capture_time_ns))
}

/// The newest valid state, with counters for the status.
pub struct ProprioCell {
    dim: usize,
    /// A state older than this is not used (`[control] max_frame_age_ms`).
    max_age_ns: u64,
    latest: Mutex<Option<ProprioSample>>,
    inputs: Arc<ControlInputs>,
    received: AtomicU64,
    refused: AtomicU64,
    /// Predictions skipped for want of a fresh state.
    stale: AtomicU64,
}

impl ProprioCell {
    /// A cell for states of `dim` values; it tells `inputs` that the state is required.
    pub fn new(dim: usize, max_age_ns: u64, inputs: Arc<ControlInputs>) -> Self {
        inputs.require_proprio();
        Self {
            dim,
            max_age_ns,
            latest: Mutex::new(None),
            inputs,
            received: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            stale: AtomicU64::new(0),
        }
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// One payload from the driver: stored if valid, counted and logged if not.
    pub fn receive(&self, payload: &[u8]) {
        match parse_proprio(payload, self.dim) {
            Ok((state, capture_time_ns)) => {
                let now = clock::monotonic_ns();
                let sample = ProprioSample {
                    state,
                    capture_time_ns,
                    arrival_monotonic_ns: now,
                };
                match self.latest.lock() {
                    Ok(mut latest) => *latest = Some(sample),
                    Err(poisoned) => *poisoned.into_inner() = Some(sample),
                }
                self.inputs.proprio_arrived(now);
                self.received.fetch_add(1, Ordering::Relaxed);
            }
            Err(refusal) => self.refuse(refusal),
        }
    }

    /// Counts a refused payload; the first is logged.
    pub fn refuse(&self, refusal: ProprioRefusal) {
        if self.refused.fetch_add(1, Ordering::Relaxed) == 0 {
            log::warn!("proprio refused (later refusals are only counted): {refusal}");
        }
    }

    /// The newest state if it arrived within the age limit; otherwise counted as stale.
    pub fn fresh(&self) -> Option<ProprioSample> {
        let now = clock::monotonic_ns();
        let latest = match self.latest.lock() {
            Ok(latest) => latest.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let fresh =
            latest.filter(|s| now.saturating_sub(s.arrival_monotonic_ns) <= self.max_age_ns);
        if fresh.is_none() {
            self.stale.fetch_add(1, Ordering::Relaxed);
        }
        fresh
    }

    /// The status's `proprio` object.
    pub fn status(&self) -> serde_json::Value {
        let age_ms = match self.inputs.last_proprio_ns() {
            0 => None,
            last => Some(clock::monotonic_ns().saturating_sub(last) as f64 / 1e6),
        };
        serde_json::json!({
            "dim": self.dim,
            "received": self.received.load(Ordering::Relaxed),
            "refused": self.refused.load(Ordering::Relaxed),
            "stale": self.stale.load(Ordering::Relaxed),
            "age_ms": age_ms.map(|ms| (ms * 10.0).round() / 10.0),
        })
    }
}

impl ProprioSink for ProprioCell {
    fn receive(&self, payload: &[u8]) {
        ProprioCell::receive(self, payload);
    }

    fn too_large(&self, bytes: usize) {
        self.refuse(ProprioRefusal::TooLarge(bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_checked_for_shape_length_and_finite_values() {
        assert_eq!(
            parse_proprio(br#"{"state": [0.5, -1, 2e-3], "capture_time_ns": 7}"#, 3),
            Ok((vec![0.5, -1.0, 2e-3], 7))
        );
        let refused = |payload: &[u8]| parse_proprio(payload, 3).unwrap_err().to_string();
        assert!(refused(br#"{"state": [1, 2], "capture_time_ns": 7}"#).contains("2 values"));
        assert!(refused(br#"{"state": [1, 2, 3]}"#).contains("capture_time_ns"));
        assert!(
            refused(br#"{"state": [1, 2, 3], "capture_time_ns": 7, "x": 1}"#)
                .contains("unknown field")
        );
        assert!(refused(b"[1, 2, 3]").contains("JSON object"));
        assert!(refused(&vec![b' '; MAX_PROPRIO_BYTES + 1]).contains("more than"));
        // JSON has no NaN; a huge exponent parses as infinity in some readers and is refused.
        assert!(parse_proprio(br#"{"state": [1, 2, 1e999], "capture_time_ns": 7}"#, 3).is_err());
    }

    #[test]
    fn only_a_fresh_state_is_handed_out_and_its_arrival_reaches_the_control_inputs() {
        let inputs = Arc::new(ControlInputs::default());
        let cell = ProprioCell::new(2, 50_000_000, Arc::clone(&inputs));
        assert!(inputs.proprio_required());
        assert_eq!(cell.fresh(), None);
        cell.receive(br#"{"state": [1, 2], "capture_time_ns": 5}"#);
        assert_ne!(inputs.last_proprio_ns(), 0);
        assert_eq!(cell.fresh().map(|s| s.state), Some(vec![1.0, 2.0]));
        cell.receive(br#"{"state": [1], "capture_time_ns": 6}"#);
        assert_eq!(cell.status()["refused"], 1);
        std::thread::sleep(std::time::Duration::from_millis(60));
        assert_eq!(cell.fresh(), None);
        assert_eq!(cell.status()["stale"], 2);
    }
}
