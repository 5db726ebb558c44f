//! The language model on the device: prefill of the multimodal sequence with FP16 GEMMs and
//! greedy decode with GEMV kernels (FP16, INT8, INT4), the decode step captured as a CUDA
//! graph per weight format. The KV cache `[layers, kv_heads, capacity, head_dim]` FP16 and
//! every scratch buffer are allocated once at load.
//!
//! A small device array `state` = `[position, token, generated, _]` carries what changes
//! between steps, so the same graph replays every step; the argmax kernel writes the token
//! ids into a device array and only those come back to the host.

use std::collections::HashMap;

use half::f16;

use super::device::{int, Arg, DeviceBuffer, Dt, Gemm, Gpu, Graph, Lane};
use super::vision::{padded_keys, softmax, KEY_ALIGN};
use super::weights::{DecodeFormat, DeviceLinear, GemvVariant, WeightSource};
use super::CudaError;
use crate::model::llama::{rope_tables, LlamaConfig};

/// One decoder layer (`language_model.model.layers.N`), q/k/v and gate/up fused.
#[derive(Debug)]
struct Layer {
    input_norm: DeviceBuffer<f32>,
    /// `[heads·hd + 2·kv·hd, H]`: q_proj, k_proj, v_proj rows.
    qkv: DeviceLinear,
    o: DeviceLinear,
    post_norm: DeviceBuffer<f32>,
    /// `[2·I, H]`: gate_proj, up_proj rows.
    gate_up: DeviceLinear,
    down: DeviceLinear,
}

/// Device buffers for up to `capacity` positions.
#[derive(Debug)]
struct Scratch {
    /// `[capacity, H]`, the residual stream.
    x: DeviceBuffer<f32>,
    /// `[capacity, H]`
    normed: DeviceBuffer<f16>,
    /// `[capacity, (heads + 2·kv)·hd]`
    qkv: DeviceBuffer<f32>,
    /// `[capacity, H]`
    q: DeviceBuffer<f16>,
    /// `[heads, padded capacity, padded capacity]`
    scores: DeviceBuffer<f32>,
    probs: DeviceBuffer<f16>,
    /// `[capacity, H]`
    attn: DeviceBuffer<f16>,
    /// `[capacity, 2·I]`
    gate_up: DeviceBuffer<f32>,
    /// `[capacity, I]`
    act: DeviceBuffer<f16>,
    /// `[vocab]`
    logits: DeviceBuffer<f32>,
    /// `[position, token, generated, _]`
    state: DeviceBuffer<i32>,
    /// Generated token ids.
    tokens: DeviceBuffer<i32>,
    /// Prompt ids of the prefill.
    ids: DeviceBuffer<i32>,
    /// `[capacity, hd/2]` each.
    cos: DeviceBuffer<f32>,
    sin: DeviceBuffer<f32>,
    k_cache: DeviceBuffer<f16>,
    v_cache: DeviceBuffer<f16>,
    /// Split decode attention: `[heads, DECODE_ATTENTION_SPLITS, hd + 2]` shares and one
    /// arrival counter per head (zero between launches).
    attention_shares: DeviceBuffer<f32>,
    attention_counters: DeviceBuffer<i32>,
}

/// Threads of the decode attention kernel (32 warps share the keys of one head).
const DECODE_ATTENTION_THREADS: u32 = 1024;
/// `32 * DECODE_DIMS_PER_LANE` of `llama.cu`: head dimensions one warp covers.
const DECODE_ATTENTION_MAX_HEAD_DIM: usize = 256;
/// Dynamic shared memory a kernel may use without opting in.
const DECODE_ATTENTION_MAX_SHARED: u32 = 48 * 1024;

/// Shared memory of one decode attention block of `threads` threads scoring up to `keys`
/// positions: q, the scores and one partial sum per warp, all f32.
fn attention_shared_bytes(head_dim: usize, keys: usize, threads: u32) -> u32 {
    let warps = threads as usize / 32;
    u32::try_from(4 * (head_dim + keys + warps * head_dim)).unwrap_or(u32::MAX)
}

/// Shared memory of one `decode_attention` block (every cached position).
fn decode_attention_shared_bytes(head_dim: usize, capacity: usize) -> u32 {
    attention_shared_bytes(head_dim, capacity, DECODE_ATTENTION_THREADS)
}

/// Blocks per head of the split decode attention (`decode_attention_split`): 128 blocks for
/// Llama-2-7B's 32 heads, about one per multiprocessor of an H100/H200.
const DECODE_ATTENTION_SPLITS: usize = 4;
/// Threads of one split decode attention block.
const DECODE_ATTENTION_SPLIT_THREADS: u32 = 256;

/// The kernels of a decode step: the policy's, or a combination the benchmark compares with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DecodeKernels {
    pub gemv: GemvVariant,
    /// `decode_attention_split` (each head's keys over `DECODE_ATTENTION_SPLITS` blocks)
    /// instead of `decode_attention` (one block per head).
    pub split_attention: bool,
    /// With tensor-core GEMVs: the RMSNorms before q/k/v, gate/up and lm_head computed by
    /// those GEMVs as they stage x (`gemv_*_tc_norm`) instead of by `rms_norm_f16` launches.
    pub fused_norm: bool,
}

