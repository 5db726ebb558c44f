//! The vision half on the device: both ViTs (each on its own stream), the event join, the
//! patch-wise concat into the fused FP16 buffer and the projector, captured as one CUDA graph.
//!
//! Numerics: GEMM inputs FP16, accumulation FP32 (cuBLAS `COMPUTE_32F`), the residual stream
//! and every normalisation statistic in FP32. Two places stay in f32 because the attention
//! amplifies their rounding through the softmax: the patch embedding (exact pixels, f32
//! weights, a small SGEMM) and the attention scores (q and k kept f32, an SGEMM over the
//! head dimension). Weights of an f32 checkpoint keep their precision as FP16 + residual
//! ([`DeviceMatrix`]); bf16 and f16 checkpoints are exact in FP16.
//!
//! Score and probability rows are padded to [`KEY_ALIGN`] values so that every GEMM operand
//! is 16-byte aligned (cuBLAS otherwise falls back to slow kernels for odd token counts).

use cudarc::driver::CudaEvent;
use half::f16;

use super::device::{int, Arg, DeviceBuffer, DeviceMatrix, Dt, Gemm, Gpu, Graph, Lane};
use super::weights::{write_split, DecodeFormat, WeightSource};
use super::CudaError;
use crate::model::linear::LinearWeights;
use crate::model::vit::{VitConfig, VIT_LAYER_NORM_EPS};

/// One pre-norm ViT block's weights (checkpoint names under `{prefix}.blocks.N`).
#[derive(Debug)]
struct VitBlock {
    norm1_w: DeviceBuffer<f32>,
    norm1_b: DeviceBuffer<f32>,
    /// `[3D, D]`
    qkv_w: DeviceMatrix,
    qkv_b: DeviceBuffer<f32>,
    /// `[D, D]`
    proj_w: DeviceMatrix,
    /// The bias times LayerScale γ1 (γ1 is folded into `proj_w`); added to x by the next
    /// LayerNorm, since the proj GEMM adds its product straight into x.
    proj_b: DeviceBuffer<f32>,
    norm2_w: DeviceBuffer<f32>,
    norm2_b: DeviceBuffer<f32>,
    /// `[mlp, D]`
    fc1_w: DeviceMatrix,
    fc1_b: DeviceBuffer<f32>,
    /// `[D, mlp]`
    fc2_w: DeviceMatrix,
    /// As `proj_b`, with γ2.
    fc2_b: DeviceBuffer<f32>,
}

/// Scratch of one ViT forward pass, sized for its token count.
#[derive(Debug)]
struct VitScratch {
    /// `[patches, 3·p·p]`
    cols: DeviceBuffer<f32>,
    /// `[patches, D]`
    patch_out: DeviceBuffer<f32>,
    /// `[tokens, D]`, the residual stream; the features are its patch rows.
    x: DeviceBuffer<f32>,
    /// `[tokens, D]`
    normed: DeviceBuffer<f16>,
    /// `[tokens, max(3D, mlp)]`, GEMM outputs before their epilogue.
    wide_f32: DeviceBuffer<f32>,
    /// `[tokens, max(3D, mlp)]`, packed q/k/v, then the MLP hidden layer.
    wide_f16: DeviceBuffer<f16>,
    /// `[heads, tokens, padded tokens]`
    scores: DeviceBuffer<f32>,
    probs: DeviceBuffer<f16>,
    /// `[tokens, D]`
    attn: DeviceBuffer<f16>,
    /// `[padded tokens, heads, 3·hd]`: q and k as f16 halves for the tensor-core scores
    /// (`qkv_bias_split_f16`); padding rows stay zero.
    q_ext: DeviceBuffer<f16>,
    k_ext: DeviceBuffer<f16>,
}

/// One featurizer on the device.
#[derive(Debug)]
pub struct DeviceVit {
    prefix: String,
    config: VitConfig,
    lane: Lane,
    /// `[D, 3·p·p]`, the conv weight read flat (f32).
    patch_w: DeviceBuffer<f32>,
    patch_b: DeviceBuffer<f32>,
    /// `[prefix tokens, D]` (one unused element when there are none).
    prefix_tokens: DeviceBuffer<f32>,
    pos_embed: DeviceBuffer<f32>,
    pos_covers_prefix: bool,
    blocks: Vec<VitBlock>,
    s: VitScratch,
    /// Attention scores as one FP16 tensor-core GEMM over q and k split into f16 halves,
    /// instead of the f32 SGEMM (a benchmark variant; see `qkv_bias_split_f16`).
    split_scores: bool,
}

