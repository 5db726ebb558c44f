//! The CPU backend: the pure-Rust model in f32, the reference the other backends are held
//! to. [`CpuModelRunner`] runs the model from `pixel_values`; [`CpuPolicy`] adds the image
//! preprocessing and implements [`Policy`](crate::policy::Policy).

use std::path::Path;
use std::time::{Duration, Instant};

use super::{batch_length_mismatch, ImagePolicy, PixelRunner};
use crate::model::action::{resolve_unnorm_key, ActionDecoder};
use crate::model::llama::{BatchScratch, LlamaState};
use crate::model::openvla::OpenVla;
use crate::model::quant_load::{apply_formats, observe_projector_inputs, FormatReport};
use crate::model::quant_scales::{ProjectorScales, ScaleCollector};
use crate::model::ModelError;
use crate::policy::{PolicyError, PolicyOptions, Prediction, StageTimings};
use crate::preprocess::RgbImage;

pub use super::PREPROCESSOR_CONFIG_FILE;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The model with its decode state: `pixel_values` + instruction in, tokens and actions out.
#[derive(Debug)]
pub struct CpuModelRunner {
    model: OpenVla,
    unnorm_key: String,
    decoder: ActionDecoder,
    state: LlamaState,
    /// `[vocab]`, the logits of the latest position.
    logits: Vec<f32>,
    tokens: Vec<u32>,
    /// One state per sequence of the largest batch so far, reused by later batches.
    batch_states: Vec<LlamaState>,
    batch_scratch: BatchScratch,
    /// `[B, vocab]` for the largest batch so far.
    batch_logits: Vec<f32>,
    batch_tokens: Vec<Vec<u32>>,
    batch_failed: Vec<bool>,
}

/// Wall time of the per-request stages of a batch, summed over its requests.
#[derive(Debug, Default)]
struct BatchStages {
    vision: Duration,
    projector: Duration,
    prefill: Duration,
}

impl CpuModelRunner {
    /// Loads the checkpoint folder and resolves the un-normalisation key.
    pub fn load(model_dir: &Path, options: &PolicyOptions) -> Result<Self, ModelError> {
        let model = OpenVla::load(model_dir)?;
        Self::from_model(model, options)
    }

    /// Wraps an already loaded (possibly modified) model, converting its layers to the
    /// weight formats in `options`.
    pub fn from_model(mut model: OpenVla, options: &PolicyOptions) -> Result<Self, ModelError> {
        let formats = apply_formats(&mut model, options)?;
        if formats != FormatReport::default() {
            log::debug!("weight formats: {formats:?}");
        }
        let unnorm_key =
            resolve_unnorm_key(&model.config().norm_stats, options.unnorm_key.as_deref())?;
        let stats = &model.config().norm_stats[&unnorm_key].action;
        let decoder = ActionDecoder::new(
            model.config().text_vocab_size(),
            model.config().n_action_bins,
            stats,
        );
        let state = model.new_llama_state();
        let logits = vec![0.0; model.llama().config().vocab_size];
        let tokens = Vec::with_capacity(decoder.action_dim());
        let batch_scratch = model.new_batch_scratch();
        Ok(Self {
            model,
            unnorm_key,
            decoder,
            state,
            logits,
            tokens,
            batch_states: Vec::new(),
            batch_scratch,
            batch_logits: Vec::new(),
            batch_tokens: Vec::new(),
            batch_failed: Vec::new(),
        })
    }

    pub fn model(&self) -> &OpenVla {
        &self.model
    }

    pub fn unnorm_key(&self) -> &str {
        &self.unnorm_key
    }

    pub fn action_dim(&self) -> usize {
        self.decoder.action_dim()
    }

    /// The prompt's token ids (`<s>` … `▁`), as `input_ids` in the reference; an instruction
    /// whose prompt would not fit the KV cache is refused before anything is sized by it.
    pub fn prompt_ids(&self, instruction: &str) -> Result<Vec<u32>, PolicyError> {
        if instruction.trim().is_empty() {
            return Err(PolicyError::EmptyInstruction);
        }
        let limit = self.max_prompt_tokens();
        Ok(self
            .model
            .tokenizer()
            .encode_instruction_within(instruction, limit)?)
    }

