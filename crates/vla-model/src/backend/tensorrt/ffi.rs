//! The shim's C functions (`shim.cpp`) and [`TrtSession`], which owns one runtime, its
//! engines and their execution contexts and tears them down in order.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use super::TensorrtError;

#[repr(C)]
pub struct VlaTrtRuntime {
    _opaque: [u8; 0],
}
#[repr(C)]
pub struct VlaTrtEngine {
    _opaque: [u8; 0],
}
#[repr(C)]
pub struct VlaTrtContext {
    _opaque: [u8; 0],
}

/// Status codes of `vla_trt_open`.
const NO_LIBRARY: c_int = 1;
const NO_SYMBOL: c_int = 2;
const WRONG_VERSION: c_int = 3;
const RUNTIME_FAILED: c_int = 4;

extern "C" {
    fn vla_trt_header_version() -> i32;
    fn vla_trt_open(
        library: *const c_char,
        out: *mut *mut VlaTrtRuntime,
        error: *mut c_char,
        error_len: usize,
    ) -> c_int;
    fn vla_trt_library_version(rt: *const VlaTrtRuntime) -> i32;
    fn vla_trt_close(rt: *mut VlaTrtRuntime);
    fn vla_trt_deserialize(
        rt: *mut VlaTrtRuntime,
        blob: *const c_void,
        size: usize,
        out: *mut *mut VlaTrtEngine,
        error: *mut c_char,
        error_len: usize,
    ) -> c_int;
    fn vla_trt_engine_destroy(engine: *mut VlaTrtEngine);
    fn vla_trt_engine_io_count(engine: *const VlaTrtEngine) -> i32;
    fn vla_trt_engine_io(
        engine: *const VlaTrtEngine,
        index: i32,
        name: *mut *const c_char,
        is_input: *mut i32,
        data_type: *mut i32,
        nb_dims: *mut i32,
        dims: *mut i64,
    ) -> c_int;
    fn vla_trt_context_create(
        engine: *mut VlaTrtEngine,
        out: *mut *mut VlaTrtContext,
        error: *mut c_char,
        error_len: usize,
    ) -> c_int;
    fn vla_trt_context_destroy(context: *mut VlaTrtContext);
    fn vla_trt_set_address(
        context: *mut VlaTrtContext,
        name: *const c_char,
        address: *mut c_void,
        error: *mut c_char,
        error_len: usize,
    ) -> c_int;
    fn vla_trt_enqueue(
        context: *mut VlaTrtContext,
        stream: *mut c_void,
        error: *mut c_char,
        error_len: usize,
    ) -> c_int;
}

/// Room for one error message from the shim (it truncates longer ones).
const ERROR_LEN: usize = 1024;

fn message(buf: &[u8; ERROR_LEN]) -> String {
    CStr::from_bytes_until_nul(buf)
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|_| String::from_utf8_lossy(buf).into_owned())
}

/// A TensorRT version (`getInferLibVersion`: major · 10000 + minor · 100 + patch in 10.x).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TrtVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl TrtVersion {
    pub fn from_number(n: i32) -> Self {
        let n = n.max(0) as u32;
        Self {
            major: n / 10000,
            minor: n / 100 % 100,
            patch: n % 100,
        }
    }

    /// The version of the headers the shim was compiled against.
    pub fn headers() -> Self {
        // SAFETY: returns a compile-time constant of the shim.
        Self::from_number(unsafe { vla_trt_header_version() })
    }
}

impl std::fmt::Display for TrtVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// `nvinfer1::DataType` values the encoders use.
pub const DATA_TYPE_FLOAT: i32 = 0;
pub const DATA_TYPE_HALF: i32 = 1;

/// One I/O tensor of an engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoTensor {
    pub name: String,
    pub is_input: bool,
    /// `nvinfer1::DataType`
    pub data_type: i32,
    pub shape: Vec<i64>,
}

/// Index of an engine in its [`TrtSession`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineId(usize);

/// Index of an execution context in its [`TrtSession`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextId(usize);

/// One TensorRT runtime (from one opened libnvinfer) with the engines deserialized by it and
/// their execution contexts. Dropping it destroys contexts, engines and the runtime, in that
/// order; the library stays loaded.
pub struct TrtSession {
    runtime: NonNull<VlaTrtRuntime>,
    engines: Vec<NonNull<VlaTrtEngine>>,
    contexts: Vec<NonNull<VlaTrtContext>>,
    library: PathBuf,
    version: TrtVersion,
}

