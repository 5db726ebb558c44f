//! Where device weights come from: a checkpoint (host f32 → FP16 upload, names and shapes
//! checked by [`Checkpoint`]) or random values generated on the device (benchmarks at the
//! real shapes without 30 GB of host tensors). Layers ask by checkpoint name, so the device
//! model mirrors the checkpoint the way the CPU model does.
//!
//! Also the device linear layer: its FP16 matrix (what the prefill GEMMs read) and, for
//! decode, optionally a copy in the CPU backend's INT8 (per-row scale) or INT4 (asymmetric,
//! group-wise) format ([`crate::model::quant`]): a checkpoint's layers are quantized on the
//! host by that code (or taken from a pre-quantized file) and uploaded, so both backends
//! decode with the same codes; random benchmark weights are quantized on the device with the
//! same formulas. When a quantized format is selected for the policy, the FP16 matrix is
//! replaced by its dequantized values, so prefill and decode use the same effective weights.

use half::f16;

use super::device::{int, split_f16, Arg, DeviceBuffer, DeviceMatrix, Gpu, Lane};
use super::CudaError;
use crate::model::checkpoint::Checkpoint;
use crate::model::linear::LinearWeights;
use crate::model::quant::{int4_group_size, Int4Weights, Int8Weights};
use crate::model::quant_file::QuantizedFile;
use crate::policy::Quantization;

/// Supplies named tensors to the device.
pub trait WeightSource {
    /// Rows of the named matrices stacked into one `[Σ rows, cols]` FP16 matrix (fused
    /// q/k/v and gate/up projections), with its rounding residual when the values are not
    /// exact in FP16. `init_scale` is the random range (ignored for a checkpoint).
    fn matrix_f16(
        &mut self,
        gpu: &Gpu,
        parts: &[(String, usize)],
        cols: usize,
        init_scale: f32,
    ) -> Result<DeviceMatrix, CudaError>;

    /// The matrix `{name}.weight` (`[rows, cols]`) with row r multiplied by element r of the
    /// tensor `row_scale` (a LayerScale folded into the layer before it). The product keeps
    /// an FP16 residual only when the unscaled weights needed one. Random weights ignore the
    /// scale.
    fn scaled_matrix_f16(
        &mut self,
        gpu: &Gpu,
        name: &str,
        rows: usize,
        cols: usize,
        row_scale: Option<&str>,
        init_scale: f32,
    ) -> Result<DeviceMatrix, CudaError>;

    /// The vector `name` (`[len]`) times the tensor `scale` element-wise, f32.
    fn scaled_vector_f32(
        &mut self,
        gpu: &Gpu,
        name: &str,
        len: usize,
        scale: Option<&str>,
    ) -> Result<DeviceBuffer<f32>, CudaError>;

    /// A tensor of `shape` as f32 (norm weights, biases, embeddings); random values are
    /// `center ± scale`.
    fn tensor_f32(
        &mut self,
        gpu: &Gpu,
        name: &str,
        shape: &[usize],
        center: f32,
        scale: f32,
    ) -> Result<DeviceBuffer<f32>, CudaError>;

    /// A tensor of `shape` as FP16 (the token embedding table).
    fn tensor_f16(
        &mut self,
        gpu: &Gpu,
        name: &str,
        shape: &[usize],
        scale: f32,
    ) -> Result<DeviceBuffer<f16>, CudaError>;

    fn contains(&self, name: &str) -> bool;

    /// Each of `parts` (`[rows, cols]` matrices) in `format` exactly as the CPU backend holds
    /// it, or `None` when there are no host values (random weights: quantize on the device).
    fn host_quantized(
        &mut self,
        parts: &[(String, usize)],
        cols: usize,
        format: DecodeFormat,
    ) -> Result<Option<Vec<LinearWeights>>, CudaError>;
}

/// Weights read from a checkpoint, with the pre-quantized file of `--quantized-weights` when
/// one was given.
pub struct CheckpointWeights<'a> {
    pub ckpt: &'a Checkpoint,
    pub quantized: Option<&'a QuantizedFile>,
}

