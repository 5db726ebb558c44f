//! # vla-bench
//!
//! The model's benchmarks and parity runs behind `vla-rt bench` (the policy stages, the
//! quantized weight formats, CUDA and TensorRT against the CPU). Timing claims live here,
//! never in tests. The service's own benchmarks (`bench control`, `bench record`) sit with the
//! command line in vla-rt, since they run the whole service.
//!
//! This crate sits above vla-model: it imports it, never the other way round, and reports
//! failures as [`BenchError`]; only the command line turns those into exit codes.

pub mod cuda;
pub mod cuda_parity;
pub mod policy;
pub mod quant;
#[cfg(feature = "tensorrt")]
pub mod tensorrt;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use vla_model::backend::cuda::CudaError;
use vla_model::policy::{NamedVariant, PolicyError};

/// The command-line parser of an option chosen by name: offers exactly the names a config
/// file takes ([`NamedVariant::NAMES`]). vla-rt's command line uses it too.
pub fn named<T: NamedVariant + Send + Sync>() -> impl TypedValueParser<Value = T> {
    PossibleValuesParser::new(T::NAMES).try_map(|name| T::from_name(&name).ok_or("unknown value"))
}

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
