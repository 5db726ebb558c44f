//! OpenVLA-OFT checkpoints (Kim et al., "Fine-Tuning Vision-Language-Action Models",
//! moojink/openvla-oft at 213c5ff8): a chunk of continuous actions from one bidirectional pass.
//!
//! What OFT's `predict_action` computes, and this module with it (the golden fixture
//! `tests/fixtures/openvla-oft-tiny` has the source lines):
//! - the language model's input is `[embed(<s>), image tokens of every camera, proprio token?,
//!   embed(prompt ids[1..]), K zero rows, embed(</s>)]`, where the prompt ends with `▁` (29871)
//!   and `K = action_dim × num_actions_chunk` placeholders (id 1) have their embeddings zeroed;
//! - one pass with full bidirectional attention (OFT's transformers fork drops the causal
//!   mask), positions `0..L`;
//! - the action head reads the last hidden states after the final RMSNorm at positions
//!   `[P + T, P + T + K)`, `P` the image and proprio tokens, `T` the prompt ids after `<s>`: it
//!   starts at the `▁`, one position before the first placeholder;
//! - the L1 regression head maps each chunk step's `action_dim` hidden rows, side by side, to
//!   a normalised action; `0.5 (a + 1) (hi − lo + 1e-8) + lo` un-normalises the masked
//!   dimensions, without clipping.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::config::RUNTIME_MODEL_CONFIG_FILE;
use super::config::{ActionNormalization, ActionStats, DatasetStats, RuntimeModelConfig};
use super::linear::Linear;
use super::ops;
use super::torch_pt::TorchStateDict;
use super::ModelError;

/// File names OFT's fine-tuning writes beside the Hugging Face folder: `<prefix><step><suffix>`.
pub const ACTION_HEAD_PREFIX: &str = "action_head--";
pub const PROPRIO_PROJECTOR_PREFIX: &str = "proprio_projector--";
const DIFFUSION_PROJECTOR_PREFIX: &str = "noisy_action_projector--";
const FILM_BACKBONE_PREFIX: &str = "vision_backbone--";
const CHECKPOINT_SUFFIX: &str = "_checkpoint.pt";
/// OFT's statistics file, which takes the place of `config.json`'s `norm_stats`.
pub const DATASET_STATISTICS_FILE: &str = "dataset_statistics.json";

/// Id of the placeholder positions (`torch.ones` in `_prepare_input_for_action_prediction`);
/// their embeddings are zeroed, so the id only matters for the record.
pub const PLACEHOLDER_TOKEN_ID: u32 = 1;
/// `STOP_INDEX`: `</s>`, which closes the sequence with its real embedding.
pub const STOP_TOKEN_ID: u32 = 2;
/// The action dimension vla-rt's command record carries (7-DoF end effector and gripper).
pub const COMMAND_ACTION_DIM: usize = 7;
/// `nn.LayerNorm`'s default, which OFT's heads keep.
pub const LAYER_NORM_EPS: f64 = 1e-5;
/// OFT's `+ 1e-8` in the denominator and span of its (un)normalisation.
const SPAN_EPS: f64 = 1e-8;

/// The OFT files found in a checkpoint folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OftFiles {
    pub action_head: PathBuf,
    pub proprio_projector: Option<PathBuf>,
}

fn unsupported(path: &Path, message: impl Into<String>) -> ModelError {
    ModelError::Unsupported {
        what: path.display().to_string(),
        message: message.into(),
    }
}

