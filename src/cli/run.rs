//! `vla-rt run`: the service (DESIGN.md §5). Without `--config` it runs the bundled default:
//! synthetic camera, bundled tiny checkpoint, CPU, a Zenoh peer on loopback.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::CliError;
use crate::calibration::{AppliedCalibration, Calibration};
use crate::config::{ConfigError, ServiceConfig, BUILTIN_CONFIG_NAME};
use crate::policy::PolicyOptions;
use crate::record::{RecordSettings, Recorder, SessionInfo};
use crate::service::{signals, Service, ServiceOptions};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Service configuration (TOML); without it the bundled default runs.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Calibration file written by `vla-calib` (sets `[calibration] path`).
    #[arg(long, value_name = "FILE")]
    pub calib: Option<PathBuf>,
    /// Camera source: `synthetic`, `images:<dir>` or a `/dev/videoN` path (sets `[camera] source`).
    #[arg(long, value_name = "SOURCE")]
    pub camera: Option<String>,
    /// Robot id in the key expressions `vla/<robot_id>/...` (sets `robot_id`).
    #[arg(long, value_name = "ID")]
    pub robot_id: Option<String>,
    /// Control rate (sets `[control] rate_hz`).
    #[arg(long, value_name = "HZ")]
    pub rate_hz: Option<f64>,
    /// Zenoh endpoint to listen on, repeatable (replaces `[zenoh] listen`).
    #[arg(long, value_name = "EP")]
    pub zenoh_listen: Vec<String>,
    /// Zenoh endpoint to connect to, repeatable (replaces `[zenoh] connect`).
    #[arg(long, value_name = "EP")]
    pub zenoh_connect: Vec<String>,
    /// Stop cleanly (final STOP, exit 0) after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<f64>,
    /// Record the session to this MCAP file (sets `[record] path`).
    #[arg(long, value_name = "FILE.mcap")]
    pub record: Option<PathBuf>,
}

/// The config file (or the built-in default) with the command-line overrides applied and
/// validated; errors name the key, and the flag when the value came from one.
pub fn effective_config(args: &RunArgs) -> Result<ServiceConfig, CliError> {
    let (mut config, file) = match &args.config {
        Some(path) => (
            ServiceConfig::from_file(path).map_err(|e| CliError::bad_input(e.to_string()))?,
            path.display().to_string(),
        ),
        None => (ServiceConfig::builtin(), BUILTIN_CONFIG_NAME.to_string()),
    };
    let mut overridden: Vec<(&str, &str)> = Vec::new();
    if let Some(path) = &args.calib {
        config.calibration.path = Some(path.clone());
        overridden.push(("calibration.path", "--calib"));
    }
    if let Some(camera) = &args.camera {
        config.camera.source = camera.clone();
        overridden.push(("camera.source", "--camera"));
    }
    if let Some(id) = &args.robot_id {
        config.robot_id = id.clone();
        overridden.push(("robot_id", "--robot-id"));
    }
    if let Some(rate) = args.rate_hz {
        config.control.rate_hz = rate;
        overridden.push(("control.rate_hz", "--rate-hz"));
    }
    if !args.zenoh_listen.is_empty() {
        config.zenoh.listen = Some(args.zenoh_listen.clone());
        overridden.push(("zenoh.listen", "--zenoh-listen"));
    }
    if let Some(path) = &args.record {
        config.record.path = Some(path.clone());
        overridden.push(("record.path", "--record"));
    }
    if !args.zenoh_connect.is_empty() {
        config.zenoh.connect = Some(args.zenoh_connect.clone());
        overridden.push(("zenoh.connect", "--zenoh-connect"));
    }
    config.validate(&file).map_err(|e| {
        let flag = match &e {
            ConfigError::Invalid { key, .. } => overridden
                .iter()
                .find(|(k, _)| key == k || key.starts_with(&format!("{k}[")))
                .map(|(_, flag)| *flag),
            _ => None,
        };
        match flag {
            Some(flag) => CliError::bad_input(format!("{e} (from {flag})")),
            None => CliError::bad_input(e.to_string()),
        }
    })?;
    if let Some(path) = &config.calibration.path {
        if !path.is_file() {
            return Err(CliError::bad_input(format!(
                "{file}: calibration.path: {}: no such file",
                path.display()
            )));
        }
    }
    if !config.model.path.is_dir() {
        return Err(CliError::bad_input(format!(
            "{file}: model.path: {}: no such checkpoint folder",
            config.model.path.display()
        )));
    }
    Ok(config)
}

fn duration(args: &RunArgs) -> Result<Option<Duration>, CliError> {
    match args.duration {
        None => Ok(None),
        Some(s) if s.is_finite() && s > 0.0 => {
            Duration::try_from_secs_f64(s).map(Some).map_err(|_| {
                CliError::bad_input(format!("--duration: {s} seconds is too long to represent"))
            })
        }
        Some(s) => Err(CliError::bad_input(format!(
            "--duration: {s} is not a positive number of seconds"
        ))),
    }
}

