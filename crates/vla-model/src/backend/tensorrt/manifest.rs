//! `manifest.json` of an engine folder, written by `engines/build-trt.sh`: what the engines
//! were built from (checkpoint fingerprint, ONNX hashes) and for (TensorRT version, GPU).
//! A TensorRT engine runs only on the TensorRT version and GPU model it was built with, and
//! only makes sense with the checkpoint it was exported from: each is checked before any
//! engine is deserialized, with one line naming the mismatch.

use std::path::{Path, PathBuf};

use super::{TensorrtError, TrtVersion};
use crate::model::onnx::TensorSpec;

/// The manifest's file name inside an engine folder.
pub const ENGINE_MANIFEST_FILE: &str = "manifest.json";
/// `format` of an engine manifest.
pub const ENGINE_MANIFEST_FORMAT: &str = "vla-rt tensorrt engines v1";

/// The GPU the engines were built on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GpuSpec {
    /// The device name as CUDA reports it (`NVIDIA H200`, `Orin`).
    pub name: String,
    /// `major.minor` (`9.0`, `8.7`).
    pub compute_capability: String,
}

/// One engine file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EngineEntry {
    /// `dinov2` or `siglip`, in `pixel_values` channel order.
    pub name: String,
    /// The plan file, relative to the manifest.
    pub file: String,
    /// The ONNX graph it was built from and that file's `sha256:<hex>`.
    pub onnx: String,
    pub onnx_sha256: String,
    pub input: TensorSpec,
    pub output: TensorSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EngineManifest {
    pub format: String,
    /// `major.minor.patch` of the TensorRT that built the engines.
    pub tensorrt_version: String,
    pub gpu: GpuSpec,
    /// [`crate::model::checkpoint_fingerprint`] of the checkpoint the ONNX was exported from.
    pub checkpoint_fingerprint: String,
    /// `fp16`
    pub precision: String,
    pub engines: Vec<EngineEntry>,
}