impl DeviceVit {
    /// Loads blocks `0..=depth - 2` (the ones that run) of the ViT under `prefix`.
    pub fn load(
        gpu: &Gpu,
        src: &mut dyn WeightSource,
        prefix: &str,
        config: VitConfig,
        pos_covers_prefix: bool,
        lane: Lane,
    ) -> Result<Self, CudaError> {
        let d = config.embed_dim;
        let p = config.patch_size;
        let mlp = config.mlp_hidden;
        let patches = config.num_patches();
        let tokens = patches + config.num_prefix_tokens();
        let matrix = |src: &mut dyn WeightSource, name: String, rows: usize, cols: usize| {
            src.matrix_f16(gpu, &[(name, rows)], cols, 1.7 / (cols as f32).sqrt())
        };
        let patch_w = {
            let name = format!("{prefix}.patch_embed.proj.weight");
            // The conv weight [D, 3, p, p] is the [D, 3·p·p] matrix of the im2col GEMM.
            src.tensor_f32(gpu, &name, &[d, 3, p, p], 0.0, 0.1)?
        };
        let patch_b = src.tensor_f32(
            gpu,
            &format!("{prefix}.patch_embed.proj.bias"),
            &[d],
            0.0,
            0.02,
        )?;
        let mut prefix_host_parts = Vec::new();
        if config.num_class_tokens == 1 {
            prefix_host_parts.push((format!("{prefix}.cls_token"), vec![1, 1, d]));
        }
        if config.num_reg_tokens > 0 {
            prefix_host_parts.push((
                format!("{prefix}.reg_token"),
                vec![1, config.num_reg_tokens, d],
            ));
        }
        let prefix_tokens = gpu.alloc::<f32>((config.num_prefix_tokens() * d).max(1))?;
        let mut at = 0;
        for (name, shape) in prefix_host_parts {
            let t = src.tensor_f32(gpu, &name, &shape, 0.0, 0.02)?;
            gpu.copy_d2d(Lane::A, prefix_tokens.at(at), t.ptr(), t.bytes())?;
            gpu.sync(Lane::A)?;
            at += t.len();
        }
        let pos_rows = if pos_covers_prefix { tokens } else { patches };
        let pos_embed = src.tensor_f32(
            gpu,
            &format!("{prefix}.pos_embed"),
            &[1, pos_rows, d],
            0.0,
            0.02,
        )?;
        let mut blocks = Vec::with_capacity(config.depth - 1);
        for i in 0..config.depth - 1 {
            let b = format!("{prefix}.blocks.{i}");
            let norm = |src: &mut dyn WeightSource, n: &str| -> Result<_, CudaError> {
                Ok((
                    src.tensor_f32(gpu, &format!("{b}.{n}.weight"), &[d], 1.0, 0.05)?,
                    src.tensor_f32(gpu, &format!("{b}.{n}.bias"), &[d], 0.0, 0.02)?,
                ))
            };
            let bias = |src: &mut dyn WeightSource, n: &str, len: usize| {
                src.tensor_f32(gpu, &format!("{b}.{n}.bias"), &[len], 0.0, 0.02)
            };
            // LayerScale folds into the residual branch's last layer: (W x + b) · γ = (γ W) x + γ b.
            let layer_scale = |n: &str| config.layer_scale.then(|| format!("{b}.{n}.scale_factor"));
            let (ls1, ls2) = (layer_scale("ls1"), layer_scale("ls2"));
            let (norm1_w, norm1_b) = norm(src, "norm1")?;
            let (norm2_w, norm2_b) = norm(src, "norm2")?;
            blocks.push(VitBlock {
                norm1_w,
                norm1_b,
                qkv_w: matrix(src, format!("{b}.attn.qkv"), 3 * d, d)?,
                qkv_b: bias(src, "attn.qkv", 3 * d)?,
                proj_w: src.scaled_matrix_f16(
                    gpu,
                    &format!("{b}.attn.proj"),
                    d,
                    d,
                    ls1.as_deref(),
                    1.7 / (d as f32).sqrt(),
                )?,
                proj_b: src.scaled_vector_f32(
                    gpu,
                    &format!("{b}.attn.proj.bias"),
                    d,
                    ls1.as_deref(),
                )?,
                norm2_w,
                norm2_b,
                fc1_w: matrix(src, format!("{b}.mlp.fc1"), mlp, d)?,
                fc1_b: bias(src, "mlp.fc1", mlp)?,
                fc2_w: src.scaled_matrix_f16(
                    gpu,
                    &format!("{b}.mlp.fc2"),
                    d,
                    mlp,
                    ls2.as_deref(),
                    1.7 / (mlp as f32).sqrt(),
                )?,
                fc2_b: src.scaled_vector_f32(
                    gpu,
                    &format!("{b}.mlp.fc2.bias"),
                    d,
                    ls2.as_deref(),
                )?,
            });
        }
        let wide = (3 * d).max(mlp);
        // The attention runs over `padded` token rows (zero rows beyond the real ones) so that
        // no GEMM dimension is odd.
        let padded = padded_keys(tokens);
        let s = VitScratch {
            cols: gpu.alloc(patches * 3 * p * p)?,
            patch_out: gpu.alloc(patches * d)?,
            x: gpu.alloc(tokens * d)?,
            normed: gpu.alloc(tokens * d)?,
            wide_f32: gpu.alloc(padded * wide)?,
            wide_f16: gpu.alloc(padded * wide)?,
            scores: gpu.alloc(config.num_heads * padded * padded)?,
            probs: gpu.alloc(config.num_heads * padded * padded)?,
            attn: gpu.alloc(padded * d)?,
            q_ext: gpu.alloc(padded * 3 * d)?,
            k_ext: gpu.alloc(padded * 3 * d)?,
        };
        gpu.sync(Lane::A)?;
        Ok(Self {
            prefix: prefix.to_string(),
            config,
            lane,
            patch_w,
            patch_b,
            prefix_tokens,
            pos_embed,
            pos_covers_prefix,
            blocks,
            s,
            split_scores: false,
        })
    }

    pub fn config(&self) -> &VitConfig {
        &self.config
    }

