//! The CPU backend: the pure-Rust model in f32, the reference the other backends are held
//! to. [`CpuModelRunner`] runs the model from `pixel_values`; [`CpuPolicy`] adds the image
//! preprocessing and implements [`Policy`](crate::policy::Policy).

use std::path::Path;
use std::time::{Duration, Instant};

use super::{ImagePolicy, PixelRunner};
use crate::model::action::{resolve_unnorm_key, ActionDecoder};
use crate::model::llama::LlamaState;
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
        Ok(Self {
            model,
            unnorm_key,
            decoder,
            state,
            logits,
            tokens,
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
