//! The device: context, the two streams with their cuBLAS handles, the compiled kernels,
//! raw device buffers, kernel launches and the row-major GEMM wrappers everything else uses.
//!
//! Buffers are plain `cuMemAlloc` allocations addressed by raw pointers so that any offset
//! into them can be handed to a kernel or to cuBLAS, and so that a captured CUDA graph can
//! replay the same addresses. Ordering between the streams is explicit (events), not
//! cudarc's per-buffer tracking, which is switched off.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::cublas::sys as blas;
use cudarc::cublas::CudaBlas;
use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaGraph, CudaModule, CudaStream, LaunchConfig,
    PushKernelArg,
};
use cudarc::nvrtc::Ptx;

use super::kernels::{self, KernelSource};
use super::tuned::{self, GemmTuner};
use super::CudaError;

/// A typed device allocation of `len` elements. Freed on drop; errors there are ignored
/// (a failing free means the context is already gone).
#[derive(Debug)]
pub struct DeviceBuffer<T> {
    ptr: CUdeviceptr,
    len: usize,
    ctx: Arc<CudaContext>,
    _type: PhantomData<T>,
}

impl<T> DeviceBuffer<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn bytes(&self) -> usize {
        self.len * std::mem::size_of::<T>()
    }

    /// Device address of the first element.
    pub fn ptr(&self) -> u64 {
        self.ptr
    }

    /// Device address of element `index` (not checked: callers pass offsets inside `len`).
    pub fn at(&self, index: usize) -> u64 {
        self.ptr + (index * std::mem::size_of::<T>()) as u64
    }
}

impl<T> Drop for DeviceBuffer<T> {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_ok() {
            // SAFETY: `ptr` came from `malloc_sync` in this context and is freed exactly
            // once, here; no kernel can still use it because the owner synchronises before
            // dropping its buffers (and a free of busy memory waits for the device).
            let _ = unsafe { cudarc::driver::result::free_sync(self.ptr) };
        }
    }
}

/// An FP16 weight matrix `[rows, cols]`, with the rounding residual `W - f16(W)` as a second
/// FP16 matrix when the checkpoint's values are not exact in FP16 (an f32 checkpoint; bf16
/// and f16 checkpoints convert exactly and have none). Products with both parts keep the
/// weights' f32 precision at the cost of a second GEMM.
#[derive(Debug)]
pub struct DeviceMatrix {
    pub hi: DeviceBuffer<half::f16>,
    pub lo: Option<DeviceBuffer<half::f16>>,
}

impl DeviceMatrix {
    pub fn bytes(&self) -> usize {
        self.hi.bytes() + self.lo.as_ref().map_or(0, |l| l.bytes())
    }
}

/// Splits f32 values into FP16 `hi` and the FP16 residual `lo`; `lo` is `None` when every
/// value is exact in FP16.
pub fn split_f16(values: &[f32]) -> (Vec<half::f16>, Option<Vec<half::f16>>) {
    let hi: Vec<half::f16> = values.iter().map(|&v| half::f16::from_f32(v)).collect();
    let lo: Vec<half::f16> = values
        .iter()
        .zip(&hi)
        .map(|(&v, h)| half::f16::from_f32(v - h.to_f32()))
        .collect();
    let exact = lo.iter().all(|l| l.to_f32() == 0.0);
    (hi, if exact { None } else { Some(lo) })
}

/// A kernel argument: a device pointer or a scalar.
#[derive(Debug, Clone, Copy)]
pub enum Arg {
    Ptr(u64),
    I32(i32),
    I64(i64),
    U64(u64),
    F32(f32),
}

impl From<i32> for Arg {
    fn from(v: i32) -> Self {
        Arg::I32(v)
    }
}

impl From<f32> for Arg {
    fn from(v: f32) -> Self {
        Arg::F32(v)
    }
}

/// `usize` → `i32` kernel argument, with an error naming `what` when it does not fit.
pub fn int(what: &'static str, v: usize) -> Result<Arg, CudaError> {
    i32::try_from(v)
        .map(Arg::I32)
        .map_err(|_| CudaError::Shape {
            op: what,
            message: format!("{v} does not fit a 32-bit kernel argument"),
        })
}

/// Which of the two streams work goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// DINOv2, the projector and the language model.
    A,
    /// SigLIP.
    B,
}

/// Element type of a GEMM operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dt {
    F16,
    F32,
}

impl Dt {
    fn cuda(self) -> blas::cudaDataType {
        match self {
            Dt::F16 => blas::cudaDataType::CUDA_R_16F,
            Dt::F32 => blas::cudaDataType::CUDA_R_32F,
        }
    }
}

