//! A linear layer `y = x · Wᵀ + b` over row-major activations, the one place every matrix
//! product of the model goes through, so that weight formats (f32, quantized) are chosen per
//! layer without the model code knowing.

use super::ModelError;

/// How a layer's weight matrix `[out_features, in_features]` is stored.
#[derive(Debug, Clone)]
pub enum LinearWeights {
    /// Row-major f32, `out_features * in_features` values.
    F32(Vec<f32>),
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

    /// Bytes held by the weight matrix (not the bias).
    pub fn weight_bytes(&self) -> usize {
        match &self.weights {
            LinearWeights::F32(w) => w.len() * std::mem::size_of::<f32>(),
        }
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
        }
        Ok(())
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