/// Loads the calibration `[calibration] path` names (if any), checks it against the configured
/// model and applies it to `config` and `policy_options`; a tampered, other-model or malformed
/// file is bad input.
pub fn apply_calibration(
    config: &mut ServiceConfig,
    policy_options: &mut PolicyOptions,
    camera_from_command_line: bool,
) -> Result<Option<AppliedCalibration>, CliError> {
    let Some(path) = config.calibration.path.clone() else {
        return Ok(None);
    };
    let calibration = Calibration::load(&path, &config.model.path)
        .map_err(|e| CliError::bad_input(e.to_string()))?;
    let applied = calibration.apply(config, policy_options, camera_from_command_line);
    // The calibrated camera must still make a valid configuration (it does, unless the
    // file was written by something other than vla-calib and sealed anyway).
    config
        .validate(&path.display().to_string())
        .map_err(|e| CliError::bad_input(e.to_string()))?;
    log::info!("calibration {}: applied {applied}", path.display());
    for warning in &applied.warnings {
        log::warn!("calibration {}: {warning}", path.display());
    }
    Ok(Some(applied))
}

pub fn main(args: RunArgs) -> Result<(), CliError> {
    let mut config = effective_config(&args)?;
    let mut policy_options = config.model.policy_options();
    apply_calibration(&mut config, &mut policy_options, args.camera.is_some())?;
    let duration = duration(&args)?;
    signals::install_termination_handlers()
        .map_err(|e| CliError::failure(format!("cannot install signal handlers: {e}")))?;
    let source = crate::capture::open_source(&config.camera).map_err(|e| {
        if matches!(
            e,
            crate::capture::CaptureError::DeviceMissing { .. }
                | crate::capture::CaptureError::Config { .. }
        ) {
            CliError::bad_input(e.to_string())
        } else {
            CliError::failure(e.to_string())
        }
    })?;
    let recorder = start_recorder(&config, &policy_options)?;
    let model_path = config.model.path.clone();
    let options = ServiceOptions {
        duration,
        terminal_status: std::io::stderr().is_terminal(),
        systemd_notify: true,
        recorder: recorder.clone(),
        ..ServiceOptions::default()
    };
    let service = Service::start(
        &config,
        source,
        move || crate::backend::load_policy(&model_path, &policy_options),
        options,
    )
    .map_err(|e| {
        if e.is_bad_input() {
            CliError::bad_input(e.to_string())
        } else {
            CliError::failure(e.to_string())
        }
    })?;
    let summary = service.wait();
    log::info!("stopped after {} commands", summary.commands);
    if let Some(recorder) = recorder {
        recorder.finish();
        let stats = recorder.stats();
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        log::info!(
            "recording {}: {} messages, {} bytes, {} dropped{}",
            stats.path(),
            load(&stats.written),
            load(&stats.bytes),
            load(&stats.dropped),
            stats
                .error()
                .map_or(String::new(), |e| format!(", error: {e}"))
        );
    }
    Ok(())
}

/// The session description written into every recording file.
pub fn session_info(
    config: &ServiceConfig,
    policy_options: &PolicyOptions,
) -> Result<SessionInfo, CliError> {
    let model_dir = &config.model.path;
    let fingerprint = crate::model::fingerprint::checkpoint_fingerprint(model_dir)
        .map_err(|e| CliError::bad_input(e.to_string()))?;
    let model_path = std::fs::canonicalize(model_dir).unwrap_or_else(|_| model_dir.clone());
    let calibration = match &config.calibration.path {
        Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
            CliError::bad_input(format!("calibration.path: {}: {e}", path.display()))
        })?),
        None => None,
    };
    Ok(SessionInfo {
        vla_rt_version: env!("CARGO_PKG_VERSION").to_string(),
        robot_id: config.robot_id.clone(),
        rate_hz: config.control.rate_hz,
        model_path: model_path.display().to_string(),
        model_fingerprint: fingerprint,
        model_name: model_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        backend: serde_name(&policy_options.backend),
        quantization: serde_name(&policy_options.quantization),
        projector: serde_name(&policy_options.projector),
        unnorm_key: policy_options.unnorm_key.clone(),
        quantized_weights: policy_options
            .quantized_weights
            .as_ref()
            .map(|p| p.display().to_string()),
        projector_scales: policy_options
            .projector_scales
            .as_ref()
            .and_then(|s| serde_json::to_string(s).ok()),
        config: toml::to_string(config).unwrap_or_default(),
        calibration,
    })
}

/// The config-file spelling of an enum value (`cpu`, `int8`, `f32`).
pub fn serde_name<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Starts the recorder when `[record] path` is set; an unwritable path is bad input.
fn start_recorder(
    config: &ServiceConfig,
    policy_options: &PolicyOptions,
) -> Result<Option<Arc<Recorder>>, CliError> {
    let Some(path) = &config.record.path else {
        return Ok(None);
    };
    let session = session_info(config, policy_options)?;
    let path =
        crate::record::expand_time(path, crate::control::clock::realtime_ns() / 1_000_000_000);
    let settings = RecordSettings::from_config(&config.record, &path);
    Recorder::start(settings, session)
        .map(Some)
        .map_err(|e| CliError::bad_input(format!("record.path: {e}")))
}
