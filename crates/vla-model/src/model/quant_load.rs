//! Turning a loaded f32 model into the weight formats a [`PolicyOptions`] asks for: the
//! language model's linear layers to INT8 or INT4 (from a pre-quantized file when one is
//! given, else quantized now), the projector to W8A8 with calibrated activation scales, or to
//! weight-only INT8 when no scales exist.

use super::linear::{Linear, QuantFormat};
use super::openvla::OpenVla;
use super::quant_file::QuantizedFile;
use super::quant_scales::ScaleCollector;
use super::ModelError;
use crate::policy::{PolicyOptions, ProjectorFormat, Quantization};

/// What [`apply_formats`] did, for logs and status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FormatReport {
    /// Language-model layers converted (from the file or at load).
    pub llm_layers: usize,
    /// Of those, layers whose codes are memory-mapped from a pre-quantized file.
    pub mapped_layers: usize,
    /// Projector layers with INT8 activations (W8A8).
    pub projector_w8a8: usize,
    /// Projector layers with INT8 weights only.
    pub projector_int8: usize,
}

fn is_llm_layer(name: &str) -> bool {
    name.starts_with("language_model.")
}

fn is_projector_layer(name: &str) -> bool {
    name.starts_with("projector.")
}

/// Applies `options.quantization`, `options.projector`, `options.quantized_weights` and
/// `options.projector_scales` to `model`. A pre-quantized file must have been made from this
/// checkpoint and hold the requested LLM format; layers it lacks (a tied `lm_head`, say) are
/// quantized at load.
pub fn apply_formats(
    model: &mut OpenVla,
    options: &PolicyOptions,
) -> Result<FormatReport, ModelError> {
    let file = options
        .quantized_weights
        .as_ref()
        .map(|path| QuantizedFile::open_for(path, model.dir(), options.quantization))
        .transpose()?;
    let llm_format = match options.quantization {
        Quantization::None => None,
        Quantization::Int8 => Some(QuantFormat::Int8),
        Quantization::Int4 => Some(QuantFormat::Int4),
    };
    let scales = options.projector_scales.as_ref();
    let mut report = FormatReport::default();
    model.for_each_linear_mut(&mut |name: &str, linear: &mut Linear| {
        if is_llm_layer(name) {
            let Some(format) = llm_format else {
                return Ok(());
            };
            report.llm_layers += 1;
            if let Some(file) = &file {
                if file.apply(name, linear)? {
                    report.mapped_layers += 1;
                    return Ok(());
                }
                log::info!(
                    "{}: no {name}; quantizing it at load",
                    file.path().display()
                );
            }
            return linear.quantize(name, format);
        }
        if is_projector_layer(name) && options.projector == ProjectorFormat::Int8 {
            if let Some(file) = &file {
                if file.projector() == ProjectorFormat::Int8 {
                    file.apply(name, linear)?;
                }
            }
            match scales {
                Some(scales) => {
                    let act_scale =
                        scales
                            .scale_for(name)
                            .ok_or_else(|| ModelError::Quantized {
                                name: name.to_string(),
                                message: "the projector scales hold no activation scale for \
                                          this layer (calibrated for another model?)"
                                    .into(),
                            })?;
                    report.projector_w8a8 += 1;
                    return linear.quantize(name, QuantFormat::W8A8 { act_scale });
                }
                None => {
                    report.projector_int8 += 1;
                    if matches!(linear.weights(), super::linear::LinearWeights::Int8(_)) {
                        return Ok(());
                    }
                    return linear.quantize(name, QuantFormat::Int8);
                }
            }
        }
        Ok(())
    })?;
    Ok(report)
}

/// Runs `pixel_values` (`[6, 224, 224]`, one frame) through the encoders and the projector,
/// recording every projector layer's input into `collector`.
pub fn observe_projector_inputs(
    model: &OpenVla,
    pixel_values: &[f32],
    collector: &mut ScaleCollector,
) -> Result<(), ModelError> {
    let outputs = model.featurizer_outputs(pixel_values)?;
    let fused = model.concat_features(&outputs);
    let mut out = vec![0.0f32; model.num_patches() * model.projector().out_features()];
    model
        .projector()
        .forward_observed(&fused, &mut out, &mut |layer, input| {
            collector.observe(layer, input)
        })?;
    collector.end_frame();
    Ok(())
}
