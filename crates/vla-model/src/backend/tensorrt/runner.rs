//! [`TensorrtModelRunner`]: the CUDA backend's model with the two encoders as TensorRT
//! engines, and [`TensorrtPolicy`]: CPU preprocessing + the runner behind
//! [`Policy`](crate::policy::Policy).

use std::ffi::c_void;
use std::path::{Path, PathBuf};

use super::ffi::{ContextId, IoTensor, DATA_TYPE_FLOAT};
use super::manifest::{EngineEntry, EngineManifest};
use super::{TensorrtError, TrtSession, TrtVersion};
use crate::backend::cuda::device::Gpu;
use crate::backend::cuda::policy::{CudaModelRunner, ModelSpec};
use crate::backend::cuda::vision::ExternalEncoders;
use crate::backend::cuda::weights::CheckpointWeights;
use crate::backend::cuda::CudaError;
use crate::backend::{ImagePolicy, PixelRunner, TensorrtOptions};
use crate::model::checkpoint::Checkpoint;
use crate::model::config::{OpenVlaConfig, RuntimeModelConfig};
use crate::model::onnx::ENCODER_NAMES;
use crate::model::openvla::{CONFIG_FILE, TOKENIZER_FILE};
use crate::model::prompt::PromptTokenizer;
use crate::model::quant_file::QuantizedFile;
use crate::model::vit::VitConfig;
use crate::model::ModelError;
use crate::policy::{PolicyError, PolicyOptions, Prediction};

/// The encoder engines, one execution context each, bound to the vision path's buffers.
struct TrtEncoders {
    session: TrtSession,
    /// `(engine name, context, input tensor, output tensor)` per encoder.
    encoders: Vec<(String, ContextId, String, String)>,
}

fn external(engine: &str) -> impl Fn(TensorrtError) -> CudaError + '_ {
    move |e| CudaError::External {
        engine: format!("TensorRT engine {engine}"),
        message: e.to_string(),
    }
}

impl ExternalEncoders for TrtEncoders {
    fn bind(&mut self, index: usize, pixels: u64, features: u64) -> Result<(), CudaError> {
        let Some((name, context, input, output)) = self.encoders.get(index).cloned() else {
            return Err(CudaError::Shape {
                op: "tensorrt encoders",
                message: format!("no engine for encoder {index}"),
            });
        };
        // SAFETY: the vision path binds its own pixel slice (`[3, S, S]` f32, the engine's
        // checked input shape) and a feature buffer of `[patches, D]` f32 (the engine's
        // checked output shape), both device memory that lives as long as the path, which
        // owns these engines.
        unsafe {
            self.session
                .set_address(context, &input, pixels)
                .map_err(external(&name))?;
            self.session
                .set_address(context, &output, features)
                .map_err(external(&name))
        }
    }

    fn enqueue(
        &self,
        index: usize,
        stream: cudarc::driver::sys::CUstream,
    ) -> Result<(), CudaError> {
        let Some((name, context, _, _)) = self.encoders.get(index) else {
            return Err(CudaError::Shape {
                op: "tensorrt encoders",
                message: format!("no engine for encoder {index}"),
            });
        };
        // SAFETY: `stream` is one of the CUDA backend's live streams in the context the
        // engines were deserialized in, and the bound addresses are the vision path's
        // buffers (see `bind`).
        unsafe { self.session.enqueue(*context, stream as *mut c_void) }.map_err(external(name))
    }

    fn describe(&self) -> String {
        format!("TensorRT {}", self.session.version())
    }
}

