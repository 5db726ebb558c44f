//! [`CudaModelRunner`]: the whole model on the device from `pixel_values` to token ids, and
//! [`CudaPolicy`]: CPU preprocessing + the runner behind [`Policy`](crate::policy::Policy).

use std::path::Path;
use std::time::{Duration, Instant};

use cudarc::driver::PinnedHostSlice;

use super::device::{Gpu, Lane};
use super::llama::DeviceLlama;
use super::vision::{DeviceProjector, DeviceVit, ExternalEncoders, VisionMode, VisionPath};
use super::weights::{CheckpointWeights, DecodeFormat, WeightSource};
use super::CudaError;
use crate::backend::{ImagePolicy, PixelRunner};
use crate::model::action::{resolve_unnorm_key, ActionDecoder};
use crate::model::checkpoint::Checkpoint;
use crate::model::config::{
    timm_num_heads, OpenVlaConfig, RuntimeModelConfig, RUNTIME_MODEL_CONFIG_FILE,
};
use crate::model::llama::LlamaConfig;
use crate::model::openvla::{CONFIG_FILE, MAX_TEXT_TOKENS, TOKENIZER_FILE};
use crate::model::prompt::PromptTokenizer;
use crate::model::quant_file::QuantizedFile;
use crate::model::vit::VitConfig;
use crate::model::ModelError;
use crate::policy::{
    PolicyError, PolicyOptions, Prediction, ProjectorFormat, Quantization, StageTimings,
};

/// Featurizer names under `vision_backbone`, in `pixel_values` channel order.
const FEATURIZER_NAMES: [&str; 2] = ["featurizer", "fused_featurizer"];

/// Everything that fixes the device model's shapes.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// `(checkpoint prefix, config, pos_embed covers the prefix tokens)` per featurizer.
    pub vits: Vec<(String, VitConfig, bool)>,
    pub projector_hidden: usize,
    pub llama: LlamaConfig,
    /// KV cache positions.
    pub capacity: usize,
}

impl ModelSpec {
    /// Reads the shapes from a checkpoint the way the CPU model does (head counts from
    /// `vla_rt_model.json` or the timm architecture).
    pub fn from_checkpoint(
        dir: &Path,
        config: &OpenVlaConfig,
        runtime: &RuntimeModelConfig,
        ckpt: &Checkpoint,
    ) -> Result<Self, ModelError> {
        let count = if config.use_fused_vision_backbone {
            2
        } else {
            1
        };
        let mut vits = Vec::with_capacity(count);
        for (i, name) in FEATURIZER_NAMES[..count].iter().enumerate() {
            let prefix = format!("vision_backbone.{name}");
            let patch_name = format!("{prefix}.patch_embed.proj.weight");
            let embed_dim = ckpt.shape(&patch_name)?.first().copied().unwrap_or(0);
            let timm_id = config.timm_model_ids.get(i).map(String::as_str);
            let heads = runtime
                .featurizers
                .get(*name)
                .and_then(|f| f.num_heads)
                .or_else(|| timm_id.and_then(|id| timm_num_heads(id, embed_dim)))
                .ok_or_else(|| ModelError::Config {
                    path: dir.join(RUNTIME_MODEL_CONFIG_FILE).display().to_string(),
                    key: format!("{name}.num_heads"),
                    message: format!(
                        "the head count of {prefix} (embed width {embed_dim}) is not in the \
                         checkpoint; add it, e.g. {{\"{name}\": {{\"num_heads\": N}}}}"
                    ),
                })?;
            let vit = VitConfig::from_checkpoint(ckpt, &prefix, config.image_size(), heads)?;
            let covers = match ckpt.shape(&format!("{prefix}.pos_embed"))? {
                [1, n, _] => *n != vit.num_patches(),
                _ => false,
            };
            vits.push((prefix, vit, covers));
        }
        let (projector_hidden, _) = ckpt.matrix_shape("projector.fc1.weight")?;
        let patches = vits[0].1.num_patches();
        Ok(Self {
            vits,
            projector_hidden,
            llama: LlamaConfig::from_openvla(config),
            capacity: (1 + patches + MAX_TEXT_TOKENS).min(config.llm_max_length),
        })
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The device model: vision path (graph), language model (decode graph), token ids out.
pub struct CudaModelRunner {
    vision: VisionPath,
    llama: DeviceLlama,
    tokenizer: PromptTokenizer,
    decoder: ActionDecoder,
    unnorm_key: String,
    format: DecodeFormat,
    /// The longest prompt whose prefill and decode fit the KV cache.
    max_prompt_tokens: usize,
    /// `[6, S, S]` staging buffer for the upload.
    pinned: PinnedHostSlice<f32>,
    /// Dropped last: every buffer above frees into its context.
    gpu: Gpu,
}

impl std::fmt::Debug for CudaModelRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaModelRunner")
            .field("gpu", &self.gpu)
            .field("format", &self.format)
            .finish()
    }
}

