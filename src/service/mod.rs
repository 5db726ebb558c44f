//! The service: wires the capture thread, the inference worker, the control loop, the
//! publisher and the status reporter together (ARCHITECTURE.md §3), with real-time set-up,
//! signals, systemd notification and the supervision of every thread ([`supervision`]).

pub mod inference;
pub mod notify;
pub mod proprio;
pub mod rt;
pub mod signals;
pub mod status;
pub mod supervision;

use std::sync::Arc;
use std::time::Duration;

use zenoh::Wait;

use crate::capture::pair::Cameras;
use crate::capture::thread::{CaptureThread, LatestFrame};
use crate::capture::{CaptureError, FrameSource};
use crate::config::{RealtimeMode, ServiceConfig};
use crate::control::clock;
use crate::control::estop_store::{EStopStore, EStopStoreError};
#[cfg(feature = "test-hooks")]
use crate::control::fault_injection::FaultInjection;
use crate::control::handoff::{CommandOutbox, ControlInputs, InferenceTrigger, ResultSlot};
use crate::control::heartbeat::{Fault, FaultKind, Supervision, Worker, WRIST_CAPTURE_THREAD};
use crate::control::stats::ControlStats;
use crate::control::tick_loop::{ControlLoop, LoopLinks, TickNotifier, TickTrace};
use crate::policy::{Policy, PolicyError};
use crate::recording::Recorder;
use crate::ros2::Ros2Node;
use crate::transport::security;
use crate::transport::zenoh_io::{
    self, CommandPublisherThread, PublishStats, PublisherSettings, RobotInterface, RobotKeys,
    TransportError,
};
use inference::{
    InferenceError, InferenceLinks, InferenceStats, InferenceThread, InstructionCell, WristLink,
};
use notify::{NotifyError, SystemdNotifier};
use rt::RealtimeError;
use status::{StatusSources, StatusThread};
use supervision::{CaptureHeartbeat, WatchdogThread};

/// How long the publisher thread may take to send the final STOP and end at shutdown;
/// after that the main thread sends what is left itself.
const PUBLISHER_DRAIN_LIMIT: Duration = Duration::from_secs(1);

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
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    EStopState(#[from] EStopStoreError),
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
            ServiceError::Config(_) | ServiceError::EStopState(_) => true,
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
    /// A test fault to inject into one worker (`VLA_RT_TEST_FAULT`).
    #[cfg(feature = "test-hooks")]
    pub fault_injection: Option<FaultInjection>,
    /// Record the session (frames, predictions, commands, status) with this recorder.
    pub recorder: Option<Arc<Recorder>>,
}

/// What a finished run reports.
#[derive(Debug, Clone, Default)]
pub struct ServiceSummary {
    pub commands: u64,
    pub trace: Vec<TickTrace>,
    /// Why the service stopped on its own: a worker died or stalled (`vla-rt run` exits
    /// with code 3).
    pub fault: Option<Fault>,
}

/// A running service. [`Service::wait`] returns once the control loop has published its
/// final STOP (after `--duration`, SIGTERM/SIGINT or [`Service::request_stop`]) and every
/// thread and Zenoh declaration is gone.
pub struct Service {
    outbox: Arc<CommandOutbox>,
    session: zenoh::Session,
    interface: RobotInterface,
    /// The ROS 2 node, with `[ros2] enabled`.
    ros2: Option<Arc<Ros2Node>>,
    /// Ends with `None` when the control loop panicked.
    control: Option<std::thread::JoinHandle<Option<ServiceSummary>>>,
    supervision: Arc<Supervision>,
    watchdog: Option<WatchdogThread>,
    publisher: CommandPublisherThread,
    status: StatusThread,
    inference: InferenceThread,
    capture: CaptureThread,
    wrist_capture: Option<CaptureThread>,
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

