//! Reads a recording back. The file is scanned record by record from the start, so that a
//! recording cut off by a crash or a power loss (no summary, no footer, a chunk cut in the
//! middle) reads up to its last complete chunk; the damage is reported, not fatal.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use mcap::records::Record;
use serde::Deserialize;

use super::{topics, RecordError, SessionInfo, CONFIG_METADATA, PROFILE, SESSION_METADATA};
use crate::preprocess::RgbImage;

/// One prediction as recorded, with the frame it was made on.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// When the prediction was done (the message's log time), ns since the Unix epoch.
    pub time_ns: u64,
    pub capture_time_ns: u64,
    pub frame_sequence: u64,
    pub instruction: String,
    pub tokens: Vec<u32>,
    pub normalized: Vec<f64>,
    pub action: Vec<f64>,
    /// The chunk, one row per step (`action` is the first row; recordings made before
    /// chunks hold that one row).
    pub actions: Vec<Vec<f64>>,
    /// The robot's raw state the prediction took, for a checkpoint that takes it.
    pub proprio: Option<Vec<f64>>,
    /// The frame exactly as the policy saw it (PNG), if it was recorded.
    pub input_png: Option<Vec<u8>>,
    /// The wrist camera's frame (capture time, sequence), for a checkpoint that takes two
    /// images.
    pub wrist_frame: Option<(u64, u64)>,
    /// That frame as the policy saw it (PNG), if it was recorded.
    pub wrist_png: Option<Vec<u8>>,
}

impl Step {
    /// Decodes the recorded frame.
    pub fn input_image(&self) -> Option<Result<RgbImage, String>> {
        decode_png(self.input_png.as_ref()?, self.frame_sequence)
    }

    /// Decodes the recorded wrist frame.
    pub fn wrist_image(&self) -> Option<Result<RgbImage, String>> {
        let (_, sequence) = self.wrist_frame?;
        decode_png(self.wrist_png.as_ref()?, sequence)
    }
}

fn decode_png(png: &[u8], sequence: u64) -> Option<Result<RgbImage, String>> {
    Some(
        image::load_from_memory_with_format(png, image::ImageFormat::Png)
            .map(|decoded| {
                let rgb = decoded.into_rgb8();
                RgbImage {
                    width: rgb.width(),
                    height: rgb.height(),
                    data: rgb.into_raw(),
                }
            })
            .map_err(|e| format!("frame {sequence}: {e}")),
    )
}

/// A published command as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedCommand {
    pub seq: u64,
    pub state: String,
    pub stop_cause: String,
    pub tick_time_ns: u64,
    /// The step, within its chunk, an ACT executed (absent in recordings made before chunks).
    pub chunk_step: Option<u32>,
}

/// What a recording file holds.
#[derive(Debug, Clone)]
pub struct Recording {
    pub path: PathBuf,
    pub session: SessionInfo,
    /// Messages per topic.
    pub channel_counts: BTreeMap<String, u64>,
    pub steps: Vec<Step>,
    pub commands: Vec<RecordedCommand>,
    /// (log time, state, stop cause) at every change.
    pub state_changes: Vec<(u64, String, String)>,
    /// Earliest and latest message log time.
    pub time_range_ns: Option<(u64, u64)>,
    /// Set when the file does not end properly (cut off or damaged): what stopped the scan.
    pub damage: Option<String>,
}

#[derive(Deserialize)]
struct ImageMessage {
    data: String,
    #[serde(default)]
    sequence: u64,
    timestamp: Timestamp,
}

#[derive(Deserialize)]
struct Timestamp {
    sec: u64,
    nsec: u64,
}

#[derive(Deserialize)]
struct PredictionMessage {
    frame_sequence: u64,
    capture_time_ns: u64,
    instruction: String,
    tokens: Vec<u32>,
    normalized: BTreeMap<String, f64>,
    action: BTreeMap<String, f64>,
    #[serde(default)]
    actions: Option<Vec<Vec<f64>>>,
    #[serde(default)]
    proprio: Option<Vec<f64>>,
    #[serde(default)]
    wrist_frame: Option<FrameReference>,
}

#[derive(Deserialize)]
struct FrameReference {
    frame_sequence: u64,
    capture_time_ns: u64,
}

