//! Image preprocessing exactly as OpenVLA's processor does it (OPENVLA_FACTS §1): Pillow's
//! bicubic resize to 224 × 224 (aspect ratio not kept), then `/ 255` and two normalisations,
//! giving `[6, 224, 224]` f32 (channels 0-2 DINOv2, 3-5 SigLIP).

use std::path::Path;

/// An 8-bit RGB image, rows top to bottom, pixels interleaved R, G, B.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    /// `width * height * 3` bytes.
    pub data: Vec<u8>,
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
}

/// Mean and standard deviation of one normalisation, per RGB channel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalization {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// Loads a PNG or JPEG file as RGB (any colour type converted to RGB).
pub fn load_image(path: &Path) -> Result<RgbImage, PreprocessError> {
    Err(PreprocessError::Image {
        path: path.display().to_string(),
        message: "not implemented".into(),
    })
}

/// Side length of the square model input.
pub const INPUT_SIZE: usize = 224;

/// Turns camera or file images into the model's `pixel_values` `[6, 224, 224]`, reusing its
/// scratch buffers between calls.
#[derive(Debug, Clone)]
pub struct Preprocessor {
    /// DINOv2 normalisation (channels 0-2), then SigLIP (channels 3-5).
    pub normalizations: [Normalization; 2],
}

impl Preprocessor {
    /// From a checkpoint's `preprocessor_config.json` (its `tvf_normalize_params` are what runs).
    pub fn from_config_file(path: &Path) -> Result<Self, PreprocessError> {
        Err(PreprocessError::Config {
            path: path.display().to_string(),
            message: "not implemented".into(),
        })
    }

    /// Number of f32 values [`Preprocessor::run`] writes: `6 * 224 * 224`.
    pub fn output_len(&self) -> usize {
        6 * INPUT_SIZE * INPUT_SIZE
    }

    /// Resizes `image` to 224 × 224 (Pillow bicubic) and writes both normalisations to `out`.
    pub fn run(&mut self, image: &RgbImage, out: &mut [f32]) -> Result<(), PreprocessError> {
        let _ = (image, out);
        Err(PreprocessError::BadSize {
            width: 0,
            height: 0,
            bytes: 0,
        })
    }
}
