//! Backends that run the model on a device, each behind [`crate::policy::Policy`].

pub mod cpu;
pub mod cuda;
#[cfg(feature = "tensorrt")]
pub mod tensorrt;

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::model::ModelError;
use crate::policy::{BackendKind, Policy, PolicyError, PolicyOptions, Prediction};
use crate::preprocess::{Preprocessor, RgbImage};

/// The checkpoint file that holds the normalisation constants of the preprocessing.
pub const PREPROCESSOR_CONFIG_FILE: &str = "preprocessor_config.json";

/// The TensorRT runtime library opened when none is configured.
pub const DEFAULT_TENSORRT_LIBRARY: &str = "libnvinfer.so.10";
/// Where the engines are looked for when none is configured: this folder of the checkpoint.
pub const DEFAULT_ENGINES_SUBDIR: &str = "tensorrt";

/// Where the TensorRT backend finds its engines and its library (`[model] engines`,
/// `[model] tensorrt_library`); unused by the other backends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TensorrtOptions {
    /// The folder `engines/build-trt.sh` wrote (engines + manifest); default
    /// `<model>/tensorrt`.
    pub engines: Option<PathBuf>,
    /// libnvinfer to open; default `libnvinfer.so.10` through the dynamic loader's path.
    pub library: Option<PathBuf>,
}

impl TensorrtOptions {
    pub fn engines_dir(&self, model_dir: &Path) -> PathBuf {
        self.engines
            .clone()
            .unwrap_or_else(|| model_dir.join(DEFAULT_ENGINES_SUBDIR))
    }

    pub fn library(&self) -> PathBuf {
        self.library
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_TENSORRT_LIBRARY))
    }
}

/// Loads the checkpoint folder `model_dir` on the backend named in `options` (TensorRT
/// engines from their default place).
pub fn load_policy(
    model_dir: &Path,
    options: &PolicyOptions,
) -> Result<Box<dyn Policy>, PolicyError> {
    load_policy_with(model_dir, options, &TensorrtOptions::default())
}

/// [`load_policy`] with the TensorRT backend's engines and library given.
pub fn load_policy_with(
    model_dir: &Path,
    options: &PolicyOptions,
    tensorrt: &TensorrtOptions,
) -> Result<Box<dyn Policy>, PolicyError> {
    match options.backend {
        BackendKind::Cpu => Ok(Box::new(cpu::CpuPolicy::load(model_dir, options)?)),
        BackendKind::Cuda => Ok(Box::new(cuda::CudaPolicy::load(model_dir, options)?)),
        BackendKind::Tensorrt => load_tensorrt(model_dir, options, tensorrt),
    }
}

#[cfg(feature = "tensorrt")]
fn load_tensorrt(
    model_dir: &Path,
    options: &PolicyOptions,
    tensorrt: &TensorrtOptions,
) -> Result<Box<dyn Policy>, PolicyError> {
    Ok(Box::new(tensorrt::TensorrtPolicy::load(
        model_dir, options, tensorrt,
    )?))
}

#[cfg(not(feature = "tensorrt"))]
fn load_tensorrt(
    _model_dir: &Path,
    _options: &PolicyOptions,
    _tensorrt: &TensorrtOptions,
) -> Result<Box<dyn Policy>, PolicyError> {
    Err(PolicyError::Unavailable {
        backend: "tensorrt",
        message: "this build has no TensorRT support (cargo feature `tensorrt`)".into(),
    })
}

/// What a backend runs after the (CPU, Pillow-exact) preprocessing: `pixel_values`
/// (`[6, 224, 224]`) and an instruction in, one prediction out.
pub trait PixelRunner: Send {
    /// `cpu`, `cuda` or `tensorrt`.
    const BACKEND: &'static str;
    /// Number of `pixel_values` the model takes.
    fn pixel_values_len(&self) -> usize;
    fn action_dim(&self) -> usize;
    /// The policy from `pixel_values`; `timings.preprocess_ms` and `total_ms` are left to the caller.
    fn predict_pixels(
        &mut self,
        pixel_values: &[f32],
        instruction: &str,
    ) -> Result<Prediction, PolicyError>;
    /// Refuses an instruction [`PixelRunner::predict_pixels`] would refuse (empty, or a prompt
    /// longer than the KV cache holds), without running the model.
    fn check_instruction(&self, instruction: &str) -> Result<(), PolicyError>;
}

/// A backend's runner behind the preprocessing: the [`Policy`] every backend exposes.
#[derive(Debug)]
pub struct ImagePolicy<R> {
    runner: R,
    preprocessor: Preprocessor,
    /// `[6, 224, 224]`, reused between calls.
    pixel_values: Vec<f32>,
    model_name: String,
}

impl<R: PixelRunner> ImagePolicy<R> {
    /// `runner` with the preprocessing of the checkpoint in `model_dir`.
    pub fn with_checkpoint_preprocessing(runner: R, model_dir: &Path) -> Result<Self, PolicyError> {
        let preprocessor =
            Preprocessor::from_config_file(&model_dir.join(PREPROCESSOR_CONFIG_FILE))?;
        Self::new(runner, preprocessor, model_dir)
    }

    pub fn new(
        runner: R,
        preprocessor: Preprocessor,
        model_dir: &Path,
    ) -> Result<Self, PolicyError> {
        if preprocessor.output_len() != runner.pixel_values_len() {
            return Err(PolicyError::Model(ModelError::Math {
                op: "preprocessing",
                message: format!(
                    "preprocessor writes {} values, the model takes {}",
                    preprocessor.output_len(),
                    runner.pixel_values_len()
                ),
            }));
        }
        let model_name = model_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| model_dir.display().to_string());
        Ok(Self {
            pixel_values: vec![0.0; preprocessor.output_len()],
            runner,
            preprocessor,
            model_name,
        })
    }

    pub fn runner(&self) -> &R {
        &self.runner
    }

    pub fn runner_mut(&mut self) -> &mut R {
        &mut self.runner
    }

    /// The `pixel_values` the preprocessing produced for the latest image.
    pub fn last_pixel_values(&self) -> &[f32] {
        &self.pixel_values
    }
}

impl<R: PixelRunner> Policy for ImagePolicy<R> {
    fn predict(&mut self, image: &RgbImage, instruction: &str) -> Result<Prediction, PolicyError> {
        if instruction.trim().is_empty() {
            return Err(PolicyError::EmptyInstruction);
        }
        let start = Instant::now();
        self.preprocessor.run(image, &mut self.pixel_values)?;
        let preprocess_ms = start.elapsed().as_secs_f64() * 1e3;
        let mut prediction = self
            .runner
            .predict_pixels(&self.pixel_values, instruction)?;
        prediction.timings.preprocess_ms = preprocess_ms;
        prediction.timings.total_ms = start.elapsed().as_secs_f64() * 1e3;
        Ok(prediction)
    }

    fn action_dim(&self) -> usize {
        self.runner.action_dim()
    }

    fn check_instruction(&self, instruction: &str) -> Result<(), PolicyError> {
        if instruction.trim().is_empty() {
            return Err(PolicyError::EmptyInstruction);
        }
        self.runner.check_instruction(instruction)
    }

    fn backend_name(&self) -> &'static str {
        R::BACKEND
    }

    fn model_name(&self) -> &str {
        &self.model_name
    }
}
