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

# The simulated robot (sim/, tests/sim_loop.rs): MuJoCo renders headless through EGL on
# Mesa's software renderer, which needs libEGL, libOpenGL and the Mesa DRI drivers (checked
# on a clean Debian bookworm root); the Python packages are pinned in sim/requirements.txt.
sim_apt=()
ldconfig -p 2>/dev/null | grep -q 'libEGL\.so\.1' || sim_apt+=(libegl1)
ldconfig -p 2>/dev/null | grep -q 'libOpenGL\.so\.0' || sim_apt+=(libopengl0)
compgen -G '/usr/lib/*/dri/swrast_dri.so' >/dev/null || sim_apt+=(libgl1-mesa-dri)
if [ ${#sim_apt[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${sim_apt[@]}"
fi
sim_requirements="$(dirname "$0")/../sim/requirements.txt"
python3 - "$sim_requirements" <<'PY' 2>/dev/null || \
    python3 -m pip install --quiet --disable-pip-version-check -r "$sim_requirements" \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages -r "$sim_requirements"
import sys
from importlib.metadata import version
pins = [l.split("#")[0].strip() for l in open(sys.argv[1])]
sys.exit(any(p and version(p.split("==")[0]) != p.split("==")[1] for p in pins))
PY
if ! (cd "$(dirname "$0")/../sim" && MUJOCO_GL=egl python3 -c 'import tabletop; s = tabletop.Tabletop(); s.reset(0); assert s.render().shape == (224, 224, 3); s.close()'); then
    echo "setup.sh: MuJoCo cannot render headless (MUJOCO_GL=egl): see the error above" >&2
    exit 1
fi