/// The checkpoint's encoders must match the engine's I/O exactly: one f32 input
/// `[1, 3, S, S]`, one f32 output `[1, patches, D]`, with the manifest's names.
fn check_io(
    entry: &EngineEntry,
    vit: &VitConfig,
    io: &[IoTensor],
) -> Result<(String, String), TensorrtError> {
    let want_in = vec![1, 3, vit.image_size as i64, vit.image_size as i64];
    let want_out = vec![1, vit.num_patches() as i64, vit.embed_dim as i64];
    let fail = |message: String| TensorrtError::Engine {
        engine: entry.file.clone(),
        message,
    };
    let (inputs, outputs): (Vec<&IoTensor>, Vec<&IoTensor>) = io.iter().partition(|t| t.is_input);
    let (&[input], &[output]) = (inputs.as_slice(), outputs.as_slice()) else {
        return Err(fail(format!(
            "has {} inputs and {} outputs, expected one of each",
            inputs.len(),
            outputs.len()
        )));
    };
    for (t, want, spec_name) in [
        (input, &want_in, &entry.input.name),
        (output, &want_out, &entry.output.name),
    ] {
        if &t.name != spec_name {
            return Err(fail(format!(
                "tensor {} where the manifest names {spec_name}",
                t.name
            )));
        }
        if &t.shape != want {
            return Err(fail(format!(
                "tensor {} has shape {:?}, the checkpoint needs {want:?}",
                t.name, t.shape
            )));
        }
        if t.data_type != DATA_TYPE_FLOAT {
            return Err(fail(format!(
                "tensor {} has TensorRT data type {}, expected float (0): build with f32 I/O",
                t.name, t.data_type
            )));
        }
    }
    Ok((input.name.clone(), output.name.clone()))
}

/// The CUDA backend's model with TensorRT encoders.
#[derive(Debug)]
pub struct TensorrtModelRunner {
    inner: CudaModelRunner,
    version: TrtVersion,
    engines_dir: PathBuf,
}

/// A CUDA backend error, reported as the TensorRT backend's.
fn as_tensorrt(e: PolicyError) -> PolicyError {
    match e {
        PolicyError::Backend { message, .. } => PolicyError::Backend {
            backend: "tensorrt",
            message,
        },
        PolicyError::Unavailable { message, .. } => PolicyError::Unavailable {
            backend: "tensorrt",
            message,
        },
        other => other,
    }
}

fn cuda(e: CudaError) -> PolicyError {
    as_tensorrt(e.into())
}

