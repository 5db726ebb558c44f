//! Quantized weight formats of [`super::linear::Linear`] and their matrix products.
//!
//! Three formats, all for a weight `W[out_features, in_features]` applied as `y = x · Wᵀ + b`:
//!
//! - [`Int8Weights`]: weight-only INT8, symmetric, one scale per output channel
//!   (`w ≈ scale[n] · q`, `q ∈ [-127, 127]`). Activations stay f32.
//! - [`Int4Weights`]: weight-only INT4, group-wise along the input dimension (groups of
//!   [`INT4_GROUP`] = 128, or the whole row when it is shorter), packed two per byte.
//!   **Asymmetric** (`w ≈ scale[g] · q + min[g]`, `q ∈ [0, 15]`): a group of 128 weights is
//!   rarely centred on zero, and a symmetric code would spend part of its only 16 levels on a
//!   side the group never reaches; fitting `[min, max]` halves the step in skewed groups. The
//!   offset costs almost nothing in the kernel: `Σ_k w_k x_k = scale · Σ_k q_k x_k + min · Σ_k x_k`,
//!   and the per-group activation sums are computed once per input row and shared by every
//!   output row.
//! - [`W8A8Weights`]: INT8 weights per output channel plus one calibrated activation scale per
//!   tensor: the input row is quantized to int8 (`xq = round(x / act_scale)`, clamped to ±127),
//!   products accumulate exactly in i32, then `y = acc · act_scale · scale[n] + b`. Used for the
//!   projector when calibration scales exist.
//!
//! Decode runs with one input row (M = 1): the product is a matrix-vector product bound by
//! reading the weights, so it is a fused dequantize-dot over output rows
//! ([`super::quant_kernels`]), split over rayon in blocks of rows. A batched decode step (a
//! few rows, M ≤ 4) runs the same dot per row and output, each weight row read once for all
//! the rows. Prefill (M ≈ 280) is compute-bound: tiles of rows are dequantized to f32 and
//! multiplied with `gemm`.
//!
//! Quantized bytes are either owned or borrowed from a memory-mapped pre-quantized file
//! ([`QuantBytes`]), so a robot loading a 7B model does not copy gigabytes at start.

use std::fmt;
use std::sync::Arc;

use rayon::prelude::*;

use super::quant_kernels::{
    dot_i8_f32, dot_i8_i8, dot_u4_f32_grouped_planes, nibble, u4_planes, u4_planes_len,
};

/// Group length of INT4 weights along the input dimension.
pub const INT4_GROUP: usize = 128;

/// INT4 groups per row whose activation sums live on the stack (rows up to 64 Ki values).
const MAX_STACK_GROUPS: usize = 512;

/// Row width up to which the nibble-plane activations of an INT4 product live on the stack
/// (64 KiB; Llama-2-7B's widest is 11008).
const MAX_STACK_PLANES: usize = 16384;

/// Input rows at or below which quantized products run as matrix-vector products; above it
/// they dequantize tiles and call `gemm`.
const GEMV_MAX_ROWS: usize = 4;

/// f32 values of one dequantized weight tile fed to `gemm` (4 MiB), small enough to stay in
/// the last-level cache while the tile is multiplied.
const DEQUANT_TILE_VALUES: usize = 1 << 20;

/// Weight values below which a product runs on the calling thread (rayon's hand-off costs
/// more than the work).
const PARALLEL_MIN_WEIGHTS: usize = 1 << 15;

/// Bytes of a quantized tensor, owned or inside a memory-mapped file.
#[derive(Clone)]
pub enum QuantBytes {
    Owned(Vec<u8>),
    Mapped {
        map: Arc<memmap2::Mmap>,
        offset: usize,
        len: usize,
    },
}

