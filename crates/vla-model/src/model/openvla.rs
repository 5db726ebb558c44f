//! A whole OpenVLA checkpoint loaded from a Hugging Face folder, and the stages of its
//! forward pass as separate calls: featurizers → concat → projector → multimodal embeddings →
//! Llama prefill and greedy decode.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::checkpoint::Checkpoint;
use super::config::{timm_num_heads, OpenVlaConfig, RuntimeModelConfig, RUNTIME_MODEL_CONFIG_FILE};
use super::linear::Linear;
use super::llama::{BatchScratch, Llama, LlamaConfig, LlamaState};
use super::ops;
use super::projector::Projector;
use super::prompt::PromptTokenizer;
use super::vit::Vit;
use super::ModelError;

pub const CONFIG_FILE: &str = "config.json";
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// Names of the featurizers under `vision_backbone`, in `pixel_values` channel order.
pub const FEATURIZER_NAMES: [&str; 2] = ["featurizer", "fused_featurizer"];

/// Positions kept for the prompt and generated tokens beyond `<s>` and the image tokens.
pub const MAX_TEXT_TOKENS: usize = 512;

#[derive(Debug)]
pub struct OpenVla {
    dir: PathBuf,
    config: OpenVlaConfig,
    tokenizer: PromptTokenizer,
    /// DINOv2 (channels 0-2), then SigLIP (channels 3-5) when the backbone is fused.
    featurizers: Vec<Vit>,
    projector: Projector,
    llama: Llama,
}

