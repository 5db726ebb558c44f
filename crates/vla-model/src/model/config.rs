//! The checkpoint's JSON configuration as serde structs mirroring Hugging Face's files:
//! `config.json` (OpenVLAConfig, whose `text_config` is a diff against `LlamaConfig()`
//! defaults) and the optional `vla_rt_model.json` (ViT head counts, which the weights do not
//! carry).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::ModelError;

/// `config.json` of an OpenVLA checkpoint (`OpenVLAConfig`). Unknown keys are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct OpenVlaConfig {
    pub text_config: TextConfig,
    /// Dataset statistics per `unnorm_key`.
    pub norm_stats: BTreeMap<String, DatasetStats>,
    #[serde(default = "default_n_action_bins")]
    pub n_action_bins: usize,
    #[serde(default = "default_pad_to_multiple_of")]
    pub pad_to_multiple_of: usize,
    #[serde(default)]
    pub timm_model_ids: Vec<String>,
    #[serde(default = "default_image_sizes")]
    pub image_sizes: Vec<usize>,
    #[serde(default = "default_true")]
    pub use_fused_vision_backbone: bool,
    #[serde(default = "default_llm_max_length")]
    pub llm_max_length: usize,
}

fn default_n_action_bins() -> usize {
    256
}
fn default_pad_to_multiple_of() -> usize {
    64
}
fn default_image_sizes() -> Vec<usize> {
    vec![224, 224]
}
fn default_true() -> bool {
    true
}
fn default_llm_max_length() -> usize {
    2048
}

/// `text_config`: only the fields that differ from `LlamaConfig()` are stored, so every field
/// defaults to transformers' `LlamaConfig` default (OPENVLA_FACTS §4).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// `None` means equal to `num_attention_heads` (no GQA).
    pub num_key_value_heads: Option<usize>,
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<serde_json::Value>,
    pub attention_bias: bool,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
}

impl Default for TextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 32000,
            hidden_size: 4096,
            intermediate_size: 11008,
            num_hidden_layers: 32,
            num_attention_heads: 32,
            num_key_value_heads: None,
            hidden_act: "silu".into(),
            max_position_embeddings: 2048,
            rms_norm_eps: 1e-6,
            rope_theta: 10000.0,
            rope_scaling: None,
            attention_bias: false,
            tie_word_embeddings: false,
            bos_token_id: Some(1),
            eos_token_id: Some(2),
        }
    }
}

/// One entry of `norm_stats` (or of an OpenVLA-OFT `dataset_statistics.json`): the action
/// statistics, and the robot state's where the checkpoint takes proprio.
#[derive(Debug, Clone, Deserialize)]
pub struct DatasetStats {
    pub action: ActionStats,
    #[serde(default)]
    pub proprio: Option<ActionStats>,
}

/// Per-dimension statistics of actions (or of the robot state).
#[derive(Debug, Clone, Deserialize)]
pub struct ActionStats {
    pub q01: Vec<f64>,
    pub q99: Vec<f64>,
    /// Used by OFT's `bounds` normalisation.
    #[serde(default)]
    pub min: Option<Vec<f64>>,
    #[serde(default)]
    pub max: Option<Vec<f64>>,
    /// Dimensions to un-normalise; absent means all of them.
    #[serde(default)]
    pub mask: Option<Vec<bool>>,
}

