//! The writer thread: drains the recorder's queues, encodes (JPEG, PNG, JSON) and writes MCAP
//! files, rotating them by size and age. A write error ends the file; from then on everything
//! is dropped and counted, and the error is reported in the status.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use image::ImageEncoder as _;
use mcap::records::{MessageHeader, Metadata};
use serde_json::json;

use super::{
    rotated_path, schemas, topics, CommandEntry, PredictionEntry, Queues, RecordError,
    RecordSettings, RecordStats, SessionInfo, CONFIG_METADATA, PROFILE, SESSION_METADATA,
};
use crate::control::command_record::CommandRecord;
use crate::control::ControlState;
use crate::preprocess::RgbImage;

/// Chunks are closed at this size, or at [`FLUSH_INTERVAL`], whichever comes first: a cut-off
/// file loses at most the chunk being filled.
const CHUNK_BYTES: u64 = 1 << 20;
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// How long the writer sleeps when the queues are empty.
const IDLE_WAIT: Duration = Duration::from_millis(20);

/// Names of the action dimensions, in command order.
pub const ACTION_NAMES: [&str; 7] = ["dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"];

/// A file being written, counting what reaches it. After the first error every write fails
/// at once, so that closing a broken file does not retry the disk.
struct CountingFile {
    inner: BufWriter<File>,
    stats: Arc<RecordStats>,
    /// Bytes of this file, shared with its [`SessionFile`] for rotation.
    written: Arc<std::sync::atomic::AtomicU64>,
    failed: bool,
}

impl CountingFile {
    fn check(&self) -> std::io::Result<()> {
        if self.failed {
            return Err(std::io::Error::other("an earlier write failed"));
        }
        Ok(())
    }
}

impl Write for CountingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.check()?;
        match self.inner.write(buf) {
            Ok(n) => {
                self.written.fetch_add(n as u64, Ordering::Relaxed);
                self.stats.bytes.fetch_add(n as u64, Ordering::Relaxed);
                Ok(n)
            }
            Err(e) => {
                self.failed = true;
                Err(e)
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.check()?;
        self.inner.flush().inspect_err(|_| self.failed = true)
    }
}

impl Seek for CountingFile {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.check()?;
        self.inner.seek(pos).inspect_err(|_| self.failed = true)
    }
}

struct Channels {
    camera: u16,
    input: u16,
    wrist_camera: u16,
    wrist_input: u16,
    instruction: u16,
    prediction: u16,
    command: u16,
    state: u16,
    status: u16,
}

/// Which camera's channels a frame goes on.
#[derive(Clone, Copy)]
enum CameraChannels {
    Primary,
    Wrist,
}

impl CameraChannels {
    /// (JPEG channel, PNG input channel)
    fn ids(self, channels: &Channels) -> (u16, u16) {
        match self {
            CameraChannels::Primary => (channels.camera, channels.input),
            CameraChannels::Wrist => (channels.wrist_camera, channels.wrist_input),
        }
    }
}

/// One MCAP file of the session.
pub(super) struct SessionFile {
    writer: mcap::Writer<CountingFile>,
    channels: Channels,
    path: PathBuf,
    opened: Instant,
    sequence: u32,
    written: Arc<std::sync::atomic::AtomicU64>,
}

fn session_metadata(session: &SessionInfo) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    let mut put = |key: &str, value: &str| {
        map.insert(key.to_string(), value.to_string());
    };
    put("vla_rt_version", &session.vla_rt_version);
    put("robot_id", &session.robot_id);
    put("rate_hz", &session.rate_hz.to_string());
    put("model_path", &session.model_path);
    put("model_fingerprint", &session.model_fingerprint);
    put("model_name", &session.model_name);
    put("backend", &session.backend);
    put("quantization", &session.quantization);
    put("projector", &session.projector);
    if let Some(key) = &session.unnorm_key {
        put("unnorm_key", key);
    }
    if let Some(path) = &session.quantized_weights {
        put("quantized_weights", path);
    }
    if let Some(scales) = &session.projector_scales {
        put("projector_scales", scales);
    }
    map
}

