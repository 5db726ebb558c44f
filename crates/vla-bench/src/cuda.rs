//! `vla-rt bench --backend cuda`: per-stage device times of the policy at real shapes
//! (random weights generated on the device, or a checkpoint), and the parity mode
//! (`--parity`, see [`super::cuda_parity`]).
//!
//! Every figure is the median wall time of queueing the stage and waiting for it (what a
//! caller sees, launch overhead included), after warm-up. Decode steps are reported with the
//! weight bytes they read and the resulting GB/s, next to a device-to-device copy measured in
//! the same run (bytes read + written, the usual convention for copy bandwidth).

use std::collections::HashSet;
use std::time::Instant;

use super::policy::{
    chunk_bounds, median, shape_dims, stand_in_pixels, BenchShape, PolicyBenchArgs,
};
use super::BenchError;
use vla_model::backend::cuda::device::{Gpu, Lane};
use vla_model::backend::cuda::llama::DecodeKernels;
use vla_model::backend::cuda::policy::{CudaModelRunner, ModelSpec};
use vla_model::backend::cuda::vision::VisionMode;
use vla_model::backend::cuda::weights::{
    CheckpointWeights, DecodeFormat, GemvVariant, RandomWeights,
};
use vla_model::backend::cuda::{CudaError, OftCudaRunner};
use vla_model::backend::oft::OftSpec;
use vla_model::model::checkpoint::Checkpoint;
use vla_model::model::config::{OpenVlaConfig, RuntimeModelConfig};
use vla_model::model::llama::LlamaConfig;
use vla_model::model::oft::{L1HeadShape, COMMAND_ACTION_DIM};
use vla_model::model::openvla::{CONFIG_FILE, MAX_TEXT_TOKENS, TOKENIZER_FILE};
use vla_model::model::prompt::PromptTokenizer;
use vla_model::model::vit::VitConfig;
use vla_model::policy::PolicyOptions;

fn cuda_error(e: CudaError) -> BenchError {
    BenchError::Cuda(e)
}

pub fn run(args: &PolicyBenchArgs) -> Result<(), BenchError> {
    if let Some(fixtures) = &args.parity {
        return super::cuda_parity::run(args, fixtures);
    }
    // Fail fast, with one line, on a machine without CUDA.
    let gpu = Gpu::open().map_err(cuda_error)?;
    let start = Instant::now();
    let (mut runner, label) = if args.random_weights {
        random_runner(gpu, args.shape, &args.template)?
    } else {
        let dir = args
            .model
            .clone()
            .unwrap_or_else(|| std::path::PathBuf::from("engines/openvla-tiny"));
        let config = OpenVlaConfig::from_file(&dir.join(CONFIG_FILE)).map_err(bad)?;
        let tokenizer = PromptTokenizer::from_file(&dir.join(TOKENIZER_FILE)).map_err(bad)?;
        let runtime = RuntimeModelConfig::from_dir(&dir).map_err(bad)?;
        let ckpt = Checkpoint::open_dir(&dir).map_err(bad)?;
        let spec = ModelSpec::from_checkpoint(&dir, &config, &runtime, &ckpt).map_err(bad)?;
        let mut src = CheckpointWeights {
            ckpt: &ckpt,
            quantized: None,
        };
        let runner = CudaModelRunner::build(
            gpu,
            &mut src,
            &spec,
            &config,
            tokenizer,
            &options(&config),
            false,
        )
        .map_err(cuda_error)?;
        (runner, format!("checkpoint {}", dir.display()))
    };
    let build_s = start.elapsed().as_secs_f64();
    if let Some(steps) = args.oft_chunk {
        let stats_dir = if args.random_weights {
            args.template.clone()
        } else {
            args.model
                .clone()
                .unwrap_or_else(|| std::path::PathBuf::from("engines/openvla-tiny"))
        };
        return oft_chunk_bench(runner, args, &label, &stats_dir, steps);
    }
    bench_runner(&mut runner, args, &label, build_s).map_err(cuda_error)
}