impl WeightSource for CheckpointWeights<'_> {
    fn matrix_f16(
        &mut self,
        gpu: &Gpu,
        parts: &[(String, usize)],
        cols: usize,
        _init_scale: f32,
    ) -> Result<DeviceMatrix, CudaError> {
        let rows: usize = parts.iter().map(|(_, r)| r).sum();
        let mut matrix = DeviceMatrix {
            hi: gpu.alloc::<f16>(rows * cols)?,
            lo: None,
        };
        let mut at = 0;
        for (name, r) in parts {
            let values = self
                .ckpt
                .f32_with_shape(&format!("{name}.weight"), &[*r, cols])?;
            write_split(gpu, &mut matrix, at, &values)?;
            at += r * cols;
        }
        Ok(matrix)
    }

    fn scaled_matrix_f16(
        &mut self,
        gpu: &Gpu,
        name: &str,
        rows: usize,
        cols: usize,
        row_scale: Option<&str>,
        _init_scale: f32,
    ) -> Result<DeviceMatrix, CudaError> {
        let mut values = self
            .ckpt
            .f32_with_shape(&format!("{name}.weight"), &[rows, cols])?;
        let exact = values
            .iter()
            .all(|&v| f16::from_f32(v).to_f32() == v || !v.is_finite());
        if let Some(scale_name) = row_scale {
            let scale = self.ckpt.f32_with_shape(scale_name, &[rows])?;
            for (row, g) in values.chunks_exact_mut(cols.max(1)).zip(&scale) {
                row.iter_mut().for_each(|v| *v *= g);
            }
        }
        if exact {
            let hi: Vec<f16> = values.iter().map(|&v| f16::from_f32(v)).collect();
            return Ok(DeviceMatrix {
                hi: gpu.upload(&hi)?,
                lo: None,
            });
        }
        let mut matrix = DeviceMatrix {
            hi: gpu.alloc::<f16>(rows * cols)?,
            lo: None,
        };
        write_split(gpu, &mut matrix, 0, &values)?;
        Ok(matrix)
    }

    fn scaled_vector_f32(
        &mut self,
        gpu: &Gpu,
        name: &str,
        len: usize,
        scale: Option<&str>,
    ) -> Result<DeviceBuffer<f32>, CudaError> {
        let mut values = self.ckpt.f32_with_shape(name, &[len])?;
        if let Some(scale_name) = scale {
            let scale = self.ckpt.f32_with_shape(scale_name, &[len])?;
            values.iter_mut().zip(&scale).for_each(|(v, g)| *v *= g);
        }
        gpu.upload(&values)
    }

    fn tensor_f32(
        &mut self,
        gpu: &Gpu,
        name: &str,
        shape: &[usize],
        _center: f32,
        _scale: f32,
    ) -> Result<DeviceBuffer<f32>, CudaError> {
        let values = self.ckpt.f32_with_shape(name, shape)?;
        gpu.upload(&values)
    }

    fn tensor_f16(
        &mut self,
        gpu: &Gpu,
        name: &str,
        shape: &[usize],
        _scale: f32,
    ) -> Result<DeviceBuffer<f16>, CudaError> {
        let values = self.ckpt.f32_with_shape(name, shape)?;
        let halfs: Vec<f16> = values.iter().map(|&v| f16::from_f32(v)).collect();
        gpu.upload(&halfs)
    }

    fn contains(&self, name: &str) -> bool {
        self.ckpt.contains(name)
    }

    fn host_quantized(
        &mut self,
        parts: &[(String, usize)],
        cols: usize,
        format: DecodeFormat,
    ) -> Result<Option<Vec<LinearWeights>>, CudaError> {
        let file = self
            .quantized
            .filter(|f| f.quantization() == format.quantization());
        let mut out = Vec::with_capacity(parts.len());
        for (name, rows) in parts {
            if let Some(stored) = file
                .map(|f| f.layer_weights(name, *rows, cols))
                .transpose()?
                .flatten()
            {
                out.push(stored);
                continue;
            }
            let values = self
                .ckpt
                .f32_with_shape(&format!("{name}.weight"), &[*rows, cols])?;
            out.push(match format {
                DecodeFormat::F16 => LinearWeights::F32(values),
                DecodeFormat::Int8 => {
                    LinearWeights::Int8(Int8Weights::quantize(&values, *rows, cols))
                }
                DecodeFormat::Int4 => {
                    LinearWeights::Int4(Int4Weights::quantize(&values, *rows, cols))
                }
            });
        }
        Ok(Some(out))
    }
}

/// Uniform random weights generated on the device (the CPU benchmark's distributions).
pub struct RandomWeights {
    pub seed: u64,
    /// Names that exist (prefix tokens, LayerScale): decides which optional tensors load.
    pub present: std::collections::HashSet<String>,
}

impl RandomWeights {
    fn next_seed(&mut self) -> u64 {
        self.seed = self.seed.wrapping_add(0x9E37_79B9);
        self.seed
    }
}

impl WeightSource for RandomWeights {
    fn matrix_f16(
        &mut self,
        gpu: &Gpu,
        parts: &[(String, usize)],
        cols: usize,
        init_scale: f32,
    ) -> Result<DeviceMatrix, CudaError> {
        let rows: usize = parts.iter().map(|(_, r)| r).sum();
        let buf = gpu.alloc::<f16>(rows * cols)?;
        let seed = self.next_seed();
        gpu.fill_uniform_f16(&buf, seed, 0.0, init_scale)?;
        Ok(DeviceMatrix { hi: buf, lo: None })
    }

    fn scaled_matrix_f16(
        &mut self,
        gpu: &Gpu,
        name: &str,
        rows: usize,
        cols: usize,
        _row_scale: Option<&str>,
        init_scale: f32,
    ) -> Result<DeviceMatrix, CudaError> {
        self.matrix_f16(gpu, &[(name.to_string(), rows)], cols, init_scale)
    }

