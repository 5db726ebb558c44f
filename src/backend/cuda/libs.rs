//! Finding CUDA's shared libraries before cudarc touches them: cudarc panics when a library it
//! loads lazily is missing, so every library is probed first and a missing one becomes an
//! error naming it.
//!
//! Besides the loader's own search (`LD_LIBRARY_PATH`, ld.so.cache), the toolkit libraries
//! (NVRTC, cuBLAS) are looked for in the usual install places and in the `nvidia-*` Python
//! wheels; one found there is loaded by full path with `RTLD_GLOBAL`, after which cudarc's
//! load by soname finds the already-loaded copy.

use std::ffi::CString;
use std::path::{Path, PathBuf};

/// A library cudarc loads, with the soname stems to look for outside the loader's path.
#[derive(Debug, Clone, Copy)]
pub struct CudaLibrary {
    pub name: &'static str,
    stems: &'static [&'static str],
}

pub const NVRTC: CudaLibrary = CudaLibrary {
    name: "libnvrtc",
    stems: &["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"],
};
pub const CUBLAS: CudaLibrary = CudaLibrary {
    name: "libcublas",
    stems: &["libcublas.so.13", "libcublas.so.12", "libcublas.so"],
};
pub const CUBLASLT: CudaLibrary = CudaLibrary {
    name: "libcublasLt",
    stems: &["libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"],
};

/// Folders where CUDA toolkits and NVIDIA's Python wheels put their libraries.
pub fn candidate_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(home) = std::env::var_os(var) {
            dirs.push(PathBuf::from(home).join("lib64"));
        }
    }
    dirs.push(PathBuf::from("/usr/local/cuda/lib64"));
    dirs.push(PathBuf::from("/usr/local/cuda/targets/x86_64-linux/lib"));
    dirs.push(PathBuf::from("/usr/local/cuda/targets/aarch64-linux/lib"));
    dirs.extend(python_wheel_lib_dirs());
    dirs
}

/// `site-packages/nvidia/{cu13,cu12,cuda_nvrtc,cublas}/lib` of the Python installs on `PATH`
/// and of the common prefixes.
pub fn python_wheel_lib_dirs() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = Vec::new();
    let mut prefixes: Vec<PathBuf> = vec!["/usr/lib".into(), "/usr/local/lib".into()];
    if let Some(home) = std::env::var_os("HOME") {
        prefixes.push(PathBuf::from(&home).join(".local/lib"));
        let pyenv = PathBuf::from(&home).join(".pyenv/versions");
        if let Ok(entries) = std::fs::read_dir(pyenv) {
            prefixes.extend(entries.flatten().map(|e| e.path().join("lib")));
        }
    }
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV") {
        prefixes.push(PathBuf::from(venv).join("lib"));
    }
    prefixes.push("/opt/torch/.venv/lib".into());
    for prefix in prefixes {
        if let Ok(entries) = std::fs::read_dir(&prefix) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("python3") {
                    roots.push(e.path().join("site-packages/nvidia"));
                    roots.push(e.path().join("dist-packages/nvidia"));
                }
            }
        }
    }
    // Wherever else `python3` keeps its packages (virtualenvs, conda, distro layouts).
    if let Ok(out) = std::process::Command::new("python3")
        .args(["-c", "import nvidia; print('\\n'.join(nvidia.__path__))"])
        .stderr(std::process::Stdio::null())
        .output()
    {
        if out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            roots.extend(text.lines().filter(|l| !l.is_empty()).map(PathBuf::from));
        }
    }
    let mut dirs = Vec::new();
    for root in roots {
        for sub in ["cu13", "cu12", "cuda_nvrtc", "cublas"] {
            let dir = root.join(sub).join("lib");
            if dir.is_dir() {
                dirs.push(dir);
            }
        }
    }
    dirs
}

fn dlopen_global(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated path; loading a CUDA library runs only its own
    // initialisers, and the handle is deliberately kept open for the life of the process.
    let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    !handle.is_null()
}

fn dlopen_by_name(name: &str) -> bool {
    let Ok(c) = CString::new(name) else {
        return false;
    };
    // SAFETY: as in `dlopen_global`; a soname is resolved through the loader's normal search.
    let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    !handle.is_null()
}

/// Makes `lib` loadable by soname: already on the loader's path, or found in one of
/// [`candidate_dirs`] and loaded from there. Returns where it came from, or `None`.
pub fn ensure_loaded(lib: CudaLibrary) -> Option<String> {
    for stem in lib.stems {
        if dlopen_by_name(stem) {
            return Some((*stem).to_string());
        }
    }
    for dir in candidate_dirs() {
        for stem in lib.stems {
            let path = dir.join(stem);
            if path.is_file() && dlopen_global(&path) {
                return Some(path.display().to_string());
            }
        }
    }
    None
}
