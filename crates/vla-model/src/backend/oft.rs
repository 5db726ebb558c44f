//! What every backend's OpenVLA-OFT runner shares (ARCHITECTURE.md §17): the statistics and
//! bounds of a checkpoint, the sequence layout and the prompt limit it implies, the checks of
//! a call's cameras and robot state, the un-normalisation of the head's output, and the
//! [`Policy`] that preprocesses every camera on the CPU before the runner takes the pixels.
//! The runners (`oft_cpu`, `cuda::oft`) own only the model math.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use crate::model::action::resolve_unnorm_key;
use crate::model::config::{ActionNormalization, DatasetStats, RuntimeModelConfig};
use crate::model::oft::{self, Bounds, OftFiles, OftSettings, SequenceLayout, COMMAND_ACTION_DIM};
use crate::model::openvla::MAX_TEXT_TOKENS;
use crate::model::prompt::PromptTokenizer;
use crate::model::ModelError;
use crate::policy::{
    OftKeys, Policy, PolicyError, PolicyInputs, PolicyOptions, Prediction, StageTimings,
};
use crate::preprocess::{Preprocessor, RgbImage};

use super::{check_preprocessing, model_name, PREPROCESSOR_CONFIG_FILE};

/// The OFT files in `dir` (an action head is required) and `vla_rt_model.json`'s OFT keys,
/// completed with the caller's `keys`.
pub fn read_files_and_settings(
    dir: &Path,
    keys: &OftKeys,
) -> Result<(OftFiles, OftSettings), ModelError> {
    let files = oft::find_files(dir)?.ok_or_else(|| ModelError::File {
        path: dir.display().to_string(),
        message: format!(
            "no {}*_checkpoint.pt: not an OpenVLA-OFT checkpoint",
            oft::ACTION_HEAD_PREFIX
        ),
    })?;
    let runtime = RuntimeModelConfig::from_dir(dir)?.with_oft_keys(
        keys,
        &dir.join(crate::model::config::RUNTIME_MODEL_CONFIG_FILE),
    )?;
    let settings = OftSettings::from_runtime(dir, &runtime)?;
    Ok((files, settings))
}

/// The statistics an OFT checkpoint is (un)normalised with: `dataset_statistics.json` in
/// `dir`, else `config_stats` (the config's `norm_stats`).
pub fn statistics(
    dir: &Path,
    config_stats: &BTreeMap<String, DatasetStats>,
) -> Result<BTreeMap<String, DatasetStats>, ModelError> {
    Ok(oft::read_dataset_statistics(dir)?.unwrap_or_else(|| config_stats.clone()))
}

/// [`statistics`] when `dir` holds an OFT checkpoint (its action head beside the weights);
/// `None` for any other checkpoint, whose actions are decoded with `config_stats`.
pub fn statistics_if_oft(
    dir: &Path,
    config_stats: &BTreeMap<String, DatasetStats>,
) -> Result<Option<BTreeMap<String, DatasetStats>>, ModelError> {
    if oft::find_files(dir)?.is_none() {
        return Ok(None);
    }
    statistics(dir, config_stats).map(Some)
}

/// The backend-independent part of an OFT checkpoint: its settings, the widths the heads
/// take and give, and the statistics that (un)normalise them.
#[derive(Debug, Clone, PartialEq)]
pub struct OftSpec {
    pub settings: OftSettings,
    /// Projector output rows per camera (256 for OpenVLA's 224 px, patch 14 encoders).
    pub patches_per_image: usize,
    pub action_dim: usize,
    pub action_bounds: Bounds,
    /// The bounds of the robot state, for a checkpoint with a proprio projector (their length
    /// is the state's).
    pub proprio_bounds: Option<Bounds>,
    pub unnorm_key: String,
}

