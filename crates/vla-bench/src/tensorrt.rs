//! `vla-rt bench --backend tensorrt`: the vision path with the encoders as TensorRT engines
//! (each encoder alone, the whole path as replayed, and the whole policy), and the parity
//! mode (`--parity FIXTURE_DIR`): encoder features, projector output and tokens against the
//! CPU backend on every fixture case.
//!
//! Figures are median wall times of queueing the work and waiting for it, after warm-up, as
//! in `bench --backend cuda`, so the two print comparable vision rows.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::policy::{median, PolicyBenchArgs};
use super::BenchError;
use vla_model::backend::cpu::CpuModelRunner;
use vla_model::backend::cuda::device::Lane;
use vla_model::backend::tensorrt::TensorrtModelRunner;
use vla_model::backend::{PixelRunner, TensorrtOptions};
use vla_model::model::config::OpenVlaConfig;
use vla_model::model::openvla::CONFIG_FILE;
use vla_model::policy::{PolicyError, PolicyOptions};

/// Features and projector output within this relative L2 of the CPU backend's (FP16 engines:
/// looser than the f32 export's 1e-5; the CUDA backend's own FP16 path stays under 1.2e-3).
const FEATURE_TOLERANCE: f64 = 2e-2;

fn policy_error(e: PolicyError) -> BenchError {
    BenchError::from(e)
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        num += f64::from(x - y).powi(2);
        den += f64::from(y).powi(2);
    }
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

fn model_dir(args: &PolicyBenchArgs) -> Result<PathBuf, BenchError> {
    if args.random_weights {
        return Err(BenchError::bad_input(
            "--backend tensorrt needs a checkpoint (--model DIR) whose engines were built; \
             --random-weights has none",
        ));
    }
    Ok(args
        .model
        .clone()
        .unwrap_or_else(|| PathBuf::from("engines/openvla-tiny")))
}

/// The checkpoint's first dataset statistics (the tokens do not depend on them).
fn options(dir: &Path) -> Result<PolicyOptions, BenchError> {
    let config = OpenVlaConfig::from_file(&dir.join(CONFIG_FILE))
        .map_err(|e| BenchError::bad_input(e.to_string()))?;
    Ok(PolicyOptions {
        backend: vla_model::policy::BackendKind::Tensorrt,
        unnorm_key: config.norm_stats.keys().next().cloned(),
        ..PolicyOptions::default()
    })
}

fn load(args: &PolicyBenchArgs, dir: &Path) -> Result<TensorrtModelRunner, BenchError> {
    let options = options(dir)?;
    let tensorrt = TensorrtOptions {
        engines: args.engines.clone(),
        library: args.tensorrt_library.clone(),
    };
    TensorrtModelRunner::load(dir, &options, &tensorrt).map_err(policy_error)
}