impl SessionFile {
    pub(super) fn create(
        settings: &RecordSettings,
        session: &SessionInfo,
        index: u64,
        stats: &Arc<RecordStats>,
    ) -> Result<Self, RecordError> {
        let path = rotated_path(&settings.path, index);
        let io_error = |message: String| RecordError::Io {
            path: path.display().to_string(),
            message,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| io_error(format!("cannot create its folder: {e}")))?;
        }
        let file = File::create(&path).map_err(|e| io_error(format!("cannot create: {e}")))?;
        let written = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let out = CountingFile {
            inner: BufWriter::with_capacity(256 << 10, file),
            stats: Arc::clone(stats),
            written: Arc::clone(&written),
            failed: false,
        };
        let mcap_error = |e: mcap::McapError| io_error(e.to_string());
        let mut writer = mcap::WriteOptions::new()
            .compression(Some(mcap::Compression::Lz4))
            .chunk_size(Some(CHUNK_BYTES))
            .profile(PROFILE)
            .library(format!("vla-rt {}", env!("CARGO_PKG_VERSION")))
            .create(out)
            .map_err(mcap_error)?;
        writer
            .write_metadata(&Metadata {
                name: SESSION_METADATA.into(),
                metadata: session_metadata(session),
            })
            .map_err(mcap_error)?;
        let mut config = BTreeMap::new();
        config.insert("config.toml".to_string(), session.config.clone());
        if let Some(calibration) = &session.calibration {
            config.insert("calibration.toml".to_string(), calibration.clone());
        }
        writer
            .write_metadata(&Metadata {
                name: CONFIG_METADATA.into(),
                metadata: config,
            })
            .map_err(mcap_error)?;
        let no_metadata = BTreeMap::new();
        let mut channel = |schema_name: &str, schema: &str, topic: &str| {
            let schema_id = writer.add_schema(schema_name, "jsonschema", schema.as_bytes())?;
            writer.add_channel(schema_id, topic, "json", &no_metadata)
        };
        let channels = (|| -> Result<Channels, mcap::McapError> {
            Ok(Channels {
                camera: channel(
                    "foxglove.CompressedImage",
                    schemas::COMPRESSED_IMAGE,
                    topics::CAMERA_IMAGE,
                )?,
                input: channel(
                    "foxglove.CompressedImage",
                    schemas::COMPRESSED_IMAGE,
                    topics::POLICY_INPUT,
                )?,
                wrist_camera: channel(
                    "foxglove.CompressedImage",
                    schemas::COMPRESSED_IMAGE,
                    topics::WRIST_CAMERA_IMAGE,
                )?,
                wrist_input: channel(
                    "foxglove.CompressedImage",
                    schemas::COMPRESSED_IMAGE,
                    topics::WRIST_POLICY_INPUT,
                )?,
                instruction: channel(
                    "vla_rt.Instruction",
                    schemas::INSTRUCTION,
                    topics::INSTRUCTION,
                )?,
                prediction: channel(
                    "vla_rt.Prediction",
                    &schemas::prediction(),
                    topics::PREDICTION,
                )?,
                command: channel("vla_rt.Command", &schemas::command(), topics::COMMAND)?,
                state: channel("vla_rt.StateChange", schemas::STATE, topics::STATE)?,
                status: channel("vla_rt.Status", schemas::STATUS, topics::STATUS)?,
            })
        })()
        .map_err(mcap_error)?;
        stats.files.fetch_add(1, Ordering::Relaxed);
        stats.set_path(&path);
        Ok(Self {
            writer,
            channels,
            path,
            opened: Instant::now(),
            sequence: 0,
            written,
        })
    }

    fn write(&mut self, channel_id: u16, log_time: u64, data: &[u8]) -> Result<(), String> {
        self.sequence = self.sequence.wrapping_add(1);
        self.writer
            .write_to_known_channel(
                &MessageHeader {
                    channel_id,
                    sequence: self.sequence,
                    log_time,
                    publish_time: log_time,
                },
                data,
            )
            .map_err(|e| format!("{}: {e}", self.path.display()))
    }

    fn flush(&mut self) -> Result<(), String> {
        self.writer
            .flush()
            .map_err(|e| format!("{}: {e}", self.path.display()))
    }

    fn finish(mut self) -> Result<(), String> {
        self.writer
            .finish()
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        let mut out = self.writer.into_inner();
        out.flush()
            .map_err(|e| format!("{}: {e}", self.path.display()))
    }

    fn bytes(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
}

/// The writer thread's state between messages.
struct WriterState<'a> {
    settings: RecordSettings,
    session: SessionInfo,
    queues: &'a Queues,
    file: Option<SessionFile>,
    index: u64,
    last_state: Option<ControlState>,
    last_instruction: Option<String>,
    jpeg: Vec<u8>,
    png: Vec<u8>,
    last_flush: Instant,
}

