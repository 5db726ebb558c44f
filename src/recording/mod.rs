//! Session recording: every frame the policy ran on, each prediction, every published command,
//! state changes and the status, written to MCAP files (viewed in Foxglove or Rerun) by a
//! writer thread of its own.
//!
//! The recorder is never on the real-time path's critical section: the control tick pushes a
//! fixed-size copy of its command into a preallocated queue (no allocation, no lock), the
//! inference thread copies the frame it predicted on into a pooled buffer, and the writer
//! thread does the encoding (JPEG, PNG, JSON) and the file I/O. When the disk is slow or full
//! the queues fill up and entries are dropped and counted; nobody waits for the disk.
//!
//! Each frame is kept twice: as a JPEG (`/camera/image`) for viewing, and losslessly as a PNG
//! (`/policy/input`), so that `vla-rt replay` runs the policy on exactly the pixels it saw.

pub mod plot;
pub mod reader;
mod schemas;
mod writer;

pub use writer::ACTION_NAMES;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam::queue::ArrayQueue;

use crate::capture::Frame;
use crate::control::command_record::RECORD_LEN;
use crate::control::tap::CommandTap;
use crate::policy::Prediction;
use crate::preprocess::RgbImage;

/// The MCAP profile of our recordings.
pub const PROFILE: &str = "vla-rt";
/// Name of the metadata record that describes the session ([`SessionInfo`]).
pub const SESSION_METADATA: &str = "vla-rt.session";
/// Name of the metadata record holding the service config (TOML) and calibration.
pub const CONFIG_METADATA: &str = "vla-rt.config";

/// Topics, as `vla-rt record-info` lists them.
pub mod topics {
    pub const CAMERA_IMAGE: &str = "/camera/image";
    pub const POLICY_INPUT: &str = "/policy/input";
    /// The wrist camera (`[wrist_camera]`), for a checkpoint that takes two images.
    pub const WRIST_CAMERA_IMAGE: &str = "/camera/wrist/image";
    pub const WRIST_POLICY_INPUT: &str = "/policy/input/wrist";
    pub const INSTRUCTION: &str = "/policy/instruction";
    pub const PREDICTION: &str = "/policy/prediction";
    pub const COMMAND: &str = "/control/command";
    pub const STATE: &str = "/control/state";
    pub const STATUS: &str = "/status";
}

/// Commands the queue holds: about 40 s at 100 Hz, far more than the writer ever lags.
const COMMAND_QUEUE: usize = 4096;
/// Predictions (with their frames) waiting for the writer.
const PREDICTION_QUEUE: usize = 8;
/// Frame buffers in circulation between the inference thread and the writer, per camera:
/// the queued predictions' frames, one being copied and one being encoded.
const FRAME_POOL_PER_CAMERA: usize = PREDICTION_QUEUE + 2;
const STATUS_QUEUE: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("{path}: not an MCAP file ({message})")]
    NotMcap { path: String, message: String },
    #[error("{path}: not a vla-rt recording: {message}")]
    Foreign { path: String, message: String },
    #[error("{path}: damaged recording: {message}")]
    Damaged { path: String, message: String },
    #[error("cannot start the recording thread: {message}")]
    Thread { message: String },
}

/// Where and how to record.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordSettings {
    pub path: PathBuf,
    /// Start the next file after this many bytes (0: never).
    pub max_file_bytes: u64,
    /// Start the next file after this many nanoseconds (0: never).
    pub max_file_ns: u64,
    pub jpeg_quality: u8,
    /// Frames each prediction is recorded with: 1, or 2 with a `[wrist_camera]`.
    pub cameras: usize,
}

impl RecordSettings {
    /// The service config's `[record]` table and its cameras, writing to `path`.
    pub fn from_config(config: &crate::config::ServiceConfig, path: &Path) -> Self {
        let record = &config.record;
        Self {
            path: path.to_path_buf(),
            max_file_bytes: record.max_file_mb.saturating_mul(1 << 20),
            max_file_ns: record.max_file_s.saturating_mul(1_000_000_000),
            jpeg_quality: record.jpeg_quality,
            cameras: 1 + usize::from(config.wrist_camera.is_some()),
        }
    }
}