pub fn run(args: &PolicyBenchArgs) -> Result<(), BenchError> {
    let dir = model_dir(args)?;
    if let Some(fixtures) = &args.parity {
        return parity(args, &dir, fixtures);
    }
    let start = Instant::now();
    let mut runner = load(args, &dir)?;
    let load_s = start.elapsed().as_secs_f64();
    let cuda = |e: vla_model::backend::cuda::CudaError| {
        BenchError::failure(format!("backend tensorrt: {e}"))
    };
    let pixels = vec![0.1f32; runner.pixel_values_len()];
    let inner = runner.inner_mut();
    inner.upload_pixels(&pixels).map_err(cuda)?;
    inner.run_vision().map_err(cuda)?;
    let time = |f: &mut dyn FnMut() -> Result<(), vla_model::backend::cuda::CudaError>| {
        for _ in 0..args.warmup {
            f()?;
        }
        let mut ms = Vec::with_capacity(args.runs);
        for _ in 0..args.runs.max(1) {
            let t = Instant::now();
            f()?;
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        Ok::<f64, vla_model::backend::cuda::CudaError>(median(ms))
    };
    println!(
        "bench --backend tensorrt: checkpoint {}, engines {}, {} on {}, loaded in {load_s:.1} s",
        dir.display(),
        runner.engines_dir().display(),
        runner
            .inner()
            .vision()
            .external_encoders()
            .unwrap_or_default(),
        runner.inner().gpu().name(),
    );
    let count = runner.inner().vision().configs().len();
    for i in 0..count {
        let (gpu, vision) = runner.inner_mut().vision_mut();
        let lane = if i % 2 == 0 { Lane::A } else { Lane::B };
        let ms = time(&mut || {
            vision.encoder(gpu, i)?;
            gpu.sync(lane)
        })
        .map_err(cuda)?;
        println!("  encoder {i} alone (engine, own stream)   {ms:8.3} ms");
    }
    let captured = runner.inner().vision().is_captured();
    let ms = time(&mut || runner.inner_mut().run_vision()).map_err(cuda)?;
    println!(
        "  vision path (both engines, concat, projector; {})   {ms:8.3} ms",
        if captured {
            "CUDA graph"
        } else {
            "queued eagerly: engines not capturable"
        }
    );
    let mut totals = Vec::with_capacity(args.runs);
    for i in 0..args.warmup + args.runs.max(1) {
        let p = runner
            .predict_pixels(&pixels, &args.instruction)
            .map_err(policy_error)?;
        if i >= args.warmup {
            totals.push(p.timings.total_ms);
        }
    }
    println!(
        "  whole policy from pixel_values           {:8.3} ms",
        median(totals)
    );
    Ok(())
}

/// Every fixture case through the TensorRT path and the CPU backend: per-encoder features
/// and the projector output within [`FEATURE_TOLERANCE`], the same tokens.
fn parity(args: &PolicyBenchArgs, dir: &Path, fixtures: &Path) -> Result<(), BenchError> {
    let mut runner = load(args, dir)?;
    let mut cpu = CpuModelRunner::load(dir, &options(dir)?)
        .map_err(|e| BenchError::bad_input(e.to_string()))?;
    let expected_path = fixtures.join("expected.json");
    let text = std::fs::read_to_string(&expected_path)
        .map_err(|e| BenchError::bad_input(format!("{}: {e}", expected_path.display())))?;
    let expected: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| BenchError::bad_input(format!("{}: {e}", expected_path.display())))?;
    let cases = expected["cases"].as_array().cloned().unwrap_or_default();
    let cuda = |e: vla_model::backend::cuda::CudaError| {
        BenchError::failure(format!("backend tensorrt: {e}"))
    };
    let mut failures = 0;
    for case in &cases {
        let name = case["name"].as_str().unwrap_or("?");
        let instruction = case["instruction"].as_str().unwrap_or(&args.instruction);
        let image_path = fixtures.join(name).join("image.png");
        let image = vla_model::preprocess::load_image(&image_path)
            .map_err(|e| BenchError::bad_input(e.to_string()))?;
        let mut preprocessor = vla_model::preprocess::Preprocessor::from_config_file(
            &dir.join(vla_model::backend::PREPROCESSOR_CONFIG_FILE),
        )
        .map_err(|e| BenchError::bad_input(e.to_string()))?;
        let mut pixels = vec![0.0f32; preprocessor.output_len()];
        preprocessor
            .run(&image, &mut pixels)
            .map_err(|e| BenchError::bad_input(e.to_string()))?;
        let trt_features = runner.inner_mut().vision_features(&pixels).map_err(cuda)?;
        let cpu_features = cpu
            .vision_features(&pixels)
            .map_err(|e| BenchError::failure(e.to_string()))?;
        let mut row = format!("{name}:");
        for (i, (t, c)) in trt_features.iter().zip(&cpu_features).enumerate() {
            let e = rel_l2(t, c);
            row += &format!(" encoder {i} rel L2 {e:.2e}");
            if e.is_nan() || e > FEATURE_TOLERANCE {
                failures += 1;
            }
        }
        let trt_proj = runner.inner_mut().projector_output(&pixels).map_err(cuda)?;
        let cpu_proj = cpu
            .projector_output(&pixels)
            .map_err(|e| BenchError::failure(e.to_string()))?;
        let e = rel_l2(&trt_proj, &cpu_proj);
        row += &format!(", projector {e:.2e}");
        if e.is_nan() || e > FEATURE_TOLERANCE {
            failures += 1;
        }
        let trt = runner
            .predict_pixels(&pixels, instruction)
            .map_err(policy_error)?;
        let reference = cpu
            .predict_pixels(&pixels, instruction)
            .map_err(policy_error)?;
        let same = trt.tokens == reference.tokens;
        row += &format!(
            ", tokens {} ({:?} vs CPU {:?})",
            if same { "equal" } else { "DIFFER" },
            trt.tokens,
            reference.tokens
        );
        if !same {
            failures += 1;
        }
        println!("{row}");
    }
    if failures > 0 {
        return Err(BenchError::failure(format!(
            "tensorrt parity: {failures} mismatches over {} cases (features within {FEATURE_TOLERANCE:e}, equal tokens)",
            cases.len()
        )));
    }
    println!("tensorrt parity: {} cases pass", cases.len());
    Ok(())
}
