//! Every CUDA kernel source compiles with NVRTC for the H100/H200 (compute_90) and Orin
//! (compute_87). Needs only the NVRTC library, no GPU: found on the loader's path, in a CUDA
//! toolkit or in the `nvidia-cuda-nvrtc` wheel (`scripts/setup.sh` installs it). Skipped with
//! a message when NVRTC is absent, except under CI (`CI` set), where that is a failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use vla_rt::backend::cuda::kernels::{self, CI_ARCHS, SOURCES};
use vla_rt::backend::cuda::libs;

/// Whether NVRTC is there to compile with; without it the test is skipped with a message,
/// except under CI (`CI` set), where every kernel must compile.
fn nvrtc_or_skip() -> bool {
    let found = libs::ensure_loaded(libs::NVRTC).is_some()
        // SAFETY: a dlopen by name only; no symbol is called.
        && unsafe { cudarc::nvrtc::sys::is_culib_present() };
    if !found {
        let msg = "NVRTC (libnvrtc.so) not found: install the nvidia-cuda-nvrtc wheel \
                   (scripts/setup.sh) or put CUDA's lib folder on LD_LIBRARY_PATH";
        if std::env::var_os("CI").is_some() {
            panic!("{msg}; CI must compile every kernel");
        }
        eprintln!("skipped: {msg}");
    }
    found
}

#[test]
fn every_kernel_compiles_with_nvrtc_for_hopper_and_orin() {
    if !nvrtc_or_skip() {
        return;
    }
    let mut compiled = 0;
    for arch in CI_ARCHS {
        for src in SOURCES {
            let ptx = kernels::compile(&src, arch)
                .unwrap_or_else(|e| panic!("{e}"))
                .to_src();
            for func in src.functions {
                assert!(
                    ptx.contains(&format!(".entry {func}(")),
                    "{} for {arch}: PTX has no entry point {func}",
                    src.name
                );
            }
            if src.name == kernels::GEMV.name {
                // The tensor-core GEMVs' guard must keep their mma on these chips.
                assert!(
                    ptx.contains("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32"),
                    "{} for {arch}: the tensor-core GEMVs compiled without mma.sync",
                    src.name
                );
            }
            compiled += 1;
        }
    }
    assert_eq!(compiled, SOURCES.len() * CI_ARCHS.len());
}

/// Turing desktop cards (compute capability 7.5, the oldest `arch_for` knows) have no
/// `mma.sync` m16n8k16 with f16 operands: the tensor-core GEMVs must still compile there (to a
/// trap the launch never reaches), or no kernel at all would load on such a card.
#[test]
fn every_kernel_compiles_for_turing_too() {
    if !nvrtc_or_skip() {
        return;
    }
    let arch = kernels::arch_for(7, 5).expect("7.5 is supported");
    for src in SOURCES {
        let ptx = kernels::compile(&src, arch)
            .unwrap_or_else(|e| panic!("{e}"))
            .to_src();
        assert!(
            !ptx.contains("mma.sync"),
            "{} for {arch}: PTX uses mma.sync, which 7.5 lacks in this shape",
            src.name
        );
    }
}

#[test]
fn a_kernel_with_an_error_fails_to_compile_with_its_log() {
    if !nvrtc_or_skip() {
        return;
    }
    let broken = kernels::KernelSource {
        name: "broken.cu",
        source: "extern \"C\" __global__ void broken(float* x) { x[0] = undefined_name; }",
        functions: &["broken"],
    };
    let err = kernels::compile(&broken, "compute_90").expect_err("must not compile");
    let text = err.to_string();
    assert!(text.contains("broken.cu"), "{text}");
    assert!(text.contains("undefined_name"), "{text}");
}

#[test]
fn the_cached_ptx_is_the_compiled_ptx() {
    if !nvrtc_or_skip() {
        return;
    }
    let first = kernels::cached_ptx(&kernels::GEMV, "compute_90").unwrap();
    let again = kernels::cached_ptx(&kernels::GEMV, "compute_90").unwrap();
    assert_eq!(first, again);
    assert!(first.contains(".entry gemv_i4("));
}
