//! The service: wires the capture thread, the inference worker, the control loop, the
//! publisher and the status reporter together (DESIGN.md §2), with real-time set-up,
//! signals and systemd notification.

pub mod inference;
pub mod notify;
pub mod rt;
pub mod signals;
pub mod status;

use std::sync::Arc;
use std::time::Duration;

use zenoh::Wait;

use crate::capture::thread::{CaptureThread, LatestFrame};
use crate::capture::{CaptureError, FrameSource};
use crate::config::{RealtimeMode, ServiceConfig};
use crate::control::handoff::{CommandOutbox, ControlInputs, InferenceTrigger, ResultSlot};
use crate::control::stats::ControlStats;
use crate::control::tick_loop::{ControlLoop, LoopLinks, LoopSettings, TickTrace};
use crate::policy::{Policy, PolicyError};
use crate::record::Recorder;
use crate::transport::zenoh_io::{
    self, CommandPublisherThread, PublishStats, RobotInterface, RobotKeys, TransportError,
};
use inference::{InferenceError, InferenceLinks, InferenceStats, InferenceThread, InstructionCell};
use notify::{NotifyError, SystemdNotifier};
use rt::RealtimeError;
use status::{StatusSources, StatusThread};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Policy(PolicyError),
    #[error(transparent)]
    Inference(#[from] InferenceError),
    #[error(transparent)]
    Realtime(#[from] RealtimeError),
    #[error(transparent)]
    Notify(#[from] NotifyError),
    #[error("cannot start the {thread} thread: {message}")]
    Thread {
        thread: &'static str,
        message: String,
    },
}

impl ServiceError {
    /// The caller's mistakes (exit code 2) as opposed to failures of the machine (exit code 1).
    pub fn is_bad_input(&self) -> bool {
        match self {
            ServiceError::Capture(e) => matches!(
                e,
                CaptureError::DeviceMissing { .. } | CaptureError::Config { .. }
            ),
            ServiceError::Transport(e) => e.is_bad_input(),
            ServiceError::Policy(e) => e.is_bad_input(),
            ServiceError::Inference(e) => e.is_bad_input(),
            ServiceError::Realtime(_) | ServiceError::Notify(_) | ServiceError::Thread { .. } => {
                false
            }
        }
    }
}

/// How a service run is set up besides its config.
#[derive(Debug, Clone, Default)]
pub struct ServiceOptions {
    /// Stop cleanly (final STOP) after this long.
    pub duration: Option<Duration>,
    /// Redraw a live one-line status on stderr (when it is a terminal).
    pub terminal_status: bool,
    /// Talk to systemd when `NOTIFY_SOCKET` is set.
    pub systemd_notify: bool,
    /// Keep the timing of the first ticks (benchmarks).
    pub trace_ticks: usize,
    /// Longest wait for the camera's first frame.
    pub first_frame_timeout: Option<Duration>,
    /// Record the session (frames, predictions, commands, status) with this recorder.
    pub recorder: Option<Arc<Recorder>>,
}

/// What a finished run reports.
#[derive(Debug, Clone, Default)]
pub struct ServiceSummary {
    pub commands: u64,
    pub trace: Vec<TickTrace>,
}

/// A running service. [`Service::wait`] returns once the control loop has published its
/// final STOP (after `--duration`, SIGTERM/SIGINT or [`Service::request_stop`]) and every
/// thread and Zenoh declaration is gone.
pub struct Service {
    outbox: Arc<CommandOutbox>,
    session: zenoh::Session,
    interface: RobotInterface,
    control: Option<std::thread::JoinHandle<ServiceSummary>>,
    publisher: CommandPublisherThread,
    status: StatusThread,
    inference: InferenceThread,
    capture: CaptureThread,
    inputs: Arc<ControlInputs>,
    publish_stats: Arc<PublishStats>,
    control_stats: Arc<ControlStats>,
    inference_stats: Arc<InferenceStats>,
}

impl Service {
    /// Opens the camera and the Zenoh session, warms the policy up on the first frame,
    /// declares the robot's keys and starts the threads. `config` must be validated.
    pub fn start(
        config: &ServiceConfig,
        mut source: Box<dyn FrameSource>,
        load_policy: impl FnOnce() -> Result<Box<dyn Policy>, PolicyError>,
        options: ServiceOptions,
    ) -> Result<Self, ServiceError> {
        let realtime = config.control.realtime;
        let priority = config.control.priority;
        let keys = RobotKeys::new(&config.robot_id);

        // Cheap checks first: a missing camera or a taken port is reported before a model
        // that may take minutes to load.
        source.start()?;
        let camera = source.describe();
        let session = match zenoh_io::open_session(&config.zenoh) {
            Ok(session) => session,
            Err(e) => {
                source.stop();
                return Err(e.into());
            }
        };
        let policy = match load_policy() {
            Ok(policy) => policy,
            Err(e) => {
                source.stop();
                let _ = session.close().wait();
                return Err(ServiceError::Policy(e));
            }
        };
        let backend = policy.backend_name().to_string();
        let model = policy.model_name().to_string();

        let frames = Arc::new(LatestFrame::new());
        let capture = CaptureThread::spawn(source, Arc::clone(&frames))?;

        let trigger = Arc::new(InferenceTrigger::default());
        let results = Arc::new(ResultSlot::default());
        let instructions = Arc::new(InstructionCell::new(&config.instruction.default));
        let inference_stats = Arc::new(InferenceStats::default());
        let first_frame_timeout = options.first_frame_timeout.unwrap_or_else(|| {
            Duration::from_millis(
                (config
                    .camera
                    .stall_timeout_ms
                    .max(config.control.max_frame_age_ms)
                    * 4)
                .max(5_000),
            )
        });
        let inference = InferenceThread::start_recorded(
            policy,
            InferenceLinks {
                frames: Arc::clone(&frames),
                trigger: Arc::clone(&trigger),
                results: Arc::clone(&results),
                instructions: Arc::clone(&instructions),
                stats: Arc::clone(&inference_stats),
            },
            first_frame_timeout,
            options.recorder.clone(),
        )?;

        rt::apply(realtime, rt::lock_memory)?;

        let inputs = Arc::new(ControlInputs::default());
        let interface = RobotInterface::declare(
            &session,
            &keys,
            Arc::clone(&inputs),
            Arc::clone(&instructions) as Arc<dyn zenoh_io::InstructionSink>,
        )?;

        let outbox = Arc::new(CommandOutbox::default());
        let publish_stats = Arc::new(PublishStats::new(options.trace_ticks));
        let publisher = CommandPublisherThread::spawn(
            &session,
            &keys.cmd,
            Arc::clone(&outbox),
            Arc::clone(&publish_stats),
            move || {
                // Same priority as the control thread, which wakes it every tick; a refusal
                // was already judged by the control thread's own set-up.
                let mode = match realtime {
                    RealtimeMode::Off => RealtimeMode::Off,
                    RealtimeMode::Try | RealtimeMode::Require => RealtimeMode::Try,
                };
                let _ = rt::apply(mode, || rt::make_current_thread_fifo(priority));
            },
        )?;
        // From here on, a failed start must close the outbox so the publisher thread ends.
        let outbox_guard = CloseOutboxOnDrop(Some(Arc::clone(&outbox)));

        let control_stats = Arc::new(ControlStats::default());
        let status = StatusThread::spawn(
            &session,
            &keys.status,
            StatusSources {
                robot_id: config.robot_id.clone(),
                rate_hz: config.control.rate_hz,
                backend: backend.clone(),
                model: model.clone(),
                camera: camera.clone(),
                control: Arc::clone(&control_stats),
                inference: Arc::clone(&inference_stats),
                publish: Arc::clone(&publish_stats),
                frames: Arc::clone(&frames),
                outbox: Arc::clone(&outbox),
                inputs: Arc::clone(&inputs),
                instructions: Arc::clone(&instructions),
                recorder: options.recorder.clone(),
            },
            options.terminal_status,
        )?;

        let settings = LoopSettings::from_config(config);
        let tick_limit = options.duration.map(|d| {
            let ticks = d.as_nanos() / u128::from(settings.period_ns.max(1));
            u64::try_from(ticks).unwrap_or(u64::MAX)
        });
        let notifier = if options.systemd_notify {
            SystemdNotifier::from_env()?
        } else {
            None
        };
        let mut control_loop = ControlLoop::new(
            settings,
            LoopLinks {
                frames: Arc::clone(&frames),
                results,
                trigger,
                outbox: Arc::clone(&outbox),
                inputs: Arc::clone(&inputs),
                stats: Arc::clone(&control_stats),
            },
        )
        .with_notifier(notifier)
        .with_tick_limit(tick_limit)
        .with_trace(options.trace_ticks)
        .with_command_tap(
            options
                .recorder
                .clone()
                .map(|r| r as Arc<dyn crate::control::tap::CommandTap>),
        );

        let (rt_tx, rt_rx) = crossbeam::channel::bounded(1);
        let control = std::thread::Builder::new()
            .name("vla-control".into())
            .spawn(move || {
                let setup = rt::apply(realtime, || rt::make_current_thread_fifo(priority));
                let go = setup.is_ok();
                let _ = rt_tx.send(setup);
                if !go {
                    return ServiceSummary::default();
                }
                control_loop.run(None);
                ServiceSummary {
                    commands: control_loop.commands_sent(),
                    trace: control_loop.trace().to_vec(),
                }
            })
            .map_err(|e| ServiceError::Thread {
                thread: "control",
                message: e.to_string(),
            })?;
        outbox_guard.disarm();
        let mut service = Self {
            outbox,
            session,
            interface,
            control: Some(control),
            publisher,
            status,
            inference,
            capture,
            inputs,
            publish_stats,
            control_stats,
            inference_stats,
        };
        match rt_rx.recv() {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                service.shut_down();
                return Err(e.into());
            }
            Err(_) => {
                service.shut_down();
                return Err(ServiceError::Thread {
                    thread: "control",
                    message: "ended before its first tick".into(),
                });
            }
        }
        if let Err(e) = service.interface.announce(&service.session, &keys) {
            // The control loop already runs: end it (with its STOP) rather than leave it behind.
            service.request_stop();
            service.shut_down();
            return Err(e.into());
        }
        log::info!(
            "running: robot `{}`, {} Hz, camera {camera}, model {model} on {backend}, commands on {}",
            config.robot_id,
            config.control.rate_hz,
            keys.cmd
        );
        Ok(service)
    }

    /// The inputs the control thread reads (e-stop, shutdown).
    pub fn inputs(&self) -> Arc<ControlInputs> {
        Arc::clone(&self.inputs)
    }

    pub fn control_stats(&self) -> Arc<ControlStats> {
        Arc::clone(&self.control_stats)
    }

    pub fn inference_stats(&self) -> Arc<InferenceStats> {
        Arc::clone(&self.inference_stats)
    }

    pub fn publish_stats(&self) -> Arc<PublishStats> {
        Arc::clone(&self.publish_stats)
    }

    /// Asks the control loop to publish its final STOP and end.
    pub fn request_stop(&self) {
        self.inputs.request_shutdown();
    }

    /// Waits for the control loop to end, then stops every thread, undeclares and closes the
    /// session.
    pub fn wait(mut self) -> ServiceSummary {
        self.shut_down()
    }

    /// Asks for the final STOP and waits for the service to end.
    pub fn stop(self) -> ServiceSummary {
        self.request_stop();
        self.wait()
    }

    fn shut_down(&mut self) -> ServiceSummary {
        let summary = match self.control.take() {
            Some(handle) => handle.join().unwrap_or_else(|_| {
                log::error!("control thread panicked");
                self.inputs.request_shutdown();
                ServiceSummary::default()
            }),
            None => ServiceSummary::default(),
        };
        // The control loop closed the outbox after its final STOP (closing again is harmless,
        // and needed if the loop never ran); the publisher drains it and ends.
        self.outbox.close();
        self.publisher.join();
        self.interface.undeclare();
        self.status.stop();
        self.inference.stop();
        self.capture.stop();
        if let Err(e) = self.session.close().wait() {
            log::warn!(
                "zenoh: closing the session: {}",
                crate::transport::zenoh_error_text(&*e)
            );
        }
        summary
    }
}

/// Closes the command outbox when a start fails half-way, so the publisher thread ends.
struct CloseOutboxOnDrop(Option<Arc<CommandOutbox>>);

impl CloseOutboxOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CloseOutboxOnDrop {
    fn drop(&mut self) {
        if let Some(outbox) = self.0.take() {
            outbox.close();
        }
    }
}
