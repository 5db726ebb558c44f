//! Where device weights come from: a checkpoint (host f32 → FP16 upload, names and shapes
//! checked by [`Checkpoint`]) or random values generated on the device (benchmarks at the
//! real shapes without 30 GB of host tensors). Layers ask by checkpoint name, so the device
//! model mirrors the checkpoint the way the CPU model does.
//!
//! Also the device linear layer: its FP16 matrix (what the prefill GEMMs read) and, for
//! decode, optionally INT8 (per-row scale) or INT4 (group-wise scales) copies made on the
//! device. When a quantized format is selected for the policy, the FP16 matrix is replaced by
//! its dequantized values, so prefill and decode use the same effective weights.

use half::f16;

use super::device::{int, Arg, DeviceBuffer, Gpu, Lane};
use super::CudaError;
use crate::model::checkpoint::Checkpoint;

/// Supplies named tensors to the device.
pub trait WeightSource {
    /// Rows of the named matrices stacked into one `[Σ rows, cols]` FP16 matrix (fused
    /// q/k/v and gate/up projections). `init_scale` is the random range (ignored for a
    /// checkpoint).
    fn matrix_f16(
        &mut self,
        gpu: &Gpu,
        parts: &[(String, usize)],
        cols: usize,
        init_scale: f32,
    ) -> Result<DeviceBuffer<f16>, CudaError>;

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
}

/// Weights read from a checkpoint.
pub struct CheckpointWeights<'a> {
    pub ckpt: &'a Checkpoint,
}

impl WeightSource for CheckpointWeights<'_> {
    fn matrix_f16(
        &mut self,
        gpu: &Gpu,
        parts: &[(String, usize)],
        cols: usize,
        _init_scale: f32,
    ) -> Result<DeviceBuffer<f16>, CudaError> {
        let rows: usize = parts.iter().map(|(_, r)| r).sum();
        let buf = gpu.alloc::<f16>(rows * cols)?;
        let mut at = 0;
        for (name, r) in parts {
            let values = self
                .ckpt
                .f32_with_shape(&format!("{name}.weight"), &[*r, cols])?;
            let halfs: Vec<f16> = values.iter().map(|&v| f16::from_f32(v)).collect();
            gpu.write(&buf, at, &halfs)?;
            at += r * cols;
        }
        Ok(buf)
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
    ) -> Result<DeviceBuffer<f16>, CudaError> {
        let rows: usize = parts.iter().map(|(_, r)| r).sum();
        let buf = gpu.alloc::<f16>(rows * cols)?;
        let seed = self.next_seed();
        gpu.fill_uniform_f16(&buf, seed, 0.0, init_scale)?;
        Ok(buf)
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
}

/// INT4 group size along the input dimension (the largest of these dividing it).
pub fn int4_group(in_features: usize) -> Option<usize> {
    [128, 64, 32, 16, 8, 4, 2]
        .into_iter()
        .find(|g| in_features % g == 0)
}

