//! A short identity of a checkpoint folder, so that files derived from it (calibration,
//! pre-quantized weights) can refuse to be used with another one.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::ModelError;

/// `sha256:<hex>` over `config.json` and the header (tensor names, dtypes, shapes, offsets) of
/// every safetensors file, in name order. Reads a few kilobytes, never the weights.
pub fn checkpoint_fingerprint(model_dir: &Path) -> Result<String, ModelError> {
    let file_error = |path: &Path, message: String| ModelError::File {
        path: path.display().to_string(),
        message,
    };
    let config = model_dir.join("config.json");
    let mut hasher = Sha256::new();
    hasher.update(std::fs::read(&config).map_err(|e| file_error(&config, e.to_string()))?);
    let mut shards: Vec<_> = std::fs::read_dir(model_dir)
        .map_err(|e| file_error(model_dir, e.to_string()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    shards.sort();
    if shards.is_empty() {
        return Err(file_error(
            model_dir,
            "no .safetensors file in the model folder".into(),
        ));
    }
    for shard in shards {
        let mut file =
            std::fs::File::open(&shard).map_err(|e| file_error(&shard, e.to_string()))?;
        let mut len_bytes = [0u8; 8];
        file.read_exact(&mut len_bytes).map_err(|e| {
            file_error(
                &shard,
                format!("cannot read the safetensors header length: {e}"),
            )
        })?;
        let header_len = u64::from_le_bytes(len_bytes);
        if header_len > 100 << 20 {
            return Err(file_error(
                &shard,
                format!("safetensors header of {header_len} bytes is implausible"),
            ));
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact(&mut header)
            .map_err(|e| file_error(&shard, format!("truncated safetensors header: {e}")))?;
        if let Some(name) = shard.file_name() {
            hasher.update(name.as_encoded_bytes());
        }
        hasher.update(&header);
    }
    let digest = hasher.finalize();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("sha256:{hex}"))
}
