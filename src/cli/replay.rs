//! `vla-rt replay FILE.mcap`: runs the policy again on every recorded frame, with the
//! instruction it had, and compares the result with what was recorded: per step the token
//! agreement and NanoLLM's 1 − NRMSE of the action (over the dataset's q01..q99), then a
//! summary; `--plot` draws recorded against replayed actions. With the recording's own
//! settings (same checkpoint, backend and weight formats) every token is the same; with
//! another backend or weight format the report shows where and how far they diverge.

use std::path::{Path, PathBuf};

use super::CliError;
use crate::model::config::OpenVlaConfig;
use crate::model::quant_scales::action_accuracy;
use crate::policy::{BackendKind, NamedVariant, PolicyOptions, ProjectorFormat, Quantization};
use crate::recording::reader::Recording;

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// A recording made with `vla-rt run --record`.
    #[arg(value_name = "FILE.mcap")]
    pub recording: PathBuf,
    /// Checkpoint to replay with (default: the recording's own, which must still be the same).
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Backend (default: the recording's).
    #[arg(long, value_parser = super::named::<BackendKind>())]
    pub backend: Option<BackendKind>,
    /// Language-model weight format (default: the recording's).
    #[arg(long, value_parser = super::named::<Quantization>())]
    pub quantization: Option<Quantization>,
    /// Projector weight format (default: the recording's).
    #[arg(long, value_parser = super::named::<ProjectorFormat>())]
    pub projector: Option<ProjectorFormat>,
    /// Pre-quantized weights written by `vla-rt quantize` for the checkpoint.
    #[arg(long, value_name = "FILE")]
    pub quantized_weights: Option<PathBuf>,
    /// Write a PNG: one panel per action dimension, recorded against replayed over time.
    #[arg(long, value_name = "OUT.png")]
    pub plot: Option<PathBuf>,
    /// Print one JSON document instead of the text report.
    #[arg(long)]
    pub json: bool,
}

/// One replayed step.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StepReport {
    pub step: usize,
    /// Seconds since the first recorded prediction.
    pub time_s: f64,
    pub frame_sequence: u64,
    pub tokens_equal: usize,
    pub recorded_tokens: Vec<u32>,
    pub replayed_tokens: Vec<u32>,
    pub recorded_action: Vec<f64>,
    pub replayed_action: Vec<f64>,
    /// The chunks, one row per step (one row on the token path).
    pub recorded_actions: Vec<Vec<f64>>,
    pub replayed_actions: Vec<Vec<f64>>,
    /// 1 − NRMSE of this step's chunk.
    pub accuracy: f64,
    /// The largest difference between a recorded and a replayed chunk value.
    pub max_abs_difference: f64,
}

/// The whole comparison.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplayReport {
    pub recording: String,
    pub model: String,
    pub backend: String,
    pub quantization: String,
    pub projector: String,
    pub unnorm_key: String,
    pub steps: Vec<StepReport>,
    pub summary: ReplaySummary,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplaySummary {
    pub steps: usize,
    /// Predictions recorded without an input they need (a frame dropped by the recorder,
    /// the robot's state or the wrist frame of a recording made before they were kept): not
    /// replayed.
    pub skipped: usize,
    pub tokens_equal: usize,
    pub tokens: usize,
    pub token_agreement: f64,
    /// NanoLLM's 1 − NRMSE over all steps.
    pub accuracy: f64,
    /// Steps with at least one token different (token path) or any chunk value different.
    pub steps_differing: usize,
    /// The largest difference between a recorded and a replayed chunk value, over all steps.
    pub max_abs_difference: f64,
    /// Why the recording ends early, if it does (cut off or damaged).
    pub damage: Option<String>,
}

fn name<T: serde::Serialize>(value: &T) -> String {
    crate::recording::serde_name(value)
}

fn parse_or<T: NamedVariant>(recorded: &str, what: &str, file: &Path) -> Result<T, CliError> {
    T::from_name(&recorded.to_ascii_lowercase()).ok_or_else(|| {
        CliError::bad_input(format!(
            "{}: recorded {what} `{recorded}` is not known to this build; pass --{what}",
            file.display()
        ))
    })
}

