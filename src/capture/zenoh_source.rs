//! Frames from Zenoh (`[camera] source = "zenoh:<key expression>"`): remote cameras, camera
//! bridges and simulators publish each frame as one sample.
//!
//! Payload (*contract*, frame record v1): a 32-byte little-endian header, then the image.
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 4 | magic `VLAF` |
//! | 4 | 2 | u16 version = 1 |
//! | 6 | 2 | u16 format: 0 JPEG (baseline, a complete JFIF/EXIF file), 1 RGB8 (rows top to bottom, no padding) |
//! | 8 | 4 | u32 width |
//! | 12 | 4 | u32 height |
//! | 16 | 8 | u64 capture time, ns since the Unix epoch (0: unknown, the arrival time is used) |
//! | 24 | 8 | u64 sequence number, +1 per frame published |
//! | 32 | … | the JPEG file, or width × height × 3 bytes of RGB |
//!
//! What the source owns, per [`FrameSource::next_frame`] call, as the V4L2 source does:
//! - only the newest sample is kept (a ring of one); frames replaced before they were read
//!   show as sequence gaps and are counted as drops (a sequence going back means the
//!   publisher restarted and is not counted);
//! - no sample for `stall_timeout_ms` is `Stalled` (counted);
//! - a payload that is not a v1 frame record, a JPEG that does not decode, an RGB payload of
//!   the wrong length, or a frame of another size than `[camera] width × height` is skipped
//!   and counted as corrupt (the configured size plays the part of V4L2's negotiated size:
//!   nothing is resized, so what the policy sees is what the camera sent).
//!
//! The source subscribes on the service's Zenoh session, handed to it with
//! [`FrameSource::attach_session`] (same endpoints, identity and access rules as the rest
//! of the service); used on its own (calibration, tests), it opens a session from
//! `[zenoh]` at its first frame.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use zenoh::handlers::{RingChannel, RingChannelHandler};
use zenoh::pubsub::Subscriber;
use zenoh::sample::Sample;
use zenoh::{Session, Wait};

use super::mjpeg::MjpegDecoder;
use super::{CaptureError, CaptureStats, Frame, FrameSource};
use crate::config::{CameraConfig, ZenohConfig};
use crate::transport::zenoh_error_text;

/// Prefix of `[camera] source` that names a Zenoh key expression.
pub const SOURCE_PREFIX: &str = "zenoh:";
/// First bytes of every frame record.
pub const FRAME_MAGIC: [u8; 4] = *b"VLAF";
pub const FRAME_VERSION: u16 = 1;
pub const FRAME_HEADER_LEN: usize = 32;

/// The largest frame record a source of `width × height` accepts (raw RGB): what a Zenoh
/// session carrying the camera must let through.
pub fn largest_frame_payload(width: u32, height: u32) -> usize {
    FRAME_HEADER_LEN.saturating_add(
        (width as usize)
            .saturating_mul(height as usize)
            .saturating_mul(3),
    )
}

/// Image encoding of a frame record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameFormat {
    Jpeg = 0,
    Rgb8 = 1,
}

/// The fixed header of a frame record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub format: FrameFormat,
    pub width: u32,
    pub height: u32,
    pub capture_time_ns: u64,
    pub sequence: u64,
}

impl FrameHeader {
    /// The header followed by `image`: one payload ready to put.
    pub fn encode(&self, image: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(FRAME_HEADER_LEN + image.len());
        out.extend_from_slice(&FRAME_MAGIC);
        out.extend_from_slice(&FRAME_VERSION.to_le_bytes());
        out.extend_from_slice(&(self.format as u16).to_le_bytes());
        out.extend_from_slice(&self.width.to_le_bytes());
        out.extend_from_slice(&self.height.to_le_bytes());
        out.extend_from_slice(&self.capture_time_ns.to_le_bytes());
        out.extend_from_slice(&self.sequence.to_le_bytes());
        out.extend_from_slice(image);
        out
    }

