//! Vision transformers as timm builds OpenVLA's featurizers (OPENVLA_FACTS §2): DINOv2 with
//! register tokens (`vit_large_patch14_reg4_dinov2`) and SigLIP (`vit_so400m_patch14_siglip`).
//! Both return the output of block `depth - 2` with the prefix tokens dropped and no final
//! norm; the last block and the SigLIP attention-pool head are never run, so never loaded.
//! Widths, depth, MLP size, patch size and prefix tokens come from the tensors; the head count
//! is given by the caller.

use super::checkpoint::Checkpoint;
use super::linear::Linear;
use super::ops::{self, AttentionShape, HeadLayout};
use super::ModelError;

/// timm's ViT LayerNorm epsilon.
pub const VIT_LAYER_NORM_EPS: f64 = 1e-6;

/// Dimensions of one ViT, all read from its tensors except `num_heads`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VitConfig {
    pub embed_dim: usize,
    /// Blocks in the checkpoint; blocks `0..=depth - 2` run.
    pub depth: usize,
    pub num_heads: usize,
    pub mlp_hidden: usize,
    pub patch_size: usize,
    pub image_size: usize,
    /// 1 if the model has a class token.
    pub num_class_tokens: usize,
    /// Register tokens (4 for DINOv2-reg4).
    pub num_reg_tokens: usize,
    /// LayerScale (`ls1`/`ls2`) present.
    pub layer_scale: bool,
}

impl VitConfig {
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    pub fn num_patches(&self) -> usize {
        self.grid() * self.grid()
    }

    pub fn num_prefix_tokens(&self) -> usize {
        self.num_class_tokens + self.num_reg_tokens
    }

    pub fn head_dim(&self) -> usize {
        self.embed_dim / self.num_heads
    }

    /// Infers everything but the head count from the tensors under `prefix`.
    pub fn from_checkpoint(
        ckpt: &Checkpoint,
        prefix: &str,
        image_size: usize,
        num_heads: usize,
    ) -> Result<Self, ModelError> {
        let patch_name = format!("{prefix}.patch_embed.proj.weight");
        let (embed_dim, patch_size) = match ckpt.shape(&patch_name)? {
            [d, 3, p, q] if p == q && *p > 0 => (*d, *p),
            other => {
                let d = other.first().copied().unwrap_or(0);
                let p = other.last().copied().unwrap_or(0);
                return Err(ModelError::Shape {
                    name: patch_name,
                    expected: vec![d, 3, p, p],
                    got: other.to_vec(),
                });
            }
        };
        if !image_size.is_multiple_of(patch_size) {
            return Err(ModelError::Math {
                op: "patch embedding",
                message: format!(
                    "{prefix}: image size {image_size} is not a multiple of patch size {patch_size}"
                ),
            });
        }
        let mut depth = 0;
        while ckpt.contains(&format!("{prefix}.blocks.{depth}.norm1.weight")) {
            depth += 1;
        }
        if depth < 2 {
            return Err(ModelError::MissingTensor {
                name: format!("{prefix}.blocks.{depth}.norm1.weight"),
            });
        }
        let (mlp_hidden, _) = ckpt.matrix_shape(&format!("{prefix}.blocks.0.mlp.fc1.weight"))?;
        if num_heads == 0 || embed_dim % num_heads != 0 {
            return Err(ModelError::Unsupported {
                what: format!("{prefix} num_heads"),
                message: format!("{num_heads} heads do not divide embed width {embed_dim}"),
            });
        }
        let num_class_tokens = usize::from(ckpt.contains(&format!("{prefix}.cls_token")));
        let num_reg_tokens = match ckpt.shape(&format!("{prefix}.reg_token")) {
            Ok([1, n, d]) if *d == embed_dim => *n,
            Ok(other) => {
                return Err(ModelError::Shape {
                    name: format!("{prefix}.reg_token"),
                    expected: vec![1, 4, embed_dim],
                    got: other.to_vec(),
                })
            }
            Err(_) => 0,
        };
        let layer_scale = ckpt.contains(&format!("{prefix}.blocks.0.ls1.scale_factor"));
        Ok(Self {
            embed_dim,
            depth,
            num_heads,
            mlp_hidden,
            patch_size,
            image_size,
            num_class_tokens,
            num_reg_tokens,
            layer_scale,
        })
    }
}