impl TensorrtModelRunner {
    /// Opens libnvinfer, checks the engines' manifest against the checkpoint, the library and
    /// the GPU, deserializes the engines and loads the rest of the model as the CUDA backend.
    pub fn load(
        model_dir: &Path,
        options: &PolicyOptions,
        tensorrt: &TensorrtOptions,
    ) -> Result<Self, PolicyError> {
        if !model_dir.is_dir() {
            return Err(ModelError::File {
                path: model_dir.display().to_string(),
                message: "model folder does not exist".into(),
            }
            .into());
        }
        let mut session = TrtSession::open(&tensorrt.library())?;
        let engines_dir = tensorrt.engines_dir(model_dir);
        let (manifest, manifest_path) = EngineManifest::from_dir(&engines_dir)?;
        let fingerprint = crate::model::checkpoint_fingerprint(model_dir)?;
        manifest.check_checkpoint(&manifest_path, model_dir, &fingerprint)?;
        manifest.check_tensorrt(&manifest_path, session.version())?;
        let gpu = Gpu::open().map_err(cuda)?;
        let capability = gpu
            .context()
            .compute_capability()
            .map_err(CudaError::driver(
                "cuDeviceGetAttribute (compute capability)",
            ))
            .map_err(cuda)?;
        manifest.check_gpu(&manifest_path, gpu.name(), capability)?;

        let config = OpenVlaConfig::from_file(&model_dir.join(CONFIG_FILE))?;
        let tokenizer = PromptTokenizer::from_file(&model_dir.join(TOKENIZER_FILE))?;
        let runtime = RuntimeModelConfig::from_dir(model_dir)?;
        let ckpt = Checkpoint::open_dir(model_dir)?;
        let spec = ModelSpec::from_checkpoint(model_dir, &config, &runtime, &ckpt)?;
        if manifest.engines.len() != spec.vits.len() {
            return Err(TensorrtError::Manifest {
                path: manifest_path.display().to_string(),
                field: "engines",
                message: format!(
                    "{} engines, the checkpoint has {} encoders",
                    manifest.engines.len(),
                    spec.vits.len()
                ),
            }
            .into());
        }
        gpu.bind().map_err(cuda)?;
        let mut encoders = Vec::with_capacity(spec.vits.len());
        for (i, ((_, vit, _), entry)) in spec.vits.iter().zip(&manifest.engines).enumerate() {
            if entry.name != ENCODER_NAMES[i] {
                return Err(TensorrtError::Manifest {
                    path: manifest_path.display().to_string(),
                    field: "engines",
                    message: format!(
                        "engine {i} is {}, expected {}",
                        entry.name, ENCODER_NAMES[i]
                    ),
                }
                .into());
            }
            let plan_path = engines_dir.join(&entry.file);
            let plan = std::fs::read(&plan_path).map_err(|e| TensorrtError::Engine {
                engine: plan_path.display().to_string(),
                message: e.to_string(),
            })?;
            let engine = session.load_engine(&plan, &plan_path.display().to_string())?;
            let (input, output) = check_io(entry, vit, &session.io_tensors(engine)?)?;
            let context = session.create_context(engine)?;
            encoders.push((entry.name.clone(), context, input, output));
        }
        let version = session.version();
        let quantized = options
            .quantized_weights
            .as_ref()
            .map(|path| QuantizedFile::open_for(path, model_dir, options.quantization))
            .transpose()?;
        let mut src = CheckpointWeights {
            ckpt: &ckpt,
            quantized: quantized.as_ref(),
        };
        let inner = CudaModelRunner::build_with_encoders(
            gpu,
            &mut src,
            &spec,
            &config,
            tokenizer,
            options,
            true,
            Some(Box::new(TrtEncoders { session, encoders })),
        )
        .map_err(cuda)?;
        log::info!(
            "TensorRT {version}: encoders from {} ({}), the rest on the CUDA backend",
            engines_dir.display(),
            manifest
                .engines
                .iter()
                .map(|e| e.file.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(Self {
            inner,
            version,
            engines_dir,
        })
    }

    /// The CUDA backend's runner that holds the engines (parity checks, benchmarks).
    pub fn inner(&self) -> &CudaModelRunner {
        &self.inner
    }

    pub fn inner_mut(&mut self) -> &mut CudaModelRunner {
        &mut self.inner
    }

    pub fn version(&self) -> TrtVersion {
        self.version
    }

    pub fn engines_dir(&self) -> &Path {
        &self.engines_dir
    }
}

/// The TensorRT policy: [`TensorrtModelRunner`] behind the (CPU) preprocessing.
pub type TensorrtPolicy = ImagePolicy<TensorrtModelRunner>;

impl TensorrtPolicy {
    pub fn load(
        model_dir: &Path,
        options: &PolicyOptions,
        tensorrt: &TensorrtOptions,
    ) -> Result<Self, PolicyError> {
        let runner = TensorrtModelRunner::load(model_dir, options, tensorrt)?;
        Self::with_checkpoint_preprocessing(runner, model_dir)
    }
}

impl PixelRunner for TensorrtModelRunner {
    const BACKEND: &'static str = "tensorrt";

    fn pixel_values_len(&self) -> usize {
        self.inner.vision().pixels.len()
    }

    fn action_dim(&self) -> usize {
        self.inner.action_dim()
    }

    fn predict_pixels(
        &mut self,
        pixel_values: &[f32],
        instruction: &str,
    ) -> Result<Prediction, PolicyError> {
        self.inner
            .predict_pixels(pixel_values, instruction)
            .map_err(as_tensorrt)
    }

    fn check_instruction(&self, instruction: &str) -> Result<(), PolicyError> {
        self.inner.prompt_ids(instruction).map(|_| ())
    }
}
