//! `vla-rt export-onnx`: the encoder graphs, run in onnxruntime on the CPU
//! (`tests/onnx/run_encoder.py`), give the CPU backend's patch features and the reference
//! fixture's (`dinov2_patches.npy`, `siglip_patches.npy`) within 1e-5 relative L2 in f32.
//! Without python3 + onnxruntime the numeric part is skipped with a message, except under
//! CI (`CI` set to any non-empty value), where that is a failure.

// Test helpers fail the test by panicking, like the test functions themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{read_npy_f32, rel_l2, skip, tiny_cases, tiny_model_dir};
use vla_rt::model::onnx::{self, OnnxManifest};
use vla_rt::model::openvla::OpenVla;

const TOLERANCE: f64 = 1e-5;

fn out_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("onnx_export_{name}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Whether onnxruntime can be imported; panics under CI when it cannot.
fn onnxruntime_available() -> bool {
    let probe = Command::new("python3")
        .args(["-c", "import numpy, onnxruntime"])
        .output();
    match probe {
        Ok(out) if out.status.success() => true,
        other => {
            let why = match other {
                Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_string(),
                Err(e) => format!("python3: {e}"),
            };
            skip::missing_tool(&format!(
                "the onnxruntime comparison: python3 with onnxruntime is needed (scripts/setup.sh installs it): {why}"
            ));
            false
        }
    }
}

#[test]
fn manifest_names_the_checkpoint_the_shapes_and_the_files() {
    let dir = out_dir("manifest");
    let manifest = onnx::export_encoders(&tiny_model_dir(), &dir).unwrap();
    let read = OnnxManifest::from_file(&dir.join(onnx::MANIFEST_FILE)).unwrap();
    assert_eq!(read, manifest);
    assert_eq!(
        manifest.checkpoint_fingerprint,
        vla_rt::model::checkpoint_fingerprint(&tiny_model_dir()).unwrap()
    );
    assert_eq!(manifest.opset, 17);
    let model = OpenVla::load(&tiny_model_dir()).unwrap();
    assert_eq!(manifest.encoders.len(), model.featurizers().len());
    for (entry, (name, vit)) in manifest
        .encoders
        .iter()
        .zip(["dinov2", "siglip"].iter().zip(model.featurizers()))
    {
        let c = vit.config();
        assert_eq!(entry.name, *name);
        assert_eq!(entry.file, format!("{name}.onnx"));
        assert_eq!(entry.input.name, "pixel_values");
        assert_eq!(entry.input.shape, vec![1, 3, c.image_size, c.image_size]);
        assert_eq!(entry.output.name, "patches");
        assert_eq!(entry.output.shape, vec![1, c.num_patches(), c.embed_dim]);
        let bytes = std::fs::read(dir.join(&entry.file)).unwrap();
        assert_eq!(entry.sha256, onnx::sha256_tag(&bytes));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn graphs_in_onnxruntime_match_the_cpu_backend_and_the_reference() {
    let dir = out_dir("numerics");
    let manifest = onnx::export_encoders(&tiny_model_dir(), &dir).unwrap();
    if !onnxruntime_available() {
        return;
    }
    let model = OpenVla::load(&tiny_model_dir()).unwrap();
    let script = common::repo_root().join("tests/onnx/run_encoder.py");
    let reference = ["dinov2_patches.npy", "siglip_patches.npy"];
    for case in tiny_cases() {
        let pixels_path = case.dir.join("pixel_values.npy");
        let pixels = read_npy_f32(&pixels_path);
        let cpu = model.featurizer_outputs(&pixels.data).unwrap();
        for (i, entry) in manifest.encoders.iter().enumerate() {
            let out = dir.join(format!("{}_{}.npy", case.name, entry.name));
            let run = Command::new("python3")
                .arg(&script)
                .arg(dir.join(&entry.file))
                .arg(&pixels_path)
                .arg(entry.pixel_channels[0].to_string())
                .arg(&out)
                .output()
                .unwrap();
            assert!(
                run.status.success(),
                "{} on {}: {}",
                entry.file,
                case.name,
                String::from_utf8_lossy(&run.stderr)
            );
            let io: serde_json::Value = serde_json::from_slice(run.stdout.trim_ascii()).unwrap();
            assert_eq!(io["inputs"][0][0], "pixel_values");
            assert_eq!(io["outputs"][0][0], "patches");
            let ort = read_npy_f32(&out);
            assert_eq!(
                ort.shape, entry.output.shape,
                "{} on {}",
                entry.file, case.name
            );
            let vs_cpu = rel_l2(&ort.data, &cpu[i]);
            let fixture = case.npy(reference[i]);
            let vs_reference = rel_l2(&ort.data, &fixture.data);
            eprintln!(
                "{} {}: rel L2 {vs_cpu:.2e} against the CPU backend, {vs_reference:.2e} \
                 against the reference",
                case.name, entry.name
            );
            assert!(
                vs_cpu < TOLERANCE,
                "{} {}: {vs_cpu:.3e} vs CPU",
                case.name,
                entry.name
            );
            assert!(
                vs_reference < TOLERANCE,
                "{} {}: {vs_reference:.3e} vs {}",
                case.name,
                entry.name,
                reference[i]
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cli_refuses_a_missing_model_folder_with_one_line_and_exit_2() {
    let dir = out_dir("cli");
    let out = Command::new(env!("CARGO_BIN_EXE_vla-rt"))
        .args(["export-onnx", "--model", "/nonexistent/checkpoint", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("/nonexistent/checkpoint"), "{stderr}");
    assert!(!dir.join(onnx::MANIFEST_FILE).exists());
}

#[test]
fn cli_writes_both_graphs_and_the_manifest() {
    let dir = out_dir("cli_ok");
    let out = Command::new(env!("CARGO_BIN_EXE_vla-rt"))
        .arg("export-onnx")
        .arg("--model")
        .arg(tiny_model_dir())
        .arg("--out")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for file in ["dinov2.onnx", "siglip.onnx", "manifest.json"] {
        assert!(dir.join(file).is_file(), "{file} missing");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