/// A column-major strided-batched GEMM as cuBLAS sees it: `C = α·op(A)·op(B) + β·C`.
#[derive(Debug, Clone, Copy)]
pub struct Gemm {
    pub trans_a: bool,
    pub trans_b: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: u64,
    pub a_type: Dt,
    pub lda: usize,
    pub stride_a: usize,
    pub b: u64,
    pub b_type: Dt,
    pub ldb: usize,
    pub stride_b: usize,
    pub c: u64,
    pub c_type: Dt,
    pub ldc: usize,
    pub stride_c: usize,
    pub batch: usize,
    pub alpha: f32,
    pub beta: f32,
}

impl Gemm {
    /// Row-major `out[rows, out_features] (+)= x[rows, in_features] · w[out_features,
    /// in_features]ᵀ` (x and w of one type) in cuBLAS's column-major terms:
    /// `outᵀ = w (stored [k, n] column-major → op T) · xᵀ`.
    pub fn row_major_linear(
        rows: usize,
        out_features: usize,
        in_features: usize,
        (x, w, in_type): (u64, u64, Dt),
        (out, out_type): (u64, Dt),
        accumulate: bool,
    ) -> Self {
        Gemm {
            trans_a: true,
            trans_b: false,
            m: out_features,
            n: rows,
            k: in_features,
            a: w,
            a_type: in_type,
            lda: in_features,
            stride_a: 0,
            b: x,
            b_type: in_type,
            ldb: in_features,
            stride_b: 0,
            c: out,
            c_type: out_type,
            ldc: out_features,
            stride_c: 0,
            batch: 1,
            alpha: 1.0,
            beta: if accumulate { 1.0 } else { 0.0 },
        }
    }
}

/// Every kernel of [`kernels::SOURCES`], loaded from the PTX compiled for this device.
#[derive(Debug)]
pub struct Kernels {
    _modules: Vec<Arc<CudaModule>>,
    pub im2col_f32: CudaFunction,
    pub vit_assemble_tokens: CudaFunction,
    pub layer_norm_f16: CudaFunction,
    pub bias_act_f16: CudaFunction,
    pub qkv_bias_split_f16: CudaFunction,
    pub add_bias_f32: CudaFunction,
    pub softmax_rows_f16: CudaFunction,
    pub concat_features_f16: CudaFunction,
    pub fake_quant_f16: CudaFunction,
    pub assemble_prefill: CudaFunction,
    pub embed_decode: CudaFunction,
    pub rms_norm_f16: CudaFunction,
    pub rope_cache_write: CudaFunction,
    pub silu_mul_f16: CudaFunction,
    pub decode_attention: CudaFunction,
    pub decode_attention_split: CudaFunction,
    pub argmax_advance: CudaFunction,
    pub gemv_f16: CudaFunction,
    pub gemv_i8: CudaFunction,
    pub gemv_i4: CudaFunction,
    pub gemv_i8_wide: CudaFunction,
    pub gemv_i4_wide: CudaFunction,
    pub gemv_i8_persistent: CudaFunction,
    pub gemv_i4_persistent: CudaFunction,
    pub gemv_f16_tc: CudaFunction,
    pub gemv_i8_tc: CudaFunction,
    pub gemv_i4_tc: CudaFunction,
    pub gemv_f16_tc_norm: CudaFunction,
    pub gemv_i8_tc_norm: CudaFunction,
    pub gemv_i4_tc_norm: CudaFunction,
    pub fill_uniform_f16: CudaFunction,
    pub fill_uniform_f32: CudaFunction,
    pub quantize_rows_i8: CudaFunction,
    pub quantize_groups_i4: CudaFunction,
    pub rms_norm_f32: CudaFunction,
    pub bias_relu_f32: CudaFunction,
    pub bias_relu_add_f32: CudaFunction,
}