impl OpenVlaConfig {
    /// Reads and validates `config.json`; errors name the file and the key.
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::File {
            path: path.display().to_string(),
            message: format!("cannot read: {e}"),
        })?;
        Self::from_json_str(&text, path)
    }

    /// Parses and validates config text; `path` names it in errors.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self, ModelError> {
        let config: Self = serde_json::from_str(text).map_err(|e| ModelError::File {
            path: path.display().to_string(),
            message: format!("invalid OpenVLA config: {e}"),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ModelError> {
        let bad = |key: &str, message: String| ModelError::Config {
            path: path.display().to_string(),
            key: key.to_string(),
            message,
        };
        let t = &self.text_config;
        if t.hidden_act != "silu" {
            return Err(bad(
                "text_config.hidden_act",
                format!("`{}` is not supported (only silu)", t.hidden_act),
            ));
        }
        if t.attention_bias {
            return Err(bad(
                "text_config.attention_bias",
                "attention biases are not supported".into(),
            ));
        }
        if t.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(bad(
                "text_config.rope_scaling",
                "RoPE scaling is not supported".into(),
            ));
        }
        let heads = t.num_attention_heads;
        if heads == 0
            || !t.hidden_size.is_multiple_of(heads)
            || !(t.hidden_size / heads).is_multiple_of(2)
        {
            return Err(bad(
                "text_config.num_attention_heads",
                format!(
                    "{heads} heads do not split hidden_size {} into even head dims",
                    t.hidden_size
                ),
            ));
        }
        let kv_heads = self.num_key_value_heads();
        if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(bad(
                "text_config.num_key_value_heads",
                format!("{kv_heads} does not divide num_attention_heads {heads}"),
            ));
        }
        if self.pad_to_multiple_of >= t.vocab_size {
            return Err(bad(
                "pad_to_multiple_of",
                format!(
                    "{} is not smaller than text_config.vocab_size {}",
                    self.pad_to_multiple_of, t.vocab_size
                ),
            ));
        }
        if self.n_action_bins < 2 || self.n_action_bins > self.text_vocab_size() {
            return Err(bad(
                "n_action_bins",
                format!(
                    "{} bins do not fit a vocabulary of {}",
                    self.n_action_bins,
                    self.text_vocab_size()
                ),
            ));
        }
        if self.norm_stats.is_empty() {
            return Err(bad("norm_stats", "no dataset statistics".into()));
        }
        for (key, stats) in &self.norm_stats {
            let a = &stats.action;
            let dim = a.q01.len();
            let mask_len = a.mask.as_ref().map_or(dim, Vec::len);
            if dim == 0 || a.q99.len() != dim || mask_len != dim {
                return Err(bad(
                    &format!("norm_stats.{key}.action"),
                    format!(
                        "q01 ({dim}), q99 ({}) and mask ({mask_len}) must have the same non-zero length",
                        a.q99.len()
                    ),
                ));
            }
        }
        Ok(())
    }

    pub fn num_key_value_heads(&self) -> usize {
        self.text_config
            .num_key_value_heads
            .unwrap_or(self.text_config.num_attention_heads)
    }

    /// Vocabulary of the tokenizer without the padding rows: `vocab_size - pad_to_multiple_of`
    /// (32000 for OpenVLA); action tokens are its last `n_action_bins` ids.
    pub fn text_vocab_size(&self) -> usize {
        self.text_config.vocab_size - self.pad_to_multiple_of
    }

    /// Side length of the square image the featurizers take.
    pub fn image_size(&self) -> usize {
        self.image_sizes.first().copied().unwrap_or(224)
    }
}

/// `vla_rt_model.json`: what the checkpoint cannot tell, keyed by featurizer
/// (`{"featurizer": {"num_heads": 16}, "fused_featurizer": {"num_heads": 16}}`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RuntimeModelConfig {
    /// Rate of the training data's action steps (`[model] action_hz` when the service
    /// config leaves it unset).
    #[serde(default)]
    pub action_hz: Option<f64>,
    /// OpenVLA-OFT: action steps per chunk (8 for LIBERO, 5 for Bridge), which no
    /// published file records.
    #[serde(default)]
    pub num_actions_chunk: Option<usize>,
    /// OpenVLA-OFT: camera images per prediction (the third-person view first, then the
    /// wrist cameras), each through both vision encoders.
    #[serde(default)]
    pub num_images_in_input: Option<usize>,
    /// OpenVLA-OFT: which statistics map normalised actions and proprio to robot units.
    #[serde(default)]
    pub action_normalization: Option<ActionNormalization>,
    #[serde(flatten)]
    pub featurizers: BTreeMap<String, FeaturizerOverrides>,
}

impl RuntimeModelConfig {
    /// This file's OpenVLA-OFT keys completed with the caller's `keys`; a key set both ways
    /// to different values is refused, naming the file (`file`), the key and both values.
    pub fn with_oft_keys(
        mut self,
        keys: &crate::policy::OftKeys,
        file: &Path,
    ) -> Result<Self, ModelError> {
        fn merged<T: PartialEq + serde::Serialize>(
            file: &Path,
            key: &str,
            in_file: Option<T>,
            given: Option<T>,
        ) -> Result<Option<T>, ModelError> {
            match (in_file, given) {
                (Some(a), Some(b)) if a != b => {
                    let text = |v: &T| serde_json::to_string(v).unwrap_or_default();
                    Err(ModelError::Config {
                        path: file.display().to_string(),
                        key: key.into(),
                        message: format!(
                            "{} here, {} in the config's [model] {key}: the checkpoint was \
                             fine-tuned with one of them",
                            text(&a),
                            text(&b)
                        ),
                    })
                }
                (a, b) => Ok(b.or(a)),
            }
        }
        self.num_actions_chunk = merged(
            file,
            "num_actions_chunk",
            self.num_actions_chunk,
            keys.num_actions_chunk,
        )?;
        self.num_images_in_input = merged(
            file,
            "num_images_in_input",
            self.num_images_in_input,
            keys.num_images_in_input,
        )?;
        self.action_normalization = merged(
            file,
            "action_normalization",
            self.action_normalization,
            keys.action_normalization,
        )?;
        Ok(self)
    }
}

