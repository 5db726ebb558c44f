//! A short identity of a checkpoint folder, so that files derived from it (calibration,
//! pre-quantized weights) can refuse to be used with another one.

use std::path::Path;

use super::ModelError;

/// `sha256:<hex>` of [`super::quant_file::checkpoint_hash`]: `config.json`, the headers of the
/// checkpoint's own safetensors shards and the first bytes of every tensor. Other files in
/// the folder (a pre-quantized weight file, a calibration) do not change it.
pub fn checkpoint_fingerprint(model_dir: &Path) -> Result<String, ModelError> {
    Ok(format!(
        "sha256:{}",
        super::quant_file::checkpoint_hash(model_dir)?
    ))
}