/// The decode weight format for `--quantization`.
pub fn decode_format(q: Quantization) -> DecodeFormat {
    match q {
        Quantization::None => DecodeFormat::F16,
        Quantization::Int8 => DecodeFormat::Int8,
        Quantization::Int4 => DecodeFormat::Int4,
    }
}

impl CudaModelRunner {
    /// Opens the GPU and loads the checkpoint folder onto it.
    pub fn load(model_dir: &Path, options: &PolicyOptions) -> Result<Self, CudaError> {
        Self::load_prepared(model_dir, options, |_, _| Ok(())).map(|(runner, ())| runner)
    }

    /// [`load`](Self::load), with `prepare` adjusting the model's shapes and config once they
    /// are read from the folder and before anything is built on the device; what `prepare`
    /// returns comes back beside the runner.
    pub(crate) fn load_prepared<T>(
        model_dir: &Path,
        options: &PolicyOptions,
        prepare: impl FnOnce(&mut ModelSpec, &mut OpenVlaConfig) -> Result<T, CudaError>,
    ) -> Result<(Self, T), CudaError> {
        if !model_dir.is_dir() {
            return Err(ModelError::File {
                path: model_dir.display().to_string(),
                message: "model folder does not exist".into(),
            }
            .into());
        }
        // The GPU first: a machine without a driver gets that error whatever the folder holds.
        let gpu = Gpu::open()?;
        let mut config = OpenVlaConfig::from_file(&model_dir.join(CONFIG_FILE))?;
        let tokenizer = PromptTokenizer::from_file(&model_dir.join(TOKENIZER_FILE))?;
        let runtime = RuntimeModelConfig::from_dir(model_dir)?;
        let ckpt = Checkpoint::open_dir(model_dir)?;
        let mut spec = ModelSpec::from_checkpoint(model_dir, &config, &runtime, &ckpt)?;
        let prepared = prepare(&mut spec, &mut config)?;
        let quantized = options
            .quantized_weights
            .as_ref()
            .map(|path| QuantizedFile::open_for(path, model_dir, options.quantization))
            .transpose()?;
        let mut src = CheckpointWeights {
            ckpt: &ckpt,
            quantized: quantized.as_ref(),
        };
        let runner = Self::build(gpu, &mut src, &spec, &config, tokenizer, options, true)?;
        Ok((runner, prepared))
    }

    /// Builds the device model from any weight source. `replace_f16` makes the prefill use
    /// the dequantized weights of the selected format.
    pub fn build(
        gpu: Gpu,
        src: &mut dyn WeightSource,
        spec: &ModelSpec,
        config: &OpenVlaConfig,
        tokenizer: PromptTokenizer,
        options: &PolicyOptions,
        replace_f16: bool,
    ) -> Result<Self, CudaError> {
        Self::build_with_encoders(
            gpu,
            src,
            spec,
            config,
            tokenizer,
            options,
            replace_f16,
            None,
        )
    }

