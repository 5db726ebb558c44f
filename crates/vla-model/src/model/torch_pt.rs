//! PyTorch `.pt` state dicts, read without running pickle code.
//!
//! OpenVLA-OFT ships its action head and proprio projector as
//! `torch.save(ddp_module.state_dict(), path)` files: a zip archive holding
//! `<archive>/data.pkl` (a pickle of an `OrderedDict` from names to tensors), one
//! `<archive>/data/<key>` entry per storage, and `<archive>/byteorder`. Python's unpickler
//! calls whatever the pickle names (`GLOBAL` + `REDUCE`), so loading such a file with it runs
//! the file's code. This module interprets the pickle with a machine that knows only the
//! opcodes a state dict uses and only these globals:
//!
//! - `collections OrderedDict` (the dict itself and the tensors' empty backward hooks),
//! - `torch._utils _rebuild_tensor_v2` and `torch._utils _rebuild_parameter`,
//! - `torch <T>Storage` for the storage types of [`TorchDtype`], named by persistent ids.
//!
//! Anything else (another global, opcode or structure) is refused with an error naming the
//! file and the culprit; nothing is ever called. Tensors must be row-major contiguous, in a
//! little-endian archive, with uncompressed entries (what `torch.save` writes). Every size
//! read from the file is bounded and overflow-checked before it is used.

use std::collections::HashMap;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use zip::result::ZipError;
use zip::{CompressionMethod, ZipArchive};

use super::checkpoint::Checkpoint;
use super::ModelError;

/// Largest `data.pkl` read: a state dict's pickle takes about 150 bytes a tensor.
pub const MAX_PICKLE_BYTES: u64 = 16 << 20;
/// Most tensors in one state dict.
pub const MAX_TENSORS: usize = 65_536;
/// Most dimensions of one tensor.
pub const MAX_DIMS: usize = 16;
/// Most values the pickle machine creates in all (tuple, list and dict elements, memo
/// entries, containers): bounds its memory whatever the pickle does.
const MAX_ITEMS: usize = 1 << 22;
/// Deepest stack (and most marks): torch's pickler batches dict items by the thousand.
const MAX_STACK: usize = 1 << 16;
/// Longest storage key, location or byte-order entry taken.
const MAX_KEY_LEN: usize = 256;

/// Element types of the storages this reader takes, by their torch names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TorchDtype {
    F32,
    BF16,
    F16,
    F64,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl TorchDtype {
    const ALL: [TorchDtype; 10] = [
        TorchDtype::F32,
        TorchDtype::BF16,
        TorchDtype::F16,
        TorchDtype::F64,
        TorchDtype::I64,
        TorchDtype::I32,
        TorchDtype::I16,
        TorchDtype::I8,
        TorchDtype::U8,
        TorchDtype::Bool,
    ];

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            TorchDtype::F64 | TorchDtype::I64 => 8,
            TorchDtype::F32 | TorchDtype::I32 => 4,
            TorchDtype::BF16 | TorchDtype::F16 | TorchDtype::I16 => 2,
            TorchDtype::I8 | TorchDtype::U8 | TorchDtype::Bool => 1,
        }
    }

    /// The torch name (`str(tensor.dtype)` without `torch.`).
    pub fn name(self) -> &'static str {
        match self {
            TorchDtype::F32 => "float32",
            TorchDtype::BF16 => "bfloat16",
            TorchDtype::F16 => "float16",
            TorchDtype::F64 => "float64",
            TorchDtype::I64 => "int64",
            TorchDtype::I32 => "int32",
            TorchDtype::I16 => "int16",
            TorchDtype::I8 => "int8",
            TorchDtype::U8 => "uint8",
            TorchDtype::Bool => "bool",
        }
    }

    /// The legacy storage class a pickle names (`torch FloatStorage`).
    pub fn storage_class(self) -> &'static str {
        match self {
            TorchDtype::F32 => "FloatStorage",
            TorchDtype::BF16 => "BFloat16Storage",
            TorchDtype::F16 => "HalfStorage",
            TorchDtype::F64 => "DoubleStorage",
            TorchDtype::I64 => "LongStorage",
            TorchDtype::I32 => "IntStorage",
            TorchDtype::I16 => "ShortStorage",
            TorchDtype::I8 => "CharStorage",
            TorchDtype::U8 => "ByteStorage",
            TorchDtype::Bool => "BoolStorage",
        }
    }

    pub fn is_float(self) -> bool {
        matches!(
            self,
            TorchDtype::F32 | TorchDtype::BF16 | TorchDtype::F16 | TorchDtype::F64
        )
    }

    fn from_storage_class(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.storage_class() == name)
    }
}

impl std::fmt::Display for TorchDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One tensor of a state dict: row-major, its bytes little-endian.
#[derive(Clone)]
pub struct TorchTensor {
    name: String,
    dtype: TorchDtype,
    shape: Vec<usize>,
    /// The whole storage: tensors saved as views of one storage share it.
    storage: Arc<Vec<u8>>,
    /// Byte range of this tensor within the storage.
    start: usize,
    len: usize,
}

impl std::fmt::Debug for TorchTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TorchTensor")
            .field("name", &self.name)
            .field("dtype", &self.dtype)
            .field("shape", &self.shape)
            .finish()
    }
}

impl TorchTensor {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dtype(&self) -> TorchDtype {
        self.dtype
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements (1 for a 0-d tensor).
    pub fn numel(&self) -> usize {
        self.len / self.dtype.size()
    }