impl OpenVla {
    /// Loads `config.json`, `tokenizer.json`, optional `vla_rt_model.json` and the weights.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        if !dir.is_dir() {
            return Err(ModelError::File {
                path: dir.display().to_string(),
                message: "model folder does not exist".into(),
            });
        }
        let config = OpenVlaConfig::from_file(&dir.join(CONFIG_FILE))?;
        let tokenizer = PromptTokenizer::from_file(&dir.join(TOKENIZER_FILE))?;
        let runtime = RuntimeModelConfig::from_dir(dir)?;
        let ckpt = Checkpoint::open_dir(dir)?;
        Self::from_checkpoint(dir, config, &runtime, &ckpt, tokenizer)
    }

    /// Builds the model from an opened checkpoint; `dir` is where errors say the files are.
    pub fn from_checkpoint(
        dir: &Path,
        config: OpenVlaConfig,
        runtime: &RuntimeModelConfig,
        ckpt: &Checkpoint,
        tokenizer: PromptTokenizer,
    ) -> Result<Self, ModelError> {
        let count = if config.use_fused_vision_backbone {
            2
        } else {
            1
        };
        let featurizers = FEATURIZER_NAMES[..count]
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let prefix = format!("vision_backbone.{name}");
                let heads = resolve_vit_heads(dir, &config, runtime, ckpt, i, name, &prefix)?;
                Vit::load(ckpt, &prefix, config.image_size(), heads)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let patches = featurizers[0].config().num_patches();
        if let Some(other) = featurizers
            .iter()
            .find(|v| v.config().num_patches() != patches)
        {
            return Err(ModelError::Math {
                op: "patch concat",
                message: format!(
                    "featurizers give {patches} and {} patches",
                    other.config().num_patches()
                ),
            });
        }
        let vision_dim = featurizers.iter().map(|v| v.config().embed_dim).sum();
        let llama_config = LlamaConfig::from_openvla(&config);
        let projector = Projector::load(ckpt, "projector", vision_dim, llama_config.hidden_size)?;
        let llama = Llama::load(ckpt, "language_model", llama_config)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            tokenizer,
            featurizers,
            projector,
            llama,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &OpenVlaConfig {
        &self.config
    }

    pub fn tokenizer(&self) -> &PromptTokenizer {
        &self.tokenizer
    }

    pub fn featurizers(&self) -> &[Vit] {
        &self.featurizers
    }

    pub fn projector(&self) -> &Projector {
        &self.projector
    }

    pub fn projector_mut(&mut self) -> &mut Projector {
        &mut self.projector
    }

    pub fn llama(&self) -> &Llama {
        &self.llama
    }

    pub fn llama_mut(&mut self) -> &mut Llama {
        &mut self.llama
    }

    /// Visits every linear layer of the projector and the language model.
    pub fn for_each_linear_mut(
        &mut self,
        f: &mut dyn FnMut(&str, &mut Linear) -> Result<(), ModelError>,
    ) -> Result<(), ModelError> {
        self.projector.for_each_linear_mut(f)?;
        self.llama.for_each_linear_mut(f)
    }

    /// Image tokens per frame (256 for 224 px and patch 14).
    pub fn num_patches(&self) -> usize {
        self.featurizers[0].config().num_patches()
    }

    /// Width of the concatenated patch features.
    pub fn vision_dim(&self) -> usize {
        self.featurizers.iter().map(|v| v.config().embed_dim).sum()
    }

    /// Values of `pixel_values`: `[3 · featurizers, S, S]`.
    pub fn pixel_values_len(&self) -> usize {
        let s = self.config.image_size();
        3 * self.featurizers.len() * s * s
    }

    /// KV cache capacity: `<s>`, the image tokens and [`MAX_TEXT_TOKENS`], within
    /// `llm_max_length`.
    pub fn sequence_capacity(&self) -> usize {
        (1 + self.num_patches() + MAX_TEXT_TOKENS).min(self.config.llm_max_length)
    }

    /// The longest prompt (`<s>` … `▁`, in tokens) whose prefill and `action_dim` greedy
    /// steps fit the KV cache: the prompt and the image tokens, then every action token but
    /// the last (which is never fed back).
    pub fn max_prompt_tokens(&self, action_dim: usize) -> usize {
        self.sequence_capacity()
            .saturating_sub(self.num_patches())
            .saturating_sub(action_dim.saturating_sub(1))
    }

    /// A state (KV cache, scratch) for this model's language model.
    pub fn new_llama_state(&self) -> LlamaState {
        let capacity = self.sequence_capacity();
        LlamaState::new(self.llama.config(), capacity, self.num_patches() + 64)
    }

    /// Each featurizer's patch features `[num_patches, D_i]`, run in parallel; featurizer
    /// `i` reads channels `3i..3i + 3` of `pixel_values`.
    pub fn featurizer_outputs(&self, pixel_values: &[f32]) -> Result<Vec<Vec<f32>>, ModelError> {
        if pixel_values.len() != self.pixel_values_len() {
            let s = self.config.image_size();
            return Err(ModelError::Math {
                op: "pixel values",
                message: format!(
                    "got {} values, want [{}, {s}, {s}]",
                    pixel_values.len(),
                    3 * self.featurizers.len()
                ),
            });
        }
        let per_image = pixel_values.len() / self.featurizers.len();
        self.featurizers
            .par_iter()
            .enumerate()
            .map(|(i, vit)| {
                let mut out = vec![0.0f32; vit.config().num_patches() * vit.config().embed_dim];
                vit.forward(&pixel_values[i * per_image..(i + 1) * per_image], &mut out)?;
                Ok(out)
            })
            .collect()
    }

    /// Patch-wise concatenation `[num_patches, Σ D_i]`.
    pub fn concat_features(&self, outputs: &[Vec<f32>]) -> Vec<f32> {
        let patches = self.num_patches();
        let mut fused = Vec::with_capacity(patches * self.vision_dim());
        for p in 0..patches {
            for (vit, out) in self.featurizers.iter().zip(outputs) {
                let d = vit.config().embed_dim;
                fused.extend_from_slice(&out[p * d..(p + 1) * d]);
            }
        }
        fused
    }

    /// Projector output `[num_patches, hidden]` of the fused features.
    pub fn project(&self, fused: &[f32]) -> Result<Vec<f32>, ModelError> {
        let mut out = vec![0.0f32; self.num_patches() * self.projector.out_features()];
        self.projector.forward(fused, &mut out)?;
        Ok(out)
    }

    /// The language model's input `[embed(<s>), image tokens, embed(ids[1..])]`
    /// (`[1 + num_patches + len − 1, hidden]`).
    pub fn multimodal_embeddings(
        &self,
        image_tokens: &[f32],
        input_ids: &[u32],
    ) -> Result<Vec<f32>, ModelError> {
        let h = self.llama.config().hidden_size;
        let Some((&first, rest)) = input_ids.split_first() else {
            return Err(ModelError::Math {
                op: "multimodal embeddings",
                message: "no input ids".into(),
            });
        };
        let rows = 1 + image_tokens.len() / h + rest.len();
        let mut out = vec![0.0f32; rows * h];
        self.llama.embed(first, &mut out[..h])?;
        out[h..h + image_tokens.len()].copy_from_slice(image_tokens);
        let text_start = h + image_tokens.len();
        for (i, &id) in rest.iter().enumerate() {
            let at = text_start + i * h;
            self.llama.embed(id, &mut out[at..at + h])?;
        }
        Ok(out)
    }

    /// Greedy decode: prefill `embeddings` into a reset `state`, then `count` tokens, each the
    /// argmax over the whole vocabulary (first on ties) fed back through the KV cache.
    /// `logits` (`[vocab]`) holds the step-0 logits after the prefill until step 1 runs.
    /// Returns the time split `(prefill, decode)`.
    pub fn generate(
        &self,
        state: &mut LlamaState,
        embeddings: &[f32],
        count: usize,
        logits: &mut [f32],
        tokens: &mut Vec<u32>,
    ) -> Result<(std::time::Duration, std::time::Duration), ModelError> {
        tokens.clear();
        state.reset();
        let start = std::time::Instant::now();
        self.llama.forward(state, embeddings, logits)?;
        let prefill = start.elapsed();
        let start = std::time::Instant::now();
        for step in 0..count {
            let token = ops::argmax(logits).ok_or_else(|| ModelError::Math {
                op: "greedy decode",
                message: "logits are empty or all NaN".into(),
            })? as u32;
            tokens.push(token);
            if step + 1 < count {
                self.llama.step(state, token, logits)?;
            }
        }
        Ok((prefill, start.elapsed()))
    }
    /// Scratch for [`OpenVla::decode_batch`].
    pub fn new_batch_scratch(&self) -> BatchScratch {
        BatchScratch::new(self.llama.config())
    }

    /// The greedy decode of [`OpenVla::generate`] for a batch whose prefills ran: `states[b]`
    /// holds sequence `b` after its prefill and row `b` of `logits` (`[B, vocab]`) its step-0
    /// logits. Each step takes every row's argmax (first on ties) into `tokens[b]`, and all
    /// the sequences but the last step's are fed back together through
    /// [`Llama::step_batch`]. A row whose logits are all NaN marks `failed[b]` (the error
    /// [`OpenVla::generate`] returns); that sequence stops collecting tokens while the others go
    /// on. Returns the decode time.
    pub fn decode_batch(
        &self,
        states: &mut [LlamaState],
        count: usize,
        scratch: &mut BatchScratch,
        logits: &mut [f32],
        tokens: &mut [Vec<u32>],
        failed: &mut [bool],
    ) -> Result<std::time::Duration, ModelError> {
        let (b, vocab) = (states.len(), self.llama.config().vocab_size);
        if tokens.len() != b || failed.len() != b || logits.len() != b * vocab {
            return Err(ModelError::Math {
                op: "batched greedy decode",
                message: format!(
                    "{b} states, {} token lists, {} flags, {} logits for vocab {vocab}",
                    tokens.len(),
                    failed.len(),
                    logits.len()
                ),
            });
        }
        tokens.iter_mut().for_each(Vec::clear);
        failed.fill(false);
        let start = std::time::Instant::now();
        let mut step_tokens = vec![0u32; b];
        for step in 0..count {
            for (((row, seq), flag), next) in logits
                .chunks_exact(vocab)
                .zip(tokens.iter_mut())
                .zip(failed.iter_mut())
                .zip(&mut step_tokens)
            {
                if *flag {
                    continue;
                }
                match ops::argmax(row) {
                    Some(token) => {
                        *next = token as u32;
                        seq.push(*next);
                    }
                    // Fed on with the last token it had; its output is never read.
                    None => *flag = true,
                }
            }
            if step + 1 < count {
                self.llama
                    .step_batch(states, &step_tokens, scratch, logits)?;
            }
        }
        Ok(start.elapsed())
    }
}