/// `--oft-chunk STEPS` on the CUDA backend: one token-path action (pixel upload, vision
/// graph, prefill, decode graphs, ids back) and one OpenVLA-OFT chunk of `steps` (pixel
/// upload, vision graph, one bidirectional pass, a random L1 head) on the same device model,
/// each the median of `--runs` after `--warmup`. Only these two are timed, so that the
/// comparison fits a short GPU session; the other stages are the benchmark without the flag.
fn oft_chunk_bench(
    mut runner: CudaModelRunner,
    args: &PolicyBenchArgs,
    label: &str,
    stats_dir: &std::path::Path,
    steps: usize,
) -> Result<(), BenchError> {
    let runs = args.runs.max(1);
    let warmup = args.warmup.max(1);
    let pixels = stand_in_pixels(runner.vision().pixels.len());
    let ids = runner.prompt_ids(&args.instruction)?;
    let action_dim = runner.action_dim();
    let token = time(warmup, runs, || {
        whole_action(&mut runner, &pixels, &ids, action_dim, DecodeFormat::F16)
    })
    .map_err(cuda_error)?;

    let config = OpenVlaConfig::from_file(&stats_dir.join(CONFIG_FILE)).map_err(bad)?;
    let bounds = chunk_bounds(&config.norm_stats, stats_dir)?;
    let hidden = runner.llama().config().hidden_size;
    let patches = runner.vision().projector.output().len() / hidden.max(1);
    let spec = OftSpec::one_camera(steps, patches, bounds);
    let positions = spec.layout(ids.len()).len();
    let head = L1HeadShape {
        input: COMMAND_ACTION_DIM * hidden,
        hidden,
        action_dim: COMMAND_ACTION_DIM,
        blocks: 2,
    };
    let mut head_weights = RandomWeights {
        seed: 0x0f7,
        present: HashSet::new(),
    };
    let gpu_name = runner.gpu().name().to_string();
    let arch = runner.gpu().arch();
    let mut oft = OftCudaRunner::from_parts(runner, spec, head, &mut head_weights, None)
        .map_err(cuda_error)?;
    let mut chunks = Vec::with_capacity(runs);
    for run in 0..warmup + runs {
        let chunk = oft.run_pixels(&[&pixels], &args.instruction, None)?;
        if run >= warmup {
            chunks.push(chunk.timings);
        }
    }
    println!("OpenVLA-OFT chunk path, CUDA FP16 on {gpu_name} ({arch}): {label}");
    println!(
        "{runs} timed runs after {warmup} warm-up; token path: prefill {} positions and \
         {action_dim} decoded tokens; chunk path: one bidirectional pass over {positions} \
         positions and a random L1 head (2 blocks), {steps} actions per pass",
        ids.len() + patches
    );
    println!(
        "{:<108} {:>9} {:>9} {:>9}",
        "stage", "median ms", "min ms", "max ms"
    );
    row(
        "token path: whole action, fp16",
        &token,
        "upload + vision graph + prefill + decode graphs + ids back",
    );
    let stage = |get: fn(&vla_model::policy::StageTimings) -> f64| -> Vec<f64> {
        chunks.iter().map(get).collect()
    };
    row(
        &format!("OFT chunk of {steps}: vision"),
        &stage(|t| t.vision_ms),
        "upload + vision graph + copy into the prefix",
    );
    row(
        &format!("OFT chunk of {steps}: bidirectional pass"),
        &stage(|t| t.prefill_ms),
        &format!("{positions} positions, FP16 GEMMs"),
    );
    row(
        &format!("OFT chunk of {steps}: action head"),
        &stage(|t| t.decode_ms),
        "FP16 GEMMs + chunk back",
    );
    let whole = stage(|t| t.total_ms);
    row(&format!("OFT chunk of {steps}: whole chunk"), &whole, "");
    let token_ms = median(token);
    let chunk_ms = median(whole);
    println!(
        "one chunk of {steps} takes {:.2}x one token-path action; actions per second \
         (medians): token path {:.1}, chunk path {:.1}",
        chunk_ms / token_ms.max(1e-9),
        1e3 / token_ms.max(1e-9),
        steps as f64 * 1e3 / chunk_ms.max(1e-9)
    );
    Ok(())
}

