//! OpenVLA-OFT on the CUDA backend (ARCHITECTURE.md §17): every camera through the vision
//! graph, its image tokens copied side by side into one prefix buffer with the proprio token
//! after them, one language-model pass with full bidirectional attention
//! ([`super::llama::DeviceLlama::forward_bidirectional`]), and the L1 regression head on the placeholders'
//! final hidden states, all on the device; only the chunk (`[chunk, 7]` f32) comes back.
//!
//! The CPU side (statistics, layout, prompt limit, input checks, proprio normalisation,
//! un-normalisation, preprocessing) is [`crate::backend::oft`], shared with the CPU runner.
//!
//! Must never: allocate device memory per call after load, or read intermediate tensors
//! back on the prediction path ([`OftCudaRunner::read_stages`] does, for parity checks only).

use std::path::Path;
use std::time::{Duration, Instant};

use half::f16;

use super::device::{int, Arg, DeviceBuffer, DeviceMatrix, Dt, Gpu, Lane};
use super::llama::{bidirectional_capacity, bidirectional_positions};
use super::policy::CudaModelRunner;
use super::vision::{queue_add_bias, queue_bias_act};
use super::weights::{CheckpointWeights, WeightSource};
use super::CudaError;
use crate::backend::oft::{
    read_files_and_settings, statistics, OftChunk, OftPolicy, OftRunner, OftSpec,
};
use crate::model::oft::{
    proprio_projector_dim, read_action_head, read_proprio_projector, L1HeadShape, LAYER_NORM_EPS,
    STOP_TOKEN_ID,
};
use crate::model::ModelError;
use crate::policy::{PolicyError, PolicyOptions, StageTimings};

/// Threads per block of the row-wise norms (the vision path's LayerNorm launch).
const NORM_THREADS: u32 = 256;

/// The id the device input uses for a placeholder row: `assemble_prefill` zeroes a row of a
/// negative id, as OFT zeroes the placeholders' embeddings.
const ZERO_ROW_ID: i32 = -1;

/// A LayerNorm's affine parameters on the device.
#[derive(Debug)]
struct DeviceLayerNorm {
    weight: DeviceBuffer<f32>,
    bias: DeviceBuffer<f32>,
}

impl DeviceLayerNorm {
    fn load(
        gpu: &Gpu,
        src: &mut dyn WeightSource,
        prefix: &str,
        width: usize,
    ) -> Result<Self, CudaError> {
        Ok(Self {
            weight: src.tensor_f32(gpu, &format!("{prefix}.weight"), &[width], 1.0, 0.1)?,
            bias: src.tensor_f32(gpu, &format!("{prefix}.bias"), &[width], 0.0, 0.02)?,
        })
    }

    /// `out[rows, width]` f16 = LayerNorm of the f32 rows at `x` (left unchanged).
    fn queue(
        &self,
        gpu: &Gpu,
        rows: usize,
        x: u64,
        out: u64,
        width: usize,
    ) -> Result<(), CudaError> {
        gpu.launch(
            Lane::A,
            &gpu.kernels.layer_norm_f16,
            grid_rows(rows)?,
            NORM_THREADS,
            0,
            &[
                Arg::Ptr(x),
                Arg::Ptr(0),
                Arg::Ptr(self.weight.ptr()),
                Arg::Ptr(self.bias.ptr()),
                Arg::Ptr(out),
                int("action head layer norm", width)?,
                Arg::F32(LAYER_NORM_EPS as f32),
            ],
        )
    }
}

/// A linear layer with its bias: FP16 weights (with their FP16 residual for an f32
/// checkpoint) and an f32 bias.
#[derive(Debug)]
struct DeviceAffine {
    weight: DeviceMatrix,
    bias: DeviceBuffer<f32>,
    out_features: usize,
    in_features: usize,
}

