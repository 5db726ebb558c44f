#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Quantized matrix products against the f64 product of the dequantized weights, on shapes
//! with ragged tails (K not a multiple of the group or of the SIMD width, odd N, M = 1 and
//! M > 1), and quantize → dequantize error bounds.

use vla_rt::model::linear::{Linear, LinearWeights, QuantFormat};
use vla_rt::model::quant::{self, Int4Weights, Int8Weights};
use vla_rt::model::quant_kernels as kernels;

/// SplitMix64: deterministic test data without a dependency.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn vec(&mut self, len: usize, scale: f32) -> Vec<f32> {
        (0..len).map(|_| self.uniform() * scale).collect()
    }

    /// Values with a per-row offset, so that INT4 groups are skewed as in real weights.
    fn skewed_rows(&mut self, rows: usize, cols: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(rows * cols);
        for _ in 0..rows {
            let offset = self.uniform() * 0.5;
            out.extend((0..cols).map(|_| offset + self.uniform() * 0.3));
        }
        out
    }
}

/// (M, K, N): K around the SIMD widths (8, 16, 32) and the INT4 group (128), odd N.
const SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (1, 7, 3),
    (1, 31, 5),
    (1, 33, 9),
    (1, 64, 17),
    (1, 127, 33),
    (1, 128, 31),
    (1, 129, 7),
    (1, 200, 65),
    (1, 257, 129),
    (1, 300, 301),
    (2, 45, 11),
    (3, 130, 19),
    (5, 77, 13),
    (7, 256, 41),
    (17, 129, 3),
    (33, 385, 97),
];

/// f64 reference `x · Wᵀ + b`, and the sum of |x|·|w| per output (the scale of the rounding).
fn reference(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    m: usize,
    k: usize,
    n: usize,
) -> (Vec<f64>, Vec<f64>) {
    let mut out = vec![0.0f64; m * n];
    let mut magnitude = vec![0.0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut acc = bias.map_or(0.0, |b| f64::from(b[j]));
            let mut mag = bias.map_or(0.0, |b| f64::from(b[j]).abs());
            for p in 0..k {
                let prod = f64::from(x[i * k + p]) * f64::from(w[j * k + p]);
                acc += prod;
                mag += prod.abs();
            }
            out[i * n + j] = acc;
            magnitude[i * n + j] = mag;
        }
    }
    (out, magnitude)
}

fn assert_close(got: &[f32], want: &[f64], magnitude: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: output length");
    for (idx, ((&g, &w), &mag)) in got.iter().zip(want).zip(magnitude).enumerate() {
        // f32 accumulation of K products, each rounded: a few ulps of the magnitude sum.
        let tol = 1e-5 * mag + 1e-6;
        assert!(
            (f64::from(g) - w).abs() <= tol,
            "{what}: output {idx} is {g}, reference {w} (tolerance {tol:e})"
        );
    }
}

#[test]
fn int8_and_int4_products_equal_dequantized_reference() {
    let mut rng = Rng(7);
    for &(m, k, n) in SHAPES {
        for format in [QuantFormat::Int8, QuantFormat::Int4] {
            for with_bias in [false, true] {
                let w = rng.skewed_rows(n, k);
                let bias = with_bias.then(|| rng.vec(n, 0.5));
                let x = rng.vec(m * k, 1.0);
                let mut layer = Linear::from_f32("t", w, n, k, bias.clone()).unwrap();
                layer.quantize("t", format).unwrap();
                let dequant = layer.dequantized_weight();
                let (want, mag) = reference(&x, &dequant, bias.as_deref(), m, k, n);
                let mut got = vec![f32::NAN; m * n];
                layer.forward(&x, &mut got).unwrap();
                assert_close(
                    &got,
                    &want,
                    &mag,
                    &format!("{format:?} M={m} K={k} N={n} bias={with_bias}"),
                );
            }
        }
    }
}