fn bad(e: impl std::fmt::Display) -> BenchError {
    BenchError::bad_input(e.to_string())
}

fn options(config: &OpenVlaConfig) -> PolicyOptions {
    PolicyOptions {
        unnorm_key: config.norm_stats.keys().next().cloned(),
        ..PolicyOptions::default()
    }
}

/// The model of `shape` with random weights made on the device; tokenizer and dataset
/// statistics from `template`.
fn random_runner(
    gpu: Gpu,
    shape: BenchShape,
    template: &std::path::Path,
) -> Result<(CudaModelRunner, String), BenchError> {
    let (vits, llm) = shape_dims(shape);
    let config_path = template.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&config_path)
        .map_err(|e| bad(format!("{}: cannot read: {e}", config_path.display())))?;
    let mut json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("{}: {e}", config_path.display())))?;
    json["text_config"] = serde_json::json!({
        "hidden_size": llm.hidden,
        "intermediate_size": llm.intermediate,
        "num_attention_heads": llm.heads,
        "num_hidden_layers": llm.layers,
        "num_key_value_heads": llm.kv_heads,
        "vocab_size": llm.vocab,
    });
    let config = OpenVlaConfig::from_json_str(&json.to_string(), &config_path).map_err(bad)?;
    let tokenizer = PromptTokenizer::from_file(&template.join(TOKENIZER_FILE)).map_err(bad)?;
    let mut present = HashSet::new();
    let mut specs = Vec::new();
    for (vit, name) in vits.iter().zip(["featurizer", "fused_featurizer"]) {
        let prefix = format!("vision_backbone.{name}");
        let cfg = VitConfig {
            embed_dim: vit.embed,
            depth: vit.depth,
            num_heads: vit.heads,
            mlp_hidden: vit.mlp,
            patch_size: 14,
            image_size: 224,
            num_class_tokens: usize::from(vit.dino),
            num_reg_tokens: vit.registers,
            layer_scale: vit.dino,
        };
        if vit.dino {
            present.insert(format!("{prefix}.cls_token"));
            present.insert(format!("{prefix}.reg_token"));
        }
        specs.push((prefix, cfg, false));
    }
    let vision: usize = vits.iter().map(|v| v.embed).sum();
    let spec = ModelSpec {
        vits: specs,
        projector_hidden: 4 * vision,
        llama: LlamaConfig::from_openvla(&config),
        capacity: (1 + 256 + MAX_TEXT_TOKENS).min(config.llm_max_length),
    };
    present.insert("language_model.lm_head.weight".into());
    let mut src = RandomWeights {
        seed: 20240613,
        present,
    };
    let runner = CudaModelRunner::build(
        gpu,
        &mut src,
        &spec,
        &config,
        tokenizer,
        &options(&config),
        false,
    )
    .map_err(cuda_error)?;
    Ok((runner, format!("random weights, shape {shape:?}")))
}

/// Median/min/max of `runs` timed calls of `f` after `warmup` untimed ones, in ms.
fn time(
    warmup: usize,
    runs: usize,
    mut f: impl FnMut() -> Result<(), CudaError>,
) -> Result<Vec<f64>, CudaError> {
    for _ in 0..warmup {
        f()?;
    }
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        f()?;
        samples.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(samples)
}

fn row(name: &str, samples: &[f64], note: &str) {
    let min = samples.iter().copied().fold(f64::INFINITY, f64::min);
    let max = samples.iter().copied().fold(0.0, f64::max);
    println!(
        "{name:<108} {:>9.3} {min:>9.3} {max:>9.3}  {note}",
        median(samples.to_vec())
    );
}