    /// The elements' bytes, little-endian, row-major.
    pub fn bytes(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }

    /// The elements as f32: exact from f32, bf16 and f16, rounded to nearest from f64.
    /// Integer and bool tensors are refused, naming the tensor.
    pub fn to_f32(&self) -> Result<Vec<f32>, ModelError> {
        let bytes = self.bytes();
        Ok(match self.dtype {
            TorchDtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            TorchDtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            TorchDtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            TorchDtype::F64 => bytes
                .chunks_exact(8)
                .map(|b| {
                    let mut word = [0u8; 8];
                    word.copy_from_slice(b);
                    f64::from_le_bytes(word) as f32
                })
                .collect(),
            other => {
                return Err(ModelError::Unsupported {
                    what: format!("tensor {}", self.name),
                    message: format!("{other} has no f32 conversion (floating dtypes only)"),
                })
            }
        })
    }
}

/// The tensors of a `torch.save`d state dict, in the file's order.
#[derive(Debug, Clone)]
pub struct TorchStateDict {
    path: PathBuf,
    tensors: Vec<TorchTensor>,
    index: HashMap<String, usize>,
}

fn file_error(path: &Path, message: impl Into<String>) -> ModelError {
    ModelError::File {
        path: path.display().to_string(),
        message: message.into(),
    }
}

impl TorchStateDict {
    /// Reads the state dict of a `.pt` file written by `torch.save`.
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        // Opening a FIFO or a device would block or read without end.
        let metadata =
            std::fs::metadata(path).map_err(|e| file_error(path, format!("cannot open: {e}")))?;
        if !metadata.is_file() {
            return Err(file_error(path, "not a regular file"));
        }
        let file =
            std::fs::File::open(path).map_err(|e| file_error(path, format!("cannot open: {e}")))?;
        read(std::io::BufReader::new(file), metadata.len(), path)
    }

    /// Reads a state dict from the bytes of a `.pt` file; `path` only names it in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self, ModelError> {
        read(std::io::Cursor::new(bytes), bytes.len() as u64, path)
    }

    /// The file the state dict was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The tensors in the order of the file.
    pub fn tensors(&self) -> &[TorchTensor] {
        &self.tensors
    }

    pub fn get(&self, name: &str) -> Option<&TorchTensor> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    /// The tensor, or a missing-tensor error naming it.
    pub fn tensor(&self, name: &str) -> Result<&TorchTensor, ModelError> {
        self.get(name)
            .ok_or_else(|| ModelError::MissingTensor { name: name.into() })
    }

    /// The tensor as f32, checked against `expected` shape.
    pub fn f32_with_shape(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>, ModelError> {
        let tensor = self.tensor(name)?;
        if tensor.shape != expected {
            return Err(ModelError::Shape {
                name: name.into(),
                expected: expected.to_vec(),
                got: tensor.shape.clone(),
            });
        }
        tensor.to_f32()
    }

    /// Drops `prefix` from every name that starts with it; two names that become one are an
    /// error naming both.
    pub fn strip_prefix(mut self, prefix: &str) -> Result<Self, ModelError> {
        let mut index = HashMap::with_capacity(self.tensors.len());
        for (i, tensor) in self.tensors.iter().enumerate() {
            let name = tensor.name.strip_prefix(prefix).unwrap_or(&tensor.name);
            if let Some(&other) = index.get(name) {
                let other: &TorchTensor = &self.tensors[other];
                return Err(file_error(
                    &self.path,
                    format!(
                        "tensors `{}` and `{}` are both `{name}` without the prefix `{prefix}`",
                        other.name, tensor.name
                    ),
                ));
            }
            index.insert(name.to_string(), i);
        }
        for tensor in &mut self.tensors {
            if let Some(rest) = tensor.name.strip_prefix(prefix) {
                tensor.name = rest.to_string();
            }
        }
        self.index = index;
        Ok(self)
    }

    /// A model trained under `DistributedDataParallel` is saved through the wrapper, whose
    /// submodule is `module`: every name then starts `module.` (OpenVLA-OFT's heads). This
    /// drops it, giving the names of the unwrapped model.
    pub fn strip_module_prefix(self) -> Result<Self, ModelError> {
        self.strip_prefix("module.")
    }

    /// The tensors as an in-memory f32 [`Checkpoint`], for the loaders written against it
    /// (`Checkpoint::linear`); every tensor must be of a floating dtype.
    pub fn to_checkpoint(&self) -> Result<Checkpoint, ModelError> {
        let tensors = self
            .tensors
            .iter()
            .map(|t| Ok((t.name.clone(), t.shape.clone(), t.to_f32()?)))
            .collect::<Result<Vec<_>, ModelError>>()?;
        Checkpoint::from_f32_tensors(tensors)
    }
}

