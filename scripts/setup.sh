#!/usr/bin/env bash
# Installs what building and testing vla-rt needs on a fresh Debian/Ubuntu or JetPack machine,
# then checks each item the way the build and the tests use it:
#   - libclang as bindgen (clang-sys) finds and loads it, for the v4l bindings;
#   - C and C++ compilers (linker, the emulated test camera, the C++ record decoder's test);
#   - CA certificates (cargo fetches crates over HTTPS);
#   - systemd-analyze (the systemd unit's tests);
#   - NVRTC together with its builtins library, compiling a kernel as the backend does
#     (no GPU needed: the kernels' tests compile every CUDA source);
#   - the Python packages the tests drive the service with.
# With --aarch64, also what scripts/aarch64-check.sh needs to cross-compile the JetPack 6 build
# for aarch64 and run its tests under emulation:
#   - the aarch64 C and C++ cross compilers, linking against the aarch64 C library (rustc links
#     through the C compiler; build.rs compiles the TensorRT shim with the C++ one);
#   - the aarch64 kernel headers, parsed by libclang for that target as bindgen does;
#   - qemu-aarch64 user emulation, running a program the cross compiler linked, also when
#     started directly (binfmt_misc), as the tests start the `vla-rt` binary;
#   - the Rust toolchain Cargo.toml's rust-version names, with the aarch64 standard library
#     (installed with rustup), building and linking a Rust program for aarch64.
# Safe to run again; installs only what is missing. Ends with one line per failed check, naming
# the package to install, and a non-zero exit if any failed.
#
#   scripts/setup.sh                   install what is missing, then check
#   scripts/setup.sh --check           check only, install nothing
#   scripts/setup.sh --aarch64         the same, with the aarch64 cross build's items
#   scripts/setup.sh --check --aarch64
set -uo pipefail

PY_ZENOH="eclipse-zenoh==1.10.2"
# The ROS 2 peer of tests/ros2_peer.rs and tests/ros2_rosbags.rs: CDR and type hashes.
PY_ROSBAGS="rosbags==0.11.9"
NVRTC_WHEEL="nvidia-cuda-nvrtc==13.0.88"

install=1
aarch64=0
for arg in "$@"; do
    case "$arg" in
        --check) install=0 ;;
        --aarch64) aarch64=1 ;;
        *) echo "usage: $0 [--check] [--aarch64]" >&2; exit 2 ;;
    esac
done

have() { command -v "$1" >/dev/null 2>&1; }

# Each check prints why it failed (one line) and returns non-zero; it prints nothing on success.

# The C compiler must also link a program: rustc links through `cc`, with libc's start files.
check_cc() {
    have cc || { echo "no C compiler (cc)"; return 1; }
    local dir
    dir=$(mktemp -d) || return 1
    printf '#include <stdio.h>\nint main(void) { return puts("") < 0; }\n' >"$dir/t.c"
    if ! cc -o "$dir/t" "$dir/t.c" >/dev/null 2>&1; then
        rm -rf "$dir"
        echo "cc cannot build and link a C program (C library headers and start files?)"
        return 1
    fi
    rm -rf "$dir"
}
check_cxx() { have c++ || { echo "no C++ compiler (c++)"; return 1; }; }
check_pkg_config() { have pkg-config || { echo "no pkg-config"; return 1; }; }
check_ca_certificates() {
    [ -s /etc/ssl/certs/ca-certificates.crt ] || { echo "no CA certificates for HTTPS"; return 1; }
}
check_systemd_analyze() { have systemd-analyze || { echo "no systemd-analyze"; return 1; }; }
check_python() { have python3 || { echo "no python3"; return 1; }; }
check_pip() {
    python3 -m pip --version >/dev/null 2>&1 || { echo "no pip for python3"; return 1; }
}

