//! Backends that run the model on a device, each behind [`crate::policy::Policy`].

pub mod cpu;
pub mod cuda;

use std::path::Path;

use crate::policy::{BackendKind, Policy, PolicyError, PolicyOptions};

/// Loads the checkpoint folder `model_dir` on the backend named in `options`.
pub fn load_policy(
    model_dir: &Path,
    options: &PolicyOptions,
) -> Result<Box<dyn Policy>, PolicyError> {
    match options.backend {
        BackendKind::Cpu => Ok(Box::new(cpu::CpuPolicy::load(model_dir, options)?)),
        BackendKind::Cuda => Ok(Box::new(cuda::CudaPolicy::load(model_dir, options)?)),
        BackendKind::Tensorrt => Err(unavailable("tensorrt")),
    }
}

fn unavailable(backend: &'static str) -> PolicyError {
    PolicyError::Backend {
        backend,
        message: "not available in this build".into(),
    }
}
