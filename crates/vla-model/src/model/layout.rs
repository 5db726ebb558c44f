//! The tensors of an OpenVLA checkpoint (names, shapes, and what each one is) for given
//! dimensions, in checkpoint order: the one description that random-weight models (the
//! benchmarks) and synthetic checkpoint folders (the tests) are generated from, so that both
//! always match what [`super::openvla::OpenVla`] loads.

/// One featurizer (`vision_backbone.featurizer`, then `fused_featurizer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VitLayout {
    pub embed: usize,
    pub depth: usize,
    pub mlp: usize,
    pub patch: usize,
    pub image_size: usize,
    pub class_token: bool,
    pub registers: usize,
    pub layer_scale: bool,
    /// The final `norm` (present in timm checkpoints, unused by OpenVLA).
    pub final_norm: bool,
}

/// The Llama language model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LlmLayout {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub intermediate: usize,
    pub vocab: usize,
}

/// What a tensor is, which decides how a generator fills it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorKind {
    /// A linear layer's weight (`fan_in` inputs).
    Weight {
        fan_in: usize,
    },
    /// The patch embedding's convolution weight (`fan_in` = 3 · patch²).
    PatchWeight {
        fan_in: usize,
    },
    Bias,
    NormWeight,
    NormBias,
    PositionEmbedding,
    /// A class or register token.
    PrefixToken,
    LayerScale,
    TokenEmbedding,
}

/// One tensor of the layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: TensorKind,
}

struct Specs(Vec<TensorSpec>);

impl Specs {
    fn add(&mut self, name: String, shape: Vec<usize>, kind: TensorKind) {
        self.0.push(TensorSpec { name, shape, kind });
    }

    fn linear(&mut self, prefix: &str, out: usize, inp: usize, bias: bool) {
        self.add(
            format!("{prefix}.weight"),
            vec![out, inp],
            TensorKind::Weight { fan_in: inp },
        );
        if bias {
            self.add(format!("{prefix}.bias"), vec![out], TensorKind::Bias);
        }
    }

    fn norm(&mut self, prefix: &str, width: usize, bias: bool) {
        self.add(
            format!("{prefix}.weight"),
            vec![width],
            TensorKind::NormWeight,
        );
        if bias {
            self.add(format!("{prefix}.bias"), vec![width], TensorKind::NormBias);
        }
    }
}

/// Every tensor of an OpenVLA checkpoint with these featurizers, the fused GELU projector
/// (`4 · Σ embed` wide) and this Llama, in checkpoint order.
pub fn openvla_tensors(vits: &[VitLayout], llm: &LlmLayout) -> Vec<TensorSpec> {
    let mut t = Specs(Vec::new());
    for (vit, name) in vits.iter().zip(["featurizer", "fused_featurizer"]) {
        let p = format!("vision_backbone.{name}");
        let d = vit.embed;
        let grid = vit.image_size / vit.patch.max(1);
        t.add(
            format!("{p}.patch_embed.proj.weight"),
            vec![d, 3, vit.patch, vit.patch],
            TensorKind::PatchWeight {
                fan_in: 3 * vit.patch * vit.patch,
            },
        );
        t.add(
            format!("{p}.patch_embed.proj.bias"),
            vec![d],
            TensorKind::Bias,
        );
        t.add(
            format!("{p}.pos_embed"),
            vec![1, grid * grid, d],
            TensorKind::PositionEmbedding,
        );
        if vit.class_token {
            t.add(
                format!("{p}.cls_token"),
                vec![1, 1, d],
                TensorKind::PrefixToken,
            );
        }
        if vit.registers > 0 {
            t.add(
                format!("{p}.reg_token"),
                vec![1, vit.registers, d],
                TensorKind::PrefixToken,
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
                t.add(
                    format!("{q}.ls1.scale_factor"),
                    vec![d],
                    TensorKind::LayerScale,
                );
                t.add(
                    format!("{q}.ls2.scale_factor"),
                    vec![d],
                    TensorKind::LayerScale,
                );
            }
        }
        if vit.final_norm {
            t.norm(&format!("{p}.norm"), d, true);
        }
    }
    let vision: usize = vits.iter().map(|v| v.embed).sum();
    t.linear("projector.fc1", 4 * vision, vision, true);
    t.linear("projector.fc2", llm.hidden, 4 * vision, true);
    t.linear("projector.fc3", llm.hidden, llm.hidden, true);
    let kv = llm.kv_heads * (llm.hidden / llm.heads.max(1));
    t.add(
        "language_model.model.embed_tokens.weight".into(),
        vec![llm.vocab, llm.hidden],
        TensorKind::TokenEmbedding,
    );
    for i in 0..llm.layers {
        let p = format!("language_model.model.layers.{i}");
        let (h, inter) = (llm.hidden, llm.intermediate);
        t.norm(&format!("{p}.input_layernorm"), h, false);
        t.linear(&format!("{p}.self_attn.q_proj"), h, h, false);
        t.linear(&format!("{p}.self_attn.k_proj"), kv, h, false);
        t.linear(&format!("{p}.self_attn.v_proj"), kv, h, false);
        t.linear(&format!("{p}.self_attn.o_proj"), h, h, false);
        t.norm(&format!("{p}.post_attention_layernorm"), h, false);
        t.linear(&format!("{p}.mlp.gate_proj"), inter, h, false);
        t.linear(&format!("{p}.mlp.up_proj"), inter, h, false);
        t.linear(&format!("{p}.mlp.down_proj"), h, inter, false);
    }
    t.norm("language_model.model.norm", llm.hidden, false);
    t.linear("language_model.lm_head", llm.vocab, llm.hidden, false);
    t.0
}

