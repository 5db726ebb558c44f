//! `vla-rt bench --backend cuda --parity FIXTURE_DIR --model DIR`: the CUDA backend against
//! the CPU backend on every fixture case: featurizer outputs and projector output (relative
//! L2 < 2e-3), step-0 logits (max abs < 5e-2) and the generated token ids (identical), each
//! device weight format against the CPU backend in the same format: FP16 against f32, INT8
//! and INT4 against the CPU's INT8 and INT4 (the same codes), and the W8A8 projector (scales
//! calibrated on the CPU over the fixture images) against the CPU's. FP16 and INT8 must pass;
//! INT4, W8A8, each format decoding with the candidate kernels (tensor-core GEMVs, fused
//! RMSNorms, split attention), the vision scores on tensor cores and the timed cuBLASLt
//! GEMMs are reported. Prints one row per case and format; exits 1 when a required check fails.

use std::path::Path;

use super::policy::PolicyBenchArgs;
use super::BenchError;
use vla_model::backend::cpu::{collect_projector_scales, CpuPolicy};
use vla_model::backend::cuda::llama::DecodeKernels;
use vla_model::backend::cuda::policy::CudaModelRunner;
use vla_model::backend::cuda::CudaError;
use vla_model::policy::{Policy, PolicyOptions, ProjectorFormat, Quantization};
use vla_model::preprocess::load_image;

use vla_model::backend::cuda::OftCudaPolicy;
use vla_model::backend::oft_cpu::OftCpuPolicy;
use vla_model::model::oft;
use vla_model::policy::PolicyInputs;

/// One parity pass: a device configuration against the CPU backend in the same format.
struct Pass {
    label: &'static str,
    quantization: Quantization,
    int8_projector: bool,
    /// Whether a miss fails the run (otherwise it is reported).
    required: bool,
    decode: DecodeKernels,
    split_scores: bool,
    tuned_gemms: bool,
}

pub const FEATURE_REL_L2: f64 = 2e-3;
pub const LOGITS_ABS: f64 = 5e-2;

#[derive(Debug, serde::Deserialize)]
struct Expected {
    cases: Vec<Case>,
}

#[derive(Debug, serde::Deserialize)]
struct Case {
    name: String,
    image: String,
    instruction: String,
    unnorm_key: String,
    generated_token_ids: Vec<u32>,
}

/// `‖a − b‖ / ‖b‖` (0 when both are zero).
pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        num += (f64::from(x) - f64::from(y)).powi(2);
        den += f64::from(y).powi(2);
    }
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    if den == 0.0 {
        if num == 0.0 {
            0.0
        } else {
            f64::INFINITY
        }
    } else {
        (num / den).sqrt()
    }
}

pub fn max_abs(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).abs())
        .fold(0.0, f64::max)
}

