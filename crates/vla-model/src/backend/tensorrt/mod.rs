//! The TensorRT backend: both vision encoders as FP16 TensorRT engines (built from the ONNX
//! export by `engines/build-trt.sh`), everything else the CUDA backend's.
//!
//! What runs where:
//! - Each encoder engine has its own execution context, enqueued on its own stream (DINOv2
//!   on lane A, SigLIP on lane B, joined by an event, as the CUDA backend's own ViTs), and
//!   writes its `[256, D]` f32 features straight into a device buffer of the CUDA backend's
//!   vision path ([`crate::backend::cuda::vision::ExternalEncoders`]). The concat, projector,
//!   prefill and decode are the CUDA backend's. The vision path is captured as a CUDA graph
//!   when the engines allow it, and queued eagerly otherwise.
//! - TensorRT is reached through a small C++ shim (`shim.cpp`, plain C functions) compiled
//!   against TensorRT 10's runtime headers; `libnvinfer.so.10` is opened at run time, so the
//!   crate links nothing of TensorRT and builds without it.
//!
//! Loading refuses engines whose manifest was made for another checkpoint, TensorRT version
//! or GPU, before deserializing anything.
//!
//! Must never: trust a pointer TensorRT returned alongside a logged error (runtime creation
//! without a usable GPU does that), or allocate on the enqueue path.

pub mod ffi;
pub mod manifest;
pub mod runner;

pub use ffi::{TrtSession, TrtVersion};
pub use manifest::EngineManifest;
pub use runner::{TensorrtModelRunner, TensorrtPolicy};

/// Errors of the TensorRT backend, each naming the library, engine, manifest field or call.
#[derive(Debug, thiserror::Error)]
pub enum TensorrtError {
    /// libnvinfer cannot be opened or is not TensorRT.
    #[error("{library} not usable: {message}; install TensorRT 10 (JetPack 6 has it) or name the library ([model] tensorrt_library, --tensorrt-library)")]
    Library { library: String, message: String },
    #[error("{library}: {message}")]
    Version { library: String, message: String },
    /// Runtime creation failed (typically: no usable GPU).
    #[error("TensorRT runtime: {message}")]
    Runtime { message: String },
    #[error("engine {engine}: {message}")]
    Engine { engine: String, message: String },
    /// The engines' manifest does not describe engines usable here.
    #[error("{path}: {field}: {message}")]
    Manifest {
        path: String,
        field: &'static str,
        message: String,
    },
    #[error("TensorRT call {op} failed: {message}")]
    Call { op: &'static str, message: String },
}

impl TensorrtError {
    /// Whether the cause is the machine or the files given (exit code 2) rather than a
    /// failure while running.
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, TensorrtError::Call { .. })
    }
}

impl From<TensorrtError> for crate::policy::PolicyError {
    fn from(e: TensorrtError) -> Self {
        if e.is_bad_input() {
            crate::policy::PolicyError::Unavailable {
                backend: "tensorrt",
                message: e.to_string(),
            }
        } else {
            crate::policy::PolicyError::Backend {
                backend: "tensorrt",
                message: e.to_string(),
            }
        }
    }
}
