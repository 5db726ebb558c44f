//! Nothing is tied to the tiny fixture's dimensions: checkpoints of other shapes (patch 16,
//! odd MLP sizes, GQA), sharded with an index, and stored as f16/bf16 load and run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;

use common::synth::{write_checkpoint, SynthDtype, SynthSpec, TempDir};
use vla_rt::backend::cpu::CpuModelRunner;
use vla_rt::policy::PolicyOptions;

const INSTRUCTION: &str = "Stack the cups";

fn load(dir: &std::path::Path) -> CpuModelRunner {
    let options = PolicyOptions {
        unnorm_key: Some("tiny_bridge".into()),
        ..PolicyOptions::default()
    };
    CpuModelRunner::load(dir, &options).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

/// A smooth, deterministic `[6, 224, 224]` image in the normalised range.
fn pixel_values() -> Vec<f32> {
    (0..6 * 224 * 224)
        .map(|i| {
            let (c, y, x) = (i / (224 * 224), (i / 224) % 224, i % 224);
            (1.7 * ((x as f32 * 0.05 + c as f32).sin() + (y as f32 * 0.031).cos()) / 2.0)
                - 0.1 * c as f32
        })
        .collect()
}

fn written(tag: &str, spec: &SynthSpec) -> TempDir {
    let dir = TempDir::new(tag);
    write_checkpoint(dir.path(), spec);
    dir
}

#[test]
fn odd_shaped_gqa_checkpoint_loads_and_predicts_in_range_tokens() {
    let spec = SynthSpec::odd();
    let dir = written("odd", &spec);
    let mut runner = load(dir.path());
    let model = runner.model();
    assert_eq!(model.num_patches(), 196);
    assert_eq!(model.vision_dim(), 32 + 36);
    let dino = model.featurizers()[0].config();
    assert_eq!(
        (dino.embed_dim, dino.depth, dino.num_heads, dino.mlp_hidden),
        (32, 3, 4, 83)
    );
    assert_eq!(
        (dino.num_class_tokens, dino.num_reg_tokens, dino.layer_scale),
        (1, 4, true)
    );
    let siglip = model.featurizers()[1].config();
    assert_eq!(
        (siglip.embed_dim, siglip.num_heads, siglip.mlp_hidden),
        (36, 3, 71)
    );
    assert_eq!(siglip.num_prefix_tokens(), 0);
    let llm = model.llama().config();
    assert_eq!(
        (llm.hidden_size, llm.num_heads, llm.num_kv_heads),
        (48, 6, 2)
    );

    let features = runner
        .vision_features(&pixel_values())
        .expect("vision runs");
    assert_eq!(features[0].len(), 196 * 32);
    assert_eq!(features[1].len(), 196 * 36);
    let prediction = runner
        .predict_pixels(&pixel_values(), INSTRUCTION)
        .expect("predicts");
    assert_eq!(prediction.tokens.len(), 7);
    assert!(prediction.tokens.iter().all(|&t| (t as usize) < 32064));
    assert!(prediction.action.iter().all(|a| a.is_finite()));
    assert!(prediction.normalized.iter().all(|n| n.abs() < 1.0));
}

#[test]
fn sharded_checkpoint_gives_the_same_logits_as_one_file() {
    let mut spec = SynthSpec::odd();
    let single = written("single", &spec);
    spec.shards = 3;
    let sharded = written("sharded", &spec);
    assert!(sharded.path().join("model.safetensors.index.json").exists());
    assert!(!sharded.path().join("model.safetensors").exists());
    let a = load(single.path())
        .step0_logits(&pixel_values(), INSTRUCTION)
        .unwrap();
    let b = load(sharded.path())
        .step0_logits(&pixel_values(), INSTRUCTION)
        .unwrap();
    assert_eq!(a, b);
}

#[test]
fn half_precision_tensors_load_as_their_exact_f32_values() {
    for dtype in [SynthDtype::BF16, SynthDtype::F16] {
        let mut spec = SynthSpec::odd();
        spec.values_in = dtype;
        let as_f32 = written("as-f32", &spec);
        spec.stored_as = dtype;
        let as_half = written("as-half", &spec);
        let a = load(as_f32.path())
            .step0_logits(&pixel_values(), INSTRUCTION)
            .unwrap();
        let b = load(as_half.path())
            .step0_logits(&pixel_values(), INSTRUCTION)
            .unwrap();
        assert_eq!(a, b, "{dtype:?}");
    }
}

/// GQA must equal multi-head attention whose key/value heads are repeated per group
/// (`repeat_kv`: kv head j serves query heads j·n_rep .. (j+1)·n_rep − 1).
#[test]
fn gqa_equals_multi_head_attention_with_repeated_kv_heads() {
    let spec = SynthSpec::odd();
    let gqa = written("gqa", &spec);
    let mha = TempDir::new("mha");
    for file in [
        "config.json",
        "vla_rt_model.json",
        "tokenizer.json",
        "preprocessor_config.json",
    ] {
        std::fs::copy(gqa.path().join(file), mha.path().join(file)).unwrap();
    }
    let (heads, kv_heads, hidden) = (spec.llm.heads, spec.llm.kv_heads, spec.llm.hidden);
    let head_dim = hidden / heads;
    let n_rep = heads / kv_heads;
    let bytes = std::fs::read(gqa.path().join("model.safetensors")).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut owned: HashMap<String, (Vec<usize>, Vec<u8>)> = HashMap::new();
    for (name, view) in tensors.tensors() {
        let (shape, data) = if name.ends_with("k_proj.weight") || name.ends_with("v_proj.weight") {
            let row_bytes = hidden * 4;
            let mut data = Vec::with_capacity(heads * head_dim * row_bytes);
            for h in 0..heads {
                let kv = h / n_rep;
                let start = kv * head_dim * row_bytes;
                data.extend_from_slice(&view.data()[start..start + head_dim * row_bytes]);
            }
            (vec![heads * head_dim, hidden], data)
        } else {
            (view.shape().to_vec(), view.data().to_vec())
        };
        owned.insert(name, (shape, data));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = owned
        .iter()
        .map(|(name, (shape, data))| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data);
            (name.clone(), view.unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, None, &mha.path().join("model.safetensors")).unwrap();
    let config_path = mha.path().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["text_config"]["num_key_value_heads"] = serde_json::json!(heads);
    std::fs::write(&config_path, config.to_string()).unwrap();

    let mut gqa_runner = load(gqa.path());
    let mut mha_runner = load(mha.path());
    assert_eq!(mha_runner.model().llama().config().num_kv_heads, heads);
    let a = gqa_runner
        .step0_logits(&pixel_values(), INSTRUCTION)
        .unwrap();
    let b = mha_runner
        .step0_logits(&pixel_values(), INSTRUCTION)
        .unwrap();
    let worst = common::max_abs(&a, &b);
    assert!(
        worst < 1e-4,
        "GQA vs repeated-KV MHA logits differ by {worst:e}"
    );
    let ta = gqa_runner
        .predict_pixels(&pixel_values(), INSTRUCTION)
        .unwrap()
        .tokens;
    let tb = mha_runner
        .predict_pixels(&pixel_values(), INSTRUCTION)
        .unwrap()
        .tokens;
    assert_eq!(ta, tb);
}
