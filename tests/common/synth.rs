//! Writes synthetic OpenVLA checkpoint folders with random weights through the `safetensors`
//! crate: any widths, depths, heads, GQA, dtypes, sharding; optionally broken on purpose
//! (a tensor left out or given a wrong shape).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use safetensors::Dtype;

use vla_rt::model::layout::{openvla_tensors, text_config, LlmLayout, TensorKind, VitLayout};

use super::tiny_model_dir;

/// A temporary folder removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("vla-rt-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SynthDtype {
    F32,
    F16,
    BF16,
}

#[derive(Debug, Clone)]
pub struct SynthVit {
    pub embed: usize,
    pub depth: usize,
    pub heads: usize,
    pub mlp: usize,
    pub class_token: bool,
    pub registers: usize,
    pub layer_scale: bool,
}

/// The language model's dimensions.
pub type SynthLlm = LlmLayout;

#[derive(Debug, Clone)]
pub struct SynthSpec {
    /// `featurizer`, then `fused_featurizer`.
    pub vits: Vec<SynthVit>,
    pub patch: usize,
    pub llm: SynthLlm,
    /// Values are rounded to this dtype's precision...
    pub values_in: SynthDtype,
    /// ...and stored as this dtype.
    pub stored_as: SynthDtype,
    pub shards: usize,
    pub omit: Option<String>,
    pub reshape: Option<(String, Vec<usize>)>,
    pub seed: u64,
}

impl SynthSpec {
    /// Shapes unlike the tiny fixture's: patch 16 (196 patches), odd MLP sizes, GQA 6/2.
    pub fn odd() -> Self {
        Self {
            vits: vec![
                SynthVit {
                    embed: 32,
                    depth: 3,
                    heads: 4,
                    mlp: 83,
                    class_token: true,
                    registers: 4,
                    layer_scale: true,
                },
                SynthVit {
                    embed: 36,
                    depth: 3,
                    heads: 3,
                    mlp: 71,
                    class_token: false,
                    registers: 0,
                    layer_scale: false,
                },
            ],
            patch: 16,
            llm: SynthLlm {
                hidden: 48,
                layers: 3,
                heads: 6,
                kv_heads: 2,
                intermediate: 97,
                vocab: 32064,
            },
            values_in: SynthDtype::F32,
            stored_as: SynthDtype::F32,
            shards: 1,
            omit: None,
            reshape: None,
            seed: 7,
        }
    }
}

/// Deterministic uniform values in [-1, 1) (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

fn round_to(v: f32, dtype: SynthDtype) -> f32 {
    match dtype {
        SynthDtype::F32 => v,
        SynthDtype::F16 => half::f16::from_f32(v).to_f32(),
        SynthDtype::BF16 => half::bf16::from_f32(v).to_f32(),
    }
}

fn encode(values: &[f32], dtype: SynthDtype) -> (Dtype, Vec<u8>) {
    match dtype {
        SynthDtype::F32 => (
            Dtype::F32,
            values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
        SynthDtype::F16 => (
            Dtype::F16,
            values
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect(),
        ),
        SynthDtype::BF16 => (
            Dtype::BF16,
            values
                .iter()
                .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                .collect(),
        ),
    }
}

/// Writes the checkpoint folder: weights, `config.json` (the tiny fixture's with this
/// `text_config`), `vla_rt_model.json`, and the tiny fixture's tokenizer and preprocessor.
pub fn write_checkpoint(dir: &Path, spec: &SynthSpec) {
    let vits: Vec<VitLayout> = spec
        .vits
        .iter()
        .map(|v| VitLayout {
            embed: v.embed,
            depth: v.depth,
            mlp: v.mlp,
            patch: spec.patch,
            image_size: 224,
            class_token: v.class_token,
            registers: v.registers,
            layer_scale: v.layer_scale,
            final_norm: true,
        })
        .collect();
    let llm = spec.llm;
    let mut rng = Rng(spec.seed);
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = openvla_tensors(&vits, &llm)
        .into_iter()
        .map(|t| {
            let (center, spread) = match t.kind {
                TensorKind::Weight { fan_in } | TensorKind::PatchWeight { fan_in } => {
                    (0.0, 1.7 / (fan_in as f32).sqrt())
                }
                TensorKind::NormWeight => (1.0, 0.1),
                TensorKind::PositionEmbedding | TensorKind::PrefixToken => (0.0, 0.5),
                TensorKind::LayerScale => (0.5, 0.2),
                TensorKind::TokenEmbedding => (0.0, 1.0),
                TensorKind::Bias | TensorKind::NormBias => (0.0, 0.1),
            };
            let n: usize = t.shape.iter().product();
            let values = (0..n).map(|_| center + spread * rng.next()).collect();
            (t.name, t.shape, values)
        })
        .collect();

    let mut encoded: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, mut shape, values) in tensors {
        if spec.omit.as_deref() == Some(name.as_str()) {
            continue;
        }
        let values: Vec<f32> = values
            .iter()
            .map(|&v| round_to(v, spec.values_in))
            .collect();
        let (dtype, mut bytes) = encode(&values, spec.stored_as);
        if let Some((target, new_shape)) = &spec.reshape {
            if *target == name {
                let width = bytes.len() / values.len();
                bytes.resize(new_shape.iter().product::<usize>() * width, 0);
                shape = new_shape.clone();
            }
        }
        encoded.push((name, dtype, shape, bytes));
    }

    let shards = spec.shards.max(1);
    let mut weight_map = BTreeMap::new();
    for s in 0..shards {
        let file = if shards == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{shards:05}.safetensors", s + 1)
        };
        let views: Vec<(String, TensorView<'_>)> = encoded
            .iter()
            .enumerate()
            .filter(|(i, _)| i % shards == s)
            .map(|(_, (name, dtype, shape, bytes))| {
                weight_map.insert(name.clone(), file.clone());
                (
                    name.clone(),
                    TensorView::new(*dtype, shape.clone(), bytes).expect("tensor view"),
                )
            })
            .collect();
        safetensors::serialize_to_file(views, None, &dir.join(&file)).expect("write safetensors");
    }
    if shards > 1 {
        let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
        std::fs::write(dir.join("model.safetensors.index.json"), index.to_string())
            .expect("write index");
    }

    let tiny = tiny_model_dir();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tiny.join("config.json")).expect("config"))
            .expect("config json");
    config["text_config"] = text_config(&llm);
    config["use_fused_vision_backbone"] = serde_json::json!(spec.vits.len() == 2);
    std::fs::write(dir.join("config.json"), config.to_string()).expect("write config");
    let mut heads = serde_json::Map::new();
    for (vit, name) in spec.vits.iter().zip(["featurizer", "fused_featurizer"]) {
        heads.insert(name.into(), serde_json::json!({ "num_heads": vit.heads }));
    }
    std::fs::write(
        dir.join("vla_rt_model.json"),
        serde_json::Value::Object(heads).to_string(),
    )
    .expect("write vla_rt_model.json");
    for file in ["tokenizer.json", "preprocessor_config.json"] {
        std::fs::copy(tiny.join(file), dir.join(file)).expect("copy tokenizer/preprocessor");
    }
}

/// Copies the bundled tiny checkpoint folder (to break one of its files).
pub fn copy_tiny_model(dir: &Path) {
    for entry in std::fs::read_dir(tiny_model_dir()).expect("tiny model dir") {
        let entry = entry.expect("dir entry");
        std::fs::copy(entry.path(), dir.join(entry.file_name())).expect("copy");
    }
}
