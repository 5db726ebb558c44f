//! `vla-rt cameras`: lists V4L2 devices with their formats, frame sizes, frame rates and
//! controls, as text or (`--json`) one JSON document.

use std::path::{Path, PathBuf};

use super::CliError;
use crate::capture::v4l2_device::{
    Capability, ControlInfo, Device, FormatDescription, FrameInterval, FrameSize,
};
use crate::capture::CaptureError;

#[derive(Debug, clap::Args)]
pub struct CamerasArgs {
    /// Describe only this device node instead of every /dev/video*.
    #[arg(long, value_name = "PATH")]
    pub device: Option<PathBuf>,
    /// Print one JSON document ({"devices": [...]}) instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, serde::Serialize)]
pub struct SizeReport {
    #[serde(flatten)]
    pub size: FrameSize,
    pub intervals: Vec<FrameInterval>,
}

#[derive(Debug, serde::Serialize)]
pub struct FormatReport {
    #[serde(flatten)]
    pub format: FormatDescription,
    pub sizes: Vec<SizeReport>,
}

#[derive(Debug, serde::Serialize)]
pub struct DeviceReport {
    pub path: String,
    #[serde(flatten)]
    pub capability: Capability,
    pub formats: Vec<FormatReport>,
    pub controls: Vec<ControlInfo>,
}

/// Queries everything `cameras` shows about one device node.
pub fn inspect(path: &str) -> Result<DeviceReport, CaptureError> {
    let device = Device::open(path)?;
    let capability = device.capability()?;
    let mut formats = Vec::new();
    if capability.video_capture {
        for format in device.formats()? {
            let mut sizes = Vec::new();
            for size in device.frame_sizes(format.fourcc)? {
                let intervals = match size {
                    FrameSize::Discrete { width, height } => {
                        device.frame_intervals(format.fourcc, width, height)?
                    }
                    FrameSize::Stepwise { .. } => Vec::new(),
                };
                sizes.push(SizeReport { size, intervals });
            }
            formats.push(FormatReport { format, sizes });
        }
    }
    let controls = device.controls()?;
    Ok(DeviceReport {
        path: path.to_string(),
        capability,
        formats,
        controls,
    })
}

/// `video*` nodes in `dir`, in numeric order (`video2` before `video10`).
pub fn video_nodes(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut nodes: Vec<(u64, PathBuf)> = entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let number = name.strip_prefix("video")?.parse::<u64>().ok()?;
            Some((number, entry.path()))
        })
        .collect();
    nodes.sort();
    nodes.into_iter().map(|(_, path)| path).collect()
}

fn fps(interval: &FrameInterval) -> String {
    match *interval {
        FrameInterval::Discrete {
            numerator,
            denominator,
        } if numerator > 0 => {
            let fps = f64::from(denominator) / f64::from(numerator);
            format!("{}", (fps * 100.0).round() / 100.0)
        }
        FrameInterval::Discrete {
            numerator,
            denominator,
        } => format!("{numerator}/{denominator} s"),
        FrameInterval::Stepwise { min, max, .. } => {
            format!("{}/{} s to {}/{} s", min.0, min.1, max.0, max.1)
        }
    }
}

/// The text form of one device report.
pub fn render_text(report: &DeviceReport) -> String {
    let mut out = String::new();
    let capability = &report.capability;
    out.push_str(&format!(
        "{}: {} (driver {}, bus {})\n",
        report.path, capability.card, capability.driver, capability.bus_info
    ));
    if !capability.video_capture {
        out.push_str("  not a video capture node\n");
    }
    if !report.formats.is_empty() {
        out.push_str("  formats:\n");
    }
    for format in &report.formats {
        let description = &format.format;
        out.push_str(&format!(
            "    {} ({}{})\n",
            description.fourcc,
            description.description,
            if description.compressed {
                ", compressed"
            } else {
                ""
            }
        ));
        for size in &format.sizes {
            let rates: Vec<String> = size.intervals.iter().map(fps).collect();
            let rates = if rates.is_empty() {
                String::new()
            } else {
                format!(" @ {} fps", rates.join(", "))
            };
            match size.size {
                FrameSize::Discrete { width, height } => {
                    out.push_str(&format!("      {width}x{height}{rates}\n"));
                }
                FrameSize::Stepwise {
                    min_width,
                    max_width,
                    step_width,
                    min_height,
                    max_height,
                    step_height,
                } => out.push_str(&format!(
                    "      {min_width}..{max_width} step {step_width} x {min_height}..{max_height} step {step_height}\n"
                )),
            }
        }
    }
    if !report.controls.is_empty() {
        out.push_str("  controls:\n");
    }
    for control in &report.controls {
        let value = control
            .value
            .map_or_else(|| "-".to_string(), |v| v.to_string());
        out.push_str(&format!(
            "    {:<28} {:<8} {}..{} step {} default {} value {}{}\n",
            control.name,
            format!("{:?}", control.control_type).to_lowercase(),
            control.minimum,
            control.maximum,
            control.step,
            control.default,
            value,
            if control.inactive { " (inactive)" } else { "" }
        ));
        if !control.menu.is_empty() {
            let items: Vec<String> = control
                .menu
                .iter()
                .map(|(index, name)| format!("{index}: {name}"))
                .collect();
            out.push_str(&format!("      menu: {}\n", items.join(", ")));
        }
    }
    out
}

pub fn main(args: CamerasArgs) -> Result<(), CliError> {
    let mut reports = Vec::new();
    let mut failures = Vec::new();
    match &args.device {
        Some(path) => {
            let path = path.to_string_lossy();
            // The one device asked for must be there: its absence is bad input.
            let report = inspect(&path).map_err(|e| match e {
                CaptureError::DeviceMissing { .. } | CaptureError::Config { .. } => {
                    CliError::bad_input(e.to_string())
                }
                other => CliError::failure(other.to_string()),
            })?;
            reports.push(report);
        }
        None => {
            for path in video_nodes(Path::new("/dev")) {
                match inspect(&path.to_string_lossy()) {
                    Ok(report) => reports.push(report),
                    // A busy or broken node is reported; the others are still listed.
                    Err(e) => failures.push(e.to_string()),
                }
            }
        }
    }
    if args.json {
        let document = serde_json::json!({ "devices": reports, "errors": failures });
        let text = serde_json::to_string_pretty(&document)
            .map_err(|e| CliError::failure(format!("encoding JSON: {e}")))?;
        println!("{text}");
        return Ok(());
    }
    if reports.is_empty() && failures.is_empty() {
        println!("no V4L2 devices found (no /dev/video* nodes)");
    }
    for report in &reports {
        print!("{}", render_text(report));
    }
    for failure in &failures {
        println!("{failure}");
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn video_nodes_are_listed_in_numeric_order() {
        let dir = std::env::temp_dir().join(format!("vla-rt-cameras-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["video10", "video2", "video0", "videoX", "media0", "video1x"] {
            std::fs::write(dir.join(name), b"").unwrap();
        }
        let names: Vec<String> = video_nodes(&dir)
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(names, ["video0", "video2", "video10"]);
    }

    #[test]
    fn an_empty_or_missing_directory_has_no_nodes() {
        assert!(video_nodes(Path::new("/nonexistent-vla-rt-dir")).is_empty());
    }
}