/// Head count of featurizer `index`: `vla_rt_model.json`, else the timm architecture when
/// the width matches it, else an error naming the file and key to add.
pub fn resolve_vit_heads(
    dir: &Path,
    config: &OpenVlaConfig,
    runtime: &RuntimeModelConfig,
    ckpt: &Checkpoint,
    index: usize,
    name: &str,
    prefix: &str,
) -> Result<usize, ModelError> {
    if let Some(heads) = runtime.featurizers.get(name).and_then(|f| f.num_heads) {
        return Ok(heads);
    }
    let patch_name = format!("{prefix}.patch_embed.proj.weight");
    let embed_dim = ckpt.shape(&patch_name)?.first().copied().unwrap_or(0);
    let timm_id = config.timm_model_ids.get(index).map(String::as_str);
    if let Some(heads) = timm_id.and_then(|id| timm_num_heads(id, embed_dim)) {
        return Ok(heads);
    }
    Err(ModelError::Config {
        path: dir.join(RUNTIME_MODEL_CONFIG_FILE).display().to_string(),
        key: format!("{name}.num_heads"),
        message: format!(
            "the head count of {prefix} (embed width {embed_dim}, timm id {}) is not in the \
             checkpoint; add it, e.g. {{\"{name}\": {{\"num_heads\": N}}}}",
            timm_id.unwrap_or("none")
        ),
    })
}
