//! Every CUDA kernel source compiles with NVRTC for the H100/H200 (compute_90) and Orin
//! (compute_87). Needs only the NVRTC library and its builtins, no GPU and no
//! `LD_LIBRARY_PATH`: found on the loader's path, in a CUDA toolkit or in the
//! `nvidia-cuda-nvrtc` wheel (`scripts/setup.sh` installs it). Skipped with a message when
//! NVRTC is absent, except under CI (`CI` set to any non-empty value), where that is a failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/skip.rs"]
mod skip;

use vla_rt::backend::cuda::kernels::{self, CI_ARCHS, SOURCES};
use vla_rt::backend::cuda::libs;

/// Whether NVRTC is there to compile with; without it the test is skipped with a message,
/// except under CI (`CI` set to any non-empty value), where every kernel must compile.
fn nvrtc_or_skip() -> bool {
    match libs::ensure_nvrtc() {
        Ok(_) => true,
        Err(e) => {
            let msg = format!(
                "{e} (scripts/setup.sh installs the nvidia-cuda-nvrtc wheel, which is enough)"
            );
            skip::missing_tool(&msg);
            false
        }
    }
}

/// Set in the child process of `kernels_compile_with_no_library_path_set`.
const CHILD_MARK: &str = "VLA_RT_NVRTC_CHILD";

/// NVRTC opens `libnvrtc-builtins.so.X.Y` by name at its first compile, and the wheel's
/// `libnvrtc` has no RPATH: the backend must have loaded the builtins from beside the
/// `libnvrtc` it opened.
#[test]
fn nvrtc_builtins_are_loaded_from_beside_libnvrtc() {
    if !nvrtc_or_skip() {
        return;
    }
    let loaded = libs::ensure_nvrtc().unwrap();
    let name = loaded
        .nvrtc
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        name.starts_with("libnvrtc.so"),
        "{}",
        loaded.nvrtc.display()
    );
    let builtins = loaded
        .builtins
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        builtins.starts_with("libnvrtc-builtins.so."),
        "{}",
        loaded.builtins.display()
    );
    if loaded.builtins.is_absolute() {
        let beside = |p: &std::path::Path| p.parent().map(|d| d.to_path_buf());
        let real = std::fs::canonicalize(&loaded.nvrtc).unwrap();
        assert!(
            beside(&loaded.builtins) == beside(&loaded.nvrtc)
                || beside(&loaded.builtins) == beside(&real),
            "builtins {} are not beside {}",
            loaded.builtins.display(),
            loaded.nvrtc.display()
        );
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let real_builtins = std::fs::canonicalize(&loaded.builtins).unwrap();
        assert!(
            maps.contains(&*real_builtins.to_string_lossy()),
            "{} is not mapped into the process",
            real_builtins.display()
        );
    }
}

/// The kernels compile in a process started with no `LD_LIBRARY_PATH`, as `vla-rt` is on a
/// machine whose NVRTC comes from the wheel. Runs one compiling test of this file again in a
/// child process with the variable removed (and `CI` set, so that it cannot skip).
#[test]
fn kernels_compile_with_no_library_path_set() {
    if std::env::var_os(CHILD_MARK).is_some() || !nvrtc_or_skip() {
        return;
    }
    let loaded = libs::ensure_nvrtc().unwrap();
    let folder = loaded.nvrtc.parent().unwrap().to_path_buf();
    if !libs::candidate_dirs().contains(&folder) {
        eprintln!(
            "skipped: NVRTC came from {}, which only the loader's own path names",
            folder.display()
        );
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "the_cached_ptx_is_the_compiled_ptx",
            "--nocapture",
        ])
        .env_remove("LD_LIBRARY_PATH")
        .env("CI", "true")
        .env(CHILD_MARK, "1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 passed"), "{text}");
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