impl DeviceAffine {
    fn load(
        gpu: &Gpu,
        src: &mut dyn WeightSource,
        name: &str,
        out_features: usize,
        in_features: usize,
    ) -> Result<Self, CudaError> {
        Ok(Self {
            weight: src.matrix_f16(
                gpu,
                &[(name.to_string(), out_features)],
                in_features,
                1.0 / (in_features as f32).sqrt(),
            )?,
            bias: src.tensor_f32(gpu, &format!("{name}.bias"), &[out_features], 0.0, 0.02)?,
            out_features,
            in_features,
        })
    }

    /// `out[rows, out] = x[rows, in] · Wᵀ` in f32, without the bias (the caller's epilogue
    /// adds it).
    fn queue_product(&self, gpu: &Gpu, rows: usize, x: u64, out: u64) -> Result<(), CudaError> {
        gpu.linear_matrix(
            Lane::A,
            rows,
            self.out_features,
            self.in_features,
            x,
            &self.weight,
            out,
            Dt::F32,
            false,
        )
    }
}

fn grid_rows(rows: usize) -> Result<u32, CudaError> {
    u32::try_from(rows.max(1)).map_err(|_| CudaError::Shape {
        op: "row-wise kernel",
        message: format!("{rows} rows do not fit a grid"),
    })
}

/// One element-wise launch of an OFT epilogue over `total` values of rows `width` wide.
fn queue_rows_kernel(
    gpu: &Gpu,
    kernel: &cudarc::driver::CudaFunction,
    pointers: &[u64],
    total: usize,
    width: usize,
) -> Result<(), CudaError> {
    let mut args: Vec<Arg> = pointers.iter().map(|&p| Arg::Ptr(p)).collect();
    args.push(int("action head", total)?);
    args.push(int("action head", width)?);
    gpu.launch_elementwise(Lane::A, kernel, total, &args)
}

/// OFT's L1 regression head (`model::oft::L1ActionHead`) on the device: LayerNorm → fc1 →
/// ReLU → residual blocks `x + ReLU(Linear(LN(x)))` → LayerNorm → fc2, an f32 residual
/// stream, FP16 GEMMs with f32 accumulation. At OpenVLA-7B shapes fc1 alone is
/// 4096 × 28672, which the CPU would take tens of milliseconds per chunk to read.
#[derive(Debug)]
pub struct DeviceActionHead {
    shape: L1HeadShape,
    /// Chunk steps the scratch buffers hold.
    steps: usize,
    layer_norm1: DeviceLayerNorm,
    fc1: DeviceAffine,
    blocks: Vec<(DeviceLayerNorm, DeviceAffine)>,
    layer_norm2: DeviceLayerNorm,
    fc2: DeviceAffine,
    /// `[steps, input]` f32: the placeholders' final hidden states, each step's
    /// `action_dim` rows side by side (the pass writes them here).
    input: DeviceBuffer<f32>,
    /// `[steps, input]` f16
    input_normed: DeviceBuffer<f16>,
    /// `[steps, hidden]` f32, the residual stream.
    residual: DeviceBuffer<f32>,
    /// `[steps, hidden]` f32, a residual block's product.
    branch: DeviceBuffer<f32>,
    /// `[steps, hidden]` f16
    normed: DeviceBuffer<f16>,
    /// `[steps, action_dim]` f32, the normalised chunk.
    out: DeviceBuffer<f32>,
}

