//! Bad input to `vla-rt predict`: each case runs the real binary and expects exit code 2,
//! one line on stderr naming the culprit, and no panic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::synth::{copy_tiny_model, write_checkpoint, SynthSpec, TempDir};
use common::{tiny_fixture_dir, tiny_model_dir};

fn image() -> std::path::PathBuf {
    tiny_fixture_dir().join("case0_224_square/image.png")
}

/// Runs `vla-rt predict` with these arguments; returns (exit code, stderr).
fn predict(model: &Path, extra: &[&str]) -> (i32, String) {
    let mut args: Vec<String> = vec![
        "predict".into(),
        "--model".into(),
        model.display().to_string(),
        "--image".into(),
        image().display().to_string(),
    ];
    if !extra.contains(&"--instruction") {
        args.extend(["--instruction".into(), "pick up the block".into()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let output = Command::new(env!("CARGO_BIN_EXE_vla-rt"))
        .args(&args)
        .env("RUST_LOG", "off")
        .output()
        .expect("run vla-rt");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code().unwrap_or(-1), stderr)
}

/// Exit code 2, exactly one non-empty stderr line containing every `needle`, no panic.
fn assert_bad_input(result: (i32, String), needles: &[&str]) {
    let (code, stderr) = result;
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    assert_eq!(code, 2, "exit code {code}, stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "want one line, got: {stderr}");
    for needle in needles {
        assert!(lines[0].contains(needle), "`{needle}` not in: {}", lines[0]);
    }
}

#[test]
fn truncated_safetensors_is_named() {
    let dir = TempDir::new("truncated");
    copy_tiny_model(dir.path());
    let weights = dir.path().join("model.safetensors");
    let len = std::fs::metadata(&weights).unwrap().len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&weights)
        .unwrap();
    file.set_len(len / 2).unwrap();
    assert_bad_input(
        predict(dir.path(), &["--unnorm-key", "tiny_bridge"]),
        &["model.safetensors", "truncated or corrupt"],
    );
}

#[test]
fn corrupt_safetensors_header_is_named() {
    let dir = TempDir::new("corrupt");
    copy_tiny_model(dir.path());
    let weights = dir.path().join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    bytes[8..24].copy_from_slice(b"#not-json-at-all");
    std::fs::write(&weights, bytes).unwrap();
    assert_bad_input(
        predict(dir.path(), &["--unnorm-key", "tiny_bridge"]),
        &["model.safetensors", "truncated or corrupt"],
    );
}

#[test]
fn missing_tensor_is_named() {
    let dir = TempDir::new("missing");
    let mut spec = SynthSpec::odd();
    spec.omit = Some("language_model.model.layers.1.mlp.up_proj.weight".into());
    write_checkpoint(dir.path(), &spec);
    assert_bad_input(
        predict(dir.path(), &["--unnorm-key", "tiny_bridge"]),
        &[
            "language_model.model.layers.1.mlp.up_proj.weight",
            "missing",
        ],
    );
}

#[test]
fn wrong_shape_names_tensor_expected_and_got() {
    let dir = TempDir::new("shape");
    let mut spec = SynthSpec::odd();
    spec.reshape = Some(("projector.fc2.weight".into(), vec![48, 100]));
    write_checkpoint(dir.path(), &spec);
    assert_bad_input(
        predict(dir.path(), &["--unnorm-key", "tiny_bridge"]),
        &[
            "projector.fc2.weight",
            "expected shape [48, 272]",
            "got [48, 100]",
        ],
    );
}

#[test]
fn unknown_unnorm_key_lists_the_available_ones() {
    assert_bad_input(
        predict(&tiny_model_dir(), &["--unnorm-key", "bridge_orig"]),
        &["bridge_orig", "tiny_bridge", "tiny_fractal"],
    );
}

#[test]
fn missing_unnorm_key_with_several_datasets_lists_them() {
    assert_bad_input(
        predict(&tiny_model_dir(), &[]),
        &["unnorm_key", "tiny_bridge, tiny_fractal"],
    );
}

#[test]
fn empty_instruction_is_refused() {
    assert_bad_input(
        predict(
            &tiny_model_dir(),
            &["--unnorm-key", "tiny_bridge", "--instruction", "  "],
        ),
        &["instruction"],
    );
}

#[test]
fn missing_model_dir_is_named() {
    let missing = std::env::temp_dir().join("vla-rt-no-such-model-dir");
    assert_bad_input(
        predict(&missing, &["--unnorm-key", "tiny_bridge"]),
        &["vla-rt-no-such-model-dir", "does not exist"],
    );
}

#[test]
fn unavailable_backend_and_foreign_quantized_weights_are_refused() {
    let tiny = tiny_model_dir();
    assert_bad_input(
        predict(
            &tiny,
            &[
                "--unnorm-key",
                "tiny_bridge",
                "--backend",
                "tensorrt",
                "--tensorrt-library",
                "/nonexistent/libnvinfer.so.10",
            ],
        ),
        &["tensorrt", "/nonexistent/libnvinfer.so.10", "not usable"],
    );
    // A checkpoint is not a pre-quantized weight file: its format tag is missing.
    let checkpoint = tiny.join("model.safetensors");
    assert_bad_input(
        predict(
            &tiny,
            &[
                "--unnorm-key",
                "tiny_bridge",
                "--quantization",
                "int8",
                "--quantized-weights",
                checkpoint.to_str().unwrap(),
            ],
        ),
        &["model.safetensors", "format tag"],
    );
}

#[test]
fn unknown_vit_head_count_names_the_file_and_key_to_add() {
    let dir = TempDir::new("heads");
    write_checkpoint(dir.path(), &SynthSpec::odd());
    std::fs::remove_file(dir.path().join("vla_rt_model.json")).unwrap();
    // The config's timm ids name ViT-L (1024 wide); this checkpoint's featurizer is 32 wide.
    assert_bad_input(
        predict(dir.path(), &["--unnorm-key", "tiny_bridge"]),
        &[
            "vla_rt_model.json",
            "featurizer.num_heads",
            "embed width 32",
        ],
    );
}

#[test]
fn unreadable_image_is_named() {
    let dir = TempDir::new("image");
    let fake = dir.path().join("not-an-image.png");
    std::fs::write(&fake, b"this is text, not a PNG").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_vla-rt"))
        .args(["predict", "--model"])
        .arg(tiny_model_dir())
        .arg("--image")
        .arg(&fake)
        .args([
            "--instruction",
            "pick up the block",
            "--unnorm-key",
            "tiny_bridge",
        ])
        .output()
        .expect("run vla-rt");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_bad_input(
        (output.status.code().unwrap_or(-1), stderr),
        &["not-an-image.png"],
    );
    let missing = dir.path().join("missing.jpg");
    let output = Command::new(env!("CARGO_BIN_EXE_vla-rt"))
        .args(["predict", "--model"])
        .arg(tiny_model_dir())
        .arg("--image")
        .arg(&missing)
        .args([
            "--instruction",
            "pick up the block",
            "--unnorm-key",
            "tiny_bridge",
        ])
        .output()
        .expect("run vla-rt");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_bad_input(
        (output.status.code().unwrap_or(-1), stderr),
        &["missing.jpg"],
    );
}

#[test]
fn instruction_longer_than_the_kv_cache_is_refused() {
    let long = "move the cup ".repeat(400);
    assert_bad_input(
        predict(
            &tiny_model_dir(),
            &["--unnorm-key", "tiny_bridge", "--instruction", &long],
        ),
        &["instruction too long", "KV cache"],
    );
}
