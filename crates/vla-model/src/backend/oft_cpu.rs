//! OpenVLA-OFT on the CPU backend: every camera through both encoders, the projector, the
//! proprio token, one bidirectional pass of the language model and the L1 action head, for a
//! chunk of continuous actions (`crate::model::oft` has the sequence OFT builds).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::model::action::resolve_unnorm_key;
use crate::model::config::RuntimeModelConfig;
use crate::model::llama::LlamaState;
use crate::model::oft::{
    self, Bounds, L1ActionHead, OftSettings, ProprioProjector, SequenceLayout, STOP_TOKEN_ID,
};
use crate::model::openvla::{OpenVla, MAX_TEXT_TOKENS};
use crate::model::quant_load::apply_formats;
use crate::model::ModelError;
use crate::policy::{Policy, PolicyError, PolicyInputs, PolicyOptions, Prediction, StageTimings};
use crate::preprocess::{Preprocessor, RgbImage};

use super::{check_preprocessing, model_name, PREPROCESSOR_CONFIG_FILE};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The sequence of a prompt of `prompt_ids` ids (`<s>` … `▁`): every camera's patches and
/// the proprio token, the prompt, `action_dim` placeholders per chunk step.
fn sequence_layout(
    settings: &OftSettings,
    patches_per_image: usize,
    proprio: bool,
    action_dim: usize,
    prompt_ids: usize,
) -> SequenceLayout {
    SequenceLayout {
        patches: settings.num_images_in_input * patches_per_image + usize::from(proprio),
        prompt_tokens: prompt_ids.saturating_sub(1),
        placeholders: action_dim * settings.num_actions_chunk,
    }
}

/// `got` images for a checkpoint that takes `want`.
fn check_image_count(want: usize, got: usize) -> Result<(), PolicyError> {
    if want == got {
        return Ok(());
    }
    Err(PolicyError::Inputs(format!(
        "the checkpoint takes {want} image(s) (num_images_in_input), got {got}"
    )))
}

/// What one OFT pass computed, stage by stage (the golden fixture checks each).
#[derive(Debug, Clone, PartialEq)]
pub struct OftPass {
    /// Projector output of every camera, one after the other (`[images · 256, hidden]`).
    pub image_tokens: Vec<f32>,
    /// The projected robot state (`[hidden]`), when the checkpoint takes one.
    pub proprio_token: Option<Vec<f32>>,
    /// The normalised state fed to the proprio projector.
    pub proprio_normalized: Option<Vec<f64>>,
    /// The hidden states the action head reads (`[chunk · action_dim, hidden]`).
    pub head_input: Vec<f32>,
    /// The head's output, one row per chunk step.
    pub normalized: Vec<Vec<f64>>,
    /// The chunk in robot units.
    pub actions: Vec<Vec<f64>>,
    pub timings: StageTimings,
}

/// An OpenVLA-OFT checkpoint ready to run from `pixel_values`.
#[derive(Debug)]
pub struct OftCpuRunner {
    model: OpenVla,
    settings: OftSettings,
    head: L1ActionHead,
    proprio: Option<(ProprioProjector, Bounds)>,
    action_bounds: Bounds,
    unnorm_key: String,
    state: LlamaState,
}

