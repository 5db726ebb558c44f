//! Finding CUDA's shared libraries before cudarc touches them: cudarc panics when a library it
//! loads lazily is missing, so every library is probed first and a missing one becomes an
//! error naming it.
//!
//! Besides the loader's own search (`LD_LIBRARY_PATH`, ld.so.cache), the toolkit libraries
//! (NVRTC, cuBLAS) are looked for in the usual install places and in the `nvidia-*` Python
//! wheels; one found there is loaded by full path with `RTLD_GLOBAL`, after which cudarc's
//! load by soname finds the already-loaded copy.
//!
//! NVRTC needs one more library: at its first compile it opens `libnvrtc-builtins.so.X.Y` by
//! name. The wheel's `libnvrtc.so` carries no RPATH, so the loader would not look beside it;
//! [`ensure_nvrtc`] therefore loads the builtins from the folder of whichever `libnvrtc` was
//! opened (wheel, toolkit or the loader's path), and NVRTC's own load by name then finds that
//! copy. No environment variable is needed.

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::CudaError;

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

fn dlopen_global(path: &Path) -> Option<*mut libc::c_void> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: `c` is a valid NUL-terminated path; loading a CUDA library runs only its own
    // initialisers, and the handle is deliberately kept open for the life of the process.
    let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    (!handle.is_null()).then_some(handle)
}

fn dlopen_by_name(name: &str) -> Option<*mut libc::c_void> {
    let c = CString::new(name).ok()?;
    // SAFETY: as in `dlopen_global`; a soname is resolved through the loader's normal search.
    let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    (!handle.is_null()).then_some(handle)
}

fn dlerror_text() -> String {
    // SAFETY: dlerror returns null or a NUL-terminated message owned by libc, copied at once.
    let message = unsafe { libc::dlerror() };
    if message.is_null() {
        return "unknown error".into();
    }
    // SAFETY: non-null, NUL-terminated, valid until the next dl* call on this thread.
    unsafe { CStr::from_ptr(message) }
        .to_string_lossy()
        .into_owned()
}

fn symbol(handle: *mut libc::c_void, name: &CStr) -> Option<*mut libc::c_void> {
    // SAFETY: `handle` came from a successful dlopen and is never closed; `name` is
    // NUL-terminated. Looking a symbol up runs no code.
    let address = unsafe { libc::dlsym(handle, name.as_ptr()) };
    (!address.is_null()).then_some(address)
}

/// The file a loaded symbol lives in, as the loader opened it (a full path).
fn library_path(address: *mut libc::c_void) -> Option<PathBuf> {
    let mut info = std::mem::MaybeUninit::<libc::Dl_info>::zeroed();
    // SAFETY: `address` is a symbol of a loaded library; dladdr only fills `info`.
    if unsafe { libc::dladdr(address, info.as_mut_ptr()) } == 0 {
        return None;
    }
    // SAFETY: dladdr returned non-zero, so it filled `info`.
    let info = unsafe { info.assume_init() };
    if info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: `dli_fname` is the loader's NUL-terminated name of the loaded object.
    let name = unsafe { CStr::from_ptr(info.dli_fname) };
    Some(PathBuf::from(std::ffi::OsStr::from_bytes(name.to_bytes())))
}

/// Opens `lib` as [`ensure_loaded`] does and returns the handle and where it came from.
fn open(lib: CudaLibrary) -> Option<(*mut libc::c_void, String)> {
    for stem in lib.stems {
        if let Some(handle) = dlopen_by_name(stem) {
            return Some((handle, (*stem).to_string()));
        }
    }
    for dir in candidate_dirs() {
        for stem in lib.stems {
            let path = dir.join(stem);
            if path.is_file() {
                if let Some(handle) = dlopen_global(&path) {
                    return Some((handle, path.display().to_string()));
                }
            }
        }
    }
    None
}

/// Makes `lib` loadable by soname: already on the loader's path, or found in one of
/// [`candidate_dirs`] and loaded from there. Returns where it came from, or `None`.
pub fn ensure_loaded(lib: CudaLibrary) -> Option<String> {
    open(lib).map(|(_, origin)| origin)
}

/// The NVRTC library in use and the builtins library loaded beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NvrtcLibraries {
    /// Full path of the `libnvrtc` that was opened.
    pub nvrtc: PathBuf,
    /// Full path of its `libnvrtc-builtins.so.X.Y`, or the bare name when only the loader's
    /// own search found it.
    pub builtins: PathBuf,
}

/// The file name NVRTC `major.minor` opens at its first compile.
pub fn nvrtc_builtins_name(major: i32, minor: i32) -> String {
    format!("libnvrtc-builtins.so.{major}.{minor}")
}