    /// [`build`](Self::build), with `encoders` (when given) running the ViTs in place of this
    /// backend's kernels; their weights are then never loaded.
    #[allow(clippy::too_many_arguments)]
    pub fn build_with_encoders(
        gpu: Gpu,
        src: &mut dyn WeightSource,
        spec: &ModelSpec,
        config: &OpenVlaConfig,
        tokenizer: PromptTokenizer,
        options: &PolicyOptions,
        replace_f16: bool,
        encoders: Option<Box<dyn ExternalEncoders>>,
    ) -> Result<Self, CudaError> {
        let unnorm_key = resolve_unnorm_key(&config.norm_stats, options.unnorm_key.as_deref())?;
        let stats = &config.norm_stats[&unnorm_key].action;
        let decoder = ActionDecoder::new(config.text_vocab_size(), config.n_action_bins, stats);
        let lanes = [Lane::A, Lane::B];
        let mut vits = Vec::with_capacity(spec.vits.len());
        if encoders.is_none() {
            for (i, (prefix, vit, covers)) in spec.vits.iter().enumerate() {
                vits.push(DeviceVit::load(
                    &gpu,
                    src,
                    prefix,
                    vit.clone(),
                    *covers,
                    lanes[i % 2],
                )?);
            }
        }
        let patches = spec.vits[0].1.num_patches();
        if let Some((p, v, _)) = spec
            .vits
            .iter()
            .find(|(_, v, _)| v.num_patches() != patches)
        {
            return Err(CudaError::Shape {
                op: "patch concat",
                message: format!(
                    "{p} gives {} patches, the first featurizer {patches}",
                    v.num_patches()
                ),
            });
        }
        let vision_dim: usize = spec.vits.iter().map(|(_, v, _)| v.embed_dim).sum();
        let mut projector = DeviceProjector::load(
            &gpu,
            src,
            "projector",
            vision_dim,
            spec.projector_hidden,
            spec.llama.hidden_size,
            patches,
        )?;
        if options.projector == ProjectorFormat::Int8 {
            projector.use_int8(&gpu, src, "projector", options.projector_scales.as_ref())?;
        }
        let vision = match encoders {
            Some(encoders) => {
                let configs = spec.vits.iter().map(|(_, v, _)| v.clone()).collect();
                VisionPath::with_external(&gpu, configs, projector, encoders)?
            }
            None => VisionPath::new(&gpu, vits, projector)?,
        };
        let mut llama = DeviceLlama::load(
            &gpu,
            src,
            "language_model",
            spec.llama.clone(),
            spec.capacity,
        )?;
        let format = decode_format(options.quantization);
        llama.quantize(&gpu, Some(src), format, replace_f16)?;
        let pinned_len = vision.pixels.len();
        // SAFETY: the pinned buffer is only read after `write_pixels` filled all of it.
        let pinned = unsafe { gpu.context().alloc_pinned::<f32>(pinned_len) }
            .map_err(CudaError::driver("cuMemHostAlloc"))?;
        let max_prompt_tokens = spec
            .capacity
            .saturating_sub(patches)
            .saturating_sub(decoder.action_dim().saturating_sub(1));
        Ok(Self {
            vision,
            llama,
            tokenizer,
            decoder,
            unnorm_key,
            format,
            max_prompt_tokens,
            pinned,
            gpu,
        })
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    pub fn vision(&self) -> &VisionPath {
        &self.vision
    }

    pub fn vision_mut(&mut self) -> (&Gpu, &mut VisionPath) {
        (&self.gpu, &mut self.vision)
    }

    pub fn llama_mut(&mut self) -> (&Gpu, &mut DeviceLlama, &VisionPath) {
        (&self.gpu, &mut self.llama, &self.vision)
    }

    /// Switches the vision benchmark variants: the attention scores as FP16 tensor-core
    /// GEMMs over f16 halves of q and k (`VisionPath::set_split_scores`) and every GEMM
    /// through cuBLASLt with timed algorithms (`Gpu::set_tuned_gemms`; the vision shapes are
    /// tuned here by one eager pass, so that the graph can be captured).
    pub fn set_vision_variants(
        &mut self,
        split_scores: bool,
        tuned_gemms: bool,
    ) -> Result<(), CudaError> {
        self.gpu.set_tuned_gemms(tuned_gemms)?;
        self.vision.set_split_scores(split_scores);
        if tuned_gemms {
            self.vision.queue(&self.gpu, VisionMode::TwoStreams)?;
            self.gpu.sync(Lane::A)?;
            self.gpu.sync(Lane::B)?;
        }
        Ok(())
    }

    pub fn unnorm_key(&self) -> &str {
        &self.unnorm_key
    }

    pub fn llama(&self) -> &DeviceLlama {
        &self.llama
    }

    pub fn tokenizer(&self) -> &PromptTokenizer {
        &self.tokenizer
    }

    pub fn action_dim(&self) -> usize {
        self.decoder.action_dim()
    }

    pub fn format(&self) -> DecodeFormat {
        self.format
    }

    pub fn prompt_ids(&self, instruction: &str) -> Result<Vec<u32>, PolicyError> {
        if instruction.trim().is_empty() {
            return Err(PolicyError::EmptyInstruction);
        }
        Ok(self
            .tokenizer
            .encode_instruction_within(instruction, self.max_prompt_tokens)?)
    }

    /// Stages `pixel_values` in pinned memory and queues the upload on lane A.
    pub fn upload_pixels(&mut self, pixel_values: &[f32]) -> Result<(), CudaError> {
        self.gpu.bind()?;
        if pixel_values.len() != self.pinned.len() {
            return Err(CudaError::Shape {
                op: "pixel values",
                message: format!(
                    "got {} values, the model takes {}",
                    pixel_values.len(),
                    self.pinned.len()
                ),
            });
        }
        // The previous upload from this staging buffer must have finished.
        self.gpu.sync(Lane::A)?;
        let dst = self
            .pinned
            .as_mut_ptr()
            .map_err(CudaError::driver("pinned buffer"))?;
        // SAFETY: `dst` points at `pinned.len()` f32 of page-locked host memory owned by
        // `self.pinned`, equal to `pixel_values.len()` (checked above), and no copy reads it
        // (lane A was synchronised).
        unsafe { std::ptr::copy_nonoverlapping(pixel_values.as_ptr(), dst, pixel_values.len()) };
        self.gpu
            .write_async_pinned(Lane::A, &self.vision.pixels, &self.pinned)
    }

    /// Runs the vision graph on uploaded pixels and waits for it.
    pub fn run_vision(&mut self) -> Result<(), CudaError> {
        self.vision.replay(&self.gpu)?;
        self.gpu.sync(Lane::A)
    }

    /// Each featurizer's patch features `[patches, D_i]` (parity checks).
    pub fn vision_features(&mut self, pixel_values: &[f32]) -> Result<Vec<Vec<f32>>, CudaError> {
        self.upload_pixels(pixel_values)?;
        self.run_vision()?;
        let mut out = Vec::new();
        for (i, c) in self.vision.configs().iter().enumerate() {
            let (buf, first_row) = self.vision.features(i);
            let mut f = vec![0.0f32; c.num_patches() * c.embed_dim];
            self.gpu
                .read(Lane::A, buf, first_row * c.embed_dim, &mut f)?;
            out.push(f);
        }
        Ok(out)
    }

    /// The projector output `[patches, hidden]` (parity checks).
    pub fn projector_output(&mut self, pixel_values: &[f32]) -> Result<Vec<f32>, CudaError> {
        self.upload_pixels(pixel_values)?;
        self.run_vision()?;
        let out = self.vision.projector.output();
        let mut host = vec![0.0f32; out.len()];
        self.gpu.read(Lane::A, out, 0, &mut host)?;
        Ok(host)
    }

    /// Logits at the last prefill position (parity checks).
    pub fn step0_logits(
        &mut self,
        pixel_values: &[f32],
        instruction: &str,
    ) -> Result<Vec<f32>, PolicyError> {
        let ids = self.prompt_ids(instruction)?;
        self.upload_pixels(pixel_values)?;
        self.run_vision()?;
        self.llama
            .prefill(&self.gpu, self.vision.projector.output(), &ids, self.format)?;
        Ok(self.llama.read_logits(&self.gpu)?)
    }

    /// The whole policy from `pixel_values`; `timings.preprocess_ms` is 0.
    pub fn predict_pixels(
        &mut self,
        pixel_values: &[f32],
        instruction: &str,
    ) -> Result<Prediction, PolicyError> {
        let start = Instant::now();
        let ids = self.prompt_ids(instruction)?;
        self.upload_pixels(pixel_values)?;
        self.run_vision()?;
        let vision = start.elapsed();
        let t = Instant::now();
        self.llama
            .prefill(&self.gpu, self.vision.projector.output(), &ids, self.format)?;
        self.gpu.sync(Lane::A)?;
        let prefill = t.elapsed();
        let t = Instant::now();
        let count = self.decoder.action_dim();
        for _ in 1..count {
            self.llama.step(&self.gpu, self.format, true)?;
        }
        let tokens = self.llama.read_tokens(&self.gpu, count)?;
        let decode = t.elapsed();
        let (normalized, action) = self.decoder.decode(&tokens);
        Ok(Prediction {
            tokens,
            normalized,
            actions: vec![action.clone()],
            action,
            timings: StageTimings {
                preprocess_ms: 0.0,
                // The projector runs inside the vision graph; its share is timed by the bench.
                vision_ms: ms(vision),
                projector_ms: 0.0,
                prefill_ms: ms(prefill),
                decode_ms: ms(decode),
                total_ms: ms(start.elapsed()),
            },
        })
    }
}

/// The CUDA policy: [`CudaModelRunner`] behind the (CPU) preprocessing.
pub type CudaPolicy = ImagePolicy<CudaModelRunner>;

impl CudaPolicy {
    pub fn load(model_dir: &Path, options: &PolicyOptions) -> Result<Self, PolicyError> {
        let runner = CudaModelRunner::load(model_dir, options)?;
        Self::with_checkpoint_preprocessing(runner, model_dir)
    }
}

impl PixelRunner for CudaModelRunner {
    const BACKEND: &'static str = "cuda";

    fn pixel_values_len(&self) -> usize {
        self.vision.pixels.len()
    }

    fn action_dim(&self) -> usize {
        CudaModelRunner::action_dim(self)
    }

    fn predict_pixels(
        &mut self,
        pixel_values: &[f32],
        instruction: &str,
    ) -> Result<Prediction, PolicyError> {
        CudaModelRunner::predict_pixels(self, pixel_values, instruction)
    }

    fn check_instruction(&self, instruction: &str) -> Result<(), PolicyError> {
        self.prompt_ids(instruction).map(|_| ())
    }
}