fn read<R: Read + Seek>(
    source: R,
    source_len: u64,
    path: &Path,
) -> Result<TorchStateDict, ModelError> {
    let archive = ZipArchive::new(source).map_err(|e| {
        file_error(
            path,
            format!(
                "not a zip archive (torch.save writes one; the legacy format is not read): {e}"
            ),
        )
    })?;
    let pickles: Vec<String> = archive
        .file_names_raw()
        .filter(|n| *n == b"data.pkl" || n.ends_with(b"/data.pkl"))
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect();
    let pickle_name = match pickles.as_slice() {
        [one] => one.clone(),
        [] => {
            return Err(file_error(
                path,
                "no `<archive>/data.pkl` entry: not a file written by torch.save",
            ))
        }
        several => {
            return Err(file_error(
                path,
                format!(
                    "{} data.pkl entries ({}): one archive expected",
                    several.len(),
                    several.join(", ")
                ),
            ))
        }
    };
    let prefix = &pickle_name[..pickle_name.len() - "data.pkl".len()];
    if prefix.is_empty() || prefix[..prefix.len() - 1].contains('/') {
        return Err(file_error(
            path,
            format!("`{pickle_name}` is not in a top-level folder (`<archive>/data.pkl`)"),
        ));
    }
    let mut entries = Entries {
        archive,
        source_len,
        path,
    };

    let byteorder_name = format!("{prefix}byteorder");
    // Files written before torch 1.13 have no byteorder entry; torch reads them as
    // little-endian.
    if entries.archive.index_for_name(&byteorder_name).is_some() {
        let order = entries
            .read(&byteorder_name, MAX_KEY_LEN as u64)
            .map_err(|m| file_error(path, m))?;
        if order != b"little" {
            return Err(file_error(
                path,
                format!(
                    "`{byteorder_name}` is `{}`: only little-endian files are read",
                    String::from_utf8_lossy(&order)
                ),
            ));
        }
    }

    let pickle = entries
        .read(&pickle_name, MAX_PICKLE_BYTES)
        .map_err(|m| file_error(path, m))?;
    let mut machine = Machine::new(&pickle, path, &pickle_name);
    let root = machine.run()?;
    let items = match (&root, machine.objects.get_mut(root_id(&root))) {
        (Value::Dict(_), Some(Object::Dict { items, .. })) => std::mem::take(items),
        (other, _) => {
            return Err(file_error(
                path,
                format!(
                    "{pickle_name} holds {}, not a state dict (a dict of names to tensors)",
                    other.kind()
                ),
            ))
        }
    };
    if items.len() > MAX_TENSORS {
        return Err(file_error(
            path,
            format!(
                "{} entries, more than the {MAX_TENSORS} tensors read",
                items.len()
            ),
        ));
    }

    let mut storages: HashMap<String, Storage> = HashMap::new();
    let mut tensors = Vec::with_capacity(items.len());
    let mut index = HashMap::with_capacity(items.len());
    for (key, value) in items {
        let Value::Str(name) = key else {
            return Err(file_error(
                path,
                format!(
                    "a key of the state dict is {}, not a tensor name",
                    key.kind()
                ),
            ));
        };
        let Value::Tensor(spec) = value else {
            return Err(file_error(
                path,
                format!(
                    "entry `{name}` is {}, not a tensor: only state dicts (names to tensors) are read",
                    value.kind()
                ),
            ));
        };
        let tensor = materialize(&name, &spec, prefix, &mut storages, &mut entries)?;
        if index.insert(name.to_string(), tensors.len()).is_some() {
            return Err(file_error(path, format!("tensor {name} appears twice")));
        }
        tensors.push(tensor);
    }
    Ok(TorchStateDict {
        path: path.to_path_buf(),
        tensors,
        index,
    })
}

/// The arena index of a container value (`usize::MAX`, which names none, for the others).
fn root_id(value: &Value) -> usize {
    match value {
        Value::Dict(id) | Value::List(id) => *id,
        _ => usize::MAX,
    }
}

/// The archive's entries, read within bounds.
struct Entries<'p, R> {
    archive: ZipArchive<R>,
    source_len: u64,
    path: &'p Path,
}

impl<R: Read + Seek> Entries<'_, R> {
    /// The whole entry `name`, which must be stored (not compressed) and at most `max` bytes;
    /// errors are messages for the caller to place.
    fn read(&mut self, name: &str, max: u64) -> Result<Vec<u8>, String> {
        let mut file = self.archive.by_name(name).map_err(|e| match e {
            ZipError::FileNotFound => format!("no entry `{name}`"),
            e => format!("entry `{name}`: {e}"),
        })?;
        if file.compression() != CompressionMethod::Stored {
            return Err(format!(
                "entry `{name}` is compressed ({}); torch.save stores entries uncompressed",
                file.compression()
            ));
        }
        let size = file.size();
        if size > max {
            return Err(format!(
                "entry `{name}` is {size} bytes, more than the {max} expected"
            ));
        }
        // A stored entry lies within the file: a size past its end is a lie, and must not
        // size an allocation.
        if size > self.source_len {
            return Err(format!(
                "entry `{name}` claims {size} bytes, more than the file's {}",
                self.source_len
            ));
        }
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        // One byte past the size, so that the reader reaches the entry's end and checks its
        // CRC there.
        (&mut file)
            .take(size.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|e| format!("entry `{name}`: {e} (truncated or corrupt)"))?;
        if bytes.len() as u64 != size {
            return Err(format!(
                "entry `{name}`: {} bytes where its header says {size} (truncated or corrupt)",
                bytes.len()
            ));
        }
        Ok(bytes)
    }
}

/// A storage read from `<archive>/data/<key>`.
struct Storage {
    dtype: TorchDtype,
    numel: u64,
    bytes: Arc<Vec<u8>>,
}

