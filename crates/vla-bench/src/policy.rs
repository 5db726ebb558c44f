//! `vla-rt bench` (no subcommand): per-stage CPU times of the policy (median of N runs after
//! warm-up), for a checkpoint folder or for a model built in memory with random weights of a
//! named shape (`tiny`, `mid`, `openvla-7b`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;

use super::BenchError;
use vla_model::backend::cpu::{CpuModelRunner, PREPROCESSOR_CONFIG_FILE};
use vla_model::backend::oft::OftSpec;
use vla_model::backend::oft_cpu::OftCpuRunner;
use vla_model::model::checkpoint::Checkpoint;
use vla_model::model::config::ActionNormalization;
use vla_model::model::config::{
    DatasetStats, FeaturizerOverrides, OpenVlaConfig, RuntimeModelConfig,
};
use vla_model::model::layout::{openvla_tensors, LlmLayout, TensorKind, VitLayout};
use vla_model::model::oft::{Bounds, L1ActionHead, COMMAND_ACTION_DIM};
use vla_model::model::openvla::{OpenVla, CONFIG_FILE, TOKENIZER_FILE};
use vla_model::model::prompt::PromptTokenizer;
use vla_model::policy::{BackendKind, PolicyOptions, StageTimings, MAX_CHUNK};
use vla_model::preprocess::{Preprocessor, RgbImage};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchShape {
    /// The fixture's dimensions (ViTs 48/40 wide, 4 deep; Llama 64 wide, 2 layers).
    Tiny,
    /// ViT-S-sized encoders (384 wide, 12 deep, 6 heads) and a ~300M Llama (1024 wide,
    /// 24 layers, 16 heads, 4 KV heads).
    Mid,
    /// OpenVLA-7B: ViT-L/14 DINOv2-reg4, SigLIP SO400M/14, Llama-2-7B (about 30 GB in f32).
    #[value(name = "openvla-7b")]
    Openvla7b,
}

#[derive(Debug, clap::Args)]
pub struct PolicyBenchArgs {
    /// Checkpoint folder to time [default: engines/openvla-tiny unless --random-weights].
    #[arg(long, value_name = "DIR", conflicts_with = "random_weights")]
    pub model: Option<PathBuf>,
    /// Build the model in memory with random weights of --shape.
    #[arg(long)]
    pub random_weights: bool,
    #[arg(long, value_enum, default_value = "mid")]
    pub shape: BenchShape,
    /// Timed runs (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Untimed runs first.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Worker threads [default: one per core].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Folder with the tokenizer.json, config.json (norm_stats) and preprocessor_config.json
    /// used with random weights.
    #[arg(long, value_name = "DIR", default_value = "engines/openvla-tiny")]
    pub template: PathBuf,
    #[arg(long, default_value = "pick up the red block and put it in the bowl")]
    pub instruction: String,
    /// Where the policy runs (cpu: f32 reference; cuda: FP16 on the GPU with per-stage
    /// device timings).
    #[arg(long, value_parser = crate::named::<BackendKind>(), default_value = "cpu")]
    pub backend: BackendKind,
    /// With --backend cuda or tensorrt: instead of timing, compare that backend with the CPU backend
    /// on every case of this fixture folder (expected.json) and exit non-zero on a mismatch.
    #[arg(long, value_name = "FIXTURE_DIR")]
    pub parity: Option<PathBuf>,
    /// With --backend tensorrt: the engine folder from engines/build-trt.sh (default:
    /// MODEL/tensorrt).
    #[arg(long, value_name = "DIR")]
    pub engines: Option<PathBuf>,
    /// With --backend tensorrt: the libnvinfer to open (default: libnvinfer.so.10).
    #[arg(long, value_name = "FILE")]
    pub tensorrt_library: Option<PathBuf>,
    /// Also time OpenVLA-OFT's chunk path on the same model (CPU): one bidirectional pass
    /// and a random L1 regression head giving chunks of this many actions, side by side with
    /// the token path.
    #[arg(long, value_name = "STEPS")]
    pub oft_chunk: Option<usize>,
}

