//! A ROS 2 image topic as a camera (`[camera] source = "ros2:<topic>"`): samples of
//! `sensor_msgs/msg/CompressedImage` (JPEG) or `sensor_msgs/msg/Image` (`rgb8`, `bgr8`) on
//! `<domain>/<topic>/<type>/<hash>`. The Zenoh camera source (`capture/zenoh_source.rs`)
//! receives them with its ring of one, stall and drop accounting; this module turns one
//! sample into a frame or the reason it is corrupt.
//!
//! - The capture time is `header.stamp` (a zero stamp: the arrival time).
//! - Drops are gaps in the attachment's sequence number (rmw_zenoh numbers each publisher's
//!   samples).
//! - Corrupt, skipped and counted: a sample of another type, without the attachment, whose
//!   CDR does not decode, a JPEG that does not decode, an image of another size than
//!   `[camera] width × height`, another encoding, a row stride shorter than a row or data
//!   shorter than the rows it claims.

use super::discovery::{self, Attachment};
use super::types::{self, RosImage};
use crate::capture::mjpeg::MjpegDecoder;
use crate::capture::Frame;

/// A ROS 2 frame, checked and converted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ros2Frame {
    /// ns since the Unix epoch; 0 when the stamp was zero.
    pub capture_time_ns: u64,
    /// The attachment's sequence number.
    pub sequence: u64,
}

/// The subscription key of an image topic: every type, so a wrong one is seen and counted.
pub fn subscription_key(domain_id: u32, topic: &str) -> String {
    discovery::any_type_key(domain_id, topic)
}

/// The largest payload a `width × height` camera accepts (a raw RGB image with its header).
pub fn largest_payload(width: u32, height: u32) -> usize {
    (width as usize)
        .saturating_mul(height as usize)
        .saturating_mul(3)
        .saturating_add(1024)
}

/// Converts one sample (its key expression, attachment and payload) into `frame`.
pub fn convert(
    key: &str,
    attachment: Option<&[u8]>,
    payload: &[u8],
    size: (u32, u32),
    jpeg: &MjpegDecoder,
    frame: &mut Frame,
) -> Result<Ros2Frame, (Option<u64>, String)> {
    let compressed = match discovery::type_of_key(key) {
        Some((name, hash))
            if name == types::COMPRESSED_IMAGE.dds_name && hash == types::COMPRESSED_IMAGE.hash =>
        {
            true
        }
        Some((name, hash)) if name == types::IMAGE.dds_name && hash == types::IMAGE.hash => false,
        _ => {
            return Err((
                None,
                format!(
                    "{key}: neither sensor_msgs/msg/CompressedImage nor sensor_msgs/msg/Image \
                     (with their Jazzy hashes)"
                ),
            ))
        }
    };
    let attachment = Attachment::decode(
        attachment.ok_or_else(|| (None, "no rmw_zenoh attachment".to_string()))?,
    )
    .map_err(|m| (None, m))?;
    let sequence = attachment.sequence.max(0) as u64;
    let capture_time_ns =
        convert_image(payload, compressed, size, jpeg, frame).map_err(|m| (Some(sequence), m))?;
    Ok(Ros2Frame {
        capture_time_ns,
        sequence,
    })
}