impl DeviceActionHead {
    /// Loads `model.{layer_norm1, fc1, mlp_resnet_blocks.N.ffn.{0,1}, layer_norm2, fc2}` of
    /// `shape` from `src`, with scratch for chunks of `steps`.
    pub fn load(
        gpu: &Gpu,
        src: &mut dyn WeightSource,
        shape: L1HeadShape,
        steps: usize,
    ) -> Result<Self, CudaError> {
        let L1HeadShape {
            input,
            hidden,
            action_dim,
            blocks,
        } = shape;
        let blocks = (0..blocks)
            .map(|block| {
                let prefix = format!("model.mlp_resnet_blocks.{block}.ffn");
                Ok((
                    DeviceLayerNorm::load(gpu, src, &format!("{prefix}.0"), hidden)?,
                    DeviceAffine::load(gpu, src, &format!("{prefix}.1"), hidden, hidden)?,
                ))
            })
            .collect::<Result<Vec<_>, CudaError>>()?;
        Ok(Self {
            layer_norm1: DeviceLayerNorm::load(gpu, src, "model.layer_norm1", input)?,
            fc1: DeviceAffine::load(gpu, src, "model.fc1", hidden, input)?,
            blocks,
            layer_norm2: DeviceLayerNorm::load(gpu, src, "model.layer_norm2", hidden)?,
            fc2: DeviceAffine::load(gpu, src, "model.fc2", action_dim, hidden)?,
            input: gpu.alloc(steps * input)?,
            input_normed: gpu.alloc(steps * input)?,
            residual: gpu.alloc(steps * hidden)?,
            branch: gpu.alloc(steps * hidden)?,
            normed: gpu.alloc(steps * hidden)?,
            out: gpu.alloc(steps * action_dim)?,
            shape,
            steps,
        })
    }

    pub fn shape(&self) -> L1HeadShape {
        self.shape
    }

    /// Where the pass writes the hidden states the head reads (`[steps · action_dim, llm_dim]`
    /// = `[steps, input]`).
    pub fn input(&self) -> &DeviceBuffer<f32> {
        &self.input
    }

    /// Queues the head over `steps` chunk steps of [`DeviceActionHead::input`] on lane A.
    pub fn queue(&self, gpu: &Gpu, steps: usize) -> Result<(), CudaError> {
        if steps == 0 || steps > self.steps {
            return Err(CudaError::Shape {
                op: "action head",
                message: format!(
                    "{steps} chunk steps, the head's buffers hold 1..={}",
                    self.steps
                ),
            });
        }
        let L1HeadShape {
            input,
            hidden,
            action_dim,
            ..
        } = self.shape;
        let k = &gpu.kernels;
        self.layer_norm1
            .queue(gpu, steps, self.input.ptr(), self.input_normed.ptr(), input)?;
        self.fc1
            .queue_product(gpu, steps, self.input_normed.ptr(), self.residual.ptr())?;
        queue_rows_kernel(
            gpu,
            &k.bias_relu_f32,
            &[self.residual.ptr(), self.fc1.bias.ptr()],
            steps * hidden,
            hidden,
        )?;
        for (norm, linear) in &self.blocks {
            norm.queue(gpu, steps, self.residual.ptr(), self.normed.ptr(), hidden)?;
            linear.queue_product(gpu, steps, self.normed.ptr(), self.branch.ptr())?;
            queue_rows_kernel(
                gpu,
                &k.bias_relu_add_f32,
                &[self.branch.ptr(), linear.bias.ptr(), self.residual.ptr()],
                steps * hidden,
                hidden,
            )?;
        }
        self.layer_norm2
            .queue(gpu, steps, self.residual.ptr(), self.normed.ptr(), hidden)?;
        self.fc2
            .queue_product(gpu, steps, self.normed.ptr(), self.out.ptr())?;
        queue_add_bias(gpu, Lane::A, &self.out, &self.fc2.bias, steps, action_dim)
    }

    /// The normalised chunk of the latest [`DeviceActionHead::queue`] (`[steps, action_dim]`).
    pub fn read_output(&self, gpu: &Gpu, steps: usize) -> Result<Vec<f32>, CudaError> {
        let mut out = vec![0.0f32; steps * self.shape.action_dim];
        gpu.read(Lane::A, &self.out, 0, &mut out)?;
        Ok(out)
    }
}