/// The `text_config` of `config.json` for this Llama (a diff against LlamaConfig's defaults).
pub fn text_config(llm: &LlmLayout) -> serde_json::Value {
    serde_json::json!({
        "hidden_size": llm.hidden,
        "intermediate_size": llm.intermediate,
        "model_type": "llama",
        "num_attention_heads": llm.heads,
        "num_hidden_layers": llm.layers,
        "num_key_value_heads": llm.kv_heads,
        "pad_token_id": 32000,
        "vocab_size": llm.vocab,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tiny_fixture_checkpoint_matches_the_layout() {
        // The bundled checkpoint comes from the reference; its dimensions are in its config.
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../engines/openvla-tiny");
        let ckpt = crate::model::checkpoint::Checkpoint::open_dir(&dir).unwrap();
        let vit = |name: &str, class_token, registers, layer_scale| {
            let p = format!("vision_backbone.{name}");
            let shape = ckpt.shape(&format!("{p}.patch_embed.proj.weight")).unwrap();
            let fc1 = ckpt.shape(&format!("{p}.blocks.0.mlp.fc1.weight")).unwrap();
            let depth = (0..)
                .take_while(|b| ckpt.contains(&format!("{p}.blocks.{b}.norm1.weight")))
                .count();
            VitLayout {
                embed: shape[0],
                depth,
                mlp: fc1[0],
                patch: shape[2],
                image_size: 224,
                class_token,
                registers,
                layer_scale,
                final_norm: ckpt.contains(&format!("{p}.norm.weight")),
            }
        };
        let vits = [
            vit("featurizer", true, 4, true),
            vit("fused_featurizer", false, 0, false),
        ];
        let llm = LlmLayout {
            hidden: 64,
            layers: 2,
            heads: 4,
            kv_heads: 4,
            intermediate: 172,
            vocab: 32064,
        };
        let specs = openvla_tensors(&vits, &llm);
        for spec in &specs {
            assert_eq!(
                ckpt.shape(&spec.name).unwrap(),
                spec.shape.as_slice(),
                "{}",
                spec.name
            );
        }
        let names: std::collections::HashSet<&str> =
            specs.iter().map(|s| s.name.as_str()).collect();
        // Besides the layout the reference checkpoint holds only SigLIP's attention-pooling
        // head, which OpenVLA never runs.
        for name in ckpt.names() {
            assert!(
                names.contains(name)
                    || name.starts_with("vision_backbone.fused_featurizer.attn_pool."),
                "{name} is not in the layout"
            );
        }
    }
}