/// The checkpoint to replay with: `--model`, or the recording's own, refused when it has
/// changed since the recording.
fn model_dir(args: &ReplayArgs, recording: &Recording) -> Result<PathBuf, CliError> {
    if let Some(dir) = &args.model {
        if !dir.is_dir() {
            return Err(CliError::bad_input(format!(
                "--model: {}: no such checkpoint folder",
                dir.display()
            )));
        }
        return Ok(dir.clone());
    }
    let session = &recording.session;
    let file = recording.path.display();
    let dir = PathBuf::from(&session.model_path);
    if !dir.is_dir() {
        return Err(CliError::bad_input(format!(
            "{file}: recorded with the checkpoint at {}, which is not here; pass --model DIR",
            dir.display()
        )));
    }
    let fingerprint = crate::model::fingerprint::checkpoint_fingerprint(&dir)
        .map_err(|e| CliError::bad_input(e.to_string()))?;
    if fingerprint != session.model_fingerprint {
        return Err(CliError::bad_input(format!(
            "{file}: recorded with another checkpoint ({}); {} is now {fingerprint}; pass --model DIR to replay with it anyway",
            session.model_fingerprint,
            dir.display()
        )));
    }
    Ok(dir)
}

/// Runs the replay: loads the policy as the recording (or the flags) say and predicts on
/// every recorded frame.
pub fn replay(args: &ReplayArgs, recording: &Recording) -> Result<ReplayReport, CliError> {
    let session = &recording.session;
    let file = &recording.path;
    let dir = model_dir(args, recording)?;
    let backend = match args.backend {
        Some(b) => b,
        None => parse_or(&session.backend, "backend", file)?,
    };
    let quantization = match args.quantization {
        Some(q) => q,
        None => parse_or(&session.quantization, "quantization", file)?,
    };
    let projector = match args.projector {
        Some(p) => p,
        None => parse_or(&session.projector, "projector", file)?,
    };
    // The recording's pre-quantized file and projector scales apply only to its own formats.
    let quantized_weights = match &args.quantized_weights {
        Some(path) => Some(path.clone()),
        None if args.quantization.is_none() && args.model.is_none() => session
            .quantized_weights
            .as_ref()
            .map(PathBuf::from)
            .filter(|p| p.is_file()),
        None => None,
    };
    let projector_scales = match (&session.projector_scales, projector) {
        (Some(json), ProjectorFormat::Int8) => Some(serde_json::from_str(json).map_err(|e| {
            CliError::bad_input(format!(
                "{}: recorded projector scales: {e}",
                file.display()
            ))
        })?),
        _ => None,
    };
    // The OpenVLA-OFT settings the session's `[model]` keys gave, if any (a config this
    // build cannot read gives none: the checkpoint's own file then has to).
    let oft = crate::config::ServiceConfig::from_toml_str(&session.config, "recorded config")
        .map(|config| config.model.policy_options().oft)
        .unwrap_or_default();
    let options = PolicyOptions {
        backend,
        unnorm_key: session.unnorm_key.clone(),
        quantization,
        projector,
        quantized_weights,
        projector_scales,
        oft,
    };
    let config = OpenVlaConfig::from_file(&dir.join("config.json"))
        .map_err(|e| CliError::bad_input(e.to_string()))?;
    // An OpenVLA-OFT checkpoint is un-normalised with its dataset_statistics.json.
    let norm_stats = crate::backend::oft::statistics_if_oft(&dir, &config.norm_stats)
        .map_err(|e| CliError::bad_input(e.to_string()))?
        .unwrap_or(config.norm_stats);
    let key = crate::model::action::resolve_unnorm_key(&norm_stats, session.unnorm_key.as_deref())
        .map_err(|e| CliError::bad_input(e.to_string()))?;
    let stats = &norm_stats[&key].action;
    let mut policy = crate::backend::load_policy(&dir, &options)?;
    let needs = policy.inputs();

    let first_ns = recording.steps.first().map_or(0, |s| s.time_ns);
    let mut steps = Vec::with_capacity(recording.steps.len());
    let mut skipped = 0usize;
    let bad_frame = |e: String| CliError::bad_input(format!("{}: {e}", recording.path.display()));
    for (index, step) in recording.steps.iter().enumerate() {
        let Some(image) = step.input_image() else {
            skipped += 1;
            continue;
        };
        let mut images = vec![image.map_err(bad_frame)?];
        if needs.images > 1 {
            let Some(wrist) = step.wrist_image() else {
                skipped += 1;
                continue;
            };
            images.push(wrist.map_err(bad_frame)?);
        }
        if needs.proprio_dim.is_some() && step.proprio.is_none() {
            skipped += 1;
            continue;
        }
        let image_refs: Vec<&crate::preprocess::RgbImage> = images.iter().collect();
        let prediction =
            policy.predict_with(&image_refs, &step.instruction, step.proprio.as_deref())?;
        let tokens_equal = step
            .tokens
            .iter()
            .zip(&prediction.tokens)
            .filter(|(a, b)| a == b)
            .count();
        let rows = step.actions.len().min(prediction.actions.len());
        let accuracy = action_accuracy(
            &step.actions[..rows],
            &prediction.actions[..rows],
            &stats.q01,
            &stats.q99,
        );
        steps.push(StepReport {
            step: index,
            time_s: step.time_ns.saturating_sub(first_ns) as f64 / 1e9,
            frame_sequence: step.frame_sequence,
            tokens_equal,
            recorded_tokens: step.tokens.clone(),
            replayed_tokens: prediction.tokens,
            recorded_action: step.action.clone(),
            replayed_action: prediction.action,
            max_abs_difference: max_abs_difference(&step.actions, &prediction.actions),
            recorded_actions: step.actions.clone(),
            replayed_actions: prediction.actions,
            accuracy,
        });
    }
    if steps.is_empty() {
        return Err(CliError::bad_input(format!(
            "{}: no prediction with its frame to replay{}",
            recording.path.display(),
            recording
                .damage
                .as_ref()
                .map_or(String::new(), |d| format!(" ({d})"))
        )));
    }
    let (recorded, replayed): (Vec<Vec<f64>>, Vec<Vec<f64>>) = steps
        .iter()
        .flat_map(|s| s.recorded_actions.iter().zip(&s.replayed_actions))
        .map(|(a, b)| (a.clone(), b.clone()))
        .unzip();
    let tokens_equal = steps.iter().map(|s| s.tokens_equal).sum();
    let tokens = steps.iter().map(|s| s.recorded_tokens.len()).sum::<usize>();
    let summary = ReplaySummary {
        steps: steps.len(),
        skipped,
        tokens_equal,
        tokens,
        token_agreement: tokens_equal as f64 / tokens.max(1) as f64,
        accuracy: action_accuracy(&recorded, &replayed, &stats.q01, &stats.q99),
        steps_differing: steps
            .iter()
            .filter(|s| s.tokens_equal != s.recorded_tokens.len() || s.max_abs_difference != 0.0)
            .count(),
        max_abs_difference: steps
            .iter()
            .map(|s| s.max_abs_difference)
            .fold(0.0, f64::max),
        damage: recording.damage.clone(),
    };
    Ok(ReplayReport {
        recording: recording.path.display().to_string(),
        model: dir.display().to_string(),
        backend: name(&backend),
        quantization: name(&quantization),
        projector: name(&projector),
        unnorm_key: key,
        steps,
        summary,
    })
}