/// OFT's proprio projector (`fc2(GELU(fc1(p̂)))`) on the device, writing the proprio token
/// straight into its row of the prefix buffer. fc2 is `llm_dim × llm_dim` (16.8 M weights at
/// OpenVLA-7B shapes), too much to read on the CPU at every call; fc1 reads a few values.
#[derive(Debug)]
pub struct DeviceProprioProjector {
    proprio_dim: usize,
    fc1: DeviceAffine,
    fc2: DeviceAffine,
    /// `[proprio_dim]` f16, the normalised state.
    state: DeviceBuffer<f16>,
    /// `[llm_dim]` f32 and f16, fc1's output before and after GELU.
    hidden_f32: DeviceBuffer<f32>,
    hidden_f16: DeviceBuffer<f16>,
}

impl DeviceProprioProjector {
    /// Loads `fc1` (`[llm_dim, proprio_dim]`) and `fc2` (`[llm_dim, llm_dim]`) with biases.
    pub fn load(
        gpu: &Gpu,
        src: &mut dyn WeightSource,
        proprio_dim: usize,
        llm_dim: usize,
    ) -> Result<Self, CudaError> {
        Ok(Self {
            proprio_dim,
            fc1: DeviceAffine::load(gpu, src, "fc1", llm_dim, proprio_dim)?,
            fc2: DeviceAffine::load(gpu, src, "fc2", llm_dim, llm_dim)?,
            state: gpu.alloc(proprio_dim)?,
            hidden_f32: gpu.alloc(llm_dim)?,
            hidden_f16: gpu.alloc(llm_dim)?,
        })
    }

    /// Uploads `normalized` (a synchronous copy) and queues the token into `row` of `prefix`.
    pub fn queue(
        &self,
        gpu: &Gpu,
        normalized: &[f64],
        prefix: &DeviceBuffer<f32>,
        row: usize,
    ) -> Result<(), CudaError> {
        let width = self.fc2.out_features;
        if normalized.len() != self.proprio_dim || (row + 1) * width > prefix.len() {
            return Err(CudaError::Shape {
                op: "proprio projector",
                message: format!(
                    "a state of {} values (takes {}) into row {row} of a prefix of {} values",
                    normalized.len(),
                    self.proprio_dim,
                    prefix.len()
                ),
            });
        }
        let state: Vec<f16> = normalized.iter().map(|&v| f16::from_f64(v)).collect();
        gpu.write(&self.state, 0, &state)?;
        self.fc1
            .queue_product(gpu, 1, self.state.ptr(), self.hidden_f32.ptr())?;
        queue_bias_act(
            gpu,
            Lane::A,
            &self.hidden_f32,
            &self.fc1.bias,
            &self.hidden_f16,
            1,
            width,
            true,
            false,
        )?;
        let token = prefix.at(row * width);
        self.fc2
            .queue_product(gpu, 1, self.hidden_f16.ptr(), token)?;
        gpu.launch_elementwise(
            Lane::A,
            &gpu.kernels.add_bias_f32,
            width,
            &[
                Arg::Ptr(token),
                Arg::Ptr(self.fc2.bias.ptr()),
                int("proprio bias", width)?,
                int("proprio bias", width)?,
            ],
        )
    }
}

/// The ids of OFT's pass after the prefix rows: the prompt (`<s>` … `▁`), `placeholders`
/// zero rows and `</s>`, into `out` (cleared first). An id beyond `i32` is an error.
pub fn sequence_ids(
    prompt: &[u32],
    placeholders: usize,
    out: &mut Vec<i32>,
) -> Result<(), CudaError> {
    out.clear();
    for &id in prompt {
        out.push(i32::try_from(id).map_err(|_| CudaError::Shape {
            op: "OFT input",
            message: format!("token id {id} does not fit a 32-bit id"),
        })?);
    }
    out.extend(std::iter::repeat_n(ZERO_ROW_ID, placeholders));
    out.push(STOP_TOKEN_ID as i32);
    Ok(())
}

