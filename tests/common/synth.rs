//! Writes synthetic OpenVLA checkpoint folders with random weights through the `safetensors`
//! crate: any widths, depths, heads, GQA, dtypes, sharding; optionally broken on purpose
//! (a tensor left out or given a wrong shape).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use safetensors::Dtype;

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

#[derive(Debug, Clone)]
pub struct SynthLlm {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub intermediate: usize,
    pub vocab: usize,
}

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

/// Named tensors with f32 values, before dtype conversion.
struct Tensors {
    rng: Rng,
    list: Vec<(String, Vec<usize>, Vec<f32>)>,
}

impl Tensors {
    fn add(&mut self, name: String, shape: Vec<usize>, center: f32, spread: f32) {
        let n: usize = shape.iter().product();
        let values = (0..n).map(|_| center + spread * self.rng.next()).collect();
        self.list.push((name, shape, values));
    }

    fn linear(&mut self, prefix: &str, out: usize, inp: usize, bias: bool) {
        let spread = 1.7 / (inp as f32).sqrt();
        self.add(format!("{prefix}.weight"), vec![out, inp], 0.0, spread);
        if bias {
            self.add(format!("{prefix}.bias"), vec![out], 0.0, 0.1);
        }
    }

    fn norm(&mut self, prefix: &str, width: usize, bias: bool) {
        self.add(format!("{prefix}.weight"), vec![width], 1.0, 0.1);
        if bias {
            self.add(format!("{prefix}.bias"), vec![width], 0.0, 0.1);
        }
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
    let mut t = Tensors {
        rng: Rng(spec.seed),
        list: Vec::new(),
    };
    let grid = 224 / spec.patch;
    for (vit, name) in spec.vits.iter().zip(["featurizer", "fused_featurizer"]) {
        let p = format!("vision_backbone.{name}");
        let d = vit.embed;
        t.add(
            format!("{p}.patch_embed.proj.weight"),
            vec![d, 3, spec.patch, spec.patch],
            0.0,
            1.7 / ((3 * spec.patch * spec.patch) as f32).sqrt(),
        );
        t.add(format!("{p}.patch_embed.proj.bias"), vec![d], 0.0, 0.1);
        t.add(format!("{p}.pos_embed"), vec![1, grid * grid, d], 0.0, 0.5);
        if vit.class_token {
            t.add(format!("{p}.cls_token"), vec![1, 1, d], 0.0, 0.5);
        }
        if vit.registers > 0 {
            t.add(
                format!("{p}.reg_token"),
                vec![1, vit.registers, d],
                0.0,
                0.5,
            );
        }
        for b in 0..vit.depth {
            let q = format!("{p}.blocks.{b}");
            t.norm(&format!("{q}.norm1"), d, true);
            t.linear(&format!("{q}.attn.qkv"), 3 * d, d, true);
            t.linear(&format!("{q}.attn.proj"), d, d, true);
            t.norm(&format!("{q}.norm2"), d, true);
            t.linear(&format!("{q}.mlp.fc1"), vit.mlp, d, true);
            t.linear(&format!("{q}.mlp.fc2"), d, vit.mlp, true);
            if vit.layer_scale {
                t.add(format!("{q}.ls1.scale_factor"), vec![d], 0.5, 0.2);
                t.add(format!("{q}.ls2.scale_factor"), vec![d], 0.5, 0.2);
            }
        }
        t.norm(&format!("{p}.norm"), d, true);
    }
    let vision: usize = spec.vits.iter().map(|v| v.embed).sum();
    let l = &spec.llm;
    t.linear("projector.fc1", 4 * vision, vision, true);
    t.linear("projector.fc2", l.hidden, 4 * vision, true);
    t.linear("projector.fc3", l.hidden, l.hidden, true);
    let kv = l.kv_heads * (l.hidden / l.heads);
    t.add(
        "language_model.model.embed_tokens.weight".into(),
        vec![l.vocab, l.hidden],
        0.0,
        1.0,
    );
    for i in 0..l.layers {
        let p = format!("language_model.model.layers.{i}");
        t.norm(&format!("{p}.input_layernorm"), l.hidden, false);
        t.linear(&format!("{p}.self_attn.q_proj"), l.hidden, l.hidden, false);
        t.linear(&format!("{p}.self_attn.k_proj"), kv, l.hidden, false);
        t.linear(&format!("{p}.self_attn.v_proj"), kv, l.hidden, false);
        t.linear(&format!("{p}.self_attn.o_proj"), l.hidden, l.hidden, false);
        t.norm(&format!("{p}.post_attention_layernorm"), l.hidden, false);
        t.linear(
            &format!("{p}.mlp.gate_proj"),
            l.intermediate,
            l.hidden,
            false,
        );
        t.linear(&format!("{p}.mlp.up_proj"), l.intermediate, l.hidden, false);
        t.linear(
            &format!("{p}.mlp.down_proj"),
            l.hidden,
            l.intermediate,
            false,
        );
    }
    t.norm("language_model.model.norm", l.hidden, false);
    t.linear("language_model.lm_head", l.vocab, l.hidden, false);

    let mut encoded: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, mut shape, values) in t.list {
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
    config["text_config"] = serde_json::json!({
        "hidden_size": l.hidden,
        "intermediate_size": l.intermediate,
        "model_type": "llama",
        "num_attention_heads": l.heads,
        "num_hidden_layers": l.layers,
        "num_key_value_heads": l.kv_heads,
        "pad_token_id": 32000,
        "vocab_size": l.vocab,
    });
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