/// The image of one payload into `frame`; its capture time.
fn convert_image(
    payload: &[u8],
    compressed: bool,
    size: (u32, u32),
    jpeg: &MjpegDecoder,
    frame: &mut Frame,
) -> Result<u64, String> {
    let (header, image) = if compressed {
        types::decode_compressed_image(payload)
    } else {
        types::decode_image(payload)
    }
    .map_err(|e| e.to_string())?;
    let (width, height) = size;
    match image {
        RosImage::Compressed { format, data } => {
            let lower = format.to_ascii_lowercase();
            if !(lower.contains("jpeg") || lower.contains("jpg")) {
                return Err(format!("CompressedImage format `{format}` is not JPEG"));
            }
            jpeg.decode_into(data, &mut frame.image.data)?;
        }
        RosImage::Raw {
            height: h,
            width: w,
            encoding,
            step,
            data,
            ..
        } => {
            if (w, h) != (width, height) {
                return Err(format!(
                    "image is {w}x{h}, the configured size is {width}x{height}"
                ));
            }
            let bgr = match encoding {
                "rgb8" => false,
                "bgr8" => true,
                other => return Err(format!("encoding `{other}` is neither rgb8 nor bgr8")),
            };
            let row = w as usize * 3;
            let step = step as usize;
            if step < row {
                return Err(format!("step {step} is shorter than a row ({row} bytes)"));
            }
            let needed = step
                .checked_mul((h as usize).saturating_sub(1))
                .and_then(|n| n.checked_add(row))
                .ok_or_else(|| "step × height overflows".to_string())?;
            if data.len() < needed {
                return Err(format!(
                    "{} bytes of data, {w}x{h} with step {step} needs {needed}",
                    data.len()
                ));
            }
            frame.image.data.clear();
            for y in 0..h as usize {
                let line = &data[y * step..y * step + row];
                if bgr {
                    for pixel in line.chunks_exact(3) {
                        frame
                            .image
                            .data
                            .extend_from_slice(&[pixel[2], pixel[1], pixel[0]]);
                    }
                } else {
                    frame.image.data.extend_from_slice(line);
                }
            }
        }
    }
    frame.image.width = width;
    frame.image.height = height;
    header.stamp.to_unix_ns().ok_or_else(|| {
        format!(
            "header.stamp {}.{:09} is not a time",
            header.stamp.sec, header.stamp.nanosec
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(message: &types::MessageType) -> String {
        discovery::data_key(0, "/cam", message)
    }

    fn attachment(sequence: i64) -> [u8; discovery::ATTACHMENT_LEN] {
        Attachment {
            sequence,
            source_timestamp_ns: 1,
            gid: [1; 16],
        }
        .encode()
    }

    /// A `sensor_msgs/msg/Image` written field by field.
    fn raw(w: u32, h: u32, encoding: &str, step: u32, data: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; 128 + data.len()];
        let mut writer = super::super::cdr::CdrWriter::new(&mut out).unwrap();
        writer.i32(5).unwrap();
        writer.u32(6).unwrap();
        writer.string("cam").unwrap();
        writer.u32(h).unwrap();
        writer.u32(w).unwrap();
        writer.string(encoding).unwrap();
        writer.u8(0).unwrap();
        writer.u32(step).unwrap();
        writer.byte_sequence(data).unwrap();
        let len = writer.len();
        out.truncate(len);
        out
    }

    #[test]
    fn raw_images_are_converted_row_by_row() {
        let jpeg = MjpegDecoder::new(2, 2);
        let mut frame = Frame::default();
        // bgr8, 2x2, step 8 (two bytes of padding per row).
        let data = [1, 2, 3, 4, 5, 6, 0, 0, 7, 8, 9, 10, 11, 12, 0, 0];
        let got = convert(
            &key(&types::IMAGE),
            Some(&attachment(9)),
            &raw(2, 2, "bgr8", 8, &data),
            (2, 2),
            &jpeg,
            &mut frame,
        )
        .unwrap();
        assert_eq!(
            got,
            Ros2Frame {
                capture_time_ns: 5_000_000_006,
                sequence: 9
            }
        );
        assert_eq!(
            frame.image.data,
            vec![3, 2, 1, 6, 5, 4, 9, 8, 7, 12, 11, 10]
        );
        let refuse = |payload: &[u8], key: &str, attachment: Option<&[u8]>| {
            let mut frame = Frame::default();
            convert(key, attachment, payload, (2, 2), &jpeg, &mut frame)
                .unwrap_err()
                .1
        };
        let image_key = key(&types::IMAGE);
        let a = attachment(1);
        assert!(refuse(&raw(2, 2, "mono8", 2, &[0; 4]), &image_key, Some(&a)).contains("mono8"));
        assert!(refuse(&raw(4, 2, "rgb8", 12, &[0; 24]), &image_key, Some(&a)).contains("4x2"));
        assert!(refuse(&raw(2, 2, "rgb8", 5, &[0; 10]), &image_key, Some(&a)).contains("step 5"));
        assert!(refuse(&raw(2, 2, "rgb8", 6, &[0; 11]), &image_key, Some(&a)).contains("11 bytes"));
        assert!(refuse(&raw(2, 2, "rgb8", 6, &[0; 12]), &image_key, None).contains("attachment"));
        assert!(refuse(
            &raw(2, 2, "rgb8", 6, &[0; 12]),
            &key(&types::STRING),
            Some(&a)
        )
        .contains("neither"));
        assert!(refuse(&[0, 1, 0, 0, 9], &image_key, Some(&a)).contains("CDR"));
    }
}
