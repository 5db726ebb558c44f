//! A featurizer as an ONNX graph (opset 17), node for node the math of [`crate::model::vit`]:
//! patch Conv → tokens (+ prefix tokens, + position embedding) → blocks `0..=depth - 2` →
//! the patch rows, with no final norm. Weights are f32 initializers.

use super::proto::{
    AttributeProto, AttributeType, Dimension, GraphProto, NodeProto, TensorProto, TensorShapeProto,
    TensorTypeProto, TypeProto, ValueInfoProto, DATA_TYPE_FLOAT, DATA_TYPE_INT64,
};
use crate::model::checkpoint::Checkpoint;
use crate::model::vit::{VitConfig, VIT_LAYER_NORM_EPS};
use crate::model::ModelError;

/// Name of the graph's input: one encoder's normalised `[1, 3, S, S]` pixels.
pub const INPUT_NAME: &str = "pixel_values";
/// Name of the graph's output: `[1, patches, D]` patch features.
pub const OUTPUT_NAME: &str = "patches";

enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
}

/// Nodes and initializers of one graph, with fresh value names.
struct GraphBuilder {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    next_value: usize,
}

impl GraphBuilder {
    fn new() -> Self {
        Self {
            nodes: Vec::new(),
            initializers: Vec::new(),
            next_value: 0,
        }
    }

    fn f32_initializer(&mut self, name: &str, dims: &[usize], values: &[f32]) -> String {
        let raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: DATA_TYPE_FLOAT,
            name: name.to_string(),
            raw_data,
        });
        name.to_string()
    }

    fn i64_initializer(&mut self, name: &str, dims: &[usize], values: &[i64]) -> String {
        let raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: DATA_TYPE_INT64,
            name: name.to_string(),
            raw_data,
        });
        name.to_string()
    }

    /// Adds `op(inputs)` and returns its (single) output's name: `output` or a fresh one.
    fn node(
        &mut self,
        op: &str,
        inputs: &[&str],
        attrs: Vec<(&str, Attr)>,
        output: Option<&str>,
    ) -> String {
        let out = match output {
            Some(name) => name.to_string(),
            None => {
                self.next_value += 1;
                format!("{}_{}", op.to_lowercase(), self.next_value)
            }
        };
        let attribute = attrs
            .into_iter()
            .map(|(name, value)| {
                let mut a = AttributeProto {
                    name: name.to_string(),
                    ..Default::default()
                };
                match value {
                    Attr::Int(i) => {
                        a.i = i;
                        a.r#type = AttributeType::Int as i32;
                    }
                    Attr::Ints(v) => {
                        a.ints = v;
                        a.r#type = AttributeType::Ints as i32;
                    }
                    Attr::Float(f) => {
                        a.f = f;
                        a.r#type = AttributeType::Float as i32;
                    }
                }
                a
            })
            .collect();
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            name: format!("{op}_{}", self.nodes.len()),
            op_type: op.to_string(),
            attribute,
        });
        out
    }

    /// `x · Wᵀ + b` for the checkpoint linear `{name}.weight` `[out, in]`, `{name}.bias`;
    /// the weight is stored transposed (`[in, out]`) for MatMul.
    fn linear(
        &mut self,
        ckpt: &Checkpoint,
        x: &str,
        name: &str,
        out: usize,
        inp: usize,
    ) -> Result<String, ModelError> {
        let w = ckpt.f32_with_shape(&format!("{name}.weight"), &[out, inp])?;
        let mut wt = vec![0.0f32; w.len()];
        for (o, row) in w.chunks_exact(inp).enumerate() {
            for (i, &v) in row.iter().enumerate() {
                wt[i * out + o] = v;
            }
        }
        let b = ckpt.f32_with_shape(&format!("{name}.bias"), &[out])?;
        let wt = self.f32_initializer(&format!("{name}.weight_t"), &[inp, out], &wt);
        let b = self.f32_initializer(&format!("{name}.bias"), &[out], &b);
        let y = self.node("MatMul", &[x, &wt], vec![], None);
        Ok(self.node("Add", &[&y, &b], vec![], None))
    }

    fn layer_norm(
        &mut self,
        ckpt: &Checkpoint,
        x: &str,
        name: &str,
        d: usize,
    ) -> Result<String, ModelError> {
        let w = ckpt.f32_with_shape(&format!("{name}.weight"), &[d])?;
        let b = ckpt.f32_with_shape(&format!("{name}.bias"), &[d])?;
        let w = self.f32_initializer(&format!("{name}.weight"), &[d], &w);
        let b = self.f32_initializer(&format!("{name}.bias"), &[d], &b);
        Ok(self.node(
            "LayerNormalization",
            &[x, &w, &b],
            vec![
                ("axis", Attr::Int(-1)),
                ("epsilon", Attr::Float(VIT_LAYER_NORM_EPS as f32)),
            ],
            None,
        ))
    }

    /// `branch · γ` when the block has LayerScale `{name}.scale_factor`.
    fn layer_scale(
        &mut self,
        ckpt: &Checkpoint,
        branch: String,
        name: &str,
        cfg: &VitConfig,
    ) -> Result<String, ModelError> {
        if !cfg.layer_scale {
            return Ok(branch);
        }
        let d = cfg.embed_dim;
        let gamma = ckpt.f32_with_shape(&format!("{name}.scale_factor"), &[d])?;
        let gamma = self.f32_initializer(&format!("{name}.scale_factor"), &[d], &gamma);
        Ok(self.node("Mul", &[&branch, &gamma], vec![], None))
    }
}