/// Checks a tensor's shape, strides and offset against its storage, reads the storage
/// (once per key) and returns the tensor.
fn materialize<R: Read + Seek>(
    name: &str,
    spec: &TensorSpec,
    prefix: &str,
    storages: &mut HashMap<String, Storage>,
    entries: &mut Entries<'_, R>,
) -> Result<TorchTensor, ModelError> {
    let path = entries.path;
    let fail = |message: String| file_error(path, format!("tensor {name}: {message}"));
    let storage = &spec.storage;
    let dtype = storage.dtype;
    if spec.size.len() > MAX_DIMS {
        return Err(fail(format!(
            "{} dimensions, more than the {MAX_DIMS} read",
            spec.size.len()
        )));
    }
    if spec.size.len() != spec.stride.len() {
        return Err(fail(format!(
            "shape {:?} and strides {:?} differ in length",
            spec.size, spec.stride
        )));
    }
    let shape = spec
        .size
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<Vec<usize>, _>>()
        .map_err(|_| fail(format!("negative size in shape {:?}", spec.size)))?;
    let numel = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| fail(format!("shape {shape:?}: element count overflows")))?;
    if numel > 0 {
        let mut expected: i64 = 1;
        for (d, (&size, &stride)) in shape.iter().zip(&spec.stride).enumerate().rev() {
            // torch calls a tensor contiguous whatever the stride of a size-1 dimension.
            if size != 1 && stride != expected {
                return Err(fail(format!(
                    "strides {:?} for shape {shape:?} are not row-major contiguous (dimension {d}); \
                     save `.contiguous()` tensors",
                    spec.stride
                )));
            }
            // numel fits in usize, so every partial product does.
            expected = expected.saturating_mul(i64::try_from(size).unwrap_or(i64::MAX));
        }
    }
    let offset =
        u64::try_from(spec.offset).map_err(|_| fail(format!("negative offset {}", spec.offset)))?;
    let end = offset
        .checked_add(numel as u64)
        .filter(|&end| end <= storage.numel)
        .ok_or_else(|| {
            fail(format!(
                "elements {offset}..{} lie outside its storage `{}` of {} elements",
                offset as u128 + numel as u128,
                storage.key,
                storage.numel
            ))
        })?;
    let width = dtype.size() as u64;
    let storage_bytes = storage
        .numel
        .checked_mul(width)
        .ok_or_else(|| fail(format!("storage of {} elements overflows", storage.numel)))?;

    let key = storage.key.as_ref();
    let entry_name = format!("{prefix}data/{key}");
    if let Some(read) = storages.get(key) {
        if read.dtype != dtype || read.numel != storage.numel {
            return Err(fail(format!(
                "storage `{key}` is named as {} of {} elements, and before as {} of {}",
                dtype.storage_class(),
                storage.numel,
                read.dtype.storage_class(),
                read.numel
            )));
        }
    } else {
        let bytes = entries
            .read(&entry_name, storage_bytes)
            .map_err(|m| fail(format!("its storage `{key}`: {m}")))?;
        if bytes.len() as u64 != storage_bytes {
            return Err(fail(format!(
                "storage `{key}` (`{entry_name}`) holds {} bytes, but its {} {dtype} elements take {storage_bytes}",
                bytes.len(),
                storage.numel
            )));
        }
        storages.insert(
            key.to_string(),
            Storage {
                dtype,
                numel: storage.numel,
                bytes: Arc::new(bytes),
            },
        );
    }
    let bytes = storages
        .get(key)
        .map(|s| s.bytes.clone())
        .ok_or_else(|| fail(format!("storage `{key}` not kept")))?;
    // Both within the storage's byte length, checked above; no overflow.
    let start = (offset * width) as usize;
    let len = ((end - offset) * width) as usize;
    Ok(TorchTensor {
        name: name.to_string(),
        dtype,
        shape,
        storage: bytes,
        start,
        len,
    })
}

/// A storage as a persistent id names it.
#[derive(Debug)]
struct StorageSpec {
    dtype: TorchDtype,
    key: Rc<str>,
    numel: u64,
}

/// A tensor as `_rebuild_tensor_v2` would build it.
#[derive(Debug)]
struct TensorSpec {
    storage: Rc<StorageSpec>,
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
}

/// The globals a state dict's pickle may name; no other is ever resolved.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    Storage(TorchDtype),
}

impl Global {
    fn resolve(module: &str, name: &str) -> Option<Self> {
        match (module, name) {
            ("collections", "OrderedDict") => Some(Global::OrderedDict),
            ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensorV2),
            ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
            ("torch", class) => TorchDtype::from_storage_class(class).map(Global::Storage),
            _ => None,
        }
    }
}

/// A value of the pickle machine. Containers live in the machine's arena, so the memo and
/// the stack share them (as Python's objects are shared) and copying a value is cheap.
#[derive(Debug, Clone)]
enum Value {
    None,
    // requires_grad and optimizer settings: their values are never needed.
    Bool,
    Int(i64),
    Float,
    Str(Rc<str>),
    Tuple(Rc<[Value]>),
    List(usize),
    Dict(usize),
    Global(Global),
    Storage(Rc<StorageSpec>),
    Tensor(Rc<TensorSpec>),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool => "a bool",
            Value::Int(_) => "an int",
            Value::Float => "a float",
            Value::Str(_) => "a string",
            Value::Tuple(_) => "a tuple",
            Value::List(_) => "a list",
            Value::Dict(_) => "a dict",
            Value::Global(_) => "a class or function",
            Value::Storage(_) => "a storage",
            Value::Tensor(_) => "a tensor",
        }
    }
}

#[derive(Debug)]
enum Object {
    List(Vec<Value>),
    Dict {
        ordered: bool,
        items: Vec<(Value, Value)>,
    },
}

