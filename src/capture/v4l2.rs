//! V4L2 cameras (`/dev/videoN`): mmap streaming, format negotiation, conversion to RGB, and
//! the faults real cameras have.
//!
//! What the source owns, per [`FrameSource::next_frame`] call:
//! - waits up to `stall_timeout_ms` for a buffer; a timeout is `Stalled` (counted);
//! - ENODEV/EIO (unplug, or a driver that gave up) is `Unplugged`; the following calls reopen
//!   the device with a doubling, capped backoff (each attempt logged) and count reopens;
//! - sequence gaps are counted as drops; frames the driver flags as errors and MJPEG that does
//!   not decode are skipped and counted as corrupt;
//! - driver timestamps (CLOCK_MONOTONIC) are mapped to the Unix-epoch clock of commands.
//!
//! It never panics on anything a camera does. The controls in [`CameraConfig`] (exposure,
//! white balance, gain) are applied at every (re)open, since a replugged camera forgets them.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::mjpeg::MjpegDecoder;
use super::v4l2_convert;
use super::v4l2_device::{Dequeued, Device, FourCc, FrameSize, MmapRing, PixFormat, Readiness};
use super::{CaptureError, CaptureStats, Frame, FrameSource};
use crate::config::{AutoKeyword, CameraConfig, ControlValue};
use v4l::v4l_sys::{
    v4l2_exposure_auto_type_V4L2_EXPOSURE_APERTURE_PRIORITY as EXPOSURE_APERTURE_PRIORITY,
    v4l2_exposure_auto_type_V4L2_EXPOSURE_AUTO as EXPOSURE_AUTO,
    v4l2_exposure_auto_type_V4L2_EXPOSURE_MANUAL as EXPOSURE_MANUAL, V4L2_BUF_FLAG_ERROR,
    V4L2_BUF_FLAG_TIMESTAMP_MASK, V4L2_BUF_FLAG_TIMESTAMP_MONOTONIC, V4L2_CID_AUTOGAIN,
    V4L2_CID_AUTO_WHITE_BALANCE, V4L2_CID_EXPOSURE_ABSOLUTE, V4L2_CID_EXPOSURE_AUTO, V4L2_CID_GAIN,
    V4L2_CID_WHITE_BALANCE_TEMPERATURE,
};

/// Formats tried in order when `format = "auto"`: compressed first (USB bandwidth), then the
/// raw ones by colour fidelity.
pub const FORMAT_PREFERENCE: [FourCc; 4] = [FourCc::MJPG, FourCc::YUYV, FourCc::RGB3, FourCc::GREY];

const BUFFER_COUNT: u32 = 4;
const FIRST_REOPEN_DELAY: Duration = Duration::from_millis(100);
const MAX_REOPEN_DELAY: Duration = Duration::from_secs(2);

/// The requested pixel format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormatRequest {
    Auto,
    Exact(FourCc),
}

impl FormatRequest {
    /// Parses `[camera] format`.
    pub fn parse(text: &str) -> Option<Self> {
        if text.eq_ignore_ascii_case("auto") {
            return Some(FormatRequest::Auto);
        }
        FORMAT_PREFERENCE
            .iter()
            .find(|f| f.to_string().eq_ignore_ascii_case(text))
            .map(|&f| FormatRequest::Exact(f))
    }
}