/// What produced a recording: written as the `vla-rt.session` metadata of every file, and
/// what `vla-rt replay` uses to run the policy as the service did.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct SessionInfo {
    pub vla_rt_version: String,
    pub robot_id: String,
    pub rate_hz: f64,
    pub model_path: String,
    /// [`crate::model::fingerprint::checkpoint_fingerprint`] of the checkpoint.
    pub model_fingerprint: String,
    pub model_name: String,
    pub backend: String,
    pub quantization: String,
    pub projector: String,
    pub unnorm_key: Option<String>,
    pub quantized_weights: Option<String>,
    /// The projector's calibrated activation scales (JSON), when it ran W8A8.
    pub projector_scales: Option<String>,
    /// The service config in effect (TOML).
    pub config: String,
    /// The calibration file in effect, verbatim.
    pub calibration: Option<String>,
}

/// Counters of a recording, for the status JSON (`record`).
#[derive(Default)]
pub struct RecordStats {
    /// Messages written.
    pub written: AtomicU64,
    /// Entries (commands, frames, predictions, status documents) dropped: queue full, or the
    /// file could not be written.
    pub dropped: AtomicU64,
    /// Bytes written to files.
    pub bytes: AtomicU64,
    /// Files started.
    pub files: AtomicU64,
    /// CPU time of the writer thread.
    pub writer_cpu_ns: AtomicU64,
    path: Mutex<String>,
    error: Mutex<Option<String>>,
}

impl RecordStats {
    pub fn path(&self) -> String {
        match self.path.lock() {
            Ok(path) => path.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn error(&self) -> Option<String> {
        match self.error.lock() {
            Ok(error) => error.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set_path(&self, path: &Path) {
        let text = path.display().to_string();
        match self.path.lock() {
            Ok(mut p) => *p = text,
            Err(poisoned) => *poisoned.into_inner() = text,
        }
    }

    fn set_error(&self, message: String) {
        match self.error.lock() {
            Ok(mut e) => *e = Some(message),
            Err(poisoned) => *poisoned.into_inner() = Some(message),
        }
    }

    /// The `record` object of the status JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "path": self.path(),
            "written": self.written.load(Ordering::Relaxed),
            "dropped": self.dropped.load(Ordering::Relaxed),
            "bytes": self.bytes.load(Ordering::Relaxed),
            "files": self.files.load(Ordering::Relaxed),
            "writer_cpu_ms": self.writer_cpu_ns.load(Ordering::Relaxed) / 1_000_000,
            "error": self.error(),
        })
    }
}

/// A command as the control thread hands it over: fixed size, copied by value.
#[derive(Clone, Copy)]
struct CommandEntry {
    record: [u8; RECORD_LEN],
    stop_cause: &'static str,
    chunk_step: Option<u32>,
}

/// A prediction with the frame it was made on.
struct PredictionEntry {
    /// `None` when no frame buffer was free (the writer is behind): the prediction is still
    /// recorded, its frame is counted as dropped.
    image: Option<RgbImage>,
    capture_time_ns: u64,
    frame_sequence: u64,
    trigger_tick: u64,
    /// When the prediction was done, ns since the Unix epoch.
    done_ns: u64,
    instruction: String,
    prediction: Prediction,
    /// The wrist camera's frame of a two-image prediction, as `image` (`None` with one
    /// camera, or when no buffer was free).
    wrist: Option<WristEntry>,
    /// The robot's state the prediction took, raw.
    proprio: Option<Vec<f64>>,
}

/// The wrist frame of a recorded prediction.
struct WristEntry {
    image: Option<RgbImage>,
    capture_time_ns: u64,
    frame_sequence: u64,
}

/// What a prediction was made on.
pub struct PredictionInputs<'a> {
    pub frame: &'a Frame,
    /// The wrist camera's frame, for a checkpoint that takes two images.
    pub wrist: Option<&'a Frame>,
    pub instruction: &'a str,
    /// The robot's state, raw, for a checkpoint that takes it.
    pub proprio: Option<&'a [f64]>,
    /// The control tick whose request the prediction answered.
    pub trigger_tick: u64,
}

/// What the producers share with the writer thread.
struct Queues {
    commands: ArrayQueue<CommandEntry>,
    predictions: ArrayQueue<PredictionEntry>,
    frame_pool: ArrayQueue<RgbImage>,
    status: ArrayQueue<(u64, String)>,
    stats: Arc<RecordStats>,
    stop: AtomicBool,
}

/// The handle the service's threads push into. Cheap to share (`Arc`).
pub struct Recorder {
    queues: Arc<Queues>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("path", &self.queues.stats.path())
            .finish()
    }
}