/// Pickle opcodes' names, for errors.
fn opcode_name(op: u8) -> &'static str {
    match op {
        b'(' => "MARK",
        b'.' => "STOP",
        b'0' => "POP",
        b'1' => "POP_MARK",
        b'2' => "DUP",
        b'F' => "FLOAT",
        b'I' => "INT",
        b'J' => "BININT",
        b'K' => "BININT1",
        b'L' => "LONG",
        b'M' => "BININT2",
        b'N' => "NONE",
        b'P' => "PERSID",
        b'Q' => "BINPERSID",
        b'R' => "REDUCE",
        b'S' => "STRING",
        b'T' => "BINSTRING",
        b'U' => "SHORT_BINSTRING",
        b'V' => "UNICODE",
        b'X' => "BINUNICODE",
        b'a' => "APPEND",
        b'b' => "BUILD",
        b'c' => "GLOBAL",
        b'd' => "DICT",
        b'}' => "EMPTY_DICT",
        b'e' => "APPENDS",
        b'g' => "GET",
        b'h' => "BINGET",
        b'i' => "INST",
        b'j' => "LONG_BINGET",
        b'l' => "LIST",
        b']' => "EMPTY_LIST",
        b'o' => "OBJ",
        b'p' => "PUT",
        b'q' => "BINPUT",
        b'r' => "LONG_BINPUT",
        b's' => "SETITEM",
        b't' => "TUPLE",
        b')' => "EMPTY_TUPLE",
        b'u' => "SETITEMS",
        b'G' => "BINFLOAT",
        0x80 => "PROTO",
        0x81 => "NEWOBJ",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        0x85 => "TUPLE1",
        0x86 => "TUPLE2",
        0x87 => "TUPLE3",
        0x88 => "NEWTRUE",
        0x89 => "NEWFALSE",
        0x8a => "LONG1",
        0x8b => "LONG4",
        0x8c => "SHORT_BINUNICODE",
        0x8d => "BINUNICODE8",
        0x8e => "BINBYTES8",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x92 => "NEWOBJ_EX",
        0x93 => "STACK_GLOBAL",
        0x94 => "MEMOIZE",
        0x95 => "FRAME",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        b'B' => "BINBYTES",
        b'C' => "SHORT_BINBYTES",
        _ => "unknown",
    }
}

/// A pickle interpreter that builds values and never calls anything: `REDUCE` is evaluated
/// here, for the allowed globals only.
struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    path: &'a Path,
    entry: &'a str,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    objects: Vec<Object>,
    /// Values still allowed to be held (see [`MAX_ITEMS`]).
    budget: usize,
    /// Where the opcode being run starts, for errors.
    op_pos: usize,
}

impl<'a> Machine<'a> {
    fn new(data: &'a [u8], path: &'a Path, entry: &'a str) -> Self {
        Self {
            data,
            pos: 0,
            path,
            entry,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            objects: Vec::new(),
            budget: MAX_ITEMS,
            op_pos: 0,
        }
    }