    fn scaled_vector_f32(
        &mut self,
        gpu: &Gpu,
        name: &str,
        len: usize,
        _scale: Option<&str>,
    ) -> Result<DeviceBuffer<f32>, CudaError> {
        self.tensor_f32(gpu, name, &[len], 0.0, 0.02)
    }

    fn tensor_f32(
        &mut self,
        gpu: &Gpu,
        _name: &str,
        shape: &[usize],
        center: f32,
        scale: f32,
    ) -> Result<DeviceBuffer<f32>, CudaError> {
        let buf = gpu.alloc::<f32>(shape.iter().product())?;
        let seed = self.next_seed();
        gpu.fill_uniform_f32(&buf, seed, center, scale)?;
        Ok(buf)
    }

    fn tensor_f16(
        &mut self,
        gpu: &Gpu,
        _name: &str,
        shape: &[usize],
        scale: f32,
    ) -> Result<DeviceBuffer<f16>, CudaError> {
        let buf = gpu.alloc::<f16>(shape.iter().product())?;
        let seed = self.next_seed();
        gpu.fill_uniform_f16(&buf, seed, 0.0, scale)?;
        Ok(buf)
    }

    fn contains(&self, name: &str) -> bool {
        self.present.contains(name)
    }

    fn host_quantized(
        &mut self,
        _parts: &[(String, usize)],
        _cols: usize,
        _format: DecodeFormat,
    ) -> Result<Option<Vec<LinearWeights>>, CudaError> {
        Ok(None)
    }
}

/// Writes f32 `values` at element `at` of `matrix` as FP16 plus residual, allocating the
/// residual matrix the first time a value is not exact in FP16.
pub fn write_split(
    gpu: &Gpu,
    matrix: &mut DeviceMatrix,
    at: usize,
    values: &[f32],
) -> Result<(), CudaError> {
    let (hi, lo) = split_f16(values);
    gpu.write(&matrix.hi, at, &hi)?;
    match (lo, &matrix.lo) {
        (Some(lo), None) => {
            let buf = gpu.alloc::<f16>(matrix.hi.len())?;
            gpu.write(&buf, at, &lo)?;
            matrix.lo = Some(buf);
        }
        (Some(lo), Some(buf)) => gpu.write(buf, at, &lo)?,
        // Earlier parts may have left residuals here: this part's are zero.
        (None, Some(buf)) => gpu.write(buf, at, &vec![f16::ZERO; values.len()])?,
        (None, None) => {}
    }
    Ok(())
}

/// Weight format of the language model's decode GEMVs on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecodeFormat {
    F16,
    Int8,
    Int4,
}

impl DecodeFormat {
    pub fn label(self) -> &'static str {
        match self {
            DecodeFormat::F16 => "fp16",
            DecodeFormat::Int8 => "int8",
            DecodeFormat::Int4 => "int4",
        }
    }

    /// The `--quantization` value naming this format.
    pub fn quantization(self) -> Quantization {
        match self {
            DecodeFormat::F16 => Quantization::None,
            DecodeFormat::Int8 => Quantization::Int8,
            DecodeFormat::Int4 => Quantization::Int4,
        }
    }
}

/// Which kernel computes a decode GEMV (gemv.cu). The policy uses [`GemvVariant::Policy`]
/// unless told otherwise ([`super::llama::DeviceLlama::set_decode_kernels`]); the others are
/// benchmark variants, timed and checked against it by `vla-rt bench --backend cuda`. FP16
/// GEMVs have the policy and the tensor-core kernels only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GemvVariant {
    /// `gemv_f16` / `gemv_i8` / `gemv_i4`: one block per 16 rows.
    Policy,
    /// `gemv_i8_wide` / `gemv_i4_wide`: one block per 32 rows.
    Wide,
    /// `gemv_i8_persistent` / `gemv_i4_persistent`: a few blocks per multiprocessor, each
    /// staging x once and then walking many 16-row groups.
    Persistent,
    /// `gemv_f16_tc` / `gemv_i8_tc` / `gemv_i4_tc`: the weights as the A operand of
    /// `mma.sync` (compute capability 8.0 and up), one block per 32 rows. Layers whose shape
    /// these kernels do not take ([`DeviceLinear::takes_tensor_core_gemv`]) use the policy
    /// kernel.
    TensorCore,
}

impl GemvVariant {
    /// The quantized variants, policy first.
    pub const ALL: [GemvVariant; 4] = [
        GemvVariant::Policy,
        GemvVariant::Wide,
        GemvVariant::Persistent,
        GemvVariant::TensorCore,
    ];

    pub fn label(self) -> &'static str {
        match self {
            GemvVariant::Policy => "policy",
            GemvVariant::Wide => "wide (32 rows/block)",
            GemvVariant::Persistent => "persistent (3 blocks/SM)",
            GemvVariant::TensorCore => "tensor cores (mma.sync)",
        }
    }

    /// Whether `format` has a kernel of this variant (else the policy kernel runs).
    pub fn exists_for(self, format: DecodeFormat) -> bool {
        match self {
            GemvVariant::Policy | GemvVariant::TensorCore => true,
            GemvVariant::Wide | GemvVariant::Persistent => format != DecodeFormat::F16,
        }
    }
}