impl DecodeKernels {
    pub const POLICY: Self = Self {
        gemv: GemvVariant::Policy,
        split_attention: false,
        fused_norm: false,
    };
    pub const TENSOR_CORE_GEMVS: Self = Self {
        gemv: GemvVariant::TensorCore,
        split_attention: false,
        fused_norm: false,
    };
    /// Tensor-core GEMVs with the RMSNorms fused in, and split attention.
    pub const CANDIDATE: Self = Self {
        gemv: GemvVariant::TensorCore,
        split_attention: true,
        fused_norm: true,
    };

    /// What differs from the policy, for row names: "" for the policy's kernels.
    pub fn suffix(self) -> String {
        let mut parts = Vec::new();
        match self.gemv {
            GemvVariant::Policy => {}
            GemvVariant::TensorCore => parts.push("tensor-core GEMVs"),
            GemvVariant::Wide => parts.push("wide GEMVs"),
            GemvVariant::Persistent => parts.push("persistent GEMVs"),
        }
        if self.fused_norm {
            parts.push("fused RMSNorm");
        }
        if self.split_attention {
            parts.push("split attention");
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!(", {}", parts.join(" + "))
        }
    }
}

/// Most tokens one `generate` call can return.
pub const MAX_GENERATED: usize = 64;

pub struct DeviceLlama {
    config: LlamaConfig,
    capacity: usize,
    /// `[vocab, H]`
    embed: DeviceBuffer<f16>,
    layers: Vec<Layer>,
    norm: DeviceBuffer<f32>,
    lm_head: DeviceLinear,
    s: Scratch,
    /// The kernels of decode steps (and the GEMV of the prefill's lm_head row).
    decode_kernels: DecodeKernels,
    graphs: HashMap<(DecodeFormat, DecodeKernels), Graph>,
}