/// Picks the format and size to ask for, from what the device offers.
///
/// With `Auto`, the first format of [`FORMAT_PREFERENCE`] offered at exactly the wanted size;
/// if none is, the offered size nearest to it (earlier formats win ties). A format with no
/// enumerated sizes is assumed to take any size (the driver adjusts it on S_FMT).
pub fn choose_format(
    offered: &[(FourCc, Vec<FrameSize>)],
    request: FormatRequest,
    width: u32,
    height: u32,
) -> Result<(FourCc, u32, u32), String> {
    let candidates: Vec<&(FourCc, Vec<FrameSize>)> = match request {
        FormatRequest::Auto => FORMAT_PREFERENCE
            .iter()
            .filter_map(|f| offered.iter().find(|(o, _)| o == f))
            .collect(),
        FormatRequest::Exact(wanted) => offered.iter().filter(|(o, _)| *o == wanted).collect(),
    };
    if candidates.is_empty() {
        let list: Vec<String> = offered.iter().map(|(f, _)| f.to_string()).collect();
        let wanted = match request {
            FormatRequest::Auto => "none of MJPG, YUYV, RGB3, GREY".to_string(),
            FormatRequest::Exact(f) => format!("not {f}"),
        };
        return Err(format!(
            "camera.format: the device offers {wanted} (it offers: {})",
            if list.is_empty() {
                "nothing".to_string()
            } else {
                list.join(", ")
            }
        ));
    }
    let mut best: Option<(u64, FourCc, u32, u32)> = None;
    for (fourcc, sizes) in candidates {
        let (w, h) = nearest_size(sizes, width, height);
        let distance = u64::from(w.abs_diff(width)) + u64::from(h.abs_diff(height));
        if best.is_none_or(|(d, ..)| distance < d) {
            best = Some((distance, *fourcc, w, h));
        }
        if distance == 0 {
            break;
        }
    }
    best.map(|(_, f, w, h)| (f, w, h))
        .ok_or_else(|| "no format candidate".to_string())
}

fn nearest_size(sizes: &[FrameSize], width: u32, height: u32) -> (u32, u32) {
    let mut best = (width, height);
    let mut best_distance = u64::MAX;
    for size in sizes {
        let (w, h) = match *size {
            FrameSize::Discrete {
                width: w,
                height: h,
            } => (w, h),
            FrameSize::Stepwise {
                min_width,
                max_width,
                step_width,
                min_height,
                max_height,
                step_height,
            } => (
                snap(width, min_width, max_width, step_width),
                snap(height, min_height, max_height, step_height),
            ),
        };
        let distance = u64::from(w.abs_diff(width)) + u64::from(h.abs_diff(height));
        if distance < best_distance {
            best = (w, h);
            best_distance = distance;
        }
    }
    best
}

fn snap(value: u32, min: u32, max: u32, step: u32) -> u32 {
    let clamped = value.clamp(min, max.max(min));
    let step = step.max(1);
    min + (clamped - min + step / 2) / step * step
}

/// Current values of the controls the calibration tool locks; `None` where the camera has no
/// such control.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct CameraControls {
    pub exposure_auto: Option<bool>,
    pub exposure: Option<i64>,
    pub white_balance_auto: Option<bool>,
    pub white_balance: Option<i64>,
    pub gain_auto: Option<bool>,
    pub gain: Option<i64>,
}

impl CameraControls {
    /// Writes the current values into `camera` as fixed settings, so that the next start
    /// reproduces what the camera settled on.
    pub fn lock_into(&self, camera: &mut CameraConfig) {
        if let Some(value) = self.exposure {
            camera.exposure = ControlValue::Manual(value);
        }
        if let Some(value) = self.white_balance {
            camera.white_balance = ControlValue::Manual(value);
        }
        if let Some(value) = self.gain {
            camera.gain = ControlValue::Manual(value);
        }
    }
}

/// An open, streaming device. The ring is declared first: it must be dropped before the
/// device closes its fd.
struct Streaming {
    ring: MmapRing,
    device: Device,
}

struct Negotiated {
    format: PixFormat,
    /// Frame interval the driver chose, as (numerator, denominator) seconds.
    interval: Option<(u32, u32)>,
}

struct Reconnect {
    next_attempt: Instant,
    delay: Duration,
    attempts: u32,
}

