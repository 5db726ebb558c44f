//! Pre-quantized weight files: written once by `vla-rt quantize`, memory-mapped at load so a
//! robot starts without quantizing gigabytes of weights.
//!
//! A safetensors file holding, for each quantized linear layer `L` (its checkpoint weight
//! name without `.weight`):
//!
//! | tensor | dtype | shape |
//! | --- | --- | --- |
//! | `L.qweight` | I8 (int8) / U8 (int4, two codes per byte) | `[out, in]` / `[out, ⌈in/2⌉]` |
//! | `L.scales` | F32 | `[out]` / `[out, groups]` |
//! | `L.mins` | F32 (int4 only) | `[out, groups]` |
//!
//! and header metadata: [`FORMAT_KEY`] = [`FORMAT_TAG`], [`VERSION_KEY`] = [`FORMAT_VERSION`],
//! the LLM and projector formats, the INT4 group size, and [`CHECKPOINT_HASH_KEY`]: a SHA-256
//! identifying the checkpoint the file was made from ([`checkpoint_hash`]). Opening checks
//! every one of them, so a file made for another checkpoint, another format or another group
//! size is refused with an error naming the file and what differs. Biases are not stored:
//! they stay f32 and come from the checkpoint.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use sha2::{Digest, Sha256};

use super::linear::{Linear, LinearWeights};
use super::quant::{int4_group_size, Int4Weights, Int8Weights, QuantBytes, INT4_GROUP};
use super::ModelError;
use crate::policy::{ProjectorFormat, Quantization};

/// Metadata key of the format tag.
pub const FORMAT_KEY: &str = "format";
/// What [`FORMAT_KEY`] must hold.
pub const FORMAT_TAG: &str = "vla-rt-quantized";
/// Metadata key of the format version.
pub const VERSION_KEY: &str = "format_version";
/// The version this build writes and reads.
pub const FORMAT_VERSION: &str = "1";
/// Metadata key of the checkpoint hash.
pub const CHECKPOINT_HASH_KEY: &str = "checkpoint_sha256";
const QUANTIZATION_KEY: &str = "quantization";
const PROJECTOR_KEY: &str = "projector";
const GROUP_SIZE_KEY: &str = "int4_group_size";

/// Bytes of each tensor's data mixed into [`checkpoint_hash`]: enough to tell fine-tunes of
/// the same architecture apart without reading 15 GB.
const HASHED_BYTES_PER_TENSOR: usize = 4096;

fn file_error(path: &Path, message: impl Into<String>) -> ModelError {
    ModelError::File {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// The safetensors files of a checkpoint folder: the shards named by
/// `model.safetensors.index.json` when it exists, else `model.safetensors`.
pub fn checkpoint_shards(model_dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let index_path = model_dir.join("model.safetensors.index.json");
    if index_path.exists() {
        let text = std::fs::read_to_string(&index_path)
            .map_err(|e| file_error(&index_path, e.to_string()))?;
        let index: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| file_error(&index_path, format!("not valid JSON: {e}")))?;
        let weight_map = index
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| file_error(&index_path, "no \"weight_map\" object"))?;
        let mut files: Vec<String> = weight_map
            .values()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        files.sort();
        files.dedup();
        if let Some(bad) = files
            .iter()
            .find(|f| Path::new(f.as_str()).file_name() != Some(std::ffi::OsStr::new(f.as_str())))
        {
            return Err(file_error(
                &index_path,
                format!(
                    "weight_map names shard `{bad}`, which is not a file name in the model folder"
                ),
            ));
        }
        return Ok(files.into_iter().map(|f| model_dir.join(f)).collect());
    }
    let single = model_dir.join("model.safetensors");
    if single.exists() {
        Ok(vec![single])
    } else {
        Err(file_error(
            model_dir,
            "no model.safetensors or model.safetensors.index.json in the model folder",
        ))
    }
}