#[test]
fn w8a8_product_equals_reference_on_quantized_activations() {
    let mut rng = Rng(11);
    for &(m, k, n) in SHAPES {
        let w = rng.vec(n * k, 0.2);
        let bias = rng.vec(n, 0.5);
        // Some inputs beyond the calibrated range, to exercise the clamp.
        let x = rng.vec(m * k, 1.2);
        let act_scale = 1.0 / 127.0;
        let mut layer = Linear::from_f32("t", w, n, k, Some(bias.clone())).unwrap();
        layer
            .quantize("t", QuantFormat::W8A8 { act_scale })
            .unwrap();
        let dequant = layer.dequantized_weight();
        let x_fake_quant: Vec<f32> = x
            .iter()
            .map(|&v| (v / act_scale).round().clamp(-127.0, 127.0) * act_scale)
            .collect();
        let (want, mag) = reference(&x_fake_quant, &dequant, Some(&bias), m, k, n);
        let mut got = vec![f32::NAN; m * n];
        layer.forward(&x, &mut got).unwrap();
        assert_close(&got, &want, &mag, &format!("W8A8 M={m} K={k} N={n}"));
    }
}

#[test]
fn w8a8_activation_quantization_rounds_and_clamps() {
    let mut q = [0i8; 5];
    quant::quantize_activations(&[0.26, -0.74, 10.0, -10.0, 0.0], 0.5, &mut q);
    assert_eq!(q, [1, -1, 20, -20, 0]);
    quant::quantize_activations(&[1000.0, -1000.0, 63.4, -63.6, 0.24], 0.5, &mut q);
    assert_eq!(q, [127, -127, 127, -127, 0]);
}

#[test]
fn int8_dequantize_error_is_within_half_a_step() {
    let mut rng = Rng(3);
    for &(n, k) in &[(1, 1), (5, 31), (9, 300), (4, 129)] {
        let w = rng.skewed_rows(n, k);
        let q = Int8Weights::quantize(&w, n, k);
        let mut row = vec![0.0f32; k];
        for r in 0..n {
            let max_abs = w[r * k..(r + 1) * k]
                .iter()
                .fold(0.0f32, |a, v| a.max(v.abs()));
            assert!((q.scales[r] - max_abs / 127.0).abs() <= 1e-7 * max_abs);
            q.dequantize_row(r, k, &mut row);
            for c in 0..k {
                let err = (row[c] - w[r * k + c]).abs();
                assert!(
                    err <= q.scales[r] * 0.5 * (1.0 + 1e-5),
                    "int8 [{n},{k}] row {r} col {c}: error {err}, scale {}",
                    q.scales[r]
                );
            }
        }
    }
}

#[test]
fn int4_groups_cover_the_row_and_error_is_within_half_a_step() {
    let mut rng = Rng(5);
    for &(n, k, groups) in &[(3, 1, 1), (2, 77, 1), (3, 128, 1), (3, 129, 2), (2, 300, 3)] {
        let w = rng.skewed_rows(n, k);
        let q = Int4Weights::quantize(&w, n, k);
        assert_eq!(q.group_size, k.min(128), "group size for K={k}");
        assert_eq!(q.groups_per_row(k), groups, "groups for K={k}");
        assert_eq!(q.packed.len(), n * k.div_ceil(2), "packed bytes for K={k}");
        let mut row = vec![0.0f32; k];
        for r in 0..n {
            q.dequantize_row(r, k, &mut row);
            for c in 0..k {
                let g = r * groups + c / q.group_size;
                let err = (row[c] - w[r * k + c]).abs();
                assert!(
                    err <= q.scales[g] * 0.5 * (1.0 + 1e-4) + 1e-7,
                    "int4 [{n},{k}] row {r} col {c}: error {err}, scale {}",
                    q.scales[g]
                );
            }
        }
    }
}