#[derive(Deserialize)]
struct CommandMessage {
    seq: u64,
    state: String,
    #[serde(default)]
    stop_cause: String,
    tick_time_ns: u64,
    #[serde(default)]
    chunk_step: Option<u32>,
}

#[derive(Deserialize)]
struct StateMessage {
    state: String,
    #[serde(default)]
    stop_cause: String,
}

fn in_action_order(named: &BTreeMap<String, f64>) -> Vec<f64> {
    super::writer::ACTION_NAMES
        .iter()
        .filter_map(|name| named.get(*name).copied())
        .collect()
}

fn session_from_metadata(map: &BTreeMap<String, String>) -> SessionInfo {
    let text = |key: &str| map.get(key).cloned().unwrap_or_default();
    SessionInfo {
        vla_rt_version: text("vla_rt_version"),
        robot_id: text("robot_id"),
        rate_hz: map
            .get("rate_hz")
            .and_then(|r| r.parse().ok())
            .unwrap_or(0.0),
        model_path: text("model_path"),
        model_fingerprint: text("model_fingerprint"),
        model_name: text("model_name"),
        backend: text("backend"),
        quantization: text("quantization"),
        projector: text("projector"),
        unnorm_key: map.get("unnorm_key").cloned(),
        quantized_weights: map.get("quantized_weights").cloned(),
        projector_scales: map.get("projector_scales").cloned(),
        config: String::new(),
        calibration: None,
    }
}