/// A V4L2 capture device such as `/dev/video0`.
pub struct V4l2Source {
    config: CameraConfig,
    request: FormatRequest,
    stall_timeout: Duration,
    stats: CaptureStats,
    started: bool,
    streaming: Option<Streaming>,
    negotiated: Option<Negotiated>,
    reconnect: Option<Reconnect>,
    mjpeg: Option<MjpegDecoder>,
    /// Driver sequence number of the last frame of the current stream.
    last_driver_sequence: Option<u32>,
    /// Added to driver sequence numbers so that `Frame::sequence` keeps increasing across
    /// reopens (a new stream restarts at 0).
    sequence_offset: i64,
    last_sequence: Option<u64>,
}

impl V4l2Source {
    /// Validates the configuration; the device is opened by [`FrameSource::start`].
    pub fn new(config: &CameraConfig) -> Result<Self, CaptureError> {
        let config_error = |message: String| CaptureError::Config {
            source_name: config.source.clone(),
            message,
        };
        let request = FormatRequest::parse(&config.format).ok_or_else(|| {
            config_error(format!(
                "camera.format: unsupported '{}' (expected auto, MJPG, YUYV, RGB3 or GREY)",
                config.format
            ))
        })?;
        if config.source.is_empty() {
            return Err(config_error("camera.source: empty device path".into()));
        }
        if config.width == 0 || config.height == 0 {
            return Err(config_error(format!(
                "camera.width/height: {}x{} is not a frame size",
                config.width, config.height
            )));
        }
        if config.fps == 0 {
            return Err(config_error("camera.fps: must be at least 1".into()));
        }
        if config.stall_timeout_ms == 0 {
            return Err(config_error(
                "camera.stall_timeout_ms: must be at least 1".into(),
            ));
        }
        Ok(Self {
            config: config.clone(),
            request,
            stall_timeout: Duration::from_millis(config.stall_timeout_ms),
            stats: CaptureStats::default(),
            started: false,
            streaming: None,
            negotiated: None,
            reconnect: None,
            mjpeg: None,
            last_driver_sequence: None,
            sequence_offset: 0,
            last_sequence: None,
        })
    }

    fn path(&self) -> &str {
        &self.config.source
    }

    /// The negotiated format, once started.
    pub fn format(&self) -> Option<PixFormat> {
        self.negotiated.as_ref().map(|n| n.format)
    }

    /// Reads the current exposure, white-balance and gain settings back from the camera.
    pub fn controls(&self) -> Result<CameraControls, CaptureError> {
        let streaming = self
            .streaming
            .as_ref()
            .ok_or_else(|| CaptureError::Unplugged {
                source_name: self.path().to_string(),
            })?;
        let device = &streaming.device;
        let read = |id: u32| -> Result<Option<i64>, CaptureError> {
            match device.query_control(id)? {
                Some(_) => Ok(Some(i64::from(device.control(id)?))),
                None => Ok(None),
            }
        };
        Ok(CameraControls {
            exposure_auto: read(V4L2_CID_EXPOSURE_AUTO)?.map(|v| v != i64::from(EXPOSURE_MANUAL)),
            exposure: read(V4L2_CID_EXPOSURE_ABSOLUTE)?,
            white_balance_auto: read(V4L2_CID_AUTO_WHITE_BALANCE)?.map(|v| v != 0),
            white_balance: read(V4L2_CID_WHITE_BALANCE_TEMPERATURE)?,
            gain_auto: read(V4L2_CID_AUTOGAIN)?.map(|v| v != 0),
            gain: read(V4L2_CID_GAIN)?,
        })
    }

