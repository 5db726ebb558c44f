//! The TensorRT shim against a fake `libnvinfer.so.10` (`tests/tensorrt_fake/fake_nvinfer.cpp`,
//! built here with the system's C++ compiler from the same vendored headers): load,
//! deserialize, I/O introspection, set address, enqueue and teardown, and the error paths
//! (missing library, bad engine, wrong major version, an error logged during runtime
//! creation). Then `engines/build-trt.sh` with a fake `trtexec`, and the command line's
//! refusals of engines made for another checkpoint or TensorRT version.
//!
//! No real TensorRT runs here: the fake proves the calling convention, the vtable layout of
//! the 10.3 headers as the shim uses them, and the error handling, not TensorRT's behaviour.
#![cfg(feature = "tensorrt")]
// Test helpers fail the test by panicking, like the test functions themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use vla_rt::backend::tensorrt::ffi::{IoTensor, DATA_TYPE_FLOAT};
use vla_rt::backend::tensorrt::{EngineManifest, TensorrtError, TrtSession, TrtVersion};

/// Builds the fake library with `defines` into its own folder (one per variant and process).
fn fake_library(variant: &str, defines: &[&str]) -> PathBuf {
    let root = common::repo_root();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("tensorrt_fake_{}", std::process::id()))
        .join(variant);
    std::fs::create_dir_all(&dir).unwrap();
    let library = dir.join("libnvinfer.so.10");
    if library.exists() {
        return library;
    }
    let compiler = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let out = Command::new(&compiler)
        .args(["-std=c++17", "-O1", "-shared", "-fPIC", "-Wall", "-Werror"])
        .args(defines)
        .arg("-isystem")
        .arg(root.join("third_party/tensorrt/include"))
        .arg("-isystem")
        .arg(root.join("third_party/tensorrt/cuda_stub"))
        .arg("-o")
        .arg(&library)
        .arg(root.join("tests/tensorrt_fake/fake_nvinfer.cpp"))
        .output()
        .unwrap_or_else(|e| {
            panic!("running the C++ compiler `{compiler}` (scripts/setup.sh installs g++): {e}")
        });
    assert!(
        out.status.success(),
        "building the fake libnvinfer failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    library
}

/// A test hook of the fake library, looked up in the copy the shim opened.
fn fake_hook<T>(library: &Path, symbol: &str) -> T
where
    T: Copy,
{
    let path = std::ffi::CString::new(library.as_os_str().as_encoded_bytes()).unwrap();
    let name = std::ffi::CString::new(symbol).unwrap();
    // SAFETY: dlopen of a library already loaded by the shim (same path) only takes another
    // reference; the symbol is a plain C function of the fake whose type the caller names.
    unsafe {
        let handle = libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
        assert!(!handle.is_null(), "dlopen {}", library.display());
        let f = libc::dlsym(handle, name.as_ptr());
        assert!(!f.is_null(), "{symbol} missing");
        std::mem::transmute_copy::<*mut libc::c_void, T>(&f)
    }
}

const PLAN: &str = "FAKEPLAN\nin pixel_values 1 3 4 4\nout patches 1 2 8\n";

