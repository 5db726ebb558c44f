#!/usr/bin/env bash
# Installs what building and testing vla-rt needs on a fresh Debian/Ubuntu or JetPack machine:
# libclang for the v4l bindings, a C compiler for the emulated test camera, and the Python
# packages the tests drive the service with. Safe to run again; skips what is already there.
set -euo pipefail

need_apt=()
command -v cc >/dev/null || need_apt+=(gcc)
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
