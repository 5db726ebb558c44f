//! `--backend cuda` on a machine without the NVIDIA driver: one clear line naming the driver
//! library, exit code 2, no panic, for `predict`, the benchmark and the parity mode. On a
//! machine with a driver these cases do not apply and the tests say so and return.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::{tiny_fixture_dir, tiny_model_dir};

fn driver_present() -> bool {
    // SAFETY: only tries to dlopen libcuda by its known names.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

fn run(args: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_vla-rt"))
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .expect("run vla-rt");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn assert_one_line_exit_2(args: &[&str]) {
    let (code, stderr) = run(args);
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    assert_eq!(code, 2, "exit code {code} for {args:?}, stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected for {args:?}: {stderr}");
    assert!(lines[0].contains("cuda"), "{}", lines[0]);
    assert!(lines[0].contains("libcuda"), "{}", lines[0]);
    assert!(lines[0].contains("--backend cpu"), "{}", lines[0]);
}

#[test]
fn predict_with_cuda_and_no_driver_exits_2_naming_the_driver() {
    if driver_present() {
        eprintln!("skipped: an NVIDIA driver is installed here");
        return;
    }
    let model = tiny_model_dir().display().to_string();
    let image = tiny_fixture_dir()
        .join("case0_224_square/image.png")
        .display()
        .to_string();
    assert_one_line_exit_2(&[
        "predict",
        "--backend",
        "cuda",
        "--model",
        &model,
        "--image",
        &image,
        "--instruction",
        "pick up the block",
        "--unnorm-key",
        "tiny_bridge",
    ]);
}

/// The OFT fixture's first case (one camera, no robot state) as a checkpoint folder.
fn one_camera_oft_checkpoint(name: &str) -> std::path::PathBuf {
    let settings = serde_json::json!({
        "num_actions_chunk": 8,
        "num_images_in_input": 1,
        "action_normalization": "bounds_q99",
    });
    common::oft::assemble(name, &settings, false)
}

/// An OpenVLA-OFT checkpoint takes the CUDA backend's chunk path, which opens the driver
/// first, as the token path does: the same line and exit code.
#[test]
fn predict_of_an_oft_checkpoint_with_cuda_and_no_driver_exits_2_naming_the_driver() {
    if driver_present() {
        eprintln!("skipped: an NVIDIA driver is installed here");
        return;
    }
    let dir = one_camera_oft_checkpoint("no_driver");
    let image = tiny_fixture_dir().join("case0_224_square/image.png");
    assert_one_line_exit_2(&[
        "predict",
        "--backend",
        "cuda",
        "--model",
        dir.to_str().unwrap(),
        "--image",
        image.to_str().unwrap(),
        "--instruction",
        "pick up the bowl",
    ]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bench_and_parity_with_cuda_and_no_driver_exit_2_naming_the_driver() {
    if driver_present() {
        eprintln!("skipped: an NVIDIA driver is installed here");
        return;
    }
    let template = tiny_model_dir().display().to_string();
    // The benchmark, and its OpenVLA-OFT chunk comparison.
    for extra in [&[][..], &["--oft-chunk", "8"][..]] {
        let mut args = vec![
            "bench",
            "--backend",
            "cuda",
            "--random-weights",
            "--shape",
            "openvla-7b",
            "--template",
            &template,
        ];
        args.extend_from_slice(extra);
        assert_one_line_exit_2(&args);
    }
    let fixtures = tiny_fixture_dir().display().to_string();
    assert_one_line_exit_2(&[
        "bench",
        "--backend",
        "cuda",
        "--parity",
        &fixtures,
        "--model",
        &template,
    ]);
}

#[test]
fn oft_parity_with_cuda_and_no_driver_exits_2_naming_the_driver() {
    if driver_present() {
        eprintln!("skipped: an NVIDIA driver is installed here");
        return;
    }
    let dir = one_camera_oft_checkpoint("no_driver_parity");
    let fixtures = common::oft::fixture_dir().display().to_string();
    assert_one_line_exit_2(&[
        "bench",
        "--backend",
        "cuda",
        "--parity",
        &fixtures,
        "--model",
        dir.to_str().unwrap(),
    ]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn parity_needs_the_cuda_backend() {
    let fixtures = tiny_fixture_dir().display().to_string();
    let (code, stderr) = run(&["bench", "--parity", &fixtures]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--backend cuda"), "{stderr}");
}
