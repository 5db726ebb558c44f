//! `vla-rt predict`: runs the policy once on an image file, one per camera (ARCHITECTURE.md §6).
//! With `--json` it prints one JSON object (`tokens`, `normalized`, `action`, `actions`: every
//! step of the chunk, `timings_ms`); otherwise a short summary. With `--requests FILE` (JSON lines of `image` and `instruction`) it loads the
//! policy once and prints one such JSON object per request, in request order. Exit code 2
//! names the bad input; 1 is any other failure.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::CliError;
use crate::backend::{load_policy_with, TensorrtOptions};
use crate::model::quant_scales::ProjectorScales;
use crate::policy::{
    BackendKind, Policy, PolicyOptions, Prediction, ProjectorFormat, Quantization,
};
use crate::preprocess::load_image;

#[derive(Debug, clap::Args)]
pub struct PredictArgs {
    /// Checkpoint folder (Hugging Face OpenVLA layout).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// PNG or JPEG image; once per camera for a checkpoint that takes several, in its order
    /// (OpenVLA-OFT: the third-person view, then the wrist cameras).
    #[arg(long, value_name = "FILE", required_unless_present = "requests")]
    pub image: Vec<PathBuf>,
    /// Task description, e.g. "pick up the red block".
    #[arg(long, value_name = "TEXT", required_unless_present = "requests")]
    pub instruction: Option<String>,
    /// Many predictions with one policy load: a file of JSON lines, each
    /// `{"image": PATH, "instruction": TEXT}` (a relative PATH is relative to FILE's folder;
    /// blank lines are skipped). Prints one `--json` object per request, in order.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["image", "instruction"])]
    pub requests: Option<PathBuf>,
    /// The robot's raw state for a checkpoint with a proprio projector (OpenVLA-OFT), comma
    /// separated: normalised and clipped with the checkpoint's proprio statistics.
    #[arg(
        long,
        value_name = "A,B,...",
        allow_hyphen_values = true,
        conflicts_with = "requests"
    )]
    pub proprio: Option<String>,
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
    if let Some(path) = &args.requests {
        // Every line is checked before the policy loads, so a typo on the last line costs
        // nothing.
        let requests = read_requests(path)?;
        let (mut policy, load_ms) = load(&args)?;
        return run_requests(policy.as_mut(), path, &requests, load_ms);
    }
    let (false, Some(instruction)) = (args.image.is_empty(), &args.instruction) else {
        return Err(CliError::bad_input(
            "--image and --instruction are required without --requests",
        ));
    };
    let proprio = args.proprio.as_deref().map(parse_proprio).transpose()?;
    if instruction.trim().is_empty() {
        return Err(CliError::bad_input(
            "--instruction: empty instruction: the policy needs a task description",
        ));
    }
    let (mut policy, load_ms) = load(&args)?;
    let images = args
        .image
        .iter()
        .map(|path| load_image(path).map_err(|e| CliError::bad_input(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let images: Vec<_> = images.iter().collect();
    let prediction = policy.predict_with(&images, instruction, proprio.as_deref())?;
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

/// `--proprio`'s comma-separated numbers.
fn parse_proprio(text: &str) -> Result<Vec<f64>, CliError> {
    text.split(',')
        .map(|field| {
            let value: f64 = field.trim().parse().map_err(|_| {
                CliError::bad_input(format!("--proprio: `{field}` is not a number"))
            })?;
            if value.is_finite() {
                Ok(value)
            } else {
                Err(CliError::bad_input(format!(
                    "--proprio: `{field}` is not finite"
                )))
            }
        })
        .collect()
}

/// The policy as the arguments ask for it, and how long loading took (ms).
fn load(args: &PredictArgs) -> Result<(Box<dyn Policy>, f64), CliError> {
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
        // An OFT checkpoint's settings come from its vla_rt_model.json here.
        oft: Default::default(),
    };
    let start = Instant::now();
    let tensorrt = TensorrtOptions {
        engines: args.engines.clone(),
        library: args.tensorrt_library.clone(),
    };
    let policy = load_policy_with(&args.model, &options, &tensorrt)?;
    Ok((policy, start.elapsed().as_secs_f64() * 1e3))
}

/// One line of a `--requests` file.
#[derive(Debug)]
struct Request {
    line: usize,
    image: PathBuf,
    instruction: String,
}

/// Parses a `--requests` file; any bad line is an error naming the file, the line and the
/// field.
fn read_requests(path: &Path) -> Result<Vec<Request>, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::bad_input(format!("--requests {}: {e}", path.display())))?;
    let folder = path.parent().unwrap_or(Path::new(""));
    let mut requests = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let number = index + 1;
        let bad =
            |what: String| CliError::bad_input(format!("{}:{number}: {what}", path.display()));
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(format!("not JSON: {e}")))?;
        let object = value.as_object().ok_or_else(|| {
            bad(r#"not a JSON object (want {"image": PATH, "instruction": TEXT})"#.into())
        })?;
        if let Some(unknown) = object
            .keys()
            .find(|k| !matches!(k.as_str(), "image" | "instruction"))
        {
            return Err(bad(format!(
                "unknown field `{unknown}` (the fields are `image` and `instruction`)"
            )));
        }
        let text_field = |name: &str| match object.get(name) {
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(bad(format!("`{name}`: want a string, got {other}"))),
            None => Err(bad(format!("missing field `{name}`"))),
        };
        let image = text_field("image")?;
        let instruction = text_field("instruction")?;
        if image.is_empty() {
            return Err(bad("`image`: empty path".into()));
        }
        if instruction.trim().is_empty() {
            return Err(bad(
                "`instruction`: empty instruction: the policy needs a task description".into(),
            ));
        }
        // Relative to the file, so that a folder of images and its request list move together.
        let image = folder.join(image);
        if !image.is_file() {
            return Err(bad(format!("`image`: no such file {}", image.display())));
        }
        requests.push(Request {
            line: number,
            image,
            instruction,
        });
    }
    if requests.is_empty() {
        return Err(CliError::bad_input(format!(
            "--requests {}: no requests (want one JSON object a line)",
            path.display()
        )));
    }
    Ok(requests)
}