/// LayerNorm with affine parameters `{prefix}.weight` / `{prefix}.bias`.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Vec<f32>,
    bias: Vec<f32>,
    eps: f64,
}

impl LayerNorm {
    pub fn load(ckpt: &Checkpoint, prefix: &str, width: usize) -> Result<Self, ModelError> {
        Ok(Self {
            weight: ckpt.f32_with_shape(&format!("{prefix}.weight"), &[width])?,
            bias: ckpt.f32_with_shape(&format!("{prefix}.bias"), &[width])?,
            eps: VIT_LAYER_NORM_EPS,
        })
    }

    /// Normalises each row of `x` in place.
    pub fn forward(&self, x: &mut [f32]) {
        ops::layer_norm(x, self.weight.len(), &self.weight, &self.bias, self.eps);
    }
}

/// `attn.qkv` (packed `[3 · D, D]`, heads split as `(3, H, hd)`) and `attn.proj`.
#[derive(Debug, Clone)]
pub struct VitAttention {
    qkv: Linear,
    proj: Linear,
}

/// `mlp.fc1` → exact GELU → `mlp.fc2`.
#[derive(Debug, Clone)]
pub struct VitMlp {
    fc1: Linear,
    fc2: Linear,
}

/// Pre-norm block: `x += ls1(attn(norm1(x)))`, `x += ls2(mlp(norm2(x)))`.
#[derive(Debug, Clone)]
pub struct VitBlock {
    norm1: LayerNorm,
    attn: VitAttention,
    ls1: Option<Vec<f32>>,
    norm2: LayerNorm,
    mlp: VitMlp,
    ls2: Option<Vec<f32>>,
}

impl VitBlock {
    fn load(ckpt: &Checkpoint, prefix: &str, cfg: &VitConfig) -> Result<Self, ModelError> {
        let d = cfg.embed_dim;
        let layer_scale = |name: &str| -> Result<Option<Vec<f32>>, ModelError> {
            if cfg.layer_scale {
                Ok(Some(ckpt.f32_with_shape(
                    &format!("{prefix}.{name}.scale_factor"),
                    &[d],
                )?))
            } else {
                Ok(None)
            }
        };
        Ok(Self {
            norm1: LayerNorm::load(ckpt, &format!("{prefix}.norm1"), d)?,
            attn: VitAttention {
                qkv: ckpt.linear(&format!("{prefix}.attn.qkv"), 3 * d, d, true)?,
                proj: ckpt.linear(&format!("{prefix}.attn.proj"), d, d, true)?,
            },
            ls1: layer_scale("ls1")?,
            norm2: LayerNorm::load(ckpt, &format!("{prefix}.norm2"), d)?,
            mlp: VitMlp {
                fc1: ckpt.linear(&format!("{prefix}.mlp.fc1"), cfg.mlp_hidden, d, true)?,
                fc2: ckpt.linear(&format!("{prefix}.mlp.fc2"), d, cfg.mlp_hidden, true)?,
            },
            ls2: layer_scale("ls2")?,
        })
    }
}

/// Buffers of one ViT forward pass, sized for its token count.
#[derive(Debug, Default)]
struct VitScratch {
    normed: Vec<f32>,
    qkv: Vec<f32>,
    scores: Vec<f32>,
    head_out: Vec<f32>,
    attn: Vec<f32>,
    branch: Vec<f32>,
    hidden: Vec<f32>,
}

/// One featurizer, loaded from the tensors under `prefix`
/// (e.g. `vision_backbone.featurizer`).
#[derive(Debug, Clone)]
pub struct Vit {
    prefix: String,
    config: VitConfig,
    /// Conv2d k = s = patch as a linear over flattened `(c, ky, kx)` patches.
    patch_embed: Linear,
    /// `[num_class_tokens + num_reg_tokens, D]`.
    prefix_tokens: Vec<f32>,
    /// `[num_patches, D]` (`no_embed_class`) or `[num_prefix + num_patches, D]`.
    pos_embed: Vec<f32>,
    pos_embed_covers_prefix: bool,
    /// Only the blocks that run: `0..=depth - 2`.
    blocks: Vec<VitBlock>,
}