    /// Splits a payload into its header and image bytes.
    pub fn decode(payload: &[u8]) -> Result<(Self, &[u8]), String> {
        if payload.len() < FRAME_HEADER_LEN {
            return Err(format!(
                "{} bytes, shorter than the {FRAME_HEADER_LEN}-byte frame header",
                payload.len()
            ));
        }
        let (header, image) = payload.split_at(FRAME_HEADER_LEN);
        if header[0..4] != FRAME_MAGIC {
            return Err(format!(
                "magic {:02x?} is not `VLAF`: not a frame record",
                &header[0..4]
            ));
        }
        let u16_at = |i: usize| u16::from_le_bytes([header[i], header[i + 1]]);
        let u32_at =
            |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
        let u64_at = |i: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&header[i..i + 8]);
            u64::from_le_bytes(bytes)
        };
        let version = u16_at(4);
        if version != FRAME_VERSION {
            return Err(format!(
                "frame record version {version}, this build reads {FRAME_VERSION}"
            ));
        }
        let format = match u16_at(6) {
            0 => FrameFormat::Jpeg,
            1 => FrameFormat::Rgb8,
            other => return Err(format!("format {other} is neither 0 (JPEG) nor 1 (RGB8)")),
        };
        Ok((
            Self {
                format,
                width: u32_at(8),
                height: u32_at(12),
                capture_time_ns: u64_at(16),
                sequence: u64_at(24),
            },
            image,
        ))
    }
}

/// A camera that publishes frame records on a Zenoh key expression.
pub struct ZenohSource {
    source_name: String,
    key: String,
    width: u32,
    height: u32,
    stall_timeout: Duration,
    zenoh: ZenohConfig,
    started: bool,
    /// The session the source opened itself when none was attached.
    own_session: Option<Session>,
    subscriber: Option<Subscriber<RingChannelHandler<Sample>>>,
    jpeg: MjpegDecoder,
    stats: CaptureStats,
    /// Publisher's sequence number of the last frame received.
    last_publisher_sequence: Option<u64>,
    /// Sequence number given to the last frame (keeps increasing across publisher restarts).
    last_sequence: Option<u64>,
    /// Samples are ROS 2 images (`ros2:<topic>`, `crate::ros2::camera`), not frame records.
    ros2: bool,
}

impl ZenohSource {
    /// Validates the configuration; the subscription is declared by [`FrameSource::start`].
    pub fn new(camera: &CameraConfig, zenoh: &ZenohConfig) -> Result<Self, CaptureError> {
        let config_error = |message: String| CaptureError::Config {
            source_name: camera.source.clone(),
            message,
        };
        let key = camera
            .source
            .strip_prefix(SOURCE_PREFIX)
            .ok_or_else(|| config_error(format!("camera.source: not `{SOURCE_PREFIX}<key>`")))?;
        zenoh::key_expr::KeyExpr::try_from(key).map_err(|e| {
            config_error(format!(
                "camera.source: `{key}` is not a Zenoh key expression: {}",
                zenoh_error_text(&*e)
            ))
        })?;
        if camera.width == 0 || camera.height == 0 {
            return Err(config_error(format!(
                "camera.width/height: {}x{} is not a frame size",
                camera.width, camera.height
            )));
        }
        if camera.stall_timeout_ms == 0 {
            return Err(config_error(
                "camera.stall_timeout_ms: must be at least 1".into(),
            ));
        }
        Ok(Self {
            source_name: camera.source.clone(),
            key: key.to_string(),
            width: camera.width,
            height: camera.height,
            stall_timeout: Duration::from_millis(camera.stall_timeout_ms),
            zenoh: zenoh.clone(),
            started: false,
            own_session: None,
            subscriber: None,
            jpeg: MjpegDecoder::new(camera.width, camera.height),
            stats: CaptureStats::default(),
            last_publisher_sequence: None,
            last_sequence: None,
            ros2: false,
        })
    }

