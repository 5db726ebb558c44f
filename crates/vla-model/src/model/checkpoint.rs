//! Memory-mapped safetensors weights of a Hugging Face checkpoint folder: one
//! `model.safetensors`, or shards listed by `model.safetensors.index.json`. Tensors are read
//! by name, shape-checked and converted to f32 (from f32, f16 or bf16).

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use super::ModelError;

/// Where one tensor's bytes lie.
#[derive(Debug, Clone)]
struct TensorEntry {
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    /// Byte range within the file.
    start: usize,
    end: usize,
}

/// Bytes of one weight file: mapped from disk, or built in memory (benchmarks with random
/// weights).
enum Storage {
    Mapped(Mmap),
    Memory(Vec<u8>),
}

impl std::ops::Deref for Storage {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Storage::Mapped(m) => m,
            Storage::Memory(v) => v,
        }
    }
}

/// The weight files of a checkpoint, mapped read-only.
pub struct Checkpoint {
    files: Vec<(PathBuf, Storage)>,
    tensors: HashMap<String, TensorEntry>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field(
                "files",
                &self.files.iter().map(|(p, _)| p).collect::<Vec<_>>(),
            )
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

#[derive(serde::Deserialize)]
struct ShardIndex {
    weight_map: HashMap<String, String>,
}

fn file_error(path: &Path, message: impl Into<String>) -> ModelError {
    ModelError::File {
        path: path.display().to_string(),
        message: message.into(),
    }
}

impl Checkpoint {
    /// Opens `model.safetensors.index.json` and its shards if present, else `model.safetensors`.
    pub fn open_dir(dir: &Path) -> Result<Self, ModelError> {
        let index_path = dir.join(INDEX_FILE);
        if index_path.exists() {
            let text = std::fs::read_to_string(&index_path)
                .map_err(|e| file_error(&index_path, format!("cannot read: {e}")))?;
            let index: ShardIndex = serde_json::from_str(&text)
                .map_err(|e| file_error(&index_path, format!("invalid shard index: {e}")))?;
            let mut shard_names: Vec<&String> = index.weight_map.values().collect();
            shard_names.sort();
            shard_names.dedup();
            // Shards live in the folder: a name with a path in it could open any file (or a
            // FIFO, and block the start) outside it.
            if let Some(bad) = shard_names.iter().find(|n| {
                Path::new(n.as_str()).file_name() != Some(std::ffi::OsStr::new(n.as_str()))
            }) {
                return Err(file_error(
                    &index_path,
                    format!("weight_map names shard `{bad}`, which is not a file name in the model folder"),
                ));
            }
            if shard_names.is_empty() {
                return Err(file_error(&index_path, "weight_map lists no shard"));
            }
            let paths: Vec<PathBuf> = shard_names.iter().map(|n| dir.join(n)).collect();
            let checkpoint = Self::open_files(&paths)?;
            for (name, shard) in &index.weight_map {
                let Some(entry) = checkpoint.tensors.get(name) else {
                    return Err(file_error(
                        &dir.join(shard),
                        format!("tensor {name} is listed in {INDEX_FILE} but missing"),
                    ));
                };
                if checkpoint.files[entry.file].0 != dir.join(shard) {
                    return Err(file_error(
                        &index_path,
                        format!("tensor {name} is not in shard {shard} as listed"),
                    ));
                }
            }
            Ok(checkpoint)
        } else {
            let path = dir.join(SINGLE_FILE);
            if !path.exists() {
                return Err(file_error(
                    dir,
                    format!("no {SINGLE_FILE} or {INDEX_FILE} in the model folder"),
                ));
            }
            Self::open_files(&[path])
        }
    }

    /// Maps each file and reads its header; a tensor name in two files is an error.
    pub fn open_files(paths: &[PathBuf]) -> Result<Self, ModelError> {
        let mut files = Vec::with_capacity(paths.len());
        let mut tensors = HashMap::new();
        for (file_index, path) in paths.iter().enumerate() {
            let file =
                File::open(path).map_err(|e| file_error(path, format!("cannot open: {e}")))?;
            // SAFETY: the map is read-only and private to this process; the checkpoint files
            // are not modified while the model is loaded (a file truncated underneath would
            // be a fault outside this program's control, as with any mmap-based loader).
            let mmap = unsafe { Mmap::map(&file) }
                .map_err(|e| file_error(path, format!("cannot map: {e}")))?;
            let (header_len, metadata) = SafeTensors::read_metadata(&mmap).map_err(|e| {
                file_error(
                    path,
                    format!("not a valid safetensors file (truncated or corrupt): {e}"),
                )
            })?;
            let data_start = 8 + header_len;
            for (name, info) in metadata.tensors() {
                let entry = TensorEntry {
                    file: file_index,
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    start: data_start + info.data_offsets.0,
                    end: data_start + info.data_offsets.1,
                };
                if tensors.insert(name.clone(), entry).is_some() {
                    return Err(file_error(
                        path,
                        format!("tensor {name} appears in more than one file"),
                    ));
                }
            }
            files.push((path.clone(), Storage::Mapped(mmap)));
        }
        Ok(Self { files, tensors })
    }