#[test]
fn int4_extremes_of_each_group_are_exact_codes() {
    // Asymmetric codes put the group's min at code 0 and its max at code 15.
    let w = [-3.0f32, 0.0, 1.0, 12.0, 5.0];
    let q = Int4Weights::quantize(&w, 1, 5);
    let mut row = [0.0f32; 5];
    q.dequantize_row(0, 5, &mut row);
    assert_eq!(row[0], -3.0);
    assert!((row[3] - 12.0).abs() < 1e-5);
    assert_eq!(q.packed.as_slice()[0] & 0x0F, 0);
    assert_eq!(q.packed.as_slice()[1] >> 4, 15);
}

#[test]
fn constant_and_zero_rows_quantize_without_nan() {
    let w = [0.0f32, 0.0, 0.0, 2.5, 2.5, 2.5];
    for format in [QuantFormat::Int8, QuantFormat::Int4] {
        let mut layer = Linear::from_f32("t", w.to_vec(), 2, 3, None).unwrap();
        layer.quantize("t", format).unwrap();
        let d = layer.dequantized_weight();
        for (got, want) in d.iter().zip(&w) {
            assert!((got - want).abs() < 1e-6, "{format:?}: {got} vs {want}");
        }
    }
}

#[test]
fn simd_dot_kernels_match_portable_kernels_on_ragged_lengths() {
    let mut rng = Rng(13);
    for len in [
        0usize, 1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 1000,
    ] {
        let x = rng.vec(len, 1.0);
        let q8: Vec<i8> = (0..len).map(|_| (rng.next_u64() % 255) as i8).collect();
        let b8: Vec<i8> = (0..len)
            .map(|_| ((rng.next_u64() % 255) as i64 - 127) as i8)
            .collect();
        let packed: Vec<u8> = (0..len.div_ceil(2)).map(|_| rng.next_u64() as u8).collect();

        let mag: f32 = x.iter().map(|v| v.abs() * 127.0).sum::<f32>() + 1e-6;
        let simd = kernels::dot_i8_f32(&q8, &x);
        let portable = kernels::dot_i8_f32_portable(&q8, &x);
        assert!((simd - portable).abs() <= 1e-5 * mag, "i8·f32 len {len}");

        let simd = kernels::dot_u4_f32(&packed, &x);
        let portable = kernels::dot_u4_f32_portable(&packed, &x);
        let exact: f64 = (0..len)
            .map(|k| f64::from(kernels::nibble(&packed, k)) * f64::from(x[k]))
            .sum();
        assert!(
            (f64::from(simd) - exact).abs() <= 1e-5 * f64::from(mag),
            "u4·f32 len {len}"
        );
        assert!((f64::from(portable) - exact).abs() <= 1e-5 * f64::from(mag));

        let exact: i32 = q8
            .iter()
            .zip(&b8)
            .map(|(&a, &b)| i32::from(a) * i32::from(b))
            .sum();
        assert_eq!(kernels::dot_i8_i8(&q8, &b8), exact, "i8·i8 len {len}");
        assert_eq!(kernels::dot_i8_i8_portable(&q8, &b8), exact);
    }
}

#[test]
fn nibble_planes_put_each_value_under_its_nibble_scaled_back_exactly() {
    let mut rng = Rng(23);
    let x = rng.vec(200, 3.0);
    let mut planes = vec![f32::NAN; kernels::u4_planes_len(x.len())];
    assert_eq!(planes.len(), 192, "three whole blocks of 64");
    kernels::u4_planes(&x, &mut planes);
    for block in 0..3 {
        for n in 0..8 {
            for d in 0..8 {
                let scale = if n == 7 { 1.0 } else { 16f32.powi(n as i32) };
                assert_eq!(
                    planes[64 * block + 8 * n + d] * scale,
                    x[64 * block + 8 * d + n],
                    "block {block} nibble {n} word {d}"
                );
            }
        }
    }
}