impl QuantBytes {
    /// The bytes. A mapped range was checked against the map's length when it was created.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            QuantBytes::Owned(v) => v,
            QuantBytes::Mapped { map, offset, len } => &map[*offset..*offset + *len],
        }
    }

    pub fn len(&self) -> usize {
        match self {
            QuantBytes::Owned(v) => v.len(),
            QuantBytes::Mapped { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A range of a shared map, or `None` when it does not fit inside the map.
    pub fn mapped(map: Arc<memmap2::Mmap>, offset: usize, len: usize) -> Option<Self> {
        let end = offset.checked_add(len)?;
        (end <= map.len()).then_some(QuantBytes::Mapped { map, offset, len })
    }

    pub fn is_mapped(&self) -> bool {
        matches!(self, QuantBytes::Mapped { .. })
    }
}

impl fmt::Debug for QuantBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.is_mapped() { "mapped" } else { "owned" };
        write!(f, "QuantBytes({kind}, {} bytes)", self.len())
    }
}

fn as_i8(bytes: &[u8]) -> &[i8] {
    // SAFETY: i8 and u8 have the same size and alignment and every bit pattern is valid for
    // both, so the same memory reinterpreted as i8 is a valid slice of the same length and
    // lifetime.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<i8>(), bytes.len()) }
}

/// Weight-only INT8, symmetric per output channel: `w[n, k] ≈ scales[n] · q[n, k]`.
#[derive(Clone)]
pub struct Int8Weights {
    /// `[out_features, in_features]` int8 codes, row-major.
    pub codes: QuantBytes,
    /// `[out_features]`.
    pub scales: Vec<f32>,
}

impl fmt::Debug for Int8Weights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Int8Weights({:?}, {} scales)",
            self.codes,
            self.scales.len()
        )
    }
}

impl Int8Weights {
    /// Quantizes a row-major f32 weight `[out_features, in_features]`.
    pub fn quantize(weight: &[f32], out_features: usize, in_features: usize) -> Self {
        let k = in_features.max(1);
        let mut codes = vec![0u8; out_features * in_features];
        let mut scales = vec![0.0f32; out_features];
        codes
            .par_chunks_mut(k)
            .zip(scales.par_iter_mut())
            .zip(weight.par_chunks(k))
            .for_each(|((code_row, scale), row)| {
                let (row_scale, inv) = symmetric_scale(row, 127.0);
                *scale = row_scale;
                for (c, &w) in code_row.iter_mut().zip(row) {
                    *c = (w * inv).round().clamp(-127.0, 127.0) as i8 as u8;
                }
            });
        Self {
            codes: QuantBytes::Owned(codes),
            scales,
        }
    }

    pub fn codes(&self) -> &[i8] {
        as_i8(self.codes.as_slice())
    }

    /// Checks the tensors' lengths against the layer's shape.
    pub fn check_shape(&self, out_features: usize, in_features: usize) -> Result<(), String> {
        if self.codes.len() != out_features * in_features || self.scales.len() != out_features {
            return Err(format!(
                "int8 codes {} bytes and {} scales, expected {} and {}",
                self.codes.len(),
                self.scales.len(),
                out_features * in_features,
                out_features
            ));
        }
        Ok(())
    }

    /// Row `n` of the weight as f32 into `out[in_features]`.
    pub fn dequantize_row(&self, n: usize, in_features: usize, out: &mut [f32]) {
        let codes = &self.codes()[n * in_features..(n + 1) * in_features];
        let scale = self.scales[n];
        for (o, &c) in out.iter_mut().zip(codes) {
            *o = f32::from(c) * scale;
        }
    }

    pub fn bytes(&self) -> usize {
        self.codes.len() + self.scales.len() * 4
    }
}

