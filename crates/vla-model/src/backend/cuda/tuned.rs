//! cuBLASLt GEMMs whose algorithm is picked by timing (a benchmark variant, switched on with
//! [`super::device::Gpu::set_tuned_gemms`]).
//!
//! The vision GEMMs have few rows (one per token, about 260) and the prefill's about 280, so
//! a GEMM of width 1024 covers only a few dozen 128×128 tiles of a 132-multiprocessor GPU;
//! cuBLAS's default heuristic then picks one kernel for the shape without trying. Here the
//! first GEMM of each shape asks cuBLASLt for up to [`CANDIDATES`] algorithms for it, runs
//! each on a scratch output, and keeps the fastest for every later call of that shape,
//! including the ones a CUDA graph captures. Tuning synchronises the stream, so every shape
//! must be seen once before a capture (a shape first seen while capturing is an error).

use std::collections::HashMap;
use std::ffi::c_void;
use std::time::Instant;

use cudarc::cublaslt::{result as lt_result, sys as lt};

use super::device::{Dt, Gemm};
use super::CudaError;

/// Algorithms the heuristic is asked for per shape.
pub const CANDIDATES: usize = 8;
/// Back-to-back runs of each candidate per timing.
const TIMED_RUNS: usize = 5;

/// What the algorithm choice depends on: everything but the pointers and α.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Shape {
    trans: (bool, bool),
    mnk: (usize, usize, usize),
    types: (Dt, Dt, Dt),
    ld: (usize, usize, usize),
    strides: (usize, usize, usize),
    batch: usize,
    accumulate: bool,
    /// Byte alignment of A, B and C (pointer and batch stride), up to 256.
    align: (u32, u32, u32),
}

/// The largest power of two up to 256 dividing `ptr` and (for batches) `stride_bytes`.
pub fn alignment(ptr: u64, stride_bytes: u64, batched: bool) -> u32 {
    let mut v = ptr | 256;
    if batched {
        v |= stride_bytes | 256;
    }
    1 << v.trailing_zeros().min(8)
}

fn data_type(t: Dt) -> lt::cudaDataType {
    match t {
        Dt::F16 => lt::cudaDataType::CUDA_R_16F,
        Dt::F32 => lt::cudaDataType::CUDA_R_32F,
    }
}

fn element_bytes(t: Dt) -> usize {
    match t {
        Dt::F16 => 2,
        Dt::F32 => 4,
    }
}

fn lt_error(op: &'static str) -> impl Fn(cudarc::cublaslt::result::CublasError) -> CudaError {
    move |e| CudaError::Cublas {
        op,
        message: format!("{e:?}"),
    }
}

/// The descriptors of one shape and the algorithm chosen for it.
struct Plan {
    desc: lt::cublasLtMatmulDesc_t,
    layouts: [lt::cublasLtMatrixLayout_t; 3],
    algo: lt::cublasLtMatmulAlgo_t,
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: the descriptors were created for this plan and are destroyed once, here;
        // failures while tearing down leave nothing to recover.
        unsafe {
            let _ = lt_result::destroy_matmul_desc(self.desc);
            for layout in self.layouts {
                let _ = lt_result::destroy_matrix_layout(layout);
            }
        }
    }
}

/// What a GEMM needs from the device around it.
pub struct Device<'a> {
    pub stream: lt::cudaStream_t,
    pub workspace: (u64, usize),
    /// Whether the stream is being captured into a graph (no tuning then).
    pub capturing: bool,
    pub sync: &'a dyn Fn() -> Result<(), CudaError>,
    /// A zeroed scratch allocation of at least the given bytes, and its address.
    pub scratch: &'a dyn Fn(usize) -> Result<(u64, Box<dyn std::any::Any>), CudaError>,
}

/// A cuBLASLt handle and the plans of the shapes seen so far.
pub struct GemmTuner {
    handle: lt::cublasLtHandle_t,
    plans: HashMap<Shape, Plan>,
}

// SAFETY: the handle and descriptors are only used through `&mut GemmTuner`, which the
// owning `Gpu` hands out under a mutex; cuBLASLt handles may move between threads.
unsafe impl Send for GemmTuner {}

impl Drop for GemmTuner {
    fn drop(&mut self) {
        self.plans.clear();
        // SAFETY: created in `new`, destroyed once; the plans using it are gone.
        unsafe {
            let _ = lt_result::destroy_handle(self.handle);
        }
    }
}

impl std::fmt::Debug for GemmTuner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GemmTuner")
            .field("shapes", &self.plans.len())
            .finish()
    }
}

impl GemmTuner {
    pub fn new() -> Result<Self, CudaError> {
        Ok(Self {
            handle: lt_result::create_handle().map_err(lt_error("cublasLtCreate"))?,
            plans: HashMap::new(),
        })
    }