    fn error(&self, message: impl std::fmt::Display) -> ModelError {
        file_error(
            self.path,
            format!("{} at byte {}: {message}", self.entry, self.op_pos),
        )
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ModelError> {
        let data: &'a [u8] = self.data;
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= data.len())
            .ok_or_else(|| self.error("the pickle ends inside an opcode (truncated)"))?;
        let bytes = &data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn byte(&mut self) -> Result<u8, ModelError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, ModelError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, ModelError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, ModelError> {
        let b = self.take(8)?;
        let mut word = [0u8; 8];
        word.copy_from_slice(b);
        Ok(u64::from_le_bytes(word))
    }

    fn line(&mut self) -> Result<&'a [u8], ModelError> {
        let data: &'a [u8] = self.data;
        let rest = &data[self.pos..];
        let len = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| self.error("the pickle ends inside a line (truncated)"))?;
        self.pos += len + 1;
        Ok(&rest[..len])
    }

    fn spend(&mut self, n: usize) -> Result<(), ModelError> {
        self.budget = self.budget.checked_sub(n).ok_or_else(|| {
            self.error(format!(
                "more than {MAX_ITEMS} values: too large for a state dict"
            ))
        })?;
        Ok(())
    }

    fn push(&mut self, value: Value) -> Result<(), ModelError> {
        if self.stack.len() >= MAX_STACK {
            return Err(self.error(format!("stack deeper than {MAX_STACK}")));
        }
        self.stack.push(value);
        Ok(())
    }

    fn pop(&mut self) -> Result<Value, ModelError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.error("stack underflow (malformed pickle)"));
        }
        self.stack
            .pop()
            .ok_or_else(|| self.error("stack underflow (malformed pickle)"))
    }

    fn top(&self) -> Result<&Value, ModelError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.error("stack underflow (malformed pickle)"));
        }
        self.stack
            .last()
            .ok_or_else(|| self.error("stack underflow (malformed pickle)"))
    }

    /// The values pushed since the last MARK, which is removed.
    fn pop_mark(&mut self) -> Result<Vec<Value>, ModelError> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| self.error("no MARK to pop to (malformed pickle)"))?;
        Ok(self.stack.split_off(mark))
    }

    fn new_object(&mut self, object: Object) -> Result<usize, ModelError> {
        self.spend(1)?;
        self.objects.push(object);
        Ok(self.objects.len() - 1)
    }

    fn tuple(&mut self, items: Vec<Value>) -> Result<Value, ModelError> {
        self.spend(items.len())?;
        Ok(Value::Tuple(items.into()))
    }

    fn string(&mut self, bytes: &[u8]) -> Result<Value, ModelError> {
        let text = std::str::from_utf8(bytes)
            .map_err(|e| self.error(format!("string is not UTF-8: {e}")))?;
        Ok(Value::Str(text.into()))
    }

    fn memo_put(&mut self, index: u32) -> Result<(), ModelError> {
        let value = self.top()?.clone();
        if self.memo.insert(index, value).is_none() {
            self.spend(1)?;
        }
        Ok(())
    }

    fn memo_get(&mut self, index: u32) -> Result<(), ModelError> {
        let value = self
            .memo
            .get(&index)
            .cloned()
            .ok_or_else(|| self.error(format!("memo entry {index} was never stored")))?;
        self.push(value)
    }

    fn set_items(&mut self, target: &Value, pairs: Vec<(Value, Value)>) -> Result<(), ModelError> {
        let Value::Dict(id) = *target else {
            return Err(self.error(format!("SETITEM(S) on {}, not a dict", target.kind())));
        };
        self.spend(pairs.len().saturating_mul(2))?;
        if let Object::Dict { items, .. } = &mut self.objects[id] {
            items.extend(pairs);
            return Ok(());
        }
        Err(self.error("SETITEM(S) on a list"))
    }

    fn append(&mut self, target: &Value, values: Vec<Value>) -> Result<(), ModelError> {
        let Value::List(id) = *target else {
            return Err(self.error(format!("APPEND(S) on {}, not a list", target.kind())));
        };
        self.spend(values.len())?;
        if let Object::List(items) = &mut self.objects[id] {
            items.extend(values);
            return Ok(());
        }
        Err(self.error("APPEND(S) on a dict"))
    }

    fn global(&self, module: &[u8], name: &[u8]) -> Result<Value, ModelError> {
        let module = String::from_utf8_lossy(module);
        let name = String::from_utf8_lossy(name);
        if let Some(global) = Global::resolve(&module, &name) {
            return Ok(Value::Global(global));
        }
        if module == "torch" && name.ends_with("Storage") {
            let read: Vec<&str> = TorchDtype::ALL.iter().map(|d| d.storage_class()).collect();
            return Err(self.error(format!(
                "global `{module} {name}` refused: the storage types read are {}",
                read.join(", ")
            )));
        }
        Err(self.error(format!(
            "global `{module} {name}` refused: a pickle's globals are code, and a state dict \
             needs only collections.OrderedDict, torch._utils._rebuild_tensor_v2, \
             torch._utils._rebuild_parameter and torch's storage types"
        )))
    }

    fn int(&self, value: &Value, what: &str) -> Result<i64, ModelError> {
        match value {
            Value::Int(i) => Ok(*i),
            other => Err(self.error(format!("{what} is {}, not an int", other.kind()))),
        }
    }

    fn ints(&self, value: &Value, what: &str) -> Result<Vec<i64>, ModelError> {
        match value {
            Value::Tuple(items) => items.iter().map(|v| self.int(v, what)).collect(),
            other => Err(self.error(format!("{what} is {}, not a tuple", other.kind()))),
        }
    }

    fn is_empty_ordered_dict(&self, value: &Value) -> bool {
        matches!(value, Value::Dict(id) if matches!(&self.objects[*id],
            Object::Dict { ordered: true, items } if items.is_empty()))
    }

    fn is_empty_dict(&self, value: &Value) -> bool {
        matches!(value, Value::Dict(id) if matches!(&self.objects[*id],
            Object::Dict { items, .. } if items.is_empty()))
    }

    /// REDUCE: the callable applied to its arguments, for the allowed callables only.
    fn reduce(&mut self, callable: Value, args: Value) -> Result<Value, ModelError> {
        let Value::Global(global) = callable else {
            return Err(self.error(format!("REDUCE calls {}", callable.kind())));
        };
        let Value::Tuple(args) = args else {
            return Err(self.error(format!("REDUCE arguments are {}", args.kind())));
        };
        match global {
            Global::OrderedDict => {
                if !args.is_empty() {
                    return Err(self.error("OrderedDict called with arguments"));
                }
                let id = self.new_object(Object::Dict {
                    ordered: true,
                    items: Vec::new(),
                })?;
                Ok(Value::Dict(id))
            }
            Global::RebuildTensorV2 => {
                // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
                if !(6..=7).contains(&args.len()) {
                    return Err(self.error(format!(
                        "_rebuild_tensor_v2 called with {} arguments, not 6 or 7",
                        args.len()
                    )));
                }
                let Value::Storage(storage) = &args[0] else {
                    return Err(self.error(format!(
                        "_rebuild_tensor_v2 given {}, not a storage",
                        args[0].kind()
                    )));
                };
                let offset = self.int(&args[1], "the storage offset")?;
                let size = self.ints(&args[2], "the size")?;
                let stride = self.ints(&args[3], "the stride")?;
                if !matches!(args[4], Value::Bool) {
                    return Err(self.error("requires_grad is not a bool"));
                }
                if !self.is_empty_ordered_dict(&args[5]) {
                    return Err(
                        self.error("a tensor with backward hooks (they are code and are not read)")
                    );
                }
                if let Some(metadata) = args.get(6) {
                    if !matches!(metadata, Value::None) && !self.is_empty_dict(metadata) {
                        return Err(self.error(
                            "a tensor with metadata (conjugate or negative bit, or Python attributes)",
                        ));
                    }
                }
                Ok(Value::Tensor(Rc::new(TensorSpec {
                    storage: storage.clone(),
                    offset,
                    size,
                    stride,
                })))
            }
            Global::RebuildParameter => {
                // (data, requires_grad, backward_hooks)
                match &*args {
                    [Value::Tensor(tensor), Value::Bool, hooks]
                        if self.is_empty_ordered_dict(hooks) =>
                    {
                        Ok(Value::Tensor(tensor.clone()))
                    }
                    _ => Err(self.error(
                        "_rebuild_parameter called with other than (tensor, bool, no hooks)",
                    )),
                }
            }
            Global::Storage(dtype) => Err(self.error(format!(
                "torch.{} called (storages are only named by persistent ids)",
                dtype.storage_class()
            ))),
        }
    }

    /// BINPERSID: `('storage', torch.<T>Storage, key, location, numel)`.
    fn persistent_load(&mut self, pid: Value) -> Result<Value, ModelError> {
        let Value::Tuple(parts) = &pid else {
            return Err(self.error(format!("persistent id is {}, not a tuple", pid.kind())));
        };
        match &**parts {
            [Value::Str(tag), Value::Global(Global::Storage(dtype)), Value::Str(key), Value::Str(location), Value::Int(numel)]
                if &**tag == "storage" =>
            {
                if key.is_empty() || key.len() > MAX_KEY_LEN || key.contains('/') {
                    return Err(self.error(format!("storage key `{key}` is not a file name")));
                }
                if location.len() > MAX_KEY_LEN {
                    return Err(self.error("storage location longer than 256 bytes"));
                }
                let numel = u64::try_from(*numel)
                    .map_err(|_| self.error(format!("storage `{key}` has {numel} elements")))?;
                Ok(Value::Storage(Rc::new(StorageSpec {
                    dtype: *dtype,
                    key: key.clone(),
                    numel,
                })))
            }
            _ => Err(self.error(
                "persistent id is not ('storage', torch.<T>Storage, key, location, numel) \
                 with a storage type read here",
            )),
        }
    }

    fn run(&mut self) -> Result<Value, ModelError> {
        loop {
            self.op_pos = self.pos;
            if self.pos >= self.data.len() {
                return Err(self.error("the pickle ends without STOP (truncated)"));
            }
            let op = self.byte()?;
            match op {
                0x80 => {
                    let protocol = self.byte()?;
                    if !(2..=5).contains(&protocol) {
                        return Err(self.error(format!("pickle protocol {protocol} (2 to 5 read)")));
                    }
                }
                0x95 => {
                    self.u64()?;
                }
                b'}' => {
                    let id = self.new_object(Object::Dict {
                        ordered: false,
                        items: Vec::new(),
                    })?;
                    self.push(Value::Dict(id))?;
                }
                b']' => {
                    let id = self.new_object(Object::List(Vec::new()))?;
                    self.push(Value::List(id))?;
                }
                b')' => self.push(Value::Tuple(Rc::new([])))?,
                b'(' => {
                    if self.marks.len() >= MAX_STACK {
                        return Err(self.error(format!("more than {MAX_STACK} marks")));
                    }
                    self.marks.push(self.stack.len());
                }
                b'X' => {
                    let len = self.u32()? as usize;
                    let bytes = self.take(len)?;
                    let value = self.string(bytes)?;
                    self.push(value)?;
                }
                0x8c => {
                    let len = usize::from(self.byte()?);
                    let bytes = self.take(len)?;
                    let value = self.string(bytes)?;
                    self.push(value)?;
                }
                0x8d => {
                    let len = usize::try_from(self.u64()?).unwrap_or(usize::MAX);
                    let bytes = self.take(len)?;
                    let value = self.string(bytes)?;
                    self.push(value)?;
                }
                b'V' => {
                    let line = self.line()?;
                    let text = decode_raw_unicode_escape(line)
                        .ok_or_else(|| self.error("malformed UNICODE string"))?;
                    self.push(Value::Str(text.into()))?;
                }
                b'J' => {
                    let value = self.u32()? as i32;
                    self.push(Value::Int(value.into()))?;
                }
                b'K' => {
                    let value = self.byte()?;
                    self.push(Value::Int(value.into()))?;
                }
                b'M' => {
                    let value = self.u16()?;
                    self.push(Value::Int(value.into()))?;
                }
                0x8a => {
                    let len = usize::from(self.byte()?);
                    if len > 8 {
                        return Err(self.error(format!("a {len}-byte integer (at most 8 read)")));
                    }
                    let bytes = self.take(len)?;
                    let mut word = [0u8; 8];
                    word[..len].copy_from_slice(bytes);
                    if bytes.last().is_some_and(|&b| b & 0x80 != 0) {
                        word[len..].fill(0xff);
                    }
                    self.push(Value::Int(i64::from_le_bytes(word)))?;
                }
                b'G' => {
                    self.take(8)?;
                    self.push(Value::Float)?;
                }
                0x88 | 0x89 => self.push(Value::Bool)?,
                b'N' => self.push(Value::None)?,
                b't' => {
                    let items = self.pop_mark()?;
                    let value = self.tuple(items)?;
                    self.push(value)?;
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    let value = self.tuple(items)?;
                    self.push(value)?;
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.spend(items.len())?;
                    let id = self.new_object(Object::List(items))?;
                    self.push(Value::List(id))?;
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = pairs(items).ok_or_else(|| self.error("DICT of an odd count"))?;
                    self.spend(pairs.len().saturating_mul(2))?;
                    let id = self.new_object(Object::Dict {
                        ordered: false,
                        items: pairs,
                    })?;
                    self.push(Value::Dict(id))?;
                }
                b'q' => {
                    let index = self.byte()?;
                    self.memo_put(index.into())?;
                }
                b'r' => {
                    let index = self.u32()?;
                    self.memo_put(index)?;
                }
                0x94 => {
                    let index =
                        u32::try_from(self.memo.len()).map_err(|_| self.error("memo full"))?;
                    self.memo_put(index)?;
                }
                b'h' => {
                    let index = self.byte()?;
                    self.memo_get(index.into())?;
                }
                b'j' => {
                    let index = self.u32()?;
                    self.memo_get(index)?;
                }
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    let target = self.top()?.clone();
                    self.set_items(&target, vec![(key, value)])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let pairs =
                        pairs(items).ok_or_else(|| self.error("SETITEMS of an odd count"))?;
                    let target = self.top()?.clone();
                    self.set_items(&target, pairs)?;
                }
                b'a' => {
                    let value = self.pop()?;
                    let target = self.top()?.clone();
                    self.append(&target, vec![value])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let target = self.top()?.clone();
                    self.append(&target, items)?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let value = self.persistent_load(pid)?;
                    self.push(value)?;
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let value = self.reduce(callable, args)?;
                    self.push(value)?;
                }
                b'b' => {
                    let state = self.pop()?;
                    let target = self.top()?;
                    let is_ordered = matches!(target, Value::Dict(id)
                        if matches!(self.objects[*id], Object::Dict { ordered: true, .. }));
                    // An OrderedDict's state is its attributes (a state dict's `_metadata`,
                    // module versions): data, not needed for the tensors.
                    if !is_ordered || !matches!(state, Value::Dict(_)) {
                        return Err(self.error(format!(
                            "BUILD of {} with {} (only an OrderedDict's attributes are read)",
                            target.kind(),
                            state.kind()
                        )));
                    }
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let value = self.global(module, name)?;
                    self.push(value)?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (&module, &name) else {
                        return Err(self.error("STACK_GLOBAL of other than two strings"));
                    };
                    let value = self.global(module.as_bytes(), name.as_bytes())?;
                    self.push(value)?;
                }
                b'.' => return self.pop(),
                other => {
                    return Err(self.error(format!(
                        "opcode 0x{other:02x} ({}) refused: not one a state dict needs",
                        opcode_name(other)
                    )))
                }
            }
        }
    }
}