# libclang as clang-sys (bindgen's loader, `runtime` feature) finds it: LIBCLANG_PATH alone when
# set, else `llvm-config --prefix`/{bin,lib,lib64}, LD_LIBRARY_PATH, LIBRARY_PATH and the usual
# library folders; names libclang.so, libclang-*.so, libclang.so.*, libclang-*.so.*, never
# libclang-cpp (a different library); the highest version wins. The library it picks must then
# load and parse the V4L2 header the bindings are made from, with its own built-in headers.
# Arguments, when given, are clang's for the parse (a target and its headers).
check_libclang() {
    have python3 || { echo "cannot look for libclang without python3"; return 1; }
    python3 - "$@" <<'PY'
import ctypes, glob, os, subprocess, sys, tempfile

NAMES = ["libclang.so", "libclang-*.so", "libclang.so.*", "libclang-*.so.*"]
DIRS = ["/usr/local/llvm*/lib*", "/usr/local/lib*/*/*", "/usr/local/lib*/*", "/usr/local/lib*",
        "/usr/lib*/*/*", "/usr/lib*/*", "/usr/lib*"]

def search(directory):
    found = []
    for pattern in NAMES:
        for path in sorted(glob.glob(os.path.join(glob.escape(directory), pattern))):
            if "-cpp." not in os.path.basename(path):
                found.append(path)
    return found

def candidates():
    given = os.environ.get("LIBCLANG_PATH")
    if given is not None:
        if os.path.basename(given) in map(os.path.basename, search(os.path.dirname(given) or ".")):
            return [given]
        return search(given)
    found = []
    try:
        out = subprocess.run([os.environ.get("LLVM_CONFIG_PATH", "llvm-config"), "--prefix"],
                             capture_output=True, text=True).stdout.splitlines()
        if out:
            for sub in ("bin", "lib", "lib64"):
                found += search(os.path.join(out[0], sub))
    except OSError:
        pass
    for var in ("LD_LIBRARY_PATH", "LIBRARY_PATH"):
        for d in filter(None, os.environ.get(var, "").split(":")):
            found += search(d)
    for pattern in DIRS:
        for d in sorted(glob.glob(pattern)):
            if os.path.isdir(d):
                found += search(d)
    return found

def version(name):
    if name.startswith("libclang.so."):
        text = name[len("libclang.so."):]
    elif name.startswith("libclang-"):
        text = name[9:-3]
    else:
        return []
    def num(s):
        try:
            return int(s)
        except ValueError:
            return 0
    return [num(s) for s in text.split(".")]

def elf64(path):
    try:
        with open(path, "rb") as f:
            return f.read(5) == b"\x7fELF\x02"
    except OSError:
        return False

valid = [p for p in candidates() if elf64(p)]
if not valid:
    print("no libclang.so that bindgen loads (libclang-cpp is another library)")
    sys.exit(1)
best = valid[0]
for p in valid:
    if version(os.path.basename(p)) > version(os.path.basename(best)):
        best = p
try:
    lib = ctypes.CDLL(best)
    lib.clang_createIndex.restype = ctypes.c_void_p
    lib.clang_parseTranslationUnit.restype = ctypes.c_void_p
    lib.clang_parseTranslationUnit.argtypes = [ctypes.c_void_p, ctypes.c_char_p,
        ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    lib.clang_getNumDiagnostics.argtypes = [ctypes.c_void_p]
    lib.clang_getDiagnostic.restype = ctypes.c_void_p
    lib.clang_getDiagnostic.argtypes = [ctypes.c_void_p, ctypes.c_uint]
    lib.clang_getDiagnosticSeverity.argtypes = [ctypes.c_void_p]
except (OSError, AttributeError) as e:
    print(f"{best} is what bindgen would load, but it does not load as libclang: {e}")
    sys.exit(1)
args = [a.encode() for a in sys.argv[1:]]
with tempfile.NamedTemporaryFile("w", suffix=".h") as header:
    header.write("#include <linux/videodev2.h>\n#include <stddef.h>\n")
    header.flush()
    index = lib.clang_createIndex(0, 0)
    unit = lib.clang_parseTranslationUnit(index, header.name.encode(),
                                          (ctypes.c_char_p * len(args))(*args), len(args),
                                          None, 0, 0)
    if not unit:
        print(f"{best} cannot parse a header")
        sys.exit(1)
    errors = [lib.clang_getDiagnosticSeverity(lib.clang_getDiagnostic(unit, i))
              for i in range(lib.clang_getNumDiagnostics(unit))]
    if any(severity >= 3 for severity in errors):
        given = f" with {' '.join(sys.argv[1:])}" if sys.argv[1:] else ""
        print(f"{best} loads, but cannot parse <linux/videodev2.h>{given} (its built-in "
              "headers or the kernel headers are missing)")
        sys.exit(1)
PY
}

# NVRTC as the backend finds it (src/backend/cuda/libs.rs): the loader's path, a CUDA toolkit or
# an nvidia-* wheel; then its builtins library from beside it, and one kernel compiled.
check_nvrtc() {
    have python3 || { echo "cannot look for NVRTC without python3"; return 1; }
    python3 - <<'PY'
import ctypes, glob, os, sys

STEMS = ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"]

def wheel_dirs():
    try:
        import nvidia
    except ImportError:
        return []
    return [os.path.join(root, sub, "lib") for root in nvidia.__path__
            for sub in ("cu13", "cu12", "cuda_nvrtc")]

def open_nvrtc():
    for stem in STEMS:
        try:
            return ctypes.CDLL(stem, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            pass
    dirs = [os.path.join(os.environ[v], "lib64") for v in ("CUDA_HOME", "CUDA_PATH") if v in os.environ]
    dirs += ["/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib",
             "/usr/local/cuda/targets/aarch64-linux/lib"] + wheel_dirs()
    for d in dirs:
        for stem in STEMS:
            path = os.path.join(d, stem)
            if os.path.isfile(path):
                try:
                    return ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                except OSError:
                    pass
    return None

def mapped_path(prefix):
    with open("/proc/self/maps") as maps:
        for line in maps:
            path = line.split()[-1]
            if os.path.basename(path).startswith(prefix):
                return path
    return None

nvrtc = open_nvrtc()
if nvrtc is None:
    print("no libnvrtc.so (CUDA toolkit or the nvidia-cuda-nvrtc wheel)")
    sys.exit(1)
where = mapped_path("libnvrtc.so")
major, minor = ctypes.c_int(), ctypes.c_int()
nvrtc.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
name = f"libnvrtc-builtins.so.{major.value}.{minor.value}"
beside = os.path.join(os.path.dirname(where or ""), name)
if os.path.isfile(beside):
    ctypes.CDLL(beside, mode=ctypes.RTLD_GLOBAL)
else:
    try:
        ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
    except OSError:
        print(f"{name} is neither beside {where} nor on the loader's path")
        sys.exit(1)
program = ctypes.c_void_p()
source = b'extern "C" __global__ void k(float* x) { x[threadIdx.x] *= 2.0f; }'
if nvrtc.nvrtcCreateProgram(ctypes.byref(program), source, b"k.cu", 0, None, None) != 0:
    print(f"nvrtcCreateProgram failed with {where}")
    sys.exit(1)
options = (ctypes.c_char_p * 1)(b"--gpu-architecture=compute_90")
result = nvrtc.nvrtcCompileProgram(program, 1, options)
if result != 0:
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetProgramLog(program, log)
    first = (log.value.decode(errors="replace").strip().splitlines() or [""])[0]
    print(f"{where} cannot compile a kernel (error {result}): {first}")
    sys.exit(1)
PY
}

check_python_zenoh() {
    have python3 || { echo "no python3 for the Python subscriber's test"; return 1; }
    python3 - "$PY_ZENOH" <<'PY'
import sys
from importlib import metadata
name, wanted = sys.argv[1].split("==")
try:
    import zenoh  # noqa: F401
    have = metadata.version(name)
except Exception as e:
    print(f"python3 cannot import zenoh ({type(e).__name__})")
    sys.exit(1)
if have != wanted:
    print(f"python3 has {name} {have}, the tests talk to the service with {wanted}")
    sys.exit(1)
PY
}

# The simulated robot (sim/, tests/sim_loop.rs): MuJoCo renders headless through EGL on Mesa's
# software renderer, which needs libEGL, libOpenGL and the Mesa DRI drivers (checked on a clean
# Debian bookworm root); its Python packages are pinned in sim/requirements.txt.
SIM_REQUIREMENTS="$(cd "$(dirname "$0")/.." && pwd)/sim/requirements.txt"
check_gl_libraries() {
    # Not `grep -q`: under pipefail, its early exit fails ldconfig with SIGPIPE, and so the
    # check, at random.
    ldconfig -p 2>/dev/null | grep 'libEGL\.so\.1' >/dev/null || { echo "no libEGL.so.1"; return 1; }
    ldconfig -p 2>/dev/null | grep 'libOpenGL\.so\.0' >/dev/null || { echo "no libOpenGL.so.0"; return 1; }
    compgen -G '/usr/lib/*/dri/swrast_dri.so' >/dev/null \
        || { echo "no Mesa software renderer (swrast_dri.so)"; return 1; }
}
check_sim_python() {
    have python3 || { echo "no python3 for the simulated robot"; return 1; }
    python3 - "$SIM_REQUIREMENTS" <<'PY' || return 1
import sys
from importlib.metadata import PackageNotFoundError, version
for line in open(sys.argv[1]):
    pin = line.split("#")[0].strip()
    if not pin:
        continue
    name, wanted = pin.split("==")
    try:
        have = version(name)
    except PackageNotFoundError:
        print(f"python3 has no {name} (sim/requirements.txt pins {wanted})")
        sys.exit(1)
    if have != wanted:
        print(f"python3 has {name} {have}, sim/requirements.txt pins {wanted}")
        sys.exit(1)
PY
    (cd "$(dirname "$SIM_REQUIREMENTS")" && MUJOCO_GL=egl python3 -c 'import tabletop
s = tabletop.Tabletop(); s.reset(0); assert s.render().shape == (224, 224, 3); s.close()' \
        >/dev/null 2>&1) || { echo "MuJoCo cannot render headless (MUJOCO_GL=egl)"; return 1; }
}

# openssl: tests/zenoh_security.rs makes its CA and certificates with scripts/make-certs.sh.
check_openssl() { openssl version >/dev/null 2>&1 || { echo "no openssl"; return 1; }; }

# onnxruntime (CPU) for the ONNX export test (tests/onnx_export.rs runs the exported encoder
# graphs in it).
ONNXRUNTIME="onnxruntime==1.32.0"
check_python_rosbags() {
    have python3 || { echo "no python3 for the ROS 2 peer's tests"; return 1; }
    python3 - "$PY_ROSBAGS" <<'PY'
import sys
from importlib import metadata
name, wanted = sys.argv[1].split("==")
try:
    from rosbags.typesys import Stores, get_typestore
    get_typestore(Stores.ROS2_JAZZY)
    have = metadata.version(name)
except Exception as e:
    print(f"python3 cannot use rosbags' Jazzy typestore ({type(e).__name__})")
    sys.exit(1)
if have != wanted:
    print(f"python3 has {name} {have}, the ROS 2 tests' type hashes are checked with {wanted}")
    sys.exit(1)
PY
}
check_onnxruntime() {
    python3 -c 'import onnxruntime, numpy' >/dev/null 2>&1 \
        || { echo "python3 cannot import onnxruntime and numpy"; return 1; }
}

# The aarch64 cross build (--aarch64; scripts/aarch64-check.sh sets the same compilers, headers
# and emulator for cargo).
AARCH64_TARGET=aarch64-unknown-linux-gnu
AARCH64_SYSROOT=/usr/aarch64-linux-gnu
# Cargo.toml's rust-version as a rustup toolchain ("1.88" is 1.88.0).
rust_toolchain() {
    local version
    version=$(sed -n 's/^rust-version = "\([0-9.]*\)"$/\1/p' "$(dirname "$0")/../Cargo.toml")
    case "$version" in
        *.*.*) echo "$version" ;;
        *.*) echo "$version.0" ;;
        *) return 1 ;;
    esac
}
RUST_TOOLCHAIN=$(rust_toolchain || echo "(no rust-version in Cargo.toml)")

