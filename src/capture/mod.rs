//! Frame sources. Each source fills a caller-owned [`Frame`] so that steady-state capture
//! reuses its buffers; the capture thread publishes the newest frame and never blocks on
//! consumers.

pub mod mjpeg;
pub mod v4l2;
pub mod v4l2_convert;
pub mod v4l2_device;
pub mod zenoh_source;

use crate::preprocess::RgbImage;

/// One captured frame, converted to RGB.
#[derive(Debug, Clone, Default)]
pub struct Frame {
    pub image: RgbImage,
    /// Capture time, ns since the Unix epoch (CLOCK_REALTIME).
    pub capture_time_ns: u64,
    /// Sequence number as reported by the source (gaps mean dropped frames).
    pub sequence: u64,
}

/// Counters a source keeps over its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CaptureStats {
    pub frames: u64,
    /// Frames lost, from sequence gaps.
    pub drops: u64,
    /// Frames that could not be decoded and were skipped.
    pub corrupt: u64,
    /// Times the source waited longer than its stall timeout.
    pub stalls: u64,
    /// Times the device was reopened after it went away.
    pub reopens: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("camera {source_name}: device not found")]
    DeviceMissing { source_name: String },
    #[error("camera {source_name}: no frame for {waited_ms} ms")]
    Stalled { source_name: String, waited_ms: u64 },
    #[error("camera {source_name}: device went away")]
    Unplugged { source_name: String },
    #[error("camera {source_name}: corrupt frame: {message}")]
    Corrupt {
        source_name: String,
        message: String,
    },
    #[error("camera {source_name}: {message}")]
    Config {
        source_name: String,
        message: String,
    },
    #[error("camera {source_name}: {message}")]
    Io {
        source_name: String,
        message: String,
    },
}

impl CaptureError {
    /// Errors the capture loop rides out (keeps calling `next_frame`) rather than ending on.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            CaptureError::Stalled { .. }
                | CaptureError::Unplugged { .. }
                | CaptureError::Corrupt { .. }
        )
    }
}

/// A camera or camera-like producer of RGB frames.
///
/// Life cycle: `start` opens the device and allocates; `next_frame` blocks until the next
/// frame (or its stall timeout) and fills `frame` in place; `stop` releases the device.
pub trait FrameSource: Send {
    fn start(&mut self) -> Result<(), CaptureError>;
    fn next_frame(&mut self, frame: &mut Frame) -> Result<(), CaptureError>;
    fn stats(&self) -> CaptureStats;
    fn stop(&mut self);
    /// A short description for logs and status (`synthetic`, `/dev/video0 MJPG 640x480@30`).
    fn describe(&self) -> String;
    /// Hands the service's Zenoh session over after [`FrameSource::start`], so that a source
    /// reading from Zenoh subscribes on it (sharing its endpoints, identity and access rules)
    /// rather than opening a session of its own. Sources that do not use Zenoh ignore it.
    fn attach_session(&mut self, _session: &zenoh::Session) -> Result<(), CaptureError> {
        Ok(())
    }
}

pub mod images;
pub mod pair;
pub mod synthetic;
pub mod thread;

/// Builds the source a `[camera] source` value names (`synthetic`, `images:<dir>`,
/// `zenoh:<key>` or a `/dev/...` path); the device is opened by [`FrameSource::start`], which reports a missing
/// node as [`CaptureError::DeviceMissing`] (opening, not `stat`, is the test: what answers
/// `open` on a path is what a capture needs, and the service starts the camera before
/// anything slow).
pub fn open_source(
    config: &crate::config::CameraConfig,
) -> Result<Box<dyn FrameSource>, CaptureError> {
    open_source_with_zenoh(config, &crate::config::ZenohConfig::default())
}

/// [`open_source`], with the `[zenoh]` settings a `zenoh:<key>` source opens its own session
/// with when no session is attached to it.
pub fn open_source_with_zenoh(
    config: &crate::config::CameraConfig,
    zenoh: &crate::config::ZenohConfig,
) -> Result<Box<dyn FrameSource>, CaptureError> {
    open_source_in_domain(config, zenoh, 0)
}

/// [`open_source_with_zenoh`], with the ROS 2 domain a `ros2:<topic>` source reads from
/// (`[ros2] domain_id`).
pub fn open_source_in_domain(
    config: &crate::config::CameraConfig,
    zenoh: &crate::config::ZenohConfig,
    ros2_domain_id: u32,
) -> Result<Box<dyn FrameSource>, CaptureError> {
    let source = config.source.as_str();
    if source.starts_with(crate::ros2::CAMERA_SOURCE_PREFIX) {
        return Ok(Box::new(zenoh_source::ZenohSource::new_ros2(
            config,
            zenoh,
            ros2_domain_id,
        )?));
    }
    if source.starts_with(zenoh_source::SOURCE_PREFIX) {
        return Ok(Box::new(zenoh_source::ZenohSource::new(config, zenoh)?));
    }
    if source == "synthetic" {
        return Ok(Box::new(synthetic::SyntheticSource::new(config)?));
    }
    if let Some(dir) = source.strip_prefix("images:") {
        return Ok(Box::new(images::ImageFolderSource::new(
            std::path::Path::new(dir),
            config,
        )?));
    }
    if source.starts_with("/dev/") {
        return Ok(Box::new(v4l2::V4l2Source::new(config)?));
    }
    Err(CaptureError::Config {
        source_name: source.to_string(),
        message:
            "not `synthetic`, `images:<dir>`, `zenoh:<key>`, `ros2:<topic>` or a `/dev/videoN` path"
                .into(),
    })
}
