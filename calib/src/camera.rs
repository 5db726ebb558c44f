//! The camera half of the calibration: see what the camera offers, let its automatic
//! exposure and white balance settle, lock the values it settled on, and capture the frames
//! the policy is measured on, with the locked settings applied (so they are the frames the
//! service will see).

use std::time::{Duration, Instant};

use v4l::v4l_sys::{V4L2_CID_AUTOGAIN, V4L2_CID_AUTO_WHITE_BALANCE, V4L2_CID_EXPOSURE_AUTO};
use vla_rt::capture::v4l2::{CameraControls, V4l2Source};
use vla_rt::capture::v4l2_device::{FrameInterval, FrameSize};
use vla_rt::capture::{CaptureError, Frame, FrameSource};
use vla_rt::cli::cameras::DeviceReport;
use vla_rt::config::{AutoKeyword, CameraConfig, ControlValue};

use crate::progress;

/// What the camera step produced.
pub struct CapturedCamera {
    /// The settings to run with: the negotiated mode, and for V4L2 the locked controls.
    pub config: CameraConfig,
    /// The negotiated mode as the capture code describes it.
    pub description: String,
    /// Control values read back after locking (V4L2 only).
    pub locked: Option<CameraControls>,
    pub frames: Vec<Frame>,
    /// Frame rate measured over the captured frames' timestamps.
    pub measured_fps: Option<f64>,
}

/// Runs the camera step for `requested` (`source` decides the kind of camera).
pub fn calibrate(
    requested: &CameraConfig,
    settle: Duration,
    frame_count: usize,
) -> Result<CapturedCamera, CaptureError> {
    if requested.source.starts_with("/dev/") {
        calibrate_v4l2(requested, settle, frame_count)
    } else {
        let mut source = vla_rt::capture::open_source(requested)?;
        source.start()?;
        let description = source.describe();
        log::info!("camera {description}: no exposure or white-balance controls to settle");
        let frames = capture(source.as_mut(), frame_count, &description);
        source.stop();
        let frames = frames?;
        Ok(CapturedCamera {
            config: requested.clone(),
            description,
            locked: None,
            measured_fps: measured_fps(&frames),
            frames,
        })
    }
}

fn calibrate_v4l2(
    requested: &CameraConfig,
    settle: Duration,
    frame_count: usize,
) -> Result<CapturedCamera, CaptureError> {
    let path = requested.source.as_str();
    let report = vla_rt::cli::cameras::inspect(path)?;
    log::info!(
        "camera {path}: {} ({}) offers {}",
        report.capability.card,
        report.capability.driver,
        offered_modes(&report)
    );
    let has = |id: u32| report.controls.iter().any(|c| c.id == id);
    let auto = ControlValue::Auto(AutoKeyword::Auto);
    let settling = CameraConfig {
        exposure: if has(V4L2_CID_EXPOSURE_AUTO) {
            auto
        } else {
            ControlValue::Unset
        },
        white_balance: if has(V4L2_CID_AUTO_WHITE_BALANCE) {
            auto
        } else {
            ControlValue::Unset
        },
        gain: if has(V4L2_CID_AUTOGAIN) {
            auto
        } else {
            ControlValue::Unset
        },
        ..requested.clone()
    };

    // Automatic mode on, frames flowing until the camera's control loops settle.
    let mut source = V4l2Source::new(&settling)?;
    source.start()?;
    let settled = settle_then_read(&mut source, settle);
    let negotiated = source.format();
    source.stop();
    let controls = settled?;
    let mut locked = requested.clone();
    controls.lock_into(&mut locked);
    if let Some(format) = negotiated {
        locked.format = format.fourcc.to_string();
        locked.width = format.width;
        locked.height = format.height;
        locked.fps = offered_fps_nearest(
            &report,
            &locked.format,
            format.width,
            format.height,
            requested.fps,
        )
        .unwrap_or(requested.fps);
    }

    // Reopen with the values locked: the frames measured are taken as the service will take
    // them, and a camera that refuses its own values fails here rather than at service start.
    let mut source = V4l2Source::new(&locked)?;
    source.start()?;
    let description = source.describe();
    let result = read_back_and_capture(&mut source, frame_count, &description);
    source.stop();
    let (read_back, frames) = result?;
    if read_back.exposure_auto == Some(true)
        || read_back.white_balance_auto == Some(true)
        || read_back.gain_auto == Some(true)
    {
        log::warn!("camera {path}: an automatic mode is still on after locking: {read_back:?}");
    }
    // The camera may round a value to its step: keep what it actually uses.
    let mut stored = locked.clone();
    read_back.lock_into(&mut stored);
    if stored != locked {
        log::warn!(
            "camera {path}: stored the locked controls as exposure {:?}, white balance {:?}, gain {:?}",
            stored.exposure,
            stored.white_balance,
            stored.gain
        );
    }
    Ok(CapturedCamera {
        config: stored,
        description,
        locked: Some(read_back),
        measured_fps: measured_fps(&frames),
        frames,
    })
}

fn read_back_and_capture(
    source: &mut V4l2Source,
    frame_count: usize,
    description: &str,
) -> Result<(CameraControls, Vec<Frame>), CaptureError> {
    let read_back = source.controls()?;
    log::info!(
        "camera {description}: locked: {}",
        describe_controls(&read_back)
    );
    let frames = capture(source, frame_count, description)?;
    Ok((read_back, frames))
}

