//! Properties of the Pillow bicubic resize beyond the fixture sizes: the horizontal-only and
//! vertical-only paths agree under transposition, flat images stay flat at any size, and
//! tiny or very wide frames go through without error.
// A test fails by panicking: unwrap is the assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use vla_rt::preprocess::{BicubicResizer, RgbImage, INPUT_SIZE};

/// Deterministic high-contrast content (a xorshift stream), so that any wrong tap shows.
fn noise_image(width: u32, height: u32, seed: u64) -> RgbImage {
    let mut state = seed | 1;
    let data = (0..width as usize * height as usize * 3)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    RgbImage {
        width,
        height,
        data,
    }
}

fn transpose(image: &RgbImage) -> RgbImage {
    let (width, height) = (image.width as usize, image.height as usize);
    let mut data = vec![0u8; image.data.len()];
    for y in 0..height {
        for x in 0..width {
            let from = (y * width + x) * 3;
            let to = (x * height + y) * 3;
            data[to..to + 3].copy_from_slice(&image.data[from..from + 3]);
        }
    }
    RgbImage {
        width: image.height,
        height: image.width,
        data,
    }
}

#[test]
fn width_only_and_height_only_resizes_are_transposes() {
    // Pillow runs only the pass whose dimension changes, with the same taps on either axis,
    // so resizing the transposed image must give the transposed result. Covers downscales
    // that take the constant-window horizontal loop (300, 640), the general one (1280, more
    // taps than it is specialised for) and an upscale (100).
    let mut resizer = BicubicResizer::new();
    for (length, seed) in [(300u32, 1u64), (640, 2), (1280, 3), (100, 4)] {
        let wide = noise_image(length, INPUT_SIZE as u32, seed);
        let wide_out = RgbImage {
            width: INPUT_SIZE as u32,
            height: INPUT_SIZE as u32,
            data: resizer
                .resize(&wide, INPUT_SIZE, INPUT_SIZE)
                .unwrap()
                .to_vec(),
        };
        let tall = transpose(&wide);
        let tall_out = resizer
            .resize(&tall, INPUT_SIZE, INPUT_SIZE)
            .unwrap()
            .to_vec();
        assert_eq!(transpose(&wide_out).data, tall_out, "length {length}");
        // Guard against a trivially symmetric result (a blank output): resampled noise keeps
        // a wide spread of values.
        let mut seen = [false; 256];
        wide_out
            .data
            .iter()
            .for_each(|&v| seen[usize::from(v)] = true);
        let distinct = seen.iter().filter(|&&s| s).count();
        assert!(
            distinct > 100,
            "length {length}: only {distinct} distinct values"
        );
    }
}

#[test]
fn flat_images_stay_flat_at_any_size() {
    // Each output sample's fixed-point weights sum to 2^22 within a few units, so a flat
    // colour must come back exactly, including where taps are clamped at the borders.
    let mut resizer = BicubicResizer::new();
    for (width, height) in [
        (640u32, 480u32),
        (1920, 1080),
        (1280, 720),
        (320, 240),
        (100, 50),
        (224, 1000),
        (3, 2),
        (1, 1),
    ] {
        for colour in [[0u8, 0, 0], [255, 255, 255], [17, 128, 254]] {
            let image = RgbImage {
                width,
                height,
                data: colour.repeat(width as usize * height as usize),
            };
            let out = resizer.resize(&image, INPUT_SIZE, INPUT_SIZE).unwrap();
            assert_eq!(out.len(), INPUT_SIZE * INPUT_SIZE * 3);
            assert!(
                out.chunks_exact(3).all(|pixel| pixel == colour),
                "{width}x{height} {colour:?}"
            );
        }
    }
}

#[test]
fn an_edge_is_sharpened_like_keys_cubic() {
    // Bicubic with a = -0.5 overshoots at a step edge: halving a black|white step must give
    // values below 0 clamped to 0 and above 255 clamped to 255 next to the edge, and a mid
    // grey near it; a box or bilinear filter would give neither clamp.
    let (width, height) = (448u32, 224u32);
    let mut data = Vec::with_capacity(width as usize * height as usize * 3);
    for _ in 0..height {
        for x in 0..width {
            let value = if x < width / 2 { 40 } else { 200 };
            data.extend_from_slice(&[value, value, value]);
        }
    }
    let image = RgbImage {
        width,
        height,
        data,
    };
    let mut resizer = BicubicResizer::new();
    let out = resizer.resize(&image, INPUT_SIZE, INPUT_SIZE).unwrap();
    let row: Vec<u8> = out[..INPUT_SIZE * 3]
        .chunks_exact(3)
        .map(|p| p[0])
        .collect();
    // Far from the edge: unchanged. Next to it: overshoot beyond both levels.
    assert_eq!(row[0], 40);
    assert_eq!(row[INPUT_SIZE - 1], 200);
    let (low, high) = (row.iter().min().unwrap(), row.iter().max().unwrap());
    assert!(
        *low < 40 && *high > 200,
        "no overshoot: {:?}",
        &row[105..119]
    );
}
