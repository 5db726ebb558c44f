//! The pure model: checkpoint loading and the math of OpenVLA (ViTs, projector, Llama, action
//! de-tokenisation). Knows nothing of threads, cameras or Zenoh.

pub mod action;
pub mod checkpoint;
pub mod config;
pub mod fingerprint;
pub mod layout;
pub mod linear;
pub mod llama;
pub mod oft;
pub mod onnx;
pub mod openvla;
pub mod ops;
pub mod projector;
pub mod prompt;
pub mod quant;
pub mod quant_file;
pub mod quant_kernels;
pub mod quant_load;
pub mod quant_scales;
pub mod torch_pt;
pub mod vit;

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
    #[error("{path}: key `{key}`: {message}")]
    Config {
        path: String,
        key: String,
        message: String,
    },
    #[error("tensor {name}: unsupported dtype {dtype} (expected F32, F16 or BF16)")]
    Dtype { name: String, dtype: String },
    #[error("unknown unnorm_key `{key}`; available keys: {}", available.join(", "))]
    UnknownUnnormKey { key: String, available: Vec<String> },
    #[error("no unnorm_key given and the checkpoint has several; pass one of: {}", available.join(", "))]
    AmbiguousUnnormKey { available: Vec<String> },
    #[error("{what}: {message}")]
    Unsupported { what: String, message: String },
    #[error("sequence of {len} tokens exceeds the KV cache capacity of {capacity} (instruction too long?)")]
    SequenceTooLong { len: usize, capacity: usize },
    #[error("instruction too long: {what}; the prompt may have at most {limit} tokens (what the KV cache holds besides the image and the action)")]
    PromptTooLong { what: String, limit: usize },
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
            | ModelError::Config { .. }
            | ModelError::Dtype { .. }
            | ModelError::UnknownUnnormKey { .. }
            | ModelError::AmbiguousUnnormKey { .. }
            | ModelError::Unsupported { .. }
            | ModelError::SequenceTooLong { .. }
            | ModelError::PromptTooLong { .. }
            | ModelError::Quantized { .. }
            | ModelError::QuantizedFile { .. } => true,
            ModelError::Math { .. } => false,
        }
    }
}