/// Loads NVRTC and then its builtins library, so that compiling needs no `LD_LIBRARY_PATH`.
/// The builtins are taken from the folder of the `libnvrtc` opened (by full path, with
/// `RTLD_GLOBAL`); only when that folder lacks them is the loader's own search tried. Done
/// once per process; later calls return the first answer.
pub fn ensure_nvrtc() -> Result<NvrtcLibraries, CudaError> {
    static LOADED: OnceLock<Result<NvrtcLibraries, (&'static str, String)>> = OnceLock::new();
    LOADED
        .get_or_init(load_nvrtc_and_builtins)
        .clone()
        .map_err(|(library, hint)| CudaError::Unavailable { library, hint })
}

fn load_nvrtc_and_builtins() -> Result<NvrtcLibraries, (&'static str, String)> {
    const NVRTC_HINT: &str = "install the nvidia-cuda-nvrtc wheel (scripts/setup.sh) or the \
                              CUDA toolkit, or put its lib folder on LD_LIBRARY_PATH";
    let (handle, _) = open(NVRTC).ok_or(("libnvrtc", NVRTC_HINT.to_string()))?;
    let version = symbol(handle, c"nvrtcVersion").ok_or((
        "libnvrtc",
        "the library opened as libnvrtc has no nvrtcVersion".to_string(),
    ))?;
    let nvrtc = library_path(version).ok_or((
        "libnvrtc",
        "the loader does not say which file it opened".to_string(),
    ))?;
    // SAFETY: `nvrtcVersion` is NVRTC's `nvrtcResult nvrtcVersion(int *major, int *minor)`
    // (a C enum is an int); it only writes the two integers, and the library stays loaded
    // for the life of the process.
    let nvrtc_version: unsafe extern "C" fn(*mut libc::c_int, *mut libc::c_int) -> libc::c_int =
        unsafe { std::mem::transmute(version) };
    let (mut major, mut minor) = (0, 0);
    // SAFETY: see above; both pointers are to live locals.
    if unsafe { nvrtc_version(&mut major, &mut minor) } != 0 {
        return Err((
            "libnvrtc",
            format!("nvrtcVersion failed in {}", nvrtc.display()),
        ));
    }
    let name = nvrtc_builtins_name(major, minor);
    // Beside the file as the loader named it, and beside the real file when that name is a
    // link into another folder.
    let mut dirs: Vec<PathBuf> = nvrtc.parent().map(Path::to_path_buf).into_iter().collect();
    if let Some(real) = std::fs::canonicalize(&nvrtc)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    {
        if !dirs.contains(&real) {
            dirs.push(real);
        }
    }
    let builtins = if let Some(builtins) = builtins_in(&dirs, &name) {
        if dlopen_global(&builtins).is_none() {
            return Err((
                "libnvrtc-builtins",
                format!(
                    "{} could not be loaded: {}",
                    builtins.display(),
                    dlerror_text()
                ),
            ));
        }
        builtins
    } else if dlopen_by_name(&name).is_some() {
        PathBuf::from(name)
    } else {
        return Err((
            "libnvrtc-builtins",
            format!(
                "{name} is neither beside {} nor on the loader's path, and NVRTC cannot \
                 compile without it: reinstall the nvidia-cuda-nvrtc wheel or the CUDA toolkit",
                nvrtc.display()
            ),
        ));
    };
    // cudarc opens NVRTC by soname; the copy loaded above must be the one it finds.
    // SAFETY: a dlopen by name only; no symbol is called.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err((
            "libnvrtc",
            format!(
                "{} is loaded, but under none of the names this build looks for",
                nvrtc.display()
            ),
        ));
    }
    Ok(NvrtcLibraries { nvrtc, builtins })
}

/// The first of `dirs` that holds a file `name`, as a full path.
pub fn builtins_in(dirs: &[PathBuf], name: &str) -> Option<PathBuf> {
    dirs.iter().map(|d| d.join(name)).find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_builtins_are_looked_for_under_nvrtcs_version_in_each_folder_in_order() {
        let root = std::env::temp_dir().join(format!("vla-rt-builtins-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (empty, wheel, toolkit) = (root.join("empty"), root.join("wheel"), root.join("cuda"));
        for dir in [&empty, &wheel, &toolkit] {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(wheel.join("libnvrtc-builtins.so.13.0"), b"").unwrap();
        std::fs::write(toolkit.join("libnvrtc-builtins.so.13.0"), b"").unwrap();
        std::fs::write(toolkit.join("libnvrtc-builtins.so.12.6"), b"").unwrap();

        let name = nvrtc_builtins_name(13, 0);
        assert_eq!(name, "libnvrtc-builtins.so.13.0");
        let dirs = [empty.clone(), wheel.clone(), toolkit.clone()];
        assert_eq!(builtins_in(&dirs, &name), Some(wheel.join(&name)));
        assert_eq!(builtins_in(std::slice::from_ref(&empty), &name), None);
        assert_eq!(
            builtins_in(&[wheel, toolkit.clone()], &nvrtc_builtins_name(12, 6)),
            Some(toolkit.join("libnvrtc-builtins.so.12.6"))
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
