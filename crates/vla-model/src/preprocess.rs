//! Image preprocessing exactly as OpenVLA's processor does it (OPENVLA_FACTS §1): Pillow's
//! bicubic resize to 224 × 224 (aspect ratio not kept), then `/ 255` and two normalisations,
//! giving `[6, 224, 224]` f32 (channels 0-2 DINOv2, 3-5 SigLIP).
//!
//! This stage owns the pixels from an RGB frame to the model's `pixel_values`. It must match
//! the reference bit for bit, so the resize is Pillow 10.3's `ImagingResample` (8-bit path)
//! reproduced operation by operation; any "equivalent" resampler (other fixed-point precision,
//! vertical pass first, float intermediate) moves pixels by one level and is not acceptable.
//! It must never allocate per frame once it has seen a frame size: tap tables and scratch
//! buffers live in the [`Preprocessor`].

use std::path::Path;

/// An 8-bit RGB image, rows top to bottom, pixels interleaved R, G, B.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    /// `width * height * 3` bytes.
    pub data: Vec<u8>,
}

impl RgbImage {
    /// Checks that the image is non-empty and that `data` holds exactly `width * height * 3`
    /// bytes.
    pub fn validate(&self) -> Result<(), PreprocessError> {
        let expected = (self.width as usize)
            .checked_mul(self.height as usize)
            .and_then(|pixels| pixels.checked_mul(3));
        if self.width == 0 || self.height == 0 || expected != Some(self.data.len()) {
            return Err(PreprocessError::BadSize {
                width: self.width,
                height: self.height,
                bytes: self.data.len(),
            });
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    #[error("image {path}: {message}")]
    Image { path: String, message: String },
    #[error("image has invalid size {width}x{height} with {bytes} bytes of RGB data")]
    BadSize {
        width: u32,
        height: u32,
        bytes: usize,
    },
    #[error("preprocessor config {path}: {message}")]
    Config { path: String, message: String },
    #[error("pixel_values buffer has {got} f32 values, expected {expected}")]
    OutputLen { expected: usize, got: usize },
}

/// Mean and standard deviation of one normalisation, per RGB channel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalization {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// Loads a PNG or JPEG file as RGB (any colour type converted to RGB).
pub fn load_image(path: &Path) -> Result<RgbImage, PreprocessError> {
    let image_error = |message: String| PreprocessError::Image {
        path: path.display().to_string(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|e| image_error(format!("cannot read: {e}")))?;
    // The format comes from the bytes, not the extension: camera dumps are often misnamed.
    let format = image::guess_format(&bytes)
        .ok()
        .filter(|format| matches!(format, image::ImageFormat::Png | image::ImageFormat::Jpeg))
        .ok_or_else(|| image_error("not a PNG or JPEG image (unrecognised content)".into()))?;
    if format == image::ImageFormat::Jpeg && !jpeg_has_end_of_image(&bytes) {
        // The JPEG decoder fills a cut-off scan with grey instead of failing; Pillow refuses
        // such files ("image file is truncated"), and a half-grey frame must not reach the
        // policy.
        return Err(image_error(
            "truncated JPEG (no end-of-image marker after the last scan)".into(),
        ));
    }
    let decoded = image::load_from_memory_with_format(&bytes, format)
        .map_err(|e| image_error(format!("cannot decode: {e}")))?;
    // Like Pillow's `convert("RGB")`: alpha is dropped, grey is replicated, 16-bit is scaled.
    let rgb = decoded.into_rgb8();
    let (width, height) = rgb.dimensions();
    let image = RgbImage {
        width,
        height,
        data: rgb.into_raw(),
    };
    image.validate().map_err(|e| image_error(e.to_string()))?;
    Ok(image)
}

/// Whether the last start-of-scan marker (`FF DA`) of a JPEG stream is followed by an
/// end-of-image marker (`FF D9`). Entropy-coded data never holds either byte pair (an `FF`
/// there is stuffed as `FF 00`), and an EXIF thumbnail's markers all come before the main
/// image's scan, so this tells a complete file from one cut inside its last scan.
fn jpeg_has_end_of_image(bytes: &[u8]) -> bool {
    let last_marker = |marker: u8| bytes.windows(2).rposition(|pair| pair == [0xFF, marker]);
    match (last_marker(0xDA), last_marker(0xD9)) {
        (Some(scan), Some(end)) => end > scan,
        _ => false,
    }
}

/// Side length of the square model input.
pub const INPUT_SIZE: usize = 224;

/// Number of output channels: RGB for DINOv2, then RGB for SigLIP.
const OUTPUT_CHANNELS: usize = 6;

/// Fractional bits of Pillow's fixed-point weights (`PRECISION_BITS` in Resample.c: 32 bits
/// minus 8 for the pixel value minus 2 for the kernel's overshoot).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Rounding offset the accumulators start at, so that `>> PRECISION_BITS` rounds to nearest.
const ROUNDING_HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Keys cubic convolution kernel with a = -0.5 (Pillow's `bicubic_filter`), support 2.
fn bicubic_filter(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

const BICUBIC_SUPPORT: f64 = 2.0;

/// Pillow's `clip8`: the accumulator's integer part, clamped to a byte.
#[inline(always)]
fn clip8(accumulator: i32) -> u8 {
    (accumulator >> PRECISION_BITS).clamp(0, 255) as u8
}

/// The fixed-point taps of one resampled axis (Pillow's `precompute_coeffs` followed by
/// `normalize_coeffs_8bpc`), for the whole-image box `(0, in_size)`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AxisTaps {
    in_size: usize,
    out_size: usize,
    /// Stride of `weights`: the most taps any output sample can have.
    max_taps: usize,
    /// First input sample of each output sample.
    first: Vec<usize>,
    /// Number of taps of each output sample (`first + count <= in_size`).
    count: Vec<usize>,
    /// `out_size * max_taps` weights with `PRECISION_BITS` fractional bits; unused slots are 0.
    weights: Vec<i32>,
    /// The same taps as windows of exactly `max_taps` samples, when the input has that many.
    windows: Option<FixedWindows>,
}

/// Every output sample's taps as a window of exactly `max_taps` input samples (moved left at
/// the right border, the extra taps weighted 0), so that the horizontal pass can run a loop
/// of constant length. Adding `0 * pixel` leaves the fixed-point sums, and so the result,
/// unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FixedWindows {
    first: Vec<usize>,
    /// `out_size * max_taps`.
    weights: Vec<i32>,
}

impl AxisTaps {
    /// Mirrors Resample.c `precompute_coeffs` operation by operation (same double-precision
    /// expressions in the same order), because a weight that differs in its last fixed-point
    /// bit can move an output pixel by one level.
    fn new(in_size: usize, out_size: usize) -> Self {
        // Pillow passes the box edges as C floats; integers this small are exact in f32.
        let scale = in_size as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = BICUBIC_SUPPORT * filterscale;
        let max_taps = support.ceil() as usize * 2 + 1;
        let inverse_filterscale = 1.0 / filterscale;

        let mut first = Vec::with_capacity(out_size);
        let mut count = Vec::with_capacity(out_size);
        let mut weights = vec![0i32; out_size * max_taps];
        let mut kernel = vec![0f64; max_taps];
        for (out_index, out_weights) in weights.chunks_exact_mut(max_taps).enumerate() {
            let center = (out_index as f64 + 0.5) * scale;
            // `as i64` truncates toward zero like C's `(int)` cast.
            let start = ((center - support + 0.5) as i64).max(0);
            let end = ((center + support + 0.5) as i64).min(in_size as i64);
            let taps = (end - start).clamp(0, max_taps as i64) as usize;
            let mut total = 0.0f64;
            for (tap, k) in kernel.iter_mut().enumerate().take(taps) {
                let w = bicubic_filter(
                    (tap as f64 + start as f64 - center + 0.5) * inverse_filterscale,
                );
                *k = w;
                total += w;
            }
            for (k, fixed) in kernel.iter().zip(out_weights.iter_mut()).take(taps) {
                let normalised = if total != 0.0 { k / total } else { *k };
                let scaled = normalised * f64::from(1u32 << PRECISION_BITS);
                // Round half away from zero, then truncate, as `normalize_coeffs_8bpc`.
                *fixed = if normalised < 0.0 {
                    (-0.5 + scaled) as i32
                } else {
                    (0.5 + scaled) as i32
                };
            }
            first.push(start as usize);
            count.push(taps);
        }
        let windows = (in_size >= max_taps).then(|| {
            let mut window_first = Vec::with_capacity(out_size);
            let mut window_weights = vec![0i32; out_size * max_taps];
            for (out_index, padded) in window_weights.chunks_exact_mut(max_taps).enumerate() {
                let start = first[out_index].min(in_size - max_taps);
                let shift = first[out_index] - start;
                let taps = count[out_index];
                let offset = out_index * max_taps;
                padded[shift..shift + taps].copy_from_slice(&weights[offset..offset + taps]);
                window_first.push(start);
            }
            FixedWindows {
                first: window_first,
                weights: window_weights,
            }
        });
        AxisTaps {
            in_size,
            out_size,
            max_taps,
            first,
            count,
            weights,
            windows,
        }
    }

    /// The input range `[first, first + count)` and weights of output sample `out_index`.
    #[inline(always)]
    fn taps(&self, out_index: usize) -> (usize, &[i32]) {
        let offset = out_index * self.max_taps;
        (
            self.first[out_index],
            &self.weights[offset..offset + self.count[out_index]],
        )
    }

    /// One past the last input sample any output sample reads.
    fn end(&self) -> usize {
        self.first
            .iter()
            .zip(&self.count)
            .map(|(first, count)| first + count)
            .max()
            .unwrap_or(0)
    }
}

/// Pillow's `Image.resize((out_width, out_height), Image.BICUBIC)` on RGB8 images: tap tables
/// for one input size, and the scratch images, kept between calls.
#[derive(Debug, Clone, Default)]
pub struct BicubicResizer {
    plan: Option<ResizePlan>,
    /// Horizontal pass output: `out_width` columns, only the input rows the vertical pass reads.
    intermediate: Vec<u8>,
    output: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ResizePlan {
    in_width: usize,
    in_height: usize,
    out_width: usize,
    out_height: usize,
    /// `None` when the width does not change (Pillow skips that pass).
    horizontal: Option<AxisTaps>,
    vertical: Option<AxisTaps>,
    /// Input rows the vertical pass reads: `[first_row, end_row)`.
    first_row: usize,
    end_row: usize,
}

impl ResizePlan {
    fn new(in_width: usize, in_height: usize, out_width: usize, out_height: usize) -> Self {
        let horizontal = (in_width != out_width).then(|| AxisTaps::new(in_width, out_width));
        let vertical = (in_height != out_height).then(|| AxisTaps::new(in_height, out_height));
        // Pillow computes the vertical taps even when that pass is skipped and runs the
        // horizontal pass over the rows they cover, which is then every row.
        let (first_row, end_row) = match &vertical {
            Some(taps) => (taps.first.first().copied().unwrap_or(0), taps.end()),
            None => (0, in_height),
        };
        ResizePlan {
            in_width,
            in_height,
            out_width,
            out_height,
            horizontal,
            vertical,
            first_row,
            end_row,
        }
    }
}

impl BicubicResizer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Resizes `image` to `out_width × out_height` and returns the RGB8 pixels, borrowed from
    /// `image` itself when the size already matches (Pillow returns a copy, unchanged) and
    /// from this resizer's buffer otherwise. Tap tables are rebuilt only when the input or
    /// output size changes; after that a call allocates nothing.
    pub fn resize<'a>(
        &'a mut self,
        image: &'a RgbImage,
        out_width: usize,
        out_height: usize,
    ) -> Result<&'a [u8], PreprocessError> {
        image.validate()?;
        if out_width == 0 || out_height == 0 {
            return Err(PreprocessError::BadSize {
                width: out_width as u32,
                height: out_height as u32,
                bytes: 0,
            });
        }
        let (in_width, in_height) = (image.width as usize, image.height as usize);
        if (in_width, in_height) == (out_width, out_height) {
            return Ok(&image.data);
        }
        let plan_matches = self.plan.as_ref().is_some_and(|plan| {
            (
                plan.in_width,
                plan.in_height,
                plan.out_width,
                plan.out_height,
            ) == (in_width, in_height, out_width, out_height)
        });
        let plan: &ResizePlan = match &mut self.plan {
            Some(plan) if plan_matches => plan,
            slot => slot.insert(ResizePlan::new(in_width, in_height, out_width, out_height)),
        };
        // No-ops once the buffers have the size of this plan.
        self.intermediate
            .resize((plan.end_row - plan.first_row) * out_width * 3, 0);
        self.output.resize(out_width * out_height * 3, 0);

        // Rows the vertical pass reads, and the row index its taps are relative to.
        let (rows, row_offset): (&[u8], usize) = match &plan.horizontal {
            Some(taps) => {
                let row_bytes = in_width * 3;
                let source = &image.data[plan.first_row * row_bytes..plan.end_row * row_bytes];
                resample_horizontal(source, row_bytes, taps, &mut self.intermediate);
                (&self.intermediate, plan.first_row)
            }
            None => (&image.data, 0),
        };
        match &plan.vertical {
            Some(taps) => {
                resample_vertical(rows, row_offset, out_width * 3, taps, &mut self.output);
                Ok(&self.output)
            }
            // Width changed only: the horizontal pass covered every row and is the result.
            None => Ok(&self.intermediate),
        }
    }
}

/// Horizontal pass (`ImagingResampleHorizontal_8bpc`): each row of `source` (`row_bytes`
/// long) becomes `taps.out_size` RGB pixels in `destination`.
fn resample_horizontal(source: &[u8], row_bytes: usize, taps: &AxisTaps, destination: &mut [u8]) {
    let out_row_bytes = taps.out_size * 3;
    let rows = source
        .chunks_exact(row_bytes)
        .zip(destination.chunks_exact_mut(out_row_bytes));
    // A constant tap count lets the compiler unroll the tap loop and drop its bounds checks,
    // which halves the time of this pass (the larger of the two) for camera-sized frames.
    match (&taps.windows, taps.max_taps) {
        (Some(windows), 5) => rows.for_each(|(i, o)| horizontal_row_fixed::<5>(i, windows, o)),
        (Some(windows), 7) => rows.for_each(|(i, o)| horizontal_row_fixed::<7>(i, windows, o)),
        (Some(windows), 9) => rows.for_each(|(i, o)| horizontal_row_fixed::<9>(i, windows, o)),
        (Some(windows), 11) => rows.for_each(|(i, o)| horizontal_row_fixed::<11>(i, windows, o)),
        (Some(windows), 13) => rows.for_each(|(i, o)| horizontal_row_fixed::<13>(i, windows, o)),
        (Some(windows), 15) => rows.for_each(|(i, o)| horizontal_row_fixed::<15>(i, windows, o)),
        (Some(windows), 17) => rows.for_each(|(i, o)| horizontal_row_fixed::<17>(i, windows, o)),
        _ => rows.for_each(|(i, o)| horizontal_row(i, taps, o)),
    }
}

/// One row of the horizontal pass, any tap count.
fn horizontal_row(in_row: &[u8], taps: &AxisTaps, out_row: &mut [u8]) {
    for (out_index, out_pixel) in out_row.chunks_exact_mut(3).enumerate() {
        let (first, weights) = taps.taps(out_index);
        let pixels = &in_row[first * 3..(first + weights.len()) * 3];
        let (mut red, mut green, mut blue) = (ROUNDING_HALF, ROUNDING_HALF, ROUNDING_HALF);
        for (pixel, &weight) in pixels.chunks_exact(3).zip(weights) {
            red += i32::from(pixel[0]) * weight;
            green += i32::from(pixel[1]) * weight;
            blue += i32::from(pixel[2]) * weight;
        }
        out_pixel[0] = clip8(red);
        out_pixel[1] = clip8(green);
        out_pixel[2] = clip8(blue);
    }
}

/// One row of the horizontal pass with windows of exactly `TAPS` samples.
fn horizontal_row_fixed<const TAPS: usize>(
    in_row: &[u8],
    windows: &FixedWindows,
    out_row: &mut [u8],
) {
    for ((out_pixel, &first), weights) in out_row
        .chunks_exact_mut(3)
        .zip(&windows.first)
        .zip(windows.weights.chunks_exact(TAPS))
    {
        let pixels = &in_row[first * 3..][..TAPS * 3];
        let (mut red, mut green, mut blue) = (ROUNDING_HALF, ROUNDING_HALF, ROUNDING_HALF);
        for tap in 0..TAPS {
            let weight = weights[tap];
            red += i32::from(pixels[tap * 3]) * weight;
            green += i32::from(pixels[tap * 3 + 1]) * weight;
            blue += i32::from(pixels[tap * 3 + 2]) * weight;
        }
        out_pixel[0] = clip8(red);
        out_pixel[1] = clip8(green);
        out_pixel[2] = clip8(blue);
    }
}

/// Vertical pass (`ImagingResampleVertical_8bpc`): `rows` holds input rows from
/// `row_offset` on, `row_bytes` each; writes `taps.out_size` rows to `destination`.
fn resample_vertical(
    rows: &[u8],
    row_offset: usize,
    row_bytes: usize,
    taps: &AxisTaps,
    destination: &mut [u8],
) {
    destination
        .chunks_exact_mut(row_bytes)
        .enumerate()
        .for_each(|(out_index, out_row)| {
            let (first, weights) = taps.taps(out_index);
            // Tap-outer, column-inner over a stack block of accumulators: the inner loop runs
            // over contiguous bytes and vectorises.
            let mut accumulators = [0i32; VERTICAL_BLOCK];
            for (block_index, out_block) in out_row.chunks_mut(VERTICAL_BLOCK).enumerate() {
                let column = block_index * VERTICAL_BLOCK;
                let block = &mut accumulators[..out_block.len()];
                block.fill(ROUNDING_HALF);
                for (tap, &weight) in weights.iter().enumerate() {
                    let start = (first + tap - row_offset) * row_bytes + column;
                    let in_block = &rows[start..start + block.len()];
                    for (accumulator, &value) in block.iter_mut().zip(in_block) {
                        *accumulator += i32::from(value) * weight;
                    }
                }
                for (out_value, &accumulator) in out_block.iter_mut().zip(block.iter()) {
                    *out_value = clip8(accumulator);
                }
            }
        });
}

/// Bytes of one output row the vertical pass accumulates at a time (on the stack).
const VERTICAL_BLOCK: usize = 256;

/// Turns camera or file images into the model's `pixel_values` `[6, 224, 224]`, reusing its
/// scratch buffers between calls.
#[derive(Debug, Clone)]
pub struct Preprocessor {
    /// DINOv2 normalisation (channels 0-2), then SigLIP (channels 3-5).
    pub normalizations: [Normalization; 2],
    resizer: BicubicResizer,
    /// `(v / 255 - mean) / std` for every byte value, per output channel: the same f32
    /// operations as torchvision's `to_tensor` + `normalize`, done once per normalisation.
    lookup: Option<LookupTables>,
}

type LookupTables = Box<[[f32; 256]; OUTPUT_CHANNELS]>;

/// `tvf_normalize_params` entry of `preprocessor_config.json`.
#[derive(Debug, serde::Deserialize)]
struct NormalizeParams {
    mean: Vec<f64>,
    std: Vec<f64>,
}

/// `tvf_resize_params` entry; only what decides whether this stage reproduces it.
#[derive(Debug, serde::Deserialize)]
struct ResizeParams {
    size: serde_json::Value,
    interpolation: Option<i64>,
}

/// The keys of `preprocessor_config.json` that this stage runs.
#[derive(Debug, serde::Deserialize)]
struct PreprocessorConfigFile {
    tvf_normalize_params: Option<Vec<NormalizeParams>>,
    tvf_resize_params: Option<Vec<ResizeParams>>,
    tvf_do_letterbox: Option<bool>,
}

/// torchvision's `InterpolationMode.BICUBIC` as a PIL resample code.
const PIL_BICUBIC: i64 = 3;

impl Preprocessor {
    /// With the given normalisations (DINOv2, then SigLIP).
    pub fn new(normalizations: [Normalization; 2]) -> Self {
        Preprocessor {
            normalizations,
            resizer: BicubicResizer::new(),
            lookup: None,
        }
    }