    /// Opens the device, negotiates, applies controls and starts streaming.
    fn open_stream(&self) -> Result<(Streaming, Negotiated), CaptureError> {
        let path = self.path();
        let device = Device::open(path)?;
        let capability = device.capability()?;
        if !capability.video_capture || !capability.streaming {
            return Err(CaptureError::Config {
                source_name: path.to_string(),
                message: format!(
                    "{} ({}) is not a streaming video capture device",
                    capability.card, capability.driver
                ),
            });
        }
        let mut offered = Vec::new();
        for description in device.formats()? {
            let sizes = device.frame_sizes(description.fourcc)?;
            offered.push((description.fourcc, sizes));
        }
        let (fourcc, width, height) = choose_format(
            &offered,
            self.request,
            self.config.width,
            self.config.height,
        )
        .map_err(|message| CaptureError::Config {
            source_name: path.to_string(),
            message,
        })?;
        let format = device.set_format(fourcc, width, height)?;
        if format.fourcc != fourcc {
            return Err(CaptureError::Config {
                source_name: path.to_string(),
                message: format!(
                    "camera.format: the driver refused {fourcc} (it set {})",
                    format.fourcc
                ),
            });
        }
        if (format.width, format.height) != (self.config.width, self.config.height) {
            log::warn!(
                "camera {path}: {}x{} not offered, using {}x{}",
                self.config.width,
                self.config.height,
                format.width,
                format.height
            );
        }
        let interval = device.set_frame_rate(self.config.fps)?;
        if let Some((numerator, denominator)) = interval {
            if u64::from(denominator) != u64::from(numerator) * u64::from(self.config.fps) {
                log::warn!(
                    "camera {path}: {} fps not offered, running at {numerator}/{denominator} s per frame",
                    self.config.fps
                );
            }
        }
        apply_controls(&device, &self.config)?;
        let ring = MmapRing::start(&device, BUFFER_COUNT)?;
        Ok((Streaming { ring, device }, Negotiated { format, interval }))
    }

    fn begin_stream(&mut self, streaming: Streaming, negotiated: Negotiated) {
        let format = negotiated.format;
        self.mjpeg =
            (format.fourcc == FourCc::MJPG).then(|| MjpegDecoder::new(format.width, format.height));
        self.negotiated = Some(negotiated);
        self.streaming = Some(streaming);
        self.last_driver_sequence = None;
    }

    /// Drops the stream after the device went away and schedules the first reopen.
    fn lose_device(&mut self, reason: &CaptureError) -> CaptureError {
        log::warn!("camera {}: {reason}; reopening", self.path());
        self.streaming = None;
        self.reconnect = Some(Reconnect {
            next_attempt: Instant::now() + FIRST_REOPEN_DELAY,
            delay: FIRST_REOPEN_DELAY,
            attempts: 0,
        });
        CaptureError::Unplugged {
            source_name: self.path().to_string(),
        }
    }

    /// Waits for the next reopen attempt (not past `deadline`) and makes it.
    fn reopen(&mut self, deadline: Instant) -> Result<(), CaptureError> {
        let unplugged = CaptureError::Unplugged {
            source_name: self.path().to_string(),
        };
        let next_attempt = match &self.reconnect {
            Some(reconnect) => reconnect.next_attempt,
            None => Instant::now(),
        };
        let now = Instant::now();
        if next_attempt > now {
            std::thread::sleep(next_attempt.min(deadline) - now);
            if next_attempt > Instant::now() {
                return Err(unplugged);
            }
        }
        match self.open_stream() {
            Ok((streaming, negotiated)) => {
                let attempts = self.reconnect.take().map_or(0, |r| r.attempts) + 1;
                self.stats.reopens += 1;
                log::info!(
                    "camera {}: reopened after {attempts} attempt(s)",
                    self.path()
                );
                self.begin_stream(streaming, negotiated);
                Ok(())
            }
            Err(error) => {
                let reconnect = self.reconnect.get_or_insert(Reconnect {
                    next_attempt: now,
                    delay: FIRST_REOPEN_DELAY,
                    attempts: 0,
                });
                reconnect.attempts += 1;
                reconnect.delay = (reconnect.delay * 2).min(MAX_REOPEN_DELAY);
                reconnect.next_attempt = Instant::now() + reconnect.delay;
                log::warn!(
                    "camera {}: reopen attempt {} failed: {error}; next in {} ms",
                    self.config.source,
                    reconnect.attempts,
                    reconnect.delay.as_millis()
                );
                Err(unplugged)
            }
        }
    }