impl OftSpec {
    /// Picks from `stats` (see [`statistics`]) the bounds for a head of `action_dim` and,
    /// when `files` has a proprio projector, a state of `proprio_dim`.
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        dir: &Path,
        files: &OftFiles,
        settings: OftSettings,
        stats: &BTreeMap<String, DatasetStats>,
        patches_per_image: usize,
        action_dim: usize,
        proprio_dim: Option<usize>,
        options: &PolicyOptions,
    ) -> Result<Self, ModelError> {
        let stats_path = dir.join(oft::DATASET_STATISTICS_FILE);
        let unnorm_key = resolve_unnorm_key(stats, options.unnorm_key.as_deref())?;
        let entry = &stats[&unnorm_key];
        let action_bounds = Bounds::pick(
            &entry.action,
            settings.action_normalization,
            action_dim,
            &format!("{unnorm_key}.action"),
            &stats_path,
        )?;
        let proprio_bounds = match (&files.proprio_projector, proprio_dim) {
            (Some(path), Some(dim)) => {
                let key = format!("{unnorm_key}.proprio");
                let stats = entry.proprio.as_ref().ok_or_else(|| ModelError::Config {
                    path: stats_path.display().to_string(),
                    key: key.clone(),
                    message: format!(
                        "{} takes the robot state, and its statistics are missing",
                        path.display()
                    ),
                })?;
                Some(Bounds::pick(
                    stats,
                    settings.action_normalization,
                    dim,
                    &key,
                    &stats_path,
                )?)
            }
            (None, None) => None,
            (projector, dim) => {
                return Err(ModelError::Math {
                    op: "OpenVLA-OFT proprio",
                    message: format!(
                        "a proprio projector ({}) needs a state width and a state width needs \
                         a projector (got {dim:?})",
                        projector
                            .as_ref()
                            .map_or("none".into(), |p| p.display().to_string())
                    ),
                })
            }
        };
        Ok(Self {
            settings,
            patches_per_image,
            action_dim,
            action_bounds,
            proprio_bounds,
            unnorm_key,
        })
    }

    /// The chunk path a benchmark times: `steps` 7-D actions from one camera without robot
    /// state, un-normalised with `action_bounds`.
    pub fn one_camera(steps: usize, patches_per_image: usize, action_bounds: Bounds) -> Self {
        Self {
            settings: OftSettings {
                num_actions_chunk: steps,
                num_images_in_input: 1,
                action_normalization: ActionNormalization::BoundsQ99,
            },
            patches_per_image,
            action_dim: COMMAND_ACTION_DIM,
            action_bounds,
            proprio_bounds: None,
            unnorm_key: "bench".into(),
        }
    }

    /// The length of the robot state, for a checkpoint that takes one.
    pub fn proprio_dim(&self) -> Option<usize> {
        self.proprio_bounds.as_ref().map(|b| b.low.len())
    }

    /// The sequence of a prompt of `prompt_ids` ids (`<s>` … `▁`): every camera's patches and
    /// the proprio token, the prompt, `action_dim` placeholders per chunk step.
    pub fn layout(&self, prompt_ids: usize) -> SequenceLayout {
        SequenceLayout {
            patches: self.settings.num_images_in_input * self.patches_per_image
                + usize::from(self.proprio_bounds.is_some()),
            prompt_tokens: prompt_ids.saturating_sub(1),
            placeholders: self.action_dim * self.settings.num_actions_chunk,
        }
    }

    /// The positions a runner needs for the longest prompt vla-rt takes, at most
    /// `llm_max_length` (longer prompts are then refused by [`OftSpec::prompt_ids`]).
    pub fn sequence_capacity(&self, llm_max_length: usize) -> usize {
        self.layout(MAX_TEXT_TOKENS + 1).len().min(llm_max_length)
    }

    /// The most prompt ids (`<s>` included) whose sequence fits `capacity` positions.
    pub fn prompt_limit(&self, capacity: usize) -> usize {
        (capacity + 1).saturating_sub(self.layout(1).len())
    }

    /// The prompt's ids (`<s>` … `▁`), refused when the whole sequence would not fit
    /// `capacity` positions.
    pub fn prompt_ids(
        &self,
        tokenizer: &PromptTokenizer,
        instruction: &str,
        capacity: usize,
    ) -> Result<Vec<u32>, PolicyError> {
        if instruction.trim().is_empty() {
            return Err(PolicyError::EmptyInstruction);
        }
        Ok(tokenizer.encode_instruction_within(instruction, self.prompt_limit(capacity))?)
    }

    pub fn inputs(&self) -> PolicyInputs {
        PolicyInputs {
            images: self.settings.num_images_in_input,
            proprio_dim: self.proprio_dim(),
            chunk_len: self.settings.num_actions_chunk,
        }
    }

    /// Refuses a call whose cameras or robot state do not fit the checkpoint.
    pub fn check_inputs(&self, images: usize, proprio: Option<&[f64]>) -> Result<(), PolicyError> {
        check_image_count(self.settings.num_images_in_input, images)?;
        match (self.proprio_dim(), proprio) {
            (Some(dim), Some(state)) if state.len() != dim => Err(PolicyError::Inputs(format!(
                "proprio: the checkpoint takes a robot state of {dim} values, got {}",
                state.len()
            ))),
            (Some(_), Some(state)) if state.iter().any(|v| !v.is_finite()) => Err(
                PolicyError::Inputs("proprio: a value is not a finite number".into()),
            ),
            (Some(dim), None) => Err(PolicyError::Inputs(format!(
                "the checkpoint takes the robot state (proprio, {dim} values)"
            ))),
            (None, Some(_)) => Err(PolicyError::Inputs(
                "this checkpoint has no proprio projector: it takes no robot state".into(),
            )),
            _ => Ok(()),
        }
    }

    /// The state as the proprio projector takes it (OFT's `normalize_proprio`), for a
    /// checkpoint that has one and a call that gave one.
    pub fn normalize_proprio(&self, proprio: Option<&[f64]>) -> Option<Vec<f64>> {
        match (&self.proprio_bounds, proprio) {
            (Some(bounds), Some(state)) => Some(bounds.normalize(state)),
            _ => None,
        }
    }

    /// The head's output (`[chunk, action_dim]`) as normalised rows and as actions in robot
    /// units; a value that is not finite is an error of `backend`.
    pub fn chunk(
        &self,
        head_output: &[f32],
        backend: &'static str,
    ) -> Result<(ChunkRows, ChunkRows), PolicyError> {
        let steps = self.settings.num_actions_chunk;
        if head_output.len() != steps * self.action_dim {
            return Err(PolicyError::Backend {
                backend,
                message: format!(
                    "the action head gave {} values, a chunk of {steps} × {} takes {}",
                    head_output.len(),
                    self.action_dim,
                    steps * self.action_dim
                ),
            });
        }
        if head_output.iter().any(|v| !v.is_finite()) {
            return Err(PolicyError::Backend {
                backend,
                message: "the action head's output is not finite".into(),
            });
        }
        let normalized: Vec<Vec<f64>> = head_output
            .chunks_exact(self.action_dim)
            .map(|step| step.iter().map(|&v| f64::from(v)).collect())
            .collect();
        let actions = normalized
            .iter()
            .map(|step| self.action_bounds.unnormalize(step))
            .collect();
        Ok((normalized, actions))
    }
}