pub fn run(args: &PolicyBenchArgs, fixtures: &Path) -> Result<(), BenchError> {
    let model = args
        .model
        .clone()
        .unwrap_or_else(|| std::path::PathBuf::from("engines/openvla-tiny"));
    if model.is_dir()
        && oft::find_files(&model)
            .map_err(|e| BenchError::bad_input(e.to_string()))?
            .is_some()
    {
        return run_oft(&model, fixtures);
    }
    let (path, expected): (_, Expected) = read_expected(fixtures)?;
    let Some(first) = expected.cases.first() else {
        return Err(BenchError::bad_input(format!(
            "{}: no cases",
            path.display()
        )));
    };
    let options = |quantization| PolicyOptions {
        unnorm_key: Some(first.unnorm_key.clone()),
        quantization,
        ..PolicyOptions::default()
    };
    let mut images = Vec::with_capacity(expected.cases.len());
    for case in &expected.cases {
        images.push(
            load_image(&fixtures.join(&case.image))
                .map_err(|e| BenchError::bad_input(e.to_string()))?,
        );
    }
    // The W8A8 projector's activation scales, calibrated on the CPU over the fixture images.
    let projector_scales = {
        let mut f32_policy = CpuPolicy::load(&model, &options(Quantization::None))?;
        collect_projector_scales(&mut f32_policy, &images)?
    };
    let mut failures = 0usize;
    println!(
        "parity, cuda vs cpu, {} ({} cases); limits: features/projector rel-L2 < {FEATURE_REL_L2:e}, \
         logits abs < {LOGITS_ABS:e} (fp16), tokens identical",
        model.display(),
        expected.cases.len()
    );
    println!(
        "{:<24} {:>6} {:>10} {:>10} {:>10} {:>10} {:>7} {:>7}  result",
        "case", "fmt", "dino rl2", "siglip rl2", "proj rl2", "logit abs", "tokens", "golden"
    );
    // Each device format against the CPU backend in the same format (same INT8/INT4 codes,
    // same W8A8 projector). FP16 and INT8 must match; INT4 and the W8A8 projector are reported,
    // and so are the benchmark variants: decode with the candidate kernels (`*tc`), the
    // vision scores on tensor cores over f16 halves of q and k (`fp16hl`), and the GEMMs
    // through cuBLASLt with timed algorithms (`fp16lt`).
    let pass = |label, quantization, int8_projector, required| Pass {
        label,
        quantization,
        int8_projector,
        required,
        decode: DecodeKernels::POLICY,
        split_scores: false,
        tuned_gemms: false,
    };
    let passes = [
        pass("fp16", Quantization::None, false, true),
        pass("int8", Quantization::Int8, false, true),
        pass("int4", Quantization::Int4, false, false),
        pass("w8a8p", Quantization::None, true, false),
        Pass {
            decode: DecodeKernels::CANDIDATE,
            ..pass("fp16tc", Quantization::None, false, false)
        },
        Pass {
            decode: DecodeKernels::CANDIDATE,
            ..pass("int8tc", Quantization::Int8, false, false)
        },
        Pass {
            decode: DecodeKernels::CANDIDATE,
            ..pass("int4tc", Quantization::Int4, false, false)
        },
        Pass {
            split_scores: true,
            ..pass("fp16hl", Quantization::None, false, false)
        },
        Pass {
            tuned_gemms: true,
            ..pass("fp16lt", Quantization::None, false, false)
        },
    ];
    for Pass {
        label,
        quantization,
        int8_projector,
        required,
        decode: decode_kernels,
        split_scores,
        tuned_gemms,
    } in passes
    {
        let pass_options = if int8_projector {
            PolicyOptions {
                projector: ProjectorFormat::Int8,
                projector_scales: Some(projector_scales.clone()),
                ..options(quantization)
            }
        } else {
            options(quantization)
        };
        let mut cpu = CpuPolicy::load(&model, &pass_options)?;
        let mut gpu = CudaModelRunner::load(&model, &pass_options).map_err(BenchError::Cuda)?;
        if decode_kernels != DecodeKernels::POLICY {
            let format = gpu.format();
            let (device, llama, _) = gpu.llama_mut();
            let (taken, all) = llama.tensor_core_layers(device, format);
            println!(
                "{label}: decode with{}; tensor-core GEMVs on {taken} of {all} layers, the policy \
                 kernel on the rest",
                decode_kernels.suffix().trim_start_matches(',')
            );
        }
        gpu.llama_mut().1.set_decode_kernels(decode_kernels);
        if split_scores {
            println!("{label}: vision attention scores as FP16 GEMMs over f16 halves of q and k");
        }
        if tuned_gemms {
            println!("{label}: GEMMs through cuBLASLt with timed algorithms");
        }
        if split_scores || tuned_gemms {
            gpu.set_vision_variants(split_scores, tuned_gemms)
                .map_err(|e| BenchError::failure(format!("backend cuda: {e}")))?;
        }
        for (case, image) in expected.cases.iter().zip(&images) {
            let cpu_pred = cpu.predict(image, &case.instruction)?;
            let pixels = cpu.last_pixel_values().to_vec();
            let cpu_features = cpu
                .runner()
                .vision_features(&pixels)
                .map_err(vla_model::policy::PolicyError::from)?;
            let cpu_proj = cpu
                .runner()
                .projector_output(&pixels)
                .map_err(vla_model::policy::PolicyError::from)?;
            let cpu_logits = cpu.runner_mut().step0_logits(&pixels, &case.instruction)?;
            let fail = |e: CudaError| BenchError::failure(format!("backend cuda: {e}"));
            let features = gpu.vision_features(&pixels).map_err(fail)?;
            let proj = gpu.projector_output(&pixels).map_err(fail)?;
            let logits = gpu.step0_logits(&pixels, &case.instruction)?;
            let pred = gpu.predict_pixels(&pixels, &case.instruction)?;
            let feature_rl2: Vec<f64> = features
                .iter()
                .zip(&cpu_features)
                .map(|(a, b)| rel_l2(a, b))
                .collect();
            let proj_rl2 = rel_l2(&proj, &cpu_proj);
            let logit_abs = max_abs(&logits, &cpu_logits);
            let tokens_equal = pred.tokens == cpu_pred.tokens;
            let golden_equal = pred.tokens == case.generated_token_ids;
            let ok = feature_rl2.iter().all(|&r| r < FEATURE_REL_L2)
                && proj_rl2 < FEATURE_REL_L2
                && logit_abs < LOGITS_ABS
                && tokens_equal;
            if !ok && required {
                failures += 1;
            }
            let f = |i: usize| {
                feature_rl2
                    .get(i)
                    .map_or("-".to_string(), |v| format!("{v:.2e}"))
            };
            println!(
                "{:<24} {:>6} {:>10} {:>10} {:>10.2e} {:>10.2e} {:>7} {:>7}  {}",
                case.name,
                label,
                f(0),
                f(1),
                proj_rl2,
                logit_abs,
                if tokens_equal { "same" } else { "DIFFER" },
                if golden_equal { "same" } else { "differ" },
                match (ok, required) {
                    (true, _) => "ok",
                    (false, true) => "FAIL",
                    (false, false) => "differs (reported only)",
                }
            );
            if !tokens_equal {
                println!("    cuda {:?}\n    cpu  {:?}", pred.tokens, cpu_pred.tokens);
            }
        }
    }
    if failures > 0 {
        return Err(BenchError::failure(format!(
            "parity: {failures} case(s) failed"
        )));
    }
    println!("parity: all cases within limits");
    Ok(())
}