/// Rows of one block of the tensor-core GEMVs (`16 · TC_TILES` in gemv.cu).
const TENSOR_CORE_GEMV_ROWS: usize = 32;
/// Shared memory a block gets without opting in to more.
const DEFAULT_BLOCK_SHARED_BYTES: usize = 48 * 1024;

/// Blocks per multiprocessor of a [`GemvVariant::Persistent`] launch: as many as the
/// kernels' `__launch_bounds__(256, 3)` and their shared memory (46.4 KiB at most) let
/// stay resident at once, so that the whole grid runs in one wave.
const PERSISTENT_GEMV_BLOCKS_PER_SM: u32 = 3;

/// INT4 weights on the device in the CPU backend's layout ([`Int4Weights`]).
#[derive(Debug)]
pub struct DeviceInt4 {
    /// `[out, ⌈in / 2⌉]`
    pub packed: DeviceBuffer<u8>,
    /// `[out, ⌈in / group⌉]` each.
    pub scales: DeviceBuffer<f32>,
    pub mins: DeviceBuffer<f32>,
    pub group: usize,
}

/// A bias-free linear layer on the device, `[out, in]`, the checkpoint matrices of `parts`
/// stacked.
#[derive(Debug)]
pub struct DeviceLinear {
    pub name: String,
    pub parts: Vec<(String, usize)>,
    pub out_features: usize,
    pub in_features: usize,
    /// `[out, in]` FP16 (with its residual for an f32 checkpoint), dequantized when a
    /// quantized format replaced it.
    pub f16: DeviceMatrix,
    /// Codes `[out, in]` (int8 bytes), one scale per row.
    pub int8: Option<(DeviceBuffer<u8>, DeviceBuffer<f32>)>,
    pub int4: Option<DeviceInt4>,
}

impl DeviceLinear {
    /// Loads the stacked matrices of `parts` (`[Σ rows, in]`).
    pub fn load(
        gpu: &Gpu,
        src: &mut dyn WeightSource,
        name: &str,
        parts: &[(String, usize)],
        in_features: usize,
    ) -> Result<Self, CudaError> {
        let out_features = parts.iter().map(|(_, r)| r).sum();
        let scale = 1.7 / (in_features as f32).sqrt();
        let f16 = src.matrix_f16(gpu, parts, in_features, scale)?;
        Ok(Self {
            name: name.to_string(),
            parts: parts.to_vec(),
            out_features,
            in_features,
            f16,
            int8: None,
            int4: None,
        })
    }

    /// Makes the quantized copy for `format`: from the host values of `src` when it has
    /// them (the CPU backend's codes), else on the device from the FP16 matrix.
    /// `replace_f16` writes the dequantized values into the FP16 matrix.
    pub fn quantize(
        &mut self,
        gpu: &Gpu,
        src: Option<&mut dyn WeightSource>,
        format: DecodeFormat,
        replace_f16: bool,
    ) -> Result<(), CudaError> {
        if format == DecodeFormat::F16 {
            return Ok(());
        }
        let host = match src {
            Some(src) => src.host_quantized(&self.parts, self.in_features, format)?,
            None => None,
        };
        match host {
            Some(parts) => self.upload_quantized(gpu, &parts, format, replace_f16),
            None => self.quantize_on_device(gpu, format, replace_f16),
        }
    }

    /// Stacks the host-quantized `parts` and uploads them (and their dequantized values).
    fn upload_quantized(
        &mut self,
        gpu: &Gpu,
        parts: &[LinearWeights],
        format: DecodeFormat,
        replace_f16: bool,
    ) -> Result<(), CudaError> {
        let k = self.in_features;
        let mut codes: Vec<u8> = Vec::new();
        let mut scales: Vec<f32> = Vec::new();
        let mut mins: Vec<f32> = Vec::new();
        let mut row_at = 0usize;
        let mut dequantized = vec![0.0f32; k];
        for ((part_name, rows), weights) in self.parts.iter().zip(parts) {
            let wrong = |message: String| CudaError::Unsupported {
                what: format!("{part_name} {}", format.label()),
                message,
            };
            match (format, weights) {
                (DecodeFormat::Int8, LinearWeights::Int8(w)) => {
                    w.check_shape(*rows, k).map_err(wrong)?;
                    codes.extend_from_slice(w.codes.as_slice());
                    scales.extend_from_slice(&w.scales);
                }
                (DecodeFormat::Int4, LinearWeights::Int4(w)) => {
                    w.check_shape(*rows, k).map_err(wrong)?;
                    codes.extend_from_slice(w.packed.as_slice());
                    scales.extend_from_slice(&w.scales);
                    mins.extend_from_slice(&w.mins);
                }
                (_, other) => {
                    return Err(wrong(format!(
                        "got {} weights",
                        match other {
                            LinearWeights::F32(_) => "f32",
                            LinearWeights::Int8(_) => "int8",
                            LinearWeights::Int4(_) => "int4",
                            LinearWeights::W8A8(_) => "w8a8",
                        }
                    )))
                }
            }
            if replace_f16 {
                let mut values = Vec::with_capacity(rows * k);
                for n in 0..*rows {
                    match weights {
                        LinearWeights::Int8(w) => w.dequantize_row(n, k, &mut dequantized),
                        LinearWeights::Int4(w) => w.dequantize_row(n, k, &mut dequantized),
                        _ => {}
                    }
                    values.extend_from_slice(&dequantized);
                }
                write_split(gpu, &mut self.f16, row_at * k, &values)?;
            }
            row_at += rows;
        }
        match format {
            DecodeFormat::F16 => {}
            DecodeFormat::Int8 => self.int8 = Some((gpu.upload(&codes)?, gpu.upload(&scales)?)),
            DecodeFormat::Int4 => {
                self.int4 = Some(DeviceInt4 {
                    packed: gpu.upload(&codes)?,
                    scales: gpu.upload(&scales)?,
                    mins: gpu.upload(&mins)?,
                    group: int4_group_size(k),
                })
            }
        }
        Ok(())
    }

