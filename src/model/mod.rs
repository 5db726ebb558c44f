//! The pure model: checkpoint loading and the math of OpenVLA (ViTs, projector, Llama, action
//! de-tokenisation). Knows nothing of threads, cameras or Zenoh.

pub mod linear;
pub mod quant;
pub mod quant_calib;
pub mod quant_file;
pub mod quant_kernels;

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
    #[error("layer {name}: {message}")]
    Quantized { name: String, message: String },
    #[error("{path}: pre-quantized weight file {field} is {got}, expected {expected}")]
    QuantizedFile {
        path: String,
        field: &'static str,
        expected: String,
        got: String,
    },
}

impl ModelError {
    pub fn is_bad_input(&self) -> bool {
        match self {
            ModelError::File { .. }
            | ModelError::MissingTensor { .. }
            | ModelError::Shape { .. }
            | ModelError::Quantized { .. }
            | ModelError::QuantizedFile { .. } => true,
            ModelError::Math { .. } => false,
        }
    }
}