    pub fn lane(&self) -> Lane {
        self.lane
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn tokens(&self) -> usize {
        self.config.num_patches() + self.config.num_prefix_tokens()
    }

    /// The residual stream `[tokens, D]`; rows `num_prefix_tokens()..` are the features.
    pub fn output(&self) -> &DeviceBuffer<f32> {
        &self.s.x
    }

    /// Queues the forward pass of `pixels` (`[3, S, S]` f32 on the device) on this ViT's lane.
    pub fn forward(&self, gpu: &Gpu, pixels: u64) -> Result<(), CudaError> {
        self.forward_on(gpu, pixels, self.lane)
    }

    /// The forward pass queued on `lane` (the one-stream benchmark runs both ViTs on A).
    pub fn forward_on(&self, gpu: &Gpu, pixels: u64, lane: Lane) -> Result<(), CudaError> {
        let c = &self.config;
        let k = &gpu.kernels;
        let (d, p, patches, tokens) = (c.embed_dim, c.patch_size, c.num_patches(), self.tokens());
        let prefix = c.num_prefix_tokens();
        let s = &self.s;
        gpu.launch_elementwise(
            lane,
            &k.im2col_f32,
            patches * 3 * p * p,
            &[
                Arg::Ptr(pixels),
                Arg::Ptr(s.cols.ptr()),
                int("im2col", c.image_size)?,
                int("im2col", p)?,
                int("im2col", c.grid())?,
            ],
        )?;
        // [patches, D] = cols [patches, 3pp] · patch_wᵀ, all f32 (a plain SGEMM, no TF32).
        gpu.gemm(
            lane,
            &Gemm::row_major_linear(
                patches,
                d,
                3 * p * p,
                (s.cols.ptr(), self.patch_w.ptr(), Dt::F32),
                (s.patch_out.ptr(), Dt::F32),
                false,
            ),
        )?;
        gpu.launch_elementwise(
            lane,
            &k.vit_assemble_tokens,
            tokens * d,
            &[
                Arg::Ptr(s.patch_out.ptr()),
                Arg::Ptr(self.patch_b.ptr()),
                Arg::Ptr(self.prefix_tokens.ptr()),
                Arg::Ptr(self.pos_embed.ptr()),
                Arg::Ptr(s.x.ptr()),
                int("vit tokens", prefix)?,
                int("vit tokens", patches)?,
                int("vit tokens", d)?,
                Arg::I32(i32::from(self.pos_covers_prefix)),
            ],
        )?;
        let mut pending: Option<&DeviceBuffer<f32>> = None;
        for b in &self.blocks {
            self.block(gpu, lane, b, pending)?;
            pending = Some(&b.fc2_b);
        }
        match pending {
            Some(bias) => queue_add_bias(gpu, lane, &s.x, bias, tokens, d),
            None => Ok(()),
        }
    }

    /// LayerNorm of x into `normed`, after adding `pending` (a residual bias) to x.
    fn layer_norm(
        &self,
        gpu: &Gpu,
        lane: Lane,
        pending: Option<&DeviceBuffer<f32>>,
        w: &DeviceBuffer<f32>,
        b: &DeviceBuffer<f32>,
    ) -> Result<(), CudaError> {
        let s = &self.s;
        gpu.launch(
            lane,
            &gpu.kernels.layer_norm_f16,
            self.tokens() as u32,
            256,
            0,
            &[
                Arg::Ptr(s.x.ptr()),
                Arg::Ptr(pending.map_or(0, |p| p.ptr())),
                Arg::Ptr(w.ptr()),
                Arg::Ptr(b.ptr()),
                Arg::Ptr(s.normed.ptr()),
                int("layer norm", self.config.embed_dim)?,
                Arg::F32(VIT_LAYER_NORM_EPS as f32),
            ],
        )
    }

    /// `wide_f16 = act(wide_f32 + bias)`; `write_back` also leaves the sum in `wide_f32`.
    fn bias_act(
        &self,
        gpu: &Gpu,
        lane: Lane,
        width: usize,
        bias: &DeviceBuffer<f32>,
        gelu: bool,
        write_back: bool,
    ) -> Result<(), CudaError> {
        let s = &self.s;
        queue_bias_act(
            gpu,
            lane,
            &s.wide_f32,
            bias,
            &s.wide_f16,
            self.tokens(),
            width,
            gelu,
            write_back,
        )
    }

    /// `wide_f16 = wide_f32 + qkv bias` with q and k also split into f16 halves in
    /// `q_ext`/`k_ext` for the tensor-core scores.
    fn qkv_bias_split(
        &self,
        gpu: &Gpu,
        lane: Lane,
        bias: &DeviceBuffer<f32>,
    ) -> Result<(), CudaError> {
        let s = &self.s;
        let d = self.config.embed_dim;
        gpu.launch_elementwise(
            lane,
            &gpu.kernels.qkv_bias_split_f16,
            self.tokens() * 3 * d,
            &[
                Arg::Ptr(s.wide_f32.ptr()),
                Arg::Ptr(bias.ptr()),
                Arg::Ptr(s.wide_f16.ptr()),
                Arg::Ptr(s.q_ext.ptr()),
                Arg::Ptr(s.k_ext.ptr()),
                int("qkv bias", self.tokens())?,
                int("qkv bias", d)?,
                int("qkv bias", self.config.head_dim())?,
            ],
        )
    }

    /// One block; `pending` is the previous block's residual bias, not yet in x.
    fn block(
        &self,
        gpu: &Gpu,
        lane: Lane,
        b: &VitBlock,
        pending: Option<&DeviceBuffer<f32>>,
    ) -> Result<(), CudaError> {
        let c = &self.config;
        let s = &self.s;
        let (d, t, h, hd, mlp) = (
            c.embed_dim,
            self.tokens(),
            c.num_heads,
            c.head_dim(),
            c.mlp_hidden,
        );
        self.layer_norm(gpu, lane, pending, &b.norm1_w, &b.norm1_b)?;
        // [T, 3D] = normed · qkv_wᵀ + b, packed (q | k | v), heads split as (3, H, hd); the
        // sum stays in f32 for the scores and goes to f16 for P·V.
        gpu.linear_matrix(
            lane,
            t,
            3 * d,
            d,
            s.normed.ptr(),
            &b.qkv_w,
            s.wide_f32.ptr(),
            Dt::F32,
            false,
        )?;
        let qkv = &s.wide_f16;
        // Over tp ≥ T rows: the padding rows of q, k and v are zero, their scores are ignored
        // and their probabilities are 0.
        let tp = padded_keys(t);
        // scores[h] [tp, tp] = q_h · k_hᵀ in f32; column-major: (k_h stored [hd, tp] → op T) · q_h.
        let f32_scores = Gemm {
            trans_a: true,
            trans_b: false,
            m: tp,
            n: tp,
            k: hd,
            a: s.wide_f32.at(d),
            a_type: Dt::F32,
            lda: 3 * d,
            stride_a: hd,
            b: s.wide_f32.ptr(),
            b_type: Dt::F32,
            ldb: 3 * d,
            stride_b: hd,
            c: s.scores.ptr(),
            c_type: Dt::F32,
            ldc: tp,
            stride_c: tp * tp,
            batch: h,
            alpha: 1.0,
            beta: 0.0,
        };
        let scores = if self.split_scores {
            self.qkv_bias_split(gpu, lane, &b.qkv_b)?;
            // The same product over [q_hi | q_hi | q_lo] · [k_hi | k_lo | k_hi] in FP16.
            Gemm {
                k: 3 * hd,
                a: s.k_ext.ptr(),
                a_type: Dt::F16,
                stride_a: 3 * hd,
                b: s.q_ext.ptr(),
                b_type: Dt::F16,
                stride_b: 3 * hd,
                ..f32_scores
            }
        } else {
            self.bias_act(gpu, lane, 3 * d, &b.qkv_b, false, true)?;
            f32_scores
        };
        gpu.gemm(lane, &scores)?;
        softmax(
            gpu,
            lane,
            &s.scores,
            &s.probs,
            h * tp,
            tp,
            t,
            tp,
            1.0 / (hd as f32).sqrt(),
            -1,
        )?;
        // attn[:, h·hd..] [tp, hd] = probs_h [tp, tp] · v_h [tp, hd].
        gpu.gemm(
            lane,
            &Gemm {
                trans_a: false,
                trans_b: false,
                m: hd,
                n: tp,
                k: tp,
                a: qkv.at(2 * d),
                a_type: Dt::F16,
                lda: 3 * d,
                stride_a: hd,
                b: s.probs.ptr(),
                b_type: Dt::F16,
                ldb: tp,
                stride_b: tp * tp,
                c: s.attn.ptr(),
                c_type: Dt::F16,
                ldc: d,
                stride_c: hd,
                batch: h,
                alpha: 1.0,
                beta: 0.0,
            },
        )?;
        // x += attn · (γ1 proj_w)ᵀ; γ1 proj_b goes in with the next LayerNorm.
        gpu.linear_matrix(
            lane,
            t,
            d,
            d,
            s.attn.ptr(),
            &b.proj_w,
            s.x.ptr(),
            Dt::F32,
            true,
        )?;
        self.layer_norm(gpu, lane, Some(&b.proj_b), &b.norm2_w, &b.norm2_b)?;
        gpu.linear_matrix(
            lane,
            t,
            mlp,
            d,
            s.normed.ptr(),
            &b.fc1_w,
            s.wide_f32.ptr(),
            Dt::F32,
            false,
        )?;
        self.bias_act(gpu, lane, mlp, &b.fc1_b, true, false)?;
        // x += gelu(...) · (γ2 fc2_w)ᵀ; γ2 fc2_b goes in with the next LayerNorm.
        gpu.linear_matrix(
            lane,
            t,
            d,
            mlp,
            s.wide_f16.ptr(),
            &b.fc2_w,
            s.x.ptr(),
            Dt::F32,
            true,
        )
    }
}

/// `out = f16(act(input + bias))` over `rows` rows of `width` (GELU when `gelu`); with
/// `write_back` the f32 sum also replaces `input`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn queue_bias_act(
    gpu: &Gpu,
    lane: Lane,
    input: &DeviceBuffer<f32>,
    bias: &DeviceBuffer<f32>,
    out: &DeviceBuffer<f16>,
    rows: usize,
    width: usize,
    gelu: bool,
    write_back: bool,
) -> Result<(), CudaError> {
    let total = rows * width;
    gpu.launch_elementwise(
        lane,
        &gpu.kernels.bias_act_f16,
        total,
        &[
            Arg::Ptr(input.ptr()),
            Arg::Ptr(bias.ptr()),
            Arg::Ptr(out.ptr()),
            int("bias", total)?,
            int("bias", width)?,
            Arg::I32(i32::from(gelu)),
            Arg::I32(i32::from(write_back)),
        ],
    )
}