/// The OFT head files in `dir`, `None` for a checkpoint without an action head (the 2024
/// token form). Kinds vla-rt does not run are refused here, naming the file: a diffusion
/// head (`noisy_action_projector--*`), OFT+'s FiLM vision backbone (`vision_backbone--*`),
/// and several heads of one kind.
pub fn find_files(dir: &Path) -> Result<Option<OftFiles>, ModelError> {
    let entries = std::fs::read_dir(dir).map_err(|e| ModelError::File {
        path: dir.display().to_string(),
        message: format!("cannot list the model folder: {e}"),
    })?;
    let mut heads = Vec::new();
    let mut projectors = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| ModelError::File {
            path: dir.display().to_string(),
            message: format!("cannot list the model folder: {e}"),
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(CHECKPOINT_SUFFIX) {
            continue;
        }
        let path = entry.path();
        if name.starts_with(DIFFUSION_PROJECTOR_PREFIX) {
            return Err(unsupported(
                &path,
                "an OpenVLA-OFT diffusion action head; vla-rt runs the L1 regression head only",
            ));
        }
        if name.starts_with(FILM_BACKBONE_PREFIX) {
            return Err(unsupported(
                &path,
                "an OpenVLA-OFT+ vision backbone with FiLM; vla-rt does not run FiLM",
            ));
        }
        if name.starts_with(ACTION_HEAD_PREFIX) {
            heads.push(path);
        } else if name.starts_with(PROPRIO_PROJECTOR_PREFIX) {
            projectors.push(path);
        }
    }
    let only = |mut paths: Vec<PathBuf>, what: &str| -> Result<Option<PathBuf>, ModelError> {
        paths.sort();
        match paths.len() {
            0 | 1 => Ok(paths.pop()),
            _ => Err(ModelError::File {
                path: dir.display().to_string(),
                message: format!(
                    "{} {what} files ({}); keep the one to run",
                    paths.len(),
                    paths
                        .iter()
                        .filter_map(|p| p.file_name())
                        .map(|n| n.to_string_lossy())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }),
        }
    };
    let action_head = only(heads, "action head")?;
    let proprio_projector = only(projectors, "proprio projector")?;
    match (action_head, proprio_projector) {
        (Some(action_head), proprio_projector) => Ok(Some(OftFiles {
            action_head,
            proprio_projector,
        })),
        (None, Some(projector)) => Err(unsupported(
            &projector,
            format!("a proprio projector without an {ACTION_HEAD_PREFIX}*{CHECKPOINT_SUFFIX}"),
        )),
        (None, None) => Ok(None),
    }
}

/// What an OFT checkpoint needs beyond its tensors, from `vla_rt_model.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OftSettings {
    pub num_actions_chunk: usize,
    pub num_images_in_input: usize,
    pub action_normalization: ActionNormalization,
}

/// Upper bounds that keep a typo from sizing the model's buffers.
pub const MAX_ACTIONS_CHUNK: usize = 256;
pub const MAX_IMAGES_IN_INPUT: usize = 8;

impl OftSettings {
    /// The three keys no published OFT file records; each missing or out-of-range one is an
    /// error naming the file and the key.
    pub fn from_runtime(dir: &Path, runtime: &RuntimeModelConfig) -> Result<Self, ModelError> {
        let path = dir.join(RUNTIME_MODEL_CONFIG_FILE).display().to_string();
        let missing = |key: &str, example: &str| ModelError::Config {
            path: path.clone(),
            key: key.into(),
            message: format!(
                "an OpenVLA-OFT checkpoint needs it and no published file records it: add \
                 {example} (or set the service config's [model] {key})"
            ),
        };
        let num_actions_chunk = runtime.num_actions_chunk.ok_or_else(|| {
            missing(
                "num_actions_chunk",
                "\"num_actions_chunk\": 8 (LIBERO) or 5 (Bridge), as the model was fine-tuned",
            )
        })?;
        let num_images_in_input = runtime.num_images_in_input.ok_or_else(|| {
            missing(
                "num_images_in_input",
                "\"num_images_in_input\": 1 (third-person camera) or 2 (and a wrist camera)",
            )
        })?;
        let action_normalization = runtime.action_normalization.ok_or_else(|| {
            missing(
                "action_normalization",
                "\"action_normalization\": \"bounds_q99\" (LIBERO, Bridge) or \"bounds\" (ALOHA)",
            )
        })?;
        let range = |key: &str, value: usize, max: usize| {
            if (1..=max).contains(&value) {
                Ok(())
            } else {
                Err(ModelError::Config {
                    path: path.clone(),
                    key: key.into(),
                    message: format!("{value} is outside 1..={max}"),
                })
            }
        };
        range("num_actions_chunk", num_actions_chunk, MAX_ACTIONS_CHUNK)?;
        range(
            "num_images_in_input",
            num_images_in_input,
            MAX_IMAGES_IN_INPUT,
        )?;
        Ok(Self {
            num_actions_chunk,
            num_images_in_input,
            action_normalization,
        })
    }
}