    /// A ROS 2 image topic as a camera (`[camera] source = "ros2:<absolute topic>"`) on
    /// ROS 2 domain `domain_id` (ARCHITECTURE.md §15); the same ring, stall, drop and
    /// corrupt accounting as a frame-record camera.
    pub fn new_ros2(
        camera: &CameraConfig,
        zenoh: &ZenohConfig,
        domain_id: u32,
    ) -> Result<Self, CaptureError> {
        let prefix = crate::ros2::CAMERA_SOURCE_PREFIX;
        let config_error = |message: String| CaptureError::Config {
            source_name: camera.source.clone(),
            message,
        };
        let topic = camera
            .source
            .strip_prefix(prefix)
            .ok_or_else(|| config_error(format!("camera.source: not `{prefix}<topic>`")))?;
        crate::ros2::config::check_absolute_topic(topic)
            .map_err(|m| config_error(format!("camera.source: {m}")))?;
        let as_zenoh = CameraConfig {
            source: format!(
                "{SOURCE_PREFIX}{}",
                crate::ros2::camera::subscription_key(domain_id, topic)
            ),
            ..camera.clone()
        };
        let mut source = Self::new(&as_zenoh, zenoh)?;
        source.source_name = camera.source.clone();
        source.ros2 = true;
        Ok(source)
    }

    /// Converts one sample into `frame`: the capture time (0: unknown) and the publisher's
    /// sequence number, or why it is corrupt with the sequence number when the sample was
    /// readable that far (a corrupt frame still counts in the sequence).
    fn convert_sample(
        &self,
        sample: &Sample,
        frame: &mut Frame,
    ) -> Result<(u64, u64), (Option<u64>, String)> {
        let payload = sample.payload().to_bytes();
        if self.ros2 {
            let attachment = sample.attachment().map(|a| a.to_bytes());
            let got = crate::ros2::camera::convert(
                sample.key_expr().as_str(),
                attachment.as_deref(),
                &payload,
                (self.width, self.height),
                &self.jpeg,
                frame,
            )?;
            return Ok((got.capture_time_ns, got.sequence));
        }
        let (header, image) = FrameHeader::decode(&payload).map_err(|m| (None, m))?;
        self.convert(&header, image, frame)
            .map_err(|m| (Some(header.sequence), m))?;
        Ok((header.capture_time_ns, header.sequence))
    }

    /// Checks and converts one frame record's image into `frame`; `Err` is the reason it is
    /// corrupt.
    fn convert(&self, header: &FrameHeader, image: &[u8], frame: &mut Frame) -> Result<(), String> {
        if (header.width, header.height) != (self.width, self.height) {
            return Err(format!(
                "frame is {}x{}, the configured size is {}x{}",
                header.width, header.height, self.width, self.height
            ));
        }
        match header.format {
            FrameFormat::Jpeg => self.jpeg.decode_into(image, &mut frame.image.data)?,
            FrameFormat::Rgb8 => {
                let expected = self.width as usize * self.height as usize * 3;
                if image.len() != expected {
                    return Err(format!(
                        "RGB8 frame of {} bytes, {}x{} needs {expected}",
                        image.len(),
                        self.width,
                        self.height
                    ));
                }
                frame.image.data.clear();
                frame.image.data.extend_from_slice(image);
            }
        }
        frame.image.width = self.width;
        frame.image.height = self.height;
        Ok(())
    }

    /// Counts drops from the publisher's sequence and returns the frame's sequence number.
    fn track_sequence(&mut self, publisher_sequence: u64) -> u64 {
        let gap = match self.last_publisher_sequence {
            Some(previous) if publisher_sequence > previous => publisher_sequence - previous - 1,
            // A repeat or a restart of the publisher: nothing known to be lost.
            Some(_) | None => 0,
        };
        self.stats.drops += gap;
        self.last_publisher_sequence = Some(publisher_sequence);
        let sequence = self.last_sequence.map_or(0, |s| s + 1 + gap);
        self.last_sequence = Some(sequence);
        sequence
    }

    fn subscribe(&mut self, session: &Session) -> Result<(), CaptureError> {
        let subscriber = session
            .declare_subscriber(self.key.clone())
            .with(RingChannel::new(1))
            .wait()
            .map_err(|e| CaptureError::Io {
                source_name: self.source_name.clone(),
                message: format!("cannot subscribe: {}", zenoh_error_text(&*e)),
            })?;
        self.subscriber = Some(subscriber);
        Ok(())
    }