    /// Quantizes the FP16 matrix on the device with the CPU backend's formulas.
    fn quantize_on_device(
        &mut self,
        gpu: &Gpu,
        format: DecodeFormat,
        replace_f16: bool,
    ) -> Result<(), CudaError> {
        let (n, k) = (self.out_features, self.in_features);
        // The kernels write the dequantized values in place; keep the original when asked.
        let target = if replace_f16 {
            // The dequantized values replace the matrix; a residual no longer applies.
            self.f16.lo = None;
            None
        } else {
            let copy = gpu.alloc::<f16>(n * k)?;
            gpu.copy_d2d(Lane::A, copy.ptr(), self.f16.hi.ptr(), self.f16.hi.bytes())?;
            Some(copy)
        };
        let w = target.as_ref().unwrap_or(&self.f16.hi);
        match format {
            DecodeFormat::F16 => {}
            DecodeFormat::Int8 => {
                let q = gpu.alloc::<u8>(n * k)?;
                let scale = gpu.alloc::<f32>(n)?;
                let blocks = u32::try_from(n).map_err(|_| CudaError::Shape {
                    op: "int8 quantization",
                    message: format!("{}: {n} rows", self.name),
                })?;
                gpu.launch(
                    Lane::A,
                    &gpu.kernels.quantize_rows_i8,
                    blocks,
                    256,
                    0,
                    &[
                        Arg::Ptr(w.ptr()),
                        Arg::Ptr(q.ptr()),
                        Arg::Ptr(scale.ptr()),
                        int("int8 quantization", k)?,
                    ],
                )?;
                self.int8 = Some((q, scale));
            }
            DecodeFormat::Int4 => {
                let group = int4_group_size(k);
                let groups = k.div_ceil(group);
                let packed = gpu.alloc::<u8>(n * k.div_ceil(2))?;
                let scales = gpu.alloc::<f32>(n * groups)?;
                let mins = gpu.alloc::<f32>(n * groups)?;
                gpu.launch_elementwise(
                    Lane::A,
                    &gpu.kernels.quantize_groups_i4,
                    n * groups,
                    &[
                        Arg::Ptr(w.ptr()),
                        Arg::Ptr(packed.ptr()),
                        Arg::Ptr(scales.ptr()),
                        Arg::Ptr(mins.ptr()),
                        int("int4 quantization", n)?,
                        int("int4 quantization", k)?,
                        int("int4 quantization", group)?,
                    ],
                )?;
                self.int4 = Some(DeviceInt4 {
                    packed,
                    scales,
                    mins,
                    group,
                });
            }
        }
        gpu.sync(Lane::A)
    }

