//! `vla-rt run`: the service (ARCHITECTURE.md §6). Without `--config` it runs the bundled default:
//! synthetic camera, bundled tiny checkpoint, CPU, a Zenoh peer on loopback.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::CliError;
use crate::calibration::{AppliedCalibration, Calibration};
use crate::config::{ConfigError, ServiceConfig, BUILTIN_CONFIG_NAME, DEFAULT_ROBOT_ID};
#[cfg(feature = "test-hooks")]
use crate::control::fault_injection::{FaultInjection, InjectedFault, FAULT_INJECTION_ENV};
use crate::control::heartbeat;
use crate::policy::PolicyOptions;
use crate::recording::{RecordSettings, Recorder};
use crate::service::{signals, Service, ServiceOptions};

/// After a fault, the orderly shutdown gets this long; then the process exits with code 3
/// whatever still hangs (a stalled thread, a Zenoh close waiting for a stuck callback).
const FAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// The test hook `VLA_RT_TEST_FAULT`, when set (only in builds with the `test-hooks`
/// feature; the service's release build has no such hook).
#[cfg(feature = "test-hooks")]
fn fault_injection() -> Result<Option<FaultInjection>, CliError> {
    match std::env::var(FAULT_INJECTION_ENV) {
        Ok(text) => text
            .parse()
            .map(Some)
            .map_err(|e| CliError::bad_input(format!("{FAULT_INJECTION_ENV}: {e}"))),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(CliError::bad_input(format!(
            "{FAULT_INJECTION_ENV}: not UTF-8"
        ))),
    }
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Service configuration (TOML); without it the bundled default runs.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Calibration file written by `vla-calib` (sets `[calibration] path`).
    #[arg(long, value_name = "FILE")]
    pub calib: Option<PathBuf>,
    /// Camera source: `synthetic`, `images:<dir>`, `zenoh:<key>`, `ros2:<topic>` or a
    /// `/dev/videoN` path (sets `[camera] source`).
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
    /// Also be a ROS 2 node over rmw_zenoh (sets `[ros2] enabled`).
    #[arg(long)]
    pub ros2: bool,
    /// Run the policy on the `vla-rt serve --name NAME` servers instead of locally (sets
    /// `[model] remote.name`).
    #[arg(long, value_name = "NAME")]
    pub remote: Option<String>,
}

/// The config file (or the built-in default) with the command-line overrides applied and
/// validated; errors name the key, and the flag when the value came from one.
/// The config file, or the built-in default without one, and the name errors give it.
pub fn load_config(path: Option<&std::path::Path>) -> Result<(ServiceConfig, String), CliError> {
    Ok(match path {
        Some(path) => (
            ServiceConfig::from_file(path).map_err(|e| CliError::bad_input(e.to_string()))?,
            path.display().to_string(),
        ),
        None => (ServiceConfig::builtin(), BUILTIN_CONFIG_NAME.to_string()),
    })
}

