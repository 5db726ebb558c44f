//! The one interface the runtime sees of a policy, whatever the backend.

use crate::preprocess::RgbImage;

/// Wall-clock milliseconds spent in each stage of one prediction.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct StageTimings {
    pub preprocess_ms: f64,
    pub vision_ms: f64,
    pub projector_ms: f64,
    pub prefill_ms: f64,
    pub decode_ms: f64,
    pub total_ms: f64,
}

/// What one policy call produces.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// The generated action token ids, `action_dim` of them; none for a checkpoint that
    /// regresses continuous actions (OpenVLA-OFT).
    pub tokens: Vec<u32>,
    /// The first action in [-1, 1], before un-normalisation (bin centres on the token path).
    pub normalized: Vec<f64>,
    /// Un-normalised first action in the units of the dataset statistics.
    pub action: Vec<f64>,
    /// Every action of the chunk in execution order, un-normalised, `action` first: one row on
    /// the token path, `num_actions_chunk` rows for an OpenVLA-OFT checkpoint.
    pub actions: Vec<Vec<f64>>,
    pub timings: StageTimings,
}

impl Prediction {
    /// A prediction of one action (the token path): `actions` is `[action]`.
    pub fn single(
        tokens: Vec<u32>,
        normalized: Vec<f64>,
        action: Vec<f64>,
        timings: StageTimings,
    ) -> Self {
        Self {
            tokens,
            normalized,
            actions: vec![action.clone()],
            action,
            timings,
        }
    }
}

/// The longest chunk the runtime executes (OpenVLA-OFT publishes 5 to 25 steps): the control
/// loop's fixed-size chunk holds this many actions, and benchmarks time no longer ones.
pub const MAX_CHUNK: usize = 64;

/// What a policy takes besides its instruction, and how many actions one call gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyInputs {
    /// Camera images per prediction, in the checkpoint's order (third-person first).
    pub images: usize,
    /// Length of the robot state the policy takes (`--proprio`), if it takes one.
    pub proprio_dim: Option<usize>,
    /// Actions per prediction (`num_actions_chunk`; 1 on the token path).
    pub chunk_len: usize,
}

impl Default for PolicyInputs {
    fn default() -> Self {
        Self {
            images: 1,
            proprio_dim: None,
            chunk_len: 1,
        }
    }
}

/// Errors a policy call can return. `is_bad_input` separates the caller's mistakes (exit code 2)
/// from failures of the machine (exit code 1).
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error(transparent)]
    Preprocess(#[from] crate::preprocess::PreprocessError),
    #[error("empty instruction: the policy needs a task description")]
    EmptyInstruction,
    /// Images or robot state that do not fit what the checkpoint takes.
    #[error("{0}")]
    Inputs(String),
    #[error("backend {backend}: {message}")]
    Backend {
        backend: &'static str,
        message: String,
    },
    /// The backend cannot run on this machine (no driver, no device): a usage error.
    #[error("backend {backend}: {message}")]
    Unavailable {
        backend: &'static str,
        message: String,
    },
}

impl PolicyError {
    pub fn is_bad_input(&self) -> bool {
        match self {
            PolicyError::Model(e) => e.is_bad_input(),
            PolicyError::Preprocess(_)
            | PolicyError::EmptyInstruction
            | PolicyError::Inputs(_)
            | PolicyError::Unavailable { .. } => true,
            PolicyError::Backend { .. } => false,
        }
    }
}

/// One request of a batch: the image and instruction of one robot.
#[derive(Debug, Clone, Copy)]
pub struct BatchRequest<'a> {
    pub image: &'a RgbImage,
    pub instruction: &'a str,
}

/// A vision-language-action policy: image + instruction in, one action out.
///
/// Implementations may allocate and take their time; they run on the inference thread, never
/// on the control thread.
pub trait Policy: Send {
    fn predict(&mut self, image: &RgbImage, instruction: &str) -> Result<Prediction, PolicyError>;
    /// What [`Policy::predict_with`] takes and gives.
    fn inputs(&self) -> PolicyInputs {
        PolicyInputs::default()
    }
    /// A prediction from every camera the checkpoint takes (`images`, in its order) and the
    /// robot's raw state (`proprio`, normalised by the policy), as [`Policy::inputs`] says.
    /// The provided method takes one image and no state, and runs [`Policy::predict`].
    fn predict_with(
        &mut self,
        images: &[&RgbImage],
        instruction: &str,
        proprio: Option<&[f64]>,
    ) -> Result<Prediction, PolicyError> {
        match (images, proprio) {
            ([image], None) => self.predict(image, instruction),
            (_, Some(_)) => Err(PolicyError::Inputs(
                "this checkpoint takes no robot state (proprio)".into(),
            )),
            _ => Err(PolicyError::Inputs(format!(
                "this checkpoint takes 1 image, not {}",
                images.len()
            ))),
        }
    }
    /// One prediction per request, in request order. Each request succeeds or fails on its
    /// own: a bad one (empty instruction, a prompt too long, an unreadable image) gets its
    /// error while the others get their predictions, and each prediction's tokens are the
    /// ones [`Policy::predict`] gives for that request alone.
    ///
    /// When the policy batches natively ([`Policy::batches_natively`]), the stages run for
    /// the whole batch at once and every prediction's `timings` are the batch's: each stage's
    /// wall time summed over the batch (vision, projector, prefill run per request) or spent
    /// once for all (the batched decode), and `total_ms` the whole call, the same for every
    /// member. The provided method runs [`Policy::predict`] on each request in turn, each with
    /// its own timings.
    fn predict_batch(
        &mut self,
        requests: &[BatchRequest<'_>],
    ) -> Vec<Result<Prediction, PolicyError>> {
        requests
            .iter()
            .map(|r| self.predict(r.image, r.instruction))
            .collect()
    }
    /// Whether [`Policy::predict_batch`] runs the batch as one (faster than one request after
    /// another) rather than the provided sequential loop.
    fn batches_natively(&self) -> bool {
        false
    }
    /// Number of action dimensions (7 for OpenVLA).
    fn action_dim(&self) -> usize;
    /// Whether `predict` would take this instruction (not empty, a prompt that fits), checked
    /// without running the model, so a bad instruction can be refused before it replaces a
    /// good one. Policies without such limits take any non-empty text.
    fn check_instruction(&self, instruction: &str) -> Result<(), PolicyError> {
        if instruction.trim().is_empty() {
            return Err(PolicyError::EmptyInstruction);
        }
        Ok(())
    }
    /// `cpu`, `cuda` or `tensorrt`.
    fn backend_name(&self) -> &'static str;
    /// A short name of the loaded model, for status messages.
    fn model_name(&self) -> &str;
}

/// Weight format of the language model's linear layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Quantization {
    /// The checkpoint's weights, computed in f32.
    #[default]
    None,
    /// Weight-only INT8, one scale per output channel.
    Int8,
    /// Weight-only INT4, group-wise scales.
    Int4,
}