    /// `out[rows, out] (+)= x[rows, in] · Wᵀ` with the FP16 matrix (prefill GEMMs).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_rows(
        &self,
        gpu: &Gpu,
        lane: Lane,
        rows: usize,
        x: u64,
        out: u64,
        out_type: super::device::Dt,
        accumulate: bool,
    ) -> Result<(), CudaError> {
        gpu.linear_matrix(
            lane,
            rows,
            self.out_features,
            self.in_features,
            x,
            &self.f16,
            out,
            out_type,
            accumulate,
        )
    }

    /// Whether the tensor-core GEMV kernel of `format` takes this layer on `gpu` (see
    /// [`tensor_core_gemv_fits`]).
    pub fn takes_tensor_core_gemv(&self, gpu: &Gpu, format: DecodeFormat) -> bool {
        let weights = match format {
            DecodeFormat::F16 => true,
            DecodeFormat::Int8 => self.int8.is_some(),
            DecodeFormat::Int4 => self.int4.is_some(),
        };
        gpu.has_warp_mma()
            && weights
            && tensor_core_gemv_fits(
                format,
                self.in_features,
                self.int4.as_ref().map_or(0, |q| q.group),
            )
    }

    /// Bytes one GEMV of `format` reads from the weights.
    pub fn weight_bytes(&self, format: DecodeFormat) -> usize {
        match format {
            DecodeFormat::F16 => self.f16.bytes(),
            DecodeFormat::Int8 => self.int8.as_ref().map_or(0, |(q, s)| q.bytes() + s.bytes()),
            DecodeFormat::Int4 => self
                .int4
                .as_ref()
                .map_or(0, |q| q.packed.bytes() + q.scales.bytes() + q.mins.bytes()),
        }
    }

    /// `y[out] (+)= W · x[in]` for one row (decode), `x` FP16, `y` FP32, on `lane`.
    pub fn gemv(
        &self,
        gpu: &Gpu,
        lane: Lane,
        format: DecodeFormat,
        x: u64,
        y: u64,
        accumulate: bool,
    ) -> Result<(), CudaError> {
        self.gemv_variant(gpu, lane, format, x, y, accumulate, GemvVariant::Policy)
    }

    /// [`DeviceLinear::gemv`] with the kernel `variant`; a variant that has no kernel for
    /// `format`, or a tensor-core GEMV of a layer it does not take, runs the policy kernel.
    #[allow(clippy::too_many_arguments)]
    pub fn gemv_variant(
        &self,
        gpu: &Gpu,
        lane: Lane,
        format: DecodeFormat,
        x: u64,
        y: u64,
        accumulate: bool,
        variant: GemvVariant,
    ) -> Result<(), CudaError> {
        let variant = match variant {
            GemvVariant::TensorCore if !self.takes_tensor_core_gemv(gpu, format) => {
                GemvVariant::Policy
            }
            v if v.exists_for(format) => v,
            _ => GemvVariant::Policy,
        };
        self.launch_gemv(gpu, lane, format, variant, x, None, y, accumulate)
    }

    /// Launches the `variant` kernel of `format` (which must exist and take this layer); with
    /// `norm` (the RMSNorm weight and eps), the tensor-core kernel that normalises x itself.
    #[allow(clippy::too_many_arguments)]
    fn launch_gemv(
        &self,
        gpu: &Gpu,
        lane: Lane,
        format: DecodeFormat,
        variant: GemvVariant,
        x: u64,
        norm: Option<(u64, f32)>,
        y: u64,
        accumulate: bool,
    ) -> Result<(), CudaError> {
        // 8 warps of GEMV_ROWS_PER_WARP (gemv.cu) = 2 rows each, or GEMV_WIDE_ROWS_PER_WARP = 4;
        // the tensor-core kernels: TC_TILES tiles of 16 rows.
        const THREADS: u32 = 256;
        let rows_per_block: usize = match variant {
            GemvVariant::Wide => 32,
            GemvVariant::TensorCore => TENSOR_CORE_GEMV_ROWS,
            GemvVariant::Policy | GemvVariant::Persistent => 16,
        };
        // x values a block stages as f32 in shared memory per pass: every Llama-2-7B width
        // (up to 11008) in one pass, 45 KiB (46.4 KiB with the INT4 chunk sums), under the
        // 48 KiB a block gets without opting in. Wider rows are staged in tiles. The kernels
        // size their tile from the shared memory they are given.
        const X_TILE: usize = 11_264;
        // GEMV_SMEM_SLACK (gemv.cu): room for the padding of the staged layout.
        const SLACK: usize = 1024;
        let staged = self.in_features.min(X_TILE);
        let shared = match (variant, format) {
            (GemvVariant::TensorCore, _) => tensor_core_shared_bytes(format, self.in_features),
            // INT4 adds one f32 sum per 32 values.
            (_, DecodeFormat::Int4) => SLACK + 132 * staged.div_ceil(32),
            // f32 per x value.
            _ => SLACK + 4 * staged,
        };
        let shared = u32::try_from(shared).map_err(|_| CudaError::Shape {
            op: "gemv",
            message: format!("{}: {shared} bytes of shared memory", self.name),
        })?;
        let row_groups =
            u32::try_from(self.out_features.div_ceil(rows_per_block)).map_err(|_| {
                CudaError::Shape {
                    op: "gemv",
                    message: format!("{}: {} rows", self.name, self.out_features),
                }
            })?;
        // One block per row group, except the persistent kernels, whose blocks loop over the
        // groups: more blocks than fit on the device at once would stage x again for nothing.
        let blocks = if variant == GemvVariant::Persistent {
            row_groups.min(gpu.multiprocessors() * PERSISTENT_GEMV_BLOCKS_PER_SM)
        } else {
            row_groups
        };
        let k = &gpu.kernels;
        let kernel = match (format, variant, norm.is_some()) {
            (DecodeFormat::F16, GemvVariant::TensorCore, true) => &k.gemv_f16_tc_norm,
            (DecodeFormat::Int8, GemvVariant::TensorCore, true) => &k.gemv_i8_tc_norm,
            (DecodeFormat::Int4, GemvVariant::TensorCore, true) => &k.gemv_i4_tc_norm,
            (_, _, true) => {
                return Err(CudaError::Unsupported {
                    what: format!("{} {} {}", self.name, format.label(), variant.label()),
                    message: "only the tensor-core GEMVs normalise x themselves".into(),
                })
            }
            (DecodeFormat::F16, GemvVariant::TensorCore, false) => &k.gemv_f16_tc,
            (DecodeFormat::F16, _, false) => &k.gemv_f16,
            (DecodeFormat::Int8, GemvVariant::Policy, false) => &k.gemv_i8,
            (DecodeFormat::Int8, GemvVariant::Wide, false) => &k.gemv_i8_wide,
            (DecodeFormat::Int8, GemvVariant::Persistent, false) => &k.gemv_i8_persistent,
            (DecodeFormat::Int8, GemvVariant::TensorCore, false) => &k.gemv_i8_tc,
            (DecodeFormat::Int4, GemvVariant::Policy, false) => &k.gemv_i4,
            (DecodeFormat::Int4, GemvVariant::Wide, false) => &k.gemv_i4_wide,
            (DecodeFormat::Int4, GemvVariant::Persistent, false) => &k.gemv_i4_persistent,
            (DecodeFormat::Int4, GemvVariant::TensorCore, false) => &k.gemv_i4_tc,
        };
        let args = self.gemv_args(format, x, norm, y, accumulate)?;
        gpu.launch(lane, kernel, blocks, THREADS, shared, &args)
    }

    /// The tensor-core GEMV of RMSNorm(x): `x` is the f32 residual row, normalised with
    /// `norm_weight` (f32, `in_features`) and `eps` as `rms_norm_f16` would, while the kernel
    /// stages it. Returns false, queueing nothing, when this layer or device does not take it
    /// (the caller then normalises first).
    #[allow(clippy::too_many_arguments)]
    pub fn gemv_tensor_core_normed(
        &self,
        gpu: &Gpu,
        lane: Lane,
        format: DecodeFormat,
        x: u64,
        norm_weight: u64,
        eps: f32,
        y: u64,
        accumulate: bool,
    ) -> Result<bool, CudaError> {
        if !self.takes_tensor_core_gemv(gpu, format) || !normed_gemv_fits(self.in_features) {
            return Ok(false);
        }
        let norm = Some((norm_weight, eps));
        self.launch_gemv(
            gpu,
            lane,
            format,
            GemvVariant::TensorCore,
            x,
            norm,
            y,
            accumulate,
        )?;
        Ok(true)
    }

    /// The arguments every GEMV kernel of `format` takes: the weights (f16 with its residual,
    /// or the INT8/INT4 codes with their scales), x, (with `norm`: the RMSNorm weight and eps,)
    /// y, N, K, (INT4: the group,) accumulate.
    fn gemv_args(
        &self,
        format: DecodeFormat,
        x: u64,
        norm: Option<(u64, f32)>,
        y: u64,
        accumulate: bool,
    ) -> Result<Vec<Arg>, CudaError> {
        let n = int("gemv", self.out_features)?;
        let k = int("gemv", self.in_features)?;
        let acc = Arg::I32(i32::from(accumulate));
        let missing = || CudaError::Unsupported {
            what: format!("{} {}", self.name, format.label()),
            message: "this layer was not quantized to that format".into(),
        };
        let mut args = match format {
            DecodeFormat::F16 => vec![
                Arg::Ptr(self.f16.hi.ptr()),
                // The residual of an f32 checkpoint's weights, if any.
                Arg::Ptr(self.f16.lo.as_ref().map_or(0, |lo| lo.ptr())),
                Arg::Ptr(x),
                Arg::Ptr(y),
                n,
                k,
                acc,
            ],
            DecodeFormat::Int8 => {
                let (q, s) = self.int8.as_ref().ok_or_else(missing)?;
                vec![
                    Arg::Ptr(q.ptr()),
                    Arg::Ptr(s.ptr()),
                    Arg::Ptr(x),
                    Arg::Ptr(y),
                    n,
                    k,
                    acc,
                ]
            }
            DecodeFormat::Int4 => {
                let q = self.int4.as_ref().ok_or_else(missing)?;
                vec![
                    Arg::Ptr(q.packed.ptr()),
                    Arg::Ptr(q.scales.ptr()),
                    Arg::Ptr(q.mins.ptr()),
                    Arg::Ptr(x),
                    Arg::Ptr(y),
                    n,
                    k,
                    int("gemv", q.group)?,
                    acc,
                ]
            }
        };
        if let Some((weight, eps)) = norm {
            let at = gemv_x_argument(format) + 1;
            args.splice(at..at, [Arg::Ptr(weight), Arg::F32(eps)]);
        }
        Ok(args)
    }
}