# A C program, compiled and linked by the cross compiler into DIR/t.
aarch64_c_program() {
    printf '#include <stdio.h>\nint main(void) { return puts("") < 0; }\n' >"$1/t.c"
    aarch64-linux-gnu-gcc -o "$1/t" "$1/t.c" >/dev/null 2>&1
}
check_aarch64_cc() {
    have aarch64-linux-gnu-gcc || { echo "no aarch64 C compiler (aarch64-linux-gnu-gcc)"; return 1; }
    local dir ok=0
    dir=$(mktemp -d) || return 1
    aarch64_c_program "$dir" || ok=1
    rm -rf "$dir"
    [ "$ok" -eq 0 ] || { echo "aarch64-linux-gnu-gcc cannot link a C program (aarch64 C library?)"; return 1; }
}
# C++17 with the standard library's headers, as build.rs compiles the TensorRT shim.
check_aarch64_cxx() {
    have aarch64-linux-gnu-g++ || { echo "no aarch64 C++ compiler (aarch64-linux-gnu-g++)"; return 1; }
    printf '#include <string>\nint f() { return std::string("ab").size(); }\n' \
        | aarch64-linux-gnu-g++ -std=c++17 -x c++ -c -o /dev/null - >/dev/null 2>&1 \
        || { echo "aarch64-linux-gnu-g++ cannot compile C++17"; return 1; }
}
check_aarch64_headers() {
    [ -f "$AARCH64_SYSROOT/include/linux/videodev2.h" ] \
        || { echo "no $AARCH64_SYSROOT/include/linux/videodev2.h"; return 1; }
    check_libclang "--target=$AARCH64_TARGET" -isystem "$AARCH64_SYSROOT/include"
}
qemu_aarch64() { command -v qemu-aarch64-static || command -v qemu-aarch64; }
check_qemu_aarch64() {
    local qemu dir ok=0
    qemu=$(qemu_aarch64) || { echo "no qemu-aarch64-static (or qemu-aarch64)"; return 1; }
    dir=$(mktemp -d) || return 1
    if ! aarch64_c_program "$dir"; then
        ok=2
    elif ! "$qemu" -L "$AARCH64_SYSROOT" "$dir/t" >/dev/null 2>&1; then
        ok=1
    fi
    rm -rf "$dir"
    case "$ok" in
        2) echo "no aarch64 program to run (aarch64-linux-gnu-gcc failed)"; return 1 ;;
        1) echo "$qemu cannot run an aarch64 program"; return 1 ;;
    esac
}
# The kernel hands aarch64 programs to qemu (binfmt_misc): tests start the aarch64 `vla-rt`
# binary as a child process, and qemu finds the aarch64 loader through QEMU_LD_PREFIX.
check_update_binfmts() { have update-binfmts || { echo "no update-binfmts"; return 1; }; }
check_aarch64_binfmt() {
    local dir ok=0
    dir=$(mktemp -d) || return 1
    if ! aarch64_c_program "$dir"; then
        ok=2
    elif ! QEMU_LD_PREFIX=$AARCH64_SYSROOT "$dir/t" >/dev/null 2>&1; then
        ok=1
    fi
    rm -rf "$dir"
    case "$ok" in
        2) echo "no aarch64 program to run (aarch64-linux-gnu-gcc failed)"; return 1 ;;
        1) echo "the kernel does not run aarch64 programs through qemu (binfmt_misc)"; return 1 ;;
    esac
}
# The toolchain builds and links a Rust program for aarch64 (its standard library for the
# target), and qemu runs it.
check_rust_aarch64() {
    have rustup || { echo "no rustup (https://rustup.rs)"; return 1; }
    local dir qemu ok=0
    rustup run "$RUST_TOOLCHAIN" rustc --version >/dev/null 2>&1 \
        || { echo "no Rust $RUST_TOOLCHAIN toolchain"; return 1; }
    qemu=$(qemu_aarch64) || qemu=false
    dir=$(mktemp -d) || return 1
    echo 'fn main() { println!("{}", std::env::consts::ARCH); }' >"$dir/t.rs"
    if ! rustup run "$RUST_TOOLCHAIN" rustc --target "$AARCH64_TARGET" \
        -C linker=aarch64-linux-gnu-gcc -o "$dir/t" "$dir/t.rs" >/dev/null 2>&1; then
        ok=1
    elif [ "$("$qemu" -L "$AARCH64_SYSROOT" "$dir/t" 2>/dev/null)" != aarch64 ]; then
        ok=2
    fi
    rm -rf "$dir"
    case "$ok" in
        1) echo "Rust $RUST_TOOLCHAIN cannot build for $AARCH64_TARGET (its standard library?)"; return 1 ;;
        2) echo "Rust $RUST_TOOLCHAIN's aarch64 program does not run under qemu"; return 1 ;;
    esac
}

