//! ONNX export of the vision encoders exactly as the policy runs them ([`crate::model::vit`]):
//! one graph per featurizer, input `pixel_values` `[1, 3, S, S]` (already normalised for that
//! encoder: channels 0-2 of the policy's `pixel_values` for DINOv2, 3-5 for SigLIP), output
//! `patches` `[1, 256, D]` (block `depth - 2`, prefix tokens dropped, no final norm).
//!
//! The graphs are written from the checkpoint without any ML framework: the protobuf
//! messages are declared in [`proto`] and encoded with prost. Weights are f32 initializers
//! inside the file (ViT-L and SO400M stay well under protobuf's 2 GiB). The manifest beside
//! them records the checkpoint's fingerprint, so that engines built from the graphs can be
//! refused for another checkpoint.

pub mod graph;
pub mod proto;

use std::path::Path;

use prost::Message;
use sha2::{Digest, Sha256};

use super::checkpoint::Checkpoint;
use super::config::{OpenVlaConfig, RuntimeModelConfig};
use super::openvla::{resolve_vit_heads, CONFIG_FILE, FEATURIZER_NAMES};
use super::vit::VitConfig;
use super::ModelError;

/// ONNX operator set of the graphs (LayerNormalization needs 17; TensorRT 8.6+ parses it).
pub const OPSET: i64 = 17;
/// ONNX IR version that goes with opset 17.
pub const IR_VERSION: i64 = 8;
/// The manifest written next to the graphs.
pub const MANIFEST_FILE: &str = "manifest.json";
/// `format` of the manifest.
pub const MANIFEST_FORMAT: &str = "vla-rt onnx encoders v1";
/// File stems of the featurizers, in `pixel_values` channel order.
pub const ENCODER_NAMES: [&str; 2] = ["dinov2", "siglip"];

/// One exported tensor: its graph name and fixed shape.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
}

/// One exported encoder.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EncoderEntry {
    /// `dinov2` or `siglip`.
    pub name: String,
    /// The graph's file name, relative to the manifest.
    pub file: String,
    /// Where its weights are in the checkpoint (`vision_backbone.featurizer`).
    pub checkpoint_prefix: String,
    /// First and one-past-last channel of the policy's `pixel_values` this encoder takes.
    pub pixel_channels: [usize; 2],
    pub input: TensorSpec,
    pub output: TensorSpec,
    /// `sha256:<hex>` of the graph file.
    pub sha256: String,
}

/// `manifest.json` of an export.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OnnxManifest {
    pub format: String,
    /// [`crate::model::checkpoint_fingerprint`] of the source checkpoint.
    pub checkpoint_fingerprint: String,
    pub opset: i64,
    pub encoders: Vec<EncoderEntry>,
}

impl OnnxManifest {
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::File {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let manifest: Self = serde_json::from_str(&text).map_err(|e| ModelError::File {
            path: path.display().to_string(),
            message: format!("not an ONNX export manifest: {e}"),
        })?;
        if manifest.format != MANIFEST_FORMAT {
            return Err(ModelError::File {
                path: path.display().to_string(),
                message: format!(
                    "format is `{}`, expected `{MANIFEST_FORMAT}`",
                    manifest.format
                ),
            });
        }
        Ok(manifest)
    }
}

/// `sha256:<hex>` of a byte string.
pub fn sha256_tag(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// The featurizers of the checkpoint in `model_dir`: `(prefix, config)` in channel order.
pub fn featurizer_configs(
    model_dir: &Path,
    ckpt: &Checkpoint,
) -> Result<Vec<(String, VitConfig)>, ModelError> {
    let config = OpenVlaConfig::from_file(&model_dir.join(CONFIG_FILE))?;
    let runtime = RuntimeModelConfig::from_dir(model_dir)?;
    let count = if config.use_fused_vision_backbone {
        2
    } else {
        1
    };
    FEATURIZER_NAMES[..count]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let prefix = format!("vision_backbone.{name}");
            let heads = resolve_vit_heads(model_dir, &config, &runtime, ckpt, i, name, &prefix)?;
            let vit = VitConfig::from_checkpoint(ckpt, &prefix, config.image_size(), heads)?;
            Ok((prefix, vit))
        })
        .collect()
}

/// The ONNX model of one featurizer.
pub fn encoder_model(
    ckpt: &Checkpoint,
    prefix: &str,
    cfg: &VitConfig,
    name: &str,
) -> Result<proto::ModelProto, ModelError> {
    Ok(proto::ModelProto {
        ir_version: IR_VERSION,
        producer_name: "vla-rt".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: format!(
            "{prefix}: patch features of block {} (prefix tokens dropped, no final norm)",
            cfg.depth - 2
        ),
        graph: Some(graph::vit_graph(ckpt, prefix, cfg, name)?),
        opset_import: vec![proto::OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        metadata_props: Vec::new(),
    })
}

/// Writes `dinov2.onnx`, `siglip.onnx` (for a fused backbone) and `manifest.json` into
/// `out_dir` (created if needed) from the checkpoint in `model_dir`.
pub fn export_encoders(model_dir: &Path, out_dir: &Path) -> Result<OnnxManifest, ModelError> {
    if !model_dir.is_dir() {
        return Err(ModelError::File {
            path: model_dir.display().to_string(),
            message: "model folder does not exist".into(),
        });
    }
    let ckpt = Checkpoint::open_dir(model_dir)?;
    let featurizers = featurizer_configs(model_dir, &ckpt)?;
    let fingerprint = super::checkpoint_fingerprint(model_dir)?;
    std::fs::create_dir_all(out_dir).map_err(|e| ModelError::File {
        path: out_dir.display().to_string(),
        message: format!("cannot create the output folder: {e}"),
    })?;
    let mut encoders = Vec::with_capacity(featurizers.len());
    for (i, (prefix, cfg)) in featurizers.iter().enumerate() {
        let name = ENCODER_NAMES[i];
        let model = encoder_model(&ckpt, prefix, cfg, name)?;
        let len = model.encoded_len();
        if len > i32::MAX as usize {
            return Err(ModelError::Unsupported {
                what: format!("ONNX export of {prefix}"),
                message: format!("{len} bytes exceed protobuf's 2 GiB limit"),
            });
        }
        let bytes = model.encode_to_vec();
        drop(model);
        let file = format!("{name}.onnx");
        let path = out_dir.join(&file);
        std::fs::write(&path, &bytes).map_err(|e| ModelError::File {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        encoders.push(EncoderEntry {
            name: name.to_string(),
            file,
            checkpoint_prefix: prefix.clone(),
            pixel_channels: [3 * i, 3 * i + 3],
            input: TensorSpec {
                name: graph::INPUT_NAME.into(),
                shape: graph::input_shape(cfg).to_vec(),
            },
            output: TensorSpec {
                name: graph::OUTPUT_NAME.into(),
                shape: graph::output_shape(cfg).to_vec(),
            },
            sha256: sha256_tag(&bytes),
        });
    }
    let manifest = OnnxManifest {
        format: MANIFEST_FORMAT.into(),
        checkpoint_fingerprint: fingerprint,
        opset: OPSET,
        encoders,
    };
    let path = out_dir.join(MANIFEST_FILE);
    let text = serde_json::to_string_pretty(&manifest).map_err(|e| ModelError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    std::fs::write(&path, text + "\n").map_err(|e| ModelError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    Ok(manifest)
}