    /// Shapes tuned so far.
    pub fn shapes(&self) -> usize {
        self.plans.len()
    }

    /// `g` with the fastest algorithm for its shape (tuned now if the shape is new).
    pub fn gemm(&mut self, g: &Gemm, device: &Device) -> Result<(), CudaError> {
        let batched = g.batch > 1;
        let shape = Shape {
            trans: (g.trans_a, g.trans_b),
            mnk: (g.m, g.n, g.k),
            types: (g.a_type, g.b_type, g.c_type),
            ld: (g.lda, g.ldb, g.ldc),
            strides: (g.stride_a, g.stride_b, g.stride_c),
            batch: g.batch,
            accumulate: g.beta != 0.0,
            align: (
                alignment(g.a, (g.stride_a * element_bytes(g.a_type)) as u64, batched),
                alignment(g.b, (g.stride_b * element_bytes(g.b_type)) as u64, batched),
                alignment(g.c, (g.stride_c * element_bytes(g.c_type)) as u64, batched),
            ),
        };
        if !self.plans.contains_key(&shape) {
            if device.capturing {
                return Err(CudaError::Unsupported {
                    what: format!("tuned GEMM {}x{}x{}", g.m, g.n, g.k),
                    message: "shape first seen while capturing a graph; run it once before".into(),
                });
            }
            let plan = self.tune(g, &shape, device)?;
            self.plans.insert(shape, plan);
        }
        let plan = self.plans.get(&shape).ok_or_else(|| CudaError::Shape {
            op: "tuned gemm",
            message: "plan missing".into(),
        })?;
        self.run(plan, g, g.c, device)
    }

    fn run(&self, plan: &Plan, g: &Gemm, c: u64, device: &Device) -> Result<(), CudaError> {
        let (alpha, beta) = (g.alpha, g.beta);
        // SAFETY: the layouts describe `g`'s operands, which its caller keeps inside their
        // buffers (as for `Gpu::gemm`); `c` is `g.c` or a scratch buffer of C's extent; the
        // workspace is the lane's preallocated one; α/β are f32 as the descriptor's scale type.
        unsafe {
            lt_result::matmul(
                self.handle,
                plan.desc,
                (&alpha as *const f32).cast(),
                (&beta as *const f32).cast(),
                g.a as *const c_void,
                plan.layouts[0],
                g.b as *const c_void,
                plan.layouts[1],
                c as *const c_void,
                plan.layouts[2],
                c as *mut c_void,
                plan.layouts[2],
                &plan.algo,
                device.workspace.0 as *mut c_void,
                device.workspace.1,
                device.stream,
            )
        }
        .map_err(lt_error("cublasLtMatmul"))
    }

