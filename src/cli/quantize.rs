//! `vla-rt quantize`: writes a pre-quantized weight file for a checkpoint (format in
//! [`crate::model::quant_file`]), which `predict`/`run` memory-map instead of quantizing the
//! f32 weights at every start.

use std::path::PathBuf;

use super::CliError;
use crate::model::quant_file;
use crate::policy::{ProjectorFormat, Quantization};

#[derive(Debug, clap::Args)]
pub struct QuantizeArgs {
    /// Checkpoint folder (config.json and safetensors weights).
    #[arg(long)]
    pub model: PathBuf,
    /// Format of the language model's linear layers.
    #[arg(long, value_parser = super::named::<Quantization>())]
    pub quantization: Quantization,
    /// Format of the projector's weights (INT8 here; activation scales come from calibration).
    #[arg(long, value_parser = super::named::<ProjectorFormat>(), default_value = "f32")]
    pub projector: ProjectorFormat,
    /// Output safetensors file.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn main(args: QuantizeArgs) -> Result<(), CliError> {
    let started = std::time::Instant::now();
    let summary =
        quant_file::write_quantized_file(&args.model, args.quantization, args.projector, &args.out)
            .map_err(|e| {
                if e.is_bad_input() {
                    CliError::bad_input(format!("vla-rt quantize: {e}"))
                } else {
                    CliError::failure(format!("vla-rt quantize: {e}"))
                }
            })?;
    println!(
        "{}: {} layers ({} LLM, {} projector), {:.1} MiB → {:.1} MiB, checkpoint sha256 {}, {:.1} s",
        args.out.display(),
        summary.layers,
        quant_file::quantization_name(args.quantization),
        quant_file::projector_name(args.projector),
        summary.source_bytes as f64 / (1 << 20) as f64,
        summary.quantized_bytes as f64 / (1 << 20) as f64,
        summary.checkpoint_sha256,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
