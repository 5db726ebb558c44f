#!/usr/bin/env bash
# Installs what building and testing vla-rt needs on a fresh Debian/Ubuntu or JetPack machine:
# libclang for the v4l bindings, C and C++ compilers for the emulated test camera and the C++
# record decoder's test, and the Python packages the tests drive the service with. Safe to run
# again; skips what is already there.
set -euo pipefail

need_apt=()
command -v cc >/dev/null || need_apt+=(gcc)
command -v c++ >/dev/null || need_apt+=(g++)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
[ -n "$(ls /usr/lib/llvm-*/lib/libclang*.so* 2>/dev/null | head -n1)" ] || need_apt+=(libclang-dev)
command -v python3 >/dev/null || need_apt+=(python3 python3-pip)
if [ ${#need_apt[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}"
fi

py_need=()
python3 -c 'import zenoh' 2>/dev/null || py_need+=("eclipse-zenoh==1.10.2")
if [ ${#py_need[@]} -gt 0 ]; then
    python3 -m pip install --quiet --disable-pip-version-check "${py_need[@]}" \
        || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "${py_need[@]}"
fi

# NVRTC (no GPU needed) so that the tests compile every CUDA kernel: the nvidia-cuda-nvrtc
# wheel puts libnvrtc.so.13 under site-packages/nvidia/cu13/lib, where the backend and its
# test look. Skipped when a CUDA toolkit or an NVRTC wheel is already there.
have_nvrtc() {
    ldconfig -p 2>/dev/null | grep -q 'libnvrtc\.so' && return 0
    [ -e /usr/local/cuda/lib64/libnvrtc.so ] && return 0
    python3 - <<'PY' 2>/dev/null
import glob, os, sys, nvidia
sys.exit(0 if any(glob.glob(os.path.join(p, "cu1*", "lib", "libnvrtc.so.*")) for p in nvidia.__path__) else 1)
PY
}
if ! have_nvrtc; then
    python3 -m pip install --quiet --disable-pip-version-check "nvidia-cuda-nvrtc==13.0.88" \
        || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "nvidia-cuda-nvrtc==13.0.88"
fi

# onnxruntime (CPU) for the ONNX export test (tests/onnx_export.rs runs the exported encoder
# graphs in it).
if ! python3 -c 'import onnxruntime, numpy' 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check "onnxruntime==1.32.0" numpy \
        || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages onnxruntime numpy
fi
python3 -c 'import onnxruntime; print("onnxruntime", onnxruntime.__version__)'
