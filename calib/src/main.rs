//! `vla-calib`: the install-time calibration tool (ARCHITECTURE.md §6, §11).
//!
//! `vla-calib --camera SOURCE [--model DIR] --out FILE [--frames N]` opens the camera (for
//! V4L2: lists what it offers, turns automatic exposure and white balance on, lets them
//! settle, then locks the values they reached), captures N frames with those settings, writes
//! a contact sheet of sample frames as the model sees them (224 × 224 after the resize) beside
//! the output, collects the projector's INT8 activation scales, measures the per-stage policy
//! latency on this machine, recommends a control rate with margin, and writes the sealed
//! calibration TOML that `vla-rt run --calib FILE` (or `[calibration] path`) loads.
//!
//! Exit codes: 0 success, 2 bad input (missing camera, bad model, unwritable output; the
//! message names it), 1 any other failure.

mod camera;
mod measure;
mod progress;
mod rate;
mod sheet;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use vla_rt::calibration::{Calibration, CalibrationError, CALIBRATION_FORMAT, CALIBRATION_VERSION};
use vla_rt::capture::CaptureError;
use vla_rt::config::{ConfigError, ServiceConfig};
use vla_rt::policy::{NamedVariant, PolicyError, PolicyOptions};
use vla_rt::preprocess::{Preprocessor, RgbImage};