/// Weight-only INT4, asymmetric, group-wise along the input dimension:
/// `w[n, k] ≈ scales[n, g] · q[n, k] + mins[n, g]` with `g = k / group_size`.
#[derive(Clone)]
pub struct Int4Weights {
    /// `[out_features, ⌈in_features / 2⌉]`: each row starts on a byte boundary, element `k`
    /// in the low nibble of byte `k / 2` when `k` is even, the high nibble when odd.
    pub packed: QuantBytes,
    /// `[out_features, groups_per_row]`.
    pub scales: Vec<f32>,
    /// `[out_features, groups_per_row]`: the value that code 0 stands for.
    pub mins: Vec<f32>,
    /// Values per group: [`INT4_GROUP`], or `in_features` when that is shorter.
    pub group_size: usize,
}

impl fmt::Debug for Int4Weights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Int4Weights({:?}, group {}, {} scales)",
            self.packed,
            self.group_size,
            self.scales.len()
        )
    }
}

/// The INT4 group length for a row of `in_features` values.
pub fn int4_group_size(in_features: usize) -> usize {
    INT4_GROUP.min(in_features.max(1))
}

impl Int4Weights {
    /// Quantizes a row-major f32 weight `[out_features, in_features]` in groups of
    /// [`int4_group_size`].
    pub fn quantize(weight: &[f32], out_features: usize, in_features: usize) -> Self {
        let group_size = int4_group_size(in_features);
        let groups = in_features.div_ceil(group_size);
        let row_bytes = in_features.div_ceil(2);
        let mut packed = vec![0u8; out_features * row_bytes];
        let mut scales = vec![0.0f32; out_features * groups];
        let mut mins = vec![0.0f32; out_features * groups];
        packed
            .par_chunks_mut(row_bytes.max(1))
            .zip(scales.par_chunks_mut(groups.max(1)))
            .zip(mins.par_chunks_mut(groups.max(1)))
            .zip(weight.par_chunks(in_features.max(1)))
            .for_each(|(((packed_row, row_scales), row_mins), row)| {
                for (g, group) in row.chunks(group_size).enumerate() {
                    let lo = group.iter().copied().fold(f32::INFINITY, f32::min);
                    let hi = group.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let scale = (hi - lo) / 15.0;
                    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
                    row_scales[g] = scale;
                    row_mins[g] = lo;
                    for (j, &w) in group.iter().enumerate() {
                        let k = g * group_size + j;
                        let code = ((w - lo) * inv).round().clamp(0.0, 15.0) as u8;
                        packed_row[k / 2] |= if k.is_multiple_of(2) { code } else { code << 4 };
                    }
                }
            });
        Self {
            packed: QuantBytes::Owned(packed),
            scales,
            mins,
            group_size,
        }
    }

    pub fn groups_per_row(&self, in_features: usize) -> usize {
        in_features.div_ceil(self.group_size.max(1))
    }

    /// Checks the tensors' lengths and the group size against the layer's shape.
    pub fn check_shape(&self, out_features: usize, in_features: usize) -> Result<(), String> {
        if self.group_size != int4_group_size(in_features) {
            return Err(format!(
                "int4 group size {}, expected {}",
                self.group_size,
                int4_group_size(in_features)
            ));
        }
        let groups = self.groups_per_row(in_features);
        let expected_packed = out_features * in_features.div_ceil(2);
        if self.packed.len() != expected_packed
            || self.scales.len() != out_features * groups
            || self.mins.len() != out_features * groups
        {
            return Err(format!(
                "int4 codes {} bytes, {} scales, {} mins, expected {}, {} and {}",
                self.packed.len(),
                self.scales.len(),
                self.mins.len(),
                expected_packed,
                out_features * groups,
                out_features * groups
            ));
        }
        Ok(())
    }