/// The fixture folder's `expected.json` and its path (named in errors).
fn read_expected<T: serde::de::DeserializeOwned>(
    fixtures: &Path,
) -> Result<(std::path::PathBuf, T), BenchError> {
    let path = fixtures.join("expected.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| BenchError::bad_input(format!("{}: cannot read: {e}", path.display())))?;
    let expected = serde_json::from_str(&text)
        .map_err(|e| BenchError::bad_input(format!("{}: {e}", path.display())))?;
    Ok((path, expected))
}

/// The chunk's limit against the CPU backend (normalised actions, relative L2 over the whole
/// chunk). The device runs the language model and the head with FP16 inputs and f32
/// accumulation: each rounding is 2⁻¹¹ relative, and the features and projector already
/// stay within 2e-3 of the CPU (FEATURE_REL_L2); through the bidirectional pass and the head's
/// LayerNorms the chunk is expected within a few 1e-3, so 2e-2 leaves a margin of several
/// times that while a wrong row (the head reading the wrong positions, a causal mask, a
/// missing proprio token) moves the chunk by a large part of its norm.
pub const CHUNK_REL_L2: f64 = 2e-2;

#[derive(Debug, serde::Deserialize)]
struct OftExpected {
    cases: Vec<OftCase>,
}

#[derive(Debug, serde::Deserialize)]
struct OftCase {
    name: String,
    instruction: String,
    unnorm_key: String,
    images: Vec<OftImage>,
    proprio_raw: Option<Vec<f64>>,
    vla_rt_model: OftCaseSettings,
    /// OFT's own chunk (normalised), one row per step.
    normalized_actions: Vec<Vec<f64>>,
}

#[derive(Debug, serde::Deserialize)]
struct OftImage {
    image: String,
}

#[derive(Debug, serde::Deserialize)]
struct OftCaseSettings {
    num_actions_chunk: usize,
    num_images_in_input: usize,
    use_proprio: bool,
}

impl OftCaseSettings {
    /// Whether a checkpoint that takes `inputs` was assembled for this case's settings.
    fn fits(&self, inputs: &PolicyInputs) -> bool {
        self.num_actions_chunk == inputs.chunk_len
            && self.num_images_in_input == inputs.images
            && self.use_proprio == inputs.proprio_dim.is_some()
    }
}

/// `‖a − b‖ / ‖b‖` of f64 values (infinite when the lengths differ).
fn rel_l2_f64(a: &[f64], b: &[f64]) -> f64 {
    let a32: Vec<f32> = a.iter().map(|&v| v as f32).collect();
    let b32: Vec<f32> = b.iter().map(|&v| v as f32).collect();
    rel_l2(&a32, &b32)
}

/// `vla-rt bench --backend cuda --parity tests/fixtures/openvla-oft-tiny --model OFT_DIR`:
/// the CUDA chunk path against the CPU's on every case of the fixture the checkpoint in
/// `model` was assembled for (its chunk length, cameras and proprio): image tokens, proprio
/// token and head input (reported), and the normalised chunk from the CPU's pixel values and
/// the chunk in robot units through the policy (relative L2 < CHUNK_REL_L2 each, required).
/// OFT's own chunk (the fixture's) is reported beside.
fn run_oft(model: &Path, fixtures: &Path) -> Result<(), BenchError> {
    let (path, expected): (_, OftExpected) = read_expected(fixtures)?;
    let Some(first) = expected.cases.first() else {
        return Err(BenchError::bad_input(format!(
            "{}: no cases",
            path.display()
        )));
    };
    let options = PolicyOptions {
        unnorm_key: Some(first.unnorm_key.clone()),
        ..PolicyOptions::default()
    };
    let mut cpu = OftCpuPolicy::load(model, &options)?;
    let inputs = cpu.inputs();
    let cases: Vec<&OftCase> = expected
        .cases
        .iter()
        .filter(|c| c.vla_rt_model.fits(&inputs))
        .collect();
    if cases.is_empty() {
        return Err(BenchError::bad_input(format!(
            "{}: no case of {} takes {} camera(s), {} proprio and chunks of {}; assemble the \
             checkpoint for one of them",
            model.display(),
            path.display(),
            inputs.images,
            if inputs.proprio_dim.is_some() {
                "with"
            } else {
                "without"
            },
            inputs.chunk_len
        )));
    }
    let mut gpu = OftCudaPolicy::load(model, &options)?;
    println!(
        "OFT parity, cuda vs cpu, {} ({} of {} cases fit its settings); limit: chunk rel-L2 < \
         {CHUNK_REL_L2:e} (fp16)",
        model.display(),
        cases.len(),
        expected.cases.len()
    );
    println!(
        "{:<26} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}  result",
        "case", "image rl2", "propr rl2", "head rl2", "chunk rl2", "policy rl2", "vs OFT"
    );
    let mut failures = 0usize;
    for case in cases {
        let mut images = Vec::with_capacity(case.images.len());
        for image in &case.images {
            images.push(
                load_image(&fixtures.join(&image.image))
                    .map_err(|e| BenchError::bad_input(e.to_string()))?,
            );
        }
        let refs: Vec<_> = images.iter().collect();
        let proprio = case
            .proprio_raw
            .as_deref()
            .filter(|_| case.vla_rt_model.use_proprio);
        let want = cpu.run(&refs, &case.instruction, proprio)?;
        // The device runs on the CPU's own pixel values, so only the model differs.
        let pixels: Vec<Vec<f32>> = cpu.last_pixel_values().iter().map(|p| p.to_vec()).collect();
        let pixel_refs: Vec<&[f32]> = pixels.iter().map(Vec::as_slice).collect();
        let chunk = gpu
            .runner_mut()
            .run_pixels(&pixel_refs, &case.instruction, proprio)?;
        let stages = gpu
            .runner()
            .read_stages()
            .map_err(|e| BenchError::failure(format!("backend cuda: {e}")))?;
        // And through the policy, preprocessing included.
        let predicted = gpu.predict_with(&refs, &case.instruction, proprio)?;
        let image_rl2 = rel_l2(&stages.image_tokens, &want.image_tokens);
        let proprio_rl2 = match (&stages.proprio_token, &want.proprio_token) {
            (Some(a), Some(b)) => format!("{:.2e}", rel_l2(a, b)),
            _ => "-".into(),
        };
        let head_rl2 = rel_l2(&stages.head_input, &want.head_input);
        let chunk_rl2 = rel_l2_f64(&chunk.normalized.concat(), &want.normalized.concat());
        let actions_rl2 = rel_l2_f64(&predicted.actions.concat(), &want.actions.concat());
        let golden_rl2 = rel_l2_f64(
            &chunk.normalized.concat(),
            &case.normalized_actions.concat(),
        );
        let ok = chunk_rl2 < CHUNK_REL_L2
            && actions_rl2 < CHUNK_REL_L2
            && chunk.actions.len() == inputs.chunk_len;
        if !ok {
            failures += 1;
        }
        println!(
            "{:<26} {image_rl2:>10.2e} {proprio_rl2:>10} {head_rl2:>10.2e} {chunk_rl2:>10.2e} \
             {actions_rl2:>10.2e} {golden_rl2:>10.2e}  {}",
            case.name,
            if ok { "ok" } else { "FAIL" }
        );
    }
    if failures > 0 {
        return Err(BenchError::failure(format!(
            "oft parity: {failures} case(s) failed"
        )));
    }
    println!("oft parity: all cases within limits");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{OftCaseSettings, OftExpected};
    use vla_model::policy::PolicyInputs;

    fn fixture() -> OftExpected {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/openvla-oft-tiny/expected.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    /// Each fixture checkpoint gpu_check.sh assembles is compared on the cases made for its
    /// settings, and a checkpoint made for none of them on none.
    #[test]
    fn oft_parity_runs_the_fixture_cases_of_the_checkpoints_settings() {
        let expected = fixture();
        let names = |inputs: PolicyInputs| -> Vec<String> {
            expected
                .cases
                .iter()
                .filter(|c| c.vla_rt_model.fits(&inputs))
                .map(|c| c.name.clone())
                .collect()
        };
        let inputs = |images, proprio_dim, chunk_len| PolicyInputs {
            images,
            proprio_dim,
            chunk_len,
        };
        assert_eq!(names(inputs(1, None, 8)), ["case0_one_image"]);
        assert_eq!(names(inputs(2, Some(8), 8)), ["case1_two_images_proprio"]);
        assert_eq!(names(inputs(1, Some(8), 8)), ["case2_nonascii"]);
        assert!(names(inputs(1, None, 5)).is_empty());
        for case in &expected.cases {
            let chunk = case.vla_rt_model.num_actions_chunk;
            assert_eq!(case.normalized_actions.len(), chunk, "{}", case.name);
            assert_eq!(case.images.len(), case.vla_rt_model.num_images_in_input);
        }
        let settings = OftCaseSettings {
            num_actions_chunk: 8,
            num_images_in_input: 2,
            use_proprio: true,
        };
        assert!(!settings.fits(&inputs(2, None, 8)));
    }
}