/// One row of `action_dim` values per chunk step.
pub type ChunkRows = Vec<Vec<f64>>;

/// `got` images for a checkpoint that takes `want`.
pub(crate) fn check_image_count(want: usize, got: usize) -> Result<(), PolicyError> {
    if want == got {
        return Ok(());
    }
    Err(PolicyError::Inputs(format!(
        "the checkpoint takes {want} image(s) (num_images_in_input), got {got}"
    )))
}

/// A chunk and the time each stage took.
#[derive(Debug, Clone, PartialEq)]
pub struct OftChunk {
    /// The head's output, one row per chunk step.
    pub normalized: Vec<Vec<f64>>,
    /// The chunk in robot units.
    pub actions: Vec<Vec<f64>>,
    pub timings: StageTimings,
}

/// What a backend runs after the (CPU, Pillow-exact) preprocessing of every camera.
pub trait OftRunner: Send {
    /// `cpu` or `cuda`.
    const BACKEND: &'static str;
    fn spec(&self) -> &OftSpec;
    /// Number of `pixel_values` the model takes per camera.
    fn pixel_values_len(&self) -> usize;
    /// The prompt's ids (`<s>` … `▁`), refused when empty or when the whole sequence would
    /// not fit the runner.
    fn prompt_ids(&self, instruction: &str) -> Result<Vec<u32>, PolicyError>;
    /// Refuses an instruction [`OftRunner::predict_chunk`] would refuse, without running.
    fn check_instruction(&self, instruction: &str) -> Result<(), PolicyError> {
        self.prompt_ids(instruction).map(|_| ())
    }
    /// One chunk from each camera's `pixel_values` and the raw robot state;
    /// `timings.preprocess_ms` is left to the caller.
    fn predict_chunk(
        &mut self,
        pixel_values: &[&[f32]],
        instruction: &str,
        proprio: Option<&[f64]>,
    ) -> Result<OftChunk, PolicyError>;
}