/// Weight format of the projector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProjectorFormat {
    #[default]
    F32,
    /// INT8 weights; INT8 activations too when calibration scales exist (W8A8).
    Int8,
}

/// Which device runs the policy (ARCHITECTURE.md §10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    #[default]
    Cpu,
    Cuda,
    Tensorrt,
}

/// Everything that selects how a checkpoint is turned into a runnable policy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolicyOptions {
    pub backend: BackendKind,
    /// Dataset statistics key for un-normalisation; `None` picks the only one, if only one exists.
    pub unnorm_key: Option<String>,
    pub quantization: Quantization,
    pub projector: ProjectorFormat,
    /// A pre-quantized weight file (`vla-rt quantize`) to memory-map instead of quantizing
    /// the language model at load; it must have been made from this checkpoint.
    pub quantized_weights: Option<std::path::PathBuf>,
    /// Calibrated activation scales of the projector: with `projector = Int8` they make it
    /// W8A8; without them the projector is INT8 weight-only.
    pub projector_scales: Option<crate::model::quant_scales::ProjectorScales>,
    /// OpenVLA-OFT settings given by the caller (the service's `[model]` keys).
    pub oft: OftKeys,
}

/// What an OpenVLA-OFT checkpoint needs and no published file records, given by the caller
/// instead of, or as well as, the checkpoint's `vla_rt_model.json` (for a checkpoint folder
/// that cannot be written to). A value given both ways must be the same.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OftKeys {
    pub num_actions_chunk: Option<usize>,
    pub num_images_in_input: Option<usize>,
    pub action_normalization: Option<crate::model::config::ActionNormalization>,
}

/// An enum chosen by name in a config file or on a command line: the lowercase names are
/// the serde names, and the command-line parser (which lives above this crate) offers
/// exactly `NAMES`.
pub trait NamedVariant: Sized + Copy + 'static {
    /// Every variant's name, in declaration order.
    const NAMES: &'static [&'static str];
    /// The variant of that name, if any.
    fn from_name(name: &str) -> Option<Self>;
    /// This variant's name.
    fn name(self) -> &'static str;
}

/// Implements [`NamedVariant`] for a fieldless enum from its variants' names:
/// `named_variants!(Mode { Off => "off", On => "on" });`.
#[macro_export]
macro_rules! named_variants {
    ($ty:ty { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $crate::policy::NamedVariant for $ty {
            const NAMES: &'static [&'static str] = &[$($name),+];
            fn from_name(name: &str) -> Option<Self> {
                match name {
                    $($name => Some(Self::$variant),)+
                    _ => None,
                }
            }
            fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)+
                }
            }
        }
    };
}

named_variants!(Quantization { None => "none", Int8 => "int8", Int4 => "int4" });
named_variants!(ProjectorFormat { F32 => "f32", Int8 => "int8" });
named_variants!(BackendKind { Cpu => "cpu", Cuda => "cuda", Tensorrt => "tensorrt" });

#[cfg(test)]
mod tests {
    use super::*;

    /// The names are the serde names, so a config file and the command line agree.
    fn names_match_serde<T>()
    where
        T: NamedVariant + std::fmt::Debug + PartialEq + for<'de> serde::Deserialize<'de>,
    {
        for name in T::NAMES {
            let variant = T::from_name(name);
            assert!(variant.is_some(), "{name} has no variant");
            let from_json: T = serde_json::from_str(&format!("\"{name}\"")).unwrap_or_else(|e| {
                panic!("serde does not accept {name}: {e}");
            });
            assert_eq!(Some(from_json), variant);
            assert_eq!(from_json.name(), *name);
        }
        assert!(T::from_name("no-such-variant").is_none());
    }

    #[test]
    fn variant_names_are_the_serde_names() {
        names_match_serde::<Quantization>();
        names_match_serde::<ProjectorFormat>();
        names_match_serde::<BackendKind>();
    }
}
