//! `vla-rt export-onnx`: the vision encoders as ONNX graphs ([`crate::model::onnx`]), the
//! input of `engines/build-trt.sh`.

use std::path::PathBuf;

use super::CliError;
use crate::model::onnx;

#[derive(Debug, clap::Args)]
pub struct ExportOnnxArgs {
    /// Checkpoint folder (config.json and safetensors weights).
    #[arg(long)]
    pub model: PathBuf,
    /// Output folder for dinov2.onnx, siglip.onnx and manifest.json (created if needed).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn main(args: ExportOnnxArgs) -> Result<(), CliError> {
    let started = std::time::Instant::now();
    let manifest = onnx::export_encoders(&args.model, &args.out).map_err(|e| {
        if e.is_bad_input() {
            CliError::bad_input(format!("vla-rt export-onnx: {e}"))
        } else {
            CliError::failure(format!("vla-rt export-onnx: {e}"))
        }
    })?;
    for e in &manifest.encoders {
        println!(
            "{}: {} {:?} → {} {:?} (opset {}, {})",
            args.out.join(&e.file).display(),
            e.input.name,
            e.input.shape,
            e.output.name,
            e.output.shape,
            manifest.opset,
            e.sha256
        );
    }
    println!(
        "{}: checkpoint {}, {:.1} s",
        args.out.join(onnx::MANIFEST_FILE).display(),
        manifest.checkpoint_fingerprint,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