    /// The longest prompt, in tokens, that [`CpuModelRunner::predict_pixels`] accepts.
    pub fn max_prompt_tokens(&self) -> usize {
        self.model.max_prompt_tokens(self.decoder.action_dim())
    }

    /// Each featurizer's patch features (`[256, D_i]`: DINOv2, then SigLIP).
    pub fn vision_features(&self, pixel_values: &[f32]) -> Result<Vec<Vec<f32>>, ModelError> {
        self.model.featurizer_outputs(pixel_values)
    }

    /// The projector output `[256, hidden]` (the image tokens).
    pub fn projector_output(&self, pixel_values: &[f32]) -> Result<Vec<f32>, ModelError> {
        let outputs = self.model.featurizer_outputs(pixel_values)?;
        self.model.project(&self.model.concat_features(&outputs))
    }

    /// The logits at the last prefill position (`[vocab]`), which pick the first token.
    pub fn step0_logits(
        &mut self,
        pixel_values: &[f32],
        instruction: &str,
    ) -> Result<Vec<f32>, PolicyError> {
        let ids = self.prompt_ids(instruction)?;
        let image_tokens = self.projector_output(pixel_values)?;
        let embeddings = self.model.multimodal_embeddings(&image_tokens, &ids)?;
        self.model.generate(
            &mut self.state,
            &embeddings,
            0,
            &mut self.logits,
            &mut self.tokens,
        )?;
        Ok(self.logits.clone())
    }

    /// The whole policy from `pixel_values` (`[6, 224, 224]`); `timings.preprocess_ms` is 0.
    pub fn predict_pixels(
        &mut self,
        pixel_values: &[f32],
        instruction: &str,
    ) -> Result<Prediction, PolicyError> {
        let start = Instant::now();
        let ids = self.prompt_ids(instruction)?;
        let outputs = self.model.featurizer_outputs(pixel_values)?;
        let vision = start.elapsed();
        let t = Instant::now();
        let image_tokens = self.model.project(&self.model.concat_features(&outputs))?;
        let projector = t.elapsed();
        let t = Instant::now();
        let embeddings = self.model.multimodal_embeddings(&image_tokens, &ids)?;
        let (prefill, decode) = self.model.generate(
            &mut self.state,
            &embeddings,
            self.decoder.action_dim(),
            &mut self.logits,
            &mut self.tokens,
        )?;
        let embed = t.elapsed().saturating_sub(prefill + decode);
        let (normalized, action) = self.decoder.decode(&self.tokens);
        Ok(Prediction {
            tokens: self.tokens.clone(),
            normalized,
            actions: vec![action.clone()],
            action,
            timings: StageTimings {
                preprocess_ms: 0.0,
                vision_ms: ms(vision),
                projector_ms: ms(projector),
                prefill_ms: ms(prefill + embed),
                decode_ms: ms(decode),
                total_ms: ms(start.elapsed()),
            },
        })
    }
    /// The policy for a batch: each request's encoders, projector and prefill run as in
    /// [`CpuModelRunner::predict_pixels`], each prefill into its own state of a pool that
    /// grows to the largest batch and is reused; then one greedy decode for all of them, with
    /// every linear layer run once on the stacked rows of the batch. A request that fails
    /// (empty instruction, a prompt too long, wrong `pixel_values`) gets its error, the others
    /// their predictions, whose tokens are those [`CpuModelRunner::predict_pixels`] gives for
    /// each alone. Every prediction carries the batch's timings: vision, projector and prefill
    /// summed over the requests, the batched decode, and the whole call.
    pub fn predict_pixels_batch(
        &mut self,
        pixel_values: &[&[f32]],
        instructions: &[&str],
    ) -> Vec<Result<Prediction, PolicyError>> {
        if let Some(mismatch) = batch_length_mismatch("cpu", pixel_values, instructions) {
            return mismatch;
        }
        let start = Instant::now();
        let mut stages = BatchStages::default();
        let mut results: Vec<Option<Result<Prediction, PolicyError>>> = Vec::new();
        results.resize_with(pixel_values.len(), || None);
        // Request index of each filled state; states 0..live.len() hold the batch.
        let mut live = Vec::with_capacity(pixel_values.len());
        for ((pixels, instruction), result) in
            pixel_values.iter().zip(instructions).zip(&mut results)
        {
            match self.prefill_into(live.len(), pixels, instruction, &mut stages) {
                Ok(()) => live.push(result),
                Err(e) => *result = Some(Err(e)),
            }
        }
        let b = live.len();
        let vocab = self.model.llama().config().vocab_size;
        if self.batch_tokens.len() < b {
            let dim = self.decoder.action_dim();
            self.batch_tokens.resize_with(b, || Vec::with_capacity(dim));
            self.batch_failed.resize(b, false);
        }
        let decoded = self.model.decode_batch(
            &mut self.batch_states[..b],
            self.decoder.action_dim(),
            &mut self.batch_scratch,
            &mut self.batch_logits[..b * vocab],
            &mut self.batch_tokens[..b],
            &mut self.batch_failed[..b],
        );
        let timings = |decode: Duration| StageTimings {
            preprocess_ms: 0.0,
            vision_ms: ms(stages.vision),
            projector_ms: ms(stages.projector),
            prefill_ms: ms(stages.prefill),
            decode_ms: ms(decode),
            total_ms: ms(start.elapsed()),
        };
        match decoded {
            Ok(decode) => {
                let timings = timings(decode);
                for ((result, tokens), &failed) in live
                    .into_iter()
                    .zip(&self.batch_tokens)
                    .zip(&self.batch_failed)
                {
                    *result = Some(if failed {
                        Err(PolicyError::Model(ModelError::Math {
                            op: "greedy decode",
                            message: "logits are empty or all NaN".into(),
                        }))
                    } else {
                        let (normalized, action) = self.decoder.decode(tokens);
                        Ok(Prediction {
                            tokens: tokens.clone(),
                            normalized,
                            actions: vec![action.clone()],
                            action,
                            timings,
                        })
                    });
                }
            }
            Err(e) => {
                let message = e.to_string();
                let mut error = Some(PolicyError::Model(e));
                for result in live {
                    *result = Some(Err(error.take().unwrap_or_else(|| PolicyError::Backend {
                        backend: "cpu",
                        message: message.clone(),
                    })));
                }
            }
        }
        results
            .into_iter()
            .map(|result| {
                result.unwrap_or_else(|| {
                    Err(PolicyError::Backend {
                        backend: "cpu",
                        message: "a batch request was left without a result".into(),
                    })
                })
            })
            .collect()
    }