fn bench_runner(
    runner: &mut CudaModelRunner,
    args: &PolicyBenchArgs,
    label: &str,
    build_s: f64,
) -> Result<(), CudaError> {
    let runs = args.runs.max(1);
    let warmup = args.warmup.max(1);
    let pixels = stand_in_pixels(runner.vision().pixels.len());
    let ids = runner
        .prompt_ids(&args.instruction)
        .map_err(|e| CudaError::Shape {
            op: "prompt",
            message: e.to_string(),
        })?;
    let action_dim = runner.action_dim();
    runner.upload_pixels(&pixels)?;
    runner.gpu().sync(Lane::A)?;

    // Quantized copies for the decode rows; the FP16 weights stay for prefill.
    {
        let (gpu, llama, _) = runner.llama_mut();
        llama.quantize(gpu, None, DecodeFormat::Int8, false)?;
        llama.quantize(gpu, None, DecodeFormat::Int4, false)?;
    }
    let gpu_name = runner.gpu().name().to_string();
    println!(
        "policy benchmark, CUDA FP16 on {gpu_name} ({}): {label}",
        runner.gpu().arch()
    );
    println!(
        "{} timed runs after {} warm-up, prefill {} positions, {action_dim} decoded tokens, build {build_s:.1} s",
        runs,
        warmup,
        ids.len() + 256
    );
    println!(
        "{:<108} {:>9} {:>9} {:>9}",
        "stage", "median ms", "min ms", "max ms"
    );

    let sync = |gpu: &Gpu| -> Result<(), CudaError> {
        gpu.sync(Lane::A)?;
        gpu.sync(Lane::B)
    };
    // Profiling one part (bench/gpu_profile.sh): VLA_RT_BENCH_ONLY=vision, language, or gemv
    // (the copy bandwidth and the decode GEMVs alone, every variant).
    let only = std::env::var("VLA_RT_BENCH_ONLY").unwrap_or_default();
    let gemv_only = only == "gemv";
    // Only the variant groups (bench/gpu_check.sh reruns a failed group in a fresh process).
    let variants_only = only == "variants";
    let groups = VariantGroup::selected()?;
    if only != "language" && !gemv_only && !variants_only {
        let (gpu, vision) = runner.vision_mut();
        let dino = time(warmup, runs, || {
            vision.encoder(gpu, 0)?;
            sync(gpu)
        })?;
        row("encoder 0 (DINOv2) alone", &dino, "lane A");
        if vision.vits.len() > 1 {
            let siglip = time(warmup, runs, || {
                vision.encoder(gpu, 1)?;
                sync(gpu)
            })?;
            row("encoder 1 (SigLIP) alone", &siglip, "lane B");
        }
        let one = time(warmup, runs, || {
            vision.encoders(gpu, VisionMode::OneStream)?;
            sync(gpu)
        })?;
        row("both encoders, one stream", &one, "sequential");
        let two = time(warmup, runs, || {
            vision.encoders(gpu, VisionMode::TwoStreams)?;
            sync(gpu)
        })?;
        row("both encoders, two streams", &two, "event join");
        let concat = time(warmup, runs, || {
            vision.concat(gpu)?;
            sync(gpu)
        })?;
        row("concat", &concat, "fused [256, D0+D1] FP16");
        let projector = time(warmup, runs, || {
            vision.projector(gpu)?;
            sync(gpu)
        })?;
        row("projector", &projector, "FP16");
        let eager = time(warmup, runs, || {
            vision.queue(gpu, VisionMode::TwoStreams)?;
            sync(gpu)
        })?;
        row(
            "vision path, no graph",
            &eager,
            "two streams + concat + projector",
        );
        let one_stream_graph = vision.captured(gpu, VisionMode::OneStream)?;
        let one = time(warmup, runs, || {
            one_stream_graph.launch()?;
            sync(gpu)
        })?;
        row(
            "vision path, one-stream CUDA graph",
            &one,
            "both encoders in sequence",
        );
        vision.capture(gpu)?;
        let graph = time(warmup, runs, || {
            vision.replay(gpu)?;
            sync(gpu)
        })?;
        row(
            "vision path, CUDA graph",
            &graph,
            "two streams, one graph launch (the policy's path)",
        );
    }

    if only == "vision" {
        println!("benchmark variants (not the policy's kernels):");
        return vision_variants(runner, warmup, runs, &VISION_VARIANTS);
    }
    // Device copy bandwidth, same run: 1 GiB (256 MiB on small cards) buffer to buffer.
    let copy_bytes = {
        let free = runner
            .gpu()
            .context()
            .mem_get_info()
            .map(|(free, _)| free)
            .unwrap_or(0);
        if free > 8 << 30 {
            1usize << 30
        } else {
            256 << 20
        }
    };
    let copy_gbs = {
        let gpu = runner.gpu();
        let a = gpu.alloc::<u8>(copy_bytes)?;
        let b = gpu.alloc::<u8>(copy_bytes)?;
        let t = time(warmup, runs, || {
            gpu.copy_d2d(Lane::A, b.ptr(), a.ptr(), copy_bytes)?;
            gpu.sync(Lane::A)
        })?;
        let gbs = 2.0 * copy_bytes as f64 / (median(t.clone()) * 1e-3) / 1e9;
        row(
            "device copy (read + write)",
            &t,
            &format!("{gbs:.0} GB/s, {} MiB", copy_bytes >> 20),
        );
        gbs
    };

    let lang = LanguageBench {
        warmup,
        runs,
        copy_gbs,
        ids,
        pixels,
        action_dim,
    };
    if !gemv_only && !variants_only {
        let (gpu, llama, vision) = runner.llama_mut();
        let image_tokens = vision.projector.output();
        let prefill = time(warmup, runs, || {
            llama.prefill(gpu, image_tokens, &lang.ids, DecodeFormat::F16)?;
            gpu.sync(Lane::A)
        })?;
        row(
            "llm prefill",
            &prefill,
            &format!("{} positions, FP16 GEMMs", lang.ids.len() + 256),
        );
    }
    let formats = [DecodeFormat::F16, DecodeFormat::Int8, DecodeFormat::Int4];
    // The policy's kernels first, so that their rows stand even if a benchmark variant
    // fails on this device (a kernel fault ends the process).
    if !variants_only {
        if !gemv_only {
            let mut steps = vec![(DecodeFormat::F16, false, DecodeKernels::POLICY)];
            steps.extend(formats.map(|f| (f, true, DecodeKernels::POLICY)));
            lang.decode_steps(runner, &steps)?;
        }
        lang.gemvs_alone(runner, &formats.map(|f| (f, GemvVariant::Policy)))?;
        if !gemv_only {
            lang.whole_actions(runner, &formats.map(|f| (f, DecodeKernels::POLICY)))?;
        }
    }

    println!("benchmark variants (not the policy's kernels):");
    // Each group runs even when an earlier one failed: an error that leaves the device usable
    // costs only its own rows.
    let mut failed = Vec::new();
    for group in groups {
        if gemv_only && group != VariantGroup::Gemv {
            continue;
        }
        let result = match group {
            VariantGroup::Decode => {
                let steps: Vec<_> = [DecodeKernels::TENSOR_CORE_GEMVS, DecodeKernels::CANDIDATE]
                    .into_iter()
                    .flat_map(|k| formats.map(|f| (f, true, k)))
                    .collect();
                lang.decode_steps(runner, &steps)
            }
            VariantGroup::Gemv => {
                let gemvs: Vec<_> = formats
                    .into_iter()
                    .flat_map(|f| GemvVariant::ALL.map(|v| (f, v)))
                    .filter(|(f, v)| *v != GemvVariant::Policy && v.exists_for(*f))
                    .collect();
                lang.gemvs_alone(runner, &gemvs)
            }
            VariantGroup::Vision if only == "language" => continue,
            VariantGroup::Vision => vision_variants(runner, warmup, runs, &[(true, false)]),
            VariantGroup::Tuned => tuned_variants(runner, &lang, only != "language"),
            VariantGroup::Actions => {
                let actions = runner.set_vision_variants(true, true).and_then(|()| {
                    lang.whole_actions(runner, &formats.map(|f| (f, DecodeKernels::CANDIDATE)))
                });
                let reset = runner.set_vision_variants(false, false);
                actions.and(reset)
            }
        };
        runner
            .llama_mut()
            .1
            .set_decode_kernels(DecodeKernels::POLICY);
        if let Err(e) = result {
            println!("benchmark variant group {} failed: {e}", group.name());
            failed.push(group.name());
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(CudaError::Shape {
            op: "benchmark variants",
            message: format!("groups failed: {}", failed.join(", ")),
        })
    }
}

/// The benchmark variants, in groups that run (and fail) independently, in this order:
/// `VLA_RT_BENCH_VARIANTS=decode,gemv,...` picks some (default: all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VariantGroup {
    /// Decode steps with the tensor-core GEMVs, then also fused RMSNorm + split attention.
    Decode,
    /// The decode GEMVs alone, every variant kernel, checked against the policy kernel.
    Gemv,
    /// The vision path with FP16 hi/lo attention scores.
    Vision,
    /// cuBLASLt GEMMs with timed algorithm choice: vision path and prefill.
    Tuned,
    /// Whole actions with every variant.
    Actions,
}

