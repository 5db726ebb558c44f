//! Backends that run the model on a device, each behind [`crate::policy::Policy`].

pub mod cpu;
pub mod cuda;
pub mod oft;
pub mod oft_cpu;
#[cfg(feature = "tensorrt")]
pub mod tensorrt;

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::model::ModelError;
use crate::policy::{BackendKind, BatchRequest, Policy, PolicyError, PolicyOptions, Prediction};
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
    if model_dir.is_dir() && crate::model::oft::find_files(model_dir)?.is_some() {
        return match options.backend {
            BackendKind::Cpu => Ok(Box::new(oft_cpu::OftCpuPolicy::load(model_dir, options)?)),
            BackendKind::Cuda => Ok(Box::new(cuda::OftCudaPolicy::load(model_dir, options)?)),
            BackendKind::Tensorrt => Err(PolicyError::Unavailable {
                backend: "tensorrt",
                message: "an OpenVLA-OFT checkpoint (action chunks) runs on the cpu and cuda \
                          backends only in this version"
                    .into(),
            }),
        };
    }
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
    /// [`PixelRunner::predict_pixels`] for each pair of `pixel_values[i]` and
    /// `instructions[i]`, one result per pair in order; a bad pair gets its own error without
    /// failing the others. The provided method runs them one after another; a runner that
    /// batches natively overrides it and [`PixelRunner::batches_natively`].
    fn predict_pixels_batch(
        &mut self,
        pixel_values: &[&[f32]],
        instructions: &[&str],
    ) -> Vec<Result<Prediction, PolicyError>> {
        if let Some(mismatch) = batch_length_mismatch(Self::BACKEND, pixel_values, instructions) {
            return mismatch;
        }
        pixel_values
            .iter()
            .zip(instructions)
            .map(|(pixels, instruction)| self.predict_pixels(pixels, instruction))
            .collect()
    }
    /// Whether [`PixelRunner::predict_pixels_batch`] runs the batch as one.
    fn batches_natively(&self) -> bool {
        false
    }
}

/// One error per entry of the longer list when `pixel_values` and `instructions` differ in
/// length; `None` when they match.
pub(crate) fn batch_length_mismatch(
    backend: &'static str,
    pixel_values: &[&[f32]],
    instructions: &[&str],
) -> Option<Vec<Result<Prediction, PolicyError>>> {
    if pixel_values.len() == instructions.len() {
        return None;
    }
    let count = pixel_values.len().max(instructions.len());
    Some(
        (0..count)
            .map(|_| {
                Err(PolicyError::Backend {
                    backend,
                    message: format!(
                        "a batch of {} pixel_values and {} instructions",
                        pixel_values.len(),
                        instructions.len()
                    ),
                })
            })
            .collect(),
    )
}

/// A backend's runner behind the preprocessing: the [`Policy`] every backend exposes.
/// A preprocessor whose `pixel_values` are not what the model takes is a broken checkpoint.
pub(crate) fn check_preprocessing(
    preprocessor: &Preprocessor,
    model_len: usize,
) -> Result<(), PolicyError> {
    if preprocessor.output_len() == model_len {
        return Ok(());
    }
    Err(PolicyError::Model(ModelError::Math {
        op: "preprocessing",
        message: format!(
            "preprocessor writes {} values, the model takes {model_len}",
            preprocessor.output_len()
        ),
    }))
}

/// The short name of a checkpoint folder that status messages show.
pub(crate) fn model_name(model_dir: &Path) -> String {
    model_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| model_dir.display().to_string())
}

#[derive(Debug)]
pub struct ImagePolicy<R> {
    runner: R,
    preprocessor: Preprocessor,
    /// `[6, 224, 224]`, reused between calls.
    pixel_values: Vec<f32>,
    /// One `[6, 224, 224]` buffer per request of the largest batch so far, reused.
    batch_pixel_values: Vec<Vec<f32>>,
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
        check_preprocessing(&preprocessor, runner.pixel_values_len())?;
        let model_name = model_name(model_dir);
        Ok(Self {
            pixel_values: vec![0.0; preprocessor.output_len()],
            batch_pixel_values: Vec::new(),
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

    /// Preprocesses every image, then runs the requests that are left through
    /// [`PixelRunner::predict_pixels_batch`]. `timings.preprocess_ms` is the preprocessing of
    /// the whole batch and `total_ms` the whole call, the same for every member; the other
    /// stages are as the runner reports them (the batch's for a runner that batches natively).
    fn predict_batch(
        &mut self,
        requests: &[BatchRequest<'_>],
    ) -> Vec<Result<Prediction, PolicyError>> {
        let start = Instant::now();
        let len = self.preprocessor.output_len();
        if self.batch_pixel_values.len() < requests.len() {
            self.batch_pixel_values
                .resize_with(requests.len(), || vec![0.0; len]);
        }
        // Requests that fail before the model get their error here; the others run.
        let mut results: Vec<Option<Result<Prediction, PolicyError>>> = Vec::new();
        results.resize_with(requests.len(), || None);
        let mut ready = Vec::with_capacity(requests.len());
        for ((request, pixels), result) in requests
            .iter()
            .zip(&mut self.batch_pixel_values)
            .zip(&mut results)
        {
            if request.instruction.trim().is_empty() {
                *result = Some(Err(PolicyError::EmptyInstruction));
            } else if let Err(e) = self.preprocessor.run(request.image, pixels) {
                *result = Some(Err(e.into()));
            } else {
                ready.push(request.instruction);
            }
        }
        let preprocess_ms = start.elapsed().as_secs_f64() * 1e3;
        let pixel_values: Vec<&[f32]> = self
            .batch_pixel_values
            .iter()
            .zip(&results)
            .filter(|(_, result)| result.is_none())
            .map(|(pixels, _)| pixels.as_slice())
            .collect();
        let mut predicted = self
            .runner
            .predict_pixels_batch(&pixel_values, &ready)
            .into_iter();
        let total_ms = start.elapsed().as_secs_f64() * 1e3;
        results
            .into_iter()
            .map(|result| match result {
                Some(early) => early,
                None => {
                    let mut prediction = predicted.next().unwrap_or_else(|| {
                        Err(PolicyError::Backend {
                            backend: R::BACKEND,
                            message: "the runner returned fewer results than requests".into(),
                        })
                    })?;
                    prediction.timings.preprocess_ms = preprocess_ms;
                    prediction.timings.total_ms = total_ms;
                    Ok(prediction)
                }
            })
            .collect()
    }

    fn batches_natively(&self) -> bool {
        self.runner.batches_natively()
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