/// Shared memory of a tensor-core GEMV launch (gemv.cu `gemv_tc`): x staged as f16 up to
/// whole iterations of 4 chunks, INT4's Σx per iteration, the 8 warps' partial sums.
fn tensor_core_shared_bytes(format: DecodeFormat, in_features: usize) -> usize {
    let chunk = tensor_core_chunk(format);
    let iterations = in_features.div_ceil(4 * chunk);
    let sums = if format == DecodeFormat::Int4 {
        4 * iterations
    } else {
        0
    };
    2 * 4 * chunk * iterations + sums + 4 * 8 * TENSOR_CORE_GEMV_ROWS
}

/// Whether the tensor-core GEMV of `format` takes rows of `in_features` weights (INT4 in
/// groups of `int4_group`): whole 16-byte chunks per row, INT4 groups of a multiple of 128 or
/// one group per row (so that an iteration's 128 values share a group), x within the default
/// shared memory. Other layers take the policy kernel.
pub fn tensor_core_gemv_fits(format: DecodeFormat, in_features: usize, int4_group: usize) -> bool {
    let groups_fit = format != DecodeFormat::Int4
        || (int4_group > 0 && (int4_group.is_multiple_of(128) || int4_group >= in_features));
    in_features > 0
        && in_features.is_multiple_of(tensor_core_chunk(format))
        && groups_fit
        && tensor_core_shared_bytes(format, in_features) <= DEFAULT_BLOCK_SHARED_BYTES
}