impl Kernels {
    fn load(ctx: &Arc<CudaContext>, arch: &'static str) -> Result<Self, CudaError> {
        let load = |src: &KernelSource| -> Result<Arc<CudaModule>, CudaError> {
            let ptx = kernels::cached_ptx(src, arch)?;
            ctx.load_module(Ptx::from_src(ptx))
                .map_err(CudaError::driver("cuModuleLoadData"))
        };
        let vision = load(&kernels::VISION)?;
        let llama = load(&kernels::LLAMA)?;
        let gemv = load(&kernels::GEMV)?;
        let util = load(&kernels::UTIL)?;
        let oft = load(&kernels::OFT)?;
        let f = |m: &Arc<CudaModule>, name: &'static str| {
            m.load_function(name).map_err(|e| CudaError::MissingKernel {
                kernel: name,
                message: e.to_string(),
            })
        };
        Ok(Self {
            im2col_f32: f(&vision, "im2col_f32")?,
            vit_assemble_tokens: f(&vision, "vit_assemble_tokens")?,
            layer_norm_f16: f(&vision, "layer_norm_f16")?,
            bias_act_f16: f(&vision, "bias_act_f16")?,
            qkv_bias_split_f16: f(&vision, "qkv_bias_split_f16")?,
            add_bias_f32: f(&vision, "add_bias_f32")?,
            softmax_rows_f16: f(&vision, "softmax_rows_f16")?,
            concat_features_f16: f(&vision, "concat_features_f16")?,
            fake_quant_f16: f(&vision, "fake_quant_f16")?,
            assemble_prefill: f(&llama, "assemble_prefill")?,
            embed_decode: f(&llama, "embed_decode")?,
            rms_norm_f16: f(&llama, "rms_norm_f16")?,
            rope_cache_write: f(&llama, "rope_cache_write")?,
            silu_mul_f16: f(&llama, "silu_mul_f16")?,
            decode_attention: f(&llama, "decode_attention")?,
            decode_attention_split: f(&llama, "decode_attention_split")?,
            argmax_advance: f(&llama, "argmax_advance")?,
            gemv_f16: f(&gemv, "gemv_f16")?,
            gemv_i8: f(&gemv, "gemv_i8")?,
            gemv_i4: f(&gemv, "gemv_i4")?,
            gemv_i8_wide: f(&gemv, "gemv_i8_wide")?,
            gemv_i4_wide: f(&gemv, "gemv_i4_wide")?,
            gemv_i8_persistent: f(&gemv, "gemv_i8_persistent")?,
            gemv_i4_persistent: f(&gemv, "gemv_i4_persistent")?,
            gemv_f16_tc: f(&gemv, "gemv_f16_tc")?,
            gemv_i8_tc: f(&gemv, "gemv_i8_tc")?,
            gemv_i4_tc: f(&gemv, "gemv_i4_tc")?,
            gemv_f16_tc_norm: f(&gemv, "gemv_f16_tc_norm")?,
            gemv_i8_tc_norm: f(&gemv, "gemv_i8_tc_norm")?,
            gemv_i4_tc_norm: f(&gemv, "gemv_i4_tc_norm")?,
            fill_uniform_f16: f(&util, "fill_uniform_f16")?,
            fill_uniform_f32: f(&util, "fill_uniform_f32")?,
            quantize_rows_i8: f(&util, "quantize_rows_i8")?,
            quantize_groups_i4: f(&util, "quantize_groups_i4")?,
            rms_norm_f32: f(&oft, "rms_norm_f32")?,
            bias_relu_f32: f(&oft, "bias_relu_f32")?,
            bias_relu_add_f32: f(&oft, "bias_relu_add_f32")?,
            _modules: vec![vision, llama, gemv, util, oft],
        })
    }
}

/// cuBLAS workspace per handle; set explicitly so that GEMMs can be captured in a graph.
const CUBLAS_WORKSPACE_BYTES: usize = 32 << 20;

/// The GPU with everything the model needs to issue work.
pub struct Gpu {
    pub kernels: Kernels,
    blas: [CudaBlas; 2],
    workspaces: [DeviceBuffer<u8>; 2],
    streams: [Arc<CudaStream>; 2],
    name: String,
    arch: &'static str,
    multiprocessors: u32,
    warp_mma: bool,
    /// cuBLASLt GEMMs with timed algorithm choice, per lane, when switched on (a benchmark
    /// variant: `set_tuned_gemms`).
    tuners: Mutex<Option<[GemmTuner; 2]>>,
    /// Whether `tuners` is set, read without the lock by every GEMM.
    tuned: AtomicBool,
    /// Set while `capture` queues work (tuning cannot run then).
    capturing: AtomicBool,
    ctx: Arc<CudaContext>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("name", &self.name)
            .field("arch", &self.arch)
            .finish()
    }
}