/// `x[r, c] += bias[c]` over `rows` rows of `width`, in f32.
pub(crate) fn queue_add_bias(
    gpu: &Gpu,
    lane: Lane,
    x: &DeviceBuffer<f32>,
    bias: &DeviceBuffer<f32>,
    rows: usize,
    width: usize,
) -> Result<(), CudaError> {
    let total = rows * width;
    gpu.launch_elementwise(
        lane,
        &gpu.kernels.add_bias_f32,
        total,
        &[
            Arg::Ptr(x.ptr()),
            Arg::Ptr(bias.ptr()),
            int("bias", total)?,
            int("bias", width)?,
        ],
    )
}

/// Score rows are padded to a multiple of this many values (16 bytes of FP16).
pub const KEY_ALIGN: usize = 8;

/// The row stride of `keys` scores or probabilities.
pub fn padded_keys(keys: usize) -> usize {
    keys.div_ceil(KEY_ALIGN) * KEY_ALIGN
}

/// Row softmax of `scores` (`rows` rows of `keys` values, `stride` apart) into FP16 `probs`
/// (same layout).
#[allow(clippy::too_many_arguments)]
pub fn softmax(
    gpu: &Gpu,
    lane: Lane,
    scores: &DeviceBuffer<f32>,
    probs: &DeviceBuffer<f16>,
    rows: usize,
    queries: usize,
    keys: usize,
    stride: usize,
    scale: f32,
    causal_past: i32,
) -> Result<(), CudaError> {
    const ROWS_PER_BLOCK: usize = 8;
    gpu.launch(
        lane,
        &gpu.kernels.softmax_rows_f16,
        rows.div_ceil(ROWS_PER_BLOCK) as u32,
        (ROWS_PER_BLOCK * 32) as u32,
        0,
        &[
            Arg::Ptr(scores.ptr()),
            Arg::Ptr(probs.ptr()),
            int("softmax", rows)?,
            int("softmax", queries)?,
            int("softmax", keys)?,
            int("softmax", stride)?,
            Arg::F32(scale),
            Arg::I32(causal_past),
        ],
    )
}