/// The low and high statistics that [`ActionNormalization`] picks, with the mask (all true
/// when the file has none), checked to have `dim` entries each.
#[derive(Debug, Clone, PartialEq)]
pub struct Bounds {
    pub low: Vec<f64>,
    pub high: Vec<f64>,
    pub mask: Vec<bool>,
}

impl Bounds {
    pub fn pick(
        stats: &ActionStats,
        kind: ActionNormalization,
        dim: usize,
        what: &str,
        path: &Path,
    ) -> Result<Self, ModelError> {
        let (low, high, names) = match kind {
            ActionNormalization::BoundsQ99 => (Some(&stats.q01), Some(&stats.q99), "q01/q99"),
            ActionNormalization::Bounds => (stats.min.as_ref(), stats.max.as_ref(), "min/max"),
        };
        let mask = stats.mask.clone().unwrap_or_else(|| vec![true; dim]);
        match (low, high) {
            (Some(low), Some(high))
                if low.len() == dim && high.len() == dim && mask.len() == dim =>
            {
                Ok(Self {
                    low: low.clone(),
                    high: high.clone(),
                    mask,
                })
            }
            _ => Err(ModelError::Config {
                path: path.display().to_string(),
                key: what.into(),
                message: format!(
                    "needs {names} (and any mask) of {dim} values for {kind:?} normalisation"
                ),
            }),
        }
    }

    /// OFT's `_unnormalize_actions`: `0.5 (a + 1) (hi − lo + 1e-8) + lo` where the mask is
    /// set, `a` elsewhere, in f64 and without clipping.
    pub fn unnormalize(&self, normalized: &[f64]) -> Vec<f64> {
        normalized
            .iter()
            .zip(self.low.iter().zip(&self.high).zip(&self.mask))
            .map(|(&a, ((&lo, &hi), &masked))| {
                if masked {
                    0.5 * (a + 1.0) * (hi - lo + SPAN_EPS) + lo
                } else {
                    a
                }
            })
            .collect()
    }

    /// OFT's `normalize_proprio`: `clip(2 (p − lo) / (hi − lo + 1e-8) − 1, −1, 1)` where the mask
    /// is set (`p` clipped elsewhere), in f64.
    pub fn normalize(&self, raw: &[f64]) -> Vec<f64> {
        raw.iter()
            .zip(self.low.iter().zip(&self.high).zip(&self.mask))
            .map(|(&p, ((&lo, &hi), &masked))| {
                let v = if masked {
                    2.0 * (p - lo) / (hi - lo + SPAN_EPS) - 1.0
                } else {
                    p
                };
                v.clamp(-1.0, 1.0)
            })
            .collect()
    }
}

/// `dataset_statistics.json` beside an OFT checkpoint, if there is one: OFT reads it in place
/// of `config.json`'s `norm_stats`.
pub fn read_dataset_statistics(
    dir: &Path,
) -> Result<Option<BTreeMap<String, DatasetStats>>, ModelError> {
    let path = dir.join(DATASET_STATISTICS_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::File {
        path: path.display().to_string(),
        message: format!("cannot read: {e}"),
    })?;
    let stats: BTreeMap<String, DatasetStats> =
        serde_json::from_str(&text).map_err(|e| ModelError::File {
            path: path.display().to_string(),
            message: format!("invalid dataset statistics: {e}"),
        })?;
    if stats.is_empty() {
        return Err(ModelError::File {
            path: path.display().to_string(),
            message: "no dataset statistics".into(),
        });
    }
    Ok(Some(stats))
}

/// A LayerNorm's affine parameters.
#[derive(Debug, Clone)]
struct LayerNorm {
    weight: Vec<f32>,
    bias: Vec<f32>,
}

impl LayerNorm {
    fn load(
        ckpt: &super::checkpoint::Checkpoint,
        prefix: &str,
        width: usize,
    ) -> Result<Self, ModelError> {
        Ok(Self {
            weight: ckpt.f32_with_shape(&format!("{prefix}.weight"), &[width])?,
            bias: ckpt.f32_with_shape(&format!("{prefix}.bias"), &[width])?,
        })
    }

