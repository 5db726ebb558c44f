//! Element-wise and per-row operations shared by the ViTs, the projector and the Llama, and
//! multi-head scaled-dot-product attention. Rows are processed in parallel over rayon; matrix
//! products go through [`super::linear`].

use rayon::prelude::*;

use super::linear::{matmul_f32_strided, MatRef};
use super::ModelError;

/// Below this many values per call, rayon's fork/join costs more than the work.
const PARALLEL_MIN_VALUES: usize = 1 << 14;

/// Rows per rayon task so that each task has at least [`PARALLEL_MIN_VALUES`] values.
fn rows_per_task(width: usize) -> usize {
    (PARALLEL_MIN_VALUES / width.max(1)).max(1)
}

/// LayerNorm over each row of `x` (`[rows, width]`), in place, with affine weight and bias.
/// Statistics are accumulated in f64.
pub fn layer_norm(x: &mut [f32], width: usize, weight: &[f32], bias: &[f32], eps: f64) {
    let norm_row = |row: &mut [f32]| {
        let n = width as f64;
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = row
            .iter()
            .map(|&v| {
                let d = v as f64 - mean;
                d * d
            })
            .sum::<f64>()
            / n;
        let inv = 1.0 / (var + eps).sqrt();
        for ((v, &w), &b) in row.iter_mut().zip(weight).zip(bias) {
            *v = ((*v as f64 - mean) * inv) as f32 * w + b;
        }
    };
    x.par_chunks_mut(width * rows_per_task(width))
        .for_each(|rows| rows.chunks_exact_mut(width).for_each(norm_row));
}

/// RMSNorm of `x` (`[rows, width]`) into `out`: `x * rsqrt(mean(x²) + eps) * weight`.
pub fn rms_norm(x: &[f32], out: &mut [f32], width: usize, weight: &[f32], eps: f64) {
    let norm_row = |(src, dst): (&[f32], &mut [f32])| {
        let mean_sq = src.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / width as f64;
        let inv = (1.0 / (mean_sq + eps).sqrt()) as f32;
        for ((d, &s), &w) in dst.iter_mut().zip(src).zip(weight) {
            *d = w * (s * inv);
        }
    };
    let chunk = width * rows_per_task(width);
    x.par_chunks(chunk)
        .zip(out.par_chunks_mut(chunk))
        .for_each(|(src, dst)| {
            src.chunks_exact(width)
                .zip(dst.chunks_exact_mut(width))
                .for_each(norm_row)
        });
}

/// Exact (erf) GELU in place, as `torch.nn.GELU()`.
pub fn gelu_erf(x: &mut [f32]) {
    let gelu = |v: &mut f32| {
        *v = 0.5 * *v * (1.0 + libm::erff(*v * std::f32::consts::FRAC_1_SQRT_2));
    };
    if x.len() < PARALLEL_MIN_VALUES {
        x.iter_mut().for_each(gelu);
    } else {
        x.par_chunks_mut(PARALLEL_MIN_VALUES)
            .for_each(|c| c.iter_mut().for_each(gelu));
    }
}

/// `gate = silu(gate) * up`, the Llama MLP's gating, in place.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    let f = |(g, &u): (&mut f32, &f32)| {
        *g = *g / (1.0 + (-*g).exp()) * u;
    };
    if gate.len() < PARALLEL_MIN_VALUES {
        gate.iter_mut().zip(up).for_each(f);
    } else {
        gate.par_chunks_mut(PARALLEL_MIN_VALUES)
            .zip(up.par_chunks(PARALLEL_MIN_VALUES))
            .for_each(|(g, u)| g.iter_mut().zip(u).for_each(f));
    }
}

/// `acc += x`, element-wise.
pub fn add_in_place(acc: &mut [f32], x: &[f32]) {
    acc.iter_mut().zip(x).for_each(|(a, &b)| *a += b);
}

/// Softmax of one row in place (max-subtracted, sum in f64).
fn softmax_in_place(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f64;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v as f64;
    }
    let inv = (1.0 / sum) as f32;
    row.iter_mut().for_each(|v| *v *= inv);
}

/// Index of the largest value, the first one on ties (as `torch.argmax`); `None` if empty.
pub fn argmax(values: &[f32]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in values.iter().enumerate() {
        match best {
            Some((_, b)) if v <= b || v.is_nan() => {}
            None if v.is_nan() => {}
            _ => best = Some((i, v)),
        }
    }
    best.map(|(i, _)| i)
}

/// Where the heads of Q, K or V lie in a buffer: head `h`, token `t`, channel `d` is at
/// `data[offset + h * head_stride + t * row_stride + d]`.
#[derive(Debug, Clone, Copy)]
pub struct HeadLayout<'a> {
    pub data: &'a [f32],
    pub offset: usize,
    pub head_stride: usize,
    pub row_stride: usize,
}

impl<'a> HeadLayout<'a> {
    fn head(&self, h: usize) -> MatRef<'a> {
        MatRef {
            data: self.data,
            offset: self.offset + h * self.head_stride,
            row_stride: self.row_stride,
            col_stride: 1,
        }
    }

    /// The head transposed (`[head_dim, tokens]`), for `Q · Kᵀ`.
    fn head_transposed(&self, h: usize) -> MatRef<'a> {
        MatRef {
            data: self.data,
            offset: self.offset + h * self.head_stride,
            row_stride: 1,
            col_stride: self.row_stride,
        }
    }
}