    /// Row `n` of the weight as f32 into `out[in_features]`.
    pub fn dequantize_row(&self, n: usize, in_features: usize, out: &mut [f32]) {
        let row_bytes = in_features.div_ceil(2);
        let groups = self.groups_per_row(in_features);
        let group_size = self.group_size.max(1);
        let packed = &self.packed.as_slice()[n * row_bytes..(n + 1) * row_bytes];
        for (g, dst) in out[..in_features].chunks_mut(group_size).enumerate() {
            let (scale, min) = (self.scales[n * groups + g], self.mins[n * groups + g]);
            let start = g * group_size;
            if start.is_multiple_of(2) {
                // Whole bytes: two values per byte, in a loop the compiler vectorises.
                let last_k = start + dst.len() - 1;
                let bytes = &packed[start / 2..];
                let mut pairs = dst.chunks_exact_mut(2);
                for (pair, &byte) in (&mut pairs).zip(bytes) {
                    pair[0] = f32::from(byte & 0x0F) * scale + min;
                    pair[1] = f32::from(byte >> 4) * scale + min;
                }
                if let [last] = pairs.into_remainder() {
                    *last = f32::from(nibble(packed, last_k)) * scale + min;
                }
            } else {
                for (j, o) in dst.iter_mut().enumerate() {
                    *o = f32::from(nibble(packed, start + j)) * scale + min;
                }
            }
        }
    }

    pub fn bytes(&self) -> usize {
        self.packed.len() + (self.scales.len() + self.mins.len()) * 4
    }
}

/// INT8 weights with INT8 activations: the weights of [`Int8Weights`] plus the calibrated
/// per-tensor scale of this layer's input.
#[derive(Debug, Clone)]
pub struct W8A8Weights {
    pub weights: Int8Weights,
    /// Value of one activation step: inputs are quantized as `round(x / act_scale)`.
    pub act_scale: f32,
}

/// `(scale, 1 / scale)` of a symmetric code with `levels` steps on each side of zero;
/// `(0, 0)` for an all-zero (or non-finite) row so that every code is 0.
fn symmetric_scale(values: &[f32], levels: f32) -> (f32, f32) {
    let max_abs = values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    if max_abs > 0.0 && max_abs.is_finite() {
        let scale = max_abs / levels;
        (scale, 1.0 / scale)
    } else {
        (0.0, 0.0)
    }
}

/// Fills each of the `rows` rows of `out[rows, n]` with the bias, or zeros.
fn init_with_bias(out: &mut [f32], n: usize, bias: Option<&[f32]>) {
    match bias {
        Some(b) => out
            .chunks_exact_mut(n)
            .for_each(|row| row.copy_from_slice(&b[..n])),
        None => out.fill(0.0),
    }
}

/// Rows of the weight per rayon task in a matrix-vector product: about eight tasks per
/// thread for load balance, at least 8 rows each.
fn gemv_block_rows(n: usize, k: usize) -> usize {
    if n * k < PARALLEL_MIN_WEIGHTS {
        return n.max(1);
    }
    (n / (rayon::current_num_threads() * 8)).max(8)
}

/// `out[m, n] = x[m, k] · Wᵀ (+ bias)` for INT8 weights. Shapes are checked by the caller.
pub fn matmul_int8(
    x: &[f32],
    weights: &Int8Weights,
    out: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
    bias: Option<&[f32]>,
) {
    if m > GEMV_MAX_ROWS {
        return matmul_dequantized_tiles(x, out, m, k, n, bias, |row, dst| {
            weights.dequantize_row(row, k, dst)
        });
    }
    let codes = weights.codes();
    if m > 1 {
        // The same value per (input row, output) as the loop below, each weight row read
        // once for all input rows.
        return gemv_weight_stationary(out, m, k, n, |row, r| {
            let dot = dot_i8_f32(&codes[row * k..(row + 1) * k], &x[r * k..(r + 1) * k]);
            dot * weights.scales[row] + bias.map_or(0.0, |b| b[row])
        });
    }
    for (x_row, out_row) in x.chunks_exact(k).zip(out.chunks_exact_mut(n)).take(m) {
        let block = gemv_block_rows(n, k);
        let rows = |(b, dst): (usize, &mut [f32])| {
            for (j, o) in dst.iter_mut().enumerate() {
                let row = b * block + j;
                let dot = dot_i8_f32(&codes[row * k..(row + 1) * k], x_row);
                *o = dot * weights.scales[row] + bias.map_or(0.0, |b| b[row]);
            }
        };
        if block >= n {
            rows((0, out_row));
        } else {
            out_row.par_chunks_mut(block).enumerate().for_each(rows);
        }
    }
}