# Every item: its check, and what installs it ("apt:PACKAGE...", "pip:REQUIREMENT",
# "binfmt:ENTRY" (update-binfmts) or "rustup:TOOLCHAIN,TARGET").
ITEMS=(
    "check_cc apt:gcc,libc6-dev"
    "check_cxx apt:g++"
    "check_pkg_config apt:pkg-config"
    "check_ca_certificates apt:ca-certificates"
    "check_systemd_analyze apt:systemd"
    "check_python apt:python3"
    "check_pip apt:python3-pip"
    "check_libclang apt:libclang-dev"
    "check_python_zenoh pip:$PY_ZENOH"
    "check_python_rosbags pip:$PY_ROSBAGS"
    "check_nvrtc pip:$NVRTC_WHEEL"
    "check_openssl apt:openssl"
    "check_onnxruntime pip:$ONNXRUNTIME,numpy"
    "check_gl_libraries apt:libegl1,libopengl0,libgl1-mesa-dri"
    "check_sim_python pip:-r,$SIM_REQUIREMENTS"
)
if [ "$aarch64" -eq 1 ]; then
    ITEMS+=(
        "check_aarch64_cc apt:gcc-aarch64-linux-gnu,libc6-dev-arm64-cross"
        "check_aarch64_cxx apt:g++-aarch64-linux-gnu"
        "check_aarch64_headers apt:linux-libc-dev-arm64-cross"
        "check_qemu_aarch64 apt:qemu-user-static"
        "check_update_binfmts apt:binfmt-support"
        "check_aarch64_binfmt binfmt:qemu-aarch64"
        "check_rust_aarch64 rustup:$RUST_TOOLCHAIN,$AARCH64_TARGET"
    )