impl VariantGroup {
    const ALL: [VariantGroup; 5] = [
        VariantGroup::Decode,
        VariantGroup::Gemv,
        VariantGroup::Vision,
        VariantGroup::Tuned,
        VariantGroup::Actions,
    ];

    fn name(self) -> &'static str {
        match self {
            VariantGroup::Decode => "decode",
            VariantGroup::Gemv => "gemv",
            VariantGroup::Vision => "vision",
            VariantGroup::Tuned => "tuned",
            VariantGroup::Actions => "actions",
        }
    }

    /// The groups `VLA_RT_BENCH_VARIANTS` names, in the benchmark's order.
    fn selected() -> Result<Vec<VariantGroup>, CudaError> {
        let list = std::env::var("VLA_RT_BENCH_VARIANTS").unwrap_or_default();
        Self::parse(&list)
    }

    fn parse(list: &str) -> Result<Vec<VariantGroup>, CudaError> {
        if list.trim().is_empty() {
            return Ok(Self::ALL.to_vec());
        }
        let mut wanted = Vec::new();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match Self::ALL.into_iter().find(|g| g.name() == name) {
                Some(group) => wanted.push(group),
                None => {
                    return Err(CudaError::Shape {
                        op: "VLA_RT_BENCH_VARIANTS",
                        message: format!(
                            "unknown variant group `{name}` (known: {})",
                            Self::ALL.map(Self::name).join(", ")
                        ),
                    })
                }
            }
        }
        Ok(Self::ALL
            .into_iter()
            .filter(|g| wanted.contains(g))
            .collect())
    }
}

