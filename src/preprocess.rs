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
    BadSize { width: u32, height: u32, bytes: usize },
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
