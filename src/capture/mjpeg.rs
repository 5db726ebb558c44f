//! Motion-JPEG frames from cameras, decoded to RGB with `zune-jpeg` into a reused buffer.
//!
//! USB cameras send frames cut short or with damaged entropy data when the bus is busy; a
//! frame that does not start with SOI and end with EOI, that fails to decode, or whose size
//! is not the negotiated one is rejected with a message, never a panic.

use zune_jpeg::zune_core::bytestream::ZCursor;
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

/// Decodes camera MJPEG frames of one negotiated size.
#[derive(Debug, Clone)]
pub struct MjpegDecoder {
    width: u32,
    height: u32,
    options: DecoderOptions,
}

impl MjpegDecoder {
    pub fn new(width: u32, height: u32) -> Self {
        let options = DecoderOptions::default()
            .jpeg_set_out_colorspace(ColorSpace::RGB)
            .set_strict_mode(true)
            .set_max_width(width as usize)
            .set_max_height(height as usize);
        Self {
            width,
            height,
            options,
        }
    }

    /// Decodes `jpeg` into `rgb` (`width * height * 3` bytes, resized only if its length
    /// differs). On error `rgb` holds unspecified pixels.
    pub fn decode_into(&self, jpeg: &[u8], rgb: &mut Vec<u8>) -> Result<(), String> {
        if self.width == 0 || self.height == 0 {
            return Err(format!(
                "empty negotiated size {}x{}",
                self.width, self.height
            ));
        }
        let jpeg = complete_jpeg(jpeg)?;
        let mut decoder = JpegDecoder::new_with_options(ZCursor::new(jpeg), self.options);
        decoder
            .decode_headers()
            .map_err(|e| format!("bad JPEG headers: {e:?}"))?;
        let (width, height) = decoder
            .dimensions()
            .ok_or_else(|| "JPEG without a frame header".to_string())?;
        if (width as u32, height as u32) != (self.width, self.height) {
            return Err(format!(
                "frame is {width}x{height}, the negotiated size is {}x{}",
                self.width, self.height
            ));
        }
        let size = self.width as usize * self.height as usize * 3;
        if decoder.output_buffer_size() != Some(size) {
            return Err(format!(
                "decoder output is {:?} bytes, expected {size}",
                decoder.output_buffer_size()
            ));
        }
        rgb.resize(size, 0);
        decoder
            .decode_into(rgb)
            .map_err(|e| format!("bad JPEG data: {e:?}"))
    }
}

/// The JPEG without the zero padding drivers leave after it, if it is complete (SOI first,
/// EOI last).
fn complete_jpeg(data: &[u8]) -> Result<&[u8], String> {
    if data.len() < 4 || data[0] != 0xFF || data[1] != 0xD8 {
        return Err(format!("no JPEG start marker ({} bytes)", data.len()));
    }
    let end = data.len() - data.iter().rev().take_while(|&&b| b == 0).count();
    let trimmed = &data[..end];
    if trimmed.len() < 4 || trimmed[trimmed.len() - 2..] != [0xFF, 0xD9] {
        return Err(format!(
            "truncated JPEG: no end marker ({} bytes)",
            data.len()
        ));
    }
    Ok(trimmed)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn encode(width: u32, height: u32, rgb: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95)
            .encode(rgb, width, height, image::ExtendedColorType::Rgb8)
            .unwrap();
        out
    }

    #[test]
    fn decodes_a_flat_colour_into_the_reused_buffer() {
        let rgb: Vec<u8> = [200u8, 40, 90].repeat(32 * 16);
        let jpeg = encode(32, 16, &rgb);
        let decoder = MjpegDecoder::new(32, 16);
        let mut out = Vec::with_capacity(32 * 16 * 3);
        let capacity_pointer = out.as_ptr();
        decoder.decode_into(&jpeg, &mut out).unwrap();
        assert_eq!(out.len(), 32 * 16 * 3);
        assert_eq!(
            out.as_ptr(),
            capacity_pointer,
            "decoded into the given buffer"
        );
        for pixel in out.chunks(3) {
            for (got, want) in pixel.iter().zip([200u8, 40, 90]) {
                assert!(got.abs_diff(want) <= 4, "{pixel:?}");
            }
        }
    }

    #[test]
    fn accepts_driver_zero_padding_after_the_end_marker() {
        let mut jpeg = encode(16, 16, &[10u8; 16 * 16 * 3]);
        jpeg.extend_from_slice(&[0; 100]);
        let mut out = Vec::new();
        MjpegDecoder::new(16, 16)
            .decode_into(&jpeg, &mut out)
            .unwrap();
    }

    #[test]
    fn zero_negotiated_size_is_an_error_not_a_panic() {
        let jpeg = encode(16, 16, &[10u8; 16 * 16 * 3]);
        let mut out = Vec::new();
        for (width, height) in [(0, 0), (0, 16), (16, 0)] {
            let err = MjpegDecoder::new(width, height)
                .decode_into(&jpeg, &mut out)
                .unwrap_err();
            assert_eq!(err, format!("empty negotiated size {width}x{height}"));
        }
    }

    #[test]
    fn rejects_truncated_garbage_and_wrong_size_frames() {
        let jpeg = encode(16, 16, &[10u8; 16 * 16 * 3]);
        let decoder = MjpegDecoder::new(16, 16);
        let mut out = Vec::new();
        let truncated = decoder.decode_into(&jpeg[..jpeg.len() / 2], &mut out);
        assert!(truncated.unwrap_err().contains("truncated"));
        let garbage = decoder.decode_into(&[0x12; 300], &mut out);
        assert!(garbage.unwrap_err().contains("start marker"));
        let wrong_size = MjpegDecoder::new(32, 16).decode_into(&jpeg, &mut out);
        assert!(wrong_size.unwrap_err().contains("16x16"));
        // Damaged headers between intact markers.
        let mut damaged = jpeg.clone();
        for byte in &mut damaged[4..40] {
            *byte = 0xFF;
        }
        assert!(decoder.decode_into(&damaged, &mut out).is_err());
    }
}