/// Alternating keys and values as pairs; `None` for an odd count.
fn pairs(items: Vec<Value>) -> Option<Vec<(Value, Value)>> {
    if !items.len().is_multiple_of(2) {
        return None;
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut iter = items.into_iter();
    while let (Some(k), Some(v)) = (iter.next(), iter.next()) {
        out.push((k, v));
    }
    Some(out)
}

/// Python's `raw-unicode-escape` (protocol 0's UNICODE): bytes are Latin-1 except
/// `\uXXXX` and `\UXXXXXXXX`.
fn decode_raw_unicode_escape(bytes: &[u8]) -> Option<String> {
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'\\' {
            let digits = match bytes.get(i + 1) {
                Some(b'u') => 4,
                Some(b'U') => 8,
                _ => 0,
            };
            if digits > 0 {
                let hex = bytes.get(i + 2..i + 2 + digits)?;
                let code = u32::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
                out.push(char::from_u32(code)?);
                i += 2 + digits;
                continue;
            }
        }
        out.push(char::from(b));
        i += 1;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pickle: &[u8]) -> Result<Value, ModelError> {
        Machine::new(pickle, Path::new("test.pt"), "archive/data.pkl").run()
    }

    #[test]
    fn long1_sign_extends() {
        for (bytes, expected) in [
            (&b"\x8a\x01\xff."[..], -1i64),
            (&b"\x8a\x02\x00\x01."[..], 256),
            (&b"\x8a\x00."[..], 0),
            (&b"\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x80."[..], i64::MIN),
        ] {
            match run(bytes) {
                Ok(Value::Int(v)) => assert_eq!(v, expected, "{bytes:?}"),
                other => panic!("{bytes:?}: {other:?}"),
            }
        }
        let wide = run(b"\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x01.");
        assert!(wide.is_err());
    }

    #[test]
    fn raw_unicode_escape_decodes_latin1_and_escapes() {
        assert_eq!(
            decode_raw_unicode_escape(b"a\xe9\\u20ac\\U0001f916\\x").as_deref(),
            Some("a\u{e9}\u{20ac}\u{1f916}\\x")
        );
        assert_eq!(decode_raw_unicode_escape(b"\\u12"), None);
        assert_eq!(decode_raw_unicode_escape(b"\\Ud800dc00"), None);
    }

    #[test]
    fn stack_underflow_and_marks_are_errors() {
        for pickle in [&b"."[..], b"(.", b"t.", b"\x85.", b"u.", b"(}u.", b"Na."] {
            assert!(run(pickle).is_err(), "{pickle:?}");
        }
    }

    #[test]
    fn memo_of_a_never_stored_entry_is_an_error() {
        let error = run(b"h\x05.").unwrap_err().to_string();
        assert!(error.contains("memo entry 5"), "{error}");
    }
}