        // Cheap checks first: a missing step rate, an unwritable e-stop latch, a missing
        // camera or a taken port is reported before a model that may take minutes to load.
        let action_hz = config.model.resolved_action_hz("config")?;
        let inputs = Arc::new(open_estop_latch(config)?);
        source.start()?;
        let camera = source.describe();
        let mut sources = Sources {
            primary: source,
            wrist: None,
        };
        if let Some(wrist_config) = &config.wrist_camera {
            let opened = crate::capture::open_source_in_domain(
                wrist_config,
                &config.zenoh,
                config.ros2.domain_id,
            )
            .and_then(|mut wrist| wrist.start().map(|()| wrist));
            match opened {
                Ok(wrist) => sources.wrist = Some(wrist),
                Err(e) => {
                    sources.stop();
                    return Err(e.into());
                }
            }
        }
        let wrist_camera = sources.wrist.as_ref().map(|wrist| wrist.describe());
        // The largest legitimate inbound payload: the instruction, or a camera frame when a
        // camera comes over this session.
        let mut largest_payload = config.instruction.max_bytes;
        for camera in std::iter::once(&config.camera).chain(&config.wrist_camera) {
            if camera
                .source
                .starts_with(crate::capture::zenoh_source::SOURCE_PREFIX)
            {
                largest_payload =
                    largest_payload.max(crate::capture::zenoh_source::largest_frame_payload(
                        camera.width,
                        camera.height,
                    ));
            }
            if camera.source.starts_with(crate::ros2::CAMERA_SOURCE_PREFIX) {
                largest_payload = largest_payload.max(crate::ros2::camera::largest_payload(
                    camera.width,
                    camera.height,
                ));
            }
        }
        let inbound_limit = security::inbound_message_limit(largest_payload);
        let (session, transport_security) =
            match zenoh_io::open_session(&config.zenoh, inbound_limit) {
                Ok(opened) => opened,
                Err(e) => {
                    sources.stop();
                    return Err(e.into());
                }
            };
        // From here on, a failed start stops the cameras and closes the session.
        let fail = |mut sources: Sources, error: ServiceError| {
            sources.stop();
            let _ = session.close().wait();
            error
        };
        let attached =
            sources
                .primary
                .attach_session(&session)
                .and_then(|()| match sources.wrist.as_mut() {
                    Some(wrist) => wrist.attach_session(&session),
                    None => Ok(()),
                });
        if let Err(e) = attached {
            return Err(fail(sources, e.into()));
        }
        let remote = match config.model.resolved_remote("config", action_hz) {
            Ok(remote) => remote,
            Err(e) => return Err(fail(sources, e.into())),
        };
        let loaded = match &remote {
            Some(remote) => crate::remote::RemotePolicy::connect(
                &session,
                remote,
                &config.robot_id,
                config.model.unnorm_key.as_deref(),
            )
            .map(|policy| Box::new(policy) as Box<dyn Policy>),
            None => load_policy(),
        };
        let policy = match loaded {
            Ok(policy) => policy,
            Err(e) => return Err(fail(sources, ServiceError::Policy(e))),
        };
        if let Err(e) = check_cameras(policy.inputs().images, config.wrist_camera.is_some()) {
            return Err(fail(sources, e.into()));
        }
        let backend = policy.backend_name().to_string();
        let model = policy.model_name().to_string();

        let supervision = Supervision::new(config.watchdog_limits());
        #[cfg(feature = "test-hooks")]
        let supervision = supervision.with_fault_injection(options.fault_injection);
        let supervision = Arc::new(supervision);
        let Sources {
            primary: source,
            wrist: wrist_source,
        } = sources;
        let frames = Arc::new(LatestFrame::new());
        let capture = CaptureThread::spawn_watched(
            source,
            Arc::clone(&frames),
            Some(Box::new(CaptureHeartbeat(
                Arc::clone(&supervision),
                Worker::Capture,
            ))),
        )?;
        let (wrist_capture, wrist) = match (wrist_source, &config.wrist_camera) {
            (Some(wrist_source), Some(wrist_config)) => {
                // The inference thread keeps the newest two wrist frames to pair from.
                let wrist_frames = Arc::new(LatestFrame::with_held_frames(2));
                let thread = CaptureThread::spawn_named(
                    WRIST_CAPTURE_THREAD,
                    wrist_source,
                    Arc::clone(&wrist_frames),
                    Some(Box::new(CaptureHeartbeat(
                        Arc::clone(&supervision),
                        Worker::WristCapture,
                    ))),
                )?;
                let tolerance_ms = config.control.frame_pair_tolerance_ms;
                let link = WristLink {
                    frames: wrist_frames,
                    pair_tolerance_ns: tolerance_ms.saturating_mul(1_000_000),
                    pair_wait: Duration::from_millis(tolerance_ms)
                        + Duration::from_secs(1) / wrist_config.fps.max(1),
                };
                (Some(thread), Some(link))
            }
            _ => (None, None),
        };