impl WriterState<'_> {
    fn stats(&self) -> &RecordStats {
        &self.queues.stats
    }

    /// Writes one message, or counts it as dropped when there is no file; a failed write
    /// ends the file.
    fn put(&mut self, channel: impl Fn(&Channels) -> u16, log_time: u64, data: &[u8]) {
        let Some(file) = self.file.as_mut() else {
            self.stats().dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let id = channel(&file.channels);
        match file.write(id, log_time, data) {
            Ok(()) => {
                self.stats().written.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.fail(e),
        }
    }

    fn fail(&mut self, message: String) {
        log::error!("recording stopped: {message}");
        self.stats().dropped.fetch_add(1, Ordering::Relaxed);
        self.stats().set_error(message);
        // Dropping the writer tries to close the file; the counting writer refuses at once.
        self.file = None;
    }

    fn command(&mut self, entry: &CommandEntry) {
        let record = match CommandRecord::decode(&entry.record) {
            Ok(record) => record,
            Err(e) => {
                self.stats().dropped.fetch_add(1, Ordering::Relaxed);
                log::warn!("recording: undecodable command: {e}");
                return;
            }
        };
        let action: serde_json::Map<String, serde_json::Value> = ACTION_NAMES
            .iter()
            .zip(record.action)
            .map(|(name, v)| (name.to_string(), json!(v)))
            .collect();
        let message = json!({
            "seq": record.seq,
            "state": record.state.name(),
            "stop_cause": entry.stop_cause,
            "tick_time_ns": record.tick_time_ns,
            "capture_time_ns": record.capture_time_ns,
            "chunk_step": entry.chunk_step,
            "action": action,
            "record": base64::engine::general_purpose::STANDARD.encode(entry.record),
        });
        self.put(
            |c| c.command,
            record.tick_time_ns,
            message.to_string().as_bytes(),
        );
        if self.last_state != Some(record.state) {
            let change = json!({
                "state": record.state.name(),
                "previous": self.last_state.map(ControlState::name),
                "stop_cause": entry.stop_cause,
                "seq": record.seq,
            });
            self.last_state = Some(record.state);
            self.put(
                |c| c.state,
                record.tick_time_ns,
                change.to_string().as_bytes(),
            );
        }
    }

    fn image_message(&self, bytes: &[u8], format: &str, time_ns: u64, sequence: u64) -> String {
        json!({
            "timestamp": {"sec": time_ns / 1_000_000_000, "nsec": time_ns % 1_000_000_000},
            "frame_id": "camera",
            "data": base64::engine::general_purpose::STANDARD.encode(bytes),
            "format": format,
            "sequence": sequence,
        })
        .to_string()
    }

    /// A frame twice: as a JPEG for viewing and losslessly as a PNG, the policy's input, on
    /// the camera's two channels.
    fn frame(
        &mut self,
        camera: CameraChannels,
        image: &RgbImage,
        capture_time_ns: u64,
        sequence: u64,
    ) {
        self.jpeg.clear();
        let jpeg = image::codecs::jpeg::JpegEncoder::new_with_quality(
            &mut self.jpeg,
            self.settings.jpeg_quality,
        )
        .encode(
            &image.data,
            image.width,
            image.height,
            image::ExtendedColorType::Rgb8,
        );
        match jpeg {
            Ok(()) => {
                let message = self.image_message(&self.jpeg, "jpeg", capture_time_ns, sequence);
                self.put(|c| camera.ids(c).0, capture_time_ns, message.as_bytes());
            }
            Err(e) => {
                self.stats().dropped.fetch_add(1, Ordering::Relaxed);
                log::warn!("recording: JPEG of frame {sequence}: {e}");
            }
        }
        self.png.clear();
        let png = image::codecs::png::PngEncoder::new_with_quality(
            &mut self.png,
            image::codecs::png::CompressionType::Fast,
            image::codecs::png::FilterType::Adaptive,
        )
        .write_image(
            &image.data,
            image.width,
            image.height,
            image::ExtendedColorType::Rgb8,
        );
        match png {
            Ok(()) => {
                let message = self.image_message(&self.png, "png", capture_time_ns, sequence);
                self.put(|c| camera.ids(c).1, capture_time_ns, message.as_bytes());
            }
            Err(e) => {
                self.stats().dropped.fetch_add(1, Ordering::Relaxed);
                log::warn!("recording: PNG of frame {sequence}: {e}");
            }
        }
    }

    fn prediction(&mut self, entry: PredictionEntry) {
        if self.last_instruction.as_deref() != Some(entry.instruction.as_str()) {
            let message = json!({ "text": entry.instruction });
            self.put(
                |c| c.instruction,
                entry.capture_time_ns,
                message.to_string().as_bytes(),
            );
            self.last_instruction = Some(entry.instruction.clone());
        }
        if let Some(image) = &entry.image {
            self.frame(
                CameraChannels::Primary,
                image,
                entry.capture_time_ns,
                entry.frame_sequence,
            );
        }
        if let Some(wrist) = &entry.wrist {
            if let Some(image) = &wrist.image {
                self.frame(
                    CameraChannels::Wrist,
                    image,
                    wrist.capture_time_ns,
                    wrist.frame_sequence,
                );
            }
        }
        let p = &entry.prediction;
        let named = |values: &[f64]| -> serde_json::Map<String, serde_json::Value> {
            ACTION_NAMES
                .iter()
                .zip(values)
                .map(|(name, v)| (name.to_string(), json!(v)))
                .collect()
        };
        let t = &p.timings;
        let message = json!({
            "frame_sequence": entry.frame_sequence,
            "capture_time_ns": entry.capture_time_ns,
            "trigger_tick": entry.trigger_tick,
            "instruction": entry.instruction,
            "tokens": p.tokens,
            "normalized": named(&p.normalized),
            "action": named(&p.action),
            "actions": p.actions,
            "proprio": entry.proprio,
            "wrist_frame": entry.wrist.as_ref().map(|wrist| json!({
                "frame_sequence": wrist.frame_sequence,
                "capture_time_ns": wrist.capture_time_ns,
            })),
            "timings_ms": {
                "preprocess": t.preprocess_ms,
                "vision": t.vision_ms,
                "projector": t.projector_ms,
                "prefill": t.prefill_ms,
                "decode": t.decode_ms,
                "total": t.total_ms,
            },
            "backend": self.session.backend,
            "quantization": self.session.quantization,
            "projector": self.session.projector,
            "model_fingerprint": self.session.model_fingerprint,
        });
        self.put(
            |c| c.prediction,
            entry.done_ns,
            message.to_string().as_bytes(),
        );
        for image in [entry.image, entry.wrist.and_then(|wrist| wrist.image)]
            .into_iter()
            .flatten()
        {
            let _ = self.queues.frame_pool.push(image);
        }
    }

    /// Closes the chunk at least once a second, and starts the next file when this one is
    /// big or old enough.
    fn housekeeping(&mut self) {
        let Some(file) = self.file.as_mut() else {
            return;
        };
        if self.last_flush.elapsed() >= FLUSH_INTERVAL {
            self.last_flush = Instant::now();
            if let Err(e) = file.flush() {
                self.fail(e);
                return;
            }
        }
        let too_big =
            self.settings.max_file_bytes > 0 && file.bytes() >= self.settings.max_file_bytes;
        let too_old = self.settings.max_file_ns > 0
            && file.opened.elapsed().as_nanos() >= u128::from(self.settings.max_file_ns);
        if !(too_big || too_old) {
            return;
        }
        if let Some(file) = self.file.take() {
            if let Err(e) = file.finish() {
                self.fail(e);
                return;
            }
        }
        self.index += 1;
        match SessionFile::create(
            &self.settings,
            &self.session,
            self.index,
            &self.queues.stats,
        ) {
            Ok(file) => {
                log::info!("recording: continuing in {}", file.path.display());
                self.file = Some(file);
                // The new file starts with the state and instruction in effect.
                self.last_state = None;
                self.last_instruction = None;
            }
            Err(e) => self.fail(e.to_string()),
        }
    }
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

pub(super) fn run(
    settings: RecordSettings,
    session: SessionInfo,
    first: SessionFile,
    queues: &Queues,
) {
    let mut state = WriterState {
        settings,
        session,
        queues,
        file: Some(first),
        index: 0,
        last_state: None,
        last_instruction: None,
        jpeg: Vec::new(),
        png: Vec::new(),
        last_flush: Instant::now(),
    };
    loop {
        // Read before draining: once it is set, an empty pass means everything pushed before
        // the stop has been written.
        let stopping = queues.stop.load(Ordering::Acquire);
        let mut handled = 0usize;
        while let Some(entry) = queues.commands.pop() {
            state.command(&entry);
            handled += 1;
        }
        while let Some(entry) = queues.predictions.pop() {
            state.prediction(entry);
            handled += 1;
        }
        while let Some((time_ns, status)) = queues.status.pop() {
            state.put(|c| c.status, time_ns, status.as_bytes());
            handled += 1;
        }
        state.housekeeping();
        queues
            .stats
            .writer_cpu_ns
            .store(thread_cpu_ns(), Ordering::Relaxed);
        if stopping && handled == 0 {
            break;
        }
        if handled == 0 {
            std::thread::park_timeout(IDLE_WAIT);
        }
    }
    if let Some(file) = state.file.take() {
        let path = file.path.clone();
        match file.finish() {
            Ok(()) => log::info!("recording written: {}", path.display()),
            Err(e) => state.fail(e),
        }
    }
    queues
        .stats
        .writer_cpu_ns
        .store(thread_cpu_ns(), Ordering::Relaxed);
}