/// `out[m, n] = x[m, k] · Wᵀ (+ bias)` for INT4 weights. Shapes are checked by the caller.
pub fn matmul_int4(
    x: &[f32],
    weights: &Int4Weights,
    out: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
    bias: Option<&[f32]>,
) {
    if m > GEMV_MAX_ROWS {
        return matmul_dequantized_tiles(x, out, m, k, n, bias, |row, dst| {
            weights.dequantize_row(row, k, dst)
        });
    }
    let group = weights.group_size.max(1);
    let groups = k.div_ceil(group);
    let row_bytes = k.div_ceil(2);
    let packed = weights.packed.as_slice();
    if m > 1 {
        // Per input row, its group sums and nibble planes; then the same value per (input
        // row, output) as the loop below, each weight row read once for all input rows.
        let planes_len = u4_planes_len(k);
        let mut group_sums = vec![0.0f32; m * groups];
        let mut planes = vec![0.0f32; m * planes_len];
        for (r, x_row) in x.chunks_exact(k).take(m).enumerate() {
            let sums = &mut group_sums[r * groups..(r + 1) * groups];
            for (sum, chunk) in sums.iter_mut().zip(x_row.chunks(group)) {
                *sum = chunk.iter().sum();
            }
            u4_planes(x_row, &mut planes[r * planes_len..(r + 1) * planes_len]);
        }
        return gemv_weight_stationary(out, m, k, n, |row, r| {
            let x_row = &x[r * k..(r + 1) * k];
            let sums = &group_sums[r * groups..(r + 1) * groups];
            let row_planes = &planes[r * planes_len..(r + 1) * planes_len];
            let packed_row = &packed[row * row_bytes..(row + 1) * row_bytes];
            let row_scales = &weights.scales[row * groups..(row + 1) * groups];
            let row_mins = &weights.mins[row * groups..(row + 1) * groups];
            let offsets: f32 = row_mins.iter().zip(sums).map(|(m, s)| m * s).sum();
            dot_u4_f32_grouped_planes(packed_row, x_row, row_planes, row_scales, group)
                + offsets
                + bias.map_or(0.0, |b| b[row])
        });
    }
    for (x_row, out_row) in x.chunks_exact(k).zip(out.chunks_exact_mut(n)).take(m) {
        // [groups]: shared by every output row, it turns the per-group offset into one
        // multiply-add.
        let (mut stack_sums, mut heap_sums) = ([0.0f32; MAX_STACK_GROUPS], Vec::new());
        let group_sums = scratch(&mut stack_sums, &mut heap_sums, groups);
        for (sum, chunk) in group_sums.iter_mut().zip(x_row.chunks(group)) {
            *sum = chunk.iter().sum();
        }
        let group_sums: &[f32] = group_sums;
        let (mut stack_planes, mut heap_planes) = ([0.0f32; MAX_STACK_PLANES], Vec::new());
        let planes = scratch(&mut stack_planes, &mut heap_planes, u4_planes_len(k));
        u4_planes(x_row, planes);
        let planes: &[f32] = planes;
        let block = gemv_block_rows(n, k);
        let rows = |(b, dst): (usize, &mut [f32])| {
            for (j, o) in dst.iter_mut().enumerate() {
                let row = b * block + j;
                let packed_row = &packed[row * row_bytes..(row + 1) * row_bytes];
                let row_scales = &weights.scales[row * groups..(row + 1) * groups];
                let row_mins = &weights.mins[row * groups..(row + 1) * groups];
                let offsets: f32 = row_mins.iter().zip(group_sums).map(|(m, s)| m * s).sum();
                let acc = dot_u4_f32_grouped_planes(packed_row, x_row, planes, row_scales, group)
                    + offsets
                    + bias.map_or(0.0, |b| b[row]);
                *o = acc;
            }
        };
        if block >= n {
            rows((0, out_row));
        } else {
            out_row.par_chunks_mut(block).enumerate().for_each(rows);
        }
    }
}