// SAFETY: the session owns every TensorRT object it points to, and all calls on them go
// through `&self`/`&mut self` of this one owner, so moving it to another thread moves the
// objects with it and no two threads use them at once (it is not Sync). TensorRT objects
// have no thread affinity; the CUDA context they use is made current by the caller.
unsafe impl Send for TrtSession {}

impl std::fmt::Debug for TrtSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrtSession")
            .field("library", &self.library)
            .field("version", &self.version)
            .field("engines", &self.engines.len())
            .finish()
    }
}

impl TrtSession {
    /// Opens `library` (a path or a name the dynamic loader resolves), checks that it is
    /// TensorRT 10 and creates a runtime; any error TensorRT logs meanwhile is a failure.
    pub fn open(library: &Path) -> Result<Self, TensorrtError> {
        let c_path = CString::new(library.as_os_str().as_encoded_bytes()).map_err(|_| {
            TensorrtError::Library {
                library: library.display().to_string(),
                message: "the path contains a NUL byte".into(),
            }
        })?;
        let mut raw = std::ptr::null_mut();
        let mut error = [0u8; ERROR_LEN];
        // SAFETY: `c_path` is NUL-terminated, `raw` and `error` are valid for writes of the
        // sizes passed; the shim only writes a runtime pointer on success.
        let status = unsafe {
            vla_trt_open(
                c_path.as_ptr(),
                &mut raw,
                error.as_mut_ptr().cast(),
                ERROR_LEN,
            )
        };
        let text = message(&error);
        let library_name = library.display().to_string();
        match (status, NonNull::new(raw)) {
            (0, Some(runtime)) => {
                // SAFETY: `runtime` was just returned by a successful vla_trt_open.
                let version =
                    TrtVersion::from_number(unsafe { vla_trt_library_version(runtime.as_ptr()) });
                Ok(Self {
                    runtime,
                    engines: Vec::new(),
                    contexts: Vec::new(),
                    library: library.to_path_buf(),
                    version,
                })
            }
            (NO_LIBRARY | NO_SYMBOL, _) => Err(TensorrtError::Library {
                library: library_name,
                message: text,
            }),
            (WRONG_VERSION, _) => Err(TensorrtError::Version {
                library: library_name,
                message: text,
            }),
            (RUNTIME_FAILED, _) => Err(TensorrtError::Runtime { message: text }),
            (code, _) => Err(TensorrtError::Runtime {
                message: format!("vla_trt_open failed with status {code}: {text}"),
            }),
        }
    }

    /// `getInferLibVersion()` of the opened library.
    pub fn version(&self) -> TrtVersion {
        self.version
    }

    pub fn library(&self) -> &Path {
        &self.library
    }

    /// Deserializes a plan; `what` names it in errors.
    pub fn load_engine(&mut self, plan: &[u8], what: &str) -> Result<EngineId, TensorrtError> {
        let mut raw = std::ptr::null_mut();
        let mut error = [0u8; ERROR_LEN];
        // SAFETY: the runtime is live (owned by self), `plan` is valid for `plan.len()` bytes
        // for the call (TensorRT copies what it keeps), the out pointers are valid.
        let status = unsafe {
            vla_trt_deserialize(
                self.runtime.as_ptr(),
                plan.as_ptr().cast(),
                plan.len(),
                &mut raw,
                error.as_mut_ptr().cast(),
                ERROR_LEN,
            )
        };
        match (status, NonNull::new(raw)) {
            (0, Some(engine)) => {
                self.engines.push(engine);
                Ok(EngineId(self.engines.len() - 1))
            }
            _ => Err(TensorrtError::Engine {
                engine: what.to_string(),
                message: message(&error),
            }),
        }
    }