/// `fc1` → GELU → `fc2` → GELU → `fc3` with biases, FP16 weights. With `--projector int8`
/// the weights are the CPU backend's INT8 ones (dequantized, exact as FP16 + residual) and,
/// when calibrated scales exist (W8A8), each layer's input is quantized the same way too: the
/// products equal the CPU's integer ones up to FP16 rounding, while the GEMMs stay on the
/// FP16 tensor cores (the projector is a few percent of the vision time; an INT8 GEMM would
/// save nothing measurable).
#[derive(Debug)]
pub struct DeviceProjector {
    fc1_w: DeviceMatrix,
    fc1_b: DeviceBuffer<f32>,
    fc2_w: DeviceMatrix,
    fc2_b: DeviceBuffer<f32>,
    fc3_w: DeviceMatrix,
    fc3_b: DeviceBuffer<f32>,
    in_features: usize,
    hidden: usize,
    out_features: usize,
    rows: usize,
    /// `[rows, max(hidden, out)]`
    wide_f32: DeviceBuffer<f32>,
    wide_f16: DeviceBuffer<f16>,
    /// `[rows, out]`, the image tokens.
    out: DeviceBuffer<f32>,
    /// Input activation scale of fc1, fc2, fc3 (W8A8).
    act_scales: [Option<f32>; 3],
}

impl DeviceProjector {
    pub fn load(
        gpu: &Gpu,
        src: &mut dyn WeightSource,
        prefix: &str,
        in_features: usize,
        hidden: usize,
        out_features: usize,
        rows: usize,
    ) -> Result<Self, CudaError> {
        let m = |src: &mut dyn WeightSource, n: &str, r: usize, c: usize| {
            src.matrix_f16(
                gpu,
                &[(format!("{prefix}.{n}"), r)],
                c,
                1.7 / (c as f32).sqrt(),
            )
        };
        let b = |src: &mut dyn WeightSource, n: &str, len: usize| {
            src.tensor_f32(gpu, &format!("{prefix}.{n}.bias"), &[len], 0.0, 0.02)
        };
        let wide = hidden.max(out_features);
        Ok(Self {
            fc1_w: m(src, "fc1", hidden, in_features)?,
            fc1_b: b(src, "fc1", hidden)?,
            fc2_w: m(src, "fc2", out_features, hidden)?,
            fc2_b: b(src, "fc2", out_features)?,
            fc3_w: m(src, "fc3", out_features, out_features)?,
            fc3_b: b(src, "fc3", out_features)?,
            in_features,
            hidden,
            out_features,
            rows,
            wide_f32: gpu.alloc(rows * wide)?,
            wide_f16: gpu.alloc(rows * wide)?,
            out: gpu.alloc(rows * out_features)?,
            act_scales: [None; 3],
        })
    }