/// Dimensions of one random-weight ViT.
#[derive(Debug, Clone, Copy)]
pub(crate) struct VitShape {
    pub(crate) embed: usize,
    pub(crate) depth: usize,
    pub(crate) heads: usize,
    pub(crate) mlp: usize,
    pub(crate) registers: usize,
    pub(crate) dino: bool,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct LlmShape {
    pub(crate) hidden: usize,
    pub(crate) layers: usize,
    pub(crate) heads: usize,
    pub(crate) kv_heads: usize,
    pub(crate) intermediate: usize,
    pub(crate) vocab: usize,
}

pub(crate) fn shape_dims(shape: BenchShape) -> ([VitShape; 2], LlmShape) {
    let dino = |embed, depth, heads, mlp| VitShape {
        embed,
        depth,
        heads,
        mlp,
        registers: 4,
        dino: true,
    };
    let siglip = |embed, depth, heads, mlp| VitShape {
        embed,
        depth,
        heads,
        mlp,
        registers: 0,
        dino: false,
    };
    let llm = |hidden, layers, heads, kv_heads, intermediate| LlmShape {
        hidden,
        layers,
        heads,
        kv_heads,
        intermediate,
        vocab: 32064,
    };
    match shape {
        BenchShape::Tiny => (
            [dino(48, 4, 3, 192), siglip(40, 4, 2, 149)],
            llm(64, 2, 4, 4, 172),
        ),
        BenchShape::Mid => (
            [dino(384, 12, 6, 1536), siglip(384, 12, 6, 1536)],
            llm(1024, 24, 16, 4, 2816),
        ),
        BenchShape::Openvla7b => (
            [dino(1024, 24, 16, 4096), siglip(1152, 27, 16, 4304)],
            llm(4096, 32, 32, 32, 11008),
        ),
    }
}

/// Uniform values in `[-scale, scale)`, filled in parallel from a per-chunk SplitMix64.
fn random_values(len: usize, scale: f32, center: f32, seed: u64) -> Vec<f32> {
    const CHUNK: usize = 1 << 16;
    let mut values = vec![0.0f32; len];
    values
        .par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(i, chunk)| {
            let mut state = seed ^ (i as u64).wrapping_mul(0xA24B_AED4_963E_E407);
            for v in chunk {
                state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 31;
                let unit = (z >> 40) as f32 / (1u64 << 24) as f32;
                *v = center + scale * (2.0 * unit - 1.0);
            }
        });
    values
}

type Tensor = (String, Vec<usize>, Vec<f32>);

/// All tensors of an OpenVLA checkpoint of this shape, with OpenVLA's names and random values.
fn random_checkpoint(vits: &[VitShape; 2], llm: &LlmShape) -> Vec<Tensor> {
    let layouts = vits.map(|v| VitLayout {
        embed: v.embed,
        depth: v.depth,
        mlp: v.mlp,
        patch: 14,
        image_size: 224,
        class_token: v.dino,
        registers: v.registers,
        layer_scale: v.dino,
        final_norm: false,
    });
    let llm = LlmLayout {
        hidden: llm.hidden,
        layers: llm.layers,
        heads: llm.heads,
        kv_heads: llm.kv_heads,
        intermediate: llm.intermediate,
        vocab: llm.vocab,
    };
    let mut seed = 20240613u64;
    openvla_tensors(&layouts, &llm)
        .into_iter()
        .map(|spec| {
            let (center, scale) = match spec.kind {
                TensorKind::Weight { fan_in } => (0.0, 1.7 / (fan_in as f32).sqrt()),
                TensorKind::PatchWeight { .. } => (0.0, 0.1),
                TensorKind::NormWeight => (1.0, 0.05),
                TensorKind::LayerScale => (0.1, 0.05),
                TensorKind::TokenEmbedding => (0.0, 1.0),
                TensorKind::Bias
                | TensorKind::NormBias
                | TensorKind::PositionEmbedding
                | TensorKind::PrefixToken => (0.0, 0.02),
            };
            seed = seed.wrapping_add(1);
            let values = random_values(spec.shape.iter().product(), scale, center, seed);
            (spec.name, spec.shape, values)
        })
        .collect()
}

fn bench_error(e: impl std::fmt::Display) -> BenchError {
    BenchError::bad_input(e.to_string())
}