/// The vision path (unless `vision_rows` is false) and the prefill with every GEMM through
/// cuBLASLt, algorithms timed on the first run of each shape.
fn tuned_variants(
    runner: &mut CudaModelRunner,
    lang: &LanguageBench,
    vision_rows: bool,
) -> Result<(), CudaError> {
    if vision_rows {
        vision_variants(
            runner,
            lang.warmup,
            lang.runs,
            &[(false, true), (true, true)],
        )?;
    }
    runner.gpu().set_tuned_gemms(true)?;
    let (gpu, llama, vision) = runner.llama_mut();
    let image_tokens = vision.projector.output();
    let prefill = time(lang.warmup, lang.runs, || {
        llama.prefill(gpu, image_tokens, &lang.ids, DecodeFormat::F16)?;
        gpu.sync(Lane::A)
    });
    runner.gpu().set_tuned_gemms(false)?;
    row(
        "llm prefill, tuned GEMMs",
        &prefill?,
        &format!(
            "{} positions, FP16 GEMMs through cuBLASLt, algorithms timed on the first run",
            lang.ids.len() + 256
        ),
    );
    Ok(())
}

/// Row-name suffix of a vision configuration: none for the policy's.
fn vision_suffix(split_scores: bool, tuned_gemms: bool) -> &'static str {
    match (split_scores, tuned_gemms) {
        (false, false) => "",
        (true, false) => ", f16 hi/lo scores",
        (false, true) => ", tuned GEMMs",
        (true, true) => ", tuned GEMMs + f16 hi/lo scores",
    }
}