impl std::fmt::Debug for DeviceLlama {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceLlama")
            .field("config", &self.config)
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl DeviceLlama {
    /// Loads `{prefix}.model.*` and `{prefix}.lm_head`; `capacity` positions of KV cache.
    pub fn load(
        gpu: &Gpu,
        src: &mut dyn WeightSource,
        prefix: &str,
        config: LlamaConfig,
        capacity: usize,
    ) -> Result<Self, CudaError> {
        let (h, i, v) = (
            config.hidden_size,
            config.intermediate_size,
            config.vocab_size,
        );
        let hd = config.head_dim();
        let kv = config.num_kv_heads * hd;
        if !hd.is_multiple_of(2) || !config.num_heads.is_multiple_of(config.num_kv_heads.max(1)) {
            return Err(CudaError::Unsupported {
                what: format!("{prefix} attention"),
                message: format!(
                    "head_dim {hd} must be even and {} heads a multiple of {} KV heads",
                    config.num_heads, config.num_kv_heads
                ),
            });
        }
        if hd > DECODE_ATTENTION_MAX_HEAD_DIM
            || decode_attention_shared_bytes(hd, capacity) > DECODE_ATTENTION_MAX_SHARED
        {
            return Err(CudaError::Unsupported {
                what: format!("{prefix} decode attention"),
                message: format!(
                    "head_dim {hd} (at most {DECODE_ATTENTION_MAX_HEAD_DIM}) with {capacity} \
                     cached positions needs {} bytes of shared memory (at most {})",
                    decode_attention_shared_bytes(hd, capacity),
                    DECODE_ATTENTION_MAX_SHARED
                ),
            });
        }
        let m = format!("{prefix}.model");
        let embed = src.tensor_f16(gpu, &format!("{m}.embed_tokens.weight"), &[v, h], 1.0)?;
        let mut layers = Vec::with_capacity(config.num_layers);
        for l in 0..config.num_layers {
            let p = format!("{m}.layers.{l}");
            let norm = |src: &mut dyn WeightSource, n: &str| {
                src.tensor_f32(gpu, &format!("{p}.{n}.weight"), &[h], 1.0, 0.05)
            };
            let a = format!("{p}.self_attn");
            let mlp = format!("{p}.mlp");
            layers.push(Layer {
                input_norm: norm(src, "input_layernorm")?,
                qkv: DeviceLinear::load(
                    gpu,
                    src,
                    &format!("{a}.qkv"),
                    &[
                        (format!("{a}.q_proj"), h),
                        (format!("{a}.k_proj"), kv),
                        (format!("{a}.v_proj"), kv),
                    ],
                    h,
                )?,
                o: DeviceLinear::load(
                    gpu,
                    src,
                    &format!("{a}.o_proj"),
                    &[(format!("{a}.o_proj"), h)],
                    h,
                )?,
                post_norm: norm(src, "post_attention_layernorm")?,
                gate_up: DeviceLinear::load(
                    gpu,
                    src,
                    &format!("{mlp}.gate_up"),
                    &[
                        (format!("{mlp}.gate_proj"), i),
                        (format!("{mlp}.up_proj"), i),
                    ],
                    h,
                )?,
                down: DeviceLinear::load(
                    gpu,
                    src,
                    &format!("{mlp}.down_proj"),
                    &[(format!("{mlp}.down_proj"), h)],
                    i,
                )?,
            });
        }
        let norm = src.tensor_f32(gpu, &format!("{m}.norm.weight"), &[h], 1.0, 0.05)?;
        let head_name = format!("{prefix}.lm_head");
        let head_source =
            if config.tie_word_embeddings && !src.contains(&format!("{head_name}.weight")) {
                format!("{m}.embed_tokens")
            } else {
                head_name.clone()
            };
        let lm_head = DeviceLinear::load(gpu, src, &head_name, &[(head_source, v)], h)?;
        let (cos, sin) = rope_tables(hd, config.rope_theta, capacity);
        let qkv_width = (config.num_heads + 2 * config.num_kv_heads) * hd;
        let cache_len = config.num_layers * kv * capacity;
        let s = Scratch {
            x: gpu.alloc(capacity * h)?,
            normed: gpu.alloc(capacity * h)?,
            qkv: gpu.alloc(capacity * qkv_width)?,
            q: gpu.alloc(capacity * h)?,
            scores: gpu.alloc(config.num_heads * padded_keys(capacity).pow(2))?,
            probs: gpu.alloc(config.num_heads * padded_keys(capacity).pow(2))?,
            attn: gpu.alloc(capacity * h)?,
            gate_up: gpu.alloc(capacity * 2 * i)?,
            act: gpu.alloc(capacity * i)?,
            logits: gpu.alloc(v)?,
            state: gpu.alloc(4)?,
            tokens: gpu.alloc(MAX_GENERATED)?,
            ids: gpu.alloc(capacity)?,
            cos: gpu.upload(&cos)?,
            sin: gpu.upload(&sin)?,
            k_cache: gpu.alloc(cache_len)?,
            v_cache: gpu.alloc(cache_len)?,
            attention_shares: gpu.alloc(config.num_heads * DECODE_ATTENTION_SPLITS * (hd + 2))?,
            attention_counters: gpu.alloc(config.num_heads)?,
        };
        gpu.sync(Lane::A)?;
        Ok(Self {
            config,
            capacity,
            embed,
            layers,
            norm,
            lm_head,
            s,
            decode_kernels: DecodeKernels::POLICY,
            graphs: HashMap::new(),
        })
    }

    /// Selects the kernels of decode (the policy's by default); each selection keeps its own
    /// captured step graphs.
    pub fn set_decode_kernels(&mut self, kernels: DecodeKernels) {
        self.decode_kernels = kernels;
    }

    pub fn decode_kernels(&self) -> DecodeKernels {
        self.decode_kernels
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn linears_mut(&mut self) -> impl Iterator<Item = &mut DeviceLinear> {
        self.layers
            .iter_mut()
            .flat_map(|l| [&mut l.qkv, &mut l.o, &mut l.gate_up, &mut l.down])
            .chain(std::iter::once(&mut self.lm_head))
    }

    fn linears(&self) -> impl Iterator<Item = &DeviceLinear> {
        self.layers
            .iter()
            .flat_map(|l| [&l.qkv, &l.o, &l.gate_up, &l.down])
            .chain(std::iter::once(&self.lm_head))
    }

    /// Quantizes every linear layer for decode in `format` (from `src`'s host values when it
    /// has them, else on the device); `replace_f16` makes the prefill use the dequantized
    /// weights too (the policy), otherwise the FP16 weights stay (benchmarks comparing
    /// formats on one model).
    pub fn quantize(
        &mut self,
        gpu: &Gpu,
        mut src: Option<&mut dyn WeightSource>,
        format: DecodeFormat,
        replace_f16: bool,
    ) -> Result<(), CudaError> {
        if format == DecodeFormat::F16 {
            return Ok(());
        }
        for lin in self.linears_mut() {
            let layer_src: Option<&mut dyn WeightSource> = match &mut src {
                Some(s) => Some(&mut **s),
                None => None,
            };
            lin.quantize(gpu, layer_src, format, replace_f16)?;
        }
        self.graphs.retain(|(f, _), _| *f != format);
        Ok(())
    }

    /// Queues only the GEMVs of one decode step in `format` (every linear layer once, on
    /// scratch inputs): the weight-reading part of a step, for the benchmark.
    pub fn queue_gemvs_only(
        &self,
        gpu: &Gpu,
        format: DecodeFormat,
        variant: GemvVariant,
    ) -> Result<(), CudaError> {
        for lin in self.linears() {
            lin.gemv_variant(
                gpu,
                Lane::A,
                format,
                self.s.act.ptr(),
                self.s.gate_up.ptr(),
                false,
                variant,
            )?;
        }
        Ok(())
    }

    /// Largest difference between the policy GEMV kernels and their benchmark `variant` over
    /// every layer (same input), relative to the layer's largest output.
    pub fn gemv_variant_difference(
        &self,
        gpu: &Gpu,
        format: DecodeFormat,
        variant: GemvVariant,
    ) -> Result<f32, CudaError> {
        let mut worst = 0.0f32;
        for lin in self.linears() {
            let n = lin.out_features;
            let (x, y1, y2) = (self.s.act.ptr(), self.s.gate_up.ptr(), self.s.qkv.ptr());
            lin.gemv_variant(gpu, Lane::A, format, x, y1, false, GemvVariant::Policy)?;
            lin.gemv_variant(gpu, Lane::A, format, x, y2, false, variant)?;
            let mut a = vec![0.0f32; n];
            let mut b = vec![0.0f32; n];
            gpu.read(Lane::A, &self.s.gate_up, 0, &mut a)?;
            gpu.read(Lane::A, &self.s.qkv, 0, &mut b)?;
            let scale = a.iter().fold(1e-30f32, |m, v| m.max(v.abs()));
            let diff = a
                .iter()
                .zip(&b)
                .fold(0.0f32, |m, (p, q)| m.max((p - q).abs()));
            worst = worst.max(if diff.is_nan() {
                f32::INFINITY
            } else {
                diff / scale
            });
        }
        Ok(worst)
    }

    /// Linear layers (of all, lm_head included) whose `format` GEMV the tensor-core kernel
    /// takes; the others fall back to the policy kernel under that variant.
    pub fn tensor_core_layers(&self, gpu: &Gpu, format: DecodeFormat) -> (usize, usize) {
        let taken = self
            .linears()
            .filter(|l| l.takes_tensor_core_gemv(gpu, format))
            .count();
        (taken, self.linears().count())
    }

    /// Weight bytes one decode step reads in `format` (all layers and lm_head).
    pub fn decode_weight_bytes(&self, format: DecodeFormat) -> usize {
        self.linears().map(|l| l.weight_bytes(format)).sum()
    }

    fn rms_norm(
        &self,
        gpu: &Gpu,
        rows: usize,
        x: u64,
        w: &DeviceBuffer<f32>,
        out: u64,
    ) -> Result<(), CudaError> {
        gpu.launch(
            Lane::A,
            &gpu.kernels.rms_norm_f16,
            rows as u32,
            256,
            0,
            &[
                Arg::Ptr(x),
                Arg::Ptr(w.ptr()),
                Arg::Ptr(out),
                int("rms norm", self.config.hidden_size)?,
                Arg::F32(self.config.rms_norm_eps as f32),
            ],
        )
    }

    fn rope_cache(&self, gpu: &Gpu, layer: usize, n: usize) -> Result<(), CudaError> {
        let c = &self.config;
        let hd = c.head_dim();
        let layer_off = layer * c.num_kv_heads * self.capacity * hd;
        let pairs = (c.num_heads + c.num_kv_heads) * hd / 2 + c.num_kv_heads * hd;
        gpu.launch_elementwise(
            Lane::A,
            &gpu.kernels.rope_cache_write,
            n * pairs,
            &[
                Arg::Ptr(self.s.qkv.ptr()),
                Arg::Ptr(self.s.q.ptr()),
                Arg::Ptr(self.s.k_cache.at(layer_off)),
                Arg::Ptr(self.s.v_cache.at(layer_off)),
                Arg::Ptr(self.s.cos.ptr()),
                Arg::Ptr(self.s.sin.ptr()),
                Arg::Ptr(self.s.state.ptr()),
                int("rope", n)?,
                int("rope", c.num_heads)?,
                int("rope", c.num_kv_heads)?,
                int("rope", hd)?,
                int("rope", self.capacity)?,
            ],
        )
    }

    fn silu_mul(&self, gpu: &Gpu, n: usize) -> Result<(), CudaError> {
        let i = self.config.intermediate_size;
        gpu.launch_elementwise(
            Lane::A,
            &gpu.kernels.silu_mul_f16,
            n * i,
            &[
                Arg::Ptr(self.s.gate_up.ptr()),
                Arg::Ptr(self.s.act.ptr()),
                int("silu", n)?,
                int("silu", i)?,
            ],
        )
    }

    /// Final norm of row `row` of x, lm_head, argmax; advances the position by `advance`.
    fn head(
        &self,
        gpu: &Gpu,
        format: DecodeFormat,
        row: usize,
        advance: usize,
    ) -> Result<(), CudaError> {
        let h = self.config.hidden_size;
        self.normed_decode_gemv(
            gpu,
            &self.norm,
            &self.lm_head,
            format,
            self.s.x.at(row * h),
            self.s.logits.ptr(),
        )?;
        gpu.launch(
            Lane::A,
            &gpu.kernels.argmax_advance,
            1,
            1024,
            0,
            &[
                Arg::Ptr(self.s.logits.ptr()),
                int("argmax", self.config.vocab_size)?,
                Arg::Ptr(self.s.state.ptr()),
                Arg::Ptr(self.s.tokens.ptr()),
                int("argmax", advance)?,
            ],
        )
    }

    /// Prefill: `image_tokens` (`[P, H]` f32 on the device) inserted after `<s>` of
    /// `input_ids`, all layers with FP16 GEMMs, then the first token (argmax of the last
    /// position) on the device. Resets the sequence.
    pub fn prefill(
        &self,
        gpu: &Gpu,
        image_tokens: &DeviceBuffer<f32>,
        input_ids: &[u32],
        format: DecodeFormat,
    ) -> Result<usize, CudaError> {
        let c = &self.config;
        let h = c.hidden_size;
        let patches = image_tokens.len() / h.max(1);
        let n = patches + input_ids.len();
        if input_ids.is_empty() || n + MAX_GENERATED.min(8) > self.capacity {
            return Err(CudaError::Model(
                crate::model::ModelError::SequenceTooLong {
                    len: n,
                    capacity: self.capacity,
                },
            ));
        }
        let ids: Vec<i32> = input_ids
            .iter()
            .map(|&t| {
                if (t as usize) < c.vocab_size {
                    Ok(t as i32)
                } else {
                    Err(CudaError::Shape {
                        op: "embedding",
                        message: format!("token {t} outside vocab {}", c.vocab_size),
                    })
                }
            })
            .collect::<Result<_, _>>()?;
        self.queue_input(gpu, image_tokens, patches, &ids)?;
        self.queue_layers(gpu, n, 0)?;
        self.head(gpu, format, n - 1, n)?;
        Ok(n)
    }

    /// Resets the sequence and queues the input rows `s.x` =
    /// `[embed(ids[0]), prefix_rows rows of prefix, embed(ids[1..])]`, a negative id giving a
    /// zero row (`assemble_prefill`). The caller has checked the ids and the sizes.
    fn queue_input(
        &self,
        gpu: &Gpu,
        prefix: &DeviceBuffer<f32>,
        prefix_rows: usize,
        ids: &[i32],
    ) -> Result<(), CudaError> {
        let s = &self.s;
        let h = self.config.hidden_size;
        gpu.write(&s.ids, 0, ids)?;
        gpu.write(&s.state, 0, &[0, 0, 0, 0])?;
        gpu.launch_elementwise(
            Lane::A,
            &gpu.kernels.assemble_prefill,
            (prefix_rows + ids.len()) * h,
            &[
                Arg::Ptr(self.embed.ptr()),
                Arg::Ptr(s.ids.ptr()),
                Arg::Ptr(prefix.ptr()),
                Arg::Ptr(s.x.ptr()),
                int("input rows", prefix_rows)?,
                int("input rows", ids.len())?,
                int("input rows", h)?,
            ],
        )
    }

    /// Every decoder layer over the `n` rows of `s.x` at positions `0..n` (the KV cache is
    /// written from position 0): attention causal with `causal_past` 0 (the prefill), full
    /// bidirectional with -1 (OFT's pass; `softmax_rows_f16` masks nothing then).
    fn queue_layers(&self, gpu: &Gpu, n: usize, causal_past: i32) -> Result<(), CudaError> {
        let c = &self.config;
        let (h, hd) = (c.hidden_size, c.head_dim());
        let s = &self.s;
        let rep = c.num_heads / c.num_kv_heads;
        let np = padded_keys(n);
        for (l, layer) in self.layers.iter().enumerate() {
            self.rms_norm(gpu, n, s.x.ptr(), &layer.input_norm, s.normed.ptr())?;
            layer
                .qkv
                .forward_rows(gpu, Lane::A, n, s.normed.ptr(), s.qkv.ptr(), Dt::F32, false)?;
            self.rope_cache(gpu, l, n)?;
            let layer_off = l * c.num_kv_heads * self.capacity * hd;
            // Per KV head g, its `rep` query heads in one batched GEMM (k shared: stride 0);
            // without GQA all heads in one batch.
            let (groups, batch, kv_stride) = if rep == 1 {
                (1, c.num_heads, self.capacity * hd)
            } else {
                (c.num_kv_heads, rep, 0)
            };
            for g in 0..groups {
                let h0 = g * batch;
                let kv_off = layer_off + g * self.capacity * hd;
                // scores[h] [np, np] = q_h [np, hd] · k_g [np, hd]ᵀ: np ≥ n rows so that no
                // GEMM dimension is odd; the rows past n hold finite leftovers whose scores are
                // ignored and whose probabilities are 0.
                gpu.gemm(
                    Lane::A,
                    &Gemm {
                        trans_a: true,
                        trans_b: false,
                        m: np,
                        n: np,
                        k: hd,
                        a: s.k_cache.at(kv_off),
                        a_type: Dt::F16,
                        lda: hd,
                        stride_a: kv_stride,
                        b: s.q.at(h0 * hd),
                        b_type: Dt::F16,
                        ldb: h,
                        stride_b: hd,
                        c: s.scores.at(h0 * np * np),
                        c_type: Dt::F32,
                        ldc: np,
                        stride_c: np * np,
                        batch,
                        alpha: 1.0,
                        beta: 0.0,
                    },
                )?;
            }
            softmax(
                gpu,
                Lane::A,
                &s.scores,
                &s.probs,
                c.num_heads * np,
                np,
                n,
                np,
                1.0 / (hd as f32).sqrt(),
                causal_past,
            )?;
            for g in 0..groups {
                let h0 = g * batch;
                let kv_off = layer_off + g * self.capacity * hd;
                // attn[:, h·hd..] [np, hd] = probs_h [np, np] · v_g [np, hd]
                gpu.gemm(
                    Lane::A,
                    &Gemm {
                        trans_a: false,
                        trans_b: false,
                        m: hd,
                        n: np,
                        k: np,
                        a: s.v_cache.at(kv_off),
                        a_type: Dt::F16,
                        lda: hd,
                        stride_a: kv_stride,
                        b: s.probs.at(h0 * np * np),
                        b_type: Dt::F16,
                        ldb: np,
                        stride_b: np * np,
                        c: s.attn.at(h0 * hd),
                        c_type: Dt::F16,
                        ldc: h,
                        stride_c: hd,
                        batch,
                        alpha: 1.0,
                        beta: 0.0,
                    },
                )?;
            }
            // x += attn · o_projᵀ (β = 1 adds the residual).
            layer
                .o
                .forward_rows(gpu, Lane::A, n, s.attn.ptr(), s.x.ptr(), Dt::F32, true)?;
            self.rms_norm(gpu, n, s.x.ptr(), &layer.post_norm, s.normed.ptr())?;
            layer.gate_up.forward_rows(
                gpu,
                Lane::A,
                n,
                s.normed.ptr(),
                s.gate_up.ptr(),
                Dt::F32,
                false,
            )?;
            self.silu_mul(gpu, n)?;
            layer
                .down
                .forward_rows(gpu, Lane::A, n, s.act.ptr(), s.x.ptr(), Dt::F32, true)?;
        }
        Ok(())
    }

    /// OpenVLA-OFT's pass (ARCHITECTURE.md §17): the input
    /// `[embed(ids[0]), prefix (P rows), embed(ids[1..])]`, a negative id giving a zero row
    /// (OFT's placeholders), through every layer with full bidirectional attention at
    /// positions `0..n`; the final RMSNorm of the rows `read` goes to `out`
    /// (`[read.len(), H]` f32). No LM head. Resets the sequence.
    pub fn forward_bidirectional(
        &self,
        gpu: &Gpu,
        prefix: &DeviceBuffer<f32>,
        prefix_rows: usize,
        ids: &[i32],
        read: std::ops::Range<usize>,
        out: &DeviceBuffer<f32>,
    ) -> Result<(), CudaError> {
        let c = &self.config;
        let h = c.hidden_size;
        let n = check_bidirectional_args(
            &BidirectionalShapes {
                hidden: h,
                vocab: c.vocab_size,
                capacity: self.capacity,
                prefix_values: prefix.len(),
                out_values: out.len(),
            },
            prefix_rows,
            ids,
            &read,
        )?;
        let s = &self.s;
        self.queue_input(gpu, prefix, prefix_rows, ids)?;
        self.queue_layers(gpu, n, -1)?;
        gpu.launch(
            Lane::A,
            &gpu.kernels.rms_norm_f32,
            u32::try_from(read.len()).map_err(|_| CudaError::Shape {
                op: "OFT hidden states",
                message: format!("{} rows do not fit a grid", read.len()),
            })?,
            256,
            0,
            &[
                Arg::Ptr(s.x.at(read.start * h)),
                Arg::Ptr(self.norm.ptr()),
                Arg::Ptr(out.ptr()),
                int("rms norm", h)?,
                Arg::F32(c.rms_norm_eps as f32),
            ],
        )
    }

    /// Decode attention of the query in `s.q` against the cache of the layer at `layer_off`
    /// (elements), into `s.attn`, with the selected kernel.
    fn decode_attention(&self, gpu: &Gpu, layer_off: usize) -> Result<(), CudaError> {
        let c = &self.config;
        let hd = c.head_dim();
        let s = &self.s;
        let mut args = vec![
            Arg::Ptr(s.q.ptr()),
            Arg::Ptr(s.k_cache.at(layer_off)),
            Arg::Ptr(s.v_cache.at(layer_off)),
            Arg::Ptr(s.attn.ptr()),
            Arg::Ptr(s.state.ptr()),
            int("decode attention", c.num_heads)?,
            int("decode attention", c.num_kv_heads)?,
            int("decode attention", hd)?,
            int("decode attention", self.capacity)?,
            Arg::F32(1.0 / (hd as f32).sqrt()),
        ];
        if !self.decode_kernels.split_attention {
            return gpu.launch(
                Lane::A,
                &gpu.kernels.decode_attention,
                c.num_heads as u32,
                DECODE_ATTENTION_THREADS,
                decode_attention_shared_bytes(hd, self.capacity),
                &args,
            );
        }
        args.extend([
            Arg::Ptr(s.attention_shares.ptr()),
            Arg::Ptr(s.attention_counters.ptr()),
            int("decode attention", DECODE_ATTENTION_SPLITS)?,
        ]);
        gpu.launch(
            Lane::A,
            &gpu.kernels.decode_attention_split,
            (c.num_heads * DECODE_ATTENTION_SPLITS) as u32,
            DECODE_ATTENTION_SPLIT_THREADS,
            attention_shared_bytes(
                hd,
                self.capacity.div_ceil(DECODE_ATTENTION_SPLITS),
                DECODE_ATTENTION_SPLIT_THREADS,
            ),
            &args,
        )
    }

    /// `y = lin(RMSNorm(x row) · norm)` for one row: one tensor-core kernel that normalises
    /// while it stages x when the selection fuses the norm and the layer takes it, otherwise
    /// `rms_norm_f16` into `s.normed` and the selected GEMV.
    fn normed_decode_gemv(
        &self,
        gpu: &Gpu,
        norm: &DeviceBuffer<f32>,
        lin: &DeviceLinear,
        format: DecodeFormat,
        x: u64,
        y: u64,
    ) -> Result<(), CudaError> {
        let k = self.decode_kernels;
        if k.fused_norm
            && k.gemv == GemvVariant::TensorCore
            && lin.gemv_tensor_core_normed(
                gpu,
                Lane::A,
                format,
                x,
                norm.ptr(),
                self.config.rms_norm_eps as f32,
                y,
                false,
            )?
        {
            return Ok(());
        }
        self.rms_norm(gpu, 1, x, norm, self.s.normed.ptr())?;
        self.decode_gemv(gpu, lin, format, self.s.normed.ptr(), y, false)
    }

    /// One decode GEMV of `lin` with the selected variant.
    fn decode_gemv(
        &self,
        gpu: &Gpu,
        lin: &DeviceLinear,
        format: DecodeFormat,
        x: u64,
        y: u64,
        accumulate: bool,
    ) -> Result<(), CudaError> {
        lin.gemv_variant(
            gpu,
            Lane::A,
            format,
            x,
            y,
            accumulate,
            self.decode_kernels.gemv,
        )
    }

    /// Queues one decode step: embed state's token at state's position, all layers with
    /// GEMVs in `format`, argmax, position + 1.
    fn queue_step(&self, gpu: &Gpu, format: DecodeFormat) -> Result<(), CudaError> {
        let c = &self.config;
        let (h, hd) = (c.hidden_size, c.head_dim());
        let s = &self.s;
        gpu.launch_elementwise(
            Lane::A,
            &gpu.kernels.embed_decode,
            h,
            &[
                Arg::Ptr(self.embed.ptr()),
                Arg::Ptr(s.state.ptr()),
                Arg::Ptr(s.x.ptr()),
                int("embed", h)?,
            ],
        )?;
        for (l, layer) in self.layers.iter().enumerate() {
            self.normed_decode_gemv(
                gpu,
                &layer.input_norm,
                &layer.qkv,
                format,
                s.x.ptr(),
                s.qkv.ptr(),
            )?;
            self.rope_cache(gpu, l, 1)?;
            let layer_off = l * c.num_kv_heads * self.capacity * hd;
            self.decode_attention(gpu, layer_off)?;
            self.decode_gemv(gpu, &layer.o, format, s.attn.ptr(), s.x.ptr(), true)?;
            self.normed_decode_gemv(
                gpu,
                &layer.post_norm,
                &layer.gate_up,
                format,
                s.x.ptr(),
                s.gate_up.ptr(),
            )?;
            self.silu_mul(gpu, 1)?;
            self.decode_gemv(gpu, &layer.down, format, s.act.ptr(), s.x.ptr(), true)?;
        }
        self.head(gpu, format, 0, 1)
    }

    /// One decode step: the captured graph for `format` (captured on first use), or the
    /// kernels queued directly when `use_graph` is false.
    pub fn step(
        &mut self,
        gpu: &Gpu,
        format: DecodeFormat,
        use_graph: bool,
    ) -> Result<(), CudaError> {
        if !use_graph {
            return self.queue_step(gpu, format);
        }
        let key = (format, self.decode_kernels);
        if !self.graphs.contains_key(&key) {
            let graph = gpu.capture("decode graph", || self.queue_step(gpu, format))?;
            self.graphs.insert(key, graph);
        }
        match self.graphs.get(&key) {
            Some(g) => g.launch(),
            None => Ok(()),
        }
    }

    /// Prefill + `count - 1` decode steps; returns the `count` token ids (the only copy back).
    pub fn generate(
        &mut self,
        gpu: &Gpu,
        image_tokens: &DeviceBuffer<f32>,
        input_ids: &[u32],
        count: usize,
        format: DecodeFormat,
        use_graph: bool,
    ) -> Result<Vec<u32>, CudaError> {
        if count == 0 || count > MAX_GENERATED {
            return Err(CudaError::Shape {
                op: "generate",
                message: format!("{count} tokens requested (1..={MAX_GENERATED})"),
            });
        }
        self.prefill(gpu, image_tokens, input_ids, format)?;
        for _ in 1..count {
            self.step(gpu, format, use_graph)?;
        }
        self.read_tokens(gpu, count)
    }

    /// The first `count` generated token ids.
    pub fn read_tokens(&self, gpu: &Gpu, count: usize) -> Result<Vec<u32>, CudaError> {
        let mut ids = vec![0i32; count];
        gpu.read(Lane::A, &self.s.tokens, 0, &mut ids)?;
        ids.into_iter()
            .map(|t| {
                u32::try_from(t).map_err(|_| CudaError::Shape {
                    op: "greedy decode",
                    message: "logits were all NaN".into(),
                })
            })
            .collect()
    }

    /// The latest logits (`[vocab]`), e.g. the step-0 logits right after the prefill.
    pub fn read_logits(&self, gpu: &Gpu) -> Result<Vec<f32>, CudaError> {
        let mut out = vec![0.0f32; self.config.vocab_size];
        gpu.read(Lane::A, &self.s.logits, 0, &mut out)?;
        Ok(out)
    }
}

/// The sizes [`DeviceLlama::forward_bidirectional`] checks its arguments against.
#[derive(Debug, Clone, Copy)]
pub struct BidirectionalShapes {
    pub hidden: usize,
    pub vocab: usize,
    /// Positions of the KV cache and of every scratch buffer.
    pub capacity: usize,
    /// Values of the prefix buffer and of the output buffer.
    pub prefix_values: usize,
    pub out_values: usize,
}

/// The longest bidirectional pass a cache of `capacity` positions takes: the attention GEMMs
/// run over the rows padded to [`KEY_ALIGN`] (`padded_keys`), which must stay inside the
/// buffers sized for `capacity` (the token path's prefill keeps room for decode instead).
pub fn bidirectional_positions(capacity: usize) -> usize {
    capacity / KEY_ALIGN * KEY_ALIGN
}

/// The cache positions to allocate for bidirectional passes of up to `longest` positions in a
/// model of `llm_max_length`: `longest` padded to [`KEY_ALIGN`] where the model allows it.
pub fn bidirectional_capacity(longest: usize, llm_max_length: usize) -> usize {
    let padded = padded_keys(longest);
    if padded <= llm_max_length {
        padded
    } else {
        bidirectional_positions(llm_max_length)
    }
}

/// The sequence length of an OFT pass over `prefix_rows` rows and `ids`, or an error naming
/// what does not fit: a sequence longer than the capacity, a prefix or output buffer too
/// small, an id outside the vocabulary, or rows to read outside the sequence.
pub fn check_bidirectional_args(
    shapes: &BidirectionalShapes,
    prefix_rows: usize,
    ids: &[i32],
    read: &std::ops::Range<usize>,
) -> Result<usize, CudaError> {
    let n = prefix_rows + ids.len();
    let shape = |message: String| CudaError::Shape {
        op: "OFT pass",
        message,
    };
    if ids.first().is_none_or(|&first| first < 0) {
        return Err(shape(
            "the input needs a first token id (`<s>`) before the prefix rows".into(),
        ));
    }
    let usable = bidirectional_positions(shapes.capacity);
    if n > usable {
        return Err(CudaError::Model(
            crate::model::ModelError::SequenceTooLong {
                len: n,
                capacity: usable,
            },
        ));
    }
    if prefix_rows * shapes.hidden > shapes.prefix_values {
        return Err(shape(format!(
            "{prefix_rows} prefix rows of {} values, the prefix buffer holds {}",
            shapes.hidden, shapes.prefix_values
        )));
    }
    if let Some(&id) = ids
        .iter()
        .find(|&&id| id >= 0 && id as usize >= shapes.vocab)
    {
        return Err(shape(format!("token {id} outside vocab {}", shapes.vocab)));
    }
    if read.is_empty() || read.end > n {
        return Err(shape(format!(
            "rows {read:?} to read from a sequence of {n}"
        )));
    }
    if read.len() * shapes.hidden > shapes.out_values {
        return Err(shape(format!(
            "{} rows of {} values into an output of {}",
            read.len(),
            shapes.hidden,
            shapes.out_values
        )));
    }
    Ok(n)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::{
        bidirectional_capacity, bidirectional_positions, check_bidirectional_args,
        BidirectionalShapes,
    };
    use crate::backend::cuda::kernels::{kernel_parameters, LLAMA, OFT};

    /// An OFT pass of the fixture's second case: 513 prefix rows (two cameras and the proprio
    /// token) and 40 prompt ids + 56 placeholders + `</s>`.
    fn fixture_shapes(capacity: usize) -> BidirectionalShapes {
        BidirectionalShapes {
            hidden: 64,
            vocab: 32064,
            capacity,
            prefix_values: 513 * 64,
            out_values: 56 * 64,
        }
    }

    fn fixture_ids() -> Vec<i32> {
        let mut ids = vec![1; 40];
        ids.extend([-1; 56]);
        ids.push(2);
        ids
    }

    #[test]
    fn a_pass_that_fits_gives_its_sequence_length() {
        let n = check_bidirectional_args(&fixture_shapes(616), 513, &fixture_ids(), &(552..608));
        assert_eq!(n.unwrap(), 610);
    }

    /// The attention GEMMs run over 616 rows for 610 positions: a cache of 610 or 615
    /// positions would be read and written past its end, so the pass is refused there.
    #[test]
    fn the_padded_attention_rows_must_fit_the_capacity() {
        for capacity in [610, 615] {
            let err = check_bidirectional_args(
                &fixture_shapes(capacity),
                513,
                &fixture_ids(),
                &(552..608),
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains("610") && err.contains("608"), "{err}");
        }
        assert_eq!(bidirectional_capacity(610, 2048), 616);
        assert_eq!(bidirectional_capacity(610, 612), 608);
        assert_eq!(bidirectional_capacity(608, 608), 608);
        assert_eq!(bidirectional_positions(769), 768);
    }

    #[test]
    fn a_sequence_longer_than_the_capacity_is_an_error_naming_both_lengths() {
        let err = check_bidirectional_args(&fixture_shapes(600), 513, &fixture_ids(), &(552..608))
            .unwrap_err()
            .to_string();
        assert!(err.contains("610") && err.contains("600"), "{err}");
    }

    #[test]
    fn buffers_ids_and_rows_that_do_not_fit_are_errors_naming_them() {
        let shapes = fixture_shapes(1024);
        let ids = fixture_ids();
        let err = |r: Result<usize, crate::backend::cuda::CudaError>| r.unwrap_err().to_string();
        let e = err(check_bidirectional_args(&shapes, 514, &ids, &(552..608)));
        assert!(
            e.contains("514 prefix rows") && e.contains("prefix buffer"),
            "{e}"
        );
        let e = err(check_bidirectional_args(&shapes, 513, &ids, &(552..609)));
        assert!(e.contains("57 rows") && e.contains("output"), "{e}");
        let e = err(check_bidirectional_args(&shapes, 513, &ids, &(600..611)));
        assert!(e.contains("sequence of 610"), "{e}");
        let e = err(check_bidirectional_args(&shapes, 513, &ids, &(5..5)));
        assert!(e.contains("5..5"), "{e}");
        let mut bad = ids.clone();
        bad[3] = 32064;
        let e = err(check_bidirectional_args(&shapes, 513, &bad, &(552..608)));
        assert!(e.contains("32064 outside vocab"), "{e}");
        let e = err(check_bidirectional_args(&shapes, 513, &[], &(0..1)));
        assert!(e.contains("first token id"), "{e}");
        bad[0] = -1;
        let e = err(check_bidirectional_args(&shapes, 513, &bad, &(552..608)));
        assert!(e.contains("first token id"), "{e}");
    }

    /// The OFT head's f32 RMSNorm takes the language model's f16 one's arguments, in the same
    /// order.
    #[test]
    fn the_oft_rms_norm_takes_the_language_models_arguments() {
        assert_eq!(
            kernel_parameters(&OFT, "rms_norm_f32"),
            kernel_parameters(&LLAMA, "rms_norm_f16")
        );
    }

    /// The host passes decode_attention's arguments to both kernels and appends the split
    /// kernel's own three.
    #[test]
    fn split_attention_takes_decode_attentions_arguments_then_its_own() {
        let plain = kernel_parameters(&LLAMA, "decode_attention");
        let split = kernel_parameters(&LLAMA, "decode_attention_split");
        assert_eq!(plain.len(), 10);
        assert_eq!(split[..plain.len()], plain[..]);
        assert_eq!(split[plain.len()..], ["partials", "counters", "splits"]);
    }
}