#[test]
fn load_introspect_bind_enqueue_and_tear_down() {
    // Its own copy of the library: the live-object count is global to a loaded copy.
    let library = fake_library("lifecycle", &[]);
    let live: extern "C" fn() -> i32 = {
        // Opening the session first loads the library the hook is read from.
        let _probe = TrtSession::open(&library).unwrap();
        fake_hook(&library, "fake_trt_live_objects")
    };
    assert_eq!(live(), 0, "the probe session's runtime was destroyed");
    let mut session = TrtSession::open(&library).unwrap();
    assert_eq!(session.version(), TrtVersion::from_number(100300));
    assert_eq!(session.version().to_string(), "10.3.0");
    assert_eq!(TrtVersion::headers().to_string(), "10.3.0");

    let engine = session.load_engine(PLAN.as_bytes(), "fake.plan").unwrap();
    let io = session.io_tensors(engine).unwrap();
    assert_eq!(
        io,
        vec![
            IoTensor {
                name: "pixel_values".into(),
                is_input: true,
                data_type: DATA_TYPE_FLOAT,
                shape: vec![1, 3, 4, 4],
            },
            IoTensor {
                name: "patches".into(),
                is_input: false,
                data_type: DATA_TYPE_FLOAT,
                shape: vec![1, 2, 8],
            },
        ]
    );
    let context = session.create_context(engine).unwrap();
    assert_eq!(live(), 3, "runtime, engine, context");

    let input: Vec<f32> = (0..48).map(|i| i as f32).collect();
    let mut output = vec![0.0f32; 16];
    // SAFETY: the fake reads 48 and writes 16 f32 on the host, the sizes of these buffers,
    // which outlive every enqueue below.
    unsafe {
        session
            .set_address(context, "pixel_values", input.as_ptr() as u64)
            .unwrap();
        let err = session.enqueue(context, std::ptr::null_mut()).unwrap_err();
        assert!(
            matches!(
                err,
                TensorrtError::Call {
                    op: "enqueueV3",
                    ..
                }
            ) && err.to_string().contains("patches"),
            "an unbound output is refused, naming it: {err}"
        );
        let err = session
            .set_address(context, "no_such_tensor", 8)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no_such_tensor"), "{err}");
        session
            .set_address(context, "patches", output.as_mut_ptr() as u64)
            .unwrap();
        let stream = 0x5eed_usize as *mut std::ffi::c_void;
        session.enqueue(context, stream).unwrap();
        let last_stream: extern "C" fn() -> *mut std::ffi::c_void =
            fake_hook(&library, "fake_trt_last_stream");
        assert_eq!(last_stream(), stream, "the stream reached enqueueV3");
    }
    let expected: Vec<f32> = (0..16).map(|i| i as f32 * 2.0 + 1.0).collect();
    assert_eq!(
        output, expected,
        "the bound addresses were read and written"
    );

    drop(session);
    assert_eq!(live(), 0, "context, engine and runtime destroyed");
}

#[test]
fn a_newer_tensorrt_10_library_is_accepted() {
    let library = fake_library("v10_16", &["-DFAKE_VERSION=101600"]);
    let session = TrtSession::open(&library).unwrap();
    assert_eq!(session.version().to_string(), "10.16.0");
}

#[test]
fn a_bad_engine_is_refused_with_the_error_tensorrt_logged() {
    let library = fake_library("bad_engine", &[]);
    let mut session = TrtSession::open(&library).unwrap();
    let err = session.load_engine(b"not a plan", "junk.plan").unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, TensorrtError::Engine { .. }), "{text}");
    assert!(text.starts_with("engine junk.plan: "), "{text}");
    assert!(text.contains("Serialization"), "{text}");
    assert!(err.is_bad_input());
    // The session stays usable after a refused engine.
    session.load_engine(PLAN.as_bytes(), "fake.plan").unwrap();
}

#[test]
fn a_library_of_another_major_version_is_refused() {
    let library = fake_library("v9", &["-DFAKE_VERSION=90300"]);
    let err = TrtSession::open(&library).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, TensorrtError::Version { .. }), "{text}");
    assert!(
        text.contains("is TensorRT 9") && text.contains("needs TensorRT 10"),
        "{text}"
    );
}

#[test]
fn an_error_logged_while_creating_the_runtime_fails_even_with_a_pointer_returned() {
    // The fake returns a non-null, invalid pointer with the error, as TensorRT does when
    // CUDA cannot start; using it would crash this test.
    let library = fake_library("runtime_error", &["-DFAKE_RUNTIME_ERROR"]);
    let err = TrtSession::open(&library).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, TensorrtError::Runtime { .. }), "{text}");
    assert!(text.contains("CUDA initialization failure"), "{text}");
}

#[test]
fn a_missing_library_is_named() {
    let err = TrtSession::open(Path::new("/nonexistent/libnvinfer.so.10")).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, TensorrtError::Library { .. }), "{text}");
    assert!(text.contains("/nonexistent/libnvinfer.so.10"), "{text}");
    assert_eq!(text.lines().count(), 1);
}