    /// Encoders, projector and prefill of one request of a batch into pool state `slot` and
    /// row `slot` of the batch logits, growing the pool to `slot + 1`.
    fn prefill_into(
        &mut self,
        slot: usize,
        pixel_values: &[f32],
        instruction: &str,
        stages: &mut BatchStages,
    ) -> Result<(), PolicyError> {
        let start = Instant::now();
        let ids = self.prompt_ids(instruction)?;
        let outputs = self.model.featurizer_outputs(pixel_values)?;
        stages.vision += start.elapsed();
        let t = Instant::now();
        let image_tokens = self.model.project(&self.model.concat_features(&outputs))?;
        stages.projector += t.elapsed();
        let t = Instant::now();
        let embeddings = self.model.multimodal_embeddings(&image_tokens, &ids)?;
        while self.batch_states.len() <= slot {
            self.batch_states.push(self.model.new_llama_state());
        }
        let vocab = self.model.llama().config().vocab_size;
        if self.batch_logits.len() < (slot + 1) * vocab {
            self.batch_logits.resize((slot + 1) * vocab, 0.0);
        }
        let state = &mut self.batch_states[slot];
        state.reset();
        self.model.llama().forward(
            state,
            &embeddings,
            &mut self.batch_logits[slot * vocab..(slot + 1) * vocab],
        )?;
        stages.prefill += t.elapsed();
        Ok(())
    }
}

/// The CPU policy: [`CpuModelRunner`] behind the preprocessing.
pub type CpuPolicy = ImagePolicy<CpuModelRunner>;

impl CpuPolicy {
    /// Loads the checkpoint folder (weights, tokenizer, `preprocessor_config.json`).
    pub fn load(model_dir: &Path, options: &PolicyOptions) -> Result<Self, PolicyError> {
        let runner = CpuModelRunner::load(model_dir, options)?;
        Self::with_checkpoint_preprocessing(runner, model_dir)
    }
}

