//! # vla-model
//!
//! The bottom layer of vla-rt: an OpenVLA checkpoint and the pure model math, run on a
//! device. Image and instruction in, action out; no threads of its own, no transport, no
//! command line, no camera.
//!
//! - [`preprocess`]: Pillow-exact bicubic resize to 224 and the two normalisations.
//! - [`model`]: the checkpoint, the ViTs, the projector, the Llama, quantization and the
//!   action de-tokenisation; device-neutral.
//! - [`backend`]: runs the model on the CPU, CUDA or TensorRT.
//! - [`policy`]: the [`policy::Policy`] trait, the one interface the runtime sees.

pub mod backend;
pub mod model;
pub mod policy;
pub mod preprocess;
