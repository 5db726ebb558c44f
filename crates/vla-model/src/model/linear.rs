//! A linear layer `y = x · Wᵀ + b` over row-major activations, the one place every matrix
//! product of the model goes through, so that weight formats (f32, quantized) are chosen per
//! layer without the model code knowing.

use super::quant::{self, Int4Weights, Int8Weights, W8A8Weights};
use super::ModelError;

/// How a layer's weight matrix `[out_features, in_features]` is stored.
#[derive(Debug, Clone)]
pub enum LinearWeights {
    /// Row-major f32, `out_features * in_features` values.
    F32(Vec<f32>),
    /// Weight-only INT8, one scale per output channel.
    Int8(Int8Weights),
    /// Weight-only INT4, group-wise asymmetric, packed two per byte.
    Int4(Int4Weights),
    /// INT8 weights and per-tensor INT8 activations (calibrated).
    W8A8(W8A8Weights),
}

/// A weight format to convert an f32 layer to (see [`super::quant`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum QuantFormat {
    Int8,
    Int4,
    /// INT8 weights with the input quantized with this per-tensor activation scale.
    W8A8 {
        act_scale: f32,
    },
}

#[derive(Debug, Clone)]
pub struct Linear {
    in_features: usize,
    out_features: usize,
    weights: LinearWeights,
    bias: Option<Vec<f32>>,
}

impl Linear {
    /// A layer from a row-major f32 weight `[out_features, in_features]` and an optional bias.
    pub fn from_f32(
        name: &str,
        weight: Vec<f32>,
        out_features: usize,
        in_features: usize,
        bias: Option<Vec<f32>>,
    ) -> Result<Self, ModelError> {
        if weight.len() != out_features * in_features {
            return Err(ModelError::Shape {
                name: format!("{name}.weight"),
                expected: vec![out_features, in_features],
                got: vec![weight.len()],
            });
        }
        if let Some(b) = &bias {
            if b.len() != out_features {
                return Err(ModelError::Shape {
                    name: format!("{name}.bias"),
                    expected: vec![out_features],
                    got: vec![b.len()],
                });
            }
        }
        Ok(Self {
            in_features,
            out_features,
            weights: LinearWeights::F32(weight),
            bias,
        })
    }

    pub fn in_features(&self) -> usize {
        self.in_features
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }

    pub fn weights(&self) -> &LinearWeights {
        &self.weights
    }

    pub fn bias(&self) -> Option<&[f32]> {
        self.bias.as_deref()
    }

    /// Bytes held by the weight matrix and its quantization scales (not the bias).
    pub fn weight_bytes(&self) -> usize {
        match &self.weights {
            LinearWeights::F32(w) => w.len() * std::mem::size_of::<f32>(),
            LinearWeights::Int8(q) => q.bytes(),
            LinearWeights::Int4(q) => q.bytes(),
            LinearWeights::W8A8(q) => q.weights.bytes() + std::mem::size_of::<f32>(),
        }
    }

    /// Replaces the weight matrix (e.g. with one read from a pre-quantized file), checking
    /// that it has this layer's shape; `name` names the layer in errors.
    pub fn set_weights(&mut self, name: &str, weights: LinearWeights) -> Result<(), ModelError> {
        let (n, k) = (self.out_features, self.in_features);
        let checked = match &weights {
            LinearWeights::F32(w) => {
                if w.len() == n * k {
                    Ok(())
                } else {
                    Err(format!(
                        "f32 weight of {} values, expected {}",
                        w.len(),
                        n * k
                    ))
                }
            }
            LinearWeights::Int8(q) => q.check_shape(n, k),
            LinearWeights::Int4(q) => q.check_shape(n, k),
            LinearWeights::W8A8(q) => {
                if q.act_scale.is_finite() && q.act_scale > 0.0 {
                    q.weights.check_shape(n, k)
                } else {
                    Err(format!(
                        "activation scale {} is not a positive number",
                        q.act_scale
                    ))
                }
            }
        };
        checked.map_err(|message| ModelError::Quantized {
            name: name.to_string(),
            message: format!("{message} (layer [{n}, {k}])"),
        })?;
        self.weights = weights;
        Ok(())
    }