/// Rows of the prefix buffer: every camera's image tokens, then the proprio token.
pub fn prefix_rows(spec: &OftSpec) -> usize {
    spec.layout(1).patches
}

/// What a pass computed besides the chunk, read back for parity checks.
#[derive(Debug, Clone, PartialEq)]
pub struct OftDeviceStages {
    /// `[images · patches, hidden]`
    pub image_tokens: Vec<f32>,
    /// `[hidden]`, for a checkpoint with a proprio projector.
    pub proprio_token: Option<Vec<f32>>,
    /// `[chunk · action_dim, hidden]`
    pub head_input: Vec<f32>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// An OpenVLA-OFT checkpoint on the GPU, ready to run from `pixel_values`.
pub struct OftCudaRunner {
    spec: OftSpec,
    head: DeviceActionHead,
    proprio: Option<DeviceProprioProjector>,
    /// `[images · patches + proprio, hidden]` f32: the rows between `<s>` and the prompt.
    prefix: DeviceBuffer<f32>,
    /// The pass's ids after the prefix, reused between calls.
    ids: Vec<i32>,
    /// Dropped last: it holds the GPU every buffer above frees into.
    model: CudaModelRunner,
}

impl std::fmt::Debug for OftCudaRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OftCudaRunner")
            .field("spec", &self.spec)
            .field("model", &self.model)
            .finish()
    }
}

impl OftCudaRunner {
    /// Opens the GPU and loads the checkpoint folder, its `.pt` heads, `vla_rt_model.json`'s
    /// OFT keys and the statistics onto it.
    pub fn load(dir: &Path, options: &PolicyOptions) -> Result<Self, CudaError> {
        let (model, (spec, head_shape, head_ckpt, proprio_ckpt)) =
            CudaModelRunner::load_prepared(dir, options, |model_spec, config| {
                let (files, settings) = read_files_and_settings(dir, &options.oft)?;
                let hidden = model_spec.llama.hidden_size;
                let head_ckpt = read_action_head(&files.action_head)?;
                let head_shape =
                    L1HeadShape::from_checkpoint(&head_ckpt, hidden, &files.action_head)?;
                let proprio_ckpt = match &files.proprio_projector {
                    Some(path) => {
                        let ckpt = read_proprio_projector(path)?;
                        let dim = proprio_projector_dim(&ckpt, hidden, path)?;
                        Some((ckpt, dim))
                    }
                    None => None,
                };
                let stats = statistics(dir, &config.norm_stats)?;
                let spec = OftSpec::load(
                    dir,
                    &files,
                    settings,
                    &stats,
                    model_spec.vits[0].1.num_patches(),
                    head_shape.action_dim,
                    proprio_ckpt.as_ref().map(|(_, dim)| *dim),
                    options,
                )?;
                model_spec.capacity = bidirectional_capacity(
                    spec.sequence_capacity(config.llm_max_length),
                    config.llm_max_length,
                );
                // The token path's action decoder, unused here, resolves the same key in the
                // same statistics as the chunk.
                config.norm_stats = stats;
                Ok((spec, head_shape, head_ckpt, proprio_ckpt))
            })?;
        let mut head_src = CheckpointWeights {
            ckpt: &head_ckpt,
            quantized: None,
        };
        let mut proprio_src = proprio_ckpt.as_ref().map(|(ckpt, _)| CheckpointWeights {
            ckpt,
            quantized: None,
        });
        Self::from_parts(
            model,
            spec,
            head_shape,
            &mut head_src,
            proprio_src.as_mut().map(|s| s as &mut dyn WeightSource),
        )
    }