/// An OFT runner with the checkpoint's image preprocessing: a [`Policy`] whose prediction
/// is a chunk.
#[derive(Debug)]
pub struct OftPolicy<R> {
    runner: R,
    preprocessor: Preprocessor,
    /// One `[6, 224, 224]` buffer per camera, reused.
    pixel_values: Vec<Vec<f32>>,
    model_name: String,
}

impl<R: OftRunner> OftPolicy<R> {
    /// `runner` behind the preprocessing of the checkpoint in `dir`.
    pub fn new(runner: R, dir: &Path) -> Result<Self, PolicyError> {
        let preprocessor = Preprocessor::from_config_file(&dir.join(PREPROCESSOR_CONFIG_FILE))?;
        check_preprocessing(&preprocessor, runner.pixel_values_len())?;
        let images = runner.spec().settings.num_images_in_input;
        Ok(Self {
            runner,
            pixel_values: vec![vec![0.0; preprocessor.output_len()]; images],
            preprocessor,
            model_name: model_name(dir),
        })
    }

    pub fn runner(&self) -> &R {
        &self.runner
    }

    pub fn runner_mut(&mut self) -> &mut R {
        &mut self.runner
    }

    /// Preprocesses every camera into its buffer; the time it took, in ms.
    pub(crate) fn preprocess(
        &mut self,
        images: &[&RgbImage],
        instruction: &str,
    ) -> Result<f64, PolicyError> {
        if instruction.trim().is_empty() {
            return Err(PolicyError::EmptyInstruction);
        }
        // Before preprocessing, which pairs images with buffers.
        check_image_count(self.pixel_values.len(), images.len())?;
        let start = Instant::now();
        for (image, pixels) in images.iter().zip(&mut self.pixel_values) {
            self.preprocessor.run(image, pixels)?;
        }
        Ok(start.elapsed().as_secs_f64() * 1e3)
    }

    /// The pixel values of every camera from the latest [`OftPolicy::preprocess`].
    pub fn last_pixel_values(&self) -> Vec<&[f32]> {
        self.pixel_values.iter().map(Vec::as_slice).collect()
    }

    /// Splits the policy into its runner and the latest pixel values, to run them together.
    pub(crate) fn runner_and_pixels(&mut self) -> (&mut R, Vec<&[f32]>) {
        (
            &mut self.runner,
            self.pixel_values.iter().map(Vec::as_slice).collect(),
        )
    }
}

impl<R: OftRunner> Policy for OftPolicy<R> {
    fn predict(&mut self, image: &RgbImage, instruction: &str) -> Result<Prediction, PolicyError> {
        self.predict_with(&[image], instruction, None)
    }

    fn inputs(&self) -> PolicyInputs {
        self.runner.spec().inputs()
    }

    fn predict_with(
        &mut self,
        images: &[&RgbImage],
        instruction: &str,
        proprio: Option<&[f64]>,
    ) -> Result<Prediction, PolicyError> {
        let start = Instant::now();
        let preprocess_ms = self.preprocess(images, instruction)?;
        let (runner, pixels) = self.runner_and_pixels();
        let mut chunk = runner.predict_chunk(&pixels, instruction, proprio)?;
        chunk.timings.preprocess_ms = preprocess_ms;
        chunk.timings.total_ms = start.elapsed().as_secs_f64() * 1e3;
        Ok(Prediction {
            tokens: Vec::new(),
            normalized: chunk.normalized.first().cloned().unwrap_or_default(),
            action: chunk.actions.first().cloned().unwrap_or_default(),
            actions: chunk.actions,
            timings: chunk.timings,
        })
    }

    fn action_dim(&self) -> usize {
        self.runner.spec().action_dim
    }

    fn check_instruction(&self, instruction: &str) -> Result<(), PolicyError> {
        self.runner.check_instruction(instruction)
    }

