//! V4L2 cameras through the `v4l` crate (mmap streaming).

use super::{CaptureError, CaptureStats, Frame, FrameSource};
use crate::config::CameraConfig;

/// A V4L2 capture device such as `/dev/video0`.
pub struct V4l2Source {
    config: CameraConfig,
    stats: CaptureStats,
}

impl V4l2Source {
    /// Validates the configuration; the device is opened by [`FrameSource::start`].
    pub fn new(config: &CameraConfig) -> Result<Self, CaptureError> {
        Ok(Self {
            config: config.clone(),
            stats: CaptureStats::default(),
        })
    }
}

impl FrameSource for V4l2Source {
    fn start(&mut self) -> Result<(), CaptureError> {
        Err(CaptureError::Config {
            source_name: self.config.source.clone(),
            message: "V4L2 capture is not available in this build".into(),
        })
    }

    fn next_frame(&mut self, _frame: &mut Frame) -> Result<(), CaptureError> {
        Err(CaptureError::Unplugged {
            source_name: self.config.source.clone(),
        })
    }

    fn stats(&self) -> CaptureStats {
        self.stats
    }

    fn stop(&mut self) {}

    fn describe(&self) -> String {
        self.config.source.clone()
    }
}
