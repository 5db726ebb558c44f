//! Benchmarks behind `vla-rt bench`. Timing claims live here, never in tests.
//!
//! This layer sits above the backends and the model: it imports them, never the other way
//! round, and reports failures as [`BenchError`]; only the command line turns those into exit
//! codes.

pub mod control;
pub mod cuda;
pub mod cuda_parity;
pub mod policy;
pub mod quant;
pub mod record;
#[cfg(feature = "tensorrt")]
pub mod tensorrt;

use crate::backend::cuda::CudaError;
use crate::policy::PolicyError;

/// A benchmark or parity run that could not be done or did not pass.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Bad arguments or input files; the message names the flag or the file.
    #[error("{0}")]
    BadInput(String),
    /// Loading or running the policy failed.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The CUDA backend failed (or this machine cannot run it).
    #[error("backend cuda: {0}")]
    Cuda(#[from] CudaError),
    /// Anything else: a measurement that failed, a parity check that missed.
    #[error("{0}")]
    Failed(String),
}

impl BenchError {
    pub fn bad_input(message: impl Into<String>) -> Self {
        Self::BadInput(message.into())
    }

    pub fn failure(message: impl Into<String>) -> Self {
        Self::Failed(message.into())
    }

    /// Whether the caller's input (or a machine without the backend) is at fault.
    pub fn is_bad_input(&self) -> bool {
        match self {
            Self::BadInput(_) => true,
            Self::Policy(e) => e.is_bad_input(),
            Self::Cuda(e) => e.is_bad_input(),
            Self::Failed(_) => false,
        }
    }
}