    /// From a checkpoint's `preprocessor_config.json` (its `tvf_normalize_params` are what runs).
    pub fn from_config_file(path: &Path) -> Result<Self, PreprocessError> {
        let config_error = |message: String| PreprocessError::Config {
            path: path.display().to_string(),
            message,
        };
        let text =
            std::fs::read_to_string(path).map_err(|e| config_error(format!("cannot read: {e}")))?;
        let config: PreprocessorConfigFile =
            serde_json::from_str(&text).map_err(|e| config_error(format!("invalid JSON: {e}")))?;

        if config.tvf_do_letterbox == Some(true) {
            return Err(config_error(
                "key `tvf_do_letterbox` is true: only the \"resize-naive\" strategy (no letterbox) \
                 is supported"
                    .into(),
            ));
        }
        for (index, resize) in config.tvf_resize_params.iter().flatten().enumerate() {
            let square = serde_json::json!([INPUT_SIZE, INPUT_SIZE]);
            if resize.size != square {
                return Err(config_error(format!(
                    "key `tvf_resize_params[{index}].size` is {}, only [{INPUT_SIZE}, {INPUT_SIZE}] \
                     is supported",
                    resize.size
                )));
            }
            if let Some(interpolation) = resize.interpolation {
                if interpolation != PIL_BICUBIC {
                    return Err(config_error(format!(
                        "key `tvf_resize_params[{index}].interpolation` is {interpolation}, only \
                         {PIL_BICUBIC} (bicubic) is supported"
                    )));
                }
            }
        }

        let params = config
            .tvf_normalize_params
            .ok_or_else(|| config_error("missing key `tvf_normalize_params`".into()))?;
        if params.len() != 2 {
            return Err(config_error(format!(
                "key `tvf_normalize_params` has {} entries, expected 2 (DINOv2, SigLIP)",
                params.len()
            )));
        }
        let mut normalizations = [Normalization {
            mean: [0.0; 3],
            std: [1.0; 3],
        }; 2];
        for (index, (entry, normalization)) in params.iter().zip(&mut normalizations).enumerate() {
            normalization.mean = rgb_triple(&entry.mean)
                .ok_or_else(|| bad_triple(&config_error, index, "mean", &entry.mean))?;
            normalization.std = rgb_triple(&entry.std)
                .filter(|std| std.iter().all(|s| s.is_normal() && *s > 0.0))
                .ok_or_else(|| bad_triple(&config_error, index, "std", &entry.std))?;
        }
        Ok(Self::new(normalizations))
    }