    /// Switches to the CPU backend's INT8 projector: weight-only, or W8A8 with `scales`.
    pub fn use_int8(
        &mut self,
        gpu: &Gpu,
        src: &mut dyn WeightSource,
        prefix: &str,
        scales: Option<&crate::model::quant_scales::ProjectorScales>,
    ) -> Result<(), CudaError> {
        let layers = [
            ("fc1", self.hidden, self.in_features),
            ("fc2", self.out_features, self.hidden),
            ("fc3", self.out_features, self.out_features),
        ];
        for (i, (layer, rows, cols)) in layers.into_iter().enumerate() {
            let name = format!("{prefix}.{layer}");
            let Some(mut parts) =
                src.host_quantized(&[(name.clone(), rows)], cols, DecodeFormat::Int8)?
            else {
                return Err(CudaError::Unsupported {
                    what: "--projector int8".into(),
                    message: "needs checkpoint weights (not random ones)".into(),
                });
            };
            let Some(LinearWeights::Int8(weights)) = parts.pop() else {
                return Err(CudaError::Unsupported {
                    what: format!("{name} int8"),
                    message: "the weight source gave no INT8 weights".into(),
                });
            };
            weights
                .check_shape(rows, cols)
                .map_err(|message| CudaError::Unsupported {
                    what: format!("{name} int8"),
                    message,
                })?;
            let mut values = vec![0.0f32; rows * cols];
            for (n, row) in values.chunks_exact_mut(cols).enumerate() {
                weights.dequantize_row(n, cols, row);
            }
            let matrix = match i {
                0 => &mut self.fc1_w,
                1 => &mut self.fc2_w,
                _ => &mut self.fc3_w,
            };
            write_split(gpu, matrix, 0, &values)?;
            self.act_scales[i] = match scales {
                Some(s) => Some(s.scale_for(&name).ok_or_else(|| {
                    CudaError::Unsupported {
                        what: name.clone(),
                        message: "the projector scales hold no activation scale for this layer \
                              (calibrated for another model?)"
                            .into(),
                    }
                })?),
                None => None,
            };
        }
        Ok(())
    }

    /// Quantizes the FP16 input `x` (`rows · width` values) of layer `i` when it is W8A8.
    fn quantize_input(&self, gpu: &Gpu, i: usize, x: u64, width: usize) -> Result<(), CudaError> {
        let Some(scale) = self.act_scales[i] else {
            return Ok(());
        };
        let total = self.rows * width;
        gpu.launch_elementwise(
            Lane::A,
            &gpu.kernels.fake_quant_f16,
            total,
            &[Arg::Ptr(x), int("projector input", total)?, Arg::F32(scale)],
        )
    }

    pub fn output(&self) -> &DeviceBuffer<f32> {
        &self.out
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// Queues the projector on lane A over `fused` (`[rows, in]` FP16).
    pub fn forward(&self, gpu: &Gpu, fused: u64) -> Result<(), CudaError> {
        let lane = Lane::A;
        let r = self.rows;
        let epilogue = |width: usize, bias: &DeviceBuffer<f32>| {
            queue_bias_act(
                gpu,
                lane,
                &self.wide_f32,
                bias,
                &self.wide_f16,
                r,
                width,
                true,
                false,
            )
        };
        self.quantize_input(gpu, 0, fused, self.in_features)?;
        gpu.linear_matrix(
            lane,
            r,
            self.hidden,
            self.in_features,
            fused,
            &self.fc1_w,
            self.wide_f32.ptr(),
            Dt::F32,
            false,
        )?;
        epilogue(self.hidden, &self.fc1_b)?;
        self.quantize_input(gpu, 1, self.wide_f16.ptr(), self.hidden)?;
        gpu.linear_matrix(
            lane,
            r,
            self.out_features,
            self.hidden,
            self.wide_f16.ptr(),
            &self.fc2_w,
            self.wide_f32.ptr(),
            Dt::F32,
            false,
        )?;
        epilogue(self.out_features, &self.fc2_b)?;
        self.quantize_input(gpu, 2, self.wide_f16.ptr(), self.out_features)?;
        gpu.linear_matrix(
            lane,
            r,
            self.out_features,
            self.out_features,
            self.wide_f16.ptr(),
            &self.fc3_w,
            self.out.ptr(),
            Dt::F32,
            false,
        )?;
        queue_add_bias(gpu, lane, &self.out, &self.fc3_b, r, self.out_features)
    }
}

/// Lane of encoder `i`: DINOv2 on A, SigLIP on B.
const LANES: [Lane; 2] = [Lane::A, Lane::B];

/// How the vision work is issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VisionMode {
    /// Both ViTs on lane A, one after the other.
    OneStream,
    /// DINOv2 on lane A, SigLIP on lane B, joined by an event.
    TwoStreams,
}

/// Encoders run by another engine (TensorRT) instead of this backend's kernels: encoder `i`
/// reads its `[3, S, S]` f32 pixels and writes its `[patches, D]` f32 features straight into
/// device buffers of the vision path, on the stream it is given.
pub trait ExternalEncoders: Send {
    /// Binds encoder `index` to its pixels and features; called once per encoder, before
    /// any [`enqueue`](Self::enqueue). Both addresses stay valid while the path lives.
    fn bind(&mut self, index: usize, pixels: u64, features: u64) -> Result<(), CudaError>;
    /// Queues encoder `index` on `stream`.
    fn enqueue(&self, index: usize, stream: cudarc::driver::sys::CUstream)
        -> Result<(), CudaError>;
    /// What runs the encoders (`TensorRT 10.3.0`), for logs and benchmarks.
    fn describe(&self) -> String;
}