/// Every (hi/lo scores, tuned GEMMs) combination of the vision variants.
const VISION_VARIANTS: [(bool, bool); 3] = [(true, false), (false, true), (true, true)];

/// The encoders alone and the two-stream vision graph with each of `combinations`
/// (hi/lo scores, tuned GEMMs); the policy's vision path again afterwards.
fn vision_variants(
    runner: &mut CudaModelRunner,
    warmup: usize,
    runs: usize,
    combinations: &[(bool, bool)],
) -> Result<(), CudaError> {
    let rows = (|| {
        for &(split, tuned) in combinations {
            runner.set_vision_variants(split, tuned)?;
            let suffix = vision_suffix(split, tuned);
            let (gpu, vision) = runner.vision_mut();
            for i in 0..vision.vits.len() {
                let alone = time(warmup, runs, || {
                    vision.encoder(gpu, i)?;
                    gpu.sync(Lane::A)?;
                    gpu.sync(Lane::B)
                })?;
                row(&format!("encoder {i} alone{suffix}"), &alone, "");
            }
            let graph = vision.captured(gpu, VisionMode::TwoStreams)?;
            let t = time(warmup, runs, || {
                graph.launch()?;
                gpu.sync(Lane::A)
            })?;
            let note = if tuned {
                format!("two streams, {} GEMM shapes tuned", gpu.tuned_shapes())
            } else {
                "two streams, one graph launch".to_string()
            };
            row(&format!("vision path, CUDA graph{suffix}"), &t, &note);
        }
        Ok(())
    })();
    runner.set_vision_variants(false, false)?;
    rows
}

/// One token-path action as the policy runs it: pixel upload, vision graph, prefill,
/// `action_dim - 1` decode graphs in `format`, the ids back.
fn whole_action(
    runner: &mut CudaModelRunner,
    pixels: &[f32],
    ids: &[u32],
    action_dim: usize,
    format: DecodeFormat,
) -> Result<(), CudaError> {
    runner.upload_pixels(pixels)?;
    let (gpu, vision) = runner.vision_mut();
    vision.replay(gpu)?;
    let (gpu, llama, vision) = runner.llama_mut();
    llama.generate(
        gpu,
        vision.projector.output(),
        ids,
        action_dim,
        format,
        true,
    )?;
    Ok(())
}

/// What the language rows of the benchmark share.
struct LanguageBench {
    warmup: usize,
    runs: usize,
    /// Device copy bandwidth of this run, GB/s.
    copy_gbs: f64,
    ids: Vec<u32>,
    pixels: Vec<f32>,
    action_dim: usize,
}

impl LanguageBench {
    /// `bytes` read per median sample (ms) as GB/s and as a share of the copy bandwidth.
    fn bandwidth(&self, bytes: usize, samples: &[f64]) -> String {
        let gbs = bytes as f64 / (median(samples.to_vec()) * 1e-3) / 1e9;
        format!(
            "{gbs:.0} GB/s = {:.0}% of copy",
            100.0 * gbs / self.copy_gbs.max(1e-9)
        )
    }