/// The largest difference between two chunks' values; infinite when their shapes differ.
fn max_abs_difference(recorded: &[Vec<f64>], replayed: &[Vec<f64>]) -> f64 {
    let same_shape = recorded.len() == replayed.len()
        && recorded
            .iter()
            .zip(replayed)
            .all(|(a, b)| a.len() == b.len());
    if !same_shape {
        return f64::INFINITY;
    }
    recorded
        .iter()
        .zip(replayed)
        .flat_map(|(a, b)| a.iter().zip(b))
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max)
}

fn summary_line(report: &ReplayReport) -> String {
    let s = &report.summary;
    let compared = if s.tokens > 0 {
        format!(
            "tokens {}/{} identical ({:.1} %)",
            s.tokens_equal,
            s.tokens,
            100.0 * s.token_agreement
        )
    } else {
        // The chunk path has no tokens: its continuous actions are compared.
        format!("chunk values at most {:.3e} apart", s.max_abs_difference)
    };
    let mut line = format!(
        "replayed {} steps of {} on {} (LLM {}, projector {}): {compared}, 1 - NRMSE {:.4}, {} steps differ",
        s.steps,
        report.recording,
        report.backend,
        report.quantization,
        report.projector,
        s.accuracy,
        s.steps_differing
    );
    if s.skipped > 0 {
        line.push_str(&format!(
            ", {} without a recorded input (frame, wrist frame or robot state)",
            s.skipped
        ));
    }
    if let Some(damage) = &s.damage {
        line.push_str(&format!("; the recording ends early: {damage}"));
    }
    line
}