        let trigger = Arc::new(InferenceTrigger::default());
        let results = Arc::new(ResultSlot::default());
        let instructions = Arc::new(InstructionCell::with_limits(
            &config.instruction.default,
            &config.instruction,
        ));
        let inference_stats = Arc::new(InferenceStats::default());
        // A policy that takes the robot's state gets it from the driver's key; without a
        // fresh one the loop STOPs as for a silent camera.
        let proprio = policy.inputs().proprio_dim.map(|dim| {
            Arc::new(proprio::ProprioCell::new(
                dim,
                config.control.max_frame_age_ms.saturating_mul(1_000_000),
                Arc::clone(&inputs),
            ))
        });
        let first_frame_timeout = options.first_frame_timeout.unwrap_or_else(|| {
            let stall_timeout_ms = std::iter::once(&config.camera)
                .chain(&config.wrist_camera)
                .map(|camera| camera.stall_timeout_ms)
                .max()
                .unwrap_or_default();
            Duration::from_millis(
                (stall_timeout_ms.max(config.control.max_frame_age_ms) * 4).max(5_000),
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
                inputs: Arc::clone(&inputs),
                proprio: proprio.clone(),
                wrist: wrist.clone(),
                supervision: Some(Arc::clone(&supervision)),
            },
            first_frame_timeout,
            options.recorder.clone(),
        )?;

        rt::apply(realtime, rt::lock_memory)?;

        let interface = RobotInterface::declare(
            &session,
            &keys,
            Arc::clone(&inputs),
            Arc::clone(&instructions) as Arc<dyn zenoh_io::InstructionSink>,
            proprio
                .clone()
                .map(|cell| cell as Arc<dyn zenoh_io::ProprioSink>),
            Some(Arc::clone(&supervision)),
        )?;
        let ros2 = if config.ros2.enabled {
            Some(Ros2Node::declare(
                &session,
                config,
                Arc::clone(&inputs),
                Arc::clone(&instructions) as Arc<dyn zenoh_io::InstructionSink>,
                Some(Arc::clone(&supervision)),
            )?)
        } else {
            None
        };
        let mirror = match &ros2 {
            Some(node) => Some(Box::new(
                node.command_publisher(&session, config.control.period_ns())?,
            ) as Box<dyn zenoh_io::CommandMirror>),
            None => None,
        };

        let outbox = Arc::new(CommandOutbox::default());
        let publish_stats = Arc::new(PublishStats::new(options.trace_ticks));
        let publisher = CommandPublisherThread::spawn_mirrored(
            &session,
            &keys.cmd,
            Arc::clone(&outbox),
            Arc::clone(&publish_stats),
            PublisherSettings {
                period_ns: config.control.period_ns(),
                supervision: Some(Arc::clone(&supervision)),
            },
            mirror,
            move || {
                // Same priority as the control thread, which wakes it every tick; a refusal
                // was already judged by the control thread's own set-up.
                let mode = match realtime {
                    RealtimeMode::Off => RealtimeMode::Off,
                    RealtimeMode::Try | RealtimeMode::Require => RealtimeMode::Try,
                };
                let _ = rt::apply(mode, || rt::make_current_thread_fifo(priority));
                rt::prefault_stack();
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
                wrist_camera: wrist_camera
                    .clone()
                    .zip(wrist.as_ref().map(|link| Arc::clone(&link.frames))),
                control: Arc::clone(&control_stats),
                inference: Arc::clone(&inference_stats),
                publish: Arc::clone(&publish_stats),
                frames: Arc::clone(&frames),
                outbox: Arc::clone(&outbox),
                inputs: Arc::clone(&inputs),
                instructions: Arc::clone(&instructions),
                proprio: proprio.clone(),
                supervision: Arc::clone(&supervision),
                transport: transport_security,
                recorder: options.recorder.clone(),
                ros2: ros2.clone(),
            },
            options.terminal_status,
        )?;

        let settings = config.loop_settings(action_hz);
        let tick_limit = options.duration.map(|d| {
            let ticks = d.as_nanos() / u128::from(settings.period_ns.max(1));
            u64::try_from(ticks).unwrap_or(u64::MAX)
        });
        let notifier = if options.systemd_notify {
            SystemdNotifier::from_env()?
        } else {
            None
        };
        let watchdog_notifier = notifier.as_ref().map(|n| n.try_clone()).transpose()?;
        let mut control_loop = ControlLoop::new(
            settings,
            LoopLinks {
                frames: Arc::new(Cameras {
                    primary: Arc::clone(&frames),
                    wrist: wrist.as_ref().map(|link| Arc::clone(&link.frames)),
                }),
                results,
                trigger,
                outbox: Arc::clone(&outbox),
                inputs: Arc::clone(&inputs),
                stats: Arc::clone(&control_stats),
                termination_requested: signals::termination_requested,
            },
        )
        .with_notifier(notifier.map(|n| Box::new(n) as Box<dyn TickNotifier>))
        .with_supervision(Some(Arc::clone(&supervision)))
        .with_tick_limit(tick_limit)
        .with_trace(options.trace_ticks)
        .with_command_tap(
            options
                .recorder
                .clone()
                .map(|r| r as Arc<dyn crate::control::tap::CommandTap>),
        );

        let (rt_tx, rt_rx) = crossbeam::channel::bounded(1);
        let control_supervision = Arc::clone(&supervision);
        let control = std::thread::Builder::new()
            .name("vla-control".into())
            .spawn(move || {
                let setup = rt::apply(realtime, || rt::make_current_thread_fifo(priority));
                rt::prefault_stack();
                let go = setup.is_ok();
                let _ = rt_tx.send(setup);
                if !go {
                    return Some(ServiceSummary::default());
                }
                control_supervision.guard(Worker::Control, || control_loop.run(None))?;
                Some(ServiceSummary {
                    commands: control_loop.commands_sent(),
                    trace: control_loop.trace().to_vec(),
                    fault: None,
                })
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
            ros2,
            control: Some(control),
            supervision: Arc::clone(&supervision),
            watchdog: None,
            publisher,
            status,
            inference,
            capture,
            wrist_capture,
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
        let announced = service
            .interface
            .announce(&service.session, &keys)
            .and_then(|()| match &service.ros2 {
                Some(node) => node.announce(&service.session),
                None => Ok(()),
            });
        if let Err(e) = announced {
            // The control loop already runs: end it (with its STOP) rather than leave it behind.
            service.request_stop();
            service.shut_down();
            return Err(e.into());
        }
        match WatchdogThread::spawn(Arc::clone(&supervision), watchdog_notifier) {
            Ok(watchdog) => service.watchdog = Some(watchdog),
            Err(e) => {
                service.request_stop();
                service.shut_down();
                return Err(ServiceError::Thread {
                    thread: "watchdog",
                    message: e.to_string(),
                });
            }
        }
        log::info!(
            "running: robot `{}`, {} Hz, actions at {action_hz} Hz, camera {camera}{}, model {model} on {backend}, commands on {}",
            config.robot_id,
            config.control.rate_hz,
            wrist_camera.map_or(String::new(), |wrist| format!(
                ", wrist camera {wrist} (pairs within {} ms)",
                config.control.frame_pair_tolerance_ms
            )),
            keys.cmd
        );
        if service.inputs.estop_latched() {
            log::warn!(
                "e-stop latched: STOP until `release` on {} and then `arm` on {}",
                keys.estop_release,
                keys.arm
            );
        } else if config.control.start_armed {
            log::warn!("started armed (control.start_armed): ACT as soon as actions arrive");
        } else {
            log::info!("disarmed: HOLD until `arm` on {}", keys.arm);
        }
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

    /// Commands that never went out: replaced in the outbox by a newer one before the
    /// publisher took them, or older than a period when it did.
    pub fn dropped_commands(&self) -> u64 {
        self.outbox.dropped()
            + self
                .publish_stats
                .stale
                .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The workers' heartbeats and the fault, if one happened.
    pub fn supervision(&self) -> Arc<Supervision> {
        Arc::clone(&self.supervision)
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

    /// Stops everything in order: the control loop's final STOP first (a last-resort STOP
    /// when the control thread died), then the publisher (the main thread sends the final
    /// STOP itself when the publisher died or hangs), the Zenoh declarations and the other
    /// threads. A thread that stalled is left behind rather than waited for.
    fn shut_down(&mut self) -> ServiceSummary {
        let (mut summary, control_died) = match self.control.take() {
            Some(handle) => match handle.join() {
                Ok(Some(summary)) => (summary, false),
                Ok(None) | Err(_) => (ServiceSummary::default(), true),
            },
            None => (ServiceSummary::default(), false),
        };
        if let Some(mut watchdog) = self.watchdog.take() {
            watchdog.stop();
        }
        if control_died {
            self.supervision.report(Fault {
                worker: Some(Worker::Control),
                kind: FaultKind::Panicked,
                detail: "ended without its final STOP".into(),
            });
            let stop = self
                .outbox
                .last_resort_stop(clock::realtime_ns(), clock::monotonic_ns());
            log::error!(
                "control thread died: last-resort STOP (seq {}) handed to the publisher",
                stop.seq
            );
        }
        // The control loop closed the outbox after its final STOP (closing again is harmless,
        // and needed if the loop never ran); the publisher sends what is left and ends.
        self.outbox.close();
        let stalled = self
            .supervision
            .fault()
            .filter(|fault| fault.kind == FaultKind::Stalled)
            .and_then(|fault| fault.worker);
        let publisher_ended = self.publisher.join_within(PUBLISHER_DRAIN_LIMIT);
        if self.publisher.send_left_over(&self.session, &self.outbox) {
            log::warn!(
                "the final STOP was sent by the main thread (publisher thread {})",
                if publisher_ended {
                    "dead"
                } else {
                    "not responding"
                }
            );
        }
        self.interface.undeclare();
        if let Some(node) = &self.ros2 {
            node.undeclare();
        }
        match stalled {
            Some(Worker::Status) => self.status.abandon(),
            _ => self.status.stop(),
        }
        match stalled {
            Some(Worker::Inference) => self.inference.abandon(),
            _ => self.inference.stop(),
        }
        match stalled {
            Some(Worker::Capture) => self.capture.abandon(),
            _ => self.capture.stop(),
        }
        if let Some(wrist) = self.wrist_capture.as_mut() {
            match stalled {
                Some(Worker::WristCapture) => wrist.abandon(),
                _ => wrist.stop(),
            }
        }
        if let Err(e) = self.session.close().wait() {
            log::warn!(
                "zenoh: closing the session: {}",
                crate::transport::zenoh_error_text(&*e)
            );
        }
        summary.fault = self.supervision.fault();
        summary
    }
}

/// The cameras opened at start, before their capture threads run.
struct Sources {
    primary: Box<dyn FrameSource>,
    wrist: Option<Box<dyn FrameSource>>,
}

impl Sources {
    fn stop(&mut self) {
        self.primary.stop();
        if let Some(wrist) = self.wrist.as_mut() {
            wrist.stop();
        }
    }
}

/// A checkpoint that takes `images` images, on a service with a wrist camera or without:
/// each image comes from one camera, in the checkpoint's order (`[camera]`, then
/// `[wrist_camera]`).
fn check_cameras(images: usize, wrist_camera: bool) -> Result<(), crate::config::ConfigError> {
    let cameras = 1 + usize::from(wrist_camera);
    if images == cameras {
        return Ok(());
    }
    let message = match images {
        1 => "the checkpoint takes one image (num_images_in_input 1): remove `[wrist_camera]`"
            .to_string(),
        2 => "the checkpoint takes two images (num_images_in_input 2), the second from a wrist \
              camera: configure `[wrist_camera]`"
            .to_string(),
        n => format!(
            "the checkpoint takes {n} images (num_images_in_input); the service runs at most \
             two cameras, `[camera]` and `[wrist_camera]`"
        ),
    };
    Err(crate::config::ConfigError::Invalid {
        file: "config".into(),
        key: "wrist_camera".into(),
        message,
    })
}

/// The e-stop latch as persisted in `[control] state_dir` (a missing or unreadable file
/// means `estop_missing`), written back at once so that an unwritable folder is refused
/// at start rather than found out at the first e-stop.
fn open_estop_latch(config: &ServiceConfig) -> Result<ControlInputs, ServiceError> {
    let store = EStopStore::open(&config.control.state_dir, &config.robot_id)?;
    let (latched, note) = store.initial_latch(config.control.estop_missing);
    if let Some(note) = note {
        log::warn!("{note}");
    }
    store.write(latched)?;
    Ok(ControlInputs::with_estop_store(store, latched))
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