    /// A checkpoint held in memory: `(name, shape, values)` per tensor, stored as F32.
    pub fn from_f32_tensors(
        tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
    ) -> Result<Self, ModelError> {
        let mut files = Vec::with_capacity(tensors.len());
        let mut entries = HashMap::with_capacity(tensors.len());
        for (name, shape, values) in tensors {
            let label = PathBuf::from(format!("<memory>/{name}"));
            if values.len() != shape.iter().product::<usize>() {
                return Err(file_error(
                    &label,
                    format!("{} values for shape {shape:?}", values.len()),
                ));
            }
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            let entry = TensorEntry {
                file: files.len(),
                dtype: Dtype::F32,
                shape,
                start: 0,
                end: bytes.len(),
            };
            if entries.insert(name.clone(), entry).is_some() {
                return Err(file_error(&label, "tensor given twice"));
            }
            files.push((label, Storage::Memory(bytes)));
        }
        Ok(Self {
            files,
            tensors: entries,
        })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Names of all tensors, unordered.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Shape of a tensor, or a missing-tensor error naming it.
    pub fn shape(&self, name: &str) -> Result<&[usize], ModelError> {
        self.entry(name).map(|e| e.shape.as_slice())
    }

    fn entry(&self, name: &str) -> Result<&TensorEntry, ModelError> {
        self.tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor { name: name.into() })
    }

    /// The tensor as f32, checked against `expected` shape.
    pub fn f32_with_shape(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>, ModelError> {
        let entry = self.entry(name)?;
        if entry.shape != expected {
            return Err(ModelError::Shape {
                name: name.into(),
                expected: expected.to_vec(),
                got: entry.shape.clone(),
            });
        }
        self.to_f32(name, entry)
    }

    /// The tensor as f32 with whatever shape it has.
    pub fn f32_any_shape(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>), ModelError> {
        let entry = self.entry(name)?;
        Ok((self.to_f32(name, entry)?, entry.shape.clone()))
    }

    fn to_f32(&self, name: &str, entry: &TensorEntry) -> Result<Vec<f32>, ModelError> {
        let bytes = &self.files[entry.file].1[entry.start..entry.end];
        let count: usize = entry.shape.iter().product();
        let width = match entry.dtype {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            other => {
                return Err(ModelError::Dtype {
                    name: name.into(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        if bytes.len() != count * width {
            return Err(file_error(
                &self.files[entry.file].0,
                format!(
                    "tensor {name}: {} bytes for shape {:?} of {:?}",
                    bytes.len(),
                    entry.shape,
                    entry.dtype
                ),
            ));
        }
        let values = match entry.dtype {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            _ => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        };
        Ok(values)
    }
}

impl Checkpoint {
    /// The linear layer `{prefix}.weight` `[out_features, in_features]` (+ `{prefix}.bias`).
    pub fn linear(
        &self,
        prefix: &str,
        out_features: usize,
        in_features: usize,
        with_bias: bool,
    ) -> Result<super::linear::Linear, ModelError> {
        let weight =
            self.f32_with_shape(&format!("{prefix}.weight"), &[out_features, in_features])?;
        let bias = if with_bias {
            Some(self.f32_with_shape(&format!("{prefix}.bias"), &[out_features])?)
        } else {
            None
        };
        super::linear::Linear::from_f32(prefix, weight, out_features, in_features, bias)
    }

    /// `[rows, cols]` of a tensor that must be 2-D.
    pub fn matrix_shape(&self, name: &str) -> Result<(usize, usize), ModelError> {
        let entry = self.entry(name)?;
        match entry.shape.as_slice() {
            [rows, cols] => Ok((*rows, *cols)),
            other => Err(file_error(
                &self.files[entry.file].0,
                format!("tensor {name}: expected a 2-D tensor, got shape {other:?}"),
            )),
        }
    }
}