impl OftCpuRunner {
    /// Loads the Hugging Face folder, the `.pt` heads beside it, `vla_rt_model.json`'s OFT
    /// keys and the statistics (`dataset_statistics.json`, else `config.json`'s `norm_stats`).
    pub fn load(dir: &Path, options: &PolicyOptions) -> Result<Self, ModelError> {
        let files = oft::find_files(dir)?.ok_or_else(|| ModelError::File {
            path: dir.display().to_string(),
            message: format!(
                "no {}*_checkpoint.pt: not an OpenVLA-OFT checkpoint",
                oft::ACTION_HEAD_PREFIX
            ),
        })?;
        let settings = OftSettings::from_runtime(dir, &RuntimeModelConfig::from_dir(dir)?)?;
        let model = OpenVla::load(dir)?;
        let hidden = model.llama().config().hidden_size;
        let head = L1ActionHead::load(&files.action_head, hidden)?;
        let stats_path = dir.join(oft::DATASET_STATISTICS_FILE);
        let stats =
            oft::read_dataset_statistics(dir)?.unwrap_or_else(|| model.config().norm_stats.clone());
        let unnorm_key = resolve_unnorm_key(&stats, options.unnorm_key.as_deref())?;
        let entry = &stats[&unnorm_key];
        let action_bounds = Bounds::pick(
            &entry.action,
            settings.action_normalization,
            head.action_dim(),
            &format!("{unnorm_key}.action"),
            &stats_path,
        )?;
        let proprio = match &files.proprio_projector {
            Some(path) => {
                let projector = ProprioProjector::load(path, hidden)?;
                let key = format!("{unnorm_key}.proprio");
                let stats = entry.proprio.as_ref().ok_or_else(|| ModelError::Config {
                    path: stats_path.display().to_string(),
                    key: key.clone(),
                    message: format!(
                        "{} takes the robot state, and its statistics are missing",
                        path.display()
                    ),
                })?;
                let bounds = Bounds::pick(
                    stats,
                    settings.action_normalization,
                    projector.proprio_dim(),
                    &key,
                    &stats_path,
                )?;
                Some((projector, bounds))
            }
            None => None,
        };
        Self::from_parts(
            model,
            settings,
            head,
            proprio,
            action_bounds,
            unnorm_key,
            options,
        )
    }

    /// Assembles a runner from loaded (or, for benchmarks, built) parts, converting the
    /// language model to the weight formats in `options`.
    pub fn from_parts(
        mut model: OpenVla,
        settings: OftSettings,
        head: L1ActionHead,
        proprio: Option<(ProprioProjector, Bounds)>,
        action_bounds: Bounds,
        unnorm_key: String,
        options: &PolicyOptions,
    ) -> Result<Self, ModelError> {
        apply_formats(&mut model, options)?;
        let longest = sequence_layout(
            &settings,
            model.num_patches(),
            proprio.is_some(),
            head.action_dim(),
            MAX_TEXT_TOKENS + 1,
        );
        let capacity = longest.len().min(model.config().llm_max_length);
        let state = LlamaState::new(model.llama().config(), capacity, capacity);
        Ok(Self {
            model,
            settings,
            head,
            proprio,
            action_bounds,
            unnorm_key,
            state,
        })
    }

    pub fn model(&self) -> &OpenVla {
        &self.model
    }

    pub fn settings(&self) -> OftSettings {
        self.settings
    }

    pub fn unnorm_key(&self) -> &str {
        &self.unnorm_key
    }

    pub fn inputs(&self) -> PolicyInputs {
        PolicyInputs {
            images: self.settings.num_images_in_input,
            proprio_dim: self.proprio.as_ref().map(|(p, _)| p.proprio_dim()),
            chunk_len: self.settings.num_actions_chunk,
        }
    }

    fn layout(&self, prompt_ids: usize) -> SequenceLayout {
        sequence_layout(
            &self.settings,
            self.model.num_patches(),
            self.proprio.is_some(),
            self.head.action_dim(),
            prompt_ids,
        )
    }

    /// The prompt's ids (`<s>` … `▁`), refused when the whole sequence would not fit.
    pub fn prompt_ids(&self, instruction: &str) -> Result<Vec<u32>, PolicyError> {
        if instruction.trim().is_empty() {
            return Err(PolicyError::EmptyInstruction);
        }
        let fixed = self.layout(1).len();
        let limit = (self.state.capacity() + 1).saturating_sub(fixed);
        Ok(self
            .model
            .tokenizer()
            .encode_instruction_within(instruction, limit)?)
    }