impl Recording {
    /// Reads `path`. A file that is not MCAP, not ours, or damaged before its first message
    /// is an error; a file cut off later reads up to its last complete chunk, with
    /// [`Recording::damage`] set.
    pub fn read(path: &Path) -> Result<Self, RecordError> {
        let name = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| RecordError::Io {
            path: name.clone(),
            message: format!("cannot read: {e}"),
        })?;
        Self::from_bytes(path, &bytes)
    }

    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Self, RecordError> {
        let name = path.display().to_string();
        if bytes.len() < mcap::MAGIC.len() || bytes[..mcap::MAGIC.len()] != mcap::MAGIC[..] {
            return Err(RecordError::NotMcap {
                path: name,
                message: "no MCAP magic at the start".into(),
            });
        }
        let damaged = |message: String| RecordError::Damaged {
            path: name.clone(),
            message,
        };
        let records = mcap::read::ChunkFlattener::new_with_options(
            bytes,
            mcap::read::Options::IgnoreEndMagic | mcap::read::Options::ValidateChunkCrcs,
        )
        .map_err(|e| damaged(e.to_string()))?;

        let mut profile: Option<String> = None;
        let mut session: Option<SessionInfo> = None;
        let mut config: Option<BTreeMap<String, String>> = None;
        let mut topics_by_channel: HashMap<u16, String> = HashMap::new();
        let mut channel_counts = BTreeMap::new();
        let mut steps = Vec::new();
        let mut inputs: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
        // A wrist frame may be paired with more than one primary frame: looked up, not taken.
        let mut wrist_inputs: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
        let mut commands = Vec::new();
        let mut state_changes = Vec::new();
        let mut time_range: Option<(u64, u64)> = None;
        let mut damage = None;
        let mut ended = false;

        for record in records {
            let record = match record {
                Ok(record) => record,
                Err(e) => {
                    damage = Some(e.to_string());
                    break;
                }
            };
            match record {
                Record::Header(header) => profile = Some(header.profile),
                Record::Metadata(metadata) if metadata.name == SESSION_METADATA => {
                    session = Some(session_from_metadata(&metadata.metadata));
                }
                Record::Metadata(metadata) if metadata.name == CONFIG_METADATA => {
                    config = Some(metadata.metadata);
                }
                Record::Channel(channel) => {
                    topics_by_channel.insert(channel.id, channel.topic);
                }
                Record::Message { header, data } => {
                    let Some(topic) = topics_by_channel.get(&header.channel_id) else {
                        return Err(damaged(format!(
                            "message on channel {} before its channel record",
                            header.channel_id
                        )));
                    };
                    *channel_counts.entry(topic.clone()).or_insert(0u64) += 1;
                    let t = header.log_time;
                    time_range = Some(match time_range {
                        None => (t, t),
                        Some((a, b)) => (a.min(t), b.max(t)),
                    });
                    let bad = |e: serde_json::Error| {
                        damaged(format!("{topic} message {}: {e}", header.sequence))
                    };
                    match topic.as_str() {
                        topics::POLICY_INPUT | topics::WRIST_POLICY_INPUT => {
                            let m: ImageMessage = serde_json::from_slice(&data).map_err(bad)?;
                            let png = base64::engine::general_purpose::STANDARD
                                .decode(m.data.as_bytes())
                                .map_err(|e| {
                                    damaged(format!("{topic} frame {}: {e}", m.sequence))
                                })?;
                            let capture = m.timestamp.sec * 1_000_000_000 + m.timestamp.nsec;
                            let frames = if topic == topics::POLICY_INPUT {
                                &mut inputs
                            } else {
                                &mut wrist_inputs
                            };
                            frames.insert((capture, m.sequence), png);
                        }
                        topics::PREDICTION => {
                            let m: PredictionMessage =
                                serde_json::from_slice(&data).map_err(bad)?;
                            let action = in_action_order(&m.action);
                            steps.push(Step {
                                time_ns: t,
                                capture_time_ns: m.capture_time_ns,
                                frame_sequence: m.frame_sequence,
                                instruction: m.instruction,
                                tokens: m.tokens,
                                normalized: in_action_order(&m.normalized),
                                actions: m.actions.unwrap_or_else(|| vec![action.clone()]),
                                action,
                                proprio: m.proprio,
                                input_png: None,
                                wrist_frame: m
                                    .wrist_frame
                                    .map(|f| (f.capture_time_ns, f.frame_sequence)),
                                wrist_png: None,
                            });
                        }
                        topics::COMMAND => {
                            let m: CommandMessage = serde_json::from_slice(&data).map_err(bad)?;
                            commands.push(RecordedCommand {
                                seq: m.seq,
                                state: m.state,
                                stop_cause: m.stop_cause,
                                tick_time_ns: m.tick_time_ns,
                                chunk_step: m.chunk_step,
                            });
                        }
                        topics::STATE => {
                            let m: StateMessage = serde_json::from_slice(&data).map_err(bad)?;
                            state_changes.push((t, m.state, m.stop_cause));
                        }
                        _ => {}
                    }
                }
                Record::DataEnd(_) => {
                    ended = true;
                    break;
                }
                _ => {}
            }
        }
        if !ended && damage.is_none() {
            damage = Some("the file ends before its data-end record (cut off)".into());
        }
        if profile.as_deref() != Some(PROFILE) {
            return Err(RecordError::Foreign {
                path: name,
                message: match profile {
                    Some(p) if !p.is_empty() => format!("MCAP profile `{p}`, not `{PROFILE}`"),
                    Some(_) => format!("no MCAP profile, `{PROFILE}` expected"),
                    None => match damage {
                        Some(d) => format!("no MCAP header record ({d})"),
                        None => "no MCAP header record".into(),
                    },
                },
            });
        }
        let Some(mut session) = session else {
            return Err(match damage {
                Some(d) => damaged(format!("cut off before its session metadata ({d})")),
                None => RecordError::Foreign {
                    path: name,
                    message: format!("no `{SESSION_METADATA}` metadata"),
                },
            });
        };
        if let Some(config) = config {
            session.config = config.get("config.toml").cloned().unwrap_or_default();
            session.calibration = config.get("calibration.toml").cloned();
        }
        steps.sort_by_key(|s| (s.time_ns, s.frame_sequence));
        for step in &mut steps {
            step.input_png = inputs.remove(&(step.capture_time_ns, step.frame_sequence));
            step.wrist_png = step
                .wrist_frame
                .and_then(|key| wrist_inputs.get(&key).cloned());
        }
        commands.sort_by_key(|c| c.seq);
        state_changes.sort_by_key(|c| c.0);
        Ok(Self {
            path: path.to_path_buf(),
            session,
            channel_counts,
            steps,
            commands,
            state_changes,
            time_range_ns: time_range,
            damage,
        })
    }
}