impl EngineManifest {
    /// Reads `dir/manifest.json`; returns it with its path (for messages).
    pub fn from_dir(dir: &Path) -> Result<(Self, PathBuf), TensorrtError> {
        let path = dir.join(ENGINE_MANIFEST_FILE);
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|e| TensorrtError::Manifest {
            path: shown.clone(),
            field: "file",
            message: format!(
                "{e}; build the engines first (vla-rt export-onnx, then engines/build-trt.sh) \
                 or point [model] engines at their folder"
            ),
        })?;
        let manifest: Self = serde_json::from_str(&text).map_err(|e| TensorrtError::Manifest {
            path: shown.clone(),
            field: "file",
            message: format!("not an engine manifest: {e}"),
        })?;
        if manifest.format != ENGINE_MANIFEST_FORMAT {
            return Err(TensorrtError::Manifest {
                path: shown,
                field: "format",
                message: format!("`{}`, expected `{ENGINE_MANIFEST_FORMAT}`", manifest.format),
            });
        }
        Ok((manifest, path))
    }

    /// The engines must come from the checkpoint whose fingerprint is `fingerprint`.
    pub fn check_checkpoint(
        &self,
        path: &Path,
        model_dir: &Path,
        fingerprint: &str,
    ) -> Result<(), TensorrtError> {
        if self.checkpoint_fingerprint == fingerprint {
            return Ok(());
        }
        Err(TensorrtError::Manifest {
            path: path.display().to_string(),
            field: "checkpoint_fingerprint",
            message: format!(
                "engines built for checkpoint {}, but {} is {fingerprint}; export and build \
                 them again for this checkpoint",
                self.checkpoint_fingerprint,
                model_dir.display()
            ),
        })
    }

    /// The engines must have been built by the TensorRT version `library` is.
    pub fn check_tensorrt(&self, path: &Path, library: TrtVersion) -> Result<(), TensorrtError> {
        if self.tensorrt_version == library.to_string() {
            return Ok(());
        }
        Err(TensorrtError::Manifest {
            path: path.display().to_string(),
            field: "tensorrt_version",
            message: format!(
                "engines built with TensorRT {}, the library here is TensorRT {library}; \
                 build them again on this machine",
                self.tensorrt_version
            ),
        })
    }

    /// The engines must have been built on this GPU model (`name`, compute capability).
    pub fn check_gpu(
        &self,
        path: &Path,
        name: &str,
        capability: (i32, i32),
    ) -> Result<(), TensorrtError> {
        let here = format!("{}.{}", capability.0, capability.1);
        if self.gpu.name == name && self.gpu.compute_capability == here {
            return Ok(());
        }
        Err(TensorrtError::Manifest {
            path: path.display().to_string(),
            field: "gpu",
            message: format!(
                "engines built on {} (compute capability {}), this GPU is {name} ({here}); \
                 build them again on this machine",
                self.gpu.name, self.gpu.compute_capability
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn manifest() -> EngineManifest {
        EngineManifest {
            format: ENGINE_MANIFEST_FORMAT.into(),
            tensorrt_version: "10.3.0".into(),
            gpu: GpuSpec {
                name: "Orin".into(),
                compute_capability: "8.7".into(),
            },
            checkpoint_fingerprint: "sha256:aa".into(),
            precision: "fp16".into(),
            engines: Vec::new(),
        }
    }

    #[test]
    fn each_mismatch_names_its_field_and_both_values() {
        let m = manifest();
        let p = Path::new("e/manifest.json");
        m.check_checkpoint(p, Path::new("ckpt"), "sha256:aa")
            .unwrap();
        let e = m
            .check_checkpoint(p, Path::new("ckpt"), "sha256:bb")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("checkpoint_fingerprint")
                && e.contains("sha256:aa")
                && e.contains("sha256:bb"),
            "{e}"
        );

        m.check_tensorrt(p, TrtVersion::from_number(100300))
            .unwrap();
        let e = m
            .check_tensorrt(p, TrtVersion::from_number(101600))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tensorrt_version") && e.contains("10.3.0") && e.contains("10.16.0"),
            "{e}"
        );

        m.check_gpu(p, "Orin", (8, 7)).unwrap();
        for (name, cc) in [("NVIDIA H200", (9, 0)), ("Orin", (8, 6))] {
            let e = m.check_gpu(p, name, cc).unwrap_err().to_string();
            assert!(e.starts_with("e/manifest.json: gpu: "), "{e}");
            assert!(
                e.contains(name) && e.contains("Orin (compute capability 8.7)"),
                "{e}"
            );
            assert_eq!(e.lines().count(), 1);
        }
    }

    #[test]
    fn a_missing_or_foreign_manifest_is_refused_naming_the_file() {
        let dir = std::env::temp_dir().join(format!("vla_trt_manifest_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let e = EngineManifest::from_dir(&dir.join("absent"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("absent/manifest.json: file:"), "{e}");
        std::fs::write(dir.join(ENGINE_MANIFEST_FILE), "{\"format\": 3}").unwrap();
        let e = EngineManifest::from_dir(&dir).unwrap_err().to_string();
        assert!(e.contains("not an engine manifest"), "{e}");
        let mut m = manifest();
        m.format = "something else".into();
        std::fs::write(
            dir.join(ENGINE_MANIFEST_FILE),
            serde_json::to_string(&m).unwrap(),
        )
        .unwrap();
        let e = EngineManifest::from_dir(&dir).unwrap_err().to_string();
        assert!(e.contains("format: `something else`"), "{e}");
        std::fs::write(
            dir.join(ENGINE_MANIFEST_FILE),
            serde_json::to_string(&manifest()).unwrap(),
        )
        .unwrap();
        assert_eq!(EngineManifest::from_dir(&dir).unwrap().0, manifest());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