    /// Decode steps (after a prefill each run) in each (format, CUDA graph, kernels), with
    /// the weight bytes read per second against the copy bandwidth.
    fn decode_steps(
        &self,
        runner: &mut CudaModelRunner,
        steps: &[(DecodeFormat, bool, DecodeKernels)],
    ) -> Result<(), CudaError> {
        let (gpu, llama, vision) = runner.llama_mut();
        let image_tokens = vision.projector.output();
        for &(format, use_graph, kernels) in steps {
            llama.set_decode_kernels(kernels);
            let bytes = llama.decode_weight_bytes(format);
            let mut samples = Vec::new();
            for run in 0..self.warmup + self.runs {
                llama.prefill(gpu, image_tokens, &self.ids, format)?;
                gpu.sync(Lane::A)?;
                for _ in 1..self.action_dim {
                    let t = Instant::now();
                    llama.step(gpu, format, use_graph)?;
                    gpu.sync(Lane::A)?;
                    if run >= self.warmup {
                        samples.push(t.elapsed().as_secs_f64() * 1e3);
                    }
                }
            }
            row(
                &format!(
                    "decode / token, {}{}{}",
                    format.label(),
                    if use_graph { ", graph" } else { ", no graph" },
                    kernels.suffix()
                ),
                &samples,
                &format!(
                    "{:.2} GB weights, {}",
                    bytes as f64 / 1e9,
                    self.bandwidth(bytes, &samples)
                ),
            );
        }
        llama.set_decode_kernels(DecodeKernels::POLICY);
        Ok(())
    }

    /// The weight reads of one decode step without its other kernels (norms, RoPE,
    /// attention), per (format, GEMV variant); variants are checked against the policy kernel.
    fn gemvs_alone(
        &self,
        runner: &mut CudaModelRunner,
        rows: &[(DecodeFormat, GemvVariant)],
    ) -> Result<(), CudaError> {
        let (gpu, llama, _) = runner.llama_mut();
        for &(format, variant) in rows {
            let bytes = llama.decode_weight_bytes(format);
            let samples = time(self.warmup, self.runs, || {
                llama.queue_gemvs_only(gpu, format, variant)?;
                gpu.sync(Lane::A)
            })?;
            let taken = if variant == GemvVariant::TensorCore {
                let (taken, all) = llama.tensor_core_layers(gpu, format);
                format!(", {taken} of {all} layers")
            } else {
                String::new()
            };
            let check = if variant == GemvVariant::Policy {
                String::new()
            } else {
                format!(
                    ", max rel. difference to the policy kernel {:.1e}{taken}",
                    llama.gemv_variant_difference(gpu, format, variant)?
                )
            };
            row(
                &format!("decode GEMVs only, {}, {}", format.label(), variant.label()),
                &samples,
                &format!("{}{check}", self.bandwidth(bytes, &samples)),
            );
        }
        Ok(())
    }

    /// Whole actions (pixel upload, vision graph, prefill, decode graphs, ids back) per
    /// (format, decode kernels).
    fn whole_actions(
        &self,
        runner: &mut CudaModelRunner,
        actions: &[(DecodeFormat, DecodeKernels)],
    ) -> Result<(), CudaError> {
        for &(format, kernels) in actions {
            runner.llama_mut().1.set_decode_kernels(kernels);
            let whole = time(self.warmup, self.runs, || {
                whole_action(runner, &self.pixels, &self.ids, self.action_dim, format)
            })?;
            let vision = vision_suffix(
                runner.vision().split_scores(),
                runner.gpu().tuned_shapes() > 0,
            );
            row(
                &format!(
                    "whole action, {}{}{vision}",
                    format.label(),
                    kernels.suffix()
                ),
                &whole,
                "upload + vision graph + prefill + decode graphs + ids back",
            );
        }
        runner
            .llama_mut()
            .1
            .set_decode_kernels(DecodeKernels::POLICY);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::VariantGroup;

    #[test]
    fn variant_groups_run_in_the_benchmarks_order_whatever_order_they_are_named_in() {
        assert_eq!(VariantGroup::parse("").unwrap(), VariantGroup::ALL.to_vec());
        assert_eq!(
            VariantGroup::parse(" tuned, decode ,").unwrap(),
            vec![VariantGroup::Decode, VariantGroup::Tuned]
        );
        let error = VariantGroup::parse("decode,visoin")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("VLA_RT_BENCH_VARIANTS") && error.contains("`visoin`"),
            "{error}"
        );
    }
}