    /// Number of f32 values [`Preprocessor::run`] writes: `6 * 224 * 224`.
    pub fn output_len(&self) -> usize {
        OUTPUT_CHANNELS * INPUT_SIZE * INPUT_SIZE
    }

    /// Pillow's bicubic resize of `image` to 224 × 224 as RGB8 bytes; an image that is
    /// already 224 × 224 comes back untouched.
    pub fn resize<'a>(&'a mut self, image: &'a RgbImage) -> Result<&'a [u8], PreprocessError> {
        self.resizer.resize(image, INPUT_SIZE, INPUT_SIZE)
    }

    /// Resizes `image` to 224 × 224 (Pillow bicubic) and writes both normalisations to `out`.
    pub fn run(&mut self, image: &RgbImage, out: &mut [f32]) -> Result<(), PreprocessError> {
        if out.len() != self.output_len() {
            return Err(PreprocessError::OutputLen {
                expected: self.output_len(),
                got: out.len(),
            });
        }
        let lookup = match &mut self.lookup {
            Some(tables) => tables,
            empty => empty.insert(build_lookup(&self.normalizations)),
        };
        let pixels = self.resizer.resize(image, INPUT_SIZE, INPUT_SIZE)?; // [224, 224, 3]
        let plane = INPUT_SIZE * INPUT_SIZE;
        // out: [6, 224, 224]; channel c reads colour c % 3 of the HWC pixels.
        for (channel, (plane_out, table)) in
            out.chunks_exact_mut(plane).zip(lookup.iter()).enumerate()
        {
            let colour = channel % 3;
            for (value, pixel) in plane_out.iter_mut().zip(pixels.chunks_exact(3)) {
                *value = table[usize::from(pixel[colour])];
            }
        }
        Ok(())
    }
}

fn rgb_triple(values: &[f64]) -> Option<[f32; 3]> {
    match values {
        // Python floats become f32 tensors by round-to-nearest, as `as f32` does.
        [r, g, b] if [r, g, b].iter().all(|v| v.is_finite()) => {
            Some([*r as f32, *g as f32, *b as f32])
        }
        _ => None,
    }
}

fn bad_triple(
    config_error: &impl Fn(String) -> PreprocessError,
    index: usize,
    field: &str,
    values: &[f64],
) -> PreprocessError {
    let requirement = if field == "std" {
        "3 finite positive numbers"
    } else {
        "3 finite numbers"
    };
    config_error(format!(
        "key `tvf_normalize_params[{index}].{field}` is {values:?}, expected {requirement}"
    ))
}

fn build_lookup(normalizations: &[Normalization; 2]) -> LookupTables {
    let mut tables = Box::new([[0f32; 256]; OUTPUT_CHANNELS]);
    for (channel, table) in tables.iter_mut().enumerate() {
        let normalization = &normalizations[channel / 3];
        let (mean, std) = (
            normalization.mean[channel % 3],
            normalization.std[channel % 3],
        );
        for (byte, value) in table.iter_mut().enumerate() {
            // to_tensor: `byte_tensor.to(float32).div(255)`; normalize: `.sub(mean).div(std)`.
            let scaled = byte as f32 / 255.0;
            *value = (scaled - mean) / std;
        }
    }
    tables
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_matches_keys_cubic_at_known_points() {
        // Keys (1981) with a = -0.5: W(0) = 1, W(1) = W(2) = 0, W(0.5) = 0.5625,
        // W(1.5) = -0.0625.
        assert_eq!(bicubic_filter(0.0), 1.0);
        assert_eq!(bicubic_filter(1.0), 0.0);
        assert_eq!(bicubic_filter(-2.0), 0.0);
        assert_eq!(bicubic_filter(0.5), 0.5625);
        assert_eq!(bicubic_filter(-1.5), -0.0625);
    }

    #[test]
    fn halving_taps_are_symmetric_and_sum_to_one() {
        let taps = AxisTaps::new(448, 224);
        // Support 4 around centre 2k + 1: 8 taps once away from the border.
        let (first, weights) = taps.taps(100);
        assert_eq!(first, 197);
        assert_eq!(weights.len(), 8);
        for i in 0..4 {
            assert_eq!(weights[i], weights[7 - i]);
        }
        let sum: i32 = weights.iter().sum();
        assert!((sum - (1 << PRECISION_BITS)).abs() <= 4, "sum {sum}");
        // Border samples are clamped to the image, not padded.
        let (first, weights) = taps.taps(0);
        assert_eq!(first, 0);
        assert_eq!(weights.len(), 5);
    }

    #[test]
    fn clip8_rounds_and_clamps() {
        assert_eq!(clip8(ROUNDING_HALF), 0);
        assert_eq!(clip8((7 << PRECISION_BITS) + ROUNDING_HALF), 7);
        assert_eq!(clip8(-5 << PRECISION_BITS), 0);
        assert_eq!(clip8(300 << PRECISION_BITS), 255);
    }
}