fn write_plot(report: &ReplayReport, path: &Path) -> Result<(), CliError> {
    use crate::recording::plot;
    let names = ["DX", "DY", "DZ", "DROLL", "DPITCH", "DYAW", "GRIPPER"];
    let dims = report
        .steps
        .first()
        .map_or(0, |s| s.recorded_action.len())
        .min(names.len());
    let times: Vec<f64> = report.steps.iter().map(|s| s.time_s).collect();
    let recorded: Vec<Vec<f64>> = report
        .steps
        .iter()
        .map(|s| s.recorded_action.clone())
        .collect();
    let replayed: Vec<Vec<f64>> = report
        .steps
        .iter()
        .map(|s| s.replayed_action.clone())
        .collect();
    let mismatch: Vec<Vec<bool>> = report
        .steps
        .iter()
        .map(|s| {
            (0..dims)
                .map(|d| s.recorded_tokens.get(d) != s.replayed_tokens.get(d))
                .collect()
        })
        .collect();
    let file_name = Path::new(&report.recording)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let title = format!(
        "{file_name}: {} LLM {} PROJ {}: TOKENS {:.1}% SAME, 1-NRMSE {:.4}",
        report.backend,
        report.quantization,
        report.projector,
        100.0 * report.summary.token_agreement,
        report.summary.accuracy
    );
    let image = plot::draw(&plot::PlotData {
        title: &title,
        names: &names[..dims],
        times_s: &times,
        recorded: &recorded,
        replayed: &replayed,
        mismatch: &mismatch,
    });
    image
        .save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| CliError::bad_input(format!("--plot: {}: {e}", path.display())))
}

pub fn main(args: ReplayArgs) -> Result<(), CliError> {
    let recording =
        Recording::read(&args.recording).map_err(|e| CliError::bad_input(e.to_string()))?;
    let report = replay(&args, &recording)?;
    if let Some(path) = &args.plot {
        write_plot(&report, path)?;
    }
    if args.json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| CliError::failure(format!("cannot encode the report: {e}")))?;
        println!("{text}");
        return Ok(());
    }
    for s in &report.steps {
        let mut line = format!(
            "step {:>5}  t {:>8.2} s  frame {:>7}  tokens {}/{}  1 - NRMSE {:.4}",
            s.step,
            s.time_s,
            s.frame_sequence,
            s.tokens_equal,
            s.recorded_tokens.len(),
            s.accuracy
        );
        if s.tokens_equal != s.recorded_tokens.len() {
            let differing: Vec<&str> = crate::recording::ACTION_NAMES
                .iter()
                .zip(s.recorded_tokens.iter().zip(&s.replayed_tokens))
                .filter(|(_, (a, b))| a != b)
                .map(|(n, _)| *n)
                .collect();
            line.push_str(&format!("  differ: {}", differing.join(" ")));
        }
        println!("{line}");
    }
    println!("{}", summary_line(&report));
    Ok(())
}