fi

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# A distribution's own Python (Debian 12, Ubuntu 23.04 and later) marks itself externally
# managed (PEP 668); the packages then go to /usr/local, beside the distribution's own ones.
pip_install() {
    local flags=(--quiet --disable-pip-version-check)
    if python3 -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))'; then
        flags+=(--break-system-packages)
    fi
    python3 -m pip install "${flags[@]}" "$@"
}

if [ "$install" -eq 1 ]; then
    # System packages first (python3 and pip among them), then the Python packages.
    apt_need=()
    for item in "${ITEMS[@]}"; do
        read -r check source <<<"$item"
        case "$source" in
            apt:*)
                if ! $check >/dev/null; then
                    IFS=, read -r -a packages <<<"${source#apt:}"
                    apt_need+=("${packages[@]}")
                fi
                ;;
        esac
    done
    if [ ${#apt_need[@]} -gt 0 ]; then
        echo "setup: installing ${apt_need[*]} (apt)"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_need[@]}" \
            >/dev/null
    fi
    for item in "${ITEMS[@]}"; do
        read -r check source <<<"$item"
        case "$source" in
            pip:*)
                if ! $check >/dev/null; then
                    IFS=, read -r -a requirements <<<"${source#pip:}"
                    echo "setup: installing ${requirements[*]} (pip)"
                    pip_install "${requirements[@]}"
                fi
                ;;
        esac
    done
    # Then the emulator's binfmt_misc entries (installed by apt, enabled only where an init
    # system started binfmt-support) and Rust toolchains: their checks run what the cross
    # compiler apt installed links.
    for item in "${ITEMS[@]}"; do
        read -r check source <<<"$item"
        case "$source" in
            binfmt:*)
                if have update-binfmts && ! $check >/dev/null; then
                    echo "setup: enabling ${source#binfmt:} (update-binfmts)"
                    as_root update-binfmts --enable "${source#binfmt:}"
                fi
                ;;
            rustup:*)
                if have rustup && ! $check >/dev/null; then
                    IFS=, read -r toolchain target <<<"${source#rustup:}"
                    echo "setup: installing Rust $toolchain with $target (rustup)"
                    rustup toolchain install "$toolchain" --profile minimal --target "$target"
                    rustup target add --toolchain "$toolchain" "$target"
                fi
                ;;
        esac
    done
fi

failed=0
for item in "${ITEMS[@]}"; do
    read -r check source <<<"$item"
    if ! reason=$($check 2>&1); then
        case "$source" in
            apt:*) how="apt-get install ${source#apt:}"; how=${how//,/ } ;;
            pip:*) how="python3 -m pip install ${source#pip:}"; how=${how//,/ } ;;
            binfmt:*) how="update-binfmts --enable ${source#binfmt:}" ;;
            rustup:*)
                IFS=, read -r toolchain target <<<"${source#rustup:}"
                how="rustup toolchain install $toolchain --profile minimal --target $target"
                ;;
        esac
        echo "setup: FAILED ${check#check_}: ${reason:-failed}; install with: $how"
        failed=1
    fi
done
[ "$failed" -eq 0 ] && echo "setup: every check passed"
exit "$failed"
