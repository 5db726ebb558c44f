//! The pure model: checkpoint loading and the math of OpenVLA (ViTs, projector, Llama, action
//! de-tokenisation). Knows nothing of threads, cameras or Zenoh.

pub mod fingerprint;
pub mod linear;

pub use fingerprint::checkpoint_fingerprint;

/// Errors of checkpoint loading and model math, each naming the culprit.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("tensor {name}: missing from the checkpoint")]
    MissingTensor { name: String },
    #[error("tensor {name}: expected shape {expected:?}, got {got:?}")]
    Shape {
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("shape mismatch in {op}: {message}")]
    Math { op: &'static str, message: String },
}

impl ModelError {
    pub fn is_bad_input(&self) -> bool {
        match self {
            ModelError::File { .. }
            | ModelError::MissingTensor { .. }
            | ModelError::Shape { .. } => true,
            ModelError::Math { .. } => false,
        }
    }
}
