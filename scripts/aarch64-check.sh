#!/usr/bin/env bash
# The Jetson build, checked on an x86-64 machine: cross-compiles the JetPack 6 build
# (`--no-default-features --features jetpack6`) for aarch64-unknown-linux-gnu with the oldest
# Rust the project supports (Cargo.toml's `rust-version`, as a rustup toolchain), then runs
# under qemu-aarch64 user emulation the tests of every code path that has an aarch64 variant:
# the quantized kernels' NEON bodies (crates/vla-model/src/model/quant_kernels.rs) and the golden parity tests
# against the reference fixtures (whose f32 products, image decoding and resizing run through
# the dependencies' aarch64 code as well). The library, the binaries (`vla-rt predict` is part of
# the golden tests) and these test targets are all it builds.
#
# `scripts/setup.sh --aarch64` installs what it needs: the cross C and C++ compilers (the TensorRT
# shim is C++), the aarch64 C library and kernel headers (the V4L2 bindings), qemu-user-static
# with its binfmt_misc entry, and the toolchain with the aarch64 standard library. The binary
# built is also checked to need no newer glibc or libstdc++ than JetPack 6 has.
#
#   scripts/aarch64-check.sh              build, then run the tests under emulation
#   scripts/aarch64-check.sh --build-only build the tests, run nothing
#
# Extra arguments after `--` go to the test binaries (e.g. `-- --test-threads=1`).
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=aarch64-unknown-linux-gnu
FEATURES=(--no-default-features --features jetpack6)
# The test targets run under emulation, by name (cargo's `--test NAME`):
#   quant_kernels        every NEON kernel against the f64 product, ragged lengths included
#   quant_accuracy       INT8 and INT4 policies on the fixture cases against the f32 path
#   quant_file           pre-quantized files against load-time quantization, `vla-rt quantize`
#   policy_parity        the f32 model against OpenVLA's reference features, logits and tokens
#   policy_end_to_end    image file to action against the fixtures, `vla-rt predict` included
#   preprocess_fixtures  the resize bit for bit and the normalisation against the fixtures
#   sim_checkpoint       the trained checkpoint's tokens against PyTorch's on held-out frames
TESTS=(quant_kernels quant_accuracy quant_file policy_parity policy_end_to_end preprocess_fixtures
    sim_checkpoint)

# JetPack 6 is Ubuntu 22.04: the binary may need no newer glibc nor libstdc++ (GCC 12) than its.
JETPACK_GLIBC=2.35
JETPACK_GLIBCXX=3.4.30

build_only=0
test_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --build-only) build_only=1; shift ;;
        --) shift; test_args=("$@"); break ;;
        *) echo "usage: $0 [--build-only] [-- TEST-BINARY-ARGS...]" >&2; exit 2 ;;
    esac
done

# The toolchain: Cargo.toml's rust-version ("1.88" is rustup's 1.88.0).
rust_version=$(sed -n 's/^rust-version = "\([0-9.]*\)"$/\1/p' Cargo.toml)
[ -n "$rust_version" ] || { echo "aarch64-check: no rust-version in Cargo.toml" >&2; exit 2; }
case "$rust_version" in *.*.*) toolchain=$rust_version ;; *) toolchain=$rust_version.0 ;; esac

# qemu-user-static names its emulator qemu-aarch64-static; plain qemu-user, qemu-aarch64.
qemu=$(command -v qemu-aarch64-static || command -v qemu-aarch64 || true)
[ -n "$qemu" ] || { echo "aarch64-check: no qemu-aarch64 (scripts/setup.sh --aarch64)" >&2; exit 2; }

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="$qemu -L /usr/aarch64-linux-gnu"
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
# bindgen (the v4l crate's V4L2 bindings) parses the aarch64 kernel headers, not the host's.
export BINDGEN_EXTRA_CLANG_ARGS_aarch64_unknown_linux_gnu="-isystem /usr/aarch64-linux-gnu/include"
# Tests start the aarch64 `vla-rt` binary themselves; the kernel hands it to qemu (binfmt_misc,
# enabled by setup.sh --aarch64), which finds the aarch64 loader and libraries here.
export QEMU_LD_PREFIX=/usr/aarch64-linux-gnu

tests=()
for name in "${TESTS[@]}"; do tests+=(--test "$name"); done

seconds() { echo $(($(date +%s) - $1)); }

echo "aarch64-check: cargo +$toolchain, $TARGET, ${FEATURES[*]}"
start=$(date +%s)
cargo "+$toolchain" test --release --locked --target "$TARGET" "${FEATURES[@]}" "${tests[@]}" --no-run
echo "aarch64-check: cross build: $(seconds "$start") s"

# The newest version of symbol set $1 (GLIBC, GLIBCXX) the binary needs, or nothing.
binary=${CARGO_TARGET_DIR:-target}/$TARGET/release/vla-rt
newest() {
    aarch64-linux-gnu-objdump -T "$binary" | { grep -o "($1_[0-9.]*)" || true; } \
        | sed "s/^($1_//; s/)$//" | sort -uV | tail -n 1
}
for pair in "GLIBC $JETPACK_GLIBC" "GLIBCXX $JETPACK_GLIBCXX"; do
    read -r set most <<<"$pair"
    need=$(newest "$set")
    if [ -n "$need" ] && [ "$(printf '%s\n' "$need" "$most" | sort -V | tail -n 1)" != "$most" ]; then
        echo "aarch64-check: $binary needs ${set}_$need; JetPack 6 has ${set}_$most" >&2
        exit 1
    fi
    echo "aarch64-check: $binary needs ${set}_${need:-none} (JetPack 6: $most)"
done
[ "$build_only" -eq 1 ] && exit 0

start=$(date +%s)
# Every test target runs, so one failure does not hide another.
cargo "+$toolchain" test --release --locked --no-fail-fast --target "$TARGET" "${FEATURES[@]}" \
    "${tests[@]}" -- "${test_args[@]}"
echo "aarch64-check: tests under $(basename "$qemu"): $(seconds "$start") s"