/// A bias-free linear layer on the device, `[out, in]`.
#[derive(Debug)]
pub struct DeviceLinear {
    pub name: String,
    pub out_features: usize,
    pub in_features: usize,
    /// `[out, in]` FP16, dequantized when a quantized format replaced it.
    pub f16: DeviceBuffer<f16>,
    pub int8: Option<(DeviceBuffer<i8>, DeviceBuffer<f32>)>,
    /// Packed nibbles `[out, in / 2]`, scales `[out, in / group]`, group.
    pub int4: Option<(DeviceBuffer<u8>, DeviceBuffer<f16>, usize)>,
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
            out_features,
            in_features,
            f16,
            int8: None,
            int4: None,
        })
    }

    /// Makes the quantized copy for `format`; `replace_f16` writes the dequantized values
    /// back into the FP16 matrix.
    pub fn quantize(
        &mut self,
        gpu: &Gpu,
        format: DecodeFormat,
        replace_f16: bool,
    ) -> Result<(), CudaError> {
        let (n, k) = (self.out_features, self.in_features);
        // The kernels write the dequantized values in place; keep the original when asked.
        let target = if replace_f16 {
            None
        } else {
            let copy = gpu.alloc::<f16>(n * k)?;
            gpu.copy_d2d(Lane::A, copy.ptr(), self.f16.ptr(), self.f16.bytes())?;
            Some(copy)
        };
        let w = target.as_ref().unwrap_or(&self.f16);
        match format {
            DecodeFormat::F16 => {}
            DecodeFormat::Int8 => {
                let q = gpu.alloc::<i8>(n * k)?;
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
                let group = int4_group(k).ok_or_else(|| CudaError::Unsupported {
                    what: format!("{} int4", self.name),
                    message: format!("input width {k} is odd; INT4 packs pairs"),
                })?;
                let q = gpu.alloc::<u8>(n * k / 2)?;
                let scales = gpu.alloc::<f16>(n * (k / group))?;
                gpu.launch_elementwise(
                    Lane::A,
                    &gpu.kernels.quantize_groups_i4,
                    n * (k / group),
                    &[
                        Arg::Ptr(w.ptr()),
                        Arg::Ptr(q.ptr()),
                        Arg::Ptr(scales.ptr()),
                        int("int4 quantization", n)?,
                        int("int4 quantization", k)?,
                        int("int4 quantization", group)?,
                    ],
                )?;
                self.int4 = Some((q, scales, group));
            }
        }
        gpu.sync(Lane::A)
    }

    /// Bytes one GEMV of `format` reads from the weights.
    pub fn weight_bytes(&self, format: DecodeFormat) -> usize {
        match format {
            DecodeFormat::F16 => self.f16.bytes(),
            DecodeFormat::Int8 => self.int8.as_ref().map_or(0, |(q, s)| q.bytes() + s.bytes()),
            DecodeFormat::Int4 => self
                .int4
                .as_ref()
                .map_or(0, |(q, s, _)| q.bytes() + s.bytes()),
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
        const ROWS_PER_BLOCK: usize = 8;
        let blocks = u32::try_from(self.out_features.div_ceil(ROWS_PER_BLOCK)).map_err(|_| {
            CudaError::Shape {
                op: "gemv",
                message: format!("{}: {} rows", self.name, self.out_features),
            }
        })?;
        let n = int("gemv", self.out_features)?;
        let k = int("gemv", self.in_features)?;
        let acc = Arg::I32(i32::from(accumulate));
        let missing = || CudaError::Unsupported {
            what: format!("{} {}", self.name, format.label()),
            message: "this layer was not quantized to that format".into(),
        };
        match format {
            DecodeFormat::F16 => gpu.launch(
                lane,
                &gpu.kernels.gemv_f16,
                blocks,
                256,
                0,
                &[
                    Arg::Ptr(self.f16.ptr()),
                    Arg::Ptr(x),
                    Arg::Ptr(y),
                    n,
                    k,
                    acc,
                ],
            ),
            DecodeFormat::Int8 => {
                let (q, s) = self.int8.as_ref().ok_or_else(missing)?;
                gpu.launch(
                    lane,
                    &gpu.kernels.gemv_i8,
                    blocks,
                    256,
                    0,
                    &[
                        Arg::Ptr(q.ptr()),
                        Arg::Ptr(s.ptr()),
                        Arg::Ptr(x),
                        Arg::Ptr(y),
                        n,
                        k,
                        acc,
                    ],
                )
            }
            DecodeFormat::Int4 => {
                let (q, s, group) = self.int4.as_ref().ok_or_else(missing)?;
                gpu.launch(
                    lane,
                    &gpu.kernels.gemv_i4,
                    blocks,
                    256,
                    0,
                    &[
                        Arg::Ptr(q.ptr()),
                        Arg::Ptr(s.ptr()),
                        Arg::Ptr(x),
                        Arg::Ptr(y),
                        n,
                        k,
                        int("gemv", *group)?,
                        acc,
                    ],
                )
            }
        }
    }
}