    /// Subscribes on a session of the source's own, from `[zenoh]`.
    fn subscribe_on_own_session(&mut self) -> Result<(), CaptureError> {
        let inbound_limit = crate::transport::security::inbound_message_limit(
            largest_frame_payload(self.width, self.height),
        );
        let (session, _) = crate::transport::zenoh_io::open_session(&self.zenoh, inbound_limit)
            .map_err(|e| CaptureError::Config {
                source_name: self.source_name.clone(),
                message: e.to_string(),
            })?;
        self.own_session = Some(session.clone());
        self.subscribe(&session)
    }
}

impl FrameSource for ZenohSource {
    /// Nothing to open yet: the subscription is declared on the session attached next (the
    /// service's), or on a session of the source's own at the first frame.
    fn start(&mut self) -> Result<(), CaptureError> {
        self.started = true;
        Ok(())
    }

    fn attach_session(&mut self, session: &Session) -> Result<(), CaptureError> {
        if self.subscriber.is_none() {
            self.subscribe(session)?;
        }
        Ok(())
    }

    fn next_frame(&mut self, frame: &mut Frame) -> Result<(), CaptureError> {
        let started_waiting = Instant::now();
        let deadline = started_waiting + self.stall_timeout;
        let mut last_corruption: Option<String> = None;
        loop {
            if !self.started {
                return Err(CaptureError::Config {
                    source_name: self.source_name.clone(),
                    message: "next_frame before start".into(),
                });
            }
            if self.subscriber.is_none() {
                self.subscribe_on_own_session()?;
            }
            let Some(subscriber) = &self.subscriber else {
                continue;
            };
            let sample = match subscriber.handler().recv_deadline(deadline) {
                Ok(Some(sample)) => sample,
                Ok(None) => {
                    if let Some(message) = last_corruption {
                        return Err(CaptureError::Corrupt {
                            source_name: self.source_name.clone(),
                            message,
                        });
                    }
                    self.stats.stalls += 1;
                    return Err(CaptureError::Stalled {
                        source_name: self.source_name.clone(),
                        waited_ms: started_waiting.elapsed().as_millis() as u64,
                    });
                }
                Err(e) => {
                    return Err(CaptureError::Io {
                        source_name: self.source_name.clone(),
                        message: format!("subscription ended: {}", zenoh_error_text(&*e)),
                    })
                }
            };
            let converted = match self.convert_sample(&sample, frame) {
                Ok((capture_time_ns, publisher_sequence)) => {
                    Ok((capture_time_ns, self.track_sequence(publisher_sequence)))
                }
                Err((publisher_sequence, message)) => {
                    if let Some(publisher_sequence) = publisher_sequence {
                        self.track_sequence(publisher_sequence);
                    }
                    Err(message)
                }
            };
            match converted {
                Ok((capture_time_ns, sequence)) => {
                    frame.sequence = sequence;
                    frame.capture_time_ns = if capture_time_ns != 0 {
                        capture_time_ns
                    } else {
                        SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .map_or(0, |d| d.as_nanos() as u64)
                    };
                    self.stats.frames += 1;
                    return Ok(());
                }
                Err(message) => {
                    self.stats.corrupt += 1;
                    log::debug!(
                        "camera {}: skipped corrupt frame: {message}",
                        self.source_name
                    );
                    last_corruption = Some(message);
                }
            }
        }
    }

    fn stats(&self) -> CaptureStats {
        self.stats
    }

    fn stop(&mut self) {
        if let Some(subscriber) = self.subscriber.take() {
            if let Err(e) = subscriber.undeclare().wait() {
                log::warn!(
                    "camera {}: undeclaring the subscriber: {}",
                    self.source_name,
                    zenoh_error_text(&*e)
                );
            }
        }
        if let Some(session) = self.own_session.take() {
            if let Err(e) = session.close().wait() {
                log::warn!(
                    "camera {}: closing its session: {}",
                    self.source_name,
                    zenoh_error_text(&*e)
                );
            }
        }
        self.started = false;
    }

