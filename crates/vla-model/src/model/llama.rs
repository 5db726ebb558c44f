//! The Llama language model as transformers 4.40 runs it (OPENVLA_FACTS §4): RMSNorm,
//! rotate-half RoPE, grouped-query attention, SiLU-gated MLP, untied `lm_head`. The KV cache
//! and every scratch buffer live in [`LlamaState`], preallocated and written in place, so a
//! decode step allocates nothing.

use super::checkpoint::Checkpoint;
use super::config::OpenVlaConfig;
use super::linear::Linear;
use super::ops::{self, AttentionShape, HeadLayout};
use super::ModelError;
use rayon::prelude::*;

/// Resolved dimensions of the language model (`text_config` + `LlamaConfig` defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub tie_word_embeddings: bool,
}

impl LlamaConfig {
    pub fn from_openvla(config: &OpenVlaConfig) -> Self {
        let t = &config.text_config;
        Self {
            hidden_size: t.hidden_size,
            intermediate_size: t.intermediate_size,
            num_layers: t.num_hidden_layers,
            num_heads: t.num_attention_heads,
            num_kv_heads: config.num_key_value_heads(),
            vocab_size: t.vocab_size,
            rms_norm_eps: t.rms_norm_eps,
            rope_theta: t.rope_theta,
            tie_word_embeddings: t.tie_word_embeddings,
        }
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    fn kv_width(&self) -> usize {
        self.num_kv_heads * self.head_dim()
    }
}

/// `self_attn.{q,k,v,o}_proj` (no biases).
#[derive(Debug, Clone)]
pub struct LlamaAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
}

/// `mlp.{gate,up,down}_proj`: `down(silu(gate(x)) * up(x))`.
#[derive(Debug, Clone)]
pub struct LlamaMlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

/// One decoder layer, `language_model.model.layers.N`.
#[derive(Debug, Clone)]
pub struct LlamaLayer {
    input_layernorm: Vec<f32>,
    self_attn: LlamaAttention,
    post_attention_layernorm: Vec<f32>,
    mlp: LlamaMlp,
}

/// The language model under `language_model`.
#[derive(Debug, Clone)]
pub struct Llama {
    prefix: String,
    config: LlamaConfig,
    /// `[vocab, hidden]`.
    embed_tokens: Vec<f32>,
    layers: Vec<LlamaLayer>,
    norm: Vec<f32>,
    lm_head: Linear,
}