/// `out[r, row] = value(row, r)` for the `m` rows of `out[m, n]` (a few input rows of a
/// matrix-vector product): blocks of weight rows are split over rayon as for one input row,
/// and inside a block each weight row serves every input row while it sits in L1, so the
/// weights are read once for the batch instead of once per row.
fn gemv_weight_stationary(
    out: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
    value: impl Fn(usize, usize) -> f32 + Sync,
) {
    if n == 0 {
        return;
    }
    let block = gemv_block_rows(n, k);
    // Task `b` writes columns `b·block ..` of every output row.
    let mut tasks: Vec<Vec<&mut [f32]>> = (0..n.div_ceil(block))
        .map(|_| Vec::with_capacity(m))
        .collect();
    for out_row in out.chunks_exact_mut(n).take(m) {
        for (task, dst) in tasks.iter_mut().zip(out_row.chunks_mut(block)) {
            task.push(dst);
        }
    }
    let run = |(b, mut dsts): (usize, Vec<&mut [f32]>)| {
        let len = dsts.first().map_or(0, |d| d.len());
        for j in 0..len {
            let row = b * block + j;
            for (r, dst) in dsts.iter_mut().enumerate() {
                dst[j] = value(row, r);
            }
        }
    };
    if tasks.len() == 1 {
        tasks.into_iter().enumerate().for_each(run);
    } else {
        tasks.into_par_iter().enumerate().for_each(run);
    }
}

/// `len` values of scratch: in `stack` when they fit, so that decode does not allocate, else
/// in `heap`.
fn scratch<'a>(stack: &'a mut [f32], heap: &'a mut Vec<f32>, len: usize) -> &'a mut [f32] {
    if len <= stack.len() {
        &mut stack[..len]
    } else {
        heap.resize(len, 0.0);
        heap
    }
}

/// Quantizes activations to int8 with a per-tensor scale: `round(x / scale)` clamped to ±127.
pub fn quantize_activations(x: &[f32], act_scale: f32, out: &mut [i8]) {
    let inv = if act_scale > 0.0 {
        1.0 / act_scale
    } else {
        0.0
    };
    for (q, &v) in out.iter_mut().zip(x) {
        *q = (v * inv).round().clamp(-127.0, 127.0) as i8;
    }
}

/// `out[m, n] = x[m, k] · Wᵀ (+ bias)` with the input quantized to int8 (W8A8). Shapes are
/// checked by the caller.
pub fn matmul_w8a8(
    x: &[f32],
    weights: &W8A8Weights,
    out: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
    bias: Option<&[f32]>,
) {
    let mut xq = vec![0i8; m * k]; // [m, k]
    quantize_activations(&x[..m * k], weights.act_scale, &mut xq);
    let codes = weights.weights.codes();
    let scales = &weights.weights.scales;
    // Output rows are split among threads; inside a task, tiles of weight rows are reused by
    // every input row of the task while they sit in L2.
    const WEIGHT_TILE_ROWS: usize = 32;
    let rows_per_task = if m * n * k < PARALLEL_MIN_WEIGHTS {
        m.max(1)
    } else {
        m.div_ceil(rayon::current_num_threads() * 4).max(1)
    };
    let task = |(t, out_block): (usize, &mut [f32])| {
        let first_row = t * rows_per_task;
        let block_rows = out_block.len() / n.max(1);
        for tile_start in (0..n).step_by(WEIGHT_TILE_ROWS) {
            let tile_end = (tile_start + WEIGHT_TILE_ROWS).min(n);
            for r in 0..block_rows {
                let x_row = &xq[(first_row + r) * k..(first_row + r + 1) * k];
                let out_row = &mut out_block[r * n..(r + 1) * n];
                for col in tile_start..tile_end {
                    let acc = dot_i8_i8(&codes[col * k..(col + 1) * k], x_row);
                    out_row[col] = acc as f32 * (weights.act_scale * scales[col])
                        + bias.map_or(0.0, |b| b[col]);
                }
            }
        }
    };
    if rows_per_task >= m {
        task((0, &mut out[..m * n]));
    } else {
        out[..m * n]
            .par_chunks_mut(rows_per_task * n)
            .enumerate()
            .for_each(task);
    }
}