/// An OpenVLA model of `shape` with random weights, using the template's tokenizer and
/// dataset statistics.
fn random_model(shape: BenchShape, template: &Path) -> Result<(OpenVla, usize), BenchError> {
    let (vits, llm) = shape_dims(shape);
    let tensors = random_checkpoint(&vits, &llm);
    let params = tensors.iter().map(|(_, _, v)| v.len()).sum();
    let ckpt = Checkpoint::from_f32_tensors(tensors).map_err(bench_error)?;
    let config_path = template.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&config_path)
        .map_err(|e| bench_error(format!("{}: cannot read: {e}", config_path.display())))?;
    let mut json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| bench_error(format!("{}: {e}", config_path.display())))?;
    json["text_config"] = serde_json::json!({
        "hidden_size": llm.hidden,
        "intermediate_size": llm.intermediate,
        "num_attention_heads": llm.heads,
        "num_hidden_layers": llm.layers,
        "num_key_value_heads": llm.kv_heads,
        "vocab_size": llm.vocab,
    });
    let config =
        OpenVlaConfig::from_json_str(&json.to_string(), &config_path).map_err(bench_error)?;
    let mut runtime = RuntimeModelConfig::default();
    for (vit, name) in vits.iter().zip(["featurizer", "fused_featurizer"]) {
        runtime.featurizers.insert(
            name.to_string(),
            FeaturizerOverrides {
                num_heads: Some(vit.heads),
            },
        );
    }
    let tokenizer =
        PromptTokenizer::from_file(&template.join(TOKENIZER_FILE)).map_err(bench_error)?;
    let model = OpenVla::from_checkpoint(template, config, &runtime, &ckpt, tokenizer)
        .map_err(bench_error)?;
    Ok((model, params))
}

/// A CPU policy (preprocessing included) of `shape` with random weights, built in memory
/// from the template's tokenizer, statistics and preprocessing; its parameter count.
pub fn random_policy(
    shape: BenchShape,
    template: &Path,
    unnorm_key: Option<&str>,
) -> Result<(vla_model::backend::cpu::CpuPolicy, usize), BenchError> {
    let (model, params) = random_model(shape, template)?;
    let options = PolicyOptions {
        unnorm_key: unnorm_key.map(str::to_string),
        ..PolicyOptions::default()
    };
    let runner = CpuModelRunner::from_model(model, &options).map_err(bench_error)?;
    let policy = vla_model::backend::ImagePolicy::with_checkpoint_preprocessing(runner, template)
        .map_err(bench_error)?;
    Ok((policy, params))
}

/// A camera-sized test image (640 × 480 gradient).
fn test_image() -> RgbImage {
    let (w, h) = (640u32, 480u32);
    let data = (0..w * h)
        .flat_map(|i| {
            let (x, y) = (i % w, i / w);
            [
                (x * 255 / w) as u8,
                (y * 255 / h) as u8,
                ((x + y) % 256) as u8,
            ]
        })
        .collect();
    RgbImage {
        width: w,
        height: h,
        data,
    }
}

pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

pub fn run(args: PolicyBenchArgs) -> Result<(), BenchError> {
    if let Some(steps) = args.oft_chunk {
        check_oft_chunk(steps)?;
    }
    match args.backend {
        BackendKind::Cpu if args.parity.is_some() => {
            return Err(BenchError::bad_input(
                "--parity compares the cuda backend with the cpu one: add --backend cuda",
            ))
        }
        BackendKind::Cpu => {}
        BackendKind::Cuda => return super::cuda::run(&args),
        #[cfg(feature = "tensorrt")]
        BackendKind::Tensorrt => return super::tensorrt::run(&args),
        #[cfg(not(feature = "tensorrt"))]
        BackendKind::Tensorrt => {
            return Err(BenchError::bad_input(
                "--backend tensorrt: this build has no TensorRT support (cargo feature `tensorrt`)",
            ))
        }
    }
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| BenchError::failure(format!("thread pool: {e}")))?;
    pool.install(|| run_in_pool(&args, threads))
}

