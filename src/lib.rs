//! # vla-rt
//!
//! A real-time runtime for OpenVLA-style vision-language-action policies. One process, one
//! data path, at a fixed control rate:
//!
//! ```text
//! capture ─▶ preprocess ─▶ DINOv2 ∥ SigLIP ─▶ concat [256 × D] ─▶ projector ─▶ Llama prefill
//!         ─▶ greedy decode of the action tokens ─▶ de-tokenise + un-normalise ─▶ safety filter
//!         ─▶ Zenoh `vla/<robot>/cmd`
//! ```
//!
//! The modules follow that path:
//! - [`capture`]: frame sources (synthetic, image folders, V4L2, Zenoh) behind one [`capture::FrameSource`] trait.
//! - [`preprocess`]: Pillow-exact bicubic resize to 224 and the two normalisations.
//! - [`model`]: the checkpoint and the pure model math (ViTs, projector, Llama, action
//!   de-tokenisation); it knows nothing of threads, cameras or Zenoh.
//! - [`backend`]: runs the model on a device; [`policy::Policy`] is the one interface the runtime sees.
//! - [`control`]: the fixed-rate loop, ACT/HOLD/STOP and the safety filter.
//! - [`transport`]: the command record and the Zenoh session.
//! - [`config`]: the service configuration (TOML), validated at start.
//! - [`ros2`]: the same service as a ROS 2 node over rmw_zenoh (twist, gripper, diagnostics,
//!   instruction, e-stop, camera).
//!
//! [`fuzzing`] holds the fuzz harnesses of every parser of outside input (`fuzz/`).

pub mod calibration;
pub mod capture;
pub mod cli;
pub mod config;
#[cfg(feature = "test-hooks")]
pub mod fuzzing;
pub mod recording;
pub mod remote;
pub mod ros2;
pub mod service;
pub mod transport;

// The layers below are crates of their own (ARCHITECTURE.md §1); their modules keep their
// paths here.
pub use vla_control as control;
pub use vla_model::{backend, model, policy, preprocess};
