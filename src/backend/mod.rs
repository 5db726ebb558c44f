//! Backends that run the model on a device, each behind [`crate::policy::Policy`].

use std::path::Path;

use crate::policy::{BackendKind, Policy, PolicyError, PolicyOptions};

/// Loads the checkpoint folder `model_dir` on the backend named in `options`.
pub fn load_policy(
    model_dir: &Path,
    options: &PolicyOptions,
) -> Result<Box<dyn Policy>, PolicyError> {
    let _ = model_dir;
    Err(PolicyError::Backend {
        backend: match options.backend {
            BackendKind::Cpu => "cpu",
            BackendKind::Cuda => "cuda",
            BackendKind::Tensorrt => "tensorrt",
        },
        message: "not available in this build".into(),
    })
}