fn run_in_pool(args: &PolicyBenchArgs, threads: usize) -> Result<(), BenchError> {
    let start = Instant::now();
    let (model, source, template) = if args.random_weights {
        let (model, params) = random_model(args.shape, &args.template)?;
        let label = format!(
            "random weights, shape {:?}, {:.1} M parameters",
            args.shape,
            params as f64 / 1e6
        );
        (model, label, args.template.clone())
    } else {
        let dir = args
            .model
            .clone()
            .unwrap_or_else(|| PathBuf::from("engines/openvla-tiny"));
        let model = OpenVla::load(&dir).map_err(bench_error)?;
        (model, format!("checkpoint {}", dir.display()), dir)
    };
    let load_s = start.elapsed().as_secs_f64();
    let unnorm_key = model.config().norm_stats.keys().next().cloned();
    let options = PolicyOptions {
        unnorm_key,
        ..PolicyOptions::default()
    };
    let describe = describe_model(&model);
    let mut runner = CpuModelRunner::from_model(model, &options).map_err(bench_error)?;
    let prompt_len = runner
        .prompt_ids(&args.instruction)
        .map_err(bench_error)?
        .len();
    let prefill_len = prompt_len + runner.model().num_patches();

    let image = test_image();
    let preprocessor = Preprocessor::from_config_file(&template.join(PREPROCESSOR_CONFIG_FILE));
    let mut preprocessor = match preprocessor {
        Ok(p) if p.output_len() == runner.model().pixel_values_len() => Some(p),
        _ => None,
    };
    let mut pixels = stand_in_pixels(runner.model().pixel_values_len());

    let mut samples: Vec<StageTimings> = Vec::with_capacity(args.runs);
    let mut timed_start = (Instant::now(), process_cpu_seconds());
    for run in 0..args.warmup + args.runs {
        if run == args.warmup {
            timed_start = (Instant::now(), process_cpu_seconds());
        }
        let t = Instant::now();
        let preprocess_ms = match preprocessor.as_mut() {
            Some(p) => {
                if p.run(&image, &mut pixels).is_err() {
                    preprocessor = None;
                }
                t.elapsed().as_secs_f64() * 1e3
            }
            None => 0.0,
        };
        let mut timings = runner
            .predict_pixels(&pixels, &args.instruction)
            .map_err(|e| BenchError::failure(e.to_string()))?
            .timings;
        timings.preprocess_ms = preprocess_ms;
        timings.total_ms = t.elapsed().as_secs_f64() * 1e3;
        if run >= args.warmup {
            samples.push(timings);
        }
    }

    let wall_s = timed_start.0.elapsed().as_secs_f64();
    let cpu_s = process_cpu_seconds() - timed_start.1;
    let action_dim = runner.action_dim();
    let chunk_samples = match args.oft_chunk {
        Some(steps) => {
            let model = if args.random_weights {
                random_model(args.shape, &args.template)?.0
            } else {
                OpenVla::load(&template).map_err(bench_error)?
            };
            Some((steps, time_chunks(model, steps, args, &pixels)?))
        }
        None => None,
    };
    println!("policy benchmark, CPU f32: {source}");
    println!("{describe}");
    println!(
        "{threads} threads, {} timed runs after {} warm-up, prefill {prefill_len} positions, \
         {action_dim} decoded tokens, load/build {load_s:.1} s",
        args.runs, args.warmup
    );
    println!(
        "{:<22} {:>10} {:>10} {:>10}",
        "stage", "median ms", "min ms", "max ms"
    );
    let decode_per_token = |t: &StageTimings| t.decode_ms / (action_dim.max(2) - 1) as f64;
    type Stage = (&'static str, fn(&StageTimings) -> f64);
    let rows: [Stage; 6] = [
        ("preprocess", |t| t.preprocess_ms),
        ("vision (both ViTs)", |t| t.vision_ms),
        ("projector", |t| t.projector_ms),
        ("llm prefill", |t| t.prefill_ms),
        ("llm decode (all)", |t| t.decode_ms),
        ("total", |t| t.total_ms),
    ];
    for (name, get) in rows {
        if name == "preprocess" && preprocessor.is_none() {
            println!("{name:<22} {:>10}", "n/a");
            continue;
        }
        print_row(name, samples.iter().map(get).collect());
    }
    print_row(
        "llm decode per token",
        samples.iter().map(decode_per_token).collect(),
    );
    println!(
        "process CPU time over the timed runs: {cpu_s:.2} s in {wall_s:.2} s wall \
         ({:.2} cores busy on average of {threads})",
        cpu_s / wall_s.max(1e-9)
    );
    if let Some((steps, chunks)) = chunk_samples {
        println!(
            "OpenVLA-OFT chunk path, same model and pixels: one bidirectional pass over {} more \
             positions, random L1 head, {steps} actions per pass",
            steps * action_dim + 1
        );
        let rows: [Stage; 4] = [
            ("vision (both ViTs)", |t| t.vision_ms),
            ("projector", |t| t.projector_ms),
            ("llm pass", |t| t.prefill_ms),
            ("action head", |t| t.decode_ms),
        ];
        for (name, get) in rows {
            print_row(name, chunks.iter().map(get).collect());
        }
        print_row("total", chunks.iter().map(|t| t.total_ms).collect());
        let token_ms = median(
            samples
                .iter()
                .map(|t| t.total_ms - t.preprocess_ms)
                .collect(),
        );
        let chunk_ms = median(chunks.iter().map(|t| t.total_ms).collect());
        println!(
            "actions per second (medians, without preprocessing): token path {:.2}, chunk \
             path {:.2}; one chunk of {steps} takes {:.2}x one token-path action",
            1e3 / token_ms,
            steps as f64 * 1e3 / chunk_ms,
            chunk_ms / token_ms
        );
    }
    Ok(())
}

/// Deterministic stand-in for preprocessed pixels (`len` values in [-1, 1)), for a model
/// without its preprocessing or a device benchmark.
pub(crate) fn stand_in_pixels(len: usize) -> Vec<f32> {
    (0..len).map(|i| ((i % 251) as f32 / 125.0) - 1.0).collect()
}

/// The bounds a benchmark's random L1 head un-normalises with: the q01/q99 action statistics
/// of the first entry of `norm_stats` (of the config in `dir`, named in errors).
pub(crate) fn chunk_bounds(
    norm_stats: &BTreeMap<String, DatasetStats>,
    dir: &Path,
) -> Result<Bounds, BenchError> {
    let stats = norm_stats.values().next().ok_or_else(|| {
        BenchError::bad_input(format!(
            "{}: the config has no dataset statistics for the chunk's bounds",
            dir.join(CONFIG_FILE).display()
        ))
    })?;
    Bounds::pick(
        &stats.action,
        ActionNormalization::BoundsQ99,
        COMMAND_ACTION_DIM,
        "norm_stats.action",
        dir,
    )
    .map_err(bench_error)
}

/// Refuses an `--oft-chunk` outside 1 to the longest chunk the control loop executes
/// ([`MAX_CHUNK`], ARCHITECTURE.md §17), naming the flag.
pub(crate) fn check_oft_chunk(steps: usize) -> Result<(), BenchError> {
    if (1..=MAX_CHUNK).contains(&steps) {
        Ok(())
    } else {
        Err(BenchError::bad_input(format!(
            "--oft-chunk {steps}: a chunk of 1 to {MAX_CHUNK} actions"
        )))
    }
}

/// A random L1 regression head (OpenVLA-OFT's `MLPResNet`, two blocks) reading `llm_dim`-wide
/// hidden states, with its tensor names.
fn random_l1_head(llm_dim: usize, action_dim: usize) -> Result<L1ActionHead, BenchError> {
    let input = llm_dim * action_dim;
    let mut tensors: Vec<Tensor> = Vec::new();
    let mut seed = 0x0f7_u64;
    let mut put = |name: &str, shape: Vec<usize>, scale: f32, center: f32| {
        seed += 1;
        let values = random_values(shape.iter().product(), scale, center, seed);
        tensors.push((format!("model.{name}"), shape, values));
    };
    put("layer_norm1.weight", vec![input], 0.1, 1.0);
    put("layer_norm1.bias", vec![input], 0.1, 0.0);
    put(
        "fc1.weight",
        vec![llm_dim, input],
        1.0 / (input as f32).sqrt(),
        0.0,
    );
    put("fc1.bias", vec![llm_dim], 0.1, 0.0);
    for block in 0..2 {
        let prefix = format!("mlp_resnet_blocks.{block}.ffn");
        put(&format!("{prefix}.0.weight"), vec![llm_dim], 0.1, 1.0);
        put(&format!("{prefix}.0.bias"), vec![llm_dim], 0.1, 0.0);
        put(
            &format!("{prefix}.1.weight"),
            vec![llm_dim, llm_dim],
            1.0 / (llm_dim as f32).sqrt(),
            0.0,
        );
        put(&format!("{prefix}.1.bias"), vec![llm_dim], 0.1, 0.0);
    }
    put("layer_norm2.weight", vec![llm_dim], 0.1, 1.0);
    put("layer_norm2.bias", vec![llm_dim], 0.1, 0.0);
    put(
        "fc2.weight",
        vec![action_dim, llm_dim],
        1.0 / (llm_dim as f32).sqrt(),
        0.0,
    );
    put("fc2.bias", vec![action_dim], 0.1, 0.0);
    let ckpt = Checkpoint::from_f32_tensors(tensors).map_err(bench_error)?;
    L1ActionHead::from_checkpoint(&ckpt, llm_dim, Path::new("random L1 head")).map_err(bench_error)
}

/// The chunk path's stage timings, `args.runs` of them after `args.warmup`, on `pixels`.
fn time_chunks(
    model: OpenVla,
    steps: usize,
    args: &PolicyBenchArgs,
    pixels: &[f32],
) -> Result<Vec<StageTimings>, BenchError> {
    let llm_dim = model.llama().config().hidden_size;
    let head = random_l1_head(llm_dim, COMMAND_ACTION_DIM)?;
    let bounds = chunk_bounds(&model.config().norm_stats, &args.template)?;
    let spec = OftSpec::one_camera(steps, model.num_patches(), bounds);
    let mut runner = OftCpuRunner::from_parts(model, spec, head, None, &PolicyOptions::default())
        .map_err(bench_error)?;
    let mut samples = Vec::with_capacity(args.runs);
    for run in 0..args.warmup + args.runs {
        let pass = runner
            .run_pixels(&[pixels], &args.instruction, None)
            .map_err(|e| BenchError::failure(e.to_string()))?;
        if run >= args.warmup {
            samples.push(pass.timings);
        }
    }
    Ok(samples)
}

/// User + system CPU seconds of this process so far (0 if unavailable).
fn process_cpu_seconds() -> f64 {
    // SAFETY: an all-zero `rusage` is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable `rusage` for the call to fill.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if rc != 0 {
        return 0.0;
    }
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

fn print_row(name: &str, values: Vec<f64>) {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(0.0, f64::max);
    println!(
        "{name:<22} {:>10.2} {min:>10.2} {max:>10.2}",
        median(values)
    );
}

fn describe_model(model: &OpenVla) -> String {
    let vits: Vec<String> = model
        .featurizers()
        .iter()
        .map(|v| {
            let c = v.config();
            format!(
                "ViT {}w x {} ({} run), {} heads, MLP {}",
                c.embed_dim,
                c.depth,
                c.depth - 1,
                c.num_heads,
                c.mlp_hidden
            )
        })
        .collect();
    let l = model.llama().config();
    format!(
        "{}; Llama {}w x {}, {} heads ({} KV), MLP {}, vocab {}",
        vits.join("; "),
        l.hidden_size,
        l.num_layers,
        l.num_heads,
        l.num_kv_heads,
        l.intermediate_size,
        l.vocab_size
    )
}

#[cfg(test)]
mod tests {
    use super::check_oft_chunk;

    #[test]
    fn oft_chunk_lengths_outside_what_the_control_loop_executes_are_refused_naming_the_flag() {
        // 1 to 64, as documented (BENCHMARKS.md, ARCHITECTURE.md §17).
        assert!(check_oft_chunk(1).is_ok());
        assert!(check_oft_chunk(64).is_ok());
        for steps in [0, 65] {
            let err = check_oft_chunk(steps).unwrap_err();
            assert!(err.is_bad_input());
            assert!(err.to_string().contains("--oft-chunk"), "{err}");
        }
    }
}