    /// The chunk path around a loaded device model: the head of `head_shape` from
    /// `head_src`, the proprio projector from `proprio_src` when `spec` takes a state (random
    /// weights for benchmarks, or a checkpoint's).
    pub fn from_parts(
        model: CudaModelRunner,
        spec: OftSpec,
        head_shape: L1HeadShape,
        head_src: &mut dyn WeightSource,
        proprio_src: Option<&mut dyn WeightSource>,
    ) -> Result<Self, CudaError> {
        let hidden = model.llama().config().hidden_size;
        let patches = model.vision().projector.output().len() / hidden.max(1);
        check_parts(
            &spec,
            &head_shape,
            hidden,
            patches,
            bidirectional_positions(model.llama().capacity()),
        )?;
        let gpu = model.gpu();
        let head =
            DeviceActionHead::load(gpu, head_src, head_shape, spec.settings.num_actions_chunk)?;
        let proprio = match (spec.proprio_dim(), proprio_src) {
            (Some(dim), Some(src)) => Some(DeviceProprioProjector::load(gpu, src, dim, hidden)?),
            (None, None) => None,
            (dim, _) => {
                return Err(CudaError::Shape {
                    op: "proprio projector",
                    message: format!(
                        "the statistics take a robot state of {dim:?} values, and the \
                         projector's weights {} given",
                        if dim.is_some() { "were not" } else { "were" }
                    ),
                })
            }
        };
        let prefix = gpu.alloc(prefix_rows(&spec) * hidden)?;
        gpu.sync(Lane::A)?;
        Ok(Self {
            spec,
            head,
            proprio,
            prefix,
            ids: Vec::new(),
            model,
        })
    }

    pub fn spec(&self) -> &OftSpec {
        &self.spec
    }

    pub fn model(&self) -> &CudaModelRunner {
        &self.model
    }

    /// The prompt's ids (`<s>` … `▁`), refused when the whole sequence would not fit.
    pub fn prompt_ids(&self, instruction: &str) -> Result<Vec<u32>, PolicyError> {
        self.spec.prompt_ids(
            self.model.tokenizer(),
            instruction,
            bidirectional_positions(self.model.llama().capacity()),
        )
    }

    /// One chunk from each camera's `pixel_values` and the raw robot state.
    pub fn run_pixels(
        &mut self,
        pixel_values: &[&[f32]],
        instruction: &str,
        proprio: Option<&[f64]>,
    ) -> Result<OftChunk, PolicyError> {
        let start = Instant::now();
        self.spec.check_inputs(pixel_values.len(), proprio)?;
        let prompt = self.prompt_ids(instruction)?;
        let layout = self.spec.layout(prompt.len());
        sequence_ids(&prompt, layout.placeholders, &mut self.ids)?;
        let hidden = self.model.llama().config().hidden_size;

        // The proprio token first: its state upload synchronises the streams.
        if let (Some(projector), Some(normalized)) =
            (&self.proprio, self.spec.normalize_proprio(proprio))
        {
            let row = self.spec.settings.num_images_in_input * self.spec.patches_per_image;
            projector.queue(self.model.gpu(), &normalized, &self.prefix, row)?;
        }
        let camera_values = self.spec.patches_per_image * hidden;
        for (camera, pixels) in pixel_values.iter().enumerate() {
            // Waits for lane A, so the previous camera's copy out of the projector output
            // is done before the graph writes it again.
            self.model.upload_pixels(pixels)?;
            self.model.run_vision()?;
            // In bounds: `check_inputs` took one camera per image row block of the prefix,
            // and `check_parts` made the projector output one such block.
            let tokens = self.model.vision().projector.output();
            self.model.gpu().copy_d2d(
                Lane::A,
                self.prefix.at(camera * camera_values),
                tokens.ptr(),
                camera_values * std::mem::size_of::<f32>(),
            )?;
        }
        self.model.gpu().sync(Lane::A).map_err(PolicyError::from)?;
        let vision = start.elapsed();

        let t = Instant::now();
        let (gpu, llama, _) = self.model.llama_mut();
        llama.forward_bidirectional(
            gpu,
            &self.prefix,
            layout.patches,
            &self.ids,
            layout.head_rows(),
            self.head.input(),
        )?;
        gpu.sync(Lane::A)?;
        let pass = t.elapsed();

        let t = Instant::now();
        let steps = self.spec.settings.num_actions_chunk;
        self.head.queue(gpu, steps)?;
        let out = self.head.read_output(gpu, steps)?;
        let (normalized, actions) = self.spec.chunk(&out, "cuda")?;
        let head = t.elapsed();
        Ok(OftChunk {
            normalized,
            actions,
            timings: StageTimings {
                preprocess_ms: 0.0,
                // The projector runs inside the vision graph.
                vision_ms: ms(vision),
                projector_ms: 0.0,
                prefill_ms: ms(pass),
                decode_ms: ms(head),
                total_ms: ms(start.elapsed()),
            },
        })
    }