    /// Counts drops from the driver sequence and returns the frame's sequence number.
    fn track_sequence(&mut self, driver_sequence: u32) -> u64 {
        let next_expected = self.last_sequence.map_or(0, |s| s + 1) as i64;
        match self.last_driver_sequence {
            Some(previous) if driver_sequence > previous => {
                self.stats.drops += u64::from(driver_sequence - previous - 1);
            }
            Some(_) => {
                // The counter went back within a stream (wrapped or reset): carry on.
                self.sequence_offset = next_expected - i64::from(driver_sequence);
            }
            None => {
                // First frame of a stream: frames the driver lost before it are drops.
                self.stats.drops += u64::from(driver_sequence);
                self.sequence_offset = next_expected;
            }
        }
        self.last_driver_sequence = Some(driver_sequence);
        let sequence = (i64::from(driver_sequence) + self.sequence_offset).max(0) as u64;
        self.last_sequence = Some(sequence);
        sequence
    }

    /// Converts a dequeued buffer into `frame`; `Err` is a corrupt frame.
    fn convert(
        ring: &MmapRing,
        negotiated: &Negotiated,
        mjpeg: Option<&MjpegDecoder>,
        buffer: &Dequeued,
        frame: &mut Frame,
    ) -> Result<(), String> {
        if buffer.flags & V4L2_BUF_FLAG_ERROR != 0 {
            return Err("driver flagged the buffer as corrupt".into());
        }
        let format = &negotiated.format;
        let data = ring.data(buffer.index, buffer.bytes_used);
        let stride = format.bytes_per_line as usize;
        let (width, height) = (format.width, format.height);
        let rgb = &mut frame.image.data;
        match format.fourcc {
            FourCc::MJPG => match mjpeg {
                Some(decoder) => decoder.decode_into(data, rgb)?,
                None => return Err("no MJPEG decoder".into()),
            },
            FourCc::YUYV => {
                v4l2_convert::yuyv_to_rgb(data, width, height, stride.max(width as usize * 2), rgb)?
            }
            FourCc::RGB3 => v4l2_convert::rgb24_to_rgb(
                data,
                width,
                height,
                stride.max(width as usize * 3),
                rgb,
            )?,
            FourCc::GREY => {
                v4l2_convert::grey_to_rgb(data, width, height, stride.max(width as usize), rgb)?
            }
            other => return Err(format!("unsupported pixel format {other}")),
        }
        frame.image.width = width;
        frame.image.height = height;
        frame.capture_time_ns = epoch_time_ns(buffer);
        Ok(())
    }
}

/// The buffer's driver timestamp on the Unix-epoch clock: its age on CLOCK_MONOTONIC
/// subtracted from CLOCK_REALTIME now. Without a monotonic timestamp, now.
fn epoch_time_ns(buffer: &Dequeued) -> u64 {
    let realtime_now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let (seconds, micros) = buffer.timestamp;
    let monotonic =
        buffer.flags & V4L2_BUF_FLAG_TIMESTAMP_MASK == V4L2_BUF_FLAG_TIMESTAMP_MONOTONIC;
    if !monotonic || (seconds == 0 && micros == 0) || seconds < 0 || micros < 0 {
        return realtime_now;
    }
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec to write; CLOCK_MONOTONIC always exists on Linux.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) } != 0 {
        return realtime_now;
    }
    let monotonic_now = now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64;
    let stamp = seconds as u64 * 1_000_000_000 + micros as u64 * 1_000;
    realtime_now.saturating_sub(monotonic_now.saturating_sub(stamp))
}