impl Gpu {
    /// Probes the libraries, opens device 0, creates two non-blocking streams with a cuBLAS
    /// handle each, and compiles (or takes from the process cache) and loads every kernel.
    pub fn open() -> Result<Self, CudaError> {
        let ctx = super::probe()?;
        // SAFETY: ordering between streams is done with explicit events everywhere in this
        // backend, and buffers are raw allocations that cudarc's tracking never sees.
        unsafe { ctx.disable_event_tracking() };
        let (major, minor) = ctx.compute_capability().map_err(CudaError::driver(
            "cuDeviceGetAttribute (compute capability)",
        ))?;
        let arch = kernels::arch_for(major, minor).ok_or_else(|| CudaError::NoDevice {
            message: format!("compute capability {major}.{minor} is not supported"),
        })?;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let multiprocessors = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .map_err(CudaError::driver(
                "cuDeviceGetAttribute (multiprocessor count)",
            ))?;
        let multiprocessors = u32::try_from(multiprocessors.max(1)).unwrap_or(1);
        let kernels = Kernels::load(&ctx, arch)?;
        let streams = [
            ctx.new_stream()
                .map_err(CudaError::driver("cuStreamCreate"))?,
            ctx.new_stream()
                .map_err(CudaError::driver("cuStreamCreate"))?,
        ];
        let workspaces = [
            alloc_raw::<u8>(&ctx, CUBLAS_WORKSPACE_BYTES)?,
            alloc_raw::<u8>(&ctx, CUBLAS_WORKSPACE_BYTES)?,
        ];
        let make_blas = |i: usize| -> Result<CudaBlas, CudaError> {
            let handle = CudaBlas::new(streams[i].clone()).map_err(|e| CudaError::Cublas {
                op: "cublasCreate",
                message: e.to_string(),
            })?;
            // SAFETY: the handle is live and the workspace buffer outlives it (both are
            // fields of `Gpu`, the workspaces dropped after the handles).
            unsafe {
                check_blas(
                    "cublasSetWorkspace",
                    blas::cublasSetWorkspace_v2(
                        *handle.handle(),
                        workspaces[i].ptr() as *mut std::ffi::c_void,
                        CUBLAS_WORKSPACE_BYTES,
                    ),
                )?;
            }
            Ok(handle)
        };
        let blas = [make_blas(0)?, make_blas(1)?];
        Ok(Self {
            kernels,
            blas,
            workspaces,
            streams,
            name,
            arch,
            multiprocessors,
            // mma.sync m16n8k16 with f16 operands (the tensor-core GEMVs) needs 8.0 or later.
            warp_mma: major >= 8,
            tuners: Mutex::new(None),
            tuned: AtomicBool::new(false),
            capturing: AtomicBool::new(false),
            ctx,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn arch(&self) -> &'static str {
        self.arch
    }

    /// Streaming multiprocessors of the device (sizes the grids of persistent kernels).
    pub fn multiprocessors(&self) -> u32 {
        self.multiprocessors
    }

    /// Whether the tensor-core GEMV kernels (`mma.sync` m16n8k16 f16) can run here.
    pub fn has_warp_mma(&self) -> bool {
        self.warp_mma
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    pub fn stream(&self, lane: Lane) -> &Arc<CudaStream> {
        match lane {
            Lane::A => &self.streams[0],
            Lane::B => &self.streams[1],
        }
    }

    /// Makes the context current on the calling thread (the policy may move threads).
    pub fn bind(&self) -> Result<(), CudaError> {
        self.ctx
            .bind_to_thread()
            .map_err(CudaError::driver("cuCtxSetCurrent"))
    }

    /// Zero-filled buffer of `len` elements.
    pub fn alloc<T>(&self, len: usize) -> Result<DeviceBuffer<T>, CudaError> {
        let buf = alloc_raw::<T>(&self.ctx, len)?;
        // SAFETY: the range is exactly the allocation just made.
        unsafe {
            cudarc::driver::result::memset_d8_sync(buf.ptr(), 0, buf.bytes().max(1))
                .map_err(CudaError::driver("cuMemsetD8"))?;
        }
        Ok(buf)
    }

    /// A new buffer holding `host`.
    pub fn upload<T: Copy>(&self, host: &[T]) -> Result<DeviceBuffer<T>, CudaError> {
        let buf = self.alloc::<T>(host.len())?;
        self.write(&buf, 0, host)?;
        Ok(buf)
    }

    /// Copies `host` to `buf[offset..]` and waits for it.
    pub fn write<T: Copy>(
        &self,
        buf: &DeviceBuffer<T>,
        offset: usize,
        host: &[T],
    ) -> Result<(), CudaError> {
        if offset + host.len() > buf.len() {
            return Err(CudaError::Shape {
                op: "host to device copy",
                message: format!(
                    "{} values at {offset} into a buffer of {}",
                    host.len(),
                    buf.len()
                ),
            });
        }
        if host.is_empty() {
            return Ok(());
        }
        // A synchronous copy runs on the legacy stream, which does not order against our
        // non-blocking streams: finish their work first.
        self.sync(Lane::A)?;
        self.sync(Lane::B)?;
        // SAFETY: the destination range lies inside `buf` (checked above) and `host` is a
        // valid slice for the duration of this synchronous copy.
        unsafe {
            cudarc::driver::result::memcpy_htod_sync(buf.at(offset), host)
                .map_err(CudaError::driver("cuMemcpyHtoD"))
        }
    }

    /// Copies `buf[offset..offset + host.len()]` to `host` after the work queued on `lane`.
    pub fn read<T: Copy>(
        &self,
        lane: Lane,
        buf: &DeviceBuffer<T>,
        offset: usize,
        host: &mut [T],
    ) -> Result<(), CudaError> {
        if offset + host.len() > buf.len() {
            return Err(CudaError::Shape {
                op: "device to host copy",
                message: format!(
                    "{} values at {offset} from a buffer of {}",
                    host.len(),
                    buf.len()
                ),
            });
        }
        self.sync(lane)?;
        self.sync(Lane::A)?;
        // SAFETY: the source range lies inside `buf` (checked above), the stream that wrote
        // it is synchronised, and `host` is a valid mutable slice for this synchronous copy.
        unsafe {
            cudarc::driver::result::memcpy_dtoh_sync(host, buf.at(offset))
                .map_err(CudaError::driver("cuMemcpyDtoH"))
        }
    }

    /// Asynchronous host → device copy on `lane` from pinned memory.
    pub fn write_async_pinned(
        &self,
        lane: Lane,
        dst: &DeviceBuffer<f32>,
        src: &cudarc::driver::PinnedHostSlice<f32>,
    ) -> Result<(), CudaError> {
        if src.len() != dst.len() {
            return Err(CudaError::Shape {
                op: "pinned upload",
                message: format!("{} host values into {}", src.len(), dst.len()),
            });
        }
        let host = src.as_slice().map_err(CudaError::driver("pinned slice"))?;
        // SAFETY: equal lengths (checked above); the pinned buffer stays alive and unchanged
        // until the caller synchronises `lane`, which it does before writing it again.
        unsafe {
            cudarc::driver::result::memcpy_htod_async(
                dst.ptr(),
                host,
                self.stream(lane).cu_stream(),
            )
            .map_err(CudaError::driver("cuMemcpyHtoDAsync"))
        }
    }

    /// Device-to-device copy of `bytes` on `lane`.
    pub fn copy_d2d(&self, lane: Lane, dst: u64, src: u64, bytes: usize) -> Result<(), CudaError> {
        // SAFETY: callers pass ranges inside their own buffers (the bandwidth probe copies
        // between two buffers of at least `bytes`; the OFT runner copies the projector
        // output, `patches · hidden` values, into the row of its camera in a prefix buffer
        // sized for every camera, after checking both shapes at load).
        unsafe {
            cudarc::driver::result::memcpy_dtod_async(
                dst,
                src,
                bytes,
                self.stream(lane).cu_stream(),
            )
            .map_err(CudaError::driver("cuMemcpyDtoDAsync"))
        }
    }

    pub fn sync(&self, lane: Lane) -> Result<(), CudaError> {
        self.stream(lane)
            .synchronize()
            .map_err(CudaError::driver("cuStreamSynchronize"))
    }

    pub fn event(&self) -> Result<CudaEvent, CudaError> {
        self.ctx
            .new_event(Some(
                cudarc::driver::sys::CUevent_flags::CU_EVENT_DISABLE_TIMING,
            ))
            .map_err(CudaError::driver("cuEventCreate"))
    }

    /// `to` waits for everything queued so far on `from` (record + wait, graph-capturable).
    pub fn join(&self, event: &CudaEvent, from: Lane, to: Lane) -> Result<(), CudaError> {
        event
            .record(self.stream(from))
            .map_err(CudaError::driver("cuEventRecord"))?;
        self.stream(to)
            .wait(event)
            .map_err(CudaError::driver("cuStreamWaitEvent"))
    }

    /// Launches `func` on `lane` with `grid` blocks of `block` threads.
    pub fn launch(
        &self,
        lane: Lane,
        func: &CudaFunction,
        grid: u32,
        block: u32,
        shared_bytes: u32,
        args: &[Arg],
    ) -> Result<(), CudaError> {
        let stream = self.stream(lane);
        let mut builder = stream.launch_builder(func);
        for a in args {
            match a {
                Arg::Ptr(p) => builder.arg(p),
                Arg::I32(v) => builder.arg(v),
                Arg::I64(v) => builder.arg(v),
                Arg::U64(v) => builder.arg(v),
                Arg::F32(v) => builder.arg(v),
            };
        }
        let cfg = LaunchConfig {
            grid_dim: (grid.max(1), 1, 1),
            block_dim: (block, 1, 1),
            shared_mem_bytes: shared_bytes,
        };
        // SAFETY: every kernel of this backend takes exactly the arguments its callers pass
        // (pointer, int, long, float in the `.cu` signature order), and every pointer
        // addresses a live buffer large enough for the sizes passed alongside it (the
        // callers size their scratch buffers for the largest shape they launch).
        unsafe { builder.launch(cfg) }
            .map(|_| ())
            .map_err(CudaError::driver("cuLaunchKernel"))
    }

    /// Launch for an element-wise kernel over `total` elements (grid-stride loops).
    pub fn launch_elementwise(
        &self,
        lane: Lane,
        func: &CudaFunction,
        total: usize,
        args: &[Arg],
    ) -> Result<(), CudaError> {
        let block = 256u32;
        let grid = total.div_ceil(block as usize).clamp(1, 65_535 * 8) as u32;
        self.launch(lane, func, grid, block, 0, args)
    }

    /// GEMMs through cuBLASLt with the algorithm of each shape picked by timing
    /// ([`super::tuned`]), or (`false`, the default) through cuBLAS's own choice. Every shape
    /// must run once outside a graph capture after switching on.
    pub fn set_tuned_gemms(&self, on: bool) -> Result<(), CudaError> {
        let mut tuners = self.tuners.lock().map_err(|_| CudaError::Shape {
            op: "tuned gemm",
            message: "tuner lock poisoned".into(),
        })?;
        *tuners = if on {
            Some([GemmTuner::new()?, GemmTuner::new()?])
        } else {
            None
        };
        self.tuned.store(on, Ordering::SeqCst);
        Ok(())
    }

    /// Shapes tuned so far on both lanes (0 when tuning is off).
    pub fn tuned_shapes(&self) -> usize {
        self.tuners
            .lock()
            .ok()
            .and_then(|t| t.as_ref().map(|t| t[0].shapes() + t[1].shapes()))
            .unwrap_or(0)
    }

    /// One cuBLAS `GemmStridedBatchedEx` (or `GemmEx` when `batch == 1`) on `lane`, FP32
    /// compute; through the tuned cuBLASLt path when that is on.
    pub fn gemm(&self, lane: Lane, g: &Gemm) -> Result<(), CudaError> {
        // The policy's GEMMs take cuBLAS directly, without the tuners' lock.
        if !self.tuned.load(Ordering::SeqCst) {
            return self.cublas_gemm(lane, g);
        }
        if let Ok(mut tuners) = self.tuners.lock() {
            if let Some(tuners) = tuners.as_mut() {
                let i = lane as usize;
                let stream = self.stream(lane);
                let sync = || self.sync(lane);
                let scratch = |bytes: usize| -> Result<(u64, Box<dyn std::any::Any>), CudaError> {
                    let buf = self.alloc::<u8>(bytes)?;
                    Ok((buf.ptr(), Box::new(buf)))
                };
                let device = tuned::Device {
                    stream: stream.cu_stream() as _,
                    workspace: (self.workspaces[i].ptr(), CUBLAS_WORKSPACE_BYTES),
                    capturing: self.capturing.load(Ordering::SeqCst),
                    sync: &sync,
                    scratch: &scratch,
                };
                return tuners[i].gemm(g, &device);
            }
        }
        self.cublas_gemm(lane, g)
    }

    /// `g` through cuBLAS, which picks the algorithm.
    fn cublas_gemm(&self, lane: Lane, g: &Gemm) -> Result<(), CudaError> {
        let handle = match lane {
            Lane::A => *self.blas[0].handle(),
            Lane::B => *self.blas[1].handle(),
        };
        let op = |t: bool| {
            if t {
                blas::cublasOperation_t::CUBLAS_OP_T
            } else {
                blas::cublasOperation_t::CUBLAS_OP_N
            }
        };
        let dim = |v: usize, what: &'static str| -> Result<i32, CudaError> {
            i32::try_from(v).map_err(|_| CudaError::Shape {
                op: "gemm",
                message: format!("{what} = {v} exceeds cuBLAS's 32-bit range"),
            })
        };
        let (m, n, k) = (dim(g.m, "m")?, dim(g.n, "n")?, dim(g.k, "k")?);
        let (lda, ldb, ldc) = (dim(g.lda, "lda")?, dim(g.ldb, "ldb")?, dim(g.ldc, "ldc")?);
        let batch = dim(g.batch, "batch")?;
        let (alpha, beta) = (g.alpha, g.beta);
        // SAFETY: callers describe operands that lie inside their buffers (shapes derive from
        // the same dimensions the buffers were sized with); alpha/beta are host f32 values
        // matching CUBLAS_COMPUTE_32F, and the handle is bound to `lane`'s stream.
        let status = unsafe {
            if g.batch == 1 {
                blas::cublasGemmEx(
                    handle,
                    op(g.trans_a),
                    op(g.trans_b),
                    m,
                    n,
                    k,
                    (&alpha as *const f32).cast(),
                    g.a as *const std::ffi::c_void,
                    g.a_type.cuda(),
                    lda,
                    g.b as *const std::ffi::c_void,
                    g.b_type.cuda(),
                    ldb,
                    (&beta as *const f32).cast(),
                    g.c as *mut std::ffi::c_void,
                    g.c_type.cuda(),
                    ldc,
                    blas::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    blas::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )
            } else {
                blas::cublasGemmStridedBatchedEx(
                    handle,
                    op(g.trans_a),
                    op(g.trans_b),
                    m,
                    n,
                    k,
                    (&alpha as *const f32).cast(),
                    g.a as *const std::ffi::c_void,
                    g.a_type.cuda(),
                    lda,
                    g.stride_a as i64,
                    g.b as *const std::ffi::c_void,
                    g.b_type.cuda(),
                    ldb,
                    g.stride_b as i64,
                    (&beta as *const f32).cast(),
                    g.c as *mut std::ffi::c_void,
                    g.c_type.cuda(),
                    ldc,
                    g.stride_c as i64,
                    batch,
                    blas::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    blas::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )
            }
        };
        check_blas("cublasGemmEx", status)
    }

    /// Row-major `out[m, n] (+)= x[m, k] · (w.hi + w.lo)[n, k]ᵀ`: x and w FP16, out FP32 or
    /// FP16; `accumulate` adds to `out` (β = 1: a residual add). The residual half, when
    /// there is one, is a second GEMM that always adds.
    #[allow(clippy::too_many_arguments)]
    pub fn linear_matrix(
        &self,
        lane: Lane,
        rows: usize,
        out_features: usize,
        in_features: usize,
        x: u64,
        w: &DeviceMatrix,
        out: u64,
        out_type: Dt,
        accumulate: bool,
    ) -> Result<(), CudaError> {
        let hi = Gemm::row_major_linear(
            rows,
            out_features,
            in_features,
            (x, w.hi.ptr(), Dt::F16),
            (out, out_type),
            accumulate,
        );
        self.gemm(lane, &hi)?;
        if let Some(lo) = &w.lo {
            self.gemm(
                lane,
                &Gemm {
                    a: lo.ptr(),
                    beta: 1.0,
                    ..hi
                },
            )?;
        }
        Ok(())
    }

    /// Captures what `queue` issues, starting on lane A (lane B joins through events), as one
    /// instantiated and uploaded CUDA graph; `what` names it in errors. Both lanes are
    /// drained first, so no earlier work lands in the graph.
    pub fn capture(
        &self,
        what: &'static str,
        queue: impl FnOnce() -> Result<(), CudaError>,
    ) -> Result<Graph, CudaError> {
        self.sync(Lane::A)?;
        self.sync(Lane::B)?;
        let stream = self.stream(Lane::A).clone();
        stream
            .begin_capture(
                cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
            )
            .map_err(CudaError::driver("cuStreamBeginCapture"))?;
        // End the capture whatever happened while queueing, so the stream is usable again.
        self.capturing.store(true, Ordering::SeqCst);
        let queued = queue();
        self.capturing.store(false, Ordering::SeqCst);
        let graph = stream
            .end_capture(cudarc::driver::sys::CUgraphInstantiate_flags(0))
            .map_err(CudaError::driver("cuStreamEndCapture"))?;
        queued?;
        let graph = graph.ok_or_else(|| CudaError::Shape {
            op: what,
            message: "capture produced an empty graph".into(),
        })?;
        graph.upload().map_err(CudaError::driver("cuGraphUpload"))?;
        Ok(Graph::new(graph))
    }

    /// Launches the fill kernel `kernel` over all of `buf` (the element type is the kernel's).
    fn fill_uniform<T>(
        &self,
        kernel: &CudaFunction,
        buf: &DeviceBuffer<T>,
        seed: u64,
        center: f32,
        scale: f32,
    ) -> Result<(), CudaError> {
        self.launch_elementwise(
            Lane::A,
            kernel,
            buf.len(),
            &[
                Arg::Ptr(buf.ptr()),
                Arg::I64(buf.len() as i64),
                Arg::U64(seed),
                Arg::F32(center),
                Arg::F32(scale),
            ],
        )
    }

    /// Fills `buf` with uniform values in `[center - scale, center + scale)` on the device.
    pub fn fill_uniform_f16(
        &self,
        buf: &DeviceBuffer<half::f16>,
        seed: u64,
        center: f32,
        scale: f32,
    ) -> Result<(), CudaError> {
        self.fill_uniform(&self.kernels.fill_uniform_f16, buf, seed, center, scale)
    }

    pub fn fill_uniform_f32(
        &self,
        buf: &DeviceBuffer<f32>,
        seed: u64,
        center: f32,
        scale: f32,
    ) -> Result<(), CudaError> {
        self.fill_uniform(&self.kernels.fill_uniform_f32, buf, seed, center, scale)
    }
}

fn alloc_raw<T>(ctx: &Arc<CudaContext>, len: usize) -> Result<DeviceBuffer<T>, CudaError> {
    ctx.bind_to_thread()
        .map_err(CudaError::driver("cuCtxSetCurrent"))?;
    let bytes = (len * std::mem::size_of::<T>()).max(1);
    // SAFETY: a plain device allocation in the current context; ownership passes to the
    // returned buffer, which frees it once.
    let ptr =
        unsafe { cudarc::driver::result::malloc_sync(bytes) }.map_err(|e| CudaError::Driver {
            op: "cuMemAlloc",
            source: e,
        })?;
    Ok(DeviceBuffer {
        ptr,
        len,
        ctx: ctx.clone(),
        _type: PhantomData,
    })
}

fn check_blas(op: &'static str, status: blas::cublasStatus_t) -> Result<(), CudaError> {
    if status == blas::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(CudaError::Cublas {
            op,
            message: format!("{status:?}"),
        })
    }
}

/// A captured CUDA graph owned by one model object.
pub struct Graph(CudaGraph);

// SAFETY: CUDA graph objects may be used from any thread as long as calls on one graph are
// not concurrent (CUDA driver docs, "Graph object thread safety"). A `Graph` is only reached
// through `&mut` of its owner or the owner's single-threaded `&self` calls, and the `Policy`
// trait needs `Send` only, never `Sync`, so no two threads touch it at once.
unsafe impl Send for Graph {}

impl Graph {
    pub fn new(graph: CudaGraph) -> Self {
        Self(graph)
    }