    /// The image tokens, proprio token and head input of the latest
    /// [`OftCudaRunner::run_pixels`], read back from the device (parity checks).
    pub fn read_stages(&self) -> Result<OftDeviceStages, CudaError> {
        let gpu = self.model.gpu();
        let hidden = self.model.llama().config().hidden_size;
        let images = self.spec.settings.num_images_in_input * self.spec.patches_per_image;
        let mut image_tokens = vec![0.0f32; images * hidden];
        gpu.read(Lane::A, &self.prefix, 0, &mut image_tokens)?;
        let proprio_token = match self.proprio {
            Some(_) => {
                let mut token = vec![0.0f32; hidden];
                gpu.read(Lane::A, &self.prefix, images * hidden, &mut token)?;
                Some(token)
            }
            None => None,
        };
        let rows = self.spec.layout(1).placeholders;
        let mut head_input = vec![0.0f32; rows * hidden];
        gpu.read(Lane::A, self.head.input(), 0, &mut head_input)?;
        Ok(OftDeviceStages {
            image_tokens,
            proprio_token,
            head_input,
        })
    }
}

/// Refuses parts that do not fit together: a head that does not read `hidden`-wide states,
/// camera rows that are not the projector's, or a sequence without a prompt that already
/// fills the language model's `capacity`.
pub fn check_parts(
    spec: &OftSpec,
    head: &L1HeadShape,
    hidden: usize,
    patches: usize,
    capacity: usize,
) -> Result<(), CudaError> {
    if head.action_dim != spec.action_dim || head.input != spec.action_dim * hidden {
        return Err(CudaError::Shape {
            op: "action head",
            message: format!(
                "the head reads {} values for {}-D actions; the language model gives {hidden} \
                 per row and the statistics are {}-D",
                head.input, head.action_dim, spec.action_dim
            ),
        });
    }
    if spec.patches_per_image != patches {
        return Err(CudaError::Shape {
            op: "OFT image tokens",
            message: format!(
                "{} rows per camera expected, the projector gives {patches}",
                spec.patches_per_image
            ),
        });
    }
    let shortest = spec.layout(2).len();
    if shortest > capacity {
        return Err(CudaError::Model(ModelError::SequenceTooLong {
            len: shortest,
            capacity,
        }));
    }
    Ok(())
}

impl OftRunner for OftCudaRunner {
    const BACKEND: &'static str = "cuda";

    fn spec(&self) -> &OftSpec {
        &self.spec
    }

    fn pixel_values_len(&self) -> usize {
        self.model.vision().pixels.len()
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
        self.run_pixels(pixel_values, instruction, proprio)
    }
}

/// [`OftCudaRunner`] behind the (CPU) preprocessing of every camera.
pub type OftCudaPolicy = OftPolicy<OftCudaRunner>;