impl Recorder {
    /// Creates the first file (so that an unwritable path fails here, at start) and starts
    /// the writer thread.
    pub fn start(settings: RecordSettings, session: SessionInfo) -> Result<Arc<Self>, RecordError> {
        let stats = Arc::new(RecordStats::default());
        let frames = FRAME_POOL_PER_CAMERA * settings.cameras.max(1);
        let frame_pool = ArrayQueue::new(frames);
        for _ in 0..frames {
            let _ = frame_pool.push(RgbImage::default());
        }
        let queues = Arc::new(Queues {
            commands: ArrayQueue::new(COMMAND_QUEUE),
            predictions: ArrayQueue::new(PREDICTION_QUEUE),
            frame_pool,
            status: ArrayQueue::new(STATUS_QUEUE),
            stats,
            stop: AtomicBool::new(false),
        });
        let thread_queues = Arc::clone(&queues);
        // The file is created (and written) by the writer thread only; it reports whether
        // the first one could be created before any entry is queued.
        let (created_tx, created_rx) = crossbeam::channel::bounded(1);
        let handle = std::thread::Builder::new()
            .name("vla-record".into())
            .spawn(move || {
                match writer::SessionFile::create(&settings, &session, 0, &thread_queues.stats) {
                    Ok(file) => {
                        let _ = created_tx.send(Ok(()));
                        writer::run(settings, session, file, &thread_queues);
                    }
                    Err(e) => {
                        let _ = created_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| RecordError::Thread {
                message: e.to_string(),
            })?;
        let created = created_rx.recv().unwrap_or_else(|_| {
            Err(RecordError::Thread {
                message: "the recording thread ended at start".into(),
            })
        });
        if let Err(e) = created {
            let _ = handle.join();
            return Err(e);
        }
        Ok(Arc::new(Self {
            queues,
            writer: Mutex::new(Some(handle)),
        }))
    }

    pub fn stats(&self) -> Arc<RecordStats> {
        Arc::clone(&self.queues.stats)
    }

    /// Records a prediction and the frames and robot state it was made on. Called by the
    /// inference thread: one copy of each frame into a pooled buffer, no encoding.
    pub fn prediction(&self, inputs: PredictionInputs<'_>, prediction: &Prediction) {
        let queues = &self.queues;
        let copy = |frame: &Frame| {
            let image = queues.frame_pool.pop().map(|mut buffer| {
                buffer.width = frame.image.width;
                buffer.height = frame.image.height;
                buffer.data.clear();
                buffer.data.extend_from_slice(&frame.image.data);
                buffer
            });
            if image.is_none() {
                queues.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
            image
        };
        let frame = inputs.frame;
        let entry = PredictionEntry {
            image: copy(frame),
            capture_time_ns: frame.capture_time_ns,
            frame_sequence: frame.sequence,
            trigger_tick: inputs.trigger_tick,
            done_ns: crate::control::clock::realtime_ns(),
            instruction: inputs.instruction.to_string(),
            prediction: prediction.clone(),
            wrist: inputs.wrist.map(|wrist| WristEntry {
                image: copy(wrist),
                capture_time_ns: wrist.capture_time_ns,
                frame_sequence: wrist.sequence,
            }),
            proprio: inputs.proprio.map(<[f64]>::to_vec),
        };
        if let Err(entry) = queues.predictions.push(entry) {
            let images = [entry.image, entry.wrist.and_then(|wrist| wrist.image)];
            let frames = images.iter().flatten().count() as u64;
            queues
                .stats
                .dropped
                .fetch_add(1 + frames, Ordering::Relaxed);
            for image in images.into_iter().flatten() {
                let _ = queues.frame_pool.push(image);
            }
        }
    }

    /// Records a status document (called once a second by the status thread).
    pub fn status(&self, unix_ns: u64, json: String) {
        if self.queues.status.push((unix_ns, json)).is_err() {
            self.queues.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Writes what is queued, closes the file (summary and footer) and ends the writer thread.
    pub fn finish(&self) {
        self.queues.stop.store(true, Ordering::Release);
        let handle = match self.writer.lock() {
            Ok(mut handle) => handle.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(handle) = handle {
            handle.thread().unpark();
            if handle.join().is_err() {
                log::error!("recording thread panicked");
            }
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.finish();
    }
}

impl CommandTap for Recorder {
    fn command(
        &self,
        record: &[u8; RECORD_LEN],
        stop_cause: &'static str,
        chunk_step: Option<u32>,
    ) {
        let entry = CommandEntry {
            record: *record,
            stop_cause,
            chunk_step,
        };
        if self.queues.commands.push(entry).is_err() {
            self.queues.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// `path` with `{time}` replaced by `unix_s` as UTC `YYYYMMDD-HHMMSS`.
pub fn expand_time(path: &Path, unix_s: u64) -> PathBuf {
    let text = path.to_string_lossy();
    if !text.contains("{time}") {
        return path.to_path_buf();
    }
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm).
    let days = (unix_s / 86_400) as i64;
    let secs = unix_s % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let stamp = format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
    PathBuf::from(text.replace("{time}", &stamp))
}

/// The `n`-th file of a recording: the path itself for the first, `<stem>.<n>.<ext>` after.
pub fn rotated_path(path: &Path, n: u64) -> PathBuf {
    if n == 0 {
        return path.to_path_buf();
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match path.extension() {
        Some(ext) => format!("{stem}.{n}.{}", ext.to_string_lossy()),
        None => format!("{stem}.{n}"),
    };
    path.with_file_name(name)
}

/// The session description written into every recording file.
pub fn session_info(
    config: &crate::config::ServiceConfig,
    policy_options: &crate::policy::PolicyOptions,
) -> Result<SessionInfo, String> {
    let model_dir = &config.model.path;
    let fingerprint =
        crate::model::fingerprint::checkpoint_fingerprint(model_dir).map_err(|e| e.to_string())?;
    let model_path = std::fs::canonicalize(model_dir).unwrap_or_else(|_| model_dir.clone());
    let calibration = match &config.calibration.path {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("calibration.path: {}: {e}", path.display()))?,
        ),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_placeholders_become_utc_stamps() {
        // 2026-12-02 06:15:00 UTC.
        assert_eq!(
            expand_time(Path::new("/r/s-{time}.mcap"), 1_796_192_100),
            PathBuf::from("/r/s-20261202-061500.mcap")
        );
        // 2024-02-29 23:59:59 UTC (a leap day).
        assert_eq!(
            expand_time(Path::new("{time}.mcap"), 1_709_251_199),
            PathBuf::from("20240229-235959.mcap")
        );
        assert_eq!(expand_time(Path::new("a.mcap"), 0), PathBuf::from("a.mcap"));
    }

    #[test]
    fn rotated_files_are_numbered_before_the_extension() {
        let p = Path::new("/data/run.mcap");
        assert_eq!(rotated_path(p, 0), PathBuf::from("/data/run.mcap"));
        assert_eq!(rotated_path(p, 2), PathBuf::from("/data/run.2.mcap"));
        assert_eq!(rotated_path(Path::new("run"), 1), PathBuf::from("run.1"));
    }

    #[test]
    fn a_full_queue_of_two_camera_predictions_keeps_both_frames_of_each() {
        let path = std::env::temp_dir().join(format!("vla-rt-pool-{}.mcap", std::process::id()));
        let recorder = Recorder::start(
            RecordSettings {
                path: path.clone(),
                max_file_bytes: 0,
                max_file_ns: 0,
                jpeg_quality: 80,
                cameras: 2,
            },
            SessionInfo::default(),
        )
        .unwrap();
        // Frames large enough that the writer, encoding each as JPEG and PNG, frees no
        // buffer while the queue is filled.
        let (width, height) = (640, 480);
        let frame = Frame {
            image: RgbImage {
                width,
                height,
                data: vec![90; (width * height * 3) as usize],
            },
            capture_time_ns: 1,
            sequence: 1,
        };
        let prediction =
            Prediction::single(Vec::new(), vec![0.0; 7], vec![0.0; 7], Default::default());
        for tick in 0..PREDICTION_QUEUE as u64 {
            recorder.prediction(
                PredictionInputs {
                    frame: &frame,
                    wrist: Some(&frame),
                    instruction: "pick up the block",
                    proprio: None,
                    trigger_tick: tick,
                },
                &prediction,
            );
        }
        let dropped = recorder.stats().dropped.load(Ordering::Relaxed);
        recorder.finish();
        let _ = std::fs::remove_file(&path);
        assert_eq!(dropped, 0, "frames dropped from a queue that had room");
    }
}