    pub fn launch(&self) -> Result<(), CudaError> {
        self.0.launch().map_err(CudaError::driver("cuGraphLaunch"))
    }
}

#[cfg(test)]
mod tests {
    use super::split_f16;

    #[test]
    fn values_exact_in_fp16_need_no_residual() {
        // bf16 values (8 significant bits) and small integers are exact in FP16.
        let bf16_like: Vec<f32> = [0.5f32, -3.0, 1.0 + 1.0 / 128.0, 0.0, -0.015625, 1024.0]
            .into_iter()
            .map(|v| half::bf16::from_f32(v).to_f32())
            .collect();
        let (hi, lo) = split_f16(&bf16_like);
        assert!(lo.is_none());
        for (h, v) in hi.iter().zip(&bf16_like) {
            assert_eq!(h.to_f32(), *v);
        }
    }

    #[test]
    fn the_residual_restores_f32_precision() {
        let values: Vec<f32> = (1..200).map(|i| (i as f32 * 0.377).sin() / 3.0).collect();
        let (hi, lo) = split_f16(&values);
        let lo = lo.expect("f32 values need a residual");
        for ((h, l), v) in hi.iter().zip(&lo).zip(&values) {
            let alone = (h.to_f32() - v).abs();
            let both = (h.to_f32() + l.to_f32() - v).abs();
            // FP16 keeps 11 significant bits, hi + lo about 22, down to the residual's
            // smallest step (the FP16 subnormal 2^-24, so half of it as rounding error).
            let bound = v.abs() * 2f32.powi(-20) + 2f32.powi(-25);
            assert!(both <= bound, "{v}: hi + lo off by {both}");
            assert!(both <= alone);
        }
    }
}