/// Applies `[camera] exposure, white_balance, gain`: the automatic switch first (a control
/// its auto mode owns cannot be set), then the value, checked against the camera's range.
fn apply_controls(device: &Device, config: &CameraConfig) -> Result<(), CaptureError> {
    let config_error = |message: String| CaptureError::Config {
        source_name: config.source.clone(),
        message,
    };
    let set_manual = |key: &str, id: u32, value: i64| -> Result<(), CaptureError> {
        let Some(info) = device.query_control(id)? else {
            return Err(config_error(format!(
                "camera.{key} = {value}: the device has no such control"
            )));
        };
        if value < info.minimum || value > info.maximum {
            return Err(config_error(format!(
                "camera.{key} = {value}: outside '{}' range {}..={}",
                info.name, info.minimum, info.maximum
            )));
        }
        let stored = device.set_control(id, value as i32)?;
        if i64::from(stored) != value {
            log::warn!("camera {}: {key} {value} stored as {stored}", config.source);
        }
        Ok(())
    };
    let set_switch = |id: u32, value: i32| -> Result<bool, CaptureError> {
        if device.query_control(id)?.is_none() {
            return Ok(false);
        }
        device.set_control(id, value)?;
        Ok(true)
    };
    let auto = ControlValue::Auto(AutoKeyword::Auto);

    match config.exposure {
        ControlValue::Unset => {}
        value if value == auto => {
            let Some(info) = device.query_control(V4L2_CID_EXPOSURE_AUTO)? else {
                return Err(config_error(
                    "camera.exposure = \"auto\": the device has no auto exposure control".into(),
                ));
            };
            // UVC cameras offer aperture priority (auto exposure, fixed iris) but not full auto.
            let mode = [EXPOSURE_APERTURE_PRIORITY, EXPOSURE_AUTO]
                .into_iter()
                .find(|mode| info.menu.iter().any(|(index, _)| index == mode))
                .unwrap_or(EXPOSURE_AUTO);
            device.set_control(V4L2_CID_EXPOSURE_AUTO, mode as i32)?;
        }
        ControlValue::Manual(value) => {
            set_switch(V4L2_CID_EXPOSURE_AUTO, EXPOSURE_MANUAL as i32)?;
            set_manual("exposure", V4L2_CID_EXPOSURE_ABSOLUTE, value)?;
        }
        ControlValue::Auto(_) => {}
    }
    match config.white_balance {
        ControlValue::Unset => {}
        ControlValue::Auto(_) => {
            if !set_switch(V4L2_CID_AUTO_WHITE_BALANCE, 1)? {
                return Err(config_error(
                    "camera.white_balance = \"auto\": the device has no auto white balance".into(),
                ));
            }
        }
        ControlValue::Manual(value) => {
            set_switch(V4L2_CID_AUTO_WHITE_BALANCE, 0)?;
            set_manual("white_balance", V4L2_CID_WHITE_BALANCE_TEMPERATURE, value)?;
        }
    }
    match config.gain {
        ControlValue::Unset => {}
        ControlValue::Auto(_) => {
            if !set_switch(V4L2_CID_AUTOGAIN, 1)? {
                log::info!(
                    "camera {}: no separate auto gain; gain follows auto exposure",
                    config.source
                );
            }
        }
        ControlValue::Manual(value) => {
            set_switch(V4L2_CID_AUTOGAIN, 0)?;
            set_manual("gain", V4L2_CID_GAIN, value)?;
        }
    }
    Ok(())
}

impl FrameSource for V4l2Source {
    fn start(&mut self) -> Result<(), CaptureError> {
        let (streaming, negotiated) = self.open_stream()?;
        log::info!("camera {}: streaming", self.describe_with(&negotiated));
        self.begin_stream(streaming, negotiated);
        self.reconnect = None;
        self.started = true;
        Ok(())
    }