    fn apply(&self, x: &mut [f32]) {
        ops::layer_norm(
            x,
            self.weight.len(),
            &self.weight,
            &self.bias,
            LAYER_NORM_EPS,
        );
    }
}

fn relu(x: &mut [f32]) {
    x.iter_mut().for_each(|v| *v = v.max(0.0));
}

/// Opens a `.pt` head and drops DDP's `module.` prefix (OFT's fine-tuning saves the heads
/// from their DistributedDataParallel wrappers), when every name has it.
fn open_head(path: &Path) -> Result<TorchStateDict, ModelError> {
    let dict = TorchStateDict::open(path)?;
    if dict
        .tensors()
        .iter()
        .all(|t| t.name().starts_with("module."))
    {
        dict.strip_module_prefix()
    } else {
        Ok(dict)
    }
}

/// OFT's `L1RegressionActionHead`: an `MLPResNet` over each chunk step's `action_dim` hidden
/// states side by side: LayerNorm → fc1 → ReLU → residual blocks `x + ReLU(Linear(LN(x)))` →
/// LayerNorm → fc2.
#[derive(Debug, Clone)]
pub struct L1ActionHead {
    layer_norm1: LayerNorm,
    fc1: Linear,
    blocks: Vec<(LayerNorm, Linear)>,
    layer_norm2: LayerNorm,
    fc2: Linear,
    action_dim: usize,
}

/// The widths of an L1 regression head, read and checked from its tensor shapes without
/// loading its values (the CUDA backend uploads them straight from the checkpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L1HeadShape {
    /// `action_dim × llm_dim`: one chunk step's hidden states side by side.
    pub input: usize,
    /// The MLP's width (fc1's outputs).
    pub hidden: usize,
    pub action_dim: usize,
    /// Residual blocks `model.mlp_resnet_blocks.N`.
    pub blocks: usize,
}

impl L1HeadShape {
    /// The shape of the head in `ckpt` (names without the `module.` prefix) reading
    /// `llm_dim`-wide hidden states; `path` names the file in errors.
    pub fn from_checkpoint(
        ckpt: &super::checkpoint::Checkpoint,
        llm_dim: usize,
        path: &Path,
    ) -> Result<Self, ModelError> {
        let (hidden, input) = ckpt.matrix_shape("model.fc1.weight")?;
        let (action_dim, fc2_in) = ckpt.matrix_shape("model.fc2.weight")?;
        if action_dim != COMMAND_ACTION_DIM {
            return Err(unsupported(
                path,
                format!(
                    "the head outputs {action_dim}-D actions; vla-rt's command record carries \
                     {COMMAND_ACTION_DIM}-DoF end-effector actions (a bimanual 14-D head, as \
                     ALOHA's, does not fit)"
                ),
            ));
        }
        if input != llm_dim * action_dim || fc2_in != hidden {
            return Err(ModelError::Shape {
                name: format!("{}: model.fc1.weight", path.display()),
                expected: vec![hidden, llm_dim * action_dim],
                got: vec![hidden, input],
            });
        }
        let mut blocks = 0;
        while ckpt.contains(&format!("model.mlp_resnet_blocks.{blocks}.ffn.1.weight")) {
            blocks += 1;
        }
        Ok(Self {
            input,
            hidden,
            action_dim,
            blocks,
        })
    }
}

/// The action head's tensors from its `.pt` file, DDP's `module.` prefix dropped; a
/// diffusion head is refused naming the file.
pub fn read_action_head(path: &Path) -> Result<super::checkpoint::Checkpoint, ModelError> {
    let dict = open_head(path)?;
    if dict
        .tensors()
        .iter()
        .any(|t| t.name().starts_with("noise_predictor.") || t.name().contains("time_encoder"))
    {
        return Err(unsupported(
            path,
            "an OpenVLA-OFT diffusion action head; vla-rt runs the L1 regression head only",
        ));
    }
    dict.to_checkpoint()
}

/// The proprio projector's tensors from its `.pt` file, DDP's `module.` prefix dropped.
pub fn read_proprio_projector(path: &Path) -> Result<super::checkpoint::Checkpoint, ModelError> {
    open_head(path)?.to_checkpoint()
}

