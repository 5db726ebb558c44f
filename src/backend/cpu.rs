//! The CPU backend: the pure-Rust model in f32, the reference the other backends are held
//! to. [`CpuModelRunner`] runs the model from `pixel_values`; [`CpuPolicy`] adds the image
//! preprocessing and implements [`Policy`].

use std::path::Path;
use std::time::{Duration, Instant};

use crate::model::action::{resolve_unnorm_key, ActionDecoder};
use crate::model::llama::LlamaState;
use crate::model::openvla::OpenVla;
use crate::model::ModelError;
use crate::policy::{
    Policy, PolicyError, PolicyOptions, Prediction, ProjectorFormat, Quantization, StageTimings,
};
use crate::preprocess::{Preprocessor, RgbImage};

pub const PREPROCESSOR_CONFIG_FILE: &str = "preprocessor_config.json";

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
        check_formats(options)?;
        let model = OpenVla::load(model_dir)?;
        Self::from_model(model, options)
    }

    /// Wraps an already loaded (possibly modified) model.
    pub fn from_model(model: OpenVla, options: &PolicyOptions) -> Result<Self, ModelError> {
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

    /// The prompt's token ids (`<s>` … `▁`), as `input_ids` in the reference.
    pub fn prompt_ids(&self, instruction: &str) -> Result<Vec<u32>, PolicyError> {
        if instruction.trim().is_empty() {
            return Err(PolicyError::EmptyInstruction);
        }
        Ok(self.model.tokenizer().encode_instruction(instruction)?)
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

/// Weight formats this build runs; the others are refused by name.
fn check_formats(options: &PolicyOptions) -> Result<(), ModelError> {
    if options.quantization != Quantization::None {
        return Err(ModelError::Unsupported {
            what: format!("--quantization {:?}", options.quantization).to_lowercase(),
            message: "quantized language-model weights are not available in this build \
                      (use none)"
                .into(),
        });
    }
    if options.projector != ProjectorFormat::F32 {
        return Err(ModelError::Unsupported {
            what: format!("--projector {:?}", options.projector).to_lowercase(),
            message: "quantized projector weights are not available in this build (use f32)".into(),
        });
    }
    Ok(())
}

/// The policy on the CPU: preprocessing + [`CpuModelRunner`].
#[derive(Debug)]
pub struct CpuPolicy {
    runner: CpuModelRunner,
    preprocessor: Preprocessor,
    /// `[6, 224, 224]`, reused between calls.
    pixel_values: Vec<f32>,
    model_name: String,
}

impl CpuPolicy {
    /// Loads the checkpoint folder (weights, tokenizer, `preprocessor_config.json`).
    pub fn load(model_dir: &Path, options: &PolicyOptions) -> Result<Self, PolicyError> {
        let runner = CpuModelRunner::load(model_dir, options)?;
        let preprocessor =
            Preprocessor::from_config_file(&model_dir.join(PREPROCESSOR_CONFIG_FILE))?;
        Self::new(runner, preprocessor)
    }

    pub fn new(runner: CpuModelRunner, preprocessor: Preprocessor) -> Result<Self, PolicyError> {
        if preprocessor.output_len() != runner.model().pixel_values_len() {
            return Err(PolicyError::Model(ModelError::Math {
                op: "preprocessing",
                message: format!(
                    "preprocessor writes {} values, the model takes {}",
                    preprocessor.output_len(),
                    runner.model().pixel_values_len()
                ),
            }));
        }
        let model_name = runner
            .model()
            .dir()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| runner.model().dir().display().to_string());
        Ok(Self {
            pixel_values: vec![0.0; preprocessor.output_len()],
            runner,
            preprocessor,
            model_name,
        })
    }

    pub fn runner(&self) -> &CpuModelRunner {
        &self.runner
    }

    pub fn runner_mut(&mut self) -> &mut CpuModelRunner {
        &mut self.runner
    }

    /// Each featurizer's patch features from given `pixel_values`.
    pub fn vision_features(&self, pixel_values: &[f32]) -> Result<Vec<Vec<f32>>, ModelError> {
        self.runner.vision_features(pixel_values)
    }

    /// The projector output from given `pixel_values`.
    pub fn projector_output(&self, pixel_values: &[f32]) -> Result<Vec<f32>, ModelError> {
        self.runner.projector_output(pixel_values)
    }

    /// The step-0 logits from given `pixel_values`.
    pub fn step0_logits(
        &mut self,
        pixel_values: &[f32],
        instruction: &str,
    ) -> Result<Vec<f32>, PolicyError> {
        self.runner.step0_logits(pixel_values, instruction)
    }

    /// The `pixel_values` the preprocessing produced for the latest image.
    pub fn last_pixel_values(&self) -> &[f32] {
        &self.pixel_values
    }
}

impl Policy for CpuPolicy {
    fn predict(&mut self, image: &RgbImage, instruction: &str) -> Result<Prediction, PolicyError> {
        if instruction.trim().is_empty() {
            return Err(PolicyError::EmptyInstruction);
        }
        let start = Instant::now();
        self.preprocessor.run(image, &mut self.pixel_values)?;
        let preprocess = start.elapsed();
        let mut prediction = self
            .runner
            .predict_pixels(&self.pixel_values, instruction)?;
        prediction.timings.preprocess_ms = ms(preprocess);
        prediction.timings.total_ms = ms(start.elapsed());
        Ok(prediction)
    }

    fn action_dim(&self) -> usize {
        self.runner.action_dim()
    }

    fn backend_name(&self) -> &'static str {
        "cpu"
    }

    fn model_name(&self) -> &str {
        &self.model_name
    }
}
