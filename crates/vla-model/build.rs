//! Compiles the TensorRT shim (`src/backend/tensorrt/shim.cpp`) when the `tensorrt` feature is
//! on. It is built against TensorRT's runtime headers (vendored in the repository's `third_party/tensorrt`, or
//! the system's with `TENSORRT_INCLUDE_DIR`) and links nothing of TensorRT or CUDA:
//! `libnvinfer.so.10` is opened at run time.

fn main() {
    println!("cargo:rerun-if-changed=src/backend/tensorrt/shim.cpp");
    // The vendored headers sit at the repository root, two levels above this crate.
    let vendored = std::path::Path::new("../../third_party/tensorrt");
    println!("cargo:rerun-if-changed={}", vendored.display());
    println!("cargo:rerun-if-env-changed=TENSORRT_INCLUDE_DIR");
    if std::env::var_os("CARGO_FEATURE_TENSORRT").is_none() {
        return;
    }
    let headers = std::env::var_os("TENSORRT_INCLUDE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| vendored.join("include"));
    if !headers.join("NvInferRuntime.h").is_file() {
        // A build script reports a failure by panicking.
        #[allow(clippy::panic)]
        {
            panic!(
                "TENSORRT_INCLUDE_DIR={}: no NvInferRuntime.h there",
                headers.display()
            );
        }
    }
    cc::Build::new()
        .cpp(true)
        .flag("-std=c++17")
        .flag("-isystem")
        .flag(headers.as_os_str())
        // Only cudaStream_t and cudaEvent_t, declared as CUDA declares them; the system's
        // CUDA headers, when TENSORRT_INCLUDE_DIR finds them first, serve as well.
        .flag("-isystem")
        .flag(vendored.join("cuda_stub").as_os_str())
        .warnings(true)
        .extra_warnings(true)
        .file("src/backend/tensorrt/shim.cpp")
        .compile("vla_trt_shim");
    println!("cargo:rustc-link-lib=dl");
}
