//! The CUDA C sources of every kernel (embedded at build time), their NVRTC compilation and
//! the per-process cache of compiled PTX.
//!
//! Sources are compiled at start-up for the device's own compute capability (PTX for
//! `compute_XY`, which the driver turns into machine code for that chip), once per process
//! and architecture; CI compiles them for `compute_90` (H100/H200) and `compute_87` (Orin)
//! without a GPU, so a kernel that does not compile fails the build's tests.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use cudarc::nvrtc::{CompileOptions, Ptx};

use super::CudaError;

/// Helpers prepended to every source (NVRTC is given no include path for our files).
pub const COMMON: &str = include_str!("kernels/common.cuh");

/// One `.cu` file and the `extern "C"` kernels it defines.
#[derive(Debug, Clone, Copy)]
pub struct KernelSource {
    pub name: &'static str,
    pub source: &'static str,
    pub functions: &'static [&'static str],
}

pub const VISION: KernelSource = KernelSource {
    name: "vision.cu",
    source: include_str!("kernels/vision.cu"),
    functions: &[
        "im2col_f32",
        "vit_assemble_tokens",
        "layer_norm_f16",
        "bias_act_f16",
        "qkv_bias_split_f16",
        "add_bias_f32",
        "softmax_rows_f16",
        "concat_features_f16",
        "fake_quant_f16",
    ],
};

pub const LLAMA: KernelSource = KernelSource {
    name: "llama.cu",
    source: include_str!("kernels/llama.cu"),
    functions: &[
        "assemble_prefill",
        "embed_decode",
        "rms_norm_f16",
        "rope_cache_write",
        "silu_mul_f16",
        "decode_attention",
        "decode_attention_split",
        "argmax_advance",
    ],
};

pub const GEMV: KernelSource = KernelSource {
    name: "gemv.cu",
    source: include_str!("kernels/gemv.cu"),
    functions: &[
        "gemv_f16",
        "gemv_i8",
        "gemv_i4",
        "gemv_i8_wide",
        "gemv_i4_wide",
        "gemv_i8_persistent",
        "gemv_i4_persistent",
        "gemv_f16_tc",
        "gemv_i8_tc",
        "gemv_i4_tc",
        "gemv_f16_tc_norm",
        "gemv_i8_tc_norm",
        "gemv_i4_tc_norm",
    ],
};

pub const UTIL: KernelSource = KernelSource {
    name: "util.cu",
    source: include_str!("kernels/util.cu"),
    functions: &[
        "fill_uniform_f16",
        "fill_uniform_f32",
        "quantize_rows_i8",
        "quantize_groups_i4",
    ],
};

pub const OFT: KernelSource = KernelSource {
    name: "oft.cu",
    source: include_str!("kernels/oft.cu"),
    functions: &["rms_norm_f32", "bias_relu_f32", "bias_relu_add_f32"],
};

/// Every kernel source of the backend.
pub const SOURCES: [KernelSource; 5] = [VISION, LLAMA, GEMV, UTIL, OFT];

/// The architectures CI compiles for: H100/H200 (Hopper) and Jetson Orin.
pub const CI_ARCHS: [&str; 2] = ["compute_90", "compute_87"];

impl KernelSource {
    /// The text handed to NVRTC: the common helpers, then this file.
    pub fn full_source(&self) -> String {
        format!("{COMMON}\n#line 1 \"{}\"\n{}", self.name, self.source)
    }
}

/// Compiles one source to PTX for `arch` (e.g. `compute_90`). Precise division, square root
/// and no flush-to-zero: parity with the CPU reference matters more than the last percent.
/// NVRTC and its builtins library are loaded first ([`super::libs::ensure_nvrtc`]), so a
/// machine without them gets an error naming the library, never cudarc's panic.
pub fn compile(source: &KernelSource, arch: &'static str) -> Result<Ptx, CudaError> {
    super::libs::ensure_nvrtc()?;
    let options = CompileOptions {
        arch: Some(arch),
        ftz: Some(false),
        prec_div: Some(true),
        prec_sqrt: Some(true),
        fmad: Some(true),
        options: vec!["--std=c++17".into()],
        name: Some(source.name.into()),
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(source.full_source(), options).map_err(|e| {
        let log = match &e {
            cudarc::nvrtc::CompileError::CompileError { log, .. } => {
                log.to_string_lossy().into_owned()
            }
            other => format!("{other:?}"),
        };
        CudaError::Compile {
            kernel: source.name,
            arch,
            log,
        }
    })
}

type PtxCache = Mutex<HashMap<(&'static str, &'static str), String>>;

/// Compiles `source` for `arch` once per process; later calls return the cached PTX text.
pub fn cached_ptx(source: &KernelSource, arch: &'static str) -> Result<String, CudaError> {
    static CACHE: OnceLock<PtxCache> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let key = (source.name, arch);
    if let Some(ptx) = cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
        return Ok(ptx);
    }
    let ptx = compile(source, arch)?.to_src();
    if let Ok(mut c) = cache.lock() {
        c.insert(key, ptx.clone());
    }
    Ok(ptx)
}

/// The NVRTC architecture name for a compute capability (`compute_90` for 9.0).
pub fn arch_for(major: i32, minor: i32) -> Option<&'static str> {
    Some(match (major, minor) {
        (7, 5) => "compute_75",
        (8, 0) => "compute_80",
        (8, 6) => "compute_86",
        (8, 7) => "compute_87",
        (8, 9) => "compute_89",
        (9, 0) => "compute_90",
        (10, 0) => "compute_100",
        (12, 0) => "compute_120",
        _ => return None,
    })
}

/// The parameter names of `kernel` in `source`, in order (tests that the host's argument
/// lists follow the kernels' signatures).
#[cfg(test)]
pub(crate) fn kernel_parameters(source: &KernelSource, kernel: &str) -> Vec<String> {
    let text = source.source;
    let start = text
        .find(&format!(" {kernel}("))
        .unwrap_or_else(|| panic!("{kernel} not in {}", source.name));
    let list = &text[start + kernel.len() + 2..];
    let list = &list[..list.find(')').unwrap_or(list.len())];
    list.split(',')
        .map(|p| {
            p.split_whitespace()
                .last()
                .unwrap_or_default()
                .trim_start_matches('*')
                .to_string()
        })
        .collect()
}