pub fn effective_config(args: &RunArgs) -> Result<ServiceConfig, CliError> {
    let (mut config, file) = load_config(args.config.as_deref())?;
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
    if args.ros2 {
        config.ros2.enabled = true;
        overridden.push(("ros2.namespace", "--ros2"));
    }
    if let Some(name) = &args.remote {
        match &mut config.model.remote {
            Some(remote) => remote.name = name.clone(),
            None => config.model.remote = Some(crate::remote::RemoteConfig::named(name)),
        }
        overridden.push(("model.remote.name", "--remote"));
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
    // A remote policy needs the checkpoint folder only for what its config leaves out.
    let remote_needs_no_checkpoint = config
        .model
        .remote
        .as_ref()
        .is_some_and(|r| r.fingerprint.is_some() && config.model.action_hz.is_some());
    if !remote_needs_no_checkpoint && !config.model.path.is_dir() {
        return Err(CliError::bad_input(format!(
            "{file}: model.path: {}: no such checkpoint folder",
            config.model.path.display()
        )));
    }
    // Resolved once, here, so that an error names the config file; the service then reads
    // the resolved rate from the config.
    config.model.action_hz = Some(
        config
            .model
            .resolved_action_hz(&file)
            .map_err(|e| CliError::bad_input(e.to_string()))?,
    );
    let action_hz = config.model.action_hz.unwrap_or_default();
    config
        .model
        .resolved_remote(&file, action_hz)
        .map_err(|e| CliError::bad_input(e.to_string()))?;
    if args.config.is_none() && config.control.start_armed && config.robot_id != DEFAULT_ROBOT_ID {
        // The bundled simulation starts armed under its own id only: under another id it
        // may be talking to a real arm.
        config.control.start_armed = false;
        log::warn!(
            "--robot-id {}: the bundled simulation starts armed only as `{DEFAULT_ROBOT_ID}`; put `arm` on vla/{}/arm to act",
            config.robot_id,
            config.robot_id
        );
    }
    Ok(config)
}

/// `--duration SECONDS` as a duration: a positive number that fits.
pub fn duration(seconds: Option<f64>) -> Result<Option<Duration>, CliError> {
    match seconds {
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
    let duration = duration(args.duration)?;
    #[cfg(feature = "test-hooks")]
    let fault_injection = fault_injection()?;
    #[cfg(feature = "test-hooks")]
    if let Some(injection) = &fault_injection {
        log::warn!(
            "{FAULT_INJECTION_ENV}: test fault armed: the {} thread will {} after {} ms",
            injection.worker.name(),
            match injection.fault {
                InjectedFault::Panic => "panic",
                InjectedFault::Stall(_) => "stall",
            },
            injection.after.as_millis()
        );
    }
    heartbeat::install_panic_hook();
    signals::install_termination_handlers()
        .map_err(|e| CliError::failure(format!("cannot install signal handlers: {e}")))?;
    let source =
        crate::capture::open_source_in_domain(&config.camera, &config.zenoh, config.ros2.domain_id)
            .map_err(|e| {
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
    let tensorrt = config.model.tensorrt_options();
    let options = ServiceOptions {
        duration,
        terminal_status: std::io::stderr().is_terminal(),
        systemd_notify: true,
        #[cfg(feature = "test-hooks")]
        fault_injection,
        recorder: recorder.clone(),
        ..ServiceOptions::default()
    };
    let service = Service::start(
        &config,
        source,
        move || crate::backend::load_policy_with(&model_path, &policy_options, &tensorrt),
        options,
    )
    .map_err(|e| {
        if e.is_bad_input() {
            CliError::bad_input(e.to_string())
        } else {
            CliError::failure(e.to_string())
        }
    })?;
    exit_after_fault_grace(service.supervision());
    let summary = service.wait();
    if let Some(fault) = summary.fault {
        return Err(CliError::worker_fault(format!(
            "stopped after {} commands: {fault}",
            summary.commands
        )));
    }
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

/// Bounds the shutdown after a fault: once `supervision` reports one, the process gets
/// [`FAULT_SHUTDOWN_GRACE`] to stop in order, then exits with code 3 regardless.
fn exit_after_fault_grace(supervision: std::sync::Arc<heartbeat::Supervision>) {
    let spawned = std::thread::Builder::new()
        .name("vla-fault-exit".into())
        .spawn(move || {
            while !supervision.has_fault() {
                std::thread::sleep(Duration::from_millis(50));
            }
            std::thread::sleep(FAULT_SHUTDOWN_GRACE);
            log::error!(
                "shutdown after the fault did not finish within {FAULT_SHUTDOWN_GRACE:?}: exiting"
            );
            std::process::exit(super::EXIT_WORKER_FAULT);
        });
    if let Err(e) = spawned {
        log::warn!("cannot start the fault-exit thread: {e}");
    }
}

/// Starts the recorder when `[record] path` is set; an unwritable path is bad input.
fn start_recorder(
    config: &ServiceConfig,
    policy_options: &PolicyOptions,
) -> Result<Option<Arc<Recorder>>, CliError> {
    let Some(path) = &config.record.path else {
        return Ok(None);
    };
    let session =
        crate::recording::session_info(config, policy_options).map_err(CliError::bad_input)?;
    let path =
        crate::recording::expand_time(path, crate::control::clock::realtime_ns() / 1_000_000_000);
    let settings = RecordSettings::from_config(config, &path);
    Recorder::start(settings, session)
        .map(Some)
        .map_err(|e| CliError::bad_input(format!("record.path: {e}")))
}