    fn next_frame(&mut self, frame: &mut Frame) -> Result<(), CaptureError> {
        if !self.started {
            return Err(CaptureError::Config {
                source_name: self.path().to_string(),
                message: "next_frame before start".into(),
            });
        }
        let started_waiting = Instant::now();
        let deadline = started_waiting + self.stall_timeout;
        if self.streaming.is_none() {
            self.reopen(deadline)?;
        }
        let mut last_corruption: Option<String> = None;
        loop {
            let (Some(streaming), Some(negotiated)) = (&self.streaming, &self.negotiated) else {
                return Err(CaptureError::Unplugged {
                    source_name: self.path().to_string(),
                });
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            let readiness = match streaming.ring.wait(remaining) {
                Ok(readiness) => readiness,
                Err(error) => return Err(self.fail(error)),
            };
            if readiness == Readiness::TimedOut {
                if Instant::now() < deadline {
                    continue; // interrupted by a signal
                }
                if let Some(message) = last_corruption {
                    return Err(CaptureError::Corrupt {
                        source_name: self.path().to_string(),
                        message,
                    });
                }
                self.stats.stalls += 1;
                return Err(CaptureError::Stalled {
                    source_name: self.path().to_string(),
                    waited_ms: started_waiting.elapsed().as_millis() as u64,
                });
            }
            let buffer = match streaming.ring.dequeue() {
                Ok(Some(buffer)) => buffer,
                Ok(None) if readiness == Readiness::Broken => {
                    let error = CaptureError::Io {
                        source_name: self.path().to_string(),
                        message: "poll reports an error on the stream".into(),
                    };
                    return Err(self.lose_device(&error));
                }
                Ok(None) => continue,
                Err(error) => return Err(self.fail(error)),
            };
            let converted = Self::convert(
                &streaming.ring,
                negotiated,
                self.mjpeg.as_ref(),
                &buffer,
                frame,
            );
            let requeued = streaming.ring.queue(buffer.index);
            let sequence = self.track_sequence(buffer.sequence);
            if let Err(error) = requeued {
                return Err(self.fail(error));
            }
            match converted {
                Ok(()) => {
                    frame.sequence = sequence;
                    self.stats.frames += 1;
                    return Ok(());
                }
                Err(message) => {
                    self.stats.corrupt += 1;
                    log::debug!(
                        "camera {}: skipped corrupt frame {sequence}: {message}",
                        self.path()
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
        self.streaming = None;
        self.reconnect = None;
        self.started = false;
    }

    fn describe(&self) -> String {
        match &self.negotiated {
            Some(negotiated) => self.describe_with(negotiated),
            None => self.config.source.clone(),
        }
    }
}

impl V4l2Source {
    /// Handles an error from the stream: a vanished device starts reconnection.
    fn fail(&mut self, error: CaptureError) -> CaptureError {
        match error {
            CaptureError::Unplugged { .. } => self.lose_device(&error),
            other => other,
        }
    }

    fn describe_with(&self, negotiated: &Negotiated) -> String {
        let format = &negotiated.format;
        let rate = match negotiated.interval {
            Some((numerator, denominator)) if numerator > 0 => {
                let fps = f64::from(denominator) / f64::from(numerator);
                format!("@{}", (fps * 100.0).round() / 100.0)
            }
            _ => String::new(),
        };
        format!(
            "{} {} {}x{}{rate}",
            self.config.source, format.fourcc, format.width, format.height
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn discrete(sizes: &[(u32, u32)]) -> Vec<FrameSize> {
        sizes
            .iter()
            .map(|&(width, height)| FrameSize::Discrete { width, height })
            .collect()
    }

    #[test]
    fn auto_prefers_mjpeg_at_the_exact_size() {
        let offered = vec![
            (FourCc::YUYV, discrete(&[(640, 480), (320, 240)])),
            (FourCc::MJPG, discrete(&[(1280, 720), (640, 480)])),
        ];
        let chosen = choose_format(&offered, FormatRequest::Auto, 640, 480).unwrap();
        assert_eq!(chosen, (FourCc::MJPG, 640, 480));
    }

    #[test]
    fn auto_takes_a_later_format_that_has_the_exact_size() {
        let offered = vec![
            (FourCc::YUYV, discrete(&[(640, 480), (320, 240)])),
            (FourCc::MJPG, discrete(&[(320, 240)])),
        ];
        let chosen = choose_format(&offered, FormatRequest::Auto, 640, 480).unwrap();
        assert_eq!(chosen, (FourCc::YUYV, 640, 480));
    }

    #[test]
    fn nearest_size_when_none_matches() {
        let offered = vec![(
            FourCc::YUYV,
            discrete(&[(1920, 1080), (800, 600), (320, 240)]),
        )];
        let chosen = choose_format(&offered, FormatRequest::Auto, 640, 480).unwrap();
        assert_eq!(chosen, (FourCc::YUYV, 800, 600));
        let stepwise = vec![(
            FourCc::GREY,
            vec![FrameSize::Stepwise {
                min_width: 16,
                max_width: 4096,
                step_width: 16,
                min_height: 16,
                max_height: 400,
                step_height: 8,
            }],
        )];
        let chosen = choose_format(&stepwise, FormatRequest::Auto, 650, 480).unwrap();
        assert_eq!(chosen, (FourCc::GREY, 656, 400));
    }

    #[test]
    fn exact_format_missing_names_what_is_offered() {
        let offered = vec![(FourCc::YUYV, discrete(&[(640, 480)]))];
        let error =
            choose_format(&offered, FormatRequest::Exact(FourCc::MJPG), 640, 480).unwrap_err();
        assert!(
            error.contains("camera.format") && error.contains("not MJPG"),
            "{error}"
        );
        assert!(error.contains("YUYV"), "{error}");
    }

    #[test]
    fn format_keyword_parsing() {
        assert_eq!(FormatRequest::parse("auto"), Some(FormatRequest::Auto));
        assert_eq!(
            FormatRequest::parse("yuyv"),
            Some(FormatRequest::Exact(FourCc::YUYV))
        );
        assert_eq!(FormatRequest::parse("H264"), None);
        let config = CameraConfig {
            source: "/dev/video0".into(),
            format: "H264".into(),
            ..CameraConfig::default()
        };
        let error = V4l2Source::new(&config).err().unwrap().to_string();
        assert!(
            error.contains("camera.format") && error.contains("H264"),
            "{error}"
        );
    }

    #[test]
    fn sequence_gaps_are_drops_and_reopens_continue_the_count() {
        let config = CameraConfig {
            source: "/dev/video0".into(),
            ..CameraConfig::default()
        };
        let mut source = V4l2Source::new(&config).unwrap();
        let seen: Vec<u64> = [0, 1, 2, 5, 6]
            .iter()
            .map(|&s| source.track_sequence(s))
            .collect();
        assert_eq!(seen, [0, 1, 2, 5, 6]);
        assert_eq!(source.stats.drops, 2);
        // A reopened stream starts again at 0.
        source.last_driver_sequence = None;
        let after: Vec<u64> = [0, 1, 3]
            .iter()
            .map(|&s| source.track_sequence(s))
            .collect();
        assert_eq!(after, [7, 8, 10]);
        assert_eq!(source.stats.drops, 3);
    }

    #[test]
    fn locked_controls_become_manual_settings() {
        let controls = CameraControls {
            exposure_auto: Some(true),
            exposure: Some(156),
            white_balance_auto: Some(true),
            white_balance: Some(4600),
            gain_auto: None,
            gain: None,
        };
        let mut camera = CameraConfig::default();
        controls.lock_into(&mut camera);
        assert_eq!(camera.exposure, ControlValue::Manual(156));
        assert_eq!(camera.white_balance, ControlValue::Manual(4600));
        assert_eq!(camera.gain, ControlValue::Unset);
    }
}
