//! The CUDA backend (ARCHITECTURE.md §10): the model in FP16 on an NVIDIA GPU through cudarc, with
//! the driver, NVRTC and cuBLAS loaded at run time, so that the crate builds and its tests
//! run on machines without CUDA.
//!
//! What runs where:
//! - The exact Pillow resize and the two normalisations stay on the CPU
//!   ([`crate::preprocess`]): they are bit-exact against the reference there, cost well under
//!   a millisecond at 224 px, and a GPU resize would need its own proof of exactness. The
//!   preprocessed `[6, 224, 224]` tensor is copied from pinned host memory.
//! - Vision: patch embedding as im2col + SGEMM (f32: the exact pixels), both ViTs in FP16
//!   (cuBLAS GEMMs with FP16 inputs and FP32 accumulation, an FP32 residual stream, attention
//!   scores in f32, NVRTC kernels for LayerNorm, exact GELU, softmax and the bias epilogues;
//!   LayerScale folded into the layer before it, whose GEMM adds straight into the residual
//!   stream), each on its own stream, joined by an event; a concat kernel writes the fused
//!   `[256, D_dino + D_siglip]` FP16 buffer and the projector runs on it. This fixed-shape
//!   work is captured once as a CUDA graph and replayed. An f32 checkpoint's weights keep
//!   their precision as FP16 plus an FP16 residual (a second GEMM); bf16 and f16 checkpoints
//!   (OpenVLA's) convert exactly.
//! - Language: prompt embedding with the image tokens inserted after `<s>`, prefill with FP16
//!   GEMMs, RoPE + KV-cache write, causal GQA attention, RMSNorm, SiLU-mul; greedy argmax on
//!   the device; decode steps with FP16, INT8 or INT4 GEMV kernels, captured as a CUDA graph
//!   that reads the position and token from device memory. Only the token ids come back.
//! - OpenVLA-OFT ([`oft`]): every camera through the vision graph into one prefix buffer, the
//!   proprio token beside them, one bidirectional pass, the L1 action head; only the chunk
//!   comes back.
//!
//! Must never: panic when CUDA is absent (every library is probed first, see [`probe`]),
//! allocate device memory per call after load, or copy intermediate tensors to the host on
//! the prediction path.

pub mod device;
pub mod kernels;
pub mod libs;
pub mod llama;
pub mod oft;
pub mod policy;
pub mod tuned;
pub mod vision;
pub mod weights;

pub use oft::{OftCudaPolicy, OftCudaRunner};
pub use policy::{CudaModelRunner, CudaPolicy};

use cudarc::driver::{CudaContext, DriverError};
use std::sync::Arc;

/// Errors of the CUDA backend, each naming the library, kernel, tensor or operation.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// No usable driver or library: the machine cannot run this backend at all.
    #[error("{library} not found: {hint}")]
    Unavailable { library: &'static str, hint: String },
    #[error("{message}")]
    NoDevice { message: String },
    #[error("CUDA driver call {op} failed: {source}")]
    Driver {
        op: &'static str,
        #[source]
        source: DriverError,
    },
    #[error("cuBLAS call {op} failed: {message}")]
    Cublas { op: &'static str, message: String },
    #[error("NVRTC could not compile {kernel} for {arch}:\n{log}")]
    Compile {
        kernel: &'static str,
        arch: &'static str,
        log: String,
    },
    #[error("kernel {kernel}: not found in the compiled module ({message})")]
    MissingKernel {
        kernel: &'static str,
        message: String,
    },
    #[error("shape mismatch in {op}: {message}")]
    Shape { op: &'static str, message: String },
    #[error("{what}: {message}")]
    Unsupported { what: String, message: String },
    /// A failure of encoders run by another engine (TensorRT) inside the vision path.
    #[error("{engine}: {message}")]
    External { engine: String, message: String },
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
}

impl CudaError {
    pub fn driver(op: &'static str) -> impl FnOnce(DriverError) -> CudaError {
        move |source| CudaError::Driver { op, source }
    }

    /// Whether the cause is the machine lacking CUDA (a usage error: exit code 2).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            CudaError::Unavailable { .. } | CudaError::NoDevice { .. }
        )
    }

    pub fn is_bad_input(&self) -> bool {
        match self {
            CudaError::Unavailable { .. }
            | CudaError::NoDevice { .. }
            | CudaError::Unsupported { .. } => true,
            CudaError::Model(e) => e.is_bad_input(),
            _ => false,
        }
    }
}

impl From<CudaError> for crate::policy::PolicyError {
    fn from(e: CudaError) -> Self {
        match e {
            CudaError::Model(m) => crate::policy::PolicyError::Model(m),
            e if e.is_bad_input() => crate::policy::PolicyError::Unavailable {
                backend: "cuda",
                message: e.to_string(),
            },
            e => crate::policy::PolicyError::Backend {
                backend: "cuda",
                message: e.to_string(),
            },
        }
    }
}

/// Checks that the driver, NVRTC (with its builtins), cuBLAS and cuBLASLt can be loaded (in
/// that order, without
/// letting cudarc panic on a missing one), initialises the driver and opens device 0.
pub fn probe() -> Result<Arc<CudaContext>, CudaError> {
    // SAFETY: only tries to dlopen the driver library by its known names; no symbol is used.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(CudaError::Unavailable {
            library: "libcuda.so (the NVIDIA driver)",
            hint: "no NVIDIA driver on this machine; use --backend cpu".into(),
        });
    }
    libs::ensure_nvrtc()?;
    for lib in [libs::CUBLAS, libs::CUBLASLT] {
        libs::ensure_loaded(lib);
    }
    type Probe = unsafe fn() -> bool;
    let checks: [(&'static str, Probe); 2] = [
        ("libcublas", cudarc::cublas::sys::is_culib_present),
        ("libcublasLt", cudarc::cublaslt::sys::is_culib_present),
    ];
    for (library, present) in checks {
        // SAFETY: as above, a dlopen by name only.
        if !unsafe { present() } {
            return Err(CudaError::Unavailable {
                library,
                hint: "install the CUDA toolkit or the nvidia-* wheels, or put their lib \
                       folder on LD_LIBRARY_PATH"
                    .into(),
            });
        }
    }
    cudarc::driver::result::init().map_err(|e| CudaError::NoDevice {
        message: format!("cuInit failed ({e}): no usable NVIDIA GPU"),
    })?;
    let count = CudaContext::device_count().map_err(CudaError::driver("cuDeviceGetCount"))?;
    if count < 1 {
        return Err(CudaError::NoDevice {
            message: "the driver reports no CUDA device".into(),
        });
    }
    CudaContext::new(0).map_err(CudaError::driver("cuCtxCreate (device 0)"))
}