/// `engines/build-trt.sh` with a fake trtexec that writes fake plans and prints what
/// trtexec prints about the version and the device.
fn build_engines(onnx_dir: &Path, out_dir: &Path) -> std::process::Output {
    let fake_trtexec = onnx_dir.join("fake-trtexec");
    std::fs::write(
        &fake_trtexec,
        "#!/bin/sh\n\
         echo '&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec'\n\
         echo '[I] Selected Device: Fake GPU'\n\
         echo '[I] Compute Capability: 0.0'\n\
         for a in \"$@\"; do case $a in --saveEngine=*) \
         printf 'FAKEPLAN\\nin pixel_values 1 3 224 224\\nout patches 1 256 48\\n' > \"${a#--saveEngine=}\";; esac; done\n",
    )
    .unwrap();
    Command::new("chmod")
        .arg("+x")
        .arg(&fake_trtexec)
        .status()
        .unwrap();
    Command::new("bash")
        .arg(common::repo_root().join("engines/build-trt.sh"))
        .arg(onnx_dir)
        .arg(out_dir)
        .env("TRTEXEC", &fake_trtexec)
        .output()
        .unwrap()
}

fn predict(library: &Path, engines: &Path) -> std::process::Output {
    let case = common::tiny_fixture_dir().join("case0_224_square");
    Command::new(env!("CARGO_BIN_EXE_vla-rt"))
        .args([
            "predict",
            "--backend",
            "tensorrt",
            "--unnorm-key",
            "tiny_bridge",
        ])
        .arg("--model")
        .arg(common::tiny_model_dir())
        .arg("--image")
        .arg(case.join("image.png"))
        .args(["--instruction", "pick up the cup"])
        .arg("--engines")
        .arg(engines)
        .arg("--tensorrt-library")
        .arg(library)
        .output()
        .unwrap()
}

fn one_line_exit_2(out: &std::process::Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains(needle), "want {needle:?} in: {stderr}");
}

#[test]
fn build_script_manifest_and_the_refusals_of_mismatched_engines() {
    let library = fake_library("ok", &[]);
    let root = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("tensorrt_build_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let (onnx_dir, engines) = (root.join("onnx"), root.join("engines"));
    let export =
        vla_rt::model::onnx::export_encoders(&common::tiny_model_dir(), &onnx_dir).unwrap();

    let out = build_engines(&onnx_dir, &engines);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (manifest, path) = EngineManifest::from_dir(&engines).unwrap();
    assert_eq!(manifest.tensorrt_version, "10.3.0");
    assert_eq!(manifest.gpu.name, "Fake GPU");
    assert_eq!(manifest.gpu.compute_capability, "0.0");
    assert_eq!(manifest.precision, "fp16");
    assert_eq!(
        manifest.checkpoint_fingerprint,
        export.checkpoint_fingerprint
    );
    // One engine per exported encoder (DINOv2 and SigLIP), in the same order.
    assert_eq!(export.encoders.len(), 2, "{:?}", export.encoders);
    assert_eq!(manifest.engines.len(), export.encoders.len());
    for (engine, exported) in manifest.engines.iter().zip(&export.encoders) {
        assert_eq!(engine.onnx_sha256, exported.sha256);
        assert_eq!(engine.output, exported.output);
        assert!(engines.join(&engine.file).is_file());
    }

    // Without libnvinfer: one line naming it.
    one_line_exit_2(
        &predict(Path::new("/nonexistent/libnvinfer.so.10"), &engines),
        "/nonexistent/libnvinfer.so.10",
    );
    // No engine folder: the manifest is named.
    one_line_exit_2(&predict(&library, &root.join("none")), "none/manifest.json");
    // Engines of another checkpoint.
    let mut other = manifest.clone();
    other.checkpoint_fingerprint = "sha256:0000".into();
    std::fs::write(&path, serde_json::to_string(&other).unwrap()).unwrap();
    one_line_exit_2(&predict(&library, &engines), "checkpoint_fingerprint");
    // Engines of another TensorRT version.
    let mut other = manifest.clone();
    other.tensorrt_version = "10.16.0".into();
    std::fs::write(&path, serde_json::to_string(&other).unwrap()).unwrap();
    one_line_exit_2(&predict(&library, &engines), "tensorrt_version");
    // Everything matches up to the GPU: without a driver the CUDA driver is named, on a GPU
    // machine the GPU ("Fake GPU" is none).
    std::fs::write(&path, serde_json::to_string(&manifest).unwrap()).unwrap();
    let out = predict(&library, &engines);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("libcuda") || stderr.contains("gpu: "),
        "{stderr}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}