/// External encoders with the feature buffers they write.
struct External {
    encoders: Box<dyn ExternalEncoders>,
    /// `[patches, D_i]` per encoder.
    features: Vec<DeviceBuffer<f32>>,
    /// Queued once outside a capture (lazy set-up inside the engines), before the graph.
    warmed: bool,
    /// The path could not be captured (an engine that is not capturable): queued eagerly.
    uncapturable: bool,
}

/// Both featurizers, the concat and the projector, with the pixel buffer they read.
pub struct VisionPath {
    /// This backend's encoders (empty when [`ExternalEncoders`] run them).
    pub vits: Vec<DeviceVit>,
    pub projector: DeviceProjector,
    /// `[3 · featurizers, S, S]`
    pub pixels: DeviceBuffer<f32>,
    /// `[patches, Σ D]`
    pub fused: DeviceBuffer<f16>,
    configs: Vec<VitConfig>,
    external: Option<External>,
    fork: CudaEvent,
    join: CudaEvent,
    graph: Option<Graph>,
}

impl std::fmt::Debug for VisionPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VisionPath")
            .field("vits", &self.vits.len())
            .field("graph", &self.graph.is_some())
            .finish()
    }
}

impl VisionPath {
    pub fn new(
        gpu: &Gpu,
        vits: Vec<DeviceVit>,
        projector: DeviceProjector,
    ) -> Result<Self, CudaError> {
        let Some(first) = vits.first() else {
            return Err(CudaError::Shape {
                op: "vision",
                message: "no featurizer".into(),
            });
        };
        let s = first.config().image_size;
        let patches = first.config().num_patches();
        let configs: Vec<VitConfig> = vits.iter().map(|v| v.config().clone()).collect();
        let width: usize = configs.iter().map(|c| c.embed_dim).sum();
        Ok(Self {
            pixels: gpu.alloc(3 * vits.len() * s * s)?,
            fused: gpu.alloc(patches * width)?,
            configs,
            external: None,
            fork: gpu.event()?,
            join: gpu.event()?,
            graph: None,
            vits,
            projector,
        })
    }

    /// The path with `encoders` (shapes `configs`) in place of this backend's ViTs; each
    /// encoder is bound to its slice of `pixels` and to a `[patches, D]` f32 feature buffer.
    pub fn with_external(
        gpu: &Gpu,
        configs: Vec<VitConfig>,
        projector: DeviceProjector,
        mut encoders: Box<dyn ExternalEncoders>,
    ) -> Result<Self, CudaError> {
        let Some(first) = configs.first() else {
            return Err(CudaError::Shape {
                op: "vision",
                message: "no featurizer".into(),
            });
        };
        let s = first.image_size;
        let patches = first.num_patches();
        let width: usize = configs.iter().map(|c| c.embed_dim).sum();
        let pixels = gpu.alloc::<f32>(3 * configs.len() * s * s)?;
        let mut features = Vec::with_capacity(configs.len());
        for (i, c) in configs.iter().enumerate() {
            let buf = gpu.alloc::<f32>(c.num_patches() * c.embed_dim)?;
            encoders.bind(i, pixels.at(i * 3 * s * s), buf.ptr())?;
            features.push(buf);
        }
        Ok(Self {
            pixels,
            fused: gpu.alloc(patches * width)?,
            configs,
            external: Some(External {
                encoders,
                features,
                warmed: false,
                uncapturable: false,
            }),
            fork: gpu.event()?,
            join: gpu.event()?,
            graph: None,
            vits: Vec::new(),
            projector,
        })
    }

    /// Shapes of the encoders, in `pixel_values` channel order.
    pub fn configs(&self) -> &[VitConfig] {
        &self.configs
    }

    /// What runs the encoders: `None` for this backend's kernels.
    pub fn external_encoders(&self) -> Option<String> {
        self.external.as_ref().map(|e| e.encoders.describe())
    }

    /// Encoder `i`'s features: the buffer and the row where its `[patches, D]` rows start.
    pub fn features(&self, i: usize) -> (&DeviceBuffer<f32>, usize) {
        match &self.external {
            Some(e) => (&e.features[i], 0),
            None => (self.vits[i].output(), self.configs[i].num_prefix_tokens()),
        }
    }

    fn pixels_of(&self, i: usize) -> u64 {
        let s = self.configs[0].image_size;
        self.pixels.at(i * 3 * s * s)
    }

    /// Queues external encoder `i` on `lane`.
    fn enqueue_external(
        &self,
        gpu: &Gpu,
        external: &External,
        i: usize,
        lane: Lane,
    ) -> Result<(), CudaError> {
        external.encoders.enqueue(i, gpu.stream(lane).cu_stream())
    }

    /// Queues one featurizer alone on its lane (benchmarks).
    pub fn encoder(&self, gpu: &Gpu, i: usize) -> Result<(), CudaError> {
        match &self.external {
            Some(e) => self.enqueue_external(gpu, e, i, LANES[i % 2]),
            None => self.vits[i].forward(gpu, self.pixels_of(i)),
        }
    }

