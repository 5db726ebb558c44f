//! `vla-rt bench quant`: weight bytes and per-token decode time of each LLM weight format on
//! a random-weight Llama-shaped stack of linear layers, and the projector's time per format.
//!
//! Decode is one token (M = 1) through every linear layer of every block (q, k, v, o, gate,
//! up, down) and `lm_head`, which is what bounds a decode step: attention over a few hundred
//! cached positions and the norms read kilobytes where the linears read the whole model.
//! The projector runs its three layers on 256 image tokens (M = 256).

use std::time::Instant;

use rayon::prelude::*;

use super::BenchError;
use vla_model::model::linear::{Linear, QuantFormat};

#[derive(Debug, clap::Args)]
pub struct QuantBenchArgs {
    /// Hidden size of the Llama stack.
    #[arg(long, default_value_t = 2048)]
    pub hidden: usize,
    /// MLP intermediate size.
    #[arg(long, default_value_t = 5632)]
    pub intermediate: usize,
    /// Number of decoder blocks.
    #[arg(long, default_value_t = 8)]
    pub layers: usize,
    /// Vocabulary size (rows of lm_head).
    #[arg(long, default_value_t = 32064)]
    pub vocab: usize,
    /// Timed decode steps per format (after one warm-up step).
    #[arg(long, default_value_t = 10)]
    pub tokens: usize,
    /// Prefill rows to time per format (0 skips the prefill column).
    #[arg(long, default_value_t = 0)]
    pub prefill: usize,
    /// Projector shape `VISION,HIDDEN,LLM` (fc1 VISION→HIDDEN, fc2 HIDDEN→LLM, fc3 LLM→LLM);
    /// OpenVLA-7B is 2176,8704,4096. Empty skips the projector table.
    #[arg(long, default_value = "2176,8704,4096")]
    pub projector: String,
    /// Image tokens through the projector.
    #[arg(long, default_value_t = 256)]
    pub projector_tokens: usize,
    /// Instead of timing: compare each weight format's actions and tokens with the f32 path
    /// on this checkpoint, over the cases of `--fixtures`.
    #[arg(long, value_name = "DIR")]
    pub model: Option<std::path::PathBuf>,
    /// Fixture folder with `expected.json` (image, instruction, unnorm_key per case).
    #[arg(
        long,
        value_name = "DIR",
        default_value = "tests/fixtures/openvla-tiny"
    )]
    pub fixtures: std::path::PathBuf,
}

/// SplitMix64, for reproducible random weights without a dependency.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Uniform values in `[-amplitude, amplitude)`, filled in parallel from `seed`.
fn random_values(len: usize, amplitude: f32, seed: u64) -> Vec<f32> {
    let mut out = vec![0.0f32; len];
    out.par_chunks_mut(1 << 16)
        .enumerate()
        .for_each(|(chunk, dst)| {
            let mut state = seed ^ ((chunk as u64) << 32);
            for v in dst {
                let unit = (splitmix(&mut state) >> 40) as f32 / (1u64 << 24) as f32;
                *v = (unit * 2.0 - 1.0) * amplitude;
            }
        });
    out
}

fn random_linear(
    name: &str,
    out_features: usize,
    in_features: usize,
    seed: u64,
) -> Result<Linear, BenchError> {
    let amplitude = (3.0 / in_features as f32).sqrt();
    Linear::from_f32(
        name,
        random_values(out_features * in_features, amplitude, seed),
        out_features,
        in_features,
        None,
    )
    .map_err(|e| BenchError::failure(e.to_string()))
}

struct Block {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl Block {
    fn linears_mut(&mut self) -> [(&'static str, &mut Linear); 7] {
        [
            ("q_proj", &mut self.q),
            ("k_proj", &mut self.k),
            ("v_proj", &mut self.v),
            ("o_proj", &mut self.o),
            ("gate_proj", &mut self.gate),
            ("up_proj", &mut self.up),
            ("down_proj", &mut self.down),
        ]
    }
}

struct Stack {
    blocks: Vec<Block>,
    lm_head: Linear,
}

impl Stack {
    fn random(args: &QuantBenchArgs) -> Result<Self, BenchError> {
        let (h, i) = (args.hidden, args.intermediate);
        let mut blocks = Vec::with_capacity(args.layers);
        for l in 0..args.layers {
            let seed = 1000 * l as u64;
            blocks.push(Block {
                q: random_linear("q_proj", h, h, seed + 1)?,
                k: random_linear("k_proj", h, h, seed + 2)?,
                v: random_linear("v_proj", h, h, seed + 3)?,
                o: random_linear("o_proj", h, h, seed + 4)?,
                gate: random_linear("gate_proj", i, h, seed + 5)?,
                up: random_linear("up_proj", i, h, seed + 6)?,
                down: random_linear("down_proj", h, i, seed + 7)?,
            });
        }
        let lm_head = random_linear("lm_head", args.vocab, h, 7)?;
        Ok(Self { blocks, lm_head })
    }