/// Shape of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    pub num_heads: usize,
    /// Query head `h` reads key/value head `h / (num_heads / num_kv_heads)` (`repeat_kv`).
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub queries: usize,
    pub keys: usize,
    /// `Some(past)`: causal, query `i` sees keys `0..=past + i`; `None`: every query sees
    /// every key.
    pub causal_past: Option<usize>,
}

/// Scaled-dot-product attention (scale `head_dim^-0.5`) of all heads, in parallel over heads.
/// `scores` holds `num_heads * queries * keys` values and `head_out` `num_heads * queries *
/// head_dim`, both scratch; `out` (`[queries, num_heads * head_dim]`) receives the heads
/// side by side, as the output projection expects.
pub fn attention(
    q: HeadLayout<'_>,
    k: HeadLayout<'_>,
    v: HeadLayout<'_>,
    shape: AttentionShape,
    scores: &mut [f32],
    head_out: &mut [f32],
    out: &mut [f32],
) -> Result<(), ModelError> {
    let AttentionShape {
        num_heads,
        num_kv_heads,
        head_dim,
        queries,
        keys,
        causal_past,
    } = shape;
    let width = num_heads * head_dim;
    if num_kv_heads == 0
        || num_heads % num_kv_heads != 0
        || scores.len() < num_heads * queries * keys
        || head_out.len() < num_heads * queries * head_dim
        || out.len() < queries * width
        || causal_past.is_some_and(|past| past + queries != keys)
    {
        return Err(ModelError::Math {
            op: "attention",
            message: format!("{shape:?} does not fit the scratch buffers"),
        });
    }
    if queries == 0 {
        return Ok(());
    }
    let group = num_heads / num_kv_heads;
    let scale = (head_dim as f64).powf(-0.5) as f32;
    scores[..num_heads * queries * keys]
        .par_chunks_mut(queries * keys)
        .zip(head_out[..num_heads * queries * head_dim].par_chunks_mut(queries * head_dim))
        .enumerate()
        .try_for_each(|(h, (head_scores, head_result))| {
            let kv = h / group;
            // [queries, keys]
            matmul_f32_strided(
                q.head(h),
                k.head_transposed(kv),
                head_scores,
                keys,
                queries,
                head_dim,
                keys,
                scale,
            )?;
            for (i, row) in head_scores.chunks_exact_mut(keys).enumerate() {
                let visible = causal_past.map_or(keys, |past| past + i + 1);
                softmax_in_place(&mut row[..visible]);
                row[visible..].fill(0.0);
            }
            // [queries, head_dim]
            matmul_f32_strided(
                MatRef {
                    data: head_scores,
                    offset: 0,
                    row_stride: keys,
                    col_stride: 1,
                },
                v.head(kv),
                head_result,
                head_dim,
                queries,
                keys,
                head_dim,
                1.0,
            )
        })?;
    out[..queries * width]
        .par_chunks_mut(width * rows_per_task(width))
        .enumerate()
        .for_each(|(chunk, rows)| {
            let first = chunk * rows_per_task(width);
            for (r, row) in rows.chunks_exact_mut(width).enumerate() {
                let i = first + r;
                for (h, dst) in row.chunks_exact_mut(head_dim).enumerate() {
                    let src = (h * queries + i) * head_dim;
                    dst.copy_from_slice(&head_out[src..src + head_dim]);
                }
            }
        });
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_first_of_ties_and_skips_nan() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), Some(1));
        assert_eq!(argmax(&[f32::NAN, 0.5, 0.5]), Some(1));
        assert_eq!(argmax(&[]), None);
    }

    #[test]
    fn causal_attention_of_one_head_matches_direct_formula() {
        // 3 tokens, head_dim 2, one head; values chosen by hand.
        let q = [1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0];
        let k = [1.0f32, 0.0, 0.0, 2.0, 1.0, 1.0];
        let v = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        fn layout(data: &[f32]) -> HeadLayout<'_> {
            HeadLayout {
                data,
                offset: 0,
                head_stride: 6,
                row_stride: 2,
            }
        }
        let shape = AttentionShape {
            num_heads: 1,
            num_kv_heads: 1,
            head_dim: 2,
            queries: 3,
            keys: 3,
            causal_past: Some(0),
        };
        let mut scores = vec![0.0; 9];
        let mut head_out = vec![0.0; 6];
        let mut out = vec![0.0; 6];
        attention(
            layout(&q),
            layout(&k),
            layout(&v),
            shape,
            &mut scores,
            &mut head_out,
            &mut out,
        )
        .unwrap();
        let s = 0.5f32.sqrt();
        // Query 0 sees only key 0.
        assert_eq!(&out[0..2], &[1.0, 2.0]);
        // Query 1 sees keys 0, 1 with logits 0 and 2s.
        let (a, b) = (1.0f32, (2.0 * s).exp());
        let expected1 = [(1.0 * a + 3.0 * b) / (a + b), (2.0 * a + 4.0 * b) / (a + b)];
        assert!((out[2] - expected1[0]).abs() < 1e-6 && (out[3] - expected1[1]).abs() < 1e-6);
        // Query 2 sees all keys with logits s, 2s, 2s.
        let w = [s.exp(), (2.0 * s).exp(), (2.0 * s).exp()];
        let z: f32 = w.iter().sum();
        let e0 = (w[0] * 1.0 + w[1] * 3.0 + w[2] * 5.0) / z;
        assert!((out[4] - e0).abs() < 1e-6);
    }
}