    /// Converts the f32 weight to `format` in place. A layer already in `format` is left as
    /// it is, and quantizing an INT8 layer to W8A8 only adds the activation scale; any other
    /// conversion of an already quantized layer is an error, since it would stack two
    /// roundings.
    pub fn quantize(&mut self, name: &str, format: QuantFormat) -> Result<(), ModelError> {
        let (n, k) = (self.out_features, self.in_features);
        let weights = match (&self.weights, format) {
            (LinearWeights::F32(w), QuantFormat::Int8) => {
                LinearWeights::Int8(Int8Weights::quantize(w, n, k))
            }
            (LinearWeights::F32(w), QuantFormat::Int4) => {
                LinearWeights::Int4(Int4Weights::quantize(w, n, k))
            }
            (LinearWeights::F32(w), QuantFormat::W8A8 { act_scale }) => {
                LinearWeights::W8A8(W8A8Weights {
                    weights: Int8Weights::quantize(w, n, k),
                    act_scale,
                })
            }
            (LinearWeights::Int8(_), QuantFormat::Int8)
            | (LinearWeights::Int4(_), QuantFormat::Int4) => return Ok(()),
            (LinearWeights::Int8(q), QuantFormat::W8A8 { act_scale }) => {
                LinearWeights::W8A8(W8A8Weights {
                    weights: q.clone(),
                    act_scale,
                })
            }
            (current, _) => {
                return Err(ModelError::Quantized {
                    name: name.to_string(),
                    message: format!(
                        "cannot convert weights already stored as {} to {format:?}",
                        current.format_name()
                    ),
                })
            }
        };
        self.set_weights(name, weights)
    }

    /// The weight as row-major f32 `[out_features, in_features]`: the values a quantized
    /// layer actually multiplies with (its reference for accuracy checks).
    pub fn dequantized_weight(&self) -> Vec<f32> {
        let (n, k) = (self.out_features, self.in_features);
        let mut out = vec![0.0f32; n * k];
        match &self.weights {
            LinearWeights::F32(w) => out.copy_from_slice(w),
            LinearWeights::Int8(q) => out
                .chunks_exact_mut(k.max(1))
                .enumerate()
                .for_each(|(row, dst)| q.dequantize_row(row, k, dst)),
            LinearWeights::Int4(q) => out
                .chunks_exact_mut(k.max(1))
                .enumerate()
                .for_each(|(row, dst)| q.dequantize_row(row, k, dst)),
            LinearWeights::W8A8(q) => out
                .chunks_exact_mut(k.max(1))
                .enumerate()
                .for_each(|(row, dst)| q.weights.dequantize_row(row, k, dst)),
        }
        out
    }

    /// `out[n, out_features] = x[n, in_features] · Wᵀ + b` for `n = x.len() / in_features` rows.
    pub fn forward(&self, x: &[f32], out: &mut [f32]) -> Result<(), ModelError> {
        let rows = x.len() / self.in_features.max(1);
        if x.len() != rows * self.in_features || out.len() != rows * self.out_features {
            return Err(ModelError::Math {
                op: "linear",
                message: format!(
                    "input {} values, output {} values, weight [{}, {}]",
                    x.len(),
                    out.len(),
                    self.out_features,
                    self.in_features
                ),
            });
        }
        if rows == 0 {
            return Ok(());
        }
        match &self.weights {
            LinearWeights::F32(w) => matmul_f32_wt(
                x,
                w,
                out,
                rows,
                self.in_features,
                self.out_features,
                self.bias.as_deref(),
            ),
            LinearWeights::Int8(q) => quant::matmul_int8(
                x,
                q,
                out,
                rows,
                self.in_features,
                self.out_features,
                self.bias.as_deref(),
            ),
            LinearWeights::Int4(q) => quant::matmul_int4(
                x,
                q,
                out,
                rows,
                self.in_features,
                self.out_features,
                self.bias.as_deref(),
            ),
            LinearWeights::W8A8(q) => quant::matmul_w8a8(
                x,
                q,
                out,
                rows,
                self.in_features,
                self.out_features,
                self.bias.as_deref(),
            ),
        }
        Ok(())
    }
}