/// Streams frames for `settle`, then reads the controls the automatic modes arrived at.
fn settle_then_read(
    source: &mut V4l2Source,
    settle: Duration,
) -> Result<CameraControls, CaptureError> {
    let bar = progress::bar(
        settle.as_millis() as u64,
        "settling exposure and white balance (ms)",
    );
    let start = Instant::now();
    let mut frame = Frame::default();
    let mut frames = 0u64;
    while start.elapsed() < settle {
        next_frame(source, &mut frame)?;
        frames += 1;
        bar.set_position(start.elapsed().as_millis().min(settle.as_millis()) as u64);
    }
    bar.finish_and_clear();
    let controls = source.controls()?;
    log::info!(
        "camera {}: settled over {frames} frames: {}",
        source.describe(),
        describe_controls(&controls)
    );
    Ok(controls)
}

/// The next good frame; transient faults (a stall, a corrupt frame) are retried a few times.
fn next_frame(source: &mut dyn FrameSource, frame: &mut Frame) -> Result<(), CaptureError> {
    const ATTEMPTS: u32 = 5;
    let mut attempt = 0;
    loop {
        match source.next_frame(frame) {
            Ok(()) => return Ok(()),
            Err(e) if e.is_transient() && attempt + 1 < ATTEMPTS => {
                log::warn!("{e}; retrying");
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

fn capture(
    source: &mut dyn FrameSource,
    count: usize,
    description: &str,
) -> Result<Vec<Frame>, CaptureError> {
    let bar = progress::bar(count as u64, "capturing frames");
    let mut frames = Vec::with_capacity(count);
    for _ in 0..count {
        let mut frame = Frame::default();
        next_frame(source, &mut frame)?;
        frames.push(frame);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let stats = source.stats();
    if stats.drops + stats.corrupt + stats.stalls > 0 {
        log::warn!(
            "camera {description}: {} dropped, {} corrupt, {} stalls while capturing",
            stats.drops,
            stats.corrupt,
            stats.stalls
        );
    }
    Ok(frames)
}

fn measured_fps(frames: &[Frame]) -> Option<f64> {
    let (first, last) = (frames.first()?, frames.last()?);
    let span_ns = last.capture_time_ns.checked_sub(first.capture_time_ns)?;
    (span_ns > 0).then(|| (frames.len() - 1) as f64 * 1e9 / span_ns as f64)
}

/// `exposure 250 (manual), white balance 4600 (auto), gain 32 (auto)`.
pub fn describe_controls(controls: &CameraControls) -> String {
    let one = |name: &str, value: Option<i64>, auto: Option<bool>| match value {
        None => format!("no {name}"),
        Some(v) => match auto {
            Some(true) => format!("{name} {v} (auto)"),
            Some(false) => format!("{name} {v} (manual)"),
            None => format!("{name} {v}"),
        },
    };
    [
        one("exposure", controls.exposure, controls.exposure_auto),
        one(
            "white balance",
            controls.white_balance,
            controls.white_balance_auto,
        ),
        one("gain", controls.gain, controls.gain_auto),
    ]
    .join(", ")
}

/// `YUYV 640x480 320x240, MJPG 1280x720` with the frame rates of the first size.
fn offered_modes(report: &DeviceReport) -> String {
    let formats: Vec<String> = report
        .formats
        .iter()
        .map(|format| {
            let sizes: Vec<String> = format
                .sizes
                .iter()
                .map(|size| match size.size {
                    FrameSize::Discrete { width, height } => format!("{width}x{height}"),
                    FrameSize::Stepwise {
                        min_width,
                        max_width,
                        min_height,
                        max_height,
                        ..
                    } => format!("{min_width}x{min_height} to {max_width}x{max_height}"),
                })
                .collect();
            let rates: Vec<String> = format
                .sizes
                .first()
                .map(|size| {
                    size.intervals
                        .iter()
                        .filter_map(interval_fps)
                        .collect::<Vec<f64>>()
                })
                .unwrap_or_default()
                .into_iter()
                .map(|fps: f64| format!("{}", (fps * 100.0).round() / 100.0))
                .collect();
            let rates = if rates.is_empty() {
                String::new()
            } else {
                format!(" @ {} fps", rates.join("/"))
            };
            format!("{} {}{rates}", format.format.fourcc, sizes.join(" "))
        })
        .collect();
    if formats.is_empty() {
        "no capture formats".into()
    } else {
        formats.join("; ")
    }
}

fn interval_fps(interval: &FrameInterval) -> Option<f64> {
    match *interval {
        FrameInterval::Discrete {
            numerator,
            denominator,
        } if numerator > 0 => Some(f64::from(denominator) / f64::from(numerator)),
        _ => None,
    }
}

/// The offered frame rate of `fourcc` at `width x height` nearest to `wanted`; `None` when
/// the device enumerates no discrete rates for that mode (it then takes what it is asked).
fn offered_fps_nearest(
    report: &DeviceReport,
    fourcc: &str,
    width: u32,
    height: u32,
    wanted: u32,
) -> Option<u32> {
    let format = report
        .formats
        .iter()
        .find(|f| f.format.fourcc.to_string() == fourcc)?;
    let size = format.sizes.iter().find(|s| {
        matches!(s.size, FrameSize::Discrete { width: w, height: h } if (w, h) == (width, height))
    })?;
    size.intervals
        .iter()
        .filter_map(interval_fps)
        .map(|fps| fps.round().max(1.0) as u32)
        .min_by_key(|fps| fps.abs_diff(wanted))
}