/// Position of x among a `format` GEMV kernel's arguments (after the weights); the `_norm`
/// kernels take the RMSNorm weight and eps right after it.
fn gemv_x_argument(format: DecodeFormat) -> usize {
    match format {
        DecodeFormat::F16 | DecodeFormat::Int8 => 2,
        DecodeFormat::Int4 => 3,
    }
}

/// Whether the `_norm` tensor-core GEMVs can normalise rows of `in_features` with their 256
/// threads (common.cuh `rms_vec_fits`: four 16-byte loads per thread at most).
fn normed_gemv_fits(in_features: usize) -> bool {
    in_features.is_multiple_of(4) && in_features / 4 <= 4 * 256
}

/// Weights per 16-byte chunk of one row in `format` (gemv.cu `TcFormat<..>::E`).
fn tensor_core_chunk(format: DecodeFormat) -> usize {
    match format {
        DecodeFormat::F16 => 8,
        DecodeFormat::Int8 => 16,
        DecodeFormat::Int4 => 32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::quant::int4_group_size;

    /// Llama-2-7B's decode layers read 4096 (q/k/v, o, gate/up, lm_head) or 11008 (down)
    /// inputs: the tensor-core GEMVs must take every one of them in every format, or the
    /// benchmark's tensor-core rows would time the policy kernels under that name.
    #[test]
    fn tensor_core_gemvs_take_every_llama_2_7b_layer() {
        for k in [4096, 11008] {
            for format in [DecodeFormat::F16, DecodeFormat::Int8, DecodeFormat::Int4] {
                assert!(
                    tensor_core_gemv_fits(format, k, int4_group_size(k)),
                    "{} with {k} inputs",
                    format.label()
                );
            }
        }
    }

    fn kernel_parameters(kernel: &str) -> Vec<String> {
        super::super::kernels::kernel_parameters(&super::super::kernels::GEMV, kernel)
    }

    /// `gemv_args` puts x, and for the `_norm` kernels the RMSNorm weight and eps after it,
    /// where the kernels declare them.
    #[test]
    fn gemv_arguments_follow_the_kernel_signatures() {
        for (format, name) in [
            (DecodeFormat::F16, "f16"),
            (DecodeFormat::Int8, "i8"),
            (DecodeFormat::Int4, "i4"),
        ] {
            let at = gemv_x_argument(format);
            for kernel in [format!("gemv_{name}"), format!("gemv_{name}_tc")] {
                assert_eq!(kernel_parameters(&kernel)[at], "x", "{kernel}");
            }
            let normed = kernel_parameters(&format!("gemv_{name}_tc_norm"));
            assert_eq!(normed[at..at + 3], ["xf", "norm_w", "eps"], "{name}");
            assert_eq!(
                normed.len(),
                kernel_parameters(&format!("gemv_{name}_tc")).len() + 2
            );
        }
    }

    #[test]
    fn tensor_core_gemvs_leave_partial_chunks_and_split_iterations_to_the_policy() {
        // The tiny checkpoint's down projection: 172 inputs are no whole 16-byte chunks.
        for format in [DecodeFormat::F16, DecodeFormat::Int8, DecodeFormat::Int4] {
            assert!(!tensor_core_gemv_fits(format, 172, int4_group_size(172)));
        }
        // Its 64-input layers: whole chunks, and INT4's one group per row.
        for format in [DecodeFormat::F16, DecodeFormat::Int8, DecodeFormat::Int4] {
            assert!(tensor_core_gemv_fits(format, 64, int4_group_size(64)));
        }
        // INT4 groups of 64 in a longer row would split an iteration of 128 values.
        assert!(!tensor_core_gemv_fits(DecodeFormat::Int4, 256, 64));
        assert!(tensor_core_gemv_fits(DecodeFormat::Int4, 1024, 256));
        // x must fit the 48 KiB a block gets without opting in.
        assert!(tensor_core_gemv_fits(DecodeFormat::F16, 20_480, 0));
        assert!(!tensor_core_gemv_fits(DecodeFormat::F16, 32_768, 0));
    }
}