impl L1ActionHead {
    /// Loads `model.{layer_norm1, fc1, mlp_resnet_blocks.N.ffn.{0,1}, layer_norm2, fc2}`; the
    /// widths come from the tensors and must read `llm_dim`-wide hidden states.
    pub fn load(path: &Path, llm_dim: usize) -> Result<Self, ModelError> {
        Self::from_checkpoint(&read_action_head(path)?, llm_dim, path)
    }

    /// The head from its tensors without the `module.` prefix (`path` names them in errors).
    pub fn from_checkpoint(
        ckpt: &super::checkpoint::Checkpoint,
        llm_dim: usize,
        path: &Path,
    ) -> Result<Self, ModelError> {
        let L1HeadShape {
            input,
            hidden,
            action_dim,
            blocks,
        } = L1HeadShape::from_checkpoint(ckpt, llm_dim, path)?;
        let blocks = (0..blocks)
            .map(|block| {
                let prefix = format!("model.mlp_resnet_blocks.{block}.ffn");
                Ok((
                    LayerNorm::load(ckpt, &format!("{prefix}.0"), hidden)?,
                    ckpt.linear(&format!("{prefix}.1"), hidden, hidden, true)?,
                ))
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        Ok(Self {
            layer_norm1: LayerNorm::load(ckpt, "model.layer_norm1", input)?,
            fc1: ckpt.linear("model.fc1", hidden, input, true)?,
            blocks,
            layer_norm2: LayerNorm::load(ckpt, "model.layer_norm2", hidden)?,
            fc2: ckpt.linear("model.fc2", action_dim, hidden, true)?,
            action_dim,
        })
    }

    pub fn action_dim(&self) -> usize {
        self.action_dim
    }

    /// `hidden_states` (`[chunk · action_dim, llm_dim]`) → normalised actions
    /// (`[chunk, action_dim]`).
    pub fn forward(&self, hidden_states: &[f32]) -> Result<Vec<f32>, ModelError> {
        let input = self.fc1.in_features();
        if hidden_states.is_empty() || !hidden_states.len().is_multiple_of(input) {
            return Err(ModelError::Math {
                op: "action head",
                message: format!(
                    "{} hidden-state values are not whole chunk steps of {input}",
                    hidden_states.len()
                ),
            });
        }
        let steps = hidden_states.len() / input;
        let hidden = self.fc1.out_features();
        // The reshape [chunk · action_dim, llm_dim] → [chunk, action_dim · llm_dim] keeps the
        // row-major order: each step's rows are already side by side.
        let mut x = hidden_states.to_vec();
        self.layer_norm1.apply(&mut x);
        let mut h = vec![0.0f32; steps * hidden];
        self.fc1.forward(&x, &mut h)?;
        relu(&mut h);
        let mut normed = vec![0.0f32; steps * hidden];
        let mut branch = vec![0.0f32; steps * hidden];
        for (norm, linear) in &self.blocks {
            normed.copy_from_slice(&h);
            norm.apply(&mut normed);
            linear.forward(&normed, &mut branch)?;
            relu(&mut branch);
            ops::add_in_place(&mut h, &branch);
        }
        self.layer_norm2.apply(&mut h);
        let mut out = vec![0.0f32; steps * self.action_dim];
        self.fc2.forward(&h, &mut out)?;
        Ok(out)
    }
}

/// OFT's `ProprioProjector`: fc1 → GELU (erf) → fc2, the robot state as one more input token.
#[derive(Debug, Clone)]
pub struct ProprioProjector {
    fc1: Linear,
    fc2: Linear,
}

/// The state width a proprio projector in `ckpt` takes, checked to project to `llm_dim`
/// (`path` names the file in errors).
pub fn proprio_projector_dim(
    ckpt: &super::checkpoint::Checkpoint,
    llm_dim: usize,
    path: &Path,
) -> Result<usize, ModelError> {
    let (hidden, proprio_dim) = ckpt.matrix_shape("fc1.weight")?;
    if hidden != llm_dim {
        return Err(ModelError::Shape {
            name: format!("{}: fc1.weight", path.display()),
            expected: vec![llm_dim, proprio_dim],
            got: vec![hidden, proprio_dim],
        });
    }
    Ok(proprio_dim)
}

impl ProprioProjector {
    pub fn load(path: &Path, llm_dim: usize) -> Result<Self, ModelError> {
        let ckpt = read_proprio_projector(path)?;
        let proprio_dim = proprio_projector_dim(&ckpt, llm_dim, path)?;
        Ok(Self {
            fc1: ckpt.linear("fc1", llm_dim, proprio_dim, true)?,
            fc2: ckpt.linear("fc2", llm_dim, llm_dim, true)?,
        })
    }

    pub fn proprio_dim(&self) -> usize {
        self.fc1.in_features()
    }

    /// The proprio token (`[llm_dim]`) of a normalised state.
    pub fn forward(&self, normalized: &[f32]) -> Result<Vec<f32>, ModelError> {
        let mut hidden = vec![0.0f32; self.fc1.out_features()];
        self.fc1.forward(normalized, &mut hidden)?;
        ops::gelu_erf(&mut hidden);
        let mut out = vec![0.0f32; self.fc2.out_features()];
        self.fc2.forward(&hidden, &mut out)?;
        Ok(out)
    }
}

/// Where the parts of OFT's language-model input sit, for a prompt of `prompt_ids` tokens
/// (`<s>` … `▁`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequenceLayout {
    /// Image tokens of every camera plus the proprio token (OFT's `NUM_PATCHES`).
    pub patches: usize,
    /// Prompt ids after `<s>` (OFT's `NUM_PROMPT_TOKENS`).
    pub prompt_tokens: usize,
    /// `action_dim × num_actions_chunk`.
    pub placeholders: usize,
}

impl SequenceLayout {
    /// Rows of the whole input: `<s>`, patches, prompt, placeholders, `</s>`.
    pub fn len(&self) -> usize {
        1 + self.patches + self.prompt_tokens + self.placeholders + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// First placeholder row.
    pub fn placeholder_start(&self) -> usize {
        1 + self.patches + self.prompt_tokens
    }

    /// The hidden-state rows the action head reads: from the `▁`, one before the
    /// placeholders (OFT's `NUM_PATCHES + NUM_PROMPT_TOKENS`).
    pub fn head_rows(&self) -> std::ops::Range<usize> {
        let start = self.patches + self.prompt_tokens;
        start..start + self.placeholders
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_head_reads_from_the_space_token_one_row_before_the_placeholders() {
        // OFT fixture case 1: two images and proprio (513 patches), 39 prompt ids after <s>.
        let layout = SequenceLayout {
            patches: 513,
            prompt_tokens: 39,
            placeholders: 56,
        };
        assert_eq!(layout.len(), 610);
        assert_eq!(layout.placeholder_start(), 553);
        assert_eq!(layout.head_rows(), 552..608);
    }

    #[test]
    fn normalisation_clips_proprio_and_leaves_unmasked_action_dims_alone() {
        let bounds = Bounds {
            low: vec![-1.0, 0.0],
            high: vec![1.0, 2.0],
            mask: vec![true, false],
        };
        let n = bounds.normalize(&[3.0, 0.5]);
        assert_eq!(n, vec![1.0, 0.5]);
        let a = bounds.unnormalize(&[1.5, 0.25]);
        // No clipping: 0.5 · 2.5 · (2 + 1e-8) − 1.
        assert!((a[0] - (0.5 * 2.5 * (2.0 + 1e-8) - 1.0)).abs() < 1e-15);
        assert_eq!(a[1], 0.25);
    }

    #[test]
    fn missing_oft_keys_name_the_file_and_the_key() {
        let dir = Path::new("/models/oft");
        let runtime = RuntimeModelConfig {
            num_actions_chunk: Some(8),
            num_images_in_input: Some(2),
            ..RuntimeModelConfig::default()
        };
        let err = OftSettings::from_runtime(dir, &runtime)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/models/oft/vla_rt_model.json") && err.contains("action_normalization"),
            "{err}"
        );
        let runtime = RuntimeModelConfig {
            num_actions_chunk: Some(0),
            num_images_in_input: Some(2),
            action_normalization: Some(ActionNormalization::BoundsQ99),
            ..RuntimeModelConfig::default()
        };
        let err = OftSettings::from_runtime(dir, &runtime)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("num_actions_chunk") && err.contains("outside"),
            "{err}"
        );
    }
}