    fn check_inputs(
        &self,
        pixel_values: &[&[f32]],
        proprio: Option<&[f64]>,
    ) -> Result<(), PolicyError> {
        check_image_count(self.settings.num_images_in_input, pixel_values.len())?;
        match (&self.proprio, proprio) {
            (Some((projector, _)), Some(state)) if state.len() != projector.proprio_dim() => {
                Err(PolicyError::Inputs(format!(
                    "proprio: the checkpoint takes a robot state of {} values, got {}",
                    projector.proprio_dim(),
                    state.len()
                )))
            }
            (Some(_), Some(state)) if state.iter().any(|v| !v.is_finite()) => Err(
                PolicyError::Inputs("proprio: a value is not a finite number".into()),
            ),
            (Some((projector, _)), None) => Err(PolicyError::Inputs(format!(
                "the checkpoint takes the robot state (proprio, {} values)",
                projector.proprio_dim()
            ))),
            (None, Some(_)) => Err(PolicyError::Inputs(
                "this checkpoint has no proprio projector: it takes no robot state".into(),
            )),
            _ => Ok(()),
        }
    }

    /// One OFT pass from each camera's `pixel_values` (`[6, 224, 224]` each, in the
    /// checkpoint's order) and the raw robot state.
    pub fn run_pixels(
        &mut self,
        pixel_values: &[&[f32]],
        instruction: &str,
        proprio: Option<&[f64]>,
    ) -> Result<OftPass, PolicyError> {
        let start = Instant::now();
        self.check_inputs(pixel_values, proprio)?;
        let ids = self.prompt_ids(instruction)?;
        let layout = self.layout(ids.len());
        let h = self.model.llama().config().hidden_size;

        let mut vision = Duration::ZERO;
        let mut projector = Duration::ZERO;
        let mut image_tokens =
            Vec::with_capacity(pixel_values.len() * self.model.num_patches() * h);
        for pixels in pixel_values {
            let t = Instant::now();
            let outputs = self.model.featurizer_outputs(pixels)?;
            vision += t.elapsed();
            let t = Instant::now();
            image_tokens.extend(self.model.project(&self.model.concat_features(&outputs))?);
            projector += t.elapsed();
        }
        let (proprio_normalized, proprio_token) = match (&self.proprio, proprio) {
            (Some((projector, bounds)), Some(state)) => {
                let normalized = bounds.normalize(state);
                let fed: Vec<f32> = normalized.iter().map(|&v| v as f32).collect();
                (Some(normalized), Some(projector.forward(&fed)?))
            }
            _ => (None, None),
        };

        let t = Instant::now();
        let mut embeddings = vec![0.0f32; layout.len() * h];
        let llama = self.model.llama();
        llama.embed(ids[0], &mut embeddings[..h])?;
        let mut row = 1;
        embeddings[h..h + image_tokens.len()].copy_from_slice(&image_tokens);
        row += image_tokens.len() / h;
        if let Some(token) = &proprio_token {
            embeddings[row * h..(row + 1) * h].copy_from_slice(token);
            row += 1;
        }
        for &id in &ids[1..] {
            llama.embed(id, &mut embeddings[row * h..(row + 1) * h])?;
            row += 1;
        }
        // The placeholders (`oft::PLACEHOLDER_TOKEN_ID`) stay zero rows: OFT zeroes their embeddings.
        debug_assert_eq!(row, layout.placeholder_start());
        row += layout.placeholders;
        llama.embed(STOP_TOKEN_ID, &mut embeddings[row * h..(row + 1) * h])?;
        let mut hidden = vec![0.0f32; embeddings.len()];
        llama.forward_bidirectional(&mut self.state, &embeddings, &mut hidden)?;
        let rows = layout.head_rows();
        let head_input = hidden[rows.start * h..rows.end * h].to_vec();
        let forward = t.elapsed();

        let t = Instant::now();
        let dim = self.head.action_dim();
        let out = self.head.forward(&head_input)?;
        let normalized: Vec<Vec<f64>> = out
            .chunks_exact(dim)
            .map(|step| step.iter().map(|&v| f64::from(v)).collect())
            .collect();
        if normalized.iter().flatten().any(|v| !v.is_finite()) {
            return Err(PolicyError::Backend {
                backend: "cpu",
                message: "the action head's output is not finite".into(),
            });
        }
        let actions = normalized
            .iter()
            .map(|step| self.action_bounds.unnormalize(step))
            .collect();
        let head = t.elapsed();
        Ok(OftPass {
            image_tokens,
            proprio_token,
            proprio_normalized,
            head_input,
            normalized,
            actions,
            timings: StageTimings {
                preprocess_ms: 0.0,
                vision_ms: ms(vision),
                projector_ms: ms(projector),
                prefill_ms: ms(forward),
                decode_ms: ms(head),
                total_ms: ms(start.elapsed()),
            },
        })
    }
}