impl PixelRunner for CpuModelRunner {
    const BACKEND: &'static str = "cpu";

    fn pixel_values_len(&self) -> usize {
        self.model().pixel_values_len()
    }

    fn action_dim(&self) -> usize {
        CpuModelRunner::action_dim(self)
    }

    fn predict_pixels(
        &mut self,
        pixel_values: &[f32],
        instruction: &str,
    ) -> Result<Prediction, PolicyError> {
        CpuModelRunner::predict_pixels(self, pixel_values, instruction)
    }

    fn check_instruction(&self, instruction: &str) -> Result<(), PolicyError> {
        self.prompt_ids(instruction).map(|_| ())
    }

    fn predict_pixels_batch(
        &mut self,
        pixel_values: &[&[f32]],
        instructions: &[&str],
    ) -> Vec<Result<Prediction, PolicyError>> {
        CpuModelRunner::predict_pixels_batch(self, pixel_values, instructions)
    }

    fn batches_natively(&self) -> bool {
        true
    }
}

/// Runs calibration frames through preprocessing, the encoders and the projector, and returns
/// the projector's per-tensor INT8 activation scales at the default percentile of `|x|`
/// ([`crate::model::quant_scales::DEFAULT_PERCENTILE`]). Call it on a policy loaded with the
/// f32 projector, so that each layer's input is the one the f32 model produces.
pub fn collect_projector_scales(
    policy: &mut CpuPolicy,
    frames: &[RgbImage],
) -> Result<ProjectorScales, PolicyError> {
    collect_projector_scales_at(
        policy,
        frames,
        crate::model::quant_scales::DEFAULT_PERCENTILE,
    )
}

/// [`collect_projector_scales`] at a chosen percentile (0-100).
pub fn collect_projector_scales_at(
    policy: &mut CpuPolicy,
    frames: &[RgbImage],
    percentile: f64,
) -> Result<ProjectorScales, PolicyError> {
    if frames.is_empty() {
        return Err(PolicyError::Backend {
            backend: "cpu",
            message: "projector calibration needs at least one frame".into(),
        });
    }
    let mut collector = ScaleCollector::new(percentile);
    for frame in frames {
        policy.preprocessor.run(frame, &mut policy.pixel_values)?;
        observe_projector_inputs(policy.runner.model(), &policy.pixel_values, &mut collector)?;
    }
    Ok(collector.finish())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// The batch states, logits and token lists grow to the largest batch and are reused by
    /// later batches, no larger.
    #[test]
    fn batch_buffers_grow_to_the_largest_batch_and_are_reused() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../engines/openvla-tiny");
        let options = PolicyOptions {
            unnorm_key: Some("tiny_bridge".into()),
            ..PolicyOptions::default()
        };
        let mut runner = CpuModelRunner::load(&dir, &options).expect("tiny checkpoint loads");
        let vocab = runner.model().llama().config().vocab_size;
        let pixels = vec![0.25f32; runner.model().pixel_values_len()];
        let mut largest_logits = None;
        for (batch, pool) in [(2, 2), (1, 2), (3, 3), (2, 3), (3, 3), (1, 3)] {
            let pixel_values = vec![pixels.as_slice(); batch];
            let instructions = vec!["pick up the cup"; batch];
            let results = runner.predict_pixels_batch(&pixel_values, &instructions);
            assert_eq!(results.len(), batch);
            assert!(results.iter().all(Result::is_ok), "{results:?}");
            assert_eq!(runner.batch_states.len(), pool);
            assert_eq!(runner.batch_logits.len(), pool * vocab);
            assert_eq!(runner.batch_tokens.len(), pool);
            if pool == 3 {
                let logits = runner.batch_logits.as_ptr();
                assert_eq!(*largest_logits.get_or_insert(logits), logits);
            }
        }
        // Mismatched lists fail every entry.
        let results = runner.predict_pixels_batch(&[pixels.as_slice()], &["a", "b"]);
        assert_eq!(results.len(), 2);
        assert!(results.iter().all(Result::is_err));
    }
}