    /// The engine's I/O tensors with their direction, type and shape.
    pub fn io_tensors(&self, engine: EngineId) -> Result<Vec<IoTensor>, TensorrtError> {
        let e = self.engines[engine.0];
        // SAFETY: `e` is a live engine owned by self.
        let count = unsafe { vla_trt_engine_io_count(e.as_ptr()) };
        let mut tensors = Vec::with_capacity(count.max(0) as usize);
        for index in 0..count {
            let mut name: *const c_char = std::ptr::null();
            let (mut is_input, mut data_type, mut nb_dims) = (0i32, 0i32, 0i32);
            let mut dims = [0i64; 8];
            // SAFETY: `e` is live; `dims` holds the 8 values (Dims::MAX_DIMS) the shim may
            // write; the other out pointers are valid.
            let status = unsafe {
                vla_trt_engine_io(
                    e.as_ptr(),
                    index,
                    &mut name,
                    &mut is_input,
                    &mut data_type,
                    &mut nb_dims,
                    dims.as_mut_ptr(),
                )
            };
            if status != 0 || name.is_null() {
                return Err(TensorrtError::Call {
                    op: "getIOTensorName/getTensorShape",
                    message: format!("I/O tensor {index} of {count} has no name or no shape"),
                });
            }
            // SAFETY: the name is a NUL-terminated string owned by the live engine.
            let name = unsafe { CStr::from_ptr(name) }
                .to_string_lossy()
                .into_owned();
            tensors.push(IoTensor {
                name,
                is_input: is_input != 0,
                data_type,
                shape: dims[..nb_dims.clamp(0, 8) as usize].to_vec(),
            });
        }
        Ok(tensors)
    }

    /// A new execution context of `engine` (with its own device scratch memory).
    pub fn create_context(&mut self, engine: EngineId) -> Result<ContextId, TensorrtError> {
        let e = self.engines[engine.0];
        let mut raw = std::ptr::null_mut();
        let mut error = [0u8; ERROR_LEN];
        // SAFETY: `e` is live and owned by self; the out pointers are valid.
        let status = unsafe {
            vla_trt_context_create(e.as_ptr(), &mut raw, error.as_mut_ptr().cast(), ERROR_LEN)
        };
        match (status, NonNull::new(raw)) {
            (0, Some(context)) => {
                self.contexts.push(context);
                Ok(ContextId(self.contexts.len() - 1))
            }
            _ => Err(TensorrtError::Call {
                op: "createExecutionContext",
                message: message(&error),
            }),
        }
    }

    /// Binds the I/O tensor `name` of `context` to `address`.
    ///
    /// # Safety
    /// `address` must point to memory of the tensor's size that the engine may read (input)
    /// or write (output) at every later [`enqueue`](Self::enqueue), and must stay valid for
    /// as long as the context is enqueued.
    pub unsafe fn set_address(
        &mut self,
        context: ContextId,
        name: &str,
        address: u64,
    ) -> Result<(), TensorrtError> {
        let c = self.contexts[context.0];
        let c_name = CString::new(name).map_err(|_| TensorrtError::Call {
            op: "setTensorAddress",
            message: format!("tensor name {name:?} contains a NUL byte"),
        })?;
        let mut error = [0u8; ERROR_LEN];
        // SAFETY: `c` is live; the name is NUL-terminated; the address contract is the
        // caller's (see above).
        let status = unsafe {
            vla_trt_set_address(
                c.as_ptr(),
                c_name.as_ptr(),
                address as *mut c_void,
                error.as_mut_ptr().cast(),
                ERROR_LEN,
            )
        };
        if status == 0 {
            Ok(())
        } else {
            Err(TensorrtError::Call {
                op: "setTensorAddress",
                message: message(&error),
            })
        }
    }

    /// Queues `context` on `stream` (a `CUstream`). Allocates nothing.
    ///
    /// # Safety
    /// `stream` must be a live stream of the CUDA context the engine was deserialized in
    /// (or, with the test library, any value), and every address bound to the context must
    /// still be valid.
    pub unsafe fn enqueue(
        &self,
        context: ContextId,
        stream: *mut c_void,
    ) -> Result<(), TensorrtError> {
        let c = self.contexts[context.0];
        let mut error = [0u8; ERROR_LEN];
        // SAFETY: `c` is live; stream and addresses are the caller's contract (see above).
        let status =
            unsafe { vla_trt_enqueue(c.as_ptr(), stream, error.as_mut_ptr().cast(), ERROR_LEN) };
        if status == 0 {
            Ok(())
        } else {
            Err(TensorrtError::Call {
                op: "enqueueV3",
                message: message(&error),
            })
        }
    }
}

impl Drop for TrtSession {
    fn drop(&mut self) {
        // SAFETY: each pointer is owned by self and destroyed exactly once, contexts before
        // their engines and engines before the runtime that made them.
        unsafe {
            for c in self.contexts.drain(..).rev() {
                vla_trt_context_destroy(c.as_ptr());
            }
            for e in self.engines.drain(..).rev() {
                vla_trt_engine_destroy(e.as_ptr());
            }
            vla_trt_close(self.runtime.as_ptr());
        }
    }
}