/// Prefill path: dequantizes tiles of weight rows into f32 (in parallel) and multiplies each
/// tile with `gemm` into its columns of `out`.
fn matmul_dequantized_tiles(
    x: &[f32],
    out: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
    bias: Option<&[f32]>,
    dequantize_row: impl Fn(usize, &mut [f32]) + Sync,
) {
    init_with_bias(&mut out[..m * n], n, bias);
    let tile_rows = (DEQUANT_TILE_VALUES / k.max(1)).clamp(1, n.max(1));
    let mut tile = vec![0.0f32; tile_rows * k]; // [tile_rows, k]
    for tile_start in (0..n).step_by(tile_rows) {
        let rows = tile_rows.min(n - tile_start);
        tile[..rows * k]
            .par_chunks_mut(k)
            .enumerate()
            .for_each(|(j, dst)| dequantize_row(tile_start + j, dst));
        // SAFETY: `x` holds m·k values, `tile` rows·k, and `out` m·n (checked by `Linear::forward`);
        // the destination starts at column `tile_start` of `out` with row stride n, so the
        // m × rows block it writes, out[i·n + tile_start + j] for j < rows ≤ n − tile_start,
        // stays inside `out`. `out` is borrowed mutably, so it aliases neither input.
        unsafe {
            gemm::gemm(
                m,
                rows,
                k,
                out.as_mut_ptr().add(tile_start),
                1,
                n as isize,
                true,
                x.as_ptr(),
                1,
                k as isize,
                tile.as_ptr(),
                k as isize,
                1,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(0),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1).
    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut state = seed;
        (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// A few input rows at once give each row bit for bit what it gives alone, on a shape
    /// split over several tasks, with a ragged INT4 group and an odd width.
    #[test]
    fn a_few_rows_give_each_row_what_it_gives_alone() {
        let (n, k) = (301, 259);
        let w = values(n * k, 1);
        let bias = values(n, 2);
        let int8 = Int8Weights::quantize(&w, n, k);
        let int4 = Int4Weights::quantize(&w, n, k);
        for m in 2..=GEMV_MAX_ROWS {
            let x = values(m * k, 3 + m as u64);
            for bias in [None, Some(bias.as_slice())] {
                let (mut together, mut alone) = (vec![0.0f32; m * n], vec![0.0f32; m * n]);
                matmul_int8(&x, &int8, &mut together, m, k, n, bias);
                for r in 0..m {
                    let rows = (&x[r * k..(r + 1) * k], &mut alone[r * n..(r + 1) * n]);
                    matmul_int8(rows.0, &int8, rows.1, 1, k, n, bias);
                }
                assert_eq!(together, alone, "int8, {m} rows");
                matmul_int4(&x, &int4, &mut together, m, k, n, bias);
                for r in 0..m {
                    let rows = (&x[r * k..(r + 1) * k], &mut alone[r * n..(r + 1) * n]);
                    matmul_int4(rows.0, &int4, rows.1, 1, k, n, bias);
                }
                assert_eq!(together, alone, "int4, {m} rows");
            }
        }
    }
}