impl OftPolicy<OftCudaRunner> {
    pub fn load(dir: &Path, options: &PolicyOptions) -> Result<Self, PolicyError> {
        Self::new(OftCudaRunner::load(dir, options)?, dir)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::backend::oft::tests::spec;

    fn head(hidden: usize) -> L1HeadShape {
        L1HeadShape {
            input: 7 * hidden,
            hidden,
            action_dim: 7,
            blocks: 2,
        }
    }

    #[test]
    fn the_ids_after_the_prefix_are_the_prompt_zero_rows_and_the_stop_token() {
        let mut ids = vec![99; 3];
        sequence_ids(&[1, 500, 29871], 14, &mut ids).unwrap();
        assert_eq!(ids.len(), 3 + 14 + 1);
        assert_eq!(ids[..3], [1, 500, 29871]);
        assert!(ids[3..17].iter().all(|&id| id == ZERO_ROW_ID && id < 0));
        assert_eq!(ids[17], STOP_TOKEN_ID as i32);
        let err = sequence_ids(&[1, u32::MAX], 1, &mut ids)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&u32::MAX.to_string()), "{err}");
    }

    #[test]
    fn the_prefix_holds_every_camera_and_the_proprio_token() {
        assert_eq!(prefix_rows(&spec(2, 8, Some(8))), 513);
        assert_eq!(prefix_rows(&spec(1, 8, None)), 256);
    }

    /// The device pass's row numbering against the layout: the `▁` (the prompt's last id)
    /// is the first row the head reads, the placeholders follow it and `</s>` is last.
    #[test]
    fn the_head_reads_from_the_last_prompt_row_through_the_placeholders() {
        let s = spec(2, 8, Some(8));
        let prompt = [1u32, 10, 11, 29871];
        let layout = s.layout(prompt.len());
        let mut ids = Vec::new();
        sequence_ids(&prompt, layout.placeholders, &mut ids).unwrap();
        // Row r of the pass: 0 is ids[0], 1..=P the prefix, P + j is ids[j].
        let id_at_row = |r: usize| ids[r - layout.patches];
        assert_eq!(layout.patches + ids.len(), layout.len());
        let rows = layout.head_rows();
        assert_eq!(id_at_row(rows.start), 29871);
        assert!((rows.start + 1..rows.end + 1).all(|r| id_at_row(r) == ZERO_ROW_ID));
        assert_eq!(id_at_row(layout.len() - 1), STOP_TOKEN_ID as i32);
    }

    /// `queue_rows_kernel` passes the pointers, then the value count and the row width.
    #[test]
    fn the_head_epilogues_take_pointers_then_the_count_and_the_width() {
        use crate::backend::cuda::kernels::{kernel_parameters, OFT, VISION};
        assert_eq!(
            kernel_parameters(&OFT, "bias_relu_f32"),
            ["x", "bias", "total", "N"]
        );
        assert_eq!(
            kernel_parameters(&OFT, "bias_relu_add_f32"),
            ["branch", "bias", "h", "total", "N"]
        );
        // The proprio token's bias and the LayerNorms go through the vision kernels.
        assert_eq!(
            kernel_parameters(&VISION, "add_bias_f32"),
            ["x", "bias", "total", "N"]
        );
        assert_eq!(
            kernel_parameters(&VISION, "layer_norm_f16"),
            ["x", "add_bias", "w", "b", "out", "D", "eps"]
        );
    }

    #[test]
    fn parts_that_do_not_fit_together_are_refused_naming_them() {
        let s = spec(2, 8, Some(8));
        assert!(check_parts(&s, &head(64), 64, 256, 1100).is_ok());
        let err = check_parts(&s, &head(32), 64, 256, 1100)
            .unwrap_err()
            .to_string();
        assert!(err.contains("action head") && err.contains("224"), "{err}");
        let err = check_parts(&s, &head(64), 64, 196, 1100)
            .unwrap_err()
            .to_string();
        assert!(err.contains("196") && err.contains("256"), "{err}");
        // 513 prefix rows, `<s>`, one prompt id, 56 placeholders and `</s>`: 572.
        let err = check_parts(&s, &head(64), 64, 256, 500)
            .unwrap_err()
            .to_string();
        assert!(err.contains("572") && err.contains("500"), "{err}");
    }
}
