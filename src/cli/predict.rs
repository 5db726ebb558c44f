//! `vla-rt predict`: runs the policy once on an image file (ARCHITECTURE.md §6). With `--json` it
//! prints one JSON object (`tokens`, `normalized`, `action`, `timings_ms`); otherwise a short
//! summary. Exit code 2 names the bad input; 1 is any other failure.

use std::path::PathBuf;
use std::time::Instant;

use super::CliError;
use crate::backend::{load_policy_with, TensorrtOptions};
use crate::model::quant_scales::ProjectorScales;
use crate::policy::{BackendKind, PolicyOptions, Prediction, ProjectorFormat, Quantization};
use crate::preprocess::load_image;

#[derive(Debug, clap::Args)]
pub struct PredictArgs {
    /// Checkpoint folder (Hugging Face OpenVLA layout).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// PNG or JPEG image.
    #[arg(long, value_name = "FILE")]
    pub image: PathBuf,
    /// Task description, e.g. "pick up the red block".
    #[arg(long, value_name = "TEXT")]
    pub instruction: String,
    /// Dataset statistics for un-normalisation; needed when the checkpoint has several.
    #[arg(long, value_name = "KEY")]
    pub unnorm_key: Option<String>,
    #[arg(long, value_parser = super::named::<BackendKind>(), default_value = "cpu")]
    pub backend: BackendKind,
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    pub json: bool,
    #[arg(long, value_parser = super::named::<Quantization>(), default_value = "none")]
    pub quantization: Quantization,
    #[arg(long, value_parser = super::named::<ProjectorFormat>(), default_value = "f32")]
    pub projector: ProjectorFormat,
    /// Pre-quantized weights written by `vla-rt quantize` for this checkpoint (memory-mapped).
    #[arg(long, value_name = "FILE")]
    pub quantized_weights: Option<PathBuf>,
    /// Projector activation scales (JSON) from calibration: with `--projector int8` the
    /// projector runs W8A8; without them, INT8 weights only.
    #[arg(long, value_name = "FILE")]
    pub projector_scales: Option<PathBuf>,
    /// `--backend tensorrt`: the engine folder from engines/build-trt.sh (default: MODEL/tensorrt).
    #[arg(long, value_name = "DIR")]
    pub engines: Option<PathBuf>,
    /// `--backend tensorrt`: the libnvinfer to open (default: libnvinfer.so.10 from the
    /// loader's path).
    #[arg(long, value_name = "FILE")]
    pub tensorrt_library: Option<PathBuf>,
}

/// Reads a [`ProjectorScales`] JSON file, naming the file on any error.
pub fn read_projector_scales(path: &std::path::Path) -> Result<ProjectorScales, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::bad_input(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| {
        CliError::bad_input(format!(
            "{}: not a projector scales file: {e}",
            path.display()
        ))
    })
}

pub fn main(args: PredictArgs) -> Result<(), CliError> {
    if args.instruction.trim().is_empty() {
        return Err(CliError::bad_input(
            "--instruction: empty instruction: the policy needs a task description",
        ));
    }
    let options = PolicyOptions {
        backend: args.backend,
        unnorm_key: args.unnorm_key.clone(),
        quantization: args.quantization,
        projector: args.projector,
        quantized_weights: args.quantized_weights.clone(),
        projector_scales: args
            .projector_scales
            .as_deref()
            .map(read_projector_scales)
            .transpose()?,
    };
    let start = Instant::now();
    let tensorrt = TensorrtOptions {
        engines: args.engines.clone(),
        library: args.tensorrt_library.clone(),
    };
    let mut policy = load_policy_with(&args.model, &options, &tensorrt)?;
    let load_ms = start.elapsed().as_secs_f64() * 1e3;
    let image = load_image(&args.image).map_err(|e| CliError::bad_input(e.to_string()))?;
    let prediction = policy.predict(&image, &args.instruction)?;
    if args.json {
        println!(
            "{}",
            to_json(
                &prediction,
                load_ms,
                policy.backend_name(),
                policy.model_name()
            )
        );
    } else {
        print_summary(&prediction, load_ms);
    }
    Ok(())
}

fn to_json(p: &Prediction, load_ms: f64, backend: &str, model: &str) -> serde_json::Value {
    let t = &p.timings;
    serde_json::json!({
        "tokens": p.tokens,
        "normalized": p.normalized,
        "action": p.action,
        "timings_ms": {
            "preprocess": t.preprocess_ms,
            "vision": t.vision_ms,
            "projector": t.projector_ms,
            "prefill": t.prefill_ms,
            "decode": t.decode_ms,
            "total": t.total_ms,
        },
        "load_ms": load_ms,
        "backend": backend,
        "model": model,
    })
}

fn print_summary(p: &Prediction, load_ms: f64) {
    let join = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:+.5}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let tokens: Vec<String> = p.tokens.iter().map(u32::to_string).collect();
    let t = &p.timings;
    println!("tokens      {}", tokens.join(" "));
    println!("normalized  {}", join(&p.normalized));
    println!("action      {}", join(&p.action));
    println!(
        "timings ms  preprocess {:.1}, vision {:.1}, projector {:.1}, prefill {:.1}, decode {:.1}, total {:.1} (load {:.0})",
        t.preprocess_ms, t.vision_ms, t.projector_ms, t.prefill_ms, t.decode_ms, t.total_ms, load_ms
    );
}
