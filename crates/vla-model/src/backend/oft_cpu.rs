//! OpenVLA-OFT on the CPU backend: every camera through both encoders, the projector, the
//! proprio token, one bidirectional pass of the language model and the L1 action head, for a
//! chunk of continuous actions (`crate::model::oft` has the sequence OFT builds).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::model::llama::LlamaState;
use crate::model::oft::{L1ActionHead, ProprioProjector, SequenceLayout, STOP_TOKEN_ID};
use crate::model::openvla::OpenVla;
use crate::model::quant_load::apply_formats;
use crate::model::ModelError;
use crate::policy::{PolicyError, PolicyOptions, StageTimings};
use crate::preprocess::RgbImage;

use super::oft::{read_files_and_settings, statistics, OftChunk, OftPolicy, OftRunner, OftSpec};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
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
    spec: OftSpec,
    head: L1ActionHead,
    proprio: Option<ProprioProjector>,
    state: LlamaState,
}

impl OftCpuRunner {
    /// Loads the Hugging Face folder, the `.pt` heads beside it, `vla_rt_model.json`'s OFT
    /// keys and the statistics (`dataset_statistics.json`, else `config.json`'s `norm_stats`).
    pub fn load(dir: &Path, options: &PolicyOptions) -> Result<Self, ModelError> {
        let (files, settings) = read_files_and_settings(dir, &options.oft)?;
        let model = OpenVla::load(dir)?;
        let hidden = model.llama().config().hidden_size;
        let head = L1ActionHead::load(&files.action_head, hidden)?;
        let proprio = files
            .proprio_projector
            .as_deref()
            .map(|path| ProprioProjector::load(path, hidden))
            .transpose()?;
        let spec = OftSpec::load(
            dir,
            &files,
            settings,
            &statistics(dir, &model.config().norm_stats)?,
            model.num_patches(),
            head.action_dim(),
            proprio.as_ref().map(ProprioProjector::proprio_dim),
            options,
        )?;
        Self::from_parts(model, spec, head, proprio, options)
    }

    /// Assembles a runner from loaded (or, for benchmarks, built) parts, converting the
    /// language model to the weight formats in `options`.
    pub fn from_parts(
        mut model: OpenVla,
        spec: OftSpec,
        head: L1ActionHead,
        proprio: Option<ProprioProjector>,
        options: &PolicyOptions,
    ) -> Result<Self, ModelError> {
        apply_formats(&mut model, options)?;
        let capacity = spec.sequence_capacity(model.config().llm_max_length);
        let state = LlamaState::new(model.llama().config(), capacity, capacity);
        Ok(Self {
            model,
            spec,
            head,
            proprio,
            state,
        })
    }

    pub fn model(&self) -> &OpenVla {
        &self.model
    }

    pub fn spec(&self) -> &OftSpec {
        &self.spec
    }

    fn layout(&self, prompt_ids: usize) -> SequenceLayout {
        self.spec.layout(prompt_ids)
    }

    /// The prompt's ids (`<s>` … `▁`), refused when the whole sequence would not fit.
    pub fn prompt_ids(&self, instruction: &str) -> Result<Vec<u32>, PolicyError> {
        self.spec
            .prompt_ids(self.model.tokenizer(), instruction, self.state.capacity())
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
        self.spec.check_inputs(pixel_values.len(), proprio)?;
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
        let proprio_normalized = self.spec.normalize_proprio(proprio);
        let proprio_token = match (&self.proprio, &proprio_normalized) {
            (Some(projector), Some(normalized)) => {
                let fed: Vec<f32> = normalized.iter().map(|&v| v as f32).collect();
                Some(projector.forward(&fed)?)
            }
            _ => None,
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
        let out = self.head.forward(&head_input)?;
        let (normalized, actions) = self.spec.chunk(&out, "cpu")?;
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

impl OftRunner for OftCpuRunner {
    const BACKEND: &'static str = "cpu";

    fn spec(&self) -> &OftSpec {
        &self.spec
    }

    fn pixel_values_len(&self) -> usize {
        self.model.pixel_values_len()
    }

    fn prompt_ids(&self, instruction: &str) -> Result<Vec<u32>, PolicyError> {
        Self::prompt_ids(self, instruction)
    }

    fn predict_chunk(
        &mut self,
        pixel_values: &[&[f32]],
        instruction: &str,
        proprio: Option<&[f64]>,
    ) -> Result<OftChunk, PolicyError> {
        let pass = self.run_pixels(pixel_values, instruction, proprio)?;
        Ok(OftChunk {
            normalized: pass.normalized,
            actions: pass.actions,
            timings: pass.timings,
        })
    }
}

/// [`OftCpuRunner`] with the checkpoint's image preprocessing: a
/// [`Policy`](crate::policy::Policy) whose prediction is a chunk.
pub type OftCpuPolicy = OftPolicy<OftCpuRunner>;

impl OftPolicy<OftCpuRunner> {
    pub fn load(dir: &Path, options: &PolicyOptions) -> Result<Self, PolicyError> {
        Self::new(OftCpuRunner::load(dir, options)?, dir)
    }

    /// The whole pass from camera images, with every stage's output.
    pub fn run(
        &mut self,
        images: &[&RgbImage],
        instruction: &str,
        proprio: Option<&[f64]>,
    ) -> Result<OftPass, PolicyError> {
        let start = Instant::now();
        let preprocess_ms = self.preprocess(images, instruction)?;
        let (runner, pixels) = self.runner_and_pixels();
        let mut pass = runner.run_pixels(&pixels, instruction, proprio)?;
        pass.timings.preprocess_ms = preprocess_ms;
        pass.timings.total_ms = ms(start.elapsed());
        Ok(pass)
    }
}