impl LinearWeights {
    /// `f32`, `int8`, `int4` or `w8a8`.
    pub fn format_name(&self) -> &'static str {
        match self {
            LinearWeights::F32(_) => "f32",
            LinearWeights::Int8(_) => "int8",
            LinearWeights::Int4(_) => "int4",
            LinearWeights::W8A8(_) => "w8a8",
        }
    }
}

/// `out[m, n] = a[m, k] · w[n, k]ᵀ (+ bias[n])`, all row-major, multithreaded.
pub fn matmul_f32_wt(
    a: &[f32],
    w: &[f32],
    out: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
    bias: Option<&[f32]>,
) {
    debug_assert!(a.len() >= m * k && w.len() >= n * k && out.len() >= m * n);
    if let Some(b) = bias {
        for row in out.chunks_exact_mut(n).take(m) {
            row.copy_from_slice(&b[..n]);
        }
    }
    let parallelism = if m * n * k >= 1 << 16 {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the slices hold at least m·k, n·k and m·n elements (checked by the callers and
    // the debug assertion above); the strides below describe exactly those row-major layouts,
    // and `out` does not alias `a` or `w` because it is borrowed mutably.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            bias.is_some(),
            a.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// A read-only matrix view: element `(r, c)` is `data[offset + r * row_stride + c * col_stride]`.
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub offset: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl MatRef<'_> {
    /// Whether a `rows × cols` matrix with these strides lies inside `data`.
    fn fits(&self, rows: usize, cols: usize) -> bool {
        if rows == 0 || cols == 0 {
            return true;
        }
        let last = (rows - 1)
            .checked_mul(self.row_stride)
            .and_then(|r| (cols - 1).checked_mul(self.col_stride).map(|c| (r, c)))
            .and_then(|(r, c)| r.checked_add(c))
            .and_then(|rc| rc.checked_add(self.offset));
        last.is_some_and(|last| last < self.data.len())
    }
}

/// `out[m, n] = scale · a[m, k] · b[k, n]` over strided views (attention products read heads
/// in place from packed QKV buffers and the KV cache). `out` is row-major with row stride
/// `out_row_stride`; only its `m × n` block is written.
#[allow(clippy::too_many_arguments)]
pub fn matmul_f32_strided(
    a: MatRef<'_>,
    b: MatRef<'_>,
    out: &mut [f32],
    out_row_stride: usize,
    m: usize,
    k: usize,
    n: usize,
    scale: f32,
) -> Result<(), ModelError> {
    let out_fits = m == 0
        || n == 0
        || (m - 1)
            .checked_mul(out_row_stride)
            .and_then(|r| r.checked_add(n))
            .is_some_and(|end| end <= out.len() && n <= out_row_stride);
    if !a.fits(m, k) || !b.fits(k, n) || !out_fits {
        return Err(ModelError::Math {
            op: "strided matmul",
            message: format!(
                "[{m}, {k}] · [{k}, {n}] does not fit the given buffers ({}, {}, {} values)",
                a.data.len(),
                b.data.len(),
                out.len()
            ),
        });
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        for row in out.chunks_mut(out_row_stride.max(1)).take(m) {
            row[..n].fill(0.0);
        }
        return Ok(());
    }
    let parallelism = if m * n * k >= 1 << 16 {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: `fits` checked that every element the strides address lies inside `a.data`
    // and `b.data`, and `out_fits` that the m × n block with row stride `out_row_stride` (≥ n,
    // so rows do not overlap) lies inside `out`; `out` is borrowed mutably so it aliases
    // neither input; gemm with `read_dst = false` only writes that block.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            out_row_stride as isize,
            false,
            a.data.as_ptr().add(a.offset),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr().add(b.offset),
            b.col_stride as isize,
            b.row_stride as isize,
            0.0,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
    Ok(())
}