    fn for_each_linear(
        &mut self,
        f: &mut dyn FnMut(&str, &mut Linear) -> Result<(), BenchError>,
    ) -> Result<(), BenchError> {
        for block in &mut self.blocks {
            for (name, linear) in block.linears_mut() {
                f(name, linear)?;
            }
        }
        f("lm_head", &mut self.lm_head)
    }

    fn weight_bytes(&mut self) -> usize {
        let mut total = 0;
        let _ = self.for_each_linear(&mut |_, l| {
            total += l.weight_bytes();
            Ok(())
        });
        total
    }

    /// One pass of `rows` tokens through every linear layer; the residual stream is kept
    /// bounded so that repeated steps do not overflow.
    fn step(&self, x: &mut [f32], scratch: &mut Scratch, rows: usize) -> Result<(), BenchError> {
        let math = |e: vla_model::model::ModelError| BenchError::failure(e.to_string());
        let h = self.lm_head.in_features();
        for block in &self.blocks {
            let hid = &mut scratch.hidden[..rows * h];
            block.q.forward(x, hid).map_err(math)?;
            block.k.forward(x, hid).map_err(math)?;
            block.v.forward(x, hid).map_err(math)?;
            block.o.forward(hid, x).map_err(math)?;
            let i = block.gate.out_features();
            block
                .gate
                .forward(x, &mut scratch.gate[..rows * i])
                .map_err(math)?;
            block
                .up
                .forward(x, &mut scratch.up[..rows * i])
                .map_err(math)?;
            for (g, u) in scratch.gate[..rows * i]
                .iter_mut()
                .zip(&scratch.up[..rows * i])
            {
                *g = (*g / (1.0 + (-*g).exp())) * u;
            }
            block
                .down
                .forward(&scratch.gate[..rows * i], hid)
                .map_err(math)?;
            for (xv, hv) in x.iter_mut().zip(hid.iter()) {
                *xv = (*xv + hv).clamp(-4.0, 4.0);
            }
        }
        let vocab = self.lm_head.out_features();
        self.lm_head
            .forward(x, &mut scratch.logits[..rows * vocab])
            .map_err(math)
    }
}

struct Scratch {
    hidden: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    logits: Vec<f32>,
}

impl Scratch {
    fn new(args: &QuantBenchArgs, rows: usize) -> Self {
        Self {
            hidden: vec![0.0; rows * args.hidden],
            gate: vec![0.0; rows * args.intermediate],
            up: vec![0.0; rows * args.intermediate],
            logits: vec![0.0; rows * args.vocab],
        }
    }
}

fn median_ms(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples.get(samples.len() / 2).copied().unwrap_or(f64::NAN)
}

fn time_ms(mut f: impl FnMut() -> Result<(), BenchError>) -> Result<f64, BenchError> {
    let start = Instant::now();
    f()?;
    Ok(start.elapsed().as_secs_f64() * 1e3)
}

struct Row {
    mode: &'static str,
    bytes: usize,
    decode_ms: f64,
    prefill_ms: Option<f64>,
}

fn bench_stack(
    stack: &Stack,
    args: &QuantBenchArgs,
    mode: &'static str,
    bytes: usize,
) -> Result<Row, BenchError> {
    let mut scratch = Scratch::new(args, args.prefill.max(1));
    let mut x = random_values(args.hidden, 1.0, 99);
    stack.step(&mut x, &mut scratch, 1)?;
    let mut samples = Vec::with_capacity(args.tokens);
    for _ in 0..args.tokens {
        samples.push(time_ms(|| stack.step(&mut x, &mut scratch, 1))?);
    }
    let prefill_ms = if args.prefill > 0 {
        let mut xs = random_values(args.prefill * args.hidden, 1.0, 98);
        Some(time_ms(|| stack.step(&mut xs, &mut scratch, args.prefill))?)
    } else {
        None
    };
    Ok(Row {
        mode,
        bytes,
        decode_ms: median_ms(samples),
        prefill_ms,
    })
}

fn parse_projector(spec: &str) -> Result<Option<[usize; 3]>, BenchError> {
    if spec.trim().is_empty() {
        return Ok(None);
    }
    let dims: Vec<usize> = spec
        .split(',')
        .map(|d| d.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|e| BenchError::bad_input(format!("--projector {spec:?}: {e}")))?;
    match dims.as_slice() {
        &[v, h, l] if v > 0 && h > 0 && l > 0 => Ok(Some([v, h, l])),
        _ => Err(BenchError::bad_input(format!(
            "--projector {spec:?}: expected three positive sizes VISION,HIDDEN,LLM"
        ))),
    }
}

fn bench_projector(dims: [usize; 3], tokens: usize) -> Result<(), BenchError> {
    let [v, h, l] = dims;
    let math = |e: vla_model::model::ModelError| BenchError::failure(e.to_string());
    let base = [
        random_linear("fc1", h, v, 501)?,
        random_linear("fc2", l, h, 502)?,
        random_linear("fc3", l, l, 503)?,
    ];
    let input = random_values(tokens * v, 1.0, 504);
    println!("\nprojector {v}→{h}→{l}, {tokens} tokens (median of 3)");
    println!("| format | weight MiB | ms |");
    println!("| --- | ---: | ---: |");
    let formats: [(&str, Option<QuantFormat>); 3] = [
        ("f32", None),
        ("int8 weight-only", Some(QuantFormat::Int8)),
        // Calibrated scales are of order max|x| / 127; the value only sets rounding, not speed.
        (
            "int8 W8A8",
            Some(QuantFormat::W8A8 {
                act_scale: 4.0 / 127.0,
            }),
        ),
    ];
    for (name, format) in formats {
        let mut layers = base.clone();
        if let Some(format) = format {
            for layer in &mut layers {
                layer.quantize("projector", format).map_err(math)?;
            }
        }
        let bytes: usize = layers.iter().map(Linear::weight_bytes).sum();
        let mut a = vec![0.0f32; tokens * h];
        let mut b = vec![0.0f32; tokens * l];
        let mut c = vec![0.0f32; tokens * l];
        let mut samples = Vec::new();
        for _ in 0..3 {
            samples.push(time_ms(|| {
                layers[0].forward(&input, &mut a).map_err(math)?;
                layers[1].forward(&a, &mut b).map_err(math)?;
                layers[2].forward(&b, &mut c).map_err(math)
            })?);
        }
        println!(
            "| {name} | {:.1} | {:.1} |",
            bytes as f64 / (1 << 20) as f64,
            median_ms(samples)
        );
    }
    Ok(())
}

pub fn run(args: QuantBenchArgs) -> Result<(), BenchError> {
    if let Some(model) = &args.model {
        return print_accuracy(model, &args.fixtures);
    }
    if args.hidden == 0 || args.intermediate == 0 || args.vocab == 0 || args.tokens == 0 {
        return Err(BenchError::bad_input(
            "--hidden, --intermediate, --vocab and --tokens must be positive",
        ));
    }
    let projector = parse_projector(&args.projector)?;
    println!(
        "Llama stack: hidden {}, intermediate {}, {} blocks, vocab {}; {} rayon threads",
        args.hidden,
        args.intermediate,
        args.layers,
        args.vocab,
        rayon::current_num_threads()
    );
    let mut rows = Vec::new();
    let mut f32_stack = Stack::random(&args)?;
    let f32_bytes = f32_stack.weight_bytes();
    rows.push(bench_stack(&f32_stack, &args, "f32", f32_bytes)?);
    for (mode, format) in [("int8", QuantFormat::Int8), ("int4", QuantFormat::Int4)] {
        let mut stack = Stack {
            blocks: Vec::new(),
            lm_head: f32_stack.lm_head.clone(),
        };
        let started = Instant::now();
        stack
            .lm_head
            .quantize("lm_head", format)
            .map_err(|e| BenchError::failure(e.to_string()))?;
        for block in &mut f32_stack.blocks {
            let mut copy = Block {
                q: block.q.clone(),
                k: block.k.clone(),
                v: block.v.clone(),
                o: block.o.clone(),
                gate: block.gate.clone(),
                up: block.up.clone(),
                down: block.down.clone(),
            };
            for (name, linear) in copy.linears_mut() {
                linear
                    .quantize(name, format)
                    .map_err(|e| BenchError::failure(e.to_string()))?;
            }
            stack.blocks.push(copy);
        }
        let quantize_ms = started.elapsed().as_secs_f64() * 1e3;
        let bytes = stack.weight_bytes();
        eprintln!("{mode}: quantized at load in {quantize_ms:.0} ms");
        rows.push(bench_stack(&stack, &args, mode, bytes)?);
    }
    drop(f32_stack);
    println!(
        "\n| format | weight MiB | vs f32 | decode ms/token | weight GB/s |{}",
        if args.prefill > 0 {
            format!(" prefill {} tokens ms |", args.prefill)
        } else {
            String::new()
        }
    );
    println!(
        "| --- | ---: | ---: | ---: | ---: |{}",
        if args.prefill > 0 { " ---: |" } else { "" }
    );
    for row in &rows {
        println!(
            "| {} | {:.1} | {:.2}× | {:.2} | {:.1} |{}",
            row.mode,
            row.bytes as f64 / (1 << 20) as f64,
            row.bytes as f64 / f32_bytes as f64,
            row.decode_ms,
            row.bytes as f64 / (row.decode_ms * 1e-3) / 1e9,
            row.prefill_ms
                .map_or(String::new(), |ms| format!(" {ms:.1} |"))
        );
    }
    if let Some(dims) = projector {
        bench_projector(dims, args.projector_tokens)?;
    }
    Ok(())
}

/// One input of the accuracy comparison: an image, its instruction and statistics key.
#[derive(Debug, Clone)]
pub struct AccuracyCase {
    pub name: String,
    pub image: vla_model::preprocess::RgbImage,
    pub instruction: String,
    pub unnorm_key: String,
}

/// The cases of a fixture folder's `expected.json` (`tests/fixtures/openvla-tiny`).
pub fn fixture_cases(dir: &std::path::Path) -> Result<Vec<AccuracyCase>, BenchError> {
    let path = dir.join("expected.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| BenchError::bad_input(format!("{}: {e}", path.display())))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| BenchError::bad_input(format!("{}: {e}", path.display())))?;
    let cases = json
        .get("cases")
        .and_then(|c| c.as_array())
        .ok_or_else(|| BenchError::bad_input(format!("{}: no \"cases\" list", path.display())))?;
    let field = |case: &serde_json::Value, key: &str| -> Result<String, BenchError> {
        case.get(key)
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .ok_or_else(|| {
                BenchError::bad_input(format!("{}: a case has no \"{key}\"", path.display()))
            })
    };
    cases
        .iter()
        .map(|case| {
            let image_path = dir.join(field(case, "image")?);
            Ok(AccuracyCase {
                name: field(case, "name")?,
                image: vla_model::preprocess::load_image(&image_path)
                    .map_err(|e| BenchError::bad_input(e.to_string()))?,
                instruction: field(case, "instruction")?,
                unnorm_key: field(case, "unnorm_key")?,
            })
        })
        .collect()
}

/// A weight-format combination compared against the f32 policy.
#[derive(Debug, Clone, Copy)]
pub struct AccuracyMode {
    pub name: &'static str,
    pub quantization: vla_model::policy::Quantization,
    pub projector: vla_model::policy::ProjectorFormat,
    /// Calibrate the projector's activations (W8A8) on the other cases (leave-one-out).
    pub calibrated: bool,
}

/// The modes reported in BENCHMARKS.md.
pub fn accuracy_modes() -> Vec<AccuracyMode> {
    use vla_model::policy::{ProjectorFormat as P, Quantization as Q};
    let mode = |name, quantization, projector, calibrated| AccuracyMode {
        name,
        quantization,
        projector,
        calibrated,
    };
    vec![
        mode("LLM int8", Q::Int8, P::F32, false),
        mode("LLM int4", Q::Int4, P::F32, false),
        mode("projector int8 weight-only", Q::None, P::Int8, false),
        mode("projector int8 W8A8 (calibrated)", Q::None, P::Int8, true),
        mode("LLM int8 + projector W8A8", Q::Int8, P::Int8, true),
        mode("LLM int4 + projector W8A8", Q::Int4, P::Int8, true),
    ]
}

/// Accuracy of one mode against the f32 path.
#[derive(Debug, Clone)]
pub struct ModeAccuracy {
    pub mode: AccuracyMode,
    /// NanoLLM's 1 − NRMSE (actions normalised by q99 − q01), mean over cases.
    pub accuracy: f64,
    /// Fraction of generated tokens equal to the f32 path's.
    pub token_agreement: f64,
    /// Per case: (name, tokens equal, tokens).
    pub per_case: Vec<(String, usize, usize)>,
}

fn policy_error(e: vla_model::policy::PolicyError) -> BenchError {
    BenchError::from(e)
}

/// Runs every case through the f32 policy and through each mode, and scores the modes.
pub fn evaluate_accuracy(
    model_dir: &std::path::Path,
    cases: &[AccuracyCase],
    modes: &[AccuracyMode],
) -> Result<Vec<ModeAccuracy>, BenchError> {
    use vla_model::backend::cpu::{collect_projector_scales, CpuPolicy};
    use vla_model::model::quant_scales::action_accuracy;
    use vla_model::policy::{Policy, PolicyOptions};

    let options_for = |case: &AccuracyCase| PolicyOptions {
        unnorm_key: Some(case.unnorm_key.clone()),
        ..PolicyOptions::default()
    };
    let mut reference = Vec::with_capacity(cases.len());
    for case in cases {
        let mut policy = CpuPolicy::load(model_dir, &options_for(case)).map_err(policy_error)?;
        let p = policy
            .predict(&case.image, &case.instruction)
            .map_err(policy_error)?;
        let stats = &policy.runner().model().config().norm_stats[&case.unnorm_key].action;
        reference.push((p, stats.q01.clone(), stats.q99.clone()));
    }
    let mut results = Vec::with_capacity(modes.len());
    for &mode in modes {
        let mut total_accuracy = 0.0;
        let (mut equal, mut total) = (0usize, 0usize);
        let mut per_case = Vec::with_capacity(cases.len());
        for (i, case) in cases.iter().enumerate() {
            let mut options = options_for(case);
            options.quantization = mode.quantization;
            options.projector = mode.projector;
            if mode.calibrated {
                // Leave-one-out: scales from the other cases' frames only.
                let frames: Vec<_> = cases
                    .iter()
                    .enumerate()
                    .filter(|&(j, _)| j != i)
                    .map(|(_, c)| c.image.clone())
                    .collect();
                let mut f32_policy =
                    CpuPolicy::load(model_dir, &options_for(case)).map_err(policy_error)?;
                options.projector_scales =
                    Some(collect_projector_scales(&mut f32_policy, &frames).map_err(policy_error)?);
            }
            let mut policy = CpuPolicy::load(model_dir, &options).map_err(policy_error)?;
            let p = policy
                .predict(&case.image, &case.instruction)
                .map_err(policy_error)?;
            let (r, q01, q99) = &reference[i];
            total_accuracy += action_accuracy(
                std::slice::from_ref(&r.action),
                std::slice::from_ref(&p.action),
                q01,
                q99,
            );
            let same = r
                .tokens
                .iter()
                .zip(&p.tokens)
                .filter(|(a, b)| a == b)
                .count();
            equal += same;
            total += r.tokens.len();
            per_case.push((case.name.clone(), same, r.tokens.len()));
        }
        results.push(ModeAccuracy {
            mode,
            accuracy: total_accuracy / cases.len().max(1) as f64,
            token_agreement: equal as f64 / total.max(1) as f64,
            per_case,
        });
    }
    Ok(results)
}

fn print_accuracy(
    model_dir: &std::path::Path,
    fixtures: &std::path::Path,
) -> Result<(), BenchError> {
    let cases = fixture_cases(fixtures)?;
    let results = evaluate_accuracy(model_dir, &cases, &accuracy_modes())?;
    println!(
        "\naccuracy against the f32 path: {} on {} cases of {}",
        model_dir.display(),
        cases.len(),
        fixtures.display()
    );
    println!("| mode | 1 − NRMSE | token agreement | tokens equal per case |");
    println!("| --- | ---: | ---: | --- |");
    for r in &results {
        let per_case: Vec<String> = r
            .per_case
            .iter()
            .map(|(name, same, n)| format!("{name} {same}/{n}"))
            .collect();
        println!(
            "| {} | {:.4} | {:.1} % | {} |",
            r.mode.name,
            r.accuracy,
            100.0 * r.token_agreement,
            per_case.join(", ")
        );
    }
    Ok(())
}