/// OpenVLA-OFT's `ACTION_PROPRIO_NORMALIZATION_TYPE`: the statistics that span [-1, 1].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionNormalization {
    /// `min` and `max` (ALOHA).
    Bounds,
    /// `q01` and `q99` (LIBERO, Bridge).
    BoundsQ99,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct FeaturizerOverrides {
    pub num_heads: Option<usize>,
}

/// File name of [`RuntimeModelConfig`] beside `config.json`.
pub const RUNTIME_MODEL_CONFIG_FILE: &str = "vla_rt_model.json";

impl RuntimeModelConfig {
    /// Reads the file if it exists; an absent file is an empty config.
    pub fn from_dir(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join(RUNTIME_MODEL_CONFIG_FILE);
        if !path.exists() {
            return Ok(Self::default());
        }
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::File {
            path: path.display().to_string(),
            message: format!("cannot read: {e}"),
        })?;
        serde_json::from_str(&text).map_err(|e| ModelError::File {
            path: path.display().to_string(),
            message: format!("invalid JSON: {e}"),
        })
    }
}

/// Head counts of the timm architectures OpenVLA's backbones use, by architecture name (the
/// timm id without its `.pretrained_tag`) and embed width. Used only when the width matches.
const TIMM_HEADS: &[(&str, usize, usize)] = &[
    ("vit_large_patch14_reg4_dinov2", 1024, 16),
    ("vit_large_patch14_dinov2", 1024, 16),
    ("vit_base_patch14_reg4_dinov2", 768, 12),
    ("vit_small_patch14_reg4_dinov2", 384, 6),
    ("vit_giant_patch14_reg4_dinov2", 1536, 24),
    ("vit_so400m_patch14_siglip_224", 1152, 16),
    ("vit_so400m_patch14_siglip_384", 1152, 16),
    ("vit_base_patch16_siglip_224", 768, 12),
    ("vit_large_patch16_siglip_256", 1024, 16),
];

/// Head count of a timm architecture with this embed width, if known.
pub fn timm_num_heads(timm_model_id: &str, embed_dim: usize) -> Option<usize> {
    let arch = timm_model_id.split('.').next().unwrap_or(timm_model_id);
    TIMM_HEADS
        .iter()
        .find(|(name, width, _)| *name == arch && *width == embed_dim)
        .map(|(_, _, heads)| *heads)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_callers_oft_keys_complete_the_file_and_must_agree_with_it() {
        let file = Path::new("ckpt/vla_rt_model.json");
        let in_file: RuntimeModelConfig = serde_json::from_str(
            r#"{"num_actions_chunk": 8, "action_normalization": "bounds_q99"}"#,
        )
        .unwrap();
        let keys = crate::policy::OftKeys {
            num_actions_chunk: Some(8),
            num_images_in_input: Some(2),
            action_normalization: None,
        };
        let merged = in_file.clone().with_oft_keys(&keys, file).unwrap();
        assert_eq!(merged.num_actions_chunk, Some(8));
        assert_eq!(merged.num_images_in_input, Some(2));
        assert_eq!(
            merged.action_normalization,
            Some(ActionNormalization::BoundsQ99)
        );
        let none = in_file
            .clone()
            .with_oft_keys(&Default::default(), file)
            .unwrap();
        assert_eq!(none.num_images_in_input, None);

        let differ = crate::policy::OftKeys {
            action_normalization: Some(ActionNormalization::Bounds),
            ..Default::default()
        };
        let text = in_file
            .with_oft_keys(&differ, file)
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("ckpt/vla_rt_model.json")
                && text.contains("action_normalization")
                && text.contains(r#""bounds_q99" here, "bounds" in the config's [model]"#),
            "{text}"
        );
    }

    #[test]
    fn timm_heads_only_when_the_width_matches_the_architecture() {
        assert_eq!(
            timm_num_heads("vit_large_patch14_reg4_dinov2.lvd142m", 1024),
            Some(16)
        );
        assert_eq!(
            timm_num_heads("vit_so400m_patch14_siglip_224", 1152),
            Some(16)
        );
        assert_eq!(
            timm_num_heads("vit_large_patch14_reg4_dinov2.lvd142m", 48),
            None
        );
        assert_eq!(timm_num_heads("vit_unknown_patch14", 1024), None);
    }
}