    /// Descriptors for `g`, the heuristic's candidates, each timed on a scratch C.
    fn tune(&self, g: &Gemm, shape: &Shape, device: &Device) -> Result<Plan, CudaError> {
        let i64_of = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        let layout = |t: Dt, rows: usize, cols: usize, ld: usize, stride: usize| {
            let l =
                lt_result::create_matrix_layout(data_type(t), rows as u64, cols as u64, i64_of(ld))
                    .map_err(lt_error("cublasLtMatrixLayoutCreate"))?;
            if g.batch > 1 {
                let count = i32::try_from(g.batch).unwrap_or(i32::MAX);
                let offset = i64_of(stride);
                // SAFETY: `l` was just created; the attribute values are an i32 and an i64
                // as cuBLASLt documents for these two attributes.
                unsafe {
                    lt_result::set_matrix_layout_attribute(
                        l,
                        lt::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                        (&count as *const i32).cast(),
                        std::mem::size_of::<i32>(),
                    )
                    .and_then(|()| {
                        lt_result::set_matrix_layout_attribute(
                            l,
                            lt::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                            (&offset as *const i64).cast(),
                            std::mem::size_of::<i64>(),
                        )
                    })
                    .map_err(lt_error("cublasLtMatrixLayoutSetAttribute"))?;
                }
            }
            Ok::<_, CudaError>(l)
        };
        let (a_rows, a_cols) = if g.trans_a { (g.k, g.m) } else { (g.m, g.k) };
        let (b_rows, b_cols) = if g.trans_b { (g.n, g.k) } else { (g.k, g.n) };
        let desc = lt_result::create_matmul_desc(
            lt::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            lt::cudaDataType::CUDA_R_32F,
        )
        .map_err(lt_error("cublasLtMatmulDescCreate"))?;
        // The plan owns the descriptors from here on (dropped on any error below).
        let mut plan = Plan {
            desc,
            layouts: [std::ptr::null_mut(); 3],
            // SAFETY: an opaque array of integers; all zeros is a valid (unused) value.
            algo: unsafe { std::mem::zeroed() },
        };
        plan.layouts[0] = layout(g.a_type, a_rows, a_cols, g.lda, g.stride_a)?;
        plan.layouts[1] = layout(g.b_type, b_rows, b_cols, g.ldb, g.stride_b)?;
        plan.layouts[2] = layout(g.c_type, g.m, g.n, g.ldc, g.stride_c)?;
        for (attr, value) in [
            (
                lt::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                i32::from(g.trans_a),
            ),
            (
                lt::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB,
                i32::from(g.trans_b),
            ),
        ] {
            // SAFETY: the descriptor is live; the transpose attributes take an i32
            // cublasOperation_t (0 = N, 1 = T).
            unsafe {
                lt_result::set_matmul_desc_attribute(
                    plan.desc,
                    attr,
                    (&value as *const i32).cast(),
                    std::mem::size_of::<i32>(),
                )
            }
            .map_err(lt_error("cublasLtMatmulDescSetAttribute"))?;
        }
        let pref =
            lt_result::create_matmul_pref().map_err(lt_error("cublasLtMatmulPreferenceCreate"))?;
        let workspace = device.workspace.1 as u64;
        let (align_a, align_b, align_c) = shape.align;
        let mut results: [lt::cublasLtMatmulHeuristicResult_t; CANDIDATES] =
            // SAFETY: plain C structs of integers and floats, written by the heuristic.
            unsafe { std::mem::zeroed() };
        let mut count = 0i32;
        // SAFETY: `pref` is live until destroyed below; the workspace size is a u64 and the
        // alignments u32, as cuBLASLt documents; `results` holds CANDIDATES entries.
        let status = unsafe {
            let set = |attr, value: *const c_void, size| {
                lt_result::set_matmul_pref_attribute(pref, attr, value, size)
            };
            let pref_attr =
                lt::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES;
            let mut r = set(pref_attr, (&workspace as *const u64).cast(), 8);
            for (attr, value) in [
                (lt::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, align_a),
                (lt::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, align_b),
                (lt::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, align_c),
                (lt::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, align_c),
            ] {
                r = r.and_then(|()| set(attr, (&value as *const u32).cast(), 4));
            }
            let r = r.and_then(|()| {
                lt::cublasLtMatmulAlgoGetHeuristic(
                    self.handle,
                    plan.desc,
                    plan.layouts[0],
                    plan.layouts[1],
                    plan.layouts[2],
                    plan.layouts[2],
                    pref,
                    CANDIDATES as i32,
                    results.as_mut_ptr(),
                    &mut count,
                )
                .result()
            });
            let _ = lt_result::destroy_matmul_pref(pref);
            r
        };
        status.map_err(lt_error("cublasLtMatmulAlgoGetHeuristic"))?;
        // Time every usable candidate on a scratch C of the output's extent.
        let c_extent = (g.batch - 1) * g.stride_c + (g.n - 1) * g.ldc + g.m;
        let (scratch, _keep) = (device.scratch)(c_extent * element_bytes(g.c_type))?;
        let mut best: Option<(f64, lt::cublasLtMatmulAlgo_t)> = None;
        let usable = results
            .iter()
            .take(usize::try_from(count).unwrap_or(0))
            .filter(|r| {
                r.state == lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS
                    && r.workspaceSize <= device.workspace.1
            });
        for candidate in usable {
            plan.algo = candidate.algo;
            // A candidate cuBLASLt rejects at run time is skipped.
            if self.run(&plan, g, scratch, device).is_err() {
                continue;
            }
            (device.sync)()?;
            let t = Instant::now();
            for _ in 0..TIMED_RUNS {
                self.run(&plan, g, scratch, device)?;
            }
            (device.sync)()?;
            let seconds = t.elapsed().as_secs_f64();
            if best.is_none_or(|(b, _)| seconds < b) {
                best = Some((seconds, candidate.algo));
            }
        }
        let Some((_, algo)) = best else {
            return Err(CudaError::Unsupported {
                what: format!("tuned GEMM {}x{}x{}", g.m, g.n, g.k),
                message: format!("none of cuBLASLt's {count} candidates ran"),
            });
        };
        plan.algo = algo;
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::alignment;

    #[test]
    fn alignment_is_the_largest_power_of_two_up_to_256_dividing_pointer_and_stride() {
        assert_eq!(alignment(0x7f00_0000_0000, 0, false), 256);
        assert_eq!(alignment(0x7f00_0000_0010, 0, false), 16);
        assert_eq!(alignment(0x7f00_0000_0000, 144, true), 16);
        assert_eq!(alignment(0x7f00_0000_0000, 144, false), 256);
        assert_eq!(alignment(0x7f00_0000_0002, 512, true), 2);
    }
}
