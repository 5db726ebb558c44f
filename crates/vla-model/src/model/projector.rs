//! The fused-GELU MLP projector (OPENVLA_FACTS §3): `fc1` → GELU → `fc2` → GELU → `fc3`, all
//! with bias, mapping the concatenated patch features `[256, D_dino + D_siglip]` to the
//! language model's width.

use super::checkpoint::Checkpoint;
use super::linear::Linear;
use super::ops;
use super::ModelError;

#[derive(Debug, Clone)]
pub struct Projector {
    prefix: String,
    fc1: Linear,
    fc2: Linear,
    fc3: Linear,
}

impl Projector {
    /// Loads `{prefix}.fc{1,2,3}`; widths come from the tensors, checked against the vision
    /// width and the language model's hidden size.
    pub fn load(
        ckpt: &Checkpoint,
        prefix: &str,
        vision_dim: usize,
        llm_dim: usize,
    ) -> Result<Self, ModelError> {
        let (hidden, _) = ckpt.matrix_shape(&format!("{prefix}.fc1.weight"))?;
        Ok(Self {
            prefix: prefix.to_string(),
            fc1: ckpt.linear(&format!("{prefix}.fc1"), hidden, vision_dim, true)?,
            fc2: ckpt.linear(&format!("{prefix}.fc2"), llm_dim, hidden, true)?,
            fc3: ckpt.linear(&format!("{prefix}.fc3"), llm_dim, llm_dim, true)?,
        })
    }

    pub fn in_features(&self) -> usize {
        self.fc1.in_features()
    }

    pub fn out_features(&self) -> usize {
        self.fc3.out_features()
    }

    /// Visits `fc1`, `fc2`, `fc3` with their checkpoint names (`projector.fc1`, ...).
    pub fn for_each_linear_mut(
        &mut self,
        f: &mut dyn FnMut(&str, &mut Linear) -> Result<(), ModelError>,
    ) -> Result<(), ModelError> {
        f(&format!("{}.fc1", self.prefix), &mut self.fc1)?;
        f(&format!("{}.fc2", self.prefix), &mut self.fc2)?;
        f(&format!("{}.fc3", self.prefix), &mut self.fc3)
    }

    /// `features` `[rows, in_features]` → `out` `[rows, out_features]`.
    pub fn forward(&self, features: &[f32], out: &mut [f32]) -> Result<(), ModelError> {
        self.forward_observed(features, out, &mut |_, _| {})
    }

    /// [`Self::forward`], showing `observe` each layer's input with the layer's checkpoint
    /// name (the activation ranges that calibrate the INT8 projector).
    pub fn forward_observed(
        &self,
        features: &[f32],
        out: &mut [f32],
        observe: &mut dyn FnMut(&str, &[f32]),
    ) -> Result<(), ModelError> {
        observe(&format!("{}.fc1", self.prefix), features);
        let rows = features.len() / self.in_features().max(1);
        // [rows, hidden]
        let mut hidden = vec![0.0f32; rows * self.fc1.out_features()];
        self.fc1.forward(features, &mut hidden)?;
        ops::gelu_erf(&mut hidden);
        observe(&format!("{}.fc2", self.prefix), &hidden);
        // [rows, llm_dim]
        let mut mid = vec![0.0f32; rows * self.fc2.out_features()];
        self.fc2.forward(&hidden, &mut mid)?;
        ops::gelu_erf(&mut mid);
        observe(&format!("{}.fc3", self.prefix), &mid);
        self.fc3.forward(&mid, out)
    }
}