    fn backend_name(&self) -> &'static str {
        R::BACKEND
    }

    fn model_name(&self) -> &str {
        &self.model_name
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;

    fn bounds(dim: usize) -> Bounds {
        Bounds {
            low: vec![-1.0; dim],
            high: vec![1.0; dim],
            mask: vec![true; dim],
        }
    }

    /// A spec of `images` 256-patch cameras, chunks of `chunk` 7-D actions (bounds 0..2) and
    /// a robot state of `proprio` values (bounds ±1), for the runners' tests.
    pub(crate) fn spec(images: usize, chunk: usize, proprio: Option<usize>) -> OftSpec {
        OftSpec {
            settings: OftSettings {
                num_actions_chunk: chunk,
                num_images_in_input: images,
                action_normalization: ActionNormalization::BoundsQ99,
            },
            patches_per_image: 256,
            action_dim: 7,
            action_bounds: Bounds {
                low: vec![0.0; 7],
                high: vec![2.0; 7],
                mask: vec![true; 7],
            },
            proprio_bounds: proprio.map(bounds),
            unnorm_key: "libero".into(),
        }
    }

    #[test]
    fn the_layout_counts_every_camera_the_proprio_token_and_the_placeholders() {
        // OFT fixture case 1: two cameras, proprio, a chunk of 8 and 40 prompt ids.
        let layout = spec(2, 8, Some(8)).layout(40);
        assert_eq!(
            (layout.patches, layout.prompt_tokens, layout.placeholders),
            (513, 39, 56)
        );
        let layout = spec(1, 5, None).layout(40);
        assert_eq!((layout.patches, layout.placeholders), (256, 35));
    }

    #[test]
    fn the_prompt_limit_leaves_room_for_everything_else_in_the_capacity() {
        let s = spec(2, 8, Some(8));
        // `<s>`, 513 patches, 56 placeholders and `</s>` besides the prompt after `<s>`.
        let fixed = s.layout(1).len();
        assert_eq!(fixed, 1 + 513 + 56 + 1);
        let capacity = fixed + 99;
        let limit = s.prompt_limit(capacity);
        assert_eq!(s.layout(limit).len(), capacity);
        assert_eq!(s.prompt_limit(fixed - 5), 0);
        // The capacity covers the longest prompt unless the model's context is shorter.
        assert_eq!(
            s.sequence_capacity(1 << 20),
            s.layout(MAX_TEXT_TOKENS + 1).len()
        );
        assert_eq!(s.sequence_capacity(600), 600);
    }

    #[test]
    fn inputs_that_do_not_fit_the_checkpoint_are_refused_naming_what_it_takes() {
        let s = spec(2, 8, Some(3));
        let err = |r: Result<(), PolicyError>| r.unwrap_err().to_string();
        assert!(err(s.check_inputs(1, Some(&[0.0; 3]))).contains("2 image(s)"));
        assert!(err(s.check_inputs(2, None)).contains("robot state"));
        assert!(err(s.check_inputs(2, Some(&[0.0; 2]))).contains("3 values, got 2"));
        assert!(err(s.check_inputs(2, Some(&[0.0, f64::NAN, 0.0]))).contains("finite"));
        assert!(s.check_inputs(2, Some(&[0.0; 3])).is_ok());
        let without = spec(1, 8, None);
        assert!(err(without.check_inputs(1, Some(&[0.0]))).contains("no proprio projector"));
        assert!(without.check_inputs(1, None).is_ok());
        assert_eq!(without.normalize_proprio(Some(&[0.5])), None);
        // Within the bounds ±1 (span 2 + 1e-8), outside them clipped.
        let normalized = s.normalize_proprio(Some(&[0.5, 3.0, -3.0])).unwrap();
        assert!((normalized[0] - 0.5).abs() < 1e-8, "{normalized:?}");
        assert_eq!(normalized[1..], [1.0, -1.0]);
    }

    #[test]
    fn the_chunk_is_unnormalised_row_by_row_and_refused_when_not_finite_or_short() {
        let s = spec(1, 2, None);
        let mut out = vec![0.0f32; 14];
        out[7] = 1.0;
        let (normalized, actions) = s.chunk(&out, "cuda").unwrap();
        assert_eq!(normalized.len(), 2);
        assert_eq!(normalized[1][0], 1.0);
        // 0.5 (a + 1) (hi − lo + 1e-8) + lo with lo 0, hi 2.
        assert!((actions[0][0] - (1.0 + 1e-8 * 0.5)).abs() < 1e-12);
        assert!((actions[1][0] - (2.0 + 1e-8)).abs() < 1e-12);
        out[3] = f32::NAN;
        let e = s.chunk(&out, "cuda").unwrap_err().to_string();
        assert!(e.contains("cuda") && e.contains("not finite"), "{e}");
        let e = s.chunk(&out[..7], "cuda").unwrap_err().to_string();
        assert!(e.contains("7 values") && e.contains("14"), "{e}");
    }
}
