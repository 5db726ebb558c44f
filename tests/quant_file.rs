#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Pre-quantized weight files: round trip against load-time quantization, and refusal of a
//! file made for another checkpoint, with a wrong format tag or version.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::SafeTensors;
use vla_rt::model::linear::{Linear, LinearWeights};
use vla_rt::model::quant::{Int4Weights, Int8Weights};
use vla_rt::model::quant_file::{self, QuantizedFile};
use vla_rt::policy::{ProjectorFormat, Quantization};

fn model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("engines/openvla-tiny")
}

/// A fresh scratch folder for one test.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vla-rt-quant-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The checkpoint's f32 weight of `name` as `(values, [out, in])`.
fn checkpoint_weight(name: &str) -> (Vec<f32>, usize, usize) {
    let bytes = std::fs::read(model_dir().join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let view = st.tensor(name).unwrap();
    let values = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (values, view.shape()[0], view.shape()[1])
}

#[test]
fn int8_file_round_trips_to_load_time_quantization_and_stays_mapped() {
    let dir = scratch("int8");
    let out = dir.join("int8.safetensors");
    let summary = quant_file::write_quantized_file(
        &model_dir(),
        Quantization::Int8,
        ProjectorFormat::Int8,
        &out,
    )
    .unwrap();
    // 2 layers × 7 linears + lm_head + 3 projector layers.
    assert_eq!(summary.layers, 18);
    let file = QuantizedFile::open(&out, &model_dir()).unwrap();
    assert_eq!(file.quantization(), Quantization::Int8);
    assert_eq!(file.projector(), ProjectorFormat::Int8);
    assert_eq!(file.layers().count(), 18);
    for layer in [
        "language_model.model.layers.1.mlp.down_proj",
        "language_model.lm_head",
        "projector.fc1",
    ] {
        let (w, n, k) = checkpoint_weight(&format!("{layer}.weight"));
        let want = Int8Weights::quantize(&w, n, k);
        match file.layer_weights(layer, n, k).unwrap() {
            Some(LinearWeights::Int8(got)) => {
                assert!(got.codes.is_mapped(), "{layer}: codes copied, not mapped");
                assert_eq!(got.codes.as_slice(), want.codes.as_slice(), "{layer} codes");
                assert_eq!(got.scales, want.scales, "{layer} scales");
            }
            other => panic!("{layer}: {other:?}"),
        }
    }
    // Embeddings and norms are not linear layers.
    assert!(file
        .layer_weights("language_model.model.embed_tokens", 32064, 64)
        .unwrap()
        .is_none());
}

#[test]
fn int4_file_round_trips_and_applies_to_a_layer() {
    let dir = scratch("int4");
    let out = dir.join("int4.safetensors");
    quant_file::write_quantized_file(&model_dir(), Quantization::Int4, ProjectorFormat::F32, &out)
        .unwrap();
    let file = QuantizedFile::open(&out, &model_dir()).unwrap();
    assert_eq!(file.quantization(), Quantization::Int4);
    assert_eq!(file.projector(), ProjectorFormat::F32);
    // 15 LLM linears, no projector layer.
    assert_eq!(file.layers().count(), 15);
    let layer = "language_model.model.layers.0.mlp.down_proj"; // [64, 172]: 2 groups
    let (w, n, k) = checkpoint_weight(&format!("{layer}.weight"));
    let want = Int4Weights::quantize(&w, n, k);
    let mut linear = Linear::from_f32(layer, w, n, k, None).unwrap();
    assert!(file.apply(layer, &mut linear).unwrap());
    match linear.weights() {
        LinearWeights::Int4(got) => {
            assert!(got.packed.is_mapped());
            assert_eq!(got.group_size, 128);
            assert_eq!(got.packed.as_slice(), want.packed.as_slice());
            assert_eq!(got.scales, want.scales);
            assert_eq!(got.mins, want.mins);
        }
        other => panic!("{other:?}"),
    }
    let mut projector =
        Linear::from_f32("projector.fc3", vec![0.0; 64 * 64], 64, 64, None).unwrap();
    assert!(!file.apply("projector.fc3", &mut projector).unwrap());
}

#[test]
fn file_made_for_another_checkpoint_is_rejected_naming_the_file() {
    let dir = scratch("other");
    let out = dir.join("int8.safetensors");
    quant_file::write_quantized_file(&model_dir(), Quantization::Int8, ProjectorFormat::F32, &out)
        .unwrap();
    // Same weights, different dataset statistics: another checkpoint.
    let other = dir.join("other-model");
    std::fs::create_dir_all(&other).unwrap();
    let config = std::fs::read_to_string(model_dir().join("config.json")).unwrap();
    assert!(config.contains("tiny_bridge"));
    std::fs::write(
        other.join("config.json"),
        config.replace("tiny_bridge", "other_bridge"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        model_dir().join("model.safetensors"),
        other.join("model.safetensors"),
    )
    .unwrap();
    let err = QuantizedFile::open(&out, &other).unwrap_err();
    assert!(err.is_bad_input());
    let msg = err.to_string();
    assert!(msg.contains(&out.display().to_string()), "{msg}");
    assert!(msg.contains("checkpoint hash"), "{msg}");
    assert!(
        msg.contains(&quant_file::checkpoint_hash(&model_dir()).unwrap()),
        "{msg}"
    );
}

/// Rewrites a quantized file with one metadata entry changed (or removed with `None`).
fn rewrite_metadata(src: &Path, dst: &Path, key: &str, value: Option<&str>) {
    let bytes = std::fs::read(src).unwrap();
    let (_, metadata) = SafeTensors::read_metadata(&bytes).unwrap();
    let mut meta: HashMap<String, String> = metadata.metadata().clone().unwrap();
    match value {
        Some(v) => meta.insert(key.to_string(), v.to_string()),
        None => meta.remove(key),
    };
    let st = SafeTensors::deserialize(&bytes).unwrap();
    safetensors::serialize_to_file(st.tensors(), Some(meta), dst).unwrap();
}

#[test]
fn wrong_format_tag_version_or_missing_tag_is_rejected() {
    let dir = scratch("tag");
    let good = dir.join("good.safetensors");
    quant_file::write_quantized_file(
        &model_dir(),
        Quantization::Int4,
        ProjectorFormat::F32,
        &good,
    )
    .unwrap();
    let cases = [
        (
            quant_file::FORMAT_KEY,
            Some("gptq"),
            "format tag",
            "\"gptq\"",
        ),
        (quant_file::FORMAT_KEY, None, "format tag", "missing"),
        (
            quant_file::VERSION_KEY,
            Some("2"),
            "format version",
            "\"2\"",
        ),
        ("int4_group_size", Some("64"), "group size", "\"64\""),
    ];
    for (i, (key, value, field, got)) in cases.into_iter().enumerate() {
        let bad = dir.join(format!("bad{i}.safetensors"));
        rewrite_metadata(&good, &bad, key, value);
        let err = QuantizedFile::open(&bad, &model_dir()).unwrap_err();
        assert!(err.is_bad_input());
        let msg = err.to_string();
        assert!(msg.contains(&bad.display().to_string()), "{msg}");
        assert!(msg.contains(field), "{msg}");
        assert!(msg.contains(got), "{msg}");
    }
    // A plain checkpoint is not a pre-quantized file either.
    let err = QuantizedFile::open(&model_dir().join("model.safetensors"), &model_dir())
        .unwrap_err()
        .to_string();
    assert!(err.contains("format tag"), "{err}");
}

#[test]
fn quantize_command_writes_a_file_and_rejects_a_missing_model() {
    let dir = scratch("cli");
    let out = dir.join("cli.safetensors");
    let bin = env!("CARGO_BIN_EXE_vla-rt");
    let status = std::process::Command::new(bin)
        .args(["quantize", "--model"])
        .arg(model_dir())
        .args(["--quantization", "int4", "--projector", "int8", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
    let file = QuantizedFile::open(&out, &model_dir()).unwrap();
    assert_eq!(file.layers().count(), 18);

    let missing = dir.join("no-such-model");
    let status = std::process::Command::new(bin)
        .args(["quantize", "--model"])
        .arg(&missing)
        .args(["--quantization", "int8", "--out"])
        .arg(dir.join("x.safetensors"))
        .output()
        .unwrap();
    assert_eq!(status.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&status.stderr);
    assert!(stderr.contains("no-such-model"), "{stderr}");
}

#[test]
fn policy_from_a_pre_quantized_file_predicts_as_load_time_quantization() {
    use vla_rt::backend::cpu::CpuPolicy;
    use vla_rt::policy::{Policy, PolicyOptions};
    let dir = scratch("policy");
    let out = dir.join("int4.safetensors");
    quant_file::write_quantized_file(
        &model_dir(),
        Quantization::Int4,
        ProjectorFormat::Int8,
        &out,
    )
    .unwrap();
    let image = vla_rt::preprocess::load_image(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/openvla-tiny/case2_320x240/image.png"),
    )
    .unwrap();
    let instruction = "Move the blue cup 3 cm to the left of the bowl (slowly)";
    let mut options = PolicyOptions {
        unnorm_key: Some("tiny_fractal".into()),
        quantization: Quantization::Int4,
        projector: ProjectorFormat::Int8,
        ..PolicyOptions::default()
    };
    let at_load = CpuPolicy::load(&model_dir(), &options)
        .unwrap()
        .predict(&image, instruction)
        .unwrap();
    options.quantized_weights = Some(out.clone());
    let from_file = CpuPolicy::load(&model_dir(), &options)
        .unwrap()
        .predict(&image, instruction)
        .unwrap();
    assert_eq!(from_file.tokens, at_load.tokens);
    assert_eq!(from_file.action, at_load.action);

    // The file holds INT4: asking for INT8 with it is refused, naming the file.
    options.quantization = Quantization::Int8;
    let err = CpuPolicy::load(&model_dir(), &options)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&out.display().to_string()) && err.contains("int4"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