/// [`OftCpuRunner`] with the checkpoint's image preprocessing: a [`Policy`] whose prediction
/// is a chunk.
#[derive(Debug)]
pub struct OftCpuPolicy {
    runner: OftCpuRunner,
    preprocessor: Preprocessor,
    pixel_values: Vec<Vec<f32>>,
    model_name: String,
}

impl OftCpuPolicy {
    pub fn load(dir: &Path, options: &PolicyOptions) -> Result<Self, PolicyError> {
        let runner = OftCpuRunner::load(dir, options)?;
        let preprocessor = Preprocessor::from_config_file(&dir.join(PREPROCESSOR_CONFIG_FILE))?;
        check_preprocessing(&preprocessor, runner.model().pixel_values_len())?;
        let images = runner.settings().num_images_in_input;
        Ok(Self {
            runner,
            pixel_values: vec![vec![0.0; preprocessor.output_len()]; images],
            preprocessor,
            model_name: model_name(dir),
        })
    }

    pub fn runner(&self) -> &OftCpuRunner {
        &self.runner
    }

    /// The whole pass from camera images, with every stage's output.
    pub fn run(
        &mut self,
        images: &[&RgbImage],
        instruction: &str,
        proprio: Option<&[f64]>,
    ) -> Result<OftPass, PolicyError> {
        if instruction.trim().is_empty() {
            return Err(PolicyError::EmptyInstruction);
        }
        // Before preprocessing, which pairs images with buffers.
        check_image_count(self.pixel_values.len(), images.len())?;
        let start = Instant::now();
        for (image, pixels) in images.iter().zip(&mut self.pixel_values) {
            self.preprocessor.run(image, pixels)?;
        }
        let preprocess_ms = ms(start.elapsed());
        let pixels: Vec<&[f32]> = self.pixel_values.iter().map(Vec::as_slice).collect();
        let mut pass = self.runner.run_pixels(&pixels, instruction, proprio)?;
        pass.timings.preprocess_ms = preprocess_ms;
        pass.timings.total_ms = ms(start.elapsed());
        Ok(pass)
    }
}

impl Policy for OftCpuPolicy {
    fn predict(&mut self, image: &RgbImage, instruction: &str) -> Result<Prediction, PolicyError> {
        self.predict_with(&[image], instruction, None)
    }

    fn inputs(&self) -> PolicyInputs {
        self.runner.inputs()
    }

    fn predict_with(
        &mut self,
        images: &[&RgbImage],
        instruction: &str,
        proprio: Option<&[f64]>,
    ) -> Result<Prediction, PolicyError> {
        let pass = self.run(images, instruction, proprio)?;
        Ok(Prediction {
            tokens: Vec::new(),
            normalized: pass.normalized.first().cloned().unwrap_or_default(),
            action: pass.actions.first().cloned().unwrap_or_default(),
            actions: pass.actions,
            timings: pass.timings,
        })
    }

    fn action_dim(&self) -> usize {
        self.runner.head.action_dim()
    }

    fn check_instruction(&self, instruction: &str) -> Result<(), PolicyError> {
        self.runner.prompt_ids(instruction).map(|_| ())
    }

    fn backend_name(&self) -> &'static str {
        "cpu"
    }

    fn model_name(&self) -> &str {
        &self.model_name
    }
}