impl Llama {
    /// Loads `{prefix}.model.*` and `{prefix}.lm_head` with every shape checked against
    /// `config`.
    pub fn load(ckpt: &Checkpoint, prefix: &str, config: LlamaConfig) -> Result<Self, ModelError> {
        let h = config.hidden_size;
        let kv = config.kv_width();
        let i = config.intermediate_size;
        let m = format!("{prefix}.model");
        let embed_tokens =
            ckpt.f32_with_shape(&format!("{m}.embed_tokens.weight"), &[config.vocab_size, h])?;
        let layers = (0..config.num_layers)
            .map(|l| {
                let p = format!("{m}.layers.{l}");
                Ok(LlamaLayer {
                    input_layernorm: ckpt
                        .f32_with_shape(&format!("{p}.input_layernorm.weight"), &[h])?,
                    self_attn: LlamaAttention {
                        q_proj: ckpt.linear(&format!("{p}.self_attn.q_proj"), h, h, false)?,
                        k_proj: ckpt.linear(&format!("{p}.self_attn.k_proj"), kv, h, false)?,
                        v_proj: ckpt.linear(&format!("{p}.self_attn.v_proj"), kv, h, false)?,
                        o_proj: ckpt.linear(&format!("{p}.self_attn.o_proj"), h, h, false)?,
                    },
                    post_attention_layernorm: ckpt
                        .f32_with_shape(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                    mlp: LlamaMlp {
                        gate_proj: ckpt.linear(&format!("{p}.mlp.gate_proj"), i, h, false)?,
                        up_proj: ckpt.linear(&format!("{p}.mlp.up_proj"), i, h, false)?,
                        down_proj: ckpt.linear(&format!("{p}.mlp.down_proj"), h, i, false)?,
                    },
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let norm = ckpt.f32_with_shape(&format!("{m}.norm.weight"), &[h])?;
        let head_name = format!("{prefix}.lm_head");
        let lm_head =
            if config.tie_word_embeddings && !ckpt.contains(&format!("{head_name}.weight")) {
                Linear::from_f32(&head_name, embed_tokens.clone(), config.vocab_size, h, None)?
            } else {
                ckpt.linear(&head_name, config.vocab_size, h, false)?
            };
        Ok(Self {
            prefix: prefix.to_string(),
            config,
            embed_tokens,
            layers,
            norm,
            lm_head,
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Visits every linear layer with its checkpoint weight name
    /// (`language_model.model.layers.3.self_attn.q_proj`, ..., `language_model.lm_head`).
    pub fn for_each_linear_mut(
        &mut self,
        f: &mut dyn FnMut(&str, &mut Linear) -> Result<(), ModelError>,
    ) -> Result<(), ModelError> {
        for (l, layer) in self.layers.iter_mut().enumerate() {
            let p = format!("{}.model.layers.{l}", self.prefix);
            let a = &mut layer.self_attn;
            f(&format!("{p}.self_attn.q_proj"), &mut a.q_proj)?;
            f(&format!("{p}.self_attn.k_proj"), &mut a.k_proj)?;
            f(&format!("{p}.self_attn.v_proj"), &mut a.v_proj)?;
            f(&format!("{p}.self_attn.o_proj"), &mut a.o_proj)?;
            let m = &mut layer.mlp;
            f(&format!("{p}.mlp.gate_proj"), &mut m.gate_proj)?;
            f(&format!("{p}.mlp.up_proj"), &mut m.up_proj)?;
            f(&format!("{p}.mlp.down_proj"), &mut m.down_proj)?;
        }
        f(&format!("{}.lm_head", self.prefix), &mut self.lm_head)
    }

    /// Writes the embedding of `token` to `out` (`[hidden]`).
    pub fn embed(&self, token: u32, out: &mut [f32]) -> Result<(), ModelError> {
        let h = self.config.hidden_size;
        let t = token as usize;
        if t >= self.config.vocab_size || out.len() != h {
            return Err(ModelError::Math {
                op: "embedding",
                message: format!(
                    "token {token} (vocab {}) into {} values (hidden {h})",
                    self.config.vocab_size,
                    out.len()
                ),
            });
        }
        out.copy_from_slice(&self.embed_tokens[t * h..(t + 1) * h]);
        Ok(())
    }

    /// Runs `inputs` (`[n, hidden]` embeddings) at the next `n` positions of `state`'s cache
    /// with causal attention, and writes the logits of the last position to `logits`
    /// (`[vocab]`). The prefill is one call with the whole sequence.
    pub fn forward(
        &self,
        state: &mut LlamaState,
        inputs: &[f32],
        logits: &mut [f32],
    ) -> Result<(), ModelError> {
        let h = self.config.hidden_size;
        let n = inputs.len() / h;
        if n == 0 || inputs.len() != n * h {
            return Err(ModelError::Math {
                op: "llama forward",
                message: format!("{} input values are not whole rows of {h}", inputs.len()),
            });
        }
        state.prepare(n)?;
        state.x.copy_from_slice(inputs);
        self.run(state, n, logits)
    }

    /// Feeds one token at the next cache position (a decode step) and writes its logits.
    pub fn step(
        &self,
        state: &mut LlamaState,
        token: u32,
        logits: &mut [f32],
    ) -> Result<(), ModelError> {
        state.prepare(1)?;
        self.embed(token, &mut state.x)?;
        self.run(state, 1, logits)
    }

    /// Runs `inputs` (`[n, hidden]` embeddings) as one whole sequence at positions `0..n`
    /// with full bidirectional attention (every position sees every other, as OpenVLA-OFT's
    /// parallel decoding runs the model), and writes the last layer's hidden states after the
    /// final RMSNorm (`[n, hidden]`, Hugging Face's `hidden_states[-1]`) to `hidden`. The
    /// state is reset first: nothing cached before takes part.
    pub fn forward_bidirectional(
        &self,
        state: &mut LlamaState,
        inputs: &[f32],
        hidden: &mut [f32],
    ) -> Result<(), ModelError> {
        let h = self.config.hidden_size;
        let n = inputs.len() / h;
        if n == 0 || inputs.len() != n * h || hidden.len() != inputs.len() {
            return Err(ModelError::Math {
                op: "llama bidirectional forward",
                message: format!(
                    "{} input values and {} outputs for rows of {h}",
                    inputs.len(),
                    hidden.len()
                ),
            });
        }
        state.reset();
        state.prepare(n)?;
        state.x.copy_from_slice(inputs);
        self.run_layers(state, n, false)?;
        ops::rms_norm(&state.x, hidden, h, &self.norm, self.config.rms_norm_eps);
        Ok(())
    }

    fn run(&self, s: &mut LlamaState, n: usize, logits: &mut [f32]) -> Result<(), ModelError> {
        let cfg = &self.config;
        let h = cfg.hidden_size;
        if logits.len() != cfg.vocab_size {
            return Err(ModelError::Math {
                op: "llama logits",
                message: format!("{} values for vocab {}", logits.len(), cfg.vocab_size),
            });
        }
        self.run_layers(s, n, true)?;
        // Only the last position's logits are needed.
        let last = &s.x[(n - 1) * h..n * h];
        ops::rms_norm(last, &mut s.normed[..h], h, &self.norm, cfg.rms_norm_eps);
        self.lm_head.forward(&s.normed[..h], logits)
    }

    /// Every decoder layer over the `n` rows of `s.x` at the next `n` positions; `causal`
    /// masks each position's later keys, otherwise all keys are seen.
    fn run_layers(&self, s: &mut LlamaState, n: usize, causal: bool) -> Result<(), ModelError> {
        let cfg = &self.config;
        let (h, hd) = (cfg.hidden_size, cfg.head_dim());
        let past = s.len;
        let keys = past + n;
        for (l, layer) in self.layers.iter().enumerate() {
            // Attention: x += o_proj(attn(rope(q), rope(k), v)) of the normed x.
            ops::rms_norm(
                &s.x,
                &mut s.normed,
                h,
                &layer.input_layernorm,
                cfg.rms_norm_eps,
            );
            let a = &layer.self_attn;
            a.q_proj.forward(&s.normed, &mut s.q)?; // [n, heads · hd]
            a.k_proj.forward(&s.normed, &mut s.k_new)?; // [n, kv · hd]
            a.v_proj.forward(&s.normed, &mut s.v_new)?; // [n, kv · hd]
            s.rope.apply(&mut s.q, h, past)?;
            s.rope.apply(&mut s.k_new, cfg.kv_width(), past)?;
            s.cache.write(l, past, n, &s.k_new, &s.v_new);
            let (k_layout, v_layout) = s.cache.layouts(l);
            ops::attention(
                HeadLayout {
                    data: &s.q,
                    offset: 0,
                    head_stride: hd,
                    row_stride: h,
                },
                k_layout,
                v_layout,
                AttentionShape {
                    num_heads: cfg.num_heads,
                    num_kv_heads: cfg.num_kv_heads,
                    head_dim: hd,
                    queries: n,
                    keys,
                    causal_past: causal.then_some(past),
                },
                &mut s.scores,
                &mut s.head_out,
                &mut s.attn,
            )?;
            a.o_proj.forward(&s.attn, &mut s.branch)?;
            ops::add_in_place(&mut s.x, &s.branch);

            // MLP: x += down(silu(gate(x̂)) · up(x̂)).
            ops::rms_norm(
                &s.x,
                &mut s.normed,
                h,
                &layer.post_attention_layernorm,
                cfg.rms_norm_eps,
            );
            layer.mlp.gate_proj.forward(&s.normed, &mut s.gate)?; // [n, inter]
            layer.mlp.up_proj.forward(&s.normed, &mut s.up)?; // [n, inter]
            ops::silu_mul(&mut s.gate, &s.up);
            layer.mlp.down_proj.forward(&s.gate, &mut s.branch)?;
            ops::add_in_place(&mut s.x, &s.branch);
        }
        s.len = keys;
        Ok(())
    }

    /// One decode step of a batch: feeds `tokens[b]` at the next cache position of
    /// `states[b]` and writes its logits to row `b` of `logits` (`[B, vocab]`). Every linear
    /// layer runs once on the `B` stacked rows (one matrix product instead of `B`
    /// matrix-vector products); RoPE, the KV-cache write and attention run per sequence at its
    /// own position, so the sequences may have different lengths. Each row gets what
    /// [`Llama::step`] gives for that sequence alone, up to the rounding of the batched
    /// matrix products.
    pub fn step_batch(
        &self,
        states: &mut [LlamaState],
        tokens: &[u32],
        scratch: &mut BatchScratch,
        logits: &mut [f32],
    ) -> Result<(), ModelError> {
        let cfg = &self.config;
        let (h, hd, kv) = (cfg.hidden_size, cfg.head_dim(), cfg.kv_width());
        let b = states.len();
        if tokens.len() != b || logits.len() != b * cfg.vocab_size || scratch.config != *cfg {
            return Err(ModelError::Math {
                op: "llama batched step",
                message: format!(
                    "{b} states, {} tokens, {} logits for vocab {}{}",
                    tokens.len(),
                    logits.len(),
                    cfg.vocab_size,
                    if scratch.config == *cfg {
                        ""
                    } else {
                        ", scratch of another model"
                    }
                ),
            });
        }
        if b == 0 {
            return Ok(());
        }
        for state in states.iter_mut() {
            state.prepare(1)?;
        }
        let s = scratch;
        s.prepare(b);
        for (row, &token) in s.x.chunks_exact_mut(h).zip(tokens) {
            self.embed(token, row)?;
        }
        for (l, layer) in self.layers.iter().enumerate() {
            // Attention: x += o_proj(attn(rope(q), rope(k), v)) of the normed x.
            ops::rms_norm(
                &s.x,
                &mut s.normed,
                h,
                &layer.input_layernorm,
                cfg.rms_norm_eps,
            );
            let a = &layer.self_attn;
            a.q_proj.forward(&s.normed, &mut s.q)?; // [B, heads · hd]
            a.k_proj.forward(&s.normed, &mut s.k_new)?; // [B, kv · hd]
            a.v_proj.forward(&s.normed, &mut s.v_new)?; // [B, kv · hd]
            states
                .par_iter_mut()
                .zip(s.q.par_chunks_mut(h))
                .zip(s.k_new.par_chunks_mut(kv))
                .zip(s.v_new.par_chunks(kv))
                .zip(s.attn.par_chunks_mut(h))
                .try_for_each(|((((state, q), k), v), attn)| {
                    attend_one(cfg, l, hd, state, q, k, v, attn)
                })?;
            a.o_proj.forward(&s.attn, &mut s.branch)?;
            ops::add_in_place(&mut s.x, &s.branch);

            // MLP: x += down(silu(gate(x̂)) · up(x̂)).
            ops::rms_norm(
                &s.x,
                &mut s.normed,
                h,
                &layer.post_attention_layernorm,
                cfg.rms_norm_eps,
            );
            layer.mlp.gate_proj.forward(&s.normed, &mut s.gate)?; // [B, inter]
            layer.mlp.up_proj.forward(&s.normed, &mut s.up)?; // [B, inter]
            ops::silu_mul(&mut s.gate, &s.up);
            layer.mlp.down_proj.forward(&s.gate, &mut s.branch)?;
            ops::add_in_place(&mut s.x, &s.branch);
        }
        for state in states.iter_mut() {
            state.len += 1;
        }
        ops::rms_norm(&s.x, &mut s.normed, h, &self.norm, cfg.rms_norm_eps);
        self.lm_head.forward(&s.normed, logits)
    }
}

/// The per-sequence part of a batched step at layer `layer`: RoPE of the sequence's query
/// and key row at its position, the KV-cache write, and its causal attention into `attn`
/// (`[hidden]`), exactly as [`Llama::step`] does them for one token.
#[allow(clippy::too_many_arguments)]
fn attend_one(
    cfg: &LlamaConfig,
    layer: usize,
    hd: usize,
    s: &mut LlamaState,
    q: &mut [f32],
    k: &mut [f32],
    v: &[f32],
    attn: &mut [f32],
) -> Result<(), ModelError> {
    let past = s.len;
    s.rope.apply(q, cfg.hidden_size, past)?;
    s.rope.apply(k, cfg.kv_width(), past)?;
    s.cache.write(layer, past, 1, k, v);
    let (k_layout, v_layout) = s.cache.layouts(layer);
    ops::attention(
        HeadLayout {
            data: q,
            offset: 0,
            head_stride: hd,
            row_stride: cfg.hidden_size,
        },
        k_layout,
        v_layout,
        AttentionShape {
            num_heads: cfg.num_heads,
            num_kv_heads: cfg.num_kv_heads,
            head_dim: hd,
            queries: 1,
            keys: past + 1,
            causal_past: Some(past),
        },
        &mut s.scores,
        &mut s.head_out,
        attn,
    )
}

/// Scratch of [`Llama::step_batch`]: one row per sequence of the batch, side by side, grown to
/// the largest batch seen and then reused, so a step of a batch size seen before allocates
/// nothing.
#[derive(Debug, Clone)]
pub struct BatchScratch {
    config: LlamaConfig,
    x: Vec<f32>,
    normed: Vec<f32>,
    q: Vec<f32>,
    k_new: Vec<f32>,
    v_new: Vec<f32>,
    attn: Vec<f32>,
    branch: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
}

impl BatchScratch {
    /// Empty scratch for this language model; the first step sizes it.
    pub fn new(config: &LlamaConfig) -> Self {
        Self {
            config: config.clone(),
            x: Vec::new(),
            normed: Vec::new(),
            q: Vec::new(),
            k_new: Vec::new(),
            v_new: Vec::new(),
            attn: Vec::new(),
            branch: Vec::new(),
            gate: Vec::new(),
            up: Vec::new(),
        }
    }

    /// Sizes every buffer for `b` rows.
    fn prepare(&mut self, b: usize) {
        let c = &self.config;
        let (h, kv, inter) = (c.hidden_size, c.kv_width(), c.intermediate_size);
        self.x.resize(b * h, 0.0);
        self.normed.resize(b * h, 0.0);
        self.q.resize(b * h, 0.0);
        self.k_new.resize(b * kv, 0.0);
        self.v_new.resize(b * kv, 0.0);
        self.attn.resize(b * h, 0.0);
        self.branch.resize(b * h, 0.0);
        self.gate.resize(b * inter, 0.0);
        self.up.resize(b * inter, 0.0);
    }
}

/// Precomputed rotate-half RoPE tables, `[capacity, head_dim / 2]` each, computed in f32 the
/// way transformers does (`inv_freq` f32, `pos · inv_freq` f32, then cos / sin).
#[derive(Debug, Clone)]
struct RopeTables {
    half: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

/// The rotate-half RoPE tables `(cos, sin)`, `[capacity, head_dim / 2]` each, in f32 the way
/// transformers computes them; every backend rotates by these same values.
pub fn rope_tables(head_dim: usize, theta: f64, capacity: usize) -> (Vec<f32>, Vec<f32>) {
    let half = head_dim / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32))
        .collect();
    let mut cos = Vec::with_capacity(capacity * half);
    let mut sin = Vec::with_capacity(capacity * half);
    for pos in 0..capacity {
        for &f in &inv_freq {
            let angle = pos as f32 * f;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    (cos, sin)
}

impl RopeTables {
    fn new(head_dim: usize, theta: f64, capacity: usize) -> Self {
        let (cos, sin) = rope_tables(head_dim, theta, capacity);
        Self {
            half: head_dim / 2,
            cos,
            sin,
        }
    }

    /// Rotates every head of each row of `x` (`[rows, width]`, `width` a multiple of
    /// `2 · half`), row `r` at position `first_pos + r`.
    fn apply(&self, x: &mut [f32], width: usize, first_pos: usize) -> Result<(), ModelError> {
        let half = self.half;
        let rows = x.len() / width.max(1);
        let capacity = self.cos.len() / half.max(1);
        if first_pos + rows > capacity || !width.is_multiple_of(2 * half) {
            return Err(ModelError::Math {
                op: "rope",
                message: format!(
                    "{rows} rows of width {width} at position {first_pos} (table of {capacity})"
                ),
            });
        }
        x.par_chunks_mut(width).enumerate().for_each(|(r, row)| {
            let t = (first_pos + r) * half;
            let (cos, sin) = (&self.cos[t..t + half], &self.sin[t..t + half]);
            for head in row.chunks_exact_mut(2 * half) {
                let (lo, hi) = head.split_at_mut(half);
                for d in 0..half {
                    let (x1, x2) = (lo[d], hi[d]);
                    lo[d] = x1 * cos[d] - x2 * sin[d];
                    hi[d] = x2 * cos[d] + x1 * sin[d];
                }
            }
        });
        Ok(())
    }
}

/// Keys and values of every layer, `[layers, kv_heads, capacity, head_dim]` each, written in
/// place at their positions.
#[derive(Debug, Clone)]
pub struct KvCache {
    num_kv_heads: usize,
    head_dim: usize,
    capacity: usize,
    k: Vec<f32>,
    v: Vec<f32>,
}

impl KvCache {
    fn new(config: &LlamaConfig, capacity: usize) -> Self {
        let len = config.num_layers * config.kv_width() * capacity;
        Self {
            num_kv_heads: config.num_kv_heads,
            head_dim: config.head_dim(),
            capacity,
            k: vec![0.0; len],
            v: vec![0.0; len],
        }
    }

    fn layer_offset(&self, layer: usize) -> usize {
        layer * self.num_kv_heads * self.capacity * self.head_dim
    }

    /// Stores rows `k_new`, `v_new` (`[n, kv_heads · head_dim]`) at positions `first..first + n`.
    fn write(&mut self, layer: usize, first: usize, n: usize, k_new: &[f32], v_new: &[f32]) {
        let hd = self.head_dim;
        let base = self.layer_offset(layer);
        for g in 0..self.num_kv_heads {
            let head = base + g * self.capacity * hd;
            for i in 0..n {
                let dst = head + (first + i) * hd;
                let src = (i * self.num_kv_heads + g) * hd;
                self.k[dst..dst + hd].copy_from_slice(&k_new[src..src + hd]);
                self.v[dst..dst + hd].copy_from_slice(&v_new[src..src + hd]);
            }
        }
    }

    fn layouts(&self, layer: usize) -> (HeadLayout<'_>, HeadLayout<'_>) {
        let layout = |data| HeadLayout {
            data,
            offset: self.layer_offset(layer),
            head_stride: self.capacity * self.head_dim,
            row_stride: self.head_dim,
        };
        (layout(&self.k), layout(&self.v))
    }
}

/// Everything a sequence needs while it runs: the KV cache, RoPE tables and scratch buffers.
/// Built once per model; [`LlamaState::reset`] starts a new sequence without reallocating.
#[derive(Debug, Clone)]
pub struct LlamaState {
    config: LlamaConfig,
    capacity: usize,
    len: usize,
    cache: KvCache,
    rope: RopeTables,
    x: Vec<f32>,
    normed: Vec<f32>,
    q: Vec<f32>,
    k_new: Vec<f32>,
    v_new: Vec<f32>,
    scores: Vec<f32>,
    head_out: Vec<f32>,
    attn: Vec<f32>,
    branch: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
}

impl LlamaState {
    /// A state for sequences of up to `capacity` positions, with scratch for chunks of up to
    /// `max_chunk` positions (the prefill length) preallocated.
    pub fn new(config: &LlamaConfig, capacity: usize, max_chunk: usize) -> Self {
        let mut state = Self {
            config: config.clone(),
            capacity,
            len: 0,
            cache: KvCache::new(config, capacity),
            rope: RopeTables::new(config.head_dim(), config.rope_theta, capacity),
            x: Vec::new(),
            normed: Vec::new(),
            q: Vec::new(),
            k_new: Vec::new(),
            v_new: Vec::new(),
            scores: Vec::new(),
            head_out: Vec::new(),
            attn: Vec::new(),
            branch: Vec::new(),
            gate: Vec::new(),
            up: Vec::new(),
        };
        let chunk = max_chunk.clamp(1, capacity.max(1));
        state.reserve(chunk, capacity);
        state
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Positions filled so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Starts a new sequence; the buffers stay allocated.
    pub fn reset(&mut self) {
        self.len = 0;
    }

    fn reserve(&mut self, n: usize, keys: usize) {
        let c = &self.config;
        let (h, kv) = (c.hidden_size, c.kv_width());
        let grow = |v: &mut Vec<f32>, len: usize| {
            if v.capacity() < len {
                v.reserve_exact(len - v.len());
            }
        };
        grow(&mut self.x, n * h);
        grow(&mut self.normed, n * h);
        grow(&mut self.q, n * h);
        grow(&mut self.k_new, n * kv);
        grow(&mut self.v_new, n * kv);
        grow(&mut self.scores, c.num_heads * n * keys);
        grow(&mut self.head_out, n * h);
        grow(&mut self.attn, n * h);
        grow(&mut self.branch, n * h);
        grow(&mut self.gate, n * c.intermediate_size);
        grow(&mut self.up, n * c.intermediate_size);
    }

    /// Sizes the scratch buffers for a chunk of `n` positions (no allocation when a chunk at
    /// least this large ran before).
    fn prepare(&mut self, n: usize) -> Result<(), ModelError> {
        let keys = self.len + n;
        if keys > self.capacity {
            return Err(ModelError::SequenceTooLong {
                len: keys,
                capacity: self.capacity,
            });
        }
        let c = &self.config;
        let (h, kv, inter, heads) = (
            c.hidden_size,
            c.kv_width(),
            c.intermediate_size,
            c.num_heads,
        );
        self.x.resize(n * h, 0.0);
        self.normed.resize(n * h, 0.0);
        self.q.resize(n * h, 0.0);
        self.k_new.resize(n * kv, 0.0);
        self.v_new.resize(n * kv, 0.0);
        self.scores.resize(heads * n * keys, 0.0);
        self.head_out.resize(n * h, 0.0);
        self.attn.resize(n * h, 0.0);
        self.branch.resize(n * h, 0.0);
        self.gate.resize(n * inter, 0.0);
        self.up.resize(n * inter, 0.0);
        Ok(())
    }
}