fn map_file(path: &Path) -> Result<memmap2::Mmap, ModelError> {
    let file = File::open(path).map_err(|e| file_error(path, e.to_string()))?;
    // SAFETY: the map is read-only and private to this process; weight files are not
    // modified while a model runs (the writer of pre-quantized files writes a new file and
    // renames it, never truncating one in place).
    unsafe { memmap2::Mmap::map(&file) }.map_err(|e| file_error(path, format!("cannot map: {e}")))
}

fn parse_header<'a>(
    path: &Path,
    bytes: &'a [u8],
) -> Result<(usize, safetensors::tensor::Metadata, SafeTensors<'a>), ModelError> {
    let (header_len, metadata) = SafeTensors::read_metadata(bytes)
        .map_err(|e| file_error(path, format!("not a valid safetensors file: {e}")))?;
    let tensors = SafeTensors::deserialize(bytes)
        .map_err(|e| file_error(path, format!("not a valid safetensors file: {e}")))?;
    Ok((header_len, metadata, tensors))
}

/// SHA-256 (hex) identifying a checkpoint: over `config.json`, then for each safetensors
/// shard (in name order) its file name, its header, and the first
/// 4096 bytes (`HASHED_BYTES_PER_TENSOR`) of every tensor (in name order).
pub fn checkpoint_hash(model_dir: &Path) -> Result<String, ModelError> {
    let mut hasher = Sha256::new();
    let config_path = model_dir.join("config.json");
    let config =
        std::fs::read(&config_path).map_err(|e| file_error(&config_path, e.to_string()))?;
    hasher.update(b"config.json\0");
    hasher.update((config.len() as u64).to_le_bytes());
    hasher.update(&config);
    for shard in checkpoint_shards(model_dir)? {
        let map = map_file(&shard)?;
        let (header_len, _, tensors) = parse_header(&shard, &map)?;
        let name = shard
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        hasher.update(name.as_bytes());
        hasher.update(b"\0");
        hasher.update(&map[..8 + header_len]);
        let mut names: Vec<(String, TensorView<'_>)> = tensors.tensors();
        names.sort_by(|a, b| a.0.cmp(&b.0));
        for (_, view) in names {
            let data = view.data();
            hasher.update(&data[..data.len().min(HASHED_BYTES_PER_TENSOR)]);
        }
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Whether a checkpoint weight belongs to a linear layer of the language model that
/// `--quantization` converts (attention and MLP projections and `lm_head`; not the token
/// embedding, which is a lookup table, nor the norms).
pub fn is_llm_linear(name: &str, shape: &[usize]) -> bool {
    name.starts_with("language_model.")
        && name.ends_with(".weight")
        && shape.len() == 2
        && !name.ends_with("embed_tokens.weight")
}

/// Whether a checkpoint weight belongs to a projector linear layer.
pub fn is_projector_linear(name: &str, shape: &[usize]) -> bool {
    name.starts_with("projector.") && name.ends_with(".weight") && shape.len() == 2
}

/// A checkpoint tensor's values as f32 (F32, F16 or BF16 on disk).
pub fn tensor_to_f32(
    path: &Path,
    name: &str,
    view: &TensorView<'_>,
) -> Result<Vec<f32>, ModelError> {
    let data = view.data();
    let values = match view.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => {
            return Err(file_error(
                path,
                format!("tensor {name}: dtype {other:?} is not F32, F16 or BF16"),
            ))
        }
    };
    Ok(values)
}

/// What [`write_quantized_file`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantizeSummary {
    pub layers: usize,
    /// Bytes of the checkpoint's weights for those layers, as stored in the checkpoint.
    pub source_bytes: usize,
    /// Bytes of the quantized codes and scales written.
    pub quantized_bytes: usize,
    pub checkpoint_sha256: String,
}

struct OwnedTensor {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Quantizes the linear layers of the checkpoint in `model_dir` (the language model's with
/// `quantization`, the projector's when `projector` is INT8) and writes them to `out`.
pub fn write_quantized_file(
    model_dir: &Path,
    quantization: Quantization,
    projector: ProjectorFormat,
    out: &Path,
) -> Result<QuantizeSummary, ModelError> {
    if quantization == Quantization::None && projector == ProjectorFormat::F32 {
        return Err(file_error(
            out,
            "nothing to write: quantization none and projector f32 leave every layer in f32",
        ));
    }
    let checkpoint_sha256 = checkpoint_hash(model_dir)?;
    let mut owned: Vec<OwnedTensor> = Vec::new();
    let mut summary = QuantizeSummary {
        layers: 0,
        source_bytes: 0,
        quantized_bytes: 0,
        checkpoint_sha256: checkpoint_sha256.clone(),
    };
    for shard in checkpoint_shards(model_dir)? {
        let map = map_file(&shard)?;
        let (_, _, tensors) = parse_header(&shard, &map)?;
        for (name, view) in tensors.tensors() {
            let shape = view.shape().to_vec();
            let format = if is_llm_linear(&name, &shape) {
                quantization
            } else if is_projector_linear(&name, &shape) && projector == ProjectorFormat::Int8 {
                Quantization::Int8
            } else {
                Quantization::None
            };
            if format == Quantization::None {
                continue;
            }
            let (n, k) = (shape[0], shape[1]);
            let weight = tensor_to_f32(&shard, &name, &view)?;
            let layer = name.trim_end_matches(".weight");
            summary.layers += 1;
            summary.source_bytes += view.data().len();
            match format {
                Quantization::Int8 => {
                    let q = Int8Weights::quantize(&weight, n, k);
                    summary.quantized_bytes += q.bytes();
                    owned.push(OwnedTensor {
                        name: format!("{layer}.qweight"),
                        dtype: Dtype::I8,
                        shape: vec![n, k],
                        data: q.codes.as_slice().to_vec(),
                    });
                    owned.push(OwnedTensor {
                        name: format!("{layer}.scales"),
                        dtype: Dtype::F32,
                        shape: vec![n],
                        data: f32_bytes(&q.scales),
                    });
                }
                Quantization::Int4 => {
                    let q = Int4Weights::quantize(&weight, n, k);
                    let groups = q.groups_per_row(k);
                    summary.quantized_bytes += q.bytes();
                    owned.push(OwnedTensor {
                        name: format!("{layer}.qweight"),
                        dtype: Dtype::U8,
                        shape: vec![n, k.div_ceil(2)],
                        data: q.packed.as_slice().to_vec(),
                    });
                    owned.push(OwnedTensor {
                        name: format!("{layer}.scales"),
                        dtype: Dtype::F32,
                        shape: vec![n, groups],
                        data: f32_bytes(&q.scales),
                    });
                    owned.push(OwnedTensor {
                        name: format!("{layer}.mins"),
                        dtype: Dtype::F32,
                        shape: vec![n, groups],
                        data: f32_bytes(&q.mins),
                    });
                }
                Quantization::None => {}
            }
        }
    }
    let metadata: HashMap<String, String> = [
        (FORMAT_KEY, FORMAT_TAG.to_string()),
        (VERSION_KEY, FORMAT_VERSION.to_string()),
        (
            QUANTIZATION_KEY,
            quantization_name(quantization).to_string(),
        ),
        (PROJECTOR_KEY, projector_name(projector).to_string()),
        (GROUP_SIZE_KEY, INT4_GROUP.to_string()),
        (CHECKPOINT_HASH_KEY, checkpoint_sha256),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let mut views = Vec::with_capacity(owned.len());
    for t in &owned {
        let view = TensorView::new(t.dtype, t.shape.clone(), &t.data)
            .map_err(|e| file_error(out, format!("tensor {}: {e}", t.name)))?;
        views.push((t.name.clone(), view));
    }
    safetensors::serialize_to_file(views, Some(metadata), out)
        .map_err(|e| file_error(out, format!("cannot write: {e}")))?;
    Ok(summary)
}

pub fn quantization_name(q: Quantization) -> &'static str {
    match q {
        Quantization::None => "none",
        Quantization::Int8 => "int8",
        Quantization::Int4 => "int4",
    }
}

pub fn projector_name(p: ProjectorFormat) -> &'static str {
    match p {
        ProjectorFormat::F32 => "f32",
        ProjectorFormat::Int8 => "int8",
    }
}

#[derive(Debug, Clone)]
struct MappedTensor {
    dtype: Dtype,
    shape: Vec<usize>,
    /// Absolute byte offset in the file.
    offset: usize,
    len: usize,
}

/// An opened, checked pre-quantized file; hands out memory-mapped layer weights.
#[derive(Debug, Clone)]
pub struct QuantizedFile {
    path: PathBuf,
    map: Arc<memmap2::Mmap>,
    tensors: BTreeMap<String, MappedTensor>,
    quantization: Quantization,
    projector: ProjectorFormat,
}

impl QuantizedFile {
    /// Maps `path` and checks its format tag, version, group size and that it was made from
    /// the checkpoint in `model_dir`.
    pub fn open(path: &Path, model_dir: &Path) -> Result<Self, ModelError> {
        Self::open_expecting(path, || checkpoint_hash(model_dir))
    }

    /// [`Self::open`] against a checkpoint hash computed by `expected_hash` (called only
    /// once the format fields passed).
    pub fn open_expecting(
        path: &Path,
        expected_hash: impl FnOnce() -> Result<String, ModelError>,
    ) -> Result<Self, ModelError> {
        let map = map_file(path)?;
        let (header_len, metadata, _) = parse_header(path, &map)?;
        let data_start = 8 + header_len;
        let meta = metadata.metadata().clone().unwrap_or_default();
        let mismatch =
            |field: &'static str, expected: &str, got: Option<&String>| ModelError::QuantizedFile {
                path: path.display().to_string(),
                field,
                expected: format!("\"{expected}\""),
                got: got.map_or_else(|| "missing".to_string(), |g| format!("\"{g}\"")),
            };
        let check = |key: &'static str, field: &'static str, expected: &str| {
            let got = meta.get(key);
            if got.map(String::as_str) == Some(expected) {
                Ok(())
            } else {
                Err(mismatch(field, expected, got))
            }
        };
        check(FORMAT_KEY, "format tag", FORMAT_TAG)?;
        check(VERSION_KEY, "format version", FORMAT_VERSION)?;
        check(GROUP_SIZE_KEY, "int4 group size", &INT4_GROUP.to_string())?;
        let quantization = match meta.get(QUANTIZATION_KEY).map(String::as_str) {
            Some("none") => Quantization::None,
            Some("int8") => Quantization::Int8,
            Some("int4") => Quantization::Int4,
            other => {
                return Err(mismatch(
                    "quantization",
                    "none, int8 or int4",
                    other.map(str::to_string).as_ref(),
                ))
            }
        };
        let projector = match meta.get(PROJECTOR_KEY).map(String::as_str) {
            Some("f32") => ProjectorFormat::F32,
            Some("int8") => ProjectorFormat::Int8,
            other => {
                return Err(mismatch(
                    "projector format",
                    "f32 or int8",
                    other.map(str::to_string).as_ref(),
                ))
            }
        };
        let expected_hash = expected_hash()?;
        check(
            CHECKPOINT_HASH_KEY,
            "checkpoint hash (the file was made from another checkpoint than this model folder)",
            &expected_hash,
        )?;
        let tensors = metadata
            .tensors()
            .into_iter()
            .map(|(name, info)| {
                let (begin, end) = info.data_offsets;
                let tensor = MappedTensor {
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    offset: data_start + begin,
                    len: end - begin,
                };
                (name, tensor)
            })
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            map: Arc::new(map),
            tensors,
            quantization,
            projector,
        })
    }

    /// [`Self::open`], then checks that the file holds the language-model format `wanted`
    /// (unless that is `None`: then only its projector layers can be used).
    pub fn open_for(
        path: &Path,
        model_dir: &Path,
        wanted: Quantization,
    ) -> Result<Self, ModelError> {
        let file = Self::open(path, model_dir)?;
        if wanted != Quantization::None && file.quantization() != wanted {
            return Err(ModelError::QuantizedFile {
                path: path.display().to_string(),
                field: "quantization",
                expected: quantization_name(wanted).to_string(),
                got: quantization_name(file.quantization()).to_string(),
            });
        }
        Ok(file)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The language model's format this file holds.
    pub fn quantization(&self) -> Quantization {
        self.quantization
    }

    /// The projector's format this file holds.
    pub fn projector(&self) -> ProjectorFormat {
        self.projector
    }

    /// The shape of a stored tensor (`L.qweight`, `L.scales`, `L.mins`).
    pub fn tensor_shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|t| t.shape.as_slice())
    }

    /// Names of the layers stored (checkpoint weight names without `.weight`).
    pub fn layers(&self) -> impl Iterator<Item = &str> {
        self.tensors
            .keys()
            .filter_map(|k| k.strip_suffix(".qweight"))
    }

    fn tensor(
        &self,
        name: &str,
        dtype: Dtype,
        shape: &[usize],
    ) -> Result<&MappedTensor, ModelError> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| file_error(&self.path, format!("tensor {name}: missing")))?;
        if t.dtype != dtype || t.shape != shape {
            return Err(file_error(
                &self.path,
                format!(
                    "tensor {name}: {:?} {:?}, expected {dtype:?} {shape:?}",
                    t.dtype, t.shape
                ),
            ));
        }
        Ok(t)
    }

    fn mapped(&self, t: &MappedTensor) -> Result<QuantBytes, ModelError> {
        QuantBytes::mapped(self.map.clone(), t.offset, t.len)
            .ok_or_else(|| file_error(&self.path, "tensor data runs past the end of the file"))
    }

    fn f32_values(&self, t: &MappedTensor) -> Vec<f32> {
        self.map[t.offset..t.offset + t.len]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }

    /// The stored weights of `layer` for a layer of shape `[out_features, in_features]`, or
    /// `None` when the file does not hold this layer. Codes stay in the mapped file.
    pub fn layer_weights(
        &self,
        layer: &str,
        out_features: usize,
        in_features: usize,
    ) -> Result<Option<LinearWeights>, ModelError> {
        let qweight_name = format!("{layer}.qweight");
        let Some(qweight) = self.tensors.get(&qweight_name) else {
            return Ok(None);
        };
        let (n, k) = (out_features, in_features);
        let weights = match qweight.dtype {
            Dtype::I8 => {
                let codes = self.tensor(&qweight_name, Dtype::I8, &[n, k])?;
                let scales = self.tensor(&format!("{layer}.scales"), Dtype::F32, &[n])?;
                LinearWeights::Int8(Int8Weights {
                    codes: self.mapped(codes)?,
                    scales: self.f32_values(scales),
                })
            }
            Dtype::U8 => {
                let group_size = int4_group_size(k);
                let groups = k.div_ceil(group_size);
                let packed = self.tensor(&qweight_name, Dtype::U8, &[n, k.div_ceil(2)])?;
                let scales = self.tensor(&format!("{layer}.scales"), Dtype::F32, &[n, groups])?;
                let mins = self.tensor(&format!("{layer}.mins"), Dtype::F32, &[n, groups])?;
                LinearWeights::Int4(Int4Weights {
                    packed: self.mapped(packed)?,
                    scales: self.f32_values(scales),
                    mins: self.f32_values(mins),
                    group_size,
                })
            }
            other => {
                return Err(file_error(
                    &self.path,
                    format!("tensor {qweight_name}: dtype {other:?}, expected I8 or U8"),
                ))
            }
        };
        Ok(Some(weights))
    }

    /// Replaces `linear`'s weights with the stored ones for `layer`; `false` when the file
    /// does not hold this layer.
    pub fn apply(&self, layer: &str, linear: &mut Linear) -> Result<bool, ModelError> {
        match self.layer_weights(layer, linear.out_features(), linear.in_features())? {
            Some(weights) => {
                linear.set_weights(layer, weights)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}
