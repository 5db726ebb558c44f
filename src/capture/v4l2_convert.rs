//! Raw camera pixel formats to packed RGB24, into a caller-owned buffer.
//!
//! YUYV is BT.601 limited range (what UVC cameras send); GREY is replicated to the three
//! channels. Each row may be padded (`stride` bytes apart).

/// Checks that `src` holds `height` rows of `row_bytes` at `stride`, and sizes `dst`.
fn prepare(
    src: &[u8],
    width: u32,
    height: u32,
    stride: usize,
    bytes_per_pixel: usize,
    dst: &mut Vec<u8>,
) -> Result<(), String> {
    // A zero-sized frame has no rows to convert (and zero-length rows cannot be chunked).
    if width == 0 || height == 0 {
        return Err(format!("empty frame size {width}x{height}"));
    }
    let row_bytes = width as usize * bytes_per_pixel;
    if stride < row_bytes {
        return Err(format!(
            "row stride {stride} is shorter than a row of {row_bytes} bytes"
        ));
    }
    let needed = stride
        .checked_mul(height as usize - 1)
        .and_then(|rows| rows.checked_add(row_bytes))
        .ok_or_else(|| format!("row stride {stride} x {height} rows overflows"))?;
    if src.len() < needed {
        return Err(format!(
            "short frame: {} bytes, {width}x{height} needs {needed}",
            src.len()
        ));
    }
    dst.resize(width as usize * height as usize * 3, 0);
    Ok(())
}

fn clamp(value: i32) -> u8 {
    value.clamp(0, 255) as u8
}

/// YUYV 4:2:2 (Y0 U Y1 V) to RGB.
pub fn yuyv_to_rgb(
    src: &[u8],
    width: u32,
    height: u32,
    stride: usize,
    dst: &mut Vec<u8>,
) -> Result<(), String> {
    if !width.is_multiple_of(2) {
        return Err(format!("YUYV width {width} is odd"));
    }
    prepare(src, width, height, stride, 2, dst)?;
    let row_out = width as usize * 3;
    for (row, out_row) in dst.chunks_exact_mut(row_out).enumerate() {
        let in_row = &src[row * stride..row * stride + width as usize * 2];
        for (pair, out) in in_row.chunks_exact(4).zip(out_row.chunks_exact_mut(6)) {
            let d = i32::from(pair[1]) - 128;
            let e = i32::from(pair[3]) - 128;
            let red = 409 * e + 128;
            let green = -100 * d - 208 * e + 128;
            let blue = 516 * d + 128;
            for (k, y) in [pair[0], pair[2]].into_iter().enumerate() {
                let c = 298 * (i32::from(y) - 16);
                out[3 * k] = clamp((c + red) >> 8);
                out[3 * k + 1] = clamp((c + green) >> 8);
                out[3 * k + 2] = clamp((c + blue) >> 8);
            }
        }
    }
    Ok(())
}

/// RGB24 (`RGB3`) copied row by row, dropping any row padding.
pub fn rgb24_to_rgb(
    src: &[u8],
    width: u32,
    height: u32,
    stride: usize,
    dst: &mut Vec<u8>,
) -> Result<(), String> {
    prepare(src, width, height, stride, 3, dst)?;
    let row_out = width as usize * 3;
    for (row, out_row) in dst.chunks_exact_mut(row_out).enumerate() {
        out_row.copy_from_slice(&src[row * stride..row * stride + row_out]);
    }
    Ok(())
}

/// 8-bit greyscale replicated to R, G and B.
pub fn grey_to_rgb(
    src: &[u8],
    width: u32,
    height: u32,
    stride: usize,
    dst: &mut Vec<u8>,
) -> Result<(), String> {
    prepare(src, width, height, stride, 1, dst)?;
    let row_out = width as usize * 3;
    for (row, out_row) in dst.chunks_exact_mut(row_out).enumerate() {
        let in_row = &src[row * stride..row * stride + width as usize];
        for (&luma, out) in in_row.iter().zip(out_row.chunks_exact_mut(3)) {
            out.fill(luma);
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn yuyv_reference_colours_limited_range() {
        // BT.601 limited-range codes of white, black, red, green, blue (ITU-R BT.601 tables).
        let cases: [([u8; 3], [u8; 3]); 5] = [
            ([235, 128, 128], [255, 255, 255]),
            ([16, 128, 128], [0, 0, 0]),
            ([81, 90, 240], [255, 0, 0]),
            ([145, 54, 34], [0, 255, 0]),
            ([41, 240, 110], [0, 0, 255]),
        ];
        for (yuv, rgb) in cases {
            let src = [yuv[0], yuv[1], yuv[0], yuv[2]];
            let mut out = Vec::new();
            yuyv_to_rgb(&src, 2, 1, 4, &mut out).unwrap();
            for (got, want) in out.iter().zip(rgb.iter().chain(rgb.iter())) {
                assert!(got.abs_diff(*want) <= 2, "{yuv:?} -> {out:?}, want {rgb:?}");
            }
        }
    }

    #[test]
    fn strided_rows_skip_padding() {
        // 2x2 GREY with 2 bytes of padding per row.
        let src = [10, 20, 99, 99, 30, 40, 99, 99];
        let mut out = Vec::new();
        grey_to_rgb(&src, 2, 2, 4, &mut out).unwrap();
        assert_eq!(out, [10, 10, 10, 20, 20, 20, 30, 30, 30, 40, 40, 40]);
        let src = [1, 2, 3, 4, 5, 6, 0, 0, 7, 8, 9, 10, 11, 12];
        rgb24_to_rgb(&src, 2, 2, 8, &mut out).unwrap();
        assert_eq!(out, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
    }

    #[test]
    fn zero_width_or_height_is_an_error_not_a_panic() {
        let mut out = Vec::new();
        for (width, height) in [(0, 0), (0, 4), (4, 0)] {
            for convert in [yuyv_to_rgb, rgb24_to_rgb, grey_to_rgb] {
                let err = convert(&[0; 64], width, height, 16, &mut out).unwrap_err();
                assert_eq!(err, format!("empty frame size {width}x{height}"));
            }
        }
    }

    #[test]
    fn huge_strides_are_errors() {
        let mut out = Vec::new();
        let err = grey_to_rgb(&[0; 64], 2, 3, usize::MAX, &mut out).unwrap_err();
        assert!(err.contains("overflows"), "{err}");
    }

    #[test]
    fn short_frames_and_bad_strides_are_errors() {
        let mut out = Vec::new();
        let short = yuyv_to_rgb(&[0; 10], 4, 2, 8, &mut out).unwrap_err();
        assert!(short.contains("short frame"), "{short}");
        assert!(rgb24_to_rgb(&[0; 100], 4, 2, 8, &mut out).is_err());
        assert!(yuyv_to_rgb(&[0; 100], 3, 2, 6, &mut out).is_err());
    }
}