    fn describe(&self) -> String {
        format!("{} {}x{}", self.source_name, self.width, self.height)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn camera(width: u32, height: u32) -> CameraConfig {
        CameraConfig {
            source: "zenoh:cam/test".into(),
            width,
            height,
            ..CameraConfig::default()
        }
    }

    fn rgb_payload(width: u32, height: u32, sequence: u64, value: u8) -> Vec<u8> {
        FrameHeader {
            format: FrameFormat::Rgb8,
            width,
            height,
            capture_time_ns: 1_000 + sequence,
            sequence,
        }
        .encode(&vec![value; (width * height * 3) as usize])
    }

    #[test]
    fn header_round_trips_and_has_the_documented_layout() {
        let header = FrameHeader {
            format: FrameFormat::Jpeg,
            width: 224,
            height: 160,
            capture_time_ns: 0x0102_0304_0506_0708,
            sequence: 42,
        };
        let payload = header.encode(&[9, 9]);
        assert_eq!(payload.len(), FRAME_HEADER_LEN + 2);
        assert_eq!(&payload[..4], b"VLAF");
        assert_eq!(&payload[4..8], &[1, 0, 0, 0]);
        assert_eq!(&payload[8..12], &224u32.to_le_bytes());
        assert_eq!(&payload[16..24], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(payload[24], 42);
        let (decoded, image) = FrameHeader::decode(&payload).unwrap();
        assert_eq!(decoded, header);
        assert_eq!(image, &[9, 9]);
    }

    #[test]
    fn header_errors_name_the_problem() {
        let good = rgb_payload(2, 2, 0, 1);
        assert!(FrameHeader::decode(&good[..20])
            .unwrap_err()
            .contains("shorter"));
        let mut bad_magic = good.clone();
        bad_magic[0] = b'X';
        assert!(FrameHeader::decode(&bad_magic)
            .unwrap_err()
            .contains("magic"));
        let mut bad_version = good.clone();
        bad_version[4] = 2;
        assert!(FrameHeader::decode(&bad_version)
            .unwrap_err()
            .contains("version 2"));
        let mut bad_format = good;
        bad_format[6] = 7;
        assert!(FrameHeader::decode(&bad_format)
            .unwrap_err()
            .contains("format 7"));
    }

    #[test]
    fn rgb_frames_of_the_wrong_size_or_length_are_rejected() {
        let source = ZenohSource::new(&camera(4, 2), &ZenohConfig::default()).unwrap();
        let mut frame = Frame::default();
        let convert = |payload: &[u8], frame: &mut Frame| {
            let (header, image) = FrameHeader::decode(payload).unwrap();
            source.convert(&header, image, frame)
        };
        convert(&rgb_payload(4, 2, 5, 77), &mut frame).unwrap();
        assert_eq!(frame.image.data, vec![77; 24]);
        assert_eq!((frame.image.width, frame.image.height), (4, 2));
        let wrong_size = convert(&rgb_payload(2, 4, 6, 1), &mut frame);
        assert!(wrong_size.unwrap_err().contains("configured size is 4x2"));
        let mut short = rgb_payload(4, 2, 7, 1);
        short.pop();
        assert!(convert(&short, &mut frame)
            .unwrap_err()
            .contains("23 bytes"));
    }

    #[test]
    fn sequence_gaps_are_drops_and_restarts_are_not() {
        let mut source = ZenohSource::new(&camera(4, 2), &ZenohConfig::default()).unwrap();
        assert_eq!(source.track_sequence(10), 0);
        assert_eq!(source.track_sequence(11), 1);
        assert_eq!(source.track_sequence(14), 4);
        assert_eq!(source.stats.drops, 2);
        // The publisher restarted at 0: the sequence keeps increasing, nothing counted lost.
        assert_eq!(source.track_sequence(0), 5);
        assert_eq!(source.track_sequence(1), 6);
        assert_eq!(source.stats.drops, 2);
    }

    #[test]
    fn bad_keys_and_sizes_are_config_errors() {
        let mut bad_key = camera(4, 2);
        bad_key.source = "zenoh:a//b".into();
        let error = ZenohSource::new(&bad_key, &ZenohConfig::default())
            .err()
            .unwrap();
        assert!(
            error.to_string().contains("not a Zenoh key expression"),
            "{error}"
        );
        let error = ZenohSource::new(&camera(0, 2), &ZenohConfig::default())
            .err()
            .unwrap();
        assert!(error.to_string().contains("0x2"), "{error}");
    }
}