#[derive(Debug, Parser)]
#[command(
    name = "vla-calib",
    version,
    about = "Install-time calibration for vla-rt: camera lock, contact sheet, policy latency and \
             control rate, INT8 activation scales"
)]
struct Args {
    /// Camera source: `synthetic`, `images:<dir>` or a `/dev/videoN` path.
    #[arg(long, value_name = "SOURCE")]
    camera: String,
    /// Checkpoint folder [default: the config's `[model] path`, else the bundled
    /// engines/openvla-tiny].
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// Calibration file to write; the contact sheet goes beside it as `<stem>.png`.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Frames to capture and run the policy on.
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    frames: u32,
    /// Service configuration to calibrate for: camera size, rate and format, model path,
    /// backend, weight formats, unnorm key and instruction come from it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Requested frame width (sets `[camera] width`).
    #[arg(long, value_name = "PIXELS", value_parser = clap::value_parser!(u32).range(1..=16384))]
    width: Option<u32>,
    /// Requested frame height (sets `[camera] height`).
    #[arg(long, value_name = "PIXELS", value_parser = clap::value_parser!(u32).range(1..=16384))]
    height: Option<u32>,
    /// Requested frame rate (sets `[camera] fps`).
    #[arg(long, value_name = "FPS", value_parser = clap::value_parser!(u32).range(1..=1000))]
    fps: Option<u32>,
    /// Pixel format: auto, MJPG, YUYV, RGB3 or GREY (sets `[camera] format`).
    #[arg(long, value_name = "FOURCC")]
    format: Option<String>,
    /// How long automatic exposure and white balance run before their values are locked.
    #[arg(long, value_name = "SECONDS", default_value_t = 3.0)]
    settle_seconds: f64,
    /// Instruction the latency is measured with [default: the config's `[instruction] default`].
    #[arg(long, value_name = "TEXT")]
    instruction: Option<String>,
    /// Dataset statistics key of the checkpoint (sets `[model] unnorm_key`).
    #[arg(long, value_name = "KEY")]
    unnorm_key: Option<String>,
    /// Action steps per second of the policy's training data (sets `[model] action_hz`;
    /// required when neither the config nor the checkpoint says).
    #[arg(long, value_name = "HZ")]
    action_hz: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
enum CalibError {
    #[error(transparent)]
    Usage(#[from] ConfigError),
    #[error("{flag}: {message}")]
    Flag { flag: &'static str, message: String },
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error("model {path}: {message}")]
    Model { path: String, message: String },
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("--out {path}: {message}")]
    Output { path: String, message: String },
    #[error("contact sheet {path}: {message}")]
    Sheet { path: String, message: String },
    #[error(transparent)]
    Save(#[from] CalibrationError),
}

impl CalibError {
    fn exit_code(&self) -> i32 {
        let bad_input = match self {
            CalibError::Usage(_)
            | CalibError::Flag { .. }
            | CalibError::Model { .. }
            | CalibError::Output { .. } => true,
            CalibError::Capture(e) => matches!(
                e,
                CaptureError::DeviceMissing { .. } | CaptureError::Config { .. }
            ),
            CalibError::Policy(e) => e.is_bad_input(),
            CalibError::Sheet { .. } | CalibError::Save(_) => false,
        };
        if bad_input {
            2
        } else {
            1
        }
    }
}

/// Everything the run needs, resolved from the flags and the optional service config.
struct Plan {
    camera: vla_rt::config::CameraConfig,
    model_dir: PathBuf,
    policy_options: PolicyOptions,
    tensorrt: vla_rt::backend::TensorrtOptions,
    instruction: String,
    frames: usize,
    settle: Duration,
    out: PathBuf,
    sheet: PathBuf,
    /// The policy's action step rate (`[model] action_hz` or the checkpoint's).
    action_hz: f64,
}

fn plan(args: &Args) -> Result<Plan, CalibError> {
    let (base, origin) = match &args.config {
        Some(path) => (ServiceConfig::from_file(path)?, path.display().to_string()),
        None => (ServiceConfig::builtin(), "command line".to_string()),
    };
    let mut checked = base.clone();
    checked.camera.source = args.camera.clone();
    if let Some(width) = args.width {
        checked.camera.width = width;
    }
    if let Some(height) = args.height {
        checked.camera.height = height;
    }
    if let Some(fps) = args.fps {
        checked.camera.fps = fps;
    }
    if let Some(format) = &args.format {
        checked.camera.format = format.clone();
    }
    if let Some(instruction) = &args.instruction {
        checked.instruction.default = instruction.clone();
    }
    if let Some(model) = &args.model {
        checked.model.path = model.clone();
        if args.config.is_none() {
            // The bundled default's statistics key belongs to the bundled checkpoint only.
            checked.model.unnorm_key = None;
        }
    }
    if let Some(key) = &args.unnorm_key {
        checked.model.unnorm_key = Some(key.clone());
    }
    if let Some(hz) = args.action_hz {
        checked.model.action_hz = Some(hz);
    }
    checked.validate(&origin)?;
    if !(args.settle_seconds.is_finite() && (0.0..=600.0).contains(&args.settle_seconds)) {
        return Err(CalibError::Flag {
            flag: "--settle-seconds",
            message: format!("{} is not 0 to 600 seconds", args.settle_seconds),
        });
    }
    let model_dir = checked.model.path.clone();
    if !model_dir.is_dir() {
        return Err(CalibError::Model {
            path: model_dir.display().to_string(),
            message: "no such checkpoint folder".into(),
        });
    }
    let action_hz = checked.model.resolved_action_hz(&origin)?;
    let (out, sheet) = output_paths(&args.out)?;
    Ok(Plan {
        camera: checked.camera.clone(),
        policy_options: checked.model.policy_options(),
        tensorrt: checked.model.tensorrt_options(),
        model_dir,
        instruction: checked.instruction.default.clone(),
        frames: args.frames as usize,
        settle: Duration::from_secs_f64(args.settle_seconds),
        out,
        sheet,
        action_hz,
    })
}

/// The calibration path and its contact sheet `<stem>.png` beside it, after checking that
/// the folder exists and takes new files (so a long run does not end in a write error).
fn output_paths(out: &Path) -> Result<(PathBuf, PathBuf), CalibError> {
    let error = |message: String| CalibError::Output {
        path: out.display().to_string(),
        message,
    };
    if out.is_dir() {
        return Err(error(
            "is a folder; name the calibration file to write".into(),
        ));
    }
    let stem = out
        .file_stem()
        .ok_or_else(|| error("names no file".into()))?
        .to_string_lossy()
        .into_owned();
    let sheet = out.with_file_name(format!("{stem}.png"));
    if sheet == out {
        return Err(error(
            "ends in .png, the name of its contact sheet; use a .toml name".into(),
        ));
    }
    let folder = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !folder.is_dir() {
        return Err(error(format!("folder {} does not exist", folder.display())));
    }
    let probe = folder.join(format!(".{stem}.vla-calib-probe-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(|e| error(format!("cannot write in {}: {e}", folder.display())))?;
    let _ = std::fs::remove_file(&probe);
    Ok((out.to_path_buf(), sheet))
}

/// `<path>.tmp` next to `path`, renamed over it once complete.
fn temporary(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".tmp-{}", std::process::id()));
    PathBuf::from(name)
}

fn write_sheet(
    preprocessor: &mut Preprocessor,
    images: &[RgbImage],
    picked: &[usize],
    path: &Path,
) -> Result<(), CalibError> {
    let sheet_error = |message: String| CalibError::Sheet {
        path: path.display().to_string(),
        message,
    };
    let mut tiles = Vec::with_capacity(picked.len());
    for &index in picked {
        let pixels = preprocessor
            .resize(&images[index])
            .map_err(PolicyError::from)?; // [224, 224, 3]
        let side = vla_rt::preprocess::INPUT_SIZE as u32;
        tiles.push(RgbImage {
            width: side,
            height: side,
            data: pixels.to_vec(),
        });
    }
    let sheet = sheet::compose(&tiles, sheet::COLUMNS)
        .ok_or_else(|| sheet_error("no frames to lay out".into()))?;
    let partial = temporary(path);
    sheet::write_png(&sheet, &partial).map_err(|e| sheet_error(e.to_string()))?;
    std::fs::rename(&partial, path).map_err(|e| sheet_error(e.to_string()))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn run(args: &Args) -> Result<(), CalibError> {
    let plan = plan(args)?;
    let fingerprint =
        vla_rt::model::checkpoint_fingerprint(&plan.model_dir).map_err(|e| CalibError::Model {
            path: plan.model_dir.display().to_string(),
            message: e.to_string(),
        })?;
    let mut preprocessor = Preprocessor::from_config_file(
        &plan
            .model_dir
            .join(vla_rt::backend::cpu::PREPROCESSOR_CONFIG_FILE),
    )
    .map_err(PolicyError::from)?;

    let captured = camera::calibrate(&plan.camera, plan.settle, plan.frames)?;
    let (sequences, images): (Vec<u64>, Vec<RgbImage>) = captured
        .frames
        .into_iter()
        .map(|frame| (frame.sequence, frame.image))
        .unzip();

    let picked = sheet::pick_frames(images.len(), sheet::MAX_TILES);
    write_sheet(&mut preprocessor, &images, &picked, &plan.sheet)?;

    let measurement = measure::measure(
        &plan.model_dir,
        &plan.policy_options,
        &plan.tensorrt,
        &plan.instruction,
        &images,
    )?;
    let total_p99 = measurement
        .latency
        .get("total")
        .map_or(f64::NAN, |l| l.p99_ms);
    let choice = rate::recommend(plan.action_hz, total_p99).ok_or_else(|| CalibError::Model {
        path: plan.model_dir.display().to_string(),
        message: format!("no usable latency measured (p99 {total_p99} ms)"),
    })?;
    let rate_hz = choice.rate_hz;

    let mut calibration = Calibration {
        format: CALIBRATION_FORMAT.into(),
        version: CALIBRATION_VERSION,
        created_unix_s: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        model_fingerprint: fingerprint.clone(),
        model_path: plan.model_dir.display().to_string(),
        backend: plan.policy_options.backend,
        quantization: plan.policy_options.quantization,
        projector: plan.policy_options.projector,
        instruction: plan.instruction.clone(),
        frames: images.len() as u32,
        contact_sheet: file_name(&plan.sheet),
        contact_sheet_frames: picked.iter().map(|&i| sequences[i]).collect(),
        recommended_rate_hz: rate_hz,
        camera_description: captured.description.clone(),
        camera: captured.config.clone(),
        latency: measurement.latency.clone(),
        projector_scales: measurement.scales.clone(),
        checksum: String::new(),
    };
    let partial = temporary(&plan.out);
    calibration.save(&partial)?;
    std::fs::rename(&partial, &plan.out).map_err(|e| CalibError::Output {
        path: plan.out.display().to_string(),
        message: e.to_string(),
    })?;

    let locked = match &captured.locked {
        Some(controls) => format!("locked {}", camera::describe_controls(controls)),
        None => "no controls to lock".to_string(),
    };
    let measured_fps = captured
        .measured_fps
        .map_or(String::new(), |fps| format!(", measured {fps:.1} fps"));
    println!("vla-calib: calibration written");
    println!(
        "  camera     {} ({locked}{measured_fps})",
        captured.description
    );
    println!(
        "  frames     {} captured; contact sheet of frames {:?}",
        images.len(),
        calibration.contact_sheet_frames
    );
    println!(
        "  latency    p50 / p99 ms on {} ({} quantization, {} projector; warm-up {:.1} ms):",
        value_name(&plan.policy_options.backend),
        value_name(&plan.policy_options.quantization),
        value_name(&plan.policy_options.projector),
        measurement.warm_up_ms
    );
    for stage in measure::STAGES {
        if let Some(l) = calibration.latency.get(stage) {
            println!(
                "             {stage:<10} {:>9.2} / {:>9.2}",
                l.p50_ms, l.p99_ms
            );
        }
    }
    println!("  rate       {rate_hz} Hz recommended: {}", choice.reason);
    if !choice.keeps_up {
        println!(
            "  warning    the policy is too slow for its {} Hz actions on this machine: use a faster backend or quantization",
            plan.action_hz
        );
    }
    println!(
        "  projector  INT8 activation scales for {} layers ({}th percentile of |x|)",
        calibration.projector_scales.layers.len(),
        calibration.projector_scales.percentile
    );
    println!("  model      {} ({fingerprint})", plan.model_dir.display());
    println!(
        "  written    {} and {}",
        plan.out.display(),
        plan.sheet.display()
    );
    Ok(())
}

fn value_name<T: NamedVariant>(value: &T) -> String {
    value.name().to_string()
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info,zenoh=error"))
        .init();
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    if let Err(e) = run(&args) {
        eprintln!(
            "vla-calib: error: {}",
            e.to_string().trim().replace('\n', " ")
        );
        std::process::exit(e.exit_code());
    }
}
