//! The policy half of the calibration: the projector's INT8 activation scales over the
//! captured frames, and the per-stage latency of the policy as the service will run it.

use std::collections::BTreeMap;
use std::path::Path;

use vla_rt::backend::cpu::{collect_projector_scales, CpuPolicy};
use vla_rt::calibration::StageLatency;
use vla_rt::model::quant_scales::ProjectorScales;
use vla_rt::policy::{
    BackendKind, Policy, PolicyError, PolicyOptions, ProjectorFormat, StageTimings,
};
use vla_rt::preprocess::RgbImage;

use crate::progress;
use crate::rate::quantile;

/// Stage names as the calibration file and the status report name them.
pub const STAGES: [&str; 6] = [
    "preprocess",
    "vision",
    "projector",
    "prefill",
    "decode",
    "total",
];

pub struct Measurement {
    pub latency: BTreeMap<String, StageLatency>,
    pub scales: ProjectorScales,
    /// Milliseconds of the first, untimed prediction (caches, page faults, lazy tables).
    pub warm_up_ms: f64,
}

fn stage_ms(timings: &StageTimings, stage: &str) -> f64 {
    match stage {
        "preprocess" => timings.preprocess_ms,
        "vision" => timings.vision_ms,
        "projector" => timings.projector_ms,
        "prefill" => timings.prefill_ms,
        "decode" => timings.decode_ms,
        _ => timings.total_ms,
    }
}

/// Milliseconds rounded to whole microseconds: the clock's noise is far above that.
fn to_microseconds(ms: f64) -> f64 {
    (ms * 1e3).round() / 1e3
}

/// p50 and p99 of every stage over `timings`.
pub fn latency_table(timings: &[StageTimings]) -> BTreeMap<String, StageLatency> {
    STAGES
        .iter()
        .map(|stage| {
            let samples: Vec<f64> = timings.iter().map(|t| stage_ms(t, stage)).collect();
            (
                stage.to_string(),
                StageLatency {
                    p50_ms: to_microseconds(quantile(&samples, 0.5)),
                    p99_ms: to_microseconds(quantile(&samples, 0.99)),
                },
            )
        })
        .collect()
}

/// Collects the projector scales with the f32 projector (each layer then sees the input the
/// f32 model produces), then times the policy configured by `options`, with the scales when
/// its projector is INT8, on every image after one warm-up prediction.
pub fn measure(
    model_dir: &Path,
    options: &PolicyOptions,
    tensorrt: &vla_rt::backend::TensorrtOptions,
    instruction: &str,
    images: &[RgbImage],
) -> Result<Measurement, PolicyError> {
    let scale_options = PolicyOptions {
        projector: ProjectorFormat::F32,
        projector_scales: None,
        ..options.clone()
    };
    let loading = progress::spinner("loading the model");
    let loaded = CpuPolicy::load(model_dir, &scale_options);
    loading.finish_and_clear();
    let mut scale_policy = loaded?;

    let collecting = progress::spinner("collecting projector activation scales");
    let scales = collect_projector_scales(&mut scale_policy, images);
    collecting.finish_and_clear();
    let scales = scales?;

    let mut policy: Box<dyn Policy> = if options.backend == BackendKind::Cpu
        && options.projector == ProjectorFormat::F32
    {
        Box::new(scale_policy)
    } else {
        drop(scale_policy);
        let latency_options = PolicyOptions {
            projector_scales: (options.projector == ProjectorFormat::Int8).then(|| scales.clone()),
            ..options.clone()
        };
        let loading = progress::spinner("loading the model as the service runs it");
        let loaded = vla_rt::backend::load_policy_with(model_dir, &latency_options, tensorrt);
        loading.finish_and_clear();
        loaded?
    };

    let Some(first) = images.first() else {
        return Err(PolicyError::Backend {
            backend: "cpu",
            message: "latency measurement needs at least one frame".into(),
        });
    };
    let warm_up_ms = policy.predict(first, instruction)?.timings.total_ms;
    let bar = progress::bar(images.len() as u64, "measuring policy latency");
    let mut timings = Vec::with_capacity(images.len());
    for image in images {
        timings.push(policy.predict(image, instruction)?.timings);
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(Measurement {
        latency: latency_table(&timings),
        scales,
        warm_up_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stage_gets_its_own_quantiles() {
        let timings: Vec<StageTimings> = (1..=5)
            .map(|i| {
                let i = f64::from(i);
                StageTimings {
                    preprocess_ms: i,
                    vision_ms: 10.0 * i,
                    projector_ms: 2.0,
                    prefill_ms: 3.0 * i,
                    decode_ms: 4.0,
                    total_ms: 100.0 * i,
                }
            })
            .collect();
        let table = latency_table(&timings);
        assert_eq!(table.len(), STAGES.len());
        assert_eq!(table["preprocess"].p50_ms, 3.0);
        assert_eq!(table["vision"].p50_ms, 30.0);
        assert_eq!(table["projector"].p99_ms, 2.0);
        assert_eq!(table["prefill"].p50_ms, 9.0);
        assert_eq!(table["decode"].p50_ms, 4.0);
        // p99 of 100..500: 400 + 0.96 × 100.
        assert!((table["total"].p99_ms - 496.0).abs() < 1e-9);
    }
}