fn tensor_info(name: &str, dims: &[usize]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type: DATA_TYPE_FLOAT,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| Dimension {
                            dim_value: Some(d as i64),
                        })
                        .collect(),
                }),
            }),
        }),
    }
}

/// Input shape `[1, 3, S, S]` of the featurizer `cfg`.
pub fn input_shape(cfg: &VitConfig) -> [usize; 4] {
    [1, 3, cfg.image_size, cfg.image_size]
}

/// Output shape `[1, patches, D]` of the featurizer `cfg`.
pub fn output_shape(cfg: &VitConfig) -> [usize; 3] {
    [1, cfg.num_patches(), cfg.embed_dim]
}

/// The graph of the featurizer under `prefix` (whose shapes are `cfg`).
pub fn vit_graph(
    ckpt: &Checkpoint,
    prefix: &str,
    cfg: &VitConfig,
    graph_name: &str,
) -> Result<GraphProto, ModelError> {
    let (d, p, patches, heads, hd) = (
        cfg.embed_dim,
        cfg.patch_size,
        cfg.num_patches(),
        cfg.num_heads,
        cfg.head_dim(),
    );
    let prefix_rows = cfg.num_prefix_tokens();
    let tokens = patches + prefix_rows;
    let mut g = GraphBuilder::new();

    // Patch embedding: Conv k = s = p → [1, D, g, g] → [1, D, patches] → [1, patches, D].
    let conv_w =
        ckpt.f32_with_shape(&format!("{prefix}.patch_embed.proj.weight"), &[d, 3, p, p])?;
    let conv_b = ckpt.f32_with_shape(&format!("{prefix}.patch_embed.proj.bias"), &[d])?;
    let conv_w = g.f32_initializer(
        &format!("{prefix}.patch_embed.proj.weight"),
        &[d, 3, p, p],
        &conv_w,
    );
    let conv_b = g.f32_initializer(&format!("{prefix}.patch_embed.proj.bias"), &[d], &conv_b);
    let conv = g.node(
        "Conv",
        &[INPUT_NAME, &conv_w, &conv_b],
        vec![
            ("kernel_shape", Attr::Ints(vec![p as i64, p as i64])),
            ("strides", Attr::Ints(vec![p as i64, p as i64])),
        ],
        None,
    );
    let flat_shape = g.i64_initializer(
        "shape_channels_patches",
        &[3],
        &[1, d as i64, patches as i64],
    );
    let flat = g.node("Reshape", &[&conv, &flat_shape], vec![], None);
    let mut x = g.node(
        "Transpose",
        &[&flat],
        vec![("perm", Attr::Ints(vec![0, 2, 1]))],
        None,
    );

    // Position embedding, over the patches only or over prefix + patches (OPENVLA_FACTS §2).
    let pos_name = format!("{prefix}.pos_embed");
    let pos_covers_prefix = match ckpt.shape(&pos_name)? {
        [1, n, w] if *n == patches && *w == d => false,
        [1, n, w] if *n == tokens && *w == d && prefix_rows > 0 => true,
        other => {
            return Err(ModelError::Shape {
                name: pos_name,
                expected: vec![1, patches, d],
                got: other.to_vec(),
            })
        }
    };
    let pos_rows = if pos_covers_prefix { tokens } else { patches };
    let pos = ckpt.f32_with_shape(&pos_name, &[1, pos_rows, d])?;
    let pos = g.f32_initializer(&pos_name, &[1, pos_rows, d], &pos);
    if !pos_covers_prefix {
        x = g.node("Add", &[&x, &pos], vec![], None);
    }
    if prefix_rows > 0 {
        let mut rows = Vec::with_capacity(prefix_rows * d);
        if cfg.num_class_tokens == 1 {
            rows.extend(ckpt.f32_with_shape(&format!("{prefix}.cls_token"), &[1, 1, d])?);
        }
        if cfg.num_reg_tokens > 0 {
            rows.extend(
                ckpt.f32_with_shape(&format!("{prefix}.reg_token"), &[1, cfg.num_reg_tokens, d])?,
            );
        }
        let rows = g.f32_initializer(
            &format!("{prefix}.prefix_tokens"),
            &[1, prefix_rows, d],
            &rows,
        );
        x = g.node("Concat", &[&rows, &x], vec![("axis", Attr::Int(1))], None);
        if pos_covers_prefix {
            x = g.node("Add", &[&x, &pos], vec![], None);
        }
    }

    let qkv_shape = g.i64_initializer(
        "shape_qkv_heads",
        &[5],
        &[1, tokens as i64, 3, heads as i64, hd as i64],
    );
    let merge_shape = g.i64_initializer("shape_tokens_width", &[3], &[1, tokens as i64, d as i64]);
    let picks: Vec<String> = (0..3)
        .map(|i| g.i64_initializer(&format!("index_{i}"), &[], &[i]))
        .collect();
    let scale = g.f32_initializer("attention_scale", &[], &[1.0 / (hd as f32).sqrt()]);
    let inv_sqrt2 = g.f32_initializer("gelu_inv_sqrt2", &[], &[std::f32::consts::FRAC_1_SQRT_2]);
    let one = g.f32_initializer("one", &[], &[1.0]);
    let half = g.f32_initializer("half", &[], &[0.5]);

    for i in 0..cfg.depth - 1 {
        let b = format!("{prefix}.blocks.{i}");
        // Attention: qkv [1, T, 3D] → [1, T, 3, H, hd] → [3, 1, H, T, hd].
        let n1 = g.layer_norm(ckpt, &x, &format!("{b}.norm1"), d)?;
        let qkv = g.linear(ckpt, &n1, &format!("{b}.attn.qkv"), 3 * d, d)?;
        let split = g.node("Reshape", &[&qkv, &qkv_shape], vec![], None);
        let heads_first = g.node(
            "Transpose",
            &[&split],
            vec![("perm", Attr::Ints(vec![2, 0, 3, 1, 4]))],
            None,
        );
        let [q, k, v] = [0, 1, 2].map(|j| {
            g.node(
                "Gather",
                &[&heads_first, &picks[j]],
                vec![("axis", Attr::Int(0))],
                None,
            )
        });
        let kt = g.node(
            "Transpose",
            &[&k],
            vec![("perm", Attr::Ints(vec![0, 1, 3, 2]))],
            None,
        );
        let scores = g.node("MatMul", &[&q, &kt], vec![], None);
        let scores = g.node("Mul", &[&scores, &scale], vec![], None);
        let probs = g.node("Softmax", &[&scores], vec![("axis", Attr::Int(-1))], None);
        let heads_out = g.node("MatMul", &[&probs, &v], vec![], None);
        let tokens_first = g.node(
            "Transpose",
            &[&heads_out],
            vec![("perm", Attr::Ints(vec![0, 2, 1, 3]))],
            None,
        );
        let merged = g.node("Reshape", &[&tokens_first, &merge_shape], vec![], None);
        let attn = g.linear(ckpt, &merged, &format!("{b}.attn.proj"), d, d)?;
        let attn = g.layer_scale(ckpt, attn, &format!("{b}.ls1"), cfg)?;
        x = g.node("Add", &[&x, &attn], vec![], None);

        // MLP with exact GELU: h · ½ · (1 + erf(h / √2)).
        let n2 = g.layer_norm(ckpt, &x, &format!("{b}.norm2"), d)?;
        let h = g.linear(ckpt, &n2, &format!("{b}.mlp.fc1"), cfg.mlp_hidden, d)?;
        let scaled = g.node("Mul", &[&h, &inv_sqrt2], vec![], None);
        let erf = g.node("Erf", &[&scaled], vec![], None);
        let erf1 = g.node("Add", &[&erf, &one], vec![], None);
        let gated = g.node("Mul", &[&h, &erf1], vec![], None);
        let gelu = g.node("Mul", &[&gated, &half], vec![], None);
        let mlp = g.linear(ckpt, &gelu, &format!("{b}.mlp.fc2"), d, cfg.mlp_hidden)?;
        let mlp = g.layer_scale(ckpt, mlp, &format!("{b}.ls2"), cfg)?;
        x = g.node("Add", &[&x, &mlp], vec![], None);
    }

    // The patch rows: prefix tokens dropped, no final norm.
    if prefix_rows > 0 {
        let starts = g.i64_initializer("slice_starts", &[1], &[prefix_rows as i64]);
        let ends = g.i64_initializer("slice_ends", &[1], &[tokens as i64]);
        let axes = g.i64_initializer("slice_axes", &[1], &[1]);
        g.node(
            "Slice",
            &[&x, &starts, &ends, &axes],
            vec![],
            Some(OUTPUT_NAME),
        );
    } else {
        g.node("Identity", &[&x], vec![], Some(OUTPUT_NAME));
    }

    Ok(GraphProto {
        node: g.nodes,
        name: graph_name.to_string(),
        initializer: g.initializers,
        input: vec![tensor_info(INPUT_NAME, &input_shape(cfg))],
        output: vec![tensor_info(OUTPUT_NAME, &output_shape(cfg))],
    })
}