#[test]
fn int8_dot_is_exact_at_the_extremes_of_its_range() {
    // -128 weights against ±127 activations: the largest i16 pair sums the SIMD kernels form.
    for len in [64usize, 130, 4096] {
        let weights = vec![-128i8; len];
        for activation in [127i8, -127] {
            let acts = vec![activation; len];
            let exact = len as i32 * -128 * i32::from(activation);
            assert_eq!(kernels::dot_i8_i8(&weights, &acts), exact, "len {len}");
            assert_eq!(kernels::dot_i8_i8(&acts, &acts), len as i32 * 127 * 127);
        }
    }
}

#[test]
fn grouped_int4_kernels_match_per_group_reference() {
    let mut rng = Rng(29);
    // Whole blocks, block tails, groups of one and several blocks, one group per row, and
    // group sizes the plane kernel hands to the per-group one (32, 8, 96, 33).
    for &(len, group) in &[
        (1, 1),
        (33, 33),
        (99, 33),
        (63, 63),
        (64, 64),
        (65, 65),
        (127, 128),
        (128, 128),
        (129, 128),
        (200, 64),
        (300, 128),
        (4100, 128),
        (11008, 128),
        (192, 192),
        (96, 32),
        (50, 8),
        (384, 96),
    ] {
        let x = rng.vec(len, 1.0);
        let packed: Vec<u8> = (0..len.div_ceil(2)).map(|_| rng.next_u64() as u8).collect();
        let scales = rng.vec(len.div_ceil(group), 2.0);
        let mut planes = vec![0.0; kernels::u4_planes_len(len)];
        kernels::u4_planes(&x, &mut planes);
        let exact: f64 = (0..len)
            .map(|k| {
                f64::from(scales[k / group])
                    * f64::from(kernels::nibble(&packed, k))
                    * f64::from(x[k])
            })
            .sum();
        let mag: f64 = (0..len)
            .map(|k| f64::from(scales[k / group].abs()) * 15.0 * f64::from(x[k].abs()))
            .sum::<f64>()
            + 1e-6;
        let planes_kernel =
            kernels::dot_u4_f32_grouped_planes(&packed, &x, &planes, &scales, group);
        let per_group = kernels::dot_u4_f32_grouped(&packed, &x, &scales, group);
        for (got, kernel) in [(planes_kernel, "planes"), (per_group, "per group")] {
            assert!(
                (f64::from(got) - exact).abs() <= 1e-5 * mag,
                "{kernel} kernel, len {len} group {group}: {got} against {exact}"
            );
        }
    }
}

#[test]
fn set_weights_rejects_a_wrong_shape_naming_the_layer() {
    let mut layer = Linear::from_f32("l", vec![0.5; 12], 3, 4, None).unwrap();
    let other = Int8Weights::quantize(&[0.5; 10], 2, 5);
    let err = layer
        .set_weights("language_model.lm_head", LinearWeights::Int8(other))
        .unwrap_err()
        .to_string();
    assert!(err.contains("language_model.lm_head"), "{err}");
    assert!(err.contains("[3, 4]"), "{err}");
    // Requantizing quantized weights would stack two roundings.
    layer.quantize("l", QuantFormat::Int4).unwrap();
    let err = layer
        .quantize("l", QuantFormat::Int8)
        .unwrap_err()
        .to_string();
    assert!(err.contains("int4"), "{err}");
}

#[test]
fn quantized_weights_take_the_expected_bytes() {
    let (n, k) = (7, 300);
    let w = vec![0.1f32; n * k];
    let mut int8 = Linear::from_f32("a", w.clone(), n, k, None).unwrap();
    int8.quantize("a", QuantFormat::Int8).unwrap();
    assert_eq!(int8.weight_bytes(), n * k + n * 4);
    let mut int4 = Linear::from_f32("b", w, n, k, None).unwrap();
    int4.quantize("b", QuantFormat::Int4).unwrap();
    // 150 bytes of codes per row, 3 groups with scale and min each.
    assert_eq!(int4.weight_bytes(), n * 150 + n * 3 * 8);
}