    /// Queues both encoders (on one or two streams; lane A waits for both at the end).
    pub fn encoders(&self, gpu: &Gpu, mode: VisionMode) -> Result<(), CudaError> {
        if let Some(e) = &self.external {
            return match mode {
                VisionMode::OneStream => {
                    for i in 0..self.configs.len() {
                        self.enqueue_external(gpu, e, i, Lane::A)?;
                    }
                    Ok(())
                }
                VisionMode::TwoStreams => {
                    gpu.join(&self.fork, Lane::A, Lane::B)?;
                    for i in 0..self.configs.len() {
                        self.enqueue_external(gpu, e, i, LANES[i % 2])?;
                    }
                    gpu.join(&self.join, Lane::B, Lane::A)
                }
            };
        }
        match mode {
            VisionMode::OneStream => {
                for (i, v) in self.vits.iter().enumerate() {
                    v.forward_on(gpu, self.pixels_of(i), Lane::A)?;
                }
                Ok(())
            }
            VisionMode::TwoStreams => {
                gpu.join(&self.fork, Lane::A, Lane::B)?;
                for (i, v) in self.vits.iter().enumerate() {
                    v.forward(gpu, self.pixels_of(i))?;
                }
                gpu.join(&self.join, Lane::B, Lane::A)
            }
        }
    }

    /// Queues the concat of the featurizers' patch rows into `fused` on lane A.
    pub fn concat(&self, gpu: &Gpu) -> Result<(), CudaError> {
        let a = &self.configs[0];
        let (a_buf, a_first) = self.features(0);
        let patches = a.num_patches();
        let (b_buf, b_first, b_dim) = match self.configs.get(1) {
            Some(b) => {
                let (buf, first) = self.features(1);
                (buf.ptr(), first, b.embed_dim)
            }
            None => (0, 0, 0),
        };
        let width = a.embed_dim + b_dim;
        gpu.launch_elementwise(
            Lane::A,
            &gpu.kernels.concat_features_f16,
            patches * width,
            &[
                Arg::Ptr(a_buf.ptr()),
                int("concat", a_first)?,
                int("concat", a.embed_dim)?,
                Arg::Ptr(b_buf),
                int("concat", b_first)?,
                int("concat", b_dim)?,
                Arg::Ptr(self.fused.ptr()),
                int("concat", patches)?,
            ],
        )
    }

    pub fn projector(&self, gpu: &Gpu) -> Result<(), CudaError> {
        self.projector.forward(gpu, self.fused.ptr())
    }

    /// Queues the whole vision path: encoders, join, concat, projector.
    pub fn queue(&self, gpu: &Gpu, mode: VisionMode) -> Result<(), CudaError> {
        self.encoders(gpu, mode)?;
        self.concat(gpu)?;
        self.projector(gpu)
    }

    /// Captures the two-stream vision path once as a CUDA graph (lane A is the origin
    /// stream; lane B joins through the fork event).
    pub fn capture(&mut self, gpu: &Gpu) -> Result<(), CudaError> {
        self.graph = Some(self.captured(gpu, VisionMode::TwoStreams)?);
        Ok(())
    }

    /// The vision path issued in `mode`, captured as a CUDA graph.
    pub fn captured(&self, gpu: &Gpu, mode: VisionMode) -> Result<Graph, CudaError> {
        gpu.capture("vision graph", || self.queue(gpu, mode))
    }

    /// Attention scores of every encoder as FP16 tensor-core GEMMs over q and k split into
    /// f16 halves (`on`), or as the policy's f32 SGEMMs; the captured graph is dropped.
    pub fn set_split_scores(&mut self, on: bool) {
        for vit in &mut self.vits {
            vit.split_scores = on;
        }
        self.graph = None;
    }

    pub fn split_scores(&self) -> bool {
        self.vits.first().is_some_and(|v| v.split_scores)
    }

    /// Replays the captured graph on lane A (captures it first if needed).
    ///
    /// With external encoders the path is first queued once outside any capture (engines
    /// set themselves up lazily at their first enqueue); an engine that cannot be captured
    /// leaves the path queued eagerly at every call instead.
    pub fn replay(&mut self, gpu: &Gpu) -> Result<(), CudaError> {
        if let Some(e) = &self.external {
            if e.uncapturable {
                return self.queue(gpu, VisionMode::TwoStreams);
            }
            if !e.warmed {
                self.queue(gpu, VisionMode::TwoStreams)?;
                gpu.sync(Lane::A)?;
                if let Some(e) = &mut self.external {
                    e.warmed = true;
                }
            }
        }
        if self.graph.is_none() {
            match (self.capture(gpu), &mut self.external) {
                (Ok(()), _) => {}
                (Err(err), Some(e)) => {
                    log::warn!(
                        "{}: the vision path cannot be captured as a CUDA graph ({err}); \
                         queueing it at every call",
                        e.encoders.describe()
                    );
                    e.uncapturable = true;
                    return self.queue(gpu, VisionMode::TwoStreams);
                }
                (Err(err), None) => return Err(err),
            }
        }
        match &self.graph {
            Some(g) => g.launch(),
            None => Ok(()),
        }
    }

    /// Whether the path replays a CUDA graph (false before the first replay, and for
    /// external encoders that cannot be captured).
    pub fn is_captured(&self) -> bool {
        self.graph.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::{padded_keys, KEY_ALIGN};

    #[test]
    fn score_rows_are_padded_to_whole_16_byte_fp16_groups() {
        for keys in [1usize, 7, 8, 9, 256, 261, 283] {
            let padded = padded_keys(keys);
            assert!(padded >= keys && padded < keys + KEY_ALIGN);
            assert_eq!(padded * 2 % 16, 0, "{keys} keys → {padded}");
        }
    }
}