impl Vit {
    pub fn load(
        ckpt: &Checkpoint,
        prefix: &str,
        image_size: usize,
        num_heads: usize,
    ) -> Result<Self, ModelError> {
        let config = VitConfig::from_checkpoint(ckpt, prefix, image_size, num_heads)?;
        let d = config.embed_dim;
        let p = config.patch_size;
        // The conv weight [D, 3, p, p] read flat is the linear weight over im2col patches.
        let patch_embed = Linear::from_f32(
            &format!("{prefix}.patch_embed.proj"),
            ckpt.f32_with_shape(&format!("{prefix}.patch_embed.proj.weight"), &[d, 3, p, p])?,
            d,
            3 * p * p,
            Some(ckpt.f32_with_shape(&format!("{prefix}.patch_embed.proj.bias"), &[d])?),
        )?;
        let mut prefix_tokens = Vec::with_capacity(config.num_prefix_tokens() * d);
        if config.num_class_tokens == 1 {
            prefix_tokens.extend(ckpt.f32_with_shape(&format!("{prefix}.cls_token"), &[1, 1, d])?);
        }
        if config.num_reg_tokens > 0 {
            prefix_tokens.extend(ckpt.f32_with_shape(
                &format!("{prefix}.reg_token"),
                &[1, config.num_reg_tokens, d],
            )?);
        }
        let pos_name = format!("{prefix}.pos_embed");
        let patches = config.num_patches();
        let with_prefix = patches + config.num_prefix_tokens();
        let pos_embed_covers_prefix = match ckpt.shape(&pos_name)? {
            [1, n, w] if *n == patches && *w == d => false,
            [1, n, w] if *n == with_prefix && *w == d && config.num_prefix_tokens() > 0 => true,
            other => {
                return Err(ModelError::Shape {
                    name: pos_name,
                    expected: vec![1, patches, d],
                    got: other.to_vec(),
                })
            }
        };
        let pos_rows = if pos_embed_covers_prefix {
            with_prefix
        } else {
            patches
        };
        let pos_embed = ckpt.f32_with_shape(&pos_name, &[1, pos_rows, d])?;
        let blocks = (0..config.depth - 1)
            .map(|i| VitBlock::load(ckpt, &format!("{prefix}.blocks.{i}"), &config))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            prefix: prefix.to_string(),
            config,
            patch_embed,
            prefix_tokens,
            pos_embed,
            pos_embed_covers_prefix,
            blocks,
        })
    }

    pub fn config(&self) -> &VitConfig {
        &self.config
    }

    /// Visits every linear layer that runs, with its checkpoint weight name.
    pub fn for_each_linear_mut(
        &mut self,
        f: &mut dyn FnMut(&str, &mut Linear) -> Result<(), ModelError>,
    ) -> Result<(), ModelError> {
        let p = &self.prefix;
        f(&format!("{p}.patch_embed.proj"), &mut self.patch_embed)?;
        for (i, b) in self.blocks.iter_mut().enumerate() {
            f(&format!("{p}.blocks.{i}.attn.qkv"), &mut b.attn.qkv)?;
            f(&format!("{p}.blocks.{i}.attn.proj"), &mut b.attn.proj)?;
            f(&format!("{p}.blocks.{i}.mlp.fc1"), &mut b.mlp.fc1)?;
            f(&format!("{p}.blocks.{i}.mlp.fc2"), &mut b.mlp.fc2)?;
        }
        Ok(())
    }

    /// Patch features of one image: `pixels` `[3, S, S]` (normalised) → `out`
    /// `[num_patches, D]`, patches in row-major order.
    pub fn forward(&self, pixels: &[f32], out: &mut [f32]) -> Result<(), ModelError> {
        let cfg = &self.config;
        let (s, p, d, g) = (cfg.image_size, cfg.patch_size, cfg.embed_dim, cfg.grid());
        let patches = cfg.num_patches();
        if pixels.len() != 3 * s * s || out.len() != patches * d {
            return Err(ModelError::Math {
                op: "vit",
                message: format!(
                    "{}: pixels {} values (want 3x{s}x{s}), output {} values (want {patches}x{d})",
                    self.prefix,
                    pixels.len(),
                    out.len()
                ),
            });
        }
        // im2col: [patches, 3 · p · p] in the conv weight's (c, ky, kx) order.
        let patch_len = 3 * p * p;
        let mut columns = vec![0.0f32; patches * patch_len];
        for (idx, col) in columns.chunks_exact_mut(patch_len).enumerate() {
            let (py, px) = (idx / g, idx % g);
            for c in 0..3 {
                for ky in 0..p {
                    let src = c * s * s + (py * p + ky) * s + px * p;
                    let dst = (c * p + ky) * p;
                    col[dst..dst + p].copy_from_slice(&pixels[src..src + p]);
                }
            }
        }
        let prefix = cfg.num_prefix_tokens();
        let tokens = prefix + patches;
        // [tokens, D]: prefix tokens first, then patches.
        let mut x = vec![0.0f32; tokens * d];
        self.patch_embed.forward(&columns, &mut x[prefix * d..])?;
        x[..prefix * d].copy_from_slice(&self.prefix_tokens);
        let pos_start = if self.pos_embed_covers_prefix {
            0
        } else {
            prefix * d
        };
        ops::add_in_place(&mut x[pos_start..], &self.pos_embed);

        let mut scratch = VitScratch {
            normed: vec![0.0; tokens * d],
            qkv: vec![0.0; tokens * 3 * d],
            scores: vec![0.0; cfg.num_heads * tokens * tokens],
            head_out: vec![0.0; tokens * d],
            attn: vec![0.0; tokens * d],
            branch: vec![0.0; tokens * d],
            hidden: vec![0.0; tokens * cfg.mlp_hidden],
        };
        for block in &self.blocks {
            self.block_forward(block, &mut x, tokens, &mut scratch)?;
        }
        out.copy_from_slice(&x[prefix * d..]);
        Ok(())
    }

    fn block_forward(
        &self,
        block: &VitBlock,
        x: &mut [f32],
        tokens: usize,
        s: &mut VitScratch,
    ) -> Result<(), ModelError> {
        let cfg = &self.config;
        let d = cfg.embed_dim;
        let hd = cfg.head_dim();
        s.normed.copy_from_slice(x);
        block.norm1.forward(&mut s.normed);
        // [tokens, 3 · D]
        block.attn.qkv.forward(&s.normed, &mut s.qkv)?;
        let layout = |offset| HeadLayout {
            data: &s.qkv,
            offset,
            head_stride: hd,
            row_stride: 3 * d,
        };
        ops::attention(
            layout(0),
            layout(d),
            layout(2 * d),
            AttentionShape {
                num_heads: cfg.num_heads,
                num_kv_heads: cfg.num_heads,
                head_dim: hd,
                queries: tokens,
                keys: tokens,
                causal_past: None,
            },
            &mut s.scores,
            &mut s.head_out,
            &mut s.attn,
        )?;
        block.attn.proj.forward(&s.attn, &mut s.branch)?;
        add_scaled_residual(x, &s.branch, block.ls1.as_deref(), d);

        s.normed.copy_from_slice(x);
        block.norm2.forward(&mut s.normed);
        // [tokens, mlp_hidden]
        block.mlp.fc1.forward(&s.normed, &mut s.hidden)?;
        ops::gelu_erf(&mut s.hidden);
        block.mlp.fc2.forward(&s.hidden, &mut s.branch)?;
        add_scaled_residual(x, &s.branch, block.ls2.as_deref(), d);
        Ok(())
    }
}

/// `x += branch * scale` (LayerScale per channel) or `x += branch`.
fn add_scaled_residual(x: &mut [f32], branch: &[f32], scale: Option<&[f32]>, width: usize) {
    match scale {
        Some(gamma) => x
            .chunks_exact_mut(width)
            .zip(branch.chunks_exact(width))
            .for_each(|(xr, br)| {
                for ((v, &b), &g) in xr.iter_mut().zip(br).zip(gamma) {
                    *v += b * g;
                }
            }),
        None => ops::add_in_place(x, branch),
    }
}