fn run_requests(
    policy: &mut dyn Policy,
    path: &Path,
    requests: &[Request],
    load_ms: f64,
) -> Result<(), CliError> {
    let at = |request: &Request, e: CliError| CliError {
        exit_code: e.exit_code,
        message: format!("{}:{}: {}", path.display(), request.line, e.message),
    };
    // A prompt too long for the model is refused before anything is printed.
    for request in requests {
        policy
            .check_instruction(&request.instruction)
            .map_err(|e| at(request, CliError::from(e)))?;
    }
    let mut stdout = std::io::stdout().lock();
    for request in requests {
        let image = load_image(&request.image)
            .map_err(|e| at(request, CliError::bad_input(format!("`image`: {e}"))))?;
        let prediction = policy
            .predict(&image, &request.instruction)
            .map_err(|e| at(request, e.into()))?;
        let json = to_json(
            &prediction,
            load_ms,
            policy.backend_name(),
            policy.model_name(),
        );
        match writeln!(stdout, "{json}").and_then(|()| stdout.flush()) {
            Ok(()) => {}
            // The reader took what it wanted (`| head`): nothing is left to print to.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(CliError::failure(format!("stdout: {e}"))),
        }
    }
    Ok(())
}

fn to_json(p: &Prediction, load_ms: f64, backend: &str, model: &str) -> serde_json::Value {
    let t = &p.timings;
    serde_json::json!({
        "tokens": p.tokens,
        "normalized": p.normalized,
        "action": p.action,
        "actions": p.actions,
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
    if p.actions.len() > 1 {
        for (step, action) in p.actions.iter().enumerate().skip(1) {
            println!("  step {step:<3}  {}", join(action));
        }
    }
    println!(
        "timings ms  preprocess {:.1}, vision {:.1}, projector {:.1}, prefill {:.1}, decode {:.1}, total {:.1} (load {:.0})",
        t.preprocess_ms, t.vision_ms, t.projector_ms, t.prefill_ms, t.decode_ms, t.total_ms, load_ms
    );
}
